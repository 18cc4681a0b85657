//! Revocations reach every process at once.
//!
//! Access tokens are checked against an in-memory set of ended sessions and disabled users.
//! The process that ends a session updates its own set directly; the others hear of it:
//!
//! - on Postgres, through `NOTIFY cloudx_auth` (every node `LISTEN`s; after a lost connection
//!   it reloads the whole set, so nothing said meanwhile is missed);
//! - on SQLite, whose other users are processes on the same machine (`cloudx user disable`
//!   while `cloudx serve` runs), by reloading the set every second.

use std::sync::{PoisonError, RwLock, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Revoked, now};
use crate::db::{Database, db_error};
use crate::error::Result;

/// The Postgres notification channel.
pub(super) const CHANNEL: &str = "cloudx_auth";

/// How often SQLite re-reads the revocations (and Postgres retries a failed reload).
const SQLITE_POLL: Duration = Duration::from_secs(1);

/// Session ids per notification (a payload holds at most 8000 bytes).
const IDS_PER_NOTICE: usize = 150;

/// A change to announce.
#[derive(Debug)]
pub(super) enum Change<'a> {
    /// These sessions ended.
    Sessions(&'a [Uuid]),
    /// This user was disabled or deleted.
    UserRevoked(Uuid),
    /// This user was enabled again.
    UserEnabled(Uuid),
}

/// The notice for a change to one account (`None` for ended sessions, which [`announce`]
/// sends in parts), for a caller that sends it inside its own transaction.
pub(super) fn payload(change: &Change<'_>) -> Option<String> {
    match change {
        Change::Sessions(_) => None,
        Change::UserRevoked(id) => Some(format!("u {id}")),
        Change::UserEnabled(id) => Some(format!("e {id}")),
    }
}

/// Tells the other nodes (Postgres only; SQLite's poll needs no message).
pub(super) async fn announce(db: &Database, change: Change<'_>) -> Result<()> {
    let Database::Postgres(pool) = db else { return Ok(()) };
    let payloads: Vec<String> = match change {
        Change::Sessions(ids) => ids
            .chunks(IDS_PER_NOTICE)
            .map(|chunk| {
                let ids: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
                format!("s {}", ids.join(" "))
            })
            .collect(),
        user => payload(&user).into_iter().collect(),
    };
    for payload in payloads {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(pool)
            .await
            .map_err(|e| db_error("announcing a revocation", e))?;
    }
    Ok(())
}

/// Applies a notification to the set.
fn apply(revoked: &RwLock<Revoked>, payload: &str) {
    let mut words = payload.split(' ');
    let kind = words.next();
    let ids = words.filter_map(|w| Uuid::parse_str(w).ok());
    let mut set = revoked.write().unwrap_or_else(PoisonError::into_inner);
    set.generation += 1;
    match kind {
        Some("s") => {
            let at = now();
            set.sessions.extend(ids.map(|id| (id, at)));
        }
        Some("u") => set.users.extend(ids),
        Some("e") => ids.for_each(|id| {
            set.users.remove(&id);
        }),
        _ => tracing::warn!(payload, "unknown revocation notice"),
    }
}

/// Reads the revocations that matter now: sessions ended since `since`, disabled users, and
/// users deleted since `since`.
pub(super) async fn load(db: &Database, since: DateTime<Utc>) -> Result<(Vec<(Uuid, DateTime<Utc>)>, Vec<Uuid>)> {
    let sessions: Vec<(Uuid, DateTime<Utc>)> = on_db!(db, |pool| sqlx::query_as(
        "SELECT id, revoked_at FROM sessions WHERE revoked_at IS NOT NULL AND revoked_at > $1"
    )
    .bind(since)
    .fetch_all(pool)
    .await)
    .map_err(|e| db_error("reading revoked sessions", e))?;
    let users: Vec<(Uuid,)> = on_db!(db, |pool| {
        sqlx::query_as(
        "SELECT id FROM users WHERE disabled_at IS NOT NULL UNION SELECT id FROM deleted_users WHERE deleted_at > $1"
    )
    .bind(since)
    .fetch_all(pool)
    .await
    })
    .map_err(|e| db_error("reading disabled and deleted users", e))?;
    Ok((sessions, users.into_iter().map(|(id,)| id).collect()))
}

/// Replaces the set with what the database says, unless it changed while the database was
/// read (then only adds: the next reload settles it).
pub(super) async fn reload(db: &Database, revoked: &RwLock<Revoked>, horizon: chrono::Duration) -> Result<()> {
    let generation = revoked.read().unwrap_or_else(PoisonError::into_inner).generation;
    let (sessions, users) = load(db, now() - horizon).await?;
    let mut set = revoked.write().unwrap_or_else(PoisonError::into_inner);
    if set.generation == generation {
        set.sessions = sessions.into_iter().collect();
        set.users = users.into_iter().collect();
        set.prune_at = super::PRUNE_MIN.max(2 * set.sessions.len());
    } else {
        set.sessions.extend(sessions);
        set.users.extend(users);
    }
    Ok(())
}

/// Keeps `revoked` in step with the other processes until it is dropped.
pub(super) fn spawn(
    db: Database,
    revoked: Weak<RwLock<Revoked>>,
    horizon: chrono::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        match &db {
            Database::Postgres(pool) => listen(pool, &db, &revoked, horizon).await,
            Database::Sqlite(_) => loop {
                tokio::time::sleep(SQLITE_POLL).await;
                let Some(set) = revoked.upgrade() else { return };
                if let Err(e) = reload(&db, &set, horizon).await {
                    tracing::warn!(error = %e, "could not re-read revocations");
                }
            },
        }
    })
}

async fn listen(pool: &sqlx::PgPool, db: &Database, revoked: &Weak<RwLock<Revoked>>, horizon: chrono::Duration) {
    // A pool of its own: the listening connection is never returned, and closing the main pool
    // waits for every connection of it.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with((*pool.connect_options()).clone());
    let pool = &pool;
    let mut listener = loop {
        match sqlx::postgres::PgListener::connect_with(pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => break listener,
                Err(e) => tracing::warn!(error = %e, "cannot listen for revocations; retrying"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot listen for revocations; retrying"),
        }
        if revoked.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // Set when notices may have been missed: the whole set is read again, and again every
    // second while that fails. To begin with: anything revoked before this node listened.
    let mut stale = true;
    loop {
        if stale {
            let Some(set) = revoked.upgrade() else { return };
            stale = match reload(db, &set, horizon).await {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "could not re-read revocations; retrying");
                    true
                }
            };
        }
        let notice = if stale {
            // Do not wait for a notice (which may be long in coming) to retry the reload.
            match tokio::time::timeout(SQLITE_POLL, listener.try_recv()).await {
                Ok(notice) => notice,
                Err(_) => continue,
            }
        } else {
            listener.try_recv().await
        };
        let Some(set) = revoked.upgrade() else { return };
        match notice {
            Ok(Some(notice)) => apply(&set, notice.payload()),
            // The connection was lost and is being re-established: what was said meanwhile is
            // lost, so read it all again.
            Ok(None) => stale = true,
            // A failed reconnect; the next `try_recv` tries again, and may succeed without
            // saying so: reload then.
            Err(e) => {
                tracing::warn!(error = %e, "revocation listener failed; retrying");
                stale = true;
                drop(set);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
