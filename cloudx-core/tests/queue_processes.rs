//! The queue with real worker processes: a worker killed with SIGKILL mid-job, one frozen past
//! its lease, heartbeats across processes, the SIGTERM drain and poison payloads, each scenario
//! on SQLite and on a real Postgres.
//!
//! The worker processes are this test binary run again: with `CLOUDX_TEST_WORKER_ROLE` set,
//! [`worker_process`] runs a worker with the `effect` handler on the data folder and database
//! the parent names, and reports what the handler does as lines on stdout
//! (`cloudx-worker: started <job> <attempt>`), so that the parent knows when to kill, freeze or
//! stop it. The handler's effect is a job event (`effect`), which the queue fences by the lease
//! like every answer of a worker and which is kept whatever becomes of the process: a job whose
//! effect happened twice shows two.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudx_core::config::ConfigLoader;
use cloudx_core::queue::{
    Backoff, Handlers, Job, JobContext, JobError, JobStatus, Lease, NewJob, Queue, Worker, WorkerOptions,
};
use cloudx_core::testing::TestPostgres;
use cloudx_core::{Cloudx, ErrorKind};
use nix::sys::signal::Signal;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Set in a worker process (to anything): [`worker_process`] then runs a worker.
const ROLE: &str = "CLOUDX_TEST_WORKER_ROLE";
/// The worker's data folder, database URL (Postgres; SQLite lives in the data folder),
/// concurrency, lease and grace (milliseconds).
const DATA_DIR: &str = "CLOUDX_TEST_WORKER_DATA_DIR";
const DATABASE_URL: &str = "CLOUDX_TEST_WORKER_DATABASE_URL";
const CONCURRENCY: &str = "CLOUDX_TEST_WORKER_CONCURRENCY";
const LEASE_MS: &str = "CLOUDX_TEST_WORKER_LEASE_MS";
const GRACE_MS: &str = "CLOUDX_TEST_WORKER_GRACE_MS";
/// What starts a worker process's reports on its stdout.
const PREFIX: &str = "cloudx-worker: ";

/// The workers' lease: short, so that take-overs come quickly.
const LEASE: Duration = Duration::from_secs(1);
/// The longest wait for anything: a failure fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(20);

// ---- the worker process ----

/// The worker process's body: returns at once unless this process was started as a worker
/// by one of the scenarios below.
#[test]
fn worker_process() {
    if std::env::var_os(ROLE).is_none() {
        return;
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(run_worker());
}

/// Reports `what` to the parent.
fn say(what: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PREFIX}{what}");
    let _ = out.flush();
}

fn var_ms(name: &str) -> Duration {
    Duration::from_millis(std::env::var(name).unwrap().parse().unwrap())
}

async fn run_worker() {
    let mut env = vec![("CLOUDX_DATA_DIR".to_owned(), std::env::var(DATA_DIR).unwrap())];
    if let Ok(url) = std::env::var(DATABASE_URL) {
        env.push(("CLOUDX_DATABASE__URL".to_owned(), url));
    }
    let cx = Cloudx::connect(ConfigLoader::new().env(env).load().unwrap()).await.unwrap();
    let queue = Queue::new(cx.database().clone())
        .with_backoff(Backoff { base: Duration::from_millis(50), max: Duration::from_millis(200) });
    let mut handlers = Handlers::new();
    let own = queue.clone();
    handlers.register("effect", move |cx| effect(own.clone(), cx));
    let options = WorkerOptions {
        concurrency: std::env::var(CONCURRENCY).unwrap().parse().unwrap(),
        lease: var_ms(LEASE_MS),
        poll: Duration::from_millis(100),
        grace: var_ms(GRACE_MS),
        ..WorkerOptions::default()
    };
    let worker = Worker::new(queue, handlers, options);
    let stop = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            term.recv().await;
            say("stopping");
            stop.cancel();
        }
    });
    say(&format!("ready {}", std::process::id()));
    worker.run(stop).await.unwrap();
    cx.close().await;
    say("stopped");
}

