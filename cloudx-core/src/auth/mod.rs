//! The `Auth` port: accounts, password login, access tokens with rotating refresh tokens,
//! sessions, and the audit log, on SQLite or Postgres.
//!
//! Every decision is made here, so the daemon, the CLI and the Python extension are equally
//! safe: calls that act on someone's data take the acting [`Principal`].
//!
//! Sessions follow the strictest of the usual designs (GoTrue's rotation with reuse detection,
//! PocketBase's revocation on password change):
//!
//! - a login opens a session: a family of opaque refresh tokens, of which only SHA-256 digests
//!   are stored;
//! - each refresh replaces the token with its successor, once: the replacement is a single
//!   conditional `UPDATE`, so two concurrent refreshes of one token cannot both win and fork
//!   the family;
//! - presenting a replaced token again within `auth.refresh_reuse_grace` returns the same
//!   successor (a client that lost the reply); after it, that is a reuse: the whole session is
//!   revoked and the event audited;
//! - logout, a password change (for the user's other sessions), disabling or deleting a user
//!   revoke sessions, and their access tokens stop working at once: every access-token check
//!   consults an in-memory revocation set that these calls update.

mod api_keys;
pub mod audit;
mod cache;
mod invites;
pub mod password;
mod throttle;
mod tickets;
pub mod token;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, SubsecRound as _, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use self::api_keys::{API_KEY_PREFIX, ApiKey, CreatedApiKey, NewApiKey};
use self::audit::{Client, Event, Outcome};
pub use self::invites::{CreatedInvite, DEFAULT_INVITE_TTL, INVITE_PREFIX, Invite};
use self::password::{Hasher, Verified};
use self::throttle::LoginThrottle;
pub use self::tickets::{TICKET_PREFIX, TICKET_TTL, WsTicket};
use self::token::Keys;
use self::watch::Change;
use crate::config::{AuthConfig, Registration};
use crate::db::{Database, db_error};
use crate::error::{Error, ErrorKind, Result};
use crate::principal::{Principal, Role};

/// Serialises changes that could take away the last administrator, on Postgres.
const ADMINS_LOCK: i64 = 0x636c_6f75_6478_0004;

/// A change to an account that [`Auth::apply_keeping_an_admin`] makes.
#[derive(Debug, Clone, Copy)]
enum AdminChange {
    SetDisabled(bool),
    SetRole(Role),
    Delete,
}

/// Serialises the creation of the first account on Postgres.
const FIRST_ADMIN_LOCK: i64 = 0x636c_6f75_6478_0003;

/// The prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "cxr_";

/// An account as shown to its owner and to administrators (never with its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    /// The account id.
    pub id: Uuid,
    /// The email address, lower-cased.
    pub email: String,
    /// The name shown to others.
    pub display_name: String,
    /// The global role.
    pub role: Role,
    /// Whether the account is disabled (its sessions and keys do not work).
    pub disabled: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// What a successful login or refresh hands to the client.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tokens {
    /// The JWT to send as `Authorization: Bearer ...`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// The opaque token that gets the next access token, once.
    pub refresh_token: String,
    /// The session these tokens belong to.
    pub session_id: Uuid,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("session_id", &self.session_id).finish_non_exhaustive()
    }
}

/// A new account.
#[derive(Clone)]
pub struct NewUser {
    /// The email address (compared case-insensitively).
    pub email: String,
    /// The password, checked against the policy.
    pub password: String,
    /// The name shown to others.
    pub display_name: String,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser").field("email", &self.email).field("display_name", &self.display_name).finish()
    }
}

/// Who a bearer credential speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The acting principal.
    pub principal: Principal,
    /// The session of an access token; `None` for an API key.
    pub session_id: Option<Uuid>,
}

/// Users and sessions whose tokens must stop working before they expire.
#[derive(Debug, Default)]
struct Revoked {
    /// Ended sessions, with when they ended: once no access token of theirs can still be
    /// valid, they are dropped (so the set stays as small as the recent revocations).
    sessions: HashMap<Uuid, DateTime<Utc>>,
    /// When `sessions` is pruned next: when it has grown past this size.
    prune_at: usize,
    users: HashSet<Uuid>,
    /// Counts changes, so that a reload can tell whether the set changed while it read.
    generation: u64,
}

/// Below this many ended sessions in memory, none are pruned.
const PRUNE_MIN: usize = 1024;

/// The identity service of one instance.
#[derive(Clone)]
pub struct Auth {
    db: Database,
    config: Arc<AuthConfig>,
    hasher: Hasher,
    keys: Keys,
    revoked: Arc<RwLock<Revoked>>,
    throttle: Arc<LoginThrottle>,
    watch: Arc<Watch>,
    accounts: Arc<cache::AccountCache>,
}

/// The task that keeps the revocation set in step with other processes; stopped when the last
/// [`Auth`] goes away or on [`Auth::close`].
#[derive(Debug)]
struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("db", &self.db.backend()).finish_non_exhaustive()
    }
}

type UserRow = (Uuid, String, String, String, Option<DateTime<Utc>>, DateTime<Utc>);
type UserAndHash = (Uuid, String, String, String, Option<DateTime<Utc>>, DateTime<Utc>, String);
macro_rules! user_columns {
    () => {
        "id, email, display_name, role, disabled_at, created_at"
    };
}

