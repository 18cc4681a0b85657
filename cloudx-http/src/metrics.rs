//! Prometheus metrics: the process-wide recorder, the HTTP middleware and the `/metrics` text.
//!
//! Metrics are recorded through the `metrics` facade, so cloudx-core can emit its own (queue
//! depth, job durations) without knowing about Prometheus.

use std::sync::OnceLock;
use std::time::Instant;

use std::borrow::Cow;

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
#[derive(Clone)]
struct RouteLabel(String);

/// Inner middleware (a route layer): records which route template matched.
pub async fn label_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteLabel(route));
    }
    response
}

/// The measurements of one request: in flight from `start` until `finish` (or drop, when the
/// request is abandoned mid-way by a client that went away or by shutdown).
pub(crate) struct RequestMetrics {
    start: Instant,
    method: &'static str,
    in_flight: metrics::Gauge,
}

impl RequestMetrics {
    pub(crate) fn start(method: &Method) -> Self {
        let in_flight = metrics::gauge!("http_requests_in_flight");
        in_flight.increment(1.0);
        Self { start: Instant::now(), method: method_label(method), in_flight }
    }

    /// Records count and latency by route template (never the raw path, which would make one
    /// series per file name).
    pub(crate) fn finish(self, response: &Response) {
        let route = response.extensions().get::<RouteLabel>().map_or_else(|| "unmatched".to_owned(), |r| r.0.clone());
        let labels = [
            ("method", Cow::Borrowed(self.method)),
            ("route", Cow::Owned(route)),
            ("status", Cow::Owned(response.status().as_str().to_owned())),
        ];
        metrics::counter!("http_requests_total", &labels).increment(1);
        metrics::histogram!("http_request_duration_seconds", &labels).record(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for RequestMetrics {
    fn drop(&mut self) {
        self.in_flight.decrement(1.0);
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
