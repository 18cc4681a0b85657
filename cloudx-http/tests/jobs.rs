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

/// The job `id` once `until` holds for it (read every 100 ms, for at most 30 s).
async fn job_when(http: &reqwest::Client, d: &Daemon, token: &str, id: &str, until: impl Fn(&Value) -> bool) -> Value {
    let url = d.url(&format!("/api/v1/jobs/{id}"));
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let job: Value = http.get(&url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
            if until(&job) {
                return job;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("job {id} never got there"))
}

/// Submits a `test.talk` job of `project` as `me`, straight to the queue.
async fn talk_job(d: &Daemon, me: uuid::Uuid, project: uuid::Uuid) -> cloudx_core::queue::Job {
    let new = cloudx_core::queue::NewJob {
        project: Some(project),
        ..cloudx_core::queue::NewJob::new("test.talk", json!({}))
    };
    d.cx.queue().submit(me, new).await.unwrap()
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
    let job = talk_job(&d, me, project).await;
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
    let waiting = talk_job(&d, me, project).await;
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

/// A job's webhook: the target checked at submission (allow-list, internal addresses), then
/// called once the job ends, signed with the instance's key, and marked delivered.
#[tokio::test]
async fn webhooks_are_checked_then_called_signed() {
    use axum::extract::State;
    use axum::http::HeaderMap;

    let secret = "w".repeat(40);
    let d = Daemon::start(&[
        ("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"),
        ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0"),
        ("CLOUDX_WORKER__WEBHOOK_HOSTS", "127.0.0.1,hooks.example.com"),
        ("CLOUDX_WORKER__WEBHOOK_SECRET", secret.as_str()),
    ])
    .await;
    let (http, token) = session(&d, "ada@example.com").await;
    let call = |method: M, path: &str, body: Option<Value>| request(&http, &d, &token, method, path, body);
    let p: Value =
        call(M::POST, "/api/v1/projects", Some(json!({"name": "hooks"}))).await.unwrap().json().await.unwrap();
    let p = p["id"].as_str().unwrap().to_owned();

    // A receiver on loopback that keeps what it gets.
    type Got = std::sync::Arc<tokio::sync::Mutex<Vec<(HeaderMap, bytes::Bytes)>>>;
    let got: Got = Default::default();
    let receiver = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(|State(got): State<Got>, headers: HeaderMap, body: bytes::Bytes| async move {
                got.lock().await.push((headers, body));
                "ok"
            }),
        )
        .route("/down", axum::routing::post(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down") }))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    // Refused by name: a host not allowed, and loopback without worker.webhook_allow_private.
    let submit = |callback: &str| {
        call(M::POST, "/api/v1/jobs", Some(json!({"kind": "test.quick", "project": p, "callback_url": callback})))
    };
    let r = submit("https://evil.example/hook").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("worker.webhook_hosts"));
    let r = submit(&hook).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("webhook_allow_private"));
    let r = submit("ftp://hooks.example.com/x").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    d.stop().await.unwrap();

    // The same instance with internal targets allowed: accepted, delivered, signed.
    let d = Daemon::start(&[
        ("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"),
        ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0"),
        ("CLOUDX_WORKER__WEBHOOK_HOSTS", "127.0.0.1"),
        ("CLOUDX_WORKER__WEBHOOK_ALLOW_PRIVATE", "true"),
        ("CLOUDX_WORKER__WEBHOOK_SECRET", secret.as_str()),
    ])
    .await;
    let (http, token) = session(&d, "ada@example.com").await;
    let call = |method: M, path: &str, body: Option<Value>| request(&http, &d, &token, method, path, body);
    let p: Value =
        call(M::POST, "/api/v1/projects", Some(json!({"name": "hooks"}))).await.unwrap().json().await.unwrap();
    let r =
        call(M::POST, "/api/v1/jobs", Some(json!({"kind": "test.quick", "project": p["id"], "callback_url": hook})))
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["callback_state"], "pending");
    let down = hook.replace("/hook", "/down");
    let r =
        call(M::POST, "/api/v1/jobs", Some(json!({"kind": "test.quick", "project": p["id"], "callback_url": down})))
            .await
            .unwrap();
    let down: Value = r.json().await.unwrap();
    let mut handlers = cloudx_core::queue::Handlers::new();
    handlers.register("test.quick", |_| async { Ok(json!({"done": true})) });
    let options = cloudx_core::queue::WorkerOptions { webhooks: Some(d.cx.webhooks().clone()), ..Default::default() };
    let worker = cloudx_core::queue::Worker::new(d.cx.queue().clone(), handlers, options);
    let stop = tokio_util::sync::CancellationToken::new();
    let working = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let id = job["id"].as_str().unwrap();
    let delivered = job_when(&http, &d, &token, id, |job| job["callback_state"] == "delivered").await;
    assert_eq!(delivered["status"], "succeeded");
    // A receiver that fails: kept pending, the error said, tried again later.
    let down = down["id"].as_str().unwrap();
    let failed = job_when(&http, &d, &token, down, |job| !job["callback_error"].is_null()).await;
    assert_eq!(failed["callback_state"], "pending");
    assert!(failed["callback_error"].as_str().unwrap().contains("503"), "{failed}");
    stop.cancel();
    working.await.unwrap().unwrap();

    let got = got.lock().await;
    assert_eq!(got.len(), 1, "delivered once");
    let (headers, body) = &got[0];
    let sent: Value = serde_json::from_slice(body).unwrap();
    assert_eq!((sent["event"].as_str(), sent["job"]["id"].as_str()), (Some("job.finished"), Some(id)));
    assert_eq!(sent["job"]["result"], json!({"done": true}));
    // The receiver's check: HMAC-SHA256 over "<timestamp>.<body>" with the shared key.
    let timestamp = headers["x-cloudx-timestamp"].to_str().unwrap();
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(headers["x-cloudx-signature"].to_str().unwrap(), format!("sha256={expected}"));
    assert!(headers.contains_key("x-cloudx-delivery"));
}

