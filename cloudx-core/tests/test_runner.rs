//! The `test_runner` job kind end to end: projects made from the built-in templates, a worker
//! with the built-in handlers, the real sandbox and the real toolchains of the host.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudx_core::auth::NewUser;
use cloudx_core::auth::audit::Client;
use cloudx_core::config::ConfigLoader;
use cloudx_core::queue::{Job, JobStatus, NewJob, TestLanguage, TestReport, TestStatus, Worker, WorkerOptions};
use cloudx_core::sandbox::{Bind, SandboxPolicy};
use cloudx_core::storage::{NewProject, PutOptions};
use cloudx_core::{Cloudx, Principal};
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
    Client::new(Some("127.0.0.1".into()), Some("test-runner-tests"))
}

/// An instance whose projects may bind `bindable`, with an account and a running worker.
async fn instance(bindable: &[PathBuf]) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![("CLOUDX_DATA_DIR".to_owned(), dir.path().to_str().unwrap().to_owned())];
    if !bindable.is_empty() {
        let list: Vec<String> = bindable.iter().map(|p| p.display().to_string()).collect();
        env.push(("CLOUDX_SANDBOX__BINDABLE".into(), list.join(",")));
    }
    let cx = Cloudx::connect(ConfigLoader::new().env(env).load().unwrap()).await.unwrap();
    let new = NewUser {
        email: "ada@example.com".into(),
        password: "Correct-Horse-Battery-7781".into(),
        display_name: "Ada".into(),
    };
    let user = cx.auth().register(new, None, &client()).await.unwrap();
    let owner = Principal::user(user.id, user.role);
    let options = WorkerOptions { poll: Duration::from_millis(50), ..WorkerOptions::default() };
    let worker = Worker::new(cx.queue().clone(), cx.builtin_handlers(), options);
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    Instance { cx, owner, stop, worker, _dir: dir }
}

impl Instance {
    /// A project from `template`, with `files` written over it.
    async fn project(&self, template: &str, files: &[(&str, &str)]) -> Uuid {
        let new = NewProject { name: template.into(), template: Some(template.into()), ..Default::default() };
        let p = self.cx.storage().create_project(&self.owner, &client(), new).await.unwrap().id;
        for (path, content) in files {
            let body: Bytes = Bytes::copy_from_slice(content.as_bytes());
            let stream = Box::pin(futures_util::stream::iter([Ok::<_, std::io::Error>(body)]));
            self.cx.storage().put_file(&self.owner, &client(), p, path, stream, PutOptions::default()).await.unwrap();
        }
        p
    }

    async fn submit(&self, project: Uuid, payload: Value) -> Uuid {
        let new = NewJob { project: Some(project), ..NewJob::new("test_runner", payload) };
        self.cx.submit_job(&self.owner, &client(), new).await.unwrap().0.id
    }

