//! The sandbox, end to end: real runs, checked from the host.
//!
//! The escape and abuse suite plants bait on the host (a secret file, an environment variable,
//! an inherited descriptor, a loopback listener, unix sockets, a host process) and runs one
//! attempt per sandbox; each attempt returns `Err` with what leaked when it escaped. The same
//! attempts run under a deliberately weak control (plain `unshare --user`), where the suite must
//! see escapes, which shows that the checks can see one.

use std::io::Read as _;
use std::net::TcpListener;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cloudx_core::sandbox::{ExecOutcome, ExecSpec, LimitKind, Limits, Network, Sandbox, SandboxSettings};

/// Every test that runs a sandbox shares the host; the leak census takes it alone (so the
/// cgroups of this process it counts are its own sandbox's).
static GATE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn sandbox() -> Sandbox {
    let scratch = std::env::temp_dir().join(format!("cloudx-sbx-test-{}", nix::unistd::geteuid()));
    let settings = SandboxSettings { scratch_dir: scratch, ..SandboxSettings::default() };
    Sandbox::new(settings).expect("the sandbox runs on this host")
}

fn sh(script: &str) -> ExecSpec {
    ExecSpec::new(["/bin/sh", "-c", script])
}

fn py(code: &str) -> ExecSpec {
    ExecSpec::new(["python3", "-c", code])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Bait planted on the host once per test process.
struct Bait {
    secret_file: PathBuf,
    secret: String,
    port: u16,
    unix_socket: PathBuf,
    host_pid: u32,
}

const ENV_BAIT: &str = "CLOUDX_TEST_BAIT_ENV";

fn bait() -> &'static Bait {
    static BAIT: OnceLock<Bait> = OnceLock::new();
    BAIT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cloudx-bait-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = format!("bait-{}", uuid::Uuid::new_v4().simple());
        let secret_file = dir.join("secret.txt");
        std::fs::write(&secret_file, &secret).unwrap();
        // An environment variable and an inherited (not close-on-exec) descriptor.
        // SAFETY: set once, before any sandbox runs, by the first caller of `bait()`.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(ENV_BAIT, &secret)
        };
        let file = std::fs::File::open(&secret_file).unwrap();
        let fd = file.as_raw_fd();
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        std::mem::forget(file);
        assert!(fd > 2);
        // A listener on the host's loopback that counts connections.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ =
                    std::fs::write(std::env::temp_dir().join(format!("cloudx-bait-{}-tcp", std::process::id())), "x");
                drop(stream);
            }
        });
        let unix_socket = dir.join("service.sock");
        let unix = std::os::unix::net::UnixListener::bind(&unix_socket).unwrap();
        std::thread::spawn(move || for _ in unix.incoming() {});
        // Bounded: it outlives the suite (a minute or two), then goes on its own.
        let host = std::process::Command::new("sleep")
            .arg("600")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let host_pid = host.id();
        std::mem::forget(host);
        Bait { secret_file, secret, port, unix_socket, host_pid }
    })
}

fn tcp_touched() -> bool {
    std::env::temp_dir().join(format!("cloudx-bait-{}-tcp", std::process::id())).exists()
}

/// Where an attempt runs: the real sandbox, or the weak control.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    Sandbox,
    Weak,
}

/// Runs `spec` with `runner`; the weak control is `unshare --user --map-root-user` and nothing
/// else (the environment, descriptors, file system and network are the host's).
async fn run(runner: Runner, spec: ExecSpec) -> ExecOutcome {
    let _shared = GATE.read().await;
    match runner {
        Runner::Sandbox => {
            // A sandbox launched ahead takes every run it can (the daemon's usual path); the
            // others launch their own.
            let sb = sandbox();
            let warm = spec.binds.is_empty() && !(nix::unistd::geteuid().is_root() && spec.workspace.is_some());
            sb.prewarm().await;
            let out = sb.exec(spec).await.unwrap();
            assert_eq!(out.warm, warm, "the run should have been {}", if warm { "warm" } else { "cold" });
            out
        }
        Runner::Weak => {
            let started = Instant::now();
            let argv = spec.argv.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("timeout")
                    .args(["30", "unshare", "--user", "--map-root-user", "--"])
                    .args(&argv)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            use std::os::unix::process::ExitStatusExt as _;
            // An outcome-shaped record of the weak run (the isolation record is the
            // sandbox's own, unused by the checks).
            let mut outcome = sandbox().exec(ExecSpec::new(["true"])).await.unwrap();
            outcome.exit_code = out.status.code();
            outcome.signal = out.status.signal();
            outcome.stdout = out.stdout.into();
            outcome.stderr = out.stderr.into();
            outcome.wall_time = started.elapsed();
            outcome
        }
    }
}

type Attempt = Result<(), String>;

fn leaked(out: &ExecOutcome, what: &str) -> Attempt {
    let b = bait();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    if all.contains(&b.secret) {
        return Err(format!("{what}: the secret leaked: {all}"));
    }
    Ok(())
}

// ---- the attempts ----

async fn read_host_secret(r: Runner) -> Attempt {
    let b = bait();
    let out =
        run(r, sh(&format!("cat {}; ls {}", b.secret_file.display(), b.secret_file.parent().unwrap().display()))).await;
    leaked(&out, "reading a host file outside the binds")
}

async fn read_host_secrets_by_path_guessing(r: Runner) -> Attempt {
    let out = run(
        r,
        sh("cat /etc/shadow /root/.bash_history /home/*/.ssh/id_* 2>/dev/null; ls /root /home 2>/dev/null; echo done"),
    )
    .await;
    let stdout = text(&out.stdout);
    if stdout.trim() != "done" {
        return Err(format!("host secrets are visible: {stdout}"));
    }
    Ok(())
}

async fn write_outside_workspace(r: Runner) -> Attempt {
    let marker = format!("cloudx-escape-{}", uuid::Uuid::new_v4().simple());
    let script = format!(
        "for d in /usr /usr/bin /etc /bin /lib / /var/tmp {tmp}; do touch $d/{marker} 2>/dev/null; done; true",
        tmp = std::env::temp_dir().display()
    );
    let _ = run(r, sh(&script)).await;
    for d in ["/usr", "/usr/bin", "/etc", "/", "/var/tmp"] {
        let path = PathBuf::from(d).join(&marker);
        if path.exists() {
            let _ = std::fs::remove_file(&path);
            return Err(format!("wrote {}", path.display()));
        }
    }
    let path = std::env::temp_dir().join(&marker);
    if path.exists() {
        let _ = std::fs::remove_file(&path);
        return Err(format!("wrote {}", path.display()));
    }
    Ok(())
}

