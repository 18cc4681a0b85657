//! Workers: claim jobs, run their kind's handler with the lease kept by heartbeats, and record
//! how each ended.
//!
//! A handler gets a [`JobContext`] (the job, events, a cancellation token) and answers with a
//! result, or a [`JobError`] that says whether trying again makes sense. The worker stops its
//! handler (through the token) when the job is cancelled or the lease is lost, and on shutdown
//! stops claiming, lets running jobs finish within a grace period, then cancels and releases
//! what is left so that another worker takes it without it costing an attempt.
//!
//! Each attempt is measured through the `metrics` facade (whatever recorder the process
//! installed; none in a plain library user, where this costs next to nothing):
//! `cloudx_job_attempts_total{kind}` and `cloudx_job_wait_seconds{kind}` (from the job's `run_at`,
//! when it became claimable, to the attempt's start) when it starts, and
//! `cloudx_job_duration_seconds{kind,outcome}` and `cloudx_jobs_finished_total{kind,outcome}` when
//! its end is recorded. Outcomes: `succeeded`, `failed` (dead), `retried` (queued again after a
//! backoff), `cancelled`, `released` (given back on shutdown) and `lost` (the lease was lost, or
//! the end could not be recorded: the job runs again).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Job, JobStatus, Lease, Queue};
use crate::error::{ErrorKind, Result};

/// Why a handler did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Worth another attempt (a network error, a busy service): the job is queued again after
    /// a backoff while it has attempts left.
    Retry(String),
    /// Not worth another attempt (a payload that cannot be read, a missing project): the job is
    /// dead at once.
    Fatal(String),
}

/// What a handler gets.
pub struct JobContext {
    /// The job (as it was when leased).
    pub job: Job,
    lease: Lease,
    queue: Queue,
    cancel: CancellationToken,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext").field("job", &self.job.id).field("attempt", &self.lease.attempt).finish()
    }
}

impl JobContext {
    /// Appends an event (progress, a log line, output) to the job; readable at once by anyone
    /// who may see the job.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when the lease was lost (the handler should stop).
    pub async fn event(&self, kind: &str, data: serde_json::Value) -> Result<i64> {
        self.queue.append_event(&self.lease, kind, data).await
    }

    /// Fires when the handler must stop: the job was cancelled, its lease was lost, or the
    /// worker is shutting down and the grace period is over.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Which attempt this is (from 1).
    pub fn attempt(&self) -> u32 {
        self.lease.attempt
    }
}

type Output = std::result::Result<serde_json::Value, JobError>;
type Handler = Arc<dyn Fn(JobContext) -> Pin<Box<dyn Future<Output = Output> + Send>> + Send + Sync>;

/// The handlers of a worker, by job kind.
#[derive(Clone, Default)]
pub struct Handlers {
    by_kind: HashMap<String, Handler>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers").field("kinds", &self.kinds()).finish()
    }
}

impl Handlers {
    /// No handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for jobs of `kind` (replacing any other).
    pub fn register<F, Fut>(&mut self, kind: impl Into<String>, handler: F) -> &mut Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Output> + Send + 'static,
    {
        self.by_kind.insert(kind.into(), Arc::new(move |cx| Box::pin(handler(cx))));
        self
    }

    /// Copies `other`'s handler of `kind`, if it has one.
    pub fn merge_from(&mut self, other: &Handlers, kind: &str) -> &mut Self {
        if let Some(handler) = other.by_kind.get(kind) {
            self.by_kind.insert(kind.to_owned(), handler.clone());
        }
        self
    }

    /// The kinds there is a handler for, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.by_kind.keys().cloned().collect();
        kinds.sort();
        kinds
    }
}

/// How a worker works.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Jobs run at once.
    pub concurrency: usize,
    /// How long a lease lasts; heartbeats renew it every third of that (at least every two
    /// seconds, which is also how soon a cancel reaches a running job).
    pub lease: Duration,
    /// The longest wait for work between claims when nothing wakes the worker (another
    /// process's submissions on SQLite are only seen this way).
    pub poll: Duration,
    /// On shutdown, how long running jobs may take to finish before they are cancelled and
    /// released.
    pub grace: Duration,
    /// Finished jobs older than this are deleted (at start, then every ten minutes).
    pub retention: Duration,
    /// Delivers the webhooks of finished jobs (any job's, not only its own), when set.
    pub webhooks: Option<Arc<super::webhook::Webhooks>>,
}

impl WorkerOptions {
    /// The options a `[worker]` configuration section gives.
    pub fn from_config(config: &crate::config::WorkerConfig) -> Self {
        Self {
            concurrency: usize::try_from(config.concurrency).unwrap_or(1).max(1),
            grace: config.grace,
            retention: config.retention,
            ..Self::default()
        }
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            grace: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            webhooks: None,
        }
    }
}

