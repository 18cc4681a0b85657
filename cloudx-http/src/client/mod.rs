//! A client of the daemon's HTTP API (feature `client`), shared by the CLI and the Python
//! extension's remote mode.
//!
//! It speaks with an API key or a signed-in session. With a session it refreshes the access
//! token when the daemon says it has expired, retries the request once, and hands the rotated
//! tokens to a callback (so that a caller can store them: each refresh token works once).
//! Problem documents come back as [`cloudx_core::Error`]s of the kind their `code` names.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudx_core::auth::audit::{Entry, Verification};
use cloudx_core::auth::{ApiKey, CreatedApiKey, CreatedInvite, Invite, Tokens, User};
use cloudx_core::{Error, ErrorKind, Result, Role, Scopes};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use uuid::Uuid;

pub use crate::routes::auth::{LoginResponse, Me};

mod agent;
mod files;
mod jobs;
pub mod sync;
pub mod target;

pub use self::agent::EventPage;
pub use self::files::{Downloaded, Opened, write_file_atomically};

/// How the client proves who it is.
#[derive(Clone, Default)]
pub enum Credential {
    /// None: only the public routes work.
    #[default]
    Anonymous,
    /// An API key (`cxk_...`).
    ApiKey(String),
    /// A session: the access token, and the refresh token that gets the next one.
    Session {
        /// The JWT sent as the bearer token.
        access_token: String,
        /// The refresh token (each works once).
        refresh_token: String,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Anonymous => "Anonymous",
            Credential::ApiKey(_) => "ApiKey(<redacted>)",
            Credential::Session { .. } => "Session(<redacted>)",
        })
    }
}

type OnRefresh = Arc<dyn Fn(&Tokens) + Send + Sync>;

/// How long an API call may wait for its answer; a file download, for each of its chunks.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(120);

