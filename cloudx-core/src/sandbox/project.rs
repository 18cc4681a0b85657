//! Runs on projects: a project version checked out into a workspace, run in the sandbox under
//! the project's policy, the changes committed back when asked, the run audited.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{ExecOutcome, ExecSpec, Limits, OutputChunk, Sandbox, SandboxPolicy, SandboxSettings};
use crate::access::ProjectAction;
use crate::auth::audit::{self, Client, Event, Outcome};
use crate::cloudx::Cloudx;
use crate::error::{Error, ErrorKind, Result};
use crate::principal::Principal;
use crate::storage::WorkspaceCommit;

/// A command to run on a project's files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectExec {
    /// The program and its arguments (never a shell string).
    pub argv: Vec<String>,
    /// The environment (nothing of the host's; `PATH`, `HOME` and `LANG` have defaults).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The working directory, relative to the project's root.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Text for the command's standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Limits, each within the project's (which fill in what is left out).
    #[serde(default)]
    pub limits: Limits,
    /// The project version to run on (default: the latest).
    #[serde(default)]
    pub version: Option<i64>,
    /// Commit the files the run changed as a new version (authored by the caller).
    #[serde(default)]
    pub commit: bool,
    /// The message of that version.
    #[serde(default)]
    pub message: Option<String>,
}

impl ProjectExec {
    /// The checks that need no project: a client may make them before sending the run away
    /// (as a job, whose failure would only say that it died).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for an empty command.
    pub fn check(&self) -> Result<()> {
        if self.argv.first().is_none_or(String::is_empty) {
            return Err(Error::invalid("argv: give a program and its arguments"));
        }
        Ok(())
    }
}

/// How a run on a project went.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectRun {
    /// The project version the run started from.
    pub version: i64,
    /// How the command ended, its output and what protected it.
    pub outcome: ExecOutcome,
    /// What was committed, when the run asked for it.
    pub commit: Option<WorkspaceCommit>,
}

/// A checked-out workspace, removed when dropped (on a thread of its own).
struct Workspace(PathBuf);

impl Drop for Workspace {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.0);
        let remove = move || {
            if let Err(e) = crate::fs::remove_tree(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a run's workspace");
            }
        };
        // A thread of its own: a runtime's blocking pool drops its work unrun when it shuts down.
        if std::thread::Builder::new().name("cloudx-workspace".into()).spawn(remove).is_err() {
            tracing::warn!("cannot start a thread to remove a run's workspace");
        }
    }
}

