//! Workspaces: a project version written out into a local folder (for a sandboxed run), and
//! what the run changed there committed back as one version.
//!
//! The folder is read back without following a single symlink: it is opened component by
//! component with `O_NOFOLLOW`, so a link the run planted (to `/etc`, to another project's
//! checkout) is reported as skipped, never read through.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;

use futures_util::{StreamExt as _, TryStreamExt as _};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::blobs::{BlobId, SizeLimits, Spooled};
use super::files::Change;
use super::path::{Folder, ProjectPath};
use super::{Audited, Storage};
use crate::access::ProjectAction;
use crate::auth::audit::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::principal::Principal;

/// Files written out at once while checking out.
const PARALLEL_WRITES: usize = 8;

/// A project version written out into a folder: which version, and what each file held.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The project version written out.
    pub version: i64,
    files: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    blob: BlobId,
    /// The version that last wrote the path (the precondition of a commit).
    version: i64,
}

impl Checkout {
    /// How many files were written out.
    pub fn files(&self) -> usize {
        self.files.len()
    }
}

/// What committing a workspace did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkspaceCommit {
    /// The new project version; none when nothing changed.
    pub version: Option<i64>,
    /// Files written (new or changed), by path.
    pub written: Vec<String>,
    /// Files deleted, by path.
    pub deleted: Vec<String>,
    /// What was left out, each with the reason: symlinks, devices, sockets, names the path
    /// rules refuse.
    pub skipped: Vec<String>,
}

impl Storage {
    /// Writes the project's files at `version` (the current ones when `None`) into `dir`, an
    /// existing empty folder: folders mode 0755, files 0644.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for a project `actor` cannot read, [`ErrorKind::InvalidInput`]
    /// for a version the project does not have or a folder that is not empty.
    pub async fn checkout(
        &self,
        actor: &Principal,
        project: Uuid,
        version: Option<i64>,
        dir: &Path,
    ) -> Result<Checkout> {
        let access = self.access(actor, project, ProjectAction::Read, false).await?;
        let head = access.project.version;
        if let Some(v) = version
            && !(0..=head).contains(&v)
        {
            return Err(Error::invalid(format!("the project has no version {v} (its latest is {head})")));
        }
        let is_empty = std::fs::read_dir(dir)
            .map_err(|e| Error::invalid(format!("the folder {} cannot be used: {e}", dir.display())))?
            .next()
            .is_none();
        if !is_empty {
            return Err(Error::invalid(format!("the folder {} is not empty", dir.display())));
        }
        let files = self.tree(project, &Folder::root(), version).await?;
        let mut checkout = Checkout { version: version.unwrap_or(head), files: BTreeMap::new() };
        let mut writes = Vec::with_capacity(files.len());
        for file in files {
            let blob =
                file.sha256.as_deref().and_then(BlobId::parse).ok_or_else(|| {
                    Error::new(ErrorKind::Internal, format!("the file `{}` names no blob", file.path))
                })?;
            if let Some(parent) = Path::new(&file.path).parent() {
                std::fs::create_dir_all(dir.join(parent))
                    .map_err(|e| Error::internal(format!("cannot create the folder of `{}`", file.path), e))?;
            }
            writes.push((dir.join(&file.path), blob, file.size));
            checkout.files.insert(file.path, Entry { blob, version: file.version });
        }
        futures_util::stream::iter(writes)
            .map(|(target, blob, size)| async move { self.write_out(&target, blob, size).await })
            .buffer_unordered(PARALLEL_WRITES)
            .try_collect::<()>()
            .await?;
        Ok(checkout)
    }

    async fn write_out(&self, target: &Path, blob: BlobId, size: u64) -> Result<()> {
        use tokio::io::AsyncWriteExt as _;
        let io = |e: std::io::Error| Error::internal(format!("cannot write {}", target.display()), e);
        let mut out = tokio::fs::OpenOptions::new().write(true).create_new(true).open(target).await.map_err(io)?;
        if size > 0 {
            let mut content = self.blobs.read(blob, None).await?;
            while let Some(chunk) = content.next().await {
                let chunk = chunk.map_err(|e| Error::internal("cannot read a file's content", e))?;
                out.write_all(&chunk).await.map_err(io)?;
            }
        }
        out.flush().await.map_err(io)
    }

