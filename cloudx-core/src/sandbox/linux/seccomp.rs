//! The seccomp filter every sandboxed process runs under, assembled once per process.
//!
//! One classic BPF program: it kills the process for another architecture's calls (32-bit
//! `int 0x80`) and for any x32-ABI call, answers `EPERM` to a deny-list (and to `ioctl`s that push
//! input into a terminal, and to `clone` with namespace flags), and `ENOSYS` to `clone3` (so that
//! C libraries fall back to `clone`, whose flags it can inspect). The syscall number is looked up
//! by binary search. One program, short, rather than a stack of three linear ones: the kernel
//! runs each stacked program, and at install time emulates each for every syscall number to
//! build its cache of always-allowed calls, which made installing three a quarter of a
//! millisecond of every launch.

use std::sync::OnceLock;

use seccompiler::{BpfProgram, sock_filter};

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
    let mut denied: Vec<&'static str> = DENIED.iter().map(|&(name, _)| name).collect();
    denied.extend(["clone3 (ENOSYS)", "clone with namespace flags", "ioctl TIOCSTI", "ioctl TIOCLINUX"]);
    denied.extend([
        "setuid and setgid modes (chmod, fchmod, fchmodat, fchmodat2, creat, mknod, mknodat, and open/openat creating a file)",
        "openat2 (ENOSYS)",
    ]);
    denied.push("x32-ABI calls (kill)");
    Ok(Filters { programs: vec![program()?], denied })
}

// Classic BPF, as seccomp takes it (linux/bpf_common.h, linux/seccomp.h).
const LD_W_ABS: u16 = 0x20;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Offsets in `struct seccomp_data`: the syscall number, the architecture, and the low words of
/// the first two arguments (little-endian).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;
const ARG1_LOW: u32 = 24;
const ARG2_LOW: u32 = 32;
const ARG3_LOW: u32 = 40;
/// `S_ISUID | S_ISGID`: a file the sandbox writes into a folder it shares with its owner
/// (idmapped, as root) belongs to that owner, so these bits would make a setuid program of the
/// owner's — root's, for a root-owned folder — that anyone on the host could run.
const SETID_BITS: u32 = 0o6000;
/// `O_CREAT` and `__O_TMPFILE`: the flags with which `open` uses its mode.
const CREATING: u32 = 0o100 | 0o20_000_000;

/// Where a jump goes: the next instruction, or a labelled one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Next,
    Label(Label),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Label {
    Allow,
    Eperm,
    Enosys,
    Kill,
    Ioctl,
    Clone,
    /// A mode in argument 1 (`chmod`, `fchmod`, `creat`, `mknod`) or 2 (`fchmodat`,
    /// `fchmodat2`, `mknodat`).
    Mode1,
    Mode2,
    /// `open` (flags in argument 1, mode in 2) and `openat` (flags in 2, mode in 3).
    Open,
    OpenAt,
    /// The right half of a split of the syscall table, by its first index.
    Right(usize),
}

/// An instruction whose jumps are labels until the program is laid out.
enum Insn {
    Load(u32),
    /// Conditional jump: (opcode, constant, if true, if false).
    Jump(u16, u32, Target, Target),
    Always(Label),
    Ret(u32),
    Here(Label),
}

/// Where each syscall of the table goes.
fn table() -> Vec<(u32, Label)> {
    let mut table: Vec<(u32, Label)> = DENIED.iter().map(|&(_, nr)| (nr as u32, Label::Eperm)).collect();
    table.push((libc::SYS_ioctl as u32, Label::Ioctl));
    table.push((libc::SYS_clone as u32, Label::Clone));
    table.push((libc::SYS_clone3 as u32, Label::Enosys));
    table.push((libc::SYS_openat2 as u32, Label::Enosys));
    for nr in [libc::SYS_chmod, libc::SYS_fchmod, libc::SYS_creat, libc::SYS_mknod] {
        table.push((nr as u32, Label::Mode1));
    }
    for nr in [libc::SYS_fchmodat, libc::SYS_fchmodat2, libc::SYS_mknodat] {
        table.push((nr as u32, Label::Mode2));
    }
    table.push((libc::SYS_open as u32, Label::Open));
    table.push((libc::SYS_openat as u32, Label::OpenAt));
    table.sort_unstable_by_key(|&(nr, _)| nr);
    table
}

/// Binary search over `table[lo..hi]`, a few comparisons in a row at the leaves.
fn search(table: &[(u32, Label)], lo: usize, hi: usize, out: &mut Vec<Insn>) {
    if hi - lo <= 4 {
        for &(nr, label) in &table[lo..hi] {
            out.push(Insn::Jump(JEQ_K, nr, Target::Label(label), Target::Next));
        }
        out.push(Insn::Always(Label::Allow));
        return;
    }
    let mid = lo + (hi - lo) / 2;
    out.push(Insn::Jump(JGE_K, table[mid].0, Target::Label(Label::Right(mid)), Target::Next));
    search(table, lo, mid, out);
    out.push(Insn::Here(Label::Right(mid)));
    search(table, mid, hi, out);
}

