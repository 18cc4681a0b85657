//! Prometheus metrics: the process-wide recorder, the HTTP middleware and the `/metrics` text.
//!
//! Metrics are recorded through the `metrics` facade, so cloudx-core can emit its own (job
//! durations, waits, attempts and outcomes, from its workers) without knowing about Prometheus.
//! The queue's cluster-wide gauges (depth, workers) are read from the database when `/metrics` is
//! scraped: see [`QueueGauges`].

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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

/// Buckets (seconds) for how long a job's attempt ran: a trivial handler takes milliseconds, a
/// sandboxed run up to `sandbox.max_wall_time` (15 minutes by default), a test run longer.
const JOB_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
    3600.0,
];

/// Buckets (seconds) for how long a ready job waited for a worker: sub-millisecond when a worker
/// is idle (a claim follows the submission's wake-up), up to an hour for a backlog.
const JOB_WAIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
];

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
                // A `Full` matcher wins over a `Suffix` one (the exporter tries them in that
                // order), so the job duration does not get the request latency's buckets.
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                    .and_then(|b| {
                        b.set_buckets_for_metric(Matcher::Full("cloudx_job_duration_seconds".into()), JOB_DURATION_BUCKETS)
                    })
                    .and_then(|b| b.set_buckets_for_metric(Matcher::Full("cloudx_job_wait_seconds".into()), JOB_WAIT_BUCKETS))
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
                describe_job_metrics();
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

    /// As [`render`](Self::render), followed by the queue's gauges (read from the database at
    /// most once per [`QUEUE_READING_TTL`]; left out, and the failure counted, when the database
    /// does not answer).
    pub async fn render_with_queue(&self, queue: &QueueGauges) -> String {
        // The reading first: a failure counted now shows in this scrape's counter.
        let gauges = queue.text().await;
        let mut text = self.render();
        if let Some(gauges) = gauges {
            text.push_str(&gauges);
        }
        text
    }
}

/// Describes the job metrics cloudx-core's workers record, and registers the counters that
/// should read 0 before anything happened.
fn describe_job_metrics() {
    use metrics::Unit;
    metrics::describe_histogram!(
        "cloudx_job_duration_seconds",
        Unit::Seconds,
        "How long job attempts run in this process's workers, by kind and outcome"
    );
    metrics::describe_histogram!(
        "cloudx_job_wait_seconds",
        Unit::Seconds,
        "How long jobs waited for a worker once claimable (from run_at to the attempt's start), by kind"
    );
    metrics::describe_counter!("cloudx_job_attempts_total", "Leases taken by this process's workers, by kind");
    metrics::describe_counter!(
        "cloudx_jobs_finished_total",
        "Attempts ended in this process's workers, by kind and outcome \
         (succeeded, failed, retried, cancelled, released, lost)"
    );
    metrics::describe_counter!(
        "cloudx_queue_metrics_errors_total",
        "Scrapes whose reading of the queue's gauges from the database failed (the gauges were left out)"
    );
    metrics::counter!("cloudx_queue_metrics_errors_total").absolute(0);
}

/// How long one reading of the queue's gauges is served before the database is asked again:
/// several scrapers, or a tight scrape interval, cost one pair of queries per period.
pub const QUEUE_READING_TTL: Duration = Duration::from_secs(1);

/// The longest a scrape waits for the database; beyond it the gauges are left out.
const QUEUE_READING_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this many kinds get their own series; the kinds with fewer jobs are summed under
/// `kind="(other)"`. Kinds are the submitters' free text, and every series lives in the
/// Prometheus server for its retention: this bounds what a stream of odd kinds can cost.
const MAX_KINDS: usize = 50;

