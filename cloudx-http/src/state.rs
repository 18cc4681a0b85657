//! The state every handler sees.

use std::sync::Arc;

use cloudx_core::Cloudx;

use crate::auth::Limits;
use crate::metrics::Metrics;

/// Shared by every handler: the core facade, the metrics registry and the rate limiters.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The core.
    pub cx: Cloudx,
    /// The Prometheus registry.
    pub metrics: Metrics,
    /// The node's rate limiters.
    pub limits: Arc<Limits>,
}

impl AppState {
    /// State over an opened core, with the process-wide metrics registry.
    pub fn new(cx: Cloudx) -> Self {
        let limits = Limits::new(&cx.config().http);
        Self { cx, metrics: Metrics::global(), limits }
    }
}
