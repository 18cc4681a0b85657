//! The agent's tools end to end: each call made inside a real job (a worker with a handler that
//! runs the calls it is given), as the owner or as a viewer, on SQLite, with the real sandbox.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudx_core::access::ProjectRole;
use cloudx_core::agent::tools::{ToolLimits, ToolOutcome, call_for_tests};
use cloudx_core::auth::NewUser;
use cloudx_core::auth::audit::Client;
use cloudx_core::config::ConfigLoader;
use cloudx_core::queue::{Handlers, JobStatus, NewJob, Worker, WorkerOptions};
use cloudx_core::storage::{NewProject, PutOptions};
use cloudx_core::{Cloudx, Principal, Role};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Instance {
    cx: Cloudx,
    owner: Principal,
    stop: CancellationToken,
    worker: tokio::task::JoinHandle<cloudx_core::Result<()>>,
    _dir: tempfile::TempDir,
}

fn client() -> Client {
    Client::new(Some("127.0.0.1".into()), Some("agent-tools-tests"))
}

/// The handler of `tool_calls` jobs: `{actor, task, max_output, calls: [[name, arguments], ...]}`,
/// answered with the outcomes.
fn handlers(cx: &Cloudx) -> Handlers {
    let mut handlers = Handlers::new();
    let cx = cx.clone();
    handlers.register("tool_calls", move |job| {
        let cx = cx.clone();
        async move {
            let p = job.job.payload.clone();
            let actor = Principal::user(p["actor"].as_str().unwrap().parse().unwrap(), Role::Member);
            let task: Uuid = p["task"].as_str().unwrap().parse().unwrap();
            let limits = ToolLimits { max_output: p["max_output"].as_u64().unwrap() as usize };
            let project = job.job.project.unwrap();
            let mut outcomes = Vec::new();
            for call in p["calls"].as_array().unwrap() {
                let (name, arguments) = (call[0].as_str().unwrap(), call[1].as_str().unwrap());
                let outcome = call_for_tests(&cx, &job, &actor, project, task, limits, name, arguments).await?;
                outcomes.push(serde_json::to_value(outcome).unwrap());
            }
            Ok(Value::Array(outcomes))
        }
    });
    handlers
}

async fn instance() -> Instance {
    let dir = tempfile::tempdir().unwrap();
    let env = vec![("CLOUDX_DATA_DIR".to_owned(), dir.path().to_str().unwrap().to_owned())];
    let cx = Cloudx::connect(ConfigLoader::new().env(env).load().unwrap()).await.unwrap();
    let owner = user(&cx, "ada@example.com").await;
    let options = WorkerOptions { poll: Duration::from_millis(50), ..WorkerOptions::default() };
    let worker = Worker::new(cx.queue().clone(), handlers(&cx), options);
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    Instance { cx, owner, stop, worker, _dir: dir }
}

async fn user(cx: &Cloudx, email: &str) -> Principal {
    let new = NewUser { email: email.into(), password: "Correct-Horse-Battery-7781".into(), display_name: "U".into() };
    let user = cx.auth().add_user(&Principal::System, new, Role::Member, &client()).await.unwrap();
    Principal::user(user.id, user.role)
}

fn id(p: &Principal) -> String {
    p.user_id().unwrap().to_string()
}

impl Instance {
    async fn project(&self, template: Option<&str>, files: &[(&str, &str)]) -> Uuid {
        let new = NewProject { name: "tools".into(), template: template.map(Into::into), ..Default::default() };
        let p = self.cx.storage().create_project(&self.owner, &client(), new).await.unwrap().id;
        for (path, content) in files {
            let body = Bytes::copy_from_slice(content.as_bytes());
            let stream = Box::pin(futures_util::stream::iter([Ok::<_, std::io::Error>(body)]));
            self.cx.storage().put_file(&self.owner, &client(), p, path, stream, PutOptions::default()).await.unwrap();
        }
        p
    }

    async fn version(&self, project: Uuid) -> i64 {
        self.cx.storage().list_files(&self.owner, project, "", None, true).await.unwrap().version
    }

