//! The one place where an [`ErrorKind`] becomes an HTTP status, and every error response becomes
//! an RFC 9457 `application/problem+json` document with a stable machine-readable `code`.
//!
//! Internal details are logged, never sent: a 5xx body says only that something failed and
//! carries the request id to find the log line.

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloudx_core::ErrorKind;
use serde::Serialize;

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The HTTP status of each error kind (docs/architecture.md, "Errors").
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The stable code for an error status produced outside cloudx-core (routing, body limits,
/// timeouts, extractor rejections).
fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => ErrorKind::InvalidInput.code(),
        StatusCode::UNAUTHORIZED => ErrorKind::Unauthenticated.code(),
        StatusCode::FORBIDDEN => ErrorKind::PermissionDenied.code(),
        StatusCode::NOT_FOUND => ErrorKind::NotFound.code(),
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::CONFLICT => ErrorKind::Conflict.code(),
        StatusCode::PRECONDITION_FAILED => ErrorKind::PreconditionFailed.code(),
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::PayloadTooLarge.code(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => ErrorKind::RateLimited.code(),
        StatusCode::SERVICE_UNAVAILABLE => ErrorKind::Unavailable.code(),
        StatusCode::INSUFFICIENT_STORAGE => ErrorKind::QuotaExceeded.code(),
        s if s.is_client_error() => "client_error",
        _ => ErrorKind::Internal.code(),
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the `code` member says what the problem is.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// The HTTP status phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// A stable, machine-readable code: `invalid_input`, `not_found`, ...
    pub code: String,
    /// The request id, also in the `x-request-id` header and in every log line of the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Extra members (for example the failed checks of `/readyz`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Problem {
    fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            type_: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            request_id: None,
            extra: None,
        }
    }
}

/// An error answered as a problem document.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// Boxed: errors are rare, and a small `Result` keeps every handler's future small.
    problem: Box<Problem>,
    retry_after: Option<std::time::Duration>,
}

impl ApiError {
    /// An error of `kind` with a message for the client.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        let status = status_for(kind);
        Self { status, problem: Box::new(Problem::new(status, kind.code(), detail)), retry_after: None }
    }

    /// Replaces the stable code (for failures that are not one of the core's kinds).
    #[must_use]
    pub fn with_code(mut self, code: &str) -> Self {
        self.problem.code = code.to_owned();
        self
    }

    /// Answers with `status` rather than the kind's, for an HTTP condition the core has no
    /// kind for (416); the document's `status` and `title` follow.
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self.problem.status = status.as_u16();
        self.problem.title = status.canonical_reason().unwrap_or("Error").to_owned();
        self
    }

    /// Adds an extra member to the problem document.
    #[must_use]
    pub fn with_member(mut self, name: &str, value: serde_json::Value) -> Self {
        self.problem.extra.get_or_insert_with(Default::default).insert(name.to_owned(), value);
        self
    }
}

impl From<cloudx_core::Error> for ApiError {
    fn from(err: cloudx_core::Error) -> Self {
        // The message of these may name files, queries or hosts: log it, send nothing of it.
        match err.kind() {
            ErrorKind::Internal => {
                tracing::error!(error = %err, source = ?std::error::Error::source(&err), "internal error");
                return Self::new(
                    ErrorKind::Internal,
                    "an internal error occurred; the server log has the details under this request id",
                );
            }
            ErrorKind::Unavailable => {
                tracing::warn!(error = %err, source = ?std::error::Error::source(&err), "dependency unavailable");
                return Self::new(
                    ErrorKind::Unavailable,
                    "a service cloudx depends on is unavailable; try again later (the server log has the details under this request id)",
                );
            }
            _ => {}
        }
        let mut api = Self::new(err.kind(), err.message());
        api.retry_after = err.retry_after();
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.problem)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: retrying early would only be refused again.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The largest error body (from axum's extractors) kept as the `detail` of a 4xx problem.
const MAX_DETAIL: usize = 1024;

/// Makes an error response a problem document carrying the request id.
///
/// Error responses produced by cloudx already are problem documents; this adds the request id.
/// Those produced by axum (404, 405, 413, extractor rejections) or by a panic guard (500) are
/// plain text or empty: they are rewritten, keeping the text of 4xx bodies (which describe the
/// client's mistake) and dropping that of 5xx bodies.
pub(crate) async fn into_problem(response: Response, request_id: &HeaderValue) -> Response {
    let status = response.status();
    let (mut parts, body) = response.into_parts();
    let is_problem = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(PROBLEM_JSON)));
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let parsed = is_problem.then(|| serde_json::from_slice::<serde_json::Value>(&bytes).ok()).flatten();
    let mut document: serde_json::Value = if let Some(problem) = parsed.filter(serde_json::Value::is_object) {
        problem
    } else {
        let detail = match std::str::from_utf8(&bytes) {
            Ok(text) if status.is_client_error() && !text.trim().is_empty() && text.len() <= MAX_DETAIL => {
                text.trim().to_owned()
            }
            _ => default_detail(status),
        };
        serde_json::to_value(Problem::new(status, code_for_status(status), detail)).unwrap_or_default()
    };
    if let (Ok(id), Some(map)) = (request_id.to_str(), document.as_object_mut()) {
        map.insert("request_id".into(), serde_json::Value::String(id.to_owned()));
    }
    let body = serde_json::to_vec(&document).unwrap_or_default();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    // The new body replaces the old representation entirely.
    for stale in [header::CONTENT_LENGTH, header::CONTENT_ENCODING, header::ETAG, header::CONTENT_DISPOSITION] {
        parts.headers.remove(stale);
    }
    Response::from_parts(parts, Body::from(body))
}

fn default_detail(status: StatusCode) -> String {
    match status {
        StatusCode::NOT_FOUND => "no such resource".into(),
        StatusCode::METHOD_NOT_ALLOWED => "this resource does not support that method".into(),
        StatusCode::PAYLOAD_TOO_LARGE => {
            "the request body is larger than the server accepts (http.max_body_size)".into()
        }
        s if s.is_server_error() => {
            "the server could not complete the request; the server log has the details under this request id".into()
        }
        s => s.canonical_reason().unwrap_or("error").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_documented_status() {
        let table = [
            (ErrorKind::InvalidInput, 400),
            (ErrorKind::Unauthenticated, 401),
            (ErrorKind::PermissionDenied, 403),
            (ErrorKind::NotFound, 404),
            (ErrorKind::Conflict, 409),
            (ErrorKind::PreconditionFailed, 412),
            (ErrorKind::PayloadTooLarge, 413),
            (ErrorKind::RateLimited, 429),
            (ErrorKind::QuotaExceeded, 507),
            (ErrorKind::Unavailable, 503),
            (ErrorKind::Internal, 500),
        ];
        assert_eq!(table.len(), ErrorKind::ALL.len());
        for (kind, status) in table {
            assert_eq!(status_for(kind).as_u16(), status, "{kind}");
            // The code derived back from the status is the kind's own.
            assert_eq!(code_for_status(status_for(kind)), kind.code(), "{kind}");
        }
    }
}
