//! Project sandbox policies: the limits, network and extra binds every run on a project gets
//! (exec, jobs, the agent), within the ceilings the configuration sets.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Bind, Limits, Network};
use crate::config::SandboxConfig;
use crate::error::{Error, Result};

/// A project's sandbox policy. Every field is optional: what it leaves out is the configured
/// default (`sandbox.memory`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxPolicy {
    /// The limits of the project's runs.
    #[serde(default)]
    pub limits: Limits,
    /// Network access of the project's runs (`none` or `loopback`).
    #[serde(default)]
    pub network: Network,
    /// Host folders bound read-only into the project's runs (each inside a folder of
    /// `sandbox.bindable`), such as a toolchain.
    #[serde(default)]
    pub binds: Vec<Bind>,
}

/// One limit: its name, the policy's value, the default and the ceiling, as numbers.
struct LimitRow {
    name: &'static str,
    policy: Option<u64>,
    default: u64,
    max: u64,
    show: fn(u64) -> String,
}

fn millis(n: u64) -> String {
    humantime::format_duration(Duration::from_millis(n)).to_string()
}

fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).to_string()
}

fn plain(n: u64) -> String {
    n.to_string()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn rows(limits: &Limits, c: &SandboxConfig) -> [LimitRow; 8] {
    [
        LimitRow {
            name: "wall_time",
            policy: limits.wall_time.map(ms),
            default: ms(c.wall_time),
            max: ms(c.max_wall_time),
            show: millis,
        },
        LimitRow {
            name: "cpu_time",
            policy: limits.cpu_time.map(ms),
            default: ms(c.cpu_time),
            max: ms(c.max_cpu_time),
            show: millis,
        },
        LimitRow {
            name: "memory",
            policy: limits.memory,
            default: c.memory.as_u64(),
            max: c.max_memory.as_u64(),
            show: bytes,
        },
        LimitRow {
            name: "processes",
            policy: limits.processes,
            default: c.processes,
            max: c.max_processes,
            show: plain,
        },
        LimitRow {
            name: "output",
            policy: limits.output,
            default: c.output.as_u64(),
            max: c.max_output.as_u64(),
            show: bytes,
        },
        LimitRow {
            name: "file_size",
            policy: limits.file_size,
            default: c.file_size.as_u64(),
            max: c.max_file_size.as_u64(),
            show: bytes,
        },
        LimitRow {
            name: "open_files",
            policy: limits.open_files,
            default: c.open_files,
            max: c.max_open_files,
            show: plain,
        },
        LimitRow {
            name: "tmpfs_size",
            policy: limits.tmpfs_size,
            default: c.tmpfs_size.as_u64(),
            max: c.max_tmpfs_size.as_u64(),
            show: bytes,
        },
    ]
}

/// Where a bind may not go: the sandbox's own mounts.
const RESERVED_TARGETS: &[&str] =
    &["/", "/proc", "/dev", "/workspace", "/tmp", "/etc", "/usr", "/bin", "/sbin", "/lib"];

impl SandboxPolicy {
    /// Checks the policy against the configuration: every limit within its ceiling and above
    /// zero, loopback only when allowed, every bind an existing host path inside a folder of
    /// `sandbox.bindable` (after resolving symlinks) at an absolute target that is not one of
    /// the sandbox's own mounts.
    ///
    /// `protected` are folders no bind may overlap (the data folder, the scratch folder).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming the first problem.
    pub fn check(&self, config: &SandboxConfig, protected: &[PathBuf]) -> Result<()> {
        self.resolved_binds(config, protected).map(drop)
    }

    /// The policy's binds with their sources resolved (symlinks followed, once, here): what a
    /// run mounts, so that a symlink swapped after the check changes nothing. Checks the whole
    /// policy first, as [`check`](Self::check) says.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn resolved_binds(&self, config: &SandboxConfig, protected: &[PathBuf]) -> Result<Vec<Bind>> {
        for row in rows(&self.limits, config) {
            if let Some(value) = row.policy {
                if value == 0 {
                    return Err(Error::invalid(format!("limits.{}: must be above zero", row.name)));
                }
                if value > row.max {
                    return Err(Error::invalid(format!(
                        "limits.{}: {} is above the ceiling sandbox.max_{} ({})",
                        row.name,
                        (row.show)(value),
                        row.name,
                        (row.show)(row.max)
                    )));
                }
            }
        }
        if self.network == Network::Loopback && !config.allow_loopback {
            return Err(Error::invalid(
                "network: loopback is not allowed on this instance (sandbox.allow_loopback = false)",
            ));
        }
        if self.binds.len() > 32 {
            return Err(Error::invalid("binds: at most 32"));
        }
        self.binds.iter().map(|bind| check_bind(bind, &config.bindable, protected)).collect()
    }

    /// The limits of a run that asks for `requested`: what it names must lie within the
    /// project's limits (the policy's, else the defaults), which fill in what it leaves out.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming a requested limit
    /// above the project's.
    pub fn limits_for(&self, requested: &Limits, config: &SandboxConfig) -> Result<Limits> {
        let project = rows(&self.limits, config);
        let asked = rows(requested, config);
        let mut out = [0u64; 8];
        for (i, (p, r)) in project.iter().zip(&asked).enumerate() {
            // A policy written under higher ceilings is held to today's.
            let allowed = p.policy.unwrap_or(p.default).min(p.max);
            out[i] = match r.policy {
                Some(0) => return Err(Error::invalid(format!("limits.{}: must be above zero", r.name))),
                Some(v) if v > allowed => {
                    return Err(Error::invalid(format!(
                        "limits.{}: {} is above this project's limit ({}; a project owner can raise it in the \
                         project's sandbox policy, up to sandbox.max_{})",
                        r.name,
                        (r.show)(v),
                        (r.show)(allowed),
                        r.name
                    )));
                }
                Some(v) => v,
                None => allowed,
            };
        }
        Ok(Limits {
            wall_time: Some(Duration::from_millis(out[0])),
            cpu_time: Some(Duration::from_millis(out[1])),
            memory: Some(out[2]),
            processes: Some(out[3]),
            output: Some(out[4]),
            file_size: Some(out[5]),
            open_files: Some(out[6]),
            tmpfs_size: Some(out[7]),
        })
    }
}

