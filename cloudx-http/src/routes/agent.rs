//! `/api/v1/.../conversations`, `/api/v1/tasks`, `/api/v1/llm/check`: the agent's
//! conversations, the tasks that answer their messages, and the stream of their events.

use std::time::Duration;

use axum::Json;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::{FromRequestParts as _, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use cloudx_core::Principal;
use cloudx_core::agent::{AgentEvent, Conversation, Task, TaskFilter, TaskStatus, TranscriptEntry};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_conversations, create_conversation))
        .routes(routes!(get_conversation))
        .routes(routes!(post_message))
        .routes(routes!(conversation_events))
        .routes(routes!(list_tasks))
        .routes(routes!(get_task))
        .routes(routes!(task_transcript))
        .routes(routes!(cancel_task))
        .routes(routes!(replay_task))
        .routes(routes!(llm_check))
}

/// A new conversation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewConversation {
    /// Its title (at most 200 characters; default: the start of its first message).
    #[serde(default)]
    title: Option<String>,
}

/// A message to the agent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMessage {
    /// The text (at most 64 KiB).
    text: String,
}

/// `actor`'s conversations about a project (any member), latest first.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/conversations", tag = "agent",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id")),
    responses(
        (status = 200, body = Vec<Conversation>),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_conversations(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
) -> Result<Json<Vec<Conversation>>, ApiError> {
    Ok(Json(state.cx.list_conversations(caller.principal(), project).await?))
}

/// Starts a conversation with the agent about a project (any member: the agent acts with the
/// caller's rights, so a viewer's agent only reads).
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/conversations", tag = "agent",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id")),
    request_body = NewConversation,
    responses(
        (status = 201, description = "Started", body = Conversation),
        (status = 400, description = "A bad field (named)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_conversation(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
    Json(new): Json<NewConversation>,
) -> Result<(StatusCode, Json<Conversation>), ApiError> {
    let conversation = state.cx.create_conversation(caller.principal(), project, new.title.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(conversation)))
}

