//! The launched processes: everything here runs in a child of a (possibly multi-threaded)
//! process, between `clone` and `execve`, and so allocates nothing and takes no lock. It works
//! from a [`Plan`] the parent prepared.
//!
//! Three processes:
//!
//! - **outer** (a plain child of the supervisor): joins the run's cgroup (v1), drops
//!   supplementary groups when it can, unshares the user, mount, network, ipc, uts and pid
//!   namespaces, tells the parent, which writes `setgroups` = deny and the uid and gid maps (and
//!   puts it in the run's cgroup on v2), then forks *init* and relays: it kills init when the
//!   supervisor's lifeline closes (deadline, cancel, or the supervisor's death) and exits when
//!   init has gone;
//! - **init** (pid 1 of the new pid namespace): builds the root (tmpfs, read-only binds,
//!   `/proc`, `/dev`, tmpfs `/tmp` and `/dev/shm`, the workspace), `pivot_root`s into it,
//!   becomes the sandbox user, drops every capability, sets `no_new_privs`, applies landlock
//!   and seccomp, spawns the command (sharing its memory until the command execs, so no page
//!   table is copied) and reaps every process until the command exits, then
//!   reports its status and resource use; its exit ends every process left in the namespace;
//! - **command**: a new session, the rlimits, the working directory, then `execve`.
//!
//! Failures are reported through the report pipe as fixed-size records ([`Report`]).

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use libc::{c_char, c_int, c_ulong};
use nix::errno::Errno;

use super::sys::{self, Sys};

/// Fixed descriptor numbers in the outer process and its children.
pub(super) const REPORT_FD: RawFd = 3;
pub(super) const LIFELINE_FD: RawFd = 4;
pub(super) const SYNC_FD: RawFd = 5;
pub(super) const LANDLOCK_FD: RawFd = 6;
/// A detached, idmapped mount of the workspace, made by the supervisor (as root).
pub(super) const IDMAPPED_FD: RawFd = 7;
/// A warm sandbox's init reads its run's request here.
pub(super) const GO_FD: RawFd = 8;

/// The largest request a warm sandbox takes (argv, environment, paths); a larger run is
/// launched cold.
pub(super) const REQUEST_MAX: usize = 256 * 1024;
/// The most strings (program candidates, arguments, variables) a request holds.
pub(super) const POINTERS_MAX: usize = 16 * 1024;
/// The most rlimits a request sets.
const RLIMITS_MAX: usize = 8;
const REQUEST_MAGIC: u32 = 0x6378_6731;

/// The sandbox's uid and gid inside its user namespace.
pub(super) const INSIDE_ID: u32 = 1000;

/// A step of the set-up, named in error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum Step {
    Descriptors = 1,
    DropGroups,
    Unshare,
    Sync,
    Fork,
    PrivateMounts,
    RootTmpfs,
    Mount,
    Hostname,
    Loopback,
    PivotRoot,
    ReadOnlyRoot,
    Cgroup,
    Ids,
    Capabilities,
    NoNewPrivs,
    Landlock,
    Seccomp,
    Session,
    Rlimit,
    WorkingDirectory,
    Exec,
    Wait,
    Request,
    Workspace,
    Tmpfs,
    JoinCgroup,
}

impl Step {
    const ALL: [Step; 27] = [
        Step::Descriptors,
        Step::DropGroups,
        Step::Unshare,
        Step::Sync,
        Step::Fork,
        Step::PrivateMounts,
        Step::RootTmpfs,
        Step::Mount,
        Step::Hostname,
        Step::Loopback,
        Step::PivotRoot,
        Step::ReadOnlyRoot,
        Step::Cgroup,
        Step::Ids,
        Step::Capabilities,
        Step::NoNewPrivs,
        Step::Landlock,
        Step::Seccomp,
        Step::Session,
        Step::Rlimit,
        Step::WorkingDirectory,
        Step::Exec,
        Step::Wait,
        Step::Request,
        Step::Workspace,
        Step::Tmpfs,
        Step::JoinCgroup,
    ];

