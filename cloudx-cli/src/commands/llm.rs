//! `cloudx llm check`.

use anyhow::bail;
use cloudx_core::CloudxConfig;
use cloudx_core::agent::llm::{LlmCheck, Model};

/// Checks the configured model endpoint and prints the report (text, or JSON with `json`);
/// fails (exit 1) when a step failed.
pub(crate) async fn check(config: &CloudxConfig, json: bool) -> anyhow::Result<()> {
    let report = Model::new(&config.llm)?.check().await;
    if json {
        crate::print(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        crate::print(&render(&report));
    }
    let failed = report.checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        bail!("{failed} of {} checks of {} at {} failed", report.checks.len(), report.model, report.base_url);
    }
    Ok(())
}

fn render(report: &LlmCheck) -> String {
    let mut out = format!("model {} at {}\n", report.model, report.base_url);
    for step in &report.checks {
        let mark = if step.ok { "✓" } else { "✗" };
        out.push_str(&format!("{mark} {:<9} {} ({} ms)\n", step.name, step.detail, step.elapsed_ms));
    }
    out.push_str(if report.ok {
        "the endpoint can serve the agent\n"
    } else {
        "the endpoint cannot serve the agent yet\n"
    });
    out
}
