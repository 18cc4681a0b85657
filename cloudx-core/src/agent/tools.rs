//! The tools the agent's model may call: list, read, write, patch and search the project's
//! files, run a command and run the tests — each as the user the agent acts for.
//!
//! Every call goes through the [`Cloudx`] facade with the acting [`Principal`], so the agent
//! has exactly that user's rights: a viewer's agent reads and searches, and its writes and runs
//! come back as tool errors. A call never fails the job: unknown tools, arguments that do not
//! match a tool's schema, refused rights, oversized results and patches that do not apply all
//! become a [`ToolOutcome`] with `is_error` set and a message that says what to do differently.
//! Only a cancelled job stops the loop ([`JobError::Retry`]`("stopped")`, as
//! [`run_streaming`] answers).
//!
//! Calls that change files or run commands are recorded in the audit log as `agent_tool`
//! (target `project:<id>`, detail `task <task-id>: <tool> <summary>`), besides the
//! `file_write` / `file_delete` / `sandbox_exec` / `workspace_commit` entries the facade makes.

// Until the agent's loop (agent/run.rs) calls the tool box, only the tests do.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::access::ProjectAction;
use crate::auth::audit::{self, Client, Event, Outcome};
use crate::cloudx::Cloudx;
use crate::error::{Error, ErrorKind};
use crate::principal::Principal;
use crate::queue::handlers::run_streaming;
use crate::queue::test_runner::{TestReport, TestRun, run_tests};
use crate::queue::{JobContext, JobError};
use crate::sandbox::{Limits, ProjectExec, ProjectRun};
use crate::storage::{ByteStream, PutOptions};

pub use super::llm::ToolSpec;

/// Files larger than this are not read whole (read_file, apply_patch).
const MAX_TEXT_FILE: u64 = 8 << 20;
/// Files larger than this are skipped by search.
const MAX_SEARCH_FILE: u64 = 1 << 20;
/// Matches a search returns at most.
const MAX_MATCHES: usize = 200;
/// Characters of a matching line shown at most.
const MAX_MATCH_LINE: usize = 300;
/// Files a search reads at once.
const SEARCH_READS: usize = 8;
/// The compiled size a search's regular expression may take.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The tool names, in the order [`specs`] gives them.
const TOOLS: [&str; 7] = ["list_files", "read_file", "write_file", "apply_patch", "search", "run_command", "run_tests"];

/// The seven tools, with their descriptions and the JSON Schemas of their arguments.
pub fn specs() -> Vec<ToolSpec> {
    let spec = |name: &str, description: &str, parameters: serde_json::Value| ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters,
    };
    vec![
        spec(
            "list_files",
            "List the project's files at its latest version, one per line as `path  size-in-bytes`; folders end \
             with `/` (their size is the total of their files). Without `recursive`, a folder's sub-folders are \
             shown as single entries. Long listings are cut, saying how many entries were left out.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "The folder to list, relative to the project's root (default: the root)."},
                    "recursive": {"type": "boolean", "description": "List every file under the folder instead of its direct entries (default: false)."}
                },
                "additionalProperties": false
            }),
        ),
        spec(
            "read_file",
            "Read a text file of the project (latest version), with line numbers (`  12| code`) and a header \
             saying which lines of how many were shown. Read large files in ranges with start_line/end_line; a \
             range too large for one result is refused with the file's line count. Binary files cannot be read.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "The file's path, relative to the project's root."},
                    "start_line": {"type": "integer", "minimum": 1, "description": "The first line to show (1-based; default 1)."},
                    "end_line": {"type": "integer", "minimum": 1, "description": "The last line to show, inclusive (default: the last line)."}
                },
                "required": ["path"],
                "additionalProperties": false
            }),
        ),
        spec(
            "write_file",
            "Create or replace a whole file with `content`, as a new version of the project (folders are \
             implied by the path). Prefer apply_patch for changes to part of a large file.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "The file's path, relative to the project's root."},
                    "content": {"type": "string", "description": "The file's entire new content (UTF-8 text)."}
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
        ),
        spec(
            "apply_patch",
            "Apply a unified diff to the project's files. Each file starts with `--- a/<path>` and \
             `+++ b/<path>` headers (the a/ and b/ prefixes are optional) followed by `@@ -l,n +l,n @@` hunks \
             whose context and removed lines match the file exactly. Several files may be changed at once; \
             create a file with `--- /dev/null`, delete one with `+++ /dev/null`. Either every file applies and \
             is written, or nothing is written and the error names the file and hunk that did not apply.",
            json!({
                "type": "object",
                "properties": {
                    "patch": {"type": "string", "description": "The unified diff."}
                },
                "required": ["patch"],
                "additionalProperties": false
            }),
        ),
        spec(
            "search",
            "Search the text of the project's files (latest version) for a string or a regular expression, \
             line by line; answers `path:line: text` for each match, at most 200. Files over 1 MiB and binary \
             files are skipped.",
            json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "The text to find (or a regular expression, with `regex`)."},
                    "path": {"type": "string", "description": "Search only under this folder (default: the whole project)."},
                    "regex": {"type": "boolean", "description": "Treat the query as a regular expression, Rust `regex` syntax (default: false, plain text)."},
                    "case_sensitive": {"type": "boolean", "description": "Match case exactly (default: false, case-insensitive)."}
                },
                "required": ["query"],
                "additionalProperties": false
            }),
        ),
        spec(
            "run_command",
            "Run a program on the project's latest version in an isolated sandbox (no network, the project's \
             limits) and answer how it ended with its stdout and stderr (long output keeps its start and end). \
             argv is a program and its arguments, not a shell string: for pipes or redirections run \
             [\"sh\", \"-c\", \"...\"]. Files the command creates or changes in the project become a new version.",
            json!({
                "type": "object",
                "properties": {
                    "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "The program and its arguments."},
                    "cwd": {"type": "string", "description": "The working folder, relative to the project's root (default: the root)."},
                    "stdin": {"type": "string", "description": "Text given to the command's standard input."},
                    "timeout_seconds": {"type": "integer", "minimum": 1, "description": "Stop the command after this many seconds (at most the project's limit)."}
                },
                "required": ["argv"],
                "additionalProperties": false
            }),
        ),
        spec(
            "run_tests",
            "Run the project's tests in the sandbox and answer a summary: the status, how many passed, failed \
             and were skipped, and each failing test's name and output. The test command is detected from the \
             project's files (cargo test, node --test, python -m unittest or pytest) unless given.",
            json!({
                "type": "object",
                "properties": {
                    "command": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "The test command (a program and its arguments) instead of the detected one."}
                },
                "additionalProperties": false
            }),
        ),
    ]
}

