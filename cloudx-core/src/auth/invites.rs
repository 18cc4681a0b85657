//! Invites: one-time codes an administrator hands out so someone can register while
//! `auth.registration = invite`. Only the code's SHA-256 is stored; it is used up by the
//! registration that presents it, in the same transaction that creates the account.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::audit::{Client, Event, Outcome};
use super::{Auth, User, now, parse_role, token};
use crate::db::db_error;
use crate::error::{Error, ErrorKind, Result};
use crate::principal::{Principal, Role};

/// The prefix of invite codes.
pub const INVITE_PREFIX: &str = "cxi_";

/// How long an invite is valid unless the administrator says otherwise.
pub const DEFAULT_INVITE_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The longest an invite may be valid.
const MAX_INVITE_TTL: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

/// An invite as listed (never with its code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invite {
    /// The invite's id.
    pub id: Uuid,
    /// The role the new account gets.
    pub role: Role,
    /// The administrator who created it (unless since deleted).
    pub created_by: Option<Uuid>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When it was used, if it was.
    pub used_at: Option<DateTime<Utc>>,
    /// The account it created, if it was used (unless since deleted).
    pub used_by: Option<Uuid>,
}

/// An invite just created: the only time its code is available.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedInvite {
    /// The invite as it will be listed.
    #[serde(flatten)]
    pub invite: Invite,
    /// The one-time code to give to the person invited.
    pub code: String,
}

impl std::fmt::Debug for CreatedInvite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedInvite").field("invite", &self.invite).finish_non_exhaustive()
    }
}

type InviteRow = (Uuid, String, Option<Uuid>, DateTime<Utc>, DateTime<Utc>, Option<DateTime<Utc>>, Option<Uuid>);

fn invite((id, role, created_by, created_at, expires_at, used_at, used_by): InviteRow) -> Invite {
    Invite { id, role: parse_role(&role), created_by, created_at, expires_at, used_at, used_by }
}

pub(super) fn bad_invite() -> Error {
    Error::new(ErrorKind::PermissionDenied, "the invite code is not valid: unknown, already used or expired")
}

