//! A folder kept in step with a project ([`push`] and [`pull`]), sending or fetching only what
//! changed: `cloudx push DIR PROJECT` and `cloudx pull PROJECT DIR`, and the same calls of the
//! Python extension, on a daemon or on the embedded core alike.
//!
//! Each sync records, in `DIR/.cloudx/sync.json`, the version and content hash of every file as
//! both sides last agreed on it (the base). A side changed a file when it differs from the base;
//! when both sides changed it, differently, that is a conflict: reported, never overwritten.
//! Uploads name the version they replace, so a write that reaches the project between the
//! listing and the upload is a conflict too, not a lost update.
//!
//! The base changes path by path as each is dealt with, and is saved even when a sync stops
//! part-way on an error: what was done is remembered, and the next sync takes up the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

use cloudx_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::target::Target;

/// The folder of the sync state, at the top of a synced folder (never synced itself).
const STATE_DIR: &str = ".cloudx";

/// What a push or pull did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// The project synced with.
    pub project: Uuid,
    /// Whether nothing was changed (only reported).
    pub dry_run: bool,
    /// Files sent (push) or fetched (pull), or that would be, with the version they now have
    /// (`None` in a dry run).
    pub transferred: Vec<SyncedFile>,
    /// Files deleted on the other side (push: in the project; pull: in the folder), or that would
    /// be; for a push, with the version that records the deletion (`None` in a dry run, and
    /// always for a pull).
    pub deleted: Vec<SyncedFile>,
    /// Files left alone because both sides changed them (or they cannot be sent), each with why:
    /// `"path: reason"`.
    pub conflicts: Vec<String>,
    /// Local files skipped (name not UTF-8, not a regular file), each with why: `"path: reason"`.
    pub skipped: Vec<String>,
}

/// A file a sync sent, fetched or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncedFile {
    /// Its project path (`/`-separated, relative to the folder).
    pub path: String,
    /// Its version in the project after the step, when there is one (see [`SyncReport`]).
    pub version: Option<i64>,
}

/// One step as it happens, for a front end to print.
#[derive(Debug, Clone, Copy)]
pub enum SyncStep<'a> {
    /// A file was sent (push) or fetched (pull); with `version` `None`, in a dry run, it would be.
    Transferred {
        /// Its project path.
        path: &'a str,
        /// The version it now has (`None` in a dry run).
        version: Option<i64>,
    },
    /// A file was deleted on the other side (push: in the project; pull: in the folder), or in a
    /// dry run would be.
    Deleted {
        /// Its project path.
        path: &'a str,
        /// The version that records the deletion in the project (push; `None` for a pull and in
        /// a dry run).
        version: Option<i64>,
    },
    /// A local file was left out of the sync.
    Skipped {
        /// Where it is (below the folder; its name may not be UTF-8, so shown lossily).
        path: &'a str,
        /// Why.
        why: &'a str,
    },
}

