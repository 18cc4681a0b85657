//! WebSockets: the one-time ticket, the Origin check, small buffers and message caps, and
//! their place in the server's connection cap and shutdown.
//!
//! An upgraded connection leaves hyper's connection task, so the server hands every request a
//! [`Connection`]: the connection's slot under `http.max_connections` and the server's
//! shutdown phase. A socket keeps it for its whole life, so it counts against the cap, the
//! shutdown drain waits for it, and it is told to close (1001, going away) when the server
//! stops.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts as _;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use cloudx_core::ErrorKind;
use cloudx_core::Principal;
use cloudx_core::config::HttpConfig;
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::error::ApiError;
use crate::server::Phase;
use crate::state::AppState;

/// Buffers of 4 KiB each way (instead of 128 KiB), so that an idle socket costs a few KiB.
const BUFFER: usize = 4 * 1024;
/// The largest message a client may send (clients send nothing but control frames here).
const MAX_INCOMING: usize = 4 * 1024;
/// How much unsent data a socket may hold before a send waits (a slow client slows its own
/// stream, never the daemon's memory).
const MAX_PENDING: usize = 256 * 1024;

/// How often a stream pings its client.
const PING: Duration = Duration::from_secs(20);
/// How long a client may stay silent (no pong, no message) before its stream is closed.
const SILENT: Duration = Duration::from_secs(60);
/// How often a stream checks that its user may still see what it streams.
pub(crate) const RECHECK: Duration = Duration::from_secs(5);

/// The connection a request came on: its slot and the server's phase (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) phase: watch::Receiver<Phase>,
    pub(crate) _slot: Arc<OwnedSemaphorePermit>,
}

impl Connection {
    /// Resolves when the server starts shutting down (or is gone).
    pub(crate) async fn closing(&mut self) {
        let _ = self.phase.wait_for(|phase| *phase != Phase::Serving).await;
    }
}

/// Checks the upgrade's `Origin`: absent (a program, not a browser), the daemon's own
/// (same host), or one of `http.cors_origins`. Anything else is a page on another site
/// trying to use the visitor's ticket.
pub(crate) fn check_origin(headers: &HeaderMap, http: &HttpConfig) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or_default();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let same_host = origin.split_once("://").is_some_and(|(_, rest)| !host.is_empty() && rest == host);
    if same_host || http.cors_origins.iter().any(|o| o == "*" || o == origin) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorKind::PermissionDenied,
        format!(
            "a WebSocket from origin `{origin}` is not allowed: only the daemon's own origin and http.cors_origins"
        ),
    ))
}

/// Whether the request asks for a WebSocket (`Upgrade: websocket`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Admits a WebSocket upgrade: the Origin first (before the ticket is spent), then the ticket.
/// The caller then checks what the principal may see (a plain 404 before the upgrade) and
/// [`accept`]s.
pub(crate) async fn admit(state: &AppState, headers: &HeaderMap, ticket: Option<&str>) -> Result<Principal, ApiError> {
    check_origin(headers, &state.cx.config().http)?;
    redeem(state, ticket).await
}

/// The configured upgrade, and the connection it keeps for its whole life.
pub(crate) async fn accept(
    parts: &mut Parts,
    state: &AppState,
) -> Result<(WebSocketUpgrade, Option<Connection>), ApiError> {
    let connection = parts.extensions.get::<Connection>().cloned();
    let upgrade = WebSocketUpgrade::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::new(ErrorKind::InvalidInput, format!("not a WebSocket upgrade: {e}")))?;
    Ok((configure(upgrade), connection))
}

/// Redeems the `ticket` query parameter (from `POST /api/v1/auth/ws-ticket`): single use,
/// 30 seconds.
pub(crate) async fn redeem(state: &AppState, ticket: Option<&str>) -> Result<Principal, ApiError> {
    let ticket = ticket.filter(|t| !t.is_empty()).ok_or_else(|| {
        ApiError::new(
            ErrorKind::Unauthenticated,
            "a WebSocket needs `?ticket=`: get one from POST /api/v1/auth/ws-ticket (single use, valid 30 s)",
        )
    })?;
    Ok(state.cx.auth().redeem_ws_ticket(ticket).await?)
}