    /// Commits what changed in `dir` since `checkout` as one version authored by `actor`:
    /// new and changed files, and deletions. Every change lands or none; a path that changed
    /// in the project meanwhile makes it fail ([`ErrorKind::Conflict`], naming the path), as
    /// do the project's size limits. Symlinks are never followed, nor are they (or devices,
    /// sockets, or names the path rules refuse) committed: they are listed as skipped.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] / [`ErrorKind::PermissionDenied`] when `actor` may not write,
    /// [`ErrorKind::Conflict`], [`ErrorKind::PayloadTooLarge`], [`ErrorKind::QuotaExceeded`].
    pub async fn commit_workspace(
        &self,
        actor: &Principal,
        client: &Client,
        project: Uuid,
        dir: &Path,
        checkout: &Checkout,
        message: Option<&str>,
    ) -> Result<WorkspaceCommit> {
        let access = self.access(actor, project, ProjectAction::Write, false).await?;
        let limits = SizeLimits { file: self.config.max_file_size.as_u64(), quota: access.project.quota_bytes };
        let blobs = self.blobs.clone();
        let (root, known) = (dir.to_path_buf(), checkout.files.clone());
        let max_files = usize::try_from(access.project.quota_files).unwrap_or(usize::MAX);
        let scanned = tokio::task::spawn_blocking(move || {
            let mut scan = Scan {
                blobs: &blobs,
                limits,
                known: &known,
                found: Vec::new(),
                skipped: Vec::new(),
                skipped_more: 0,
                max_files,
            };
            let fd = nix::fcntl::open(&root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| Error::invalid(format!("the workspace {} cannot be read: {e}", root.display())))?;
            scan.walk(fd)?;
            if scan.skipped_more > 0 {
                scan.skipped.push(format!("… and {} more", scan.skipped_more));
            }
            Ok::<_, Error>((scan.found, scan.skipped))
        })
        .await
        .map_err(|e| Error::internal("the workspace scanning thread failed", e))??;
        let (found, skipped) = scanned;

        let mut result = WorkspaceCommit { skipped, ..WorkspaceCommit::default() };
        let mut changes = Vec::new();
        let mut spooled = Vec::new();
        let present: std::collections::BTreeSet<String> = found.iter().map(|f| f.path.as_str().to_owned()).collect();
        for (path, entry) in &checkout.files {
            if !present.contains(path) {
                result.deleted.push(path.clone());
                changes.push(Change::delete(ProjectPath::parse(path)?, Some(entry.version)));
            }
        }
        for file in found {
            let expected = checkout.files.get(file.path.as_str()).map_or(0, |e| e.version);
            if let Some(content) = file.content {
                result.written.push(file.path.to_string());
                changes.push(Change::put(file.path, content.id, content.size, Some(expected)));
                spooled.push(content);
            }
        }
        if changes.is_empty() {
            return Ok(result);
        }
        let ids: Vec<BlobId> = spooled.iter().map(|s| s.id).collect();
        let lease = self.lease(&ids).await?;
        let committed = async {
            self.blobs.publish_many(spooled).await?;
            self.commit(project, actor.user_id(), changes, Some(message.unwrap_or("changes of a sandboxed run"))).await
        }
        .await;
        self.release(lease).await;
        let committed = committed.map_err(|e| match e.kind() {
            ErrorKind::PreconditionFailed => Error::new(
                ErrorKind::Conflict,
                format!(
                    "the run's changes were not committed: the project changed since version {}: {}",
                    checkout.version,
                    e.message()
                ),
            ),
            _ => e,
        })?;
        if committed.changed {
            result.version = Some(committed.version);
            self.audit(
                actor,
                client,
                Audited::WorkspaceCommit.as_str(),
                project,
                Some(format!(
                    "{} written, {} deleted (version {})",
                    result.written.len(),
                    result.deleted.len(),
                    committed.version
                )),
            )
            .await?;
        }
        Ok(result)
    }
}

/// A regular file found in a workspace; its content spooled when it differs from the
/// checkout's.
struct Found {
    path: ProjectPath,
    content: Option<Spooled>,
}

/// A folder the walk has yet to read.
struct Pending {
    parent: Rc<OwnedFd>,
    name: Option<String>,
    prefix: String,
}

struct Scan<'a> {
    blobs: &'a super::blobs::Blobs,
    limits: SizeLimits,
    known: &'a BTreeMap<String, Entry>,
    found: Vec<Found>,
    skipped: Vec<String>,
    /// Skipped entries past the first [`SKIPPED_SHOWN`], counted only.
    skipped_more: usize,
    /// The project's file quota: a workspace holding more cannot be committed.
    max_files: usize,
}

/// How many skipped entries a commit names.
const SKIPPED_SHOWN: usize = 100;

