//! The seccomp filters every sandboxed process runs under, compiled once per process.
//!
//! Three filters are stacked (the kernel applies the strictest answer of all): a deny-list that
//! answers `EPERM`, one that answers `ENOSYS` to `clone3` (so that C libraries fall back to
//! `clone`, whose flags the first filter can inspect), and one that kills any x32-ABI call.
//! Other architectures' calls (32-bit `int 0x80`) fail the first filter's architecture check and
//! kill the process.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch, sock_filter,
};

/// System calls denied outright, by name (for the isolation record) and number.
pub(crate) const DENIED: &[(&str, i64)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    ("acct", libc::SYS_acct),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("syslog", libc::SYS_syslog),
    ("quotactl", libc::SYS_quotactl),
    ("uselib", libc::SYS_uselib),
    ("vhangup", libc::SYS_vhangup),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
];

/// `ioctl` requests denied: pushing input into a terminal, and the Linux console's.
const DENIED_IOCTLS: &[(&str, u64)] = &[("TIOCSTI", libc::TIOCSTI), ("TIOCLINUX", libc::TIOCLINUX)];

/// `clone` flags that create namespaces: a `clone` with any of them is denied.
const NAMESPACE_FLAGS: &[i32] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
    0x80, // CLONE_NEWTIME
];

/// The compiled filters, in the order they are installed.
pub(crate) struct Filters {
    pub(crate) programs: Vec<BpfProgram>,
    /// Names of what the filters deny, for the isolation record.
    pub(crate) denied: Vec<&'static str>,
}

/// The filters, compiled on first use.
pub(crate) fn filters() -> Result<&'static Filters, String> {
    static FILTERS: OnceLock<Result<Filters, String>> = OnceLock::new();
    FILTERS.get_or_init(compile).as_ref().map_err(Clone::clone)
}

fn compile() -> Result<Filters, String> {
    let arch = TargetArch::x86_64;
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let cond = |arg: u8, op: SeccompCmpOp, value: u64, len: SeccompCmpArgLen| {
        SeccompCondition::new(arg, len, op, value).map_err(|e| format!("seccomp condition: {e}"))
    };
    let mut ioctls = Vec::new();
    for &(_, request) in DENIED_IOCTLS {
        let rule = SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, request, SeccompCmpArgLen::Dword)?])
            .map_err(|e| format!("seccomp rule: {e}"))?;
        ioctls.push(rule);
    }
    rules.insert(libc::SYS_ioctl, ioctls);
    let mut clones = Vec::new();
    for &flag in NAMESPACE_FLAGS {
        let bits = u64::from(flag as u32);
        let rule = SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(bits), bits, SeccompCmpArgLen::Qword)?])
            .map_err(|e| format!("seccomp rule: {e}"))?;
        clones.push(rule);
    }
    rules.insert(libc::SYS_clone, clones);
    let deny: BpfProgram = SeccompFilter::new(rules, SeccompAction::Allow, eperm, arch)
        .and_then(TryInto::try_into)
        .map_err(|e| format!("cannot compile the seccomp filter: {e}"))?;
    let clone3: BpfProgram = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .and_then(TryInto::try_into)
    .map_err(|e| format!("cannot compile the seccomp filter: {e}"))?;
    let mut denied: Vec<&'static str> = DENIED.iter().map(|&(name, _)| name).collect();
    denied.extend(["clone3 (ENOSYS)", "clone with namespace flags", "ioctl TIOCSTI", "ioctl TIOCLINUX"]);
    denied.push("x32-ABI calls (kill)");
    Ok(Filters { programs: vec![deny, clone3, x32_killer()], denied })
}

/// A filter that kills the process on any x32-ABI call (`__X32_SYSCALL_BIT` set).
fn x32_killer() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        op(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JGE_K, 0, 1, X32_SYSCALL_BIT),
        op(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_filters_compile_and_name_what_they_deny() {
        let filters = super::filters().unwrap();
        assert_eq!(filters.programs.len(), 3);
        for name in ["ptrace", "io_uring_setup", "keyctl", "bpf", "perf_event_open", "userfaultfd", "mount"] {
            assert!(filters.denied.contains(&name), "{name}");
        }
        assert!(filters.programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
    }
}