/// A conversation: the caller's own (administrators may read every one).
#[utoipa::path(
    get, path = "/api/v1/conversations/{id}", tag = "agent",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The conversation's id")),
    responses(
        (status = 200, body = Conversation),
        (status = 404, description = "No such conversation for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_conversation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Conversation>, ApiError> {
    Ok(Json(state.cx.conversation(caller.principal(), id).await?))
}

/// Posts a message to one of the caller's conversations and starts the task that answers it
/// (a `codegen` job; the agent acts with the caller's rights on the project when it runs).
/// One task at a time per conversation. Audited.
#[utoipa::path(
    post, path = "/api/v1/conversations/{id}/messages", tag = "agent",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The conversation's id")),
    request_body = NewMessage,
    responses(
        (status = 202, description = "Accepted: the task, queued", body = Task),
        (status = 400, description = "An empty or oversized message (`text`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such conversation of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another task of the conversation is queued or running", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn post_message(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(message): Json<NewMessage>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let task = state.cx.post_message(caller.principal(), &caller.client(), id, &message.text).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// The longest a poll of a conversation's events may wait.
const MAX_WAIT: u64 = 30;

/// Which events to read, and how long to wait for them.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConversationEventsQuery {
    /// Only events after this number (default 0: from the first).
    #[serde(default)]
    after: i64,
    /// At most this many (default and most 1000).
    #[serde(default)]
    limit: Option<u32>,
    /// Seconds to wait for an event when none is there yet (a long poll; default 0, at most 30).
    #[serde(default)]
    wait: Option<u64>,
    /// For a WebSocket: the one-time ticket of `POST /api/v1/auth/ws-ticket`.
    #[serde(default)]
    ticket: Option<String>,
}

/// A page of a conversation's events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// The events, in order.
    pub events: Vec<AgentEvent>,
    /// The number to ask after next time (the last event's, else the `after` asked).
    pub next: i64,
}

/// A conversation's events (the user's messages, task status, model steps, text deltas,
/// retries, tool calls and results, file changes, answers) after `after`, in order; with
/// `wait`, the answer waits up to that many seconds for the first one.
///
/// With `Upgrade: websocket` (and `?ticket=` from `POST /api/v1/auth/ws-ticket` instead of a
/// bearer token), a stream instead: every event after `after` as one text message
/// `{seq, at, task, kind, data}`, live, for as long as the socket stays open. Reconnect with
/// `after` = the last `seq` received to miss nothing.
#[utoipa::path(
    get, path = "/api/v1/conversations/{id}/events", tag = "agent",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The conversation's id"), ConversationEventsQuery),
    responses(
        (status = 200, body = EventPage),
        (status = 101, description = "Switching to a WebSocket stream of the events"),
        (status = 403, description = "A WebSocket from another site's page (Origin)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such conversation for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn conversation_events(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(query): Query<ConversationEventsQuery>,
    request: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    let (mut parts, _) = request.into_parts();
    if !crate::ws::is_upgrade(&parts.headers) {
        let caller = Caller::from_request_parts(&mut parts, &state).await?;
        let limit = query.limit.unwrap_or(1000).clamp(1, 1000);
        // Shorter than the request's own time limit, so that a long poll answers before it.
        let wait = Duration::from_secs(query.wait.unwrap_or(0).min(MAX_WAIT))
            .min(state.cx.config().http.request_timeout.mul_f64(0.75));
        let mut events = if wait.is_zero() {
            state.cx.conversation_events(caller.principal(), id, query.after, limit).await?
        } else {
            state.cx.follow_conversation(caller.principal(), id, query.after).await?.next(wait).await?
        };
        events.truncate(limit as usize);
        let next = events.last().map_or(query.after, |e| e.seq);
        return Ok(Json(EventPage { events, next }).into_response());
    }
    let principal = crate::ws::admit(&state, &parts.headers, query.ticket.as_deref()).await?;
    // Checked before the upgrade, so that a conversation the caller may not see is a plain 404.
    let follower = state.cx.follow_conversation(&principal, id, query.after).await?;
    let (upgrade, connection) = crate::ws::accept(&mut parts, &state).await?;
    Ok(upgrade.on_upgrade(move |socket| stream_conversation(state, principal, id, follower, socket, connection)))
}

/// Streams a conversation's events until the client leaves, the user may no longer see the
/// conversation, or the server stops.
async fn stream_conversation(
    state: AppState,
    principal: Principal,
    id: Uuid,
    mut follower: cloudx_core::agent::EventFollower,
    mut socket: WebSocket,
    connection: Option<crate::ws::Connection>,
) {
    let mut watchdog = crate::ws::Watchdog::new(connection);
    loop {
        let check = || async {
            state.cx.auth().current(&principal).await?;
            state.cx.conversation(&principal, id).await.map(drop)
        };
        if !watchdog.keep(&mut socket, check).await {
            return;
        }
        // Dropping a wait cut short by the client loses nothing: the follower moves past
        // events only as it hands them out.
        let events = match watchdog.wait(&mut socket, follower.next(crate::ws::RECHECK)).await {
            crate::ws::Turn::Ready(Ok(events)) => events,
            crate::ws::Turn::Ready(Err(e)) => {
                tracing::warn!(error = %e, conversation = %id, "a conversation's event stream cannot read its events");
                crate::ws::close(&mut socket, crate::ws::code::ERROR, "cannot read the events").await;
                return;
            }
            crate::ws::Turn::Heard => continue,
            crate::ws::Turn::Stop => return,
        };
        for event in events {
            let Ok(text) = serde_json::to_string(&event) else { continue };
            if socket.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
    }
}

/// Which tasks to list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TasksQuery {
    /// Only those of this project.
    #[serde(default)]
    project: Option<Uuid>,
    /// Only those of this conversation.
    #[serde(default)]
    conversation: Option<Uuid>,
    /// Only those with this status: queued, running, succeeded, failed, cancelled.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    status: Option<TaskStatus>,
    /// At most this many (default 50, at most 500).
    #[serde(default)]
    limit: Option<u32>,
}

/// The caller's tasks, latest first.
#[utoipa::path(
    get, path = "/api/v1/tasks", tag = "agent",
    security(("bearer" = [])),
    params(TasksQuery),
    responses(
        (status = 200, body = Vec<Task>),
        (status = 404, description = "A conversation that is not the caller's", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<TasksQuery>,
) -> Result<Json<Vec<Task>>, ApiError> {
    let filter = TaskFilter {
        project: query.project,
        conversation: query.conversation,
        status: query.status,
        limit: query.limit,
    };
    Ok(Json(state.cx.list_tasks(caller.principal(), &filter).await?))
}

/// A task of one of the caller's conversations (administrators may read every one).
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}", tag = "agent",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, body = Task),
        (status = 404, description = "No such task for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_task(State(state): State<AppState>, caller: Caller, Path(id): Path<Uuid>) -> Result<Json<Task>, ApiError> {
    Ok(Json(state.cx.task(caller.principal(), id).await?))
}

/// Which transcript entries to read.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TranscriptQuery {
    /// Only entries after this number (default 0: from the first).
    #[serde(default)]
    after: i64,
    /// At most this many (default 1000, at most 10000).
    #[serde(default)]
    limit: Option<u32>,
}

/// A task's transcript: the model requests and answers, the tool calls and their results, in
/// order.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/transcript", tag = "agent",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The task's id"), TranscriptQuery),
    responses(
        (status = 200, body = Vec<TranscriptEntry>),
        (status = 404, description = "No such task for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn task_transcript(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(query): Query<TranscriptQuery>,
) -> Result<Json<Vec<TranscriptEntry>>, ApiError> {
    let limit = query.limit.unwrap_or(1000);
    Ok(Json(state.cx.transcript(caller.principal(), id, query.after, limit).await?))
}

/// Cancels a task: a queued one at once, a running one within seconds. A finished task is
/// answered as it is. Audited.
#[utoipa::path(
    post, path = "/api/v1/tasks/{id}/cancel", tag = "agent",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "Cancelled, or to be (a running task)", body = Task),
        (status = 404, description = "No such task for the caller", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn cancel_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(state.cx.cancel_task(caller.principal(), &caller.client(), id).await?))
}

/// Runs a finished task's tools again, in a new task of its conversation, against its
/// recorded model answers; the new task's `report` says which results came out differently.
/// Audited.
#[utoipa::path(
    post, path = "/api/v1/tasks/{id}/replay", tag = "agent",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 202, description = "Accepted: the replay task, queued", body = Task),
        (status = 400, description = "The task is itself a replay", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task, or another of its conversation, is still running", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn replay_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let task = state.cx.replay_task(caller.principal(), &caller.client(), id).await?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

/// Asks the configured model endpoint whether it answers, streams and calls tools: `{base_url,
/// model, ok, checks: [{name, ok, detail, elapsed_ms}]}` (the key is never shown).
#[utoipa::path(
    post, path = "/api/v1/llm/check", tag = "agent",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What the endpoint did", content_type = "application/json", body = Object),
        (status = 400, description = "The `[llm]` configuration cannot make a client", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn llm_check(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<cloudx_core::agent::LlmCheck>, ApiError> {
    Ok(Json(state.cx.llm_check(caller.principal()).await?))
}
