//! Access tokens (JWT, one pinned algorithm: HS256 by default, or EdDSA with its public key
//! published as a JWKS document) and the opaque secrets: refresh tokens, API keys, invites.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::config::{AuthConfig, JwtAlgorithm};
use crate::error::{Error, ErrorKind, Result};
use crate::principal::Role;

/// The `typ` claim of an access token; anything else is refused where an access token is due.
pub const ACCESS: &str = "access";

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer (`auth.issuer`).
    pub iss: String,
    /// Audience (`auth.audience`).
    pub aud: String,
    /// The user id.
    pub sub: Uuid,
    /// The session (refresh-token family) it was issued in.
    pub sid: Uuid,
    /// The user's role when issued.
    pub role: Role,
    /// The token type: always [`ACCESS`].
    pub typ: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expires at.
    pub exp: i64,
}

/// Signs and checks access tokens with one pinned algorithm.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    header: Header,
    /// The public key as a JWK (EdDSA only).
    jwk: Option<serde_json::Value>,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: chrono::Duration,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("issuer", &self.issuer).field("audience", &self.audience).finish_non_exhaustive()
    }
}

impl Keys {
    /// The keys `config` asks for: HS256 with `secret`, or EdDSA with the Ed25519 key in
    /// `ed25519_pem` (PKCS#8 PEM).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for EdDSA without a key, or with a key that is not an
    /// Ed25519 PKCS#8 PEM.
    pub fn new(config: &AuthConfig, secret: &[u8], ed25519_pem: Option<&str>) -> Result<Self> {
        match config.jwt_algorithm {
            JwtAlgorithm::Hs256 => Ok(Self::hs256(secret, config)),
            JwtAlgorithm::EdDsa => {
                let pem = ed25519_pem.ok_or_else(|| {
                    Error::invalid("auth.jwt_algorithm = \"EdDSA\" needs an Ed25519 key (auth.jwt_private_key_file)")
                })?;
                Self::eddsa(pem, config)
            }
        }
    }

    /// EdDSA keys from an Ed25519 private key (PKCS#8 PEM).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when the PEM is not an Ed25519 PKCS#8 private key.
    pub fn eddsa(pem: &str, config: &AuthConfig) -> Result<Self> {
        use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| {
            Error::invalid(format!(
                "auth.jwt_private_key_file: not an Ed25519 private key in PKCS#8 PEM ({e}); make one with `openssl genpkey -algorithm ed25519`"
            ))
        })?;
        let der = key
            .to_pkcs8_der()
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode the Ed25519 key: {e}")))?;
        let public = key.verifying_key().to_bytes();
        let x = URL_SAFE_NO_PAD.encode(public);
        // RFC 7638 thumbprint: SHA-256 over the required members, in lexicographic order.
        let thumbprint = Sha256::digest(format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#));
        let kid = URL_SAFE_NO_PAD.encode(thumbprint);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
        Ok(Self {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_der(&public),
            header,
            jwk: Some(jwk),
            validation: Self::validation(Algorithm::EdDSA, config),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ttl: Self::ttl_of(config),
        })
    }

