//! The conformance suite of the `Queue` port: every scenario on SQLite and on a real Postgres.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cloudx_core::config::ConfigLoader;
use cloudx_core::queue::{Backoff, Handlers, JobError, JobStatus, NewJob, Queue, Worker, WorkerOptions};
use cloudx_core::testing::TestPostgres;
use cloudx_core::{Cloudx, ErrorKind};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Instance {
    queue: Queue,
    _cx: Cloudx,
    _pg: Option<TestPostgres>,
    _dir: tempfile::TempDir,
}

async fn instance(postgres: bool) -> Option<Instance> {
    let dir = tempfile::tempdir().unwrap();
    let pg = if postgres { Some(TestPostgres::create().await?) } else { None };
    let mut env = vec![("CLOUDX_DATA_DIR".to_owned(), dir.path().to_str().unwrap().to_owned())];
    if let Some(pg) = &pg {
        env.push(("CLOUDX_DATABASE__URL".into(), pg.url().to_owned()));
    }
    let cx = Cloudx::connect(ConfigLoader::new().env(env).load().unwrap()).await.unwrap();
    // Short backoffs, so that retries can be watched.
    let queue = Queue::new(cx.database().clone())
        .with_backoff(Backoff { base: Duration::from_millis(40), max: Duration::from_millis(200) });
    Some(Instance { queue, _cx: cx, _pg: pg, _dir: dir })
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(false).await })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(true).await })* }
    };
}

conformance!(
    submit_claim_complete,
    priority_then_age_and_run_at,
    idempotent_submissions_make_one_job_even_at_once,
    submissions_at_once_share_a_write_and_fail_alone,
    many_workers_each_job_once_never_two_holders,
    a_lost_lease_fences_late_answers,
    retries_back_off_then_the_job_is_dead,
    cancel_queued_and_running,
    events_in_order_and_only_from_the_holder,
    bad_input_is_refused_by_name,
    finished_jobs_are_deleted_after_the_retention,
    follows_the_reference_model,
    workers_run_every_job_once,
    heartbeats_keep_a_long_job_and_cancel_reaches_it,
    handler_errors_retry_or_kill,
    shutdown_drains_then_releases,
);

const LEASE: Duration = Duration::from_secs(30);

fn kinds(k: &[&str]) -> Vec<String> {
    k.iter().map(|s| (*s).to_owned()).collect()
}