/// What the `effect` handler does on one attempt (the payload lists them, from the first;
/// attempts past the list run at once).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    /// Works this long...
    #[serde(default)]
    hold_ms: u64,
    /// ...then until this file exists.
    #[serde(default)]
    until: Option<PathBuf>,
    /// Waits holding its thread (the worker cannot stop it), then makes its effect and
    /// completes the job on its own, reporting how both were answered: a frozen worker's late
    /// answers, made whatever its worker learnt meanwhile.
    #[serde(default)]
    blocking: bool,
    /// Panics.
    #[serde(default)]
    panic: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    attempts: Vec<Step>,
}

/// The handler whose effect the parent counts: an `effect` event (fenced by the lease) and a
/// result naming the attempt and the process.
async fn effect(queue: Queue, cx: JobContext) -> Result<Value, JobError> {
    let plan: Plan = serde_json::from_value(cx.job.payload.clone())
        .map_err(|e| JobError::Fatal(format!("the payload cannot be read: {e}")))?;
    let (id, attempt) = (cx.job.id, cx.attempt());
    let step = plan.attempts.get(attempt as usize - 1).cloned().unwrap_or_default();
    let me = json!({"attempt": attempt, "pid": std::process::id()});
    let lost = |e: cloudx_core::Error| JobError::Retry(format!("the lease was lost: {e}"));
    cx.event("started", me.clone()).await.map_err(lost)?;
    say(&format!("started {id} {attempt}"));
    assert!(!step.panic, "a handler bug, on purpose");
    if step.blocking {
        let answered = |r: cloudx_core::Result<()>| match r {
            Ok(()) => "ok".to_owned(),
            Err(e) if e.kind() == ErrorKind::Conflict => "conflict".to_owned(),
            Err(e) => format!("{:?}", e.kind()),
        };
        let (effect, complete) = tokio::task::block_in_place(|| {
            let deadline = Instant::now() + PATIENCE;
            while step.until.as_ref().is_some_and(|f| !f.exists()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let lease =
                Lease { job: cx.job.clone(), worker: cx.job.worker.expect("a leased job names its worker"), attempt };
            tokio::runtime::Handle::current().block_on(async {
                let effect = cx.event("effect", me.clone()).await.map(drop);
                let complete = queue.complete(&lease, me.clone()).await.map(drop);
                (effect, complete)
            })
        });
        say(&format!("late {id} {attempt} effect={} complete={}", answered(effect), answered(complete)));
        return Ok(me);
    }
    let work = async {
        tokio::time::sleep(Duration::from_millis(step.hold_ms)).await;
        while step.until.as_ref().is_some_and(|f| !f.exists()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        () = work => {}
        () = cx.cancelled().cancelled() => {
            say(&format!("cancelled {id} {attempt}"));
            return Err(JobError::Retry("stopped before the end".into()));
        }
    }
    cx.event("effect", me.clone()).await.map_err(lost)?;
    say(&format!("done {id} {attempt}"));
    Ok(me)
}

// ---- the parent ----

struct Instance {
    queue: Queue,
    me: Uuid,
    dir: tempfile::TempDir,
    cx: Cloudx,
    pg: Option<TestPostgres>,
}

async fn instance(postgres: bool) -> Option<Instance> {
    let dir = tempfile::tempdir().unwrap();
    let pg = if postgres { Some(TestPostgres::create().await?) } else { None };
    let mut env = vec![("CLOUDX_DATA_DIR".to_owned(), dir.path().to_str().unwrap().to_owned())];
    if let Some(pg) = &pg {
        env.push(("CLOUDX_DATABASE__URL".into(), pg.url().to_owned()));
    }
    // Connecting first creates the database and applies the migrations the workers find.
    let cx = Cloudx::connect(ConfigLoader::new().env(env).load().unwrap()).await.unwrap();
    let queue = Queue::new(cx.database().clone());
    Some(Instance { queue, me: Uuid::now_v7(), dir, cx, pg })
}

impl Instance {
    /// Starts a worker process on this instance.
    fn worker(&self, concurrency: usize, grace: Duration) -> WorkerProcess {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "worker_process", "--nocapture", "--test-threads", "1"])
            .env(ROLE, "1")
            .env(DATA_DIR, self.dir.path())
            .env(CONCURRENCY, concurrency.to_string())
            .env(LEASE_MS, LEASE.as_millis().to_string())
            .env(GRACE_MS, grace.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(pg) = &self.pg {
            cmd.env(DATABASE_URL, pg.url());
        }
        let mut child = cmd.spawn().unwrap();
        let (said, output) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(String::new())));
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn({
            let (said, output) = (said.clone(), output.clone());
            move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(report) = line.strip_prefix(PREFIX) {
                        said.lock().unwrap().push(report.to_owned());
                    }
                    output.lock().unwrap().push_str(&format!("{line}\n"));
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let output = output.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    output.lock().unwrap().push_str(&format!("(stderr) {line}\n"));
                }
            }
        });
        WorkerProcess { child, said, output, reader: Some(reader) }
    }

    /// Submits an `effect` job doing `steps` on its attempts.
    async fn submit(&self, steps: Value) -> Job {
        self.submit_job(NewJob::new("effect", json!({ "attempts": steps }))).await
    }

    async fn submit_job(&self, new: NewJob) -> Job {
        self.queue.submit(self.me, new).await.unwrap()
    }

    /// Waits for the job to end.
    async fn finished(&self, id: Uuid) -> Job {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let job = self.queue.get(id).await.unwrap();
            if job.status.is_finished() {
                return job;
            }
            assert!(Instant::now() < deadline, "the job did not end in time: {job:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The job's events, as `(kind, data)`.
    async fn events(&self, id: Uuid) -> Vec<(String, Value)> {
        self.queue.events(id, 0, 100).await.unwrap().into_iter().map(|e| (e.kind, e.data)).collect()
    }

    async fn close(self) {
        self.cx.close().await;
    }
}

/// A worker process, killed (SIGKILL) when dropped.
struct WorkerProcess {
    child: Child,
    /// Its reports, in order.
    said: Arc<Mutex<Vec<String>>>,
    /// All it wrote (for failure messages).
    output: Arc<Mutex<String>>,
    /// The thread reading its stdout, until the end.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl WorkerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    fn said(&self, report: &str) -> bool {
        self.said.lock().unwrap().iter().any(|r| r == report)
    }

    fn reports(&self) -> Vec<String> {
        self.said.lock().unwrap().clone()
    }

    /// Waits for the process to exit.
    async fn exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its last words may still be in the pipe: read them all.
                if let Some(reader) = self.reader.take() {
                    reader.join().unwrap();
                }
                return status;
            }
            assert!(Instant::now() < deadline, "worker {} did not exit in time:\n{}", self.pid(), self.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then checks that the process drained and exited 0.
    async fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        let status = self.exit(PATIENCE).await;
        assert!(status.success(), "worker {} exited with {status:?}:\n{}", self.pid(), self.output());
        assert!(self.said("stopped"), "{}", self.output());
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until one of `workers` reports `report`; which one.
async fn reported(workers: &[&WorkerProcess], report: &str) -> usize {
    reported_that(workers, report, |r| r == report).await.0
}

/// Waits until one of `workers` reports something `matches` accepts (`what` describes it);
/// which one, and the report.
async fn reported_that(workers: &[&WorkerProcess], what: &str, matches: impl Fn(&str) -> bool) -> (usize, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for (n, w) in workers.iter().enumerate() {
            if let Some(report) = w.said.lock().unwrap().iter().find(|r| matches(r)) {
                return (n, report.clone());
            }
        }
        if Instant::now() >= deadline {
            let outputs: Vec<String> = workers.iter().map(|w| format!("worker {}:\n{}", w.pid(), w.output())).collect();
            panic!("no worker reported `{what}` in time\n{}", outputs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the handler of `attempt` in `worker` writes (event data and result).
fn by(worker: &WorkerProcess, attempt: u32) -> Value {
    json!({"attempt": attempt, "pid": worker.pid()})
}

macro_rules! scenarios {
    ($($test:ident),* $(,)?) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(false).await })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(true).await })* }
    };
}

