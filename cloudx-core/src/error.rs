//! The one error vocabulary shared by every port and every front end.
//!
//! Each port has its own error type with variants named by meaning; every one of them exposes
//! [`ErrorKind`] so that adapters map *kinds*, once: to an HTTP status in cloudx-http, to an
//! exception class in cloudx-py, to an exit code in cloudx-cli.

use std::fmt;

/// A boxed error used as the `source` of errors whose cause is not part of the public API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, independent of where. The HTTP mapping lives in cloudx-http's `error.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or names something invalid (HTTP 400).
    InvalidInput,
    /// No valid credentials were presented (HTTP 401).
    Unauthenticated,
    /// The principal may not do this (HTTP 403, or 404 where existence must not leak).
    PermissionDenied,
    /// The thing does not exist, or the principal may not know it exists (HTTP 404).
    NotFound,
    /// The request conflicts with the current state (HTTP 409).
    Conflict,
    /// A precondition such as an expected version did not hold (HTTP 412).
    PreconditionFailed,
    /// The payload is larger than allowed (HTTP 413).
    PayloadTooLarge,
    /// Too many requests; retry later (HTTP 429).
    RateLimited,
    /// A quota is exhausted (HTTP 507).
    QuotaExceeded,
    /// A dependency (database, object store, model endpoint) is unreachable (HTTP 503).
    Unavailable,
    /// A bug or an unexpected failure; details are logged, never sent to clients (HTTP 500).
    Internal,
}

impl ErrorKind {
    /// Every kind, in declaration order (for tables and exhaustive tests).
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::InvalidInput,
        ErrorKind::Unauthenticated,
        ErrorKind::PermissionDenied,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::PreconditionFailed,
        ErrorKind::PayloadTooLarge,
        ErrorKind::RateLimited,
        ErrorKind::QuotaExceeded,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    /// The stable, machine-readable code of this kind (`not_found`, `conflict`, ...), used as the
    /// `code` of HTTP problem documents and in the Python exception classes.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PreconditionFailed => "precondition_failed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The error returned by the [`Cloudx`](crate::Cloudx) facade: a kind, a message meant for the
/// user, and optionally the underlying cause (logged, not shown to remote clients).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
    retry_after: Option<std::time::Duration>,
}

impl Error {
    /// An error of `kind` with a message for the user.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None, retry_after: None }
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Says when trying again may succeed (for [`ErrorKind::RateLimited`]: HTTP `Retry-After`).
    #[must_use]
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// When trying again may succeed, if the error says.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message meant for the user. For [`ErrorKind::Internal`] it is generic on purpose.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// An [`ErrorKind::Internal`] error wrapping an unexpected cause.
    pub fn internal(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Internal, context).with_source(source)
    }

    /// An [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// An [`ErrorKind::InvalidInput`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
}

/// The result type of the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut codes: Vec<_> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        assert!(codes.iter().all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn error_keeps_kind_message_and_source() {
        let io = std::io::Error::other("disk on fire");
        let err = Error::internal("could not write", io);
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert_eq!(err.to_string(), "could not write");
        let source = std::error::Error::source(&err).expect("source kept");
        assert_eq!(source.to_string(), "disk on fire");
    }
}