async fn submit_claim_complete(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let q = &i.queue;
    let me = Uuid::now_v7();
    let job = q.submit(me, NewJob::new("echo", json!({"say": "hi"}))).await.unwrap();
    assert_eq!((job.status, job.attempts, job.max_attempts, job.created_by), (JobStatus::Queued, 0, 3, me));
    // Another kind's worker does not see it.
    assert!(q.claim(Uuid::now_v7(), &kinds(&["other"]), 10, LEASE).await.unwrap().is_empty());
    let worker = Uuid::now_v7();
    let leases = q.claim(worker, &kinds(&["echo"]), 10, LEASE).await.unwrap();
    assert_eq!(leases.len(), 1);
    let lease = &leases[0];
    assert_eq!((lease.attempt, lease.job.status, lease.job.worker), (1, JobStatus::Running, Some(worker)));
    assert!(lease.job.started_at.is_some() && lease.job.lease_until.is_some());
    // Nothing left to claim.
    assert!(q.claim(Uuid::now_v7(), &[], 10, LEASE).await.unwrap().is_empty());
    let beat = q.heartbeat(lease, LEASE).await.unwrap();
    assert!(!beat.cancel_requested);
    let done = q.complete(lease, json!({"said": "hi"})).await.unwrap();
    assert_eq!((done.status, done.result.clone()), (JobStatus::Succeeded, Some(json!({"said": "hi"}))));
    assert!(done.finished_at.is_some() && done.lease_until.is_none());
    // A second completion is refused: the lease ended.
    assert_eq!(q.complete(lease, json!(null)).await.unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(q.get(job.id).await.unwrap().result, Some(json!({"said": "hi"})));
    assert_eq!(q.get(Uuid::now_v7()).await.unwrap_err().kind(), ErrorKind::NotFound);
}

async fn priority_then_age_and_run_at(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let q = &i.queue;
    let me = Uuid::now_v7();
    let low = q.submit(me, NewJob::new("k", json!(1))).await.unwrap();
    let later = q
        .submit(
            me,
            NewJob {
                run_at: Some(chrono::Utc::now() + chrono::Duration::milliseconds(300)),
                ..NewJob::new("k", json!(2))
            },
        )
        .await
        .unwrap();
    let high = q.submit(me, NewJob { priority: 5, ..NewJob::new("k", json!(3)) }).await.unwrap();
    let low2 = q.submit(me, NewJob::new("k", json!(4))).await.unwrap();
    let w = Uuid::now_v7();
    let got: Vec<Uuid> = q.claim(w, &[], 10, LEASE).await.unwrap().iter().map(|l| l.job.id).collect();
    assert_eq!(got, vec![high.id, low.id, low2.id], "the delayed job waits; priority first, then age");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let got: Vec<Uuid> = q.claim(w, &[], 10, LEASE).await.unwrap().iter().map(|l| l.job.id).collect();
    assert_eq!(got, vec![later.id]);
}

async fn idempotent_submissions_make_one_job_even_at_once(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let me = Uuid::now_v7();
    let submissions: Vec<_> = (0..16)
        .map(|n| {
            let q = i.queue.clone();
            tokio::spawn(async move {
                q.submit(me, NewJob { idempotency_key: Some("build-42".into()), ..NewJob::new("k", json!(n)) }).await
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for s in submissions {
        ids.insert(s.await.unwrap().unwrap().id);
    }
    assert_eq!(ids.len(), 1, "every submission with the key got the same job");
    // Another account's key is its own.
    let other = i
        .queue
        .submit(Uuid::now_v7(), NewJob { idempotency_key: Some("build-42".into()), ..NewJob::new("k", json!(0)) })
        .await
        .unwrap();
    assert!(!ids.contains(&other.id));
    assert_eq!(i.queue.claim(Uuid::now_v7(), &[], 100, LEASE).await.unwrap().len(), 2);
}

/// Submissions made at the same moment go to the database together; one that the database
/// refuses (a project that does not exist) fails alone, and the others land.
async fn submissions_at_once_share_a_write_and_fail_alone(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let me = Uuid::now_v7();
    let submissions: Vec<_> = (0..64)
        .map(|n| {
            let q = i.queue.clone();
            let project = (n == 17).then(Uuid::now_v7);
            tokio::spawn(async move { q.submit(me, NewJob { project, ..NewJob::new("k", json!(n)) }).await })
        })
        .collect();
    let mut landed = BTreeSet::new();
    for (n, s) in submissions.into_iter().enumerate() {
        match s.await.unwrap() {
            Ok(job) => {
                assert_eq!(job.payload, json!(n));
                landed.insert(job.id);
            }
            Err(e) => assert_eq!(n, 17, "only the submission naming a missing project fails: {e}"),
        }
    }
    assert_eq!(landed.len(), 63);
    let claimed = i.queue.claim(Uuid::now_v7(), &[], 100, LEASE).await.unwrap();
    assert_eq!(claimed.iter().map(|l| l.job.id).collect::<BTreeSet<_>>(), landed);
}

async fn many_workers_each_job_once_never_two_holders(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let me = Uuid::now_v7();
    const JOBS: usize = 300;
    for n in 0..JOBS {
        i.queue.submit(me, NewJob::new("work", json!(n))).await.unwrap();
    }
    let holders = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<Uuid, Uuid>::new()));
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Uuid>::new()));
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let (q, holders, done) = (i.queue.clone(), holders.clone(), done.clone());
            tokio::spawn(async move {
                let worker = Uuid::now_v7();
                loop {
                    let leases = q.claim(worker, &kinds(&["work"]), 4, LEASE).await.unwrap();
                    if leases.is_empty() {
                        break;
                    }
                    for lease in leases {
                        {
                            let mut h = holders.lock().unwrap();
                            assert!(h.insert(lease.job.id, worker).is_none(), "two workers hold job {}", lease.job.id);
                        }
                        tokio::task::yield_now().await;
                        q.complete(&lease, json!(null)).await.unwrap();
                        holders.lock().unwrap().remove(&lease.job.id);
                        done.lock().unwrap().push(lease.job.id);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let done = done.lock().unwrap();
    let unique: BTreeSet<_> = done.iter().collect();
    assert_eq!((done.len(), unique.len()), (JOBS, JOBS), "every job done exactly once");
}

async fn a_lost_lease_fences_late_answers(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let q = &i.queue;
    let job = q.submit(Uuid::now_v7(), NewJob::new("k", json!(null))).await.unwrap();
    let slow = q.claim(Uuid::now_v7(), &[], 1, Duration::from_millis(100)).await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The lease expired: another worker gets the job, as attempt 2.
    let fast = q.claim(Uuid::now_v7(), &[], 1, LEASE).await.unwrap().remove(0);
    assert_eq!((fast.job.id, fast.attempt), (job.id, 2));
    assert_eq!(fast.job.last_error.as_deref(), Some("the worker holding it stopped answering (its lease expired)"));
    // The first worker's answers are all refused, and change nothing.
    for err in [
        q.heartbeat(&slow, LEASE).await.unwrap_err(),
        q.complete(&slow, json!("late")).await.unwrap_err(),
        q.fail(&slow, "late", true).await.unwrap_err(),
        q.append_event(&slow, "log", json!("late")).await.unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
        assert!(err.message().contains("attempt 1 no longer holds it"), "{err}");
    }
    let done = q.complete(&fast, json!("on time")).await.unwrap();
    assert_eq!(done.result, Some(json!("on time")));
    assert!(q.events(job.id, 0, 10).await.unwrap().is_empty());
    // Out of attempts while its worker is silent: dead.
    let job =
        q.submit(Uuid::now_v7(), NewJob { max_attempts: Some(1), ..NewJob::new("k", json!(null)) }).await.unwrap();
    q.claim(Uuid::now_v7(), &[], 1, Duration::from_millis(50)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(q.claim(Uuid::now_v7(), &[], 1, LEASE).await.unwrap().is_empty());
    assert_eq!(q.get(job.id).await.unwrap().status, JobStatus::Dead);
}

async fn retries_back_off_then_the_job_is_dead(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let q = &i.queue;
    let job = q.submit(Uuid::now_v7(), NewJob::new("flaky", json!(null))).await.unwrap();
    let w = Uuid::now_v7();
    let mut waits = Vec::new();
    for attempt in 1..=3u32 {
        let lease = loop {
            if let Some(lease) = q.claim(w, &[], 1, LEASE).await.unwrap().pop() {
                break lease;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(lease.attempt, attempt);
        let failed = q.fail(&lease, &format!("boom {attempt}"), true).await.unwrap();
        assert_eq!(failed.last_error.as_deref(), Some(format!("boom {attempt}").as_str()));
        if attempt < 3 {
            assert_eq!(failed.status, JobStatus::Queued);
            waits.push(failed.run_at - chrono::Utc::now());
        } else {
            assert_eq!(failed.status, JobStatus::Dead, "out of attempts");
        }
    }
    // 40 ms then 80 ms, each ± a quarter.
    let ms: Vec<i64> = waits.iter().map(chrono::Duration::num_milliseconds).collect();
    // (The clock runs on between the failure and the read: lower bounds with room.)
    assert!((5..=50).contains(&ms[0]) && (30..=100).contains(&ms[1]), "backoff waits {ms:?}");
    // An administrator queues it again; a failure that must not be retried kills it at once.
    let again = q.retry(job.id).await.unwrap();
    assert_eq!((again.status, again.attempts, again.max_attempts), (JobStatus::Queued, 3, 6), "three more attempts");
    assert_eq!(q.retry(job.id).await.unwrap_err().kind(), ErrorKind::Conflict);
    let lease = q.claim(w, &[], 1, LEASE).await.unwrap().remove(0);
    assert_eq!(lease.attempt, 4, "attempts keep counting: they fence the earlier leases");
    let dead = q.fail(&lease, "the payload cannot be read", false).await.unwrap();
    assert_eq!((dead.status, dead.attempts), (JobStatus::Dead, 4));
}

async fn cancel_queued_and_running(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let q = &i.queue;
    let me = Uuid::now_v7();
    let queued = q.submit(me, NewJob::new("k", json!(1))).await.unwrap();
    let cancelled = q.cancel(queued.id).await.unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(q.claim(Uuid::now_v7(), &[], 10, LEASE).await.unwrap().is_empty(), "a cancelled job never runs");
    // Cancelling again says so again; an ended job cannot be cancelled.
    assert_eq!(q.cancel(queued.id).await.unwrap().status, JobStatus::Cancelled);
    let finished = q.submit(me, NewJob::new("done", json!(0))).await.unwrap();
    let lease = q.claim(Uuid::now_v7(), &kinds(&["done"]), 1, LEASE).await.unwrap().remove(0);
    q.complete(&lease, json!(null)).await.unwrap();
    let err = q.cancel(finished.id).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Conflict && err.message().contains("already ended (succeeded)"), "{err}");
    // Running: the worker learns it at its heartbeat, and its ending makes the job cancelled.
    q.submit(me, NewJob::new("k", json!(2))).await.unwrap();
    let lease = q.claim(Uuid::now_v7(), &[], 1, LEASE).await.unwrap().remove(0);
    assert_eq!(q.cancel(lease.job.id).await.unwrap().status, JobStatus::Running);
    assert!(q.heartbeat(&lease, LEASE).await.unwrap().cancel_requested);
    let ended = q.fail(&lease, "cancelled by request", true).await.unwrap();
    assert_eq!(ended.status, JobStatus::Cancelled);
    assert!(q.claim(Uuid::now_v7(), &[], 10, LEASE).await.unwrap().is_empty());
}

async fn events_in_order_and_only_from_the_holder(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let q = &i.queue;
    let job = q.submit(Uuid::now_v7(), NewJob::new("k", json!(null))).await.unwrap();
    let lease = q.claim(Uuid::now_v7(), &[], 1, LEASE).await.unwrap().remove(0);
    let appends: Vec<_> = (0..20)
        .map(|n| {
            let (q, lease) = (q.clone(), lease.clone());
            tokio::spawn(async move { q.append_event(&lease, "log", json!(n)).await.unwrap() })
        })
        .collect();
    let mut seqs = BTreeSet::new();
    for a in appends {
        seqs.insert(a.await.unwrap());
    }
    assert_eq!(seqs, (1..=20).collect(), "numbers from 1, no gap, no repeat");
    let all = q.events(job.id, 0, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    let tail = q.events(job.id, 15, 100).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![16, 17, 18, 19, 20]);
    assert_eq!(q.events(job.id, 0, 3).await.unwrap().len(), 3);
    q.complete(&lease, json!(null)).await.unwrap();
    assert_eq!(q.append_event(&lease, "log", json!("after")).await.unwrap_err().kind(), ErrorKind::Conflict);
}

async fn bad_input_is_refused_by_name(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let q = &i.queue;
    let me = Uuid::now_v7();
    for (new, word) in [
        (NewJob::new(" ", json!(null)), "kind"),
        (NewJob { max_attempts: Some(0), ..NewJob::new("k", json!(null)) }, "max_attempts"),
        (NewJob { max_attempts: Some(101), ..NewJob::new("k", json!(null)) }, "max_attempts"),
        (NewJob { idempotency_key: Some(String::new()), ..NewJob::new("k", json!(null)) }, "idempotency_key"),
        (NewJob { idempotency_key: Some("a\0b".into()), ..NewJob::new("k", json!(null)) }, "NUL"),
        (NewJob { callback_url: Some("gopher://x.example/".into()), ..NewJob::new("k", json!(null)) }, "callback_url"),
    ] {
        let err = q.submit(me, new).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains(word), "{err}");
    }
}

// ---- model-based: random operations against a reference model ----

mod model {
    use super::*;
    use cloudx_core::queue::Lease;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    pub(super) enum Op {
        Submit { kind: u8, priority: i64, max_attempts: u32, key: Option<u8> },
        Claim { worker: u8, kind: Option<u8>, max: usize },
        Complete(usize),
        Fail(usize, bool),
        Heartbeat(usize),
        Event(usize),
        Cancel(usize),
        Retry(usize),
    }

    pub(super) fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            3 => (0u8..2, 0i64..3, 1u32..4, proptest::option::of(0u8..3))
                .prop_map(|(kind, priority, max_attempts, key)| Op::Submit { kind, priority, max_attempts, key }),
            3 => (0u8..3, proptest::option::of(0u8..2), 1usize..4).prop_map(|(worker, kind, max)| Op::Claim { worker, kind, max }),
            2 => any::<usize>().prop_map(Op::Complete),
            2 => (any::<usize>(), any::<bool>()).prop_map(|(i, retry)| Op::Fail(i, retry)),
            1 => any::<usize>().prop_map(Op::Heartbeat),
            1 => any::<usize>().prop_map(Op::Event),
            1 => any::<usize>().prop_map(Op::Cancel),
            1 => any::<usize>().prop_map(Op::Retry),
        ];
        proptest::collection::vec(op, 1..40)
    }

    /// A job as the model sees it.
    #[derive(Debug, Clone)]
    struct Job {
        id: Uuid,
        kind: u8,
        priority: i64,
        max_attempts: u32,
        key: Option<u8>,
        status: JobStatus,
        attempts: u32,
        /// When it became claimable, in submission and failure order.
        tick: u64,
        cancel: bool,
        holder: Option<(Uuid, u32)>,
        events: i64,
    }

    fn conflict<T: std::fmt::Debug>(what: &str, got: cloudx_core::Result<T>) -> std::result::Result<(), TestCaseError> {
        match got {
            Err(e) if e.kind() == ErrorKind::Conflict => Ok(()),
            other => Err(TestCaseError::fail(format!("{what}: expected a conflict, got {other:?}"))),
        }
    }

    /// Runs `ops` on an empty queue and on the model; every answer and every job must agree.
    pub(super) async fn check(q: &Queue, ops: Vec<Op>) -> std::result::Result<(), TestCaseError> {
        let user = Uuid::now_v7();
        let workers: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let mut jobs: Vec<Job> = Vec::new();
        let mut leases: Vec<Lease> = Vec::new();
        let mut tick = 0u64;
        let hour = Duration::from_secs(3600);
        for op in ops {
            tick += 1;
            match op {
                Op::Submit { kind, priority, max_attempts, key } => {
                    let new = NewJob {
                        priority,
                        max_attempts: Some(max_attempts),
                        idempotency_key: key.map(|k| format!("key-{k}")),
                        ..NewJob::new(format!("k{kind}"), json!(tick))
                    };
                    let got = q.submit(user, new).await;
                    let got = match key.and_then(|k| jobs.iter().find(|j| j.key == Some(k))) {
                        Some(first) if first.kind != kind => {
                            conflict("a key reused for another kind", got)?;
                            continue;
                        }
                        _ => got.map_err(|e| TestCaseError::fail(e.to_string()))?,
                    };
                    match key.and_then(|k| jobs.iter().find(|j| j.key == Some(k))) {
                        Some(first) => prop_assert_eq!(got.id, first.id, "a repeated key returns the first job"),
                        None => jobs.push(Job {
                            id: got.id,
                            kind,
                            priority,
                            max_attempts,
                            key,
                            status: JobStatus::Queued,
                            attempts: 0,
                            tick,
                            cancel: false,
                            holder: None,
                            events: 0,
                        }),
                    }
                }
                Op::Claim { worker, kind, max } => {
                    let worker = workers[usize::from(worker)];
                    let kinds: Vec<String> = kind.map(|k| vec![format!("k{k}")]).unwrap_or_default();
                    let got =
                        q.claim(worker, &kinds, max, hour).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let mut eligible: Vec<usize> = (0..jobs.len())
                        .filter(|&i| jobs[i].status == JobStatus::Queued && kind.is_none_or(|k| jobs[i].kind == k))
                        .collect();
                    eligible.sort_by_key(|&i| (std::cmp::Reverse(jobs[i].priority), jobs[i].tick));
                    eligible.truncate(max);
                    let want: Vec<Uuid> = eligible.iter().map(|&i| jobs[i].id).collect();
                    let have: Vec<Uuid> = got.iter().map(|l| l.job.id).collect();
                    prop_assert_eq!(have, want, "claimed jobs");
                    for (lease, &i) in got.into_iter().zip(&eligible) {
                        let j = &mut jobs[i];
                        j.status = JobStatus::Running;
                        j.attempts += 1;
                        j.holder = Some((worker, j.attempts));
                        prop_assert_eq!(lease.attempt, j.attempts);
                        leases.push(lease);
                    }
                }
                Op::Complete(n) | Op::Fail(n, _) | Op::Heartbeat(n) | Op::Event(n) if !leases.is_empty() => {
                    let lease = leases[n % leases.len()].clone();
                    let j = jobs.iter_mut().find(|j| j.id == lease.job.id).expect("a leased job is known");
                    let holds = j.status == JobStatus::Running && j.holder == Some((lease.worker, lease.attempt));
                    match op {
                        Op::Complete(_) if holds => {
                            let got = q
                                .complete(&lease, json!("done"))
                                .await
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert_eq!(got.status, JobStatus::Succeeded);
                            j.status = JobStatus::Succeeded;
                            j.holder = None;
                        }
                        Op::Complete(_) => conflict("a late completion", q.complete(&lease, json!("late")).await)?,
                        Op::Fail(_, retry) if holds => {
                            let got = q
                                .fail(&lease, "failed", retry)
                                .await
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            j.status = if j.cancel {
                                JobStatus::Cancelled
                            } else if retry && j.attempts < j.max_attempts {
                                j.tick = tick;
                                JobStatus::Queued
                            } else {
                                JobStatus::Dead
                            };
                            j.holder = None;
                            prop_assert_eq!(got.status, j.status);
                        }
                        Op::Fail(..) => conflict("a late failure", q.fail(&lease, "late", true).await)?,
                        Op::Heartbeat(_) if holds => {
                            let got =
                                q.heartbeat(&lease, hour).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert_eq!(got.cancel_requested, j.cancel);
                        }
                        Op::Heartbeat(_) => conflict("a late heartbeat", q.heartbeat(&lease, hour).await)?,
                        Op::Event(_) if holds => {
                            let seq = q
                                .append_event(&lease, "log", json!(tick))
                                .await
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            j.events += 1;
                            prop_assert_eq!(seq, j.events);
                        }
                        _ => conflict("a late event", q.append_event(&lease, "log", json!(tick)).await)?,
                    }
                }
                Op::Cancel(n) if !jobs.is_empty() => {
                    let at = n % jobs.len();
                    let j = &mut jobs[at];
                    let got = q.cancel(j.id).await;
                    match j.status {
                        JobStatus::Queued | JobStatus::Cancelled => {
                            prop_assert_eq!(
                                got.map_err(|e| TestCaseError::fail(e.to_string()))?.status,
                                JobStatus::Cancelled
                            );
                            j.status = JobStatus::Cancelled;
                            j.cancel = true;
                        }
                        JobStatus::Running => {
                            prop_assert_eq!(
                                got.map_err(|e| TestCaseError::fail(e.to_string()))?.status,
                                JobStatus::Running
                            );
                            j.cancel = true;
                        }
                        JobStatus::Succeeded | JobStatus::Dead => conflict("cancelling an ended job", got)?,
                    }
                }
                Op::Retry(n) if !jobs.is_empty() => {
                    let at = n % jobs.len();
                    let j = &mut jobs[at];
                    let got = q.retry(j.id).await;
                    if matches!(j.status, JobStatus::Dead | JobStatus::Cancelled) {
                        prop_assert_eq!(got.map_err(|e| TestCaseError::fail(e.to_string()))?.status, JobStatus::Queued);
                        j.status = JobStatus::Queued;
                        j.max_attempts = j.attempts + 3;
                        j.cancel = false;
                        j.tick = tick;
                    } else {
                        conflict("retrying a live job", got)?;
                    }
                }
                _ => {}
            }
            for j in &jobs {
                let real = q.get(j.id).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(
                    (real.status, real.attempts, real.cancel_requested),
                    (j.status, j.attempts, j.cancel),
                    "job {}",
                    j.id
                );
            }
        }
        Ok(())
    }
}

async fn follows_the_reference_model(postgres: bool) {
    use proptest::test_runner::{Config, TestRunner};
    let Some(i) = instance(postgres).await else { return };
    // No backoff: a failed job is claimable again at once, as the model says.
    let q = i.queue.clone().with_backoff(Backoff { base: Duration::ZERO, max: Duration::ZERO });
    let db = i._cx.database().clone();
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config { cases: 32, failure_persistence: None, ..Config::default() });
    let result = runner.run(&model::ops(), |ops| {
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                // Each case starts from an empty queue.
                match &db {
                    cloudx_core::db::Database::Sqlite(pool) => {
                        sqlx::query("DELETE FROM jobs").execute(pool).await.unwrap();
                    }
                    cloudx_core::db::Database::Postgres(pool) => {
                        sqlx::query("DELETE FROM jobs").execute(pool).await.unwrap();
                    }
                }
                model::check(&q, ops).await
            })
        })
    });
    if let Err(e) = result {
        panic!("the queue disagrees with its model: {e}");
    }
}