/// Sends what changed in `dir` to `project` (an id, or a slug among the caller's projects):
/// files new or changed here are uploaded, files deleted here are deleted in the project.
/// Changes made only in the project are left for [`pull`]. `on_step` hears of each step as it
/// happens.
///
/// Files changed on both sides are not an error: they are left as they are on both sides and
/// listed in [`SyncReport::conflicts`], as are local names that cannot be project paths.
///
/// # Errors
/// [`ErrorKind::NotFound`] for no such project; [`ErrorKind::Conflict`] when `dir` is synced
/// with another project; [`ErrorKind::InvalidInput`] when its sync state is damaged;
/// [`ErrorKind::Internal`] when `dir` cannot be read; and the errors of the target's file
/// calls. The sync state keeps what was done before an error.
pub async fn push(
    target: &Target,
    project: &str,
    dir: &Path,
    dry_run: bool,
    on_step: &mut (dyn FnMut(SyncStep<'_>) + Send),
) -> Result<SyncReport> {
    let project = target.resolve_project(project).await?.id;
    let sides = Sides::read(target, project, dir, false, on_step).await?;
    let mut report = sides.report(dry_run);
    // What both sides agree on after this run: the base, changed path by path as they are
    // dealt with, so that an error part-way keeps the base of every path not reached.
    let mut next = sides.base.clone();
    let done = push_paths(target, dir, &sides, &mut next, &mut report, on_step).await;
    sides.save(dir, dry_run, next, done)?;
    Ok(report)
}

/// Fetches what changed in `project` (an id, or a slug among the caller's projects) into `dir`,
/// which is created if needed: files new or changed in the project are downloaded, files deleted
/// there are deleted here. Changes made only here are left for [`push`]. `on_step` hears of
/// each step as it happens.
///
/// Files changed on both sides are not an error: they are left as they are on both sides and
/// listed in [`SyncReport::conflicts`].
///
/// # Errors
/// As [`push`]; [`ErrorKind::InvalidInput`] for a project path that cannot be written below a
/// folder, [`ErrorKind::Internal`] when a file cannot be written or deleted.
pub async fn pull(
    target: &Target,
    project: &str,
    dir: &Path,
    dry_run: bool,
    on_step: &mut (dyn FnMut(SyncStep<'_>) + Send),
) -> Result<SyncReport> {
    let project = target.resolve_project(project).await?.id;
    if !dry_run {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot create {}: {e}", dir.display())))?;
    }
    // A dry run creates nothing: a folder not there yet is an empty one.
    let sides = Sides::read(target, project, dir, dry_run, on_step).await?;
    let mut report = sides.report(dry_run);
    // As in `push`: the base, changed path by path.
    let mut next = sides.base.clone();
    let done = pull_paths(target, dir, &sides, &mut next, &mut report, on_step).await;
    sides.save(dir, dry_run, next, done)?;
    Ok(report)
}

/// What both sides last agreed on.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    project: Option<Uuid>,
    files: BTreeMap<String, Base>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Base {
    version: i64,
    sha256: String,
}

/// One file of the project: its version and content hash.
type Remote = BTreeMap<String, Base>;
/// One file of the folder: its content hash.
type Local = BTreeMap<String, String>;

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_DIR).join("sync.json")
}

fn load_state(dir: &Path, project: Uuid) -> Result<State> {
    let path = state_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let state: State = serde_json::from_slice(&bytes).map_err(|e| {
                Error::invalid(format!("{} is damaged ({e}); delete it to sync from scratch", path.display()))
            })?;
            if state.project.is_some_and(|p| p != project) {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "{} is synced with another project ({}); use another folder",
                        dir.display(),
                        state.project.unwrap_or_default()
                    ),
                ));
            }
            Ok(state)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(State { project: Some(project), files: BTreeMap::new() })
        }
        Err(e) => Err(Error::new(ErrorKind::Internal, format!("cannot read {}: {e}", path.display()))),
    }
}

fn save_state(dir: &Path, state: &State) -> Result<()> {
    let path = state_path(dir);
    let failed = |e: std::io::Error| Error::new(ErrorKind::Internal, format!("cannot write {}: {e}", path.display()));
    std::fs::create_dir_all(path.parent().expect("has a folder")).map_err(failed)?;
    let temp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::internal("cannot encode the sync state", e))?;
    std::fs::write(&temp, json).map_err(failed)?;
    std::fs::rename(&temp, &path).map_err(failed)
}

/// Every regular file below `dir` (except the sync state), by `/`-separated path, with its hash;
/// and the local files left out, with why. With `missing_is_empty`, a `dir` that does not exist
/// has no files.
fn walk(dir: &Path, missing_is_empty: bool) -> Result<(Local, Vec<(String, &'static str)>)> {
    let (mut out, mut skipped) = (Local::new(), Vec::new());
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    let listing_failed = |folder: &Path, e: std::io::Error| {
        Error::new(ErrorKind::Internal, format!("cannot list {}: {e}", folder.display()))
    };
    while let Some((folder, prefix)) = pending.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if missing_is_empty && prefix.is_empty() && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((out, skipped));
            }
            Err(e) => return Err(listing_failed(&folder, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| listing_failed(&folder, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                skipped.push((entry.path().display().to_string(), "its name is not UTF-8"));
                continue;
            };
            let path = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
            if path == STATE_DIR || (name.starts_with('.') && name.contains(".cloudx-") && name.ends_with(".part")) {
                continue; // the sync state, and what an interrupted download left
            }
            let kind = entry.file_type().map_err(|e| listing_failed(&entry.path(), e))?;
            if kind.is_dir() {
                pending.push((entry.path(), path));
            } else if kind.is_file() {
                out.insert(path, hash_file(&entry.path())?);
            } else {
                skipped.push((entry.path().display().to_string(), "not a regular file"));
            }
        }
    }
    Ok((out, skipped))
}

