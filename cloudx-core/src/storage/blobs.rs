//! Content-addressed blobs in an object store: each file content is stored once, under the hex
//! SHA-256 of its bytes (`blobs/ab/abcdef…`), whatever project or version refers to it.
//!
//! A write is spooled to a temporary file while it is hashed and counted, so that nothing is
//! published until the whole content has arrived and its name (the hash) is known; then it is
//! published under its name: a rename on the local backend (fsynced, so durable before the
//! metadata commit), an upload elsewhere (skipped when the blob already exists), checked by size
//! afterwards. An interrupted write leaves only its temporary file, which is removed when the
//! write is dropped, at the next start, or by `cloudx storage gc`.

use std::fmt;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart,
};
use sha2::{Digest as _, Sha256};

use crate::config::CloudxConfig;
use crate::error::{Error, ErrorKind, Result};

/// A stream of bytes: an upload's body or a download.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Reads of local blobs go out in chunks of this size.
const READ_CHUNK: usize = 256 * 1024;
/// Spooled writes are buffered this much before each write to disk.
const WRITE_BUFFER: usize = 1024 * 1024;
/// Received chunks are handed to the writing thread in batches of this many bytes.
const BATCH: usize = 1024 * 1024;
/// Uploads to a remote store up to this size are one request; larger ones are multipart.
const MULTIPART_PART: usize = 8 * 1024 * 1024;

/// The SHA-256 of a blob's content: its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId([u8; 32]);

impl BlobId {
    /// The id of a finished SHA-256 digest.
    pub(crate) fn from_digest(digest: [u8; 32]) -> Self {
        BlobId(digest)
    }

    /// The id of `content`.
    pub fn of(content: &[u8]) -> Self {
        BlobId(Sha256::digest(content).into())
    }

    /// Parses 64 lowercase hex digits.
    pub fn parse(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(BlobId(out))
    }

    /// The 64 hex digits.
    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn key(self) -> Key {
        let hex = self.to_hex();
        Key::from(format!("blobs/{}/{hex}", &hex[..2]))
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

/// How large a write may grow before it is refused, and with which error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SizeLimits {
    /// `storage.max_file_size`: past it, [`ErrorKind::PayloadTooLarge`].
    pub(crate) file: u64,
    /// The project's remaining quota: past it, [`ErrorKind::QuotaExceeded`].
    pub(crate) quota: u64,
}

impl SizeLimits {
    pub(crate) fn check(&self, size: u64) -> Result<()> {
        if size > self.file {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "the file is larger than the {} a file may hold (storage.max_file_size)",
                    bytesize::ByteSize::b(self.file).display().iec()
                ),
            ));
        }
        if size > self.quota {
            return Err(Error::new(
                ErrorKind::QuotaExceeded,
                format!(
                    "the project's storage quota is exhausted: {} more would fit",
                    bytesize::ByteSize::b(self.quota).display().iec()
                ),
            ));
        }
        Ok(())
    }
}

/// A spooled write: complete, hashed, not yet published. Dropping it removes the temporary file.
#[derive(Debug)]
pub(crate) struct Spooled {
    file: TempFile,
    pub(crate) id: BlobId,
    pub(crate) size: u64,
}

impl Spooled {
    /// The temporary file (to read an uploaded archive back).
    pub(crate) fn path(&self) -> &Path {
        &self.file.path
    }
}

/// The blob store of an instance.
#[derive(Debug, Clone)]
pub(crate) struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// The folder of the local backend: writes are renamed into it instead of copied.
    local_root: Option<PathBuf>,
    spool_dir: PathBuf,
    backend: &'static str,
}