// ---- workers ----

fn options(lease: Duration, grace: Duration) -> WorkerOptions {
    WorkerOptions { concurrency: 4, lease, poll: Duration::from_millis(50), grace, ..WorkerOptions::default() }
}

/// Polls until `done` holds (at most ten seconds).
async fn until(mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "not done within ten seconds");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn workers_run_every_job_once(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let ran = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Uuid>::new()));
    let mut handlers = Handlers::new();
    let seen = ran.clone();
    handlers.register("work", move |cx| {
        let seen = seen.clone();
        async move {
            cx.event("progress", json!({"step": 1})).await.map_err(|e| JobError::Retry(e.to_string()))?;
            seen.lock().unwrap().push(cx.job.id);
            Ok(json!({"n": cx.job.payload}))
        }
    });
    let stop = CancellationToken::new();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let worker = Worker::new(i.queue.clone(), handlers.clone(), options(LEASE, Duration::from_secs(5)));
            let stop = stop.clone();
            tokio::spawn(async move { worker.run(stop).await })
        })
        .collect();
    let me = Uuid::now_v7();
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(i.queue.submit(me, NewJob::new("work", json!(n))).await.unwrap().id);
    }
    let q = i.queue.clone();
    let all = ids.clone();
    until(async || {
        for id in &all {
            if q.get(*id).await.unwrap().status != JobStatus::Succeeded {
                return false;
            }
        }
        true
    })
    .await;
    // Each worker has a row, alive while it works, stopped after.
    let seen = i.queue.workers().await.unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|w| w.health == "alive" && w.kinds == vec!["work".to_owned()] && w.concurrency == 4));
    // The same counts in one query (for metrics), with the lag of the oldest alive heartbeat.
    let health = i.queue.worker_health().await.unwrap();
    assert_eq!((health.alive, health.stopped, health.gone), (3, 0, 0), "{health:?}");
    assert!(health.oldest_alive_heartbeat.is_some_and(|age| age <= cloudx_core::queue::WORKER_GONE_AFTER));
    stop.cancel();
    for w in workers {
        w.await.unwrap().unwrap();
    }
    assert!(i.queue.workers().await.unwrap().iter().all(|w| w.health == "stopped" && w.running.is_empty()));
    let health = i.queue.worker_health().await.unwrap();
    assert_eq!((health.alive, health.stopped, health.gone, health.oldest_alive_heartbeat), (0, 3, 0, None));
    let ran = ran.lock().unwrap().clone();
    let unique: BTreeSet<_> = ran.iter().collect();
    assert_eq!((ran.len(), unique.len()), (200, 200), "each job ran exactly once");
    let job = i.queue.get(ids[7]).await.unwrap();
    assert_eq!((job.attempts, job.result), (1, Some(json!({"n": 7}))));
    assert_eq!(i.queue.events(ids[7], 0, 10).await.unwrap().len(), 1);
}