    pub(super) fn from_u32(n: u32) -> Option<Step> {
        Self::ALL.into_iter().find(|s| *s as u32 == n)
    }

    pub(super) fn describe(self) -> &'static str {
        match self {
            Step::Descriptors => "arranging file descriptors",
            Step::DropGroups => "dropping supplementary groups",
            Step::Unshare => "creating the namespaces",
            Step::Sync => "waiting for the supervisor",
            Step::Fork => "starting the sandbox's init",
            Step::PrivateMounts => "making mounts private",
            Step::RootTmpfs => "binding the sandbox's root",
            Step::Mount => "mounting",
            Step::Hostname => "setting the hostname",
            Step::Loopback => "bringing the loopback interface up",
            Step::PivotRoot => "pivoting into the sandbox's root",
            Step::ReadOnlyRoot => "making the root read-only",
            Step::Cgroup => "entering the cgroup namespace",
            Step::Ids => "becoming the sandbox user",
            Step::Capabilities => "dropping capabilities",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Landlock => "applying landlock",
            Step::Seccomp => "installing the seccomp filter",
            Step::Session => "starting a session",
            Step::Rlimit => "setting resource limits",
            Step::WorkingDirectory => "entering the working directory",
            Step::Exec => "executing the command",
            Step::Wait => "waiting for the command",
            Step::Request => "reading the run's request",
            Step::Workspace => "binding the workspace",
            Step::Tmpfs => "mounting /tmp and /dev/shm",
            Step::JoinCgroup => "joining the run's cgroup",
        }
    }
}

/// A record on the report pipe: 40 bytes, written in one `write` (atomic on a pipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Report {
    /// A set-up step failed. `index` says which mount, for [`Step::Mount`].
    Failed { step: u32, errno: i32, index: u32 },
    /// The command ended: its wait status and the resource use of every process init reaped.
    Ended { status: i32, user_us: u64, system_us: u64, max_rss_kib: u64 },
    /// A warm sandbox's init has built the fixed part of the root and waits for a request.
    Ready,
}

pub(super) const REPORT_LEN: usize = 40;

impl Report {
    pub(super) fn encode(self) -> [u8; REPORT_LEN] {
        let mut out = [0u8; REPORT_LEN];
        let (tag, a, b, c, d, e, f): (u32, u32, i32, u32, u64, u64, u64) = match self {
            Report::Failed { step, errno, index } => (1, step, errno, index, 0, 0, 0),
            Report::Ended { status, user_us, system_us, max_rss_kib } => {
                (2, 0, status, 0, user_us, system_us, max_rss_kib)
            }
            Report::Ready => (3, 0, 0, 0, 0, 0, 0),
        };
        out[0..4].copy_from_slice(&tag.to_ne_bytes());
        out[4..8].copy_from_slice(&a.to_ne_bytes());
        out[8..12].copy_from_slice(&b.to_ne_bytes());
        out[12..16].copy_from_slice(&c.to_ne_bytes());
        out[16..24].copy_from_slice(&d.to_ne_bytes());
        out[24..32].copy_from_slice(&e.to_ne_bytes());
        out[32..40].copy_from_slice(&f.to_ne_bytes());
        out
    }

    pub(super) fn decode(bytes: &[u8; REPORT_LEN]) -> Option<Report> {
        let u32_at = |i: usize| u32::from_ne_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_ne_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        match u32_at(0) {
            1 => Some(Report::Failed { step: u32_at(4), errno: u32_at(8) as i32, index: u32_at(12) }),
            2 => Some(Report::Ended {
                status: u32_at(8) as i32,
                user_us: u64_at(16),
                system_us: u64_at(24),
                max_rss_kib: u64_at(32),
            }),
            3 => Some(Report::Ready),
            _ => None,
        }
    }
}

