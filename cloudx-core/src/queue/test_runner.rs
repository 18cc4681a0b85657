//! The `test_runner` job kind: a project's tests run in the sandbox and read into a summary.
//!
//! The payload is a [`TestRun`]. The test command is the payload's `command`, or is detected from
//! the project's files at the version run: `Cargo.toml` → `cargo test`, `package.json` →
//! `node --test`, `pyproject.toml`, `setup.py` or Python files under `tests/` → `python3 -m
//! unittest` (`pytest` when the project configures it). The command runs as a `sandbox_exec`
//! run does (same rights, the project's sandbox policy, its output as `stdout` / `stderr`
//! events, a cancel kills the sandbox), and its output is read into a [`TestReport`]: counts,
//! the failing tests with their output, and how the run ended.
//!
//! # Toolchains
//!
//! The sandbox shows the host's system folders (`/usr`, `/bin`, ...) and the folders the
//! project's policy binds (`binds`, each within `sandbox.bindable`). Python and node usually
//! live in `/usr/bin`; cargo usually lives in a user's `~/.cargo` with rustup's `~/.rustup`,
//! which a project must bind. Before running, the program is looked for on the `PATH` the run
//! will have — the system folders, after the `bin` folder of every bind — and when it is not
//! there the job *succeeds* with the status `toolchain_missing`, saying what to bind; a rustup
//! proxy (`cargo` linking to `rustup`) also needs rustup's home bound (found by its
//! `toolchains` folder and `settings.toml`, and given to the run as `RUSTUP_HOME`).
//!
//! # Limits
//!
//! A test run gets the project's limits (its policy's, else the configured defaults), lowered
//! by the payload's `limits`. `cargo test` compiles first: it can need more wall-clock time,
//! processes and memory than a plain run; raise them in the project's policy (up to
//! `sandbox.max_*`). Cargo's home and build folder are `/tmp/cargo-home` and
//! `/workspace/target` (a fresh checkout, removed after the run), and `--offline` is passed: the
//! sandbox has no network.

mod parse;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::handlers::{job_error, run_streaming, submitter};
use super::{JobContext, JobError};
use crate::cloudx::Cloudx;
use crate::principal::Principal;
use crate::sandbox::{Bind, DEFAULT_PATH, ExecOutcome, Limits, ProjectExec, SYSTEM_FOLDERS};

/// Failures kept in a report; the rest are counted, not listed.
pub const MAX_FAILURES: usize = 50;
/// Bytes of output kept per failure.
pub const MAX_FAILURE_OUTPUT: usize = 8 * 1024;
/// Bytes of the end of the output kept in a report's `message` when no result could be read.
const MESSAGE_TAIL: usize = 2 * 1024;

/// The payload of a `test_runner` job. Every field is optional: `{}` runs the detected tests
/// of the latest version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TestRun {
    /// The test command (a program and its arguments, never a shell string), instead of the
    /// detected one. Its output is read by the program's kind (`cargo`, `node`/`npm`,
    /// `python*`/`pytest`), else by the project's language.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The project version to test (default: the latest).
    #[serde(default)]
    pub version: Option<i64>,
    /// Limits, each within the project's (which fill in what is left out), as for `sandbox_exec`.
    #[serde(default)]
    pub limits: Limits,
    /// Environment variables, over the run's defaults (`PATH` with the binds' `bin` folders,
    /// cargo's folders, ...).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The kind of project, which decides the command and how its output is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TestLanguage {
    /// `unittest` or `pytest`.
    Python,
    /// `cargo test` (libtest).
    Rust,
    /// `node --test` (TAP).
    Node,
}

/// How a test run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TestStatus {
    /// The command exited with 0 and no test failed.
    Passed,
    /// A test failed, or the command exited with an error after some tests ran.
    Failed,
    /// The command could not run, or exited with an error and no test result could be read
    /// from its output (a build error, say): see `message`.
    Error,
    /// The command's program is not in the sandbox: `message` says what to bind.
    ToolchainMissing,
    /// The run reached its wall-clock limit; the counts are those read until then.
    TimedOut,
}

