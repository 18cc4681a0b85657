//! The job kinds cloudx runs itself.
//!
//! - `sandbox_exec`: a command on a project version in the sandbox, under the project's policy,
//!   as the account that submitted the job (with the rights it has when the job runs). The
//!   payload is a [`ProjectExec`]; stdout and stderr stream as `stdout` / `stderr` events; the
//!   result is the [`ProjectRun`](crate::sandbox::ProjectRun) (how the command ended, what it
//!   committed). A cancelled job kills its sandbox.
//! - `test_runner`: the project's tests (their command detected, or given) run the same way,
//!   read into a [`TestReport`](super::TestReport); see [`super::test_runner`].
//! - `codegen`: an agent task (see [`crate::agent`]); its payload names the task.

use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Handlers, JobContext, JobError};
use crate::auth::audit::Client;
use crate::cloudx::Cloudx;
use crate::error::{Error, ErrorKind};
use crate::principal::{Principal, Role, Scopes};
use crate::sandbox::{OutputChunk, ProjectExec, ProjectRun};

impl Cloudx {
    /// Handlers for the job kinds cloudx runs itself (`sandbox_exec`, `test_runner`, `codegen`); an
    /// embedding program adds its own with [`Handlers::register`].
    pub fn builtin_handlers(&self) -> Handlers {
        let mut handlers = Handlers::new();
        let cx = self.clone();
        handlers.register("sandbox_exec", move |job| sandbox_exec(cx.clone(), job));
        let cx = self.clone();
        handlers.register("test_runner", move |job| super::test_runner::test_runner(cx.clone(), job));
        let cx = self.clone();
        handlers.register(crate::agent::CODEGEN, move |job| crate::agent::run::codegen(cx.clone(), job));
        handlers
    }
}

/// Whether trying again could help with `e`.
pub(crate) fn job_error(e: &Error) -> JobError {
    match e.kind() {
        ErrorKind::Unavailable | ErrorKind::Internal | ErrorKind::RateLimited => {
            JobError::Retry(e.message().to_owned())
        }
        _ => JobError::Fatal(e.message().to_owned()),
    }
}

/// Who a job acts as: the API key it was submitted with (its scopes, while the key is valid),
/// else the account that submitted it, with its current role.
pub(crate) async fn submitter(cx: &Cloudx, job: &super::Job) -> Result<Principal, JobError> {
    let submitted = match job.api_key {
        _ if job.created_by.is_nil() => Principal::System,
        Some(key) => {
            Principal::User { id: job.created_by, role: Role::Member, scopes: Scopes::ALL, api_key: Some(key) }
        }
        None => Principal::user(job.created_by, Role::Member),
    };
    cx.auth().current(&submitted).await.map_err(|e| match e.kind() {
        ErrorKind::Unauthenticated | ErrorKind::NotFound => {
            let whom =
                if job.api_key.is_some() { "the API key the job was submitted with" } else { "the job's submitter" };
            JobError::Fatal(format!("{whom}: {}", e.message()))
        }
        _ => job_error(&e),
    })
}

async fn sandbox_exec(cx: Cloudx, job: JobContext) -> Result<serde_json::Value, JobError> {
    let project = job.job.project.ok_or_else(|| JobError::Fatal("the job names no project".into()))?;
    let request: ProjectExec = serde_json::from_value(job.job.payload.clone())
        .map_err(|e| JobError::Fatal(format!("the payload is not a run (argv, env, cwd, limits, commit, ...): {e}")))?;
    let actor = submitter(&cx, &job.job).await?;
    let run = run_streaming(&cx, &job, &actor, project, request).await?;
    serde_json::to_value(&run).map_err(|e| JobError::Fatal(format!("the run's outcome cannot be stored: {e}")))
}

/// Runs `request` on the project as `actor` (see [`Cloudx::exec_in_project`]), its output
/// streamed as `stdout` / `stderr` text events as it comes. A cancelled job drops the run,
/// which kills its sandbox, and answers `Retry("stopped")` (the worker records the cancel).
///
/// # Errors
/// The run's errors as [`JobError`]s ([`job_error`]).
pub(crate) async fn run_streaming(
    cx: &Cloudx,
    job: &JobContext,
    actor: &Principal,
    project: Uuid,
    request: ProjectExec,
) -> Result<ProjectRun, JobError> {
    let client = Client::new(None, Some("cloudx worker"));
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let run = cx.exec_in_project(actor, &client, project, request, None, Some(tx));
    tokio::pin!(run);
    // Output becomes text events; a character split between two chunks waits for its end.
    let mut pending: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut send = async |chunk: Option<OutputChunk>| {
        for (i, kind) in ["stdout", "stderr"].into_iter().enumerate() {
            let buf = &mut pending[i];
            match &chunk {
                Some(OutputChunk::Stdout(b)) if i == 0 => buf.extend_from_slice(b),
                Some(OutputChunk::Stderr(b)) if i == 1 => buf.extend_from_slice(b),
                Some(_) => continue,
                None => {}
            }
            let whole = match std::str::from_utf8(buf) {
                Ok(_) => buf.len(),
                // An incomplete character at the end (not an invalid one): kept for later.
                Err(e) if e.error_len().is_none() && chunk.is_some() => e.valid_up_to(),
                Err(_) => buf.len(),
            };
            if whole == 0 {
                continue;
            }
            let text: Vec<u8> = buf.drain(..whole).collect();
            // A lost lease shows here too; the worker then stops this handler. The output stays
            // in the run's result either way; a lost event is logged, to be seen.
            if let Err(e) = job.event(kind, json!(String::from_utf8_lossy(&text))).await {
                tracing::warn!(job = %job.job.id, kind, error = %e, "a run's output event was not stored");
            }
        }
    };
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            Some(chunk) = rx.recv() => send(Some(chunk)).await,
            // Dropping the run ends its sandbox.
            () = job.cancelled().cancelled() => return Err(JobError::Retry("stopped".into())),
        }
    };
    while let Ok(chunk) = rx.try_recv() {
        send(Some(chunk)).await;
    }
    send(None).await;
    result.map_err(|e| job_error(&e))
}