/// One mount of the root, relative to the root (the working directory by then). The root
/// itself is a skeleton of mount points and generated files the supervisor made on the host.
pub(super) enum Op {
    /// A bind mount of a host path, then a remount with `flags` (which include the flags
    /// locked on the source mount, which must be kept).
    Bind { source: CString, target: CString, flags: c_ulong },
    /// A bind of a host device node (it keeps its mount's nosuid; the root's flags do not
    /// matter for a device file).
    Device { source: CString, target: CString },
    /// A tmpfs with these options.
    Tmpfs { target: CString, options: CString, flags: c_ulong },
    /// A fresh procfs (of the new pid namespace).
    Proc(CString),
    /// A read-only bind of a path onto itself (parts of `/proc`).
    ReadOnly(CString),
    /// An empty read-only tmpfs over a folder (parts of `/proc`), or `/dev/null` over a file.
    Mask { target: CString, folder: bool },
    /// The supervisor's detached idmapped mount ([`IDMAPPED_FD`]) attached here.
    Attach(CString),
}

/// Everything the children need, prepared by the parent.
pub(super) struct Plan {
    /// Drop supplementary groups first (the supervisor runs as root).
    pub(super) drop_groups: bool,
    /// The skeleton the root is built on (a host folder of mount points).
    pub(super) root: CString,
    /// The flags the root's read-only remount must keep.
    pub(super) root_flags: c_ulong,
    /// The mounts, in order, relative to the root.
    pub(super) ops: Vec<Op>,
    /// Bring the loopback interface up.
    pub(super) loopback: bool,
    /// Give init a cgroup namespace of its own (rooted at the run's cgroup).
    pub(super) cgroup_namespace: bool,
    /// cgroup v1: the `tasks` files of the run's cgroups, which the outer process joins by
    /// writing `0` (itself) to them. A thread that moves itself skips the kernel's global
    /// threadgroup lock (on recent kernels; measured on 6.18), whose taking waits for an RCU grace
    /// period when no cgroup migration happened just before: the supervisor's write of the pid to
    /// `cgroup.procs` took 6 to 10 ms between Python runs, the process's own write 0.05 ms.
    pub(super) cgroup_tasks: Vec<CString>,
    /// The command's working directory, absolute in the new root.
    pub(super) cwd: CString,
    /// Where the program may be, tried in order (its path, or each `PATH` entry + its name),
    /// as pointers into strings the parent keeps.
    pub(super) programs: Vec<*const c_char>,
    /// `argv` and `envp` as null-terminated pointer arrays into strings the parent keeps.
    pub(super) argv: Vec<*const c_char>,
    pub(super) envp: Vec<*const c_char>,
    /// (resource, soft, hard), set in the command.
    pub(super) rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    /// Landlock rules added by init (path in the new root, access), when landlock applies.
    pub(super) landlock: Option<Vec<(CString, u64)>>,
    /// The filters, installed in order.
    pub(super) seccomp: &'static [seccompiler::BpfProgram],
    /// The descriptors to install: stdin, stdout, stderr, report, lifeline, sync, landlock,
    /// idmapped workspace, go.
    pub(super) fds: [RawFd; 9],
    /// A warm sandbox: init builds the root but the workspace, `/tmp` and `/dev/shm` (which
    /// are not in `ops`), reports [`Report::Ready`], and takes the rest of its run from a
    /// request on [`GO_FD`], decoded into these buffers (allocated by the parent before the
    /// fork: the children allocate nothing).
    pub(super) warm: Option<WarmBuffers>,
}

/// Room for a warm sandbox's request.
pub(super) struct WarmBuffers {
    pub(super) request: Box<[u8]>,
    pub(super) pointers: Box<[*const c_char]>,
}

impl WarmBuffers {
    pub(super) fn new() -> Self {
        Self {
            request: vec![0; REQUEST_MAX].into_boxed_slice(),
            pointers: vec![std::ptr::null(); POINTERS_MAX].into_boxed_slice(),
        }
    }
}

