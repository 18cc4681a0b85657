//! Watching a job from this process: whoever follows a job's events (a WebSocket, `cloudx job
//! logs -f`) is woken when this process's workers append one or end the job. Workers in other
//! processes are seen by polling (the follower's bounded wait).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use uuid::Uuid;

/// The jobs being watched in this process, each with its wake-up.
#[derive(Debug, Default)]
pub(super) struct Watchers {
    by_job: Mutex<HashMap<Uuid, Arc<Notify>>>,
}

impl Watchers {
    /// Wakes whoever watches `job`.
    pub(super) fn wake(&self, job: Uuid) {
        let notify = self.by_job.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&job).cloned();
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    pub(super) fn watch(self: &Arc<Self>, job: Uuid) -> JobWatch {
        let notify =
            self.by_job.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(job).or_default().clone();
        JobWatch { job, notify, watchers: self.clone() }
    }
}

/// A watch on one job's events and end (see [`Queue::watch`](super::Queue::watch)).
#[derive(Debug)]
pub struct JobWatch {
    job: Uuid,
    notify: Arc<Notify>,
    watchers: Arc<Watchers>,
}

impl JobWatch {
    /// Waits until this process appends an event to the job or ends it, or `timeout` passes
    /// (whichever is first: another process's workers are only seen this way). Create the
    /// waiting future before reading the job, so that nothing between the read and the wait is
    /// missed: `let woken = watch.changed(t); /* read */ woken.await`.
    pub fn changed(&self, timeout: std::time::Duration) -> impl Future<Output = ()> + '_ {
        let notified = self.notify.notified();
        async move {
            let _ = tokio::time::timeout(timeout, notified).await;
        }
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        let mut by_job = self.watchers.by_job.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The map's own reference and ours: the last watcher removes the entry.
        if Arc::strong_count(&self.notify) <= 2 {
            by_job.remove(&self.job);
        }
    }
}