scenarios!(
    a_killed_worker_s_job_runs_again_elsewhere_once,
    a_frozen_worker_s_late_answers_are_refused,
    heartbeats_keep_a_long_job_from_another_process,
    sigterm_drains_then_releases_to_another_process,
    poison_payloads_die_and_the_worker_process_keeps_going,
);

async fn a_killed_worker_s_job_runs_again_elsewhere_once(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let mut workers = [i.worker(1, PATIENCE), i.worker(1, PATIENCE)];
    // The first attempt works until a file that never comes; the next ones at once.
    let never = i.dir.path().join("never");
    let job = i.submit(json!([{ "until": never }])).await;
    let first = reported(&[&workers[0], &workers[1]], &format!("started {} 1", job.id)).await;
    let other = 1 - first;
    workers[first].signal(Signal::SIGKILL);
    let status = workers[first].exit(PATIENCE).await;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // Once the lease runs out, the other process takes the job: attempt 2.
    reported(&[&workers[other]], &format!("done {} 2", job.id)).await;
    let done = i.finished(job.id).await;
    assert_eq!(
        (done.status, done.attempts, done.result.clone()),
        (JobStatus::Succeeded, 2, Some(by(&workers[other], 2))),
        "{done:?}"
    );
    // Started twice (the first start seen, then the redelivery), its effect once, the second's.
    assert_eq!(
        i.events(job.id).await,
        vec![
            ("started".to_owned(), by(&workers[first], 1)),
            ("started".to_owned(), by(&workers[other], 2)),
            ("effect".to_owned(), by(&workers[other], 2)),
        ]
    );
    assert!(!workers[other].reports().iter().any(|r| r.starts_with(&format!("started {} 3", job.id))));
    workers[other].stop().await;
    i.close().await;
}