impl Cloudx {
    /// The sandbox of this instance, made on first use.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when `sandbox.enabled` is off or the host cannot sandbox
    /// (the message names what is missing and the fix).
    pub fn sandbox(&self) -> Result<&Sandbox> {
        let config = &self.config().sandbox;
        if !config.enabled {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "running code is disabled on this instance (sandbox.enabled = false)",
            ));
        }
        self.sandbox_cell()
            .get_or_init(|| {
                sweep_workspaces(&self.config().data_dir.join("workspaces"));
                Sandbox::new(SandboxSettings::from_config(config)).map_err(|e| e.message().to_owned())
            })
            .as_ref()
            .map_err(|message| Error::new(ErrorKind::Unavailable, message.clone()))
    }

    /// The project's sandbox policy (the configured defaults when it has none of its own).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for a project `actor` cannot read.
    pub async fn sandbox_policy(&self, actor: &Principal, project: Uuid) -> Result<SandboxPolicy> {
        let json = self.storage().sandbox_policy_json(actor, project, ProjectAction::Read).await?;
        parse_policy(json.as_deref())
    }

    /// Replaces the project's sandbox policy (owners only), after checking it against the
    /// configured ceilings and bindable folders. Audited.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming what the configuration does not allow,
    /// [`ErrorKind::PermissionDenied`] for a caller who is not an owner.
    pub async fn set_sandbox_policy(
        &self,
        actor: &Principal,
        client: &Client,
        project: Uuid,
        policy: SandboxPolicy,
    ) -> Result<SandboxPolicy> {
        // Who may set it is checked first: a stranger learns nothing from the policy's checks.
        self.storage().authorize(actor, project, &[ProjectAction::Manage]).await?;
        policy.check(&self.config().sandbox, &self.protected_folders())?;
        let json = (policy != SandboxPolicy::default())
            .then(|| serde_json::to_string(&policy))
            .transpose()
            .map_err(|e| Error::internal("cannot store the policy", e))?;
        self.storage().set_sandbox_policy_json(actor, client, project, json).await?;
        Ok(policy)
    }

    /// Runs a command on the project's files (the latest version, or `request.version`) in
    /// the sandbox, under the project's policy; commits the changed files as a new version
    /// authored by `actor` when `request.commit`. `deadline` is when the whole call must be
    /// done (a front end's own timeout): the run's wall-clock limit is cut to what is left of
    /// it after the checkout, less a margin for the commit. `chunks` receives the output as it
    /// comes. Every run is audited (`sandbox_exec`, with the command and how it ended).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] / [`ErrorKind::PermissionDenied`] when `actor` may not run code
    /// in the project (editors and owners may), [`ErrorKind::InvalidInput`] for a bad command
    /// or limits above the project's, [`ErrorKind::Unavailable`] when the sandbox cannot run,
    /// and the errors of [`Storage::commit_workspace`](crate::storage::Storage::commit_workspace).
    pub async fn exec_in_project(
        &self,
        actor: &Principal,
        client: &Client,
        project: Uuid,
        request: ProjectExec,
        deadline: Option<std::time::Instant>,
        chunks: Option<mpsc::Sender<OutputChunk>>,
    ) -> Result<ProjectRun> {
        request.check()?;
        // Every right the call needs, before anything runs: reading the files, running code,
        // and writing when the changes are to be committed.
        let mut needed = vec![ProjectAction::Read, ProjectAction::Exec];
        if request.commit {
            needed.push(ProjectAction::Write);
        }
        self.storage().authorize(actor, project, &needed).await?;
        let policy_json = self.storage().sandbox_policy_json(actor, project, ProjectAction::Exec).await?;
        let policy = parse_policy(policy_json.as_deref())?;
        let config = &self.config().sandbox;
        // The configuration may have changed since the policy was written; the binds are
        // resolved here, once.
        let binds = policy.resolved_binds(config, &self.protected_folders()).map_err(|e| {
            Error::invalid(format!("the project's sandbox policy is no longer allowed here: {}", e.message()))
        })?;
        let mut limits = policy.limits_for(&request.limits, config)?;
        let sandbox = self.sandbox()?;
        let base = self.config().data_dir.join("workspaces");
        crate::fs::create_private_dir(&base)?;
        let dir = base.join(format!("run-{}-{}", std::process::id(), Uuid::now_v7().simple()));
        std::fs::create_dir(&dir).map_err(|e| Error::internal("cannot create the run's workspace", e))?;
        let workspace = Workspace(dir);
        let checkout = self.storage().checkout(actor, project, request.version, &workspace.0).await?;
        if let (Some(deadline), Some(wall)) = (deadline, limits.wall_time) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // The commit's share: a tenth of what is left, at least a second.
            let margin = if request.commit { (left / 10).max(Duration::from_secs(1)) } else { Duration::ZERO };
            let run_for = left.saturating_sub(margin);
            if run_for < Duration::from_millis(100) {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "no time is left for the run within this request (checking the project out took it); \
                     submit a sandbox_exec job instead",
                ));
            }
            limits.wall_time = Some(wall.min(run_for));
        }
        let spec = ExecSpec {
            argv: request.argv.clone(),
            env: request.env.into_iter().collect(),
            cwd: request.cwd.clone(),
            stdin: request.stdin.map(bytes::Bytes::from),
            workspace: Some(workspace.0.clone()),
            limits,
            network: policy.network,
            binds,
        };
        let ran = match chunks {
            Some(tx) => sandbox.exec_streaming(spec, tx).await,
            None => sandbox.exec(spec).await,
        };
        let command = shown_command(&request.argv);
        let (outcome_word, detail) = match &ran {
            Ok(out) => (
                Outcome::Success,
                format!(
                    "{command} on version {}: {} in {} ms",
                    checkout.version,
                    match (out.exit_code, out.signal) {
                        (Some(code), _) => format!("exit {code}"),
                        (None, Some(signal)) => format!("signal {signal}"),
                        _ => "ended".into(),
                    },
                    out.wall_time.as_millis()
                ),
            ),
            Err(e) => (Outcome::Failure, format!("{command}: {}", e.message())),
        };
        audit::append(
            self.database(),
            &Event {
                action: "sandbox_exec",
                outcome: outcome_word,
                actor: actor.user_id(),
                target: Some(format!("project:{project}")),
                client,
                detail: Some(detail),
            },
        )
        .await?;
        let outcome = ran?;
        let commit = if request.commit {
            Some(
                self.storage()
                    .commit_workspace(actor, client, project, &workspace.0, &checkout, request.message.as_deref())
                    .await?,
            )
        } else {
            None
        };
        Ok(ProjectRun { version: checkout.version, outcome, commit })
    }
}

impl Cloudx {
    /// Folders no bind of a policy may overlap: the data folder and the sandbox's scratch.
    fn protected_folders(&self) -> Vec<PathBuf> {
        let config = self.config();
        let data = std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
        let scratch = config.sandbox.scratch_dir.clone().unwrap_or_else(super::default_scratch_dir);
        vec![data, scratch]
    }
}

/// Removes the workspaces of runs whose process is gone (`run-<pid>-<id>`: a crash, a kill).
fn sweep_workspaces(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("run-")).and_then(|r| r.split('-').next()) else {
            continue;
        };
        let dead = pid.parse::<u32>().is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if dead && let Err(e) = crate::fs::remove_tree(&entry.path()) {
            tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove a dead run's workspace");
        }
    }
}

fn parse_policy(json: Option<&str>) -> Result<SandboxPolicy> {
    match json {
        None => Ok(SandboxPolicy::default()),
        Some(text) => {
            serde_json::from_str(text).map_err(|e| Error::internal("a stored sandbox policy cannot be read", e))
        }
    }
}

/// The command as the audit log shows it: its words, shortened.
fn shown_command(argv: &[String]) -> String {
    let mut shown = argv.join(" ");
    if shown.chars().count() > 200 {
        shown = shown.chars().take(200).collect::<String>() + "…";
    }
    shown
}
