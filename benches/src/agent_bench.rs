//! The agent in one process: what cloudx adds to each model step, and how late streamed text
//! reaches the followers of 200 conversations at once.
//!
//! Usage:
//!   agent-bench [--tasks M] [--steps N] [--parallel P] [--postgres]
//!   agent-bench --chats C [--tokens T] [--interval-ms I] [--postgres]
//!
//! Both open a `Cloudx` on a temporary folder (SQLite; with `--postgres`, a fresh database made
//! from `CLOUDX_TEST_POSTGRES_URL`), register an account, create a project with a small file, and
//! run an in-process `Worker` with the built-in handlers; a `ScriptedLlm` on loopback plays the
//! model.
//!
//! Steps (the default): M tasks, P at a time, each in a conversation of its own. The model calls
//! `read_file` of the small file until the request holds N tool results, then answers a short
//! text: N + 1 model requests per task. The step overhead is measured at the model server: the
//! time from the end of one answer to the arrival of the task's next request (the answer read,
//! recorded, the tool run and recorded, the history stored, the next request built and sent).
//! The tool's own time, read from the transcript (`tool_call` to `tool_result`, which also holds
//! the write of the `tool_call` entry), is subtracted for the second figure.
//!
//! Chats: C conversations each get one message at once; the model streams T timestamped tokens
//! I ms apart to each; every conversation is followed through `Cloudx::follow_conversation`, and
//! each `delta` is timed from the token's send stamp to its arrival. Then the same model streams
//! to C plain SSE clients at once (no cloudx between): the baseline.
//!
//! Prints one JSON line.

#[path = "agent_common.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cloudx_core::auth::NewUser;
use cloudx_core::auth::audit::Client;
use cloudx_core::config::{ConfigLoader, Registration};
use cloudx_core::queue::{Worker, WorkerOptions};
use cloudx_core::storage::{NewProject, PutOptions};
use cloudx_core::testing::TestPostgres;
use cloudx_core::{Cloudx, Principal};
use cloudx_testkit::{ScriptedLlm, Turn, bench};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Messages posted at once in the chats mode.
const POSTING: usize = 16;
const SMALL_FILE: &str = "notes.txt";
const SMALL_CONTENT: &str = "A small file the agent reads at every step.\nTwo lines.\n";

struct Args {
    tasks: usize,
    steps: usize,
    parallel: usize,
    chats: Option<usize>,
    tokens: usize,
    interval_ms: u64,
    postgres: bool,
}

fn args() -> Args {
    let mut a = Args { tasks: 50, steps: 5, parallel: 1, chats: None, tokens: 50, interval_ms: 20, postgres: false };
    let mut it = std::env::args().skip(1);
    let usage = "usage: agent-bench [--tasks M] [--steps N] [--parallel P] [--postgres] | --chats C [--tokens T] [--interval-ms I] [--postgres]";
    while let Some(flag) = it.next() {
        if flag == "--postgres" {
            a.postgres = true;
            continue;
        }
        let value: u64 =
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{flag} needs a number\n{usage}"));
        let n = usize::try_from(value).expect("a size");
        match flag.as_str() {
            "--tasks" => a.tasks = n.max(1),
            "--steps" => a.steps = n,
            "--parallel" => a.parallel = n.max(1),
            "--chats" => a.chats = Some(n.max(1)),
            "--tokens" => a.tokens = n,
            "--interval-ms" => a.interval_ms = value,
            _ => panic!("unknown flag {flag}\n{usage}"),
        }
    }
    a
}

/// A `Cloudx` whose model is `llm`, with an account, a project holding the small file, and a
/// worker running the built-in handlers.
struct Env {
    cx: Cloudx,
    actor: Principal,
    project: Uuid,
    stop: CancellationToken,
    worker: tokio::task::JoinHandle<cloudx_core::Result<()>>,
    _pg: Option<TestPostgres>,
    _dir: tempfile::TempDir,
}

fn client() -> Client {
    Client::new(Some("127.0.0.1".into()), Some("agent-bench"))
}

