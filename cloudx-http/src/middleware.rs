//! The middleware stack, applied once around the whole router.
//!
//! The stack is a concrete tower service wrapped around the router (not `Router::layer`, which
//! wraps every route separately and boxes a service clone and a future per layer and request):
//! that keeps the per-request cost of the stack to a few allocations.

use std::any::Any;
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use cloudx_core::ErrorKind;
use cloudx_core::config::HttpConfig;
use futures_util::FutureExt as _;
use tower::util::{Either, future::EitherResponseFuture};
use tower::{BoxError, Layer as _, Service};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

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

/// The longest an upload may take in all (it also fails after `http.request_timeout` without data).
const UPLOAD_TIME: Duration = Duration::from_secs(24 * 3600);

type Stack = Edge<Router>;
type EdgeFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// The daemon as one tower service: the routes inside the middleware stack.
///
/// A request passes, outermost first: CORS (when origins are configured), [`Edge`] (request id,
/// log scope, metrics, body size limits, request timeout, a panic guard, problem documents,
/// security headers), then the router. The stack is concrete, not `Router::layer` (which wraps
/// every route separately and boxes a service clone and a future per layer and request): the
/// whole stack costs one boxed future per request.
#[derive(Clone)]
pub struct App(Either<Cors<Stack>, Stack>);

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App")
    }
}

impl App {
    /// Wraps `routes` (with their state applied) in the middleware stack configured by `http`.
    pub fn new(routes: Router, http: &HttpConfig) -> Self {
        let max_body = usize::try_from(http.max_body_size.as_u64()).unwrap_or(usize::MAX);
        let edge = Edge {
            inner: routes,
            limits: Limits {
                body: max_body as u64,
                extractors: DefaultBodyLimit::max(max_body),
                time: http.request_timeout,
            },
        };
        // CORS outermost, so that every answer, errors included, carries the headers a browser
        // needs to read it.
        Self(match cors(http) {
            Some(cors) => Either::Left(cors.layer(edge)),
            None => Either::Right(edge),
        })
    }
}

impl<B> Service<axum::http::Request<B>> for App
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EitherResponseFuture<tower_http::cors::ResponseFuture<EdgeFuture>, EdgeFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<axum::http::Request<B>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        self.0.call(request)
    }
}

/// What a handler that panicked answers: a 500 (made a problem document with the request id).
fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    // The payload is not logged: it may hold user data. The line carries the request id.
    tracing::error!("a handler panicked");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

/// The cross-cutting work every request gets, in one service (see `call` and [`answer`]).
#[derive(Clone)]
pub(crate) struct Edge<S> {
    inner: S,
    limits: Limits,
}

impl<S, B> Service<axum::http::Request<B>> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    /// The synchronous part of the edge: request id, metrics, declared body size, then the
    /// routes are called at once (this service was polled ready, so no clone of them is needed);
    /// [`answer`] waits for them.
    fn call(&mut self, request: axum::http::Request<B>) -> EdgeFuture {
        let mut request = request.map(Body::new);
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) if usable_request_id(id) => id.clone(),
            // Handlers learn the id from `logging::current_request_id`, not from the headers.
            _ => new_request_id(),
        };
        let metrics = RequestMetrics::start(request.method());
        let mut limits = self.limits;
        // A file upload streams to the object store: `storage.max_file_size` (checked by the
        // storage port, before reading when the length is declared) and an idle timeout apply
        // instead of the body size and request time limits.
        let upload = crate::routes::files::is_upload(request.method(), request.uri().path());
        if upload {
            limits.body = u64::MAX;
            limits.time = UPLOAD_TIME;
        }
        let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(length) = declared.filter(|length| *length > limits.body) {
            let refused = ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "the request body is {length} bytes; this server accepts at most {} (http.max_body_size)",
                    limits.body
                ),
            )
            .into_response();
            return Box::pin(answer(
                id,
                metrics,
                limits.time,
                futures_util::future::Either::<_, S::Future>::Left(ready(Ok(refused))),
            ));
        }
        if !upload {
            limits.extractors.apply(&mut request);
        }
        let routed = self.inner.call(request);
        Box::pin(answer(
            id,
            metrics,
            limits.time,
            futures_util::future::Either::<Ready<Result<Response, Infallible>>, _>::Right(routed),
        ))
    }
}

