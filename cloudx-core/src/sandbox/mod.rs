//! The Sandbox port: run a command on a workspace with isolation and limits.
//!
//! [`ExecSpec`] says what to run (an argv, never a shell string), with which environment (an
//! explicit list: nothing of the host's leaks), on which workspace, with which limits and
//! network; [`ExecOutcome`] says how it ended, what it printed, what it cost, and which
//! protections were actually applied ([`Isolation`]), so a user can see what protected a run.
//!
//! The Linux backend ([`Sandbox`]) clones the child itself — no bwrap, no nsjail — into new
//! user, pid, mount, network, ipc, uts and cgroup namespaces, pivots into a fresh root built
//! from read-only binds, and adds landlock and a seccomp filter as second layers. See
//! `docs/security.md` for the threat model.

mod linux;
mod policy;
mod project;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use self::linux::{Capabilities, Sandbox, SandboxSettings};
pub use self::policy::SandboxPolicy;
pub use self::project::{ProjectExec, ProjectRun};

/// The `PATH` of a run that sets none: the host's system folders, which every sandbox sees.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The host folders every sandbox sees, read-only, at the same path (where the host has them).
pub const SYSTEM_FOLDERS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];

/// What to run and how.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The program and its arguments; the program is looked up on the sandbox's `PATH` when
    /// it has no `/`.
    pub argv: Vec<String>,
    /// The environment, exactly (a few defaults — `PATH`, `HOME`, `LANG` — are added when
    /// missing); nothing of the caller's environment is passed on.
    pub env: Vec<(String, String)>,
    /// The working directory, relative to `/workspace` (default: `/workspace` itself).
    pub cwd: Option<String>,
    /// Bytes for the command's standard input (default: empty, as `/dev/null`).
    pub stdin: Option<Bytes>,
    /// The host folder mounted read-write at `/workspace`; without one, an empty scratch
    /// folder that is removed afterwards.
    pub workspace: Option<PathBuf>,
    /// Limits; fields left `None` take the configured defaults.
    pub limits: Limits,
    /// Network access.
    pub network: Network,
    /// Extra read-only binds (a toolchain folder, say).
    pub binds: Vec<Bind>,
}

impl ExecSpec {
    /// A spec for `argv` with every other field at its default.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            workspace: None,
            limits: Limits::default(),
            network: Network::None,
            binds: Vec::new(),
        }
    }
}

/// Resource limits of one run. `None` means the configured default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Limits {
    /// Wall-clock time, after which every process of the sandbox is killed.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "30s"))]
    pub wall_time: Option<Duration>,
    /// CPU time (user + system).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "10s"))]
    pub cpu_time: Option<Duration>,
    /// Memory, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Processes (and threads) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// Bytes kept of each of stdout and stderr; the rest is read and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<u64>,
    /// The largest file the command may write, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
    /// Open file descriptors per process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Size of each of `/tmp` and `/dev/shm`, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<u64>,
}

/// The limits of a run once defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EffectiveLimits {
    /// Wall-clock time.
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "1m"))]
    pub wall_time: Duration,
    /// CPU time.
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "1m"))]
    pub cpu_time: Duration,
    /// Memory, in bytes.
    pub memory: u64,
    /// Processes at once.
    pub processes: u64,
    /// Bytes kept of each output stream.
    pub output: u64,
    /// Largest file, in bytes.
    pub file_size: u64,
    /// Open files per process.
    pub open_files: u64,
    /// Size of `/tmp` and of `/dev/shm`, in bytes.
    pub tmpfs_size: u64,
}

/// Network access of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Network {
    /// A network namespace of its own whose loopback interface is down: no network at all.
    #[default]
    None,
    /// A network namespace of its own with its loopback interface up (the sandbox can talk to
    /// itself, never to the host).
    Loopback,
}

impl std::str::FromStr for Network {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Network::None),
            "loopback" => Ok(Network::Loopback),
            other => Err(crate::error::Error::invalid(format!(
                "unknown network mode `{other}`: expected `none` or `loopback`"
            ))),
        }
    }
}

/// A read-only bind of a host path into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bind {
    /// The host path (absolute).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub source: PathBuf,
    /// Where it appears in the sandbox (absolute; default: the same path).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub target: Option<PathBuf>,
}

