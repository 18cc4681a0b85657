//! The Linux backend of the Sandbox port: the parent side (plans, launch, supervision).

mod cgroup;
mod landlock;
mod namespaces;
mod seccomp;
mod sys;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use nix::errno::Errno;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use self::cgroup::{Cgroups, RunCgroup};
use self::namespaces::{INSIDE_ID, Op, Plan, REPORT_LEN, Report, Request, Step, WarmBuffers};
use super::{EffectiveLimits, ExecOutcome, ExecSpec, Isolation, LimitKind, Network, OutputChunk};
use crate::config::SandboxConfig;
use crate::error::{Error, ErrorKind, Result};

/// The sandbox's settings: defaults and where scratch goes.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// Where scratch folders are made.
    pub scratch_dir: PathBuf,
    /// The limits of a run that names none.
    pub defaults: EffectiveLimits,
    /// First host uid of the range used when running as root.
    pub uid_base: u32,
    /// Size of that range.
    pub uid_count: u32,
    /// Run without an unavailable protection instead of refusing.
    pub allow_degraded: bool,
    /// How many sandboxes to keep launched ahead of their runs (0: launch each run's own).
    pub warm: usize,
}

impl SandboxSettings {
    /// The settings of a configuration's `[sandbox]` section.
    pub fn from_config(config: &SandboxConfig) -> Self {
        Self {
            scratch_dir: config.scratch_dir.clone().unwrap_or_else(super::default_scratch_dir),
            defaults: EffectiveLimits {
                wall_time: config.wall_time,
                cpu_time: config.cpu_time,
                memory: config.memory.as_u64(),
                processes: config.processes,
                output: config.output.as_u64(),
                file_size: config.file_size.as_u64(),
                open_files: config.open_files,
                tmpfs_size: config.tmpfs_size.as_u64(),
            },
            uid_base: config.uid_base,
            uid_count: config.uid_count.max(1),
            allow_degraded: config.allow_degraded,
            warm: config.warm,
        }
    }
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self::from_config(&SandboxConfig::default())
    }
}

/// What the host offers the sandbox, and what is missing (with the fix).
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    /// Whether the supervisor runs as root (then sandboxes get uids of their own).
    pub root: bool,
    /// Whether user namespaces can be created.
    pub user_namespaces: bool,
    /// The landlock ABI (0: none).
    pub landlock_abi: u8,
    /// Whether seccomp filters can be installed.
    pub seccomp: bool,
    /// How memory and process limits can be enforced: `cgroup v1 (memory, pids)` and the
    /// like, or `rlimit only`.
    pub cgroup: String,
    /// What is missing, each with how to fix it.
    pub problems: Vec<String>,
}