/// What the command stage needs: from the plan (a cold launch) or a request (a warm one).
struct RunArgs<'a> {
    rlimits: &'a [(libc::__rlimit_resource_t, u64, u64)],
    cwd: &'a CStr,
    programs: &'a [*const c_char],
    argv: &'a [*const c_char],
    envp: &'a [*const c_char],
}

/// A warm sandbox's request, as the supervisor encodes it and init decodes it (native byte
/// order; strings NUL-terminated):
///
/// `len: u32` (of what follows), `magic: u32`, `flags: u32` (bit 0: loopback),
/// `workspace_flags: u64`, `rlimit count: u32` and that many `(resource: u32, soft: u64, hard:
/// u64)`, `programs, argv, envp counts: 3 × u32`, then the strings: the workspace's host path,
/// the tmpfs options, the working directory, the programs, the arguments, the variables.
pub(super) struct Request<'a> {
    pub(super) loopback: bool,
    pub(super) workspace: &'a CStr,
    pub(super) workspace_flags: u64,
    pub(super) tmpfs: &'a CStr,
    pub(super) cwd: &'a CStr,
    pub(super) rlimits: &'a [(libc::__rlimit_resource_t, u64, u64)],
    pub(super) programs: &'a [CString],
    pub(super) argv: &'a [CString],
    pub(super) envp: &'a [CString],
}

impl Request<'_> {
    /// The encoded request (by the supervisor), or `None` when it is too large for a warm
    /// sandbox.
    pub(super) fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&REQUEST_MAGIC.to_ne_bytes());
        out.extend_from_slice(&u32::from(self.loopback).to_ne_bytes());
        out.extend_from_slice(&self.workspace_flags.to_ne_bytes());
        if self.rlimits.len() > RLIMITS_MAX {
            return None;
        }
        out.extend_from_slice(&(self.rlimits.len() as u32).to_ne_bytes());
        for &(resource, soft, hard) in self.rlimits {
            out.extend_from_slice(&resource.to_ne_bytes());
            out.extend_from_slice(&soft.to_ne_bytes());
            out.extend_from_slice(&hard.to_ne_bytes());
        }
        // Room for the pointers: the programs, then argv and envp each with a null.
        if self.programs.len() + self.argv.len() + self.envp.len() + 2 > POINTERS_MAX {
            return None;
        }
        for n in [self.programs.len(), self.argv.len(), self.envp.len()] {
            out.extend_from_slice(&(n as u32).to_ne_bytes());
        }
        for s in [self.workspace, self.tmpfs, self.cwd] {
            out.extend_from_slice(s.to_bytes_with_nul());
        }
        for s in self.programs.iter().chain(self.argv).chain(self.envp) {
            out.extend_from_slice(s.to_bytes_with_nul());
        }
        if out.len() > REQUEST_MAX {
            return None;
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_ne_bytes());
        Some(out)
    }
}

/// A decoded request: views into the warm buffers.
struct Decoded<'a> {
    loopback: bool,
    workspace: &'a CStr,
    workspace_flags: c_ulong,
    tmpfs: &'a CStr,
    cwd: &'a CStr,
    rlimits: [(libc::__rlimit_resource_t, u64, u64); RLIMITS_MAX],
    rlimit_count: usize,
    pointers: &'a [*const c_char],
    programs: usize,
    argv: usize,
}

