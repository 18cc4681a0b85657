//! The routes, one module per area, assembled with their OpenAPI description.

pub mod ops;

use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// The OpenAPI document's fixed parts; paths come from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "cloudx",
        description = "The cloudx REST API: accounts, projects and files, jobs, sandboxed execution and the coding agent."
    ),
    components(schemas(crate::error::Problem))
)]
struct ApiDoc;

/// Every route with its OpenAPI description.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(ops::router())
}
