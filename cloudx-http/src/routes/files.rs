//! A project's files: raw bytes in and out (streamed, with ETags, preconditions and ranges),
//! listings, history, restores and moves.
//!
//! Downloads are always attachments with `nosniff` and the API's restrictive
//! Content-Security-Policy, so an uploaded page or picture is never rendered by a browser in the
//! daemon's origin.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use cloudx_core::ErrorKind;
use cloudx_core::storage::{ArchiveFormat, ArchiveUpload, ByteStream, FileVersion, PutOptions, Tree, Versioned};
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_file, put_file, delete_file))
        .routes(routes!(tree))
        .routes(routes!(history))
        .routes(routes!(restore_file))
        .routes(routes!(move_file))
        .routes(routes!(download_archive, upload_archive))
}

/// Whether a request streams a file into the daemon: its body is not held to
/// `http.max_body_size` or `http.request_timeout` (`storage.max_file_size` and an idle timeout
/// apply instead).
pub(crate) fn is_upload(method: &axum::http::Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/v1/projects/") else { return false };
    let Some((_, rest)) = rest.split_once('/') else { return false };
    (method == axum::http::Method::PUT && rest.starts_with("files/"))
        || (method == axum::http::Method::POST && rest == "archive")
}

/// Which version to read.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct VersionQuery {
    /// The project version to read the file as of; the latest when absent.
    #[serde(default)]
    version: Option<i64>,
}

/// Downloads a file (any version): raw bytes, as an attachment. Answers `ETag`, honours
/// `If-None-Match` (304) and a single `Range` (206, or 416 when unsatisfiable).
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/files/{*path}", tag = "files",
    security(("bearer" = [])),
    params(
        ("project" = Uuid, Path, description = "The project's id"),
        ("path" = String, Path, description = "The file's path; may contain `/`"),
        VersionQuery,
    ),
    responses(
        (status = 200, description = "The content", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range"),
        (status = 304, description = "Not modified since the ETag given in If-None-Match"),
        (status = 400, description = "A path that breaks a path rule", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project or file (then), or the file was deleted", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range lies outside the file", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, path)): Path<(Uuid, String)>,
    Query(query): Query<VersionQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let download = state.cx.storage().open_file(caller.principal(), project, &path, query.version).await?;
    let file = download.file.clone();
    let etag = etag(file.version);
    let mut out = HeaderMap::new();
    out.insert(header::ETAG, etag.clone());
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(header::LAST_MODIFIED, http_date(file.created_at));
    out.insert("x-cloudx-version", HeaderValue::from(file.version));
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| etag_matches(v, file.version)) {
        return Ok((StatusCode::NOT_MODIFIED, out).into_response());
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&file.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    out.insert(header::CONTENT_DISPOSITION, attachment(&file.path));
    // A range of what the client has: with `If-Range` naming another version, the whole file.
    let same_version =
        headers.get(header::IF_RANGE).is_none_or(|v| v.to_str().ok().and_then(parse_strong_etag) == Some(file.version));
    let range = match headers.get(header::RANGE).filter(|_| same_version).map(|r| parse_range(r, file.size)) {
        None | Some(RangeAsk::Whole) => None,
        Some(RangeAsk::Part(range)) => Some(range),
        Some(RangeAsk::Unsatisfiable) => {
            let mut refused = ApiError::new(
                ErrorKind::InvalidInput,
                format!("the range lies outside the file's {} bytes", file.size),
            )
            .with_code("range_not_satisfiable")
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", file.size)) {
                refused.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(refused);
        }
    };
    let (status, length) = match &range {
        Some(r) => {
            let value = format!("bytes {}-{}/{}", r.start, r.end - 1, file.size);
            out.insert(header::CONTENT_RANGE, HeaderValue::from_str(&value).expect("ascii"));
            (StatusCode::PARTIAL_CONTENT, r.end - r.start)
        }
        None => (StatusCode::OK, file.size),
    };
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    let body = download.stream(range).await?;
    Ok((status, out, Body::from_stream(body)).into_response())
}

