//! `cloudx llm check` against a scripted OpenAI-compatible server.

use std::process::{Command, Output};

use cloudx_testkit::{DEFAULT_MODEL, ScriptedLlm, Turn};

/// Runs `cloudx llm check` on this endpoint (blocking: call it off the runtime serving the model).
fn llm_check(base_url: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloudx"));
    cmd.current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CLOUDX_LLM__BASE_URL", base_url)
        .env("CLOUDX_LLM__MODEL", DEFAULT_MODEL)
        .env("OPENAI_API_KEY", "sk-cli-test")
        .args(["llm", "check"])
        .args(extra);
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn llm_check_reports_each_step_and_exits_0_when_all_pass() {
    let llm = ScriptedLlm::start([
        Turn::text("ok"),
        Turn::text("1 2 3").chunks(3),
        Turn::tool_call("add", r#"{"a":2,"b":3}"#),
    ]);
    let base = llm.base_url();
    let out = tokio::task::spawn_blocking(move || llm_check(&base, &[])).await.unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for step in ["✓ models", "✓ answer", "✓ stream", "✓ tool_call"] {
        assert!(stdout.contains(step), "{step} in {stdout}");
    }
    assert_eq!(llm.requests()[0].authorization.as_deref(), Some("Bearer sk-cli-test"));
}

#[tokio::test(flavor = "multi_thread")]
async fn llm_check_exits_1_and_says_why_when_the_model_cannot_call_tools() {
    let llm = ScriptedLlm::start([Turn::text("ok"), Turn::text("1 2 3"), Turn::text("5")]);
    let base = llm.base_url();
    let out = tokio::task::spawn_blocking(move || llm_check(&base, &["--json"])).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["checks"][3]["name"], "tool_call");
    assert_eq!(report["checks"][3]["ok"], false);
    assert!(report["checks"][3]["detail"].as_str().unwrap().contains("instead of calling the tool"));
    assert!(text(&out.stderr).contains("1 of 4 checks"), "{}", text(&out.stderr));
}
