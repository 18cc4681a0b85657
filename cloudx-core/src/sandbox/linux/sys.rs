//! Thin wrappers over the raw system calls the launched child makes.
//!
//! The child of a multi-threaded process may only do async-signal-safe work until it execs: no
//! allocation, no locks. Everything here is one system call on memory prepared by the parent
//! (C strings, pointer arrays, BPF programs), or a few ([`spawn_shared`]'s stack around its
//! `clone`), and reports failure as an [`Errno`].
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::RawFd;

use libc::{c_char, c_int, c_long, c_ulong};
use nix::errno::Errno;

pub(super) type Sys<T = ()> = Result<T, Errno>;

fn check(ret: c_long) -> Sys<c_long> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

/// `clone(flags | SIGCHLD)` without a new stack: a fork that runs no `pthread_atfork`
/// handlers. Returns 0 in the child, the child's pid in the parent.
///
/// # Safety
/// The child may only make async-signal-safe calls until it execs or exits.
pub(super) unsafe fn fork_raw(flags: c_int) -> Sys<libc::pid_t> {
    // SAFETY: the kernel copies the address space; with a null stack the child returns here.
    let ret =
        unsafe { libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as c_ulong, 0usize, 0usize, 0usize, 0usize) };
    check(ret).map(|pid| pid as libc::pid_t)
}

/// Stack of a [`spawn_shared`] child, above one guard page.
const SPAWN_STACK: usize = 256 * 1024;

/// Runs `child(arg)` in a new process that shares this one's memory, on a stack of its own,
/// while this one is suspended until the child execs or exits (`clone(CLONE_VM | CLONE_VFORK)`,
/// as `posix_spawn` does). No page table is copied, so it costs the same whatever this process
/// holds, where [`fork_raw`] costs in proportion to it. Returns the child's pid.
///
/// # Safety
/// This process must be single-threaded and have no signal handler installed (one would run
/// in the child, on this process's memory). `child` may only make async-signal-safe calls, must
/// not change memory this process relies on (its writes land in this process), and must exec
/// or exit rather than return.
pub(super) unsafe fn spawn_shared(
    child: extern "C" fn(*mut libc::c_void) -> c_int,
    arg: *mut libc::c_void,
) -> Sys<libc::pid_t> {
    // SAFETY: sysconf has no precondition.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let len = SPAWN_STACK + page;
    // SAFETY: a fresh anonymous mapping; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    // SAFETY: the lowest page of the mapping made above; an overflow faults instead of writing
    // below it.
    let guarded = check(unsafe { libc::mprotect(base, page, libc::PROT_NONE) }.into());
    let spawned = guarded.and_then(|_| {
        // SAFETY: the stack grows down from the mapping's end, which stays mapped until the
        // child has exec'd or exited (CLONE_VFORK suspends this process until then).
        let ret = unsafe {
            libc::clone(
                child,
                base.cast::<u8>().add(len).cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                arg,
            )
        };
        check(ret.into()).map(|pid| pid as libc::pid_t)
    });
    // SAFETY: the mapping made above, which the child no longer uses.
    unsafe { libc::munmap(base, len) };
    spawned
}

pub(super) fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> Sys {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is a NUL-terminated string or null.
    let ret = unsafe { libc::mount(ptr(src), target.as_ptr(), ptr(fstype), flags, ptr(data).cast()) };
    check(ret.into()).map(drop)
}

pub(super) fn umount_detach(target: &CStr) -> Sys {
    // SAFETY: a NUL-terminated path.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }.into()).map(drop)
}

pub(super) fn pivot_root(new_root: &CStr, put_old: &CStr) -> Sys {
    // SAFETY: NUL-terminated paths.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) }).map(drop)
}

pub(super) fn chdir(path: &CStr) -> Sys {
    // SAFETY: a NUL-terminated path.
    check(unsafe { libc::chdir(path.as_ptr()) }.into()).map(drop)
}

pub(super) fn open(path: &CStr, flags: c_int, mode: libc::mode_t) -> Sys<RawFd> {
    // SAFETY: a NUL-terminated path.
    check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) }.into())
        .map(|fd| fd as RawFd)
}

pub(super) fn close(fd: RawFd) {
    // SAFETY: closing a descriptor this process owns.
    unsafe { libc::close(fd) };
}