/// The Linux sandbox. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SandboxSettings,
    capabilities: Capabilities,
    cgroups: Option<Cgroups>,
    uids: Arc<Mutex<BTreeSet<u32>>>,
    /// Sandboxes launched ahead of their runs.
    warm: Mutex<WarmPool>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("capabilities", &self.inner.capabilities).finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Checks the host and prepares the sandbox. Fails, naming what is missing, when user
    /// namespaces or seccomp are unavailable, or landlock and a memory cgroup are and
    /// `allow_degraded` is off.
    pub fn new(settings: SandboxSettings) -> Result<Sandbox> {
        let (capabilities, cgroups) = probe();
        if !capabilities.user_namespaces || !capabilities.seccomp {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("the sandbox cannot run on this host: {}", capabilities.problems.join("; ")),
            ));
        }
        if !settings.allow_degraded && capabilities.landlock_abi == 0 {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "landlock is not available on this host (Linux 5.13 or newer with landlock in the `lsm=` boot list); \
                 set sandbox.allow_degraded = true to run without it",
            ));
        }
        ensure_private_dir(&settings.scratch_dir)?;
        sweep(&settings.scratch_dir, cgroups.as_ref());
        Ok(Sandbox {
            inner: Arc::new(Inner {
                settings,
                capabilities,
                cgroups,
                uids: Arc::default(),
                warm: Mutex::new(WarmPool::default()),
            }),
        })
    }

    /// What this host supports, without preparing anything.
    pub fn probe() -> Capabilities {
        probe().0
    }

    /// What the host supports, as found when this sandbox was made.
    pub fn capabilities(&self) -> &Capabilities {
        &self.inner.capabilities
    }

    /// The settings in force.
    pub fn settings(&self) -> &SandboxSettings {
        &self.inner.settings
    }

    /// Runs `spec` to the end and returns how it went.
    pub async fn exec(&self, spec: ExecSpec) -> Result<ExecOutcome> {
        self.run(spec, None).await
    }

    /// Runs `spec`, sending its output to `chunks` as it comes (up to the output cap), and
    /// returns how it went (with the same output, capped, in the outcome).
    pub async fn exec_streaming(&self, spec: ExecSpec, chunks: mpsc::Sender<OutputChunk>) -> Result<ExecOutcome> {
        self.run(spec, Some(chunks)).await
    }

    /// The isolation record a run of `spec` would have, without running it.
    pub fn explain(&self, spec: &ExecSpec) -> Result<Isolation> {
        let limits = self.limits(spec);
        let workspace = spec.workspace.clone().unwrap_or_else(|| self.inner.settings.scratch_dir.join("run-…"));
        // As root a run gets a uid of the range: the first one stands in for it.
        let host = if self.inner.capabilities.root {
            (self.inner.settings.uid_base, self.inner.settings.uid_base)
        } else {
            self.inside_host_ids(None)
        };
        let prepared = self.prepare(spec, &limits, &workspace, host)?;
        Ok(prepared.isolation)
    }

    fn limits(&self, spec: &ExecSpec) -> EffectiveLimits {
        let d = &self.inner.settings.defaults;
        let l = &spec.limits;
        EffectiveLimits {
            wall_time: l.wall_time.unwrap_or(d.wall_time),
            cpu_time: l.cpu_time.unwrap_or(d.cpu_time),
            memory: l.memory.unwrap_or(d.memory),
            processes: l.processes.unwrap_or(d.processes),
            output: l.output.unwrap_or(d.output),
            file_size: l.file_size.unwrap_or(d.file_size),
            open_files: l.open_files.unwrap_or(d.open_files),
            tmpfs_size: l.tmpfs_size.unwrap_or(d.tmpfs_size),
        }
    }

    /// The host uid and gid the sandbox runs as: the caller's, or one of the range as root.
    fn inside_host_ids(&self, uid: Option<u32>) -> (u32, u32) {
        match uid {
            Some(uid) => (uid, uid),
            None => (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()),
        }
    }

    async fn run(&self, spec: ExecSpec, chunks: Option<mpsc::Sender<OutputChunk>>) -> Result<ExecOutcome> {
        validate(&spec, &self.inner.settings.scratch_dir)?;
        let limits = self.limits(&spec);
        let warm = match self.warm_eligible(&spec) {
            true => self.take_warm(),
            false => None,
        };
        let outcome = match warm {
            Some(warm) => self.run_warm(warm, spec, limits, chunks).await,
            None => self.run_cold(spec, limits, chunks).await,
        };
        // Launched after the run, not beside it: they would compete for the same CPUs.
        if self.inner.settings.warm > 0 {
            self.refill();
        }
        outcome
    }

    /// Whether a warm sandbox can take `spec`: one without extra binds (their mount points are
    /// part of the root's layout) and, as root, without a folder of the caller's (it needs an
    /// idmapped mount made for the run's uid).
    fn warm_eligible(&self, spec: &ExecSpec) -> bool {
        self.inner.settings.warm > 0
            && spec.binds.is_empty()
            && !(self.inner.capabilities.root && spec.workspace.is_some())
    }

    /// The oldest warm sandbox that is still ready, if any. Older than [`WARM_MAX_AGE`] (its
    /// mount namespace is a copy of the host's from then) or ended meanwhile (its init died or
    /// failed), one is dropped instead.
    fn take_warm(&self) -> Option<Warm> {
        loop {
            let warm = self.inner.warm.lock().expect("warm pool poisoned").ready.pop_front()?;
            if warm.launched_at.elapsed() < WARM_MAX_AGE && warm.is_waiting() {
                return Some(warm);
            }
        }
    }

    /// Launches warm sandboxes, each on a thread of its own, until `warm` are ready or being
    /// launched. After a failed launch, warming pauses for [`WARM_RETRY`] (runs launch cold)
    /// and the failure is logged.
    fn refill(&self) {
        let target = self.inner.settings.warm;
        let mut pool = self.inner.warm.lock().expect("warm pool poisoned");
        if pool.failed_at.is_some_and(|at| at.elapsed() < WARM_RETRY) {
            return;
        }
        pool.failed_at = None;
        while pool.ready.len() + pool.launching < target {
            pool.launching += 1;
            let sandbox = self.clone();
            let spawned = std::thread::Builder::new().name("cloudx-warm".into()).spawn(move || {
                let warm = sandbox.launch_warm();
                let mut pool = sandbox.inner.warm.lock().expect("warm pool poisoned");
                pool.launching -= 1;
                match warm {
                    Ok(warm) => pool.ready.push_back(warm),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot launch a sandbox ahead of its run; runs launch cold for a while");
                        pool.failed_at = Some(Instant::now());
                    }
                }
            });
            if spawned.is_err() {
                pool.launching -= 1;
                break;
            }
        }
    }

    /// Launches `sandbox.warm` sandboxes ahead of their runs and waits (up to five seconds)
    /// until they are ready, so that the next runs start warm: a daemon calls it at start.
    pub async fn prewarm(&self) {
        self.refill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            {
                let pool = self.inner.warm.lock().expect("warm pool poisoned");
                if pool.failed_at.is_some() || pool.launching == 0 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A sandbox launched ahead of its run (on a warming thread): a uid, a scratch workspace,
    /// a cgroup with the default limits, the namespaces and the root but for the workspace,
    /// `/tmp` and `/dev/shm`; init waits for the run's request.
    fn launch_warm(&self) -> Result<Warm> {
        let lease = if self.inner.capabilities.root { Some(UidLease::take(self)?) } else { None };
        let host = self.inside_host_ids(lease.as_ref().map(|l| l.uid));
        let scratch_dir = &self.inner.settings.scratch_dir;
        let name = format!("run-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let scratch = Scratch::create(scratch_dir, &name, lease.as_ref().map(|l| l.uid))?;
        let limits = self.inner.settings.defaults.clone();
        let cgroup = self.take_cgroup(&limits)?;
        let template = ExecSpec::new(["true"]);
        let mut prepared = self.prepare(&template, &limits, &scratch.dir, host)?;
        let root = skeleton(scratch_dir, &prepared.skeleton)?;
        prepared.plan.root = cstr_path(&root)?;
        for &i in prepared.deferred.iter().rev() {
            prepared.plan.ops.remove(i);
            prepared.op_names.remove(i);
        }
        prepared.plan.warm = Some(WarmBuffers::new());
        if let Some(cgroup) = &cgroup {
            prepared.plan.cgroup_tasks = cgroup.tasks_files().iter().map(|p| cstr_path(p)).collect::<Result<_>>()?;
        }
        let (go_r, go_w) = pipe()?;
        let (launched, _, op_names) = launch(prepared, host, cgroup.as_ref(), None, Some(go_r))?;
        let error = match ready(&launched.report) {
            Ok(Some(Report::Ready)) => {
                return Ok(Warm {
                    launched,
                    go: go_w,
                    host,
                    root,
                    cgroup,
                    scratch,
                    lease,
                    launched_at: Instant::now(),
                });
            }
            Ok(Some(Report::Failed { step, errno, index })) => setup_error(step, errno, index, &template, &op_names),
            Ok(_) => Error::new(ErrorKind::Unavailable, "a sandbox launched ahead ended before it was ready"),
            Err(e) => Error::new(ErrorKind::Unavailable, format!("a sandbox launched ahead did not get ready: {e}")),
        };
        abandon(launched, (cgroup, scratch, lease));
        Err(error)
    }

    /// Runs `spec` in a warm sandbox: its limits into the cgroup, its request to init.
    async fn run_warm(
        &self,
        warm: Warm,
        spec: ExecSpec,
        limits: EffectiveLimits,
        chunks: Option<mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome> {
        let started = Instant::now();
        let Warm { mut launched, go, host, root, mut cgroup, scratch, lease, .. } = warm;
        if let (Some(cgroups), Some(run)) = (&self.inner.cgroups, cgroup.as_mut())
            && let Err(e) = cgroups.relimit(run, &limits)
        {
            // (A limit below what the cgroup still holds: this one cannot take the run.)
            tracing::debug!(error = %e, "a warm sandbox's cgroup refused the run's limits; launching cold");
            abandon(launched, (cgroup, scratch, lease));
            return self.run_cold(spec, limits, chunks).await;
        }
        let workspace = spec.workspace.clone().unwrap_or_else(|| scratch.dir.clone());
        // The plan holds raw pointers: it must not live across an await.
        let (request, isolation, op_names) = {
            let prepared = self.prepare(&spec, &limits, &workspace, host)?;
            let request = Request {
                loopback: spec.network == Network::Loopback,
                workspace: &cstr_path(&workspace)?,
                workspace_flags: prepared.workspace_flags,
                tmpfs: &prepared.tmpfs,
                cwd: &prepared.plan.cwd,
                rlimits: &prepared.plan.rlimits,
                programs: &prepared.programs,
                argv: &prepared.argv,
                envp: &prepared.envp,
            }
            .encode()
            // The host's /etc changed since this sandbox was launched, or the request is huge.
            .filter(|_| skeleton_path(&self.inner.settings.scratch_dir, &prepared.skeleton) == root);
            (request, prepared.isolation, prepared.op_names)
        };
        let Some(request) = request else {
            abandon(launched, (cgroup, scratch, lease));
            return self.run_cold(spec, limits, chunks).await;
        };
        // From here, whatever happens (an error, the run's future dropped), the processes are
        // ended and reaped before the uid, the scratch folder and the cgroup are released.
        let running = Running { outer: launched.outer.take(), rest: Some((cgroup, Some(scratch), lease)) };
        let mut go = tokio::net::unix::pipe::Sender::from_owned_fd(go)
            .map_err(|e| Error::internal("cannot use a warm sandbox's request pipe", e))?;
        // A write error means init has gone: supervision reads its report.
        let _ = go.write_all(&request).await;
        drop(go);
        let supervised = supervise(launched, &spec, &limits, chunks, started).await?;
        let stats = running.stats();
        running.finish(spec.workspace.is_some()).await;
        let mut outcome = finish(supervised, stats, isolation, &op_names, &spec)?;
        outcome.warm = true;
        Ok(outcome)
    }

    /// A cgroup for a run with `limits`, when the host gives cgroups.
    fn take_cgroup(&self, limits: &EffectiveLimits) -> Result<Option<RunCgroup>> {
        let Some(cgroups) = &self.inner.cgroups else { return Ok(None) };
        cgroups
            .take(limits)
            .map(Some)
            .map_err(|e| Error::new(ErrorKind::Unavailable, format!("cannot create the run's cgroup: {e}")))
    }

    /// Runs `spec` in a sandbox launched for it.
    async fn run_cold(
        &self,
        spec: ExecSpec,
        limits: EffectiveLimits,
        chunks: Option<mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome> {
        let lease = if self.inner.capabilities.root { Some(UidLease::take(self)?) } else { None };
        let (host_uid, host_gid) = self.inside_host_ids(lease.as_ref().map(|l| l.uid));
        let name = format!("run-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let scratch = match &spec.workspace {
            Some(_) => None,
            None => Some(Scratch::create(&self.inner.settings.scratch_dir, &name, lease.as_ref().map(|l| l.uid))?),
        };
        let cgroup = self.take_cgroup(&limits)?;
        let workspace = match (&spec.workspace, &scratch) {
            (Some(dir), _) => dir.clone(),
            (None, Some(scratch)) => scratch.dir.clone(),
            (None, None) => unreachable!("a scratch workspace is made when none is given"),
        };
        let started = Instant::now();
        // Planning, the clone and the handshake block (about a millisecond): off the runtime.
        let (sandbox, planned, planned_limits) = (self.clone(), spec.clone(), limits.clone());
        let (launched, isolation, op_names, cgroup) = tokio::task::spawn_blocking(move || {
            sandbox
                .start(&planned, &planned_limits, &workspace, (host_uid, host_gid), cgroup.as_ref())
                .map(|(launched, isolation, op_names)| (launched, isolation, op_names, cgroup))
        })
        .await
        .map_err(|e| Error::internal("the sandbox's launching thread failed", e))??;
        let mut launched = launched;
        let running = Running { outer: launched.outer.take(), rest: Some((cgroup, scratch, lease)) };
        let supervised = supervise(launched, &spec, &limits, chunks, started).await?;
        let stats = running.stats();
        running.finish(spec.workspace.is_some()).await;
        finish(supervised, stats, isolation, &op_names, &spec)
    }

    /// Prepares and launches a run (synchronously: the plan holds raw pointers for the child).
    fn start(
        &self,
        spec: &ExecSpec,
        limits: &EffectiveLimits,
        workspace: &Path,
        host: (u32, u32),
        cgroup: Option<&RunCgroup>,
    ) -> Result<(Launched, Isolation, Vec<String>)> {
        let mut prepared = self.prepare(spec, limits, workspace, host)?;
        prepared.plan.root = cstr_path(&skeleton(&self.inner.settings.scratch_dir, &prepared.skeleton)?)?;
        if let Some(cgroup) = cgroup {
            prepared.plan.cgroup_tasks = cgroup.tasks_files().iter().map(|p| cstr_path(p)).collect::<Result<_>>()?;
        }
        let idmapped = match prepared.idmap {
            Some(owner) => Some(idmapped_tree(workspace, owner, host)?),
            None => None,
        };
        launch(prepared, host, cgroup, idmapped, None)
    }

    /// Builds the plan of a run and its isolation record.
    fn prepare(
        &self,
        spec: &ExecSpec,
        limits: &EffectiveLimits,
        workspace: &Path,
        host: (u32, u32),
    ) -> Result<Prepared> {
        let caps = &self.inner.capabilities;
        let mut builder = PlanBuilder::default();
        // The system folders, read-only (symlinks where the host has them: merged /usr).
        for dir in super::SYSTEM_FOLDERS {
            builder.host_path(Path::new(dir), Path::new(dir))?;
        }
        builder.dir("etc");
        for name in ETC_FILES {
            let path = Path::new("/etc").join(name);
            if let Ok(meta) = path.symlink_metadata() {
                builder.copy(&path, &format!("etc/{name}"), &meta);
            }
        }
        builder.content("etc/passwd", PASSWD);
        builder.content("etc/group", GROUP);
        builder.content("etc/hosts", HOSTS);
        builder.content("etc/hostname", b"sandbox\n");
        builder.content("etc/resolv.conf", b"");
        builder.dir("workspace");
        // As root, a given folder is idmapped: its owner appears as the sandbox's user, and
        // what the sandbox writes belongs to the owner (never to the sandbox's stray uid).
        let idmap = match &spec.workspace {
            Some(dir) if caps.root => Some(owner_of(dir)?).filter(|owner| *owner != host),
            _ => None,
        };
        builder.defer_next();
        match idmap {
            Some(owner) => builder.idmapped(workspace, "workspace", owner)?,
            None => builder.bind(workspace, "workspace", false)?,
        }
        let tmpfs = format!("size={},nr_inodes={},mode=1777", limits.tmpfs_size, tmpfs_inodes(limits.tmpfs_size));
        builder.dir("tmp");
        builder.defer_next();
        builder.tmpfs("tmp", &tmpfs);
        builder.dir("dev");
        for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
            builder.device(dev)?;
        }
        for (link, target) in [
            ("dev/fd", "/proc/self/fd"),
            ("dev/stdin", "/proc/self/fd/0"),
            ("dev/stdout", "/proc/self/fd/1"),
            ("dev/stderr", "/proc/self/fd/2"),
        ] {
            builder.symlink(target, link);
        }
        builder.dir("dev/shm");
        builder.defer_next();
        builder.tmpfs("dev/shm", &tmpfs);
        builder.dir("proc");
        builder.op(Op::Proc(cstr("proc")?), "/proc: procfs of the sandbox's pid namespace".into());
        for file in PROC_MASKED_FILES {
            if Path::new("/proc").join(file).exists() {
                builder.op(
                    Op::Mask { target: cstr(&format!("proc/{file}"))?, folder: false },
                    format!("/proc/{file}: masked"),
                );
            }
        }
        for folder in PROC_MASKED_FOLDERS {
            if Path::new("/proc").join(folder).is_dir() {
                builder.op(
                    Op::Mask { target: cstr(&format!("proc/{folder}"))?, folder: true },
                    format!("/proc/{folder}: masked"),
                );
            }
        }
        for folder in PROC_READ_ONLY {
            if Path::new("/proc").join(folder).exists() {
                builder.op(Op::ReadOnly(cstr(&format!("proc/{folder}"))?), format!("/proc/{folder}: read-only"));
            }
        }
        for bind in &spec.binds {
            let target = bind.target.clone().unwrap_or_else(|| bind.source.clone());
            builder.host_path(&bind.source, &target)?;
        }

        // The command.
        let mut env: Vec<(String, String)> = spec.env.clone();
        for (key, value) in DEFAULT_ENV {
            if !env.iter().any(|(k, _)| k == key) {
                env.push(((*key).into(), (*value).into()));
            }
        }
        let path_var = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()).unwrap_or_default();
        let program = &spec.argv[0];
        let programs: Vec<CString> = if program.contains('/') {
            vec![cstr(program)?]
        } else {
            path_var
                .split(':')
                .filter(|d| d.starts_with('/'))
                .map(|d| cstr(&format!("{}/{program}", d.trim_end_matches('/'))))
                .collect::<Result<_>>()?
        };
        let argv: Vec<CString> = spec.argv.iter().map(|a| cstr(a)).collect::<Result<_>>()?;
        let envp: Vec<CString> = env.iter().map(|(k, v)| cstr(&format!("{k}={v}"))).collect::<Result<_>>()?;
        let cwd = match &spec.cwd {
            Some(dir) => format!("/workspace/{}", dir.trim_matches('/')),
            None => "/workspace".into(),
        };

        // Limits that are not the cgroup's.
        let secs = limits.cpu_time.as_secs().max(1);
        let mut rlimits = vec![
            ("RLIMIT_CPU", libc::RLIMIT_CPU, secs, secs + 1),
            ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE, limits.file_size, limits.file_size),
            ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE, limits.open_files, limits.open_files),
            // Init counts too: it has the sandbox's uid.
            ("RLIMIT_NPROC", libc::RLIMIT_NPROC, limits.processes + 1, limits.processes + 1),
            ("RLIMIT_CORE", libc::RLIMIT_CORE, 0, 0),
        ];
        let memory_cgroup = self.inner.cgroups.as_ref().is_some_and(Cgroups::has_memory);
        let pids_cgroup = self.inner.cgroups.as_ref().is_some_and(Cgroups::has_pids);
        if !memory_cgroup {
            rlimits.push(("RLIMIT_AS", libc::RLIMIT_AS, limits.memory, limits.memory));
        }

        let landlock = if caps.landlock_abi > 0 { Some(landlock::Rules::new(caps.landlock_abi)?) } else { None };
        let filters = seccomp::filters().map_err(|e| Error::new(ErrorKind::Internal, e))?;

        let mut degraded = Vec::new();
        if landlock.is_none() {
            degraded.push("landlock (not available on this kernel)".to_string());
        }
        if !memory_cgroup {
            degraded.push("memory cgroup (memory limited per process by RLIMIT_AS instead)".to_string());
        }
        if !pids_cgroup {
            degraded
                .push("pids cgroup (processes limited by RLIMIT_NPROC in the sandbox's user namespace)".to_string());
        }
        let isolation = Isolation {
            namespaces: vec!["user", "pid", "mount", "network", "ipc", "uts", "cgroup"],
            uid: INSIDE_ID,
            gid: INSIDE_ID,
            host_uid: host.0,
            host_gid: host.1,
            setgroups_denied: true,
            mounts: builder.described.clone(),
            landlock_abi: landlock.as_ref().map_or(0, |l| l.abi),
            landlock_rules: landlock.as_ref().map(|l| l.described.clone()).unwrap_or_default(),
            landlock_scopes: landlock.as_ref().map(|l| l.scopes.clone()).unwrap_or_default(),
            seccomp_denied: filters.denied.clone(),
            memory_limit: if memory_cgroup { self.cgroup_mode() } else { "rlimit (RLIMIT_AS, per process)".into() },
            process_limit: if pids_cgroup { self.cgroup_mode() } else { "rlimit (RLIMIT_NPROC)".into() },
            rlimits: rlimits.iter().map(|&(name, _, soft, _)| format!("{name}={soft}")).collect(),
            network: spec.network,
            capabilities: "none",
            no_new_privs: true,
            degraded,
            limits: limits.clone(),
        };
        let plan = Plan {
            drop_groups: caps.root,
            root: CString::default(),
            root_flags: locked_flags(&self.inner.settings.scratch_dir),
            ops: std::mem::take(&mut builder.ops),
            loopback: spec.network == Network::Loopback,
            cgroup_namespace: true,
            cgroup_tasks: Vec::new(),
            cwd: cstr(&cwd)?,
            programs: Vec::new(),
            argv: Vec::new(),
            envp: Vec::new(),
            rlimits: rlimits.iter().map(|&(_, resource, soft, hard)| (resource, soft, hard)).collect(),
            landlock: landlock.as_ref().map(|l| l.child_rules.iter().map(|(p, a)| (p.clone(), *a)).collect()),
            seccomp: &filters.programs,
            fds: [-1; 9],
            warm: None,
        };
        Ok(Prepared {
            plan,
            op_names: builder.names,
            skeleton: builder.skeleton,
            deferred: builder.deferred,
            programs,
            argv,
            envp,
            landlock,
            isolation,
            idmap,
            tmpfs: cstr(&tmpfs)?,
            workspace_flags: libc::MS_NOSUID | libc::MS_NODEV | locked_flags(workspace),
        })
    }

    fn cgroup_mode(&self) -> String {
        self.inner.cgroups.as_ref().map_or_else(|| "none".into(), Cgroups::describe)
    }
}

