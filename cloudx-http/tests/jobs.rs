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
async fn concurrent_submissions_with_one_key_make_one_job_on_sqlite() {
    concurrent_submissions_with_one_key_make_one_job(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_with_one_key_make_one_job_on_postgres() {
    let Some(pg) = cloudx_core::testing::TestPostgres::create().await else { return };
    concurrent_submissions_with_one_key_make_one_job(&[("CLOUDX_DATABASE__URL", pg.url())]).await;
}

/// 32 submissions at once with one idempotency key: one job, created once (201), the 31
/// others answered with it (200); the key reused for another kind is a conflict.
async fn concurrent_submissions_with_one_key_make_one_job(env: &[(&str, &str)]) {
    let limits = [("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"), ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0")];
    let d = Daemon::start(&[&limits[..], env].concat()).await;
    let (http, token) = session(&d, "ada@example.com").await;
    let p: Value = request(&http, &d, &token, M::POST, "/api/v1/projects", Some(json!({"name": "once"})))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = p["id"].as_str().unwrap().to_owned();
    let new =
        json!({"kind": "sandbox_exec", "project": p, "payload": {"argv": ["true"]}, "idempotency_key": "nightly-7"});
    let mut submissions = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let sent = request(&http, &d, &token, M::POST, "/api/v1/jobs", Some(new.clone()));
        submissions.spawn(async move {
            let r = sent.await.unwrap();
            let status = r.status();
            let job: Value = r.json().await.unwrap();
            (status, job["id"].as_str().unwrap().to_owned())
        });
    }
    let answers = submissions.join_all().await;
    let created = answers.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
    let again = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!((created, again), (1, 31), "{answers:?}");
    let ids: std::collections::BTreeSet<&str> = answers.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one job for every submission: {ids:?}");
    let listed: Value = request(&http, &d, &token, M::GET, &format!("/api/v1/jobs?project={p}"), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    // The key names that job: for another kind it is refused.
    let other = json!({"kind": "test_runner", "project": p, "payload": {}, "idempotency_key": "nightly-7"});
    let r = request(&http, &d, &token, M::POST, "/api/v1/jobs", Some(other)).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("idempotency_key"));
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

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message of `socket` as JSON, or `{"close": code}`.
async fn next(socket: &mut Socket) -> Value {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), socket.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Close(frame))) => return json!({"close": frame.map(|f| u16::from(f.code))}),
            Some(Ok(_)) => continue,
            other => panic!("the stream ended: {other:?}"),
        }
    }
}

/// The events of a job as a WebSocket stream: a one-time ticket, the Origin checked, every
/// event live and in order from the offset asked, then the job's end and a normal close; a
/// reconnection from the last number misses nothing; the server's shutdown closes the socket
/// (1001) and waits for it.
#[tokio::test]
async fn events_stream_over_a_websocket() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};

    let d = Daemon::start(&[
        ("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"),
        ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0"),
        ("CLOUDX_AUTH__REGISTRATION", "open"),
    ])
    .await;
    let (http, token) = session(&d, "ada@example.com").await;
    let (_, eve) = session(&d, "eve@example.com").await;
    let call = |token: &str, method: M, path: &str, body: Option<Value>| request(&http, &d, token, method, path, body);
    let p: Value =
        call(&token, M::POST, "/api/v1/projects", Some(json!({"name": "ws"}))).await.unwrap().json().await.unwrap();
    let project: uuid::Uuid = p["id"].as_str().unwrap().parse().unwrap();
    let me: Value = call(&token, M::GET, "/api/v1/auth/me", None).await.unwrap().json().await.unwrap();
    let me: uuid::Uuid = me["id"].as_str().unwrap().parse().unwrap();

    // A handler that says three things a moment apart, told when to go on.
    let go = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut handlers = cloudx_core::queue::Handlers::new();
    handlers.register("test.talk", {
        let go = go.clone();
        move |job: cloudx_core::queue::JobContext| {
            let go = go.clone();
            async move {
                for n in 1..=3 {
                    go.acquire().await.unwrap().forget();
                    job.event("log", json!(format!("line {n}"))).await.unwrap();
                }
                Ok(json!({"said": 3}))
            }
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = cloudx_core::queue::Worker::new(d.cx.queue().clone(), handlers, Default::default());
    let working = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let job =
        d.cx.queue()
            .submit(
                me,
                cloudx_core::queue::NewJob {
                    project: Some(project),
                    ..cloudx_core::queue::NewJob::new("test.talk", json!({}))
                },
            )
            .await
            .unwrap();
    let ticket = |token: String| {
        let (http, url) = (http.clone(), d.url("/api/v1/auth/ws-ticket"));
        async move {
            let t: Value = http.post(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
            t["ticket"].as_str().unwrap().to_owned()
        }
    };
    let ws_url = |query: String| format!("ws://{}/api/v1/jobs/{}/events?{query}", d.addr, job.id);
    let refused = |request: tungstenite::handshake::client::Request| async move {
        match tokio_tungstenite::connect_async(request).await {
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    };

    // Refused: no ticket, another site's page (before the ticket is spent), someone not in
    // the project, a ticket used twice.
    assert_eq!(refused(ws_url(String::new()).into_client_request().unwrap()).await, 401);
    let t = ticket(token.clone()).await;
    let mut evil = ws_url(format!("ticket={t}")).into_client_request().unwrap();
    evil.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(refused(evil).await, 403);
    let e = ticket(eve.clone()).await;
    assert_eq!(refused(ws_url(format!("ticket={e}")).into_client_request().unwrap()).await, 404);

    // The daemon's own origin is fine; events arrive as they happen.
    let mut own = ws_url(format!("ticket={t}")).into_client_request().unwrap();
    own.headers_mut().insert("origin", format!("http://{}", d.addr).parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(own).await.unwrap();
    assert_eq!(refused(ws_url(format!("ticket={t}")).into_client_request().unwrap()).await, 401, "single use");
    go.add_permits(1);
    let first = next(&mut socket).await;
    assert_eq!((first["event"]["seq"].as_i64(), first["event"]["data"].as_str()), (Some(1), Some("line 1")));
    // Reconnecting from the last number seen: the rest, then the end.
    socket.close(None).await.unwrap();
    let t = ticket(token.clone()).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(format!("ticket={t}&after=1"))).await.unwrap();
    go.add_permits(2);
    assert_eq!(next(&mut socket).await["event"]["data"], "line 2");
    assert_eq!(next(&mut socket).await["event"]["data"], "line 3");
    let end = next(&mut socket).await;
    assert_eq!((end["end"]["status"].as_str(), end["end"]["result"]["said"].as_i64()), (Some("succeeded"), Some(3)));
    assert_eq!(next(&mut socket).await, json!({"close": 1000}));

    // A stream open at shutdown is closed (going away), and the server waits for it.
    let waiting =
        d.cx.queue()
            .submit(
                me,
                cloudx_core::queue::NewJob {
                    project: Some(project),
                    ..cloudx_core::queue::NewJob::new("test.talk", json!({}))
                },
            )
            .await
            .unwrap();
    let t = ticket(token.clone()).await;
    let url = format!("ws://{}/api/v1/jobs/{}/events?ticket={t}", d.addr, waiting.id);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    stop.cancel();
    let stopped = tokio::spawn(d.stop());
    let closed = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), socket.next()).await.unwrap() {
            Some(Ok(tungstenite::Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(closed, Some(1001));
    stopped.await.unwrap().unwrap();
    go.add_permits(100);
    let _ = working.await;
}