/// A client of one daemon.
#[derive(Clone)]
pub struct Client {
    base: reqwest::Url,
    http: reqwest::Client,
    /// For file transfers: no read timeout, which reqwest applies until the answer's head
    /// arrives, so it would cut off any upload longer than itself.
    transfers: reqwest::Client,
    credential: Arc<Mutex<Credential>>,
    on_refresh: Option<OnRefresh>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the daemon at `base_url` (`http://` or `https://`), without a credential.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a URL that is not an http(s) URL.
    pub fn new(base_url: &str) -> Result<Self> {
        let mut base = reqwest::Url::parse(base_url.trim())
            .map_err(|e| Error::invalid(format!("the daemon URL `{base_url}` is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(Error::invalid(format!(
                "the daemon URL `{base_url}` must be http://HOST[:PORT] or https://..."
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("cloudx/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10))
        };
        let built = |b: reqwest::ClientBuilder| {
            b.build().map_err(|e| Error::new(ErrorKind::Internal, format!("cannot set up the HTTP client: {e}")))
        };
        let http = built(builder().read_timeout(TIMEOUT))?;
        let transfers = built(builder())?;
        Ok(Self { base, http, transfers, credential: Arc::new(Mutex::new(Credential::Anonymous)), on_refresh: None })
    }

    /// Uses `credential` from now on.
    #[must_use]
    pub fn with_credential(self, credential: Credential) -> Self {
        *self.credential.lock().unwrap_or_else(PoisonError::into_inner) = credential;
        self
    }

    /// Calls `f` with the new tokens after every refresh (to store them).
    #[must_use]
    pub fn on_refresh(mut self, f: impl Fn(&Tokens) + Send + Sync + 'static) -> Self {
        self.on_refresh = Some(Arc::new(f));
        self
    }

    /// The daemon's base URL.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// The daemon's host when it is reached over plain `http://` and is not this machine: then
    /// passwords and tokens would cross a network unencrypted.
    pub fn cleartext_remote_host(&self) -> Option<&str> {
        if self.base.scheme() != "http" {
            return None;
        }
        let host = self.base.host_str()?;
        let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>();
        let local = host.eq_ignore_ascii_case("localhost") || ip.is_ok_and(|ip| ip.is_loopback());
        (!local).then_some(host)
    }

    /// The credential in use.
    pub fn credential(&self) -> Credential {
        self.credential.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Signs in; the client then acts with the new session.
    ///
    /// # Errors
    /// [`ErrorKind::Unauthenticated`] for wrong credentials, [`ErrorKind::RateLimited`] when
    /// attempts are being delayed, [`ErrorKind::Unavailable`] when the daemon cannot be reached.
    pub async fn login(&self, email: &str, password: &str) -> Result<LoginResponse> {
        let body = json!({"email": email, "password": password});
        let response: LoginResponse = self.send(Method::POST, "api/v1/auth/login", Some(&body), false).await?;
        *self.credential.lock().unwrap_or_else(PoisonError::into_inner) = Credential::Session {
            access_token: response.tokens.access_token.clone(),
            refresh_token: response.tokens.refresh_token.clone(),
        };
        Ok(response)
    }

    /// Ends the session (its tokens stop working) and forgets it.
    ///
    /// # Errors
    /// As any call; [`ErrorKind::InvalidInput`] with an API key, which has no session.
    pub async fn logout(&self) -> Result<()> {
        self.send_empty(Method::POST, "api/v1/auth/logout", None::<&()>).await?;
        *self.credential.lock().unwrap_or_else(PoisonError::into_inner) = Credential::Anonymous;
        Ok(())
    }

    /// The caller's account and scopes.
    ///
    /// # Errors
    /// As any call.
    pub async fn me(&self) -> Result<Me> {
        self.send(Method::GET, "api/v1/auth/me", None::<&()>, true).await
    }

    /// Creates an API key for the caller; its secret is in the answer only.
    ///
    /// # Errors
    /// As any call.
    pub async fn create_api_key(
        &self,
        name: &str,
        scopes: Scopes,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<CreatedApiKey> {
        let body = json!({"name": name, "scopes": scopes, "expires_at": expires_at});
        self.send(Method::POST, "api/v1/api-keys", Some(&body), true).await
    }

    /// The caller's API keys.
    ///
    /// # Errors
    /// As any call.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        self.send(Method::GET, "api/v1/api-keys", None::<&()>, true).await
    }

    /// Revokes one of the caller's keys.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for a key that is not the caller's.
    pub async fn revoke_api_key(&self, id: Uuid) -> Result<ApiKey> {
        self.send(Method::DELETE, &format!("api/v1/api-keys/{id}"), None::<&()>, true).await
    }

    /// Every account (administrators).
    ///
    /// # Errors
    /// As any call.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        self.send(Method::GET, "api/v1/users", None::<&()>, true).await
    }

    /// Creates an invite (administrators).
    ///
    /// # Errors
    /// As any call.
    pub async fn create_invite(&self, role: Role, expires_in: Option<Duration>) -> Result<CreatedInvite> {
        let body = json!({"role": role, "expires_in": expires_in.map(|d| d.as_secs())});
        self.send(Method::POST, "api/v1/invites", Some(&body), true).await
    }

    /// Every invite (administrators).
    ///
    /// # Errors
    /// As any call.
    pub async fn list_invites(&self) -> Result<Vec<Invite>> {
        self.send(Method::GET, "api/v1/invites", None::<&()>, true).await
    }

    /// A page of the audit log, newest first (administrators).
    ///
    /// # Errors
    /// As any call.
    pub async fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<Entry>> {
        let mut path = format!("api/v1/audit?limit={limit}");
        if let Some(before) = before {
            path.push_str(&format!("&before={before}"));
        }
        self.send(Method::GET, &path, None::<&()>, true).await
    }

    /// Checks the audit log's hash chain (administrators).
    ///
    /// # Errors
    /// As any call.
    pub async fn verify_audit_log(&self) -> Result<Verification> {
        self.send(Method::GET, "api/v1/audit/verify", None::<&()>, true).await
    }

    /// A signed-in GET of `path` with the query pairs that have a value, read as JSON.
    async fn get_with_query<T: DeserializeOwned>(&self, path: &str, pairs: &[(&str, Option<String>)]) -> Result<T> {
        let mut url = self.base.join(path).map_err(|e| Error::invalid(e.to_string()))?;
        {
            let mut query = url.query_pairs_mut();
            for (name, value) in pairs {
                if let Some(value) = value {
                    query.append_pair(name, value);
                }
            }
        }
        let response = self.exchange_with(Method::GET, url, true, Ok).await?;
        files::json_of(&self.base, response).await
    }

    async fn send_empty<B: Serialize>(&self, method: Method, path: &str, body: Option<&B>) -> Result<()> {
        self.exchange(method, path, body, true).await.map(drop)
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        authenticated: bool,
    ) -> Result<T> {
        let response = self.exchange(method, path, body, authenticated).await?;
        let bytes = response.bytes().await.map_err(|e| unreachable_daemon(&self.base, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("the daemon at {} sent an answer this client cannot read: {e}", self.base),
            )
        })
    }

    /// Sends the request; with a session whose access token has expired, refreshes once and
    /// sends it again.
    async fn exchange<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        authenticated: bool,
    ) -> Result<reqwest::Response> {
        let url = self.base.join(path).map_err(|e| Error::invalid(format!("bad path {path}: {e}")))?;
        self.exchange_with(method, url, authenticated, |request| {
            Ok(match body {
                Some(body) => request.json(body),
                None => request,
            })
        })
        .await
    }

    /// [`exchange`](Self::exchange) with the request completed by `build`, which is called
    /// again for the retry after a refresh (so that a streamed body can be opened anew).
    async fn exchange_with(
        &self,
        method: Method,
        url: reqwest::Url,
        authenticated: bool,
        build: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder>,
    ) -> Result<reqwest::Response> {
        self.exchange_via(&self.http, method, url, authenticated, build).await
    }

    /// [`exchange_with`](Self::exchange_with) on the client for file transfers.
    async fn transfer(
        &self,
        method: Method,
        url: reqwest::Url,
        build: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder>,
    ) -> Result<reqwest::Response> {
        self.exchange_via(&self.transfers, method, url, true, build).await
    }

    async fn exchange_via(
        &self,
        http: &reqwest::Client,
        method: Method,
        url: reqwest::Url,
        authenticated: bool,
        build: impl Fn(reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder>,
    ) -> Result<reqwest::Response> {
        let mut refreshed = false;
        loop {
            let credential = self.credential();
            let mut request = http.request(method.clone(), url.clone());
            if authenticated {
                match &credential {
                    Credential::Anonymous => {}
                    Credential::ApiKey(key) => request = request.bearer_auth(key),
                    Credential::Session { access_token, .. } => request = request.bearer_auth(access_token),
                }
            }
            let request = build(request)?;
            let response = request.send().await.map_err(|e| unreachable_daemon(&self.base, &e))?;
            if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
                return Ok(response);
            }
            let status = response.status();
            let error = problem(&self.base, response).await;
            if status == StatusCode::UNAUTHORIZED
                && authenticated
                && !refreshed
                && let Credential::Session { refresh_token, .. } = credential
            {
                self.refresh(&refresh_token).await?;
                refreshed = true;
                continue;
            }
            return Err(error);
        }
    }

    /// Exchanges the refresh token (a request of its own: never itself refreshed).
    async fn refresh(&self, refresh_token: &str) -> Result<()> {
        let url = self.base.join("api/v1/auth/refresh").map_err(|e| Error::invalid(e.to_string()))?;
        let response = self
            .http
            .post(url)
            .json(&json!({"refresh_token": refresh_token}))
            .send()
            .await
            .map_err(|e| unreachable_daemon(&self.base, &e))?;
        if !response.status().is_success() {
            let e = problem(&self.base, response).await;
            return Err(if e.kind() == ErrorKind::Unauthenticated {
                Error::new(
                    ErrorKind::Unauthenticated,
                    format!("the session has ended ({}); sign in again", e.message()),
                )
            } else {
                e
            });
        }
        let tokens: Tokens = response.json().await.map_err(|e| unreachable_daemon(&self.base, &e))?;
        *self.credential.lock().unwrap_or_else(PoisonError::into_inner) = Credential::Session {
            access_token: tokens.access_token.clone(),
            refresh_token: tokens.refresh_token.clone(),
        };
        if let Some(on_refresh) = &self.on_refresh {
            on_refresh(&tokens);
        }
        Ok(())
    }
}

fn unreachable_daemon(base: &reqwest::Url, e: &reqwest::Error) -> Error {
    let why = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        e.to_string()
    };
    Error::new(ErrorKind::Unavailable, format!("the daemon at {base} did not answer: {why}"))
}

