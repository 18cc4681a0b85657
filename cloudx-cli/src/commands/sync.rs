//! `cloudx push DIR PROJECT` and `cloudx pull PROJECT DIR`: a folder kept in step with a
//! project, sending or fetching only what changed.
//!
//! Each sync records, in `DIR/.cloudx/sync.json`, the version and content hash of every file as
//! both sides last agreed on it (the base). A side changed a file when it differs from the base;
//! when both sides changed it, differently, that is a conflict: reported, never overwritten.
//! Uploads name the version they replace, so a write that reaches the project between the
//! listing and the upload is a conflict too, not a lost update.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

use crate::commands::target::{self, Target};
use anyhow::Context as _;
use cloudx_core::{Error, ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::args::{GlobalArgs, PullArgs, SyncArgs};
use crate::commands::projects::resolve;
use crate::print;

const STATE_DIR: &str = ".cloudx";

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

fn load_state(dir: &Path, project: Uuid) -> anyhow::Result<State> {
    let path = state_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let state: State = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged; delete it to sync from scratch", path.display()))?;
            if state.project.is_some_and(|p| p != project) {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "{} is synced with another project ({}); use another folder",
                        dir.display(),
                        state.project.unwrap_or_default()
                    ),
                )
                .into());
            }
            Ok(state)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(State { project: Some(project), files: BTreeMap::new() })
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_state(dir: &Path, state: &State) -> anyhow::Result<()> {
    let path = state_path(dir);
    std::fs::create_dir_all(path.parent().expect("has a folder"))?;
    let temp = path.with_extension("json.tmp");
    std::fs::write(&temp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&temp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Every regular file below `dir` (except the sync state), by `/`-separated path, with its hash.
fn walk(dir: &Path) -> anyhow::Result<Local> {
    let mut out = Local::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((folder, prefix)) = pending.pop() {
        let entries = std::fs::read_dir(&folder).with_context(|| format!("listing {}", folder.display()))?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                eprintln!("skipped {}: its name is not UTF-8", entry.path().display());
                continue;
            };
            let path = if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") };
            if path == STATE_DIR || (name.starts_with('.') && name.contains(".cloudx-") && name.ends_with(".part")) {
                continue; // the sync state, and what an interrupted download left
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push((entry.path(), path));
            } else if kind.is_file() {
                out.insert(path, hash_file(&entry.path())?);
            } else {
                eprintln!("skipped {}: not a regular file", entry.path().display());
            }
        }
    }
    Ok(out)
}

fn hash_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

async fn remote_files(client: &Target, project: Uuid) -> anyhow::Result<Remote> {
    let tree = client.tree(project, "", None, true).await?;
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
fn local_path(dir: &Path, path: &str) -> anyhow::Result<PathBuf> {
    let relative = Path::new(path);
    if !relative.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::invalid(format!("the project path `{path}` cannot be written below a folder")).into());
    }
    Ok(dir.join(relative))
}

fn paths<'a>(local: &'a Local, base: &'a BTreeMap<String, Base>, remote: &'a Remote) -> BTreeSet<&'a String> {
    local.keys().chain(base.keys()).chain(remote.keys()).collect()
}

/// Both sides and their last agreement, read at the start of a sync.
struct Sides {
    project: Uuid,
    state: State,
    local: Local,
    remote: Remote,
    base: BTreeMap<String, Base>,
}

impl Sides {
    async fn read(client: &Target, project: &str, dir: &Path) -> anyhow::Result<Self> {
        let project = resolve(client, project).await?.id;
        let mut state = load_state(dir, project)?;
        let local = walk(dir)?;
        let remote = remote_files(client, project).await?;
        let base = std::mem::take(&mut state.files);
        Ok(Sides { project, state, local, remote, base })
    }
}

fn finish(conflicts: &[String], done: usize, what: &str) -> anyhow::Result<()> {
    if conflicts.is_empty() {
        print(&format!("{done} {what}; in step\n"));
        return Ok(());
    }
    let mut out = format!("{done} {what}; {} conflicts, left as they are on both sides:\n", conflicts.len());
    for c in conflicts {
        out.push_str(&format!("  {c}\n"));
    }
    print(&out);
    Err(Error::new(
        ErrorKind::Conflict,
        "some files changed on both sides: resolve them (keep one side's version), then sync again",
    )
    .into())
}

/// `cloudx push DIR PROJECT`.
pub(crate) async fn push(args: SyncArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let client = target::open(|| Ok(crate::commands::load_config(global, |l| l)?)).await?;
    let done = push_on(&client, args).await;
    client.close().await;
    done
}