/// A worker: an id (fencing its leases) and what it runs.
#[derive(Debug, Clone)]
pub struct Worker {
    id: Uuid,
    queue: Queue,
    handlers: Handlers,
    options: WorkerOptions,
}

impl Worker {
    /// A worker of `queue` running `handlers`' kinds.
    pub fn new(queue: Queue, handlers: Handlers, options: WorkerOptions) -> Self {
        Self { id: Uuid::now_v7(), queue, handlers, options }
    }

    /// The worker's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Works until `shutdown` fires: claims as many jobs as it has free slots, runs them, and
    /// waits for work in between. Then stops claiming, lets running jobs finish for the grace
    /// period, cancels those still running and releases them (queued again, the attempt not
    /// counted), and returns.
    ///
    /// # Errors
    /// Only when the database fails repeatedly; a handler's failure is the job's.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let kinds = self.handlers.kinds();
        if kinds.is_empty() {
            // (An empty list of kinds claims every kind: each job would die for want of a handler.)
            return Err(crate::error::Error::invalid("a worker needs at least one handler"));
        }
        // The worker's row: seen by GET /api/v1/workers, kept fresh by a heartbeat of its own.
        let name = format!(
            "{}:{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
            std::process::id()
        );
        let concurrency = u32::try_from(self.options.concurrency).unwrap_or(u32::MAX);
        if let Err(e) = self.queue.register_worker(self.id, &name, &kinds, concurrency).await {
            tracing::warn!(error = %e, worker = %self.id, "cannot register the worker; it runs jobs all the same");
        }
        let beating = CancellationToken::new();
        let heartbeat = tokio::spawn({
            let (queue, id, beating, retention) =
                (self.queue.clone(), self.id, beating.clone(), self.options.retention);
            async move {
                let mut every = tokio::time::interval(WORKER_HEARTBEAT);
                let mut beats = 0u64;
                loop {
                    tokio::select! {
                        () = beating.cancelled() => break,
                        _ = every.tick() => {
                            if let Err(e) = queue.worker_heartbeat(id, false).await {
                                tracing::warn!(error = %e, worker = %id, "cannot record the worker's heartbeat");
                            }
                            // Retention: at start, then every ten minutes.
                            if beats.is_multiple_of(600 / WORKER_HEARTBEAT.as_secs()) {
                                match queue.cleanup(retention).await {
                                    Ok(0) => {}
                                    Ok(n) => tracing::info!(jobs = n, "deleted finished jobs past worker.retention"),
                                    Err(e) => tracing::warn!(error = %e, "cannot delete old jobs"),
                                }
                            }
                            beats += 1;
                        }
                    }
                }
            }
        });
        let delivering = self.options.webhooks.clone().map(|webhooks| {
            let (queue, stop) = (self.queue.clone(), beating.clone());
            tokio::spawn(deliver_webhooks(queue, webhooks, stop))
        });
        let result = self.work(&kinds, shutdown).await;
        beating.cancel();
        let _ = heartbeat.await;
        if let Some(delivering) = delivering {
            let _ = delivering.await;
        }
        if let Err(e) = self.queue.worker_heartbeat(self.id, true).await {
            tracing::warn!(error = %e, worker = %self.id, "cannot record that the worker stopped");
        }
        result
    }

    async fn work(&self, kinds: &[String], shutdown: CancellationToken) -> Result<()> {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.options.concurrency.max(1)));
        let stop_jobs = CancellationToken::new();
        let mut running = tokio::task::JoinSet::new();
        let mut failures = 0u32;
        let concurrency = self.options.concurrency.max(1);
        // Whether the last claim filled every free slot (more jobs are likely waiting), and
        // since when free slots have been gathered for the next claim.
        let (mut backlog, mut gathering) = (false, None);
        while !shutdown.is_cancelled() {
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = running.join_next() => continue,
                }
            }
            if backlog && free < concurrency / 2 {
                // Jobs are waiting and only a few slots are free: let more free up, for a
                // moment at most, and claim them together (one claim for many short jobs,
                // rather than one each; a long job's slot waits no longer than GATHER).
                let until = *gathering.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
                if tokio::time::Instant::now() < until {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        _ = running.join_next() => continue,
                        () = tokio::time::sleep_until(until) => {}
                    }
                }
            }
            gathering = None;
            let leases = match self.queue.claim(self.id, kinds, free, self.options.lease).await {
                Ok(leases) => {
                    failures = 0;
                    backlog = leases.len() == free;
                    leases
                }
                Err(e) => {
                    // The database is away: keep the running jobs, and try again (never give
                    // up: a worker that quits leaves its daemon accepting jobs nobody runs).
                    failures += 1;
                    tracing::warn!(error = %e, worker = %self.id, failures, "cannot claim jobs; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(25)))) => {}
                    }
                    continue;
                }
            };
            if leases.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.queue.wait(self.options.poll) => {}
                    _ = running.join_next(), if !running.is_empty() => {}
                }
                continue;
            }
            for lease in leases {
                let permit = slots.clone().try_acquire_owned().expect("claimed no more than the free slots");
                let (queue, handlers, options, stop) =
                    (self.queue.clone(), self.handlers.clone(), self.options.clone(), stop_jobs.child_token());
                running.spawn(async move {
                    run_one(queue, handlers, options, lease, stop).await;
                    drop(permit);
                });
            }
        }
        // Shutting down: no more claims; the running jobs get the grace period.
        let drained =
            tokio::time::timeout(self.options.grace, async { while running.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::info!(worker = %self.id, jobs = running.len(), "grace period over: cancelling and releasing the running jobs");
            stop_jobs.cancel();
            let released =
                tokio::time::timeout(STOP_WAIT, async { while running.join_next().await.is_some() {} }).await;
            if released.is_err() {
                // Handlers that ignore their token: aborted; their jobs come back when their
                // leases run out.
                tracing::warn!(worker = %self.id, jobs = running.len(), "handlers did not stop when asked: aborting them");
                running.abort_all();
                while running.join_next().await.is_some() {}
            }
        }
        Ok(())
    }
}

