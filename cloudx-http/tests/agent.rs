//! The agent over HTTP: conversations, messages and the tasks they start, the events by long
//! poll and by WebSocket, cancelling, and what a task that cannot reach its model records.
//!
//! The model endpoint here is a closed loopback port: no test talks to a real model.

mod common;

use std::time::Duration;

use common::{Daemon, problem};
use reqwest::{Method as M, StatusCode};
use serde_json::{Value, json};

/// A loopback address nothing listens on.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

async fn start() -> (Daemon, String) {
    let model = closed_port();
    let d = Daemon::start(&[
        ("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"),
        ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0"),
        ("CLOUDX_AUTH__REGISTRATION", "open"),
        ("CLOUDX_LLM__BASE_URL", model.as_str()),
        ("CLOUDX_LLM__API_KEY", "sk-test"),
        ("CLOUDX_LLM__MAX_RETRIES", "0"),
    ])
    .await;
    (d, model)
}

async fn session(d: &Daemon, email: &str) -> (String, String) {
    common::sign_up(d, email).await
}

async fn call(d: &Daemon, token: &str, method: M, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, d.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

async fn ok(d: &Daemon, token: &str, method: M, path: &str, body: Option<Value>, status: StatusCode) -> Value {
    let r = call(d, token, method.clone(), path, body).await;
    let got = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(got, status, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

async fn project(d: &Daemon, token: &str, name: &str) -> String {
    let p = ok(d, token, M::POST, "/api/v1/projects", Some(json!({"name": name})), StatusCode::CREATED).await;
    p["id"].as_str().unwrap().to_owned()
}

/// The kinds (and statuses) of a conversation's events, as `kind` or `status:<status>`.
fn kinds(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e["kind"].as_str().unwrap() {
            "status" => format!("status:{}", e["data"]["status"].as_str().unwrap()),
            kind => kind.to_owned(),
        })
        .collect()
}

/// Conversations are their user's; a message starts a queued task (no worker runs here), one at
/// a time; a queued task cancels at once; the events tell it all, by offset and by long poll;
/// bad messages are refused by field; a viewer may talk to the agent too.
#[tokio::test]
async fn conversations_messages_tasks_and_events() {
    let (d, _) = start().await;
    let (ada, _) = session(&d, "ada@example.com").await;
    let (eve, _) = session(&d, "eve@example.com").await;
    let p = project(&d, &ada, "chatty").await;

    let c = ok(
        &d,
        &ada,
        M::POST,
        &format!("/api/v1/projects/{p}/conversations"),
        Some(json!({"title": "first"})),
        StatusCode::CREATED,
    )
    .await;
    let c = c["id"].as_str().unwrap().to_owned();
    let listed = ok(&d, &ada, M::GET, &format!("/api/v1/projects/{p}/conversations"), None, StatusCode::OK).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["title"], "first");
    let got = ok(&d, &ada, M::GET, &format!("/api/v1/conversations/{c}"), None, StatusCode::OK).await;
    assert_eq!((got["project"].as_str(), got["active_task"].is_null()), (Some(p.as_str()), true));
    // Someone else's conversation (about a project they cannot see either) does not exist.
    for path in [format!("/api/v1/conversations/{c}"), format!("/api/v1/conversations/{c}/events")] {
        assert_eq!(call(&d, &eve, M::GET, &path, None).await.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let r = call(&d, &eve, M::POST, &format!("/api/v1/conversations/{c}/messages"), Some(json!({"text": "hi"}))).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = call(&d, &eve, M::POST, &format!("/api/v1/projects/{p}/conversations"), Some(json!({}))).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Bad messages, by field.
    let messages = format!("/api/v1/conversations/{c}/messages");
    for text in [String::new(), "   ".into(), "x".repeat(cloudx_core::agent::MAX_MESSAGE + 1)] {
        let r = call(&d, &ada, M::POST, &messages, Some(json!({"text": text}))).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let detail = problem(r).await["detail"].as_str().unwrap().to_owned();
        assert!(detail.starts_with("text:"), "{detail}");
    }
    let r = call(
        &d,
        &ada,
        M::POST,
        &format!("/api/v1/projects/{p}/conversations"),
        Some(json!({"title": "t".repeat(201)})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(problem(r).await["detail"].as_str().unwrap().starts_with("title:"));

    // A message: a queued task; a second one waits for it (409).
    let task = ok(&d, &ada, M::POST, &messages, Some(json!({"text": "add a README"})), StatusCode::ACCEPTED).await;
    assert_eq!((task["status"].as_str(), task["prompt"].as_str()), (Some("queued"), Some("add a README")));
    let t = task["id"].as_str().unwrap().to_owned();
    let r = call(&d, &ada, M::POST, &messages, Some(json!({"text": "and a licence"}))).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(problem(r).await["detail"].as_str().unwrap().contains(&t));
    let got = ok(&d, &ada, M::GET, &format!("/api/v1/tasks/{t}"), None, StatusCode::OK).await;
    assert_eq!(got["status"], "queued");
    let listed = ok(&d, &ada, M::GET, &format!("/api/v1/tasks?project={p}&status=queued"), None, StatusCode::OK).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(ok(&d, &eve, M::GET, "/api/v1/tasks", None, StatusCode::OK).await, json!([]));
    assert_eq!(call(&d, &eve, M::GET, &format!("/api/v1/tasks/{t}"), None).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        call(&d, &eve, M::POST, &format!("/api/v1/tasks/{t}/cancel"), None).await.status(),
        StatusCode::NOT_FOUND
    );

    // Cancelled while queued: at once.
    let cancelled = ok(&d, &ada, M::POST, &format!("/api/v1/tasks/{t}/cancel"), None, StatusCode::OK).await;
    assert_eq!(cancelled["status"], "cancelled");
    let events = ok(&d, &ada, M::GET, &format!("/api/v1/conversations/{c}/events?after=0"), None, StatusCode::OK).await;
    assert_eq!(kinds(&events["events"]), ["message", "status:queued", "status:cancelled"]);
    assert_eq!(events["events"][0]["data"]["text"], "add a README");
    let next = events["next"].as_i64().unwrap();
    assert_eq!(next, events["events"][2]["seq"].as_i64().unwrap());
    let page =
        ok(&d, &ada, M::GET, &format!("/api/v1/conversations/{c}/events?after=0&limit=1"), None, StatusCode::OK).await;
    assert_eq!(
        (kinds(&page["events"]), page["next"].clone()),
        (vec!["message".to_owned()], events["events"][0]["seq"].clone())
    );
    // A long poll with nothing new waits, then answers empty with the same offset.
    let started = std::time::Instant::now();
    let empty =
        ok(&d, &ada, M::GET, &format!("/api/v1/conversations/{c}/events?after={next}&wait=1"), None, StatusCode::OK)
            .await;
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    assert_eq!(empty, json!({"events": [], "next": next}));
    // A long poll is answered as soon as an event comes.
    let waiting = {
        let (url, ada) = (d.url(&format!("/api/v1/conversations/{c}/events?after={next}&wait=20")), ada.clone());
        tokio::spawn(async move {
            let r = reqwest::Client::new().get(url).bearer_auth(ada).send().await.unwrap();
            (std::time::Instant::now(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = ok(&d, &ada, M::POST, &messages, Some(json!({"text": "and a licence"})), StatusCode::ACCEPTED).await;
    let posted = std::time::Instant::now();
    let (answered, page) = waiting.await.unwrap();
    assert_eq!(kinds(&page["events"])[0], "message");
    assert!(answered.duration_since(posted) < Duration::from_secs(5));
    assert_eq!(page["events"][0]["task"], second["id"]);
    // The transcript of a task that never started is empty, but readable; replaying a task
    // still queued is refused.
    let s = second["id"].as_str().unwrap();
    assert_eq!(ok(&d, &ada, M::GET, &format!("/api/v1/tasks/{t}/transcript"), None, StatusCode::OK).await, json!([]));
    assert_eq!(
        call(&d, &ada, M::POST, &format!("/api/v1/tasks/{s}/replay"), None).await.status(),
        StatusCode::CONFLICT
    );

    // A viewer of the project may talk to the agent (which will act with a viewer's rights).
    let r = call(
        &d,
        &ada,
        M::PUT,
        &format!("/api/v1/projects/{p}/members/eve@example.com"),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let c2 =
        ok(&d, &eve, M::POST, &format!("/api/v1/projects/{p}/conversations"), Some(json!({})), StatusCode::CREATED)
            .await;
    let c2 = c2["id"].as_str().unwrap();
    let task = ok(
        &d,
        &eve,
        M::POST,
        &format!("/api/v1/conversations/{c2}/messages"),
        Some(json!({"text": "explain main.py"})),
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(task["status"], "queued");
    // Each sees their own conversations only; the administrator may read eve's.
    let theirs = ok(&d, &eve, M::GET, &format!("/api/v1/projects/{p}/conversations"), None, StatusCode::OK).await;
    assert_eq!(theirs.as_array().unwrap().len(), 1);
    ok(&d, &ada, M::GET, &format!("/api/v1/conversations/{c2}"), None, StatusCode::OK).await;

    // The OpenAPI document has every route.
    let doc: Value = d.get("/api/v1/openapi.json").await.json().await.unwrap();
    for path in [
        "/api/v1/projects/{project}/conversations",
        "/api/v1/conversations/{id}",
        "/api/v1/conversations/{id}/messages",
        "/api/v1/conversations/{id}/events",
        "/api/v1/tasks",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/{id}/transcript",
        "/api/v1/tasks/{id}/cancel",
        "/api/v1/tasks/{id}/replay",
        "/api/v1/llm/check",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not in the OpenAPI document");
    }
    d.stop().await.unwrap();
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message of `socket` as JSON, or `{"close": code}`.
async fn next(socket: &mut Socket, within: Duration) -> Value {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(within, socket.next()).await.expect("a message in time") {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Close(frame))) => return json!({"close": frame.map(|f| u16::from(f.code))}),
            Some(Ok(_)) => continue,
            other => panic!("the stream ended: {other:?}"),
        }
    }
}

/// The conversation's events over a WebSocket: a ticket is needed, another site's page is
/// refused, events come live from the offset asked, and the stream closes (1008) when its user
/// is disabled.
#[tokio::test]
async fn events_stream_over_a_websocket() {
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};

    let (d, _) = start().await;
    let (ada, _) = session(&d, "ada@example.com").await;
    let (eve, eve_id) = session(&d, "eve@example.com").await;
    let p = project(&d, &eve, "sockets").await;
    let c = ok(&d, &eve, M::POST, &format!("/api/v1/projects/{p}/conversations"), Some(json!({})), StatusCode::CREATED)
        .await;
    let c = c["id"].as_str().unwrap().to_owned();
    let messages = format!("/api/v1/conversations/{c}/messages");
    let first = ok(&d, &eve, M::POST, &messages, Some(json!({"text": "one"})), StatusCode::ACCEPTED).await;
    let first = first["id"].as_str().unwrap().to_owned();

    let ticket = |token: String| {
        let url = d.url("/api/v1/auth/ws-ticket");
        async move {
            let t: Value =
                reqwest::Client::new().post(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
            t["ticket"].as_str().unwrap().to_owned()
        }
    };
    let ws_url = |query: String| format!("ws://{}/api/v1/conversations/{c}/events?{query}", d.addr);
    let refused = |request: tungstenite::handshake::client::Request| async move {
        match tokio_tungstenite::connect_async(request).await {
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    };
    // No ticket; a bearer token in the query is no ticket either; another site's page.
    assert_eq!(refused(ws_url(String::new()).into_client_request().unwrap()).await, 401);
    assert_eq!(refused(ws_url(format!("access_token={eve}")).into_client_request().unwrap()).await, 401);
    let t = ticket(eve.clone()).await;
    let mut evil = ws_url(format!("ticket={t}")).into_client_request().unwrap();
    evil.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(refused(evil).await, 403);

    // From the start: what happened so far, then what happens next, live.
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(format!("ticket={t}"))).await.unwrap();
    let message = next(&mut socket, Duration::from_secs(10)).await;
    assert_eq!((message["kind"].as_str(), message["task"].as_str()), (Some("message"), Some(first.as_str())));
    let queued = next(&mut socket, Duration::from_secs(10)).await;
    assert_eq!(queued["data"]["status"], "queued");
    ok(&d, &eve, M::POST, &format!("/api/v1/tasks/{first}/cancel"), None, StatusCode::OK).await;
    let cancelled = next(&mut socket, Duration::from_secs(10)).await;
    assert_eq!(cancelled["data"]["status"], "cancelled");
    drop(socket);

    // Resumed after an event: only the later ones.
    let t = ticket(eve.clone()).await;
    let after = queued["seq"].as_i64().unwrap();
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(format!("ticket={t}&after={after}"))).await.unwrap();
    assert_eq!(next(&mut socket, Duration::from_secs(10)).await["seq"], cancelled["seq"]);
    let second = ok(&d, &eve, M::POST, &messages, Some(json!({"text": "two"})), StatusCode::ACCEPTED).await;
    let message = next(&mut socket, Duration::from_secs(10)).await;
    assert_eq!((message["kind"].as_str(), &message["task"]), (Some("message"), &second["id"]));
    assert_eq!(next(&mut socket, Duration::from_secs(10)).await["data"]["status"], "queued");

    // Disabled: the stream is closed within the re-check period.
    let r = call(&d, &ada, M::PATCH, &format!("/api/v1/users/{eve_id}"), Some(json!({"disabled": true}))).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    assert_eq!(next(&mut socket, Duration::from_secs(15)).await, json!({"close": 1008}));
    d.stop().await.unwrap();
}

/// A task whose model cannot be reached fails, saying so, after its retries; its transcript
/// and its events tell the story.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_model_is_unreachable_fails_with_the_reason() {
    let (d, _) = start().await;
    let worker = cloudx_core::queue::Worker::new(d.cx.queue().clone(), d.cx.builtin_handlers(), Default::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let working = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let (ada, _) = session(&d, "ada@example.com").await;
    let p = project(&d, &ada, "offline").await;
    let c = ok(&d, &ada, M::POST, &format!("/api/v1/projects/{p}/conversations"), Some(json!({})), StatusCode::CREATED)
        .await;
    let c = c["id"].as_str().unwrap().to_owned();
    let task = ok(
        &d,
        &ada,
        M::POST,
        &format!("/api/v1/conversations/{c}/messages"),
        Some(json!({"text": "hello"})),
        StatusCode::ACCEPTED,
    )
    .await;
    let t = task["id"].as_str().unwrap().to_owned();

    // Followed by long poll until the task ends.
    let mut after = 0;
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|k: &String| k == "status:failed" || k == "status:succeeded" || k == "status:cancelled") {
        assert!(std::time::Instant::now() < deadline, "the task never ended: {seen:?}");
        let page = ok(
            &d,
            &ada,
            M::GET,
            &format!("/api/v1/conversations/{c}/events?after={after}&wait=5"),
            None,
            StatusCode::OK,
        )
        .await;
        after = page["next"].as_i64().unwrap();
        seen.extend(kinds(&page["events"]));
    }
    for kind in ["message", "status:queued", "status:running", "status:failed"] {
        assert!(seen.iter().any(|k| k == kind), "no {kind} in {seen:?}");
    }
    let task = ok(&d, &ada, M::GET, &format!("/api/v1/tasks/{t}"), None, StatusCode::OK).await;
    assert_eq!(task["status"], "failed");
    assert!(task["reason"].as_str().unwrap().starts_with("the model: "), "{task}");
    let transcript = ok(&d, &ada, M::GET, &format!("/api/v1/tasks/{t}/transcript"), None, StatusCode::OK).await;
    assert!(!transcript.as_array().unwrap().is_empty());
    // The conversation is free again.
    let got = ok(&d, &ada, M::GET, &format!("/api/v1/conversations/{c}"), None, StatusCode::OK).await;
    assert!(got["active_task"].is_null(), "{got}");
    stop.cancel();
    working.await.unwrap().unwrap();
    d.stop().await.unwrap();
}
