//! Projects in and out as one archive (tar.gz or zip).
//!
//! A download is written on a blocking thread as the blobs stream in, and streamed out as it is
//! written: nothing is held whole. An upload is spooled, then every entry is checked (paths,
//! sizes, the quota) and spooled as a blob before anything is committed; all its files become
//! one version, or nothing does.

use std::io::{Read, Write};

use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::blobs::{BlobId, Blobs, ByteStream, SizeLimits, Spooled};
use super::files::{Change, TreeEntry};
use super::path::{Folder, ProjectPath};
use super::{Audited, Storage};
use crate::access::ProjectAction;
use crate::auth::audit::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::principal::Principal;

/// Archives go out in chunks of this size.
const CHUNK: usize = 256 * 1024;

/// An archive format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ArchiveFormat {
    /// A gzip-compressed tar archive.
    #[default]
    #[serde(rename = "tar.gz", alias = "tgz")]
    TarGz,
    /// A zip archive (deflate).
    #[serde(rename = "zip")]
    Zip,
}

impl ArchiveFormat {
    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            ArchiveFormat::TarGz => "tar.gz",
            ArchiveFormat::Zip => "zip",
        }
    }

    /// The media type.
    pub fn content_type(self) -> &'static str {
        match self {
            ArchiveFormat::TarGz => "application/gzip",
            ArchiveFormat::Zip => "application/zip",
        }
    }
}

impl std::str::FromStr for ArchiveFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tar.gz" | "tgz" => Ok(ArchiveFormat::TarGz),
            "zip" => Ok(ArchiveFormat::Zip),
            other => Err(Error::invalid(format!("format: `{other}` is not an archive format (tar.gz or zip)"))),
        }
    }
}

/// What an archive upload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArchiveUpload {
    /// The version it made (the current one when nothing changed).
    pub version: i64,
    /// The files it held.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Entries that are not regular files (links, devices), left out.
    pub skipped: Vec<String>,
}

/// An archive on its way out.
pub struct ArchiveDownload {
    /// The version archived.
    pub version: i64,
    /// A file name for it: `<slug>[-<folder>]-v<version>.<ext>`.
    pub file_name: String,
    /// The bytes.
    pub body: ByteStream,
}

