//! The agent end to end through the daemon: a scripted OpenAI-compatible server on loopback
//! (JSON and SSE, tool-call deltas split across chunks) plays the model; the conversation is
//! driven over HTTP and followed over its WebSocket; a worker with the built-in handlers runs
//! the tasks, with the real sandbox.

mod common;

use std::time::{Duration, Instant};

use cloudx_core::queue::{Worker, WorkerOptions};
use cloudx_testkit::{ScriptedLlm, Turn};
use common::Daemon;
use futures_util::StreamExt as _;
use reqwest::{Method as M, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};
use tokio_util::sync::CancellationToken;

const CALC: &str = "def add(a, b):\n    return a - b\n";
const CALC_TEST: &str = "import unittest\n\nfrom calc import add\n\n\nclass AddTest(unittest.TestCase):\n    def test_adds(self):\n        self.assertEqual(add(2, 3), 5)\n\n\nif __name__ == \"__main__\":\n    unittest.main()\n";
const FIX: &str =
    "--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n";

/// A daemon with a worker, a scripted model, a signed-in user and a project.
struct Env {
    d: Daemon,
    llm: ScriptedLlm,
    http: reqwest::Client,
    token: String,
    project: String,
    stop: CancellationToken,
    worker: tokio::task::JoinHandle<cloudx_core::Result<()>>,
}

async fn register(d: &Daemon, email: &str) -> String {
    common::sign_up(d, email).await.0
}

async fn env(script: Vec<Turn>, extra: &[(&str, &str)]) -> Env {
    env_with(ScriptedLlm::start(script), extra).await
}

async fn env_with(llm: ScriptedLlm, extra: &[(&str, &str)]) -> Env {
    let base = llm.base_url();
    let mut vars = vec![
        ("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"),
        ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0"),
        ("CLOUDX_LLM__BASE_URL", base.as_str()),
        ("CLOUDX_LLM__MODEL", "scripted-model"),
        ("CLOUDX_LLM__API_KEY", "sk-test-key"),
        ("CLOUDX_LLM__MAX_RETRIES", "3"),
        ("CLOUDX_AUTH__REGISTRATION", "open"),
    ];
    // A test's own settings win over these.
    vars.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    vars.extend_from_slice(extra);
    let d = Daemon::start(&vars).await;
    let options = WorkerOptions { poll: Duration::from_millis(50), ..WorkerOptions::default() };
    let worker = Worker::new(d.cx.queue().clone(), d.cx.builtin_handlers(), options);
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let http = reqwest::Client::new();
    let token = register(&d, "ada@example.com").await;
    let mut e = Env { d, llm, http, token, project: String::new(), stop, worker };
    let p = e.call(M::POST, "/api/v1/projects", Some(json!({"name": "calc"}))).await;
    e.project = p["id"].as_str().unwrap().to_owned();
    e.put("calc.py", CALC).await;
    e.put("tests/test_calc.py", CALC_TEST).await;
    e.put("tests/__init__.py", "").await;
    e
}

