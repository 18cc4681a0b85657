//! Files: versioned writes, reads of any version, listings, history, moves.

use std::ops::Range;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::blobs::{BlobId, Blobs, ByteStream, SizeLimits};
use super::path::{Folder, ProjectPath};
use super::{Audited, GC_LOCK, Storage, now, project_lock, to_i64, to_u64};
use crate::access::ProjectAction;
use crate::auth::audit::Client;
use crate::db::{Database, db_error};
use crate::error::{Error, ErrorKind, Result};
use crate::principal::Principal;

/// One version of one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileVersion {
    /// The path.
    pub path: String,
    /// The project version that wrote it.
    pub version: i64,
    /// Its size in bytes (0 for a deletion).
    pub size: u64,
    /// Its media type, from its name.
    pub content_type: String,
    /// The SHA-256 of its content (hex); none for a deletion.
    pub sha256: Option<String>,
    /// Whether this version deleted the path.
    pub deleted: bool,
    /// Who wrote it.
    pub author_id: Option<Uuid>,
    /// The message given with the write.
    pub message: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// An entry of a listing: a file, or a folder holding files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TreeEntry {
    /// The path from the project's root.
    pub path: String,
    /// Whether this is a folder (listed when not recursive).
    #[serde(default)]
    pub folder: bool,
    /// The file's size, or the total size of the folder's files.
    pub size: u64,
    /// The version that last changed the file (or any file of the folder).
    pub version: i64,
    /// The file's media type (none for a folder).
    pub content_type: Option<String>,
    /// The SHA-256 of the file's content (none for a folder).
    pub sha256: Option<String>,
    /// When the file (or the folder's newest file) was written.
    pub modified_at: DateTime<Utc>,
}

/// A listing: the version listed and its entries, by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tree {
    /// The project version listed.
    pub version: i64,
    /// The entries, by path.
    pub entries: Vec<TreeEntry>,
}

/// The version a change made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Versioned {
    /// The new project version (the current one when nothing changed).
    pub version: i64,
}

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// The version the caller expects the path to be at (0: must not exist); a different one
    /// fails with [`ErrorKind::PreconditionFailed`].
    pub expected_version: Option<i64>,
    /// A message kept with the version.
    pub message: Option<String>,
    /// The length the caller declared: checked against the limits before anything is read.
    pub declared_size: Option<u64>,
}

/// A file found for reading: its version, and the means to stream its content.
#[derive(Debug)]
pub struct Download {
    /// The version found.
    pub file: FileVersion,
    blobs: Blobs,
    blob: BlobId,
}

impl Download {
    /// Streams the content, or the bytes in `range` (which must lie within the file).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a range outside the file, [`ErrorKind::Unavailable`]
    /// when the object store does not answer.
    pub async fn stream(self, range: Option<Range<u64>>) -> Result<ByteStream> {
        if let Some(r) = &range
            && (r.start >= r.end || r.end > self.file.size)
        {
            return Err(Error::invalid(format!(
                "range {}-{} is outside the file's {} bytes",
                r.start, r.end, self.file.size
            )));
        }
        if self.file.size == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        self.blobs.read(self.blob, range).await
    }
}

/// What `cloudx storage gc` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Blobs in the object store.
    pub blobs: u64,
    /// Blobs deleted: no version refers to them, and they are older than `storage.gc_grace`.
    pub deleted: u64,
    /// The bytes those held.
    pub bytes_freed: u64,
    /// Temporary files of interrupted uploads removed.
    pub temp_files: u64,
    /// Versions whose blob is missing from the store (should be 0: a sign of lost data).
    pub missing: u64,
}

/// One change of a commit.
#[derive(Debug, Clone)]
pub(super) struct Change {
    path: ProjectPath,
    blob: Option<(BlobId, u64)>,
    expected: Option<i64>,
}

impl Change {
    pub(super) fn put(path: ProjectPath, blob: BlobId, size: u64, expected: Option<i64>) -> Self {
        Change { path, blob: Some((blob, size)), expected }
    }

    pub(super) fn delete(path: ProjectPath, expected: Option<i64>) -> Self {
        Change { path, blob: None, expected }
    }

