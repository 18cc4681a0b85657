//! Administration: `/api/v1/users`, `/api/v1/invites` and `/api/v1/audit` (administrators
//! only; with an API key, one that has the `admin` scope).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use cloudx_core::Role;
use cloudx_core::auth::audit::{Entry, Verification};
use cloudx_core::auth::{CreatedInvite, Invite, NewUser, User};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, add_user))
        .routes(routes!(update_user, delete_user))
        .routes(routes!(list_invites, create_invite))
        .routes(routes!(revoke_invite))
        .routes(routes!(audit_log))
        .routes(routes!(verify_audit_log))
}

/// Every account (administrators only).
#[utoipa::path(
    get, path = "/api/v1/users", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<User>),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_users(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<User>>, ApiError> {
    Ok(Json(state.cx.auth().list_users(caller.principal()).await?))
}

/// An account made by an administrator.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddUser {
    email: String,
    password: String,
    display_name: String,
    /// `member` unless given.
    #[serde(default)]
    role: Option<Role>,
}

/// Creates an account directly, whatever `auth.registration` says (administrators only).
#[utoipa::path(
    post, path = "/api/v1/users", tag = "users",
    security(("bearer" = [])),
    request_body = AddUser,
    responses(
        (status = 201, body = User),
        (status = 400, description = "A bad email, name or password", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The email is taken", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn add_user(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<AddUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let new = NewUser { email: body.email, password: body.password, display_name: body.display_name };
    let role = body.role.unwrap_or(Role::Member);
    let user = state.cx.auth().add_user(caller.principal(), new, role, &caller.client()).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Changes to an account; absent members stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateUser {
    /// The new global role. The account's sessions end, so no token carries the old role.
    #[serde(default)]
    role: Option<Role>,
    /// Disable (its sessions and keys stop working at once) or enable the account.
    #[serde(default)]
    disabled: Option<bool>,
}

/// Sets an account's role or disables/enables it (administrators only).
#[utoipa::path(
    patch, path = "/api/v1/users/{id}", tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account id")),
    request_body = UpdateUser,
    responses(
        (status = 200, body = User),
        (status = 400, description = "Nothing to change", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It would leave no enabled administrator, or disable oneself", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    let user = state.cx.auth().update_user(caller.principal(), id, body.role, body.disabled, &caller.client()).await?;
    Ok(Json(user))
}

/// Deletes an account and everything it owns (administrators only; not one's own).
#[utoipa::path(
    delete, path = "/api/v1/users/{id}", tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The account id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "One's own account, or the last administrator", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.cx.auth().delete_user(caller.principal(), id, &caller.client()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every invite, newest first (administrators only).
#[utoipa::path(
    get, path = "/api/v1/invites", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<Invite>),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_invites(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<Invite>>, ApiError> {
    Ok(Json(state.cx.auth().list_invites(caller.principal()).await?))
}

/// A new invite.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewInvite {
    /// The role of the account it creates; `member` unless given.
    #[serde(default)]
    role: Option<Role>,
    /// Seconds it stays valid: 60 to 7,776,000 (90 days); 7 days unless given.
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Creates a one-time invite code (administrators only). The code is shown only in this answer.
#[utoipa::path(
    post, path = "/api/v1/invites", tag = "users",
    security(("bearer" = [])),
    request_body = NewInvite,
    responses(
        (status = 201, body = CreatedInvite),
        (status = 400, description = "A validity outside 1 minute to 90 days", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_invite(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewInvite>,
) -> Result<(StatusCode, Json<CreatedInvite>), ApiError> {
    let ttl = body.expires_in.map(std::time::Duration::from_secs);
    let role = body.role.unwrap_or(Role::Member);
    let invite = state.cx.auth().create_invite(caller.principal(), role, ttl, &caller.client()).await?;
    Ok((StatusCode::CREATED, Json(invite)))
}

/// Withdraws an unused invite (administrators only): its code stops working at once.
#[utoipa::path(
    delete, path = "/api/v1/invites/{id}", tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The invite's id")),
    responses(
        (status = 200, description = "Withdrawn (as it is now listed, expiring now)", body = Invite),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such invite", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The invite was already used", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn revoke_invite(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Invite>, ApiError> {
    Ok(Json(state.cx.auth().revoke_invite(caller.principal(), id, &caller.client()).await?))
}

/// A page of the audit log.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Only entries before this sequence number (for the next page).
    before: Option<i64>,
    /// At most this many entries: 1 to 1000, default 100.
    limit: Option<u32>,
}

/// The audit log, newest first (administrators only).
#[utoipa::path(
    get, path = "/api/v1/audit", tag = "audit",
    security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, body = Vec<Entry>),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn audit_log(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<Entry>>, ApiError> {
    Ok(Json(state.cx.auth().audit_log(caller.principal(), query.before, query.limit.unwrap_or(100)).await?))
}

/// Checks the audit log's hash chain (administrators only): `first_bad` names the first row
/// that was edited, inserted or follows a deleted one.
#[utoipa::path(
    get, path = "/api/v1/audit/verify", tag = "audit",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Verification),
        (status = 403, description = "Not an administrator", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn verify_audit_log(State(state): State<AppState>, caller: Caller) -> Result<Json<Verification>, ApiError> {
    Ok(Json(state.cx.auth().verify_audit_log(caller.principal()).await?))
}