/// Options of an upload.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PutQuery {
    /// The version the file must be at (0: must not exist); else 412. Or send `If-Match`.
    #[serde(default)]
    expected_version: Option<i64>,
    /// A message kept with the version.
    #[serde(default)]
    message: Option<String>,
}

/// Uploads a file: the body is its raw content, streamed to the object store and committed as
/// a new version once complete. The same content again makes no new version.
/// `If-Match: "v3"` (or `expected_version=3`) refuses to overwrite a newer write;
/// `If-None-Match: *` refuses to overwrite an existing file.
#[utoipa::path(
    put, path = "/api/v1/projects/{project}/files/{*path}", tag = "files",
    security(("bearer" = [])),
    params(
        ("project" = Uuid, Path, description = "The project's id"),
        ("path" = String, Path, description = "The file's path; may contain `/`"),
        PutQuery,
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's content"),
    responses(
        (status = 200, description = "The version written (or the current one, for identical content)", body = FileVersion),
        (status = 400, description = "A path that breaks a path rule, or an interrupted body", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers cannot write", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project for the caller", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The path is a folder, or lies under a file", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The file is not at the expected version", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than storage.max_file_size", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The project's quota is exhausted", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn put_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, path)): Path<(Uuid, String)>,
    Query(query): Query<PutQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let expected = expected_version(&headers, query.expected_version)?;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let idle = state.cx.config().http.request_timeout;
    let options = PutOptions { expected_version: expected, message: query.message, declared_size: declared };
    let file = state
        .cx
        .storage()
        .put_file(caller.principal(), &caller.client(), project, &path, idle_limited(body, idle), options)
        .await?;
    Ok(([(header::ETAG, etag(file.version))], Json(file)).into_response())
}

/// Options of a deletion.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteQuery {
    /// The version the file must be at; else 412. Or send `If-Match`.
    #[serde(default)]
    expected_version: Option<i64>,
    /// A message kept with the version.
    #[serde(default)]
    message: Option<String>,
}

/// Deletes a file, or every file of a folder, as a new version (restorable from the history).
#[utoipa::path(
    delete, path = "/api/v1/projects/{project}/files/{*path}", tag = "files",
    security(("bearer" = [])),
    params(
        ("project" = Uuid, Path, description = "The project's id"),
        ("path" = String, Path, description = "The file's or folder's path"),
        DeleteQuery,
    ),
    responses(
        (status = 200, body = Versioned),
        (status = 403, description = "Viewers cannot delete", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project, file or folder", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The file is not at the expected version", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, path)): Path<(Uuid, String)>,
    Query(query): Query<DeleteQuery>,
    headers: HeaderMap,
) -> Result<Json<Versioned>, ApiError> {
    let expected = expected_version(&headers, query.expected_version)?;
    let version = state
        .cx
        .storage()
        .delete_file(caller.principal(), &caller.client(), project, &path, expected, query.message.as_deref())
        .await?;
    Ok(Json(Versioned { version }))
}

/// What to list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TreeQuery {
    /// The folder to list; the whole project when absent.
    #[serde(default)]
    prefix: Option<String>,
    /// The project version to list as of; the latest when absent.
    #[serde(default)]
    version: Option<i64>,
    /// Every file below the folder, instead of its files and sub-folders.
    #[serde(default)]
    recursive: bool,
}

/// Lists a folder (files and sub-folders) or, with `recursive`, every file below it; at any
/// version.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/tree", tag = "files",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id"), TreeQuery),
    responses(
        (status = 200, body = Tree),
        (status = 404, description = "No such project, or an empty folder", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn tree(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
    Query(query): Query<TreeQuery>,
) -> Result<Json<Tree>, ApiError> {
    let prefix = query.prefix.as_deref().unwrap_or("");
    let listed = state.cx.storage().list_files(caller.principal(), project, prefix, query.version, query.recursive);
    Ok(Json(listed.await?))
}

/// How much history.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryQuery {
    /// At most this many versions (default 100, at most 10000).
    #[serde(default)]
    limit: Option<u32>,
}

/// The versions of a path, newest first (deletions included).
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/history/{*path}", tag = "files",
    security(("bearer" = [])),
    params(
        ("project" = Uuid, Path, description = "The project's id"),
        ("path" = String, Path, description = "The file's path"),
        HistoryQuery,
    ),
    responses(
        (status = 200, body = Vec<FileVersion>),
        (status = 404, description = "No such project, or the path never existed", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, path)): Path<(Uuid, String)>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Vec<FileVersion>>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    Ok(Json(state.cx.storage().history(caller.principal(), project, &path, limit).await?))
}