/// What of the host's `/etc` the sandbox sees, when it exists: copied into the root skeleton
/// (read-only inside), which is rebuilt when one of them changes. Never `/etc/ssl/private`,
/// `/etc/shadow` or anything else not listed.
const ETC_FILES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "alternatives",
    "nsswitch.conf",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "mime.types",
    "protocols",
    "services",
    "host.conf",
    "gai.conf",
];

const PASSWD: &[u8] = b"root:x:0:0:root:/root:/usr/sbin/nologin\n\
sandbox:x:1000:1000:sandbox:/workspace:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &[u8] = b"root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n";
const HOSTS: &[u8] = b"127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n";

const DEFAULT_ENV: &[(&str, &str)] = &[
    ("PATH", super::DEFAULT_PATH),
    ("HOME", "/workspace"),
    ("USER", "sandbox"),
    ("LANG", "C.UTF-8"),
    ("TMPDIR", "/tmp"),
];

const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "key-users",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "kallsyms",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
];
const PROC_MASKED_FOLDERS: &[&str] = &["acpi", "scsi", "driver"];
const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus", "fs"];

fn tmpfs_inodes(size: u64) -> u64 {
    (size / 4096).clamp(1024, 1 << 20)
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::invalid(format!("`{}` contains a NUL byte", s.escape_debug())))
}