/// A failing test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TestFailure {
    /// Its name as the tool gives it (`tests.test_x.Case.test_y`, `module::test`,
    /// `suite > test`, a pytest node id).
    pub name: String,
    /// What the tool showed for it (assertion, traceback, captured output), at most
    /// [`MAX_FAILURE_OUTPUT`] bytes.
    pub output: String,
}

/// The result of a `test_runner` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TestReport {
    /// How the run ended.
    pub status: TestStatus,
    /// The kind of project detected (or of the given command's program); none when unknown.
    pub language: Option<TestLanguage>,
    /// The command run (or that would have run).
    pub command: Vec<String>,
    /// The project version tested.
    pub version: i64,
    /// Tests passed.
    pub passed: u64,
    /// Tests failed (errors included).
    pub failed: u64,
    /// Tests skipped (ignored, to-do).
    pub skipped: u64,
    /// The run's wall-clock time, in milliseconds (0 when nothing ran).
    pub duration_ms: u64,
    /// The command's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The failing tests, at most [`MAX_FAILURES`], in the tool's order.
    pub failures: Vec<TestFailure>,
    /// Whether failures or their output were cut to the caps, or the run's output to its
    /// `output` limit (then the counts may be short).
    pub truncated: bool,
    /// What to know beyond the counts: what to bind, why nothing could be read, which limit
    /// ended the run.
    pub message: Option<String>,
}

/// A test command, and how to read its output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    language: Option<TestLanguage>,
    command: Vec<String>,
}

/// The test command the project's files call for (`files`: every path at the version run;
/// `config`: the text of `pyproject.toml`, `setup.cfg` and `tox.ini`, where they exist).
fn detect(files: &[String], config: &dyn Fn(&str) -> Option<String>) -> Option<Plan> {
    let has = |path: &str| files.iter().any(|f| f == path);
    let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    if has("Cargo.toml") {
        return Some(Plan {
            language: Some(TestLanguage::Rust),
            command: words(&["cargo", "test", "--offline", "--no-fail-fast"]),
        });
    }
    if has("package.json") {
        return Some(Plan {
            language: Some(TestLanguage::Node),
            command: words(&["node", "--test", "--test-reporter=tap"]),
        });
    }
    let python_tests = files
        .iter()
        .any(|f| f.ends_with(".py") && (f.starts_with("tests/") || f.starts_with("test/") || is_test_file(f)));
    if has("pyproject.toml") || has("setup.py") || has("setup.cfg") || python_tests {
        let pytest = has("pytest.ini")
            || has("conftest.py")
            || has("tests/conftest.py")
            || config("pyproject.toml").is_some_and(|t| pyproject_asks_for_pytest(&t))
            || config("setup.cfg").is_some_and(|t| t.contains("[tool:pytest]"))
            || config("tox.ini").is_some_and(|t| t.contains("[pytest]"));
        let command = if pytest {
            // No cache folder: the workspace is thrown away.
            words(&["python3", "-m", "pytest", "-v", "-p", "no:cacheprovider"])
        } else {
            words(&["python3", "-m", "unittest", "-v"])
        };
        return Some(Plan { language: Some(TestLanguage::Python), command });
    }
    None
}

/// `test_*.py` at the root.
fn is_test_file(path: &str) -> bool {
    !path.contains('/') && path.starts_with("test_") && path.ends_with(".py")
}

