//! `/api/v1/api-keys`: the caller's API keys, for scripts, the CLI and notebooks.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use cloudx_core::Scopes;
use cloudx_core::auth::{ApiKey, CreatedApiKey, NewApiKey};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_api_keys, create_api_key)).routes(routes!(revoke_api_key))
}

/// The caller's API keys, newest first (revoked ones included), never with their secrets.
#[utoipa::path(
    get, path = "/api/v1/api-keys", tag = "api-keys",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<ApiKey>),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_api_keys(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<ApiKey>>, ApiError> {
    Ok(Json(state.cx.auth().list_api_keys(caller.principal()).await?))
}

/// A new API key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateApiKey {
    /// A name to recognise it by (1 to 100 characters).
    name: String,
    /// What it may do; `admin` only for an administrator.
    scopes: Scopes,
    /// When it stops working (RFC 3339); never unless given.
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

/// Creates an API key for the caller. The secret is in this answer only. Keys are made from a
/// signed-in session, never with another key.
#[utoipa::path(
    post, path = "/api/v1/api-keys", tag = "api-keys",
    security(("bearer" = [])),
    request_body = CreateApiKey,
    responses(
        (status = 201, body = CreatedApiKey),
        (status = 400, description = "A bad name or scope, or an expiry in the past", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Called with an API key, or `admin` asked by a non-administrator", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The account holds 100 keys already", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let new = NewApiKey { name: body.name, scopes: body.scopes, expires_at: body.expires_at };
    let created = state.cx.auth().create_api_key(caller.principal(), new, &caller.client()).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Revokes one of the caller's keys (an administrator: anyone's); it stops working at once on
/// every node. Another user's key answers 404.
#[utoipa::path(
    delete, path = "/api/v1/api-keys/{id}", tag = "api-keys",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The key's id")),
    responses(
        (status = 200, description = "Revoked (as it is now listed)", body = ApiKey),
        (status = 403, description = "An API key without the `write` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key of the caller's", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn revoke_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<ApiKey>, ApiError> {
    Ok(Json(state.cx.auth().revoke_api_key(caller.principal(), id, &caller.client()).await?))
}
