//! The command line, as clap types only; the commands live in `commands/`.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use cloudx_core::agent::TaskStatus;
use cloudx_core::queue::JobStatus;
use uuid::Uuid;

/// cloudx: a self-hostable platform for AI coding agents.
///
/// With no configuration, everything is embedded under ./cloudx-data (SQLite, local files).
#[derive(Debug, Parser)]
#[command(name = "cloudx", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// The configuration file (default: $CLOUDX_CONFIG, else ./cloudx.toml if it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The data folder (overrides data_dir; default ./cloudx-data).
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start the HTTP daemon (REST API, metrics) on the configured database.
    Serve(ServeArgs),
    /// Run jobs from the queue until SIGTERM or Ctrl-C (then finish or release them and exit 0).
    Worker(WorkerArgs),
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the accounts of this instance (on its database, as the local operator).
    #[command(subcommand)]
    User(UserCommand),
    /// Read and check the audit log of this instance (on its database).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Sign in to a daemon; later commands that talk to a daemon use this session.
    Login(LoginArgs),
    /// Sign out of the daemon (the session ends everywhere) and forget the session.
    Logout,
    /// Manage your API keys on the daemon you signed in to.
    #[command(subcommand)]
    Apikey(ApiKeyCommand),
    /// Projects (on the daemon you signed in to, else on this instance): create, list, share,
    /// delete, restore.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Files of a project (on the daemon you signed in to, else on this instance): upload,
    /// download, list, history.
    #[command(subcommand)]
    File(FileCommand),
    /// Send a folder's changes to a project (only changed files; conflicts are reported, never
    /// overwritten).
    Push(SyncArgs),
    /// Bring a project's changes into a folder (conflicts are reported, never overwritten).
    Pull(PullArgs),
    /// Jobs (on the daemon you signed in to, else on this instance): submit, follow, list,
    /// cancel, retry; and the workers that run them.
    #[command(subcommand)]
    Job(JobCommand),
    /// Ask the agent about a project: starts a conversation (or continues one), posts the
    /// message and streams the answer until the task ends; exits 0 when it succeeded, 1 when it
    /// failed or was cancelled, 130 on Ctrl-C (which cancels the task). Without a daemon, the
    /// task runs in this process.
    Chat(ChatArgs),
    /// The agent's tasks (on the daemon you signed in to, else on this instance): list, show,
    /// cancel, replay.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Maintain this instance's blob store (on its database and object store).
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Run a command in the sandbox on a local folder, streaming its output; exits with the
    /// command's exit code (124 when the wall-clock limit killed it, 128+N for signal N).
    /// Opens no database and creates no data folder.
    Run(RunArgs),
    /// The sandbox on this host.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// The model endpoint of the agent (the [llm] configuration).
    #[command(subcommand)]
    Llm(LlmCommand),
    /// Print the version.
    Version,
}