fn cstr_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("the path {} contains a NUL byte", p.display())))
}

/// Checks what a caller may get wrong, each with a message naming the problem.
fn validate(spec: &ExecSpec, scratch: &Path) -> Result<()> {
    let Some(program) = spec.argv.first() else {
        return Err(Error::invalid("the command is empty: give a program and its arguments"));
    };
    if program.is_empty() {
        return Err(Error::invalid("the program name is empty"));
    }
    for arg in &spec.argv {
        if arg.contains('\0') {
            return Err(Error::invalid(format!("the argument `{}` contains a NUL byte", arg.escape_debug())));
        }
    }
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(Error::invalid(format!("`{}` is not a valid environment variable name", key.escape_debug())));
        }
        if value.contains('\0') {
            return Err(Error::invalid(format!("the value of {key} contains a NUL byte")));
        }
    }
    if let Some(cwd) = &spec.cwd {
        let path = Path::new(cwd.trim_start_matches("/workspace").trim_start_matches('/'));
        if cwd.contains('\0') || path.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(Error::invalid(format!(
                "the working directory `{}` must be a folder inside the workspace, without `..`",
                cwd.escape_debug()
            )));
        }
    }
    // The scratch folder holds the root skeletons and other runs' workspaces: no run may see it.
    let scratch = std::fs::canonicalize(scratch).unwrap_or_else(|_| scratch.to_path_buf());
    let overlaps =
        |path: &Path| std::fs::canonicalize(path).is_ok_and(|p| p.starts_with(&scratch) || scratch.starts_with(&p));
    if let Some(dir) = &spec.workspace {
        if overlaps(dir) {
            return Err(Error::invalid(format!(
                "the workspace {} overlaps the sandbox's scratch folder {} (sandbox.scratch_dir)",
                dir.display(),
                scratch.display()
            )));
        }
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::invalid(format!("the workspace {} is not a folder", dir.display()))),
            Err(e) => return Err(Error::invalid(format!("the workspace {} cannot be used: {e}", dir.display()))),
        }
    }
    for bind in &spec.binds {
        if !bind.source.is_absolute() || bind.target.as_ref().is_some_and(|t| !t.is_absolute()) {
            return Err(Error::invalid(format!("the bind {} must use absolute paths", bind.source.display())));
        }
        let target = bind.target.as_deref().unwrap_or(&bind.source);
        if target.components().any(|c| matches!(c, Component::ParentDir))
            || ["/", "/proc", "/dev", "/workspace", "/tmp", "/etc"].iter().any(|p| target == Path::new(p))
        {
            return Err(Error::invalid(format!("a bind cannot be mounted at {}", target.display())));
        }
        if overlaps(&bind.source) {
            return Err(Error::invalid(format!(
                "the bind {} overlaps the sandbox's scratch folder {}",
                bind.source.display(),
                scratch.display()
            )));
        }
        if let Err(e) = std::fs::metadata(&bind.source) {
            return Err(Error::invalid(format!("the bind source {} cannot be used: {e}", bind.source.display())));
        }
    }
    Ok(())
}

/// The mount plan being built, and its description for the isolation record.
#[derive(Default)]
struct PlanBuilder {
    ops: Vec<Op>,
    skeleton: Vec<Skel>,
    /// What each op does, for error messages.
    names: Vec<String>,
    described: Vec<String>,
    dirs: BTreeSet<String>,
    /// Indices of the ops a warm sandbox does only once it has its run.
    deferred: Vec<usize>,
}

impl PlanBuilder {
    /// Marks the next op as one a warm sandbox defers.
    fn defer_next(&mut self) {
        self.deferred.push(self.ops.len());
    }

    fn op(&mut self, op: Op, description: String) {
        self.names.push(describe_op(&op));
        self.ops.push(op);
        if !description.is_empty() {
            self.described.push(description);
        }
    }

