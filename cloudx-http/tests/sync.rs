//! Folder sync (`client::sync`): a folder pushed into a project, both sides changed, then pulled
//! and pushed again; on the embedded core and through the daemon.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use cloudx_core::auth::NewUser;
use cloudx_core::auth::audit::Client as AuditClient;
use cloudx_core::config::ConfigLoader;
use cloudx_core::storage::NewProject;
use cloudx_core::{Cloudx, ErrorKind, Principal, Role};
use cloudx_http::client::sync::{self, SyncReport, SyncStep, SyncedFile};
use cloudx_http::client::target::Target;
use cloudx_http::client::{Client, Credential};
use uuid::Uuid;

fn write(dir: &Path, path: &str, text: &str) {
    let file = dir.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, text).unwrap();
}

/// Every file below `dir` (the sync state too) with its content: what a dry run must leave alone.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path().strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
                out.insert(path, std::fs::read(entry.path()).unwrap());
            }
        }
    }
    out
}

/// The project's files with their versions.
async fn versions(target: &Target, project: Uuid) -> BTreeMap<String, i64> {
    let tree = target.tree(project, "", None, true).await.unwrap();
    tree.entries.into_iter().filter(|e| e.sha256.is_some()).map(|e| (e.path, e.version)).collect()
}

/// The content of `path` in the project.
async fn read(target: &Target, project: Uuid, path: &str) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("got");
    target.get_file(project, path, None, &file).await.unwrap();
    std::fs::read_to_string(file).unwrap()
}

/// Writes `text` as `path` in the project (as another client would), answering its version.
async fn put(target: &Target, project: Uuid, path: &str, text: &str) -> i64 {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("put");
    std::fs::write(&file, text).unwrap();
    target.put_file(project, path, &file, None, Some("changed upstream")).await.unwrap().version
}

/// A push or pull that also checks that the steps heard are the report's.
async fn sync(target: &Target, push: bool, project: &str, dir: &Path, dry_run: bool) -> SyncReport {
    let mut steps = Vec::new();
    let mut on_step = |step: SyncStep<'_>| {
        steps.push(match step {
            SyncStep::Transferred { path, version } => format!("transferred {path} {version:?}"),
            SyncStep::Deleted { path, version } => format!("deleted {path} {version:?}"),
            SyncStep::Skipped { path, why } => format!("skipped {path}: {why}"),
        });
    };
    let report = if push {
        sync::push(target, project, dir, dry_run, &mut on_step).await
    } else {
        sync::pull(target, project, dir, dry_run, &mut on_step).await
    }
    .unwrap();
    let mut heard: Vec<String> = report
        .skipped
        .iter()
        .map(|s| format!("skipped {s}"))
        .chain(report.transferred.iter().map(|f| format!("transferred {} {:?}", f.path, f.version)))
        .chain(report.deleted.iter().map(|f| format!("deleted {} {:?}", f.path, f.version)))
        .collect();
    steps.sort();
    heard.sort();
    assert_eq!(steps, heard, "each step is heard once, as reported");
    assert_eq!(report.dry_run, dry_run);
    report
}