/// A project: its id, or its slug (among the projects you can see).
pub(crate) type ProjectRef = String;

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectCommand {
    /// Create a project: empty, from a template (python, rust, node) or as a copy of another.
    Create {
        /// Its name.
        name: String,
        /// Its slug (default: from the name).
        #[arg(long)]
        slug: Option<String>,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
        /// A built-in template: empty, python, rust, node.
        #[arg(long)]
        template: Option<String>,
        /// Start as a copy of this project's current files.
        #[arg(long, value_name = "PROJECT")]
        copy_from: Option<ProjectRef>,
        /// Whose project it is (the local instance only; a daemon makes you the owner).
        #[arg(long, value_name = "EMAIL")]
        owner: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List your projects.
    List {
        /// Deleted projects (to restore one).
        #[arg(long)]
        deleted: bool,
        /// Every project of the instance (administrators).
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a project and its members.
    Show {
        project: ProjectRef,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Share a project with a user (by email), or change their role.
    Share {
        project: ProjectRef,
        /// The user's email (or id).
        user: String,
        /// owner, editor or viewer.
        role: String,
    },
    /// Remove a member from a project (yourself: leave it).
    Unshare { project: ProjectRef, user: String },
    /// Make another user the project's owner.
    Transfer { project: ProjectRef, user: String },
    /// Delete a project (restorable with `restore`; `--purge`: for good, administrators).
    Rm {
        project: ProjectRef,
        /// Remove it and its whole history for good.
        #[arg(long)]
        purge: bool,
    },
    /// Restore a deleted project.
    Restore { project: ProjectRef },
}

#[derive(Debug, Subcommand)]
pub(crate) enum FileCommand {
    /// Upload a local file (streamed) as a new version.
    Put {
        project: ProjectRef,
        /// The local file.
        local: PathBuf,
        /// Its path in the project (default: the local file's name).
        path: Option<String>,
        /// Refuse unless the file is at this version (0: must not exist).
        #[arg(long, value_name = "N")]
        expect_version: Option<i64>,
        /// A message kept with the version.
        #[arg(short, long)]
        message: Option<String>,
    },
    /// Download a file (any version) to a local file, or to stdout with `-`.
    Get {
        project: ProjectRef,
        /// Its path in the project.
        path: String,
        /// Where to (default: the file's name in the current folder; `-`: stdout).
        local: Option<PathBuf>,
        /// The project version to read it as of (default: the latest).
        #[arg(long, value_name = "VERSION")]
        at: Option<i64>,
    },
    /// List a folder (or, with -r, every file below it).
    Ls {
        project: ProjectRef,
        /// The folder (default: the whole project).
        #[arg(default_value = "")]
        folder: String,
        /// Every file below the folder.
        #[arg(short, long)]
        recursive: bool,
        /// The project version to list as of (default: the latest).
        #[arg(long, value_name = "VERSION")]
        at: Option<i64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The versions of a file, newest first.
    Log {
        project: ProjectRef,
        path: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a file or folder (a new version; restorable).
    Rm {
        project: ProjectRef,
        path: String,
        /// A message kept with the version.
        #[arg(short, long)]
        message: Option<String>,
    },
    /// Restore a file's earlier content (default: before it was deleted).
    Restore {
        project: ProjectRef,
        path: String,
        /// The version whose content to restore (default: the last before its deletion).
        #[arg(long, value_name = "VERSION")]
        at: Option<i64>,
    },
    /// Move or rename a file or folder.
    Mv {
        project: ProjectRef,
        from: String,
        to: String,
        /// A message kept with the version.
        #[arg(short, long)]
        message: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobCommand {
    /// Submit a job to a project; prints its id (`--wait`: waits for it to end, and exits 1
    /// unless it succeeded).
    Submit(SubmitArgs),
    /// Show a job: its state, attempts, result or last error.
    Get {
        id: Uuid,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first: a project's, or every job (administrators).
    Ls {
        /// Only this project's jobs.
        #[arg(long)]
        project: Option<ProjectRef>,
        /// Only jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only jobs in this state: queued, running, succeeded, dead, cancelled.
        #[arg(long, value_parser = parse_status)]
        status: Option<JobStatus>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: a queued one at once, a running one at its worker's next heartbeat.
    Cancel { id: Uuid },
    /// Queue a dead or cancelled job again, with three more attempts (administrators).
    Retry { id: Uuid },
    /// Print a job's output: stdout and stderr as they were, other events one line each on
    /// stderr. With `-f`, follow it until the job ends, then exit 0 if it succeeded, else 1.
    Logs {
        id: Uuid,
        /// Keep printing new output until the job ends.
        #[arg(short, long)]
        follow: bool,
        /// Only events after this number.
        #[arg(long, value_name = "N", default_value_t = 0)]
        after: i64,
    },
    /// List the workers seen in the last day: health, kinds, the jobs they hold
    /// (administrators). `cloudx worker` runs one.
    Workers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `cloudx chat`.
#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    /// The project.
    pub(crate) project: ProjectRef,
    /// The message.
    pub(crate) message: String,
    /// Continue this conversation instead of starting one.
    #[arg(long, value_name = "ID")]
    pub(crate) conversation: Option<Uuid>,
    /// Print each event as one JSON line instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TaskCommand {
    /// List your tasks, latest first.
    Ls {
        /// Only this project's tasks.
        #[arg(long)]
        project: Option<ProjectRef>,
        /// Only tasks in this state: queued, running, succeeded, failed, cancelled.
        #[arg(long, value_parser = parse_task_status)]
        status: Option<TaskStatus>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a task: its message, state, answer or reason, usage.
    Show {
        id: Uuid,
        /// Also print its transcript (model requests and answers, tool calls and results).
        #[arg(long)]
        transcript: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task: a queued one at once, a running one within seconds.
    Cancel { id: Uuid },
    /// Run a finished task's tools again against its recorded model answers, in a new task;
    /// with `--wait`, wait for it and print what came out differently.
    Replay {
        id: Uuid,
        /// Wait for the replay to end and print its report.
        #[arg(long)]
        wait: bool,
    },
}

fn parse_task_status(text: &str) -> Result<TaskStatus, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("unknown status `{text}`: one of queued, running, succeeded, failed, cancelled"))
}

/// `cloudx job submit`.
#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// The job kind, such as sandbox_exec.
    pub(crate) kind: String,
    /// The project the job belongs to.
    #[arg(long)]
    pub(crate) project: Option<ProjectRef>,
    /// The payload, as JSON (`-`: read from stdin).
    #[arg(long, value_name = "JSON", conflicts_with = "payload_file")]
    pub(crate) payload: Option<String>,
    /// Read the payload (JSON) from a file (`-`: stdin).
    #[arg(long, value_name = "FILE")]
    pub(crate) payload_file: Option<PathBuf>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) priority: i64,
    /// Not before this time (RFC 3339, such as 2030-01-01T09:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub(crate) run_at: Option<DateTime<Utc>>,
    /// How many attempts it may take before it is dead (default 3).
    #[arg(long, value_name = "N")]
    pub(crate) max_attempts: Option<u32>,
    /// Submitting again with the same key gives back the first job instead of a new one.
    #[arg(long, value_name = "IDEMPOTENCY_KEY")]
    pub(crate) key: Option<String>,
    /// A webhook called (signed) when the job ends; its host must be in worker.webhook_hosts.
    #[arg(long, value_name = "URL")]
    pub(crate) callback_url: Option<String>,
    /// Wait for the job to end; exit 0 if it succeeded, else 1.
    #[arg(long)]
    pub(crate) wait: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

fn parse_status(text: &str) -> Result<JobStatus, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("unknown status `{text}`: one of queued, running, succeeded, dead, cancelled"))
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time such as 2030-01-01T09:00:00Z: {e}"))
}

#[derive(Debug, Args)]
pub(crate) struct SyncArgs {
    /// The local folder.
    pub(crate) dir: PathBuf,
    /// The project.
    pub(crate) project: ProjectRef,
    /// Say what would be done, and do nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PullArgs {
    /// The project.
    pub(crate) project: ProjectRef,
    /// The local folder (created if needed).
    pub(crate) dir: PathBuf,
    /// Say what would be done, and do nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum StorageCommand {
    /// Delete blobs no version refers to (older than storage.gc_grace) and stale temporary files.
    Gc {
        /// Count what would be deleted, and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// How a command reads a password: prompted on a terminal, or one line of stdin.
#[derive(Debug, Args)]
pub(crate) struct PasswordArgs {
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long)]
    pub(crate) password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Create an account (the first administrator of a fresh install: `--admin`).
    Add {
        /// The email address (the sign-in name).
        email: String,
        /// The name shown to others (default: the part of the email before @).
        #[arg(long)]
        name: Option<String>,
        /// Make the account an administrator.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// List every account.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: its sessions and API keys stop working at once.
    Disable {
        /// The account's email or id.
        user: String,
    },
    /// Enable a disabled account.
    Enable {
        /// The account's email or id.
        user: String,
    },
    /// Set an account's global role; its sessions end.
    SetRole {
        /// The account's email or id.
        user: String,
        /// `admin` or `member`.
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Print the audit log, newest first.
    List {
        /// At most this many entries (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only entries before this sequence number (the next page).
        #[arg(long)]
        before: Option<i64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain; exits 65 if a row was edited, inserted or removed.
    Verify,
}

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// The daemon, such as https://cloudx.example.com or http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub(crate) url: String,
    /// The account's email (prompted for when absent).
    #[arg(long)]
    pub(crate) email: Option<String>,
    #[command(flatten)]
    pub(crate) password: PasswordArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApiKeyCommand {
    /// Create a key; its secret is printed once.
    Create {
        /// A name to recognise it by.
        name: String,
        /// Comma-separated scopes: read, write, exec, admin.
        #[arg(long, default_value = "read,write,exec")]
        scopes: String,
        /// How long it stays valid, such as 30d or 12h (default: until revoked).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<humantime::Duration>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List your keys (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it stops working at once.
    Revoke {
        /// The key's id (from `cloudx apikey list`).
        id: uuid::Uuid,
    },
}

/// `cloudx worker`.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Jobs run at once (overrides worker.concurrency).
    #[arg(long, value_name = "N")]
    pub(crate) concurrency: Option<u32>,
    /// Only these job kinds, comma-separated (default: every kind cloudx runs).
    #[arg(long, value_name = "KINDS", value_delimiter = ',')]
    pub(crate) kinds: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics, IP:PORT (overrides worker.metrics_bind;
    /// default: none). Port 0 picks a free port; the address is printed at start.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_bind: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on, IP:PORT (overrides http.bind; default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub(crate) bind: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LlmCommand {
    /// Check the configured endpoint: the model is listed, answers, streams and calls a tool.
    /// Exits 1 when a check fails.
    Check(LlmCheckArgs),
}

#[derive(Debug, Args)]
pub(crate) struct LlmCheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the configuration without starting anything, and print it with secrets redacted.
    Check,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Network: `none` (no interface up) or `loopback` (the sandbox's own loopback only).
    #[arg(long, default_value = "none", value_name = "MODE")]
    pub(crate) net: String,
    /// Memory limit (e.g. 512M, 2G: binary units, as in container tools; 500MB is decimal).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) mem: Option<u64>,
    /// Wall-clock limit (e.g. 10s, 2m).
    #[arg(long, value_name = "DURATION")]
    pub(crate) time: Option<humantime::Duration>,
    /// CPU-time limit (e.g. 5s).
    #[arg(long, value_name = "DURATION")]
    pub(crate) cpu: Option<humantime::Duration>,
    /// Processes (and threads) at once.
    #[arg(long, value_name = "N")]
    pub(crate) pids: Option<u64>,
    /// Bytes kept of each of stdout and stderr (e.g. 1M); the rest is dropped.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) output: Option<u64>,
    /// The folder mounted read-write at /workspace (default: an empty scratch folder).
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// The working directory, relative to /workspace.
    #[arg(long, value_name = "PATH")]
    pub(crate) cwd: Option<String>,
    /// An environment variable for the command (repeatable); nothing else of yours is passed.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub(crate) env: Vec<String>,
    /// A host path bound read-only into the sandbox, as SRC or SRC:DST (repeatable).
    #[arg(long = "bind", value_name = "SRC[:DST]")]
    pub(crate) binds: Vec<String>,
    /// Print the isolation record of the run (namespaces, mounts, landlock, seccomp, limits)
    /// on stderr when it ends.
    #[arg(long)]
    pub(crate) explain: bool,
    /// Print the whole outcome as JSON on stdout when the run ends (the output is then not
    /// streamed).
    #[arg(long)]
    pub(crate) json: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SandboxCommand {
    /// Report what this host supports for the sandbox and what is missing, with the fix.
    Check,
}

/// A size: `512M`, `2G`, `64k` in binary units (as container tools read them), or anything
/// `bytesize` reads (`1.5 GiB`, `500MB`).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let binary = |digits: &str, shift: u32| -> Result<u64, String> {
        let n: u64 = digits.trim().parse().map_err(|_| format!("`{text}` is not a size (e.g. 512M, 2G)"))?;
        n.checked_mul(1u64 << shift).ok_or_else(|| format!("`{text}` is too large"))
    };
    match t.char_indices().last() {
        Some((i, 'k' | 'K')) => binary(&t[..i], 10),
        Some((i, 'm' | 'M')) => binary(&t[..i], 20),
        Some((i, 'g' | 'G')) => binary(&t[..i], 30),
        Some((i, 't' | 'T')) => binary(&t[..i], 40),
        _ => t.parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(|e| format!("`{text}` is not a size: {e}")),
    }
}
