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
mod ws;

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

/// `/metrics` alone, for a process that runs workers but no daemon (`cloudx worker
/// --metrics-bind`): the same text as the daemon's (this process's job metrics, the queue's
/// gauges, the process's), behind the same middleware; serve it with [`Server`].
pub fn metrics_app(queue: cloudx_core::queue::Queue, http: &cloudx_core::config::HttpConfig) -> App {
    let recorder = metrics::Metrics::global();
    let gauges = std::sync::Arc::new(metrics::QueueGauges::new(queue));
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let (recorder, gauges) = (recorder.clone(), gauges.clone());
                async move { routes::ops::metrics_text(&recorder, &gauges).await }
            }),
        )
        .route_layer(metrics::LabelRoute)
        .fallback(fallback);
    App::new(router, http)
}

/// Every route of the API with its OpenAPI description (for tools and tests).
pub fn openapi() -> OpenApi {
    openapi_document(routes::api().split_for_parts().1)
}

fn openapi_document(mut doc: OpenApi) -> OpenApi {
    doc.info.version = cloudx_core::VERSION.to_owned();
    // axum's catch-all segments (`{*path}`, a path with slashes) are plain parameters in OpenAPI.
    doc.paths.paths =
        std::mem::take(&mut doc.paths.paths).into_iter().map(|(k, v)| (k.replace("{*", "{"), v)).collect();
    add_common_responses(&mut doc);
    doc
}

/// The answers the extractors give rather than the handlers, documented once here: 401 on
/// every operation that needs a credential, 429 on every API operation (the rate limits).
fn add_common_responses(doc: &mut OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let problem = |description: &str| {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
        ResponseBuilder::new().description(description).content(error::PROBLEM_JSON, content).build()
    };
    for (path, item) in &mut doc.paths.paths {
        let api = path.starts_with("/api/");
        let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
        for operation in operations.into_iter().flatten() {
            let responses = &mut operation.responses.responses;
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                responses
                    .entry("401".into())
                    .or_insert_with(|| problem("No credential, or one that is malformed, expired or revoked").into());
            }
            if api {
                responses.entry("429".into()).or_insert_with(|| {
                    problem("Too many requests (http.rate_limit_*); `Retry-After` says when to try again").into()
                });
            }
        }
    }
}

async fn fallback() -> error::ApiError {
    error::ApiError::new(
        cloudx_core::ErrorKind::NotFound,
        "no such route; the API is described at /api/v1/openapi.json",
    )
}
