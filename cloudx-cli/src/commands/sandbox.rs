//! `cloudx run` and `cloudx sandbox check`: the sandbox on this host, without a database.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use cloudx_core::CloudxConfig;
use cloudx_core::sandbox::{
    Bind, ExecOutcome, ExecSpec, Isolation, Limits, Network, OutputChunk, Sandbox, SandboxSettings,
};

use crate::args::{RunArgs, SandboxCommand};

/// Exit codes of `cloudx run` itself, as `env(1)` and container runners use them.
pub(crate) mod exit {
    /// The sandbox could not run the command.
    pub(crate) const SANDBOX_FAILED: u8 = 125;
    /// The program is not executable.
    pub(crate) const NOT_EXECUTABLE: u8 = 126;
    /// The program was not found.
    pub(crate) const NOT_FOUND: u8 = 127;
    /// The wall-clock limit killed the command (as `timeout(1)`).
    pub(crate) const TIMED_OUT: u8 = 124;
}

/// `cloudx run`: returns the exit code to leave with.
pub(crate) async fn run(config: &CloudxConfig, args: RunArgs) -> anyhow::Result<u8> {
    if !config.sandbox.enabled {
        anyhow::bail!("the sandbox is disabled on this host (sandbox.enabled = false): nothing may run");
    }
    let spec = spec(&args)?;
    // One run and out: nothing to launch ahead.
    let sandbox = Sandbox::new(SandboxSettings { warm: 0, ..SandboxSettings::from_config(&config.sandbox) })?;
    let outcome = if args.json {
        sandbox.exec(spec).await
    } else {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<OutputChunk>(64);
        // Each chunk takes the stream's lock only while it is written: anything else that
        // writes to stderr meanwhile (a log line) must not wait for the run to end.
        let printer = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                let _ = match chunk {
                    OutputChunk::Stdout(b) => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&b).and_then(|()| out.flush())
                    }
                    OutputChunk::Stderr(b) => {
                        let mut err = std::io::stderr().lock();
                        err.write_all(&b).and_then(|()| err.flush())
                    }
                };
            }
        });
        let outcome = sandbox.exec_streaming(spec, tx).await;
        let _ = printer.await;
        outcome
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("error: {e}");
            let code = if e.message().starts_with("command not found") {
                exit::NOT_FOUND
            } else if e.message().contains("is not executable") {
                exit::NOT_EXECUTABLE
            } else {
                exit::SANDBOX_FAILED
            };
            return Ok(code);
        }
    };
    if args.json {
        crate::print(&format!("{}\n", serde_json::to_string_pretty(&outcome)?));
    }
    report_limits(&outcome);
    if args.explain {
        eprint!("{}", explain(&outcome.isolation));
    }
    Ok(exit_code(&outcome))
}

fn spec(args: &RunArgs) -> anyhow::Result<ExecSpec> {
    let mut spec = ExecSpec::new(args.command.clone());
    spec.network = args.net.parse::<Network>()?;
    spec.limits = Limits {
        wall_time: args.time.map(Into::into),
        cpu_time: args.cpu.map(Into::into),
        memory: args.mem,
        processes: args.pids,
        output: args.output,
        ..Limits::default()
    };
    for pair in &args.env {
        let (key, value) = pair.split_once('=').with_context(|| format!("--env {pair}: expected NAME=VALUE"))?;
        spec.env.push((key.to_string(), value.to_string()));
    }
    for bind in &args.binds {
        let (source, target) = match bind.split_once(':') {
            Some((s, t)) => (s, Some(PathBuf::from(t))),
            None => (bind.as_str(), None),
        };
        let source = std::path::absolute(source).with_context(|| format!("--bind {bind}"))?;
        spec.binds.push(Bind { source, target });
    }
    if let Some(dir) = &args.dir {
        spec.workspace = Some(std::path::absolute(dir).with_context(|| format!("--dir {}", dir.display()))?);
    }
    spec.cwd = args.cwd.clone();
    // Piped input is handed to the command; a terminal is not.
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut input = Vec::new();
        stdin.lock().read_to_end(&mut input).context("cannot read standard input")?;
        if !input.is_empty() {
            spec.stdin = Some(input.into());
        }
    }
    Ok(spec)
}

/// The command's exit code; 124 for the deadline, 128+N for signal N.
fn exit_code(outcome: &ExecOutcome) -> u8 {
    if outcome.timed_out {
        return exit::TIMED_OUT;
    }
    match (outcome.exit_code, outcome.signal) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 1,
    }
}