/// Limits of one tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolLimits {
    /// Bytes of a result sent back to the model (default 16 KiB).
    pub max_output: usize,
}

impl Default for ToolLimits {
    fn default() -> Self {
        Self { max_output: 16 * 1024 }
    }
}

/// What a tool call did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolOutcome {
    /// The text sent back to the model (for errors: the error message, starting `error: `).
    pub content: String,
    /// Whether the call failed.
    pub is_error: bool,
    /// The file versions this call created.
    #[serde(default)]
    pub files: Vec<FileChange>,
    /// A structured result for clients (the test report, the exit code, ...).
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

impl ToolOutcome {
    fn ok(content: String) -> Self {
        Self { content, is_error: false, files: Vec::new(), data: None }
    }

    fn error(message: &str) -> Self {
        Self { content: format!("error: {message}"), is_error: true, files: Vec::new(), data: None }
    }
}

/// A file version a tool call created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileChange {
    /// The file's path.
    pub path: String,
    /// The project version that changed it.
    pub version: i64,
    /// Whether the file was deleted.
    pub deleted: bool,
}

/// Runs tool calls for one agent task, as `actor`, on `project`, within `job`.
#[derive(Debug)]
pub(crate) struct ToolBox<'a> {
    /// The instance.
    pub(crate) cx: &'a Cloudx,
    /// The job the agent runs in (its events carry a run's output; its cancel stops a run).
    pub(crate) job: &'a JobContext,
    /// The user the agent acts for.
    pub(crate) actor: &'a Principal,
    /// The project the agent works on.
    pub(crate) project: Uuid,
    /// The agent task (named in version messages and audit entries).
    pub(crate) task: Uuid,
    /// Limits of each call.
    pub(crate) limits: ToolLimits,
}

/// Why a call did not succeed: a tool error (sent back to the model) or a stop of the job.
#[derive(Debug)]
enum Fail {
    Tool(String),
    Stop(JobError),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        let hint = match e.kind() {
            ErrorKind::PermissionDenied => {
                " (the user this agent acts for lacks this right: do not try again; say so in your answer)"
            }
            ErrorKind::PreconditionFailed => " (the file changed meanwhile: read it again and redo the change)",
            ErrorKind::NotFound => " (list_files shows what exists)",
            _ => "",
        };
        Fail::Tool(format!("{}{hint}", e.message()))
    }
}

fn tool(message: impl Into<String>) -> Fail {
    Fail::Tool(message.into())
}

type Step<T> = Result<T, Fail>;

