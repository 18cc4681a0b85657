//! Operational routes at the root: liveness, readiness, metrics.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use cloudx_core::ErrorKind;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, Problem};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics)).routes(routes!(jwks))
}

/// The answer of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    status: &'static str,
    /// The running version.
    version: &'static str,
}

/// Liveness: answers while the process can serve requests; touches no dependency.
///
/// The answer never changes, so it is serialised once: probes call this all day long.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
async fn healthz() -> impl IntoResponse {
    static BODY: std::sync::LazyLock<axum::body::Bytes> = std::sync::LazyLock::new(|| {
        serde_json::to_vec(&Health { status: "ok", version: cloudx_core::VERSION }).unwrap_or_default().into()
    });
    ([(header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"))], BODY.clone())
}

/// The answer of `/readyz` when every check passed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    status: &'static str,
    /// The id of the instance: every node on one database reports the same.
    instance_id: String,
    /// One entry per dependency.
    #[schema(value_type = Vec<Object>)]
    checks: Vec<cloudx_core::Check>,
}

/// Readiness: the database and the object store answer.
#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, body = Ready),
        (status = 503, description = "A dependency is unreachable; `checks` says which", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let readiness = state.cx.readiness().await;
    if readiness.is_ready() {
        return Ok(Json(Ready {
            status: "ready",
            instance_id: state.cx.instance_id().to_string(),
            checks: readiness.checks,
        }));
    }
    let failed: Vec<String> =
        readiness.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    let checks = serde_json::to_value(&readiness.checks).unwrap_or_default();
    Err(ApiError::new(ErrorKind::Unavailable, format!("not ready: {}", failed.join("; ")))
        .with_member("checks", checks))
}

/// Prometheus metrics in the text exposition format: this process's (HTTP, jobs its workers
/// ran, the process) and the whole queue's (depth, workers; read from the database at most once
/// a second, left out when it does not answer).
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    metrics_text(&state.metrics, &state.queue_gauges).await
}

/// The answer of `/metrics`, for the daemon and for a worker's metrics listener.
pub(crate) async fn metrics_text(
    metrics: &crate::metrics::Metrics,
    queue: &crate::metrics::QueueGauges,
) -> impl IntoResponse + use<> {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render_with_queue(queue).await)
}

/// The public keys that check this instance's access tokens (RFC 7517), for other services that
/// accept cloudx tokens: the Ed25519 key with `auth.jwt_algorithm = "EdDSA"`; an empty set with
/// HS256, whose shared secret is never published.
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "ops",
    responses((status = 200, description = "A JWK set", content_type = "application/json", body = Object))
)]
async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(state.cx.auth().jwks()))
}