/// Says on stderr which limit ended or cut the run.
fn report_limits(outcome: &ExecOutcome) {
    use cloudx_core::sandbox::LimitKind;
    let limits = &outcome.isolation.limits;
    let message = match outcome.limit {
        None => return,
        Some(LimitKind::WallTime) => {
            format!("killed: the wall-clock limit of {} was reached", humantime::format_duration(limits.wall_time))
        }
        Some(LimitKind::CpuTime) => {
            format!("killed: the CPU-time limit of {} was reached", humantime::format_duration(limits.cpu_time))
        }
        Some(LimitKind::Memory) => {
            format!("killed: the memory limit of {} was reached", bytesize::ByteSize(limits.memory))
        }
        Some(LimitKind::Processes) => format!("the process limit of {} refused a fork", limits.processes),
        Some(LimitKind::FileSize) => {
            format!("killed: a file reached the size limit of {}", bytesize::ByteSize(limits.file_size))
        }
        Some(LimitKind::Output) => format!("output was cut at {} per stream", bytesize::ByteSize(limits.output)),
    };
    eprintln!("cloudx run: {message}");
}

/// The isolation record, for people.
fn explain(iso: &Isolation) -> String {
    let mut out = String::from("\nisolation of this run:\n");
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<14} {v}\n"));
    line("namespaces", iso.namespaces.join(", "));
    line(
        "user",
        format!(
            "uid {} gid {} inside = host uid {} gid {}; setgroups {}",
            iso.uid,
            iso.gid,
            iso.host_uid,
            iso.host_gid,
            if iso.setgroups_denied { "denied" } else { "allowed" }
        ),
    );
    line("capabilities", iso.capabilities.to_string());
    line("no_new_privs", iso.no_new_privs.to_string());
    line("network", format!("{:?}", iso.network).to_lowercase());
    line(
        "landlock",
        if iso.landlock_abi == 0 {
            "not applied".into()
        } else {
            format!("ABI {}; {}", iso.landlock_abi, iso.landlock_rules.join("; "))
        },
    );
    if !iso.landlock_scopes.is_empty() {
        line("  scoped", iso.landlock_scopes.join(", "));
    }
    line("seccomp", format!("denies {}", iso.seccomp_denied.join(", ")));
    line("memory limit", format!("{} by {}", bytesize::ByteSize(iso.limits.memory), iso.memory_limit));
    line("process limit", format!("{} by {}", iso.limits.processes, iso.process_limit));
    line("rlimits", iso.rlimits.join(", "));
    out.push_str("  mounts\n");
    for mount in &iso.mounts {
        out.push_str(&format!("    {mount}\n"));
    }
    if !iso.degraded.is_empty() {
        out.push_str(&format!("  degraded       {}\n", iso.degraded.join("; ")));
    }
    out
}

/// `cloudx sandbox ...`.
pub(crate) fn sandbox(config: &CloudxConfig, command: SandboxCommand) -> anyhow::Result<()> {
    match command {
        SandboxCommand::Check => check(config),
    }
}

fn check(config: &CloudxConfig) -> anyhow::Result<()> {
    let caps = Sandbox::probe();
    let mark = |ok: bool| if ok { "ok  " } else { "MISSING" };
    let mut out = String::new();
    out.push_str(&format!(
        "running as        {}\n",
        if caps.root {
            "root: each run gets a host uid of its own"
        } else {
            "an unprivileged user: runs keep your uid"
        }
    ));
    out.push_str(&format!("{} user namespaces\n", mark(caps.user_namespaces)));
    out.push_str(&format!("{} seccomp filters\n", mark(caps.seccomp)));
    out.push_str(&format!(
        "{} landlock{}\n",
        mark(caps.landlock_abi > 0),
        if caps.landlock_abi > 0 { format!(" (ABI {})", caps.landlock_abi) } else { String::new() }
    ));
    out.push_str(&format!("{} cgroups: {}\n", mark(!caps.cgroup.starts_with("rlimit")), caps.cgroup));
    for problem in &caps.problems {
        out.push_str(&format!("  fix: {problem}\n"));
    }
    crate::print(&out);
    match Sandbox::new(SandboxSettings { warm: 0, ..SandboxSettings::from_config(&config.sandbox) }) {
        Ok(_) => {
            crate::print("the sandbox can run here\n");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
