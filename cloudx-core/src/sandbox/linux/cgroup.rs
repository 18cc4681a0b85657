//! Per-run cgroups for memory, process and CPU accounting and limits, kept in a pool.
//!
//! Detected once: cgroup v2 when this process's cgroup has the memory and pids controllers
//! enabled for its children (a delegated subtree: systemd's `Delegate=yes`), else the v1
//! memory, pids and cpuacct hierarchies when this process may create cgroups in them (root, on
//! hosts that still mount v1). Without either, the sandbox limits with rlimits and says so.
//!
//! A run gets a child cgroup of this process's (one folder per hierarchy, all of one name). They
//! are pooled rather than made and removed per run: a fresh memory cgroup makes a short run
//! slower (a few milliseconds for Python), and removing one that was charged holds the kernel's
//! cgroup lock for as long again, which the next run's move into its cgroup waits for. So a run
//! takes an idle cgroup, writes its limits (when they differ from the last run's) and reports
//! what the counters grew by; afterwards a background thread waits for its processes to be
//! gone, reads the counters the next run starts from, resets the peak, and puts it back. It is
//! removed instead when more than [`MAX_RESIDUE`] is still charged to it (page cache the run
//! brought in: reclaiming it would evict it, and the next run would read it from disk again),
//! or when [`MAX_IDLE`] are idle already. The idle cgroups are removed when the sandbox is
//! dropped.

use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::super::EffectiveLimits;

/// Idle cgroups a sandbox keeps.
const MAX_IDLE: usize = 16;

/// What may stay charged to an idle cgroup for it to be reused (kernel objects freed later,
/// mostly): a run's peak memory may include that much of its predecessors'.
const MAX_RESIDUE: u64 = 1 << 20;

/// How long a run's processes may take to leave its cgroup before it is given up on.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Where runs' cgroups are made, and the idle ones.
pub(super) struct Cgroups {
    version: Version,
    /// v2: the one parent; v1: the memory hierarchy's parent.
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    /// v1: swap is accounted (`memory.memsw.*` exists) and limited with memory.
    memsw: bool,
    /// `cloudx-<pid>-<n>`: the names of this sandbox's cgroups start with it (and `sweep` finds
    /// the owner's pid in them).
    prefix: String,
    next: AtomicU64,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Cgroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cgroups")
            .field("version", &self.version)
            .field("memory", &self.memory)
            .field("pids", &self.pids)
            .field("cpu", &self.cpu)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The idle cgroups, shared with the runs that will give theirs back; removed when the last
/// holder (the sandbox, or a run being put back) goes.
struct Pool {
    version: Version,
    idle: Mutex<Vec<Slot>>,
}

/// A pooled cgroup: a folder per hierarchy, and what the next run starts from.
struct Slot {
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    /// The limits last written (`None`: the kernel's defaults, no limit).
    memory_limit: Option<u64>,
    pids_limit: Option<u64>,
    /// The counters now: a run reports what they grew by.
    base: Counters,
    /// v2: a descriptor of `memory.peak` that reads the run's peak (reset through it, or a
    /// fresh cgroup's); `None` when neither (kernels before 6.12 cannot reset it).
    peak: Option<std::fs::File>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    oom_kills: u64,
    pids_max_hits: u64,
    cpu: Option<Duration>,
}

/// What a run's cgroup measured.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats {
    pub(super) peak_memory: Option<u64>,
    pub(super) oom_kills: u64,
    pub(super) pids_max_hits: u64,
    pub(super) cpu: Option<Duration>,
}

/// One run's cgroup, put back in the pool (in the background) on drop.
pub(super) struct RunCgroup {
    pool: Arc<Pool>,
    slot: Option<Slot>,
}

/// This process's cgroup per hierarchy, from `/proc/self/cgroup`: (controllers, path).
fn own_cgroups() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Mount points of cgroup file systems: (fstype, super options, mount point).
fn cgroup_mounts() -> Vec<(String, String, PathBuf)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let options = right.next().unwrap_or("");
            fstype.starts_with("cgroup").then(|| (fstype.to_string(), options.to_string(), PathBuf::from(mount_point)))
        })
        .collect()
}

/// Whether a child cgroup can be made (and removed) under `dir`.
fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!("cloudx-probe-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => std::fs::remove_dir(&probe).is_ok(),
        Err(_) => false,
    }
}

