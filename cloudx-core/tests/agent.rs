//! The agent's facade on SQLite and on a real Postgres: conversations and their owners, one
//! task at a time, cancel before a worker takes it, follow-ups, events resumed from an offset
//! (from the live channel and from the table), transcripts and replays. The model is the
//! scripted OpenAI-compatible server of cloudx-testkit, on loopback.

use std::time::Duration;

use bytes::Bytes;
use cloudx_core::agent::{AgentEvent, TaskFilter, TaskStatus};
use cloudx_core::auth::NewUser;
use cloudx_core::auth::audit::Client;
use cloudx_core::config::ConfigLoader;
use cloudx_core::queue::{Worker, WorkerOptions};
use cloudx_core::storage::{NewProject, PutOptions};
use cloudx_core::testing::TestPostgres;
use cloudx_core::{Cloudx, ErrorKind, Principal};
use cloudx_testkit::{ScriptedLlm, Turn};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Instance {
    cx: Cloudx,
    ada: Principal,
    bob: Principal,
    project: Uuid,
    llm: ScriptedLlm,
    _pg: Option<TestPostgres>,
    _dir: tempfile::TempDir,
}

fn client() -> Client {
    Client::new(Some("127.0.0.1".into()), Some("agent-tests"))
}

async fn user(cx: &Cloudx, email: &str) -> Principal {
    let new =
        NewUser { email: email.into(), password: "Correct-Horse-Battery-7781".into(), display_name: email.into() };
    let user = cx.auth().register(new, None, &client()).await.unwrap();
    Principal::user(user.id, user.role)
}

async fn instance(postgres: bool, script: Vec<Turn>) -> Option<Instance> {
    let dir = tempfile::tempdir().unwrap();
    let pg = if postgres { Some(TestPostgres::create().await?) } else { None };
    let llm = ScriptedLlm::start(script);
    let mut env = vec![
        ("CLOUDX_DATA_DIR".to_owned(), dir.path().to_str().unwrap().to_owned()),
        ("CLOUDX_LLM__BASE_URL".to_owned(), llm.base_url()),
        ("CLOUDX_LLM__MODEL".to_owned(), "scripted-model".to_owned()),
        ("CLOUDX_AUTH__REGISTRATION".to_owned(), "open".to_owned()),
    ];
    if let Some(pg) = &pg {
        env.push(("CLOUDX_DATABASE__URL".into(), pg.url().to_owned()));
    }
    let cx = Cloudx::connect(ConfigLoader::new().env(env).load().unwrap()).await.unwrap();
    let ada = user(&cx, "ada@example.com").await;
    let bob = user(&cx, "bob@example.com").await;
    let new = NewProject { name: "notes".into(), ..Default::default() };
    let project = cx.storage().create_project(&ada, &client(), new).await.unwrap().id;
    let body = Box::pin(futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"hello\n"))]));
    cx.storage().put_file(&ada, &client(), project, "notes.txt", body, PutOptions::default()).await.unwrap();
    Some(Instance { cx, ada, bob, project, llm, _pg: pg, _dir: dir })
}

/// Runs a worker while `f` runs.
async fn with_worker<F: std::future::Future>(cx: &Cloudx, f: F) -> F::Output {
    let options = WorkerOptions { poll: Duration::from_millis(50), ..WorkerOptions::default() };
    let worker = Worker::new(cx.queue().clone(), cx.builtin_handlers(), options);
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    let out = f.await;
    stop.cancel();
    running.await.unwrap().unwrap();
    out
}

/// Follows the conversation from `after` until the task `task` ends; answers every event.
async fn until_done(cx: &Cloudx, who: &Principal, conversation: Uuid, task: Uuid, after: i64) -> Vec<AgentEvent> {
    let mut follower = cx.follow_conversation(who, conversation, after).await.unwrap();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let batch = follower.next(Duration::from_secs(1)).await.unwrap();
        events.extend(batch);
        if events.iter().any(|e| {
            e.task == task && e.kind == "status" && e.data["status"] != "queued" && e.data["status"] != "running"
        }) {
            return events;
        }
        assert!(tokio::time::Instant::now() < deadline, "task {task} did not end: {events:#?}");
    }
}

macro_rules! both {
    ($($test:ident),* $(,)?) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(false).await })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(true).await })* }
    };
}

both!(conversations_belong_to_their_user, one_task_at_a_time_and_cancel_before_start, events_resume_from_any_offset);