/// `path` with `.` and `..` resolved by their names alone (no file system access).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Checks a bind and returns it with its source resolved.
fn check_bind(bind: &Bind, bindable: &[PathBuf], protected: &[PathBuf]) -> Result<Bind> {
    let source = &bind.source;
    if !source.is_absolute() {
        return Err(Error::invalid(format!("binds: the source {} must be an absolute path", source.display())));
    }
    let target = bind.target.as_deref().unwrap_or(source);
    if !target.is_absolute() || target.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(Error::invalid(format!(
            "binds: the target {} must be an absolute path without `..`",
            target.display()
        )));
    }
    if RESERVED_TARGETS.iter().any(|r| target == Path::new(r))
        || target.starts_with("/proc")
        || target.starts_with("/workspace")
    {
        return Err(Error::invalid(format!("binds: {} is one of the sandbox's own mounts", target.display())));
    }
    // One answer for a path outside the bindable folders, whether or not it exists: the file
    // system is only looked at inside them, so a policy cannot probe the host.
    let outside = || {
        Error::invalid(format!(
            "binds: {} is not inside a folder the instance lets projects bind (sandbox.bindable: {})",
            source.display(),
            if bindable.is_empty() {
                "none".to_string()
            } else {
                bindable.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            }
        ))
    };
    if !bindable.iter().any(|dir| lexical(source).starts_with(lexical(dir))) {
        return Err(outside());
    }
    let real = std::fs::canonicalize(source)
        .map_err(|e| Error::invalid(format!("binds: the source {} cannot be used: {e}", source.display())))?;
    if !bindable.iter().filter_map(|dir| std::fs::canonicalize(dir).ok()).any(|dir| real.starts_with(dir)) {
        return Err(outside());
    }
    let protected_hit =
        protected.iter().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| lexical(p))).any(|p| overlaps(&real, &p));
    if protected_hit {
        return Err(Error::invalid(format!(
            "binds: {} overlaps the instance's data folder or the sandbox's scratch folder",
            source.display()
        )));
    }
    Ok(Bind { source: real, target: Some(target.to_path_buf()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(bindable: &[&Path]) -> SandboxConfig {
        SandboxConfig { bindable: bindable.iter().map(|p| p.to_path_buf()).collect(), ..SandboxConfig::default() }
    }

    #[test]
    fn limits_must_lie_within_the_ceilings() {
        let c = config(&[]);
        let mut p = SandboxPolicy::default();
        p.limits.memory = Some(c.max_memory.as_u64() + 1);
        let err = p.check(&c, &[]).unwrap_err();
        assert!(err.message().contains("limits.memory") && err.message().contains("sandbox.max_memory"), "{err}");
        p.limits.memory = Some(0);
        assert!(p.check(&c, &[]).unwrap_err().message().contains("above zero"));
        p.limits.memory = Some(c.max_memory.as_u64());
        p.limits.wall_time = Some(Duration::from_secs(16 * 60));
        assert!(p.check(&c, &[]).unwrap_err().message().contains("sandbox.max_wall_time"));
        p.limits.wall_time = Some(Duration::from_secs(60 * 15));
        p.check(&c, &[]).unwrap();
    }

    #[test]
    fn loopback_and_binds_need_the_instance_to_allow_them() {
        let allowed = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir(allowed.path().join("rust")).unwrap();
        let mut c = config(&[allowed.path()]);
        let mut p = SandboxPolicy { network: Network::Loopback, ..SandboxPolicy::default() };
        p.check(&c, &[]).unwrap();
        c.allow_loopback = false;
        assert!(p.check(&c, &[]).unwrap_err().message().contains("sandbox.allow_loopback"));
        p.network = Network::None;
        p.binds = vec![Bind { source: allowed.path().join("rust"), target: Some("/opt/rust".into()) }];
        p.check(&c, &[]).unwrap();
        // Outside the bindable folders, also through a symlink or `..`.
        for source in [elsewhere.path().to_path_buf(), allowed.path().join("rust/../.."), PathBuf::from("/etc")] {
            p.binds = vec![Bind { source: source.clone(), target: Some("/opt/x".into()) }];
            let err = p.check(&c, &[]).unwrap_err();
            assert!(err.message().contains("sandbox.bindable"), "{}: {err}", source.display());
        }
        std::os::unix::fs::symlink(elsewhere.path(), allowed.path().join("link")).unwrap();
        p.binds = vec![Bind { source: allowed.path().join("link"), target: Some("/opt/x".into()) }];
        assert!(p.check(&c, &[]).unwrap_err().message().contains("sandbox.bindable"));
        for target in ["/", "/proc/sys", "/workspace/x", "relative", "/opt/../etc"] {
            p.binds = vec![Bind { source: allowed.path().join("rust"), target: Some(target.into()) }];
            assert!(p.check(&c, &[]).is_err(), "{target}");
        }
    }

    #[test]
    fn binds_resolve_symlinks_and_keep_off_the_instances_folders() {
        let allowed = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(allowed.path().join("rust/1.2")).unwrap();
        std::fs::create_dir_all(allowed.path().join("data")).unwrap();
        std::os::unix::fs::symlink("1.2", allowed.path().join("rust/current")).unwrap();
        let c = config(&[allowed.path()]);
        let p = SandboxPolicy {
            binds: vec![Bind { source: allowed.path().join("rust/current"), target: Some("/opt/rust".into()) }],
            ..SandboxPolicy::default()
        };
        let resolved = p.resolved_binds(&c, &[]).unwrap();
        let real = std::fs::canonicalize(allowed.path().join("rust/1.2")).unwrap();
        assert_eq!(resolved, vec![Bind { source: real, target: Some("/opt/rust".into()) }]);
        // The data folder inside a bindable folder, or holding it: refused.
        let protected = [allowed.path().join("data")];
        let p = SandboxPolicy {
            binds: vec![Bind { source: allowed.path().join("data"), target: Some("/opt/d".into()) }],
            ..SandboxPolicy::default()
        };
        assert!(p.check(&c, &protected).unwrap_err().message().contains("data folder"));
        let p = SandboxPolicy {
            binds: vec![Bind { source: allowed.path().to_path_buf(), target: Some("/opt/d".into()) }],
            ..SandboxPolicy::default()
        };
        assert!(p.check(&c, &protected).unwrap_err().message().contains("data folder"));
        // Outside, existing or not: one answer.
        for source in ["/etc/passwd", "/no/such/path"] {
            let p = SandboxPolicy {
                binds: vec![Bind { source: source.into(), target: Some("/opt/x".into()) }],
                ..SandboxPolicy::default()
            };
            let err = p.check(&c, &protected).unwrap_err();
            assert!(err.message().contains("is not inside a folder"), "{source}: {err}");
        }
    }

    #[test]
    fn a_request_stays_within_the_projects_limits() {
        let c = config(&[]);
        let mut p = SandboxPolicy::default();
        p.limits.memory = Some(512 << 20);
        let out = p.limits_for(&Limits::default(), &c).unwrap();
        assert_eq!(out.memory, Some(512 << 20));
        assert_eq!(out.wall_time, Some(c.wall_time));
        let asked = Limits { memory: Some(1 << 30), ..Limits::default() };
        let err = p.limits_for(&asked, &c).unwrap_err();
        assert!(err.message().contains("above this project's limit"), "{err}");
        let asked = Limits { memory: Some(1 << 20), wall_time: Some(Duration::from_millis(1500)), ..Limits::default() };
        let out = p.limits_for(&asked, &c).unwrap();
        assert_eq!((out.memory, out.wall_time), (Some(1 << 20), Some(Duration::from_millis(1500))));
    }
}
