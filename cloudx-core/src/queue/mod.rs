//! The Queue port: a durable job queue in the SQL database (SQLite or Postgres).
//!
//! A job is submitted `queued`; a worker claims it with a lease (`running`, `attempts` + 1) and
//! keeps the lease with heartbeats; it ends `succeeded`, or after a failure is queued again with
//! an exponential backoff until `max_attempts`, then `dead`; or it is `cancelled`. A lease that
//! expires makes the job claimable again, and every answer of a worker (heartbeat, event,
//! completion, failure) is fenced by the attempt it holds: a worker that lost its lease cannot
//! record anything. Claims take the oldest of the highest priority among jobs whose `run_at` has
//! come: `FOR UPDATE SKIP LOCKED` on Postgres, a `BEGIN IMMEDIATE` transaction on SQLite.
//!
//! This is the mechanism; who may submit, see and cancel which job is decided by the facade.

mod batch;
pub(crate) mod handlers;
mod jobs;
pub mod test_runner;
mod watch;
pub mod webhook;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::{Database, db_error};
use crate::error::{Error, ErrorKind, Result};

pub use self::jobs::PRIORITY_BOUND;
pub use self::test_runner::{TestFailure, TestLanguage, TestReport, TestRun, TestStatus};
pub use self::watch::JobWatch;
pub use self::worker::{Handlers, JobContext, JobError, Worker, WorkerOptions};

/// The Postgres channel on which submissions wake workers.
const CHANNEL: &str = "cloudx_jobs";

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum JobStatus {
    /// Waiting for a worker (or for its `run_at`).
    Queued,
    /// Leased to a worker.
    Running,
    /// Done.
    Succeeded,
    /// Out of attempts, or failed for good; an administrator can queue it again.
    Dead,
    /// Cancelled before it ended.
    Cancelled,
}

impl JobStatus {
    /// Its name (as stored, and in the API).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Dead => "dead",
            JobStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "dead" => JobStatus::Dead,
            "cancelled" => JobStatus::Cancelled,
            other => return Err(Error::new(ErrorKind::Internal, format!("a job has the unknown status `{other}`"))),
        })
    }

    /// Whether the job has ended (succeeded, dead or cancelled).
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Dead | JobStatus::Cancelled)
    }
}

/// A job to submit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewJob {
    /// The handler that runs it (`sandbox_exec`, `test_runner`, ...).
    pub kind: String,
    /// The project it belongs to, if any.
    #[serde(default)]
    pub project: Option<Uuid>,
    /// What the handler gets.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Higher runs first (default 0).
    #[serde(default)]
    pub priority: i64,
    /// Not before this time (default: now).
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// How many leases it may take before it is dead (default 3).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Submitting again with the same key (by the same account) returns the first job.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// A webhook told when the job ends: an `http(s)` URL whose host `worker.webhook_hosts`
    /// allows; the request is signed (see docs/architecture.md, "Webhooks").
    #[serde(default)]
    pub callback_url: Option<String>,
}

impl NewJob {
    /// A job of `kind` with `payload` and every other field at its default.
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            project: None,
            payload,
            priority: 0,
            run_at: None,
            max_attempts: None,
            idempotency_key: None,
            callback_url: None,
        }
    }
}

/// Which jobs to list (newest first).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct JobFilter {
    /// Only this project's.
    #[serde(default)]
    pub project: Option<Uuid>,
    /// Only this kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Only in this state.
    #[serde(default)]
    pub status: Option<JobStatus>,
    /// At most this many (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// A worker, as its row says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerInfo {
    /// Its id (the one its leases carry).
    pub id: Uuid,
    /// Host name and process id.
    pub name: String,
    /// The job kinds it runs.
    pub kinds: Vec<String>,
    /// Jobs it runs at once.
    pub concurrency: u32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// When it stopped, if it said so.
    pub stopped_at: Option<DateTime<Utc>>,
    /// `alive` (a heartbeat in the last [`WORKER_GONE_AFTER`]), `stopped`, or `gone` (silent).
    pub health: String,
    /// The jobs it holds now.
    pub running: Vec<Uuid>,
}

/// How many jobs of a kind are in a state (the queue's depth, for metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Depth {
    /// The kind.
    pub kind: String,
    /// The state.
    pub status: JobStatus,
    /// How many jobs.
    pub jobs: u64,
    /// Of the queued ones, the age of the oldest whose time has come (zero otherwise).
    pub oldest_ready: Duration,
}

/// How many workers are in each health, and the heartbeat lag of the alive ones (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerHealth {
    /// Workers that sent a heartbeat in the last [`WORKER_GONE_AFTER`].
    pub alive: u64,
    /// Workers that said they stopped (in the last day).
    pub stopped: u64,
    /// Workers silent for longer than [`WORKER_GONE_AFTER`] without saying they stopped (in the
    /// last day): crashed or cut off.
    pub gone: u64,
    /// The age of the oldest heartbeat among the alive workers (none without alive workers).
    pub oldest_alive_heartbeat: Option<Duration>,
}

/// A worker that has not sent a heartbeat for this long is gone.
pub const WORKER_GONE_AFTER: Duration = Duration::from_secs(30);

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    /// Its id.
    pub id: Uuid,
    /// Its handler.
    pub kind: String,
    /// Its project.
    pub project: Option<Uuid>,
    /// Who submitted it (the nil id for the local system principal).
    pub created_by: Uuid,
    /// Where it is.
    pub status: JobStatus,
    /// Its priority.
    pub priority: i64,
    /// What the handler gets.
    pub payload: serde_json::Value,
    /// What the handler returned, once it succeeded.
    pub result: Option<serde_json::Value>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Leases taken so far.
    pub attempts: u32,
    /// Leases it may take.
    pub max_attempts: u32,
    /// When it may (next) run.
    pub run_at: DateTime<Utc>,
    /// While running: until when its worker holds it.
    pub lease_until: Option<DateTime<Utc>>,
    /// While running: which worker.
    pub worker: Option<Uuid>,
    /// Whether a cancel was asked while it ran.
    pub cancel_requested: bool,
    /// The submission's idempotency key.
    pub idempotency_key: Option<String>,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When it first started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The API key it was submitted with, if any: it runs with that key's scopes.
    pub api_key: Option<Uuid>,
    /// The webhook told when it ends.
    pub callback_url: Option<String>,
    /// The webhook's delivery: `pending`, `delivered` or `failed` (after its attempts).
    pub callback_state: Option<String>,
    /// The webhook's last failed delivery, if any.
    pub callback_error: Option<String>,
}

/// A worker's hold on a job: answers with it are accepted only while it is the job's latest.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The job, as it was when leased.
    pub job: Job,
    /// The worker holding it.
    pub worker: Uuid,
    /// Which attempt this is (from 1): the fence.
    pub attempt: u32,
}