/// The queue's cluster-wide gauges, read from the database when `/metrics` is scraped: every
/// daemon (and every worker serving metrics) answers for the whole queue, so aggregate them
/// with `max` rather than `sum` in queries.
///
/// Rendered as text at each reading rather than set on the recorder, so that a series
/// disappears with its last job (gauges on the recorder would keep their last value).
///
/// - `cloudx_jobs{kind,status}`: jobs kept in each state (finished ones until
///   `worker.retention`); every status is given for every kind, zero included. Dead jobs are
///   its `status="dead"` series: no separate gauge repeats them.
/// - `cloudx_jobs_oldest_ready_seconds{kind}`: the age of the oldest job whose `run_at` has come
///   that no worker took yet (0 when none).
/// - `cloudx_workers{health}`: workers seen in the last day, `alive`, `stopped` or `gone`.
/// - `cloudx_worker_heartbeat_age_seconds_max`: the oldest heartbeat among the alive workers
///   (absent without one). Not one series per worker: workers come and go (each start is a new
///   id), and a series per id would pile up in the Prometheus server; a gone worker is counted
///   by `cloudx_workers{health="gone"}` instead.
#[derive(Debug)]
pub struct QueueGauges {
    queue: cloudx_core::queue::Queue,
    /// The last reading's text (none when it failed) and when it was taken. An async lock,
    /// held across the reading: scrapes that come meanwhile wait for it rather than ask too.
    last: tokio::sync::Mutex<Option<(Instant, Option<Arc<str>>)>>,
}

impl QueueGauges {
    /// The gauges of `queue`.
    pub fn new(queue: cloudx_core::queue::Queue) -> Self {
        Self { queue, last: tokio::sync::Mutex::new(None) }
    }

    /// The gauges' text: the cached reading while fresh, else a new one.
    async fn text(&self) -> Option<Arc<str>> {
        let mut last = self.last.lock().await;
        if let Some((at, text)) = &*last
            && at.elapsed() < QUEUE_READING_TTL
        {
            return text.clone();
        }
        let text = match tokio::time::timeout(QUEUE_READING_TIMEOUT, self.read()).await {
            Ok(Ok(text)) => Some(Arc::from(text)),
            Ok(Err(e)) => {
                metrics::counter!("cloudx_queue_metrics_errors_total").increment(1);
                tracing::warn!(error = %e, "cannot read the queue's gauges; /metrics leaves them out");
                None
            }
            Err(_) => {
                metrics::counter!("cloudx_queue_metrics_errors_total").increment(1);
                tracing::warn!("the database did not answer in time for the queue's gauges; /metrics leaves them out");
                None
            }
        };
        // A failure is kept for the period too: a database that is down is not asked at every scrape.
        *last = Some((Instant::now(), text.clone()));
        text
    }

    /// Two queries: the depth by kind and status, the workers by health.
    async fn read(&self) -> cloudx_core::Result<String> {
        let (depth, workers) = tokio::try_join!(self.queue.depth(), self.queue.worker_health())?;
        Ok(render_queue(&depth, &workers))
    }
}

/// The gauges' text in the Prometheus exposition format.
fn render_queue(depth: &[cloudx_core::queue::Depth], workers: &cloudx_core::queue::WorkerHealth) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use cloudx_core::queue::JobStatus;
    const STATUSES: [JobStatus; 5] =
        [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded, JobStatus::Dead, JobStatus::Cancelled];
    // Jobs per kind and status, and each kind's oldest ready job; kinds beyond MAX_KINDS (the
    // ones with fewest jobs) summed under "(other)".
    let mut kinds: BTreeMap<&str, ([u64; 5], Duration)> = BTreeMap::new();
    for d in depth {
        let entry = kinds.entry(d.kind.as_str()).or_default();
        entry.0[STATUSES.iter().position(|s| *s == d.status).unwrap_or(0)] += d.jobs;
        entry.1 = entry.1.max(d.oldest_ready);
    }
    if kinds.len() > MAX_KINDS {
        let mut by_size: Vec<(&str, u64)> = kinds.iter().map(|(k, (n, _))| (*k, n.iter().sum())).collect();
        by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut other = ([0u64; 5], Duration::ZERO);
        for (kind, _) in &by_size[MAX_KINDS - 1..] {
            let (jobs, oldest) = kinds.remove(kind).unwrap_or_default();
            for (sum, n) in other.0.iter_mut().zip(jobs) {
                *sum += n;
            }
            other.1 = other.1.max(oldest);
        }
        kinds.insert("(other)", other);
    }
    let mut out = String::with_capacity(256 + kinds.len() * 400);
    out.push_str(
        "# HELP cloudx_jobs Jobs kept in the queue by kind and status (finished ones until worker.retention)\n",
    );
    out.push_str("# TYPE cloudx_jobs gauge\n");
    for (kind, (jobs, _)) in &kinds {
        for (status, n) in STATUSES.iter().zip(jobs) {
            let _ = writeln!(out, "cloudx_jobs{{kind=\"{}\",status=\"{}\"}} {n}", escape(kind), status.as_str());
        }
    }
    out.push_str(
        "# HELP cloudx_jobs_oldest_ready_seconds Age of the oldest job that may run but no worker took, by kind\n",
    );
    out.push_str("# TYPE cloudx_jobs_oldest_ready_seconds gauge\n");
    for (kind, (_, oldest)) in &kinds {
        let _ = writeln!(out, "cloudx_jobs_oldest_ready_seconds{{kind=\"{}\"}} {}", escape(kind), oldest.as_secs_f64());
    }
    out.push_str("# HELP cloudx_workers Workers seen in the last day, by health (alive, stopped, gone)\n");
    out.push_str("# TYPE cloudx_workers gauge\n");
    for (health, n) in [("alive", workers.alive), ("stopped", workers.stopped), ("gone", workers.gone)] {
        let _ = writeln!(out, "cloudx_workers{{health=\"{health}\"}} {n}");
    }
    if let Some(age) = workers.oldest_alive_heartbeat {
        out.push_str(
            "# HELP cloudx_worker_heartbeat_age_seconds_max Age of the oldest heartbeat among the alive workers\n",
        );
        out.push_str("# TYPE cloudx_worker_heartbeat_age_seconds_max gauge\n");
        let _ = writeln!(out, "cloudx_worker_heartbeat_age_seconds_max {}", age.as_secs_f64());
    }
    out
}

