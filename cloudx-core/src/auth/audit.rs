//! The audit log: one append-only table of security events, each row chained to the one before
//! by a SHA-256 hash so that an edited, inserted or deleted row is detected by [`verify`].

use chrono::{DateTime, SubsecRound as _, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::db::{Database, db_error};
use crate::error::Result;

/// Serialises appends across processes on Postgres (SQLite's `BEGIN IMMEDIATE` does it there).
const AUDIT_LOCK: i64 = 0x636c_6f75_6478_0002;

/// Where a request came from, as recorded in the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    /// The peer address.
    pub ip: Option<String>,
    /// The `User-Agent` header, cut to 256 characters.
    pub user_agent: Option<String>,
}

impl Client {
    /// A client seen at `ip` with `user_agent`.
    pub fn new(ip: Option<String>, user_agent: Option<&str>) -> Self {
        Self { ip, user_agent: user_agent.map(|ua| ua.chars().take(256).collect()) }
    }
}

/// Whether the recorded action succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It was done.
    Success,
    /// It was refused (wrong password, reused token, missing right).
    Failure,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

/// One event to record. Never put a password, token or secret in any field.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// What happened: `login`, `refresh_reuse`, `password_change`, ...
    pub action: &'static str,
    /// Whether it succeeded.
    pub outcome: Outcome,
    /// Who acted, when known.
    pub actor: Option<Uuid>,
    /// What it was done to (`user:<id>`, an email on a failed login, ...).
    pub target: Option<String>,
    /// Where from.
    pub client: &'a Client,
    /// A short, secret-free explanation.
    pub detail: Option<String>,
}

/// A row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Entry {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// When (UTC, microseconds).
    pub at: DateTime<Utc>,
    /// What happened.
    pub action: String,
    /// `success` or `failure`.
    pub outcome: String,
    /// Who acted.
    pub actor_id: Option<Uuid>,
    /// What it was done to.
    pub target: Option<String>,
    /// The client's address.
    pub ip: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// A short explanation.
    pub detail: Option<String>,
}

impl Entry {
    /// The hash that chains this row to `prev`: SHA-256 over the previous hash and a canonical
    /// JSON encoding of every field.
    fn chained_hash(&self, prev: &[u8]) -> Vec<u8> {
        let canonical = serde_json::to_vec(&(
            self.seq,
            self.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            &self.action,
            &self.outcome,
            self.actor_id,
            &self.target,
            &self.ip,
            &self.user_agent,
            &self.detail,
        ))
        .expect("plain values serialise");
        Sha256::new().chain_update(prev).chain_update(canonical).finalize().to_vec()
    }
}

/// The result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Verification {
    /// Rows checked.
    pub rows: i64,
    /// The first row whose hash does not match (edited, or the row before it was), if any.
    pub first_bad: Option<i64>,
}

type Row = (
    i64,
    DateTime<Utc>,
    String,
    String,
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Vec<u8>,
    Vec<u8>,
);

fn entry((seq, at, action, outcome, actor_id, target, ip, user_agent, detail, _, _): Row) -> Entry {
    Entry { seq, at, action, outcome, actor_id, target, ip, user_agent, detail }
}

macro_rules! columns {
    () => {
        "seq, at, action, outcome, actor_id, target, ip, user_agent, detail, prev_hash, hash"
    };
}

/// Appends `event`, chained to the last row.
///
/// # Errors
/// When the database fails.
pub(crate) async fn append(db: &Database, event: &Event<'_>) -> Result<()> {
    let at = Utc::now().trunc_subsecs(6);
    macro_rules! append_in {
        ($tx:expr) => {{
            let tx = &mut $tx;
            let last: Option<(i64, Vec<u8>)> =
                sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(|e| db_error("reading the audit log", e))?;
            let (seq, prev) = last.map_or((1, Vec::new()), |(seq, hash)| (seq + 1, hash));
            let row = Entry {
                seq,
                at,
                action: event.action.to_owned(),
                outcome: event.outcome.as_str().to_owned(),
                actor_id: event.actor,
                target: event.target.clone(),
                ip: event.client.ip.clone(),
                user_agent: event.client.user_agent.clone(),
                detail: event.detail.clone(),
            };
            let hash = row.chained_hash(&prev);
            sqlx::query(concat!(
                "INSERT INTO audit_log (",
                columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ))
            .bind(row.seq)
            .bind(row.at)
            .bind(row.action)
            .bind(row.outcome)
            .bind(row.actor_id)
            .bind(row.target)
            .bind(row.ip)
            .bind(row.user_agent)
            .bind(row.detail)
            .bind(prev)
            .bind(hash)
            .execute(&mut **tx)
            .await
            .map_err(|e| db_error("writing the audit log", e))?;
        }};
    }
    match db {
        Database::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(|e| db_error("writing the audit log", e))?;
            append_in!(tx);
            tx.commit().await.map_err(|e| db_error("writing the audit log", e))?;
        }
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await.map_err(|e| db_error("writing the audit log", e))?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(AUDIT_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("writing the audit log", e))?;
            append_in!(tx);
            tx.commit().await.map_err(|e| db_error("writing the audit log", e))?;
        }
    }
    Ok(())
}

/// Up to `limit` rows, newest first, starting below `before` (a `seq`) when given.
pub(crate) async fn list(db: &Database, before: Option<i64>, limit: u32) -> Result<Vec<Entry>> {
    let sql = concat!("SELECT ", columns!(), " FROM audit_log WHERE seq < $1 ORDER BY seq DESC LIMIT $2");
    let before = before.unwrap_or(i64::MAX);
    let rows: Vec<Row> =
        on_db!(db, |pool| sqlx::query_as(sql).bind(before).bind(i64::from(limit)).fetch_all(pool).await)
            .map_err(|e| db_error("reading the audit log", e))?;
    Ok(rows.into_iter().map(entry).collect())
}

/// Recomputes the chain from the first row; reports the first row that does not match.
pub(crate) async fn verify(db: &Database) -> Result<Verification> {
    let sql = concat!("SELECT ", columns!(), " FROM audit_log ORDER BY seq");
    let rows: Vec<Row> = on_db!(db, |pool| sqlx::query_as(sql).fetch_all(pool).await)
        .map_err(|e| db_error("reading the audit log", e))?;
    let mut prev: Vec<u8> = Vec::new();
    let count = rows.len() as i64;
    for (expected_seq, row) in (1..).zip(rows) {
        let (stored_prev, stored_hash) = (row.9.clone(), row.10.clone());
        let entry = entry(row);
        let bad = entry.seq != expected_seq || stored_prev != prev || entry.chained_hash(&prev) != stored_hash;
        if bad {
            return Ok(Verification { rows: count, first_bad: Some(entry.seq) });
        }
        prev = stored_hash;
    }
    Ok(Verification { rows: count, first_bad: None })
}