/// Reads `arguments` (a JSON object) into `T`, naming the field that does not fit.
fn parse_args<T: DeserializeOwned>(name: &str, arguments: &str) -> Step<T> {
    let text = if arguments.trim().is_empty() { "{}" } else { arguments };
    let not_json = |e: &serde_json::Error| {
        tool(format!(
            "the arguments of {name} are not valid JSON ({e}); send one JSON object as the tool's schema describes"
        ))
    };
    if !text.trim_start().starts_with('{') {
        return Err(tool(format!(
            "the arguments of {name} must be one JSON object ({{\"name\": value, ...}}) as the tool's schema describes"
        )));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            not_json(&inner)
        } else if at == "." {
            tool(format!("the arguments do not match {name}'s parameters: {inner}"))
        } else {
            tool(format!("argument `{at}` of {name}: {inner}"))
        }
    })?;
    de.end().map_err(|e| not_json(&e))?;
    Ok(parsed)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    recursive: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadArgs {
    path: String,
    #[serde(default)]
    start_line: Option<usize>,
    #[serde(default)]
    end_line: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    path: String,
    content: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchArgs {
    patch: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    query: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    regex: Option<bool>,
    #[serde(default)]
    case_sensitive: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandArgs {
    argv: Vec<String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestArgs {
    #[serde(default)]
    command: Option<Vec<String>>,
}

impl ToolBox<'_> {
    /// Runs one call. Never panics or returns `Err` for the call's own failures: unknown tools,
    /// arguments that are not valid JSON or do not match the schema (naming the field), refused
    /// rights, oversized outputs and patches that do not apply each become an outcome with
    /// `is_error` set and a message that tells the model what to do differently.
    ///
    /// # Errors
    /// Only when the job itself must stop: cancelled, `JobError::Retry("stopped")`.
    pub(crate) async fn call(&self, name: &str, arguments: &str) -> Result<ToolOutcome, JobError> {
        if self.job.cancelled().is_cancelled() {
            return Err(stopped());
        }
        match self.dispatch(name, arguments).await {
            Ok(outcome) => Ok(outcome),
            Err(Fail::Tool(message)) => Ok(ToolOutcome::error(&message)),
            Err(Fail::Stop(e)) => Err(e),
        }
    }

    async fn dispatch(&self, name: &str, arguments: &str) -> Step<ToolOutcome> {
        match name {
            "list_files" => self.list_files(parse_args(name, arguments)?).await,
            "read_file" => self.read_file(parse_args(name, arguments)?).await,
            "write_file" => self.write_file(parse_args(name, arguments)?).await,
            "apply_patch" => self.apply_patch(parse_args(name, arguments)?).await,
            "search" => self.search(parse_args(name, arguments)?).await,
            "run_command" => self.run_command(parse_args(name, arguments)?).await,
            "run_tests" => self.run_tests(parse_args(name, arguments)?).await,
            _ => Err(tool(format!("there is no tool `{name}`; the tools are {}", TOOLS.join(", ")))),
        }
    }

    fn client() -> Client {
        Client::new(None, Some("cloudx agent"))
    }

    fn message(&self, tool: &str) -> String {
        format!("agent task {}: {tool}", self.task)
    }

    /// Records a call that changed files or ran a command.
    async fn audit(&self, tool: &str, outcome: Outcome, summary: &str) -> Step<()> {
        let event = Event {
            action: "agent_tool",
            outcome,
            actor: self.actor.user_id(),
            target: Some(format!("project:{}", self.project)),
            client: &Self::client(),
            detail: Some(format!("task {}: {tool} {summary}", self.task)),
        };
        audit::append(self.cx.database(), &event).await.map_err(Fail::from)
    }

    /// A run's failure: the job's stop when it was cancelled, else a tool error.
    fn run_failed(&self, e: JobError) -> Fail {
        if self.job.cancelled().is_cancelled() {
            return Fail::Stop(stopped());
        }
        match e {
            JobError::Retry(m) | JobError::Fatal(m) => Fail::Tool(m),
        }
    }

    async fn list_files(&self, args: ListArgs) -> Step<ToolOutcome> {
        let folder = folder_arg(args.path.as_deref());
        let tree = self
            .cx
            .storage()
            .list_files(self.actor, self.project, &folder, None, args.recursive.unwrap_or(false))
            .await?;
        if tree.entries.is_empty() {
            return Ok(ToolOutcome::ok(format!("the project has no files (version {})", tree.version)));
        }
        let lines: Vec<String> = tree
            .entries
            .iter()
            .map(|e| if e.folder { format!("{}/  {}", e.path, e.size) } else { format!("{}  {}", e.path, e.size) })
            .collect();
        let header = format!("{} entries at version {}:\n", lines.len(), tree.version);
        let (body, left_out) = capped_lines(&lines, self.limits.max_output.saturating_sub(header.len() + 120));
        let mut content = header + &body;
        if left_out > 0 {
            let _ =
                write!(content, "[… {left_out} more entries left out: list a sub-folder, or leave out `recursive`]");
        }
        Ok(ToolOutcome { data: Some(json!({"version": tree.version})), ..ToolOutcome::ok(content) })
    }

    /// The text of a file at the latest version, and the version that last wrote it.
    async fn read_text(&self, path: &str) -> Step<(String, i64)> {
        let file = self.cx.storage().open_file(self.actor, self.project, path, None).await?;
        let (size, version) = (file.file.size, file.file.version);
        if size > MAX_TEXT_FILE {
            return Err(tool(format!(
                "`{path}` is {size} bytes, more than the {MAX_TEXT_FILE} bytes this tool reads; use search to find \
                 what you need in it, or run_command (e.g. head, sed -n) to see parts of it"
            )));
        }
        let chunks: Vec<Bytes> = file
            .stream(None)
            .await?
            .try_collect()
            .await
            .map_err(|e| tool(format!("`{path}` could not be read ({e}); try again")))?;
        let text = String::from_utf8(chunks.concat()).map_err(|_| {
            tool(format!("`{path}` is a binary file ({size} bytes, not UTF-8 text): it cannot be read as text"))
        })?;
        Ok((text, version))
    }

    async fn read_file(&self, args: ReadArgs) -> Step<ToolOutcome> {
        let (text, version) = self.read_text(&args.path).await?;
        let lines: Vec<&str> = text.lines().collect();
        let total = lines.len();
        if total == 0 {
            return Ok(ToolOutcome::ok(format!("`{}` (version {version}) is empty", args.path)));
        }
        let start = args.start_line.unwrap_or(1);
        let end = args.end_line.unwrap_or(total).min(total);
        if start == 0 || start > total {
            return Err(tool(format!("start_line: `{}` has {total} lines; give a line from 1 to {total}", args.path)));
        }
        if end < start {
            return Err(tool(format!("end_line ({end}) comes before start_line ({start})")));
        }
        let width = end.to_string().len().max(4);
        let mut body = String::new();
        for (n, line) in (start..=end).zip(&lines[start - 1..end]) {
            let _ = writeln!(body, "{n:>width$}| {line}");
        }
        let header = format!("`{}` (version {version}): lines {start}–{end} of {total}\n", args.path);
        if header.len() + body.len() > self.limits.max_output {
            let shown = end - start + 1;
            let fit = (shown * self.limits.max_output / (header.len() + body.len())).max(1);
            return Err(tool(format!(
                "lines {start}–{end} of `{}` are {} bytes, more than the {} bytes one result may hold; the file has \
                 {total} lines: read a smaller range with start_line and end_line (about {fit} lines at a time)",
                args.path,
                body.len(),
                self.limits.max_output
            )));
        }
        let data = json!({"version": version, "lines": total, "start_line": start, "end_line": end});
        Ok(ToolOutcome { data: Some(data), ..ToolOutcome::ok(header + &body) })
    }

    /// The version `path` is at now, when it exists.
    async fn current_version(&self, path: &str) -> Step<Option<i64>> {
        match self.cx.storage().open_file(self.actor, self.project, path, None).await {
            Ok(file) => Ok(Some(file.file.version)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(&self, path: &str, content: String, expected: Option<i64>, tool_name: &str) -> Step<i64> {
        let body: ByteStream = Box::pin(futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(content))]));
        let options =
            PutOptions { expected_version: expected, message: Some(self.message(tool_name)), ..Default::default() };
        let file = self.cx.storage().put_file(self.actor, &Self::client(), self.project, path, body, options).await?;
        Ok(file.version)
    }

    async fn write_file(&self, args: WriteArgs) -> Step<ToolOutcome> {
        let before = self.current_version(&args.path).await?;
        let size = args.content.len();
        let version = self.put(&args.path, args.content, None, "write_file").await?;
        if before == Some(version) {
            return Ok(ToolOutcome::ok(format!(
                "`{}` already has this content (version {version}): unchanged",
                args.path
            )));
        }
        self.audit("write_file", Outcome::Success, &format!("{} (version {version})", args.path)).await?;
        let verb = if before.is_some() { "wrote" } else { "created" };
        Ok(ToolOutcome {
            files: vec![FileChange { path: args.path.clone(), version, deleted: false }],
            data: Some(json!({"version": version, "bytes": size})),
            ..ToolOutcome::ok(format!("{verb} `{}`: {size} bytes, version {version}", args.path))
        })
    }

    async fn apply_patch(&self, args: PatchArgs) -> Step<ToolOutcome> {
        let files = parse_patch(&args.patch).map_err(tool)?;
        let tree = self.cx.storage().list_files(self.actor, self.project, "", None, true).await?;
        let existing: BTreeMap<&str, i64> =
            tree.entries.iter().filter(|e| !e.folder).map(|e| (e.path.as_str(), e.version)).collect();
        let exists = |p: &str| existing.contains_key(p);
        // Every file is checked, and its new content made, before anything is written.
        let mut planned: Vec<(String, Planned)> = Vec::new();
        let mut seen = BTreeSet::new();
        for file in &files {
            let path = file.resolve(&exists);
            if !seen.insert(path.clone()) {
                return Err(tool(format!("the patch changes `{path}` twice: give each file's hunks under one header")));
            }
            crate::storage::ProjectPath::parse(&path).map_err(|e| tool(format!("`{path}`: {}", e.message())))?;
            let plan = match file.change {
                Change::Create => {
                    if exists(&path) {
                        return Err(tool(format!(
                            "`{path}` already exists: patch it (`--- a/{path}`) instead of creating it \
                             (`--- /dev/null`); nothing was written"
                        )));
                    }
                    let content = file.apply("", &path, 0)?;
                    Planned::Write { content, expected: 0 }
                }
                Change::Modify | Change::Delete => {
                    if !exists(&path) {
                        return Err(tool(format!(
                            "`{path}` does not exist (list_files shows what does); to create it use `--- /dev/null`; \
                             nothing was written"
                        )));
                    }
                    let (text, version) = self.read_text(&path).await?;
                    let content = file.apply(&text, &path, version)?;
                    if matches!(file.change, Change::Delete) {
                        Planned::Delete { expected: version }
                    } else {
                        Planned::Write { content, expected: version }
                    }
                }
            };
            planned.push((path, plan));
        }
        let mut changes = Vec::new();
        let mut lines = Vec::new();
        for (path, plan) in planned {
            let written = match plan {
                Planned::Write { content, expected } => {
                    let verb = if expected == 0 { "created" } else { "changed" };
                    self.put(&path, content, Some(expected), "apply_patch").await.map(|v| (v, false, verb))
                }
                Planned::Delete { expected } => self
                    .cx
                    .storage()
                    .delete_file(
                        self.actor,
                        &Self::client(),
                        self.project,
                        &path,
                        Some(expected),
                        Some(&self.message("apply_patch")),
                    )
                    .await
                    .map(|v| (v, true, "deleted"))
                    .map_err(Fail::from),
            };
            match written {
                Ok((version, deleted, verb)) => {
                    lines.push(format!("{verb} `{path}` (version {version})"));
                    changes.push(FileChange { path, version, deleted });
                }
                Err(Fail::Tool(m)) if !changes.is_empty() => {
                    self.audit_patch(&changes).await?;
                    return Err(tool(format!(
                        "`{path}`: {m}; the files before it were already written: {}",
                        lines.join(", ")
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        self.audit_patch(&changes).await?;
        Ok(ToolOutcome {
            data: Some(json!({"files": changes.len()})),
            files: changes,
            ..ToolOutcome::ok(format!("applied the patch:\n{}", lines.join("\n")))
        })
    }

    async fn audit_patch(&self, changes: &[FileChange]) -> Step<()> {
        let shown: Vec<String> = changes
            .iter()
            .map(|c| format!("{}{} (version {})", if c.deleted { "-" } else { "" }, c.path, c.version))
            .collect();
        self.audit("apply_patch", Outcome::Success, &shown.join(", ")).await
    }

    async fn search(&self, args: SearchArgs) -> Step<ToolOutcome> {
        if args.query.is_empty() {
            return Err(tool("query: give the text to find"));
        }
        let matcher = matcher(&args.query, args.regex.unwrap_or(false), args.case_sensitive.unwrap_or(false))?;
        let folder = folder_arg(args.path.as_deref());
        let tree = self.cx.storage().list_files(self.actor, self.project, &folder, None, true).await?;
        let version = tree.version;
        let (mut large, mut binary, mut searched) = (0usize, 0usize, 0usize);
        let mut candidates = Vec::new();
        for entry in tree.entries.into_iter().filter(|e| !e.folder) {
            if entry.size > MAX_SEARCH_FILE {
                large += 1;
            } else {
                candidates.push(entry.path);
            }
        }
        let budget = self.limits.max_output.saturating_sub(300);
        let mut out = String::new();
        let (mut matches, mut cut) = (0usize, false);
        let mut files_matched = 0usize;
        let mut reads = futures_util::stream::iter(candidates)
            .map(|path| async move {
                let read = self.cx.storage().open_file(self.actor, self.project, &path, Some(version)).await;
                let text = match read {
                    Ok(file) => file
                        .stream(None)
                        .await
                        .ok()
                        .map(|s| s.try_collect::<Vec<Bytes>>())
                        .map(|f| async move { f.await.ok().map(|c| String::from_utf8(c.concat())) }),
                    Err(_) => None,
                };
                let text = match text {
                    Some(f) => f.await,
                    None => None,
                };
                (path, text)
            })
            .buffered(SEARCH_READS);
        'files: while let Some((path, text)) = reads.next().await {
            let text = match text {
                Some(Ok(text)) => text,
                Some(Err(_)) => {
                    binary += 1;
                    continue;
                }
                None => continue,
            };
            searched += 1;
            let mut matched = false;
            for (n, line) in text.lines().enumerate() {
                if !matcher.is_match(line) {
                    continue;
                }
                let shown = format!("{path}:{}: {}\n", n + 1, shorten(line, MAX_MATCH_LINE));
                if matches >= MAX_MATCHES || out.len() + shown.len() > budget {
                    cut = true;
                    break 'files;
                }
                out.push_str(&shown);
                matches += 1;
                matched = true;
            }
            files_matched += usize::from(matched);
        }
        let mut content = if matches == 0 {
            format!("no matches for `{}` in {searched} files (version {version})", args.query)
        } else {
            format!("{matches} matches in {files_matched} files (version {version}):\n{out}")
        };
        if cut {
            let _ =
                write!(content, "[… search stopped at {matches} matches: narrow the query or give a folder as `path`]");
        }
        if large + binary > 0 {
            let _ = write!(content, "\n(skipped {large} files over 1 MiB and {binary} binary files)");
        }
        let data = json!({"version": version, "matches": matches, "truncated": cut});
        Ok(ToolOutcome { data: Some(data), ..ToolOutcome::ok(content) })
    }

    async fn run_command(&self, args: CommandArgs) -> Step<ToolOutcome> {
        if args.argv.first().is_none_or(String::is_empty) {
            return Err(tool("argv: give a program and its arguments, e.g. [\"python3\", \"main.py\"]"));
        }
        if args.timeout_seconds == Some(0) {
            return Err(tool("timeout_seconds: give at least 1"));
        }
        // Refused here, rather than inside the run, so that the refusal keeps its kind (and hint).
        self.cx.storage().authorize(self.actor, self.project, &[ProjectAction::Exec]).await?;
        // Changes are committed when the user may also write (an API key may allow runs only).
        let may_write = self.cx.storage().authorize(self.actor, self.project, &[ProjectAction::Write]).await.is_ok();
        let request = ProjectExec {
            argv: args.argv.clone(),
            cwd: args.cwd,
            stdin: args.stdin,
            limits: Limits { wall_time: args.timeout_seconds.map(Duration::from_secs), ..Limits::default() },
            commit: may_write,
            message: Some(self.message("run_command")),
            ..ProjectExec::default()
        };
        let run = run_streaming(self.cx, self.job, self.actor, self.project, request)
            .await
            .map_err(|e| self.run_failed(e))?;
        let ended = how_it_ended(&run);
        let files = committed(&run);
        self.audit("run_command", Outcome::Success, &format!("{}: {ended}", shown_argv(&args.argv))).await?;
        let out = &run.outcome;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let budget = self.limits.max_output.saturating_sub(400);
        let (out_budget, err_budget) = match (stdout.is_empty(), stderr.is_empty()) {
            (false, false) => (budget / 2, budget - budget / 2),
            _ => (budget, budget),
        };
        // No timings here (they are in the data): a replay compares this text.
        let mut content = format!("{ended} (version {})\n", run.version);
        for (name, text, budget, sandbox_cut) in [
            ("stdout", &stdout, out_budget, out.stdout_truncated),
            ("stderr", &stderr, err_budget, out.stderr_truncated),
        ] {
            if text.is_empty() {
                let _ = writeln!(content, "{name}: (empty)");
                continue;
            }
            let _ = writeln!(content, "{name}:\n{}", cut_middle(text, budget).trim_end_matches('\n'));
            if sandbox_cut {
                let _ = writeln!(content, "[{name} reached the sandbox's output limit and was cut there]");
            }
        }
        if !files.is_empty() {
            let shown: Vec<String> =
                files.iter().map(|f| format!("{}{}", if f.deleted { "deleted " } else { "" }, f.path)).collect();
            let _ = writeln!(content, "changed files (version {}): {}", files[0].version, shown.join(", "));
        } else if !may_write {
            let _ = writeln!(content, "(changes to files are not kept: the user may not write to this project)");
        }
        let data = json!({
            "exit_code": out.exit_code,
            "signal": out.signal,
            "timed_out": out.timed_out,
            "limit": out.limit,
            "duration_ms": u64::try_from(out.wall_time.as_millis()).unwrap_or(u64::MAX),
            "version": run.version,
            "commit": run.commit,
        });
        Ok(ToolOutcome { content, is_error: false, files, data: Some(data) })
    }

    async fn run_tests(&self, args: TestArgs) -> Step<ToolOutcome> {
        self.cx.storage().authorize(self.actor, self.project, &[ProjectAction::Exec]).await?;
        let request = TestRun { command: args.command, ..TestRun::default() };
        let report =
            run_tests(self.cx, self.job, self.actor, self.project, request).await.map_err(|e| self.run_failed(e))?;
        let summary = test_summary(&report);
        self.audit("run_tests", Outcome::Success, &format!("{}: {summary}", shown_argv(&report.command))).await?;
        let content = test_text(&report, &summary, self.limits.max_output);
        let data = serde_json::to_value(&report).map_err(|e| tool(format!("the report cannot be shown: {e}")))?;
        Ok(ToolOutcome { data: Some(data), ..ToolOutcome::ok(content) })
    }
}

/// Runs one call as the agent's loop does ([`ToolBox::call`]), for tests outside the crate.
/// Not part of the stable API.
///
/// # Errors
/// As [`ToolBox::call`]: only when the job is cancelled.
#[cfg(feature = "testing")]
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub async fn call_for_tests(
    cx: &Cloudx,
    job: &JobContext,
    actor: &Principal,
    project: Uuid,
    task: Uuid,
    limits: ToolLimits,
    name: &str,
    arguments: &str,
) -> Result<ToolOutcome, JobError> {
    ToolBox { cx, job, actor, project, task, limits }.call(name, arguments).await
}

fn stopped() -> JobError {
    JobError::Retry("stopped".into())
}

/// A folder argument: the root for none, `""`, `.` or `/`.
fn folder_arg(path: Option<&str>) -> String {
    let p = path.unwrap_or("").trim();
    let p = p.strip_prefix("./").unwrap_or(p);
    let p = p.trim_matches('/');
    if p == "." { String::new() } else { p.to_owned() }
}

/// As many of `lines` as fit in `budget` bytes (each with its newline), and how many did not.
fn capped_lines(lines: &[String], budget: usize) -> (String, usize) {
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if out.len() + line.len() + 1 > budget {
            return (out, lines.len() - i);
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, 0)
}

/// `text` cut to about `max` bytes, its start and its end kept around a marker saying how much
/// was left out.
fn cut_middle(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let keep = max.saturating_sub(40);
    let mut head = keep / 2;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - (keep - keep / 2);
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}\n[… {} bytes left out …]\n{}", &text[..head], tail - head, &text[tail..])
}

/// At most `max` characters of `line`.
fn shorten(line: &str, max: usize) -> String {
    match line.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_owned(),
    }
}

/// The search's matcher: the query as a regular expression, or as plain text.
fn matcher(query: &str, regex: bool, case_sensitive: bool) -> Step<regex::Regex> {
    let pattern = if regex { query.to_owned() } else { regex::escape(query) };
    regex::RegexBuilder::new(&pattern)
        .case_insensitive(!case_sensitive)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            tool(format!(
                "query is not a valid regular expression: {e}; fix it, or leave out `regex` to search for plain text"
            ))
        })
}

/// The command as an audit entry shows it.
fn shown_argv(argv: &[String]) -> String {
    shorten(&argv.join(" "), 200)
}

fn how_it_ended(run: &ProjectRun) -> String {
    let out = &run.outcome;
    if out.timed_out {
        return format!("timed out after {}", humantime::format_duration(out.isolation.limits.wall_time));
    }
    let mut ended = match (out.exit_code, out.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "ended without an exit code".to_owned(),
    };
    if out.oom_killed {
        ended.push_str(" (out of memory)");
    } else if let Some(limit) = out.limit {
        let name = serde_json::to_value(limit).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let _ = write!(ended, " (hit its {name} limit)");
    }
    ended
}

/// The files a run committed.
fn committed(run: &ProjectRun) -> Vec<FileChange> {
    let Some(commit) = &run.commit else { return Vec::new() };
    let Some(version) = commit.version else { return Vec::new() };
    let written = commit.written.iter().map(|p| FileChange { path: p.clone(), version, deleted: false });
    let deleted = commit.deleted.iter().map(|p| FileChange { path: p.clone(), version, deleted: true });
    written.chain(deleted).collect()
}

fn test_summary(report: &TestReport) -> String {
    let status =
        serde_json::to_value(report.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    format!("{status}: {} passed, {} failed, {} skipped", report.passed, report.failed, report.skipped)
}

/// A test report as the model reads it: the summary, the message, the failures (cut).
fn test_text(report: &TestReport, summary: &str, max: usize) -> String {
    let mut text = format!(
        // No timings here (they are in the data): a replay compares this text.
        "tests {summary} (`{}`, version {}{})\n",
        report.command.join(" "),
        report.version,
        report.exit_code.map(|c| format!(", exit code {c}")).unwrap_or_default()
    );
    if let Some(message) = &report.message {
        let _ = writeln!(text, "{}", cut_middle(message, max / 4));
    }
    let budget = max.saturating_sub(text.len() + 200);
    let per_failure = (budget / report.failures.len().max(1)).clamp(400.min(budget), budget.max(1));
    for (i, failure) in report.failures.iter().enumerate() {
        let shown = format!("FAILED {}\n{}\n", failure.name, cut_middle(failure.output.trim_end(), per_failure));
        if text.len() + shown.len() > max.saturating_sub(100) {
            let _ = write!(text, "[… {} more failures left out]", report.failures.len() - i);
            break;
        }
        text.push_str(&shown);
    }
    if report.failures.is_empty() && report.failed > 0 {
        text.push_str("(no failure details could be read from the output)\n");
    }
    text
}

/// What a patch does to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Create,
    Modify,
    Delete,
}

/// One file's part of a patch: its path as written (a/ or b/ prefix possibly) and its hunks.
#[derive(Debug)]
struct FilePatchText<'a> {
    change: Change,
    /// The path as the header gives it (with git's `a/` or `b/` prefix, or none).
    raw: String,
    patch: diffy::Patch<'a, str>,
}

#[derive(Debug)]
enum Planned {
    Write { content: String, expected: i64 },
    Delete { expected: i64 },
}

impl FilePatchText<'_> {
    /// The project path: the header's, without the `a/` or `b/` prefix git writes — unless the
    /// path with the prefix is a file of the project and the one without is not.
    fn resolve(&self, exists: &dyn Fn(&str) -> bool) -> String {
        let raw = self.raw.trim_start_matches("./");
        let stripped = raw.strip_prefix("a/").or_else(|| raw.strip_prefix("b/"));
        match stripped {
            Some(s) if !exists(raw) || exists(s) => s.to_owned(),
            _ => raw.to_owned(),
        }
    }

    /// Applies the hunks to `text` (the content of `path` at `version`).
    fn apply(&self, text: &str, path: &str, version: i64) -> Step<String> {
        diffy::apply(text, &self.patch).map_err(|e| {
            let n: usize = e.to_string().rsplit('#').next().and_then(|n| n.trim().parse().ok()).unwrap_or(1).max(1);
            let header = self
                .patch
                .hunks()
                .get(n - 1)
                .map(|h| {
                    let (o, m) = (h.old_range(), h.new_range());
                    format!(" (`@@ -{},{} +{},{} @@`)", o.start(), o.len(), m.start(), m.len())
                })
                .unwrap_or_default();
            let against =
                if version == 0 { "an empty new file".to_owned() } else { format!("its content at version {version}") };
            tool(format!(
                "`{path}`: hunk #{n}{header} does not apply to {against}; read the file again (read_file) and make \
                 the hunk's context and removed lines match it exactly; nothing was written"
            ))
        })
    }
}

/// Splits a unified diff into its files.
fn parse_patch(text: &str) -> Result<Vec<FilePatchText<'_>>, String> {
    use diffy::patch_set::{FileOperation, ParseOptions, PatchKind, PatchSet};
    const FORMAT: &str = "send a unified diff: for each file a `--- a/<path>` line, a `+++ b/<path>` line, then \
                          `@@ -start,count +start,count @@` hunks";
    if text.trim().is_empty() {
        return Err(format!("patch is empty; {FORMAT}"));
    }
    let parsed = PatchSet::parse(text, ParseOptions::unidiff())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the patch cannot be read ({e}); {FORMAT}"))?;
    if parsed.is_empty() {
        return Err(format!("the patch changes no file; {FORMAT}"));
    }
    let mut files = Vec::new();
    for file in parsed {
        let (change, raw) = match file.operation() {
            FileOperation::Create(p) => (Change::Create, p.to_string()),
            FileOperation::Delete(p) => (Change::Delete, p.to_string()),
            FileOperation::Modify { original, modified } => {
                let (o, m) = (strip_git(original), strip_git(modified));
                if o != m {
                    return Err(format!(
                        "the patch renames `{o}` to `{m}`, which this tool does not do: create `{m}` \
                             (`--- /dev/null`) and delete `{o}` (`+++ /dev/null`)"
                    ));
                }
                (Change::Modify, original.to_string())
            }
            FileOperation::Rename { from, to } | FileOperation::Copy { from, to } => {
                return Err(format!(
                    "the patch renames or copies `{from}` to `{to}`, which this tool does not do: create the new \
                         file (`--- /dev/null`) and delete the old one (`+++ /dev/null`)"
                ));
            }
        };
        let patch = match file.into_patch() {
            PatchKind::Text(p) => p,
            PatchKind::Binary(_) => return Err(format!("`{raw}`: binary patches are not supported")),
        };
        if patch.hunks().is_empty() && change != Change::Delete {
            return Err(format!("`{raw}` has no hunks; {FORMAT}"));
        }
        files.push(FilePatchText { change, raw, patch });
    }
    Ok(files)
}

