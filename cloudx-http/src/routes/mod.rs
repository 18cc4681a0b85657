//! The routes, one module per area, assembled with their OpenAPI description.

pub mod agent;
pub mod api_keys;
pub mod auth;
pub mod files;
pub mod jobs;
pub mod ops;
pub mod projects;
pub mod sandbox;
pub mod users;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// The OpenAPI document's fixed parts; paths come from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "cloudx",
        description = "The cloudx REST API: accounts, projects and files, jobs, sandboxed execution and the coding agent."
    ),
    components(schemas(crate::error::Problem)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// The `bearer` security scheme: an access token (JWT) from `/api/v1/auth/login` or an API key
/// (`cxk_...`), in the `Authorization` header only.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "An access token from /api/v1/auth/login or /api/v1/auth/refresh, or an API key (cxk_...). \
             Only in the Authorization header, never in a query string."
                .into(),
        );
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every route with its OpenAPI description.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(ops::router())
        .merge(auth::router())
        .merge(users::router())
        .merge(api_keys::router())
        .merge(projects::router())
        .merge(files::router())
        .merge(sandbox::router())
        .merge(jobs::router())
        .merge(agent::router())
}