/// Which limit ended or cut a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum LimitKind {
    /// The wall-clock deadline.
    WallTime,
    /// The CPU-time limit.
    CpuTime,
    /// The memory limit.
    Memory,
    /// The process limit (a fork was refused).
    Processes,
    /// The output cap (output was cut, the run went on).
    Output,
    /// The file-size limit.
    FileSize,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecOutcome {
    /// The exit code, when the command exited.
    pub exit_code: Option<i32>,
    /// The signal that killed the command, when one did.
    pub signal: Option<i32>,
    /// Whether the wall-clock deadline killed it.
    pub timed_out: bool,
    /// Whether the memory limit killed a process of the run (only known with a memory
    /// cgroup; see [`Isolation::memory_limit`]).
    pub oom_killed: bool,
    /// The limit that ended or cut the run, if one did.
    pub limit: Option<LimitKind>,
    /// Standard output, up to the output cap.
    #[serde(serialize_with = "lossy")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub stdout: Bytes,
    /// Whether standard output was cut at the cap.
    pub stdout_truncated: bool,
    /// Standard error, up to the output cap.
    #[serde(serialize_with = "lossy")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub stderr: Bytes,
    /// Whether standard error was cut at the cap.
    pub stderr_truncated: bool,
    /// Whether the run used a sandbox launched ahead of it (`sandbox.warm`), which only
    /// saves time: the protections are the same.
    pub warm: bool,
    /// Wall-clock time from launch to the end of the last process, in milliseconds.
    #[serde(serialize_with = "millis")]
    #[cfg_attr(feature = "openapi", schema(value_type = f64))]
    pub wall_time: Duration,
    /// CPU time (user + system) of every process of the run, in milliseconds.
    #[serde(serialize_with = "millis")]
    #[cfg_attr(feature = "openapi", schema(value_type = f64))]
    pub cpu_time: Duration,
    /// The largest resident memory, in bytes (of the memory cgroup when there is one, else of
    /// the largest single process).
    pub peak_memory: u64,
    /// What protected the run.
    pub isolation: Isolation,
}

impl ExecOutcome {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

fn lossy<S: serde::Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// The protections actually applied to a run.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Isolation {
    /// The namespaces the sandbox has of its own.
    pub namespaces: Vec<&'static str>,
    /// The sandbox's uid and gid inside, and the host uid and gid they map to.
    pub uid: u32,
    /// The sandbox's gid inside.
    pub gid: u32,
    /// The host uid the sandbox's processes run as.
    pub host_uid: u32,
    /// The host gid.
    pub host_gid: u32,
    /// Whether `setgroups` is denied in the sandbox's user namespace.
    pub setgroups_denied: bool,
    /// The sandbox's root: what is mounted where, and how.
    pub mounts: Vec<String>,
    /// Landlock: the ABI used (0 when landlock was not applied) and the rules.
    pub landlock_abi: u8,
    /// The landlock rules (path: access).
    pub landlock_rules: Vec<String>,
    /// Landlock scopes (signals, abstract unix sockets) when the ABI has them.
    pub landlock_scopes: Vec<&'static str>,
    /// The seccomp filter: the system calls it denies, by name.
    pub seccomp_denied: Vec<&'static str>,
    /// How the memory and process limits are enforced: `cgroup v2`, `cgroup v1` or
    /// `rlimit` (a backstop per process, weaker).
    pub memory_limit: String,
    /// How the process limit is enforced.
    pub process_limit: String,
    /// The rlimits set (name = value).
    pub rlimits: Vec<String>,
    /// The network mode.
    pub network: Network,
    /// Capabilities left to the command (always none).
    pub capabilities: &'static str,
    /// Whether `no_new_privs` is set.
    pub no_new_privs: bool,
    /// Protections that were configured but not available, when the configuration allows
    /// degrading (`sandbox.allow_degraded`).
    pub degraded: Vec<String>,
    /// The limits in force.
    pub limits: EffectiveLimits,
}

/// A piece of output of a streaming run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputChunk {
    /// Bytes the command wrote to its standard output.
    Stdout(Bytes),
    /// Bytes the command wrote to its standard error.
    Stderr(Bytes),
}

/// Where scratch folders go when the configuration names none.
pub(crate) fn default_scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("cloudx-sandbox-{}", nix::unistd::geteuid()))
}