impl std::fmt::Debug for ArchiveDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveDownload")
            .field("version", &self.version)
            .field("file_name", &self.file_name)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// The files under `folder` (at `version`, else the latest), as an archive whose paths are
    /// relative to `folder`.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for a folder that holds nothing (then).
    pub async fn download_archive(
        &self,
        actor: &Principal,
        project: Uuid,
        folder: &str,
        version: Option<i64>,
        format: ArchiveFormat,
    ) -> Result<ArchiveDownload> {
        let folder = Folder::parse(folder)?;
        let access = self.access(actor, project, ProjectAction::Read, false).await?;
        let version = version.unwrap_or(access.project.version);
        let files = self.tree(project, &folder, Some(version)).await?;
        if files.is_empty() && !folder.is_root() {
            return Err(Error::not_found(format!("no folder `{folder}` at version {version}")));
        }
        let folder_part =
            if folder.is_root() { String::new() } else { format!("-{}", folder.as_str().replace('/', "-")) };
        let file_name = format!("{}{folder_part}-v{version}.{}", access.project.slug, format.extension());
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        let (blobs, handle) = (self.blobs.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || {
            let out = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
            let open = |entry: &TreeEntry| -> std::io::Result<BlobReader> {
                let id = entry
                    .sha256
                    .as_deref()
                    .and_then(BlobId::parse)
                    .ok_or_else(|| std::io::Error::other("a file names no blob"))?;
                let stream = if entry.size == 0 {
                    Box::pin(futures_util::stream::empty()) as ByteStream
                } else {
                    handle.block_on(blobs.read(id, None)).map_err(|e| std::io::Error::other(e.message().to_owned()))?
                };
                Ok(BlobReader { stream, handle: handle.clone(), current: Bytes::new() })
            };
            let written = match format {
                ArchiveFormat::TarGz => write_tar(out, &folder, &files, open),
                ArchiveFormat::Zip => write_zip(out, &folder, &files, open),
            };
            if let Err(e) = written {
                tracing::warn!(error = %e, "an archive download failed part-way");
                let _ = tx.blocking_send(Err(e));
            }
        });
        let body =
            Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }));
        Ok(ArchiveDownload { version, file_name, body })
    }

    /// Unpacks an archive into `folder` as one new version: every file, or none. Paths are
    /// checked with the path rules, each file against `storage.max_file_size`, and the whole
    /// against the project's quotas.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an archive that cannot be read or holds a bad path
    /// (named), [`ErrorKind::PayloadTooLarge`] / [`ErrorKind::QuotaExceeded`] past the limits,
    /// [`ErrorKind::Conflict`] when a file would replace a folder or go under a file.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_archive(
        &self,
        actor: &Principal,
        client: &Client,
        project: Uuid,
        folder: &str,
        format: ArchiveFormat,
        body: ByteStream,
        message: Option<&str>,
    ) -> Result<ArchiveUpload> {
        let folder = Folder::parse(folder)?;
        let access = self.access(actor, project, ProjectAction::Write, false).await?;
        let p = &access.project;
        let max_file = self.config.max_file_size.as_u64();
        // The archive itself may be as large as a file; what it holds, as large as the quota.
        let archive = self.blobs.spool(body, SizeLimits { file: max_file, quota: u64::MAX }, None, false).await?;
        let limits = Unpack {
            file: max_file,
            total: p.quota_bytes,
            files: usize::try_from(p.quota_files).unwrap_or(usize::MAX),
        };
        let blobs = self.blobs.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let result = match format {
                ArchiveFormat::TarGz => read_tar(&blobs, &archive, &folder, limits),
                ArchiveFormat::Zip => read_zip(&blobs, &archive, &folder, limits),
            };
            drop(archive);
            result
        })
        .await
        .map_err(|e| Error::internal("the unpacking thread failed", e))??;
        // Unpacking may have taken long: the caller may have lost the right to write meanwhile.
        self.access(actor, project, ProjectAction::Write, false).await?;
        let Unpacked { entries, skipped, .. } = unpacked;
        let (files, bytes) = (entries.len() as u64, entries.iter().map(|(_, s)| s.size).sum());
        let blobs: Vec<BlobId> = entries.iter().map(|(_, s)| s.id).collect();
        let lease = self.lease(&blobs).await?;
        let published = async {
            let mut changes = Vec::with_capacity(entries.len());
            let mut spooled = Vec::with_capacity(entries.len());
            for (path, file) in entries {
                changes.push(Change::put(path, file.id, file.size, None));
                spooled.push(file);
            }
            self.blobs.publish_many(spooled).await?;
            let message = message.unwrap_or("uploaded an archive");
            self.commit(project, actor.user_id(), changes, Some(message)).await
        }
        .await;
        self.release(lease).await;
        let committed = published?;
        if committed.changed {
            self.audit(
                actor,
                client,
                Audited::ArchiveUpload.as_str(),
                project,
                Some(format!("{files} files (version {})", committed.version)),
            )
            .await?;
        }
        Ok(ArchiveUpload { version: committed.version, files, bytes, skipped })
    }
}

#[derive(Debug, Clone, Copy)]
struct Unpack {
    file: u64,
    total: u64,
    files: usize,
}

#[derive(Default)]
struct Unpacked {
    entries: Vec<(ProjectPath, Spooled)>,
    index: std::collections::HashMap<ProjectPath, usize>,
    bytes: u64,
    skipped: Vec<String>,
}