    /// Waits (at most `limit`) for the job to reach `status`.
    async fn wait(&self, id: Uuid, status: JobStatus, limit: Duration) -> Job {
        let deadline = Instant::now() + limit;
        loop {
            let job = self.cx.job(&self.owner, id).await.unwrap();
            if job.status == status {
                return job;
            }
            assert!(
                Instant::now() < deadline && !matches!(job.status, JobStatus::Dead | JobStatus::Cancelled),
                "job {id} is {:?}, not {status:?}: {:?} {:?}",
                job.status,
                job.last_error,
                job.result
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a test job to its end and returns its report.
    async fn run(&self, project: Uuid, payload: Value, limit: Duration) -> (Uuid, TestReport) {
        let id = self.submit(project, payload).await;
        let job = self.wait(id, JobStatus::Succeeded, limit).await;
        (id, serde_json::from_value(job.result.unwrap()).unwrap())
    }

    /// The job's output events of `kind`, joined.
    async fn output(&self, id: Uuid, kind: &str) -> String {
        let events = self.cx.job_events(&self.owner, id, 0, 10_000).await.unwrap();
        events.iter().filter(|e| e.kind == kind).map(|e| e.data.as_str().unwrap().to_owned()).collect()
    }

    async fn finish(self) {
        self.stop.cancel();
        self.worker.await.unwrap().unwrap();
    }
}

const MORE_PYTHON_TESTS: &str = r#"import unittest

from hello import greet


class MoreTest(unittest.TestCase):
    def test_shouts(self):
        print("about to compare")
        self.assertEqual(greet("cloudx").upper(), "Hello, CLOUDX!")

    @unittest.skip("not yet")
    def test_later(self):
        pass
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_python_test_is_named_with_its_output() {
    let i = instance(&[]).await;
    let p = i.project("python", &[("tests/test_more.py", MORE_PYTHON_TESTS)]).await;
    let (id, report) = i.run(p, json!({}), Duration::from_secs(30)).await;
    assert_eq!(report.status, TestStatus::Failed, "{report:?}");
    assert_eq!(report.language, Some(TestLanguage::Python));
    assert_eq!(report.command, ["python3", "-m", "unittest", "-v"]);
    assert_eq!((report.passed, report.failed, report.skipped), (1, 1, 1), "{report:?}");
    assert_eq!((report.exit_code, report.version, report.truncated), (Some(1), 2, false));
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].name, "tests.test_more.MoreTest.test_shouts");
    let output = &report.failures[0].output;
    assert!(output.contains("AssertionError: 'HELLO, CLOUDX!' != 'Hello, CLOUDX!'"), "{output}");
    assert!(report.duration_ms > 0);
    // The output streamed as the job's events, as sandbox_exec's does.
    assert!(i.output(id, "stderr").await.contains("test_shouts (tests.test_more.MoreTest.test_shouts) ... FAIL"));
    assert!(i.output(id, "stdout").await.contains("about to compare"));
    i.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_template_passes() {
    let i = instance(&[]).await;
    let p = i.project("node", &[]).await;
    let (id, report) = i.run(p, json!({}), Duration::from_secs(30)).await;
    assert_eq!(report.status, TestStatus::Passed, "{report:?}");
    assert_eq!(report.language, Some(TestLanguage::Node));
    assert_eq!((report.passed, report.failed, report.skipped, report.exit_code), (1, 0, 0, Some(0)));
    assert!(report.failures.is_empty() && report.message.is_none(), "{report:?}");
    assert!(i.output(id, "stdout").await.contains("ok 1 - greets by name"));
    i.finish().await;
}

/// The host's cargo `bin` folder and rustup home.
fn host_rust() -> (PathBuf, PathBuf) {
    let out = std::process::Command::new("rustup").args(["show", "home"]).output().expect("rustup is needed here");
    assert!(out.status.success(), "rustup show home: {}", String::from_utf8_lossy(&out.stderr));
    let rustup_home = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let bin = cargo_home.join("bin");
    assert!(bin.join("cargo").exists(), "no cargo in {}", bin.display());
    (bin, rustup_home)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_runs_with_the_bound_toolchain_and_says_when_it_is_missing() {
    let (cargo_bin, rustup_home) = host_rust();
    let i = instance(&[cargo_bin.clone(), rustup_home.clone()]).await;
    let p = i.project("rust", &[]).await;

    // Without binds: cargo is not in the sandbox; the job succeeds and says what to bind.
    let (_, report) = i.run(p, json!({}), Duration::from_secs(30)).await;
    assert_eq!(report.status, TestStatus::ToolchainMissing, "{report:?}");
    assert_eq!((report.language, report.exit_code, report.duration_ms), (Some(TestLanguage::Rust), None, 0));
    assert_eq!(report.command[..3], ["cargo", "test", "--offline"]);
    let message = report.message.unwrap();
    assert!(message.contains("`cargo` is not in the sandbox") && message.contains("binds"), "{message}");
    assert!(message.contains(&cargo_bin.display().to_string()), "names the bindable folders: {message}");

    // Cargo's bin folder alone: rustup's proxy needs its home.
    let only_cargo =
        SandboxPolicy { binds: vec![Bind { source: cargo_bin.clone(), target: None }], ..SandboxPolicy::default() };
    i.cx.set_sandbox_policy(&i.owner, &client(), p, only_cargo).await.unwrap();
    let (_, report) = i.run(p, json!({}), Duration::from_secs(30)).await;
    assert_eq!(report.status, TestStatus::ToolchainMissing, "{report:?}");
    assert!(report.message.unwrap().contains("rustup's home"));

    // Both bound: the tests build and pass, offline, in the sandbox.
    let both = SandboxPolicy {
        binds: vec![Bind { source: cargo_bin, target: None }, Bind { source: rustup_home, target: None }],
        ..SandboxPolicy::default()
    };
    i.cx.set_sandbox_policy(&i.owner, &client(), p, both).await.unwrap();
    let (id, report) = i.run(p, json!({}), Duration::from_secs(120)).await;
    assert_eq!(report.status, TestStatus::Passed, "{report:?}\n{}", i.output(id, "stderr").await);
    // The unit test and nothing else (the template has no doc tests).
    assert_eq!((report.passed, report.failed, report.skipped, report.exit_code), (1, 0, 0, Some(0)), "{report:?}");
    assert!(i.output(id, "stdout").await.contains("test tests::greets_by_name ... ok"));
    i.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_command_overrides_detection_and_bad_payloads_die_by_name() {
    let i = instance(&[]).await;
    let p = i.project("python", &[("tests/test_more.py", MORE_PYTHON_TESTS)]).await;
    // Only the template's own test module: it passes, where the detected command would fail.
    let command = ["python3", "-m", "unittest", "-v", "tests.test_hello"];
    let (_, report) = i.run(p, json!({"command": command, "version": 1}), Duration::from_secs(30)).await;
    assert_eq!(report.status, TestStatus::Passed, "{report:?}");
    assert_eq!((report.command.clone(), report.version), (command.map(String::from).to_vec(), 1));
    assert_eq!((report.passed, report.failed, report.skipped), (1, 0, 0));
    // A command whose output says nothing readable and which fails: an error, with its output.
    let (_, report) =
        i.run(p, json!({"command": ["sh", "-c", "echo no such thing >&2; exit 3"]}), Duration::from_secs(30)).await;
    assert_eq!(
        (report.status, report.language, report.exit_code),
        (TestStatus::Error, Some(TestLanguage::Python), Some(3))
    );
    assert!(report.message.unwrap().contains("no such thing"));
    // A run that outlives its wall-clock limit (lowered by the payload).
    let forever = json!({"command": ["python3", "-c", "import time; time.sleep(30)"], "limits": {"wall_time": "1s"}});
    let (_, report) = i.run(p, forever, Duration::from_secs(30)).await;
    assert_eq!((report.status, report.exit_code), (TestStatus::TimedOut, None), "{report:?}");
    assert!(report.message.unwrap().contains("wall-clock limit (1s"));
    // A program the sandbox does not have.
    let (_, report) = i.run(p, json!({"command": ["pytest-9000"]}), Duration::from_secs(30)).await;
    assert_eq!(report.status, TestStatus::ToolchainMissing, "{report:?}");

    for (payload, named) in [
        (json!({"commands": ["x"]}), "unknown field `commands`"),
        (json!({"command": "python3 -m unittest"}), "command: invalid type"),
        (json!({"command": []}), "command: give a program"),
        (json!({"limits": {"memory": "lots"}}), "limits.memory"),
    ] {
        let id = i.submit(p, payload.clone()).await;
        let dead = i.wait(id, JobStatus::Dead, Duration::from_secs(10)).await;
        let error = dead.last_error.unwrap_or_default();
        assert!(error.contains(named) && dead.attempts == 1, "{payload}: {error}");
    }
    i.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_test_job_kills_its_sandbox() {
    let i = instance(&[]).await;
    // A test that waits on a child with a command line of its own, to find it on the host.
    let marker = format!("61.{}", Uuid::now_v7().as_u128() % 1_000_000_007);
    let slow = format!(
        "import subprocess, unittest\n\n\nclass SlowTest(unittest.TestCase):\n    def test_waits(self):\n        \
         subprocess.run([\"sleep\", \"{marker}\"])\n"
    );
    let p = i.project("python", &[("tests/test_slow.py", &slow)]).await;
    let id = i.submit(p, json!({})).await;
    let wanted = format!("sleep\0{marker}\0");
    let sleeping = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .any(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted.as_bytes()))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sleeping() {
        assert!(Instant::now() < deadline, "the test never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asked = Instant::now();
    i.cx.cancel_job(&i.owner, &client(), id).await.unwrap();
    i.wait(id, JobStatus::Cancelled, Duration::from_secs(10)).await;
    assert!(asked.elapsed() < Duration::from_secs(5), "cancelled in {:?}", asked.elapsed());
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleeping() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!sleeping(), "the cancelled job's sandbox still runs");
    i.finish().await;
}
