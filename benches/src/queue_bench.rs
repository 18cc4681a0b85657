//! The job queue end to end: submit → lease → complete with a trivial handler, and the time
//! from a submission to its handler's start on an idle queue.
//!
//! Usage:
//!   queue-bench throughput sqlite|postgres JOBS [WORKERS] [CONCURRENCY] [SUBMITTERS]
//!   queue-bench latency ROUNDS          (Postgres, one worker waiting on LISTEN)
//! Postgres runs on a fresh database made from `CLOUDX_TEST_POSTGRES_URL`. Prints one JSON line.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cloudx_core::Cloudx;
use cloudx_core::config::ConfigLoader;
use cloudx_core::queue::{Handlers, NewJob, Worker, WorkerOptions};
use cloudx_core::testing::TestPostgres;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn open(postgres: bool) -> (Cloudx, Option<TestPostgres>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let pg = if postgres {
        Some(TestPostgres::create().await.expect("set CLOUDX_TEST_POSTGRES_URL to a Postgres server"))
    } else {
        None
    };
    let mut env = vec![("CLOUDX_DATA_DIR".to_owned(), dir.path().to_str().expect("a UTF-8 path").to_owned())];
    if let Some(pg) = &pg {
        env.push(("CLOUDX_DATABASE__URL".into(), pg.url().to_owned()));
    }
    let cx =
        Cloudx::connect(ConfigLoader::new().env(env).load().expect("a configuration")).await.expect("cloudx opens");
    (cx, pg, dir)
}

fn options(concurrency: usize) -> WorkerOptions {
    WorkerOptions { concurrency, poll: Duration::from_millis(200), ..WorkerOptions::default() }
}

/// `jobs` submitted by `submitters` concurrent tasks while `workers` workers (each running
/// `concurrency` handlers) take them; the clock stops when the last one is recorded.
async fn throughput(
    postgres: bool,
    jobs: usize,
    workers: usize,
    concurrency: usize,
    submitters: usize,
) -> serde_json::Value {
    let (cx, _pg, _dir) = open(postgres).await;
    let queue = cx.queue().clone();
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let mut handlers = Handlers::new();
    handlers.register("noop", {
        let (done, all_done) = (done.clone(), all_done.clone());
        move |_cx| {
            let (done, all_done) = (done.clone(), all_done.clone());
            async move {
                if done.fetch_add(1, Ordering::SeqCst) + 1 == jobs {
                    all_done.notify_one();
                }
                Ok(serde_json::Value::Null)
            }
        }
    });
    let stop = CancellationToken::new();
    let mut running = Vec::new();
    for _ in 0..workers {
        let worker = Worker::new(queue.clone(), handlers.clone(), options(concurrency));
        let stop = stop.clone();
        running.push(tokio::spawn(async move { worker.run(stop).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let me = Uuid::now_v7();
    let start = Instant::now();
    let tasks: Vec<_> = (0..submitters)
        .map(|s| {
            let queue = queue.clone();
            tokio::spawn(async move {
                for i in (s..jobs).step_by(submitters) {
                    queue.submit(me, NewJob::new("noop", serde_json::json!({ "i": i }))).await.expect("submitted");
                }
            })
        })
        .collect();
    for s in tasks {
        s.await.expect("a submitter");
    }
    let submitted = start.elapsed();
    // The last completion is recorded just after its handler returns: wait for the records.
    all_done.notified().await;
    loop {
        let done_jobs = count_succeeded(&cx).await;
        if done_jobs >= jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    stop.cancel();
    for w in running {
        w.await.expect("a worker").expect("a worker ends cleanly");
    }
    serde_json::json!({
        "backend": if postgres { "postgres" } else { "sqlite" },
        "jobs": jobs, "workers": workers, "concurrency": concurrency, "submitters": submitters,
        "seconds": elapsed.as_secs_f64(), "jobs_per_s": jobs as f64 / elapsed.as_secs_f64(),
        "submit_per_s": jobs as f64 / submitted.as_secs_f64(),
    })
}

async fn count_succeeded(cx: &Cloudx) -> usize {
    let depth = cx.queue().depth().await.expect("counted");
    depth.iter().filter(|d| d.status == cloudx_core::queue::JobStatus::Succeeded).map(|d| d.jobs as usize).sum()
}

/// Submits one job at a time to an idle Postgres queue with one worker waiting, and measures
/// how long each takes to reach its handler.
async fn latency(rounds: usize) -> serde_json::Value {
    let (cx, _pg, _dir) = open(true).await;
    let queue = cx.queue().clone();
    let (started, mut starts) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut handlers = Handlers::new();
    handlers.register("noop", move |_cx| {
        let started = started.clone();
        async move {
            let _ = started.send(Instant::now());
            Ok(serde_json::Value::Null)
        }
    });
    let stop = CancellationToken::new();
    // A second connection pool, as a worker process would have, so that the wake-up goes
    // through Postgres NOTIFY rather than this process's own notification.
    let (worker_cx, _) = {
        let env = vec![
            ("CLOUDX_DATA_DIR".to_owned(), _dir.path().to_str().expect("a UTF-8 path").to_owned()),
            ("CLOUDX_DATABASE__URL".into(), _pg.as_ref().expect("postgres").url().to_owned()),
        ];
        (Cloudx::connect(ConfigLoader::new().env(env).load().expect("a configuration")).await.expect("opens"), ())
    };
    // Long poll: only NOTIFY can wake it in time.
    let worker = Worker::new(
        worker_cx.queue().clone(),
        handlers,
        WorkerOptions { concurrency: 1, poll: Duration::from_secs(10), ..WorkerOptions::default() },
    );
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let me = Uuid::now_v7();
    let mut took = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let start = Instant::now();
        queue.submit(me, NewJob::new("noop", serde_json::json!({ "i": i }))).await.expect("submitted");
        let at = starts.recv().await.expect("the handler started");
        took.push(at.duration_since(start));
        // Idle in between: the worker is back waiting.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    run.await.expect("the worker").expect("ends cleanly");
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    serde_json::json!({
        "rounds": rounds,
        "p50_ms": ms(took[rounds / 2]), "p90_ms": ms(took[rounds * 9 / 10]), "p99_ms": ms(took[(rounds * 99 / 100).min(rounds - 1)]),
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let out = match args.first().map(String::as_str) {
        Some("throughput") => {
            let postgres = match args.get(1).map(String::as_str) {
                Some("postgres") => true,
                Some("sqlite") => false,
                _ => panic!("throughput sqlite|postgres JOBS [WORKERS] [CONCURRENCY]"),
            };
            throughput(postgres, arg(2, 20_000), arg(3, 2), arg(4, 32), arg(5, 64)).await
        }
        Some("latency") => latency(arg(1, 200)).await,
        _ => panic!("usage: queue-bench throughput sqlite|postgres JOBS [WORKERS] [CONCURRENCY] | latency ROUNDS"),
    };
    use std::io::Write as _;
    writeln!(std::io::stdout(), "{out}").expect("stdout");
}