async fn symlink_to_host_file(r: Runner) -> Attempt {
    // A workspace on the host holding a symlink to the secret: inside, it resolves in the
    // sandbox's root, where the secret is not.
    let b = bait();
    let ws = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&b.secret_file, ws.path().join("link")).unwrap();
    std::os::unix::fs::symlink(b.secret_file.parent().unwrap(), ws.path().join("dirlink")).unwrap();
    set_mode(ws.path(), 0o755);
    let mut spec = sh("cat link; cat dirlink/secret.txt; true");
    spec.workspace = Some(ws.path().to_path_buf());
    let out = run(r, spec).await;
    leaked(&out, "following a planted symlink")
}

async fn hard_link_out_of_workspace(r: Runner) -> Attempt {
    let out = run(r, sh("cd /tmp && ln /etc/hostname h 2>&1; ln /usr/bin/env e 2>&1; ls /tmp")).await;
    let listed = text(&out.stdout);
    if listed.lines().any(|l| l == "h" || l == "e") {
        return Err(format!("hard links across mounts were made: {listed}"));
    }
    Ok(())
}

async fn symlink_race_on_workspace(r: Runner) -> Attempt {
    // Swap a folder for a symlink to / while another process follows it, many times.
    let script = "mkdir -p a; (for i in $(seq 300); do rm -rf a; ln -s / a; rm a; mkdir a; done) & \
                  for i in $(seq 300); do cat a/root/.bashrc a/etc/shadow 2>/dev/null; done; wait; true";
    let b = bait();
    let script = script.replace("a/root/.bashrc", &format!("a{}", b.secret_file.display()));
    let out = run(r, sh(&script)).await;
    leaked(&out, "a symlink race")
}

async fn proc_1_environ(r: Runner) -> Attempt {
    let out = run(r, sh("cat /proc/1/environ; cat /proc/*/environ; true")).await;
    leaked(&out, "/proc/1/environ")
}

async fn proc_core_pattern(r: Runner) -> Attempt {
    let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let _ = run(r, sh("echo '|/tmp/evil' > /proc/sys/kernel/core_pattern; true")).await;
    let after = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    if before != after {
        std::fs::write("/proc/sys/kernel/core_pattern", before).ok();
        return Err(format!("core_pattern changed to {after}"));
    }
    Ok(())
}

async fn proc_1_exe_and_mem(r: Runner) -> Attempt {
    // Init is a copy of the supervisor: its executable and memory must stay out of reach.
    let out =
        run(r, sh("readlink /proc/1/exe && echo EXE; head -c 100 /proc/1/mem >/dev/null && echo MEM; true")).await;
    let stdout = text(&out.stdout);
    if r == Runner::Sandbox && (stdout.contains("EXE") || stdout.contains("MEM")) {
        return Err(format!("init's exe or memory is readable: {stdout}"));
    }
    Ok(())
}

async fn proc_self_exe_overwrite(r: Runner) -> Attempt {
    let out = run(
        r,
        sh("echo x > /proc/self/exe && echo WROTE; cp /bin/true /proc/self/exe 2>/dev/null && echo WROTE; true"),
    )
    .await;
    if text(&out.stdout).contains("WROTE") {
        return Err("/proc/self/exe was written".into());
    }
    Ok(())
}

async fn setuid_binary(r: Runner) -> Attempt {
    let out = run(
        r,
        sh("su -c 'id -u' root </dev/null 2>/dev/null; passwd -S root 2>/dev/null; grep NoNewPrivs /proc/self/status"),
    )
    .await;
    let stdout = text(&out.stdout);
    if stdout.lines().any(|l| l.trim() == "0") {
        return Err(format!("became root: {stdout}"));
    }
    if r == Runner::Sandbox && !stdout.contains("NoNewPrivs:\t1") {
        return Err(format!("no_new_privs is not set: {stdout}"));
    }
    Ok(())
}

async fn mount_chroot_unshare(r: Runner) -> Attempt {
    let out = run(
        r,
        sh("mount -t tmpfs none /tmp 2>/dev/null && echo MOUNT; unshare -U true 2>/dev/null && echo UNSHARE; \
            python3 -c 'import os; os.chroot(\"/tmp\"); print(\"CHROOT\")' 2>/dev/null; true"),
    )
    .await;
    let stdout = text(&out.stdout);
    if ["MOUNT", "UNSHARE", "CHROOT"].iter().any(|w| stdout.contains(w)) {
        return Err(format!("namespace or mount operations worked: {stdout}"));
    }
    Ok(())
}

/// Python that calls a raw system call and prints `OK` or the errno's name.
fn syscall_probe(nr: i64, args: &str) -> ExecSpec {
    py(&format!(
        "import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\nr = libc.syscall({nr}{args})\n\
         print('OK' if r >= 0 else errno.errorcode[ctypes.get_errno()])"
    ))
}

async fn forbidden_syscall(r: Runner, name: &str, nr: i64, args: &str) -> Attempt {
    let out = run(r, syscall_probe(nr, args)).await;
    let stdout = text(&out.stdout);
    if stdout.trim() != "EPERM" && stdout.trim() != "ENOSYS" {
        return Err(format!("{name} was not refused: {stdout}{}", text(&out.stderr)));
    }
    Ok(())
}

async fn ptrace(r: Runner) -> Attempt {
    forbidden_syscall(r, "ptrace(PTRACE_TRACEME)", libc::SYS_ptrace, ", 0, 0, 0, 0").await
}

async fn io_uring(r: Runner) -> Attempt {
    forbidden_syscall(r, "io_uring_setup", libc::SYS_io_uring_setup, ", 8, ctypes.create_string_buffer(120)").await
}

async fn bpf(r: Runner) -> Attempt {
    forbidden_syscall(r, "bpf", libc::SYS_bpf, ", 0, ctypes.create_string_buffer(128), 128").await
}

async fn keyctl(r: Runner) -> Attempt {
    // KEYCTL_GET_KEYRING_ID of the session keyring.
    forbidden_syscall(r, "keyctl", libc::SYS_keyctl, ", 0, -3, 0").await
}

async fn userfaultfd(r: Runner) -> Attempt {
    forbidden_syscall(r, "userfaultfd", libc::SYS_userfaultfd, ", 0").await
}

