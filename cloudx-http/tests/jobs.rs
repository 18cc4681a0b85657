//! Jobs over HTTP: submission (idempotent), reading, listing with filters, events by offset,
//! cancelling, and an administrator's retry.

mod common;

use common::{Daemon, problem};
use reqwest::{Method as M, StatusCode};
use serde_json::{Value, json};

const PASSWORD: &str = "Correct-Horse-Battery-7781";

async fn session(d: &Daemon, email: &str) -> (reqwest::Client, String) {
    let http = reqwest::Client::new();
    let body = json!({"email": email, "password": PASSWORD, "display_name": email});
    assert_eq!(
        http.post(d.url("/api/v1/auth/register")).json(&body).send().await.unwrap().status(),
        StatusCode::CREATED
    );
    let tokens: Value = http
        .post(d.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (http, tokens["access_token"].as_str().unwrap().to_owned())
}

/// Sends `body` (if any) as JSON to `path`, signed in with `token`.
fn request(
    http: &reqwest::Client,
    d: &Daemon,
    token: &str,
    method: M,
    path: &str,
    body: Option<Value>,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
    let mut req = http.request(method, d.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send()
}

#[tokio::test]
async fn jobs_are_submitted_once_read_listed_and_cancelled() {
    let d = Daemon::start(&[("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"), ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0")]).await;
    let (http, token) = session(&d, "ada@example.com").await;
    let call = |method: M, path: String, body: Option<Value>| request(&http, &d, &token, method, &path, body);
    let p: Value =
        call(M::POST, "/api/v1/projects".into(), Some(json!({"name": "jobs"}))).await.unwrap().json().await.unwrap();
    let p = p["id"].as_str().unwrap().to_owned();

    // Submitted once, whatever the number of tries with the same key.
    let new =
        json!({"kind": "sandbox_exec", "project": p, "payload": {"argv": ["true"]}, "idempotency_key": "deploy-1"});
    let first = call(M::POST, "/api/v1/jobs".into(), Some(new.clone())).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = call(M::POST, "/api/v1/jobs".into(), Some(new)).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!((first["status"].as_str(), first["attempts"].as_u64()), (Some("queued"), Some(0)));
    let id = first["id"].as_str().unwrap().to_owned();

    // Bad input is named.
    let r = call(M::POST, "/api/v1/jobs".into(), Some(json!({"kind": "sandbox_exec"}))).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("project"));
    let r = call(M::POST, "/api/v1/jobs".into(), Some(json!({"kind": "k", "project": p, "max_attempts": 0})))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("max_attempts"));

    // Read, listed by project and status, events by offset.
    let got: Value = call(M::GET, format!("/api/v1/jobs/{id}"), None).await.unwrap().json().await.unwrap();
    assert_eq!(got["kind"], "sandbox_exec");
    let queued: Value =
        call(M::GET, format!("/api/v1/jobs?project={p}&status=queued"), None).await.unwrap().json().await.unwrap();
    assert_eq!(queued.as_array().unwrap().len(), 1);
    let events: Value =
        call(M::GET, format!("/api/v1/jobs/{id}/events?after=0"), None).await.unwrap().json().await.unwrap();
    assert_eq!(events, json!([]));

    // Cancelled; a second cancel says so again; the list shows it.
    let cancelled: Value =
        call(M::POST, format!("/api/v1/jobs/{id}/cancel"), None).await.unwrap().json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let listed: Value =
        call(M::GET, format!("/api/v1/jobs?project={p}&status=cancelled"), None).await.unwrap().json().await.unwrap();
    assert_eq!(listed[0]["id"], first["id"]);
    // The first account is the administrator: it may queue it again.
    let retried: Value = call(M::POST, format!("/api/v1/jobs/{id}/retry"), None).await.unwrap().json().await.unwrap();
    assert_eq!(retried["status"], "queued");
    let r = call(M::POST, format!("/api/v1/jobs/{id}/retry"), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = call(M::GET, format!("/api/v1/jobs/{}", uuid::Uuid::now_v7()), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_exec_jobs_run_stream_commit_and_cancel() {
    let d = Daemon::start(&[("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"), ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0")]).await;
    let worker = cloudx_core::queue::Worker::new(
        d.cx.queue().clone(),
        d.cx.builtin_handlers(),
        cloudx_core::queue::WorkerOptions::default(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let (http, token) = session(&d, "ada@example.com").await;
    let call = |method: M, path: String, body: Option<Value>| request(&http, &d, &token, method, &path, body);
    let p: Value =
        call(M::POST, "/api/v1/projects".into(), Some(json!({"name": "runs"}))).await.unwrap().json().await.unwrap();
    let p = p["id"].as_str().unwrap().to_owned();
    let wait_for = |id: String, status: &'static str| {
        let call = &call;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let job: Value = call(M::GET, format!("/api/v1/jobs/{id}"), None).await.unwrap().json().await.unwrap();
                if job["status"] == status {
                    return job;
                }
                assert!(std::time::Instant::now() < deadline, "job {id} is still {} ({job})", job["status"]);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };

    // A run on the project's files: its output as events, its changes committed.
    let payload = json!({"argv": ["sh", "-c", "echo out; echo err >&2; echo made > made.txt"], "commit": true});
    let job: Value =
        call(M::POST, "/api/v1/jobs".into(), Some(json!({"kind": "sandbox_exec", "project": p, "payload": payload})))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let done = wait_for(id.clone(), "succeeded").await;
    assert_eq!(done["result"]["outcome"]["exit_code"], 0, "{done}");
    assert_eq!(done["result"]["commit"]["written"], json!(["made.txt"]));
    let events: Value = call(M::GET, format!("/api/v1/jobs/{id}/events"), None).await.unwrap().json().await.unwrap();
    let said: Vec<(String, String)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap().to_owned(), e["data"].as_str().unwrap().to_owned()))
        .collect();
    assert!(
        said.contains(&("stdout".into(), "out\n".into())) && said.contains(&("stderr".into(), "err\n".into())),
        "{said:?}"
    );
    let file = call(M::GET, format!("/api/v1/projects/{p}/files/made.txt"), None).await.unwrap().text().await.unwrap();
    assert_eq!(file, "made\n");

    // A payload that is not a run: dead at once, saying why.
    let bad: Value = call(
        M::POST,
        "/api/v1/jobs".into(),
        Some(json!({"kind": "sandbox_exec", "project": p, "payload": {"cmd": "ls"}})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let dead = wait_for(bad["id"].as_str().unwrap().to_owned(), "dead").await;
    assert!(dead["last_error"].as_str().unwrap().contains("the payload is not a run"), "{dead}");
    assert_eq!(dead["attempts"], 1);

    // A long run, cancelled: its sandbox goes at the next heartbeat.
    let long: Value = call(
        M::POST,
        "/api/v1/jobs".into(),
        Some(json!({"kind": "sandbox_exec", "project": p, "payload": {"argv": ["sleep", "60"]}})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let long = long["id"].as_str().unwrap().to_owned();
    wait_for(long.clone(), "running").await;
    // The administrator sees the worker holding it.
    let workers: Value = call(M::GET, "/api/v1/workers".into(), None).await.unwrap().json().await.unwrap();
    assert_eq!(workers[0]["health"], "alive", "{workers}");
    assert_eq!(workers[0]["running"], json!([long]), "{workers}");
    let asked = std::time::Instant::now();
    call(M::POST, format!("/api/v1/jobs/{long}/cancel"), None).await.unwrap();
    wait_for(long.clone(), "cancelled").await;
    assert!(asked.elapsed() < std::time::Duration::from_secs(5), "cancelled in {:?}", asked.elapsed());
    // And its sandbox is gone: no `sleep 60` left on the host.
    let sleeping = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .any(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.starts_with(b"sleep\x0060\x00")))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sleeping() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!sleeping(), "the cancelled job's sandbox still runs");

    stop.cancel();
    running.await.unwrap().unwrap();
    d.stop().await.unwrap();
}
