//! API keys: long-lived secrets for scripts, the CLI and notebooks, each with scopes and an
//! optional expiry. The secret is shown once; only its SHA-256 is stored, with a short prefix
//! to recognise it by. Every use reads the key's row, so a revocation holds at once on every node.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::audit::{Client, Event, Outcome};
use super::{Auth, Authenticated, now, parse_role, token};
use crate::db::db_error;
use crate::error::{Error, ErrorKind, Result};
use crate::principal::{Principal, Role, Scopes};

/// The prefix of API keys.
pub const API_KEY_PREFIX: &str = "cxk_";

/// How many characters of a key (after [`API_KEY_PREFIX`]) are kept to recognise it.
const SHOWN: usize = 8;

/// The most keys one account may hold (revoked ones included).
const MAX_KEYS_PER_USER: i64 = 100;

/// `last_used_at` is written at most this often per key, so that busy keys do not turn every
/// request into a write.
const LAST_USED_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// An API key as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKey {
    /// The key's id.
    pub id: Uuid,
    /// The name its owner gave it.
    pub name: String,
    /// The start of the key (`cxk_` and 8 characters), to recognise it.
    pub prefix: String,
    /// What it may do.
    pub scopes: Scopes,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new API key.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// A name to recognise it by (1 to 100 characters).
    pub name: String,
    /// What it may do; `admin` only for an administrator.
    pub scopes: Scopes,
    /// When it stops working; `None` for never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key just created: the only time its secret is available.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedApiKey {
    /// The key as it will be listed.
    #[serde(flatten)]
    pub key: ApiKey,
    /// The secret, to send as `Authorization: Bearer cxk_...`. Shown once.
    pub secret: String,
}

impl std::fmt::Debug for CreatedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiKey").field("key", &self.key).finish_non_exhaustive()
    }
}

