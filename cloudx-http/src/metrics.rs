//! Prometheus metrics: the process-wide recorder, the HTTP middleware and the `/metrics` text.
//!
//! Metrics are recorded through the `metrics` facade, so cloudx-core can emit its own (queue
//! depth, job durations) without knowing about Prometheus.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rustc_hash::FxHashMap;

/// Latency buckets (seconds) for request durations: 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The Prometheus recorder, installed once per process (every `app` in a process shares it).
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    process: &'static metrics_process::Collector,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// The process-wide recorder, installed on first use.
    pub fn global() -> Self {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                    .expect("static, non-empty buckets")
                    .build_recorder();
                let handle = recorder.handle();
                // Histogram samples are buffered until "upkeep" folds them in; without a scrape
                // they would pile up, so fold them in every few seconds.
                let upkeep = handle.clone();
                let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms are folded in at each scrape only");
                }
                if metrics::set_global_recorder(recorder).is_err() {
                    tracing::warn!(
                        "a metrics recorder was already installed; /metrics shows only what reaches this one"
                    );
                }
                let process: &'static metrics_process::Collector = Box::leak(Box::default());
                process.describe();
                metrics::describe_counter!(
                    "http_requests_total",
                    "HTTP requests answered, by method, route and status"
                );
                metrics::describe_histogram!(
                    "http_request_duration_seconds",
                    metrics::Unit::Seconds,
                    "Time to answer HTTP requests, by method, route and status"
                );
                metrics::describe_gauge!("http_requests_in_flight", "HTTP requests being answered now");
                metrics::describe_gauge!("cloudx_build_info", "Always 1; the labels say which build is running");
                metrics::gauge!("cloudx_build_info", "version" => cloudx_core::VERSION).set(1.0);
                Metrics { handle, process }
            })
            .clone()
    }

    /// The Prometheus text exposition of every metric, process metrics refreshed.
    pub fn render(&self) -> String {
        self.process.collect();
        #[allow(clippy::cast_precision_loss)] // far below 2^53
        metrics::gauge!("http_requests_in_flight").set(in_flight() as f64);
        self.handle.render()
    }
}

/// The route template a request matched, carried from the router to the outer middleware.
#[derive(Clone, Copy)]
struct RouteLabel(&'static str);

/// A route layer that records which route template matched, for the metrics of the edge.
///
/// Hand-written rather than `axum::middleware::from_fn`, which clones and boxes the route and
/// boxes a future per request.
#[derive(Debug, Clone, Copy)]
pub struct LabelRoute;

impl<S> tower::Layer<S> for LabelRoute {
    type Service = LabelRouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LabelRouteService { inner }
    }
}

/// The service of [`LabelRoute`].
#[derive(Debug, Clone)]
pub struct LabelRouteService<S> {
    inner: S,
}

impl<S> tower::Service<Request> for LabelRouteService<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = LabelRouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().map(|m| intern(m.as_str()));
        LabelRouteFuture { inner: self.inner.call(request), route }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`LabelRouteService`].
    pub struct LabelRouteFuture<F> {
        #[pin]
        inner: F,
        route: Option<&'static str>,
    }
}

impl<F, E> Future for LabelRouteFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(route) = *this.route {
            response.extensions_mut().insert(RouteLabel(route));
        }
        Poll::Ready(Ok(response))
    }
}

/// The route templates seen so far. They come from the router, so the set is small and fixed:
/// keeping each one for the life of the process costs a few bytes and saves an allocation per
/// request.
fn intern(route: &str) -> &'static str {
    thread_local! {
        // By the address of the router's own copy of the template (the same for every request
        // to a route), checked against the text in case a dropped router's memory was reused.
        static SEEN: RefCell<FxHashMap<usize, &'static str>> = RefCell::default();
    }
    let key = route.as_ptr() as usize;
    if let Some(known) = SEEN.with_borrow(|seen| seen.get(&key).copied()).filter(|known| *known == route) {
        return known;
    }
    let interned = intern_shared(route);
    SEEN.with_borrow_mut(|seen| seen.insert(key, interned));
    interned
}