pub(super) fn write_all(fd: RawFd, mut data: &[u8]) -> Sys {
    while !data.is_empty() {
        // SAFETY: `data` is valid for its length.
        match check(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) } as c_long) {
            Ok(n) => data = &data[n as usize..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn read_byte(fd: RawFd) -> Sys<bool> {
    let mut byte = 0u8;
    loop {
        // SAFETY: one byte of stack memory.
        match check(unsafe { libc::read(fd, (&raw mut byte).cast(), 1) } as c_long) {
            Ok(n) => return Ok(n == 1),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn unshare(flags: c_int) -> Sys {
    // SAFETY: no pointers.
    check(unsafe { libc::unshare(flags) }.into()).map(drop)
}

pub(super) fn setgroups_none() -> Sys {
    // SAFETY: an empty list. The raw system call: glibc's wrapper broadcasts to every thread
    // under a lock another thread of the parent may have held at the fork.
    check(unsafe { libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) }).map(drop)
}

pub(super) fn setresuid(uid: libc::uid_t) -> Sys {
    // SAFETY: no pointers. The raw system call changes this thread only, and the child has
    // only this thread.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

pub(super) fn setresgid(gid: libc::gid_t) -> Sys {
    // SAFETY: as for `setresuid`.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
}

pub(super) fn prctl(option: c_int, arg: c_ulong) -> Sys {
    // SAFETY: the options used take integers only.
    check(unsafe { libc::prctl(option, arg, 0 as c_ulong, 0 as c_ulong, 0 as c_ulong) }.into()).map(drop)
}

pub(super) fn sethostname(name: &[u8]) -> Sys {
    // SAFETY: `name` is valid for its length.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }.into()).map(drop)
}

pub(super) fn setsid() -> Sys {
    // SAFETY: no pointers.
    check(unsafe { libc::setsid() }.into()).map(drop)
}

pub(super) fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> Sys {
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: a valid struct on the stack.
    check(unsafe { libc::setrlimit(resource, &limit) }.into()).map(drop)
}

/// Duplicates `from` onto `to` (replacing it), close-on-exec or not.
pub(super) fn dup_to(from: RawFd, to: RawFd, cloexec: bool) -> Sys {
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: descriptors only.
    check(unsafe { libc::dup3(from, to, flags) }.into()).map(drop)
}

/// Duplicates `fd` to the lowest free descriptor at or above `min`, close-on-exec.
pub(super) fn dup_above(fd: RawFd, min: RawFd) -> Sys<RawFd> {
    // SAFETY: descriptors only.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) }.into()).map(|fd| fd as RawFd)
}

pub(super) fn close_from(first: RawFd) -> Sys {
    // SAFETY: closes descriptors of this process only.
    check(unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, 0) }).map(drop)
}

/// A pipe, both ends close-on-exec: (read, write).
pub(super) fn pipe() -> Sys<(RawFd, RawFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: a valid two-element out-array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }.into())?;
    Ok((fds[0], fds[1]))
}

/// Whether the write end of the pipe whose read end is `fd` is closed everywhere.
pub(super) fn hung_up(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; no timeout.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    ready > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Puts every signal back to its default action and unblocks them all: the supervisor's
/// handlers (and Rust's ignored SIGPIPE, which an exec would keep) must not reach the sandbox.
pub(super) fn reset_signals() {
    // The kernel's struct sigaction: handler, flags, restorer, mask; all zero is SIG_DFL. The
    // raw call: glibc's wrapper refuses its own signals (32, 33), which stay ignored otherwise.
    let action = [0u64; 4];
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a valid kernel sigaction and the 8-byte signal set size the kernel expects.
        unsafe { libc::syscall(libc::SYS_rt_sigaction, signal, action.as_ptr(), std::ptr::null::<u64>(), 8usize) };
    }
    // SAFETY: an empty set, filled in on the stack.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

pub(super) fn pidfd_open(pid: libc::pid_t) -> Sys<RawFd> {
    // SAFETY: no pointers.
    check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) }).map(|fd| fd as RawFd)
}

pub(super) fn kill(pid: libc::pid_t, signal: c_int) {
    // SAFETY: no pointers.
    unsafe { libc::kill(pid, signal) };
}

