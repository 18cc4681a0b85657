//! Webhooks: a job submitted with a `callback_url` has it called once the job ends, with the
//! job as JSON, signed.
//!
//! - Targets: `http(s)` URLs whose host `worker.webhook_hosts` allows (checked at submission
//!   and again at delivery). Every address the host resolves to must be public (no loopback,
//!   private, link-local, CGNAT, multicast or unspecified address, in IPv4 or IPv6, mapped or
//!   not) unless `worker.webhook_allow_private`; the request goes to the addresses checked
//!   (no second lookup to be rebound) and never follows a redirect.
//! - Signature: `X-Cloudx-Signature: sha256=<hex of HMAC-SHA256(key, "<timestamp>.<body>")>`
//!   with `X-Cloudx-Timestamp` (Unix seconds) and `X-Cloudx-Delivery` (unique per attempt); a
//!   receiver recomputes it with the instance's `worker.webhook_secret` and refuses old
//!   timestamps.
//! - Delivery: durable, by the workers: a finished job whose callback is pending is taken by
//!   one worker (its `callback_next` moved a minute ahead, the lease), called with a 10 s
//!   timeout, and marked delivered on a 2xx answer; otherwise tried again with a growing pause,
//!   then marked failed with the last error after [`ATTEMPTS`] attempts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::Job;
use crate::config::{CloudxConfig, Secret};
use crate::error::{Error, Result};

/// Deliveries tried before a callback is marked failed.
pub const ATTEMPTS: u32 = 8;
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest URL accepted.
const MAX_URL: usize = 2048;

/// Reads a callback URL: `http` or `https`, a host, no credentials, at most 2048 characters.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] naming what is wrong.
pub fn parse_url(url: &str) -> Result<url::Url> {
    let bad = |why: &str| Error::invalid(format!("callback_url: {why}"));
    if url.len() > MAX_URL {
        return Err(bad("at most 2048 characters"));
    }
    let parsed = url::Url::parse(url).map_err(|e| bad(&format!("`{url}` is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("an http:// or https:// URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL names no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("no user name or password in the URL (the request is signed instead)"));
    }
    Ok(parsed)
}

/// Checks a `worker.webhook_hosts` entry: a host name, `*.` and a domain, or `*`.
///
/// # Errors
/// Why it is not one.
pub(crate) fn check_host_pattern(pattern: &str) -> std::result::Result<(), String> {
    let host = pattern.strip_prefix("*.").unwrap_or(pattern);
    if pattern == "*" {
        return Ok(());
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if valid { Ok(()) } else { Err("a host name (hooks.example.com), *.example.com, or *".into()) }
}

/// Whether `ip` is a public unicast address (what a webhook may reach by default).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => public_v4(v4),
            None => public_v6(v6),
        },
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x2001 && ip.segments()[1] == 0 // Teredo (embeds an IPv4 address)
        || first == 0x2002 // 6to4 (embeds an IPv4 address)
        || first == 0x0064 && ip.segments()[1] == 0xff9b // NAT64 (maps IPv4, maybe private)
        || ip.segments()[..6] == [0; 6]) // IPv4-compatible (deprecated)
}

/// The instance's webhook settings and signing key.
#[derive(Debug)]
pub struct Webhooks {
    hosts: Vec<String>,
    allow_private: bool,
    secret: Secret,
}

impl Webhooks {
    /// The settings of `config`; the signing key is `worker.webhook_secret`, or one generated
    /// into `<data_dir>/webhook-secret` (mode 0600).
    pub(crate) fn open(config: &CloudxConfig) -> Result<Self> {
        let secret = match &config.worker.webhook_secret {
            Some(secret) => secret.clone(),
            None if config.worker.webhook_hosts.is_empty() => Secret::new(String::new()),
            None => Secret::new(crate::fs::read_or_create_secret(
                &config.data_dir.join("webhook-secret"),
                crate::fs::random_secret,
            )?),
        };
        Ok(Self {
            hosts: config.worker.webhook_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            allow_private: config.worker.webhook_allow_private,
            secret,
        })
    }