async fn heartbeats_keep_a_long_job_and_cancel_reaches_it(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let mut handlers = Handlers::new();
    handlers.register("long", |_cx| async {
        // Four leases long: only heartbeats keep it.
        tokio::time::sleep(Duration::from_millis(800)).await;
        Ok(json!("kept"))
    });
    handlers.register("endless", |cx| async move {
        cx.cancelled().cancelled().await;
        Err(JobError::Retry("stopped".into()))
    });
    let stop = CancellationToken::new();
    let worker = Worker::new(i.queue.clone(), handlers, options(Duration::from_millis(200), Duration::from_secs(5)));
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let me = Uuid::now_v7();
    let long = i.queue.submit(me, NewJob::new("long", json!(null))).await.unwrap();
    let endless = i.queue.submit(me, NewJob::new("endless", json!(null))).await.unwrap();
    let q = i.queue.clone();
    until(async || q.get(long.id).await.unwrap().status == JobStatus::Succeeded).await;
    let done = i.queue.get(long.id).await.unwrap();
    assert_eq!((done.attempts, done.result), (1, Some(json!("kept"))), "one lease, kept to the end");
    until(async || q.get(endless.id).await.unwrap().status == JobStatus::Running).await;
    let asked = std::time::Instant::now();
    i.queue.cancel(endless.id).await.unwrap();
    until(async || q.get(endless.id).await.unwrap().status == JobStatus::Cancelled).await;
    assert!(asked.elapsed() < Duration::from_secs(2), "the cancel reached the handler at its next heartbeat");
    stop.cancel();
    running.await.unwrap().unwrap();
}