    /// A new Ed25519 private key as PKCS#8 PEM (for `dev`, written into the data folder).
    ///
    /// # Errors
    /// [`ErrorKind::Internal`] when the system has no randomness.
    pub fn generate_ed25519_pem() -> Result<String> {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::new(ErrorKind::Internal, format!("no randomness: {e}")))?;
        let pem = ed25519_dalek::SigningKey::from_bytes(&seed)
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode the Ed25519 key: {e}")))?;
        Ok(pem.to_string())
    }

    /// The public keys that check access tokens, as a JWKS document: the Ed25519 key with
    /// EdDSA, none with HS256 (a shared secret is never published).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": self.jwk.iter().collect::<Vec<_>>()})
    }

    fn validation(algorithm: Algorithm, config: &AuthConfig) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation
    }

    fn ttl_of(config: &AuthConfig) -> chrono::Duration {
        chrono::Duration::from_std(config.access_token_ttl).unwrap_or(chrono::Duration::minutes(15))
    }

    /// HS256 keys from the secret, validating issuer, audience, `exp`, `nbf` with the configured leeway.
    pub fn hs256(secret: &[u8], config: &AuthConfig) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            header: Header::new(Algorithm::HS256),
            jwk: None,
            validation: Self::validation(Algorithm::HS256, config),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ttl: Self::ttl_of(config),
        }
    }

    /// How long the access tokens of [`Keys::issue`] are valid.
    pub fn ttl(&self) -> chrono::Duration {
        self.ttl
    }

    /// A signed access token for `user` in `session`, valid from `now` for the configured time.
    ///
    /// # Errors
    /// [`ErrorKind::Internal`] if signing fails.
    pub fn issue(&self, user: Uuid, role: Role, session: Uuid, now: DateTime<Utc>) -> Result<String> {
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user,
            sid: session,
            role,
            typ: ACCESS.into(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            exp: (now + self.ttl).timestamp(),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.encoding)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot sign a token: {e}")))
    }

    /// The claims of a valid access token.
    ///
    /// # Errors
    /// [`ErrorKind::Unauthenticated`] for a token that is malformed, signed with another key or
    /// algorithm (`none` included), expired, not yet valid, for another issuer or audience, or
    /// not an access token. The message says which, never echoing the token.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        use jsonwebtoken::errors::ErrorKind as Jwt;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            let why = match e.kind() {
                Jwt::ExpiredSignature => "the access token has expired; refresh it",
                Jwt::ImmatureSignature => "the access token is not valid yet",
                Jwt::InvalidIssuer => "the access token was issued by someone else",
                Jwt::InvalidAudience => "the access token is meant for another service",
                Jwt::InvalidAlgorithm => "the access token is signed with an algorithm this server does not accept",
                Jwt::InvalidSignature => "the access token's signature is not valid",
                Jwt::MissingRequiredClaim(_) => "the access token lacks a required claim",
                _ => "the access token is malformed",
            };
            Error::new(ErrorKind::Unauthenticated, why)
        })?;
        if data.claims.typ != ACCESS {
            return Err(Error::new(ErrorKind::Unauthenticated, "this is not an access token"));
        }
        Ok(data.claims)
    }
}

