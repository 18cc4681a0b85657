//! `/api/v1/projects/{project}/policy` and `/api/v1/projects/{project}/exec`: a project's
//! sandbox policy, and short sandboxed runs on its files.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use cloudx_core::sandbox::{ProjectExec, ProjectRun, SandboxPolicy};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_policy, put_policy)).routes(routes!(exec))
}

/// The project's sandbox policy: the limits, network and extra binds of every run on it (what
/// it leaves out is the instance's default).
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/policy", tag = "sandbox",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id")),
    responses(
        (status = 200, body = SandboxPolicy),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_policy(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
) -> Result<Json<SandboxPolicy>, ApiError> {
    Ok(Json(state.cx.sandbox_policy(caller.principal(), project).await?))
}

/// Replaces the project's sandbox policy (owners), within the instance's ceilings
/// (`sandbox.max_*`), network allowance (`sandbox.allow_loopback`) and bindable folders
/// (`sandbox.bindable`). Audited.
#[utoipa::path(
    put, path = "/api/v1/projects/{project}/policy", tag = "sandbox",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id")),
    request_body = SandboxPolicy,
    responses(
        (status = 200, body = SandboxPolicy),
        (status = 400, description = "A limit above its ceiling, a bind outside the bindable folders, ... (named)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn put_policy(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
    Json(policy): Json<SandboxPolicy>,
) -> Result<Json<SandboxPolicy>, ApiError> {
    Ok(Json(state.cx.set_sandbox_policy(caller.principal(), &caller.client(), project, policy).await?))
}

/// Runs a short command in the sandbox on the project's files (the latest version, or
/// `version`) under the project's policy, and answers with how it ended; with `commit`, the
/// files it changed become a new version authored by the caller. Editors and owners; an API
/// key needs the `read` and `exec` scopes (and `write` to commit). The run's deadline is what
/// is left of `http.request_timeout` after the checkout (less a margin for the commit): longer
/// runs are `sandbox_exec` jobs. Audited, even when the client goes away.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/exec", tag = "sandbox",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id")),
    request_body = ProjectExec,
    responses(
        (status = 200, description = "The run ended (whatever its exit code)", body = ProjectRun),
        (status = 400, description = "A bad command, or limits above the project's (named)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A viewer, or a key without the `exec` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`commit`: the project changed meanwhile; nothing was committed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The sandbox cannot run on this host, or is disabled", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn exec(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
    Json(request): Json<ProjectExec>,
) -> Result<Json<ProjectRun>, ApiError> {
    // Done (answer written) a second before the request's own timeout.
    let timeout = state.cx.config().http.request_timeout;
    let deadline = Instant::now() + timeout.saturating_sub(Duration::from_secs(1)).max(Duration::from_secs(1));
    // A task of its own: a client that goes away does not stop the run half-way, nor its
    // commit or its audit record.
    let (cx, principal, client) = (state.cx.clone(), caller.principal().clone(), caller.client());
    let run =
        tokio::spawn(
            async move { cx.exec_in_project(&principal, &client, project, request, Some(deadline), None).await },
        )
        .await
        .map_err(|e| cloudx_core::Error::internal("the run's task failed", e))??;
    Ok(Json(run))
}
