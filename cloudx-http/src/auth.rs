//! Who is calling: the bearer-token extractor, the client's address, and the rate limits.
//!
//! Credentials come only from the `Authorization: Bearer` header, never from a query string or a
//! cookie (the WebSocket ticket, redeemed by the WebSocket route itself, is the one exception).
//! An access token (JWT) is checked in memory; an API key (`cxk_...`) costs a database lookup.
//!
//! Rate limits (GCRA, [`governor`]) are kept per node, in memory: per client address on every
//! API route, stricter on the credential routes, and per account once the caller is known.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use cloudx_core::auth::Authenticated;
use cloudx_core::auth::audit::Client;
use cloudx_core::config::HttpConfig;
use cloudx_core::{Error, ErrorKind, Principal};
use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// The caller of a route that needs a signed-in user or an API key.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who the credential speaks for, and its session.
    pub who: Authenticated,
    /// The client's address (unspecified when unknown).
    pub ip: IpAddr,
    /// The `User-Agent` header, if any.
    user_agent: Option<axum::http::HeaderValue>,
}

impl Caller {
    /// The acting principal.
    pub fn principal(&self) -> &Principal {
        &self.who.principal
    }

    /// Where the request came from, for the audit log: made only by the routes that record
    /// something, not on every authenticated request.
    pub fn client(&self) -> Client {
        client(self.ip, self.user_agent.as_ref())
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = client_ip(parts, &state.limits.trusted_proxies);
        state.limits.per_ip.check(ip)?;
        let credential = bearer(&parts.headers)?;
        let auth = state.cx.auth();
        let who = if credential.starts_with(cloudx_core::auth::API_KEY_PREFIX) {
            auth.authenticate_bearer(credential).await?
        } else {
            auth.authenticate(credential)?
        };
        if let Some(id) = who.principal.user_id() {
            state.limits.per_user.check(id)?;
        }
        Ok(Self { who, ip, user_agent: parts.headers.get(header::USER_AGENT).cloned() })
    }
}

/// The client of a credential route (login, register, refresh): where it came from, after the
/// per-address limits of those routes.
#[derive(Debug, Clone)]
pub struct CredentialClient(pub Client);

impl FromRequestParts<AppState> for CredentialClient {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = client_ip(parts, &state.limits.trusted_proxies);
        state.limits.per_ip.check(ip)?;
        state.limits.credentials.check(ip)?;
        Ok(Self(client(ip, parts.headers.get(header::USER_AGENT))))
    }
}

/// The bearer credential of the `Authorization` header.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::new(ErrorKind::Unauthenticated, "sign in: send `Authorization: Bearer <access token or API key>`")
    })?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::new(ErrorKind::Unauthenticated, "the Authorization header is not valid text"))?;
    let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::new(
            ErrorKind::Unauthenticated,
            "the Authorization header must use the Bearer scheme: `Authorization: Bearer <token>`",
        ));
    }
    let credential = credential.trim();
    if credential.is_empty() {
        return Err(ApiError::new(ErrorKind::Unauthenticated, "the Authorization header carries no token"));
    }
    Ok(credential)
}

fn client(ip: IpAddr, user_agent: Option<&axum::http::HeaderValue>) -> Client {
    let ip = (!ip.is_unspecified()).then(|| ip.to_string());
    Client::new(ip, user_agent.and_then(|v| v.to_str().ok()))
}

/// The client's address: the peer, or — when the peer is a trusted reverse proxy — the nearest
/// address in `X-Forwarded-For` that is not one. Unspecified when unknown (in-process tests).
pub(crate) fn client_ip(parts: &Parts, trusted: &[IpAddr]) -> IpAddr {
    let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
        return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    };
    let peer = canonical(peer.ip());
    if !trusted.contains(&peer) {
        return peer;
    }
    // Each proxy appends the address it saw: read from the right, past our own proxies.
    let forwarded = parts.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>().map(canonical) {
            Ok(ip) if trusted.contains(&ip) => {}
            Ok(ip) => return ip,
            // A hop that is not an address: stop believing the header there.
            Err(_) => return peer,
        }
    }
    peer
}