    /// A directory and its parents (relative to the root).
    fn dir(&mut self, rel: &str) {
        let mut path = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            if self.dirs.insert(path.clone()) {
                self.skeleton.push(Skel::Dir(path.clone()));
            }
        }
    }

    fn content(&mut self, rel: &str, content: &[u8]) {
        self.skeleton.push(Skel::File(rel.into(), content.to_vec()));
    }

    fn symlink(&mut self, target: &str, rel: &str) {
        self.skeleton.push(Skel::Symlink(PathBuf::from(target), rel.into()));
    }

    /// A copy of a host file, folder (recursively) or symlink in the skeleton; its size and
    /// modification time are part of the skeleton's key, so a change makes a new skeleton.
    fn copy(&mut self, source: &Path, rel: &str, meta: &std::fs::Metadata) {
        use std::os::unix::fs::MetadataExt as _;
        if let Some(parent) = Path::new(rel).parent().filter(|p| !p.as_os_str().is_empty()) {
            self.dir(&parent.to_string_lossy());
        }
        self.skeleton.push(Skel::Copy(source.to_path_buf(), rel.into(), meta.len(), meta.mtime(), meta.mtime_nsec()));
        self.described.push(format!("/{rel}: copy of {} (read-only)", source.display()));
    }

    fn tmpfs(&mut self, rel: &str, options: &str) {
        let flags = libc::MS_NOSUID | libc::MS_NODEV | if rel == "dev/shm" { libc::MS_NOEXEC } else { 0 };
        self.op(
            Op::Tmpfs {
                target: CString::new(rel).expect("constant"),
                options: CString::new(options).expect("constant"),
                flags,
            },
            format!("/{rel}: tmpfs ({options}), nosuid, nodev"),
        );
    }

    /// A host path at `target`: a symlink is recreated, a folder or file bound read-only.
    fn host_path(&mut self, source: &Path, target: &Path) -> Result<()> {
        let Ok(meta) = source.symlink_metadata() else { return Ok(()) };
        let rel = target.strip_prefix("/").unwrap_or(target).to_string_lossy().into_owned();
        if let Some(parent) = Path::new(&rel).parent().filter(|p| !p.as_os_str().is_empty()) {
            self.dir(&parent.to_string_lossy());
        }
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(source).map_err(|e| Error::internal("cannot read a symlink", e))?;
            self.described.push(format!("{} -> {}", target.display(), link.display()));
            self.skeleton.push(Skel::Symlink(link, rel));
            return Ok(());
        }
        if meta.is_dir() {
            self.dir(&rel);
        } else {
            self.skeleton.push(Skel::File(rel.clone(), Vec::new()));
        }
        self.bind(source, &rel, true)
    }

    fn bind(&mut self, source: &Path, rel: &str, read_only: bool) -> Result<()> {
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV | locked_flags(source);
        if read_only {
            flags |= libc::MS_RDONLY;
        }
        self.op(
            Op::Bind { source: cstr_path(source)?, target: cstr(rel)?, flags },
            format!(
                "/{rel}: bind of {}, {}, nosuid, nodev",
                source.display(),
                if read_only { "read-only" } else { "read-write" }
            ),
        );
        Ok(())
    }

    /// The host folder `source` at `rel`, read-write, through an idmapped mount that shows
    /// its owner's ids as the sandbox's (made by the supervisor, attached by init).
    fn idmapped(&mut self, source: &Path, rel: &str, owner: (u32, u32)) -> Result<()> {
        self.op(
            Op::Attach(cstr(rel)?),
            format!(
                "/{rel}: idmapped bind of {} (its owner {}:{} appears as the sandbox's user, and owns what it \
                 writes), read-write, nosuid, nodev",
                source.display(),
                owner.0,
                owner.1
            ),
        );
        Ok(())
    }

    fn device(&mut self, name: &str) -> Result<()> {
        let rel = format!("dev/{name}");
        self.skeleton.push(Skel::File(rel.clone(), Vec::new()));
        let source = format!("/dev/{name}");
        self.op(Op::Device { source: cstr(&source)?, target: cstr(&rel)? }, String::new());
        Ok(())
    }
}

/// An entry of a root skeleton: made on the host once, shared by every run with the same
/// layout (each run mounts onto it in a mount namespace of its own).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Skel {
    Dir(String),
    File(String, Vec<u8>),
    Symlink(PathBuf, String),
    /// A host path copied: (source, target, size, mtime seconds, mtime nanoseconds).
    Copy(PathBuf, String, u64, i64, i64),
}

/// Copies a host file, symlink or folder (recursively) into a skeleton: regular files with
/// mode 0644 (0755 if executable), symlinks as they are, nothing else (devices, sockets, and
/// whatever this process cannot read are left out).
fn copy_tree(source: &Path, target: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = source.symlink_metadata()?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(source)?, target)
    } else if kind.is_dir() {
        std::fs::create_dir(target)?;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o755))?;
        for entry in std::fs::read_dir(source)? {
            let entry = entry?;
            match copy_tree(&entry.path(), &target.join(entry.file_name())) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                other => other?,
            }
        }
        Ok(())
    } else if kind.is_file() {
        std::fs::copy(source, target)?;
        let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))
    } else {
        Ok(())
    }
}

/// Where the skeleton for `entries` is (or would be) under `base`: named by a hash of them.
fn skeleton_path(base: &Path, entries: &[Skel]) -> PathBuf {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{entries:?}").as_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    base.join(format!("root-{name}"))
}

/// Makes (once) the skeleton for `entries` under `base`, and returns its path.
fn skeleton(base: &Path, entries: &[Skel]) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let root = skeleton_path(base, entries);
    let name = root.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("root-")).unwrap_or("").to_owned();
    if is_ours(&root) {
        return Ok(root);
    }
    let io = |e: std::io::Error| Error::internal("cannot build the sandbox's root skeleton", e);
    let building = base.join(format!(".root-{name}-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| -> std::io::Result<()> {
        std::fs::DirBuilder::new().mode(0o755).create(&building)?;
        for entry in entries {
            match entry {
                Skel::Dir(rel) => std::fs::DirBuilder::new().mode(0o755).create(building.join(rel))?,
                Skel::File(rel, content) => std::fs::write(building.join(rel), content)?,
                Skel::Symlink(target, rel) => std::os::unix::fs::symlink(target, building.join(rel))?,
                Skel::Copy(source, rel, ..) => match copy_tree(source, &building.join(rel)) {
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                    other => other?,
                },
            }
        }
        std::fs::rename(&building, &root)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&building);
        // Another run made it first.
        if is_ours(&root) {
            return Ok(root);
        }
        return Err(io(e));
    }
    Ok(root)
}

/// Whether `path` is a real folder (not a symlink) owned by this process's user: a skeleton
/// someone else planted is never used.
fn is_ours(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    path.symlink_metadata()
        .is_ok_and(|m| m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0)
}

/// What an op does, in words (for the error naming a failed one).
fn describe_op(op: &Op) -> String {
    let show = |c: &CString| format!("/{}", c.to_string_lossy());
    match op {
        Op::Bind { source, target, .. } => {
            format!("binding {} at {}", source.to_string_lossy(), show(target))
        }
        Op::Tmpfs { target, .. } => format!("mounting a tmpfs at {}", show(target)),
        Op::Device { source, .. } => format!("binding the device {}", source.to_string_lossy()),
        Op::Proc(p) => format!("mounting procfs at {}", show(p)),
        Op::ReadOnly(p) => format!("making {} read-only", show(p)),
        Op::Mask { target, .. } => format!("masking {}", show(target)),
        Op::Attach(target) => format!("attaching the idmapped workspace at {}", show(target)),
    }
}

/// The flags of the mount holding `path` that a remount in a user namespace must keep.
fn locked_flags(path: &Path) -> libc::c_ulong {
    use nix::sys::statvfs::FsFlags;
    let Ok(stat) = nix::sys::statvfs::statvfs(path) else { return 0 };
    let f = stat.flags();
    let mut flags = 0;
    for (st, ms) in [
        (FsFlags::ST_RDONLY, libc::MS_RDONLY),
        (FsFlags::ST_NOEXEC, libc::MS_NOEXEC),
        (FsFlags::ST_NOATIME, libc::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, libc::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f.contains(st) {
            flags |= ms;
        }
    }
    flags
}

struct Prepared {
    plan: Plan,
    skeleton: Vec<Skel>,
    op_names: Vec<String>,
    /// The ops a warm sandbox leaves for its run (the workspace, `/tmp`, `/dev/shm`).
    deferred: Vec<usize>,
    /// The tmpfs options of `/tmp` and `/dev/shm`, and the workspace's mount flags.
    tmpfs: CString,
    workspace_flags: libc::c_ulong,
    programs: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    landlock: Option<landlock::Rules>,
    isolation: Isolation,
    /// The owner (uid, gid) of a workspace mounted idmapped.
    idmap: Option<(u32, u32)>,
}

/// The owner of `dir`.
fn owner_of(dir: &Path) -> Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::invalid(format!("the workspace {} cannot be used: {e}", dir.display())))?;
    Ok((meta.uid(), meta.gid()))
}

/// A detached mount of `dir`, idmapped so that its owner's ids appear as the sandbox's host
/// ids `host` (and the sandbox's writes land as the owner's), nosuid and nodev. Needs root
/// and a file system that supports idmapped mounts (ext4, xfs, btrfs, tmpfs, ...).
fn idmapped_tree(dir: &Path, owner: (u32, u32), host: (u32, u32)) -> Result<OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let userns = mapping_namespace(owner, host)?;
    let unavailable = |what: &str, e: Errno| {
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "cannot give the sandbox the folder {} through an idmapped mount ({what}: {}); its file system may \
                 not support idmapped mounts: run cloudx as the folder's owner instead of root",
                dir.display(),
                e.desc()
            ),
        )
    };
    let fd = sys::open_tree_clone(&cstr_path(dir)?).map_err(|e| unavailable("open_tree", e))?;
    // SAFETY: a descriptor open_tree just returned, owned by nothing else.
    #[allow(unsafe_code)]
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    sys::mount_setattr_idmap(tree.as_raw_fd(), userns.as_raw_fd(), sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV)
        .map_err(|e| unavailable("mount_setattr", e))?;
    Ok(tree)
}