impl Scan<'_> {
    fn skip(&mut self, why: String) {
        if self.skipped.len() < SKIPPED_SHOWN {
            self.skipped.push(why);
        } else {
            self.skipped_more += 1;
        }
    }

    /// Walks the folder open as `root`, never following a symlink, without recursion (one
    /// folder at a time from a list of those still to read). Folders deeper than the longest
    /// path a project holds (1024 bytes) are skipped, not entered.
    fn walk(&mut self, root: OwnedFd) -> Result<()> {
        // A folder still to read: its parent's descriptor (shared by its siblings, so that a
        // wide tree holds one descriptor per level, not one per folder) and its name.
        let mut pending: Vec<Pending> = vec![Pending { parent: Rc::new(root), name: None, prefix: String::new() }];
        while let Some(Pending { parent, name, prefix }) = pending.pop() {
            let dir = match name {
                None => parent,
                Some(name) => {
                    let fd = nix::fcntl::openat(
                        &*parent,
                        name.as_str(),
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| {
                        Error::invalid(format!(
                            "the workspace's folder `{}` cannot be read: {e}",
                            prefix.trim_end_matches('/')
                        ))
                    })?;
                    Rc::new(fd)
                }
            };
            self.folder(&dir, &prefix, &mut pending)?;
        }
        self.found.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
        self.skipped.sort();
        Ok(())
    }

    /// Reads one folder (`prefix` is its path in the project): its files are taken, its
    /// sub-folders opened and added to `pending`.
    fn folder(&mut self, dir: &Rc<OwnedFd>, prefix: &str, pending: &mut Vec<Pending>) -> Result<()> {
        let shown = if prefix.is_empty() {
            "the workspace's root folder".to_owned()
        } else {
            format!("the workspace's folder `{}`", prefix.trim_end_matches('/'))
        };
        let read = |e: nix::Error| Error::invalid(format!("{shown} cannot be read: {e}"));
        let mut names = Vec::new();
        {
            let copy =
                dir.try_clone().map_err(|e| read(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
            let mut listing = nix::dir::Dir::from_fd(copy).map_err(read)?;
            for entry in listing.iter() {
                let entry = entry.map_err(read)?;
                let name = entry.file_name().to_bytes();
                if name != b"." && name != b".." {
                    names.push(name.to_vec());
                }
            }
        }
        for name in names {
            let Ok(name) = String::from_utf8(name.clone()) else {
                self.skip(format!("{prefix}{}: the name is not UTF-8", String::from_utf8_lossy(&name)));
                continue;
            };
            let rel = format!("{prefix}{name}");
            let stat = nix::sys::stat::fstatat(&**dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(read)?;
            let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
            if kind == SFlag::S_IFDIR {
                if rel.len() >= super::path::MAX_PATH_BYTES {
                    self.skip(format!("{rel}/: too deep (a path holds at most {} bytes)", super::path::MAX_PATH_BYTES));
                    continue;
                }
                pending.push(Pending { parent: Rc::clone(dir), name: Some(name), prefix: format!("{rel}/") });
            } else if kind == SFlag::S_IFREG {
                let path = match ProjectPath::parse(&rel) {
                    Ok(p) => p,
                    Err(e) => {
                        self.skip(format!("{rel}: {}", e.message()));
                        continue;
                    }
                };
                if self.found.len() >= self.max_files {
                    return Err(Error::new(
                        ErrorKind::QuotaExceeded,
                        format!(
                            "the workspace holds more files than the project may ({}: its file quota)",
                            self.max_files
                        ),
                    ));
                }
                self.file(dir, &name, path)?;
            } else {
                let what = match kind {
                    SFlag::S_IFLNK => "a symlink",
                    SFlag::S_IFIFO => "a named pipe",
                    SFlag::S_IFSOCK => "a socket",
                    _ => "a device",
                };
                self.skip(format!("{rel}: {what}, not a file"));
            }
        }
        Ok(())
    }

    fn file(&mut self, dir: &OwnedFd, name: &str, path: ProjectPath) -> Result<()> {
        use std::io::Seek as _;
        let unreadable =
            |e: std::io::Error| Error::invalid(format!("the workspace's file `{path}` cannot be read: {e}"));
        // O_NONBLOCK: a file swapped for a pipe meanwhile must not block the open.
        let fd = match nix::fcntl::openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // A file the run made unreadable (mode 000) is left out, not the whole commit.
            Err(e @ nix::Error::EACCES) => {
                self.skip(format!("{path}: cannot be read ({e})"));
                return Ok(());
            }
            Err(e) => return Err(unreadable(e.into())),
        };
        let mut file = std::fs::File::from(fd);
        if !file.metadata().map_err(unreadable)?.is_file() {
            self.skip(format!("{path}: not a file"));
            return Ok(());
        }
        let unchanged = match self.known.get(path.as_str()) {
            Some(entry) => {
                let mut hasher = Sha256::new();
                std::io::copy(&mut file, &mut hasher).map_err(unreadable)?;
                BlobId::from_digest(hasher.finalize().into()) == entry.blob
            }
            None => false,
        };
        if unchanged {
            self.found.push(Found { path, content: None });
            return Ok(());
        }
        file.rewind().map_err(unreadable)?;
        let content = self.blobs.spool_blocking(&mut file, self.limits, false)?;
        self.limits.quota = self.limits.quota.saturating_sub(content.size);
        self.found.push(Found { path, content: Some(content) });
        Ok(())
    }
}