/// Which content to bring back.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Restore {
    /// The version whose content to restore; by default the last content before the deletion.
    #[serde(default)]
    version: Option<i64>,
}

/// Restores a file's earlier content as a new version.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/restore/{*path}", tag = "files",
    security(("bearer" = [])),
    params(
        ("project" = Uuid, Path, description = "The project's id"),
        ("path" = String, Path, description = "The file's path"),
    ),
    request_body(content = Restore, description = "Optional; `{}` restores the last content"),
    responses(
        (status = 200, body = FileVersion),
        (status = 403, description = "Viewers cannot restore", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The path had no content then", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn restore_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, path)): Path<(Uuid, String)>,
    body: Option<Json<Restore>>,
) -> Result<Json<FileVersion>, ApiError> {
    let version = body.map(|Json(b)| b.version).unwrap_or_default();
    let storage = state.cx.storage();
    Ok(Json(storage.restore_file(caller.principal(), &caller.client(), project, &path, version).await?))
}

/// A move.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Move {
    /// The file or folder to move.
    from: String,
    /// Where to: no file may be there (a folder there is merged into).
    to: String,
    /// A message kept with the version.
    #[serde(default)]
    message: Option<String>,
}

/// Moves (renames) a file or a folder, as one new version.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/move", tag = "files",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id")),
    request_body = Move,
    responses(
        (status = 200, body = Versioned),
        (status = 403, description = "Viewers cannot move", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Nothing at `from`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Something is at `to`, or `to` is inside `from`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn move_file(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
    Json(body): Json<Move>,
) -> Result<Json<Versioned>, ApiError> {
    let version = state
        .cx
        .storage()
        .move_file(caller.principal(), &caller.client(), project, &body.from, &body.to, body.message.as_deref())
        .await?;
    Ok(Json(Versioned { version }))
}

/// What to archive.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ArchiveQuery {
    /// `tar.gz` (default) or `zip`.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    format: Option<ArchiveFormat>,
    /// The folder to archive (paths in the archive are relative to it); the whole project when absent.
    #[serde(default)]
    prefix: Option<String>,
    /// The project version to archive; the latest when absent.
    #[serde(default)]
    version: Option<i64>,
}

/// Downloads the project (or a folder of it, at any version) as one tar.gz or zip archive,
/// streamed as it is made.
#[utoipa::path(
    get, path = "/api/v1/projects/{project}/archive", tag = "files",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id"), ArchiveQuery),
    responses(
        (status = 200, description = "The archive", content_type = "application/gzip"),
        (status = 400, description = "An unknown format or a bad folder", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such project, or an empty folder", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn download_archive(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
    Query(query): Query<ArchiveQuery>,
) -> Result<Response, ApiError> {
    let format = query.format.unwrap_or_default();
    let prefix = query.prefix.as_deref().unwrap_or("");
    let archive =
        state.cx.storage().download_archive(caller.principal(), project, prefix, query.version, format).await?;
    let mut out = HeaderMap::new();
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    out.insert(header::CONTENT_DISPOSITION, attachment(&archive.file_name));
    out.insert("x-cloudx-version", HeaderValue::from(archive.version));
    Ok((out, Body::from_stream(archive.body)).into_response())
}

/// Where to unpack.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UnpackQuery {
    /// `tar.gz` (default) or `zip`.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    format: Option<ArchiveFormat>,
    /// The folder to unpack into; the project's root when absent.
    #[serde(default)]
    prefix: Option<String>,
    /// A message kept with the version.
    #[serde(default)]
    message: Option<String>,
}

/// Uploads a tar.gz or zip archive: its files become one new version (all or none). Entries
/// that are not regular files are left out and named in the answer.
#[utoipa::path(
    post, path = "/api/v1/projects/{project}/archive", tag = "files",
    security(("bearer" = [])),
    params(("project" = Uuid, Path, description = "The project's id"), UnpackQuery),
    request_body(content = Vec<u8>, content_type = "application/gzip", description = "The archive"),
    responses(
        (status = 200, body = ArchiveUpload),
        (status = 400, description = "Not an archive of the format, or an entry with a bad path (named)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers cannot write", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A file would replace a folder or lie under a file", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The archive or one of its files is larger than storage.max_file_size", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The project's quota would be exceeded", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn upload_archive(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<Uuid>,
    Query(query): Query<UnpackQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ArchiveUpload>, ApiError> {
    let format = query.format.unwrap_or_default();
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let max = state.cx.storage().config().max_file_size.as_u64();
    if declared.is_some_and(|d| d > max) {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the archive is {} bytes; an upload may hold at most {max} (storage.max_file_size)",
                declared.unwrap_or(0)
            ),
        ));
    }
    let idle = state.cx.config().http.request_timeout;
    let prefix = query.prefix.as_deref().unwrap_or("");
    let uploaded = state
        .cx
        .storage()
        .upload_archive(
            caller.principal(),
            &caller.client(),
            project,
            prefix,
            format,
            idle_limited(body, idle),
            query.message.as_deref(),
        )
        .await?;
    Ok(Json(uploaded))
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"v{version}\"")).expect("ascii")
}