/// Reads and decodes a request from [`GO_FD`] into `buffers`, without allocating.
fn read_request(buffers: &mut WarmBuffers) -> Sys<Decoded<'_>> {
    let mut len = [0u8; 4];
    if !sys::read_exact(GO_FD, &mut len)? {
        // The supervisor dropped this warm sandbox.
        sys::exit(0);
    }
    let len = u32::from_ne_bytes(len) as usize;
    if len > buffers.request.len() {
        return Err(Errno::E2BIG);
    }
    let body = &mut buffers.request[..len];
    sys::read_exact(GO_FD, body)?;
    let body = &buffers.request[..len];
    let mut at = 0usize;
    let mut take = |n: usize| -> Sys<&[u8]> {
        let part = body.get(at..at + n).ok_or(Errno::EINVAL)?;
        at += n;
        Ok(part)
    };
    let u32_of = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let u64_of = |b: &[u8]| u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    if u32_of(take(4)?) != REQUEST_MAGIC {
        return Err(Errno::EINVAL);
    }
    let loopback = u32_of(take(4)?) & 1 == 1;
    let workspace_flags = u64_of(take(8)?) as c_ulong;
    let rlimit_count = u32_of(take(4)?) as usize;
    if rlimit_count > RLIMITS_MAX {
        return Err(Errno::EINVAL);
    }
    let mut rlimits = [(0 as libc::__rlimit_resource_t, 0u64, 0u64); RLIMITS_MAX];
    for slot in rlimits.iter_mut().take(rlimit_count) {
        let resource = u32_of(take(4)?);
        let soft = u64_of(take(8)?);
        let hard = u64_of(take(8)?);
        *slot = (resource as libc::__rlimit_resource_t, soft, hard);
    }
    let programs = u32_of(take(4)?) as usize;
    let argv = u32_of(take(4)?) as usize;
    let envp = u32_of(take(4)?) as usize;
    if programs + argv + envp + 2 > buffers.pointers.len() {
        return Err(Errno::EINVAL);
    }
    // The strings, each up to its NUL.
    let mut next_str = || -> Sys<&CStr> {
        let rest = body.get(at..).ok_or(Errno::EINVAL)?;
        let s = CStr::from_bytes_until_nul(rest).map_err(|_| Errno::EINVAL)?;
        at += s.to_bytes_with_nul().len();
        Ok(s)
    };
    let workspace = next_str()?;
    let tmpfs = next_str()?;
    let cwd = next_str()?;
    // Pointers: programs, argv + null, envp + null.
    let mut slot = 0usize;
    let pointers = &mut buffers.pointers;
    for (count, terminated) in [(programs, false), (argv, true), (envp, true)] {
        for _ in 0..count {
            pointers[slot] = next_str()?.as_ptr();
            slot += 1;
        }
        if terminated {
            pointers[slot] = std::ptr::null();
            slot += 1;
        }
    }
    Ok(Decoded {
        loopback,
        workspace,
        workspace_flags,
        tmpfs,
        cwd,
        rlimits,
        rlimit_count,
        pointers: &buffers.pointers[..slot],
        programs,
        argv,
    })
}

const NOSUID_NODEV: c_ulong = libc::MS_NOSUID | libc::MS_NODEV;

fn fail(step: Step, errno: Errno, index: u32) -> ! {
    let report = Report::Failed { step: step as u32, errno: errno as i32, index };
    let _ = sys::write_all(REPORT_FD, &report.encode());
    sys::exit(127)
}

trait OrFail<T> {
    fn or_fail(self, step: Step) -> T;
}

impl<T> OrFail<T> for Sys<T> {
    fn or_fail(self, step: Step) -> T {
        match self {
            Ok(v) => v,
            Err(e) => fail(step, e, 0),
        }
    }
}

