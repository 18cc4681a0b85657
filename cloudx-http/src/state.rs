//! The state every handler sees.

use std::sync::Arc;

use cloudx_core::Cloudx;

use crate::auth::Limits;
use crate::metrics::{Metrics, QueueGauges};

/// Shared by every handler: the core facade, the metrics registry and the rate limiters.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The core.
    pub cx: Cloudx,
    /// The Prometheus registry.
    pub metrics: Metrics,
    /// The queue's gauges, read from the database when `/metrics` is scraped.
    pub queue_gauges: Arc<QueueGauges>,
    /// The node's rate limiters.
    pub limits: Arc<Limits>,
}

impl AppState {
    /// State over an opened core, with the process-wide metrics registry.
    pub fn new(cx: Cloudx) -> Self {
        let limits = Limits::new(&cx.config().http);
        let queue_gauges = Arc::new(QueueGauges::new(cx.queue().clone()));
        Self { cx, metrics: Metrics::global(), queue_gauges, limits }
    }
}