async fn perf_event_open(r: Runner) -> Attempt {
    forbidden_syscall(
        r,
        "perf_event_open",
        libc::SYS_perf_event_open,
        ", ctypes.create_string_buffer(128), 0, -1, -1, 0",
    )
    .await
}

async fn tiocsti(r: Runner) -> Attempt {
    let out = run(
        r,
        py("import fcntl, termios, os, errno\ntry:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x'); print('OK')\n\
            except OSError as e:\n    print(errno.errorcode[e.errno])"),
    )
    .await;
    if text(&out.stdout).trim() != "EPERM" {
        return Err(format!("TIOCSTI was not refused by the filter: {}", text(&out.stdout)));
    }
    Ok(())
}

async fn clone3_and_namespace_clone(r: Runner) -> Attempt {
    let out = run(
        r,
        py("import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n\
            r = libc.syscall(435, ctypes.create_string_buffer(88), 88)\nprint(errno.errorcode.get(ctypes.get_errno(), r))\n\
            r = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)\nprint('child' if r == 0 else errno.errorcode.get(ctypes.get_errno(), r))"),
    )
    .await;
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    if lines != ["ENOSYS", "EPERM"] {
        return Err(format!("clone3 or clone(CLONE_NEWUSER) was not refused: {stdout}{}", text(&out.stderr)));
    }
    Ok(())
}

async fn x32_abi(r: Runner) -> Attempt {
    // getpid through the x32 ABI: the filter kills the process.
    let out = run(r, py("import ctypes\nctypes.CDLL(None).syscall(0x40000000 | 39)\nprint('ALIVE')")).await;
    if text(&out.stdout).contains("ALIVE") {
        return Err("an x32-ABI call was allowed".into());
    }
    if r == Runner::Sandbox && out.signal != Some(libc::SIGSYS) {
        return Err(format!("expected death by SIGSYS, got {:?}", out.signal));
    }
    Ok(())
}

async fn signal_host_process(r: Runner) -> Attempt {
    let b = bait();
    let _ = run(r, sh(&format!("kill -9 {} 2>/dev/null; true", b.host_pid))).await;
    if !PathBuf::from(format!("/proc/{}", b.host_pid)).exists() {
        return Err("a host process was killed".into());
    }
    let status = std::fs::read_to_string(format!("/proc/{}/stat", b.host_pid)).unwrap_or_default();
    if status.contains(") Z") {
        return Err("a host process was killed".into());
    }
    Ok(())
}

async fn host_loopback_listener(r: Runner) -> Attempt {
    let b = bait();
    let code = format!(
        "import socket\nfor h in ['127.0.0.1', 'localhost']:\n    try:\n        socket.create_connection((h, {}), timeout=2); print('CONNECTED')\n    except OSError as e: print(e)",
        b.port
    );
    for network in [Network::None, Network::Loopback] {
        let mut spec = py(&code);
        spec.network = network;
        let out = run(r, spec).await;
        if text(&out.stdout).contains("CONNECTED") || tcp_touched() {
            return Err(format!("reached the host's loopback listener with network {network:?}"));
        }
    }
    Ok(())
}

async fn host_unix_sockets(r: Runner) -> Attempt {
    let b = bait();
    let code = format!(
        "import socket\nfor a in ['{}', '/run/dbus/system_bus_socket', '/var/run/docker.sock', '\\0cloudx-bait']:\n    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect(a); print('CONNECTED', a)\n    except OSError: pass",
        b.unix_socket.display()
    );
    // An abstract socket listening on the host.
    let abstract_listener = std::os::unix::net::UnixListener::bind_addr(
        &<std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(b"cloudx-bait")
            .unwrap(),
    )
    .ok();
    let out = run(r, py(&code)).await;
    drop(abstract_listener);
    if text(&out.stdout).contains("CONNECTED") {
        return Err(format!("reached a host unix socket: {}", text(&out.stdout)));
    }
    Ok(())
}

async fn environment_leak(r: Runner) -> Attempt {
    let out = run(r, sh("env")).await;
    leaked(&out, "the environment")?;
    if r == Runner::Sandbox {
        let env = text(&out.stdout);
        let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
        for name in &names {
            if !["PATH", "HOME", "USER", "LANG", "TMPDIR", "PWD", "SHLVL", "_"].contains(name) {
                return Err(format!("an unexpected variable reached the sandbox: {name}"));
            }
        }
    }
    Ok(())
}

async fn descriptor_leak(r: Runner) -> Attempt {
    let out = run(r, sh("ls /proc/self/fd; for f in /proc/self/fd/*; do cat $f 2>/dev/null; done; true")).await;
    leaked(&out, "an inherited descriptor")?;
    let fds: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    if fds.iter().any(|f| f.parse::<i32>().is_ok_and(|n| n > 3)) {
        return Err(format!("descriptors beyond stdio reached the command: {fds:?}"));
    }
    Ok(())
}

async fn host_uid(r: Runner) -> Attempt {
    let out = run(r, sh("cat /proc/self/uid_map; id -u")).await;
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    let map = lines.next().unwrap_or_default();
    let fields: Vec<&str> = map.split_whitespace().collect();
    if fields.len() != 3 || fields[2] != "1" {
        return Err(format!("the sandbox's uid map is not one uid: {map}"));
    }
    let host: u32 = fields[1].parse().unwrap_or(0);
    if host == 0 {
        return Err(format!("the sandbox runs as host root: {map}"));
    }
    if nix::unistd::geteuid().is_root() && r == Runner::Sandbox && host < 1_000_000 {
        return Err(format!("as root, the sandbox should get a uid of its own range: {map}"));
    }
    Ok(())
}

async fn capabilities_left(r: Runner) -> Attempt {
    let out = run(r, sh("grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|Seccomp):' /proc/self/status")).await;
    let stdout = text(&out.stdout);
    for line in stdout.lines() {
        let (name, value) = line.split_once(':').unwrap();
        let value = value.trim();
        let ok = if name == "Seccomp" { value == "2" } else { value.trim_start_matches('0').is_empty() };
        if !ok {
            return Err(format!("{name} is {value}"));
        }
    }
    if stdout.lines().count() != 6 {
        return Err(format!("unexpected status: {stdout}"));
    }
    Ok(())
}

async fn fork_bomb(r: Runner) -> Attempt {
    let mut spec = sh("bomb() { bomb | bomb & }; bomb; sleep 2; echo SURVIVED");
    spec.limits = Limits { processes: Some(32), wall_time: Some(Duration::from_secs(6)), ..Limits::default() };
    let started = Instant::now();
    let out = run(r, spec).await;
    if started.elapsed() > Duration::from_secs(20) {
        return Err("a fork bomb was not contained in time".into());
    }
    let _ = out;
    leftovers("bomb")
}