/// The upgrade with small buffers and capped messages.
pub(crate) fn configure(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(BUFFER)
        .write_buffer_size(BUFFER)
        .max_write_buffer_size(MAX_PENDING)
        .max_message_size(MAX_INCOMING)
        .max_frame_size(MAX_INCOMING)
}

/// Sends a close frame with `code` and `reason` (best effort: the peer may be gone).
pub(crate) async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
}

/// What [`Watchdog::wait`] saw first.
pub(crate) enum Turn<T> {
    /// The work finished.
    Ready(T),
    /// The client said something (a pong, or a message, which is ignored); wait again.
    Heard,
    /// The client left, or the server is shutting down (the socket was told): stop.
    Stop,
}

/// The housekeeping of a long-lived stream: pings a quiet client and closes a silent one,
/// checks the principal again now and then, and closes on the server's shutdown.
pub(crate) struct Watchdog {
    connection: Option<Connection>,
    heard: tokio::time::Instant,
    pinged: tokio::time::Instant,
    checked: tokio::time::Instant,
}

impl Watchdog {
    pub(crate) fn new(connection: Option<Connection>) -> Self {
        let now = tokio::time::Instant::now();
        Self { connection, heard: now, pinged: now, checked: now }
    }

    /// Pings when due, closes a client silent for too long, and every [`RECHECK`] runs
    /// `check` (the credential and the access, as they stand now): an error closes the stream
    /// (1008 when the principal may no longer see it, 1011 when the check itself failed).
    /// False when the stream must stop.
    pub(crate) async fn keep<F>(&mut self, socket: &mut WebSocket, check: impl FnOnce() -> F) -> bool
    where
        F: Future<Output = cloudx_core::Result<()>>,
    {
        // Pings find peers that vanished without closing (they would hold their slot for
        // ever); any message from the client counts as an answer.
        if self.heard.elapsed() >= SILENT {
            close(socket, code::GOING_AWAY, "no answer to pings").await;
            return false;
        }
        if self.pinged.elapsed() >= PING {
            if socket.send(Message::Ping(Default::default())).await.is_err() {
                return false;
            }
            self.pinged = tokio::time::Instant::now();
        }
        if self.checked.elapsed() >= RECHECK {
            // Checked again now and then: a disabled account, a revoked key, lost access.
            if let Err(e) = check().await {
                let code = match e.kind() {
                    ErrorKind::Unavailable | ErrorKind::Internal => code::ERROR,
                    _ => code::POLICY,
                };
                close(socket, code, e.message()).await;
                return false;
            }
            self.checked = tokio::time::Instant::now();
        }
        true
    }

    /// Waits for `work`, a message from the client, or the server's shutdown.
    pub(crate) async fn wait<T>(&mut self, socket: &mut WebSocket, work: impl Future<Output = T>) -> Turn<T> {
        let (connection, heard) = (&mut self.connection, &mut self.heard);
        let closing = async move {
            match connection {
                Some(connection) => connection.closing().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = work => Turn::Ready(done),
            () = closing => {
                close(socket, code::GOING_AWAY, "the server is shutting down").await;
                Turn::Stop
            }
            message = socket.recv() => match message {
                // The client speaks only to ping (answered by the library), to answer our
                // pings, or to leave.
                Some(Ok(Message::Close(_)) | Err(_)) | None => Turn::Stop,
                Some(Ok(_)) => {
                    *heard = tokio::time::Instant::now();
                    Turn::Heard
                }
            },
        }
    }
}

/// Close codes.
pub(crate) mod code {
    /// The stream is complete.
    pub(crate) const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// The user may no longer see this (disabled, or access lost).
    pub(crate) const POLICY: u16 = 1008;
    /// Something failed on the server.
    pub(crate) const ERROR: u16 = 1011;
}
