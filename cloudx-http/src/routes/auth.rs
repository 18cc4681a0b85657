//! `/api/v1/auth/*`: registration, sign-in, token refresh, sign-out, one's own account, the
//! password, and WebSocket tickets.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cloudx_core::Scopes;
use cloudx_core::auth::{NewUser, Tokens, User, WsTicket};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, CredentialClient};
use crate::error::{ApiError, Problem};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(ws_ticket))
}

/// A new account.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRequest {
    /// The email address (the sign-in name).
    email: String,
    /// At least `auth.password_min_length` characters, at most 1024 bytes, not a common password.
    password: String,
    /// The name shown to others.
    display_name: String,
    /// The one-time invite code (`cxi_...`), when registration needs one.
    #[serde(default)]
    invite: Option<String>,
}

/// Creates an account. The first account of an instance becomes its administrator; after that
/// `auth.registration` decides: `open`, `invite` (with a code from an administrator) or `closed`.
#[utoipa::path(
    post, path = "/api/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, body = User),
        (status = 400, description = "A bad email, name or password; the detail names the rule", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Registration is closed, or the invite code is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The email is taken", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn register(
    State(state): State<AppState>,
    CredentialClient(client): CredentialClient,
    Json(body): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let new = NewUser { email: body.email, password: body.password, display_name: body.display_name };
    let user = state.cx.auth().register(new, body.invite.as_deref(), &client).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Email and password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    email: String,
    password: String,
}

/// A new session: the account and its first tokens.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// The account signed in.
    pub user: User,
    /// Its first tokens.
    #[serde(flatten)]
    pub tokens: Tokens,
}

/// Signs in and opens a session. An unknown email and a wrong password get the same answer;
/// repeated failures for one email are delayed (`auth.login_delay_after`, `auth.login_delay_max`).
#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, description = "Wrong email or password", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts; `Retry-After` says when to try again", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn login(
    State(state): State<AppState>,
    CredentialClient(client): CredentialClient,
    Json(body): Json<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let (user, tokens) = state.cx.auth().login(&body.email, &body.password, &client).await?;
    Ok(Json(LoginResponse { user, tokens }))
}

/// A refresh token to exchange.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshRequest {
    /// The latest refresh token of the session (`cxr_...`); each is accepted once.
    refresh_token: String,
}

/// Exchanges a refresh token for new tokens. The token presented is spent: presenting it again
/// (after a short grace period for a lost reply) ends the whole session.
#[utoipa::path(
    post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, body = Tokens),
        (status = 401, description = "Unknown, spent or expired refresh token, or an ended session", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn refresh(
    State(state): State<AppState>,
    CredentialClient(client): CredentialClient,
    Json(body): Json<RefreshRequest>,
) -> Result<Json<Tokens>, ApiError> {
    Ok(Json(state.cx.auth().refresh(&body.refresh_token, &client).await?))
}

/// Ends the caller's session: its refresh token and access tokens stop working at once.
#[utoipa::path(
    post, path = "/api/v1/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 400, description = "Called with an API key, which has no session (revoke the key instead)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    state.cx.auth().logout(&caller.who, &caller.client()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account, with what the credential in use may do.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// The account.
    #[serde(flatten)]
    pub user: User,
    /// The scopes of the credential: all of them for a session, the key's for an API key.
    pub scopes: Scopes,
    /// The API key in use, if the caller used one.
    pub api_key_id: Option<uuid::Uuid>,
}

/// The caller's own account.
#[utoipa::path(
    get, path = "/api/v1/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Me),
    )
)]
async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<Me>, ApiError> {
    let user = state.cx.auth().me(caller.principal()).await?;
    let api_key_id = match caller.principal() {
        cloudx_core::Principal::User { api_key, .. } => *api_key,
        _ => None,
    };
    Ok(Json(Me { user, scopes: caller.principal().scopes(), api_key_id }))
}

/// The current password and the new one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// Changes the caller's password. Needs the current one and a signed-in session (not an API
/// key); every other session of the account ends.
#[utoipa::path(
    post, path = "/api/v1/auth/password", tag = "auth",
    security(("bearer" = [])),
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed; other sessions ended"),
        (status = 400, description = "The new password breaks the policy", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The current password is wrong, or called with an API key", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong passwords for this account; `Retry-After` says when to try again", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    // The password routes count as credential routes for the per-address limit too.
    state.limits.check_credentials(caller.ip)?;
    state.cx.auth().change_password(&caller.who, &body.current_password, &body.new_password, &caller.client()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a one-time ticket for opening a WebSocket (`?ticket=`), valid 30 seconds, acting as the
/// caller with the caller's scopes. Browsers cannot set headers on WebSockets; this is the one
/// credential ever accepted in a URL.
#[utoipa::path(
    post, path = "/api/v1/auth/ws-ticket", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, body = WsTicket),
    )
)]
async fn ws_ticket(State(state): State<AppState>, caller: Caller) -> Result<Json<WsTicket>, ApiError> {
    Ok(Json(state.cx.auth().issue_ws_ticket(&caller.who).await?))
}