impl Blobs {
    /// Opens the store `storage.url` names (local blobs under the data folder by default).
    pub(crate) fn open(config: &CloudxConfig) -> Result<Self> {
        let default_root = config.data_dir.join("blobs");
        let url = config.storage.url.as_deref().map(url::Url::parse).transpose().map_err(|e| {
            Error::invalid(format!("storage.url: not a URL ({e}); use file:///PATH, s3://BUCKET/PREFIX or memory://"))
        })?;
        let blobs = match url.as_ref().map(|u| u.scheme()) {
            None | Some("file") => {
                let root = match &url {
                    Some(u) => u
                        .to_file_path()
                        .map_err(|()| Error::invalid("storage.url: a file URL needs an absolute path"))?,
                    None => default_root,
                };
                let spool_dir = root.join("tmp");
                create_dir(&spool_dir)?;
                let store = LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| Error::invalid(format!("storage.url: cannot use {}: {e}", root.display())))?;
                Blobs { store: Arc::new(store), local_root: Some(root), spool_dir, backend: "file" }
            }
            Some("memory") => Blobs {
                store: Arc::new(InMemory::new()),
                local_root: None,
                spool_dir: config.data_dir.join("tmp"),
                backend: "memory",
            },
            Some("s3") => {
                let u = url.as_ref().expect("scheme seen");
                let bucket = u.host_str().unwrap_or_default();
                let s3: Arc<dyn ObjectStore> = Arc::new(super::s3::build(bucket, &config.storage)?);
                let prefix = u.path().trim_matches('/');
                let store: Arc<dyn ObjectStore> =
                    if prefix.is_empty() { s3 } else { Arc::new(object_store::prefix::PrefixStore::new(s3, prefix)) };
                Blobs { store, local_root: None, spool_dir: config.data_dir.join("tmp"), backend: "s3" }
            }
            Some(other) => return Err(Error::invalid(format!("storage.url: unsupported scheme `{other}`"))),
        };
        create_dir(&blobs.spool_dir)?;
        Ok(blobs)
    }

    /// `file`, `s3` or `memory`.
    pub(crate) fn backend(&self) -> &'static str {
        self.backend
    }

    /// Checks that the store answers (for `/readyz`).
    pub(crate) async fn ping(&self) -> Result<()> {
        match self.store.head(&Key::from("blobs/.ping")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("the object store does not answer", e)),
        }
    }

    /// Receives `body` into a temporary file, hashing and counting it, refusing it once it
    /// passes `limits`. `expected` is the announced length; `keep` says the file will become a
    /// blob (on the local backend it is then written durably), not only be read back (an
    /// archive being unpacked).
    pub(crate) async fn spool(
        &self,
        mut body: ByteStream,
        limits: SizeLimits,
        expected: Option<u64>,
        keep: bool,
    ) -> Result<Spooled> {
        let file = TempFile::create(&self.spool_dir)?;
        // Bodies arrive in chunks of up to 256 KiB (hyper's read buffer): they cross to the
        // writing thread in batches of about 1 MiB, so that thread wakes rarely.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(4);
        let path = file.path.clone();
        let durable = keep && self.local_root.is_some();
        // Hashing and writing run on a blocking thread, overlapping with receiving.
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(BlobId, u64)> {
            // Local blobs are written durably, bypassing the page cache; spooled uploads for
            // another store are only read back once.
            let mut out = if durable {
                Sink::Direct(super::direct::DirectWriter::open(&path, expected)?)
            } else {
                Sink::Buffered(std::io::BufWriter::with_capacity(
                    WRITE_BUFFER,
                    std::fs::OpenOptions::new().write(true).open(&path)?,
                ))
            };
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(batch) = rx.blocking_recv() {
                for chunk in batch {
                    hasher.update(&chunk);
                    out.write(&chunk)?;
                    size += chunk.len() as u64;
                }
            }
            out.finish()?;
            Ok((BlobId(hasher.finalize().into()), size))
        });
        let mut received = 0u64;
        let fed: Result<()> = async {
            let (mut batch, mut batched) = (Vec::new(), 0usize);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    Error::new(ErrorKind::InvalidInput, format!("the upload was interrupted: {e}")).with_source(e)
                })?;
                received += chunk.len() as u64;
                limits.check(received)?;
                batched += chunk.len();
                batch.push(chunk);
                if batched >= BATCH && tx.send(std::mem::take(&mut batch)).await.is_err() {
                    return Ok(()); // the writer failed; its error is reported below
                }
                if batched >= BATCH {
                    batched = 0;
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(batch).await;
            }
            Ok(())
        }
        .await;
        drop(tx);
        let written = writer.await.map_err(|e| Error::internal("the spooling thread failed", e))?;
        fed?;
        let (id, size) = written.map_err(|e| io_error("cannot write the upload to a temporary file", e))?;
        Ok(Spooled { file, id, size })
    }

    /// Like [`spool`](Self::spool), from a blocking reader (an archive's entry), on the calling
    /// thread: for blocking contexts only. Unless `durable`, the file is not fsynced: then
    /// [`publish_many`](Self::publish_many) makes a batch durable at once.
    pub(crate) fn spool_blocking(
        &self,
        reader: &mut dyn std::io::Read,
        limits: SizeLimits,
        durable: bool,
    ) -> Result<Spooled> {
        let file = TempFile::create(&self.spool_dir)?;
        let out = std::fs::OpenOptions::new()
            .write(true)
            .open(&file.path)
            .map_err(|e| io_error("cannot write a temporary file", e))?;
        let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, out);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::invalid(format!("the content cannot be read: {e}"))),
            };
            size += n as u64;
            limits.check(size)?;
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| io_error("cannot write a temporary file", e))?;
        }
        let out = out.into_inner().map_err(|e| io_error("cannot write a temporary file", e.into_error()))?;
        if durable && self.local_root.is_some() {
            out.sync_all().map_err(|e| io_error("cannot write a temporary file", e))?;
        }
        Ok(Spooled { file, id: BlobId(hasher.finalize().into()), size })
    }

    /// Publishes a spooled write under its id. When this returns, the blob is complete in the
    /// store (and durable, on the local backend).
    pub(crate) async fn publish(&self, spooled: Spooled) -> Result<()> {
        let Spooled { mut file, id, size } = spooled;
        if let Some(root) = &self.local_root {
            let target = root.join(id.key().as_ref());
            let from = file.take();
            return tokio::task::spawn_blocking(move || publish_local(&from, &target, size))
                .await
                .map_err(|e| Error::internal("the publishing thread failed", e))?
                .map_err(|e| io_error("cannot store the blob", e));
        }
        let key = id.key();
        match self.store.head(&key).await {
            Ok(meta) if meta.size == size => return Ok(()),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error("cannot reach the object store", e)),
        }
        let path = file.path.clone();
        if size as usize <= MULTIPART_PART {
            let bytes = tokio::fs::read(&path).await.map_err(|e| io_error("cannot read the spooled upload", e))?;
            self.store
                .put(&key, PutPayload::from(bytes))
                .await
                .map_err(|e| store_error("cannot upload the blob", e))?;
        } else {
            let upload = self.store.put_multipart(&key).await.map_err(|e| store_error("cannot start the upload", e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
            let mut source =
                tokio::fs::File::open(&path).await.map_err(|e| io_error("cannot read the spooled upload", e))?;
            let mut buf = vec![0u8; MULTIPART_PART];
            loop {
                let n = tokio::io::AsyncReadExt::read(&mut source, &mut buf)
                    .await
                    .map_err(|e| io_error("cannot read the spooled upload", e))?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(4).await.map_err(|e| store_error("cannot upload the blob", e))?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map_err(|e| store_error("cannot finish the upload", e))?;
        }
        match self.store.head(&key).await {
            Ok(meta) if meta.size == size => Ok(()),
            Ok(meta) => Err(Error::new(
                ErrorKind::Unavailable,
                format!("the object store kept {} of the {size} bytes sent; try again", meta.size),
            )),
            Err(e) => Err(store_error("the uploaded blob cannot be found", e)),
        }
    }

    /// Spools a small content held in memory (a template's file).
    pub(crate) async fn spool_bytes(&self, content: Bytes) -> Result<Spooled> {
        let stream: ByteStream = Box::pin(futures_util::stream::once(async move { Ok(content) }));
        self.spool(stream, SizeLimits { file: u64::MAX, quota: u64::MAX }, None, true).await
    }

    /// Publishes many spooled writes (an archive's files, a template's). On the local backend
    /// one `syncfs` makes them all durable, and each folder is fsynced once after the renames,
    /// instead of two fsyncs per file.
    pub(crate) async fn publish_many(&self, spooled: Vec<Spooled>) -> Result<()> {
        let Some(root) = self.local_root.clone() else {
            for file in spooled {
                self.publish(file).await?;
            }
            return Ok(());
        };
        let spool_dir = self.spool_dir.clone();
        let mut files: Vec<(PathBuf, PathBuf, u64)> = Vec::with_capacity(spooled.len());
        let mut guards = Vec::with_capacity(spooled.len());
        for mut file in spooled {
            let target = root.join(file.id.key().as_ref());
            files.push((file.file.take(), target, file.size));
            guards.push(file);
        }
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let result = (|| {
                nix::unistd::syncfs(std::fs::File::open(&spool_dir)?).map_err(std::io::Error::from)?;
                let mut folders = std::collections::BTreeSet::new();
                for (from, target, size) in &files {
                    if std::fs::metadata(target).is_ok_and(|m| m.len() == *size) {
                        continue;
                    }
                    let parent = target.parent().expect("blob keys have folders");
                    if !parent.exists() {
                        std::fs::create_dir_all(parent)?;
                        if let Some(grandparent) = parent.parent() {
                            folders.insert(grandparent.to_path_buf());
                        }
                    }
                    std::fs::rename(from, target)?;
                    folders.insert(parent.to_path_buf());
                }
                for folder in folders {
                    std::fs::File::open(folder)?.sync_all()?;
                }
                Ok(())
            })();
            for (from, _, _) in &files {
                let _ = std::fs::remove_file(from);
            }
            result
        })
        .await
        .map_err(|e| Error::internal("the publishing thread failed", e))?
        .map_err(|e| io_error("cannot store the blobs", e))?;
        drop(guards);
        Ok(())
    }

    /// Streams a blob, or `range` of it (already checked against its size).
    pub(crate) async fn read(&self, id: BlobId, range: Option<Range<u64>>) -> Result<ByteStream> {
        let options = GetOptions { range: range.clone().map(GetRange::Bounded), ..GetOptions::default() };
        let result = self.store.get_opts(&id.key(), options).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                tracing::error!(blob = %id, "a blob a version refers to is missing from the object store");
                Error::new(ErrorKind::Internal, "the file's content is missing from the object store")
            }
            other => store_error("cannot read the blob", other),
        })?;
        let span = result.range.clone();
        Ok(match result.payload {
            GetResultPayload::File(file, _) => read_file_range(file, span),
            GetResultPayload::Stream(stream) => Box::pin(stream.map_err(std::io::Error::other)),
        })
    }

    /// Every blob in the store, with when it was written.
    pub(crate) async fn list(&self) -> Result<Vec<(BlobId, DateTime<Utc>, u64)>> {
        let mut out = Vec::new();
        let mut listing = self.store.list(Some(&Key::from("blobs")));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| store_error("cannot list the object store", e))?;
            if let Some(id) = meta.location.filename().and_then(BlobId::parse) {
                out.push((id, meta.last_modified, meta.size));
            }
        }
        Ok(out)
    }

    /// Deletes a blob (for `gc`); a missing one is not an error.
    pub(crate) async fn delete(&self, id: BlobId) -> Result<()> {
        match self.store.delete(&id.key()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("cannot delete the blob", e)),
        }
    }

    /// Removes temporary files of writes that can no longer finish: those of processes that are
    /// gone, and any older than `max_age`. Returns how many it removed.
    pub(crate) fn sweep_spool(&self, max_age: Duration) -> Result<usize> {
        let entries = match std::fs::read_dir(&self.spool_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_error("cannot list the temporary files", e)),
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_suffix(".part")).and_then(|n| n.split('-').next())
            else {
                continue;
            };
            let alive = pid.parse::<u32>().is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > max_age);
            if (!alive || old) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Where a spooled upload is written.