async fn a_frozen_worker_s_late_answers_are_refused(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let mut workers = [i.worker(1, PATIENCE), i.worker(1, PATIENCE)];
    // The first attempt holds its thread until the file comes, then answers on its own.
    let thaw = i.dir.path().join("thaw");
    let job = i.submit(json!([{ "until": thaw, "blocking": true }])).await;
    let first = reported(&[&workers[0], &workers[1]], &format!("started {} 1", job.id)).await;
    let other = 1 - first;
    workers[first].signal(Signal::SIGSTOP);
    // Frozen past its lease: the other process takes the job over and completes it.
    reported(&[&workers[other]], &format!("done {} 2", job.id)).await;
    let done = i.finished(job.id).await;
    assert_eq!((done.status, done.attempts), (JobStatus::Succeeded, 2), "{done:?}");
    // Thawed, the first makes its effect and completes the job late: both refused.
    std::fs::write(&thaw, b"").unwrap();
    workers[first].signal(Signal::SIGCONT);
    let late = format!("late {} 1 ", job.id);
    let (_, said) = reported_that(&[&workers[first]], &late, |r| r.starts_with(&late)).await;
    assert_eq!(said, format!("{late}effect=conflict complete=conflict"), "both late answers are refused");
    // Stopping it lets whatever else it had to say be said first.
    workers[first].stop().await;
    workers[other].stop().await;
    let after = i.queue.get(job.id).await.unwrap();
    assert_eq!(
        (after.status, after.attempts, after.result.clone(), after.finished_at),
        (JobStatus::Succeeded, 2, Some(by(&workers[other], 2)), done.finished_at),
        "the second worker's result stands"
    );
    assert_eq!(
        i.events(job.id).await,
        vec![
            ("started".to_owned(), by(&workers[first], 1)),
            ("started".to_owned(), by(&workers[other], 2)),
            ("effect".to_owned(), by(&workers[other], 2)),
        ]
    );
    i.close().await;
}

async fn heartbeats_keep_a_long_job_from_another_process(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let mut workers = [i.worker(1, PATIENCE), i.worker(1, PATIENCE)];
    let hold = LEASE * 4;
    let long = i.submit(json!([{ "hold_ms": hold.as_millis() }])).await;
    let holder = reported(&[&workers[0], &workers[1]], &format!("started {} 1", long.id)).await;
    let started = Instant::now();
    let other = 1 - holder;
    // The other process claims meanwhile (the holder has no free slot: this job is the
    // other's), so it would take the long job too if its lease ran out.
    let short = i.submit(json!([])).await;
    reported(&[&workers[other]], &format!("done {} 1", short.id)).await;
    reported(&[&workers[holder]], &format!("done {} 1", long.id)).await;
    assert!(started.elapsed() >= hold.mul_f64(0.9), "{:?}", started.elapsed());
    let done = i.finished(long.id).await;
    assert_eq!(
        (done.status, done.attempts, done.result.clone(), done.last_error.clone()),
        (JobStatus::Succeeded, 1, Some(by(&workers[holder], 1)), None),
        "one lease, kept to the end"
    );
    assert_eq!(
        i.events(long.id).await,
        vec![("started".to_owned(), by(&workers[holder], 1)), ("effect".to_owned(), by(&workers[holder], 1))]
    );
    let prefix = format!("started {} ", long.id);
    assert!(!workers[other].reports().iter().any(|r| r.starts_with(&prefix)), "{:?}", workers[other].reports());
    for w in &mut workers {
        w.stop().await;
    }
    i.close().await;
}