async fn open(llm: &ScriptedLlm, postgres: bool, max_steps: usize, concurrency: usize) -> Env {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let pg = if postgres {
        Some(TestPostgres::create().await.expect("set CLOUDX_TEST_POSTGRES_URL to a Postgres server"))
    } else {
        None
    };
    let mut env = vec![
        ("CLOUDX_DATA_DIR".to_owned(), dir.path().to_str().expect("a UTF-8 path").to_owned()),
        ("CLOUDX_LLM__BASE_URL".into(), llm.base_url()),
        ("CLOUDX_LLM__MODEL".into(), cloudx_testkit::DEFAULT_MODEL.into()),
        ("CLOUDX_LLM__API_KEY".into(), "sk-bench".into()),
        ("CLOUDX_LLM__MAX_STEPS".into(), (max_steps + 5).to_string()),
    ];
    if let Some(pg) = &pg {
        env.push(("CLOUDX_DATABASE__URL".into(), pg.url().to_owned()));
    }
    let mut config = ConfigLoader::new().env(env).load().expect("a configuration");
    config.auth.registration = Registration::Open;
    let cx = Cloudx::connect(config).await.expect("cloudx opens");
    let new = NewUser {
        email: "bench@example.com".into(),
        password: "Correct-Horse-Battery-7781".into(),
        display_name: "bench".into(),
    };
    let user = cx.auth().register(new, None, &client()).await.expect("registered");
    let actor = Principal::user(user.id, user.role);
    let project = cx
        .storage()
        .create_project(&actor, &client(), NewProject { name: "agent bench".into(), ..Default::default() })
        .await
        .expect("a project")
        .id;
    let body = Box::pin(futures_util::stream::iter([Ok::<_, std::io::Error>(bytes(SMALL_CONTENT))]));
    cx.storage()
        .put_file(&actor, &client(), project, SMALL_FILE, body, PutOptions::default())
        .await
        .expect("the small file");
    let options = WorkerOptions { concurrency, poll: Duration::from_millis(20), ..WorkerOptions::default() };
    let worker = Worker::new(cx.queue().clone(), cx.builtin_handlers(), options);
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    Env { cx, actor, project, stop, worker, _pg: pg, _dir: dir }
}

fn bytes(s: &'static str) -> axum::body::Bytes {
    axum::body::Bytes::from_static(s.as_bytes())
}

impl Env {
    async fn close(self) {
        self.stop.cancel();
        self.worker.await.expect("the worker").expect("the worker ends cleanly");
    }

    /// Posts `text` to a new conversation; answers the conversation and the task.
    async fn ask(&self, text: &str) -> (Uuid, Uuid) {
        let c = self.cx.create_conversation(&self.actor, self.project, None).await.expect("a conversation");
        let task = self.cx.post_message(&self.actor, &client(), c.id, text).await.expect("posted");
        (c.id, task.id)
    }