enum Sink {
    Direct(super::direct::DirectWriter),
    Buffered(std::io::BufWriter<std::fs::File>),
}

impl Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Direct(w) => w.write(data),
            Sink::Buffered(w) => w.write_all(data),
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Direct(w) => w.finish(),
            Sink::Buffered(w) => w.into_inner().map_err(std::io::IntoInnerError::into_error).map(drop),
        }
    }
}

/// A temporary file that is removed when dropped, unless taken.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn create(dir: &Path) -> Result<Self> {
        let path = dir.join(format!("{}-{}.part", std::process::id(), uuid::Uuid::new_v4().simple()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error("cannot create a temporary file for the upload", e))?;
        Ok(TempFile { path, armed: true })
    }

    /// Hands the path over: the caller now owns the file (and its removal).
    fn take(&mut self) -> PathBuf {
        self.armed = false;
        self.path.clone()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn publish_local(from: &Path, target: &Path, size: u64) -> std::io::Result<()> {
    let result = (|| {
        if std::fs::metadata(target).is_ok_and(|m| m.len() == size) {
            return Ok(()); // stored before: the same content
        }
        let parent = target.parent().expect("blob keys have folders");
        if !parent.exists() {
            std::fs::create_dir_all(parent)?;
            if let Some(grandparent) = parent.parent() {
                std::fs::File::open(grandparent)?.sync_all()?;
            }
        }
        std::fs::rename(from, target)?;
        std::fs::File::open(parent)?.sync_all()
    })();
    let _ = std::fs::remove_file(from);
    result
}

fn read_file_range(mut file: std::fs::File, range: Range<u64>) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = file.seek(SeekFrom::Start(range.start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = range.end - range.start;
        while left > 0 {
            let mut buf = vec![0u8; READ_CHUNK.min(usize::try_from(left).unwrap_or(READ_CHUNK))];
            match file.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.blocking_send(Err(std::io::ErrorKind::UnexpectedEof.into()));
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // the reader went away
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(&format!("cannot create {}", dir.display()), e))
}

fn io_error(context: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::StorageFull {
        return Error::new(ErrorKind::QuotaExceeded, format!("{context}: the disk is full")).with_source(e);
    }
    Error::internal(context.to_owned(), e)
}

fn store_error(context: &str, e: object_store::Error) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{context}; try again")).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_round_trip_hex() {
        let id = BlobId::of(b"hello");
        let hex = id.to_hex();
        assert_eq!(hex, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(BlobId::parse(&hex), Some(id));
        assert_eq!(id.key().as_ref(), format!("blobs/2c/{hex}"));
        assert_eq!(BlobId::parse(&hex.to_uppercase()), None);
        assert_eq!(BlobId::parse("2cf2"), None);
    }
}
