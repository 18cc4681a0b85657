//! `cloudx push DIR PROJECT` and `cloudx pull PROJECT DIR`: a folder kept in step with a
//! project, sending or fetching only what changed. The sync itself is the client library's
//! ([`cloudx_http::client::sync`], where its algorithm is described); this prints its steps and
//! its summary, and fails when files changed on both sides.

use cloudx_core::{Error, ErrorKind};
use cloudx_http::client::sync::{self, SyncReport, SyncStep};

use crate::args::{GlobalArgs, PullArgs, SyncArgs};
use crate::commands::projects::resolve;
use crate::commands::target::{self, Target};
use crate::print;

/// Prints the summary; a conflict error when files changed on both sides.
fn finish(report: &SyncReport, what: &str) -> anyhow::Result<()> {
    // A dry run did nothing: what it would do is in the lines above.
    let done = if report.dry_run { 0 } else { report.transferred.len() + report.deleted.len() };
    let conflicts = &report.conflicts;
    if conflicts.is_empty() {
        print(&format!("{done} {what}; in step\n"));
        return Ok(());
    }
    let mut out = format!("{done} {what}; {} conflicts, left as they are on both sides:\n", conflicts.len());
    for c in conflicts {
        out.push_str(&format!("  {c}\n"));
    }
    print(&out);
    Err(Error::new(
        ErrorKind::Conflict,
        "some files changed on both sides: resolve them (keep one side's version), then sync again",
    )
    .into())
}

/// `cloudx push DIR PROJECT`.
pub(crate) async fn push(args: SyncArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let client = target::open(|| Ok(crate::commands::load_config(global, |l| l)?)).await?;
    let done = push_on(&client, args).await;
    client.close().await;
    done
}

async fn push_on(client: &Target, args: SyncArgs) -> anyhow::Result<()> {
    // Resolved here for the CLI's wording of a project not found.
    let project = resolve(client, &args.project).await?.id.to_string();
    let dry_run = args.dry_run;
    let mut on_step = |step: SyncStep<'_>| match step {
        SyncStep::Transferred { path, .. } if dry_run => print(&format!("would send {path}\n")),
        SyncStep::Transferred { path, version } => print(&format!("sent {path} (version {})\n", shown(version))),
        SyncStep::Deleted { path, .. } if dry_run => print(&format!("would delete {path} in the project\n")),
        SyncStep::Deleted { path, version } => {
            print(&format!("deleted {path} in the project (version {})\n", shown(version)));
        }
        SyncStep::Skipped { path, why } => eprintln!("skipped {path}: {why}"),
    };
    let report = sync::push(client, &project, &args.dir, dry_run, &mut on_step).await?;
    finish(&report, "files sent or deleted")
}

/// `cloudx pull PROJECT DIR`.
pub(crate) async fn pull(args: PullArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let client = target::open(|| Ok(crate::commands::load_config(global, |l| l)?)).await?;
    let done = pull_on(&client, args).await;
    client.close().await;
    done
}

async fn pull_on(client: &Target, args: PullArgs) -> anyhow::Result<()> {
    let project = resolve(client, &args.project).await?.id.to_string();
    let dry_run = args.dry_run;
    let mut on_step = |step: SyncStep<'_>| match step {
        SyncStep::Transferred { path, .. } if dry_run => print(&format!("would fetch {path}\n")),
        SyncStep::Transferred { path, version } => print(&format!("fetched {path} (version {})\n", shown(version))),
        SyncStep::Deleted { path, .. } if dry_run => print(&format!("would delete {path} here\n")),
        SyncStep::Deleted { path, .. } => print(&format!("deleted {path} here (deleted in the project)\n")),
        SyncStep::Skipped { path, why } => eprintln!("skipped {path}: {why}"),
    };
    let report = sync::pull(client, &project, &args.dir, dry_run, &mut on_step).await?;
    finish(&report, "files fetched or deleted")
}

/// A version the library reports (always there outside a dry run).
fn shown(version: Option<i64>) -> String {
    version.map_or_else(|| "?".to_owned(), |v| v.to_string())
}
