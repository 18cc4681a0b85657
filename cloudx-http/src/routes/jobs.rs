//! `/api/v1/jobs`: submit, read, list, cancel and retry jobs, and read their events.

use std::time::Duration;

use axum::Json;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::{FromRequestParts as _, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use cloudx_core::Principal;
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
    /// For a WebSocket: the one-time ticket of `POST /api/v1/auth/ws-ticket`.
    #[serde(default)]
    ticket: Option<String>,
}

/// A job's events (progress, log lines, output) after `after`, in order: poll with the last
/// number seen to miss nothing.
///
/// With `Upgrade: websocket` (and `?ticket=` from `POST /api/v1/auth/ws-ticket` instead of a
/// bearer token), a stream instead: every event after `after` as one text message
/// `{"event": {seq, at, kind, data}}`, live, then `{"end": <the job>}` when the job has ended,
/// and a normal close. Reconnect with `after` = the last `seq` received to miss nothing.
#[utoipa::path(
    get, path = "/api/v1/jobs/{id}/events", tag = "jobs",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The job's id"), EventsQuery),
    responses(
        (status = 200, body = Vec<JobEvent>),
        (status = 101, description = "Switching to a WebSocket stream of the events"),
        (status = 403, description = "A WebSocket from another site's page (Origin)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(query): Query<EventsQuery>,
    request: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    let (mut parts, _) = request.into_parts();
    if !crate::ws::is_upgrade(&parts.headers) {
        let caller = Caller::from_request_parts(&mut parts, &state).await?;
        let events = state.cx.job_events(caller.principal(), id, query.after, query.limit.unwrap_or(1000)).await?;
        return Ok(Json(events).into_response());
    }
    let principal = crate::ws::admit(&state, &parts.headers, query.ticket.as_deref()).await?;
    // Checked before the upgrade, so that a job the caller may not see is a plain 404.
    state.cx.job(&principal, id).await?;
    let (upgrade, connection) = crate::ws::accept(&mut parts, &state).await?;
    Ok(upgrade.on_upgrade(move |socket| stream_events(state, principal, id, query.after, socket, connection)))
}

/// How long a stream waits for a wake-up before reading again (events written by workers in
/// other processes are seen this way).
const EVENTS_POLL: Duration = Duration::from_millis(250);
/// The longest wait between reads of a stream that sees nothing new.
const EVENTS_POLL_MAX: Duration = Duration::from_secs(2);
/// Events per read.
const EVENTS_BATCH: u32 = 200;

/// Streams the job's events after `after` until the job ends, the client leaves, the user may
/// no longer see the job, or the server stops.
async fn stream_events(
    state: AppState,
    principal: Principal,
    id: Uuid,
    mut after: i64,
    mut socket: WebSocket,
    connection: Option<crate::ws::Connection>,
) {
    let watch = state.cx.queue().watch(id);
    let mut watchdog = crate::ws::Watchdog::new(connection);
    let mut idle = EVENTS_POLL;
    loop {
        let check = || async {
            state.cx.auth().current(&principal).await?;
            state.cx.job(&principal, id).await.map(drop)
        };
        if !watchdog.keep(&mut socket, check).await {
            return;
        }
        // Armed before reading, so that a wake-up during the reads is not missed. Reads that
        // find nothing new space out the next ones (this process's events wake it at once;
        // other processes' are seen within `idle`).
        let woken = watch.changed(idle);
        // The job's state first, then the events: an ended job's last events are in the
        // database before its end is, so after reading them all nothing more comes.
        let job = match state.cx.queue().get(id).await {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(error = %e, job = %id, "a job's event stream cannot read the job");
                crate::ws::close(&mut socket, crate::ws::code::ERROR, "cannot read the job").await;
                return;
            }
        };
        loop {
            let events = match state.cx.queue().events(id, after, EVENTS_BATCH).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, job = %id, "a job's event stream cannot read its events");
                    crate::ws::close(&mut socket, crate::ws::code::ERROR, "cannot read the events").await;
                    return;
                }
            };
            let full = events.len() == EVENTS_BATCH as usize;
            idle = if events.is_empty() { (idle * 2).min(EVENTS_POLL_MAX) } else { EVENTS_POLL };
            for event in events {
                after = event.seq;
                let text = serde_json::json!({ "event": event }).to_string();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            if !full {
                break;
            }
        }
        if job.status.is_finished() {
            let text = serde_json::json!({ "end": job }).to_string();
            if socket.send(Message::Text(text.into())).await.is_ok() {
                crate::ws::close(&mut socket, crate::ws::code::NORMAL, "the job has ended").await;
            }
            return;
        }
        if let crate::ws::Turn::Stop = watchdog.wait(&mut socket, woken).await {
            return;
        }
    }
}