/// IPv4 addresses as IPv4, even when they arrive mapped into IPv6.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The node's rate limiters, built from `http.*` configuration.
#[derive(Debug)]
pub struct Limits {
    per_ip: Limiter<IpAddr>,
    per_user: Limiter<Uuid>,
    credentials: Limiter<IpAddr>,
    trusted_proxies: Vec<IpAddr>,
}

impl Limits {
    /// The limits of `http`.
    pub fn new(http: &HttpConfig) -> Arc<Self> {
        Arc::new(Self {
            per_ip: Limiter::per_minute(http.rate_limit_per_ip, "requests from this address"),
            per_user: Limiter::per_minute(http.rate_limit_per_user, "requests for this account"),
            credentials: Limiter::per_minute(http.auth_rate_limit_per_ip, "sign-in requests from this address"),
            trusted_proxies: http.trusted_proxies.iter().copied().map(canonical).collect(),
        })
    }

    /// Counts a request from `ip` against the credential routes' limit (for routes that check
    /// a password after authenticating the caller).
    ///
    /// # Errors
    /// 429 with `Retry-After` beyond the limit.
    pub fn check_credentials(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.credentials.check(ip)
    }
}

/// One keyed limit; `None` when configured as 0 (no limit).
struct Limiter<K: std::hash::Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    what: &'static str,
    per_minute: u32,
    /// Counts checks, to forget idle keys now and then.
    checks: AtomicU32,
}

impl<K: std::hash::Hash + Eq + Clone> std::fmt::Debug for Limiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("what", &self.what).field("per_minute", &self.per_minute).finish()
    }
}

/// Idle keys are swept after this many checks.
const SWEEP_EVERY: u32 = 1 << 14;

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    fn per_minute(per_minute: u32, what: &'static str) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        Self { limiter, what, per_minute, checks: AtomicU32::new(0) }
    }

    fn check(&self, key: K) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            // Keys whose bucket is full again behave exactly like absent ones.
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            Error::new(
                ErrorKind::RateLimited,
                format!("too many {} (limit {} per minute); try again in {secs} s", self.what, self.per_minute),
            )
            .with_retry_after(Duration::from_secs(secs.max(1)))
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, forwarded: &[&str]) -> Parts {
        let mut request = axum::http::Request::builder();
        for value in forwarded {
            request = request.header("x-forwarded-for", *value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        parts.extensions.insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        parts
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = [ip("10.0.0.1"), ip("10.0.0.2")];
        // Not a proxy: its header is the client's own claim.
        assert_eq!(client_ip(&parts("203.0.113.9:5000", &["1.2.3.4"]), &proxies), ip("203.0.113.9"));
        // Through our proxies: the nearest hop that is not ours, whatever the client prepended.
        assert_eq!(
            client_ip(&parts("10.0.0.1:5000", &["6.6.6.6, 198.51.100.7", "10.0.0.2"]), &proxies),
            ip("198.51.100.7")
        );
        // A garbled hop stops the walk at the proxy.
        assert_eq!(client_ip(&parts("10.0.0.1:5000", &["198.51.100.7, nonsense"]), &proxies), ip("10.0.0.1"));
        // IPv4-mapped IPv6 peers count as their IPv4 address.
        assert_eq!(client_ip(&parts("[::ffff:10.0.0.1]:5000", &["198.51.100.7"]), &proxies), ip("198.51.100.7"));
    }

    #[test]
    fn a_limit_refuses_beyond_its_quota_and_says_when_to_retry() {
        let limiter = Limiter::per_minute(3, "requests");
        for _ in 0..3 {
            limiter.check(1u8).unwrap();
        }
        let refused = axum::response::IntoResponse::into_response(limiter.check(1u8).unwrap_err());
        assert_eq!(refused.status(), 429);
        let after: u64 = refused.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((1..=20).contains(&after), "{after}");
        // Another key has its own quota; 0 means no limit.
        limiter.check(2u8).unwrap();
        let unlimited = Limiter::per_minute(0, "requests");
        for _ in 0..1000 {
            unlimited.check(1u8).unwrap();
        }
    }
}