/// Delivers due webhooks until `stop`: a few at a time, looking again every second.
async fn deliver_webhooks(queue: Queue, webhooks: Arc<super::webhook::Webhooks>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let due = match queue.take_callbacks(8).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take webhooks to deliver");
                continue;
            }
        };
        // A stop waits for the deliveries in flight (each at most its timeout): a delivery
        // cut short would only be tried again after its one-minute lease.
        let deliveries = due.into_iter().map(|(job, attempt)| {
            let (queue, webhooks) = (queue.clone(), webhooks.clone());
            async move {
                let outcome = webhooks.deliver(&job).await;
                match &outcome {
                    Ok(()) => tracing::info!(job = %job.id, attempt, "webhook delivered"),
                    Err(e) => tracing::warn!(job = %job.id, attempt, error = %e, "webhook not delivered"),
                }
                if let Err(e) = queue.callback_done(job.id, attempt, outcome).await {
                    tracing::warn!(error = %e, job = %job.id, "cannot record a webhook delivery");
                }
            }
        });
        futures_util::future::join_all(deliveries).await;
    }
}

/// How often a worker's row is touched.
const WORKER_HEARTBEAT: Duration = Duration::from_secs(5);

/// While jobs are waiting, how long free slots are gathered before they are claimed together.
const GATHER: Duration = Duration::from_millis(2);

/// How long cancelled handlers get to stop before they are aborted.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Aborts a task when dropped: a handler never outlives the worker task that watches it.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one leased job to its end, keeping the lease, and records the end.
async fn run_one(queue: Queue, handlers: Handlers, options: WorkerOptions, lease: Lease, stop: CancellationToken) {
    let attempt = Attempt::start(&lease);
    let Some(handler) = handlers.by_kind.get(&lease.job.kind).cloned() else {
        let failed = queue.fail(&lease, &format!("no handler for jobs of kind `{}`", lease.job.kind), false).await;
        attempt.end(failed.map_or(Outcome::Lost, |job| Outcome::of_failure(&job)));
        return;
    };
    let cancel = CancellationToken::new();
    let cx = JobContext { job: lease.job.clone(), lease: lease.clone(), queue: queue.clone(), cancel: cancel.clone() };
    let work = tokio::spawn(handler(cx));
    let abort = work.abort_handle();
    let _guard = AbortOnDrop(work.abort_handle());
    // Every third of the lease, and at least every two seconds: a cancel is seen at the next
    // heartbeat.
    let mut beat = tokio::time::interval((options.lease / 3).min(Duration::from_secs(2)));
    beat.tick().await;
    // Why the handler was stopped, if it was.
    let mut stopped: Option<Stop> = None;
    tokio::pin!(work);
    let output = loop {
        tokio::select! {
            joined = &mut work => break joined,
            _ = beat.tick() => match queue.heartbeat(&lease, options.lease).await {
                Ok(h) if h.cancel_requested && stopped.is_none() => {
                    stopped = Some(Stop::Cancelled);
                    cancel.cancel();
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    // Someone else holds the job now: nothing of ours may be recorded.
                    cancel.cancel();
                    abort.abort();
                    attempt.end(Outcome::Lost);
                    return;
                }
                Err(e) => tracing::warn!(error = %e, job = %lease.job.id, "a heartbeat failed; the lease may run out"),
            },
            () = stop.cancelled(), if stopped.is_none() => {
                stopped = Some(Stop::Shutdown);
                cancel.cancel();
            }
        }
    };
    // What to record: a result that came is kept, whatever stopped the handler meanwhile.
    let end = match (output, stopped) {
        (Ok(Ok(result)), _) => End::Complete(result),
        (_, Some(Stop::Shutdown)) => End::Release,
        (_, Some(Stop::Cancelled)) => End::Fail("cancelled".into(), false),
        (Ok(Err(JobError::Retry(message))), None) => End::Fail(message, true),
        (Ok(Err(JobError::Fatal(message))), None) => End::Fail(message, false),
        (Err(e), None) => {
            let message = if e.is_panic() { "the handler panicked" } else { "the handler was stopped" };
            End::Fail(message.into(), true)
        }
    };
    let ran = attempt.start.elapsed();
    let outcome = record(&queue, &options, &lease, end).await;
    attempt.end_after(outcome, ran);
}