/// The error a problem document describes.
async fn problem(base: &reqwest::Url, response: reqwest::Response) -> Error {
    let status = response.status();
    let retry_after =
        response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let code = body["code"].as_str().unwrap_or_default();
    let kind = ErrorKind::ALL.into_iter().find(|k| k.code() == code).unwrap_or(match status.as_u16() {
        400 | 422 => ErrorKind::InvalidInput,
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        412 => ErrorKind::PreconditionFailed,
        413 => ErrorKind::PayloadTooLarge,
        429 => ErrorKind::RateLimited,
        507 => ErrorKind::QuotaExceeded,
        503 => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    });
    let detail = body["detail"].as_str().map_or_else(
        // Not a problem document: most likely not a cloudx daemon (or a proxy in front of it).
        || format!("{base} answered {status} without a cloudx error document; is this the URL of a cloudx daemon?"),
        str::to_owned,
    );
    let error = Error::new(kind, detail);
    match retry_after {
        Some(secs) => error.with_retry_after(Duration::from_secs(secs)),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleartext_is_flagged_only_for_other_machines() {
        for (url, flagged) in [
            ("http://127.0.0.1:8080", None),
            ("http://localhost:8080", None),
            ("http://[::1]:8080", None),
            ("https://cloudx.example.com", None),
            ("http://cloudx.example.com", Some("cloudx.example.com")),
            ("http://10.0.0.5:8080", Some("10.0.0.5")),
        ] {
            assert_eq!(Client::new(url).unwrap().cleartext_remote_host(), flagged, "{url}");
        }
    }
}