/// A user namespace mapping `owner` (inside) to `host` (outside), held by its descriptor. A
/// child cloned into it waits while the map is written and the namespace opened, and is then
/// killed (the end of its pipe, or of the thread that made it, also ends it).
fn mapping_namespace(owner: (u32, u32), host: (u32, u32)) -> Result<OwnedFd> {
    let (hold_r, hold_w) = pipe()?;
    let r = hold_r.as_raw_fd();
    #[allow(unsafe_code)]
    // SAFETY: the child only makes raw system calls (no allocation, no lock) and exits.
    let pid = unsafe { sys::fork_raw(libc::CLONE_NEWUSER) }
        .map_err(|e| Error::internal("cannot create the idmapping's user namespace", e))?;
    if pid == 0 {
        // Only the read end stays, as descriptor 0. A copy of another thread's `hold_w` kept
        // here would keep that thread's child waiting on this one, while this one waited on it.
        if (r == 0 || sys::dup_to(r, 0, false).is_ok()) && sys::close_from(1).is_ok() {
            let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            let _ = sys::read_byte(0);
        }
        sys::exit(0);
    }
    drop(hold_r);
    let mut child = Outer { pid, reaped: false };
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let made = (|| -> std::io::Result<OwnedFd> {
        std::fs::write(proc.join("uid_map"), format!("{} {} 1\n", owner.0, host.0))?;
        std::fs::write(proc.join("setgroups"), "deny")?;
        std::fs::write(proc.join("gid_map"), format!("{} {} 1\n", owner.1, host.1))?;
        Ok(std::fs::File::open(proc.join("ns/user"))?.into())
    })();
    // Killed rather than left to see the pipe's end: a child the host forks meanwhile (Python's
    // multiprocessing, say) may hold a copy of `hold_w` for as long as it lives. Not reaped
    // yet, the pid cannot have been reused.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    drop(hold_w);
    child.reap_now();
    made.map_err(|e| Error::internal("cannot map the idmapping's user namespace", e))
}

/// Probes the host.
fn probe() -> (Capabilities, Option<Cgroups>) {
    let root = nix::unistd::geteuid().is_root();
    let mut problems = Vec::new();
    let user_namespaces = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_none_or(|n| n > 0);
    if !user_namespaces {
        problems.push("user namespaces are disabled: set the sysctl user.max_user_namespaces above 0".into());
    }
    let seccomp = Path::new("/proc/sys/kernel/seccomp/actions_avail").exists();
    if !seccomp {
        problems.push("seccomp filters are not available: use a kernel built with CONFIG_SECCOMP_FILTER".into());
    }
    let landlock_abi = sys::landlock_abi();
    if landlock_abi == 0 {
        problems.push(
            "landlock is not available: Linux 5.13 or newer, with `landlock` in the `lsm=` boot parameter".into(),
        );
    }
    let cgroups = Cgroups::detect();
    let cgroup = cgroups.as_ref().map_or_else(|| "rlimit only".to_string(), Cgroups::describe);
    if cgroups.is_none() {
        problems.push(if root {
            "no usable memory or pids cgroup: memory and processes are limited by rlimits only (mount cgroup v2 \
             with the memory and pids controllers enabled)"
                .into()
        } else {
            "no delegated cgroup: memory and processes are limited by rlimits only (run under systemd with \
             Delegate=yes, or as root)"
                .into()
        });
    }
    (Capabilities { root, user_namespaces, landlock_abi, seccomp, cgroup, problems }, cgroups)
}

/// A host uid of the range, held for one run (as root). Held across processes by a lock file.
struct UidLease {
    uid: u32,
    taken: Arc<Mutex<BTreeSet<u32>>>,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl UidLease {
    fn take(sandbox: &Sandbox) -> Result<UidLease> {
        let settings = &sandbox.inner.settings;
        let dir = settings.scratch_dir.join("uids");
        ensure_private_dir(&settings.scratch_dir)?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal("cannot create the uid lock folder", e))?;
        let mut taken = sandbox.inner.uids.lock().expect("uid set poisoned");
        let start =
            u32::from_ne_bytes(*uuid::Uuid::new_v4().as_bytes().first_chunk().expect("16 bytes")) % settings.uid_count;
        for i in 0..settings.uid_count {
            let uid = settings.uid_base + (start + i) % settings.uid_count;
            if taken.contains(&uid) {
                continue;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(uid.to_string()))
                .map_err(|e| Error::internal("cannot open a uid lock", e))?;
            if let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                taken.insert(uid);
                return Ok(UidLease { uid, taken: sandbox.inner.uids.clone(), _lock: lock });
            }
        }
        Err(Error::new(ErrorKind::RateLimited, "every sandbox uid is in use: too many runs at once"))
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        self.taken.lock().expect("uid set poisoned").remove(&self.uid);
    }
}

/// Creates `dir` (mode 0700) or checks that it is ours and private.
fn ensure_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(Error::internal(format!("cannot create the scratch folder {}", dir.display()), e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::internal("cannot inspect the scratch folder", e))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "the scratch folder {} must be a folder owned by this user with mode 0700 (sandbox.scratch_dir)",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Whether the process that made `name` is gone: `name` is `<prefix><pid>-…` (`run-<pid>-<id>` for a
/// scratch folder, `cloudx-<pid>-<pool>-slot-<n>` for a cgroup, `cloudx-run-<pid>-<id>` for a cgroup
/// of an earlier version).
fn dead_owner(name: &str, prefix: &str) -> bool {
    let Some(pid) = name.strip_prefix(prefix).and_then(|rest| rest.split('-').next()) else { return false };
    pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes what runs of dead processes left (a crash, a kill): scratch folders and cgroups.
fn sweep(scratch: &Path, cgroups: Option<&Cgroups>) {
    if let Ok(entries) = std::fs::read_dir(scratch) {
        for entry in entries.flatten() {
            if dead_owner(&entry.file_name().to_string_lossy(), "run-") {
                let _ = crate::fs::remove_tree(&entry.path());
            }
        }
    }
    if let Some(cgroups) = cgroups {
        cgroups.sweep(|name| dead_owner(name, "cloudx-") || dead_owner(name, "cloudx-run-"));
    }
}

/// A run's empty workspace, when it was given none; removed afterwards.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// An empty workspace for a run, owned by the sandbox's uid.
    fn create(base: &Path, name: &str, owner: Option<u32>) -> Result<Scratch> {
        ensure_private_dir(base)?;
        let dir = base.join(name);
        let io = |e| Error::internal("cannot create the run's scratch folder", e);
        std::fs::create_dir(&dir).map_err(io)?;
        let scratch = Scratch { dir };
        if let Some(uid) = owner {
            nix::unistd::chown(&scratch.dir, Some(uid.into()), Some(uid.into())).map_err(|e| io(e.into()))?;
        }
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = crate::fs::remove_tree(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove a sandbox scratch folder");
        }
    }
}

/// Sandboxes launched ahead of their runs, and how many are being launched.
#[derive(Default)]
struct WarmPool {
    ready: std::collections::VecDeque<Warm>,
    launching: usize,
    /// When a launch last failed: runs launch cold for [`WARM_RETRY`] after it.
    failed_at: Option<Instant>,
}

/// How long a sandbox launched ahead may wait for a run: its mount namespace is a copy of the
/// host's from its launch, and the workspace path is resolved in it.
const WARM_MAX_AGE: Duration = Duration::from_secs(60);
/// How long warming pauses after a failed launch.
const WARM_RETRY: Duration = Duration::from_secs(30);

/// A sandbox launched ahead of its run (see [`Sandbox::launch_warm`]). Dropped unused, its
/// lifeline closes and everything in it ends.
struct Warm {
    launched: Launched,
    /// Where init reads its run's request.
    go: OwnedFd,
    host: (u32, u32),
    /// The root skeleton it was built on.
    root: PathBuf,
    cgroup: Option<RunCgroup>,
    scratch: Scratch,
    lease: Option<UidLease>,
    launched_at: Instant,
}

impl Warm {
    /// Whether init still waits for its request: nothing more on its report pipe (a failure,
    /// or the pipe's end when it died).
    fn is_waiting(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.launched.report.as_fd(), PollFlags::POLLIN)];
        nix::poll::poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n == 0)
    }
}