/// Fails when a process of a sandbox is still on the host.
fn leftovers(word: &str) -> Attempt {
    std::thread::sleep(Duration::from_millis(100));
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() {
            continue;
        }
        let mut cmdline = String::new();
        if let Ok(mut f) = std::fs::File::open(entry.path().join("cmdline")) {
            let _ = f.read_to_string(&mut cmdline);
        }
        if cmdline.contains(word) && !cmdline.contains("cargo") && !cmdline.contains("sandbox-") {
            return Err(format!("process {pid} outlived its sandbox: {}", cmdline.replace('\0', " ")));
        }
    }
    Ok(())
}

async fn memory_bomb(r: Runner) -> Attempt {
    let mut spec = py("x = []\nwhile True: x.append(bytearray(16 << 20))");
    spec.limits = Limits { memory: Some(128 << 20), wall_time: Some(Duration::from_secs(20)), ..Limits::default() };
    let out = run(r, spec).await;
    if out.success() {
        return Err("a memory bomb completed".into());
    }
    if r == Runner::Sandbox && out.isolation.memory_limit.starts_with("cgroup") && !out.oom_killed {
        return Err(format!("the memory cgroup should have killed it: {out:?}"));
    }
    if r == Runner::Sandbox && out.limit != Some(LimitKind::Memory) && out.oom_killed {
        return Err(format!("the outcome should name the memory limit: {:?}", out.limit));
    }
    Ok(())
}

async fn disk_fill(r: Runner) -> Attempt {
    let mut spec = sh(
        "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>&1; ls -l /tmp/fill /dev/shm/fill",
    );
    spec.limits = Limits { tmpfs_size: Some(8 << 20), ..Limits::default() };
    let out = run(r, spec).await;
    let stdout = text(&out.stdout);
    if r == Runner::Sandbox && !stdout.contains("No space left") {
        return Err(format!("the tmpfs limit did not hold: {stdout}"));
    }
    Ok(())
}

async fn file_size_limit(r: Runner) -> Attempt {
    let mut spec = sh("head -c 4194304 /dev/zero > big; ls -l big");
    spec.limits = Limits { file_size: Some(1 << 20), ..Limits::default() };
    let out = run(r, spec).await;
    if r == Runner::Sandbox && out.limit != Some(LimitKind::FileSize) && out.signal != Some(libc::SIGXFSZ) {
        // The shell may survive its child's SIGXFSZ; then the file is cut at the limit.
        if !text(&out.stdout).contains(" 1048576 ") {
            return Err(format!("a file grew past the limit: {}", text(&out.stdout)));
        }
    }
    Ok(())
}

async fn cpu_spin(r: Runner) -> Attempt {
    let mut spec = sh("while :; do :; done");
    spec.limits = Limits {
        cpu_time: Some(Duration::from_secs(1)),
        wall_time: Some(Duration::from_secs(15)),
        ..Limits::default()
    };
    let out = run(r, spec).await;
    if r == Runner::Sandbox && (out.timed_out || out.limit != Some(LimitKind::CpuTime)) {
        return Err(format!("the CPU limit did not stop a spin: {:?} {:?}", out.limit, out.signal));
    }
    Ok(())
}

async fn output_flood(r: Runner) -> Attempt {
    let mut spec = sh("head -c 50000000 /dev/zero; echo done >&2");
    spec.limits = Limits { output: Some(64 << 10), wall_time: Some(Duration::from_secs(20)), ..Limits::default() };
    let out = run(r, spec).await;
    if r == Runner::Sandbox {
        if !out.stdout_truncated || out.stdout.len() != 64 << 10 || out.exit_code != Some(0) || out.timed_out {
            return Err(format!(
                "an output flood was not drained and cut: {} bytes, truncated {}, exit {:?}",
                out.stdout.len(),
                out.stdout_truncated,
                out.exit_code
            ));
        }
        if out.limit != Some(LimitKind::Output) {
            return Err(format!("the outcome should name the output cap: {:?}", out.limit));
        }
    }
    Ok(())
}

async fn orphans_and_daemons(r: Runner) -> Attempt {
    let word = format!("sleep {}.25", 4000 + std::process::id() % 1000);
    let script = format!("({word} &); setsid {word} & nohup {word} >/dev/null 2>&1 & echo started");
    let out = run(r, sh(&script)).await;
    if !text(&out.stdout).contains("started") {
        return Err(format!("the command did not run: {}", text(&out.stderr)));
    }
    leftovers(&word)
}

async fn timeout_kills_the_tree(r: Runner) -> Attempt {
    let word = format!("sleep {}.75", 5000 + std::process::id() % 1000);
    let mut spec = sh(&format!("{word} & ({word} &) ; {word}"));
    spec.limits = Limits { wall_time: Some(Duration::from_millis(500)), ..Limits::default() };
    let out = run(r, spec).await;
    if r == Runner::Sandbox
        && (!out.timed_out || out.limit != Some(LimitKind::WallTime) || out.wall_time > Duration::from_secs(5))
    {
        return Err(format!("the deadline was not enforced: {:?} after {:?}", out.limit, out.wall_time));
    }
    leftovers(&word)
}

async fn uts_and_hostname(r: Runner) -> Attempt {
    let out = run(r, sh("hostname; hostname evil 2>/dev/null; hostname")).await;
    let stdout = text(&out.stdout);
    if r == Runner::Sandbox && stdout != "sandbox\nsandbox\n" {
        return Err(format!("the hostname is not the sandbox's, or changed: {stdout}"));
    }
    let host = nix::unistd::gethostname().unwrap();
    if host.to_string_lossy() == "evil" {
        return Err("the host's name changed".into());
    }
    Ok(())
}

async fn sys_and_devices(r: Runner) -> Attempt {
    let out =
        run(r, sh("ls /sys 2>/dev/null | head -3; ls /dev; head -c 1 /dev/vda 2>/dev/null && echo DISK; true")).await;
    let stdout = text(&out.stdout);
    if stdout.contains("DISK") {
        return Err("a host block device is readable".into());
    }
    if r == Runner::Sandbox {
        let devs: Vec<&str> = stdout.lines().collect();
        let expected = ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"];
        if devs != expected {
            return Err(format!("unexpected /dev or /sys: {devs:?}"));
        }
    }
    Ok(())
}