fn program() -> Result<BpfProgram, String> {
    use Insn::{Always, Here, Jump, Load, Ret};
    use Target::Next;
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA);
    let namespace_flags = NAMESPACE_FLAGS.iter().fold(0u32, |all, &flag| all | flag as u32);
    let mut code = vec![
        Load(ARCH),
        Jump(JEQ_K, AUDIT_ARCH_X86_64, Next, Target::Label(Label::Kill)),
        Load(NR),
        Jump(JGE_K, X32_SYSCALL_BIT, Target::Label(Label::Kill), Next),
    ];
    let table = table();
    search(&table, 0, table.len(), &mut code);
    code.extend([Here(Label::Ioctl), Load(ARG1_LOW)]);
    for &(_, request) in DENIED_IOCTLS {
        code.push(Jump(JEQ_K, request as u32, Target::Label(Label::Eperm), Next));
    }
    code.extend([
        Always(Label::Allow),
        Here(Label::Clone),
        Load(ARG0_LOW),
        Jump(JSET_K, namespace_flags, Target::Label(Label::Eperm), Target::Label(Label::Allow)),
        Here(Label::Mode1),
        Load(ARG1_LOW),
        Jump(JSET_K, SETID_BITS, Target::Label(Label::Eperm), Target::Label(Label::Allow)),
        Here(Label::Mode2),
        Load(ARG2_LOW),
        Jump(JSET_K, SETID_BITS, Target::Label(Label::Eperm), Target::Label(Label::Allow)),
        Here(Label::Open),
        Load(ARG1_LOW),
        Jump(JSET_K, CREATING, Next, Target::Label(Label::Allow)),
        Load(ARG2_LOW),
        Jump(JSET_K, SETID_BITS, Target::Label(Label::Eperm), Target::Label(Label::Allow)),
        Here(Label::OpenAt),
        Load(ARG2_LOW),
        Jump(JSET_K, CREATING, Next, Target::Label(Label::Allow)),
        Load(ARG3_LOW),
        Jump(JSET_K, SETID_BITS, Target::Label(Label::Eperm), Target::Label(Label::Allow)),
        Here(Label::Allow),
        Ret(libc::SECCOMP_RET_ALLOW),
        Here(Label::Eperm),
        Ret(errno(libc::EPERM)),
        Here(Label::Enosys),
        Ret(errno(libc::ENOSYS)),
        Here(Label::Kill),
        Ret(libc::SECCOMP_RET_KILL_PROCESS),
    ]);
    assemble(&code)
}

