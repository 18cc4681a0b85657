//! Projects, members and files through the daemon: uploads stream from a file on disk,
//! downloads stream into one (replaced atomically, never left half-written).

use std::path::Path;

use cloudx_core::storage::{
    ByteStream, FileVersion, Member, NewProject, Project, ProjectPath, ProjectUpdate, Template, Tree, Versioned,
};
use cloudx_core::{Error, ErrorKind, ProjectRole, Result};
use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode, header};
use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use uuid::Uuid;

use super::{Client, unreachable_daemon};

/// A file being read: its version, its size when known, and its content as it streams in.
pub struct Opened {
    /// The version read.
    pub version: i64,
    /// The content's length, when the other side said it.
    pub size: Option<u64>,
    /// The content.
    pub body: ByteStream,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("version", &self.version).field("size", &self.size).finish_non_exhaustive()
    }
}

/// What a download wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// The version of the file that was read.
    pub version: i64,
    /// How many bytes were written.
    pub size: u64,
}

impl Client {
    /// The URL of `/api/v1/projects/{project}/{area}/{path}`, with each segment of `path`
    /// percent-encoded.
    fn project_url(&self, project: Uuid, area: &str, path: Option<&str>) -> Result<reqwest::Url> {
        let mut url =
            self.base.join(&format!("api/v1/projects/{project}/{area}")).map_err(|e| Error::invalid(e.to_string()))?;
        if let Some(path) = path {
            // A file path is checked here, with the daemon's rules: the URL would otherwise
            // resolve `..` and `.` segments away and address another file.
            let path = if area == "members" { path.to_owned() } else { ProjectPath::parse(path)?.to_string() };
            let mut segments =
                url.path_segments_mut().map_err(|()| Error::invalid("the daemon URL cannot take a path"))?;
            if area == "members" {
                segments.push(&path);
            } else {
                segments.extend(path.split('/'));
            }
        }
        Ok(url)
    }

    /// The projects the caller is a member of (`all`: every one, for administrators).
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn list_projects(&self, deleted: bool, all: bool, slug: Option<&str>) -> Result<Vec<Project>> {
        let mut url = self.base.join("api/v1/projects").map_err(|e| Error::invalid(e.to_string()))?;
        url.query_pairs_mut().append_pair("deleted", &deleted.to_string()).append_pair("all", &all.to_string());
        if let Some(slug) = slug {
            url.query_pairs_mut().append_pair("slug", slug);
        }
        let response = self.exchange_with(Method::GET, url, true, Ok).await?;
        json_of(&self.base, response).await
    }

