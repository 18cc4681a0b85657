//! The Storage port: projects and their versioned file trees.
//!
//! File contents are content-addressed blobs in an object store ([`blobs`]: local disk, S3 or
//! memory, through object_store); everything else — projects, members, every version of every
//! path, the current tree — lives in SQL. A write spools and hashes the content, publishes the
//! blob, and only then commits the version, so a reader never sees a version whose content is
//! not complete in the store.
//!
//! Every call takes the acting [`Principal`] and checks it with [`check_project`].

mod archive;
mod blobs;
mod direct;
mod files;
mod gc;
pub mod path;
mod projects;
mod s3;
mod templates;
mod workspace;

use chrono::{DateTime, SubsecRound as _, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use self::archive::{ArchiveDownload, ArchiveFormat, ArchiveUpload};
use self::blobs::Blobs;
pub use self::blobs::{BlobId, ByteStream};
pub use self::files::{Download, FileVersion, GcReport, PutOptions, Tree, TreeEntry, Versioned};
pub use self::path::{Folder, ProjectPath};
pub use self::projects::{Member, NewProject, Project, ProjectFilter, ProjectUpdate, Template};
pub use self::workspace::{Checkout, WorkspaceCommit};
use crate::access::{ProjectAction, ProjectRole, check_project};
use crate::config::{CloudxConfig, StorageConfig};
use crate::db::Database;
use crate::error::{Error, Result};
use crate::principal::Principal;

/// Projects, members and files: the storage port of a [`Cloudx`](crate::Cloudx).
#[derive(Debug, Clone)]
pub struct Storage {
    db: Database,
    blobs: Blobs,
    config: StorageConfig,
}

/// What a project row says about access: read with the caller's role.
#[derive(Debug, Clone)]
struct Access {
    project: Project,
    role: Option<ProjectRole>,
}

impl Storage {
    /// Opens the blob store `storage.url` names over `db`, and removes temporary files that
    /// writes of dead processes left behind.
    pub(crate) fn open(db: Database, config: &CloudxConfig) -> Result<Self> {
        let blobs = Blobs::open(config)?;
        match blobs.sweep_spool(std::time::Duration::from_secs(24 * 3600)) {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed temporary files of interrupted uploads"),
            Err(e) => tracing::warn!(error = %e, "could not sweep the temporary upload files"),
        }
        Ok(Self { db, blobs, config: config.storage.clone() })
    }

    /// `file`, `s3` or `memory`.
    pub fn backend(&self) -> &'static str {
        self.blobs.backend()
    }

    /// Checks that the object store answers.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when it does not.
    pub async fn ping(&self) -> Result<()> {
        self.blobs.ping().await
    }

    /// The storage settings in force.
    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// Loads the project and checks that `actor` may do `action` to it. A deleted project is
    /// visible only when `deleted_ok` (its settings, to restore it); its files never are.
    async fn access(&self, actor: &Principal, id: Uuid, action: ProjectAction, deleted_ok: bool) -> Result<Access> {
        let found = projects::load(&self.db, &self.config, id, actor.user_id()).await?;
        let Some(access) = found else {
            return match actor {
                Principal::System => Err(Error::not_found("no such project")),
                _ => check_project(actor, None, action).and(Err(Error::not_found("no such project"))),
            };
        };
        check_project(actor, access.role, action)?;
        if access.project.deleted_at.is_some() && !deleted_ok {
            return Err(Error::not_found("the project was deleted; its owner can restore it"));
        }
        Ok(access)
    }
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Serialises writes to one project across Postgres nodes (SQLite's `BEGIN IMMEDIATE` does it
/// there): an advisory lock keyed by the project id.
fn project_lock(id: Uuid) -> i64 {
    let b = id.as_bytes();
    i64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
}

/// Blob garbage collection takes this lock exclusively; writes announcing a blob take it shared.
const GC_LOCK: i64 = 0x636c_6f75_6478_0005;

/// The kind of storage-side change recorded in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Audited {
    FileWrite,
    FileDelete,
    FileRestore,
    FileMove,
    ArchiveUpload,
    WorkspaceCommit,
}

impl Audited {
    fn as_str(self) -> &'static str {
        match self {
            Audited::FileWrite => "file_write",
            Audited::FileDelete => "file_delete",
            Audited::FileRestore => "file_restore",
            Audited::FileMove => "file_move",
            Audited::ArchiveUpload => "archive_upload",
            Audited::WorkspaceCommit => "workspace_commit",
        }
    }
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