/// Waits (up to five seconds) for a warm init's first report.
fn ready(report: &OwnedFd) -> std::io::Result<Option<Report>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(report.as_fd(), PollFlags::POLLIN)];
    if nix::poll::poll(&mut fds, PollTimeout::from(5000u16))? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in five seconds"));
    }
    let mut record = [0u8; REPORT_LEN];
    let mut done = 0;
    while done < REPORT_LEN {
        match nix::unistd::read(report, &mut record[done..]) {
            Ok(0) => return Ok(None),
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Report::decode(&record))
}

/// A launched sandbox: the outer process and the supervisor's ends of the pipes.
///
/// Fields drop in order: the lifeline first, so that the outer process is already ending
/// everything when it is reaped.
struct Launched {
    lifeline: Option<OwnedFd>,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    report: OwnedFd,
    /// Taken by the run's [`Running`] guard once it starts.
    outer: Option<Outer>,
}

/// The outer process; reaped when dropped (on a blocking thread, after killing it if it is
/// still there), so that no zombie is left whatever happens to the supervising future.
struct Outer {
    pid: libc::pid_t,
    reaped: bool,
}

impl Outer {
    fn reap_now(&mut self) -> Option<i32> {
        if self.reaped {
            return None;
        }
        self.reaped = true;
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None).ok()?;
        match status {
            nix::sys::wait::WaitStatus::Exited(_, code) => Some(code),
            _ => None,
        }
    }
}

impl Outer {
    /// Reaps the outer process once its lifeline is closed (see [`reap_bounded`]).
    fn reap_bounded(&mut self) {
        if !self.reaped {
            self.reaped = true;
            reap_bounded(self.pid);
        }
    }
}

/// Reaps an outer process whose lifeline is closed: it then kills init, reaps it and exits
/// (killing it instead would orphan init, whose zombie nobody might reap). Only one that has
/// not gone after half a minute (which would be a bug) is killed, and said so.
fn reap_bounded(pid: libc::pid_t) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let pid = nix::unistd::Pid::from_raw(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(WaitStatus::StillAlive) => {
                tracing::error!(%pid, "a sandbox's outer process did not end after its lifeline closed; killing it");
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return;
            }
            _ => return,
        }
    }
}

impl Drop for Outer {
    fn drop(&mut self) {
        if !self.reaped {
            self.reaped = true;
            let pid = self.pid;
            // Only a pid in the closure: dropped unrun, it cannot come back here.
            detached(move || reap_bounded(pid));
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::internal("cannot create a pipe", e))
}

/// Clones the outer process and does the supervisor's half of the set-up (the id maps, the
/// cgroup on v2), on the calling thread.
fn launch(
    mut prepared: Prepared,
    host: (u32, u32),
    cgroup: Option<&RunCgroup>,
    idmapped: Option<OwnedFd>,
    go: Option<OwnedFd>,
) -> Result<(Launched, Isolation, Vec<String>)> {
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let (lifeline_r, lifeline_w) = pipe()?;
    let (sync_parent, sync_child) =
        std::os::unix::net::UnixStream::pair().map_err(|e| Error::internal("cannot create a socket pair", e))?;
    let ruleset = match &mut prepared.landlock {
        Some(rules) => Some(rules.create_ruleset()?),
        None => None,
    };
    let plan = &mut prepared.plan;
    plan.fds = [
        stdin_r.as_raw_fd(),
        stdout_w.as_raw_fd(),
        stderr_w.as_raw_fd(),
        report_w.as_raw_fd(),
        lifeline_r.as_raw_fd(),
        sync_child.as_raw_fd(),
        ruleset.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        idmapped.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        go.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
    ];
    plan.programs = prepared.programs.iter().map(|p| p.as_ptr()).collect();
    plan.argv = prepared.argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    plan.envp = prepared.envp.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();

    #[allow(unsafe_code)]
    // SAFETY: the child runs `namespaces::outer`, which allocates nothing and takes no lock,
    // on the plan prepared above, and never returns.
    let pid = unsafe { sys::fork_raw(0) }.map_err(|e| Error::internal("cannot start the sandbox", e))?;
    if pid == 0 {
        namespaces::outer(plan);
    }
    let mut outer = Outer { pid, reaped: false };
    drop((stdin_r, stdout_w, stderr_w, report_w, lifeline_r, sync_child, ruleset, idmapped, go));
    handshake(&sync_parent, pid, host, cgroup).inspect_err(|_| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        outer.reap_now();
    })?;
    let launched = Launched {
        outer: Some(outer),
        stdin: stdin_w,
        stdout: stdout_r,
        stderr: stderr_r,
        report: report_r,
        lifeline: Some(lifeline_w),
    };
    Ok((launched, prepared.isolation, prepared.op_names))
}

/// Waits for the outer process to unshare, writes its id maps, puts it in the cgroup (v2; on v1
/// it joined by itself), and lets it go on. An early end of the outer process (a failed step) is
/// not an error here: its report says what happened.
fn handshake(
    mut sync: &std::os::unix::net::UnixStream,
    pid: libc::pid_t,
    host: (u32, u32),
    cgroup: Option<&RunCgroup>,
) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let mut byte = [0u8];
    match sync.read(&mut byte) {
        Ok(1) => {}
        _ => return Ok(()),
    }
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let write = |file: &str, content: String| {
        std::fs::write(proc.join(file), content).map_err(|e| {
            Error::new(ErrorKind::Unavailable, format!("cannot write the sandbox's {file}: {e}")).with_source(e)
        })
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{INSIDE_ID} {} 1\n", host.0))?;
    write("gid_map", format!("{INSIDE_ID} {} 1\n", host.1))?;
    if let Some(cgroup) = cgroup {
        cgroup
            .add(pid)
            .map_err(|e| Error::new(ErrorKind::Unavailable, format!("cannot enter the run's cgroup: {e}")))?;
    }
    let _ = sync.write_all(b"g");
    Ok(())
}

/// What supervision gathered.
struct Supervised {
    report: Option<Report>,
    stdout: Bytes,
    stdout_truncated: bool,
    stderr: Bytes,
    stderr_truncated: bool,
    timed_out: bool,
    wall: Duration,
}

/// Feeds stdin, reads the output, enforces the deadline, and waits for the end.
async fn supervise(
    launched: Launched,
    spec: &ExecSpec,
    limits: &EffectiveLimits,
    chunks: Option<mpsc::Sender<OutputChunk>>,
    started: Instant,
) -> Result<Supervised> {
    let pipe_err = |e: std::io::Error| Error::internal("cannot read the sandbox's pipes", e);
    let Launched { stdin, stdout, stderr, report, mut lifeline, .. } = launched;
    let input = spec.stdin.clone().unwrap_or_default();
    let feeder = async move {
        if input.is_empty() {
            drop(stdin);
            return;
        }
        if let Ok(mut w) = tokio::net::unix::pipe::Sender::from_owned_fd(stdin) {
            let _ = w.write_all(&input).await;
        }
    };
    let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout).map_err(pipe_err)?;
    let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr).map_err(pipe_err)?;
    let report = tokio::net::unix::pipe::Receiver::from_owned_fd(report).map_err(pipe_err)?;
    let cap = limits.output;
    let out_chunks = chunks.clone();
    let reading = async {
        let (out, err, rep) = tokio::join!(
            read_capped(stdout, cap, out_chunks, OutputChunk::Stdout),
            read_capped(stderr, cap, chunks, OutputChunk::Stderr),
            read_reports(report),
        );
        (out, err, rep)
    };
    let deadline = tokio::time::sleep_until((started + limits.wall_time).into());
    tokio::pin!(reading, deadline, feeder);
    let mut timed_out = false;
    let mut fed = false;
    let ((out, out_truncated), (err, err_truncated), report) = loop {
        tokio::select! {
            result = &mut reading => break result,
            () = &mut deadline, if !timed_out => {
                timed_out = true;
                // The outer process kills init, and with it every process of the sandbox.
                lifeline.take();
            }
            () = &mut feeder, if !fed => fed = true,
        }
    };
    let wall = started.elapsed();
    Ok(Supervised {
        report,
        stdout: out,
        stdout_truncated: out_truncated,
        stderr: err,
        stderr_truncated: err_truncated,
        timed_out,
        wall,
    })
}

