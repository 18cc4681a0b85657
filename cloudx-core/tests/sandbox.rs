//! The sandbox, end to end: real runs, checked from the host.

use cloudx_core::sandbox::{ExecSpec, Network, Sandbox, SandboxSettings};

fn sandbox() -> Sandbox {
    let scratch = std::env::temp_dir().join(format!("cloudx-sbx-test-{}", nix::unistd::geteuid()));
    let settings = SandboxSettings { scratch_dir: scratch, ..SandboxSettings::default() };
    Sandbox::new(settings).expect("the sandbox runs on this host")
}

fn sh(script: &str) -> ExecSpec {
    ExecSpec::new(["/bin/sh", "-c", script])
}

#[tokio::test]
async fn runs_a_command_and_reports_its_output_and_exit_code() {
    let sb = sandbox();
    let out = sb.exec(sh("echo hello; echo oops >&2; exit 3")).await.unwrap();
    assert_eq!(out.exit_code, Some(3), "{out:?}");
    assert_eq!(&out.stdout[..], b"hello\n");
    assert_eq!(&out.stderr[..], b"oops\n");
    let out = sb.exec(sh("id; hostname; pwd; cat /proc/self/setgroups; ls /")).await.unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!("{}", String::from_utf8_lossy(&out.stderr));
    let _ = Network::None;
}
