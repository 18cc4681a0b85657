//! The state every handler sees.

use cloudx_core::Cloudx;

use crate::metrics::Metrics;

/// Shared by every handler: the core facade and the metrics registry.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The core.
    pub cx: Cloudx,
    /// The Prometheus registry.
    pub metrics: Metrics,
}

impl AppState {
    /// State over an opened core, with the process-wide metrics registry.
    pub fn new(cx: Cloudx) -> Self {
        Self { cx, metrics: Metrics::global() }
    }
}