fn paths(files: &[SyncedFile]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

/// The whole round, on `target`, with `project` empty and named `name` (its id or its slug), and
/// `other` another project of the same owner.
async fn round_trip(target: &Target, project: Uuid, name: &str, other: Uuid) {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    let slug = name;
    for (path, text) in [("a.txt", "a"), ("b.txt", "b"), ("sub/c.txt", "c"), ("d.txt", "d"), ("e.txt", "e")] {
        write(&work, path, text);
    }
    std::os::unix::fs::symlink("a.txt", work.join("link")).unwrap();

    // The first push sends everything and remembers it; the link is skipped, with why.
    let dry = sync(target, true, slug, &work, true).await;
    assert_eq!(paths(&dry.transferred), ["a.txt", "b.txt", "d.txt", "e.txt", "sub/c.txt"]);
    assert!(dry.transferred.iter().all(|f| f.version.is_none()), "{dry:?}");
    assert!(!work.join(".cloudx").exists(), "a dry run saves no state");
    assert!(versions(target, project).await.is_empty(), "a dry run sends nothing");
    let pushed = sync(target, true, slug, &work, false).await;
    assert_eq!(pushed.project, project);
    assert_eq!(paths(&pushed.transferred), ["a.txt", "b.txt", "d.txt", "e.txt", "sub/c.txt"]);
    let now = versions(target, project).await;
    for file in &pushed.transferred {
        assert_eq!(file.version, Some(now[&file.path]), "{file:?}");
    }
    assert!(pushed.deleted.is_empty() && pushed.conflicts.is_empty(), "{pushed:?}");
    assert_eq!(pushed.skipped.len(), 1, "{pushed:?}");
    assert!(pushed.skipped[0].ends_with("link: not a regular file"), "{pushed:?}");
    assert!(work.join(".cloudx/sync.json").is_file());
    assert!(!now.keys().any(|p| p.starts_with(".cloudx")), "the sync state stays local: {now:?}");
    let again = sync(target, true, slug, &work, false).await;
    assert!(again.transferred.is_empty() && again.deleted.is_empty() && again.conflicts.is_empty(), "{again:?}");
    std::fs::remove_file(work.join("link")).unwrap();

    // Both sides change: a and c here, b and d in the project, e on both.
    write(&work, "a.txt", "a, changed here");
    std::fs::remove_file(work.join("sub/c.txt")).unwrap();
    write(&work, "e.txt", "e, changed here");
    let b = put(target, project, "b.txt", "b, changed in the project").await;
    target.delete_file(project, "d.txt", None, None).await.unwrap();
    put(target, project, "e.txt", "e, changed in the project").await;

    // A dry pull says what it would do, and changes nothing.
    let before = snapshot(&work);
    let dry = sync(target, false, slug, &work, true).await;
    assert_eq!(dry.transferred, [SyncedFile { path: "b.txt".into(), version: None }]);
    assert_eq!(dry.deleted, [SyncedFile { path: "d.txt".into(), version: None }]);
    assert_eq!(dry.conflicts, ["e.txt: changed here and in the project"]);
    assert_eq!(snapshot(&work), before, "a dry run changes nothing");

    // The pull brings the project's changes, keeps this folder's, and leaves the conflict.
    let pulled = sync(target, false, slug, &work, false).await;
    assert_eq!(pulled.transferred, [SyncedFile { path: "b.txt".into(), version: Some(b) }]);
    assert_eq!(pulled.deleted, [SyncedFile { path: "d.txt".into(), version: None }]);
    assert_eq!(pulled.conflicts, ["e.txt: changed here and in the project"]);
    assert!(pulled.skipped.is_empty(), "{pulled:?}");
    assert_eq!(std::fs::read_to_string(work.join("b.txt")).unwrap(), "b, changed in the project");
    assert!(!work.join("d.txt").exists());
    assert_eq!(std::fs::read_to_string(work.join("a.txt")).unwrap(), "a, changed here", "only pushed by push");
    assert!(!work.join("sub/c.txt").exists(), "deleted here: not brought back");
    assert_eq!(std::fs::read_to_string(work.join("e.txt")).unwrap(), "e, changed here");

    // A dry push, then the push: this folder's changes go up, the conflict stays on both sides.
    let before = versions(target, project).await;
    let dry = sync(target, true, slug, &work, true).await;
    assert_eq!(paths(&dry.transferred), ["a.txt"]);
    assert_eq!(paths(&dry.deleted), ["sub/c.txt"]);
    assert_eq!(dry.conflicts, ["e.txt: changed here and in the project"]);
    assert_eq!(versions(target, project).await, before, "a dry run changes nothing");
    let pushed = sync(target, true, slug, &work, false).await;
    assert_eq!(paths(&pushed.transferred), ["a.txt"]);
    assert_eq!(paths(&pushed.deleted), ["sub/c.txt"]);
    assert!(pushed.deleted[0].version.is_some_and(|v| v > before["sub/c.txt"]), "{pushed:?}");
    assert_eq!(pushed.conflicts, ["e.txt: changed here and in the project"]);
    let after = versions(target, project).await;
    assert_eq!(pushed.transferred[0].version, Some(after["a.txt"]));
    assert_eq!(after.keys().collect::<Vec<_>>(), ["a.txt", "b.txt", "e.txt"]);
    assert_eq!(read(target, project, "a.txt").await, "a, changed here");
    assert_eq!(read(target, project, "e.txt").await, "e, changed in the project");
    assert_eq!(std::fs::read_to_string(work.join("e.txt")).unwrap(), "e, changed here");

    // Resolved by keeping the project's version: in step again.
    std::fs::remove_file(work.join("e.txt")).unwrap();
    let pulled = sync(target, false, slug, &work, false).await;
    assert_eq!(pulled.conflicts, ["e.txt: deleted here, changed in the project"]);
    write(&work, "e.txt", "e, changed in the project");
    let pulled = sync(target, false, slug, &work, false).await;
    assert!(pulled.transferred.is_empty() && pulled.deleted.is_empty() && pulled.conflicts.is_empty(), "{pulled:?}");
    let pushed = sync(target, true, slug, &work, false).await;
    assert!(pushed.transferred.is_empty() && pushed.deleted.is_empty() && pushed.conflicts.is_empty(), "{pushed:?}");

    // A fresh folder pulls everything; a dry pull into a folder not there creates nothing.
    let fresh = root.path().join("fresh");
    let dry = sync(target, false, slug, &fresh, true).await;
    assert_eq!(paths(&dry.transferred), ["a.txt", "b.txt", "e.txt"]);
    assert!(!fresh.exists(), "a dry run creates nothing");
    let pulled = sync(target, false, slug, &fresh, false).await;
    assert_eq!(paths(&pulled.transferred), ["a.txt", "b.txt", "e.txt"]);
    assert_eq!(std::fs::read_to_string(fresh.join("b.txt")).unwrap(), "b, changed in the project");

    // The folder is this project's: another project is refused, and a missing one is not found.
    let err = sync::push(target, &other.to_string(), &work, false, &mut |_| {}).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.message().contains("synced with another project"), "{err}");
    let err = sync::pull(target, "no-such-project", &work, false, &mut |_| {}).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    // A damaged state is named, not overwritten.
    std::fs::write(work.join(".cloudx/sync.json"), "{").unwrap();
    let err = sync::push(target, slug, &work, false, &mut |_| {}).await.unwrap_err();
    assert!(err.message().contains("sync.json is damaged"), "{err}");
    assert_eq!(std::fs::read_to_string(work.join(".cloudx/sync.json")).unwrap(), "{");
}

