//! WebSockets: the one-time ticket, the Origin check, small buffers and message caps, and
//! their place in the server's connection cap and shutdown.
//!
//! An upgraded connection leaves hyper's connection task, so the server hands every request a
//! [`Connection`]: the connection's slot under `http.max_connections` and the server's
//! shutdown phase. A socket keeps it for its whole life, so it counts against the cap, the
//! shutdown drain waits for it, and it is told to close (1001, going away) when the server
//! stops.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
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