async fn sigterm_drains_then_releases_to_another_process(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let go = i.dir.path().join("go");
    let never = i.dir.path().join("never");
    // Two jobs that end once the parent says so (after the signal), one that would not end.
    let quick = [i.submit(json!([{ "until": go }])).await, i.submit(json!([{ "until": go }])).await];
    let long = i.submit(json!([{ "until": never }])).await;
    let grace = Duration::from_millis(1500);
    let mut a = i.worker(4, grace);
    for job in quick.iter().chain([&long]) {
        reported(&[&a], &format!("started {} 1", job.id)).await;
    }
    let asked = Instant::now();
    a.signal(Signal::SIGTERM);
    reported(&[&a], "stopping").await;
    std::fs::write(&go, b"").unwrap();
    let status = a.exit(PATIENCE).await;
    let took = asked.elapsed();
    assert!(status.success(), "SIGTERM exits 0: {status:?}\n{}", a.output());
    assert!(took >= grace && took < grace + Duration::from_secs(5), "{took:?}");
    // The quick ones finished in the grace period, and are recorded so.
    for job in &quick {
        assert!(a.said(&format!("done {} 1", job.id)), "{}", a.output());
        let job = i.queue.get(job.id).await.unwrap();
        assert_eq!((job.status, job.attempts, job.result), (JobStatus::Succeeded, 1, Some(by(&a, 1))));
    }
    // The long one was stopped and released: queued again, the attempt not counted.
    assert!(a.said(&format!("cancelled {} 1", long.id)), "{}", a.output());
    let released = i.queue.get(long.id).await.unwrap();
    assert_eq!(
        (released.status, released.attempts, released.max_attempts, released.last_error, released.result),
        (JobStatus::Queued, 1, 4, None, None),
        "released, not failed"
    );
    // Another worker completes it.
    let mut b = i.worker(1, PATIENCE);
    reported(&[&b], &format!("done {} 2", long.id)).await;
    let done = i.finished(long.id).await;
    assert_eq!((done.status, done.attempts, done.result), (JobStatus::Succeeded, 2, Some(by(&b, 2))));
    assert_eq!(
        i.events(long.id).await,
        vec![("started".to_owned(), by(&a, 1)), ("started".to_owned(), by(&b, 2)), ("effect".to_owned(), by(&b, 2)),]
    );
    b.stop().await;
    i.close().await;
}

async fn poison_payloads_die_and_the_worker_process_keeps_going(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let mut w = i.worker(2, PATIENCE);
    let unreadable = i.submit_job(NewJob::new("effect", json!({"attempts": "all of them"}))).await;
    let panics = i
        .submit_job(NewJob {
            max_attempts: Some(2),
            ..NewJob::new("effect", json!({"attempts": [{"panic": true}, {"panic": true}]}))
        })
        .await;
    let unreadable = i.finished(unreadable.id).await;
    assert_eq!((unreadable.status, unreadable.attempts), (JobStatus::Dead, 1));
    let error = unreadable.last_error.unwrap();
    assert!(error.starts_with("the payload cannot be read: "), "{error}");
    let panics = i.finished(panics.id).await;
    assert_eq!(
        (panics.status, panics.attempts, panics.last_error.as_deref()),
        (JobStatus::Dead, 2, Some("the handler panicked"))
    );
    assert!(w.said(&format!("started {} 2", panics.id)), "{}", w.output());
    // The process lives on and runs the next job.
    assert!(w.child.try_wait().unwrap().is_none(), "{}", w.output());
    let next = i.submit(json!([])).await;
    reported(&[&w], &format!("done {} 1", next.id)).await;
    let next = i.finished(next.id).await;
    assert_eq!((next.status, next.result), (JobStatus::Succeeded, Some(by(&w, 1))));
    w.stop().await;
    i.close().await;
}
