//! Launch cost of the sandbox next to a bare fork+exec and bwrap, in one process, interleaved.
//!
//! Usage: sandbox-bench ROUNDS
//! Prints one JSON line: for each workload (`/bin/true`, `python3 -c 'print(1)'`), the median
//! milliseconds of each runner, and the time 100 concurrent sandboxes take.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloudx_core::sandbox::{ExecSpec, Sandbox, SandboxSettings};

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// bwrap with isolation comparable to the sandbox's: every namespace, read-only system
/// folders, fresh /proc, /dev and /tmp, a workspace, no capabilities, a clean environment.
fn bwrap(argv: &[&str], workspace: &std::path::Path) -> Command {
    let mut cmd = Command::new("bwrap");
    cmd.args([
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        "1000",
        "--gid",
        "1000",
    ])
    .args(["--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin"])
    .args(["--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64"])
    .args(["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache", "--ro-bind", "/etc/alternatives", "/etc/alternatives"])
    .args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
    .arg("--bind")
    .arg(workspace)
    .args(["/workspace", "--chdir", "/workspace", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--"])
    .args(argv)
    .env_clear()
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxSettings { scratch_dir: scratch.path().join("s"), ..SandboxSettings::default() })
        .expect("the sandbox runs on this host");
    let workspace = tempfile::tempdir().unwrap();
    let has_bwrap = Command::new("bwrap").arg("--version").output().is_ok_and(|o| o.status.success());
    let mut report = serde_json::Map::new();
    for (name, argv) in [("true", vec!["/bin/true"]), ("python", vec!["/usr/bin/python3", "-c", "print(1)"])] {
        let (mut bare, mut sandboxed, mut bwrapped) = (Vec::new(), Vec::new(), Vec::new());
        // Warm-up: page cache, the skeleton, the seccomp filters.
        for _ in 0..3 {
            runtime.block_on(sandbox.exec(ExecSpec::new(argv.clone()))).unwrap();
        }
        for _ in 0..rounds {
            let t = Instant::now();
            let status = Command::new(argv[0]).args(&argv[1..]).stdout(Stdio::null()).status().unwrap();
            bare.push(t.elapsed());
            assert!(status.success());

            // The sandboxes launched ahead are ready again (untimed, and not left to run
            // beside the next runner's timing).
            runtime.block_on(sandbox.prewarm());
            let t = Instant::now();
            let out = runtime.block_on(sandbox.exec(ExecSpec::new(argv.clone()))).unwrap();
            sandboxed.push(t.elapsed());
            assert!(out.success(), "{out:?}");
            assert!(out.warm, "the run should have used a sandbox launched ahead");

            if has_bwrap {
                let t = Instant::now();
                let status = bwrap(&argv, workspace.path()).status().unwrap();
                bwrapped.push(t.elapsed());
                assert!(status.success(), "bwrap failed");
            }
        }
        let mut entry = serde_json::Map::new();
        entry.insert("bare_ms".into(), median(bare).into());
        entry.insert("sandbox_ms".into(), median(sandboxed).into());
        if has_bwrap {
            entry.insert("bwrap_ms".into(), median(bwrapped).into());
        }
        report.insert(name.into(), entry.into());
    }
    // 100 at once.
    let t = Instant::now();
    runtime.block_on(async {
        let runs: Vec<_> = (0..100)
            .map(|_| {
                let sb = sandbox.clone();
                tokio::spawn(async move { sb.exec(ExecSpec::new(["/bin/true"])).await })
            })
            .collect();
        for run in runs {
            assert!(run.await.unwrap().unwrap().success());
        }
    });
    report.insert("concurrent_100_ms".into(), (t.elapsed().as_secs_f64() * 1000.0).into());
    use std::io::Write as _;
    writeln!(std::io::stdout(), "{}", serde_json::Value::Object(report)).expect("stdout");
}