/// The asynchronous part of the edge, every line it logs tagged with the request id:
///
/// - the request is given `http.request_timeout` from its start, then dropped and answered
///   with 503 (code `request_timeout`);
/// - a handler that panics is answered with 500, not a reset connection;
/// - error responses become problem documents with the request id;
/// - count and latency are recorded by route template;
/// - security headers and `x-request-id` are set on the response.
async fn answer<F>(id: HeaderValue, metrics: RequestMetrics, limit: Duration, routed: F) -> Result<Response, Infallible>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    let mut response = crate::logging::scope(id.clone(), async {
        let deadline = metrics.started() + limit;
        let mut response = match Deadline::new(AssertUnwindSafe(routed).catch_unwind(), deadline).await {
            Some(Ok(Ok(response))) => response,
            Some(Err(panic)) => panic_response(panic),
            // Not 408, which tells the client that *its* request arrived too slowly and invites
            // a retry: the server gave up on a request it had received.
            None => request_timeout(limit),
        };
        let status = response.status();
        if status.is_client_error() || status.is_server_error() {
            // Boxed: the rare path keeps its state out of every request's future.
            response = Box::pin(crate::error::into_problem(response, &id)).await;
        }
        metrics.finish(&response);
        tracing::debug!(status = status.as_u16(), "answered");
        response
    })
    .await;
    let headers = response.headers_mut();
    // Room for what follows at once, rather than growing the map (and rehashing) on the way.
    headers.reserve(SECURITY_HEADERS.len() + 1);
    for (name, value) in SECURITY_HEADERS {
        headers.entry(name).or_insert(HeaderValue::from_static(value));
    }
    headers.insert(REQUEST_ID, id);
    Ok(response)
}

pin_project_lite::pin_project! {
    /// `inner`, or `None` once `deadline` has passed. Unlike `tokio::time::timeout`, it makes
    /// a timer only when `inner` has to wait, so a request answered at once pays for none.
    struct Deadline<F> {
        #[pin]
        inner: F,
        deadline: Instant,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F> Deadline<F> {
    fn new(inner: F, deadline: Instant) -> Self {
        Self { inner, deadline, timer: None }
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.inner.poll(cx) {
            return Poll::Ready(Some(output));
        }
        let deadline = *this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(deadline))));
        std::task::ready!(timer.as_mut().poll(cx));
        Poll::Ready(None)
    }
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

/// The configured largest request body (bytes, for declared lengths and for axum's extractors)
/// and longest request.
#[derive(Debug, Clone, Copy)]
struct Limits {
    body: u64,
    extractors: DefaultBodyLimit,
    time: Duration,
}

fn usable_request_id(id: &HeaderValue) -> bool {
    !id.is_empty() && id.len() <= 128 && id.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// A fresh request id shaped as a UUID (v4 layout): a random per-process seed mixed with a
/// per-thread counter. Unique without a system call per request (`Uuid::new_v4` costs one
/// `getrandom`) and without a counter shared between threads.
fn new_request_id() -> HeaderValue {
    static SEED: LazyLock<u64> = LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
    static THREADS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        // Each thread counts in its own range of 2^40 ids.
        static NEXT: Cell<u64> = Cell::new(THREADS.fetch_add(1, Ordering::Relaxed) << 40);
    }
    let n = NEXT.with(|next| {
        let n = next.get();
        next.set(n.wrapping_add(1));
        n
    });
    // A counter that never repeats, mixed so that consecutive ids do not look alike. The UUID
    // version and variant take 6 of the 128 bits; two ids sharing the other 122 are as unlikely
    // as for random v4 UUIDs.
    let first = splitmix64(*SEED ^ n);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&first.to_le_bytes());
    bytes[8..].copy_from_slice(&splitmix64(first).to_le_bytes());
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut buf);
    // Shared from the start, so the clones for the log scope and the response cost no copy.
    HeaderValue::from_maybe_shared(Bytes::from_owner(buf)).expect("a UUID is a valid header value")
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
        let app = App::new(routes, &http);
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
        let app = App::new(routes, &HttpConfig::default());
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