    /// Checks a callback URL against `worker.webhook_hosts` (and, for an address written as
    /// such, against the private ranges).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming the setting that refuses it.
    pub fn check(&self, url: &str) -> Result<url::Url> {
        let parsed = parse_url(url)?;
        let host = parsed.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let host = host.to_ascii_lowercase();
        if self.hosts.is_empty() {
            return Err(Error::invalid(
                "callback_url: webhooks are off on this instance (an administrator allows hosts with worker.webhook_hosts)",
            ));
        }
        let allowed = self.hosts.iter().any(|pattern| match pattern.strip_prefix("*.") {
            _ if pattern == "*" => true,
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => *pattern == host,
        });
        if !allowed {
            return Err(Error::invalid(format!(
                "callback_url: the host `{host}` is not in worker.webhook_hosts ({})",
                self.hosts.join(", ")
            )));
        }
        if let Ok(ip) = host.parse::<IpAddr>()
            && !self.allow_private
            && !is_public(ip)
        {
            return Err(Error::invalid(format!(
                "callback_url: {ip} is not a public address (worker.webhook_allow_private allows internal ones)"
            )));
        }
        Ok(parsed)
    }

    /// `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>`.
    pub fn signature(&self, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose().as_bytes()).expect("HMAC takes any key");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256=");
        for b in digest {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Calls the job's webhook once; the error says why it did not land.
    pub(crate) async fn deliver(&self, job: &Job) -> std::result::Result<(), String> {
        let url = job.callback_url.as_deref().ok_or("the job has no callback_url")?;
        let url = self.check(url).map_err(|e| e.message().to_owned())?;
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
            .await
            .map_err(|_| format!("looking up {host} took too long"))?
            .map_err(|e| format!("cannot look up {host}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{host} has no address"));
        }
        if let Some(internal) = addrs.iter().find(|a| !is_public(a.ip()))
            && !self.allow_private
        {
            return Err(format!(
                "{host} resolves to {}, not a public address (worker.webhook_allow_private allows internal ones)",
                internal.ip()
            ));
        }
        let body = serde_json::to_vec(&serde_json::json!({ "event": "job.finished", "job": job }))
            .map_err(|e| format!("cannot encode the job: {e}"))?;
        let timestamp = chrono::Utc::now().timestamp();
        // The addresses checked are the ones used: no second lookup that could be rebound.
        let client = reqwest::Client::builder()
            // A proxy from the environment would look the host up again itself.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .resolve_to_addrs(&host, &addrs)
            .user_agent(concat!("cloudx-webhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot make the HTTP client: {e}"))?;
        let response = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-cloudx-event", "job.finished")
            .header("x-cloudx-delivery", uuid::Uuid::now_v7().to_string())
            .header("x-cloudx-timestamp", timestamp.to_string())
            .header("x-cloudx-signature", self.signature(timestamp, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("the request failed: {e}"))?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(format!("the receiver answered {status}")) }
    }
}

/// The pause after failed delivery attempt `attempts` (from 1): 5 s, doubling, at most 10
/// minutes.
pub(super) fn pause(attempts: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << attempts.saturating_sub(1).min(7))).min(Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2001:0:a00:1::1",
            "::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is internal");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn urls_and_host_patterns_are_checked_by_name() {
        assert!(parse_url("ftp://x.example/").unwrap_err().message().contains("http"));
        assert!(parse_url("https://user:pw@x.example/").unwrap_err().message().contains("password"));
        assert!(parse_url("not a url").is_err());
        assert!(check_host_pattern("*.example.com").is_ok());
        assert!(check_host_pattern("hooks/x").is_err());
        let hooks = Webhooks {
            hosts: vec!["hooks.example.com".into(), "*.corp.example".into()],
            allow_private: false,
            secret: Secret::new("k".repeat(32)),
        };
        assert!(hooks.check("https://hooks.example.com/x").is_ok());
        assert!(hooks.check("https://a.b.corp.example/x").is_ok());
        assert!(hooks.check("https://corp.example/x").is_err());
        assert!(hooks.check("https://evil.example/x").unwrap_err().message().contains("worker.webhook_hosts"));
        let any = Webhooks { hosts: vec!["*".into()], allow_private: false, secret: Secret::new(String::new()) };
        assert!(any.check("http://127.0.0.1:8080/x").unwrap_err().message().contains("webhook_allow_private"));
        assert!(any.check("http://[::1]/x").is_err());
        let off = Webhooks { hosts: vec![], allow_private: true, secret: Secret::new(String::new()) };
        assert!(off.check("https://hooks.example.com/").unwrap_err().message().contains("off"));
    }

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_and_body() {
        let hooks = Webhooks { hosts: vec![], allow_private: false, secret: Secret::new("key") };
        // HMAC-SHA256("key", "1700000000.{}"), computed independently with Python's hmac.
        assert_eq!(
            hooks.signature(1_700_000_000, b"{}"),
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }
}
