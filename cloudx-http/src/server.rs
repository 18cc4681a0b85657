//! Serving the router on a TCP socket with hyper, with the protections axum's `serve` lacks.
//!
//! - A header-read timeout: a client that sends half a request head (or nothing) is dropped.
//! - A cap on open connections; further ones wait in the kernel's accept queue.
//! - A limit on the request head's size (431 beyond it).
//! - Graceful shutdown: on the shutdown signal the listener closes, idle connections close,
//!   in-flight requests finish within the grace period, and only then does `run` return.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use cloudx_core::config::HttpConfig;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// The most a connection's read buffer grows to (for request bodies; heads stay within
/// `http.max_header_size`).
const READ_BUFFER: usize = 256 * 1024;

use crate::App;

/// A bound listener with the router it will serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    app: App,
    config: HttpConfig,
}

impl Server {
    /// Binds `config.http.bind` (or `addr` when given).
    ///
    /// # Errors
    /// When the address is invalid or cannot be bound; the message says which address and why.
    pub async fn bind(app: App, config: &HttpConfig) -> io::Result<Self> {
        let addr = config
            .bind_addr()
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, format!("http.bind: {why}")))?;
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::AddrInUse => {
                    " (another program already listens there; choose another address with --bind)"
                }
                io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges; use a higher port)",
                _ => "",
            };
            io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}{hint}"))
        })?;
        Ok(Self { listener, app, config: config.clone() })
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    /// When the socket cannot report its address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests for at most
    /// `http.shutdown_grace`.
    ///
    /// # Errors
    /// Never for a single connection's failure (those are logged); only if the listener fails
    /// in a way that cannot be retried.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let Self { listener, app, config } = self;
        let connections = Arc::new(Semaphore::new(config.max_connections as usize));
        // Each connection task holds a receiver: `send` tells them to close gracefully, and
        // `closed()` on the sender resolves once every one of them is gone.
        let (close_tx, close_rx) = watch::channel(Phase::Serving);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning; the connection waits.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let app = app.clone();
            let config = config.clone();
            let mut close_rx = close_rx.clone();
            tokio::spawn(async move {
                // A WebSocket upgraded on this connection keeps the slot (and a receiver of
                // the phase) after this task ends: see `ws::Connection`.
                serve_connection(stream, peer, app, &config, &mut close_rx, Arc::new(permit)).await;
            });
        }
        drop(listener);
        drop(close_rx);
        tracing::info!("shutting down: no new connections; waiting for in-flight requests");
        close_tx.send_replace(Phase::Draining);
        let grace = config.shutdown_grace;
        if tokio::time::timeout(grace, close_tx.closed()).await.is_err() {
            tracing::warn!(grace = ?grace, remaining = close_tx.receiver_count(), "grace period over; aborting the remaining connections");
            close_tx.send_replace(Phase::Aborting);
            // Dropping a connection's future is immediate; give the tasks a moment to run it.
            let _ = tokio::time::timeout(Duration::from_secs(1), close_tx.closed()).await;
        }
        Ok(())
    }
}

/// What the connection tasks (and WebSockets) are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    /// Finish the request in flight, then close.
    Draining,
    /// The grace period is over: close now.
    Aborting,
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: App,
    config: &HttpConfig,
    close: &mut watch::Receiver<Phase>,
    slot: Arc<tokio::sync::OwnedSemaphorePermit>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let connection = crate::ws::Connection { phase: close.clone(), _slot: slot };
    let service = app.map_request(move |mut request: axum::http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(connection.clone());
        request
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(usize::try_from(config.max_header_size.as_u64()).unwrap_or(usize::MAX))
        // The read buffer, which a request head may not fill beyond `max_header_size`: large
        // enough that an upload arrives in chunks of up to 256 KiB rather than a few KiB.
        .max_buf_size(READ_BUFFER.max(usize::try_from(config.max_header_size.as_u64()).unwrap_or(usize::MAX)));
    // Upgrades (WebSockets) leave this task holding a `ws::Connection`: the slot and a
    // receiver of the phase, which the shutdown drain waits for.
    let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return log_connection_end(result),
        () = reached(close, |phase| *phase != Phase::Serving) => {}
    }
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        result = connection.as_mut() => log_connection_end(result),
        () = reached(close, |phase| *phase == Phase::Aborting) => tracing::debug!("connection aborted at the end of the grace period"),
    }
}

/// Resolves once the phase satisfies `reached` (or the server is gone).
async fn reached(close: &mut watch::Receiver<Phase>, reached: impl FnMut(&Phase) -> bool) {
    // The borrow `wait_for` returns is not `Send`: drop it here, not in the caller's `select!`.
    let _ = close.wait_for(reached).await;
}

fn log_connection_end(result: hyper::Result<()>) {
    if let Err(e) = result {
        // Timeouts, resets and malformed requests: the client's problem, worth a debug line.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