/// One thing a job said while it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobEvent {
    /// Its number, from 1, in order.
    pub seq: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// `progress`, `log`, `output`, ... (the handler's).
    pub kind: String,
    /// What.
    pub data: serde_json::Value,
    /// The attempt that said it (from 1).
    pub attempt: u32,
}

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The lease now runs until here.
    pub lease_until: DateTime<Utc>,
    /// A cancel was asked: the handler should stop.
    pub cancel_requested: bool,
}

/// Backoff between attempts: `base × 2^(attempt − 1)`, at most `max`, ± a quarter (jitter).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first wait.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: Duration::from_secs(1), max: Duration::from_secs(300) }
    }
}

impl Backoff {
    /// The wait after the `attempt`th failure (from 1), with jitter drawn from `unit` in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        capped.mul_f64(0.75 + unit.clamp(0.0, 1.0) * 0.5)
    }
}

/// The job queue: cheap to clone.
#[derive(Debug, Clone)]
pub struct Queue {
    db: Database,
    wake: Arc<tokio::sync::Notify>,
    backoff: Backoff,
    listening: Arc<std::sync::OnceLock<()>>,
    notifier: Arc<Notifier>,
    inserts: Arc<batch::Batcher<Insert, Option<Row>>>,
    completions: Arc<batch::Batcher<Completion, bool>>,
    watchers: Arc<watch::Watchers>,
}

/// A submission, ready to insert.
#[derive(Debug)]
struct Insert {
    id: Uuid,
    kind: String,
    project: Option<Uuid>,
    created_by: Uuid,
    priority: i64,
    payload: String,
    max_attempts: i64,
    run_at: i64,
    idempotency_key: Option<String>,
    created_at: i64,
    api_key: Option<Uuid>,
    callback_url: Option<String>,
}

/// A success to record: (job, worker, attempt) fence it.
#[derive(Debug)]
struct Completion {
    job: Uuid,
    worker: Uuid,
    attempt: i64,
    result: String,
}

/// The task that sends this process's `NOTIFY`s (Postgres), coalesced.
#[derive(Debug, Default)]
struct Notifier {
    /// The task, started on the first submission (and again if its runtime went away).
    task: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// Some submission has not been announced yet.
    pending: std::sync::atomic::AtomicBool,
    kick: tokio::sync::Notify,
}

/// Microseconds since the epoch.
fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

fn now_us() -> i64 {
    micros(Utc::now())
}

/// The columns of a job, in [`Row`]'s order.
macro_rules! job_columns {
    () => {
        "id, kind, project_id, created_by, status, priority, payload, result, last_error, attempts, max_attempts, \
         run_at, lease_until, worker_id, cancel_requested, idempotency_key, created_at, started_at, finished_at, \
         api_key_id, callback_url, callback_state, callback_error"
    };
}

/// A job's row, as [`job_columns`] selects it.
struct Row {
    id: Uuid,
    kind: String,
    project_id: Option<Uuid>,
    created_by: Uuid,
    status: String,
    priority: i64,
    payload: String,
    result: Option<String>,
    last_error: Option<String>,
    attempts: i64,
    max_attempts: i64,
    run_at: i64,
    lease_until: Option<i64>,
    worker_id: Option<Uuid>,
    cancel_requested: i64,
    idempotency_key: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    api_key_id: Option<Uuid>,
    callback_url: Option<String>,
    callback_state: Option<String>,
    callback_error: Option<String>,
}

/// `FromRow` for [`Row`] on each dialect (sqlx derives tuples of at most 16 columns).
macro_rules! row_from {
    ($row:ty) => {
        impl<'r> sqlx::FromRow<'r, $row> for Row {
            fn from_row(r: &'r $row) -> std::result::Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok(Row {
                    id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    project_id: r.try_get(2)?,
                    created_by: r.try_get(3)?,
                    status: r.try_get(4)?,
                    priority: r.try_get(5)?,
                    payload: r.try_get(6)?,
                    result: r.try_get(7)?,
                    last_error: r.try_get(8)?,
                    attempts: r.try_get(9)?,
                    max_attempts: r.try_get(10)?,
                    run_at: r.try_get(11)?,
                    lease_until: r.try_get(12)?,
                    worker_id: r.try_get(13)?,
                    cancel_requested: r.try_get(14)?,
                    idempotency_key: r.try_get(15)?,
                    created_at: r.try_get(16)?,
                    started_at: r.try_get(17)?,
                    finished_at: r.try_get(18)?,
                    api_key_id: r.try_get(19)?,
                    callback_url: r.try_get(20)?,
                    callback_state: r.try_get(21)?,
                    callback_error: r.try_get(22)?,
                })
            }
        }
    };
}
row_from!(sqlx::sqlite::SqliteRow);
row_from!(sqlx::postgres::PgRow);

fn job(row: Row) -> Result<Job> {
    let json = |s: &str| serde_json::from_str(s).map_err(|e| Error::internal("a stored job's JSON cannot be read", e));
    Ok(Job {
        id: row.id,
        kind: row.kind,
        project: row.project_id,
        created_by: row.created_by,
        status: JobStatus::parse(&row.status)?,
        priority: row.priority,
        payload: json(&row.payload)?,
        result: row.result.as_deref().map(json).transpose()?,
        last_error: row.last_error,
        attempts: u32::try_from(row.attempts).unwrap_or(0),
        max_attempts: u32::try_from(row.max_attempts).unwrap_or(0),
        run_at: time(row.run_at),
        lease_until: row.lease_until.map(time),
        worker: row.worker_id,
        cancel_requested: row.cancel_requested != 0,
        idempotency_key: row.idempotency_key,
        created_at: time(row.created_at),
        started_at: row.started_at.map(time),
        finished_at: row.finished_at.map(time),
        api_key: row.api_key_id,
        callback_url: row.callback_url,
        callback_state: row.callback_state,
        callback_error: row.callback_error,
    })
}

/// The most attempts a job may ask for.
const MAX_ATTEMPTS: u32 = 100;
/// Jobs whose lease expired (`$1`: now): claimable again, or dead when out of attempts, or
/// cancelled when a cancel was asked. Claims run it first.
const EXPIRE: &str = "UPDATE jobs SET \
       status = CASE WHEN cancel_requested <> 0 THEN 'cancelled' \
                     WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
       last_error = 'the worker holding it stopped answering (its lease expired)', \
       finished_at = CASE WHEN cancel_requested <> 0 OR attempts >= max_attempts THEN $1 ELSE NULL END, \
       run_at = $1, lease_until = NULL, worker_id = NULL \
     WHERE status = 'running' AND lease_until < $1";

/// Attempts of a job that names none, and what a retry gives a dead job.
const DEFAULT_ATTEMPTS: u32 = 3;