fn user((id, email, display_name, role, disabled_at, created_at): UserRow) -> User {
    User { id, email, display_name, role: parse_role(&role), disabled: disabled_at.is_some(), created_at }
}

fn parse_role(role: &str) -> Role {
    if role == "admin" { Role::Admin } else { Role::Member }
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The one answer to every failed login: the same for an unknown email and a wrong password.
fn bad_credentials() -> Error {
    Error::new(ErrorKind::Unauthenticated, "the email or the password is wrong")
}

fn bad_refresh() -> Error {
    Error::new(ErrorKind::Unauthenticated, "the refresh token is not valid; sign in again")
}

fn normalize_email(email: &str) -> Result<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid { Ok(email) } else { Err(Error::invalid("email: not an email address (name@example.com)")) }
}

fn check_display_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(Error::invalid("display_name: 1 to 100 characters, no control characters"));
    }
    Ok(name.to_owned())
}

impl Auth {
    /// Opens the identity service on `db`, loading the sessions and users whose tokens are
    /// revoked.
    ///
    /// # Errors
    /// When the configuration is unusable or the database fails.
    pub async fn open(db: Database, config: &AuthConfig, jwt_secret: &[u8], ed25519_pem: Option<&str>) -> Result<Self> {
        let keys = Keys::new(config, jwt_secret, ed25519_pem)?;
        // Sessions ended longer ago than this have no valid access token left.
        let horizon = keys.ttl() + chrono::Duration::from_std(config.leeway).unwrap_or_default();
        let revoked = Arc::new(RwLock::new(Revoked::default()));
        watch::reload(&db, &revoked, horizon).await?;
        let watch = Watch(watch::spawn(db.clone(), Arc::downgrade(&revoked), horizon));
        Ok(Self {
            hasher: Hasher::new(config)?,
            keys,
            throttle: Arc::new(LoginThrottle::new(config.login_delay_after, config.login_delay_max)),
            config: Arc::new(config.clone()),
            db,
            revoked,
            watch: Arc::new(watch),
            accounts: Arc::default(),
        })
    }