    /// Runs `calls` as `actor` in one job and returns their outcomes.
    async fn calls(
        &self,
        actor: &Principal,
        project: Uuid,
        max_output: usize,
        calls: &[(&str, Value)],
    ) -> Vec<ToolOutcome> {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(name, args)| {
                // A string is sent as it is (to test broken JSON); anything else is encoded.
                let text = args.as_str().map_or_else(|| args.to_string(), str::to_owned);
                json!([name, text])
            })
            .collect();
        let task = Uuid::now_v7();
        let payload = json!({"actor": id(actor), "task": task, "max_output": max_output, "calls": calls});
        let new = NewJob { project: Some(project), ..NewJob::new("tool_calls", payload) };
        let job = self.cx.submit_job(&self.owner, &client(), new).await.unwrap().0.id;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = self.cx.job(&self.owner, job).await.unwrap();
            match job.status {
                JobStatus::Succeeded => return serde_json::from_value(job.result.unwrap()).unwrap(),
                JobStatus::Dead | JobStatus::Cancelled => {
                    panic!("the job ended {:?}: {:?}", job.status, job.last_error)
                }
                _ => assert!(Instant::now() < deadline, "the job takes too long"),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn call(&self, project: Uuid, name: &str, args: Value) -> ToolOutcome {
        self.calls(&self.owner, project, 16 * 1024, &[(name, args)]).await.remove(0)
    }

    async fn finish(self) {
        self.stop.cancel();
        self.worker.await.unwrap().unwrap();
    }
}

fn ok(outcome: &ToolOutcome) -> &str {
    assert!(!outcome.is_error, "{}", outcome.content);
    &outcome.content
}

fn err(outcome: &ToolOutcome) -> &str {
    assert!(outcome.is_error && outcome.content.starts_with("error: "), "not an error: {}", outcome.content);
    &outcome.content
}

const APP: &str = "import os\n\n\ndef main():\n    print('hello')\n\n\nmain()\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_listed_read_searched_written_and_patched() {
    let i = instance().await;
    let p =
        i.project(None, &[("src/app.py", APP), ("README.md", "# Tools\nhello there\n"), ("old.txt", "gone\n")]).await;

    let listed = i.call(p, "list_files", json!({})).await;
    let text = ok(&listed);
    assert!(text.contains("README.md  20") && text.contains("src/  ") && text.contains("old.txt  5"), "{text}");
    let listed = i.call(p, "list_files", json!({"path": "src", "recursive": true})).await;
    assert!(ok(&listed).contains("src/app.py  "), "{}", listed.content);

    let read = i.call(p, "read_file", json!({"path": "src/app.py", "start_line": 4, "end_line": 5})).await;
    let text = ok(&read);
    assert!(text.contains("lines 4–5 of 8"), "{text}");
    assert!(text.contains("   4| def main():\n   5|     print('hello')\n"), "{text}");
    assert!(!text.contains("import os"), "{text}");

    let found = i.call(p, "search", json!({"query": "HELLO"})).await;
    let text = ok(&found);
    assert!(text.contains("README.md:2: hello there") && text.contains("src/app.py:5:     print('hello')"), "{text}");
    let found = i.call(p, "search", json!({"query": "HELLO", "case_sensitive": true})).await;
    assert!(ok(&found).starts_with("no matches"), "{}", found.content);
    let found = i.call(p, "search", json!({"query": r"def \w+\(", "regex": true, "path": "src"})).await;
    assert!(ok(&found).contains("src/app.py:4: def main():"), "{}", found.content);
    let bad = i.call(p, "search", json!({"query": "(", "regex": true})).await;
    assert!(err(&bad).contains("not a valid regular expression"), "{}", bad.content);

    let before = i.version(p).await;
    let written = i.call(p, "write_file", json!({"path": "notes/todo.md", "content": "- one\n"})).await;
    assert!(ok(&written).starts_with("created `notes/todo.md`"), "{}", written.content);
    assert_eq!(written.files.len(), 1);
    assert_eq!((written.files[0].path.as_str(), written.files[0].version), ("notes/todo.md", before + 1));
    let same = i.call(p, "write_file", json!({"path": "notes/todo.md", "content": "- one\n"})).await;
    assert!(ok(&same).contains("unchanged") && same.files.is_empty(), "{}", same.content);