/// The outer process. Never returns.
pub(super) fn outer(plan: &mut Plan) -> ! {
    sys::reset_signals();
    // Until the descriptors are in place, fd 3 may be one of the supervisor's: no report.
    if arrange_descriptors(plan).is_err() {
        sys::exit(127);
    }
    // Before anything else it does (the namespaces it makes are charged to the run).
    for tasks in &plan.cgroup_tasks {
        join_cgroup(tasks).or_fail(Step::JoinCgroup);
    }
    if plan.drop_groups {
        sys::setgroups_none().or_fail(Step::DropGroups);
    }
    sys::unshare(
        libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS,
    )
    .or_fail(Step::Unshare);
    // Tell the supervisor, which writes the maps, then wait for its go.
    sys::write_all(SYNC_FD, b"u").or_fail(Step::Sync);
    if !sys::read_byte(SYNC_FD).or_fail(Step::Sync) {
        sys::exit(127);
    }
    sys::close(SYNC_FD);
    // Init watches this pipe's read end: it hangs up when this process is gone.
    let (alive_r, alive_w) = above_fixed(sys::pipe().or_fail(Step::Fork));
    #[allow(unsafe_code)]
    // SAFETY: this process is single-threaded (a raw clone of one thread).
    let init = unsafe { sys::fork_raw(0) }.or_fail(Step::Fork);
    if init == 0 {
        sys::close(LIFELINE_FD);
        sys::close(alive_w);
        die_with_outer(alive_r);
        init_process(plan, alive_r);
    }
    sys::close(alive_r);
    for fd in [0, 1, 2, LANDLOCK_FD, IDMAPPED_FD, GO_FD] {
        sys::close(fd);
    }
    let pidfd = sys::pidfd_open(init).or_fail(Step::Wait);
    let mut fds = [
        libc::pollfd { fd: LIFELINE_FD, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: pidfd, events: libc::POLLIN, revents: 0 },
    ];
    loop {
        sys::poll_in(&mut fds).or_fail(Step::Wait);
        if fds[0].revents != 0 {
            sys::kill(init, libc::SIGKILL);
        }
        if fds[1].revents != 0 || fds[0].revents != 0 {
            let status = sys::wait_pid(init).or_fail(Step::Wait);
            sys::exit(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 125 });
        }
    }
}

/// A pipe's ends moved above the fixed descriptor numbers, so that closing an empty fixed slot
/// later never closes one of them.
fn above_fixed((r, w): (RawFd, RawFd)) -> (RawFd, RawFd) {
    let high_r = sys::dup_above(r, 16).or_fail(Step::Fork);
    let high_w = sys::dup_above(w, 16).or_fail(Step::Fork);
    sys::close(r);
    sys::close(w);
    (high_r, high_w)
}

/// Moves this (single-threaded) process into the cgroup whose `tasks` file is `tasks`.
fn join_cgroup(tasks: &CString) -> Sys {
    let fd = sys::open(tasks, libc::O_WRONLY | libc::O_CLOEXEC, 0)?;
    let written = sys::write_all(fd, b"0");
    sys::close(fd);
    written
}

/// Moves the plan's descriptors to their fixed numbers and closes every other one.
fn arrange_descriptors(plan: &Plan) -> Sys {
    // Out of the way first (above any fixed number), then into place.
    let mut high = [0 as RawFd; 9];
    for (slot, &fd) in high.iter_mut().zip(&plan.fds) {
        *slot = if fd < 0 { -1 } else { sys::dup_above(fd, 16)? };
    }
    for (target, &fd) in high.iter().enumerate() {
        if fd >= 0 {
            // stdio is inherited by the command; the others are close-on-exec.
            sys::dup_to(fd, target as RawFd, target > 2)?;
        } else {
            // An empty slot (no landlock ruleset) must not keep the supervisor's descriptor.
            sys::close(target as RawFd);
        }
    }
    sys::close_from(GO_FD + 1)
}

/// Makes init die with the outer process: the parent-death signal (which the kernel clears on
/// every change of ids, so this is called again after them), then a check that the outer
/// process had not already gone.
fn die_with_outer(alive: RawFd) {
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong).or_fail(Step::Fork);
    if sys::hung_up(alive) {
        sys::exit(127);
    }
}