/// Whether `pyproject.toml` configures pytest (`[tool.pytest.ini_options]`) or depends on it.
fn pyproject_asks_for_pytest(text: &str) -> bool {
    let Ok(doc) = text.parse::<toml::Table>() else { return false };
    let configured = doc.get("tool").and_then(|t| t.get("pytest")).is_some();
    let mentions = |v: Option<&toml::Value>| {
        v.and_then(toml::Value::as_array).is_some_and(|deps| {
            deps.iter().filter_map(toml::Value::as_str).any(|d| d.trim_start().starts_with("pytest"))
        })
    };
    let project = doc.get("project");
    let optional = project.and_then(|p| p.get("optional-dependencies")).and_then(toml::Value::as_table);
    let groups = doc.get("dependency-groups").and_then(toml::Value::as_table);
    configured
        || mentions(project.and_then(|p| p.get("dependencies")))
        || optional.is_some_and(|t| t.values().any(|v| mentions(Some(v))))
        || groups.is_some_and(|t| t.values().any(|v| mentions(Some(v))))
}

/// How the output of `command` is read: by its program, else by the project's language.
fn language_of(command: &[String], project: Option<TestLanguage>) -> Option<TestLanguage> {
    let program = command.first().map(|p| p.rsplit('/').next().unwrap_or(p)).unwrap_or_default();
    match program {
        "cargo" => Some(TestLanguage::Rust),
        "node" | "npm" | "npx" => Some(TestLanguage::Node),
        p if p.starts_with("python") || p == "pytest" => Some(TestLanguage::Python),
        _ => project,
    }
}

