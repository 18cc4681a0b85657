//! The runtime every call runs on, and blocking on it from Python: the GIL released meanwhile,
//! Ctrl-C noticed within a tenth of a second.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors;

/// How often a blocking call looks for a signal (Ctrl-C) while it waits.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// How long an interrupted call waits for the cancellations it caused to reach a daemon.
const SETTLE: Duration = Duration::from_secs(5);

/// The process's runtime: made on first use, kept for the life of the process.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("cloudx")
            .build()
            .expect("cannot start the cloudx runtime (threads or epoll unavailable)")
    })
}

/// Why a blocking call ended without its answer.
pub(crate) enum Stopped {
    /// The core's error.
    Failed(cloudx_core::Error),
    /// A signal handler raised (KeyboardInterrupt): the call's future was dropped, which
    /// stops what it was doing (a sandbox is killed, a daemon's run cancelled).
    Interrupted(PyErr),
}

impl From<cloudx_core::Error> for Stopped {
    fn from(e: cloudx_core::Error) -> Self {
        Stopped::Failed(e)
    }
}

impl Stopped {
    pub(crate) fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            Stopped::Failed(e) => errors::to_py(py, &e),
            Stopped::Interrupted(e) => e,
        }
    }
}

/// Runs `fut` to its end with the GIL released; a pending signal (Ctrl-C) drops it and raises.
pub(crate) fn block<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = cloudx_core::Result<T>> + Send,
    T: Send,
{
    py.detach(|| wait(fut)).map_err(|e| e.into_py(py))
}

/// [`block`] for a caller that has released the GIL already.
///
/// Signal handlers run between two slices of the wait, outside the runtime, so that a handler
/// may itself call cloudx.
pub(crate) fn wait<T, F>(fut: F) -> Result<T, Stopped>
where
    F: Future<Output = cloudx_core::Result<T>>,
{
    let rt = runtime();
    let mut fut = Box::pin(fut);
    loop {
        let slice = rt.block_on(async { tokio::time::timeout(SIGNAL_CHECK, fut.as_mut()).await });
        if let Ok(out) = slice {
            return out.map_err(Stopped::Failed);
        }
        // Signals are only seen on the main thread; elsewhere this is a no-op.
        if let Err(e) = Python::attach(|py| py.check_signals()) {
            // Dropped in the runtime's context: what the future holds may spawn its clean-up
            // (a guard that cancels a daemon's job).
            {
                let _context = rt.enter();
                drop(fut);
            }
            // A daemon's run cancelled by the drop: the request leaves before the program
            // (which Ctrl-C usually ends) does.
            rt.block_on(cloudx_http::client::target::settle_abandoned(SETTLE));
            return Err(Stopped::Interrupted(e));
        }
    }
}