/// Whether an `If-None-Match` value names `version` (or is `*`).
fn etag_matches(value: &HeaderValue, version: i64) -> bool {
    let Ok(text) = value.to_str() else { return false };
    text.split(',').map(str::trim).any(|tag| tag == "*" || parse_etag(tag) == Some(version))
}

fn parse_etag(tag: &str) -> Option<i64> {
    parse_strong_etag(tag.strip_prefix("W/").unwrap_or(tag))
}

/// A strong ETag of this API (`"v3"`): what `If-Match` and `If-Range` compare with.
fn parse_strong_etag(tag: &str) -> Option<i64> {
    tag.trim().strip_prefix("\"v")?.strip_suffix('"')?.parse().ok()
}

/// The version a write expects, from `If-Match`, `If-None-Match: *` or the query.
fn expected_version(headers: &HeaderMap, query: Option<i64>) -> Result<Option<i64>, ApiError> {
    let bad = || {
        ApiError::new(
            ErrorKind::InvalidInput,
            "If-Match takes one ETag of this API, such as \"v3\"; If-None-Match on a write takes only *",
        )
    };
    let from_header = match (headers.get(header::IF_MATCH), headers.get(header::IF_NONE_MATCH)) {
        (Some(m), _) => Some(m.to_str().ok().and_then(parse_strong_etag).ok_or_else(bad)?),
        (None, Some(n)) if n.as_bytes() == b"*" => Some(0),
        (None, Some(_)) => return Err(bad()),
        (None, None) => None,
    };
    match (from_header, query) {
        (Some(h), Some(q)) if h != q => Err(ApiError::new(
            ErrorKind::InvalidInput,
            format!("the precondition header says version {h} and expected_version says {q}"),
        )),
        (h, q) => Ok(h.or(q)),
    }
}

enum RangeAsk {
    Whole,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

/// One `bytes=` range (`a-b`, `a-`, `-n`); several ranges or other units get the whole file,
/// as RFC 9110 allows.
fn parse_range(value: &HeaderValue, size: u64) -> RangeAsk {
    let Some(spec) = value.to_str().ok().and_then(|v| v.trim().strip_prefix("bytes=")) else { return RangeAsk::Whole };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((start, end)) = spec.trim().split_once('-') else { return RangeAsk::Whole };
    let (start, end) = (start.trim(), end.trim());
    let range = match (start.parse::<u64>(), end.parse::<u64>()) {
        (Ok(s), Ok(e)) if s <= e => s..e.saturating_add(1).min(size),
        (Ok(_), Ok(_)) => return RangeAsk::Whole,
        (Ok(s), Err(_)) if end.is_empty() => s..size,
        (Err(_), Ok(n)) if start.is_empty() => size.saturating_sub(n)..size,
        _ => return RangeAsk::Whole,
    };
    if range.start >= size || range.is_empty() { RangeAsk::Unsatisfiable } else { RangeAsk::Part(range) }
}

/// `attachment`, with the file's name in ASCII and, when it needs it, UTF-8 (RFC 6266).
fn attachment(path: &str) -> HeaderValue {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let mut value = format!("attachment; filename=\"{ascii}\"");
    if ascii != name {
        value.push_str("; filename*=UTF-8''");
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                value.push(b as char);
            } else {
                value.push_str(&format!("%{b:02X}"));
            }
        }
    }
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("attachment"))
}