async fn handler_errors_retry_or_kill(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let mut handlers = Handlers::new();
    handlers.register("flaky", |cx| async move {
        if cx.attempt() == 1 { Err(JobError::Retry("not yet".into())) } else { Ok(json!(cx.attempt())) }
    });
    handlers.register("poison", |_cx| async { Err(JobError::Fatal("the payload cannot be read".into())) });
    handlers.register("panics", |_cx| async { panic!("a handler bug") });
    let stop = CancellationToken::new();
    let worker = Worker::new(i.queue.clone(), handlers, options(LEASE, Duration::from_secs(5)));
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let me = Uuid::now_v7();
    let flaky = i.queue.submit(me, NewJob::new("flaky", json!(null))).await.unwrap();
    let poison = i.queue.submit(me, NewJob::new("poison", json!(null))).await.unwrap();
    let panics =
        i.queue.submit(me, NewJob { max_attempts: Some(2), ..NewJob::new("panics", json!(null)) }).await.unwrap();
    let unknown = i.queue.submit(me, NewJob::new("nobody-handles-this", json!(null))).await.unwrap();
    let q = i.queue.clone();
    until(async || {
        q.get(flaky.id).await.unwrap().status.is_finished()
            && q.get(poison.id).await.unwrap().status.is_finished()
            && q.get(panics.id).await.unwrap().status.is_finished()
    })
    .await;
    let flaky = i.queue.get(flaky.id).await.unwrap();
    assert_eq!((flaky.status, flaky.attempts, flaky.result), (JobStatus::Succeeded, 2, Some(json!(2))));
    let poison = i.queue.get(poison.id).await.unwrap();
    assert_eq!((poison.status, poison.attempts), (JobStatus::Dead, 1));
    assert_eq!(poison.last_error.as_deref(), Some("the payload cannot be read"));
    let panics = i.queue.get(panics.id).await.unwrap();
    assert_eq!((panics.status, panics.attempts), (JobStatus::Dead, 2));
    assert_eq!(panics.last_error.as_deref(), Some("the handler panicked"));
    // A kind this worker has no handler for is left for another worker.
    assert_eq!(i.queue.get(unknown.id).await.unwrap().status, JobStatus::Queued);
    stop.cancel();
    running.await.unwrap().unwrap();
}

