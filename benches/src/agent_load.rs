//! The load client of `benches/agent.py`: concurrent agent chats streaming through a running
//! daemon, and the same model streamed straight to SSE clients (the baseline).
//!
//! Usage:
//!   agent-load daemon URL [CHATS]       (URL: the daemon, http://IP:PORT; CHATS default 200)
//!   agent-load baseline BASE_URL [CLIENTS]  (BASE_URL: the model's, http://IP:PORT/v1)
//!
//! `daemon` registers an account (or signs in, when it exists), creates a project, opens CHATS
//! conversations, follows each over its WebSocket (`GET /api/v1/conversations/{id}/events`, a
//! one-time ticket, the daemon's Origin), then posts one message to each, and times every
//! `delta` from the send stamps of its tokens (`t:<nanos>`, set by `cloudx-scripted-llm`) to
//! its arrival, until every conversation has seen its task succeed. `baseline` reads CLIENTS
//! streamed completions at once from the model itself. Prints one JSON line.

#[path = "agent_common.rs"]
mod common;

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};

/// Messages posted at once.
const POSTING: usize = 16;
const PASSWORD: &str = "Correct-Horse-Battery-7781";

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, path: &str, body: Value, expect: u16) -> Value {
        let r = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await;
        let r = r.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, expect, "POST {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

async fn sign_in(http: &reqwest::Client, base: &str) -> String {
    let email = "agent-load@example.com";
    let body = json!({"email": email, "password": PASSWORD, "display_name": "agent load"});
    let r = http.post(format!("{base}/api/v1/auth/register")).json(&body).send().await.expect("the daemon answers");
    assert!(r.status().is_success() || r.status().as_u16() == 409, "register: {}", r.status());
    let r = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .expect("the daemon answers");
    assert!(r.status().is_success(), "login: {}", r.status());
    let tokens: Value = r.json().await.expect("tokens");
    tokens["access_token"].as_str().expect("an access token").to_owned()
}

/// How one followed conversation went.
struct Followed {
    latencies: Vec<u64>,
    status: String,
}

async fn daemon(url: &str, chats: usize) -> Value {
    let base = url.trim_end_matches('/').to_owned();
    let host = base.strip_prefix("http://").expect("an http:// URL").to_owned();
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("an HTTP client");
    let token = sign_in(&http, &base).await;
    let api = std::sync::Arc::new(Api { http, base, token });
    let project = api
        .call("/api/v1/projects", json!({"name": format!("agent load {}", uuid::Uuid::new_v4().simple())}), 201)
        .await;
    let project = project["id"].as_str().expect("a project id").to_owned();
    let mut conversations = Vec::with_capacity(chats);
    for _ in 0..chats {
        let c = api.call(&format!("/api/v1/projects/{project}/conversations"), json!({}), 201).await;
        conversations.push(c["id"].as_str().expect("a conversation id").to_owned());
    }
    // Every conversation followed before any message goes.
    let mut followers = Vec::with_capacity(chats);
    for c in &conversations {
        let ticket = api.call("/api/v1/auth/ws-ticket", Value::Null, 200).await;
        let ticket = ticket["ticket"].as_str().expect("a ticket");
        let mut request = format!("ws://{host}/api/v1/conversations/{c}/events?after=0&ticket={ticket}")
            .into_client_request()
            .expect("a WebSocket request");
        request.headers_mut().insert("origin", format!("http://{host}").parse().expect("an Origin"));
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("the WebSocket opens");
        followers.push(tokio::spawn(async move {
            let mut followed = Followed { latencies: Vec::new(), status: String::new() };
            let deadline = Instant::now() + Duration::from_secs(300);
            while Instant::now() < deadline {
                let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(60), socket.next()).await else {
                    followed.status = "silent or closed".into();
                    break;
                };
                let text = match message {
                    Ok(tungstenite::Message::Text(text)) => text,
                    Ok(tungstenite::Message::Close(_)) | Err(_) => {
                        followed.status = "closed".into();
                        break;
                    }
                    Ok(_) => continue,
                };
                let event: Value = serde_json::from_str(&text).expect("a JSON event");
                match event["kind"].as_str() {
                    Some("delta") => {
                        common::latencies(event["data"]["text"].as_str().unwrap_or_default(), &mut followed.latencies)
                    }
                    Some("status") => {
                        let status = event["data"]["status"].as_str().unwrap_or_default();
                        if matches!(status, "succeeded" | "failed" | "cancelled") {
                            followed.status = status.to_owned();
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let _ = socket.close(None).await;
            followed
        }));
    }
    let started = Instant::now();
    // At most POSTING messages in flight, as agent-bench does.
    futures_util::stream::iter(conversations.iter().enumerate().map(|(i, c)| {
        let api = api.clone();
        async move {
            api.call(&format!("/api/v1/conversations/{c}/messages"), json!({"text": format!("chat {i}")}), 202).await;
        }
    }))
    .buffer_unordered(POSTING)
    .collect::<Vec<()>>()
    .await;
    let posted = started.elapsed();
    let mut latencies = Vec::new();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for f in followers {
        let followed = f.await.expect("a follower");
        latencies.extend(followed.latencies);
        *statuses.entry(followed.status).or_default() += 1;
    }
    json!({
        "mode": "daemon", "chats": chats, "seconds": started.elapsed().as_secs_f64(),
        "posting_seconds": posted.as_secs_f64(), "statuses": statuses,
        "deltas": common::summary(&mut latencies),
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |i: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(200usize);
    let out = match (args.first().map(String::as_str), args.get(1)) {
        (Some("daemon"), Some(url)) => daemon(url, count(2)).await,
        (Some("baseline"), Some(base_url)) => {
            assert!(base_url.starts_with("http://"), "baseline: `{base_url}` is not the model's http://IP:PORT/v1");
            let clients = count(2);
            let mut latencies = common::sse_baseline(base_url, clients).await;
            json!({"mode": "baseline", "clients": clients, "deltas": common::summary(&mut latencies)})
        }
        _ => panic!("usage: agent-load daemon URL [CHATS] | baseline BASE_URL [CLIENTS]"),
    };
    use std::io::Write as _;
    writeln!(std::io::stdout(), "{out}").expect("stdout");
}
