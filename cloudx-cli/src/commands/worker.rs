//! `cloudx worker`: a worker process, and the pool `cloudx serve` runs in-process.

use anyhow::Context as _;
use cloudx_core::queue::{Handlers, Worker, WorkerOptions};
use cloudx_core::{Cloudx, CloudxConfig};
use cloudx_http::Server;
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
    let metrics = match metrics(&cx).await? {
        Some(server) => {
            let stop = stop.clone();
            Some(tokio::spawn(server.run(async move { stop.cancelled().await })))
        }
        None => None,
    };
    tracing::info!(worker = %worker.id(), concurrency = cx.config().worker.concurrency, "worker started");
    let result = worker.run(stop).await;
    if let Some(metrics) = metrics {
        // Stopped with the worker (the same token); it answers its last scrapes meanwhile.
        match metrics.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the metrics listener failed"),
            Err(e) => tracing::error!(error = %e, "the metrics listener's task failed"),
        }
    }
    cx.close().await;
    result?;
    tracing::info!("worker stopped");
    Ok(())
}

/// The metrics listener of `worker.metrics_bind`, bound (the address printed), if one is set.
/// It installs the Prometheus recorder before any job runs, so that every job is counted.
async fn metrics(cx: &Cloudx) -> anyhow::Result<Option<Server>> {
    let Some(addr) = cx.config().worker.metrics_bind_addr().map_err(anyhow::Error::msg)? else {
        return Ok(None);
    };
    let mut http = cx.config().http.clone();
    http.bind = addr.to_string();
    let server = Server::bind(cloudx_http::metrics_app(cx.queue().clone(), &http), &http)
        .await
        .with_context(|| format!("worker.metrics_bind (--metrics-bind) {addr}"))?;
    let bound = server.local_addr().context("cannot read the metrics listener's address")?;
    crate::print(&format!("cloudx worker metrics on http://{bound}/metrics\n"));
    tracing::info!(%bound, "serving metrics");
    Ok(Some(server))
}