    // A patch over three files: changed, created, deleted.
    let patch = "--- a/src/app.py\n+++ b/src/app.py\n@@ -4,2 +4,2 @@\n def main():\n-    print('hello')\n+    print('hello, world')\n\
                 --- /dev/null\n+++ b/docs/new.md\n@@ -0,0 +1,2 @@\n+# New\n+text\n\
                 --- a/old.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-gone\n";
    let patched = i.call(p, "apply_patch", json!({"patch": patch})).await;
    ok(&patched);
    let changes: Vec<(&str, bool)> = patched.files.iter().map(|f| (f.path.as_str(), f.deleted)).collect();
    assert_eq!(changes, [("src/app.py", false), ("docs/new.md", false), ("old.txt", true)]);
    let read = i.call(p, "read_file", json!({"path": "src/app.py"})).await;
    assert!(ok(&read).contains("print('hello, world')"), "{}", read.content);
    let read = i.call(p, "read_file", json!({"path": "old.txt"})).await;
    err(&read);
    let file = i.cx.storage().open_file(&i.owner, p, "src/app.py", None).await.unwrap().file;
    assert!(
        file.message.as_deref().unwrap().starts_with("agent task ")
            && file.message.as_deref().unwrap().ends_with(": apply_patch")
    );
    assert_eq!(file.author_id, i.owner.user_id());

    // A patch whose second file does not apply writes nothing.
    let version = i.version(p).await;
    let patch = "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# Tools\n+# The tools\n\
                 --- a/src/app.py\n+++ b/src/app.py\n@@ -1 +1 @@\n-import sys\n+import re\n";
    let refused = i.call(p, "apply_patch", json!({"patch": patch})).await;
    let text = err(&refused);
    assert!(text.contains("`src/app.py`: hunk #1") && text.contains("nothing was written"), "{text}");
    assert_eq!(i.version(p).await, version);