async fn conversations_belong_to_their_user(postgres: bool) {
    let Some(i) = instance(postgres, vec![]).await else { return };
    let cx = &i.cx;
    let c = cx.create_conversation(&i.ada, i.project, Some("Refactor")).await.unwrap();
    assert_eq!((c.title.as_str(), c.user, c.active_task), ("Refactor", i.ada.user_id().unwrap(), None));
    assert_eq!(cx.list_conversations(&i.ada, i.project).await.unwrap(), vec![c.clone()]);
    // Bob sees neither the project nor the conversation.
    let e = cx.create_conversation(&i.bob, i.project, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = cx.conversation(&i.bob, c.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = cx.post_message(&i.bob, &client(), c.id, "hi").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // Bad input is named.
    let long = "x".repeat(201);
    assert!(cx.create_conversation(&i.ada, i.project, Some(&long)).await.unwrap_err().message().contains("title"));
    for (text, named) in [("  ", "empty"), ("a\0b", "NUL")] {
        let e = cx.post_message(&i.ada, &client(), c.id, text).await.unwrap_err();
        assert!(e.kind() == ErrorKind::InvalidInput && e.message().contains(named), "{e}");
    }
    let huge = "y".repeat(cloudx_core::agent::MAX_MESSAGE + 1);
    assert!(cx.post_message(&i.ada, &client(), c.id, &huge).await.unwrap_err().message().contains("bytes long"));
}

async fn one_task_at_a_time_and_cancel_before_start(postgres: bool) {
    let Some(i) = instance(postgres, vec![]).await else { return };
    let cx = &i.cx;
    let c = cx.create_conversation(&i.ada, i.project, None).await.unwrap();
    // No worker runs: the task stays queued, and blocks the next message.
    let task = cx.post_message(&i.ada, &client(), c.id, "Summarise notes.txt\nplease").await.unwrap();
    assert_eq!(task.status, TaskStatus::Queued);
    assert_eq!(cx.conversation(&i.ada, c.id).await.unwrap().title, "Summarise notes.txt", "the first line names it");
    let e = cx.post_message(&i.ada, &client(), c.id, "and another thing").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.message().contains(&task.id.to_string()), "{e}");
    // Cancelled before a worker took it: at once, and the conversation is free again.
    let cancelled = cx.cancel_task(&i.ada, &client(), task.id).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(cx.queue().get(task.job).await.unwrap().status, cloudx_core::queue::JobStatus::Cancelled);
    let next = cx.post_message(&i.ada, &client(), c.id, "and another thing").await.unwrap();
    let listed =
        cx.list_tasks(&i.ada, &TaskFilter { conversation: Some(c.id), ..TaskFilter::default() }).await.unwrap();
    assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), [next.id, task.id]);
    let e = cx.task(&i.bob, task.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // A replay needs a finished task.
    let e = cx.replay_task(&i.ada, &client(), next.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
}

async fn events_resume_from_any_offset(postgres: bool) {
    let script = vec![
        Turn::tool_call("read_file", r#"{"path": "notes.txt"}"#).fragment(3),
        Turn::text("It says hello.").chunks(4),
        Turn::text("Still hello.").chunks(3),
    ];
    let Some(i) = instance(postgres, script).await else { return };
    let cx = &i.cx;
    let c = cx.create_conversation(&i.ada, i.project, None).await.unwrap();
    let (first, second) = with_worker(cx, async {
        let task = cx.post_message(&i.ada, &client(), c.id, "What is in notes.txt?").await.unwrap();
        let first = until_done(cx, &i.ada, c.id, task.id, 0).await;
        let follow_up = cx.post_message(&i.ada, &client(), c.id, "Really?").await.unwrap();
        let second = until_done(cx, &i.ada, c.id, follow_up.id, first.last().unwrap().seq).await;
        (first, second)
    })
    .await;
    let kinds: Vec<&str> = first.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"message"));
    assert!(kinds.contains(&"tool_call") && kinds.contains(&"tool_result") && kinds.contains(&"answer"), "{kinds:?}");
    let text: String = first.iter().filter(|e| e.kind == "delta").map(|e| e.data["text"].as_str().unwrap()).collect();
    assert_eq!(text, "It says hello.");
    assert!(second.iter().all(|e| e.seq > first.last().unwrap().seq), "resumed after the offset");
    // Everything is in the table, in order, whatever offset a client comes back with.
    let all = cx.conversation_events(&i.ada, c.id, 0, 1000).await.unwrap();
    let mut expected = first.clone();
    expected.extend(second.clone());
    assert_eq!(all, expected);
    let middle = all[all.len() / 2].seq;
    let rest = cx.conversation_events(&i.ada, c.id, middle, 1000).await.unwrap();
    assert_eq!(rest, all[all.len() / 2 + 1..].to_vec());
    // The follow-up was asked with the whole conversation.
    let third = i.llm.requests()[2].body["messages"].as_array().unwrap().clone();
    let roles: Vec<&str> = third.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "assistant", "user"]);
    // The transcript of the first task, and its replay (nothing changed since: no difference).
    let task = cx.list_tasks(&i.ada, &TaskFilter::default()).await.unwrap().pop().unwrap();
    let transcript = cx.transcript(&i.ada, task.id, 0, 100).await.unwrap();
    assert_eq!(transcript.first().unwrap().kind, "start");
    assert_eq!(transcript.last().unwrap().kind, "end");
    let replay = with_worker(cx, async {
        let replay = cx.replay_task(&i.ada, &client(), task.id).await.unwrap();
        until_done(cx, &i.ada, c.id, replay.id, all.last().unwrap().seq).await;
        cx.task(&i.ada, replay.id).await.unwrap()
    })
    .await;
    assert_eq!(replay.status, TaskStatus::Succeeded, "{replay:#?}");
    assert_eq!(replay.report.as_ref().unwrap()["calls"], 1);
    assert_eq!(replay.report.as_ref().unwrap()["differences"].as_array().unwrap().len(), 0);
    assert_eq!(i.llm.requests().len(), 3, "a replay does not ask the model");
}