/// A job submitted with an API key acts with that key's scopes, and only while the key is
/// valid: revoked before the job runs, the job dies saying so.
#[tokio::test]
async fn a_job_submitted_with_a_key_needs_the_key_when_it_runs() {
    let d = Daemon::start(&[("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"), ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0")]).await;
    let (http, token) = session(&d, "ada@example.com").await;
    let call = |token: &str, method: M, path: &str, body: Option<Value>| request(&http, &d, token, method, path, body);
    let p: Value =
        call(&token, M::POST, "/api/v1/projects", Some(json!({"name": "keys"}))).await.unwrap().json().await.unwrap();
    let key = |name: &str| {
        let body = json!({"name": name, "scopes": ["read", "write", "exec"]});
        let r = call(&token, M::POST, "/api/v1/api-keys", Some(body));
        async move {
            let k: Value = r.await.unwrap().json().await.unwrap();
            (k["id"].as_str().unwrap().to_owned(), k["secret"].as_str().unwrap().to_owned())
        }
    };
    let (kept_id, kept) = key("kept").await;
    let (revoked_id, revoked) = key("revoked").await;
    let submit = |secret: String| {
        let body = json!({"kind": "sandbox_exec", "project": p["id"], "payload": {"argv": ["true"]}});
        let r = call(&secret, M::POST, "/api/v1/jobs", Some(body));
        async move {
            let r = r.await.unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let job: Value = r.json().await.unwrap();
            job["id"].as_str().unwrap().to_owned()
        }
    };
    let ok = submit(kept).await;
    let dies = submit(revoked).await;
    let job: Value = call(&token, M::GET, &format!("/api/v1/jobs/{ok}"), None).await.unwrap().json().await.unwrap();
    assert_eq!(job["api_key"].as_str(), Some(kept_id.as_str()));
    let r = call(&token, M::DELETE, &format!("/api/v1/api-keys/{revoked_id}"), None).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    let worker = cloudx_core::queue::Worker::new(d.cx.queue().clone(), d.cx.builtin_handlers(), Default::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let working = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let ended = |job: &Value| ["succeeded", "dead", "cancelled"].contains(&job["status"].as_str().unwrap());
    let ok = job_when(&http, &d, &token, &ok, ended).await;
    assert_eq!(ok["status"], "succeeded", "{ok}");
    let dies = job_when(&http, &d, &token, &dies, ended).await;
    assert_eq!(dies["status"], "dead", "{dies}");
    assert!(dies["last_error"].as_str().unwrap().contains("revoked"), "{dies}");
    stop.cancel();
    working.await.unwrap().unwrap();
}