impl Unpacked {
    /// Spools the entry `content` as the file `path`, within the limits.
    fn add(&mut self, blobs: &Blobs, path: ProjectPath, content: &mut dyn Read, limits: Unpack) -> Result<()> {
        let room = SizeLimits { file: limits.file, quota: limits.total.saturating_sub(self.bytes) };
        let spooled = blobs.spool_blocking(content, room, false)?;
        self.bytes += spooled.size;
        // A later entry of the same path replaces an earlier one, as tar does.
        match self.index.get(&path) {
            Some(&i) => {
                self.bytes -= self.entries[i].1.size;
                self.entries[i].1 = spooled;
            }
            None => {
                self.index.insert(path.clone(), self.entries.len());
                self.entries.push((path, spooled));
            }
        }
        if self.entries.len() > limits.files {
            return Err(Error::new(
                ErrorKind::QuotaExceeded,
                format!("the archive holds more files than the project may ({})", limits.files),
            ));
        }
        Ok(())
    }
}

/// The project path of an archive entry named `name`, under `folder`.
fn entry_path(folder: &Folder, name: &str) -> Result<ProjectPath> {
    let name = name.trim_start_matches("./");
    let relative =
        ProjectPath::parse(name).map_err(|e| Error::invalid(format!("the archive's entry {}", e.message())))?;
    ProjectPath::join_under(folder, &relative)
}

fn read_tar(blobs: &Blobs, archive: &Spooled, folder: &Folder, limits: Unpack) -> Result<Unpacked> {
    let file = std::fs::File::open(archive.path()).map_err(|e| Error::internal("cannot reopen the upload", e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let bad = |e: std::io::Error| Error::invalid(format!("not a tar.gz archive, or a damaged one: {e}"));
    let mut out = Unpacked::default();
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| Error::invalid("the archive has an entry whose name is not UTF-8"))?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Directory => continue,
            // pax and GNU long-name headers are read by the tar crate itself.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            _ => {
                out.skipped.push(name);
                continue;
            }
        }
        out.add(blobs, entry_path(folder, &name)?, &mut entry, limits)?;
    }
    Ok(out)
}

fn read_zip(blobs: &Blobs, archive: &Spooled, folder: &Folder, limits: Unpack) -> Result<Unpacked> {
    let file = std::fs::File::open(archive.path()).map_err(|e| Error::internal("cannot reopen the upload", e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| Error::invalid(format!("not a zip archive, or a damaged one: {e}")))?;
    let mut out = Unpacked::default();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| Error::invalid(format!("the zip archive is damaged: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| Error::invalid(format!("the zip archive has an entry whose name cannot be read: {e}")))?
            .into_owned();
        if entry.is_dir() {
            continue;
        }
        if entry.is_symlink() || !entry.is_file() {
            out.skipped.push(name);
            continue;
        }
        out.add(blobs, entry_path(folder, &name)?, &mut entry, limits)?;
    }
    Ok(out)
}

fn write_tar(
    out: ChannelWriter,
    folder: &Folder,
    files: &[TreeEntry],
    open: impl Fn(&TreeEntry) -> std::io::Result<BlobReader>,
) -> std::io::Result<()> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for entry in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(entry.size);
        header.set_mode(0o644);
        header.set_mtime(u64::try_from(entry.modified_at.timestamp()).unwrap_or(0));
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, folder.relative(&entry.path), open(entry)?)?;
    }
    tar.into_inner()?.finish()?.flush()
}

fn write_zip(
    out: ChannelWriter,
    folder: &Folder,
    files: &[TreeEntry],
    open: impl Fn(&TreeEntry) -> std::io::Result<BlobReader>,
) -> std::io::Result<()> {
    let mut zip = zip::ZipWriter::new_stream(out);
    for entry in files {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(entry.size >= u64::from(u32::MAX))
            .unix_permissions(0o644);
        zip.start_file(folder.relative(&entry.path), options).map_err(std::io::Error::other)?;
        std::io::copy(&mut open(entry)?, &mut zip)?;
    }
    zip.finish().map_err(std::io::Error::other)?.into_inner().flush()
}

/// A blob's stream read from a blocking thread.
struct BlobReader {
    stream: ByteStream,
    handle: tokio::runtime::Handle,
    current: Bytes,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Sends what is written, in chunks, to the response; fails once the client has gone.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}