async fn landlock_second_layer(r: Runner) -> Attempt {
    // Creating files where mounts alone would allow it but the file policy does not: a fifo in
    // /dev (a tmpfs... here the read-only root) and a socket in /proc.
    let out = run(r, sh("mkfifo /dev/x 2>/dev/null && echo FIFO; mkdir /proc/x 2>/dev/null && echo DIR; echo ok > /workspace/f && cat /workspace/f")).await;
    let stdout = text(&out.stdout);
    if stdout.contains("FIFO") || stdout.contains("DIR") {
        return Err(format!("landlock let files be made outside the writable folders: {stdout}"));
    }
    if r == Runner::Sandbox && !stdout.contains("ok") {
        return Err(format!("the workspace is not writable: {stdout}{}", text(&out.stderr)));
    }
    Ok(())
}

async fn proc_sysrq_and_kcore(r: Runner) -> Attempt {
    let out = run(r, sh("echo h > /proc/sysrq-trigger 2>/dev/null && echo SYSRQ; head -c 16 /proc/kcore 2>/dev/null | wc -c; cat /proc/keys 2>/dev/null | wc -l")).await;
    let stdout = text(&out.stdout);
    if stdout.contains("SYSRQ") {
        return Err("sysrq-trigger is writable".into());
    }
    if r == Runner::Sandbox && stdout.split_whitespace().any(|n| n != "0") {
        return Err(format!("/proc/kcore or /proc/keys show data: {stdout}"));
    }
    Ok(())
}

async fn proc_shows_only_the_sandbox(r: Runner) -> Attempt {
    let b = bait();
    let out =
        run(r, sh(&format!("ls /proc | grep -c '^[0-9]'; test -e /proc/{} && echo HOSTPID; true", b.host_pid))).await;
    let stdout = text(&out.stdout);
    if stdout.contains("HOSTPID") {
        return Err("a host process is visible in /proc".into());
    }
    if r == Runner::Sandbox && stdout.lines().next().and_then(|n| n.trim().parse::<u32>().ok()).unwrap_or(99) > 6 {
        return Err(format!("too many processes visible: {stdout}"));
    }
    Ok(())
}

async fn network_none_has_no_interfaces_up(r: Runner) -> Attempt {
    let out = run(r, py("import socket\ns = socket.socket()\ntry:\n    s.bind(('127.0.0.1', 0)); s.listen(); c = socket.create_connection(s.getsockname(), timeout=1); print('LOOPBACK')\nexcept OSError as e: print(e)")).await;
    if r == Runner::Sandbox && text(&out.stdout).contains("LOOPBACK") {
        return Err("network `none` has a working loopback".into());
    }
    Ok(())
}

async fn writable_system_mounts(r: Runner) -> Attempt {
    let out = run(r, sh("grep -E ' (/usr|/etc/ld.so.cache|/) ' /proc/self/mounts")).await;
    if r == Runner::Sandbox {
        for line in text(&out.stdout).lines() {
            let options = line.split_whitespace().nth(3).unwrap_or("");
            if !options.split(',').any(|o| o == "ro") || !options.contains("nosuid") {
                return Err(format!("a system mount is not read-only and nosuid: {line}"));
            }
        }
    }
    Ok(())
}

async fn workspace_files_belong_to_the_sandbox(r: Runner) -> Attempt {
    let out = run(r, sh("echo hi > /workspace/new && stat -c '%u %g' /workspace/new")).await;
    if r == Runner::Sandbox && text(&out.stdout).trim() != "1000 1000" {
        return Err(format!("a new file is not the sandbox user's: {}{}", text(&out.stdout), text(&out.stderr)));
    }
    Ok(())
}

async fn setuid_files_in_a_shared_folder(r: Runner) -> Attempt {
    // What the sandbox writes into a given folder belongs to the folder's owner (root, for a
    // root-owned folder as root): a setuid or setgid bit there would hand the host a setuid
    // program of the owner's.
    use std::os::unix::fs::PermissionsExt as _;
    let ws = tempfile::tempdir().unwrap();
    let dir = if r == Runner::Sandbox { "/workspace".to_owned() } else { ws.path().display().to_string() };
    let script = format!(
        "cd {dir} && cp /bin/true a && cp /bin/true b && chmod u+s a; chmod g+s b; chmod 6755 a b; \
         install -m 4755 /bin/true c; cp -p a d; \
         python3 -c \"import os; os.close(os.open('e', os.O_CREAT | os.O_WRONLY, 0o4755)); \
         os.close(os.open('f', os.O_CREAT | os.O_WRONLY, 0o644)); os.chmod('f', 0o2755); \
         os.mknod('g', 0o104755)\" 2>/dev/null; true"
    );
    let mut spec = sh(&script);
    spec.workspace = Some(ws.path().to_path_buf());
    let _ = run(r, spec).await;
    for entry in std::fs::read_dir(ws.path()).unwrap().flatten() {
        let mode = entry.metadata().unwrap().permissions().mode();
        if mode & 0o6000 != 0 {
            return Err(format!("{} has mode {mode:o} on the host", entry.path().display()));
        }
    }
    Ok(())
}

macro_rules! attempts {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                bait();
                if let Err(escape) = super::$name(Runner::Sandbox).await {
                    panic!("{escape}");
                }
            }
        )*
    };
}

mod escape {
    use super::*;

    attempts!(
        read_host_secret,
        read_host_secrets_by_path_guessing,
        write_outside_workspace,
        symlink_to_host_file,
        hard_link_out_of_workspace,
        symlink_race_on_workspace,
        proc_1_environ,
        proc_core_pattern,
        proc_1_exe_and_mem,
        proc_self_exe_overwrite,
        setuid_binary,
        mount_chroot_unshare,
        ptrace,
        io_uring,
        bpf,
        keyctl,
        userfaultfd,
        perf_event_open,
        tiocsti,
        clone3_and_namespace_clone,
        x32_abi,
        signal_host_process,
        host_loopback_listener,
        host_unix_sockets,
        environment_leak,
        descriptor_leak,
        host_uid,
        capabilities_left,
        fork_bomb,
        memory_bomb,
        disk_fill,
        file_size_limit,
        cpu_spin,
        output_flood,
        orphans_and_daemons,
        timeout_kills_the_tree,
        uts_and_hostname,
        sys_and_devices,
        landlock_second_layer,
        proc_sysrq_and_kcore,
        proc_shows_only_the_sandbox,
        network_none_has_no_interfaces_up,
        writable_system_mounts,
        workspace_files_belong_to_the_sandbox,
        setuid_files_in_a_shared_folder,
    );

