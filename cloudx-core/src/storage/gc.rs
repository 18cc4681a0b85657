//! Garbage collection of blobs: deletes the blobs no version refers to (those of purged
//! projects, of writes that failed after publishing), and the temporary files of interrupted
//! uploads.
//!
//! A write announces its blob (a lease) before it publishes it and withdraws the lease after it
//! commits; the collector checks references and leases and deletes in one critical section that
//! excludes announcements (SQLite's write lock; on Postgres an advisory lock that writers take
//! shared), so a blob is either seen as leased or deleted before the write looks for it.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;

use super::blobs::BlobId;
use super::files::GcReport;
use super::{GC_LOCK, Storage};
use crate::db::{Database, db_error};
use crate::error::{Error, ErrorKind, Result};
use crate::principal::Principal;

/// A lease older than this belongs to a write that died: it no longer protects its blob.
const LEASE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Blobs checked and deleted per critical section, which holds up every writer (on SQLite) or
/// every upload (on Postgres): small, so that a slow object store cannot stall them for long.
const BATCH: usize = 32;

impl Storage {
    /// Deletes unreferenced blobs older than `storage.gc_grace` and stale temporary files
    /// (administrators and the local system). With `dry_run`, only counts them.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for anyone else, [`ErrorKind::Unavailable`] when the
    /// object store does not answer.
    pub async fn gc(&self, actor: &Principal, dry_run: bool) -> Result<GcReport> {
        if !(actor.is_admin() || *actor == Principal::System) {
            return Err(Error::new(ErrorKind::PermissionDenied, "garbage collection needs an administrator"));
        }
        let mut report = GcReport::default();
        if !dry_run {
            report.temp_files = self.blobs.sweep_spool(LEASE_EXPIRY)? as u64;
            let expired = Utc::now() - chrono::Duration::from_std(LEASE_EXPIRY).unwrap_or_default();
            on_db!(&self.db, |pool| sqlx::query("DELETE FROM blob_leases WHERE created_at < $1")
                .bind(expired)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()))
            .map_err(|e| db_error("expiring upload leases", e))?;
        }
        let listed = self.blobs.list().await?;
        report.blobs = listed.len() as u64;
        let cutoff = Utc::now() - chrono::Duration::from_std(self.config.gc_grace).unwrap_or_default();
        let referenced: Vec<String> = on_db!(&self.db, |pool| sqlx::query_scalar(
            "SELECT DISTINCT sha256 FROM file_versions WHERE sha256 IS NOT NULL"
        )
        .fetch_all(pool)
        .await)
        .map_err(|e| db_error("reading blob references", e))?;
        let in_store: HashSet<BlobId> = listed.iter().map(|(id, _, _)| *id).collect();
        report.missing =
            referenced.iter().filter_map(|h| BlobId::parse(h)).filter(|id| !in_store.contains(id)).count() as u64;
        if report.missing > 0 {
            tracing::error!(missing = report.missing, "versions refer to blobs missing from the object store");
        }
        let referenced: HashSet<&str> = referenced.iter().map(String::as_str).collect();
        let candidates: Vec<(BlobId, u64)> = listed
            .into_iter()
            .filter(|(id, modified, _)| *modified < cutoff && !referenced.contains(id.to_hex().as_str()))
            .map(|(id, _, size)| (id, size))
            .collect();
        if dry_run {
            report.deleted = candidates.len() as u64;
            report.bytes_freed = candidates.iter().map(|(_, size)| size).sum();
            return Ok(report);
        }
        for batch in candidates.chunks(BATCH) {
            let (deleted, freed) = self.collect_batch(batch).await?;
            report.deleted += deleted;
            report.bytes_freed += freed;
        }
        Ok(report)
    }

    /// Re-checks and deletes one batch of candidates inside the critical section.
    async fn collect_batch(&self, batch: &[(BlobId, u64)]) -> Result<(u64, u64)> {
        macro_rules! collect {
            ($tx:expr) => {
                async {
                    let mut tx = $tx;
                    let mut doomed = Vec::new();
                    for (id, size) in batch {
                        let hex = id.to_hex();
                        let used: Option<i64> = sqlx::query_scalar(
                            "SELECT 1 FROM file_versions WHERE sha256 = $1 \
                             UNION ALL SELECT 1 FROM blob_leases WHERE sha256 = $1 LIMIT 1",
                        )
                        .bind(&hex)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if used.is_none() {
                            doomed.push((*id, *size));
                        }
                    }
                    // Deleted while the section is held; committing ends it.
                    let mut freed = (0u64, 0u64);
                    for (id, size) in doomed {
                        if let Err(e) = self.blobs.delete(id).await {
                            return Ok(Err(e));
                        }
                        freed.0 += 1;
                        freed.1 += size;
                    }
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(Ok(freed))
                }
                .await
            };
        }
        let result = match &self.db {
            Database::Sqlite(pool) => match pool.begin_with("BEGIN IMMEDIATE").await {
                Ok(tx) => collect!(tx),
                Err(e) => Err(e),
            },
            Database::Postgres(pool) => match pool.begin().await {
                Ok(mut tx) => {
                    match sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(GC_LOCK).execute(&mut *tx).await {
                        Ok(_) => collect!(tx),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
        };
        result.map_err(|e| db_error("collecting blobs", e))?
    }
}
