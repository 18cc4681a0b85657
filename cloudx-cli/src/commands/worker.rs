//! `cloudx worker`: a worker process, and the pool `cloudx serve` runs in-process.

use cloudx_core::queue::{Handlers, Worker, WorkerOptions};
use cloudx_core::{Cloudx, CloudxConfig};
use tokio_util::sync::CancellationToken;

/// A worker over `cx` running its built-in handlers (only `kinds`, when given).
pub(crate) fn worker(cx: &Cloudx, kinds: &[String]) -> anyhow::Result<Worker> {
    let all = cx.builtin_handlers();
    let handlers = if kinds.is_empty() {
        all
    } else {
        let known = all.kinds();
        if let Some(unknown) = kinds.iter().find(|k| !known.contains(k)) {
            anyhow::bail!("--kinds: cloudx runs no job kind `{unknown}` (it runs: {})", known.join(", "));
        }
        let mut only = Handlers::new();
        for kind in kinds {
            only.merge_from(&all, kind);
        }
        only
    };
    let options =
        WorkerOptions { webhooks: Some(cx.webhooks().clone()), ..WorkerOptions::from_config(&cx.config().worker) };
    Ok(Worker::new(cx.queue().clone(), handlers, options))
}

pub(crate) async fn run(config: CloudxConfig, kinds: Vec<String>) -> anyhow::Result<()> {
    let cx = Cloudx::connect(config).await?;
    let worker = worker(&cx, &kinds)?;
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        cloudx_http::shutdown_signal().await;
        tracing::info!("stopping: no new jobs; running ones get worker.grace to finish");
        signal.cancel();
    });
    tracing::info!(worker = %worker.id(), concurrency = cx.config().worker.concurrency, "worker started");
    let result = worker.run(stop).await;
    cx.close().await;
    result?;
    tracing::info!("worker stopped");
    Ok(())
}