/// A fresh opaque secret: `prefix` then 256 random bits, base64url.
///
/// # Errors
/// [`ErrorKind::Internal`] when the system has no randomness.
pub fn new_secret(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::new(ErrorKind::Internal, format!("no randomness: {e}")))?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// What is stored of an opaque secret: its SHA-256 (the secret has 256 random bits, so a fast
/// hash is enough; a slow one would only slow every request down).
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Masks (or unmasks) `secret` with a one-time pad derived from `key`: SHA-256 stretched over
/// the length. Used to keep a refresh token's successor readable only by whoever holds the
/// refresh token itself; the result is checked against the successor's stored digest.
pub fn mask(key: &str, secret: &[u8]) -> Vec<u8> {
    secret
        .chunks(32)
        .enumerate()
        .flat_map(|(block, chunk)| {
            let pad = Sha256::new()
                .chain_update(b"cloudx refresh successor\0")
                .chain_update(key.as_bytes())
                .chain_update((block as u64).to_le_bytes())
                .finalize();
            chunk.iter().zip(pad).map(|(b, p)| b ^ p).collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn keys() -> Keys {
        Keys::hs256(SECRET, &AuthConfig::default())
    }

    fn forge(claims: &serde_json::Value, header: Header, secret: &[u8]) -> String {
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn claims(now: i64) -> serde_json::Value {
        serde_json::json!({"iss": "cloudx", "aud": "cloudx", "sub": Uuid::nil(), "sid": Uuid::nil(),
            "role": "member", "typ": "access", "iat": now, "nbf": now, "exp": now + 600})
    }

    fn refused(token: &str) -> String {
        let err = keys().verify(token).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        err.to_string()
    }

    #[test]
    fn a_fresh_token_verifies() {
        let (user, session) = (Uuid::now_v7(), Uuid::now_v7());
        let token = keys().issue(user, Role::Admin, session, Utc::now()).unwrap();
        let claims = keys().verify(&token).unwrap();
        assert_eq!((claims.sub, claims.sid, claims.role), (user, session, Role::Admin));
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let now = Utc::now().timestamp();
        let good = forge(&claims(now), Header::new(Algorithm::HS256), SECRET);
        keys().verify(&good).unwrap();
        let mut tampered = good.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(refused(&tampered).contains("signature") || refused(&tampered).contains("malformed"));
        assert!(
            refused(&forge(&claims(now), Header::new(Algorithm::HS256), b"another secret, 32 bytes long!!"))
                .contains("signature")
        );
        let mut c = claims(now - 3600);
        c["exp"] = (now - 60).into();
        assert!(refused(&forge(&c, Header::new(Algorithm::HS256), SECRET)).contains("expired"));
        let mut c = claims(now);
        c["nbf"] = (now + 3600).into();
        assert!(refused(&forge(&c, Header::new(Algorithm::HS256), SECRET)).contains("not valid yet"));
        let mut c = claims(now);
        c["aud"] = "someone-else".into();
        assert!(refused(&forge(&c, Header::new(Algorithm::HS256), SECRET)).contains("another service"));
        let mut c = claims(now);
        c["iss"] = "evil".into();
        assert!(refused(&forge(&c, Header::new(Algorithm::HS256), SECRET)).contains("someone else"));
        let mut c = claims(now);
        c["typ"] = "refresh".into();
        assert!(refused(&forge(&c, Header::new(Algorithm::HS256), SECRET)).contains("not an access token"));
        let mut c = claims(now);
        c.as_object_mut().unwrap().remove("nbf");
        refused(&forge(&c, Header::new(Algorithm::HS256), SECRET));
        // Another HMAC algorithm with the same secret.
        assert!(refused(&forge(&claims(now), Header::new(Algorithm::HS512), SECRET)).contains("algorithm"));
        // `alg: none`, built by hand (the library will not make one).
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims(now).to_string());
        refused(&format!("{header}.{body}."));
        refused("cxr_not-a-jwt-at-all");
        refused("");
    }

    #[test]
    fn eddsa_tokens_verify_with_the_published_key_only() {
        let config = AuthConfig { jwt_algorithm: JwtAlgorithm::EdDsa, ..AuthConfig::default() };
        let pem = Keys::generate_ed25519_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        let keys = Keys::new(&config, SECRET, Some(&pem)).unwrap();
        let token = keys.issue(Uuid::nil(), Role::Member, Uuid::nil(), Utc::now()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        keys.verify(&token).unwrap();
        // The JWKS document carries the public key, under the token's `kid`, and it checks the token.
        let jwks = keys.jwks();
        let jwk = &jwks["keys"][0];
        assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("OKP"), Some("Ed25519")));
        assert_eq!(jwk["kid"].as_str(), header.kid.as_deref());
        let public = DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["cloudx"]);
        jsonwebtoken::decode::<serde_json::Value>(&token, &public, &validation).unwrap();
        // Algorithm confusion: an HS256 token made with the public key (or the HS256 secret)
        // as the HMAC secret is refused; so is another key's EdDSA token.
        let now = Utc::now().timestamp();
        let public_bytes = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        for secret in [&public_bytes[..], SECRET] {
            let forged = forge(&claims(now), Header::new(Algorithm::HS256), secret);
            assert!(keys.verify(&forged).unwrap_err().to_string().contains("algorithm"));
        }
        let other = Keys::new(&config, SECRET, Some(&Keys::generate_ed25519_pem().unwrap())).unwrap();
        let foreign = other.issue(Uuid::nil(), Role::Admin, Uuid::nil(), Utc::now()).unwrap();
        assert!(keys.verify(&foreign).unwrap_err().to_string().contains("signature"));
        // HS256 keys publish nothing, and refuse EdDSA tokens.
        assert_eq!(self::keys().jwks(), serde_json::json!({"keys": []}));
        assert!(self::keys().verify(&token).unwrap_err().to_string().contains("algorithm"));
        // A bad key file is named.
        let bad =
            Keys::new(&config, SECRET, Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")).err();
        assert!(bad.unwrap().to_string().contains("auth.jwt_private_key_file"));
        assert!(Keys::new(&config, SECRET, None).is_err());
    }

    #[test]
    fn leeway_is_small() {
        let config = AuthConfig { leeway: Duration::from_secs(5), ..AuthConfig::default() };
        let keys = Keys::hs256(SECRET, &config);
        let now = Utc::now().timestamp();
        let mut c = claims(now - 3600);
        c["exp"] = (now - 2).into();
        keys.verify(&forge(&c, Header::new(Algorithm::HS256), SECRET)).unwrap();
        c["exp"] = (now - 30).into();
        keys.verify(&forge(&c, Header::new(Algorithm::HS256), SECRET)).unwrap_err();
    }

    #[test]
    fn secrets_are_long_random_and_masks_round_trip() {
        let a = new_secret("cxr_").unwrap();
        assert!(a.starts_with("cxr_") && a.len() == 4 + 43);
        assert_ne!(a, new_secret("cxr_").unwrap());
        let sealed = mask("parent", b"the successor token, 47 bytes long............");
        assert_ne!(&sealed[..], b"the successor token, 47 bytes long............");
        assert_eq!(mask("parent", &sealed), b"the successor token, 47 bytes long............");
        assert_ne!(mask("other", &sealed), b"the successor token, 47 bytes long............");
    }
}
