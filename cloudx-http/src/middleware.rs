//! The middleware stack, applied once around the whole router.
//!
//! The stack is a concrete tower service wrapped around the router (not `Router::layer`, which
//! wraps every route separately and boxes a service clone and a future per layer and request):
//! that keeps the per-request cost of the stack to a few allocations.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use cloudx_core::ErrorKind;
use cloudx_core::config::HttpConfig;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument as _;

use crate::error::ApiError;
use crate::metrics::RequestMetrics;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers set on every response that does not set them itself.
const SECURITY_HEADERS: [(HeaderName, &str); 5] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'"),
    (header::REFERRER_POLICY, "no-referrer"),
    // API answers are per user and per moment: never cache them.
    (header::CACHE_CONTROL, "no-store"),
];

/// Wraps the routes in the stack. A request passes, outermost first: [`edge`] (request id, log
/// span, metrics, declared body size, problem documents, security headers), CORS, the request
/// timeout, and the body size limit of axum's extractors.
pub(crate) fn apply(routes: Router, http: &HttpConfig) -> Router {
    let max_body = usize::try_from(http.max_body_size.as_u64()).unwrap_or(usize::MAX);
    let stack = ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(BodyLimit(max_body as u64), edge))
        .option_layer(cors(http))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, http.request_timeout))
        // Bodies being read: axum's extractors stop at the limit (413).
        .layer(DefaultBodyLimit::max(max_body))
        .service(routes);
    Router::new().fallback_service(stack)
}

/// The cross-cutting work every request gets, in one middleware.
///
/// - A request id: the caller's `x-request-id` when it is short and plain (to join logs across
///   a proxy), a fresh one otherwise; returned in the response and carried by the log span,
///   so every log line of the request has it.
/// - Metrics: in flight, count and latency by route template.
/// - A body declared (`Content-Length`) larger than `http.max_body_size` is refused with 413
///   before anything reads it.
/// - Error responses become problem documents with the request id.
/// - Security headers.
async fn edge(State(limit): State<BodyLimit>, mut request: Request, next: Next) -> Response {
    let id = match request.headers().get(&REQUEST_ID) {
        Some(id) if usable_request_id(id) => id.clone(),
        _ => {
            let id = new_request_id();
            request.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    // The path only: query strings may carry one-time tickets.
    let span = tracing::info_span!(
        "request",
        request_id = id.to_str().unwrap_or("-"),
        method = %request.method(),
        path = request.uri().path()
    );
    let metrics = RequestMetrics::start(request.method());
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut response = match declared {
        Some(length) if length > limit.0 => ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("the request body is {length} bytes; this server accepts at most {} (http.max_body_size)", limit.0),
        )
        .into_response(),
        _ => next.run(request).instrument(span.clone()).await,
    };
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        response = crate::error::into_problem(response, &id).await;
    }
    metrics.finish(&response);
    span.in_scope(|| tracing::debug!(status = status.as_u16(), "answered"));
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    headers.insert(REQUEST_ID, id);
    response
}

/// The configured largest request body, in bytes.
#[derive(Debug, Clone, Copy)]
struct BodyLimit(u64);

fn usable_request_id(id: &HeaderValue) -> bool {
    !id.is_empty() && id.len() <= 128 && id.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// A fresh request id shaped as a UUID (v4 layout): a random per-process seed mixed with a
/// counter. Unique without a system call per request (`Uuid::new_v4` costs one `getrandom`).
fn new_request_id() -> HeaderValue {
    static SEED: LazyLock<u64> = LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&SEED.to_le_bytes());
    bytes[8..].copy_from_slice(&splitmix64(*SEED ^ n).to_le_bytes());
    // The counter itself keeps ids unique; the mix only keeps them from looking sequential.
    bytes[..8].iter_mut().zip(n.to_le_bytes()).for_each(|(b, c)| *b ^= c);
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(uuid.hyphenated().encode_lower(&mut buf)).expect("a UUID is a valid header value")
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn request_ids_are_unique_uuids() {
        let ids: HashSet<_> = (0..10_000).map(|_| new_request_id().to_str().unwrap().to_owned()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version_num(), 4);
        }
    }
}