fn http_date(at: DateTime<Utc>) -> HeaderValue {
    HeaderValue::from_str(&at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()).expect("ascii")
}

/// The request body as a stream that fails when no data arrives for `idle`: an upload may take
/// as long as it needs, but not stall forever. The timer is re-armed at most once a second, not
/// for every chunk.
fn idle_limited(body: Body, idle: Duration) -> ByteStream {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let timer = Box::pin(tokio::time::sleep(idle));
    let state = (Box::pin(stream), timer, tokio::time::Instant::now());
    Box::pin(futures_util::stream::unfold(state, move |(mut stream, mut timer, mut armed)| async move {
        let next = tokio::select! {
            next = stream.next() => next,
            () = &mut timer => Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no data for {}s", idle.as_secs()),
            ))),
        };
        let now = tokio::time::Instant::now();
        if now.duration_since(armed) >= Duration::from_secs(1) {
            timer.as_mut().reset(now + idle);
            armed = now;
        }
        next.map(|item| (item, (stream, timer, armed)))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |v: &'static str| parse_range(&HeaderValue::from_static(v), 100);
        assert!(matches!(r("bytes=0-9"), RangeAsk::Part(x) if x == (0..10)));
        assert!(matches!(r("bytes=90-"), RangeAsk::Part(x) if x == (90..100)));
        assert!(matches!(r("bytes=-5"), RangeAsk::Part(x) if x == (95..100)));
        assert!(matches!(r("bytes=50-500"), RangeAsk::Part(x) if x == (50..100)));
        assert!(matches!(r("bytes=100-"), RangeAsk::Unsatisfiable));
        assert!(matches!(r("bytes=0-1,5-6"), RangeAsk::Whole));
        assert!(matches!(r("items=0-1"), RangeAsk::Whole));
        assert!(matches!(r("bytes=5-1"), RangeAsk::Whole));
    }

    #[test]
    fn etags_and_preconditions() {
        assert_eq!(parse_etag("\"v12\""), Some(12));
        assert_eq!(parse_etag("W/\"v3\""), Some(3));
        assert_eq!(parse_strong_etag("W/\"v3\""), None, "If-Match compares strongly");
        assert!(matches!(
            parse_range(&HeaderValue::from_static("bytes=0-18446744073709551615"), 100),
            RangeAsk::Part(x) if x == (0..100)
        ));
        assert!(etag_matches(&HeaderValue::from_static("\"v1\", \"v2\""), 2));
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert_eq!(expected_version(&headers, None).ok().flatten(), Some(0));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"v4\""));
        assert_eq!(expected_version(&headers, Some(4)).ok().flatten(), Some(4));
        assert!(expected_version(&headers, Some(5)).is_err());
    }

    #[test]
    fn attachments_name_the_file() {
        assert_eq!(attachment("a/b/report.html"), "attachment; filename=\"report.html\"");
        assert_eq!(attachment("ü.txt"), "attachment; filename=\"_.txt\"; filename*=UTF-8''%C3%BC.txt");
    }

    #[test]
    fn uploads_are_recognised() {
        use axum::http::Method;
        let id = "/api/v1/projects/0190a3c4-0000-7000-8000-000000000000";
        assert!(is_upload(&Method::PUT, &format!("{id}/files/a/b")));
        assert!(is_upload(&Method::POST, &format!("{id}/archive")));
        assert!(!is_upload(&Method::GET, &format!("{id}/files/a")));
        assert!(!is_upload(&Method::PUT, &format!("{id}/members/x")));
    }
}