    /// The blob a write stores.
    pub(super) fn blob(&self) -> Option<BlobId> {
        self.blob.map(|(id, _)| id)
    }
}

/// The outcome of a commit: the version it made (or the head, when nothing changed) and each
/// path's resulting version.
#[derive(Debug, Clone)]
pub(super) struct Committed {
    pub(super) version: i64,
    pub(super) changed: bool,
    pub(super) files: Vec<FileVersion>,
}

macro_rules! version_columns {
    () => {
        "path, version, sha256, size, content_type, author_id, message, created_at"
    };
}

type VersionRow = (String, i64, Option<String>, i64, String, Option<Uuid>, Option<String>, DateTime<Utc>);

fn file_version(
    (path, version, sha256, size, content_type, author_id, message, created_at): VersionRow,
) -> FileVersion {
    FileVersion {
        path,
        version,
        size: to_u64(size),
        content_type,
        deleted: sha256.is_none(),
        sha256,
        author_id,
        message,
        created_at,
    }
}

/// The media type of a path, from its extension.
pub(crate) fn content_type(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    mime_guess::from_path(name).first_raw().unwrap_or("application/octet-stream").to_owned()
}

/// A domain error raised inside a transaction (which it rolls back).
enum TxError {
    Db(sqlx::Error),
    Refused(Error),
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        TxError::Db(e)
    }
}

