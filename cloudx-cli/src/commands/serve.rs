//! `cloudx serve`: the HTTP daemon.

use anyhow::Context as _;
use cloudx_core::{Cloudx, CloudxConfig};
use cloudx_http::{AppState, Server};
use sd_notify::NotifyState;

pub(crate) async fn run(config: CloudxConfig) -> anyhow::Result<()> {
    let http = config.http.clone();
    let data_dir = std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    let cx = Cloudx::connect(config).await?;
    let server = Server::bind(cloudx_http::app(AppState::new(cx.clone())), &http).await?;
    let addr = server.local_addr().context("cannot read the bound address")?;
    crate::print(&format!(
        "cloudx {} listening on http://{addr}\n  data: {} (database: {})\n",
        cloudx_core::VERSION,
        data_dir.display(),
        cx.database().backend()
    ));
    tracing::info!(%addr, data_dir = %data_dir.display(), database = cx.database().backend(), "listening");
    // The sandbox is checked now (a host that cannot run code is said at start, not at the
    // first run) and its first sandboxes are launched ahead.
    if cx.config().sandbox.enabled {
        match cx.sandbox() {
            Ok(sandbox) => {
                let sandbox = sandbox.clone();
                tokio::spawn(async move { sandbox.prewarm().await });
            }
            Err(e) => tracing::warn!(error = %e, "code cannot run on this host; runs will be refused"),
        }
    }
    // Under systemd (Type=notify): ready once listening and migrated. Elsewhere a no-op.
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
    // The embedded worker pool (worker.embedded): on shutdown it finishes or releases its
    // running jobs within worker.grace.
    let stop_worker = tokio_util::sync::CancellationToken::new();
    let worker = if cx.config().worker.embedded {
        let worker = super::worker::worker(&cx, &[])?;
        tracing::info!(worker = %worker.id(), concurrency = cx.config().worker.concurrency, "embedded worker started");
        let stop = stop_worker.clone();
        Some(tokio::spawn(async move { worker.run(stop).await }))
    } else {
        None
    };
    // On SIGTERM the worker stops claiming and drains at the same time as the HTTP server, so
    // that the whole stop takes the longer of the two graces, not their sum.
    let stopping = stop_worker.clone();
    let result = server
        .run(async move {
            cloudx_http::shutdown_signal().await;
            let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
            stopping.cancel();
        })
        .await;
    stop_worker.cancel();
    if let Some(worker) = worker {
        match worker.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the embedded worker failed"),
            Err(e) => tracing::error!(error = %e, "the embedded worker's task failed"),
        }
    }
    cx.close().await;
    result.context("the server failed")?;
    tracing::info!("stopped");
    Ok(())
}