fn hash_file(path: &Path) -> Result<String> {
    let failed = |e: std::io::Error| Error::new(ErrorKind::Internal, format!("cannot read {}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(failed)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(failed)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

async fn remote_files(target: &Target, project: Uuid) -> Result<Remote> {
    let tree = target.tree(project, "", None, true).await?;
    Ok(tree
        .entries
        .into_iter()
        // `.cloudx/` is this folder's sync state: a project's files there are never synced.
        .filter(|e| e.path != STATE_DIR && !e.path.starts_with(".cloudx/"))
        .filter_map(|e| Some((e.path, Base { version: e.version, sha256: e.sha256? })))
        .collect())
}

/// Why a local name cannot be a project path as it is, if it cannot.
fn unsendable(path: &str) -> Option<String> {
    match cloudx_core::storage::ProjectPath::parse(path) {
        Err(e) => Some(e.message().to_owned()),
        Ok(p) if p.as_str() != path => Some("its name is not in Unicode normal form C; rename it".to_owned()),
        Ok(_) => None,
    }
}

/// The local file of a project path, refusing anything that would leave `dir`.
fn local_path(dir: &Path, path: &str) -> Result<PathBuf> {
    let relative = Path::new(path);
    if !relative.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::invalid(format!("the project path `{path}` cannot be written below a folder")));
    }
    Ok(dir.join(relative))
}

/// Both sides and their last agreement, read at the start of a sync.
#[derive(Debug)]
struct Sides {
    project: Uuid,
    state: State,
    local: Local,
    remote: Remote,
    base: BTreeMap<String, Base>,
    /// The local files left out, with why.
    skipped: Vec<String>,
}

impl Sides {
    async fn read(
        target: &Target,
        project: Uuid,
        dir: &Path,
        missing_is_empty: bool,
        on_step: &mut (dyn FnMut(SyncStep<'_>) + Send),
    ) -> Result<Self> {
        let mut state = load_state(dir, project)?;
        // Hashing the folder reads every file: off the async threads.
        let walked = dir.to_path_buf();
        let (local, skipped) = tokio::task::spawn_blocking(move || walk(&walked, missing_is_empty))
            .await
            .map_err(|e| Error::internal(format!("listing {} stopped", dir.display()), e))??;
        let skipped = skipped
            .into_iter()
            .map(|(path, why)| {
                on_step(SyncStep::Skipped { path: &path, why });
                format!("{path}: {why}")
            })
            .collect();
        let remote = remote_files(target, project).await?;
        let base = std::mem::take(&mut state.files);
        Ok(Sides { project, state, local, remote, base, skipped })
    }

    /// Every path of either side or of the base, in order.
    fn paths(&self) -> BTreeSet<&String> {
        self.local.keys().chain(self.base.keys()).chain(self.remote.keys()).collect()
    }

    /// The report of a sync of these sides, before any step.
    fn report(&self, dry_run: bool) -> SyncReport {
        SyncReport { project: self.project, dry_run, skipped: self.skipped.clone(), ..SyncReport::default() }
    }

    /// Unless `dry_run`, saves `next` as the base: after the whole sync, or after an error
    /// part-way (`done`), whose error then comes first.
    fn save(mut self, dir: &Path, dry_run: bool, next: BTreeMap<String, Base>, done: Result<()>) -> Result<()> {
        if dry_run {
            return done;
        }
        self.state.files = next;
        let saved = save_state(dir, &self.state);
        done.and(saved)
    }
}

impl SyncReport {
    /// Records a file sent or fetched (or that would be), and tells `on_step`.
    fn transferred(&mut self, path: &str, version: Option<i64>, on_step: &mut (dyn FnMut(SyncStep<'_>) + Send)) {
        on_step(SyncStep::Transferred { path, version });
        self.transferred.push(SyncedFile { path: path.to_owned(), version });
    }

    /// Records a file deleted on the other side (or that would be), and tells `on_step`.
    fn deleted(&mut self, path: &str, version: Option<i64>, on_step: &mut (dyn FnMut(SyncStep<'_>) + Send)) {
        on_step(SyncStep::Deleted { path, version });
        self.deleted.push(SyncedFile { path: path.to_owned(), version });
    }
}

/// The steps of [`push`], path by path; `next` follows each.
async fn push_paths(
    target: &Target,
    dir: &Path,
    sides: &Sides,
    next: &mut BTreeMap<String, Base>,
    report: &mut SyncReport,
    on_step: &mut (dyn FnMut(SyncStep<'_>) + Send),
) -> Result<()> {
    let Sides { project, local, remote, base, .. } = sides;
    let (project, dry_run) = (*project, report.dry_run);
    for path in sides.paths() {
        let (l, b, r) = (local.get(path), base.get(path), remote.get(path));
        match (l, r) {
            (Some(l), Some(r)) if *l == r.sha256 => {
                next.insert(path.clone(), r.clone());
            }
            (Some(_), _) if let Some(why) = unsendable(path) => {
                report.conflicts.push(format!("{path}: cannot be sent: {why}"));
            }
            (Some(l), remote_now) => {
                let expected = match (b, remote_now) {
                    (None, None) => Some(0),
                    (Some(b), Some(r)) if b.version == r.version => Some(r.version),
                    // Only the project changed it, or deleted it: `pull` brings that.
                    (Some(b), _) if b.sha256 == *l => continue,
                    (Some(_), None) => {
                        report.conflicts.push(format!("{path}: changed here, deleted in the project"));
                        continue;
                    }
                    (_, Some(_)) => {
                        report.conflicts.push(format!("{path}: changed here and in the project"));
                        continue;
                    }
                };
                if dry_run {
                    report.transferred(path, None, on_step);
                    continue;
                }
                let file = local_path(dir, path)?;
                match target.put_file(project, path, &file, expected, None).await {
                    Ok(v) => {
                        next.insert(path.clone(), Base { version: v.version, sha256: l.clone() });
                        report.transferred(path, Some(v.version), on_step);
                    }
                    Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
                        report.conflicts.push(format!("{path}: the project changed it meanwhile"));
                    }
                    Err(e) => return Err(e),
                }
            }
            (None, Some(r)) => match b {
                Some(b) if b.version == r.version => {
                    if dry_run {
                        report.deleted(path, None, on_step);
                        continue;
                    }
                    match target.delete_file(project, path, Some(r.version), Some("deleted by cloudx push")).await {
                        Ok(v) => {
                            next.remove(path);
                            report.deleted(path, Some(v), on_step);
                        }
                        Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
                            report.conflicts.push(format!("{path}: deleted here, changed in the project meanwhile"));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Some(_) => report.conflicts.push(format!("{path}: deleted here, changed in the project")),
                None => {} // new in the project: `pull` brings it
            },
            (None, None) => {
                next.remove(path);
            }
        }
    }
    Ok(())
}

/// The steps of [`pull`], path by path; `next` follows each.
async fn pull_paths(
    target: &Target,
    dir: &Path,
    sides: &Sides,
    next: &mut BTreeMap<String, Base>,
    report: &mut SyncReport,
    on_step: &mut (dyn FnMut(SyncStep<'_>) + Send),
) -> Result<()> {
    let Sides { project, local, remote, base, .. } = sides;
    let (project, dry_run) = (*project, report.dry_run);
    for path in sides.paths() {
        let (l, b, r) = (local.get(path), base.get(path), remote.get(path));
        match (r, l) {
            (Some(r), Some(l)) if r.sha256 == *l => {
                next.insert(path.clone(), r.clone());
            }
            (Some(r), local_now) => {
                let fetch = match (b, local_now) {
                    (None, None) => true,
                    (Some(b), Some(l)) if b.sha256 == *l => true,
                    (Some(b), _) if b.version == r.version => false, // only this folder changed it: `push` sends it
                    (Some(_), None) => {
                        report.conflicts.push(format!("{path}: deleted here, changed in the project"));
                        false
                    }
                    (_, Some(_)) => {
                        report.conflicts.push(format!("{path}: changed here and in the project"));
                        false
                    }
                };
                if !fetch {
                    continue;
                }
                if dry_run {
                    report.transferred(path, None, on_step);
                    continue;
                }
                let file = local_path(dir, path)?;
                let got = target.get_file(project, path, Some(r.version), &file).await?;
                next.insert(path.clone(), r.clone());
                report.transferred(path, Some(got.version), on_step);
            }
            (None, Some(l)) => match b {
                Some(b) if b.sha256 == *l => {
                    if dry_run {
                        report.deleted(path, None, on_step);
                        continue;
                    }
                    let file = local_path(dir, path)?;
                    std::fs::remove_file(&file).map_err(|e| {
                        Error::new(ErrorKind::Internal, format!("cannot delete {}: {e}", file.display()))
                    })?;
                    next.remove(path);
                    report.deleted(path, None, on_step);
                }
                Some(_) => report.conflicts.push(format!("{path}: changed here, deleted in the project")),
                None => {} // new here: `push` sends it
            },
            (None, None) => {
                next.remove(path);
            }
        }
    }
    Ok(())
}
