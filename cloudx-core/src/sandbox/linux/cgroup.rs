//! Per-run cgroups for memory, process and CPU accounting and limits.
//!
//! Detected once: cgroup v2 when this process's cgroup has the memory and pids controllers
//! enabled for its children (a delegated subtree: systemd's `Delegate=yes`), else the v1
//! memory, pids and cpuacct hierarchies when this process may create cgroups in them (root, on
//! hosts that still mount v1). Each run gets a child cgroup of this process's, removed when the
//! run ends. Without either, the sandbox limits with rlimits and says so.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::EffectiveLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Where runs' cgroups are made.
#[derive(Debug)]
pub(super) struct Cgroups {
    version: Version,
    /// v2: the one parent; v1: the memory hierarchy's parent.
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
}

/// What a run's cgroup measured.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats {
    pub(super) peak_memory: Option<u64>,
    pub(super) oom_kills: u64,
    pub(super) pids_max_hits: u64,
    pub(super) cpu: Option<Duration>,
}

/// One run's cgroup (a folder per hierarchy), removed on drop.
pub(super) struct RunCgroup {
    version: Version,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
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

impl Cgroups {
    pub(super) fn detect() -> Option<Cgroups> {
        let own = own_cgroups();
        let mounts = cgroup_mounts();
        // v2, delegated: our cgroup enables memory and pids for its children.
        if let (Some((_, path)), Some((_, _, mount))) =
            (own.iter().find(|(c, _)| c.is_empty()), mounts.iter().find(|(t, _, _)| t == "cgroup2"))
        {
            let dir = join(mount, path);
            let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            let has = |c: &str| enabled.split_whitespace().any(|e| e == c);
            if has("memory") && has("pids") && writable(&dir) {
                return Some(Cgroups {
                    version: Version::V2,
                    memory: Some(dir.clone()),
                    pids: Some(dir.clone()),
                    cpu: has("cpu").then_some(dir),
                });
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
        Some(Cgroups { version: Version::V1, memory, pids, cpu: None })
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

    /// Makes a run's cgroup with `limits`.
    pub(super) fn create(&self, name: &str, limits: &EffectiveLimits) -> io::Result<RunCgroup> {
        let make = |parent: &Option<PathBuf>| -> io::Result<Option<PathBuf>> {
            match parent {
                Some(parent) => {
                    let dir = parent.join(format!("cloudx-{name}"));
                    match std::fs::create_dir(&dir) {
                        Ok(()) => Ok(Some(dir)),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Some(dir)),
                        Err(e) => Err(e),
                    }
                }
                None => Ok(None),
            }
        };
        let mut run = RunCgroup { version: self.version, memory: None, pids: None, cpu: None };
        run.memory = make(&self.memory)?;
        run.pids = if self.version == Version::V2 { None } else { make(&self.pids)? };
        run.cpu = if self.version == Version::V2 { None } else { make(&self.cpu)? };
        let memory = limits.memory.to_string();
        match self.version {
            Version::V2 => {
                let dir = run.memory.as_ref().expect("v2 has memory");
                std::fs::write(dir.join("memory.max"), &memory)?;
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                std::fs::write(dir.join("pids.max"), limits.processes.to_string())?;
            }
            Version::V1 => {
                if let Some(dir) = &run.memory {
                    std::fs::write(dir.join("memory.limit_in_bytes"), &memory)?;
                    let swap = dir.join("memory.memsw.limit_in_bytes");
                    if swap.exists() {
                        std::fs::write(swap, &memory)?;
                    }
                }
                if let Some(dir) = &run.pids {
                    std::fs::write(dir.join("pids.max"), (limits.processes + 1).to_string())?;
                }
            }
        }
        Ok(run)
    }
}

impl RunCgroup {
    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.memory, &self.pids, &self.cpu].into_iter().flatten()
    }

    /// Moves `pid` (the outer process, before it forks anything) into the run's cgroup.
    pub(super) fn add(&self, pid: libc::pid_t) -> io::Result<()> {
        for dir in self.dirs() {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// What the cgroup measured over the run.
    pub(super) fn stats(&self) -> Stats {
        let read =
            |dir: &Option<PathBuf>, file: &str| dir.as_ref().and_then(|d| std::fs::read_to_string(d.join(file)).ok());
        let keyed = |text: Option<String>, key: &str| -> Option<u64> {
            text?.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        };
        match self.version {
            Version::V2 => Stats {
                peak_memory: read(&self.memory, "memory.peak").and_then(|s| s.trim().parse().ok()),
                oom_kills: keyed(read(&self.memory, "memory.events"), "oom_kill ").unwrap_or(0),
                pids_max_hits: keyed(read(&self.memory, "pids.events"), "max ").unwrap_or(0),
                cpu: keyed(read(&self.memory, "cpu.stat"), "usage_usec ").map(Duration::from_micros),
            },
            Version::V1 => Stats {
                peak_memory: read(&self.memory, "memory.max_usage_in_bytes").and_then(|s| s.trim().parse().ok()),
                oom_kills: keyed(read(&self.memory, "memory.oom_control"), "oom_kill ").unwrap_or(0),
                pids_max_hits: keyed(read(&self.pids, "pids.events"), "max ").unwrap_or(0),
                cpu: read(&self.cpu, "cpuacct.usage").and_then(|s| s.trim().parse().ok()).map(Duration::from_nanos),
            },
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        // Every process has gone (init's end killed them all), but the kernel may take a
        // moment to release the last one's memory; the run does not wait for that: a folder
        // still busy is removed by a background thread.
        let busy: Vec<PathBuf> = self
            .dirs()
            .filter(|dir| match std::fs::remove_dir(dir) {
                Ok(()) => false,
                Err(e) => e.kind() != io::ErrorKind::NotFound,
            })
            .cloned()
            .collect();
        if busy.is_empty() {
            return;
        }
        let remove = move || {
            for dir in busy {
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
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}
