//! The `s3://` backend: object_store's `AmazonS3` against any S3-compatible server, configured
//! from `[storage]` over the usual `AWS_*` environment variables, signing with RustCrypto
//! (already in the build for the rest of cloudx) instead of building ring or aws-lc-rs.

use std::sync::Arc;

use hmac::{Hmac, Mac as _};
use object_store::aws::AmazonS3Builder;
use object_store::client::{CryptoProvider, DigestAlgorithm, DigestContext, HmacContext, Signer, SigningAlgorithm};
use sha2::{Digest as _, Sha256};

use crate::config::StorageConfig;
use crate::error::{Error, Result};

/// Builds the store for `s3://BUCKET` from the configuration; the prefix is applied by the caller.
pub(crate) fn build(bucket: &str, config: &StorageConfig) -> Result<object_store::aws::AmazonS3> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_crypto_provider(Arc::new(RustCrypto));
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
        builder = builder.with_region("us-east-1");
    }
    if let Some(region) = &config.region {
        builder = builder.with_region(region);
    }
    let endpoint = config.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    if let Some(endpoint) = endpoint {
        builder = builder.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
    }
    if let Some(id) = &config.access_key_id {
        builder = builder.with_access_key_id(id);
    }
    if let Some(secret) = &config.secret_access_key {
        builder = builder.with_secret_access_key(secret.expose());
    }
    builder.build().map_err(|e| Error::invalid(format!("storage: cannot set up S3 bucket `{bucket}`: {e}")))
}

/// SHA-256 and HMAC-SHA256 for request signatures. S3 never asks for RSA signing (that is
/// Google Cloud's service accounts), so `sign` says so.
#[derive(Debug)]
struct RustCrypto;

impl CryptoProvider for RustCrypto {
    fn digest(&self, algorithm: DigestAlgorithm) -> object_store::Result<Box<dyn DigestContext>> {
        match algorithm {
            DigestAlgorithm::Sha256 => Ok(Box::new(Sha256Context { hasher: Sha256::new(), out: Vec::new() })),
            other => Err(unsupported(format!("digest {other:?}"))),
        }
    }

    fn hmac(&self, algorithm: DigestAlgorithm, secret: &[u8]) -> object_store::Result<Box<dyn HmacContext>> {
        match algorithm {
            DigestAlgorithm::Sha256 => {
                let mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| unsupported(e.to_string()))?;
                Ok(Box::new(HmacSha256 { mac: Some(mac), out: Vec::new() }))
            }
            other => Err(unsupported(format!("HMAC {other:?}"))),
        }
    }

    fn sign(&self, algorithm: SigningAlgorithm, _pem: &[u8]) -> object_store::Result<Box<dyn Signer>> {
        Err(unsupported(format!("signing with {algorithm:?}")))
    }
}

fn unsupported(what: String) -> object_store::Error {
    object_store::Error::NotSupported { source: format!("cloudx's S3 crypto provider: {what}").into() }
}

struct Sha256Context {
    hasher: Sha256,
    out: Vec<u8>,
}

impl DigestContext for Sha256Context {
    fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    fn finish(&mut self) -> object_store::Result<&[u8]> {
        self.out = std::mem::take(&mut self.hasher).finalize().to_vec();
        Ok(&self.out)
    }
}

struct HmacSha256 {
    mac: Option<Hmac<Sha256>>,
    out: Vec<u8>,
}

impl HmacContext for HmacSha256 {
    fn update(&mut self, data: &[u8]) {
        if let Some(mac) = &mut self.mac {
            mac.update(data);
        }
    }

    fn finish(&mut self) -> object_store::Result<&[u8]> {
        if let Some(mac) = self.mac.take() {
            self.out = mac.finalize().into_bytes().to_vec();
        }
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mut ctx = RustCrypto.hmac(DigestAlgorithm::Sha256, b"Jefe").unwrap();
        ctx.update(b"what do ya want ");
        ctx.update(b"for nothing?");
        let out = ctx.finish().unwrap();
        assert_eq!(
            out.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn digest_is_sha256() {
        let mut ctx = RustCrypto.digest(DigestAlgorithm::Sha256).unwrap();
        ctx.update(b"abc");
        let out = ctx.finish().unwrap();
        assert_eq!(out[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}