    /// The public keys that check this instance's access tokens, as a JWKS document (RFC 7517):
    /// the Ed25519 key with `auth.jwt_algorithm = "EdDSA"`, none with HS256.
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.jwks()
    }

    /// Stops listening for other processes' revocations (before the database pool closes).
    pub fn close(&self) {
        self.watch.0.abort();
    }

    fn revoke_in_memory(&self, sessions: impl IntoIterator<Item = Uuid>, user: Option<Uuid>) {
        let at = now();
        let mut revoked = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
        revoked.generation += 1;
        revoked.sessions.extend(sessions.into_iter().map(|id| (id, at)));
        revoked.users.extend(user);
        if revoked.sessions.len() > revoked.prune_at {
            let cutoff = at - self.keys.ttl() - chrono::Duration::from_std(self.config.leeway).unwrap_or_default();
            revoked.sessions.retain(|_, ended| *ended > cutoff);
            revoked.prune_at = PRUNE_MIN.max(2 * revoked.sessions.len());
        }
    }

    async fn audit(&self, event: Event<'_>) -> Result<()> {
        audit::append(&self.db, &event).await
    }

    /// Creates an account. The first account of an instance becomes its administrator;
    /// after that `auth.registration` decides (an invite code is needed in `invite` mode).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a bad email, name or password (the message says which
    /// rule), [`ErrorKind::PermissionDenied`] when registration is closed or needs an invite,
    /// [`ErrorKind::Conflict`] when the email is taken.
    pub async fn register(&self, new: NewUser, invite: Option<&str>, client: &Client) -> Result<User> {
        let email = normalize_email(&new.email)?;
        let display_name = check_display_name(&new.display_name)?;
        password::check_policy(&new.password, self.config.password_min_length, &email)?;
        let mut hash = None;
        if self.config.registration != Registration::Closed && self.user_count().await? == 0 {
            let hashed = self.hasher.hash(&new.password).await?;
            if let Some(user) = self.insert_first_admin(&email, &display_name, &hashed).await? {
                self.audit(Event {
                    action: "register",
                    outcome: Outcome::Success,
                    actor: Some(user.id),
                    target: Some(format!("user:{}", user.id)),
                    client,
                    detail: Some("role admin, the first account".into()),
                })
                .await?;
                return Ok(user);
            }
            // Someone else was first, a moment ago: the usual rules apply.
            hash = Some(hashed);
        }
        let role = {
            match (self.config.registration, invite) {
                (Registration::Open, None) => Role::Member,
                (Registration::Open | Registration::Invite, Some(code)) => {
                    let hash = match hash {
                        Some(hash) => hash,
                        None => self.hasher.hash(&new.password).await?,
                    };
                    let user = self.insert_invited_user(code, &email, &display_name, &hash).await?;
                    self.audit(Event {
                        action: "register",
                        outcome: Outcome::Success,
                        actor: Some(user.id),
                        target: Some(format!("user:{}", user.id)),
                        client,
                        detail: Some(format!("role {}, by invite", user.role.as_str())),
                    })
                    .await?;
                    return Ok(user);
                }
                (Registration::Invite, None) => {
                    return Err(Error::new(
                        ErrorKind::PermissionDenied,
                        "registration needs an invite code from an administrator (auth.registration = invite)",
                    ));
                }
                (Registration::Closed, _) => {
                    return Err(Error::new(
                        ErrorKind::PermissionDenied,
                        "registration is closed; an administrator adds accounts (auth.registration = closed; \
                         the first administrator comes from `cloudx user add --admin`)",
                    ));
                }
            }
        };
        let hash = match hash {
            Some(hash) => hash,
            None => self.hasher.hash(&new.password).await?,
        };
        let user = self.insert_user(&email, &display_name, &hash, role).await?;
        self.audit(Event {
            action: "register",
            outcome: Outcome::Success,
            actor: Some(user.id),
            target: Some(format!("user:{}", user.id)),
            client,
            detail: Some(format!("role {}", role.as_str())),
        })
        .await?;
        Ok(user)
    }

    /// Creates an account with the given role, on behalf of an administrator (or the local
    /// system principal: `cloudx user add`). Registration settings do not apply.
    ///
    /// # Errors
    /// As [`Auth::register`]; [`ErrorKind::PermissionDenied`] for a non-administrator.
    pub async fn add_user(&self, actor: &Principal, new: NewUser, role: Role, client: &Client) -> Result<User> {
        require_admin_change(actor)?;
        let email = normalize_email(&new.email)?;
        let display_name = check_display_name(&new.display_name)?;
        password::check_policy(&new.password, self.config.password_min_length, &email)?;
        let hash = self.hasher.hash(&new.password).await?;
        let user = self.insert_user(&email, &display_name, &hash, role).await?;
        self.audit(Event {
            action: "user_add",
            outcome: Outcome::Success,
            actor: actor.user_id(),
            target: Some(format!("user:{}", user.id)),
            client,
            detail: Some(format!("role {}", role.as_str())),
        })
        .await?;
        Ok(user)
    }

    async fn user_count(&self) -> Result<i64> {
        on_db!(&self.db, |pool| sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(pool).await)
            .map_err(|e| db_error("counting users", e))
    }

    /// Creates the instance's first account, as its administrator, unless another account
    /// exists by then: `None` when someone else was first. Two registrations racing on an empty
    /// instance cannot both become administrators: the conditional insert runs in a write
    /// transaction, on Postgres under an advisory lock.
    async fn insert_first_admin(&self, email: &str, display_name: &str, hash: &str) -> Result<Option<User>> {
        let at = now();
        let id = Uuid::now_v7();
        let sql = "INSERT INTO users (id, email, display_name, password_hash, role, created_at, updated_at) \
                   SELECT $1, $2, $3, $4, 'admin', $5, $5 WHERE NOT EXISTS (SELECT 1 FROM users)";
        let inserted = in_write_tx!(&self.db, lock = FIRST_ADMIN_LOCK, |tx| async {
            let mut tx = tx;
            let n = sqlx::query(sql)
                .bind(id)
                .bind(email)
                .bind(display_name)
                .bind(hash)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n)
        }
        .await)
        .map_err(|e| db_error("creating the first account", e))?;
        Ok((inserted == 1).then(|| User {
            id,
            email: email.to_owned(),
            display_name: display_name.to_owned(),
            role: Role::Admin,
            disabled: false,
            created_at: at,
        }))
    }

    async fn insert_user(&self, email: &str, display_name: &str, hash: &str, role: Role) -> Result<User> {
        let at = now();
        let id = Uuid::now_v7();
        let inserted = on_db!(&self.db, |pool| sqlx::query(
            "INSERT INTO users (id, email, display_name, password_hash, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)"
        )
        .bind(id)
        .bind(email)
        .bind(display_name)
        .bind(hash)
        .bind(role.as_str())
        .bind(at)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()));
        match inserted {
            Ok(_) => Ok(User {
                id,
                email: email.to_owned(),
                display_name: display_name.to_owned(),
                role,
                disabled: false,
                created_at: at,
            }),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(Error::new(ErrorKind::Conflict, "an account with this email already exists"))
            }
            Err(e) => Err(db_error("creating the account", e)),
        }
    }

    async fn find_by_email(&self, email: &str) -> Result<Option<(User, String)>> {
        let sql = concat!("SELECT ", user_columns!(), ", password_hash FROM users WHERE email = $1");
        let row: Option<UserAndHash> =
            on_db!(&self.db, |pool| sqlx::query_as(sql).bind(email).fetch_optional(pool).await)
                .map_err(|e| db_error("reading the account", e))?;
        Ok(row.map(|(id, email, name, role, disabled, created, hash)| {
            (user((id, email, name, role, disabled, created)), hash)
        }))
    }

    async fn find_by_id(&self, id: Uuid) -> Result<Option<(User, String)>> {
        let sql = concat!("SELECT ", user_columns!(), ", password_hash FROM users WHERE id = $1");
        let row: Option<UserAndHash> = on_db!(&self.db, |pool| sqlx::query_as(sql).bind(id).fetch_optional(pool).await)
            .map_err(|e| db_error("reading the account", e))?;
        Ok(row.map(|(id, email, name, role, disabled, created, hash)| {
            (user((id, email, name, role, disabled, created)), hash)
        }))
    }

    /// Signs in with email and password and opens a session.
    ///
    /// An unknown email and a wrong password give the same error after about the same time;
    /// a disabled account gives it too (after a right password only). A hash made with older
    /// argon2 parameters is replaced.
    ///
    /// # Errors
    /// [`ErrorKind::Unauthenticated`] for wrong credentials.
    pub async fn login(&self, email: &str, password: &str, client: &Client) -> Result<(User, Tokens)> {
        let email = email.trim().to_lowercase();
        let armed = self.throttle.attempt(&email)?;
        let checked = async {
            let found =
                if password.len() > password::MAX_PASSWORD_BYTES { None } else { self.find_by_email(&email).await? };
            let verified = self.hasher.verify(password, found.as_ref().map(|(_, hash)| hash.as_str())).await?;
            Ok::<_, Error>((found, verified))
        }
        .await;
        let (found, verified) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                // The server failed, not the caller: the attempt does not count.
                self.throttle.forgive(&email);
                return Err(e);
            }
        };
        let user = match (found, &verified) {
            (Some((user, _)), Verified::Yes | Verified::YesRehashed(_)) if !user.disabled => user,
            (found, _) => {
                let why = match &found {
                    Some((user, _)) if user.disabled => "account disabled",
                    Some(_) => "wrong password",
                    None => "no such account",
                };
                let detail = match armed {
                    Some(delay) => format!("{why}; next attempt delayed {} s", delay.as_secs()),
                    None => why.to_owned(),
                };
                self.audit(Event {
                    action: "login",
                    outcome: Outcome::Failure,
                    actor: None,
                    target: Some(found.map_or_else(|| format!("email:{email}"), |(u, _)| format!("user:{}", u.id))),
                    client,
                    detail: Some(detail),
                })
                .await?;
                return Err(bad_credentials());
            }
        };
        if let Verified::YesRehashed(new_hash) = verified {
            on_db!(&self.db, |pool| sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
                .bind(&new_hash)
                .bind(now())
                .bind(user.id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()))
            .map_err(|e| db_error("updating the password hash", e))?;
        }
        self.throttle.succeeded(&email);
        let tokens = self.open_session(&user, client).await?;
        self.audit(Event {
            action: "login",
            outcome: Outcome::Success,
            actor: Some(user.id),
            target: Some(format!("session:{}", tokens.session_id)),
            client,
            detail: None,
        })
        .await?;
        Ok((user, tokens))
    }

    async fn open_session(&self, user: &User, client: &Client) -> Result<Tokens> {
        let at = now();
        let session = Uuid::now_v7();
        let expires = at + chrono::Duration::from_std(self.config.session_ttl).unwrap_or(chrono::Duration::days(30));
        let refresh = token::new_secret(REFRESH_PREFIX)?;
        macro_rules! insert {
            ($pool:expr) => {async {
                let mut tx = $pool.begin().await?;
                sqlx::query(
                    "INSERT INTO sessions (id, user_id, created_at, expires_at, ip, user_agent) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(session)
                .bind(user.id)
                .bind(at)
                .bind(expires)
                .bind(&client.ip)
                .bind(&client.user_agent)
                .execute(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(Uuid::now_v7())
                    .bind(session)
                    .bind(token::digest(&refresh))
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }.await};
        }
        on_db!(&self.db, |pool| insert!(pool)).map_err(|e| db_error("opening a session", e))?;
        Ok(Tokens {
            access_token: self.keys.issue(user.id, user.role, session, at)?,
            token_type: "Bearer".to_owned(),
            expires_in: self.keys.ttl().num_seconds(),
            refresh_token: refresh,
            session_id: session,
        })
    }

    /// Exchanges a refresh token for new tokens, once. See the module documentation for
    /// rotation, the grace window and reuse detection.
    ///
    /// # Errors
    /// [`ErrorKind::Unauthenticated`] for an unknown, expired, revoked or reused token (a reuse
    /// also revokes the session), or when the account is disabled.
    pub async fn refresh(&self, refresh_token: &str, client: &Client) -> Result<Tokens> {
        if !refresh_token.starts_with(REFRESH_PREFIX) || refresh_token.len() > 128 {
            return Err(bad_refresh());
        }
        let digest = token::digest(refresh_token);
        let at = now();
        let successor = token::new_secret(REFRESH_PREFIX)?;
        let successor_id = Uuid::now_v7();
        let sealed = token::mask(refresh_token, successor.as_bytes());
        // The rotation itself: one conditional UPDATE, so of two concurrent refreshes of a token
        // exactly one wins; the session must be live and its owner enabled. The successor is
        // inserted in the same transaction: a loser waits for it, and never sees a rotated
        // token without its successor (which it would take for a reuse).
        macro_rules! rotate {
            ($tx:expr) => {
                async {
                    let mut tx = $tx;
                    let won: Option<(Uuid,)> = sqlx::query_as(
                        "UPDATE refresh_tokens SET used_at = $1, successor_id = $2, successor_sealed = $3 \
                         WHERE token_hash = $4 AND used_at IS NULL AND session_id IN (\
                           SELECT s.id FROM sessions s JOIN users u ON u.id = s.user_id \
                           WHERE s.revoked_at IS NULL AND s.expires_at > $1 AND u.disabled_at IS NULL) \
                         RETURNING session_id",
                    )
                    .bind(at)
                    .bind(successor_id)
                    .bind(&sealed)
                    .bind(&digest)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some((session,)) = won {
                        sqlx::query(
                            "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at) VALUES ($1, $2, $3, $4)",
                        )
                        .bind(successor_id)
                        .bind(session)
                        .bind(token::digest(&successor))
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(won.map(|(session,)| session))
                }
                .await
            };
        }
        let won = in_write_tx!(&self.db, |tx| rotate!(tx)).map_err(|e| db_error("refreshing a session", e))?;
        if let Some(session) = won {
            let (user_id, role) = self.session_owner(session).await?.ok_or_else(bad_refresh)?;
            self.audit(Event {
                action: "refresh",
                outcome: Outcome::Success,
                actor: Some(user_id),
                target: Some(format!("session:{session}")),
                client,
                detail: None,
            })
            .await?;
            return self.tokens_for(user_id, role, session, successor, at);
        }
        self.refresh_lost(refresh_token, &digest, at, client).await
    }

    /// A refresh token that did not rotate: unknown, dead, or already used. Within the grace
    /// window a used token gets its successor again, if that is still unused; otherwise a used
    /// token is a reuse and revokes its session.
    async fn refresh_lost(
        &self,
        refresh_token: &str,
        digest: &[u8],
        at: DateTime<Utc>,
        client: &Client,
    ) -> Result<Tokens> {
        type Row = (
            Uuid,
            Option<DateTime<Utc>>,
            Option<Uuid>,
            Option<Vec<u8>>,
            Option<DateTime<Utc>>,
            DateTime<Utc>,
            Uuid,
            String,
            Option<DateTime<Utc>>,
        );
        let row: Option<Row> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT t.session_id, t.used_at, t.successor_id, t.successor_sealed, s.revoked_at, s.expires_at, \
                    u.id, u.role, u.disabled_at \
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id \
             WHERE t.token_hash = $1"
        )
        .bind(digest)
        .fetch_optional(pool)
        .await)
        .map_err(|e| db_error("refreshing a session", e))?;
        let Some((session, used_at, successor_id, sealed, revoked_at, expires_at, user_id, role, disabled)) = row
        else {
            return Err(bad_refresh());
        };
        if revoked_at.is_some() || expires_at <= at || disabled.is_some() {
            return Err(bad_refresh());
        }
        let Some(used_at) = used_at else {
            // Not used, yet it did not rotate: the session changed in between. Refuse.
            return Err(bad_refresh());
        };
        let grace = chrono::Duration::from_std(self.config.refresh_reuse_grace).unwrap_or_default();
        if at - used_at <= grace
            && let (Some(successor_id), Some(sealed)) = (successor_id, sealed)
        {
            let successor = String::from_utf8(token::mask(refresh_token, &sealed)).unwrap_or_default();
            let still_fresh: Option<(Uuid,)> = on_db!(&self.db, |pool| sqlx::query_as(
                "SELECT id FROM refresh_tokens WHERE id = $1 AND token_hash = $2 AND used_at IS NULL"
            )
            .bind(successor_id)
            .bind(token::digest(&successor))
            .fetch_optional(pool)
            .await)
            .map_err(|e| db_error("refreshing a session", e))?;
            if still_fresh.is_some() {
                return self.tokens_for(user_id, parse_role(&role), session, successor, at);
            }
        }
        // A reuse: someone holds a token that was already exchanged. Revoke the family.
        self.end_session(session, "refresh token reused").await?;
        self.audit(Event {
            action: "refresh_reuse",
            outcome: Outcome::Failure,
            actor: Some(user_id),
            target: Some(format!("session:{session}")),
            client,
            detail: Some("a used refresh token was presented again; the session is revoked".into()),
        })
        .await?;
        Err(bad_refresh())
    }

    fn tokens_for(&self, user: Uuid, role: Role, session: Uuid, refresh: String, at: DateTime<Utc>) -> Result<Tokens> {
        Ok(Tokens {
            access_token: self.keys.issue(user, role, session, at)?,
            token_type: "Bearer".to_owned(),
            expires_in: self.keys.ttl().num_seconds(),
            refresh_token: refresh,
            session_id: session,
        })
    }

    async fn session_owner(&self, session: Uuid) -> Result<Option<(Uuid, Role)>> {
        let row: Option<(Uuid, String)> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT u.id, u.role FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1"
        )
        .bind(session)
        .fetch_optional(pool)
        .await)
        .map_err(|e| db_error("reading a session", e))?;
        Ok(row.map(|(id, role)| (id, parse_role(&role))))
    }

    /// Ends one session, in the database and at once in this process's revocation set.
    async fn end_session(&self, session: Uuid, reason: &str) -> Result<()> {
        on_db!(&self.db, |pool| sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL"
        )
        .bind(now())
        .bind(reason)
        .bind(session)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| db_error("revoking a session", e))?;
        self.revoke_in_memory([session], None);
        watch::announce(&self.db, Change::Sessions(&[session])).await
    }

    /// Ends every live session of `user` but `except`, in one statement, and at once in this
    /// process's revocation set. Returns how many ended.
    async fn end_sessions_of(&self, user: Uuid, except: Option<Uuid>, reason: &str) -> Result<usize> {
        let ended: Vec<(Uuid,)> = on_db!(&self.db, |pool| sqlx::query_as(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
             WHERE user_id = $3 AND revoked_at IS NULL AND id <> $4 RETURNING id"
        )
        .bind(now())
        .bind(reason)
        .bind(user)
        .bind(except.unwrap_or(Uuid::nil()))
        .fetch_all(pool)
        .await)
        .map_err(|e| db_error("revoking sessions", e))?;
        let ended: Vec<Uuid> = ended.into_iter().map(|(id,)| id).collect();
        self.revoke_in_memory(ended.iter().copied(), None);
        watch::announce(&self.db, Change::Sessions(&ended)).await?;
        Ok(ended.len())
    }

    /// Checks an access token and says who it speaks for.
    ///
    /// # Errors
    /// [`ErrorKind::Unauthenticated`] for a bad token (see [`Keys::verify`]), a revoked
    /// session or a disabled or deleted account.
    pub fn authenticate(&self, access_token: &str) -> Result<Authenticated> {
        let claims = self.keys.verify(access_token)?;
        let revoked = self.revoked.read().unwrap_or_else(PoisonError::into_inner);
        if revoked.users.contains(&claims.sub) {
            return Err(Error::new(ErrorKind::Unauthenticated, "the account is disabled"));
        }
        if revoked.sessions.contains_key(&claims.sid) {
            return Err(Error::new(ErrorKind::Unauthenticated, "the session has ended; sign in again"));
        }
        Ok(Authenticated { principal: Principal::user(claims.sub, claims.role), session_id: Some(claims.sid) })
    }

    /// Ends the session of `who`: its refresh token and access tokens stop working.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn logout(&self, who: &Authenticated, client: &Client) -> Result<()> {
        let session = who.session_id.ok_or_else(|| {
            Error::invalid("an API key has no session to end; revoke the key instead (DELETE /api/v1/api-keys/{id})")
        })?;
        self.end_session(session, "logout").await?;
        self.audit(Event {
            action: "logout",
            outcome: Outcome::Success,
            actor: who.principal.user_id(),
            target: Some(format!("session:{session}")),
            client,
            detail: None,
        })
        .await
    }

    /// The principal of the account with `email`, for the local system principal to act as
    /// that user (for local tools such as the embedded Python's `as_user`, when it arrives).
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] unless `actor` is the system principal,
    /// [`ErrorKind::NotFound`] for an unknown email, [`ErrorKind::Conflict`] for a disabled account.
    pub async fn principal_for(&self, actor: &Principal, email: &str) -> Result<Principal> {
        if *actor != Principal::System {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "only the local system principal can act as another user",
            ));
        }
        let (user, _) = self
            .find_by_email(&email.trim().to_lowercase())
            .await?
            .ok_or_else(|| Error::not_found(format!("no account has the email {}", email.trim())))?;
        if user.disabled {
            return Err(Error::new(ErrorKind::Conflict, format!("the account {} is disabled", user.email)));
        }
        Ok(Principal::user(user.id, user.role))
    }

    /// The acting user's own account.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the account is gone, [`ErrorKind::InvalidInput`] for the
    /// system principal, which has no account.
    pub async fn me(&self, actor: &Principal) -> Result<User> {
        let id = actor.user_id().ok_or_else(|| Error::invalid("the local system principal has no account"))?;
        if let Some(user) = self.accounts.get(id) {
            return Ok(user);
        }
        let (user, _) = self.find_by_id(id).await?.ok_or_else(|| Error::not_found("the account no longer exists"))?;
        self.accounts.put(user.clone());
        Ok(user)
    }

    /// Changes the acting user's password (the current one is required) and ends every other
    /// session of theirs.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] when `current` is wrong (or with an API key),
    /// [`ErrorKind::RateLimited`] while wrong guesses are delayed, [`ErrorKind::InvalidInput`] when
    /// the new password breaks the policy.
    pub async fn change_password(&self, who: &Authenticated, current: &str, new: &str, client: &Client) -> Result<()> {
        let id = who.principal.user_id().ok_or_else(|| Error::invalid("the local system principal has no password"))?;
        let Some(session) = who.session_id else {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "changing the password needs a signed-in session, not an API key",
            ));
        };
        let (user, hash) =
            self.find_by_id(id).await?.ok_or_else(|| Error::not_found("the account no longer exists"))?;
        // Guessing the current password with a stolen access token is slowed down exactly like
        // guessing it at sign-in.
        let armed = self.throttle.attempt(&user.email)?;
        if self.hasher.verify(current, Some(&hash)).await? == Verified::No {
            self.audit(Event {
                action: "password_change",
                outcome: Outcome::Failure,
                actor: Some(id),
                target: Some(format!("user:{id}")),
                client,
                detail: Some(match armed {
                    Some(delay) => format!("wrong current password; next attempt delayed {} s", delay.as_secs()),
                    None => "wrong current password".into(),
                }),
            })
            .await?;
            // Not 401: the caller's token is fine, and a client must not take this for an
            // expired token and refresh.
            return Err(Error::new(ErrorKind::PermissionDenied, "the current password is wrong"));
        }
        self.throttle.succeeded(&user.email);
        password::check_policy(new, self.config.password_min_length, &user.email)?;
        let new_hash = self.hasher.hash(new).await?;
        on_db!(&self.db, |pool| sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(&new_hash)
            .bind(now())
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| db_error("changing the password", e))?;
        let others = self.end_sessions_of(id, Some(session), "password changed").await?;
        self.audit(Event {
            action: "password_change",
            outcome: Outcome::Success,
            actor: Some(id),
            target: Some(format!("user:{id}")),
            client,
            detail: Some(format!("{others} other session(s) ended")),
        })
        .await
    }

    /// Every account (administrators only).
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for a non-administrator.
    pub async fn list_users(&self, actor: &Principal) -> Result<Vec<User>> {
        require_admin(actor)?;
        let sql = concat!("SELECT ", user_columns!(), " FROM users ORDER BY created_at, id");
        let rows: Vec<UserRow> = on_db!(&self.db, |pool| sqlx::query_as(sql).fetch_all(pool).await)
            .map_err(|e| db_error("listing users", e))?;
        Ok(rows.into_iter().map(user).collect())
    }

    /// Disables or enables an account (administrators only). Disabling ends its sessions at once.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for a non-administrator, [`ErrorKind::NotFound`] for an
    /// unknown id, [`ErrorKind::Conflict`] for disabling oneself.
    pub async fn set_disabled(&self, actor: &Principal, id: Uuid, disabled: bool, client: &Client) -> Result<User> {
        require_admin_change(actor)?;
        if disabled && actor.user_id() == Some(id) {
            return Err(Error::new(ErrorKind::Conflict, "an administrator cannot disable their own account"));
        }
        let (target, _) = self.find_by_id(id).await?.ok_or_else(|| Error::not_found("no such user"))?;
        if self.apply_keeping_an_admin(&target, AdminChange::SetDisabled(disabled)).await? == 0 {
            return Err(Error::not_found("no such user"));
        }
        // This node at once; the others were told in the transaction.
        self.accounts.forget(id);
        if disabled {
            self.revoke_in_memory([], Some(id));
            self.end_sessions_of(id, None, "account disabled").await?;
        } else {
            let mut revoked = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
            revoked.generation += 1;
            revoked.users.remove(&id);
        }
        self.audit(Event {
            action: if disabled { "user_disable" } else { "user_enable" },
            outcome: Outcome::Success,
            actor: actor.user_id(),
            target: Some(format!("user:{id}")),
            client,
            detail: None,
        })
        .await?;
        Ok(User { disabled, ..target })
    }

    /// Changes an account's role and/or whether it is disabled (administrators only): what
    /// `PATCH /api/v1/users/{id}` does. The checks that do not depend on the change before it
    /// (nothing to change, disabling oneself) are made first; then the role, then the disabling,
    /// each in its own transaction with its own audit row.
    ///
    /// # Errors
    /// As [`Auth::set_role`] and [`Auth::set_disabled`]; [`ErrorKind::InvalidInput`] when
    /// neither is given.
    pub async fn update_user(
        &self,
        actor: &Principal,
        id: Uuid,
        role: Option<Role>,
        disabled: Option<bool>,
        client: &Client,
    ) -> Result<User> {
        require_admin_change(actor)?;
        if role.is_none() && disabled.is_none() {
            return Err(Error::invalid("nothing to change: send `role` and/or `disabled`"));
        }
        if disabled == Some(true) && actor.user_id() == Some(id) {
            return Err(Error::new(ErrorKind::Conflict, "an administrator cannot disable their own account"));
        }
        let mut user = None;
        if let Some(role) = role {
            user = Some(self.set_role(actor, id, role, client).await?);
        }
        if let Some(disabled) = disabled {
            user = Some(self.set_disabled(actor, id, disabled, client).await?);
        }
        user.ok_or_else(|| Error::invalid("nothing to change"))
    }

    /// Sets an account's global role (administrators only). Its sessions end, so that no
    /// token carries the old role.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for a non-administrator, [`ErrorKind::NotFound`] for an
    /// unknown id, [`ErrorKind::Conflict`] when it would leave no enabled administrator.
    pub async fn set_role(&self, actor: &Principal, id: Uuid, role: Role, client: &Client) -> Result<User> {
        require_admin_change(actor)?;
        let (target, _) = self.find_by_id(id).await?.ok_or_else(|| Error::not_found("no such user"))?;
        if self.apply_keeping_an_admin(&target, AdminChange::SetRole(role)).await? == 0 {
            return Err(Error::not_found("no such user"));
        }
        self.accounts.forget(id);
        if target.role != role {
            self.end_sessions_of(id, None, "role changed").await?;
        }
        self.audit(Event {
            action: "role_change",
            outcome: Outcome::Success,
            actor: actor.user_id(),
            target: Some(format!("user:{id}")),
            client,
            detail: Some(format!("{} -> {}", target.role.as_str(), role.as_str())),
        })
        .await?;
        Ok(User { role, ..target })
    }

    /// Applies `change` to `target`, refusing one that would leave no enabled administrator.
    /// The count and the change are one transaction, serialised with every other such change
    /// (SQLite: `BEGIN IMMEDIATE`; Postgres: an advisory lock), so two administrators demoting
    /// each other at once cannot both succeed. Returns the rows changed (0: no such user).
    ///
    /// The account is read inside the transaction, so the decision is made on what it is when
    /// the change is made. On Postgres, the other nodes are told inside the transaction too
    /// (`pg_notify` is delivered on commit), so a disabled or deleted account cannot stay usable
    /// elsewhere because a later step failed.
    async fn apply_keeping_an_admin(&self, target: &User, change: AdminChange) -> Result<u64> {
        let (id, at) = (target.id, now());
        let forget_before = at - self.keys.ttl() - chrono::Duration::from_std(self.config.leeway).unwrap_or_default();
        // SQLite's other processes re-read the database; only Postgres nodes need telling.
        let notice = match (&self.db, change) {
            (Database::Sqlite(_), _) | (_, AdminChange::SetRole(_)) => None,
            (_, AdminChange::SetDisabled(true) | AdminChange::Delete) => watch::payload(&Change::UserRevoked(id)),
            (_, AdminChange::SetDisabled(false)) => watch::payload(&Change::UserEnabled(id)),
        };
        macro_rules! apply {
            ($tx:expr) => {
                async {
                    let mut tx = $tx;
                    let current: Option<(String, Option<DateTime<Utc>>)> =
                        sqlx::query_as("SELECT role, disabled_at FROM users WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let Some((role, disabled_at)) = current else {
                        return Ok::<_, sqlx::Error>(Some(0));
                    };
                    let takes_an_admin = role == "admin"
                        && disabled_at.is_none()
                        && matches!(
                            change,
                            AdminChange::SetDisabled(true) | AdminChange::SetRole(Role::Member) | AdminChange::Delete
                        );
                    if takes_an_admin {
                        let admins: i64 = sqlx::query_scalar(
                            "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL",
                        )
                        .fetch_one(&mut *tx)
                        .await?;
                        if admins <= 1 {
                            return Ok(None);
                        }
                    }
                    let changed = match change {
                        AdminChange::SetDisabled(disabled) => {
                            sqlx::query("UPDATE users SET disabled_at = $1, updated_at = $2 WHERE id = $3")
                                .bind(disabled.then_some(at))
                                .bind(at)
                                .bind(id)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected()
                        }
                        AdminChange::SetRole(role) => {
                            sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE id = $3")
                                .bind(role.as_str())
                                .bind(at)
                                .bind(id)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected()
                        }
                        AdminChange::Delete => {
                            // Remembered while their access tokens can be valid: the sessions
                            // that said they were revoked go with the account.
                            sqlx::query("DELETE FROM deleted_users WHERE deleted_at < $1")
                                .bind(forget_before)
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query(
                                "INSERT INTO deleted_users (id, deleted_at) VALUES ($1, $2) \
                                 ON CONFLICT (id) DO UPDATE SET deleted_at = excluded.deleted_at",
                            )
                            .bind(id)
                            .bind(at)
                            .execute(&mut *tx)
                            .await?;
                            sqlx::query("DELETE FROM users WHERE id = $1")
                                .bind(id)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected()
                        }
                    };
                    if let Some(notice) = &notice {
                        sqlx::query("SELECT pg_notify($1, $2)")
                            .bind(watch::CHANNEL)
                            .bind(notice)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(Some(changed))
                }
                .await
            };
        }
        let applied = in_write_tx!(&self.db, lock = ADMINS_LOCK, |tx| apply!(tx)).map_err(|e| match e {
            // A project created for them since the check above.
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => Error::new(
                ErrorKind::Conflict,
                format!("{} owns projects: transfer them to another user or purge them first", target.email),
            ),
            e => db_error("updating the account", e),
        })?;
        applied.ok_or_else(|| {
            Error::new(
                ErrorKind::Conflict,
                format!("{} is the last enabled administrator; make another one first", target.email),
            )
        })
    }

    /// Deletes an account and everything that belongs to it (administrators only).
    ///
    /// # Errors
    /// As [`Auth::set_role`]; [`ErrorKind::Conflict`] for deleting oneself or the last enabled
    /// administrator.
    pub async fn delete_user(&self, actor: &Principal, id: Uuid, client: &Client) -> Result<()> {
        require_admin_change(actor)?;
        if actor.user_id() == Some(id) {
            return Err(Error::new(ErrorKind::Conflict, "an administrator cannot delete their own account"));
        }
        let (target, _) = self.find_by_id(id).await?.ok_or_else(|| Error::not_found("no such user"))?;
        let owned: i64 =
            on_db!(&self.db, |pool| sqlx::query_scalar("SELECT COUNT(*) FROM projects WHERE owner_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await)
            .map_err(|e| db_error("counting the user's projects", e))?;
        if owned > 0 {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "{} owns {owned} project(s), deleted ones included: transfer them to another user or purge them first (or disable the account instead)",
                    target.email
                ),
            ));
        }
        // One transaction: the account, its sessions and keys go, and it is remembered in
        // `deleted_users`, so that every node keeps refusing its access tokens.
        if self.apply_keeping_an_admin(&target, AdminChange::Delete).await? == 0 {
            return Err(Error::not_found("no such user"));
        }
        // This node at once; the others were told in the transaction.
        self.revoke_in_memory([], Some(id));
        self.accounts.forget(id);
        self.audit(Event {
            action: "user_delete",
            outcome: Outcome::Success,
            actor: actor.user_id(),
            target: Some(format!("user:{id}")),
            client,
            detail: None,
        })
        .await
    }

    /// The audit log, newest first (administrators only).
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for a non-administrator.
    pub async fn audit_log(&self, actor: &Principal, before: Option<i64>, limit: u32) -> Result<Vec<audit::Entry>> {
        require_admin(actor)?;
        audit::list(&self.db, before, limit.clamp(1, 1000)).await
    }

    /// Checks the audit log's hash chain (administrators only).
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for a non-administrator.
    pub async fn verify_audit_log(&self, actor: &Principal) -> Result<audit::Verification> {
        require_admin(actor)?;
        audit::verify(&self.db).await
    }
}

fn require_admin(actor: &Principal) -> Result<()> {
    if actor.is_admin() { Ok(()) } else { Err(Error::new(ErrorKind::PermissionDenied, "this needs an administrator")) }
}

/// An administrator's change (to accounts, invites): the `admin` scope to act as one, and
/// `write` to change anything, so that a `read,admin` key can audit but not alter.
fn require_admin_change(actor: &Principal) -> Result<()> {
    require_admin(actor)?;
    actor.require(crate::principal::Scopes::WRITE)
}