fn join(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

fn read(dir: Option<&PathBuf>, file: &str) -> Option<String> {
    std::fs::read_to_string(dir?.join(file)).ok()
}

fn keyed(text: Option<String>, key: &str) -> Option<u64> {
    text?.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

fn number(text: Option<String>) -> Option<u64> {
    text?.trim().parse().ok()
}

impl Cgroups {
    pub(super) fn detect() -> Option<Cgroups> {
        static POOLS: AtomicU64 = AtomicU64::new(0);
        let own = own_cgroups();
        let mounts = cgroup_mounts();
        let prefix = format!("cloudx-{}-{}", std::process::id(), POOLS.fetch_add(1, Ordering::Relaxed));
        let new = |version, memory: Option<PathBuf>, pids, cpu| {
            let memsw = version == Version::V1
                && memory.as_ref().is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists());
            Cgroups {
                version,
                memory,
                pids,
                cpu,
                memsw,
                prefix: prefix.clone(),
                next: AtomicU64::new(0),
                pool: Arc::new(Pool { version, idle: Mutex::new(Vec::new()) }),
            }
        };
        // v2, delegated: our cgroup enables memory and pids for its children.
        if let (Some((_, path)), Some((_, _, mount))) =
            (own.iter().find(|(c, _)| c.is_empty()), mounts.iter().find(|(t, _, _)| t == "cgroup2"))
        {
            let dir = join(mount, path);
            let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            let has = |c: &str| enabled.split_whitespace().any(|e| e == c);
            if has("memory") && has("pids") && writable(&dir) {
                let cpu = has("cpu").then(|| dir.clone());
                return Some(new(Version::V2, Some(dir.clone()), Some(dir), cpu));
            }
        }
        // v1: each controller in its own hierarchy.
        let v1 = |controller: &str| -> Option<PathBuf> {
            let (_, _, mount) =
                mounts.iter().find(|(t, options, _)| t == "cgroup" && options.split(',').any(|o| o == controller))?;
            let (_, path) = own.iter().find(|(c, _)| c.split(',').any(|c| c == controller))?;
            let dir = join(mount, path);
            writable(&dir).then_some(dir)
        };
        let memory = v1("memory");
        let pids = v1("pids");
        if memory.is_none() && pids.is_none() {
            return None;
        }
        // CPU time comes from the processes' resource use: joining a third v1 hierarchy costs
        // each run another cgroup migration (a millisecond here).
        Some(new(Version::V1, memory, pids, None))
    }

    pub(super) fn has_memory(&self) -> bool {
        self.memory.is_some()
    }

    pub(super) fn has_pids(&self) -> bool {
        self.pids.is_some()
    }

    pub(super) fn describe(&self) -> String {
        let mut controllers = Vec::new();
        for (name, dir) in [("memory", &self.memory), ("pids", &self.pids), ("cpu", &self.cpu)] {
            if dir.is_some() {
                controllers.push(name);
            }
        }
        let version = match self.version {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        };
        format!("{version} ({})", controllers.join(", "))
    }

    /// Removes the (empty) run cgroups whose name `stale` says are left over.
    pub(super) fn sweep(&self, stale: impl Fn(&str) -> bool) {
        for parent in [&self.memory, &self.pids, &self.cpu].into_iter().flatten() {
            let Ok(entries) = std::fs::read_dir(parent) else { continue };
            for entry in entries.flatten() {
                if entry.path().is_dir() && stale(&entry.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }

    /// A cgroup for a run with `limits`: an idle one, or a new one.
    pub(super) fn take(&self, limits: &EffectiveLimits) -> io::Result<RunCgroup> {
        loop {
            let idle = self.pool.idle.lock().expect("cgroup pool poisoned").pop();
            let Some(mut slot) = idle else { break };
            match self.set_limits(&mut slot, limits) {
                Ok(()) => return Ok(RunCgroup { pool: self.pool.clone(), slot: Some(slot) }),
                // A limit below what is still charged: this one is not reusable.
                Err(e) => {
                    tracing::debug!(error = %e, "a pooled cgroup refused new limits; removing it");
                    in_background(move || remove(slot));
                }
            }
        }
        let mut slot = self.make()?;
        match self.set_limits(&mut slot, limits) {
            Ok(()) => Ok(RunCgroup { pool: self.pool.clone(), slot: Some(slot) }),
            Err(e) => {
                remove(slot);
                Err(e)
            }
        }
    }

    /// Sets a taken cgroup's limits to a run's (a warm sandbox took it with the defaults).
    pub(super) fn relimit(&self, run: &mut RunCgroup, limits: &EffectiveLimits) -> io::Result<()> {
        let slot = run.slot.as_mut().expect("held until dropped");
        self.set_limits(slot, limits)
    }

    /// A new cgroup (a folder per hierarchy).
    fn make(&self) -> io::Result<Slot> {
        let name = format!("{}-slot-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed));
        let mut slot = Slot {
            memory: None,
            pids: None,
            cpu: None,
            memory_limit: None,
            pids_limit: None,
            base: Counters::default(),
            peak: None,
        };
        let mkdir = |parent: &Option<PathBuf>| -> io::Result<Option<PathBuf>> {
            let Some(parent) = parent else { return Ok(None) };
            let dir = parent.join(&name);
            std::fs::create_dir(&dir).map(|()| Some(dir))
        };
        let made = (|| {
            slot.memory = mkdir(&self.memory)?;
            // v2: one folder has every controller.
            if self.version == Version::V1 {
                slot.pids = mkdir(&self.pids)?;
                slot.cpu = mkdir(&self.cpu)?;
            }
            io::Result::Ok(())
        })();
        if let Err(e) = made {
            remove(slot);
            return Err(e);
        }
        if self.version == Version::V2 {
            // A fresh cgroup's peak is its first run's, reset or not.
            slot.peak = reset_peak_v2(slot.memory.as_ref())
                .or_else(|| slot.memory.as_ref().and_then(|d| std::fs::File::open(d.join("memory.peak")).ok()));
        }
        Ok(slot)
    }

    /// Writes the limits that differ from the slot's last run's.
    fn set_limits(&self, slot: &mut Slot, limits: &EffectiveLimits) -> io::Result<()> {
        let memory = limits.memory;
        let processes = match self.version {
            Version::V1 => limits.processes + 1,
            Version::V2 => limits.processes,
        };
        if slot.memory_limit != Some(memory) {
            match self.version {
                Version::V2 => {
                    let dir = slot.memory.as_ref().expect("v2 has memory");
                    std::fs::write(dir.join("memory.max"), memory.to_string())?;
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                }
                Version::V1 => {
                    if let Some(dir) = &slot.memory {
                        // memsw may never be below the memory limit: raise it first, lower it last.
                        let memsw = || {
                            if self.memsw {
                                std::fs::write(dir.join("memory.memsw.limit_in_bytes"), memory.to_string())?;
                            }
                            io::Result::Ok(())
                        };
                        let raising = slot.memory_limit.is_some_and(|old| memory > old);
                        if raising {
                            memsw()?;
                        }
                        std::fs::write(dir.join("memory.limit_in_bytes"), memory.to_string())?;
                        if !raising {
                            memsw()?;
                        }
                    }
                }
            }
            slot.memory_limit = Some(memory);
        }
        if slot.pids_limit != Some(processes) {
            if let Some(dir) = slot.pids_dir(self.version) {
                std::fs::write(dir.join("pids.max"), processes.to_string())?;
            }
            slot.pids_limit = Some(processes);
        }
        Ok(())
    }
}

/// v2: opens `memory.peak` and resets it (Linux 6.12+: the reset holds for reads through this
/// descriptor).
fn reset_peak_v2(dir: Option<&PathBuf>) -> Option<std::fs::File> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(dir?.join("memory.peak")).ok()?;
    file.write_all(b"reset\n").ok()?;
    Some(file)
}

impl Slot {
    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.memory, &self.pids, &self.cpu].into_iter().flatten()
    }

    /// The folder with the pids controller's files (v2: the one folder).
    fn pids_dir(&self, version: Version) -> Option<&PathBuf> {
        match version {
            Version::V1 => self.pids.as_ref(),
            Version::V2 => self.memory.as_ref(),
        }
    }

    fn counters(&self, version: Version) -> Counters {
        match version {
            Version::V2 => Counters {
                oom_kills: keyed(read(self.memory.as_ref(), "memory.events"), "oom_kill ").unwrap_or(0),
                pids_max_hits: keyed(read(self.pids_dir(version), "pids.events"), "max ").unwrap_or(0),
                cpu: keyed(read(self.memory.as_ref(), "cpu.stat"), "usage_usec ").map(Duration::from_micros),
            },
            Version::V1 => Counters {
                oom_kills: keyed(read(self.memory.as_ref(), "memory.oom_control"), "oom_kill ").unwrap_or(0),
                pids_max_hits: keyed(read(self.pids.as_ref(), "pids.events"), "max ").unwrap_or(0),
                cpu: number(read(self.cpu.as_ref(), "cpuacct.usage")).map(Duration::from_nanos),
            },
        }
    }

    /// Whether every process has left (waiting for them a little).
    fn drain(&self) -> bool {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut pause = Duration::from_micros(200);
        loop {
            if self.dirs().all(|d| std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Whether little enough is still charged to the slot for it to be reused. Page cache the
    /// run brought in (an interpreter read for the first time) is not reclaimed: `memory.force_empty`
    /// and `memory.reclaim` evict it, and every run would read it from disk again. A slot
    /// holding more is removed instead, which leaves its pages in the page cache.
    fn reusable(&self, version: Version) -> bool {
        let Some(dir) = &self.memory else { return true };
        let usage = match version {
            Version::V1 => number(read(Some(dir), "memory.usage_in_bytes")),
            Version::V2 => number(read(Some(dir), "memory.current")),
        };
        usage.is_some_and(|u| u <= MAX_RESIDUE)
    }

    /// Makes the slot ready for the next run: the counters it starts from, its peak reset.
    fn rearm(&mut self, version: Version) -> bool {
        self.base = self.counters(version);
        match version {
            Version::V1 => match &self.memory {
                // Resets the peak to the current use (the residue).
                Some(dir) => std::fs::write(dir.join("memory.max_usage_in_bytes"), "0").is_ok(),
                None => true,
            },
            Version::V2 => {
                self.peak = reset_peak_v2(self.memory.as_ref());
                true
            }
        }
    }
}

impl RunCgroup {
    /// v1: the `tasks` files the outer process writes itself into (see `Plan::cgroup_tasks`).
    pub(super) fn tasks_files(&self) -> Vec<PathBuf> {
        match self.pool.version {
            Version::V1 => self.slot.as_ref().expect("held until dropped").dirs().map(|d| d.join("tasks")).collect(),
            Version::V2 => Vec::new(),
        }
    }

    /// v2: moves `pid` (the outer process, before it forks anything) into the run's cgroup (on v1
    /// it joined by itself).
    pub(super) fn add(&self, pid: libc::pid_t) -> io::Result<()> {
        if self.pool.version == Version::V2 {
            for dir in self.slot.as_ref().expect("held until dropped").dirs() {
                std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
            }
        }
        Ok(())
    }

    /// What the cgroup measured over the run.
    pub(super) fn stats(&self) -> Stats {
        let slot = self.slot.as_ref().expect("held until dropped");
        let now = slot.counters(self.pool.version);
        let base = slot.base;
        let peak_memory = match self.pool.version {
            Version::V2 => slot.peak.as_ref().and_then(|file| {
                let mut buf = [0u8; 32];
                let n = file.read_at(&mut buf, 0).ok()?;
                std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
            }),
            Version::V1 => number(read(slot.memory.as_ref(), "memory.max_usage_in_bytes")),
        };
        Stats {
            peak_memory,
            oom_kills: now.oom_kills.saturating_sub(base.oom_kills),
            pids_max_hits: now.pids_max_hits.saturating_sub(base.pids_max_hits),
            cpu: now.cpu.map(|c| c.saturating_sub(base.cpu.unwrap_or_default())),
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        let pool = self.pool.clone();
        // Off the run's path: the kernel may take a moment to let the last process go, and a
        // removal takes milliseconds.
        in_background(move || pool.give_back(slot));
    }
}

/// Runs `work` on a thread of its own when called on a runtime, or here without one.
fn in_background(work: impl FnOnce() + Send + 'static) {
    // A runtime's blocking pool would drop the work unrun once the runtime shuts down; it
    // must run (or the folder stays). Off a runtime (a run's teardown thread), it runs here.
    match tokio::runtime::Handle::try_current() {
        Ok(_) => {
            if let Err(e) = std::thread::Builder::new().name("cloudx-cgroup".into()).spawn(work) {
                tracing::warn!(error = %e, "cannot start a thread to put a cgroup away");
            }
        }
        Err(_) => work(),
    }
}

impl Pool {
    /// Puts a run's cgroup back once its processes have gone, or removes it.
    fn give_back(&self, mut slot: Slot) {
        if !slot.drain() {
            tracing::warn!(dir = ?slot.dirs().next(), "a sandbox's processes did not leave its cgroup");
            remove(slot);
            return;
        }
        if !slot.reusable(self.version) || !slot.rearm(self.version) {
            remove(slot);
            return;
        }
        let mut idle = self.idle.lock().expect("cgroup pool poisoned");
        if idle.len() < MAX_IDLE {
            idle.push(slot);
        } else {
            drop(idle);
            remove(slot);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for slot in self.idle.get_mut().map(std::mem::take).unwrap_or_default() {
            remove(slot);
        }
    }
}

/// Removes a slot's folders (retrying a little while one is busy).
fn remove(slot: Slot) {
    let Slot { memory, pids, cpu, peak, .. } = slot;
    drop(peak);
    for dir in [memory, pids, cpu].into_iter().flatten() {
        for attempt in 0..500 {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if attempt == 499 => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a sandbox cgroup");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
}