/// Waits for any child; returns its pid and wait status.
pub(super) fn wait_any() -> Sys<(libc::pid_t, c_int)> {
    let mut status = 0;
    loop {
        // SAFETY: a valid out-pointer.
        match check(unsafe { libc::waitpid(-1, &mut status, 0) }.into()) {
            Ok(pid) => return Ok((pid as libc::pid_t, status)),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn wait_pid(pid: libc::pid_t) -> Sys<c_int> {
    let mut status = 0;
    loop {
        // SAFETY: a valid out-pointer.
        match check(unsafe { libc::waitpid(pid, &mut status, 0) }.into()) {
            Ok(_) => return Ok(status),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn rusage_children() -> libc::rusage {
    // SAFETY: a zeroed plain-data struct is a valid rusage, filled in by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage
}

/// Polls `fds` (events POLLIN) without a timeout; returns which are ready.
pub(super) fn poll_in(fds: &mut [libc::pollfd]) -> Sys {
    loop {
        // SAFETY: `fds` is valid for its length.
        match check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) }.into()) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Brings the loopback interface of this network namespace up.
pub(super) fn loopback_up() -> Sys {
    // SAFETY: no pointers.
    let sock = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }.into())? as c_int;
    // SAFETY: a zeroed ifreq is valid; the name is copied in below.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: a valid ifreq for SIOCSIFFLAGS.
    let ret = check(unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req) }.into());
    close(sock);
    ret.map(drop)
}

/// Drops every capability: the bounding set, the ambient set, then the permitted, effective
/// and inheritable sets.
pub(super) fn drop_capabilities() -> Sys {
    for cap in 0..=63 {
        match prctl(libc::PR_CAPBSET_DROP, cap) {
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    // PR_CAP_AMBIENT_CLEAR_ALL = 4
    prctl(libc::PR_CAP_AMBIENT, 4)?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: c_int,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header { version: 0x2008_0522, pid: 0 }; // _LINUX_CAPABILITY_VERSION_3
    let data =
        [Data { effective: 0, permitted: 0, inheritable: 0 }, Data { effective: 0, permitted: 0, inheritable: 0 }];
    // SAFETY: a v3 header and two data structs, as capset(2) expects.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) }).map(drop)
}

/// Installs a seccomp filter (after `no_new_privs`).
pub(super) fn seccomp_install(program: &[seccompiler::sock_filter]) -> Sys {
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut().cast() };
    // SAFETY: `prog` points at a live program of the stated length; sock_filter has the
    // kernel's layout in both crates.
    check(unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) }).map(drop)
}

/// The kernel's `struct landlock_path_beneath_attr` (packed).
#[repr(C, packed)]
struct PathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// Adds a path-beneath rule for `path` to a landlock ruleset.
pub(super) fn landlock_allow(ruleset: RawFd, path: &CStr, access: u64) -> Sys {
    let fd = open(path, libc::O_PATH, 0)?;
    let attr = PathBeneath { allowed_access: access, parent_fd: fd };
    // SAFETY: a valid attribute struct; LANDLOCK_RULE_PATH_BENEATH = 1.
    let ret = check(unsafe { libc::syscall(libc::SYS_landlock_add_rule, ruleset, 1, &attr, 0) });
    close(fd);
    ret.map(drop)
}

pub(super) fn landlock_restrict(ruleset: RawFd) -> Sys {
    // SAFETY: no pointers.
    check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0) }).map(drop)
}

/// The highest landlock ABI the kernel offers (0 when landlock is unavailable).
pub(super) fn landlock_abi() -> u8 {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION = 1, with a null attribute and size 0.
    let ret = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    u8::try_from(ret).unwrap_or(0)
}

/// The kernel's `struct mount_attr`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: c_ulong = 1;
const MOVE_MOUNT_F_EMPTY_PATH: c_ulong = 4;
pub(super) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(super) const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// A detached copy of the mount at `path` (`open_tree` with `OPEN_TREE_CLONE`), close-on-exec.
pub(super) fn open_tree_clone(path: &CStr) -> Sys<RawFd> {
    // SAFETY: a NUL-terminated path; no other pointers.
    let ret = unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as c_ulong)
    };
    check(ret).map(|fd| fd as RawFd)
}

/// Makes the detached mount `tree` idmapped through the user namespace `userns`, with the
/// attributes `attr_set` besides.
pub(super) fn mount_setattr_idmap(tree: RawFd, userns: RawFd, attr_set: u64) -> Sys {
    let attr =
        MountAttr { attr_set: attr_set | MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: userns as u64 };
    // SAFETY: an empty path with AT_EMPTY_PATH, and a live attribute struct of the stated size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// Attaches the detached mount `tree` at `target`.
pub(super) fn move_mount_to(tree: RawFd, target: &CStr) -> Sys {
    // SAFETY: NUL-terminated paths.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(ret).map(drop)
}

/// Replaces this process with `program`: `argv` and `envp` are null-terminated arrays of
/// NUL-terminated strings, which the caller keeps alive.
pub(super) fn execve(program: *const c_char, argv: &[*const c_char], envp: &[*const c_char]) -> Errno {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()) && envp.last().is_some_and(|p| p.is_null()));
    // SAFETY: as the caller promises.
    unsafe { libc::execve(program, argv.as_ptr(), envp.as_ptr()) };
    Errno::last()
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` at end of file before any byte.
pub(super) fn read_exact(fd: RawFd, buf: &mut [u8]) -> Sys<bool> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the rest of a live buffer.
        let ret = unsafe { libc::read(fd, buf[done..].as_mut_ptr().cast(), buf.len() - done) };
        match check(ret as c_long) {
            Ok(0) if done == 0 => return Ok(false),
            Ok(0) => return Err(Errno::EPIPE),
            Ok(n) => done += n as usize,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

pub(super) fn exit(code: c_int) -> ! {
    // SAFETY: ends the process without running atexit handlers or destructors.
    unsafe { libc::_exit(code) }
}