/// Init: builds the root, hardens itself, runs the command, reaps. A warm init builds the
/// fixed part of the root, says it is ready, and waits for its run's request first.
fn init_process(plan: &mut Plan, alive: RawFd) -> ! {
    if plan.cgroup_namespace {
        sys::unshare(libc::CLONE_NEWCGROUP).or_fail(Step::Cgroup);
    }
    sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None).or_fail(Step::PrivateMounts);
    sys::mount(Some(&plan.root), &plan.root, None, libc::MS_BIND, None).or_fail(Step::RootTmpfs);
    sys::chdir(&plan.root).or_fail(Step::RootTmpfs);
    for (index, op) in plan.ops.iter().enumerate() {
        if let Err(e) = run_op(op) {
            fail(Step::Mount, e, index as u32);
        }
    }
    sys::close(IDMAPPED_FD);
    sys::sethostname(b"sandbox").or_fail(Step::Hostname);
    let Some(buffers) = plan.warm.as_mut() else {
        sys::close(GO_FD);
        if plan.loopback {
            sys::loopback_up().or_fail(Step::Loopback);
        }
        let run = RunArgs {
            rlimits: &plan.rlimits,
            cwd: &plan.cwd,
            programs: &plan.programs,
            argv: &plan.argv,
            envp: &plan.envp,
        };
        harden_and_run(plan.root_flags, plan.landlock.as_deref(), plan.seccomp, alive, &run);
    };
    let _ = sys::write_all(REPORT_FD, &Report::Ready.encode());
    let request = read_request(buffers).or_fail(Step::Request);
    sys::close(GO_FD);
    if request.loopback {
        sys::loopback_up().or_fail(Step::Loopback);
    }
    for (target, extra) in [(c"tmp", 0), (c"dev/shm", libc::MS_NOEXEC)] {
        sys::mount(Some(c"tmpfs"), target, Some(c"tmpfs"), NOSUID_NODEV | extra, Some(request.tmpfs))
            .or_fail(Step::Tmpfs);
    }
    sys::mount(Some(request.workspace), c"workspace", None, libc::MS_BIND, None).or_fail(Step::Workspace);
    sys::mount(None, c"workspace", None, libc::MS_REMOUNT | libc::MS_BIND | request.workspace_flags, None)
        .or_fail(Step::Workspace);
    let (programs, rest) = request.pointers.split_at(request.programs);
    let (argv, envp) = rest.split_at(request.argv + 1);
    let run = RunArgs { rlimits: &request.rlimits[..request.rlimit_count], cwd: request.cwd, programs, argv, envp };
    harden_and_run(plan.root_flags, plan.landlock.as_deref(), plan.seccomp, alive, &run)
}

/// Pivots into the root, becomes the sandbox user, drops every privilege, applies landlock
/// and seccomp, spawns the command and reaps until it exits.
fn harden_and_run(
    root_flags: c_ulong,
    landlock: Option<&[(CString, u64)]>,
    seccomp: &[seccompiler::BpfProgram],
    alive: RawFd,
    run: &RunArgs<'_>,
) -> ! {
    sys::pivot_root(c".", c".").or_fail(Step::PivotRoot);
    sys::umount_detach(c".").or_fail(Step::PivotRoot);
    sys::chdir(c"/").or_fail(Step::PivotRoot);
    sys::mount(None, c"/", None, libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | NOSUID_NODEV | root_flags, None)
        .or_fail(Step::ReadOnlyRoot);
    sys::setresgid(INSIDE_ID).or_fail(Step::Ids);
    sys::setresuid(INSIDE_ID).or_fail(Step::Ids);
    die_with_outer(alive);
    sys::close(alive);
    sys::prctl(libc::PR_SET_DUMPABLE, 0).or_fail(Step::Ids);
    sys::drop_capabilities().or_fail(Step::Capabilities);
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).or_fail(Step::NoNewPrivs);
    if let Some(rules) = landlock {
        for (path, access) in rules {
            sys::landlock_allow(LANDLOCK_FD, path, *access).or_fail(Step::Landlock);
        }
        sys::landlock_restrict(LANDLOCK_FD).or_fail(Step::Landlock);
    }
    sys::close(LANDLOCK_FD);
    for program in seccomp {
        sys::seccomp_install(program).or_fail(Step::Seccomp);
    }
    // Spawned rather than forked: a fork copies the page tables of everything init inherited
    // from the host, which made a run's cost grow with the host's size.
    #[allow(unsafe_code)]
    // SAFETY: init is single-threaded; `command_entry` only sets up and execs (or reports and
    // exits), writing nothing init reads, and `run` outlives it since init is suspended.
    let command =
        unsafe { sys::spawn_shared(command_entry, std::ptr::from_ref(run).cast_mut().cast()) }.or_fail(Step::Fork);
    sys::close(0);
    sys::close(1);
    sys::close(2);
    loop {
        match sys::wait_any() {
            Ok((pid, status)) if pid == command => {
                let usage = sys::rusage_children();
                let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
                let report = Report::Ended {
                    status,
                    user_us: micros(usage.ru_utime),
                    system_us: micros(usage.ru_stime),
                    max_rss_kib: usage.ru_maxrss as u64,
                };
                let _ = sys::write_all(REPORT_FD, &report.encode());
                sys::exit(0);
            }
            Ok(_) => {}
            Err(e) => fail(Step::Wait, e, 0),
        }
    }
}

