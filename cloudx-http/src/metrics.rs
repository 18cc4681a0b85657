//! Prometheus metrics: the process-wide recorder, the HTTP middleware and the `/metrics` text.
//!
//! Metrics are recorded through the `metrics` facade, so cloudx-core can emit its own (queue
//! depth, job durations) without knowing about Prometheus.

use std::sync::OnceLock;
use std::time::Instant;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, PoisonError, RwLock};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
        self.handle.render()
    }
}

/// The route template a request matched, carried from the router to the outer middleware.
#[derive(Clone, Copy)]
struct RouteLabel(&'static str);

/// Inner middleware (a route layer): records which route template matched.
pub async fn label_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|m| intern(m.as_str()));
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteLabel(route));
    }
    response
}

/// The route templates seen so far. They come from the router, so the set is small and fixed:
/// keeping each one for the life of the process costs a few bytes and saves an allocation per
/// request.
fn intern(route: &str) -> &'static str {
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

thread_local! {
    /// Each thread's handles by (method, route, status), so a request costs no registry lookup
    /// (which would build and hash a key with three labels). Handles share the registry's
    /// atomics, so the per-thread copies all count into one series.
    static SERIES: RefCell<HashMap<(&'static str, &'static str, u16), Series>> = RefCell::new(HashMap::new());
}

/// Requests being answered now; one handle for the process, made after the recorder exists.
static IN_FLIGHT: LazyLock<metrics::Gauge> = LazyLock::new(|| {
    let _ = Metrics::global();
    metrics::gauge!("http_requests_in_flight")
});

/// The measurements of one request: in flight from `start` until `finish` (or drop, when the
/// request is abandoned mid-way by a client that went away or by shutdown).
pub(crate) struct RequestMetrics {
    start: Instant,
    method: &'static str,
}

impl RequestMetrics {
    pub(crate) fn start(method: &Method) -> Self {
        IN_FLIGHT.increment(1.0);
        Self { start: Instant::now(), method: method_label(method) }
    }

    /// Records count and latency by route template (never the raw path, which would make one
    /// series per file name).
    pub(crate) fn finish(self, response: &Response) {
        let route = response.extensions().get::<RouteLabel>().map_or("unmatched", |r| r.0);
        let status = response.status().as_u16();
        let elapsed = self.start.elapsed().as_secs_f64();
        SERIES.with_borrow_mut(|series| {
            let (count, latency) = series.entry((self.method, route, status)).or_insert_with(|| {
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
        IN_FLIGHT.decrement(1.0);
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