type KeyRow =
    (Uuid, String, String, String, DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn api_key((id, name, prefix, scopes, created_at, expires_at, last_used_at, revoked_at): KeyRow) -> ApiKey {
    ApiKey {
        id,
        name,
        prefix,
        // Written by this code only; a list it cannot read grants nothing.
        scopes: Scopes::parse(scopes.split(',')).unwrap_or(Scopes::NONE),
        created_at,
        expires_at,
        last_used_at,
        revoked_at,
    }
}

fn bad_key(why: &str) -> Error {
    Error::new(ErrorKind::Unauthenticated, why)
}

impl Auth {
    /// Creates an API key for the acting user. Keys are made from a signed-in session (or by
    /// the local system principal acting as a user), never with another key.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] when acting with an API key, or asking a non-administrator
    /// key for the `admin` scope; [`ErrorKind::InvalidInput`] for a bad name or an expiry in the
    /// past; [`ErrorKind::Conflict`] past 100 keys.
    pub async fn create_api_key(&self, actor: &Principal, new: NewApiKey, client: &Client) -> Result<CreatedApiKey> {
        let (user, role) = match actor {
            Principal::User { api_key: Some(_), .. } => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    "API keys are created from a signed-in session, not with another key",
                ));
            }
            Principal::User { id, role, .. } => (*id, *role),
            _ => return Err(Error::invalid("the local system principal has no account to hold a key")),
        };
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(Error::invalid("name: 1 to 100 characters, no control characters"));
        }
        if new.scopes.contains(Scopes::ADMIN) && role != Role::Admin {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "only an administrator's key can have the admin scope",
            ));
        }
        let at = now();
        if new.expires_at.is_some_and(|e| e <= at) {
            return Err(Error::invalid("expires_at: must be in the future"));
        }
        let held: i64 = on_db!(&self.db, |pool| sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE user_id = $1")
            .bind(user)
            .fetch_one(pool)
            .await)
        .map_err(|e| db_error("counting API keys", e))?;
        if held >= MAX_KEYS_PER_USER {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("an account holds at most {MAX_KEYS_PER_USER} API keys; delete the account's old ones"),
            ));
        }
        let secret = token::new_secret(API_KEY_PREFIX)?;
        let key = ApiKey {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            prefix: secret[..API_KEY_PREFIX.len() + SHOWN].to_owned(),
            scopes: new.scopes,
            created_at: at,
            expires_at: new.expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        on_db!(&self.db, |pool| sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, scopes, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )
        .bind(key.id)
        .bind(user)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(token::digest(&secret))
        .bind(key.scopes.to_string())
        .bind(at)
        .bind(key.expires_at)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| db_error("creating an API key", e))?;
        self.audit(Event {
            action: "api_key_create",
            outcome: Outcome::Success,
            actor: Some(user),
            target: Some(format!("api_key:{}", key.id)),
            client,
            detail: Some(format!("{} ({})", key.prefix, key.scopes)),
        })
        .await?;
        Ok(CreatedApiKey { key, secret })
    }

    /// The acting user's API keys, newest first.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] without the `read` scope.
    pub async fn list_api_keys(&self, actor: &Principal) -> Result<Vec<ApiKey>> {
        actor.require(Scopes::READ)?;
        let user = actor.user_id().ok_or_else(|| Error::invalid("the local system principal has no API keys"))?;
        let rows: Vec<KeyRow> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT id, name, prefix, scopes, created_at, expires_at, last_used_at, revoked_at \
             FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id DESC"
        )
        .bind(user)
        .fetch_all(pool)
        .await)
        .map_err(|e| db_error("listing API keys", e))?;
        Ok(rows.into_iter().map(api_key).collect())
    }

    /// Revokes one of the acting user's keys (an administrator: anyone's). It stops working at
    /// once, on every node.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for a key that is not the actor's (whether or not it exists),
    /// [`ErrorKind::PermissionDenied`] without the `write` scope.
    pub async fn revoke_api_key(&self, actor: &Principal, id: Uuid, client: &Client) -> Result<ApiKey> {
        actor.require(Scopes::WRITE)?;
        let owner: Option<(Uuid,)> =
            on_db!(&self.db, |pool| sqlx::query_as("SELECT user_id FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await)
            .map_err(|e| db_error("reading an API key", e))?;
        match owner {
            Some((owner,)) if actor.is_admin() || actor.user_id() == Some(owner) => {}
            _ => return Err(Error::not_found("no such API key")),
        }
        let row: KeyRow = on_db!(&self.db, |pool| sqlx::query_as(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 \
             RETURNING id, name, prefix, scopes, created_at, expires_at, last_used_at, revoked_at"
        )
        .bind(now())
        .bind(id)
        .fetch_one(pool)
        .await)
        .map_err(|e| db_error("revoking an API key", e))?;
        let key = api_key(row);
        self.audit(Event {
            action: "api_key_revoke",
            outcome: Outcome::Success,
            actor: actor.user_id(),
            target: Some(format!("api_key:{id}")),
            client,
            detail: Some(key.prefix.clone()),
        })
        .await?;
        Ok(key)
    }

    /// Checks an API key and says whose it is, with the key's scopes.
    ///
    /// # Errors
    /// [`ErrorKind::Unauthenticated`] for an unknown, revoked or expired key, or when its
    /// account is disabled.
    pub async fn authenticate_api_key(&self, secret: &str) -> Result<Authenticated> {
        if !secret.starts_with(API_KEY_PREFIX) || secret.len() > 128 {
            return Err(bad_key("the API key is not valid"));
        }
        type Row = (Uuid, Uuid, String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
        let row: Option<Row> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT k.id, k.user_id, u.role, k.scopes, k.expires_at, k.revoked_at, k.last_used_at \
             FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.key_hash = $1 AND u.disabled_at IS NULL"
        )
        .bind(token::digest(secret))
        .fetch_optional(pool)
        .await)
        .map_err(|e| db_error("checking an API key", e))?;
        let Some((id, user, role, scopes, expires_at, revoked_at, last_used_at)) = row else {
            return Err(bad_key("the API key is not valid"));
        };
        let at = now();
        if revoked_at.is_some() {
            return Err(bad_key("the API key has been revoked"));
        }
        if expires_at.is_some_and(|e| e <= at) {
            return Err(bad_key("the API key has expired"));
        }
        if last_used_at.is_none_or(|last| at - last >= LAST_USED_EVERY) {
            on_db!(&self.db, |pool| sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
                .bind(at)
                .bind(id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()))
            .map_err(|e| db_error("recording an API key's use", e))?;
        }
        let scopes = Scopes::parse(scopes.split(',')).map_err(|e| {
            tracing::error!(key = %id, error = %e, "an API key's stored scopes are unreadable; refusing it");
            Error::new(ErrorKind::Unauthenticated, "this API key cannot be used; create a new one")
        })?;
        Ok(Authenticated {
            principal: Principal::User { id: user, role: parse_role(&role), scopes, api_key: Some(id) },
            session_id: None,
        })
    }

    /// The principal an API key acts as now, by the key's id: its owner with the owner's
    /// current role and the key's scopes (for work submitted with the key and done later).
    ///
    /// # Errors
    /// [`ErrorKind::Unauthenticated`] for a key that is gone, revoked or expired, or whose
    /// owner is disabled.
    pub async fn api_key_principal(&self, id: Uuid) -> Result<Principal> {
        type Row = (Uuid, String, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
        let row: Option<Row> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT k.user_id, u.role, k.scopes, k.expires_at, k.revoked_at \
             FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = $1 AND u.disabled_at IS NULL"
        )
        .bind(id)
        .fetch_optional(pool)
        .await)
        .map_err(|e| db_error("checking an API key", e))?;
        let Some((user, role, scopes, expires_at, revoked_at)) = row else {
            return Err(bad_key("the API key is gone, or its owner is disabled"));
        };
        if revoked_at.is_some() {
            return Err(bad_key("the API key has been revoked"));
        }
        if expires_at.is_some_and(|e| e <= now()) {
            return Err(bad_key("the API key has expired"));
        }
        let scopes = Scopes::parse(scopes.split(','))
            .map_err(|_| Error::new(ErrorKind::Unauthenticated, "the API key's scopes are unreadable"))?;
        Ok(Principal::User { id: user, role: parse_role(&role), scopes, api_key: Some(id) })
    }

    /// `principal` as it stands now, for work done on its behalf later (a job, an open
    /// stream): an API key's principal again (see [`Auth::api_key_principal`]), an account's
    /// with its current role, the system principal as it is.
    ///
    /// # Errors
    /// [`ErrorKind::Unauthenticated`] for a key that is gone, revoked or expired, or an account
    /// that is disabled; [`ErrorKind::NotFound`] for an account that is gone.
    pub async fn current(&self, principal: &Principal) -> Result<Principal> {
        match principal {
            Principal::User { api_key: Some(key), .. } => self.api_key_principal(*key).await,
            Principal::User { id, scopes, .. } => {
                let user = self.me(principal).await?;
                if user.disabled {
                    return Err(Error::new(
                        ErrorKind::Unauthenticated,
                        format!("the account {} is disabled", user.email),
                    ));
                }
                Ok(Principal::User { id: *id, role: user.role, scopes: *scopes, api_key: None })
            }
            other => Ok(other.clone()),
        }
    }

    /// Checks a bearer credential of either kind: an API key (`cxk_...`) or an access token.
    ///
    /// # Errors
    /// As [`Auth::authenticate`] and [`Auth::authenticate_api_key`].
    pub async fn authenticate_bearer(&self, credential: &str) -> Result<Authenticated> {
        if credential.starts_with(API_KEY_PREFIX) {
            self.authenticate_api_key(credential).await
        } else {
            self.authenticate(credential)
        }
    }
}