async fn shutdown_drains_then_releases(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let mut handlers = Handlers::new();
    handlers.register("quick", |_cx| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(json!("finished in the grace period"))
    });
    handlers.register("stuck", |cx| async move {
        cx.cancelled().cancelled().await;
        Err(JobError::Retry("stopped".into()))
    });
    let stop = CancellationToken::new();
    let worker = Worker::new(i.queue.clone(), handlers, options(LEASE, Duration::from_millis(400)));
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let me = Uuid::now_v7();
    let quick = i.queue.submit(me, NewJob::new("quick", json!(null))).await.unwrap();
    let stuck = i.queue.submit(me, NewJob::new("stuck", json!(null))).await.unwrap();
    let q = i.queue.clone();
    until(async || {
        q.get(quick.id).await.unwrap().status == JobStatus::Running
            && q.get(stuck.id).await.unwrap().status == JobStatus::Running
    })
    .await;
    let asked = std::time::Instant::now();
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(3));
    assert_eq!(i.queue.get(quick.id).await.unwrap().status, JobStatus::Succeeded);
    let stuck = i.queue.get(stuck.id).await.unwrap();
    assert_eq!(
        (stuck.status, stuck.attempts, stuck.max_attempts),
        (JobStatus::Queued, 1, 4),
        "released: the attempt not counted"
    );
    // Another worker takes it.
    let lease = i.queue.claim(Uuid::now_v7(), &[], 1, LEASE).await.unwrap().remove(0);
    assert_eq!((lease.job.id, lease.attempt), (stuck.id, 2));
}

async fn finished_jobs_are_deleted_after_the_retention(postgres: bool) {
    let Some(i) = instance(postgres).await else { return };
    let q = &i.queue;
    let me = Uuid::now_v7();
    let done = q.submit(me, NewJob::new("k", json!(1))).await.unwrap();
    let waiting = q.submit(me, NewJob::new("other", json!(2))).await.unwrap();
    let lease = q.claim(Uuid::now_v7(), &kinds(&["k"]), 1, LEASE).await.unwrap().remove(0);
    q.append_event(&lease, "log", json!("x")).await.unwrap();
    q.complete(&lease, json!(null)).await.unwrap();
    // Not old enough yet.
    assert_eq!(q.cleanup(Duration::from_secs(3600)).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(q.cleanup(Duration::from_millis(10)).await.unwrap(), 1);
    assert_eq!(q.get(done.id).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(q.events(done.id, 0, 10).await.unwrap().is_empty());
    // A job that has not finished stays, however old.
    assert_eq!(q.get(waiting.id).await.unwrap().status, JobStatus::Queued);
}