/// Reads a pipe to its end, keeping `cap` bytes and dropping the rest.
async fn read_capped(
    mut pipe: tokio::net::unix::pipe::Receiver,
    cap: u64,
    chunks: Option<mpsc::Sender<OutputChunk>>,
    wrap: fn(Bytes) -> OutputChunk,
) -> (Bytes, bool) {
    let mut kept = BytesMut::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = usize::try_from(cap.saturating_sub(kept.len() as u64)).unwrap_or(usize::MAX);
        let take = n.min(room);
        if take < n {
            truncated = true;
        }
        if take > 0 {
            kept.extend_from_slice(&buf[..take]);
            if let Some(tx) = &chunks {
                let _ = tx.send(wrap(Bytes::copy_from_slice(&buf[..take]))).await;
            }
        }
    }
    (kept.freeze(), truncated)
}

/// Reads the report pipe up to the first failure or the end of the command (each is final),
/// or to its end: records are written whole, one `write` each.
async fn read_reports(mut pipe: tokio::net::unix::pipe::Receiver) -> Option<Report> {
    let mut record = [0u8; REPORT_LEN];
    while pipe.read_exact(&mut record).await.is_ok() {
        if let Some(report @ (Report::Failed { .. } | Report::Ended { .. })) = Report::decode(&record) {
            return Some(report);
        }
    }
    None
}

/// What a launched run holds until its processes are gone: the outer process, and the
/// cgroup, scratch folder and uid, which are released only once it is reaped (so that no uid
/// is handed to another run while a process of this one may live). With the lifeline closed,
/// the outer process kills init (and with it every process of the sandbox), reaps it and exits.
/// Dropped (the run's future dropped, an error), it does all that on a thread of its own.
struct Running {
    outer: Option<Outer>,
    rest: Option<(Option<RunCgroup>, Option<Scratch>, Option<UidLease>)>,
}

impl Running {
    /// What the run's cgroup measured.
    fn stats(&self) -> Option<cgroup::Stats> {
        self.rest.as_ref().and_then(|(cgroup, _, _)| cgroup.as_ref()).map(RunCgroup::stats)
    }

    /// Ends the run's processes and releases what it held, off the run's path unless `wait`:
    /// a caller that reads the workspace next must find no process of the run still writing.
    async fn finish(mut self, wait: bool) {
        let (outer, rest) = (self.outer.take(), self.rest.take());
        let work = move || end_and_release(outer, rest);
        if wait {
            // Dropped unrun (the runtime shutting down), the Outer reaps itself on a thread.
            let _ = tokio::task::spawn_blocking(work).await;
        } else {
            detached(work);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let (outer, rest) = (self.outer.take(), self.rest.take());
        if outer.is_some() || rest.is_some() {
            detached(move || end_and_release(outer, rest));
        }
    }
}

fn end_and_release<T>(outer: Option<Outer>, rest: T) {
    if let Some(mut outer) = outer {
        outer.reap_bounded();
    }
    drop(rest);
}

/// Gives up a launched sandbox before its run: its processes end, and then what it held goes.
fn abandon(mut launched: Launched, rest: (Option<RunCgroup>, Scratch, Option<UidLease>)) {
    let outer = launched.outer.take();
    // The lifeline closes here: the outer process ends init and exits.
    drop(launched);
    let (cgroup, scratch, lease) = rest;
    drop(Running { outer, rest: Some((cgroup, Some(scratch), lease)) });
}

/// Runs `work` on a thread of its own: not on the runtime's blocking pool, which drops what
/// it is handed once the runtime shuts down, when a reap must still happen. (Should no thread
/// be available, `work` is dropped: an `Outer` in it then tries once more with its pid alone.)
fn detached(work: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name("cloudx-reaper".into()).spawn(work) {
        tracing::warn!(error = %e, "cannot start a thread to end a sandbox");
    }
}

/// Turns what was gathered into an outcome, or a set-up failure into an error.
fn finish(
    s: Supervised,
    stats: Option<cgroup::Stats>,
    isolation: Isolation,
    op_names: &[String],
    spec: &ExecSpec,
) -> Result<ExecOutcome> {
    let stats = stats.unwrap_or_default();
    let (exit_code, signal, cpu, rss) = match s.report {
        Some(Report::Failed { step, errno, index }) => return Err(setup_error(step, errno, index, spec, op_names)),
        Some(Report::Ended { status, user_us, system_us, max_rss_kib }) => {
            let (code, signal) = if libc::WIFEXITED(status) {
                (Some(libc::WEXITSTATUS(status)), None)
            } else if libc::WIFSIGNALED(status) {
                (None, Some(libc::WTERMSIG(status)))
            } else {
                (None, None)
            };
            (code, signal, Duration::from_micros(user_us + system_us), max_rss_kib * 1024)
        }
        // Killed before it could report: the deadline, or the outer process was killed.
        Some(Report::Ready) | None if s.timed_out => (None, Some(libc::SIGKILL), Duration::ZERO, 0),
        Some(Report::Ready) | None => {
            return Err(Error::new(ErrorKind::Internal, "the sandbox ended without reporting how its command ended"));
        }
    };
    let cpu = stats.cpu.filter(|c| *c > cpu).unwrap_or(cpu);
    let oom_killed = stats.oom_kills > 0;
    let limit = if s.timed_out {
        Some(LimitKind::WallTime)
    } else if oom_killed {
        Some(LimitKind::Memory)
    } else if signal == Some(libc::SIGXCPU) || (signal == Some(libc::SIGKILL) && cpu >= isolation.limits.cpu_time) {
        Some(LimitKind::CpuTime)
    } else if signal == Some(libc::SIGXFSZ) {
        Some(LimitKind::FileSize)
    } else if stats.pids_max_hits > 0 {
        Some(LimitKind::Processes)
    } else if s.stdout_truncated || s.stderr_truncated {
        Some(LimitKind::Output)
    } else {
        None
    };
    Ok(ExecOutcome {
        exit_code,
        signal,
        timed_out: s.timed_out,
        oom_killed,
        limit,
        stdout: s.stdout,
        stdout_truncated: s.stdout_truncated,
        stderr: s.stderr,
        stderr_truncated: s.stderr_truncated,
        warm: false,
        wall_time: s.wall,
        cpu_time: cpu,
        peak_memory: stats.peak_memory.unwrap_or(rss),
        isolation,
    })
}

fn setup_error(step: u32, errno: i32, index: u32, spec: &ExecSpec, op_names: &[String]) -> Error {
    let errno = Errno::from_raw(errno);
    let Some(step) = Step::from_u32(step) else {
        return Error::new(ErrorKind::Internal, format!("the sandbox failed at an unknown step: {errno}"));
    };
    match (step, errno) {
        (Step::Exec, Errno::ENOENT) => Error::invalid(format!(
            "command not found in the sandbox: `{}` (looked on the sandbox's PATH; the host's /usr, /bin, /sbin and /lib are visible, add others with a read-only bind)",
            spec.argv[0]
        )),
        (Step::Exec, Errno::EACCES) => Error::invalid(format!("`{}` is not executable in the sandbox", spec.argv[0])),
        (Step::Exec, e) => Error::invalid(format!("cannot execute `{}` in the sandbox: {}", spec.argv[0], e.desc())),
        (Step::WorkingDirectory, e) => Error::invalid(format!(
            "the working directory /workspace/{} cannot be entered: {}",
            spec.cwd.as_deref().unwrap_or("").trim_matches('/'),
            e.desc()
        )),
        (Step::Mount, e) => {
            let what = op_names.get(index as usize).cloned().unwrap_or_else(|| format!("step #{index}"));
            Error::new(ErrorKind::Unavailable, format!("the sandbox's root cannot be built: {what}: {}", e.desc()))
        }
        (step, e) => {
            Error::new(ErrorKind::Unavailable, format!("the sandbox failed while {}: {}", step.describe(), e.desc()))
        }
    }
}