    /// Creates a project.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn create_project(&self, new: &NewProject) -> Result<Project> {
        self.send(Method::POST, "api/v1/projects", Some(new), true).await
    }

    /// One project.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn project(&self, id: Uuid) -> Result<Project> {
        self.send::<(), _>(Method::GET, &format!("api/v1/projects/{id}"), None, true).await
    }

    /// Changes a project's settings.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn update_project(&self, id: Uuid, update: &ProjectUpdate) -> Result<Project> {
        self.send(Method::PATCH, &format!("api/v1/projects/{id}"), Some(update), true).await
    }

    /// Deletes a project (restorable), or purges it (administrators).
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn delete_project(&self, id: Uuid, purge: bool) -> Result<()> {
        self.send_empty::<()>(Method::DELETE, &format!("api/v1/projects/{id}?purge={purge}"), None).await
    }

    /// Restores a deleted project.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn restore_project(&self, id: Uuid) -> Result<Project> {
        self.send::<(), _>(Method::POST, &format!("api/v1/projects/{id}/restore"), None, true).await
    }

    /// Makes another user (id or email) the project's owner.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn transfer_project(&self, id: Uuid, to: &str) -> Result<Project> {
        self.send(Method::POST, &format!("api/v1/projects/{id}/transfer"), Some(&json!({ "to": to })), true).await
    }

    /// The members of a project.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn members(&self, id: Uuid) -> Result<Vec<Member>> {
        self.send::<(), _>(Method::GET, &format!("api/v1/projects/{id}/members"), None, true).await
    }

    /// Shares a project with a user (id or email), or changes their role.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn set_member(&self, id: Uuid, user: &str, role: ProjectRole) -> Result<Member> {
        let url = self.project_url(id, "members", Some(user))?;
        let response = self.exchange_with(Method::PUT, url, true, |r| Ok(r.json(&json!({ "role": role })))).await?;
        json_of(&self.base, response).await
    }

    /// Removes a member (id or email).
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn remove_member(&self, id: Uuid, user: &str) -> Result<()> {
        let url = self.project_url(id, "members", Some(user))?;
        self.exchange_with(Method::DELETE, url, true, Ok).await.map(drop)
    }

    /// The built-in templates.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn templates(&self) -> Result<Vec<Template>> {
        self.send::<(), _>(Method::GET, "api/v1/templates", None, true).await
    }

    /// Lists a folder (`recursive`: every file below it), at the latest version or `version`.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn tree(&self, id: Uuid, prefix: &str, version: Option<i64>, recursive: bool) -> Result<Tree> {
        let mut url = self.project_url(id, "tree", None)?;
        url.query_pairs_mut().append_pair("prefix", prefix).append_pair("recursive", &recursive.to_string());
        if let Some(v) = version {
            url.query_pairs_mut().append_pair("version", &v.to_string());
        }
        let response = self.exchange_with(Method::GET, url, true, Ok).await?;
        json_of(&self.base, response).await
    }

    /// Uploads the file at `local` as `path`, streamed. `expected_version` (0: must not exist)
    /// makes the daemon refuse a write that another came before.
    ///
    /// # Errors
    /// As the daemon answers: [`ErrorKind::PreconditionFailed`] when another write came first.
    pub async fn put_file(
        &self,
        id: Uuid,
        path: &str,
        local: &Path,
        expected_version: Option<i64>,
        message: Option<&str>,
    ) -> Result<FileVersion> {
        let read_error = |e: std::io::Error| Error::invalid(format!("cannot read {}: {e}", local.display()));
        let file = tokio::fs::File::open(local).await.map_err(read_error)?;
        let length = file.metadata().await.map_err(read_error)?.len();
        let body: ByteStream = Box::pin(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
        self.put_stream(id, path, body, Some(length), expected_version, message).await
    }

    /// Uploads `body` as `path`, streamed; `size`, when known, is sent ahead (the daemon then
    /// refuses an oversized file before reading it). `expected_version` as for
    /// [`put_file`](Self::put_file). An error of `body` aborts the upload: no version is
    /// written.
    ///
    /// # Errors
    /// As the daemon answers: [`ErrorKind::PreconditionFailed`] when another write came first.
    pub async fn put_stream(
        &self,
        id: Uuid,
        path: &str,
        body: ByteStream,
        size: Option<u64>,
        expected_version: Option<i64>,
        message: Option<&str>,
    ) -> Result<FileVersion> {
        let mut url = self.project_url(id, "files", Some(path))?;
        if let Some(v) = expected_version {
            url.query_pairs_mut().append_pair("expected_version", &v.to_string());
        }
        if let Some(m) = message {
            url.query_pairs_mut().append_pair("message", m);
        }
        // A stream is sent once: a session refreshed part-way cannot send it again.
        let body = std::sync::Mutex::new(Some(body));
        let response = self
            .transfer(Method::PUT, url, |request| {
                let stream =
                    body.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().ok_or_else(|| {
                        Error::new(ErrorKind::Unauthenticated, "the session expired during the upload; sign in again")
                    })?;
                let request = request.header(header::CONTENT_TYPE, "application/octet-stream");
                let request = match size {
                    Some(size) => request.header(header::CONTENT_LENGTH, size),
                    None => request,
                };
                Ok(request.body(reqwest::Body::wrap_stream(stream)))
            })
            .await?;
        json_of(&self.base, response).await
    }

    /// Downloads `path` (at `version`, else the latest) into `local`: written beside it and
    /// renamed into place once complete.
    ///
    /// # Errors
    /// As the daemon answers, or [`ErrorKind::Internal`] when `local` cannot be written.
    pub async fn get_file(&self, id: Uuid, path: &str, version: Option<i64>, local: &Path) -> Result<Downloaded> {
        let opened = self.open_file(id, path, version).await?;
        let chunks = opened.body.map(|chunk| {
            chunk.map_err(|e| Error::new(ErrorKind::Unavailable, format!("cannot read the file's content: {e}")))
        });
        let size = write_file_atomically(local, chunks).await?;
        Ok(Downloaded { version: opened.version, size })
    }

    /// Opens `path` (at `version`, else the latest) for reading as it streams in.
    ///
    /// # Errors
    /// As the daemon answers; the stream's items fail when the daemon stops sending.
    pub async fn open_file(&self, id: Uuid, path: &str, version: Option<i64>) -> Result<Opened> {
        let mut url = self.project_url(id, "files", Some(path))?;
        if let Some(v) = version {
            url.query_pairs_mut().append_pair("version", &v.to_string());
        }
        let response = self.transfer(Method::GET, url, Ok).await?;
        let version = response
            .headers()
            .get("x-cloudx-version")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| Error::new(ErrorKind::Internal, "the daemon's answer names no version"))?;
        let size = response.content_length();
        let base = self.base.clone();
        let body = futures_util::stream::unfold(Box::pin(response.bytes_stream()), move |mut body| {
            let base = base.clone();
            async move {
                let item = match tokio::time::timeout(super::TIMEOUT, body.next()).await {
                    Err(_) => Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the daemon at {base} stopped sending"),
                    ))),
                    Ok(next) => next.map(|chunk| {
                        chunk.map_err(|e| std::io::Error::other(unreachable_daemon(&base, &e).message().to_owned()))
                    }),
                };
                item.map(|item| (item, body))
            }
        });
        Ok(Opened { version, size, body: Box::pin(body) })
    }

    /// The versions of `path`, newest first.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn history(&self, id: Uuid, path: &str, limit: u32) -> Result<Vec<FileVersion>> {
        let mut url = self.project_url(id, "history", Some(path))?;
        url.query_pairs_mut().append_pair("limit", &limit.to_string());
        let response = self.exchange_with(Method::GET, url, true, Ok).await?;
        json_of(&self.base, response).await
    }

    /// Deletes a file or a folder; returns the new version.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn delete_file(
        &self,
        id: Uuid,
        path: &str,
        expected_version: Option<i64>,
        message: Option<&str>,
    ) -> Result<i64> {
        let mut url = self.project_url(id, "files", Some(path))?;
        if let Some(v) = expected_version {
            url.query_pairs_mut().append_pair("expected_version", &v.to_string());
        }
        if let Some(m) = message {
            url.query_pairs_mut().append_pair("message", m);
        }
        let response = self.exchange_with(Method::DELETE, url, true, Ok).await?;
        Ok(json_of::<Versioned>(&self.base, response).await?.version)
    }

    /// Restores the content `path` had at `version` (by default, before it was deleted).
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn restore_file(&self, id: Uuid, path: &str, version: Option<i64>) -> Result<FileVersion> {
        let url = self.project_url(id, "restore", Some(path))?;
        let response =
            self.exchange_with(Method::POST, url, true, |r| Ok(r.json(&json!({ "version": version })))).await?;
        json_of(&self.base, response).await
    }

    /// Moves a file or folder; returns the new version.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn move_file(&self, id: Uuid, from: &str, to: &str, message: Option<&str>) -> Result<i64> {
        let body = json!({ "from": from, "to": to, "message": message });
        let v: Versioned = self.send(Method::POST, &format!("api/v1/projects/{id}/move"), Some(&body), true).await?;
        Ok(v.version)
    }
}

