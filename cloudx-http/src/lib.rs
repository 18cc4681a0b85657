//! cloudx-http: the HTTP daemon of cloudx.
//!
//! [`app`] builds the daemon as one tower service, [`App`] (handy for `oneshot` tests);
//! [`Server`] serves it on a socket with the protections axum's own `serve` lacks: a header-read timeout, a connection
//! cap, request-head size limits and a graceful shutdown that waits for in-flight requests.

pub mod auth;
#[cfg(feature = "client")]
pub mod client;
pub mod error;
pub mod logging;
pub mod metrics;
mod middleware;
pub mod routes;
mod server;
pub mod state;

use axum::Router;
use axum::routing::get;
use utoipa::openapi::OpenApi;

pub use crate::middleware::App;
pub use crate::server::{Server, shutdown_signal};
pub use crate::state::AppState;

/// The whole daemon: routes, OpenAPI document and every middleware.
pub fn app(state: AppState) -> App {
    let http = state.cx.config().http.clone();
    App::new(router(state), &http)
}

/// The daemon's routes and OpenAPI document, without the middleware stack (see [`App::new`]).
pub fn router(state: AppState) -> Router {
    let (router, openapi) = routes::api().split_for_parts();
    let openapi = openapi_document(openapi);
    router
        .route("/api/v1/openapi.json", get(move || std::future::ready(axum::Json(openapi.clone()))))
        .route_layer(metrics::LabelRoute)
        .fallback(fallback)
        .with_state(state)
}

/// Every route of the API with its OpenAPI description (for tools and tests).
pub fn openapi() -> OpenApi {
    openapi_document(routes::api().split_for_parts().1)
}

fn openapi_document(mut doc: OpenApi) -> OpenApi {
    doc.info.version = cloudx_core::VERSION.to_owned();
    doc
}

async fn fallback() -> error::ApiError {
    error::ApiError::new(
        cloudx_core::ErrorKind::NotFound,
        "no such route; the API is described at /api/v1/openapi.json",
    )
}