#[tokio::test]
async fn a_folder_syncs_with_a_project_on_the_embedded_core() {
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigLoader::new().env([("CLOUDX_DATA_DIR", dir.path().to_str().unwrap())]).load().unwrap();
    let cx = Cloudx::connect(config).await.unwrap();
    let new =
        NewUser { email: "owner@example.com".into(), password: common::PASSWORD.into(), display_name: "Owner".into() };
    let owner = cx.auth().add_user(&Principal::System, new, Role::Member, &AuditClient::default()).await.unwrap();
    let target = Target::local(cx, Principal::System, "sync-tests");
    let new = |name: &str| NewProject { name: name.into(), owner_id: Some(owner.id), ..NewProject::default() };
    let project = target.create_project(&new("Synced")).await.unwrap();
    let other = target.create_project(&new("Other")).await.unwrap();
    round_trip(&target, project.id, &project.id.to_string(), other.id).await;
    target.close().await;
}

#[tokio::test]
async fn a_folder_syncs_with_a_project_through_the_daemon() {
    // Many calls in a row from one account: no rate limits.
    let daemon =
        common::Daemon::start(&[("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"), ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0")])
            .await;
    let (access_token, _) = common::sign_up(&daemon, "owner@example.com").await;
    let client = Client::new(&daemon.url("/")).unwrap().with_credential(Credential::Session {
        access_token,
        refresh_token: "unused: the test ends before the access token does".into(),
    });
    let target = Target::Remote(client);
    let new = |name: &str| NewProject { name: name.into(), ..NewProject::default() };
    let project = target.create_project(&new("Synced")).await.unwrap();
    let other = target.create_project(&new("Other")).await.unwrap();
    assert_eq!(project.slug, "synced");
    round_trip(&target, project.id, "synced", other.id).await;
    daemon.stop().await.unwrap();
}