/// Writes `chunks` into the file `local`: beside it first, fsynced and renamed into place once
/// complete, so that `local` is never left half-written; the partial file is removed on failure.
///
/// # Errors
/// The first error of `chunks`, or [`ErrorKind::Internal`] when `local` cannot be written.
pub async fn write_file_atomically(
    local: &Path,
    chunks: impl futures_util::Stream<Item = Result<axum::body::Bytes>>,
) -> Result<u64> {
    let write_error =
        |e: std::io::Error| Error::new(ErrorKind::Internal, format!("cannot write {}: {e}", local.display()));
    if let Some(dir) = local.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(write_error)?;
    }
    let name = local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = local.with_file_name(format!(".{name}.cloudx-{}.part", std::process::id()));
    let written = async {
        let mut out =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(&temp).await.map_err(write_error)?);
        let mut size = 0u64;
        let mut chunks = std::pin::pin!(chunks);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(write_error)?;
        }
        out.flush().await.map_err(write_error)?;
        out.into_inner().sync_all().await.map_err(write_error)?;
        tokio::fs::rename(&temp, local).await.map_err(write_error)?;
        Ok::<_, Error>(size)
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    written
}

pub(super) async fn json_of<T: serde::de::DeserializeOwned>(
    base: &reqwest::Url,
    response: reqwest::Response,
) -> Result<T> {
    if response.status() == StatusCode::NO_CONTENT {
        return Err(Error::new(ErrorKind::Internal, "the daemon answered without a body"));
    }
    let bytes = response.bytes().await.map_err(|e| unreachable_daemon(base, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::new(ErrorKind::Internal, format!("the daemon at {base} sent an answer this client cannot read: {e}"))
    })
}