async fn push_on(client: &Target, args: SyncArgs) -> anyhow::Result<()> {
    let Sides { project, mut state, local, remote, base } = Sides::read(client, &args.project, &args.dir).await?;
    let (mut conflicts, mut done) = (Vec::new(), 0usize);
    // What both sides agree on after this run: the base, changed path by path as they are
    // dealt with, so that an error part-way keeps the base of every path not reached.
    let mut next = base.clone();
    for path in paths(&local, &base, &remote) {
        let (l, b, r) = (local.get(path), base.get(path), remote.get(path));
        match (l, r) {
            (Some(l), Some(r)) if *l == r.sha256 => {
                next.insert(path.clone(), r.clone());
            }
            (Some(_), _) if let Some(why) = unsendable(path) => {
                conflicts.push(format!("{path}: cannot be sent: {why}"));
            }
            (Some(l), remote_now) => {
                let expected = match (b, remote_now) {
                    (None, None) => Some(0),
                    (Some(b), Some(r)) if b.version == r.version => Some(r.version),
                    // Only the project changed it, or deleted it: `pull` brings that.
                    (Some(b), _) if b.sha256 == *l => continue,
                    (Some(_), None) => {
                        conflicts.push(format!("{path}: changed here, deleted in the project"));
                        continue;
                    }
                    (_, Some(_)) => {
                        conflicts.push(format!("{path}: changed here and in the project"));
                        continue;
                    }
                };
                if args.dry_run {
                    print(&format!("would send {path}\n"));
                    continue;
                }
                let file = local_path(&args.dir, path)?;
                match client.put_file(project, path, &file, expected, None).await {
                    Ok(v) => {
                        print(&format!("sent {path} (version {})\n", v.version));
                        next.insert(path.clone(), Base { version: v.version, sha256: l.clone() });
                        done += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
                        conflicts.push(format!("{path}: the project changed it meanwhile"));
                    }
                    Err(e) => {
                        if !args.dry_run {
                            state.files = next;
                            save_state(&args.dir, &state)?;
                        }
                        return Err(e.into());
                    }
                }
            }
            (None, Some(r)) => match b {
                Some(b) if b.version == r.version => {
                    if args.dry_run {
                        print(&format!("would delete {path} in the project\n"));
                        continue;
                    }
                    match client.delete_file(project, path, Some(r.version), Some("deleted by cloudx push")).await {
                        Ok(v) => {
                            print(&format!("deleted {path} in the project (version {v})\n"));
                            next.remove(path);
                            done += 1;
                        }
                        Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
                            conflicts.push(format!("{path}: deleted here, changed in the project meanwhile"));
                        }
                        Err(e) => {
                            state.files = next;
                            save_state(&args.dir, &state)?;
                            return Err(e.into());
                        }
                    }
                }
                Some(_) => conflicts.push(format!("{path}: deleted here, changed in the project")),
                None => {} // new in the project: `pull` brings it
            },
            (None, None) => {
                next.remove(path);
            }
        }
    }
    if !args.dry_run {
        state.files = next;
        save_state(&args.dir, &state)?;
    }
    finish(&conflicts, done, "files sent or deleted")
}

/// `cloudx pull PROJECT DIR`.
pub(crate) async fn pull(args: PullArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let client = target::open(|| Ok(crate::commands::load_config(global, |l| l)?)).await?;
    let done = pull_on(&client, args).await;
    client.close().await;
    done
}

async fn pull_on(client: &Target, args: PullArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let Sides { project, mut state, local, remote, base } = Sides::read(client, &args.project, &args.dir).await?;
    let (mut conflicts, mut done) = (Vec::new(), 0usize);
    // As in `push`: the base, changed path by path.
    let mut next = base.clone();
    for path in paths(&local, &base, &remote) {
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
                        conflicts.push(format!("{path}: deleted here, changed in the project"));
                        false
                    }
                    (_, Some(_)) => {
                        conflicts.push(format!("{path}: changed here and in the project"));
                        false
                    }
                };
                if !fetch {
                    continue;
                }
                if args.dry_run {
                    print(&format!("would fetch {path}\n"));
                    continue;
                }
                let file = local_path(&args.dir, path)?;
                let got = match client.get_file(project, path, Some(r.version), &file).await {
                    Ok(got) => got,
                    Err(e) => {
                        state.files = next;
                        save_state(&args.dir, &state)?;
                        return Err(e.into());
                    }
                };
                print(&format!("fetched {path} (version {})\n", got.version));
                next.insert(path.clone(), r.clone());
                done += 1;
            }
            (None, Some(l)) => match b {
                Some(b) if b.sha256 == *l => {
                    if args.dry_run {
                        print(&format!("would delete {path} here\n"));
                        continue;
                    }
                    std::fs::remove_file(local_path(&args.dir, path)?).with_context(|| format!("deleting {path}"))?;
                    print(&format!("deleted {path} here (deleted in the project)\n"));
                    next.remove(path);
                    done += 1;
                }
                Some(_) => conflicts.push(format!("{path}: changed here, deleted in the project")),
                None => {} // new here: `push` sends it
            },
            (None, None) => {
                next.remove(path);
            }
        }
    }
    if !args.dry_run {
        state.files = next;
        save_state(&args.dir, &state)?;
    }
    finish(&conflicts, done, "files fetched or deleted")
}