fn run_op(op: &Op) -> Sys {
    match op {
        Op::Bind { source, target, flags } => {
            sys::mount(Some(source), target, None, libc::MS_BIND, None)?;
            sys::mount(None, target, None, libc::MS_REMOUNT | libc::MS_BIND | flags, None)
        }
        Op::Device { source, target } => sys::mount(Some(source), target, None, libc::MS_BIND, None),
        Op::Tmpfs { target, options, flags } => {
            sys::mount(Some(c"tmpfs"), target, Some(c"tmpfs"), *flags, Some(options))
        }
        Op::Proc(target) => sys::mount(Some(c"proc"), target, Some(c"proc"), NOSUID_NODEV | libc::MS_NOEXEC, None),
        Op::ReadOnly(target) => {
            sys::mount(Some(target), target, None, libc::MS_BIND | libc::MS_REC, None)?;
            sys::mount(
                None,
                target,
                None,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | NOSUID_NODEV | libc::MS_NOEXEC,
                None,
            )
        }
        Op::Mask { target, folder: true } => sys::mount(
            Some(c"tmpfs"),
            target,
            Some(c"tmpfs"),
            libc::MS_RDONLY | NOSUID_NODEV | libc::MS_NOEXEC,
            Some(c"size=0,nr_inodes=1,mode=0555"),
        ),
        Op::Attach(target) => sys::move_mount_to(IDMAPPED_FD, target),
        Op::Mask { target, folder: false } => {
            sys::mount(Some(c"dev/null"), target, None, libc::MS_BIND, None)?;
            // Read-only too: writing to /dev/null is harmless, but a masked file should not
            // look writable.
            sys::mount(
                None,
                target,
                None,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
                None,
            )
        }
    }
}

/// The command's entry from [`sys::spawn_shared`]: `arg` is the [`RunArgs`] init passed.
extern "C" fn command_entry(arg: *mut libc::c_void) -> c_int {
    #[allow(unsafe_code)]
    // SAFETY: init passed a pointer to its `RunArgs`, alive while it is suspended.
    let run = unsafe { &*arg.cast::<RunArgs<'_>>() };
    command_process(run)
}

/// The command: a session, limits, the working directory, exec.
fn command_process(run: &RunArgs<'_>) -> ! {
    sys::setsid().or_fail(Step::Session);
    for &(resource, soft, hard) in run.rlimits {
        sys::setrlimit(resource, soft, hard).or_fail(Step::Rlimit);
    }
    sys::chdir(run.cwd).or_fail(Step::WorkingDirectory);
    let mut error = Errno::ENOENT;
    for &program in run.programs {
        match sys::execve(program, run.argv, run.envp) {
            Errno::ENOENT | Errno::ENOTDIR => {}
            // Keep looking on PATH, but report this one if nothing better turns up.
            e @ Errno::EACCES => error = e,
            e => fail(Step::Exec, e, 0),
        }
    }
    fail(Step::Exec, error, 0)
}