    /// Follows a conversation until its task ends; `on_delta` sees each text delta as it
    /// arrives. Panics unless the task succeeded.
    async fn follow(&self, conversation: Uuid, mut on_delta: impl FnMut(&str)) {
        let mut follower = self.cx.follow_conversation(&self.actor, conversation, 0).await.expect("followed");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            assert!(Instant::now() < deadline, "conversation {conversation}: no end within 300 s");
            for event in follower.next(Duration::from_secs(5)).await.expect("events") {
                match event.kind.as_str() {
                    "delta" => on_delta(event.data["text"].as_str().unwrap_or_default()),
                    "status" => match event.data["status"].as_str() {
                        Some("succeeded") => return,
                        Some(status @ ("failed" | "cancelled")) => {
                            panic!("conversation {conversation}: the task {status}: {}", event.data["reason"])
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
    }
}

/// The first user message of a model request: which task it belongs to.
fn marker(request: &Value) -> String {
    let messages = request["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    messages.iter().find(|m| m["role"] == "user").and_then(|m| m["content"].as_str()).unwrap_or_default().to_owned()
}

fn tool_results(request: &Value) -> usize {
    request["messages"].as_array().map_or(0, |m| m.iter().filter(|m| m["role"] == "tool").count())
}

async fn steps(a: &Args) -> Value {
    let n = a.steps;
    let arguments = json!({ "path": SMALL_FILE }).to_string();
    let llm = ScriptedLlm::with_handler(move |request| {
        if tool_results(request) < n { Turn::tool_call("read_file", arguments.clone()) } else { Turn::text("Done.") }
    });
    let env = Arc::new(open(&llm, a.postgres, n, a.parallel.max(4)).await);
    // One warm-up task (connections, statements, the first file read), not counted.
    let (c, _) = env.ask("warm-up: read the notes").await;
    env.follow(c, |_| {}).await;
    let warm = llm.requests().len();

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let runners: Vec<_> = (0..a.parallel)
        .map(|_| {
            let (env, next, tasks) = (env.clone(), next.clone(), a.tasks);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= tasks {
                        return ids;
                    }
                    let (c, task) = env.ask(&format!("task {i}: read the notes")).await;
                    env.follow(c, |_| {}).await;
                    ids.push(task);
                }
            })
        })
        .collect();
    let mut tasks = Vec::new();
    for r in runners {
        tasks.extend(r.await.expect("a runner"));
    }
    let elapsed = started.elapsed();

    // Gaps at the server: the end of an answer to the task's next request.
    let requests: Vec<_> = llm.requests().into_iter().skip(warm).collect();
    let mut by_task: std::collections::HashMap<String, Vec<_>> = std::collections::HashMap::new();
    for r in &requests {
        by_task.entry(marker(&r.body)).or_default().push(r.clone());
    }
    let mut gaps: Vec<(String, usize, u64)> = Vec::new();
    for (task, mut rs) in by_task {
        rs.sort_by_key(|r| r.received_at);
        assert_eq!(rs.len(), n + 1, "{task}: {} model requests, not {}", rs.len(), n + 1);
        for (step, pair) in rs.windows(2).enumerate() {
            let answered = pair[0].answered_at.expect("every answer ended");
            let gap = pair[1].received_at.duration_since(answered);
            gaps.push((task.clone(), step + 1, u64::try_from(gap.as_nanos()).expect("a gap")));
        }
    }
    // The tool's time, from the transcripts.
    let mut tool_ns: std::collections::HashMap<(String, usize), u64> = std::collections::HashMap::new();
    for id in &tasks {
        let task = env.cx.task(&env.actor, *id).await.expect("the task");
        let entries = env.cx.transcript(&env.actor, *id, 0, 10_000).await.expect("the transcript");
        let mut call_at = std::collections::HashMap::new();
        for e in entries {
            let step = usize::try_from(e.data["step"].as_u64().unwrap_or(0)).expect("a step");
            match e.kind.as_str() {
                "tool_call" => {
                    call_at.insert(step, e.at);
                }
                "tool_result" => {
                    if let Some(at) = call_at.get(&step) {
                        let ns = (e.at - *at).num_microseconds().unwrap_or(0).max(0) as u64 * 1000;
                        *tool_ns.entry((task.prompt.clone(), step)).or_default() += ns;
                    }
                }
                _ => {}
            }
        }
    }
    let mut all: Vec<u64> = gaps.iter().map(|g| g.2).collect();
    let mut tools: Vec<u64> = gaps.iter().filter_map(|(t, s, _)| tool_ns.get(&(t.clone(), *s)).copied()).collect();
    let mut without: Vec<u64> =
        gaps.iter().map(|(t, s, g)| g.saturating_sub(tool_ns.get(&(t.clone(), *s)).copied().unwrap_or(0))).collect();
    let model_requests = requests.len();
    env.stop.cancel();
    if let Ok(env) = Arc::try_unwrap(env) {
        env.close().await;
    }
    json!({
        "mode": "steps",
        "backend": if a.postgres { "postgres" } else { "sqlite" },
        "tasks": a.tasks, "tool_steps_per_task": n, "parallel": a.parallel,
        "model_requests": model_requests, "seconds": elapsed.as_secs_f64(),
        "steps_per_s": model_requests as f64 / elapsed.as_secs_f64(),
        "gap": common::summary(&mut all),
        "tool": common::summary(&mut tools),
        "gap_without_tool": common::summary(&mut without),
    })
}

async fn chats(a: &Args, chats: usize) -> Value {
    let interval = Duration::from_millis(a.interval_ms);
    let llm = ScriptedLlm::with_handler(bench::timestamped_text(a.tokens, interval));
    let env = Arc::new(open(&llm, a.postgres, 1, chats + 8).await);
    let (c, _) = env.ask("warm-up").await;
    env.follow(c, |_| {}).await;

    let mut conversations = Vec::with_capacity(chats);
    for _ in 0..chats {
        conversations.push(env.cx.create_conversation(&env.actor, env.project, None).await.expect("a conversation").id);
    }
    // Followers first, then the messages, all at once.
    let followers: Vec<_> = conversations
        .iter()
        .map(|&c| {
            let env = env.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                env.follow(c, |text| common::latencies(text, &mut out)).await;
                out
            })
        })
        .collect();
    let started = Instant::now();
    // At most POSTING messages in flight: 200 at once exhaust the SQLite pool (see PERFORMANCE.md).
    futures_util::StreamExt::collect::<Vec<()>>(futures_util::StreamExt::buffer_unordered(
        futures_util::stream::iter(conversations.iter().enumerate().map(|(i, &c)| {
            let env = env.clone();
            async move {
                env.cx.post_message(&env.actor, &client(), c, &format!("chat {i}")).await.expect("posted");
            }
        })),
        POSTING,
    ))
    .await;
    let posted = started.elapsed();
    let mut latencies = Vec::new();
    for f in followers {
        latencies.extend(f.await.expect("a follower"));
    }
    let elapsed = started.elapsed();
    let expected = chats * a.tokens;
    assert_eq!(latencies.len(), expected, "every token reached its follower once");
    env.stop.cancel();
    if let Ok(env) = Arc::try_unwrap(env) {
        env.close().await;
    }
    let mut baseline = common::sse_baseline(&llm.base_url(), chats).await;
    assert_eq!(baseline.len(), expected, "every token reached its baseline client");
    let cloudx = common::summary(&mut latencies);
    let base = common::summary(&mut baseline);
    let diff =
        |k: &str| ((cloudx[k].as_f64().unwrap_or(0.0) - base[k].as_f64().unwrap_or(0.0)) * 1000.0).round() / 1000.0;
    json!({
        "mode": "chats",
        "backend": if a.postgres { "postgres" } else { "sqlite" },
        "chats": chats, "tokens": a.tokens, "interval_ms": a.interval_ms,
        "seconds": elapsed.as_secs_f64(), "posting_seconds": posted.as_secs_f64(),
        "follow_conversation": cloudx, "baseline_sse": base,
        "added_ms": { "p50": diff("p50_ms"), "p90": diff("p90_ms"), "p99": diff("p99_ms") },
    })
}

#[tokio::main]
async fn main() {
    let a = args();
    let out = match a.chats {
        Some(c) => chats(&a, c).await,
        None => steps(&a).await,
    };
    use std::io::Write as _;
    writeln!(std::io::stdout(), "{out}").expect("stdout");
}
