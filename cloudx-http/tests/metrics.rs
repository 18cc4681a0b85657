//! The job queue on `/metrics`: the cluster-wide gauges read from the database (depth, dead
//! jobs, oldest ready job, workers), the job histograms and counters a worker of this process
//! records, and a scrape that still answers when the database is down. On SQLite and Postgres.

use std::time::{Duration, Instant};

use cloudx_core::queue::{Handlers, JobError, JobStatus, NewJob, Worker, WorkerOptions};
use cloudx_http::metrics::QUEUE_READING_TTL;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod common;

use common::Daemon;

/// One after the other: the two share the process's recorder, and the counter of failed
/// readings is the process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_metrics_on_sqlite_then_postgres() {
    queue_metrics(false).await;
    queue_metrics(true).await;
}

/// The value of the series `series` (name and labels exactly as rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn expect(text: &str, series: &str, want: f64) {
    assert_eq!(value(text, series), Some(want), "{series} in\n{text}");
}

async fn scrape(d: &Daemon) -> String {
    let r = d.get("/metrics").await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Scrapes once the cached reading of the queue's gauges has expired.
async fn fresh_scrape(d: &Daemon) -> String {
    tokio::time::sleep(QUEUE_READING_TTL + Duration::from_millis(100)).await;
    scrape(d).await
}

async fn queue_metrics(postgres: bool) {
    let pg = if postgres {
        match cloudx_core::testing::TestPostgres::create().await {
            Some(pg) => Some(pg),
            None => return,
        }
    } else {
        None
    };
    let env: Vec<(&str, &str)> = pg.iter().map(|pg| ("CLOUDX_DATABASE__URL", pg.url())).collect();
    let d = Daemon::start(&env).await;
    // Kinds of each run's own keep the two runs' series apart.
    let db = if postgres { "pg" } else { "lite" };
    let kind = |name: &str| format!("m.{name}.{db}");
    let (ok, bad, flaky, idle) = (kind("ok"), kind("bad"), kind("flaky"), kind("idle"));

    // Nothing yet: no worker, no series for these kinds.
    let text = scrape(&d).await;
    expect(&text, "cloudx_workers{health=\"alive\"}", 0.0);
    assert!(!text.contains(&ok), "{text}");
    assert!(!text.contains("cloudx_worker_heartbeat_age_seconds_max"), "no alive worker, no age: {text}");

    // A worker in this process: `ok` succeeds, `bad` fails for good, `flaky` fails twice with
    // a retry in between; nobody runs `idle`.
    let mut handlers = Handlers::new();
    handlers.register(ok.clone(), |_cx| async { Ok(json!("done")) });
    handlers.register(bad.clone(), |_cx| async { Err(JobError::Fatal("cannot read the payload".into())) });
    handlers.register(flaky.clone(), |_cx| async { Err(JobError::Retry("busy".into())) });
    let worker = Worker::new(d.cx.queue().clone(), handlers, WorkerOptions::default());
    let stop = CancellationToken::new();
    let working = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    // One more worker row that went silent a minute ago without saying it stopped.
    let silent = Uuid::now_v7();
    d.cx.queue().register_worker(silent, "lost:1", std::slice::from_ref(&ok), 1).await.unwrap();
    let age = "UPDATE workers SET heartbeat_at = heartbeat_at - 60000000 WHERE id = $1";
    match d.cx.database() {
        cloudx_core::db::Database::Sqlite(pool) => sqlx::query(age).bind(silent).execute(pool).await.map(drop),
        cloudx_core::db::Database::Postgres(pool) => sqlx::query(age).bind(silent).execute(pool).await.map(drop),
    }
    .unwrap();

    let me = Uuid::nil();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(d.cx.queue().submit(me, NewJob::new(ok.as_str(), json!({}))).await.unwrap().id);
    }
    ids.push(d.cx.queue().submit(me, NewJob::new(bad.as_str(), json!({}))).await.unwrap().id);
    let flaky_job = NewJob { max_attempts: Some(2), ..NewJob::new(flaky.as_str(), json!({})) };
    ids.push(d.cx.queue().submit(me, flaky_job).await.unwrap().id);
    d.cx.queue().submit(me, NewJob::new(idle.as_str(), json!({}))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        loop {
            let job = d.cx.queue().get(*id).await.unwrap();
            if job.status.is_finished() {
                break;
            }
            assert!(Instant::now() < deadline, "the worker did not finish {job:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(d.cx.queue().get(ids[4]).await.unwrap().status, JobStatus::Dead);

    let text = fresh_scrape(&d).await;
    // Depth by kind and status, every status given; dead jobs are the status="dead" series.
    expect(&text, &format!("cloudx_jobs{{kind=\"{ok}\",status=\"succeeded\"}}"), 3.0);
    expect(&text, &format!("cloudx_jobs{{kind=\"{ok}\",status=\"queued\"}}"), 0.0);
    expect(&text, &format!("cloudx_jobs{{kind=\"{ok}\",status=\"dead\"}}"), 0.0);
    expect(&text, &format!("cloudx_jobs{{kind=\"{bad}\",status=\"dead\"}}"), 1.0);
    expect(&text, &format!("cloudx_jobs{{kind=\"{flaky}\",status=\"dead\"}}"), 1.0);
    expect(&text, &format!("cloudx_jobs{{kind=\"{idle}\",status=\"queued\"}}"), 1.0);
    let oldest = value(&text, &format!("cloudx_jobs_oldest_ready_seconds{{kind=\"{idle}\"}}")).unwrap();
    assert!(oldest >= QUEUE_READING_TTL.as_secs_f64() && oldest < 60.0, "{oldest}");
    expect(&text, &format!("cloudx_jobs_oldest_ready_seconds{{kind=\"{ok}\"}}"), 0.0);
    // Workers by health, and the lag of the alive one's heartbeat.
    expect(&text, "cloudx_workers{health=\"alive\"}", 1.0);
    expect(&text, "cloudx_workers{health=\"gone\"}", 1.0);
    expect(&text, "cloudx_workers{health=\"stopped\"}", 0.0);
    let lag = value(&text, "cloudx_worker_heartbeat_age_seconds_max").unwrap();
    assert!((0.0..=30.0).contains(&lag), "{lag}");
    // This process's worker: every lease counted, each end by outcome, durations and waits in
    // the job metrics' own buckets.
    expect(&text, &format!("cloudx_job_attempts_total{{kind=\"{ok}\"}}"), 3.0);
    expect(&text, &format!("cloudx_job_attempts_total{{kind=\"{bad}\"}}"), 1.0);
    expect(&text, &format!("cloudx_job_attempts_total{{kind=\"{flaky}\"}}"), 2.0);
    expect(&text, &format!("cloudx_jobs_finished_total{{kind=\"{ok}\",outcome=\"succeeded\"}}"), 3.0);
    expect(&text, &format!("cloudx_jobs_finished_total{{kind=\"{bad}\",outcome=\"failed\"}}"), 1.0);
    expect(&text, &format!("cloudx_jobs_finished_total{{kind=\"{flaky}\",outcome=\"retried\"}}"), 1.0);
    expect(&text, &format!("cloudx_jobs_finished_total{{kind=\"{flaky}\",outcome=\"failed\"}}"), 1.0);
    expect(&text, &format!("cloudx_job_duration_seconds_count{{kind=\"{ok}\",outcome=\"succeeded\"}}"), 3.0);
    expect(
        &text,
        &format!("cloudx_job_duration_seconds_bucket{{kind=\"{ok}\",outcome=\"succeeded\",le=\"3600\"}}"),
        3.0,
    );
    expect(&text, &format!("cloudx_job_wait_seconds_count{{kind=\"{ok}\"}}"), 3.0);
    expect(&text, &format!("cloudx_job_wait_seconds_count{{kind=\"{flaky}\"}}"), 2.0);
    assert!(
        value(&text, &format!("cloudx_job_wait_seconds_bucket{{kind=\"{ok}\",le=\"0.0005\"}}")).is_some(),
        "{text}"
    );
    let waited = value(&text, &format!("cloudx_job_wait_seconds_sum{{kind=\"{ok}\"}}")).unwrap();
    assert!((0.0..10.0).contains(&waited), "{waited}");
    for help in [
        "# TYPE cloudx_jobs gauge",
        "# TYPE cloudx_job_duration_seconds histogram",
        "# TYPE cloudx_job_wait_seconds histogram",
    ] {
        assert!(text.contains(help), "missing {help} in\n{text}");
    }
    let errors_before = value(&text, "cloudx_queue_metrics_errors_total").unwrap();
    if !postgres {
        assert_eq!(errors_before, 0.0, "{text}");
    }

    // Stopped: the worker's row says so, and there is no alive heartbeat to age.
    stop.cancel();
    working.await.unwrap().unwrap();
    let text = fresh_scrape(&d).await;
    expect(&text, "cloudx_workers{health=\"alive\"}", 0.0);
    expect(&text, "cloudx_workers{health=\"stopped\"}", 1.0);
    assert!(!text.contains("cloudx_worker_heartbeat_age_seconds_max"), "{text}");

    // The database away: scrapes still answer with this process's metrics, the gauges are
    // left out and the failures counted, and a failed reading is kept for its period too, so a
    // burst of scrapes asks the database about once per period.
    d.cx.close().await;
    let started = Instant::now();
    for _ in 0..20 {
        scrape(&d).await;
    }
    let text = fresh_scrape(&d).await;
    let periods = started.elapsed().as_secs_f64() / QUEUE_READING_TTL.as_secs_f64();
    assert!(!text.contains("cloudx_jobs{"), "{text}");
    assert!(!text.contains("cloudx_workers{"), "{text}");
    expect(&text, &format!("cloudx_job_attempts_total{{kind=\"{ok}\"}}"), 3.0);
    let errors = value(&text, "cloudx_queue_metrics_errors_total").unwrap() - errors_before;
    assert!(errors >= 1.0 && errors <= periods.ceil() + 1.0, "{errors} failed readings in {periods} periods");
    d.stop().await.unwrap();
}