impl Storage {
    /// Writes a file: streams `body` into the store and commits a new version of `path`.
    /// Writing the content the path already has makes no new version.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a bad path or an interrupted body,
    /// [`ErrorKind::PreconditionFailed`] when `expected_version` does not hold,
    /// [`ErrorKind::Conflict`] when the path is a folder or lies under a file,
    /// [`ErrorKind::PayloadTooLarge`] past `storage.max_file_size`,
    /// [`ErrorKind::QuotaExceeded`] past the project's quota.
    pub async fn put_file(
        &self,
        actor: &Principal,
        client: &Client,
        project: Uuid,
        path: &str,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<FileVersion> {
        let path = ProjectPath::parse(path)?;
        let access = self.access(actor, project, ProjectAction::Write, false).await?;
        let current = self.current(project, &path).await?;
        if let Some(expected) = options.expected_version {
            check_expected(&path, current.as_ref().map_or(0, |c| c.version), expected)?;
        }
        let p = &access.project;
        let replaced = current.as_ref().map_or(0, |c| c.size);
        if current.is_none() && p.files >= p.quota_files {
            return Err(files_quota(p.quota_files));
        }
        let limits = SizeLimits {
            file: self.config.max_file_size.as_u64(),
            quota: p.quota_bytes.saturating_sub(p.bytes).saturating_add(replaced),
        };
        if let Some(declared) = options.declared_size {
            limits.check(declared)?;
        }
        let spooled = self.blobs.spool(body, limits, options.declared_size, true).await?;
        // The upload may have taken long: the caller may have lost the right to write meanwhile.
        self.access(actor, project, ProjectAction::Write, false).await?;
        let (blob, size) = (spooled.id, spooled.size);
        let lease = self.lease(&[blob]).await?;
        let committed = async {
            self.blobs.publish(spooled).await?;
            self.commit(
                project,
                actor.user_id(),
                vec![Change::put(path.clone(), blob, size, options.expected_version)],
                options.message.as_deref(),
            )
            .await
        }
        .await;
        self.release(lease).await;
        let committed = committed?;
        let file = committed
            .files
            .into_iter()
            .next()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "the commit recorded nothing"))?;
        if committed.changed {
            self.audit(
                actor,
                client,
                Audited::FileWrite.as_str(),
                project,
                Some(format!("{path} (version {})", file.version)),
            )
            .await?;
        }
        Ok(file)
    }

    /// Finds a file for reading: its latest version, or the one current at `version`.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the path does not exist (then), or was deleted.
    pub async fn open_file(
        &self,
        actor: &Principal,
        project: Uuid,
        path: &str,
        version: Option<i64>,
    ) -> Result<Download> {
        let path = ProjectPath::parse(path)?;
        self.access(actor, project, ProjectAction::Read, false).await?;
        let found = self.version_at(project, &path, version).await?;
        let file = match found {
            Some(f) if !f.deleted => f,
            Some(f) => return Err(Error::not_found(format!("`{path}` was deleted at version {}", f.version))),
            None => return Err(Error::not_found(format!("no file `{path}`"))),
        };
        let blob = file
            .sha256
            .as_deref()
            .and_then(BlobId::parse)
            .ok_or_else(|| Error::new(ErrorKind::Internal, "a version names no blob"))?;
        Ok(Download { file, blobs: self.blobs.clone(), blob })
    }

    /// Lists a folder (or the whole project): its files and, unless `recursive`, its
    /// sub-folders as single entries; at the latest version or as of `version`, which the
    /// answer names.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for a folder that holds nothing.
    pub async fn list_files(
        &self,
        actor: &Principal,
        project: Uuid,
        folder: &str,
        version: Option<i64>,
        recursive: bool,
    ) -> Result<Tree> {
        let folder = Folder::parse(folder)?;
        let access = self.access(actor, project, ProjectAction::Read, false).await?;
        let listed = version.unwrap_or(access.project.version);
        let files = self.tree(project, &folder, version).await?;
        if files.is_empty() && !folder.is_root() {
            return Err(Error::not_found(format!("no folder `{folder}`")));
        }
        if recursive {
            return Ok(Tree { version: listed, entries: files });
        }
        let mut out: Vec<TreeEntry> = Vec::new();
        for file in files {
            let rest = folder.relative(&file.path);
            match rest.split_once('/') {
                None => out.push(file),
                Some((sub, _)) => {
                    let sub_path = if folder.is_root() { sub.to_owned() } else { format!("{}/{sub}", folder.as_str()) };
                    match out.last_mut() {
                        Some(last) if last.folder && last.path == sub_path => {
                            last.size += file.size;
                            last.version = last.version.max(file.version);
                            last.modified_at = last.modified_at.max(file.modified_at);
                        }
                        _ => out.push(TreeEntry {
                            path: sub_path,
                            folder: true,
                            size: file.size,
                            version: file.version,
                            content_type: None,
                            sha256: None,
                            modified_at: file.modified_at,
                        }),
                    }
                }
            }
        }
        Ok(Tree { version: listed, entries: out })
    }

    /// The versions of a path, newest first.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for a path that never existed.
    pub async fn history(&self, actor: &Principal, project: Uuid, path: &str, limit: u32) -> Result<Vec<FileVersion>> {
        let path = ProjectPath::parse(path)?;
        self.access(actor, project, ProjectAction::Read, false).await?;
        let sql = concat!(
            "SELECT ",
            version_columns!(),
            " FROM file_versions WHERE project_id = $1 AND path = $2 ORDER BY version DESC LIMIT $3"
        );
        let rows: Vec<VersionRow> = on_db!(&self.db, |pool| sqlx::query_as(sql)
            .bind(project)
            .bind(path.as_str())
            .bind(i64::from(limit.clamp(1, 10_000)))
            .fetch_all(pool)
            .await)
        .map_err(|e| db_error("reading the history", e))?;
        if rows.is_empty() {
            return Err(Error::not_found(format!("no file `{path}` in any version")));
        }
        Ok(rows.into_iter().map(file_version).collect())
    }

    /// Deletes a file, or every file of a folder, in one new version (the content stays in
    /// the history and can be restored).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when nothing is there, [`ErrorKind::PreconditionFailed`] when
    /// `expected_version` does not hold (for a file).
    pub async fn delete_file(
        &self,
        actor: &Principal,
        client: &Client,
        project: Uuid,
        path: &str,
        expected_version: Option<i64>,
        message: Option<&str>,
    ) -> Result<i64> {
        let path = ProjectPath::parse(path)?;
        self.access(actor, project, ProjectAction::Write, false).await?;
        let changes = if self.current(project, &path).await?.is_some() {
            vec![Change::delete(path.clone(), expected_version)]
        } else if expected_version.is_some() {
            return Err(Error::invalid(format!(
                "`{path}` is not a file: an expected version applies to a file, not a folder"
            )));
        } else {
            let inside = self.tree(project, &Folder::from(path.clone()), None).await?;
            if inside.is_empty() {
                return Err(Error::not_found(format!("no file or folder `{path}`")));
            }
            inside.into_iter().map(|f| Ok(Change::delete(ProjectPath::parse(&f.path)?, None))).collect::<Result<_>>()?
        };
        let committed = self.commit(project, actor.user_id(), changes, message).await?;
        self.audit(
            actor,
            client,
            Audited::FileDelete.as_str(),
            project,
            Some(format!("{path} (version {})", committed.version)),
        )
        .await?;
        Ok(committed.version)
    }

    /// Brings back the content `path` had at `version` (by default, the last content it had
    /// before it was deleted), as a new version.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the path had no content then.
    pub async fn restore_file(
        &self,
        actor: &Principal,
        client: &Client,
        project: Uuid,
        path: &str,
        version: Option<i64>,
    ) -> Result<FileVersion> {
        let path = ProjectPath::parse(path)?;
        self.access(actor, project, ProjectAction::Write, false).await?;
        let source = match version {
            Some(v) => self.version_at(project, &path, Some(v)).await?.filter(|f| !f.deleted),
            None => {
                let sql = concat!(
                    "SELECT ",
                    version_columns!(),
                    " FROM file_versions WHERE project_id = $1 AND path = $2 AND sha256 IS NOT NULL ORDER BY version DESC LIMIT 1"
                );
                let row: Option<VersionRow> = on_db!(&self.db, |pool| sqlx::query_as(sql)
                    .bind(project)
                    .bind(path.as_str())
                    .fetch_optional(pool)
                    .await)
                .map_err(|e| db_error("reading the history", e))?;
                row.map(file_version)
            }
        };
        let source = source.ok_or_else(|| match version {
            Some(v) => Error::not_found(format!("`{path}` had no content at version {v}")),
            None => Error::not_found(format!("`{path}` never had any content")),
        })?;
        let blob = source
            .sha256
            .as_deref()
            .and_then(BlobId::parse)
            .ok_or_else(|| Error::new(ErrorKind::Internal, "a version names no blob"))?;
        let message = format!("restored from version {}", source.version);
        let committed = self
            .commit(project, actor.user_id(), vec![Change::put(path.clone(), blob, source.size, None)], Some(&message))
            .await?;
        self.audit(
            actor,
            client,
            Audited::FileRestore.as_str(),
            project,
            Some(format!("{path} from version {}", source.version)),
        )
        .await?;
        committed.files.into_iter().next().ok_or_else(|| Error::new(ErrorKind::Internal, "the commit recorded nothing"))
    }

    /// Moves (renames) a file or a folder, in one new version.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when nothing is at `from`, [`ErrorKind::Conflict`] when
    /// something is at `to` already, or `to` lies inside `from`.
    pub async fn move_file(
        &self,
        actor: &Principal,
        client: &Client,
        project: Uuid,
        from: &str,
        to: &str,
        message: Option<&str>,
    ) -> Result<i64> {
        let (from, to) = (ProjectPath::parse(from)?, ProjectPath::parse(to)?);
        self.access(actor, project, ProjectAction::Write, false).await?;
        if from == to || Folder::from(from.clone()).contains(to.as_str()) {
            return Err(Error::new(ErrorKind::Conflict, format!("cannot move `{from}` onto or into itself")));
        }
        let sources: Vec<(ProjectPath, BlobId, u64, i64)> = match self.current(project, &from).await? {
            Some(file) => vec![(from.clone(), file.blob, file.size, file.version)],
            None => {
                let inside = self.tree(project, &Folder::from(from.clone()), None).await?;
                if inside.is_empty() {
                    return Err(Error::not_found(format!("no file or folder `{from}`")));
                }
                inside
                    .into_iter()
                    .map(|f| {
                        let blob = f
                            .sha256
                            .as_deref()
                            .and_then(BlobId::parse)
                            .ok_or_else(|| Error::new(ErrorKind::Internal, "a file names no blob"))?;
                        Ok((ProjectPath::parse(&f.path)?, blob, f.size, f.version))
                    })
                    .collect::<Result<_>>()?
            }
        };
        let mut changes = Vec::with_capacity(sources.len() * 2);
        // Each source must still be as read, each target must not exist: a write that lands in
        // between is not lost.
        // Every deletion before every write: a target that is also a source is written, not lost.
        let mut puts = Vec::with_capacity(sources.len());
        for (path, blob, size, version) in sources {
            puts.push(Change::put(path.rebase(&from, &to)?, blob, size, Some(0)));
            changes.push(Change::delete(path, Some(version)));
        }
        changes.extend(puts);
        let committed = self.commit(project, actor.user_id(), changes, message).await.map_err(|e| match e.kind() {
            ErrorKind::PreconditionFailed if e.message().contains("exists already") => {
                Error::new(ErrorKind::Conflict, format!("{}; move or delete it first", e.message()))
            }
            ErrorKind::PreconditionFailed => Error::new(
                ErrorKind::Conflict,
                format!("`{from}` changed while it was being moved; try again ({})", e.message()),
            ),
            _ => e,
        })?;
        self.audit(
            actor,
            client,
            Audited::FileMove.as_str(),
            project,
            Some(format!("{from} to {to} (version {})", committed.version)),
        )
        .await?;
        Ok(committed.version)
    }

    /// The current files of a project as changes that recreate them (for a copy).
    pub(super) async fn current_files_as_changes(&self, project: Uuid) -> Result<Vec<Change>> {
        self.tree(project, &Folder::root(), None)
            .await?
            .into_iter()
            .map(|f| {
                let blob = f
                    .sha256
                    .as_deref()
                    .and_then(BlobId::parse)
                    .ok_or_else(|| Error::new(ErrorKind::Internal, "a file names no blob"))?;
                Ok(Change::put(ProjectPath::parse(&f.path)?, blob, f.size, None))
            })
            .collect()
    }

    /// The files under `folder`, by path: current ones, or those current at `version`.
    pub(super) async fn tree(&self, project: Uuid, folder: &Folder, version: Option<i64>) -> Result<Vec<TreeEntry>> {
        let (lo, hi) = folder.bounds().unwrap_or_else(|| (String::new(), "\u{10ffff}".to_owned()));
        type Row = (String, i64, String, i64, String, DateTime<Utc>);
        let rows: Vec<Row> = match version {
            // The current tree comes back as one JSON document built by the database: one row
            // instead of one per file (which costs a thread hand-off per row with SQLite).
            None => {
                let sql = match &self.db {
                    Database::Sqlite(_) => {
                        "SELECT json_group_array(json_object('path', path, 'version', version, 'sha256', sha256, \
                         'size', size, 'content_type', content_type, 'modified_at', modified_at) ORDER BY path) \
                         FROM files WHERE project_id = $1 AND path >= $2 AND path < $3"
                    }
                    Database::Postgres(_) => {
                        "SELECT COALESCE(json_agg(json_build_object('path', path, 'version', version, 'sha256', sha256, \
                         'size', size, 'content_type', content_type, 'modified_at', modified_at) ORDER BY path), '[]')::text \
                         FROM files WHERE project_id = $1 AND path >= $2 AND path < $3"
                    }
                };
                let json: Option<String> = on_db!(&self.db, |pool| {
                    sqlx::query_scalar(sql).bind(project).bind(&lo).bind(&hi).fetch_one(pool).await
                })
                .map_err(|e| db_error("listing files", e))?;
                return serde_json::from_str(json.as_deref().unwrap_or("[]"))
                    .map_err(|e| Error::internal("the database's listing cannot be read", e));
            }
            Some(v) => on_db!(&self.db, |pool| sqlx::query_as(
                "SELECT f.path, f.version, f.sha256, f.size, f.content_type, f.created_at FROM file_versions f \
                 JOIN (SELECT path, MAX(version) AS version FROM file_versions \
                       WHERE project_id = $1 AND path >= $2 AND path < $3 AND version <= $4 GROUP BY path) l \
                   ON l.path = f.path AND l.version = f.version \
                 WHERE f.project_id = $1 AND f.sha256 IS NOT NULL ORDER BY f.path"
            )
            .bind(project)
            .bind(&lo)
            .bind(&hi)
            .bind(v)
            .fetch_all(pool)
            .await),
        }
        .map_err(|e| db_error("listing files", e))?;
        Ok(rows
            .into_iter()
            .map(|(path, version, sha256, size, content_type, modified_at)| TreeEntry {
                path,
                folder: false,
                size: to_u64(size),
                version,
                content_type: Some(content_type),
                sha256: Some(sha256),
                modified_at,
            })
            .collect())
    }

    /// The version of `path` current at `version` (latest when `None`), deletions included.
    async fn version_at(&self, project: Uuid, path: &ProjectPath, version: Option<i64>) -> Result<Option<FileVersion>> {
        let sql = concat!(
            "SELECT ",
            version_columns!(),
            " FROM file_versions WHERE project_id = $1 AND path = $2 AND version <= $3 ORDER BY version DESC LIMIT 1"
        );
        let row: Option<VersionRow> = on_db!(&self.db, |pool| sqlx::query_as(sql)
            .bind(project)
            .bind(path.as_str())
            .bind(version.unwrap_or(i64::MAX))
            .fetch_optional(pool)
            .await)
        .map_err(|e| db_error("reading the file", e))?;
        Ok(row.map(file_version))
    }

    async fn current(&self, project: Uuid, path: &ProjectPath) -> Result<Option<Current>> {
        let row: Option<(i64, String, i64, String)> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT version, sha256, size, content_type FROM files WHERE project_id = $1 AND path = $2"
        )
        .bind(project)
        .bind(path.as_str())
        .fetch_optional(pool)
        .await)
        .map_err(|e| db_error("reading the file", e))?;
        Ok(row.and_then(|(version, sha, size, _)| {
            Some(Current { version, blob: BlobId::parse(&sha)?, size: to_u64(size) })
        }))
    }

    /// Records that blobs are being written, so that garbage collection leaves them alone
    /// until the write has committed (or the lease has expired). One lease covers them all.
    pub(super) async fn lease(&self, blobs: &[BlobId]) -> Result<Uuid> {
        let id = Uuid::now_v7();
        let hexes: std::collections::BTreeSet<String> = blobs.iter().map(|b| b.to_hex()).collect();
        let at = now();
        macro_rules! insert {
            ($tx:expr) => {
                async {
                    let mut tx = $tx;
                    for hex in &hexes {
                        sqlx::query("INSERT INTO blob_leases (id, sha256, created_at) VALUES ($1, $2, $3)")
                            .bind(id)
                            .bind(hex)
                            .bind(at)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await
                }
                .await
            };
        }
        let inserted = match &self.db {
            Database::Sqlite(pool) => match pool.begin().await {
                Ok(tx) => insert!(tx),
                Err(e) => Err(e),
            },
            Database::Postgres(pool) => match pool.begin().await {
                Ok(mut tx) => {
                    match sqlx::query("SELECT pg_advisory_xact_lock_shared($1)").bind(GC_LOCK).execute(&mut *tx).await {
                        Ok(_) => insert!(tx),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
        };
        inserted.map_err(|e| db_error("recording the upload", e))?;
        Ok(id)
    }

    pub(super) async fn release(&self, lease: Uuid) {
        let released = on_db!(&self.db, |pool| sqlx::query("DELETE FROM blob_leases WHERE id = $1")
            .bind(lease)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()));
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not release a blob lease; it expires by itself");
        }
    }

    /// Applies `changes` as one new version: every change or none. Puts of the content a path
    /// already has are no change; when nothing changes, no version is made.
    pub(super) async fn commit(
        &self,
        project: Uuid,
        author: Option<Uuid>,
        changes: Vec<Change>,
        message: Option<&str>,
    ) -> Result<Committed> {
        if let Some(m) = message
            && m.chars().count() > 4000
        {
            return Err(Error::invalid("message: at most 4000 characters"));
        }
        let message = message.map(str::trim).filter(|m| !m.is_empty());
        let changes = merge_changes(changes);
        let at = now();
        let config_bytes = self.config.project_quota_bytes.as_u64();
        let config_files = self.config.project_quota_files;
        macro_rules! commit {
            ($tx:expr) => {
                async {
                    let mut tx = $tx;
                    let head: Option<(i64, i64, i64, Option<i64>, Option<i64>, Option<DateTime<Utc>>)> = sqlx::query_as(
                        "SELECT head, bytes, files, quota_bytes, quota_files, deleted_at FROM projects WHERE id = $1",
                    )
                    .bind(project)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((head, bytes, files, quota_bytes, quota_files, deleted_at)) = head else {
                        return Err(TxError::Refused(Error::not_found("no such project")));
                    };
                    if deleted_at.is_some() {
                        return Err(TxError::Refused(Error::not_found("the project was deleted")));
                    }
                    let version = head + 1;
                    let (old_bytes, old_files) = (bytes, files);
                    let (mut bytes, mut files) = (bytes, files);
                    let mut results = Vec::with_capacity(changes.len());
                    let mut changed = false;
                    let mut written: Vec<&ProjectPath> = Vec::new();
                    for change in &changes {
                        let current: Option<(i64, String, i64, String, DateTime<Utc>)> = sqlx::query_as(
                            "SELECT version, sha256, size, content_type, modified_at FROM files WHERE project_id = $1 AND path = $2",
                        )
                        .bind(project)
                        .bind(change.path.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                        if let Some(expected) = change.expected {
                            let at_version = current.as_ref().map_or(0, |c| c.0);
                            if let Err(e) = check_expected(&change.path, at_version, expected) {
                                return Err(TxError::Refused(e));
                            }
                        }
                        let content_type = content_type(change.path.as_str());
                        match (change.blob, current) {
                            (Some((blob, _)), Some((v, sha, size, ct, modified))) if sha == blob.to_hex() && ct == content_type => {
                                results.push(FileVersion {
                                    path: change.path.to_string(),
                                    version: v,
                                    size: to_u64(size),
                                    content_type: ct,
                                    sha256: Some(sha),
                                    deleted: false,
                                    author_id: None,
                                    message: None,
                                    created_at: modified,
                                });
                                continue;
                            }
                            (None, None) => {
                                return Err(TxError::Refused(Error::not_found(format!("no file `{}`", change.path))));
                            }
                            (blob, current) => {
                                if let Some((_, _, size, _, _)) = &current {
                                    bytes -= size;
                                    files -= 1;
                                }
                                let sha = blob.map(|(b, _)| b.to_hex());
                                let size = blob.map_or(0, |(_, s)| to_i64(s));
                                sqlx::query(
                                    "INSERT INTO file_versions (project_id, path, version, sha256, size, content_type, author_id, message, created_at) \
                                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                                )
                                .bind(project)
                                .bind(change.path.as_str())
                                .bind(version)
                                .bind(&sha)
                                .bind(size)
                                .bind(&content_type)
                                .bind(author)
                                .bind(message)
                                .bind(at)
                                .execute(&mut *tx)
                                .await?;
                                if let Some(sha) = &sha {
                                    sqlx::query(
                                        "INSERT INTO files (project_id, path, version, sha256, size, content_type, modified_at) \
                                         VALUES ($1, $2, $3, $4, $5, $6, $7) \
                                         ON CONFLICT (project_id, path) DO UPDATE SET version = excluded.version, \
                                         sha256 = excluded.sha256, size = excluded.size, content_type = excluded.content_type, \
                                         modified_at = excluded.modified_at",
                                    )
                                    .bind(project)
                                    .bind(change.path.as_str())
                                    .bind(version)
                                    .bind(sha)
                                    .bind(size)
                                    .bind(&content_type)
                                    .bind(at)
                                    .execute(&mut *tx)
                                    .await?;
                                    bytes += size;
                                    files += 1;
                                    written.push(&change.path);
                                } else {
                                    sqlx::query("DELETE FROM files WHERE project_id = $1 AND path = $2")
                                        .bind(project)
                                        .bind(change.path.as_str())
                                        .execute(&mut *tx)
                                        .await?;
                                }
                                changed = true;
                                results.push(FileVersion {
                                    path: change.path.to_string(),
                                    version,
                                    size: to_u64(size),
                                    content_type,
                                    deleted: sha.is_none(),
                                    sha256: sha,
                                    author_id: author,
                                    message: message.map(str::to_owned),
                                    created_at: at,
                                });
                            }
                        }
                    }
                    if !changed {
                        return Ok(Committed { version: head, changed: false, files: results });
                    }
                    // A path is a file or a folder, never both.
                    for path in written {
                        for ancestor in path.ancestors() {
                            let file: Option<String> =
                                sqlx::query_scalar("SELECT path FROM files WHERE project_id = $1 AND path = $2")
                                    .bind(project)
                                    .bind(ancestor)
                                    .fetch_optional(&mut *tx)
                                    .await?;
                            if file.is_some() {
                                return Err(TxError::Refused(Error::new(
                                    ErrorKind::Conflict,
                                    format!("`{ancestor}` is a file, so `{path}` cannot be created under it"),
                                )));
                            }
                        }
                        let (lo, hi) = Folder::from(path.clone()).bounds().expect("a path is not the root");
                        let inside: Option<String> = sqlx::query_scalar(
                            "SELECT path FROM files WHERE project_id = $1 AND path >= $2 AND path < $3 LIMIT 1",
                        )
                        .bind(project)
                        .bind(&lo)
                        .bind(&hi)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if inside.is_some() {
                            return Err(TxError::Refused(Error::new(
                                ErrorKind::Conflict,
                                format!("`{path}` is a folder; a file cannot replace it"),
                            )));
                        }
                    }
                    let quota_bytes = quota_bytes.map_or(config_bytes, to_u64);
                    let quota_files = quota_files.map_or(config_files, to_u64);
                    let grew = |new: i64, old: i64, quota: u64| new > old && to_u64(new) > quota;
                    if grew(bytes, old_bytes, quota_bytes) {
                        return Err(TxError::Refused(Error::new(
                            ErrorKind::QuotaExceeded,
                            format!(
                                "the project's storage quota of {} would be exceeded",
                                bytesize::ByteSize::b(quota_bytes).display().iec()
                            ),
                        )));
                    }
                    if grew(files, old_files, quota_files) {
                        return Err(TxError::Refused(files_quota(quota_files)));
                    }
                    sqlx::query("UPDATE projects SET head = $1, bytes = $2, files = $3, updated_at = $4 WHERE id = $5")
                        .bind(version)
                        .bind(bytes)
                        .bind(files)
                        .bind(at)
                        .bind(project)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(Committed { version, changed: true, files: results })
                }
                .await
            };
        }
        let result: Result<Committed, TxError> = match &self.db {
            Database::Sqlite(pool) => match pool.begin_with("BEGIN IMMEDIATE").await {
                Ok(tx) => commit!(tx),
                Err(e) => Err(e.into()),
            },
            Database::Postgres(pool) => match pool.begin().await {
                Ok(mut tx) => {
                    match sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(project_lock(project))
                        .execute(&mut *tx)
                        .await
                    {
                        Ok(_) => commit!(tx),
                        Err(e) => Err(e.into()),
                    }
                }
                Err(e) => Err(e.into()),
            },
        };
        result.map_err(|e| match e {
            TxError::Refused(e) => e,
            TxError::Db(e) => db_error("recording the new version", e),
        })
    }
}

/// One change per path: a later change of a path replaces an earlier one (a move that deletes a
/// path and writes it again is one write), keeping the earlier one's expected version, which is
/// about the state before the commit.
fn merge_changes(changes: Vec<Change>) -> Vec<Change> {
    let mut index: std::collections::HashMap<ProjectPath, usize> = std::collections::HashMap::new();
    let mut out: Vec<Change> = Vec::with_capacity(changes.len());
    for change in changes {
        match index.get(&change.path) {
            Some(&i) => {
                let expected = out[i].expected.or(change.expected);
                out[i] = Change { expected, ..change };
            }
            None => {
                index.insert(change.path.clone(), out.len());
                out.push(change);
            }
        }
    }
    out
}

struct Current {
    version: i64,
    blob: BlobId,
    size: u64,
}

fn check_expected(path: &ProjectPath, current: i64, expected: i64) -> Result<()> {
    if current == expected {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::PreconditionFailed,
        match (current, expected) {
            (0, _) => {
                format!("`{path}` does not exist (expected version {expected}); another write may have deleted it")
            }
            (_, 0) => format!("`{path}` exists already (version {current}); another write came first"),
            _ => format!("`{path}` is at version {current}, not {expected}; another write came first"),
        },
    ))
}

fn files_quota(quota: u64) -> Error {
    Error::new(ErrorKind::QuotaExceeded, format!("the project may hold at most {quota} files (its file quota)"))
}