/// How a job ended, to record.
enum End {
    Complete(serde_json::Value),
    Fail(String, bool),
    Release,
}

/// Records `end` and says what came of it; while the database is away, tries again (keeping
/// the lease meanwhile), so that a job that ended is not run again for want of its record. A
/// lost lease ends it.
async fn record(queue: &Queue, options: &WorkerOptions, lease: &Lease, end: End) -> Outcome {
    let give_up = tokio::time::Instant::now() + options.lease * 4;
    let mut wait = Duration::from_millis(100);
    loop {
        let recorded = match &end {
            End::Complete(result) => queue.record_success(lease, result.clone()).await.map(|()| Outcome::Succeeded),
            End::Fail(message, retry) => queue.fail(lease, message, *retry).await.map(|job| Outcome::of_failure(&job)),
            End::Release => queue.release(lease).await.map(|job| match job.status {
                JobStatus::Cancelled => Outcome::Cancelled,
                _ => Outcome::Released,
            }),
        };
        match recorded {
            Ok(outcome) => return outcome,
            Err(e) if e.kind() == ErrorKind::Conflict => {
                tracing::info!(error = %e, job = %lease.job.id, "the job's end was not recorded: its lease was lost");
                return Outcome::Lost;
            }
            Err(e) if tokio::time::Instant::now() >= give_up => {
                tracing::error!(error = %e, job = %lease.job.id, "cannot record how a job ended; it will run again");
                return Outcome::Lost;
            }
            Err(e) => {
                tracing::warn!(error = %e, job = %lease.job.id, "cannot record how a job ended yet; trying again");
                let _ = queue.heartbeat(lease, options.lease).await;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Cancelled,
    Shutdown,
}

/// How an attempt ended, as its metrics say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    Retried,
    Cancelled,
    Released,
    Lost,
}

impl Outcome {
    /// The outcome of a recorded failure, from the job's state after it.
    fn of_failure(job: &Job) -> Self {
        match job.status {
            JobStatus::Queued => Outcome::Retried,
            JobStatus::Cancelled => Outcome::Cancelled,
            JobStatus::Succeeded => Outcome::Succeeded,
            JobStatus::Dead | JobStatus::Running => Outcome::Failed,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Retried => "retried",
            Outcome::Cancelled => "cancelled",
            Outcome::Released => "released",
            Outcome::Lost => "lost",
        }
    }
}

/// The measurements of one attempt: counted and its wait recorded when it starts, timed until
/// its end.
///
/// The `kind` label is bounded: a worker only claims the kinds it has handlers for.
struct Attempt {
    kind: String,
    start: Instant,
}

impl Attempt {
    fn start(lease: &Lease) -> Self {
        let kind = lease.job.kind.clone();
        metrics::counter!("cloudx_job_attempts_total", "kind" => kind.clone()).increment(1);
        // From when the job became claimable (its `run_at`: submission, backoff's end, or the
        // expiry of a lost lease) to now. Clocks of the submitting and the claiming process may
        // differ by a little: never below zero.
        let waited = (chrono::Utc::now() - lease.job.run_at).to_std().unwrap_or_default();
        metrics::histogram!("cloudx_job_wait_seconds", "kind" => kind.clone()).record(waited.as_secs_f64());
        Self { kind, start: Instant::now() }
    }

    fn end(self, outcome: Outcome) {
        let ran = self.start.elapsed();
        self.end_after(outcome, ran);
    }

    /// Ends it as `outcome`, having run for `ran` (the handler's time, without the recording's).
    fn end_after(self, outcome: Outcome, ran: Duration) {
        let labels = [("kind", self.kind), ("outcome", outcome.as_str().to_owned())];
        metrics::histogram!("cloudx_job_duration_seconds", &labels).record(ran.as_secs_f64());
        metrics::counter!("cloudx_jobs_finished_total", &labels).increment(1);
    }
}
