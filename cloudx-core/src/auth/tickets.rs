//! One-time WebSocket tickets: browsers cannot put an `Authorization` header on a WebSocket
//! upgrade, so a client trades its bearer credential for a ticket valid for 30 seconds and one
//! use, and passes that as `?ticket=`. This is the only credential ever accepted in a URL: it
//! is useless once redeemed or after 30 seconds, so a URL that ends up in a log gives nothing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Auth, Authenticated, now, parse_role, token};
use crate::db::db_error;
use crate::error::{Error, ErrorKind, Result};
use crate::principal::{Principal, Scopes};

/// The prefix of WebSocket tickets.
pub const TICKET_PREFIX: &str = "cxt_";

/// How long a ticket is valid.
pub const TICKET_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// A ticket just issued.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WsTicket {
    /// The ticket, for `?ticket=` on the WebSocket URL.
    pub ticket: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

impl std::fmt::Debug for WsTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTicket").field("expires_in", &self.expires_in).finish_non_exhaustive()
    }
}

fn bad_ticket() -> Error {
    Error::new(ErrorKind::Unauthenticated, "the WebSocket ticket is not valid: unknown, already used or expired")
}

type TicketRow = (Uuid, String, Option<Uuid>, Option<Uuid>, DateTime<Utc>);

impl Auth {
    /// Issues a one-time WebSocket ticket that acts as `who` (with its scopes). It is redeemed
    /// only while `who`'s session (or key) still works.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for the system principal, which has no account.
    pub async fn issue_ws_ticket(&self, who: &Authenticated) -> Result<WsTicket> {
        let Principal::User { id, scopes, api_key, .. } = &who.principal else {
            return Err(Error::invalid("the local system principal does not use WebSockets"));
        };
        let at = now();
        let ticket = token::new_secret(TICKET_PREFIX)?;
        let expires = at + chrono::Duration::from_std(TICKET_TTL).unwrap_or_default();
        // Expired tickets are cleared as new ones are issued; the table stays as small as the
        // last 30 seconds of upgrades.
        on_db!(&self.db, |pool| sqlx::query("DELETE FROM ws_tickets WHERE expires_at <= $1")
            .bind(at)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| db_error("clearing expired tickets", e))?;
        on_db!(&self.db, |pool| sqlx::query(
            "INSERT INTO ws_tickets (token_hash, user_id, scopes, api_key_id, session_id, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        )
        .bind(token::digest(&ticket))
        .bind(id)
        .bind(scopes.to_string())
        .bind(api_key)
        .bind(who.session_id)
        .bind(expires)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| db_error("issuing a ticket", e))?;
        Ok(WsTicket { ticket, expires_in: TICKET_TTL.as_secs() })
    }

    /// Redeems a WebSocket ticket, once: says whom it acts for. The account must still be
    /// enabled, and the session or key it came from still valid.
    ///
    /// # Errors
    /// [`ErrorKind::Unauthenticated`] for an unknown, used or expired ticket.
    pub async fn redeem_ws_ticket(&self, ticket: &str) -> Result<Principal> {
        if !ticket.starts_with(TICKET_PREFIX) || ticket.len() > 128 {
            return Err(bad_ticket());
        }
        let at = now();
        let row: Option<TicketRow> = on_db!(&self.db, |pool| sqlx::query_as(concat!(
            "DELETE FROM ws_tickets WHERE token_hash = $1 ",
            "RETURNING user_id, scopes, api_key_id, session_id, expires_at"
        ))
        .bind(token::digest(ticket))
        .fetch_optional(pool)
        .await)
        .map_err(|e| db_error("redeeming a ticket", e))?;
        let Some((user, scopes, api_key, session, _)) = row.filter(|(.., expires)| *expires > at) else {
            return Err(bad_ticket());
        };
        let owner: Option<(String,)> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT u.role FROM users u WHERE u.id = $1 AND u.disabled_at IS NULL AND ($2 IS NULL OR EXISTS (\
               SELECT 1 FROM api_keys k WHERE k.id = $2 AND k.revoked_at IS NULL \
               AND (k.expires_at IS NULL OR k.expires_at > $3))) \
             AND ($4 IS NULL OR EXISTS (SELECT 1 FROM sessions s WHERE s.id = $4 AND s.revoked_at IS NULL))"
        )
        .bind(user)
        .bind(api_key)
        .bind(at)
        .bind(session)
        .fetch_optional(pool)
        .await)
        .map_err(|e| db_error("redeeming a ticket", e))?;
        let (role,) = owner.ok_or_else(bad_ticket)?;
        let scopes = Scopes::parse(scopes.split(',')).map_err(|_| bad_ticket())?;
        Ok(Principal::User { id: user, role: parse_role(&role), scopes, api_key })
    }
}