    /// The weak control: plain `unshare --user --map-root-user`. The suite must see it escape,
    /// or the checks could not see an escape at all. (Only attempts that are harmless to the
    /// host when they succeed run here: no bombs, no host writes, no signals.)
    #[tokio::test]
    async fn the_weak_control_is_caught_escaping() {
        bait();
        let weak = Runner::Weak;
        let results: Vec<(&str, Attempt)> = vec![
            ("read_host_secret", super::read_host_secret(weak).await),
            ("read_host_secrets_by_path_guessing", super::read_host_secrets_by_path_guessing(weak).await),
            ("proc_1_environ", super::proc_1_environ(weak).await),
            ("ptrace", super::ptrace(weak).await),
            ("io_uring", super::io_uring(weak).await),
            ("keyctl", super::keyctl(weak).await),
            ("x32_abi", super::x32_abi(weak).await),
            ("host_loopback_listener", super::host_loopback_listener(weak).await),
            ("host_unix_sockets", super::host_unix_sockets(weak).await),
            ("environment_leak", super::environment_leak(weak).await),
            ("descriptor_leak", super::descriptor_leak(weak).await),
            ("host_uid", super::host_uid(weak).await),
            ("capabilities_left", super::capabilities_left(weak).await),
            ("sys_and_devices", super::sys_and_devices(weak).await),
            ("proc_shows_only_the_sandbox", super::proc_shows_only_the_sandbox(weak).await),
        ];
        let escaped: Vec<&str> = results.iter().filter(|(_, r)| r.is_err()).map(|(n, _)| *n).collect();
        for expected in [
            "read_host_secret",
            "environment_leak",
            "descriptor_leak",
            "host_loopback_listener",
            "host_unix_sockets",
            "proc_shows_only_the_sandbox",
            "io_uring",
            "keyctl",
            "capabilities_left",
        ] {
            assert!(
                escaped.contains(&expected),
                "the weak control should escape through {expected}; escaped: {escaped:?}"
            );
        }
    }
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---- behaviour ----

#[tokio::test]
async fn runs_a_command_and_reports_its_output_and_exit_code() {
    let _shared = GATE.read().await;
    let sb = sandbox();
    let out = sb.exec(sh("echo hello; echo oops >&2; exit 3")).await.unwrap();
    assert_eq!(out.exit_code, Some(3), "{out:?}");
    assert_eq!(&out.stdout[..], b"hello\n");
    assert_eq!(&out.stderr[..], b"oops\n");
    assert_eq!(out.limit, None);
    let out = sb.exec(sh("id -u; id -g; hostname; pwd; cat /proc/self/setgroups")).await.unwrap();
    assert_eq!(text(&out.stdout), "1000\n1000\nsandbox\n/workspace\ndeny\n");
}

#[tokio::test]
async fn stdin_env_and_working_directory_are_the_specs() {
    let _shared = GATE.read().await;
    let sb = sandbox();
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir(ws.path().join("sub")).unwrap();
    set_mode(ws.path(), 0o777);
    set_mode(&ws.path().join("sub"), 0o777);
    let mut spec = sh("cat; echo \"$GREETING\"; pwd");
    spec.stdin = Some(bytes::Bytes::from_static(b"from stdin\n"));
    spec.env = vec![("GREETING".into(), "hi there".into())];
    spec.cwd = Some("sub".into());
    spec.workspace = Some(ws.path().to_path_buf());
    let out = sb.exec(spec).await.unwrap();
    assert_eq!(text(&out.stdout), "from stdin\nhi there\n/workspace/sub\n", "{}", text(&out.stderr));
}

#[tokio::test]
async fn python_runs_and_a_signal_is_reported() {
    let _shared = GATE.read().await;
    let sb = sandbox();
    let out = sb.exec(py("print(1)")).await.unwrap();
    assert_eq!(text(&out.stdout), "1\n", "{}", text(&out.stderr));
    let out = sb.exec(sh("kill -TERM $$")).await.unwrap();
    assert_eq!((out.exit_code, out.signal), (None, Some(libc::SIGTERM)));
}

#[tokio::test]
async fn loopback_network_works_inside() {
    let _shared = GATE.read().await;
    let mut spec = py(
        "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0)); s.listen()\nc = socket.create_connection(s.getsockname())\nprint('ok')",
    );
    spec.network = Network::Loopback;
    let out = sandbox().exec(spec).await.unwrap();
    assert_eq!(text(&out.stdout), "ok\n", "{}", text(&out.stderr));
}

#[tokio::test]
async fn bad_input_gets_errors_that_name_the_problem() {
    let _shared = GATE.read().await;
    let sb = sandbox();
    let err = sb.exec(ExecSpec::new(Vec::<String>::new())).await.unwrap_err();
    assert!(err.message().contains("empty"), "{err}");
    let err = sb.exec(ExecSpec::new(["no-such-program-x"])).await.unwrap_err();
    assert!(err.message().contains("command not found") && err.message().contains("no-such-program-x"), "{err}");
    let mut spec = sh("true");
    spec.cwd = Some("../etc".into());
    let err = sb.exec(spec).await.unwrap_err();
    assert!(err.message().contains("working directory"), "{err}");
    let mut spec = sh("true");
    spec.cwd = Some("missing".into());
    let err = sb.exec(spec).await.unwrap_err();
    assert!(err.message().contains("/workspace/missing"), "{err}");
    let mut spec = sh("true");
    spec.workspace = Some("/definitely/not/here".into());
    let err = sb.exec(spec).await.unwrap_err();
    assert!(err.message().contains("/definitely/not/here"), "{err}");
    let mut spec = sh("true");
    spec.env = vec![("A=B".into(), "x".into())];
    assert!(sb.exec(spec).await.unwrap_err().message().contains("A=B"));
}

#[tokio::test]
async fn streaming_yields_output_as_it_comes() {
    let _shared = GATE.read().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let sb = sandbox();
    let run = tokio::spawn(async move { sb.exec_streaming(sh("echo one; sleep 0.3; echo two >&2"), tx).await });
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(first, cloudx_core::sandbox::OutputChunk::Stdout(bytes::Bytes::from_static(b"one\n")));
    let second = rx.recv().await.unwrap();
    assert_eq!(second, cloudx_core::sandbox::OutputChunk::Stderr(bytes::Bytes::from_static(b"two\n")));
    let out = run.await.unwrap().unwrap();
    assert!(out.success());
}

#[tokio::test]
async fn the_isolation_record_says_what_protected_the_run() {
    let _shared = GATE.read().await;
    let out = sandbox().exec(sh("true")).await.unwrap();
    let iso = &out.isolation;
    assert_eq!(iso.namespaces, ["user", "pid", "mount", "network", "ipc", "uts", "cgroup"]);
    assert!(iso.setgroups_denied && iso.no_new_privs);
    assert_eq!(iso.capabilities, "none");
    assert!(iso.landlock_abi >= 1, "{iso:?}");
    assert!(iso.seccomp_denied.contains(&"io_uring_setup"));
    assert!(iso.mounts.iter().any(|m| m.starts_with("/usr: bind of /usr, read-only")), "{:?}", iso.mounts);
    assert_ne!(iso.host_uid, 0);
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(json["isolation"]["network"], "none");
}

#[tokio::test]
async fn limits_are_detected_on_reused_cgroups() {
    let _shared = GATE.read().await;
    let sb = sandbox();
    let bomb = || {
        let mut spec = py("x = []\nwhile True: x.append(bytearray(16 << 20))");
        spec.limits = Limits { memory: Some(96 << 20), wall_time: Some(Duration::from_secs(20)), ..Limits::default() };
        spec
    };
    let forks = || {
        let mut spec = sh("for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 0.2 & done 2>/dev/null; wait");
        spec.limits = Limits { processes: Some(6), ..Limits::default() };
        spec
    };
    // Each run after a pause, so that the last run's cgroup is back in the pool: the counters
    // of an earlier run must not show in the next one's outcome.
    for round in 0..2 {
        let out = sb.exec(bomb()).await.unwrap();
        if out.isolation.memory_limit.starts_with("cgroup") {
            assert!(out.oom_killed && out.limit == Some(LimitKind::Memory), "round {round}: {out:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = sb.exec(sh("true")).await.unwrap();
        assert!(!out.oom_killed && out.limit.is_none(), "round {round}: {out:?}");
        assert!(out.peak_memory < 32 << 20, "round {round}: the peak of an earlier run: {}", out.peak_memory);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = sb.exec(forks()).await.unwrap();
        if out.isolation.process_limit.starts_with("cgroup") {
            assert_eq!(out.limit, Some(LimitKind::Processes), "round {round}: {out:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = sb.exec(sh("true")).await.unwrap();
        assert!(out.limit.is_none(), "round {round}: {out:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_hundred_concurrent_sandboxes_leave_nothing_behind() {
    let _alone = GATE.write().await;
    // Other tests' sandboxes may still be putting theirs away: the census counts its own.
    let others: std::collections::BTreeSet<PathBuf> = cgroups_of_this_process().into_iter().collect();
    let own = || cgroups_of_this_process().into_iter().filter(|d| !others.contains(d)).collect::<Vec<_>>();
    let per_hierarchy = || {
        let mut counts = std::collections::BTreeMap::<PathBuf, usize>::new();
        for dir in own() {
            *counts.entry(dir.parent().unwrap().to_path_buf()).or_default() += 1;
        }
        counts
    };
    let scratch = tempfile::tempdir().unwrap();
    let sb =
        Sandbox::new(SandboxSettings { scratch_dir: scratch.path().join("scratch"), ..SandboxSettings::default() })
            .unwrap();
    let scratch = sb.settings().scratch_dir.clone();
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    let runs: Vec<_> = (0..100)
        .map(|i| {
            let sb = sb.clone();
            tokio::spawn(async move { sb.exec(sh(&format!("echo {i}; sleep 0.05"))).await })
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.await.unwrap().unwrap();
        assert_eq!(text(&out.stdout), format!("{i}\n"));
    }
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    assert_eq!(mounts_before, mounts_after, "mounts leaked into the host's namespace");
    // The sandboxes launched ahead of the next runs hold a scratch folder each, no more.
    let warm = sb.settings().warm;
    assert!(warm > 0, "the census counts the sandboxes launched ahead too");
    // (A run's teardown finishes just after its outcome: poll.)
    let deadline = Instant::now() + Duration::from_secs(5);
    while scratch_runs(&scratch).len() > warm && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runs_left = scratch_runs(&scratch);
    assert!(runs_left.len() <= warm, "scratch folders left: {runs_left:?}");
    // No stray process.
    leftovers("sleep 0.05").unwrap();
    // The sandbox keeps a bounded pool of idle cgroups (the runs' cgroups, given back in the
    // background), and the others are removed promptly; only the sandboxes launched ahead
    // have processes in theirs, and those are this process's own children.
    if sb.capabilities().cgroup != "rlimit only" {
        assert!(!own().is_empty(), "no cgroup found: the census would see nothing");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while per_hierarchy().values().any(|n| *n > MAX_IDLE_CGROUPS + warm) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = per_hierarchy();
    assert!(
        counts.values().all(|n| *n <= MAX_IDLE_CGROUPS + warm),
        "more cgroups than the pool keeps: {counts:?}: {:?}",
        own()
            .iter()
            .map(|d| (d.clone(), std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default()))
            .collect::<Vec<_>>()
    );
    let outers = launched_children();
    assert!(outers.len() <= warm, "more sandbox processes than launched ahead: {outers:?}");
    let mut busy = std::collections::BTreeMap::<PathBuf, usize>::new();
    for dir in own() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            continue;
        }
        *busy.entry(dir.parent().unwrap().to_path_buf()).or_default() += 1;
        let pids: Vec<u32> = procs.split_whitespace().map(|p| p.parse().unwrap()).collect();
        // The outer process, and init (its child) in the sandbox.
        assert!(pids.iter().any(|p| outers.contains(p)), "processes left in {}: {pids:?}", dir.display());
        assert!(pids.len() <= 2, "processes left in {}: {pids:?}", dir.display());
    }
    assert!(busy.values().all(|n| *n <= warm), "cgroups with processes: {busy:?}");
    // Dropping the sandbox ends the sandboxes launched ahead and removes the cgroup pool.
    drop(sb);
    let deadline = Instant::now() + Duration::from_secs(5);
    let gone = || own().is_empty() && scratch_runs(&scratch).is_empty() && launched_children().is_empty();
    while !gone() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cgroups = own();
    assert!(cgroups.is_empty(), "cgroups left after the sandbox was dropped: {cgroups:?}");
    assert!(scratch_runs(&scratch).is_empty(), "scratch folders left: {:?}", scratch_runs(&scratch));
    assert!(launched_children().is_empty(), "sandbox processes left: {:?}", launched_children());
}

/// The runs' scratch folders under `scratch`.
fn scratch_runs(scratch: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(scratch)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .map(|e| e.path())
        .collect()
}

/// This process's children that are forks of it (sandboxes' outer processes).
fn launched_children() -> Vec<u32> {
    let me = std::process::id();
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid ...`: the comm may hold spaces, so parse from its end.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { continue };
        let ppid: u32 = rest.split(' ').nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        // A fork that has not exec'd anything runs this very program.
        if ppid == me && std::fs::read_link(entry.path().join("exe")).is_ok_and(|e| e == exe) {
            found.push(pid);
        }
    }
    found
}

/// How many idle cgroups a sandbox keeps per hierarchy (the pool's bound).
const MAX_IDLE_CGROUPS: usize = 16;

/// The sandbox cgroups this process made (`cloudx-<pid>-…`), under its cgroup of each
/// hierarchy.
fn cgroups_of_this_process() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let first = controllers.split(',').next().unwrap_or("");
        let base = if controllers.is_empty() {
            PathBuf::from("/sys/fs/cgroup/unified")
        } else {
            PathBuf::from("/sys/fs/cgroup").join(first)
        };
        let dir = base.join(path.trim_start_matches('/'));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&format!("cloudx-{}-", std::process::id())) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn signals_start_at_their_defaults() {
    let _shared = GATE.read().await;
    // Rust ignores SIGPIPE in the supervisor; an ignored signal would survive the exec.
    let out = sandbox().exec(sh("yes | head -n 1; grep -E '^Sig(Ign|Blk)' /proc/self/status")).await.unwrap();
    assert_eq!(text(&out.stdout), "y\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n", "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

#[tokio::test]
async fn a_cancelled_run_leaves_no_process_behind() {
    let _shared = GATE.read().await;
    let word = format!("sleep {}.5", 7000 + std::process::id() % 1000);
    let sb = sandbox();
    let run = sb.exec(sh(&format!("{word}; echo never")));
    assert!(tokio::time::timeout(Duration::from_millis(500), run).await.is_err());
    // Dropping the run closed the lifeline: the outer process killed init, and the command with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while leftovers(&word).is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    leftovers(&word).unwrap();
}

#[tokio::test]
async fn workspaces_and_binds_may_not_overlap_the_scratch_folder() {
    let _shared = GATE.read().await;
    let sb = sandbox();
    let scratch = sb.settings().scratch_dir.clone();
    let mut spec = sh("true");
    spec.workspace = Some(scratch.parent().unwrap().to_path_buf());
    let err = sb.exec(spec).await.unwrap_err();
    assert!(err.message().contains("overlaps the sandbox's scratch folder"), "{err}");
    let mut spec = sh("true");
    spec.binds = vec![cloudx_core::sandbox::Bind { source: scratch.clone(), target: Some("/scratch".into()) }];
    let err = sb.exec(spec).await.unwrap_err();
    assert!(err.message().contains("overlaps"), "{err}");
}

#[tokio::test]
async fn a_given_folder_stays_its_owners() {
    use std::os::unix::fs::MetadataExt as _;
    let _shared = GATE.read().await;
    let sb = sandbox();
    let root = nix::unistd::geteuid().is_root();
    // The test user's folder; as root, another user's folder too (the sandbox runs as a uid of
    // its range, so only an idmapped mount lets it write there).
    let mine = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let mut folders =
        vec![(mine.path().to_path_buf(), nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw())];
    if root {
        nix::unistd::chown(theirs.path(), Some(4242.into()), Some(4343.into())).unwrap();
        folders.push((theirs.path().to_path_buf(), 4242, 4343));
    }
    for (dir, uid, gid) in folders {
        std::fs::write(dir.join("old"), "old\n").unwrap();
        nix::unistd::chown(&dir.join("old"), Some(uid.into()), Some(gid.into())).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode();
        let mut spec =
            sh("echo more >> old && echo new > new && mkdir sub && echo x > sub/f && stat -c '%u %g' . old new sub/f");
        spec.workspace = Some(dir.clone());
        let out = sb.exec(spec).await.unwrap();
        assert!(out.success(), "{}: {}", dir.display(), text(&out.stderr));
        assert_eq!(text(&out.stdout), "1000 1000\n".repeat(4), "inside, the folder is the sandbox user's");
        if root {
            assert!(out.isolation.mounts.iter().any(|m| m.contains("idmapped")), "{:?}", out.isolation.mounts);
        }
        for name in ["old", "new", "sub", "sub/f"] {
            let meta = std::fs::metadata(dir.join(name)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{name} must belong to the folder's owner");
        }
        assert_eq!(std::fs::read_to_string(dir.join("old")).unwrap(), "old\nmore\n");
        let after = std::fs::metadata(&dir).unwrap();
        assert_eq!((after.uid(), after.gid(), after.mode()), (uid, gid, mode), "the folder itself is untouched");
    }
}

#[test]
fn given_folders_run_at_once_without_waiting_on_each_other() {
    // As root each given folder is idmapped through a user namespace that a short-lived child
    // holds; children made at once must not keep each other alive (they once did, forever).
    // A runtime of the test's own: on a hang, it is shut down without waiting for the stuck
    // launching threads, which dropping it would do (forever).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let root = nix::unistd::geteuid().is_root();
    // Resident memory slows each fork down, widening the window in which they overlap.
    let ballast = std::hint::black_box(vec![1u8; 128 << 20]);
    let folders: Vec<_> = (0..24).map(|_| tempfile::tempdir().unwrap()).collect();
    let all = rt.block_on(async {
        let _shared = GATE.read().await;
        let sb = sandbox();
        let runs: Vec<_> = folders
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let (sb, dir) = (sb.clone(), dir.path().to_path_buf());
                tokio::spawn(async move {
                    let mut spec = sh(&format!("echo {i} > out && cat out"));
                    spec.workspace = Some(dir);
                    sb.exec(spec).await
                })
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(30), futures_util::future::join_all(runs)).await
    });
    let Ok(all) = all else {
        rt.shutdown_background();
        panic!("runs with given folders waited on each other for 30 s");
    };
    for (i, out) in all.into_iter().enumerate() {
        let out = out.unwrap().unwrap();
        assert!(out.success(), "run {i}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{i}\n"));
        if root {
            assert!(out.isolation.mounts.iter().any(|m| m.contains("idmapped")), "{:?}", out.isolation.mounts);
        }
        assert_eq!(std::fs::read_to_string(folders[i].path().join("out")).unwrap(), format!("{i}\n"));
    }
    drop(ballast);
}