    // Every change the tools made is in the audit log as agent_tool.
    let log = i.cx.auth().audit_log(&Principal::System, None, 100).await.unwrap();
    let agent: Vec<&str> =
        log.iter().filter(|e| e.action == "agent_tool").filter_map(|e| e.detail.as_deref()).collect();
    assert_eq!(agent.len(), 2, "{agent:?}");
    assert!(agent.iter().any(|d| d.contains(": write_file notes/todo.md")), "{agent:?}");
    assert!(agent.iter().any(|d| d.contains(": apply_patch src/app.py") && d.contains("-old.txt")), "{agent:?}");
    assert!(log.iter().filter(|e| e.action == "agent_tool").all(|e| e.target == Some(format!("project:{p}"))));
    i.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_come_back_as_tool_errors() {
    let i = instance().await;
    let big: String = (1..=5000).map(|n| format!("line number {n} of a long file\n")).collect();
    let p = i.project(None, &[("big.txt", &big), ("bin.dat", "\u{0}")]).await;
    i.cx.storage()
        .put_file(
            &i.owner,
            &client(),
            p,
            "raw.bin",
            Box::pin(futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(&[0xff, 0xfe, 0x00]))])),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let outcomes = i
        .calls(
            &i.owner,
            p,
            4096,
            &[
                ("read_file", json!("{\"path\": ")),
                ("read_file", json!({"path": "big.txt", "start_line": "ten"})),
                ("frobnicate", json!({})),
                ("read_file", json!({"path": "big.txt"})),
                ("read_file", json!({"path": "big.txt", "start_line": 10, "end_line": 20})),
                ("read_file", json!({"path": "raw.bin"})),
                ("read_file", json!({"path": "../etc/passwd"})),
                ("read_file", json!({"path": "big.txt", "start_line": 9000})),
                ("list_files", json!({"recursive": "yes"})),
            ],
        )
        .await;
    assert!(err(&outcomes[0]).contains("not valid JSON"), "{}", outcomes[0].content);
    assert!(err(&outcomes[1]).contains("`start_line`"), "{}", outcomes[1].content);
    let unknown = err(&outcomes[2]);
    assert!(unknown.contains("no tool `frobnicate`") && unknown.contains("apply_patch"), "{unknown}");
    let huge = err(&outcomes[3]);
    assert!(huge.contains("the file has 5000 lines") && huge.contains("smaller range"), "{huge}");
    assert!(ok(&outcomes[4]).contains("lines 10–20 of 5000"), "{}", outcomes[4].content);
    assert!(err(&outcomes[5]).contains("binary"), "{}", outcomes[5].content);
    err(&outcomes[6]);
    assert!(err(&outcomes[7]).contains("has 5000 lines"), "{}", outcomes[7].content);
    assert!(err(&outcomes[8]).contains("`recursive`"), "{}", outcomes[8].content);
    i.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_agent_reads_but_cannot_write_or_run() {
    let i = instance().await;
    let p = i.project(None, &[("a.txt", "one\n")]).await;
    let bob = user(&i.cx, "bob@example.com").await;
    i.cx.storage().set_member(&i.owner, &client(), p, "bob@example.com", ProjectRole::Viewer).await.unwrap();
    let version = i.version(p).await;
    let outcomes = i
        .calls(
            &bob,
            p,
            16 * 1024,
            &[
                ("read_file", json!({"path": "a.txt"})),
                ("write_file", json!({"path": "a.txt", "content": "two\n"})),
                ("apply_patch", json!({"patch": "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-one\n+two\n"})),
                ("run_command", json!({"argv": ["touch", "b.txt"]})),
                ("run_tests", json!({"command": ["true"]})),
            ],
        )
        .await;
    assert!(ok(&outcomes[0]).contains("1| one"), "{}", outcomes[0].content);
    for outcome in &outcomes[1..] {
        let text = err(outcome);
        assert!(text.contains("viewer") && text.contains("do not try again"), "{text}");
        assert!(outcome.files.is_empty());
    }
    assert_eq!(i.version(p).await, version);
    i.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_tests_run_in_the_sandbox() {
    let i = instance().await;
    let p = i.project(Some("python"), &[]).await;
    let version = i.version(p).await;
    let script =
        "import sys; print('hi'); print('oops', file=sys.stderr); open('out.txt', 'w').write('x'); sys.exit(3)";
    let outcomes = i
        .calls(
            &i.owner,
            p,
            2048,
            &[
                ("run_command", json!({"argv": ["python3", "-c", script]})),
                ("run_command", json!({"argv": ["python3", "-c", "print('y' * 50000 + 'END')"]})),
                ("run_command", json!({"argv": ["cat"], "stdin": "from stdin", "cwd": "hello"})),
                ("run_command", json!({"argv": []})),
                ("run_tests", json!({})),
            ],
        )
        .await;
    let ran = ok(&outcomes[0]);
    assert!(ran.starts_with("exit code 3"), "{ran}");
    assert!(ran.contains("stdout:\nhi") && ran.contains("stderr:\noops"), "{ran}");
    assert_eq!(outcomes[0].data.as_ref().unwrap()["exit_code"], 3);
    assert_eq!(outcomes[0].files.len(), 1, "{:?}", outcomes[0]);
    assert_eq!((outcomes[0].files[0].path.as_str(), outcomes[0].files[0].version), ("out.txt", version + 1));
    let long = ok(&outcomes[1]);
    assert!(long.len() <= 2048 && long.contains("bytes left out …]") && long.contains("yyyEND"), "{long}");
    assert!(ok(&outcomes[2]).contains("stdout:\nfrom stdin"), "{}", outcomes[2].content);
    assert!(err(&outcomes[3]).contains("argv"), "{}", outcomes[3].content);
    let tests = ok(&outcomes[4]);
    assert!(tests.starts_with("tests passed: 1 passed, 0 failed"), "{tests}");
    assert_eq!(outcomes[4].data.as_ref().unwrap()["status"], "passed");

    // A failing test is named with its output.
    let failing =
        "import unittest\n\nclass T(unittest.TestCase):\n    def test_no(self):\n        self.assertEqual(1, 2)\n";
    let outcomes = i
        .calls(
            &i.owner,
            p,
            16 * 1024,
            &[("write_file", json!({"path": "tests/test_no.py", "content": failing})), ("run_tests", json!({}))],
        )
        .await;
    let tests = ok(&outcomes[1]);
    assert!(tests.starts_with("tests failed: 1 passed, 1 failed"), "{tests}");
    assert!(tests.contains("FAILED tests.test_no.T.test_no") && tests.contains("AssertionError"), "{tests}");
    let log = i.cx.auth().audit_log(&Principal::System, None, 200).await.unwrap();
    let agent: Vec<&str> =
        log.iter().filter(|e| e.action == "agent_tool").filter_map(|e| e.detail.as_deref()).collect();
    assert!(agent.iter().any(|d| d.contains(": run_command python3 -c") && d.contains("exit code 3")), "{agent:?}");
    assert!(agent.iter().any(|d| d.contains(": run_tests python3 -m unittest -v: failed")), "{agent:?}");
    i.finish().await;
}