/// Lays the program out, turning labels into the forward offsets classic BPF jumps take.
fn assemble(code: &[Insn]) -> Result<BpfProgram, String> {
    let mut at = Vec::new();
    let mut pc = 0usize;
    for insn in code {
        match insn {
            Insn::Here(label) => at.push((*label, pc)),
            _ => pc += 1,
        }
    }
    let find = |label: Label| at.iter().find(|(l, _)| *l == label).map(|&(_, pc)| pc);
    let offset = |pc: usize, target: Target| -> Result<usize, String> {
        match target {
            Target::Next => Ok(0),
            Target::Label(label) => {
                let to = find(label).ok_or_else(|| format!("seccomp: no label {label:?}"))?;
                to.checked_sub(pc + 1).ok_or_else(|| format!("seccomp: a backward jump to {label:?}"))
            }
        }
    };
    let mut program = Vec::with_capacity(pc);
    for insn in code {
        let pc = program.len();
        let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
        program.push(match *insn {
            Insn::Here(_) => continue,
            Insn::Load(offset) => op(LD_W_ABS, 0, 0, offset),
            Insn::Ret(action) => op(RET_K, 0, 0, action),
            Insn::Always(label) => op(JA, 0, 0, offset(pc, Target::Label(label))? as u32),
            Insn::Jump(code, k, jt, jf) => {
                let short = |o: usize| u8::try_from(o).map_err(|_| "seccomp: a jump too long".to_string());
                op(code, short(offset(pc, jt)?)?, short(offset(pc, jf)?)?, k)
            }
        });
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF program (the instructions this module emits) on a `seccomp_data`.
    fn run(program: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
        }
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let insn = &program[pc];
            pc += 1;
            let k = insn.k;
            let jump = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
            match insn.code {
                LD_W_ABS => a = u32::from_ne_bytes(data[k as usize..k as usize + 4].try_into().unwrap()),
                JA => pc += k as usize,
                JEQ_K => pc += jump(a == k),
                JGE_K => pc += jump(a >= k),
                JSET_K => pc += jump(a & k != 0),
                RET_K => return k,
                code => panic!("unexpected opcode {code:#x}"),
            }
        }
    }

    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

    /// What the filter must answer, from the tables.
    fn expected(nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        if arch != AUDIT_ARCH_X86_64 || nr >= X32_SYSCALL_BIT {
            return KILL;
        }
        let nr = i64::from(nr);
        let namespaces = NAMESPACE_FLAGS.iter().any(|&f| args[0] & u64::from(f as u32) != 0);
        let terminal = DENIED_IOCTLS.iter().any(|&(_, r)| args[1] & 0xffff_ffff == r);
        let setid = |arg: usize| args[arg] & 0o6000 != 0;
        let creating = |arg: usize| args[arg] & (libc::O_CREAT as u64 | 0o20_000_000) != 0;
        let mode1 = [libc::SYS_chmod, libc::SYS_fchmod, libc::SYS_creat, libc::SYS_mknod].contains(&nr);
        let mode2 = [libc::SYS_fchmodat, libc::SYS_fchmodat2, libc::SYS_mknodat].contains(&nr);
        if DENIED.iter().any(|&(_, denied)| denied == nr)
            || (nr == libc::SYS_clone && namespaces)
            || (nr == libc::SYS_ioctl && terminal)
            || (mode1 && setid(1))
            || (mode2 && setid(2))
            || (nr == libc::SYS_open && creating(1) && setid(2))
            || (nr == libc::SYS_openat && creating(2) && setid(3))
        {
            EPERM
        } else if nr == libc::SYS_clone3 || nr == libc::SYS_openat2 {
            ENOSYS
        } else {
            ALLOW
        }
    }

    #[test]
    fn the_filter_compiles_and_names_what_it_denies() {
        let filters = filters().unwrap();
        assert_eq!(filters.programs.len(), 1);
        for name in ["ptrace", "io_uring_setup", "keyctl", "bpf", "perf_event_open", "userfaultfd", "mount"] {
            assert!(filters.denied.contains(&name), "{name}");
        }
        assert!(filters.programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
    }

    #[test]
    fn the_filter_answers_every_syscall_as_the_tables_say() {
        let program = &filters().unwrap().programs[0];
        let clone_args = [
            0,
            u64::from(libc::SIGCHLD as u32),
            (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_SIGHAND | libc::CLONE_THREAD) as u64,
            libc::CLONE_NEWUSER as u64 | 17,
            libc::CLONE_NEWNET as u64,
            0x80,
            1 << 40,
            libc::TIOCSTI,
            libc::TIOCLINUX | 1 << 32,
            libc::TIOCSTI + 1,
        ];
        for nr in (0..1024).chain([X32_SYSCALL_BIT, X32_SYSCALL_BIT | 39, X32_SYSCALL_BIT | 101, u32::MAX]) {
            for arch in [AUDIT_ARCH_X86_64, 0x4000_0003 /* i386 */, 0xC000_00B7 /* aarch64 */] {
                for &x in &clone_args {
                    for args in [
                        [x, 0, 0, 0, 0, 0],
                        [0, x, 0, 0, 0, 0],
                        [0, x, x, 0, 0, 0],
                        [0, 0, x, x, 0, 0],
                        [0, 0o100, 0o4755, 0o2755, 0, 0],
                        [0, 0o20_200_000, 0o644, 0o4000, 0, 0],
                    ] {
                        assert_eq!(
                            run(program, nr, arch, args),
                            expected(nr, arch, args),
                            "nr {nr} arch {arch:#x} {args:?}"
                        );
                    }
                }
            }
        }
        // The answers the escape tests rely on.
        let x86 = AUDIT_ARCH_X86_64;
        assert_eq!(run(program, libc::SYS_ptrace as u32, x86, [0; 6]), EPERM);
        assert_eq!(run(program, libc::SYS_clone3 as u32, x86, [0; 6]), ENOSYS);
        assert_eq!(run(program, libc::SYS_clone as u32, x86, [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(program, libc::SYS_clone as u32, x86, [17, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(program, libc::SYS_ioctl as u32, x86, [0, libc::TIOCSTI, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(program, libc::SYS_getpid as u32 | X32_SYSCALL_BIT, x86, [0; 6]), KILL);
        assert_eq!(run(program, libc::SYS_read as u32, x86, [0; 6]), ALLOW);
        assert_eq!(run(program, libc::SYS_fchmodat as u32, x86, [0, 0, 0o4755, 0, 0, 0]), EPERM);
        assert_eq!(run(program, libc::SYS_fchmodat as u32, x86, [0, 0, 0o755, 0, 0, 0]), ALLOW);
        assert_eq!(run(program, libc::SYS_openat as u32, x86, [0, 0, 0o101, 0o2755, 0, 0]), EPERM);
        assert_eq!(run(program, libc::SYS_openat as u32, x86, [0, 0, 0o1, 0o6755, 0, 0]), ALLOW);
        assert_eq!(run(program, libc::SYS_openat2 as u32, x86, [0; 6]), ENOSYS);
    }
}