/// A label value as the exposition format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cloudx_core::queue::{Depth, JobStatus, WorkerHealth};

    use super::{MAX_KINDS, escape, render_queue};

    fn depth(kind: &str, status: JobStatus, jobs: u64, oldest: u64) -> Depth {
        Depth { kind: kind.into(), status, jobs, oldest_ready: Duration::from_secs(oldest) }
    }

    #[test]
    fn queue_gauges_give_every_status_and_escape_kinds() {
        let text = render_queue(
            &[depth("a\"b", JobStatus::Queued, 3, 7), depth("a\"b", JobStatus::Dead, 1, 0)],
            &WorkerHealth { alive: 2, stopped: 1, gone: 0, oldest_alive_heartbeat: Some(Duration::from_millis(1500)) },
        );
        for line in [
            "cloudx_jobs{kind=\"a\\\"b\",status=\"queued\"} 3",
            "cloudx_jobs{kind=\"a\\\"b\",status=\"running\"} 0",
            "cloudx_jobs{kind=\"a\\\"b\",status=\"dead\"} 1",
            "cloudx_jobs_oldest_ready_seconds{kind=\"a\\\"b\"} 7",
            "cloudx_workers{health=\"alive\"} 2",
            "cloudx_workers{health=\"gone\"} 0",
            "cloudx_worker_heartbeat_age_seconds_max 1.5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        // Without an alive worker there is no heartbeat age to give.
        let none = render_queue(&[], &WorkerHealth::default());
        assert!(!none.contains("heartbeat_age") && none.contains("cloudx_workers{health=\"alive\"} 0"), "{none}");
        assert_eq!(escape("x\\y\nz"), "x\\\\y\\nz");
    }

    #[test]
    fn kinds_beyond_the_cap_are_summed_under_other() {
        let many: Vec<Depth> =
            (0..MAX_KINDS as u64 + 10).map(|n| depth(&format!("k{n:03}"), JobStatus::Queued, n + 1, n)).collect();
        let text = render_queue(&many, &WorkerHealth::default());
        let kinds = text.lines().filter(|l| l.starts_with("cloudx_jobs{") && l.contains("status=\"queued\"")).count();
        assert_eq!(kinds, MAX_KINDS, "{text}");
        // The biggest kinds keep their series; the 11 smallest (1..=11 jobs) are summed.
        assert!(text.contains("cloudx_jobs{kind=\"k059\",status=\"queued\"} 60"), "{text}");
        assert!(!text.contains("kind=\"k000\""), "{text}");
        assert!(text.contains("cloudx_jobs{kind=\"(other)\",status=\"queued\"} 66"), "{text}");
        assert!(text.contains("cloudx_jobs_oldest_ready_seconds{kind=\"(other)\"} 10"), "{text}");
    }
}
