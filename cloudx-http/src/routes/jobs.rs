//! `/api/v1/jobs`: submit, read, list, cancel and retry jobs, and read their events.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use cloudx_core::queue::{Job, JobEvent, JobFilter, NewJob, WorkerInfo};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs, submit_job))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(retry_job))
        .routes(routes!(job_events))
        .routes(routes!(list_workers))
}

/// The workers seen in the last day: health (`alive`, `stopped`, `gone`), kinds, concurrency,
/// the jobs each holds, the last heartbeat (administrators).
#[utoipa::path(
    get, path = "/api/v1/workers", tag = "jobs",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<WorkerInfo>),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_workers(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<WorkerInfo>>, ApiError> {
    Ok(Json(state.cx.workers(caller.principal()).await?))
}

/// Submits a job to a project (editors and owners; an API key needs `write` and `exec`). With
/// an `idempotency_key` the caller used before, the first job comes back (200) instead of a new
/// one (201). Audited.
#[utoipa::path(
    post, path = "/api/v1/jobs", tag = "jobs",
    security(("bearer" = [])),
    request_body = NewJob,
    responses(
        (status = 201, description = "Submitted", body = Job),
        (status = 200, description = "The job of an earlier submission with the same idempotency key", body = Job),
        (status = 400, description = "No project, or a bad field (named)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A viewer, or a key without `write` and `exec`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn submit_job(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewJob>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let (job, created) = state.cx.submit_job(caller.principal(), &caller.client(), new).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(job)))
}

/// Jobs, newest first: one project's (`project`, any member), or every job (administrators).
#[utoipa::path(
    get, path = "/api/v1/jobs", tag = "jobs",
    security(("bearer" = [])),
    params(JobFilter),
    responses(
        (status = 200, body = Vec<Job>),
        (status = 400, description = "No project, for someone who is not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<JobFilter>,
) -> Result<Json<Vec<Job>>, ApiError> {
    Ok(Json(state.cx.list_jobs(caller.principal(), &filter).await?))
}

/// A job (any member of its project).
#[utoipa::path(
    get, path = "/api/v1/jobs/{id}", tag = "jobs",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, body = Job),
        (status = 404, description = "No such job for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_job(State(state): State<AppState>, caller: Caller, Path(id): Path<Uuid>) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.cx.job(caller.principal(), id).await?))
}

/// Cancels a job (editors and owners of its project): a queued one at once, a running one at
/// its worker's next heartbeat. Audited.
#[utoipa::path(
    post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Cancelled, or marked to be (a running job)", body = Job),
        (status = 403, description = "A viewer, or a key without `write`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job for the caller", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job has ended", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.cx.cancel_job(caller.principal(), &caller.client(), id).await?))
}

/// Queues a dead or cancelled job again, with three more attempts (administrators).
/// Audited.
#[utoipa::path(
    post, path = "/api/v1/jobs/{id}/retry", tag = "jobs",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, body = Job),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job for the caller", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not dead or cancelled", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn retry_job(State(state): State<AppState>, caller: Caller, Path(id): Path<Uuid>) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.cx.retry_job(caller.principal(), &caller.client(), id).await?))
}

/// Which events to read.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Only events after this number (default 0: from the first).
    #[serde(default)]
    after: i64,
    /// At most this many (default 1000).
    #[serde(default)]
    limit: Option<u32>,
}

/// A job's events (progress, log lines, output) after `after`, in order: poll with the last
/// number seen to miss nothing.
#[utoipa::path(
    get, path = "/api/v1/jobs/{id}/events", tag = "jobs",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The job's id"), EventsQuery),
    responses(
        (status = 200, body = Vec<JobEvent>),
        (status = 404, description = "No such job for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn job_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(query): Query<EventsQuery>,
) -> Result<Json<Vec<JobEvent>>, ApiError> {
    Ok(Json(state.cx.job_events(caller.principal(), id, query.after, query.limit.unwrap_or(1000)).await?))
}