impl Queue {
    /// The queue over `db`.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            wake: Arc::new(tokio::sync::Notify::new()),
            backoff: Backoff::default(),
            listening: Arc::new(std::sync::OnceLock::new()),
            notifier: Arc::default(),
            inserts: Arc::default(),
            completions: Arc::default(),
            watchers: Arc::default(),
        }
    }

    /// The same queue with another backoff between attempts.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Submits a job by `created_by`. With an idempotency key that account used before, the
    /// job of that first submission comes back instead (whatever its state).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an empty kind, a key longer than 200 characters or
    /// more than 100 attempts.
    pub async fn submit(&self, created_by: Uuid, new: NewJob) -> Result<Job> {
        self.submit_new(created_by, new).await.map(|(job, _)| job)
    }

    /// As [`submit`](Self::submit), also saying whether the job is new (`false`: the job of an
    /// earlier submission with the same idempotency key).
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub async fn submit_new(&self, created_by: Uuid, new: NewJob) -> Result<(Job, bool)> {
        self.submit_with_key(created_by, None, new).await
    }

    /// As [`submit_new`](Self::submit_new), for a submission made with the API key `api_key`
    /// (the job then runs with that key's scopes).
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub async fn submit_with_key(&self, created_by: Uuid, api_key: Option<Uuid>, new: NewJob) -> Result<(Job, bool)> {
        let kind = new.kind.trim();
        if kind.is_empty() || kind.len() > 100 {
            return Err(Error::invalid("kind: give the job's kind (at most 100 characters)"));
        }
        let max_attempts = new.max_attempts.unwrap_or(DEFAULT_ATTEMPTS);
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(Error::invalid(format!("max_attempts: from 1 to {MAX_ATTEMPTS}")));
        }
        if let Some(key) = &new.idempotency_key
            && (key.is_empty() || key.chars().count() > 200)
        {
            return Err(Error::invalid("idempotency_key: 1 to 200 characters"));
        }
        if let Some(url) = &new.callback_url {
            webhook::parse_url(url)?;
        }
        for (field, text) in [
            ("kind", Some(kind)),
            ("idempotency_key", new.idempotency_key.as_deref()),
            ("callback_url", new.callback_url.as_deref()),
        ] {
            if text.is_some_and(|t| t.contains('\0')) {
                return Err(Error::invalid(format!("{field}: contains a NUL character")));
            }
        }
        let now = now_us();
        let payload =
            serde_json::to_string(&new.payload).map_err(|e| Error::internal("cannot store the payload", e))?;
        let insert = Insert {
            id: Uuid::now_v7(),
            kind: kind.to_owned(),
            project: new.project,
            created_by,
            priority: new.priority,
            payload,
            max_attempts: i64::from(max_attempts),
            run_at: new.run_at.map_or(now, micros),
            idempotency_key: new.idempotency_key.clone(),
            created_at: now,
            api_key,
            callback_url: new.callback_url.clone(),
        };
        let db = self.db.clone();
        let inserted = match self.inserts.run(insert, move |batch| insert_batch(db.clone(), batch)).await {
            Ok(inserted) => inserted,
            Err(insert) => insert_one(&self.db, &insert).await,
        }?;
        if let Some(row) = inserted {
            self.wake_workers();
            return Ok((job(row)?, true));
        }
        {
            let key = new.idempotency_key.as_deref().unwrap_or_default();
            let sql = concat!("SELECT ", job_columns!(), " FROM jobs WHERE created_by = $1 AND idempotency_key = $2");
            let row: Row =
                on_db!(&self.db, |pool| sqlx::query_as(sql).bind(created_by).bind(key).fetch_one(pool).await)
                    .map_err(|e| db_error("reading the job of the first submission", e))?;
            let first = job(row)?;
            if first.project != new.project || first.kind != kind {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "idempotency_key: `{key}` was used for job {} (a {} job of another project or kind); use another key",
                        first.id, first.kind
                    ),
                ));
            }
            Ok((first, false))
        }
    }

    /// Tells waiting workers that there is work: on SQLite this process's; on Postgres, every
    /// process's through `NOTIFY`, which comes back to this process's workers through their
    /// `LISTEN`. Every waiting worker is woken: the workers of one process may run different
    /// kinds, and one woken for a job it does not run would leave it to the next poll.
    ///
    /// Notifications are coalesced: Postgres holds a global lock from a notifying
    /// transaction's commit until it is durable, so a `NOTIFY` per submission would put every
    /// submission's disk flush in one line. One task sends them, one at a time, each covering
    /// every submission made before it began.
    fn wake_workers(&self) {
        let Database::Postgres(pool) = &self.db else {
            self.wake.notify_waiters();
            return;
        };
        self.notifier.pending.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut task = self.notifier.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if task.as_ref().is_none_or(tokio::task::AbortHandle::is_finished) {
            let (pool, notifier) = (pool.clone(), self.notifier.clone());
            let spawned = tokio::spawn(async move {
                loop {
                    while notifier.pending.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&pool).await {
                            tracing::warn!(error = %e, "cannot notify the workers of new jobs; they find them at their next poll");
                        }
                    }
                    notifier.kick.notified().await;
                }
            });
            *task = Some(spawned.abort_handle());
        }
        drop(task);
        self.notifier.kick.notify_one();
    }

    /// Waits until a job may have arrived, at most `timeout`: woken by submissions in this
    /// process and, on Postgres, in any process (`LISTEN`).
    pub async fn wait(&self, timeout: Duration) {
        if let Database::Postgres(pool) = &self.db {
            self.listen(pool);
        }
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }

    /// Starts (once) the task that forwards Postgres notifications to this process's waiters.
    fn listen(&self, pool: &sqlx::PgPool) {
        if self.listening.set(()).is_err() {
            return;
        }
        let (pool, wake) = (pool.clone(), self.wake.clone());
        tokio::spawn(async move {
            loop {
                let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for new jobs; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Err(e) = listener.listen(CHANNEL).await {
                    tracing::warn!(error = %e, "cannot listen for new jobs; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                // A reconnection may have missed notifications: wake everyone once.
                wake.notify_waiters();
                while listener.recv().await.is_ok() {
                    wake.notify_waiters();
                }
            }
        });
    }

    /// A job.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when there is none with that id.
    pub async fn get(&self, id: Uuid) -> Result<Job> {
        let sql = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1");
        let row: Option<Row> = on_db!(&self.db, |pool| sqlx::query_as(sql).bind(id).fetch_optional(pool).await)
            .map_err(|e| db_error("reading the job", e))?;
        row.map(job).transpose()?.ok_or_else(|| Error::not_found(format!("no job {id}")))
    }

    /// Records a worker starting (`name`: host and pid), running `kinds`.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when the database does not answer.
    pub async fn register_worker(&self, id: Uuid, name: &str, kinds: &[String], concurrency: u32) -> Result<()> {
        let kinds = serde_json::to_string(kinds).map_err(|e| Error::internal("cannot encode the kinds", e))?;
        let now = now_us();
        on_db!(&self.db, |pool| sqlx::query(
            "INSERT INTO workers (id, name, kinds, concurrency, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5, $5)"
        )
        .bind(id)
        .bind(name)
        .bind(&kinds)
        .bind(i64::from(concurrency))
        .bind(now)
        .execute(pool)
        .await
        .map(drop))
        .map_err(|e| db_error("registering the worker", e))
    }

    /// A worker's heartbeat (`stopped`: its last, on the way out). Rows of workers gone for a
    /// day are removed on the way.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when the database does not answer.
    pub async fn worker_heartbeat(&self, id: Uuid, stopped: bool) -> Result<()> {
        let now = now_us();
        let day_ago = now - 86_400_000_000;
        on_db!(&self.db, |pool| async {
            sqlx::query(
                "UPDATE workers SET heartbeat_at = $1, stopped_at = CASE WHEN $2 <> 0 THEN $1 ELSE stopped_at END \
                 WHERE id = $3",
            )
            .bind(now)
            .bind(i64::from(stopped))
            .bind(id)
            .execute(pool)
            .await?;
            sqlx::query("DELETE FROM workers WHERE heartbeat_at < $1").bind(day_ago).execute(pool).await.map(drop)
        }
        .await)
        .map_err(|e| db_error("recording the worker's heartbeat", e))
    }

    /// The workers seen in the last day, newest first, with their health and running jobs.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when the database does not answer.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        type WorkerRow = (Uuid, String, String, i64, i64, i64, Option<i64>);
        let rows: Vec<WorkerRow> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT id, name, kinds, concurrency, started_at, heartbeat_at, stopped_at FROM workers \
             ORDER BY started_at DESC LIMIT 1000"
        )
        .fetch_all(pool)
        .await)
        .map_err(|e| db_error("listing the workers", e))?;
        let held: Vec<(Uuid, Uuid)> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT worker_id, id FROM jobs WHERE status = 'running' AND worker_id IS NOT NULL"
        )
        .fetch_all(pool)
        .await)
        .map_err(|e| db_error("listing the running jobs", e))?;
        let now = now_us();
        let gone = i64::try_from(WORKER_GONE_AFTER.as_micros()).unwrap_or(i64::MAX);
        rows.into_iter()
            .map(|(id, name, kinds, concurrency, started_at, heartbeat_at, stopped_at)| {
                let health = match stopped_at {
                    Some(_) => "stopped",
                    None if now - heartbeat_at <= gone => "alive",
                    None => "gone",
                };
                Ok(WorkerInfo {
                    id,
                    name,
                    kinds: serde_json::from_str(&kinds)
                        .map_err(|e| Error::internal("a worker's kinds cannot be read", e))?,
                    concurrency: u32::try_from(concurrency).unwrap_or(0),
                    started_at: time(started_at),
                    heartbeat_at: time(heartbeat_at),
                    stopped_at: stopped_at.map(time),
                    health: health.into(),
                    running: held.iter().filter(|(w, _)| *w == id).map(|(_, j)| *j).collect(),
                })
            })
            .collect()
    }

    /// The workers seen in the last day counted by health, in one query (for metrics; see
    /// [`workers`](Self::workers) for the list).
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when the database does not answer.
    pub async fn worker_health(&self) -> Result<WorkerHealth> {
        let now = now_us();
        let alive_since = now - i64::try_from(WORKER_GONE_AFTER.as_micros()).unwrap_or(i64::MAX / 2);
        let (alive, stopped, gone, oldest): (i64, i64, i64, Option<i64>) = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT COUNT(CASE WHEN stopped_at IS NULL AND heartbeat_at >= $1 THEN 1 END), \
                    COUNT(CASE WHEN stopped_at IS NOT NULL THEN 1 END), \
                    COUNT(CASE WHEN stopped_at IS NULL AND heartbeat_at < $1 THEN 1 END), \
                    MIN(CASE WHEN stopped_at IS NULL AND heartbeat_at >= $1 THEN heartbeat_at END) \
             FROM workers"
        )
        .bind(alive_since)
        .fetch_one(pool)
        .await)
        .map_err(|e| db_error("counting the workers", e))?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(WorkerHealth {
            alive: count(alive),
            stopped: count(stopped),
            gone: count(gone),
            oldest_alive_heartbeat: oldest.map(|t| Duration::from_micros(u64::try_from(now - t).unwrap_or(0))),
        })
    }

    /// Deletes the jobs that finished before `older_than` ago, with their events; returns how
    /// many went.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when the database does not answer.
    pub async fn cleanup(&self, older_than: Duration) -> Result<u64> {
        let before = now_us() - i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX / 2);
        on_db!(&self.db, |pool| async {
            sqlx::query(
                "DELETE FROM job_events WHERE job_id IN (SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1)",
            )
            .bind(before)
            .execute(pool)
            .await?;
            sqlx::query("DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1")
                .bind(before)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        }
        .await)
        .map_err(|e| db_error("deleting old jobs", e))
    }

    /// How many jobs there are of each kind in each state (kept ones: finished jobs go after
    /// the retention), with the age of the oldest ready one.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when the database does not answer.
    pub async fn depth(&self) -> Result<Vec<Depth>> {
        let now = now_us();
        let rows: Vec<(String, String, i64, Option<i64>)> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT kind, status, COUNT(*), MIN(CASE WHEN status = 'queued' AND run_at <= $1 THEN run_at END) \
             FROM jobs GROUP BY kind, status ORDER BY kind, status"
        )
        .bind(now)
        .fetch_all(pool)
        .await)
        .map_err(|e| db_error("counting jobs", e))?;
        rows.into_iter()
            .map(|(kind, status, jobs, oldest)| {
                Ok(Depth {
                    kind,
                    status: JobStatus::parse(&status)?,
                    jobs: u64::try_from(jobs).unwrap_or(0),
                    oldest_ready: Duration::from_micros(oldest.map_or(0, |t| u64::try_from(now - t).unwrap_or(0))),
                })
            })
            .collect()
    }

    /// Jobs matching `filter`, newest first.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when the database does not answer.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE ($1 IS NULL OR project_id = $1) AND ($2 IS NULL OR kind = $2) \
             AND ($3 IS NULL OR status = $3) ORDER BY created_at DESC, id DESC LIMIT $4"
        );
        let limit = i64::from(filter.limit.unwrap_or(100).clamp(1, 1000));
        let rows: Vec<Row> = on_db!(&self.db, |pool| sqlx::query_as(sql)
            .bind(filter.project)
            .bind(filter.kind.as_deref())
            .bind(filter.status.map(JobStatus::as_str))
            .bind(limit)
            .fetch_all(pool)
            .await)
        .map_err(|e| db_error("listing jobs", e))?;
        rows.into_iter().map(job).collect()
    }

    /// Leases up to `max` claimable jobs of `kinds` (all kinds when empty) to `worker` for
    /// `lease`: queued ones whose time has come, highest priority first, oldest first. Expired
    /// leases are dealt with first: their jobs become claimable again, or dead when out of
    /// attempts.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when the database does not answer.
    pub async fn claim(&self, worker: Uuid, kinds: &[String], max: usize, lease: Duration) -> Result<Vec<Lease>> {
        let now = now_us();
        if let Database::Postgres(pool) = &self.db {
            sqlx::query(EXPIRE).bind(now).execute(pool).await.map_err(|e| db_error("expiring leases", e))?;
        }
        let until = now + i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2);
        let limit = i64::try_from(max.max(1)).unwrap_or(1000);
        let rows: Vec<Row> = match &self.db {
            Database::Postgres(pool) => {
                // `= ANY(ARRAY(…))`, not `IN (…)`: the prepared statement's generic plan would
                // join the subquery against a scan of the whole table. cloudx_claimable (see
                // migration 0008) picks the jobs in the ready index's order, SKIP LOCKED.
                let sql = concat!(
                    "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker_id = $1, lease_until = $2, \
                     started_at = COALESCE(started_at, $3) \
                     WHERE id = ANY(ARRAY(SELECT cloudx_claimable($4, $3, $5))) \
                     RETURNING ",
                    job_columns!()
                );
                sqlx::query_as(sql).bind(worker).bind(until).bind(now).bind(kinds).bind(limit).fetch_all(pool).await
            }
            Database::Sqlite(pool) => {
                let kinds = serde_json::to_string(kinds).map_err(|e| Error::internal("cannot encode the kinds", e))?;
                let sql = concat!(
                    "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker_id = $1, lease_until = $2, \
                     started_at = COALESCE(started_at, $3) \
                     WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND run_at <= $3 \
                       AND (json_array_length($4) = 0 OR kind IN (SELECT value FROM json_each($4))) \
                       ORDER BY priority DESC, run_at, id LIMIT $5) \
                     RETURNING ",
                    job_columns!()
                );
                // One write transaction for both steps: SQLite has one writer at a time.
                match pool.begin_with("BEGIN IMMEDIATE").await {
                    Ok(mut tx) => {
                        if let Err(e) = sqlx::query(EXPIRE).bind(now).execute(&mut *tx).await {
                            return Err(db_error("expiring leases", e));
                        }
                        let rows = sqlx::query_as(sql)
                            .bind(worker)
                            .bind(until)
                            .bind(now)
                            .bind(&kinds)
                            .bind(limit)
                            .fetch_all(&mut *tx)
                            .await;
                        match rows {
                            Ok(rows) => tx.commit().await.map(|()| rows),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        }
        .map_err(|e| db_error("claiming jobs", e))?;
        let mut leases = rows
            .into_iter()
            .map(|row| {
                let job = job(row)?;
                Ok(Lease { worker, attempt: job.attempts, job })
            })
            .collect::<Result<Vec<_>>>()?;
        leases.sort_by(|a, b| b.job.priority.cmp(&a.job.priority).then(a.job.run_at.cmp(&b.job.run_at)));
        Ok(leases)
    }

    /// The error of an answer from a worker that no longer holds the job.
    fn lost(lease: &Lease) -> Error {
        Error::new(
            ErrorKind::Conflict,
            format!(
                "job {}: attempt {} no longer holds it (its lease expired, or it was cancelled or re-run)",
                lease.job.id, lease.attempt
            ),
        )
    }

    /// Keeps the lease for another `extend`, and says whether a cancel was asked.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when the lease was lost.
    pub async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<Heartbeat> {
        let until = now_us() + i64::try_from(extend.as_micros()).unwrap_or(i64::MAX / 2);
        let row: Option<(i64,)> = on_db!(&self.db, |pool| sqlx::query_as(
            "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND status = 'running' AND worker_id = $3 AND attempts = $4 \
             RETURNING cancel_requested"
        )
        .bind(until)
        .bind(lease.job.id)
        .bind(lease.worker)
        .bind(i64::from(lease.attempt))
        .fetch_optional(pool)
        .await)
        .map_err(|e| db_error("renewing the lease", e))?;
        let (cancel,) = row.ok_or_else(|| Self::lost(lease))?;
        Ok(Heartbeat { lease_until: time(until), cancel_requested: cancel != 0 })
    }

    /// Records the job's success and `result`.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when the lease was lost: the result is not recorded.
    pub async fn complete(&self, lease: &Lease, result: serde_json::Value) -> Result<Job> {
        let result = serde_json::to_string(&result).map_err(|e| Error::internal("cannot store the result", e))?;
        let row: Option<Row> = on_db!(&self.db, |pool| sqlx::query_as(concat!(
            "UPDATE jobs SET status = 'succeeded', result = $1, finished_at = $2, lease_until = NULL \
             WHERE id = $3 AND status = 'running' AND worker_id = $4 AND attempts = $5 RETURNING ",
            job_columns!()
        ))
        .bind(&result)
        .bind(now_us())
        .bind(lease.job.id)
        .bind(lease.worker)
        .bind(i64::from(lease.attempt))
        .fetch_optional(pool)
        .await)
        .map_err(|e| db_error("completing the job", e))?;
        let job = job(row.ok_or_else(|| Self::lost(lease))?)?;
        self.watchers.wake(job.id);
        Ok(job)
    }

    /// As [`complete`](Self::complete) without reading the job back, and sharing one write
    /// with the other completions of this process made at the same moment (the workers' path).
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when the lease was lost: the result is not recorded.
    pub async fn record_success(&self, lease: &Lease, result: serde_json::Value) -> Result<()> {
        let result = serde_json::to_string(&result).map_err(|e| Error::internal("cannot store the result", e))?;
        let done = Completion { job: lease.job.id, worker: lease.worker, attempt: i64::from(lease.attempt), result };
        let db = self.db.clone();
        let recorded = match self.completions.run(done, move |batch| complete_batch(db.clone(), batch)).await {
            Ok(recorded) => recorded,
            Err(done) => complete_batch(self.db.clone(), vec![done]).await.pop().expect("one answer"),
        }?;
        if !recorded {
            return Err(Self::lost(lease));
        }
        self.watchers.wake(lease.job.id);
        Ok(())
    }

    /// Records a failure: the job is queued again after a backoff while it has attempts left
    /// and `retry` (a cancel asked meanwhile makes it cancelled); else it is dead, `error`
    /// kept.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when the lease was lost.
    pub async fn fail(&self, lease: &Lease, error: &str, retry: bool) -> Result<Job> {
        let now = now_us();
        let wait = self.backoff.delay(lease.attempt, rand_unit());
        let run_at = now + i64::try_from(wait.as_micros()).unwrap_or(i64::MAX / 2);
        let error: String = error.chars().take(8000).collect();
        let row: Option<Row> = on_db!(&self.db, |pool| sqlx::query_as(concat!(
            "UPDATE jobs SET \
               status = CASE WHEN cancel_requested <> 0 THEN 'cancelled' \
                             WHEN $1 <> 0 AND attempts < max_attempts THEN 'queued' ELSE 'dead' END, \
               finished_at = CASE WHEN cancel_requested = 0 AND $1 <> 0 AND attempts < max_attempts THEN NULL ELSE $2 END, \
               run_at = $3, last_error = $4, lease_until = NULL, worker_id = NULL \
             WHERE id = $5 AND status = 'running' AND worker_id = $6 AND attempts = $7 RETURNING ",
            job_columns!()
        ))
        .bind(i64::from(retry))
        .bind(now)
        .bind(run_at)
        .bind(&error)
        .bind(lease.job.id)
        .bind(lease.worker)
        .bind(i64::from(lease.attempt))
        .fetch_optional(pool)
        .await)
        .map_err(|e| db_error("recording the failure", e))?;
        let job = job(row.ok_or_else(|| Self::lost(lease))?)?;
        self.watchers.wake(job.id);
        if job.status == JobStatus::Queued {
            self.wake_workers();
        }
        Ok(job)
    }

    /// Gives a job back without it costing an attempt (a worker shutting down): it is queued
    /// again at once, for another worker. Its attempts still count the lease, which keeps the
    /// fence: one more attempt is allowed instead.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when the lease was lost.
    pub async fn release(&self, lease: &Lease) -> Result<Job> {
        let row: Option<Row> = on_db!(&self.db, |pool| sqlx::query_as(concat!(
            "UPDATE jobs SET \
               status = CASE WHEN cancel_requested <> 0 THEN 'cancelled' ELSE 'queued' END, \
               finished_at = CASE WHEN cancel_requested <> 0 THEN $1 ELSE NULL END, \
               max_attempts = max_attempts + 1, run_at = $1, lease_until = NULL, worker_id = NULL \
             WHERE id = $2 AND status = 'running' AND worker_id = $3 AND attempts = $4 RETURNING ",
            job_columns!()
        ))
        .bind(now_us())
        .bind(lease.job.id)
        .bind(lease.worker)
        .bind(i64::from(lease.attempt))
        .fetch_optional(pool)
        .await)
        .map_err(|e| db_error("releasing the job", e))?;
        let job = job(row.ok_or_else(|| Self::lost(lease))?)?;
        self.watchers.wake(job.id);
        self.wake_workers();
        Ok(job)
    }

    /// Cancels a job: a queued one at once (and a running one whose worker stopped answering);
    /// a running one is marked, its worker learns it at its next heartbeat and stops (it ends
    /// cancelled when the worker answers).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for no such job, [`ErrorKind::Conflict`] for one that ended
    /// otherwise (cancelling a cancelled job answers it again).
    pub async fn cancel(&self, id: Uuid) -> Result<Job> {
        let now = now_us();
        on_db!(&self.db, |pool| sqlx::query(
            "UPDATE jobs SET \
               status = CASE WHEN status = 'queued' OR lease_until < $1 THEN 'cancelled' ELSE status END, \
               finished_at = CASE WHEN status = 'queued' OR lease_until < $1 THEN $1 ELSE finished_at END, \
               lease_until = CASE WHEN lease_until < $1 THEN NULL ELSE lease_until END, \
               cancel_requested = 1 \
             WHERE id = $2 AND status IN ('queued', 'running')"
        )
        .bind(now)
        .bind(id)
        .execute(pool)
        .await
        .map(drop))
        .map_err(|e| db_error("cancelling the job", e))?;
        self.watchers.wake(id);
        let job = self.get(id).await?;
        match job.status {
            JobStatus::Cancelled | JobStatus::Running => Ok(job),
            status => Err(Error::new(
                ErrorKind::Conflict,
                format!("job {id} has already ended ({}): nothing to cancel", status.as_str()),
            )),
        }
    }

    /// Queues a dead or cancelled job again, with three more attempts on top of those it used
    /// (which keep counting: they fence late answers of earlier leases).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for no such job, [`ErrorKind::Conflict`] for one that is not
    /// dead or cancelled.
    pub async fn retry(&self, id: Uuid) -> Result<Job> {
        let done = on_db!(&self.db, |pool| {
            sqlx::query(
                "UPDATE jobs SET status = 'queued', max_attempts = attempts + $1, run_at = $2, finished_at = NULL, \
               cancel_requested = 0, \
               callback_state = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END, \
               callback_attempts = 0, callback_next = 0, callback_error = NULL \
             WHERE id = $3 AND status IN ('dead', 'cancelled')",
            )
            .bind(i64::from(DEFAULT_ATTEMPTS))
            .bind(now_us())
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(|e| db_error("queueing the job again", e))?;
        let job = self.get(id).await?;
        if done == 0 {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("job {id} is {}: only a dead or cancelled job can be retried", job.status.as_str()),
            ));
        }
        self.wake_workers();
        Ok(job)
    }

    /// Appends an event to the job the lease holds; returns its number.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when the lease was lost (nothing is appended).
    pub async fn append_event(&self, lease: &Lease, kind: &str, data: serde_json::Value) -> Result<i64> {
        let data = serde_json::to_string(&data).map_err(|e| Error::internal("cannot store the event", e))?;
        let (id, worker, attempt, at) = (lease.job.id, lease.worker, i64::from(lease.attempt), now_us());
        // On Postgres the job's row is locked, so that no claim or expiry slips in between the
        // fence and the insert (SQLite's write transaction excludes them already).
        let fence = match &self.db {
            Database::Postgres(_) => {
                "SELECT attempts FROM jobs WHERE id = $1 AND status = 'running' AND worker_id = $2 AND attempts = $3 FOR UPDATE"
            }
            Database::Sqlite(_) => {
                "SELECT attempts FROM jobs WHERE id = $1 AND status = 'running' AND worker_id = $2 AND attempts = $3"
            }
        };
        macro_rules! append {
            ($tx:expr) => {
                async {
                    let mut tx = $tx;
                    let holds: Option<(i64,)> =
                        sqlx::query_as(fence).bind(id).bind(worker).bind(attempt).fetch_optional(&mut *tx).await?;
                    if holds.is_none() {
                        return Ok(None);
                    }
                    let (seq,): (i64,) =
                        sqlx::query_as("SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = $1")
                            .bind(id)
                            .fetch_one(&mut *tx)
                            .await?;
                    sqlx::query(
                        "INSERT INTO job_events (job_id, seq, at, kind, data, attempt) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(id)
                    .bind(seq)
                    .bind(at)
                    .bind(kind)
                    .bind(&data)
                    .bind(i64::from(lease.attempt))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await.map(|()| Some(seq))
                }
                .await
            };
        }
        let lock = i64::from_be_bytes(id.as_bytes()[8..].try_into().expect("8 bytes"));
        let appended: std::result::Result<Option<i64>, sqlx::Error> =
            in_write_tx!(&self.db, lock = lock, |tx| append!(tx));
        let seq = appended.map_err(|e| db_error("appending the job's event", e))?.ok_or_else(|| Self::lost(lease))?;
        self.watchers.wake(lease.job.id);
        Ok(seq)
    }

    /// Takes up to `max` finished jobs whose webhook is due, for one delivery attempt each:
    /// their next attempt is moved a minute ahead (the taker's lease) and counted.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when the database does not answer.
    pub(crate) async fn take_callbacks(&self, max: usize) -> Result<Vec<(Job, u32)>> {
        let now = now_us();
        let until = now + 60_000_000;
        let limit = i64::try_from(max.max(1)).unwrap_or(100);
        macro_rules! take {
            ($lock:literal) => {
                concat!(
                    "UPDATE jobs SET callback_next = $1, callback_attempts = callback_attempts + 1 \
                     WHERE id IN (SELECT id FROM jobs WHERE callback_state = 'pending' AND finished_at IS NOT NULL \
                     AND callback_next <= $2 ORDER BY callback_next LIMIT $3",
                    $lock,
                    ") RETURNING ",
                    job_columns!(),
                    ", callback_attempts"
                )
            };
        }
        let rows: Vec<(i64, Row)> = match &self.db {
            Database::Postgres(pool) => sqlx::query(take!(" FOR UPDATE SKIP LOCKED"))
                .bind(until)
                .bind(now)
                .bind(limit)
                .fetch_all(pool)
                .await
                .and_then(|rows| rows.iter().map(callback_row).collect()),
            Database::Sqlite(pool) => {
                async {
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    let rows = sqlx::query(take!("")).bind(until).bind(now).bind(limit).fetch_all(&mut *tx).await?;
                    tx.commit().await?;
                    rows.iter().map(callback_row).collect()
                }
                .await
            }
        }
        .map_err(|e| db_error("taking webhooks to deliver", e))?;
        rows.into_iter().map(|(attempts, row)| Ok((job(row)?, u32::try_from(attempts).unwrap_or(u32::MAX)))).collect()
    }

    /// Records how delivery `attempt` of a job's webhook went: delivered, or tried again after
    /// a pause, or failed for good after [`webhook::ATTEMPTS`].
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when the database does not answer.
    pub(crate) async fn callback_done(
        &self,
        id: Uuid,
        attempt: u32,
        outcome: std::result::Result<(), String>,
    ) -> Result<()> {
        let (state, next, error) = match outcome {
            Ok(()) => ("delivered", 0, None),
            Err(e) if attempt >= webhook::ATTEMPTS => ("failed", 0, Some(e)),
            Err(e) => {
                let pause = i64::try_from(webhook::pause(attempt).as_micros()).unwrap_or(i64::MAX / 2);
                ("pending", now_us() + pause, Some(e))
            }
        };
        let error = error.map(|e| e.chars().take(2000).collect::<String>());
        on_db!(&self.db, |pool| sqlx::query(
            "UPDATE jobs SET callback_state = $1, callback_next = $2, callback_error = $3 \
             WHERE id = $4 AND callback_attempts = $5 AND callback_state = 'pending'"
        )
        .bind(state)
        .bind(next)
        .bind(error)
        .bind(id)
        .bind(i64::from(attempt))
        .execute(pool)
        .await
        .map(drop))
        .map_err(|e| db_error("recording a webhook delivery", e))
    }

    /// Watches the job from this process: see [`JobWatch::changed`].
    pub fn watch(&self, id: Uuid) -> JobWatch {
        self.watchers.watch(id)
    }

    /// The job's events after number `after`, at most `limit`, in order.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when the database does not answer.
    pub async fn events(&self, id: Uuid, after: i64, limit: u32) -> Result<Vec<JobEvent>> {
        let rows: Vec<(i64, i64, String, String, i64)> = on_db!(&self.db, |pool| {
            sqlx::query_as(
            "SELECT seq, at, kind, data, attempt FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )
        .bind(id)
        .bind(after)
        .bind(i64::from(limit.clamp(1, 10_000)))
        .fetch_all(pool)
        .await
        })
        .map_err(|e| db_error("reading the job's events", e))?;
        rows.into_iter()
            .map(|(seq, at, kind, data, attempt)| {
                let data =
                    serde_json::from_str(&data).map_err(|e| Error::internal("a stored event cannot be read", e))?;
                Ok(JobEvent { seq, at: time(at), kind, data, attempt: u32::try_from(attempt).unwrap_or(0) })
            })
            .collect()
    }
}

/// A number in [0, 1) for the backoff's jitter.
fn rand_unit() -> f64 {
    let bits = u64::from_ne_bytes(*Uuid::new_v4().as_bytes().first_chunk().expect("16 bytes"));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A row of [`Queue::take_callbacks`]: the job's columns, then the delivery attempt.
fn callback_row<R: sqlx::Row>(row: &R) -> std::result::Result<(i64, Row), sqlx::Error>
where
    for<'r> Row: sqlx::FromRow<'r, R>,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let attempts: i64 = row.try_get(23)?;
    Ok((attempts, <Row as sqlx::FromRow<'_, R>>::from_row(row)?))
}

/// The statement that inserts one submission; none comes back on an idempotency conflict.
const INSERT_ONE: &str = concat!(
    "INSERT INTO jobs (id, kind, project_id, created_by, status, priority, payload, attempts, max_attempts, \
     run_at, idempotency_key, created_at, api_key_id, callback_url, callback_state) \
     VALUES ($1, $2, $3, $4, 'queued', $5, $6, 0, $7, $8, $9, $10, $11, $12, CASE WHEN $12 IS NULL THEN NULL ELSE 'pending' END) \
     ON CONFLICT (created_by, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING ",
    job_columns!()
);

async fn insert_one(db: &Database, insert: &Insert) -> Result<Option<Row>> {
    on_db!(db, |pool| insert_one_on(pool, insert).await).map_err(|e| db_error("submitting the job", e))
}

async fn insert_one_on<'c, DB, E>(executor: E, insert: &Insert) -> std::result::Result<Option<Row>, sqlx::Error>
where
    DB: sqlx::Database,
    E: sqlx::Executor<'c, Database = DB>,
    Row: for<'r> sqlx::FromRow<'r, DB::Row>,
    for<'q> Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<Uuid>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    sqlx::query_as(INSERT_ONE)
        .bind(insert.id)
        .bind(insert.kind.as_str())
        .bind(insert.project)
        .bind(insert.created_by)
        .bind(insert.priority)
        .bind(insert.payload.as_str())
        .bind(insert.max_attempts)
        .bind(insert.run_at)
        .bind(insert.idempotency_key.as_deref())
        .bind(insert.created_at)
        .bind(insert.api_key)
        .bind(insert.callback_url.as_deref())
        .fetch_optional(executor)
        .await
}

/// Inserts a batch of submissions in one write: one statement on Postgres, one transaction on
/// SQLite. When that fails (a project deleted meanwhile, say), each is tried alone, so that
/// one bad submission fails only itself.
async fn insert_batch(db: Database, batch: Vec<Insert>) -> Vec<Result<Option<Row>>> {
    if batch.len() > 1 {
        let together: std::result::Result<Vec<Row>, sqlx::Error> = match &db {
            Database::Postgres(pool) => {
                let sql = concat!(
                    "INSERT INTO jobs (id, kind, project_id, created_by, status, priority, payload, attempts, \
                     max_attempts, run_at, idempotency_key, created_at, api_key_id, callback_url, callback_state) \
                     SELECT id, kind, project_id, created_by, 'queued', priority, payload, 0, max_attempts, run_at, \
                     idempotency_key, created_at, api_key_id, callback_url, \
                     CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END \
                     FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], \
                     $5::bigint[], $6::text[], $7::bigint[], $8::bigint[], $9::text[], $10::bigint[], $11::uuid[], \
                     $12::text[]) \
                     AS t (id, kind, project_id, created_by, priority, payload, max_attempts, run_at, \
                     idempotency_key, created_at, api_key_id, callback_url) \
                     ON CONFLICT (created_by, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING ",
                    job_columns!()
                );
                sqlx::query_as(sql)
                    .bind(batch.iter().map(|i| i.id).collect::<Vec<_>>())
                    .bind(batch.iter().map(|i| i.kind.as_str()).collect::<Vec<_>>())
                    .bind(batch.iter().map(|i| i.project).collect::<Vec<_>>())
                    .bind(batch.iter().map(|i| i.created_by).collect::<Vec<_>>())
                    .bind(batch.iter().map(|i| i.priority).collect::<Vec<_>>())
                    .bind(batch.iter().map(|i| i.payload.as_str()).collect::<Vec<_>>())
                    .bind(batch.iter().map(|i| i.max_attempts).collect::<Vec<_>>())
                    .bind(batch.iter().map(|i| i.run_at).collect::<Vec<_>>())
                    .bind(batch.iter().map(|i| i.idempotency_key.as_deref()).collect::<Vec<_>>())
                    .bind(batch.iter().map(|i| i.created_at).collect::<Vec<_>>())
                    .bind(batch.iter().map(|i| i.api_key).collect::<Vec<_>>())
                    .bind(batch.iter().map(|i| i.callback_url.as_deref()).collect::<Vec<_>>())
                    .fetch_all(pool)
                    .await
            }
            Database::Sqlite(pool) => {
                async {
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    let mut rows = Vec::with_capacity(batch.len());
                    for insert in &batch {
                        rows.extend(insert_one_on(&mut *tx, insert).await?);
                    }
                    tx.commit().await?;
                    Ok(rows)
                }
                .await
            }
        };
        if let Ok(rows) = together {
            let mut by_id: std::collections::HashMap<Uuid, Row> = rows.into_iter().map(|r| (r.id, r)).collect();
            return batch.iter().map(|i| Ok(by_id.remove(&i.id))).collect();
        }
    }
    let mut answers = Vec::with_capacity(batch.len());
    for insert in &batch {
        answers.push(insert_one(&db, insert).await);
    }
    answers
}

/// Records a batch of successes in one write; says for each whether its lease still held.
async fn complete_batch(db: Database, batch: Vec<Completion>) -> Vec<Result<bool>> {
    let now = now_us();
    let done: std::result::Result<std::collections::HashSet<Uuid>, sqlx::Error> = match &db {
        Database::Postgres(pool) => sqlx::query_scalar(
            "UPDATE jobs SET status = 'succeeded', result = d.result, finished_at = $1, lease_until = NULL \
             FROM UNNEST($2::uuid[], $3::uuid[], $4::bigint[], $5::text[]) AS d (id, worker_id, attempts, result) \
             WHERE jobs.id = d.id AND jobs.status = 'running' AND jobs.worker_id = d.worker_id \
             AND jobs.attempts = d.attempts RETURNING jobs.id",
        )
        .bind(now)
        .bind(batch.iter().map(|c| c.job).collect::<Vec<_>>())
        .bind(batch.iter().map(|c| c.worker).collect::<Vec<_>>())
        .bind(batch.iter().map(|c| c.attempt).collect::<Vec<_>>())
        .bind(batch.iter().map(|c| c.result.as_str()).collect::<Vec<_>>())
        .fetch_all(pool)
        .await
        .map(|ids| ids.into_iter().collect()),
        Database::Sqlite(pool) => {
            async {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let mut done = std::collections::HashSet::new();
                for c in &batch {
                    let updated = sqlx::query(
                        "UPDATE jobs SET status = 'succeeded', result = $1, finished_at = $2, lease_until = NULL \
                         WHERE id = $3 AND status = 'running' AND worker_id = $4 AND attempts = $5",
                    )
                    .bind(c.result.as_str())
                    .bind(now)
                    .bind(c.job)
                    .bind(c.worker)
                    .bind(c.attempt)
                    .execute(&mut *tx)
                    .await?;
                    if updated.rows_affected() == 1 {
                        done.insert(c.job);
                    }
                }
                tx.commit().await?;
                Ok(done)
            }
            .await
        }
    };
    match done {
        Ok(done) => batch.iter().map(|c| Ok(done.contains(&c.job))).collect(),
        Err(e) => {
            let e = db_error("completing jobs", e);
            batch.iter().map(|_| Err(Error::new(e.kind(), e.to_string()))).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_bounds_with_a_quarter_of_jitter() {
        let b = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(60) };
        assert_eq!(b.delay(1, 0.5), Duration::from_secs(1));
        assert_eq!(b.delay(2, 0.5), Duration::from_secs(2));
        assert_eq!(b.delay(4, 0.5), Duration::from_secs(8));
        assert_eq!(b.delay(30, 0.5), Duration::from_secs(60));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(750));
        assert!(b.delay(1, 0.999_999) < Duration::from_millis(1250));
        assert!((0..1000).map(|_| rand_unit()).all(|u| (0.0..1.0).contains(&u)));
    }
}