impl Auth {
    /// Creates a one-time invite for an account with `role`, valid for `ttl` (default 7 days,
    /// at most 90). Administrators only.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for a non-administrator, [`ErrorKind::InvalidInput`] for
    /// a validity outside 1 minute to 90 days.
    pub async fn create_invite(
        &self,
        actor: &Principal,
        role: Role,
        ttl: Option<std::time::Duration>,
        client: &Client,
    ) -> Result<CreatedInvite> {
        super::require_admin_change(actor)?;
        let ttl = ttl.unwrap_or(DEFAULT_INVITE_TTL);
        if ttl < std::time::Duration::from_secs(60) || ttl > MAX_INVITE_TTL {
            return Err(Error::invalid("expires_in: an invite is valid for 1 minute to 90 days"));
        }
        let at = now();
        let code = token::new_secret(INVITE_PREFIX)?;
        let invite = Invite {
            id: Uuid::now_v7(),
            role,
            created_by: actor.user_id(),
            created_at: at,
            expires_at: at + chrono::Duration::from_std(ttl).unwrap_or_default(),
            used_at: None,
            used_by: None,
        };
        on_db!(&self.db, |pool| sqlx::query(
            "INSERT INTO invites (id, code_hash, role, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        )
        .bind(invite.id)
        .bind(token::digest(&code))
        .bind(role.as_str())
        .bind(invite.created_by)
        .bind(at)
        .bind(invite.expires_at)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| db_error("creating an invite", e))?;
        self.audit(Event {
            action: "invite_create",
            outcome: Outcome::Success,
            actor: actor.user_id(),
            target: Some(format!("invite:{}", invite.id)),
            client,
            detail: Some(format!("role {}", role.as_str())),
        })
        .await?;
        Ok(CreatedInvite { invite, code })
    }

    /// Every invite, newest first. Administrators only.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for a non-administrator.
    pub async fn list_invites(&self, actor: &Principal) -> Result<Vec<Invite>> {
        super::require_admin(actor)?;
        let rows: Vec<InviteRow> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT id, role, created_by, created_at, expires_at, used_at, used_by FROM invites \
             ORDER BY created_at DESC, id DESC"
        )
        .fetch_all(pool)
        .await)
        .map_err(|e| db_error("listing invites", e))?;
        Ok(rows.into_iter().map(invite).collect())
    }

    /// Withdraws an unused invite (administrators only): its code stops working at once. It stays
    /// listed, expiring now.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for a non-administrator, [`ErrorKind::NotFound`] for an
    /// unknown id, [`ErrorKind::Conflict`] for an invite already used.
    pub async fn revoke_invite(&self, actor: &Principal, id: Uuid, client: &Client) -> Result<Invite> {
        super::require_admin_change(actor)?;
        let at = now();
        let row: Option<InviteRow> = on_db!(&self.db, |pool| sqlx::query_as(
            "UPDATE invites SET expires_at = CASE WHEN expires_at > $1 THEN $1 ELSE expires_at END \
             WHERE id = $2 AND used_at IS NULL \
             RETURNING id, role, created_by, created_at, expires_at, used_at, used_by"
        )
        .bind(at)
        .bind(id)
        .fetch_optional(pool)
        .await)
        .map_err(|e| db_error("withdrawing an invite", e))?;
        let Some(row) = row else {
            let exists = self.list_invites(actor).await?.into_iter().any(|i| i.id == id);
            return Err(if exists {
                Error::new(ErrorKind::Conflict, "this invite was already used; disable the account it made instead")
            } else {
                Error::not_found("no such invite")
            });
        };
        self.audit(Event {
            action: "invite_revoke",
            outcome: Outcome::Success,
            actor: actor.user_id(),
            target: Some(format!("invite:{id}")),
            client,
            detail: None,
        })
        .await?;
        Ok(invite(row))
    }

    /// Creates an account with the role an invite names, using the invite up, in one
    /// transaction: a failed registration leaves the invite usable, and two registrations
    /// with one code cannot both succeed.
    pub(super) async fn insert_invited_user(
        &self,
        code: &str,
        email: &str,
        display_name: &str,
        hash: &str,
    ) -> Result<User> {
        if !code.starts_with(INVITE_PREFIX) || code.len() > 128 {
            return Err(bad_invite());
        }
        let at = now();
        let id = Uuid::now_v7();
        let digest = token::digest(code);
        macro_rules! register {
            ($tx:expr) => {
                async {
                    let mut tx = $tx;
                    let claimed: Option<(Uuid, String)> = sqlx::query_as(
                        "UPDATE invites SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1 \
                         RETURNING id, role",
                    )
                    .bind(at)
                    .bind(&digest)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((invite, role)) = claimed else {
                        return Ok(None);
                    };
                    sqlx::query(
                        "INSERT INTO users (id, email, display_name, password_hash, role, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $6)",
                    )
                    .bind(id)
                    .bind(email)
                    .bind(display_name)
                    .bind(hash)
                    .bind(&role)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("UPDATE invites SET used_by = $1 WHERE id = $2")
                        .bind(id)
                        .bind(invite)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(Some(parse_role(&role)))
                }
                .await
            };
        }
        let registered = in_write_tx!(&self.db, |tx| register!(tx));
        match registered {
            Ok(Some(role)) => Ok(User {
                id,
                email: email.to_owned(),
                display_name: display_name.to_owned(),
                role,
                disabled: false,
                created_at: at,
            }),
            Ok(None) => Err(bad_invite()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(Error::new(ErrorKind::Conflict, "an account with this email already exists"))
            }
            Err(e) => Err(db_error("creating the account", e)),
        }
    }
}