fn intern_shared(route: &str) -> &'static str {
    static ROUTES: LazyLock<RwLock<HashSet<&'static str>>> = LazyLock::new(Default::default);
    if let Some(known) = ROUTES.read().unwrap_or_else(PoisonError::into_inner).get(route) {
        return known;
    }
    let mut routes = ROUTES.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = routes.get(route) {
        return known;
    }
    let leaked: &'static str = Box::leak(route.into());
    routes.insert(leaked);
    leaked
}

/// The handles of one series: requests counted and their latencies.
type Series = (metrics::Counter, metrics::Histogram);

/// A series by its labels; the strings are static and unique per text (method literals and
/// interned routes), so their addresses identify them and hashing needs no string.
#[derive(PartialEq, Eq, Hash)]
struct SeriesKey {
    method: usize,
    route: usize,
    status: u16,
}

thread_local! {
    /// Each thread's handles by (method, route, status), so a request costs no registry lookup
    /// (which would build and hash a key with three labels). Handles share the registry's
    /// atomics, so the per-thread copies all count into one series.
    static SERIES: RefCell<FxHashMap<SeriesKey, Series>> = RefCell::default();
}

/// Requests being answered now, counted per thread so that threads do not contend for one
/// atomic: a request may start on one thread and end on another, so a thread's count can be
/// negative, but the sum over threads is the number in flight. `/metrics` reports the sum.
static IN_FLIGHT: Mutex<Vec<Arc<AtomicI64>>> = Mutex::new(Vec::new());

thread_local! {
    static IN_FLIGHT_HERE: Arc<AtomicI64> = {
        let here = Arc::new(AtomicI64::new(0));
        IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner).push(here.clone());
        here
    };
}

fn in_flight_add(delta: i64) {
    // Only this thread writes its count: a plain load and store, no read-modify-write.
    IN_FLIGHT_HERE.with(|n| n.store(n.load(Ordering::Relaxed) + delta, Ordering::Relaxed));
}

fn in_flight() -> i64 {
    IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|n| n.load(Ordering::Relaxed)).sum()
}

/// The measurements of one request: in flight from `start` until `finish` (or drop, when the
/// request is abandoned mid-way by a client that went away or by shutdown).
pub(crate) struct RequestMetrics {
    start: Instant,
    method: &'static str,
}

impl RequestMetrics {
    pub(crate) fn start(method: &Method) -> Self {
        in_flight_add(1);
        Self { start: Instant::now(), method: method_label(method) }
    }

    /// When the request started.
    pub(crate) fn started(&self) -> Instant {
        self.start
    }

    /// Records count and latency by route template (never the raw path, which would make one
    /// series per file name).
    pub(crate) fn finish(self, response: &Response) {
        let route = response.extensions().get::<RouteLabel>().map_or("unmatched", |r| r.0);
        let status = response.status().as_u16();
        let elapsed = self.start.elapsed().as_secs_f64();
        let key = SeriesKey { method: self.method.as_ptr() as usize, route: route.as_ptr() as usize, status };
        SERIES.with_borrow_mut(|series| {
            let (count, latency) = series.entry(key).or_insert_with(|| {
                let _ = Metrics::global();
                let labels =
                    [("method", self.method.to_owned()), ("route", route.to_owned()), ("status", status.to_string())];
                (
                    metrics::counter!("http_requests_total", &labels),
                    metrics::histogram!("http_request_duration_seconds", &labels),
                )
            });
            count.increment(1);
            latency.record(elapsed);
        });
    }
}

impl Drop for RequestMetrics {
    fn drop(&mut self) {
        in_flight_add(-1);
    }
}

/// A static label for the method (no allocation for the common ones).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
