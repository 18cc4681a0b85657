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
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
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

/// Wraps the routes in the stack. A request passes, outermost first: CORS, [`edge`] (request id,
/// log span, metrics, declared body size, request timeout, problem documents, security headers),
/// a panic guard, and the body size limit of axum's extractors.
pub(crate) fn apply(routes: Router, http: &HttpConfig) -> Router {
    let max_body = usize::try_from(http.max_body_size.as_u64()).unwrap_or(usize::MAX);
    let stack = ServiceBuilder::new()
        // Outermost, so that every answer, errors included, carries the CORS headers a browser
        // needs to read it.
        .option_layer(cors(http))
        .layer(axum::middleware::from_fn_with_state(Limits { body: max_body as u64, time: http.request_timeout }, edge))
        // A handler that panics gets a 500 problem document with its request id, not a reset.
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            tracing::error!("a handler panicked");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }))
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
/// - A request taking longer than `http.request_timeout` is dropped and answered with 503
///   (code `request_timeout`).
/// - Error responses become problem documents with the request id.
/// - Security headers.
async fn edge(State(limits): State<Limits>, mut request: Request, next: Next) -> Response {
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
        Some(length) if length > limits.body => ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the request body is {length} bytes; this server accepts at most {} (http.max_body_size)",
                limits.body
            ),
        )
        .into_response(),
        // `timeout` arms its timer only if the request is not answered on the first poll.
        _ => match tokio::time::timeout(limits.time, next.run(request).instrument(span.clone())).await {
            Ok(response) => response,
            // Not 408, which tells the client that *its* request arrived too slowly and invites
            // a retry: the server gave up on a request it had received.
            Err(_) => request_timeout(limits.time),
        },
    };
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        response = crate::error::into_problem(response, &id).await;
    }
    metrics.finish(&response);
    span.in_scope(|| tracing::debug!(status = status.as_u16(), "answered"));
    let headers = response.headers_mut();
    // Room for what follows at once, rather than growing the map (and rehashing) on the way.
    headers.reserve(SECURITY_HEADERS.len() + 1);
    for (name, value) in SECURITY_HEADERS {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    headers.insert(REQUEST_ID, id);
    response
}

fn request_timeout(limit: Duration) -> Response {
    let mut response = ApiError::new(
        ErrorKind::Unavailable,
        format!("the request took longer than this server allows ({}; http.request_timeout)", humantime_secs(limit)),
    )
    .with_code("request_timeout")
    .into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn humantime_secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64()).replace(".000s", "s")
}

/// The configured largest request body (bytes) and longest request.
#[derive(Debug, Clone, Copy)]
struct Limits {
    body: u64,
    time: Duration,
}

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

    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn slow_requests_get_503_as_a_problem_document() {
        let mut http = HttpConfig::default();
        http.request_timeout = Duration::from_millis(50);
        let routes = Router::new().route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(5)).await }));
        let app = apply(routes, &http);
        let response = app.oneshot(axum::http::Request::get("/slow").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::CONNECTION], "close");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(response.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "request_timeout");
        assert_eq!(problem["request_id"].as_str().map(str::len), Some(36));
    }

    #[tokio::test]
    async fn a_panicking_handler_gets_a_500_problem_document() {
        let routes = Router::new().route(
            "/boom",
            get(|| async {
                panic!("boom");
                #[allow(unreachable_code)]
                ()
            }),
        );
        let app = apply(routes, &HttpConfig::default());
        let response = app.oneshot(axum::http::Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "internal");
        assert!(!problem["detail"].as_str().unwrap().contains("boom"), "the panic message is not sent");
    }

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
