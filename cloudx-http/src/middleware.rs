//! The middleware stack every request passes through, outermost first.

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use cloudx_core::config::HttpConfig;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps the router in the stack. Layers added later run earlier, so read this bottom-up:
/// a request gets its id, is traced and counted, checked by CORS, has its error responses turned
/// into problem documents, and is timed and size-limited; every response gets the security headers.
pub(crate) fn apply(router: Router<AppState>, http: &HttpConfig) -> Router<AppState> {
    let max_body = usize::try_from(http.max_body_size.as_u64()).unwrap_or(usize::MAX);
    let mut router = router
        // axum's extractors have a 2 MB limit of their own: make it the configured one.
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, http.request_timeout))
        .layer(axum::middleware::from_fn(crate::error::problem_details));
    if let Some(cors) = cors(http) {
        router = router.layer(cors);
    }
    router
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(security_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(security_header(header::X_FRAME_OPTIONS, "DENY"))
        .layer(security_header(header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'"))
        .layer(security_header(header::REFERRER_POLICY, "no-referrer"))
        .layer(security_header(header::CACHE_CONTROL, "no-store"))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            // The path only: query strings may carry one-time tickets.
            tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path())
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unusable_request_id))
}

/// A caller's `x-request-id` is kept (to join logs across a proxy) only when it is short and
/// plain; otherwise it is replaced by a fresh one, so logs never carry arbitrary client text.
async fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = request.headers().get(&REQUEST_ID).is_none_or(|v| {
        v.len() <= 128 && !v.is_empty() && v.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    });
    if !usable {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// A header set on every response that does not set it itself.
fn security_header(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}

/// The CORS policy from configuration; none when no origin is allowed.
fn cors(http: &HttpConfig) -> Option<CorsLayer> {
    if http.cors_origins.is_empty() {
        return None;
    }
    let origins = if http.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Validated at load time: every entry is an origin.
        AllowOrigin::list(http.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_credentials(http.cors_allow_credentials)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                header::IF_NONE_MATCH,
                header::RANGE,
                REQUEST_ID,
            ])
            .expose_headers([
                header::ETAG,
                header::CONTENT_DISPOSITION,
                header::RETRY_AFTER,
                header::LOCATION,
                REQUEST_ID,
            ])
            .max_age(Duration::from_secs(3600)),
    )
}