/// The path without git's `a/` / `b/` prefix (to compare the two headers of a file).
fn strip_git(path: &str) -> &str {
    path.strip_prefix("a/").or_else(|| path.strip_prefix("b/")).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(step: Step<impl std::fmt::Debug>) -> String {
        match step {
            Err(Fail::Tool(m)) => m,
            other => panic!("not a tool error: {other:?}"),
        }
    }

    #[test]
    fn every_tool_has_a_spec_with_an_object_schema() {
        let specs = specs();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, TOOLS);
        for spec in &specs {
            assert_eq!(spec.parameters["type"], "object", "{}", spec.name);
            assert_eq!(spec.parameters["additionalProperties"], false, "{}", spec.name);
            for required in spec.parameters["required"].as_array().into_iter().flatten() {
                assert!(spec.parameters["properties"].get(required.as_str().unwrap()).is_some(), "{}", spec.name);
            }
        }
    }

    #[test]
    fn arguments_are_checked_by_field() {
        let ok: ReadArgs = parse_args("read_file", r#"{"path": "a.py", "start_line": 3}"#).unwrap();
        assert_eq!((ok.path.as_str(), ok.start_line, ok.end_line), ("a.py", Some(3), None));
        // Nulls are left-out values; empty arguments are an empty object.
        let ok: ListArgs = parse_args("list_files", r#"{"path": null, "recursive": null}"#).unwrap();
        assert_eq!((ok.path, ok.recursive), (None, None));
        let _: ListArgs = parse_args("list_files", " ").unwrap();
        let wrong = message(parse_args::<ReadArgs>("read_file", r#"{"path": "a", "start_line": "three"}"#));
        assert!(wrong.contains("argument `start_line` of read_file") && wrong.contains("expected usize"), "{wrong}");
        let nested = message(parse_args::<CommandArgs>("run_command", r#"{"argv": ["ls", 3]}"#));
        assert!(nested.contains("`argv[1]`"), "{nested}");
        let missing = message(parse_args::<WriteArgs>("write_file", r#"{"path": "a"}"#));
        assert!(missing.contains("missing field `content`"), "{missing}");
        let unknown = message(parse_args::<ReadArgs>("read_file", r#"{"path": "a", "lines": 3}"#));
        assert!(unknown.contains("unknown field `lines`"), "{unknown}");
        for bad in [r#"{"path": "a""#, r#"{"path": "a"} x"#, r#"{path: "a"}"#] {
            let m = message(parse_args::<ReadArgs>("read_file", bad));
            assert!(m.contains("not valid JSON"), "{bad}: {m}");
        }
        for not_object in ["[1]", "path=a", "\"a\""] {
            let m = message(parse_args::<ReadArgs>("read_file", not_object));
            assert!(m.contains("must be one JSON object"), "{m}");
        }
    }

    const MULTI: &str = "\
diff --git a/src/app.py b/src/app.py
--- a/src/app.py
+++ b/src/app.py
@@ -1,3 +1,3 @@
 import os
-print('hello')
+print('hello, world')
 x = 1
--- /dev/null
+++ b/docs/new.md
@@ -0,0 +1,2 @@
+# New
+text
--- a/old.txt
+++ /dev/null
@@ -1 +0,0 @@
-gone
";

    #[test]
    fn a_patch_splits_into_its_files_and_applies() {
        let files = parse_patch(MULTI).unwrap();
        let none = |_: &str| false;
        let got: Vec<(Change, String)> = files.iter().map(|f| (f.change, f.resolve(&none))).collect();
        assert_eq!(
            got,
            [
                (Change::Modify, "src/app.py".to_owned()),
                (Change::Create, "docs/new.md".to_owned()),
                (Change::Delete, "old.txt".to_owned())
            ]
        );
        let changed = files[0].apply("import os\nprint('hello')\nx = 1\n", "src/app.py", 3).unwrap();
        assert_eq!(changed, "import os\nprint('hello, world')\nx = 1\n");
        assert_eq!(files[1].apply("", "docs/new.md", 0).unwrap(), "# New\ntext\n");
        assert_eq!(files[2].apply("gone\n", "old.txt", 2).unwrap(), "");
    }

    #[test]
    fn a_hunk_that_does_not_apply_is_named() {
        let files = parse_patch(MULTI).unwrap();
        let m = message(files[0].apply("import sys\nprint('bye')\n", "src/app.py", 7));
        assert!(m.starts_with("`src/app.py`: hunk #1 (`@@ -1,3 +1,3 @@`) does not apply"), "{m}");
        assert!(m.contains("version 7") && m.contains("nothing was written"), "{m}");
        // A second hunk that fails is named as the second.
        let two = "--- a.txt\n+++ a.txt\n@@ -1 +1 @@\n-a\n+A\n@@ -5 +5 @@\n-e\n+E\n";
        let file = &parse_patch(two).unwrap()[0];
        let m = message(file.apply("a\nb\nc\nd\nx\n", "a.txt", 2));
        assert!(m.contains("hunk #2 (`@@ -5,1 +5,1 @@`)"), "{m}");
        assert_eq!(file.apply("a\nb\nc\nd\ne\n", "a.txt", 2).unwrap(), "A\nb\nc\nd\nE\n");
    }

    #[test]
    fn prefixes_are_optional_unless_the_project_has_such_a_folder() {
        let plain = &parse_patch("--- src/a.rs\n+++ src/a.rs\n@@ -1 +1 @@\n-a\n+b\n").unwrap()[0];
        assert_eq!(plain.resolve(&|_| false), "src/a.rs");
        let git = &parse_patch("--- a/src/a.rs\n+++ b/src/a.rs\n@@ -1 +1 @@\n-a\n+b\n").unwrap()[0];
        assert_eq!(git.resolve(&|_| false), "src/a.rs");
        // A project folder named `a` whose file is meant.
        assert_eq!(git.resolve(&|p| p == "a/src/a.rs"), "a/src/a.rs");
        assert_eq!(git.resolve(&|p| p == "a/src/a.rs" || p == "src/a.rs"), "src/a.rs");
    }

    #[test]
    fn patches_that_cannot_be_used_say_why() {
        assert!(parse_patch("  \n").unwrap_err().contains("patch is empty"));
        assert!(parse_patch("just some text\n").unwrap_err().contains("unified diff"));
        let rename = parse_patch("--- a/x.txt\n+++ b/y.txt\n@@ -1 +1 @@\n-a\n+b\n").unwrap_err();
        assert!(rename.contains("renames `x.txt` to `y.txt`"), "{rename}");
        let no_hunks = parse_patch("--- a/x.txt\n+++ b/x.txt\n").unwrap_err();
        assert!(no_hunks.contains("no hunks") || no_hunks.contains("cannot be read"), "{no_hunks}");
    }

    #[test]
    fn long_output_keeps_its_start_and_end() {
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let cut = cut_middle(&text, 500);
        assert!(cut.len() <= 500, "{}", cut.len());
        assert!(cut.starts_with("line 0\n") && cut.ends_with("line 999\n"), "{cut}");
        assert!(cut.contains(" bytes left out …]"), "{cut}");
        assert_eq!(cut_middle("short", 500), "short");
        // Character boundaries hold.
        let wide = "é".repeat(400);
        let cut = cut_middle(&wide, 101);
        assert!(cut.contains("bytes left out"));
        assert_eq!(shorten("ééé", 2), "éé…");
        let lines: Vec<String> = (0..10).map(|i| format!("f{i}  1")).collect();
        let (shown, left) = capped_lines(&lines, 20);
        assert_eq!((shown.lines().count(), left), (3, 7));
    }

    #[test]
    fn search_queries_are_text_unless_asked() {
        let plain = matcher("a.b(", false, false).unwrap();
        assert!(plain.is_match("x A.B( y") && !plain.is_match("axb("));
        assert!(!matcher("A.b(", false, true).unwrap().is_match("a.b("));
        assert!(matcher(r"fn \w+\(", true, true).unwrap().is_match("pub fn main() {"));
        let bad = message(matcher("(unclosed", true, false));
        assert!(bad.contains("not a valid regular expression"), "{bad}");
        // Huge repetitions hit the size limit instead of taking the memory.
        assert!(matches!(matcher(r"\w{10000}{10000}", true, false), Err(Fail::Tool(_))));
        assert_eq!(folder_arg(None), "");
        assert_eq!(folder_arg(Some("./src/")), "src");
        assert_eq!(folder_arg(Some("/")), "");
    }
}