impl Env {
    async fn send_as(&self, token: &str, method: M, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut req = self.http.request(method, self.d.url(path)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    async fn call(&self, method: M, path: &str, body: Option<Value>) -> Value {
        let r = self.send_as(&self.token, method, path, body).await;
        assert!(r.status().is_success(), "{path}: {} {}", r.status(), r.text().await.unwrap());
        r.json().await.unwrap()
    }

    async fn put(&self, path: &str, content: &str) {
        let url = self.d.url(&format!("/api/v1/projects/{}/files/{path}", self.project));
        let r = self.http.put(url).bearer_auth(&self.token).body(content.to_owned()).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    async fn file(&self, path: &str) -> String {
        let url = self.d.url(&format!("/api/v1/projects/{}/files/{path}", self.project));
        self.http.get(url).bearer_auth(&self.token).send().await.unwrap().text().await.unwrap()
    }

    async fn conversation_as(&self, token: &str) -> String {
        let r = self
            .send_as(token, M::POST, &format!("/api/v1/projects/{}/conversations", self.project), Some(json!({})))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let c: Value = r.json().await.unwrap();
        c["id"].as_str().unwrap().to_owned()
    }

    async fn ask_as(&self, token: &str, conversation: &str, text: &str) -> Value {
        let r = self
            .send_as(
                token,
                M::POST,
                &format!("/api/v1/conversations/{conversation}/messages"),
                Some(json!({"text": text})),
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        r.json().await.unwrap()
    }

    /// Starts a conversation, posts `text`, and waits for the task to end; answers the task
    /// and every event of the conversation.
    async fn run(&self, text: &str) -> (Value, Vec<Value>) {
        let token = self.token.clone();
        self.run_as(&token, text).await
    }

    async fn run_as(&self, token: &str, text: &str) -> (Value, Vec<Value>) {
        let c = self.conversation_as(token).await;
        let task = self.ask_as(token, &c, text).await;
        self.finish(token, &c, &task).await
    }

    async fn finish(&self, token: &str, conversation: &str, task: &Value) -> (Value, Vec<Value>) {
        let id = task["id"].as_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut events = Vec::new();
        let mut after = 0i64;
        loop {
            let path = format!("/api/v1/conversations/{conversation}/events?after={after}&wait=5");
            let r = self.send_as(token, M::GET, &path, None).await;
            assert_eq!(r.status(), StatusCode::OK);
            let page: Value = r.json().await.unwrap();
            for e in page["events"].as_array().unwrap() {
                after = e["seq"].as_i64().unwrap();
                events.push(e.clone());
            }
            let ended = events.iter().any(|e| {
                e["task"] == id
                    && e["kind"] == "status"
                    && matches!(e["data"]["status"].as_str(), Some("succeeded" | "failed" | "cancelled"))
            });
            if ended {
                break;
            }
            assert!(Instant::now() < deadline, "task {id} did not end: {events:#?}");
        }
        let r = self.send_as(token, M::GET, &format!("/api/v1/tasks/{id}"), None).await;
        (r.json().await.unwrap(), events)
    }

    async fn transcript(&self, task: &str) -> Vec<Value> {
        let t = self.call(M::GET, &format!("/api/v1/tasks/{task}/transcript"), None).await;
        t["entries"].as_array().cloned().unwrap_or_else(|| t.as_array().cloned().unwrap())
    }

    async fn stop(self) {
        self.stop.cancel();
        self.worker.await.unwrap().unwrap();
        self.d.stop().await.unwrap();
    }
}

fn kinds<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

fn deltas(events: &[Value]) -> String {
    kinds(events, "delta").iter().map(|e| e["data"]["text"].as_str().unwrap()).collect()
}

/// The content of the last message of the model request `n`.
fn last_message(llm: &ScriptedLlm, n: usize) -> Value {
    let requests = llm.requests();
    requests[n].body["messages"].as_array().unwrap().last().unwrap().clone()
}

#[tokio::test]
async fn the_agent_reads_fixes_tests_and_reports_over_the_websocket() {
    let e = env(
        vec![
            Turn::tool_call("read_file", r#"{"path": "calc.py"}"#).content("Let me look at calc.py.").fragment(4),
            Turn::tool_call("apply_patch", json!({ "patch": FIX }).to_string()).fragment(7),
            Turn::tool_call("run_tests", "{}"),
            Turn::text("Fixed add(): it subtracted. The tests pass now.").chunks(6),
        ],
        &[],
    )
    .await;
    let c = e.conversation_as(&e.token).await;

    // Follow over the WebSocket, with a one-time ticket and the daemon's own Origin.
    let t: Value = e.call(M::POST, "/api/v1/auth/ws-ticket", None).await;
    let url =
        format!("ws://{}/api/v1/conversations/{c}/events?after=0&ticket={}", e.d.addr, t["ticket"].as_str().unwrap());
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("origin", format!("http://{}", e.d.addr).parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    let task = e.ask_as(&e.token, &c, "add() is wrong; fix it and run the tests").await;
    // The daemon's own worker may have taken the task before the answer is read back.
    assert!(matches!(task["status"].as_str(), Some("queued" | "running")), "{task}");
    let id = task["id"].as_str().unwrap().to_owned();
    let mut events: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !events.iter().any(|e| e["kind"] == "status" && e["data"]["status"] == "succeeded") {
        assert!(Instant::now() < deadline, "{events:#?}");
        match tokio::time::timeout(Duration::from_secs(30), socket.next()).await.unwrap().unwrap().unwrap() {
            tungstenite::Message::Text(text) => events.push(serde_json::from_str(&text).unwrap()),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected {other:?} after {events:#?}"),
        }
    }
    // In order, numbered, every kind there.
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(kinds(&events, "message")[0]["data"]["text"], "add() is wrong; fix it and run the tests");
    let calls: Vec<&str> = kinds(&events, "tool_call").iter().map(|e| e["data"]["name"].as_str().unwrap()).collect();
    assert_eq!(calls, ["read_file", "apply_patch", "run_tests"]);
    let results = kinds(&events, "tool_result");
    assert!(results.iter().all(|r| r["data"]["is_error"] == false), "{results:#?}");
    assert_eq!(results[2]["data"]["data"]["status"], "passed", "{:#?}", results[2]);
    let changed = kinds(&events, "file_changed");
    assert_eq!((changed.len(), changed[0]["data"]["path"].as_str()), (1, Some("calc.py")));
    let text = deltas(&events);
    assert!(text.contains("Let me look at calc.py.") && text.ends_with("The tests pass now."), "{text}");
    assert_eq!(kinds(&events, "answer")[0]["data"]["text"], "Fixed add(): it subtracted. The tests pass now.");

    // The model saw the file, then the patch's and the tests' results; the key went along.
    let requests = e.llm.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer sk-test-key"));
    assert_eq!(requests[0].body["stream"], true);
    assert!(requests[0].body["tools"].as_array().unwrap().len() >= 7);
    let read = last_message(&e.llm, 1);
    assert_eq!(read["role"], "tool");
    assert!(read["content"].as_str().unwrap().contains("return a - b"), "{read}");
    assert!(last_message(&e.llm, 3)["content"].as_str().unwrap().contains("passed"));

    // The fix is a new version by the user, naming the task.
    assert_eq!(e.file("calc.py").await, "def add(a, b):\n    return a + b\n");
    let history = e.call(M::GET, &format!("/api/v1/projects/{}/history/calc.py", e.project), None).await;
    let latest = &history.as_array().unwrap_or_else(|| history["versions"].as_array().unwrap())[0];
    assert!(latest["message"].as_str().unwrap().contains(&id), "{latest}");

    // The task, its transcript in order.
    let got = e.call(M::GET, &format!("/api/v1/tasks/{id}"), None).await;
    assert_eq!((got["status"].as_str(), got["steps"].as_u64()), (Some("succeeded"), Some(4)));
    assert!(got["answer"].as_str().unwrap().starts_with("Fixed add()"));
    let transcript = e.transcript(&id).await;
    let order: Vec<&str> = transcript.iter().map(|t| t["kind"].as_str().unwrap()).collect();
    let expected = [
        "start",
        "model_request",
        "model_response",
        "tool_call",
        "tool_result",
        "model_request",
        "model_response",
        "tool_call",
        "tool_result",
        "model_request",
        "model_response",
        "tool_call",
        "tool_result",
        "model_request",
        "model_response",
        "end",
    ];
    assert_eq!(order, expected);

    // The audit log has the tool calls that wrote or ran.
    let audit = e.call(M::GET, "/api/v1/audit?limit=200", None).await;
    let audit = audit.as_array().cloned().unwrap_or_else(|| audit["entries"].as_array().unwrap().clone());
    let tools: Vec<String> = audit
        .iter()
        .filter(|a| a["action"] == "agent_tool")
        .map(|a| a["detail"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        tools.iter().any(|t| t.contains("apply_patch")) && tools.iter().any(|t| t.contains("run_tests")),
        "{tools:?}"
    );
    assert!(!tools.iter().any(|t| t.contains("read_file")), "reads are not audited as tool writes: {tools:?}");

    // Replayed against the recorded answers: the file reads differently now and the patch no
    // longer applies (it is in), and the report says so.
    let r = e.send_as(&e.token, M::POST, &format!("/api/v1/tasks/{id}/replay"), None).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let replay: Value = r.json().await.unwrap();
    let (replayed, _) = e.finish(&e.token, &c, &replay).await;
    assert_eq!(replayed["status"], "succeeded", "{replayed:#}");
    assert_eq!(replayed["report"]["calls"], 3);
    let differences = replayed["report"]["differences"].as_array().unwrap();
    let tools: Vec<&str> = differences.iter().map(|d| d["tool"].as_str().unwrap()).collect();
    assert_eq!(tools, ["read_file", "apply_patch"], "{differences:#?}");
    assert!(differences[0]["replayed"].as_str().unwrap().contains("return a + b"));
    assert_eq!(e.llm.requests().len(), 4, "a replay does not ask the model");
    e.stop().await;
}

#[tokio::test]
async fn follow_ups_continue_the_conversation() {
    let e = env(vec![Turn::text("It adds two numbers (badly)."), Turn::text("Yes: a - b.")], &[]).await;
    let c = e.conversation_as(&e.token).await;
    let first = e.ask_as(&e.token, &c, "What does calc.py do?").await;
    e.finish(&e.token, &c, &first).await;
    let second = e.ask_as(&e.token, &c, "Does it subtract?").await;
    let (task, _) = e.finish(&e.token, &c, &second).await;
    assert_eq!(task["answer"], "Yes: a - b.");
    let messages = e.llm.requests()[1].body["messages"].as_array().unwrap().clone();
    let texts: Vec<(&str, &str)> =
        messages.iter().map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap_or(""))).collect();
    assert_eq!(texts[0].0, "system");
    assert_eq!(
        &texts[1..],
        [
            ("user", "What does calc.py do?"),
            ("assistant", "It adds two numbers (badly)."),
            ("user", "Does it subtract?")
        ]
    );
    e.stop().await;
}

#[tokio::test]
async fn model_errors_are_retried_with_backoff_honouring_retry_after() {
    let e = env(
        vec![
            Turn::error(500).message("upstream exploded"),
            Turn::error(429).header("retry-after", "1").message("slow down"),
            Turn::text("a partial answer that is cut off").chunks(8).cut_after(2),
            Turn::text("all good"),
        ],
        &[],
    )
    .await;
    let started = Instant::now();
    let (task, events) = e.run("hello").await;
    assert_eq!((task["status"].as_str(), task["answer"].as_str()), (Some("succeeded"), Some("all good")), "{task:#}");
    let retries = kinds(&events, "retry");
    assert_eq!(retries.len(), 3, "{retries:#?}");
    assert!(retries[0]["data"]["reason"].as_str().unwrap().contains("500"), "{:#}", retries[0]);
    assert!(retries[1]["data"]["reason"].as_str().unwrap().contains("429"), "{:#}", retries[1]);
    assert!(retries[1]["data"]["delay_ms"].as_u64().unwrap() >= 1000, "Retry-After is honoured: {:#}", retries[1]);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(e.llm.requests().len(), 4);
    let transcript = e.transcript(task["id"].as_str().unwrap()).await;
    assert_eq!(transcript.iter().filter(|t| t["kind"] == "model_retry").count(), 3);
    e.stop().await;
}

#[tokio::test]
async fn retries_end_within_the_budget() {
    let e = env(vec![Turn::error(503), Turn::error(503), Turn::error(503)], &[("CLOUDX_LLM__MAX_RETRIES", "2")]).await;
    let (task, _) = e.run("hello").await;
    assert_eq!(task["status"], "failed");
    let reason = task["reason"].as_str().unwrap();
    assert!(reason.starts_with("the model:") && reason.contains("503"), "{reason}");
    assert_eq!(e.llm.requests().len(), 3);
    e.stop().await;
}

#[tokio::test]
async fn bad_tool_calls_go_back_to_the_model_as_errors() {
    let e = env(
        vec![
            Turn::tool_call("read_file", r#"{"path": "calc.py""#),
            Turn::tool_call("read_file", r#"{"path": 7}"#),
            Turn::tool_call("delete_everything", "{}"),
            Turn::text("I give up."),
        ],
        &[],
    )
    .await;
    let (task, events) = e.run("read calc.py").await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let results = kinds(&events, "tool_result");
    assert!(results.iter().all(|r| r["data"]["is_error"] == true), "{results:#?}");
    let invalid_json = last_message(&e.llm, 1)["content"].as_str().unwrap().to_owned();
    assert!(invalid_json.starts_with("error:") && invalid_json.contains("JSON"), "{invalid_json}");
    let wrong_type = last_message(&e.llm, 2)["content"].as_str().unwrap().to_owned();
    assert!(wrong_type.starts_with("error:") && wrong_type.contains("path"), "{wrong_type}");
    let unknown = last_message(&e.llm, 3)["content"].as_str().unwrap().to_owned();
    assert!(unknown.contains("delete_everything") && unknown.contains("read_file"), "{unknown}");
    e.stop().await;
}

#[tokio::test]
async fn huge_outputs_are_cut_or_refused_before_the_model_sees_them() {
    let e = env(
        vec![
            Turn::tool_call("read_file", r#"{"path": "big.txt"}"#),
            Turn::tool_call("run_command", r#"{"argv": ["python3", "-c", "print('x' * 3000000)"]}"#),
            Turn::text("done"),
        ],
        &[],
    )
    .await;
    let big: String = (0..60_000).map(|i| format!("line {i}\n")).collect();
    e.put("big.txt", &big).await;
    let (task, _) = e.run("look at big.txt").await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let read = last_message(&e.llm, 1)["content"].as_str().unwrap().to_owned();
    assert!(read.starts_with("error:") && read.contains("60000"), "the line count is given: {read}");
    let run = last_message(&e.llm, 2)["content"].as_str().unwrap().to_owned();
    assert!(run.len() < 40 * 1024, "{}", run.len());
    assert!(run.contains("left out"), "{}", &run[..200.min(run.len())]);
    for r in e.llm.requests() {
        assert!(r.body.to_string().len() < 80 * 1024, "every request stays small");
    }
    e.stop().await;
}

#[tokio::test]
async fn step_and_token_budgets_end_a_task() {
    let e = ScriptedLlm::with_handler(|_| Turn::tool_call("list_files", "{}"));
    let e = env_with(e, &[("CLOUDX_LLM__MAX_STEPS", "3")]).await;
    let (task, _) = e.run("loop forever").await;
    assert_eq!(task["status"], "failed");
    assert!(task["reason"].as_str().unwrap().contains("step budget exhausted"), "{task:#}");
    assert_eq!((task["steps"].as_u64(), e.llm.requests().len()), (Some(3), 3));
    e.stop().await;

    let e = ScriptedLlm::with_handler(|_| Turn::tool_call("list_files", "{}"));
    let e = env_with(e, &[("CLOUDX_LLM__MAX_TASK_TOKENS", "100")]).await;
    let (task, _) = e.run("loop forever").await;
    assert_eq!(task["status"], "failed");
    assert!(task["reason"].as_str().unwrap().contains("token budget exhausted"), "{task:#}");
    assert!(task["prompt_tokens"].as_u64().unwrap() + task["completion_tokens"].as_u64().unwrap() >= 100);
    e.stop().await;
}

#[tokio::test]
async fn cancel_stops_the_model_stream_and_the_sandbox_at_once() {
    let e = env(
        vec![
            Turn::text("word ".repeat(200)).chunks(200).delay(Duration::from_millis(50)),
            Turn::tool_call("run_command", r#"{"argv": ["sleep", "60"]}"#),
        ],
        &[],
    )
    .await;
    for expect in ["delta", "tool_call"] {
        let c = e.conversation_as(&e.token).await;
        let task = e.ask_as(&e.token, &c, "go").await;
        let id = task["id"].as_str().unwrap().to_owned();
        // Wait until the stream (or the command) is under way.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let page = e.call(M::GET, &format!("/api/v1/conversations/{c}/events?after=0&wait=1"), None).await;
            if page["events"].as_array().unwrap().iter().any(|ev| ev["kind"] == expect) {
                break;
            }
            assert!(Instant::now() < deadline);
        }
        if expect == "tool_call" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let cancelled_at = Instant::now();
        let r = e.call(M::POST, &format!("/api/v1/tasks/{id}/cancel"), None).await;
        assert!(matches!(r["status"].as_str(), Some("running" | "cancelled")), "{r:#}");
        let (task, _) = e.finish(&e.token, &c, &task).await;
        assert_eq!(task["status"], "cancelled", "{task:#}");
        assert!(cancelled_at.elapsed() < Duration::from_secs(2), "{expect}: {:?}", cancelled_at.elapsed());
    }
    assert!(e.llm.disconnects() >= 1, "the model's stream was dropped");
    e.stop().await;
}

#[tokio::test]
async fn a_viewers_agent_cannot_write() {
    let e = env(
        vec![
            Turn::tool_call("write_file", r#"{"path": "calc.py", "content": "hacked\n"}"#),
            Turn::tool_call("run_command", r#"{"argv": ["true"]}"#),
            Turn::text("I cannot change files here."),
        ],
        &[],
    )
    .await;
    let viewer = register(&e.d, "vic@example.com").await;
    e.call(M::PUT, &format!("/api/v1/projects/{}/members/vic@example.com", e.project), Some(json!({"role": "viewer"})))
        .await;
    let (task, events) = e.run_as(&viewer, "overwrite calc.py").await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let results = kinds(&events, "tool_result");
    assert!(results.iter().all(|r| r["data"]["is_error"] == true), "{results:#?}");
    assert!(kinds(&events, "file_changed").is_empty());
    assert_eq!(e.file("calc.py").await, CALC);
    // Another user (not an administrator) cannot see the viewer's conversation or task.
    let eve = register(&e.d, "eve@example.com").await;
    let r = e.send_as(&eve, M::GET, &format!("/api/v1/tasks/{}", task["id"].as_str().unwrap()), None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    e.stop().await;
}

#[tokio::test]
async fn long_tasks_have_their_old_tool_output_trimmed() {
    // Each step reads an 8 KiB listing (about 2000 tokens); the window (8192 tokens, three
    // quarters usable, less the tools) holds two, so older ones are trimmed, then left out.
    let asked = std::sync::atomic::AtomicUsize::new(0);
    let llm = ScriptedLlm::with_handler(move |_| {
        if asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 6 {
            Turn::tool_call("read_file", r#"{"path": "chunk.txt"}"#)
        } else {
            Turn::text("read it all")
        }
    });
    let e = env_with(llm, &[("CLOUDX_LLM__CONTEXT_TOKENS", "8192")]).await;
    let chunk: String = (0..600).map(|i| format!("{i:>5}\n")).collect();
    e.put("chunk.txt", &chunk).await;
    let (task, _) = e.run("read chunk.txt many times").await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let requests = e.llm.requests();
    assert_eq!(requests.len(), 7);
    for r in &requests {
        // 8192 tokens at about 4 bytes each, with room for the answer.
        assert!(r.body["messages"].to_string().len() < 8192 * 3, "{}", r.body["messages"].to_string().len());
    }
    let last = requests.last().unwrap().body["messages"].to_string();
    assert!(last.contains("removed to save context"), "older results are trimmed");
    e.stop().await;
}