/// Where a path inside the sandbox is on the host: under the bind with the longest target
/// holding it, else in a system folder; `None` for anywhere else.
fn host_path(inside: &Path, binds: &[Bind]) -> Option<PathBuf> {
    let bound = binds
        .iter()
        .filter_map(|b| {
            let target = b.target.as_deref().unwrap_or(&b.source);
            inside.strip_prefix(target).ok().map(|rest| (target.components().count(), b.source.join(rest)))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, path)| path);
    bound.or_else(|| SYSTEM_FOLDERS.iter().any(|d| inside.starts_with(d)).then(|| inside.to_path_buf()))
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The run's environment: `PATH` with each bind's `bin` folder before the system folders,
/// `RUSTUP_HOME` at a bound rustup home, cargo's writable folders and quieter tools; `given`
/// over all of it.
fn environment(binds: &[Bind], given: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut path: Vec<String> = Vec::new();
    for bind in binds {
        let target = bind.target.as_deref().unwrap_or(&bind.source);
        if bind.source.join("bin").is_dir() {
            path.push(target.join("bin").display().to_string());
        } else if bind.source.file_name().is_some_and(|n| n == "bin") {
            path.push(target.display().to_string());
        }
        if bind.source.join("toolchains").is_dir() && bind.source.join("settings.toml").is_file() {
            env.insert("RUSTUP_HOME".to_owned(), target.display().to_string());
        }
    }
    path.push(DEFAULT_PATH.to_owned());
    env.insert("PATH".to_owned(), path.join(":"));
    for (key, value) in [
        ("CARGO_HOME", "/tmp/cargo-home"),
        ("CARGO_TARGET_DIR", "/workspace/target"),
        ("CARGO_TERM_COLOR", "never"),
        ("CARGO_INCREMENTAL", "0"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONUNBUFFERED", "1"),
        ("NO_COLOR", "1"),
    ] {
        env.insert(key.to_owned(), value.to_owned());
    }
    env.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Why `program` cannot start in the sandbox, when the host can tell: not on the run's
/// `PATH` (or not at its absolute path), or a rustup proxy without rustup's home.
fn missing_toolchain(
    program: &str,
    env: &BTreeMap<String, String>,
    binds: &[Bind],
    bindable: &[PathBuf],
) -> Option<String> {
    let candidates: Vec<PathBuf> = if program.starts_with('/') {
        vec![PathBuf::from(program)]
    } else if program.contains('/') {
        // In the project's files: the run says so if it is not there.
        return None;
    } else {
        let path = env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
        path.split(':').filter(|d| d.starts_with('/')).map(|d| Path::new(d).join(program)).collect()
    };
    let bindable = if bindable.is_empty() {
        "none on this instance: an administrator adds them to sandbox.bindable".to_owned()
    } else {
        bindable.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    };
    let Some(found) = candidates.iter().filter_map(|c| host_path(c, binds)).find(|p| executable(p)) else {
        return Some(format!(
            "`{program}` is not in the sandbox (looked in {}). Bind the folder that holds it read-only into the \
             project's runs: the project's sandbox policy `binds` (e.g. {{\"source\": \"/opt/toolchain\"}}; a bind's \
             `bin` folder goes on PATH), with folders inside sandbox.bindable ({bindable})",
            if program.starts_with('/') {
                program.to_owned()
            } else {
                format!("PATH {}", env.get("PATH").map_or(DEFAULT_PATH, String::as_str))
            }
        ));
    };
    let proxy = std::fs::canonicalize(&found).ok().is_some_and(|real| real.file_name().is_some_and(|n| n == "rustup"));
    if proxy && !env.contains_key("RUSTUP_HOME") {
        return Some(format!(
            "`{program}` is rustup's proxy, which needs rustup's home (`rustup show home` on the host, such as \
             ~/.rustup): bind it too in the project's sandbox policy `binds`, inside sandbox.bindable ({bindable})"
        ));
    }
    None
}

/// `text` cut to at most `max` bytes on a character boundary, and whether it was cut.
fn head(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_owned(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (format!("{}…", &text[..end]), true)
}

/// The last `max` bytes of `text` (on a character boundary).
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Reads a run's outcome into a report.
fn report(plan: &Plan, version: i64, outcome: &ExecOutcome) -> TestReport {
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let stderr = String::from_utf8_lossy(&outcome.stderr);
    let text = format!("{stdout}\n{stderr}");
    let parsed = match plan.language {
        Some(TestLanguage::Rust) => parse::cargo(&text),
        Some(TestLanguage::Python) => parse::python(&text),
        Some(TestLanguage::Node) => parse::node_tap(&text),
        None => parse::Parsed::default(),
    };
    let mut truncated = outcome.stdout_truncated || outcome.stderr_truncated || parsed.failures.len() > MAX_FAILURES;
    let failures = parsed
        .failures
        .iter()
        .take(MAX_FAILURES)
        .map(|(name, output)| {
            let (output, cut) = head(output, MAX_FAILURE_OUTPUT);
            truncated |= cut;
            TestFailure { name: name.clone(), output }
        })
        .collect();
    let ended = match (outcome.exit_code, outcome.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "no exit code".to_owned(),
    };
    let (status, mut message) = if outcome.timed_out {
        (
            TestStatus::TimedOut,
            Some(format!(
                "the run reached its wall-clock limit ({}; the project's sandbox policy sets it, up to sandbox.max_wall_time)",
                humantime::format_duration(outcome.isolation.limits.wall_time)
            )),
        )
    } else if parsed.seen {
        match (parsed.failed, outcome.success()) {
            (0, true) => (TestStatus::Passed, None),
            (0, false) => (
                TestStatus::Failed,
                Some(format!("the command ended with {ended} although no test failed: see its output")),
            ),
            _ => (TestStatus::Failed, None),
        }
    } else if outcome.success() {
        (TestStatus::Passed, None)
    } else {
        let end = if stderr.trim().is_empty() { &stdout } else { &stderr };
        (
            TestStatus::Error,
            Some(format!(
                "the command ended with {ended} and no test result could be read from its output, which ends with:\n{}",
                tail(end.trim_end(), MESSAGE_TAIL)
            )),
        )
    };
    if let Some(limit) = outcome.limit.filter(|_| !outcome.timed_out) {
        let note = format!(
            "the run hit its {} limit (the project's sandbox policy sets it)",
            serde_json::to_value(limit).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        );
        message = Some(match message {
            Some(m) => format!("{m}; {note}"),
            None => note,
        });
    }
    TestReport {
        status,
        language: plan.language,
        command: plan.command.clone(),
        version,
        passed: parsed.passed,
        failed: parsed.failed,
        skipped: parsed.skipped,
        duration_ms: u64::try_from(outcome.wall_time.as_millis()).unwrap_or(u64::MAX),
        exit_code: outcome.exit_code,
        failures,
        truncated,
        message,
    }
}

/// The text of a small file of the project at `version`, when it exists (at most 1 MiB read).
async fn small_file(cx: &Cloudx, actor: &Principal, project: Uuid, path: &str, version: i64) -> Option<String> {
    let file = cx.storage().open_file(actor, project, path, Some(version)).await.ok()?;
    if file.file.size > 1 << 20 {
        return None;
    }
    let chunks: Vec<bytes::Bytes> = file.stream(None).await.ok()?.try_collect().await.ok()?;
    String::from_utf8(chunks.concat()).ok()
}

fn fatal(what: impl Into<String>) -> JobError {
    JobError::Fatal(what.into())
}

/// The `test_runner` handler.
pub(super) async fn test_runner(cx: Cloudx, job: JobContext) -> Result<serde_json::Value, JobError> {
    let project = job.job.project.ok_or_else(|| fatal("the job names no project"))?;
    let request: TestRun = serde_path_to_error::deserialize(&job.job.payload).map_err(|e| {
        let at = e.path().to_string();
        let field = if at == "." { String::new() } else { format!("{at}: ") };
        fatal(format!("the payload is not a test run (command, version, limits, env): {field}{}", e.inner()))
    })?;
    check_command(&request)?;
    let actor = submitter(&cx, &job.job).await?;
    let report = run_tests(&cx, &job, &actor, project, request).await?;
    serde_json::to_value(&report).map_err(|e| fatal(format!("the report cannot be stored: {e}")))
}

/// A given command must name a program.
fn check_command(request: &TestRun) -> Result<(), JobError> {
    if request.command.as_ref().is_some_and(|c| c.first().is_none_or(String::is_empty)) {
        return Err(fatal("command: give a program and its arguments, or leave it out to detect the tests"));
    }
    Ok(())
}

/// Runs the project's tests as `actor` within `job` (the `test_runner` handler after its payload
/// is read; the agent's `run_tests` tool): the command given or detected at the version run,
/// its output streamed as the job's `stdout` / `stderr` events, read into a report. A missing
/// toolchain is a report (status `toolchain_missing`), not an error.
///
/// # Errors
/// [`JobError::Fatal`] for a command that names no program or tests that cannot be detected,
/// the errors of listing the project and of [`run_streaming`] (`Retry("stopped")` when the job
/// is cancelled).
pub(crate) async fn run_tests(
    cx: &Cloudx,
    job: &JobContext,
    actor: &Principal,
    project: Uuid,
    request: TestRun,
) -> Result<TestReport, JobError> {
    check_command(&request)?;
    let tree = cx.storage().list_files(actor, project, "", request.version, true).await.map_err(|e| job_error(&e))?;
    // Everything that follows uses this version, whatever is committed meanwhile.
    let version = tree.version;
    let files: Vec<String> = tree.entries.into_iter().filter(|e| !e.folder).map(|e| e.path).collect();
    let mut configs = BTreeMap::new();
    for name in ["pyproject.toml", "setup.cfg", "tox.ini"] {
        if files.iter().any(|f| f == name)
            && let Some(text) = small_file(cx, actor, project, name, version).await
        {
            configs.insert(name, text);
        }
    }
    let detected = detect(&files, &|name| configs.get(name).cloned());
    let plan = match (request.command, detected) {
        (Some(command), detected) => {
            Plan { language: language_of(&command, detected.and_then(|d| d.language)), command }
        }
        (None, Some(plan)) => plan,
        (None, None) => {
            return Err(fatal(format!(
                "command: the project's tests cannot be detected at version {version} (no Cargo.toml, package.json, \
                 pyproject.toml, setup.py or Python tests at its root); give the command"
            )));
        }
    };
    let policy = cx.sandbox_policy(actor, project).await.map_err(|e| job_error(&e))?;
    let env = environment(&policy.binds, &request.env);
    if let Some(message) = missing_toolchain(&plan.command[0], &env, &policy.binds, &cx.config().sandbox.bindable) {
        return Ok(TestReport {
            status: TestStatus::ToolchainMissing,
            language: plan.language,
            command: plan.command,
            version,
            passed: 0,
            failed: 0,
            skipped: 0,
            duration_ms: 0,
            exit_code: None,
            failures: Vec::new(),
            truncated: false,
            message: Some(message),
        });
    }
    let exec = ProjectExec {
        argv: plan.command.clone(),
        env,
        limits: request.limits,
        version: Some(version),
        ..ProjectExec::default()
    };
    let run = run_streaming(cx, job, actor, project, exec).await?;
    Ok(report(&plan, run.version, &run.outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_command_follows_the_projects_files() {
        let none = |_: &str| None;
        let rust = detect(&paths(&["Cargo.toml", "src/lib.rs", "package.json"]), &none).unwrap();
        assert_eq!(rust.language, Some(TestLanguage::Rust));
        assert_eq!(rust.command[..2], ["cargo", "test"]);
        assert!(rust.command.contains(&"--offline".to_owned()));
        let node = detect(&paths(&["package.json", "test/a.test.js"]), &none).unwrap();
        assert_eq!(node.command, ["node", "--test", "--test-reporter=tap"]);
        for files in [&["pyproject.toml"][..], &["setup.py"], &["tests/test_a.py"], &["test_a.py"]] {
            let python = detect(&paths(files), &none).unwrap();
            assert_eq!(python.command, ["python3", "-m", "unittest", "-v"], "{files:?}");
        }
        assert_eq!(detect(&paths(&["README.md", "src/a.py"]), &none), None);
        // pytest when the project asks for it.
        let pyproject = |text: &'static str| move |name: &str| (name == "pyproject.toml").then(|| text.to_owned());
        let files = paths(&["pyproject.toml", "tests/test_a.py"]);
        for text in [
            "[tool.pytest.ini_options]\naddopts = \"-q\"\n",
            "[project]\nname = \"a\"\n[project.optional-dependencies]\ntest = [\"pytest>=8\"]\n",
            "[dependency-groups]\ndev = [\"pytest\"]\n",
        ] {
            assert_eq!(detect(&files, &pyproject(text)).unwrap().command[2], "pytest", "{text}");
        }
        assert_eq!(detect(&files, &pyproject("[project]\nname = \"a\"\n")).unwrap().command[2], "unittest");
        assert_eq!(detect(&paths(&["setup.py", "conftest.py"]), &none).unwrap().command[2], "pytest");
    }

    #[test]
    fn a_given_commands_output_is_read_by_its_program() {
        let words = |w: &[&str]| paths(w);
        assert_eq!(language_of(&words(&["/usr/bin/python3.11", "-m", "pytest"]), None), Some(TestLanguage::Python));
        assert_eq!(language_of(&words(&["npm", "test"]), Some(TestLanguage::Python)), Some(TestLanguage::Node));
        assert_eq!(language_of(&words(&["make", "check"]), Some(TestLanguage::Rust)), Some(TestLanguage::Rust));
        assert_eq!(language_of(&words(&["make", "check"]), None), None);
    }

    #[test]
    fn binds_put_their_bin_folders_on_path_and_the_payload_has_the_last_word() {
        let home = tempfile::tempdir().unwrap();
        let cargo = home.path().join("cargo");
        let rustup = home.path().join("rustup");
        std::fs::create_dir_all(cargo.join("bin")).unwrap();
        std::fs::create_dir_all(rustup.join("toolchains")).unwrap();
        std::fs::write(rustup.join("settings.toml"), "").unwrap();
        let binds = vec![
            Bind { source: cargo.clone(), target: Some("/opt/cargo".into()) },
            Bind { source: rustup.clone(), target: None },
        ];
        let env = environment(&binds, &BTreeMap::new());
        assert_eq!(env["PATH"], format!("/opt/cargo/bin:{DEFAULT_PATH}"));
        assert_eq!(env["RUSTUP_HOME"], rustup.display().to_string());
        assert_eq!(env["CARGO_HOME"], "/tmp/cargo-home");
        let given = BTreeMap::from([("PATH".to_owned(), "/bin".to_owned())]);
        assert_eq!(environment(&binds, &given)["PATH"], "/bin");
    }

    #[test]
    fn a_program_is_looked_for_where_the_sandbox_will_see_it() {
        let home = tempfile::tempdir().unwrap();
        let tool = home.path().join("tool");
        std::fs::create_dir_all(tool.join("bin")).unwrap();
        let program = tool.join("bin/runtests");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        let bindable = vec![home.path().to_path_buf()];
        let binds = vec![Bind { source: tool.clone(), target: Some("/opt/tool".into()) }];
        let env = environment(&binds, &BTreeMap::new());
        // Not executable yet: missing, and the message says how to bind and where.
        let missing = missing_toolchain("runtests", &env, &binds, &bindable).unwrap();
        assert!(missing.contains("`runtests` is not in the sandbox") && missing.contains("binds"), "{missing}");
        assert!(missing.contains(&home.path().display().to_string()), "{missing}");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(missing_toolchain("runtests", &env, &binds, &bindable), None);
        assert_eq!(missing_toolchain("/opt/tool/bin/runtests", &env, &binds, &bindable), None);
        // Without the bind: not there, even though the host has it.
        let bare = environment(&[], &BTreeMap::new());
        assert!(missing_toolchain("runtests", &bare, &[], &bindable).is_some());
        assert!(missing_toolchain(&program.display().to_string(), &bare, &[], &[]).unwrap().contains("none on this"));
        // System folders are always there; files of the project are the run's to find.
        assert_eq!(missing_toolchain("sh", &bare, &[], &[]), None);
        assert_eq!(missing_toolchain("./run-tests.sh", &bare, &[], &[]), None);
        // A rustup proxy needs rustup's home.
        std::os::unix::fs::symlink("rustup", tool.join("bin/cargo")).unwrap();
        std::fs::copy(&program, tool.join("bin/rustup")).unwrap();
        let proxy = missing_toolchain("cargo", &env, &binds, &bindable).unwrap();
        assert!(proxy.contains("rustup's home"), "{proxy}");
        let mut with_home = env.clone();
        with_home.insert("RUSTUP_HOME".into(), "/opt/rustup".into());
        assert_eq!(missing_toolchain("cargo", &with_home, &binds, &bindable), None);
    }

    #[test]
    fn payloads_are_checked_by_field() {
        let ok: TestRun =
            serde_json::from_value(serde_json::json!({"command": ["make", "test"], "version": 3})).unwrap();
        assert_eq!((ok.command.unwrap().len(), ok.version), (2, Some(3)));
        let err = serde_json::from_value::<TestRun>(serde_json::json!({"commands": ["x"]})).unwrap_err();
        assert!(err.to_string().contains("unknown field `commands`"), "{err}");
    }

    #[test]
    fn caps_cut_on_character_boundaries() {
        let (cut, was) = head("ééé", 3);
        assert_eq!((cut.as_str(), was), ("é…", true));
        assert_eq!(head("abc", 3), ("abc".to_owned(), false));
        assert_eq!(tail("aéé", 3), "é");
    }
}
