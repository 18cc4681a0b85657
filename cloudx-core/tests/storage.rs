//! The conformance suite of the `Storage` port: every scenario on each object store (local
//! folder, S3 against a real S3-compatible server, memory), each with the metadata on SQLite and
//! on a real Postgres.

use std::time::Duration;

use bytes::Bytes;
use cloudx_core::auth::NewUser;
use cloudx_core::auth::audit::Client;
use cloudx_core::config::{ConfigLoader, Registration};
use cloudx_core::storage::{ArchiveFormat, ByteStream, NewProject, ProjectFilter, ProjectUpdate, PutOptions};
use cloudx_core::testing::TestPostgres;
use cloudx_core::{Cloudx, CloudxConfig, ErrorKind, Principal, ProjectRole, Role};
use futures_util::TryStreamExt as _;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    File,
    Memory,
    S3,
}

struct Instance {
    cx: Cloudx,
    _pg: Option<TestPostgres>,
    dir: tempfile::TempDir,
}

async fn instance(postgres: bool, backend: Backend, tune: impl FnOnce(&mut CloudxConfig)) -> Option<Instance> {
    let dir = tempfile::tempdir().unwrap();
    let s3 = if backend == Backend::S3 { Some(cloudx_core::testing::s3()?) } else { None };
    let pg = if postgres { Some(TestPostgres::create().await?) } else { None };
    let mut env = vec![("CLOUDX_DATA_DIR".to_owned(), dir.path().to_str().unwrap().to_owned())];
    if let Some(pg) = &pg {
        env.push(("CLOUDX_DATABASE__URL".into(), pg.url().to_owned()));
    }
    match (backend, s3) {
        (Backend::Memory, _) => env.push(("CLOUDX_STORAGE__URL".into(), "memory://".into())),
        (Backend::S3, Some((endpoint, bucket))) => {
            // A prefix of its own per test: tests share the bucket.
            env.push(("CLOUDX_STORAGE__URL".into(), format!("s3://{bucket}/t-{}", Uuid::new_v4().simple())));
            env.push(("CLOUDX_STORAGE__ENDPOINT".into(), endpoint));
            env.push(("CLOUDX_STORAGE__REGION".into(), "us-east-1".into()));
            env.push(("CLOUDX_STORAGE__ACCESS_KEY_ID".into(), "cloudx-test".into()));
            env.push(("CLOUDX_STORAGE__SECRET_ACCESS_KEY".into(), "cloudx-test-secret".into()));
        }
        _ => {}
    }
    let mut config = ConfigLoader::new().env(env).load().unwrap();
    config.auth.registration = Registration::Open;
    tune(&mut config);
    let cx = Cloudx::connect(config).await.unwrap();
    Some(Instance { cx, _pg: pg, dir })
}

fn client() -> Client {
    Client::new(Some("127.0.0.1".into()), Some("storage-tests"))
}

/// Registers an account and returns it as a principal (the first one is the administrator).
async fn user(cx: &Cloudx, name: &str) -> (Principal, Uuid) {
    let new = NewUser {
        email: format!("{name}@example.com"),
        password: "Correct-Horse-Battery-7781".into(),
        display_name: name.into(),
    };
    let user = cx.auth().register(new, None, &client()).await.unwrap();
    (Principal::user(user.id, user.role), user.id)
}

fn body(content: impl Into<Bytes>) -> ByteStream {
    let content: Bytes = content.into();
    // In several chunks, as a network body arrives.
    let chunks: Vec<std::io::Result<Bytes>> =
        content.chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect::<Vec<_>>();
    Box::pin(futures_util::stream::iter(chunks))
}

async fn read(
    cx: &Cloudx,
    who: &Principal,
    project: Uuid,
    path: &str,
    version: Option<i64>,
) -> cloudx_core::Result<Vec<u8>> {
    let download = cx.storage().open_file(who, project, path, version).await?;
    let chunks: Vec<Bytes> = download.stream(None).await?.try_collect().await.unwrap();
    Ok(chunks.concat())
}

async fn put(
    cx: &Cloudx,
    who: &Principal,
    project: Uuid,
    path: &str,
    content: &'static str,
) -> cloudx_core::Result<i64> {
    cx.storage().put_file(who, &client(), project, path, body(content), PutOptions::default()).await.map(|f| f.version)
}

async fn project(cx: &Cloudx, who: &Principal, name: &str) -> Uuid {
    cx.storage()
        .create_project(who, &client(), NewProject { name: name.into(), ..Default::default() })
        .await
        .unwrap()
        .id
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite_file { $(#[tokio::test] async fn $test() { super::$test(false, super::Backend::File).await })* }
        mod sqlite_memory { $(#[tokio::test] async fn $test() { super::$test(false, super::Backend::Memory).await })* }
        mod sqlite_s3 { $(#[tokio::test] async fn $test() { super::$test(false, super::Backend::S3).await })* }
        mod postgres_file { $(#[tokio::test] async fn $test() { super::$test(true, super::Backend::File).await })* }
        mod postgres_memory { $(#[tokio::test] async fn $test() { super::$test(true, super::Backend::Memory).await })* }
        mod postgres_s3 { $(#[tokio::test] async fn $test() { super::$test(true, super::Backend::S3).await })* }
    };
}

conformance!(
    projects_slugs_listing_and_settings,
    members_share_change_remove_and_transfer,
    delete_restore_and_purge,
    writes_make_versions_and_any_version_reads_back,
    expected_versions_refuse_a_lost_update,
    delete_restore_and_move_files_and_folders,
    a_path_is_a_file_or_a_folder_never_both,
    identical_content_is_stored_once_and_gc_keeps_what_is_referenced,
    an_interrupted_write_leaves_nothing,
    sizes_and_quotas_are_enforced,
    templates_and_copies,
    concurrent_writers_each_get_a_version,
    archives_go_in_and_out_whole,
    workspaces_check_out_and_commit_back,
);

/// A version written out into a folder, changed there as a run would, and committed back.
async fn workspaces_check_out_and_commit_back(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |_| {}).await else { return };
    let s = i.cx.storage();
    let (alice, alice_id) = user(&i.cx, "alice").await;
    let (bob, _) = user(&i.cx, "bob").await;
    let p = project(&i.cx, &alice, "work").await;
    put(&i.cx, &alice, p, "keep.txt", "keep\n").await.unwrap();
    put(&i.cx, &alice, p, "src/change.py", "print(1)\n").await.unwrap();
    let v = put(&i.cx, &alice, p, "src/gone.txt", "bye\n").await.unwrap();
    put(&i.cx, &alice, p, "later.txt", "after\n").await.unwrap();

    // A checkout needs an empty folder, and reads: strangers see no project.
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("stray"), "x").unwrap();
    let err = s.checkout(&alice, p, None, ws.path()).await.unwrap_err();
    assert!(err.message().contains("not empty"), "{err}");
    std::fs::remove_file(ws.path().join("stray")).unwrap();
    assert_eq!(s.checkout(&bob, p, None, ws.path()).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.checkout(&alice, p, Some(99), ws.path()).await.unwrap_err().kind(), ErrorKind::InvalidInput);

    // An older version: without the later file.
    let checkout = s.checkout(&alice, p, Some(v), ws.path()).await.unwrap();
    assert_eq!((checkout.version, checkout.files()), (v, 3));
    assert_eq!(std::fs::read_to_string(ws.path().join("src/change.py")).unwrap(), "print(1)\n");
    assert!(!ws.path().join("later.txt").exists());

    // Nothing changed: no version.
    let nothing = s.commit_workspace(&alice, &client(), p, ws.path(), &checkout, None).await.unwrap();
    assert_eq!(nothing.version, None);

    // A run's changes: one changed, one new, one deleted, and things that are not files.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "host secret").unwrap();
    std::fs::write(ws.path().join("src/change.py"), "print(2)\n").unwrap();
    std::fs::create_dir_all(ws.path().join("out/deep")).unwrap();
    std::fs::write(ws.path().join("out/deep/result.txt"), "42\n").unwrap();
    std::fs::remove_file(ws.path().join("src/gone.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), ws.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.path().join("dirlink")).unwrap();
    nix::unistd::mkfifo(&ws.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    // Deeper than a project path may be: not entered.
    let mut deep = ws.path().join("deep");
    for _ in 0..600 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("f"), "x").unwrap();
    // A viewer cannot commit, a stranger does not see the project.
    let viewer_err = s.commit_workspace(&bob, &client(), p, ws.path(), &checkout, None).await.unwrap_err();
    assert_eq!(viewer_err.kind(), ErrorKind::NotFound);
    s.set_member(&alice, &client(), p, "bob@example.com", ProjectRole::Viewer).await.unwrap();
    let viewer_err = s.commit_workspace(&bob, &client(), p, ws.path(), &checkout, None).await.unwrap_err();
    assert_eq!(viewer_err.kind(), ErrorKind::PermissionDenied);

    // The project moved on since the checkout (later.txt is untouched here: no conflict).
    let done = s.commit_workspace(&alice, &client(), p, ws.path(), &checkout, Some("a run")).await.unwrap();
    let version = done.version.expect("a new version");
    assert_eq!(done.written, vec!["out/deep/result.txt".to_owned(), "src/change.py".to_owned()]);
    assert_eq!(done.deleted, vec!["src/gone.txt".to_owned()]);
    assert_eq!(done.skipped.len(), 4, "{:?}", done.skipped);
    assert!(done.skipped.iter().any(|s| s.starts_with("deep/d/") && s.contains("too deep")), "{:?}", done.skipped);
    assert!(done.skipped.iter().any(|s| s.starts_with("link: a symlink")), "{:?}", done.skipped);
    assert!(done.skipped.iter().any(|s| s.starts_with("dirlink: a symlink")), "{:?}", done.skipped);
    assert!(done.skipped.iter().any(|s| s.starts_with("fifo: a named pipe")), "{:?}", done.skipped);
    assert_eq!(read(&i.cx, &alice, p, "src/change.py", None).await.unwrap(), b"print(2)\n");
    assert_eq!(read(&i.cx, &alice, p, "out/deep/result.txt", None).await.unwrap(), b"42\n");
    assert_eq!(read(&i.cx, &alice, p, "later.txt", None).await.unwrap(), b"after\n");
    assert_eq!(read(&i.cx, &alice, p, "src/gone.txt", None).await.unwrap_err().kind(), ErrorKind::NotFound);
    let history = s.history(&alice, p, "src/change.py", 1).await.unwrap();
    assert_eq!(
        (history[0].version, history[0].author_id, history[0].message.as_deref()),
        (version, Some(alice_id), Some("a run"))
    );

    // Committing the same checkout again: its paths changed meanwhile, so nothing lands.
    std::fs::write(ws.path().join("keep.txt"), "edited\n").unwrap();
    let err = s.commit_workspace(&alice, &client(), p, ws.path(), &checkout, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.message().contains("since version") && err.message().contains("src/"), "{err}");
    assert_eq!(read(&i.cx, &alice, p, "keep.txt", None).await.unwrap(), b"keep\n");
}

async fn projects_slugs_listing_and_settings(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |_| {}).await else { return };
    let s = i.cx.storage();
    let (admin, _) = user(&i.cx, "admin").await;
    let (alice, alice_id) = user(&i.cx, "alice").await;
    let (bob, _) = user(&i.cx, "bob").await;
    let new = |name: &str| NewProject { name: name.into(), ..Default::default() };

    let p = s.create_project(&alice, &client(), new("My Project!")).await.unwrap();
    assert_eq!((p.slug.as_str(), p.owner_id, p.role, p.version), ("my-project", alice_id, Some(ProjectRole::Owner), 0));
    // A derived slug moves aside; an explicit one that is taken is a conflict.
    let second = s.create_project(&alice, &client(), new("My project")).await.unwrap();
    assert_eq!(second.slug, "my-project-2");
    let taken = NewProject { slug: Some("my-project".into()), ..new("x") };
    assert_eq!(s.create_project(&alice, &client(), taken.clone()).await.unwrap_err().kind(), ErrorKind::Conflict);
    // Slugs are per owner: bob may have the same one.
    assert_eq!(s.create_project(&bob, &client(), taken).await.unwrap().slug, "my-project");
    for (bad, rule) in [("", "name"), ("x\u{7}", "control")] {
        let err = s.create_project(&alice, &client(), new(bad)).await.unwrap_err();
        assert!(err.kind() == ErrorKind::InvalidInput && err.message().contains(rule), "{}", err.message());
    }
    let bad_slug = NewProject { slug: Some("Not A Slug".into()), ..new("x") };
    assert!(s.create_project(&alice, &client(), bad_slug).await.unwrap_err().message().contains("slug"));

    // Lists: one's own; an administrator may ask for all; filter by slug.
    let mine = s.list_projects(&alice, &ProjectFilter::default()).await.unwrap();
    assert_eq!(mine.len(), 2);
    assert_eq!(s.list_projects(&bob, &ProjectFilter::default()).await.unwrap().len(), 1);
    let all = ProjectFilter { all: true, ..Default::default() };
    assert_eq!(s.list_projects(&bob, &all).await.unwrap_err().kind(), ErrorKind::PermissionDenied);
    assert_eq!(s.list_projects(&admin, &all).await.unwrap().len(), 3);
    let by_slug = ProjectFilter { slug: Some("my-project-2".into()), ..Default::default() };
    assert_eq!(s.list_projects(&alice, &by_slug).await.unwrap()[0].id, second.id);

    // Another user cannot see it; an administrator can.
    assert_eq!(s.project(&bob, p.id).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.project(&admin, p.id).await.unwrap().role, None);

    let update =
        ProjectUpdate { name: Some("Renamed".into()), description: Some("about".into()), ..Default::default() };
    let updated = s.update_project(&alice, &client(), p.id, update).await.unwrap();
    assert_eq!(
        (updated.name.as_str(), updated.description.as_str(), updated.slug.as_str()),
        ("Renamed", "about", "my-project")
    );
    let clash = ProjectUpdate { slug: Some("my-project-2".into()), ..Default::default() };
    assert_eq!(s.update_project(&alice, &client(), p.id, clash).await.unwrap_err().kind(), ErrorKind::Conflict);
    // Quotas are an administrator's.
    let quota = ProjectUpdate { quota_bytes: Some(1024), ..Default::default() };
    assert_eq!(
        s.update_project(&alice, &client(), p.id, quota.clone()).await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    assert_eq!(s.update_project(&admin, &client(), p.id, quota).await.unwrap().quota_bytes, 1024);
    let reset = ProjectUpdate { quota_bytes: Some(0), ..Default::default() };
    assert_eq!(s.update_project(&admin, &client(), p.id, reset).await.unwrap().quota_bytes, 10 * 1024 * 1024 * 1024);
}

async fn members_share_change_remove_and_transfer(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |_| {}).await else { return };
    let s = i.cx.storage();
    let (_admin, _) = user(&i.cx, "admin").await;
    let (alice, alice_id) = user(&i.cx, "alice").await;
    let (bob, bob_id) = user(&i.cx, "bob").await;
    let (carol, _) = user(&i.cx, "carol").await;
    let p = project(&i.cx, &alice, "shared").await;
    put(&i.cx, &alice, p, "a.txt", "alpha").await.unwrap();

    // A viewer reads but does not write or share.
    s.set_member(&alice, &client(), p, "BOB@example.com", ProjectRole::Viewer).await.unwrap();
    assert_eq!(read(&i.cx, &bob, p, "a.txt", None).await.unwrap(), b"alpha");
    assert_eq!(put(&i.cx, &bob, p, "b.txt", "x").await.unwrap_err().kind(), ErrorKind::PermissionDenied);
    let share = s.set_member(&bob, &client(), p, "carol@example.com", ProjectRole::Viewer).await;
    assert_eq!(share.unwrap_err().kind(), ErrorKind::PermissionDenied);
    // An editor writes; still cannot share.
    let member = s.set_member(&alice, &client(), p, &bob_id.to_string(), ProjectRole::Editor).await.unwrap();
    assert_eq!((member.role, member.is_owner), (ProjectRole::Editor, false));
    put(&i.cx, &bob, p, "b.txt", "bravo").await.unwrap();
    assert_eq!(s.delete_project(&bob, &client(), p).await.unwrap_err().kind(), ErrorKind::PermissionDenied);
    // Unknown users are named.
    let unknown = s.set_member(&alice, &client(), p, "nobody@example.com", ProjectRole::Viewer).await.unwrap_err();
    assert!(unknown.kind() == ErrorKind::NotFound && unknown.message().contains("nobody@example.com"));

    let members = s.members(&bob, p).await.unwrap();
    assert_eq!(
        members.iter().map(|m| (m.email.as_str(), m.role)).collect::<Vec<_>>(),
        [("alice@example.com", ProjectRole::Owner), ("bob@example.com", ProjectRole::Editor)]
    );
    // The owner keeps the owner role until the project is transferred.
    let demote = s.set_member(&alice, &client(), p, "alice@example.com", ProjectRole::Editor).await;
    assert_eq!(demote.unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(
        s.remove_member(&alice, &client(), p, "alice@example.com").await.unwrap_err().kind(),
        ErrorKind::Conflict
    );

    let moved = s.transfer_project(&alice, &client(), p, "bob@example.com").await.unwrap();
    assert_eq!(moved.owner_id, bob_id);
    let members = s.members(&alice, p).await.unwrap();
    assert!(members.iter().any(|m| m.user_id == bob_id && m.is_owner && m.role == ProjectRole::Owner));
    // The previous owner stays an owner until removed, and may leave.
    assert!(members.iter().any(|m| m.user_id == alice_id && !m.is_owner && m.role == ProjectRole::Owner));
    s.remove_member(&alice, &client(), p, "alice@example.com").await.unwrap();
    assert_eq!(s.project(&alice, p).await.unwrap_err().kind(), ErrorKind::NotFound);
    // A stranger learns nothing about accounts from a project they cannot see.
    for who in ["bob@example.com", "nobody@example.com"] {
        let err = s.remove_member(&carol, &client(), p, who).await.unwrap_err();
        assert_eq!((err.kind(), err.message()), (ErrorKind::NotFound, "no such project"));
    }
    assert_eq!(s.remove_member(&bob, &client(), p, "carol@example.com").await.unwrap_err().kind(), ErrorKind::NotFound);
    let _ = carol;

    // An account that owns projects cannot be deleted: its projects would lose their owner.
    let admin = Principal::user(i.cx.auth().list_users(&Principal::System).await.unwrap()[0].id, Role::Admin);
    let err = i.cx.auth().delete_user(&admin, bob_id, &client()).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Conflict && err.message().contains("owns 1 project"), "{}", err.message());
    // A member who owns nothing can be; their membership goes with them.
    i.cx.auth().delete_user(&admin, alice_id, &client()).await.unwrap();
}

async fn delete_restore_and_purge(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |_| {}).await else { return };
    let s = i.cx.storage();
    let (admin, _) = user(&i.cx, "admin").await;
    let (alice, _) = user(&i.cx, "alice").await;
    let p = project(&i.cx, &alice, "doomed").await;
    put(&i.cx, &alice, p, "a.txt", "alpha").await.unwrap();

    s.delete_project(&alice, &client(), p).await.unwrap();
    assert!(s.list_projects(&alice, &ProjectFilter::default()).await.unwrap().is_empty());
    let deleted = ProjectFilter { deleted: true, ..Default::default() };
    assert_eq!(s.list_projects(&alice, &deleted).await.unwrap().len(), 1);
    let gone = read(&i.cx, &alice, p, "a.txt", None).await.unwrap_err();
    assert!(gone.kind() == ErrorKind::NotFound && gone.message().contains("deleted"));
    assert_eq!(put(&i.cx, &alice, p, "b.txt", "x").await.unwrap_err().kind(), ErrorKind::NotFound);

    let back = s.restore_project(&alice, &client(), p).await.unwrap();
    assert!(back.deleted_at.is_none());
    assert_eq!(read(&i.cx, &alice, p, "a.txt", None).await.unwrap(), b"alpha");
    assert_eq!(s.restore_project(&alice, &client(), p).await.unwrap_err().kind(), ErrorKind::Conflict);

    assert_eq!(s.purge_project(&alice, &client(), p).await.unwrap_err().kind(), ErrorKind::PermissionDenied);
    s.purge_project(&admin, &client(), p).await.unwrap();
    assert_eq!(s.project(&admin, p).await.unwrap_err().kind(), ErrorKind::NotFound);
    // The audit log has the story.
    let log = i.cx.auth().audit_log(&admin, None, 100).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    for action in ["project_create", "file_write", "project_delete", "project_restore", "project_purge"] {
        assert!(actions.contains(&action), "{action} missing from {actions:?}");
    }
}

async fn writes_make_versions_and_any_version_reads_back(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |_| {}).await else { return };
    let s = i.cx.storage();
    let (alice, alice_id) = user(&i.cx, "alice").await;
    let p = project(&i.cx, &alice, "files").await;

    let options = PutOptions { message: Some("first".into()), ..Default::default() };
    let v1 = s.put_file(&alice, &client(), p, "src/main.py", body("print(1)\n"), options).await.unwrap();
    assert_eq!((v1.version, v1.size, v1.content_type.as_str()), (1, 9, "text/plain"));
    assert_eq!((v1.author_id, v1.message.as_deref()), (Some(alice_id), Some("first")));
    // The same content again is no new version.
    assert_eq!(put(&i.cx, &alice, p, "src/main.py", "print(1)\n").await.unwrap(), 1);
    assert_eq!(put(&i.cx, &alice, p, "src/main.py", "print(2)\n").await.unwrap(), 2);
    assert_eq!(put(&i.cx, &alice, p, "README.md", "# hi").await.unwrap(), 3);
    assert_eq!(put(&i.cx, &alice, p, "empty", "").await.unwrap(), 4);

    assert_eq!(read(&i.cx, &alice, p, "src/main.py", None).await.unwrap(), b"print(2)\n");
    assert_eq!(read(&i.cx, &alice, p, "src/main.py", Some(1)).await.unwrap(), b"print(1)\n");
    assert_eq!(read(&i.cx, &alice, p, "src/main.py", Some(2)).await.unwrap(), b"print(2)\n");
    assert_eq!(read(&i.cx, &alice, p, "empty", None).await.unwrap(), b"");
    assert_eq!(read(&i.cx, &alice, p, "README.md", Some(2)).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(read(&i.cx, &alice, p, "nope", None).await.unwrap_err().kind(), ErrorKind::NotFound);
    // Ranges.
    let download = s.open_file(&alice, p, "src/main.py", None).await.unwrap();
    let part: Vec<Bytes> = download.stream(Some(2..6)).await.unwrap().try_collect().await.unwrap();
    assert_eq!(part.concat(), b"int(");
    let download = s.open_file(&alice, p, "src/main.py", None).await.unwrap();
    assert_eq!(download.stream(Some(5..100)).await.err().map(|e| e.kind()), Some(ErrorKind::InvalidInput));

    // Listings: folders collapse unless recursive; any version.
    let root = s.list_files(&alice, p, "", None, false).await.unwrap().entries;
    let names: Vec<(&str, bool)> = root.iter().map(|e| (e.path.as_str(), e.folder)).collect();
    assert_eq!(names, [("README.md", false), ("empty", false), ("src", true)]);
    assert_eq!(root[2].size, 9);
    let all = s.list_files(&alice, p, "", None, true).await.unwrap().entries;
    assert_eq!(all.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["README.md", "empty", "src/main.py"]);
    let at_1 = s.list_files(&alice, p, "", Some(1), true).await.unwrap().entries;
    assert_eq!(s.list_files(&alice, p, "", None, true).await.unwrap().version, 4);
    assert_eq!((at_1.len(), at_1[0].version), (1, 1));
    assert_eq!(s.list_files(&alice, p, "src/", None, false).await.unwrap().entries[0].path, "src/main.py");
    assert_eq!(s.list_files(&alice, p, "nothing", None, false).await.unwrap_err().kind(), ErrorKind::NotFound);

    let history = s.history(&alice, p, "src/main.py", 100).await.unwrap();
    assert_eq!(history.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(s.project(&alice, p).await.unwrap().version, 4);
    let stats = s.project(&alice, p).await.unwrap();
    assert_eq!((stats.files, stats.bytes), (3, 9 + 4));

    // Every path rule is a clear 400.
    for (bad, rule) in [("/abs", "starts with `/`"), ("a/../b", "`..`"), ("a//b", "empty segment"), ("a\0b", "U+0000")]
    {
        let err = put(&i.cx, &alice, p, bad, "x").await.unwrap_err();
        assert!(err.kind() == ErrorKind::InvalidInput && err.message().contains(rule), "{bad:?}: {}", err.message());
    }
}

async fn expected_versions_refuse_a_lost_update(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |_| {}).await else { return };
    let s = i.cx.storage();
    let (alice, _) = user(&i.cx, "alice").await;
    let p = project(&i.cx, &alice, "cas").await;
    let with = |expected: i64| PutOptions { expected_version: Some(expected), ..Default::default() };

    assert_eq!(s.put_file(&alice, &client(), p, "a", body("1"), with(0)).await.unwrap().version, 1);
    let again = s.put_file(&alice, &client(), p, "a", body("2"), with(0)).await.unwrap_err();
    assert!(again.kind() == ErrorKind::PreconditionFailed && again.message().contains("exists already"));
    assert_eq!(s.put_file(&alice, &client(), p, "a", body("2"), with(1)).await.unwrap().version, 2);
    let stale = s.put_file(&alice, &client(), p, "a", body("3"), with(1)).await.unwrap_err();
    assert!(stale.kind() == ErrorKind::PreconditionFailed && stale.message().contains("at version 2, not 1"));
    let stale_delete = s.delete_file(&alice, &client(), p, "a", Some(1), None).await.unwrap_err();
    assert_eq!(stale_delete.kind(), ErrorKind::PreconditionFailed);
    assert_eq!(read(&i.cx, &alice, p, "a", None).await.unwrap(), b"2");
}

async fn delete_restore_and_move_files_and_folders(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |_| {}).await else { return };
    let s = i.cx.storage();
    let (alice, _) = user(&i.cx, "alice").await;
    let p = project(&i.cx, &alice, "moves").await;
    put(&i.cx, &alice, p, "a.txt", "alpha").await.unwrap();
    put(&i.cx, &alice, p, "dir/x.txt", "x").await.unwrap();
    put(&i.cx, &alice, p, "dir/sub/y.txt", "y").await.unwrap();

    let deleted_at = s.delete_file(&alice, &client(), p, "a.txt", None, Some("tidy")).await.unwrap();
    assert_eq!(deleted_at, 4);
    let err = read(&i.cx, &alice, p, "a.txt", None).await.unwrap_err();
    assert!(err.kind() == ErrorKind::NotFound && err.message().contains("deleted at version 4"));
    assert_eq!(read(&i.cx, &alice, p, "a.txt", Some(3)).await.unwrap(), b"alpha");
    let history = s.history(&alice, p, "a.txt", 10).await.unwrap();
    assert!(history[0].deleted && history[0].message.as_deref() == Some("tidy"));
    assert_eq!(s.delete_file(&alice, &client(), p, "a.txt", None, None).await.unwrap_err().kind(), ErrorKind::NotFound);

    let restored = s.restore_file(&alice, &client(), p, "a.txt", None).await.unwrap();
    assert_eq!((restored.version, restored.message.as_deref()), (5, Some("restored from version 1")));
    assert_eq!(read(&i.cx, &alice, p, "a.txt", None).await.unwrap(), b"alpha");

    // A file moves; a folder moves whole, in one version.
    assert_eq!(s.move_file(&alice, &client(), p, "a.txt", "docs/a.txt", None).await.unwrap(), 6);
    assert_eq!(s.move_file(&alice, &client(), p, "dir", "lib", None).await.unwrap(), 7);
    let all = s.list_files(&alice, p, "", None, true).await.unwrap().entries;
    assert_eq!(all.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["docs/a.txt", "lib/sub/y.txt", "lib/x.txt"]);
    assert!(all.iter().all(|e| e.path == "docs/a.txt" || e.version == 7));
    // Onto something that exists, or into itself: refused, nothing changed.
    put(&i.cx, &alice, p, "other.txt", "o").await.unwrap();
    let onto = s.move_file(&alice, &client(), p, "other.txt", "lib/x.txt", None).await.unwrap_err();
    assert!(onto.kind() == ErrorKind::Conflict && onto.message().contains("exists already"), "{}", onto.message());
    assert_eq!(
        s.move_file(&alice, &client(), p, "lib", "lib/inner", None).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );
    assert_eq!(s.move_file(&alice, &client(), p, "ghost", "x", None).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(read(&i.cx, &alice, p, "other.txt", None).await.unwrap(), b"o");

    // An expected version is for a file, not a folder.
    let err = s.delete_file(&alice, &client(), p, "lib", Some(7), None).await.unwrap_err();
    assert!(err.kind() == ErrorKind::InvalidInput && err.message().contains("not a file"), "{}", err.message());
    // Deleting a folder deletes its files in one version.
    let v = s.delete_file(&alice, &client(), p, "lib", None, None).await.unwrap();
    assert!(s.list_files(&alice, p, "lib", None, false).await.is_err());
    assert_eq!(s.list_files(&alice, p, "lib", Some(v - 1), true).await.unwrap().entries.len(), 2);

    // A move whose targets include one of its own sources: one write of that path.
    put(&i.cx, &alice, p, "n/b/n", "first").await.unwrap();
    put(&i.cx, &alice, p, "n/b/b/n", "second").await.unwrap();
    s.move_file(&alice, &client(), p, "n/b", "n", None).await.unwrap();
    assert_eq!(read(&i.cx, &alice, p, "n/n", None).await.unwrap(), b"first");
    assert_eq!(read(&i.cx, &alice, p, "n/b/n", None).await.unwrap(), b"second");
    assert_eq!(read(&i.cx, &alice, p, "n/b/b/n", None).await.unwrap_err().kind(), ErrorKind::NotFound);
    // Onto a file: refused.
    let onto = s.move_file(&alice, &client(), p, "n/n", "n/b/n", None).await.unwrap_err();
    assert_eq!(onto.kind(), ErrorKind::Conflict);
}

async fn a_path_is_a_file_or_a_folder_never_both(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |_| {}).await else { return };
    let (alice, _) = user(&i.cx, "alice").await;
    let p = project(&i.cx, &alice, "shapes").await;
    put(&i.cx, &alice, p, "a/b.txt", "b").await.unwrap();
    put(&i.cx, &alice, p, "f", "f").await.unwrap();
    let err = put(&i.cx, &alice, p, "a", "x").await.unwrap_err();
    assert!(err.kind() == ErrorKind::Conflict && err.message().contains("is a folder"), "{}", err.message());
    let err = put(&i.cx, &alice, p, "f/g", "x").await.unwrap_err();
    assert!(err.kind() == ErrorKind::Conflict && err.message().contains("`f` is a file"), "{}", err.message());
    assert_eq!(i.cx.storage().project(&alice, p).await.unwrap().version, 2);
}

async fn identical_content_is_stored_once_and_gc_keeps_what_is_referenced(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |c| c.storage.gc_grace = Duration::ZERO).await else { return };
    let s = i.cx.storage();
    let (admin, _) = user(&i.cx, "admin").await;
    let (alice, _) = user(&i.cx, "alice").await;
    let one = project(&i.cx, &alice, "one").await;
    let two = project(&i.cx, &alice, "two").await;
    put(&i.cx, &alice, one, "a", "shared content").await.unwrap();
    put(&i.cx, &alice, one, "b", "shared content").await.unwrap();
    put(&i.cx, &alice, two, "c", "shared content").await.unwrap();
    put(&i.cx, &alice, two, "only-two", "unique to two").await.unwrap();
    let report = s.gc(&admin, true).await.unwrap();
    assert_eq!((report.blobs, report.deleted, report.missing), (2, 0, 0));
    assert_eq!(s.gc(&alice, true).await.unwrap_err().kind(), ErrorKind::PermissionDenied);

    // Purging a project orphans only what no one else uses.
    s.purge_project(&admin, &client(), two).await.unwrap();
    let dry = s.gc(&admin, true).await.unwrap();
    assert_eq!((dry.deleted, dry.bytes_freed), (1, 13));
    let report = s.gc(&admin, false).await.unwrap();
    assert_eq!((report.blobs, report.deleted, report.bytes_freed), (2, 1, 13));
    assert_eq!(s.gc(&admin, false).await.unwrap().blobs, 1);
    assert_eq!(read(&i.cx, &alice, one, "b", None).await.unwrap(), b"shared content");

    // A history version still holds its blob.
    put(&i.cx, &alice, one, "a", "newer").await.unwrap();
    s.gc(&admin, false).await.unwrap();
    assert_eq!(read(&i.cx, &alice, one, "a", Some(1)).await.unwrap(), b"shared content");
    if backend == Backend::File {
        let blobs = i.dir.path().join("blobs/blobs");
        let count = walk(&blobs);
        assert_eq!(count, 2, "shared content + newer");
    }
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

async fn an_interrupted_write_leaves_nothing(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |_| {}).await else { return };
    let s = i.cx.storage();
    let (alice, _) = user(&i.cx, "alice").await;
    let p = project(&i.cx, &alice, "crash").await;
    let broken: ByteStream = Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"the first half")),
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "client went away")),
    ]));
    let err = s.put_file(&alice, &client(), p, "half.txt", broken, PutOptions::default()).await.unwrap_err();
    assert!(err.message().contains("interrupted"), "{}", err.message());
    assert_eq!(read(&i.cx, &alice, p, "half.txt", None).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.project(&alice, p).await.unwrap().version, 0);
    let tmp = if backend == Backend::File { i.dir.path().join("blobs/tmp") } else { i.dir.path().join("tmp") };
    assert_eq!(walk(&tmp), 0, "no temporary file is left");

    // A temporary file left by a process that died is swept at the next start.
    let stale = tmp.join("999999999-deadbeef.part");
    std::fs::write(&stale, b"partial").unwrap();
    let config = i.cx.config().clone();
    let _again = Cloudx::connect(config).await.unwrap();
    assert!(!stale.exists());
}

async fn sizes_and_quotas_are_enforced(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |c| {
        c.storage.max_file_size = bytesize::ByteSize::b(100);
        c.storage.project_quota_bytes = bytesize::ByteSize::b(150);
        c.storage.project_quota_files = 3;
    })
    .await
    else {
        return;
    };
    let s = i.cx.storage();
    let (admin, _) = user(&i.cx, "admin").await;
    let (alice, _) = user(&i.cx, "alice").await;
    let p = project(&i.cx, &alice, "tight").await;
    let big = "x".repeat(101);
    let declared = PutOptions { declared_size: Some(101), ..Default::default() };
    let err = s.put_file(&alice, &client(), p, "big", body(big.clone()), declared).await.unwrap_err();
    assert!(
        err.kind() == ErrorKind::PayloadTooLarge && err.message().contains("storage.max_file_size"),
        "{}",
        err.message()
    );
    // Undeclared: refused mid-stream.
    let err = s.put_file(&alice, &client(), p, "big", body(big), PutOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);

    let ninety = "y".repeat(90);
    s.put_file(&alice, &client(), p, "one", body(ninety.clone()), PutOptions::default()).await.unwrap();
    let err = s.put_file(&alice, &client(), p, "two", body(ninety.clone()), PutOptions::default()).await.unwrap_err();
    assert!(err.kind() == ErrorKind::QuotaExceeded && err.message().contains("quota"), "{}", err.message());
    // Replacing a file counts what it frees.
    s.put_file(&alice, &client(), p, "one", body("z".repeat(95)), PutOptions::default()).await.unwrap();
    put(&i.cx, &alice, p, "f2", "2").await.unwrap();
    put(&i.cx, &alice, p, "f3", "3").await.unwrap();
    let err = put(&i.cx, &alice, p, "f4", "4").await.unwrap_err();
    assert!(err.kind() == ErrorKind::QuotaExceeded && err.message().contains("3 files"), "{}", err.message());
    // An administrator raises this project's quota.
    let raise = ProjectUpdate { quota_files: Some(10), ..Default::default() };
    s.update_project(&admin, &client(), p, raise).await.unwrap();
    put(&i.cx, &alice, p, "f4", "4").await.unwrap();
    let stats = s.project(&alice, p).await.unwrap();
    assert_eq!((stats.files, stats.bytes, stats.quota_files), (4, 98, 10));
}

async fn templates_and_copies(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |_| {}).await else { return };
    let s = i.cx.storage();
    let (alice, _) = user(&i.cx, "alice").await;
    let (bob, _) = user(&i.cx, "bob").await;
    let names: Vec<String> = s.templates().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["empty", "python", "rust", "node"]);
    for template in ["python", "rust", "node"] {
        let new = NewProject { name: template.into(), template: Some(template.into()), ..Default::default() };
        let p = s.create_project(&alice, &client(), new).await.unwrap();
        assert_eq!(p.version, 1);
        let files = s.list_files(&alice, p.id, "", None, true).await.unwrap().entries;
        assert!(
            files.iter().any(|f| f.path == "README.md") && files.iter().any(|f| f.path == ".gitignore"),
            "{files:?}"
        );
        let first = s.history(&alice, p.id, "README.md", 1).await.unwrap();
        assert!(first[0].message.as_deref().unwrap().contains(template));
    }
    let unknown = NewProject { name: "x".into(), template: Some("cobol".into()), ..Default::default() };
    let err = s.create_project(&alice, &client(), unknown).await.unwrap_err();
    assert!(err.kind() == ErrorKind::InvalidInput && err.message().contains("python"), "{}", err.message());

    // A copy has the source's current files, no history, and shares its blobs.
    let source = project(&i.cx, &alice, "source").await;
    put(&i.cx, &alice, source, "a", "old").await.unwrap();
    put(&i.cx, &alice, source, "a", "new").await.unwrap();
    put(&i.cx, &alice, source, "dir/b", "b").await.unwrap();
    let copy = NewProject { name: "copy".into(), copy_from: Some(source), ..Default::default() };
    // Bob cannot read the source: it does not exist for him.
    assert_eq!(s.create_project(&bob, &client(), copy.clone()).await.unwrap_err().kind(), ErrorKind::NotFound);
    let c = s.create_project(&alice, &client(), copy).await.unwrap();
    assert_eq!((c.version, c.files, c.bytes), (1, 2, 4));
    assert_eq!(read(&i.cx, &alice, c.id, "a", None).await.unwrap(), b"new");
    assert_eq!(s.history(&alice, c.id, "a", 10).await.unwrap().len(), 1);
    // A copy that does not fit is not made at all.
    let tight = instance(postgres, backend, |c| c.storage.project_quota_files = 1).await.unwrap();
    let (carol, _) = user(&tight.cx, "carol").await;
    let src = project(&tight.cx, &carol, "src").await;
    tight
        .cx
        .storage()
        .update_project(
            &Principal::System,
            &client(),
            src,
            ProjectUpdate { quota_files: Some(5), ..Default::default() },
        )
        .await
        .unwrap();
    put(&tight.cx, &carol, src, "a", "a").await.unwrap();
    put(&tight.cx, &carol, src, "b", "b").await.unwrap();
    let copy = NewProject { name: "too big".into(), copy_from: Some(src), ..Default::default() };
    assert_eq!(
        tight.cx.storage().create_project(&carol, &client(), copy).await.unwrap_err().kind(),
        ErrorKind::QuotaExceeded
    );
    assert_eq!(tight.cx.storage().list_projects(&carol, &ProjectFilter::default()).await.unwrap().len(), 1);
}

async fn concurrent_writers_each_get_a_version(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |_| {}).await else { return };
    let (alice, _) = user(&i.cx, "alice").await;
    let p = project(&i.cx, &alice, "busy").await;
    // Different paths at once: each gets its own version, none lost.
    let writes = (0..16).map(|n| {
        let (cx, alice) = (i.cx.clone(), alice.clone());
        tokio::spawn(async move {
            cx.storage()
                .put_file(&alice, &client(), p, &format!("f{n}"), body(format!("content {n}")), PutOptions::default())
                .await
                .map(|f| f.version)
        })
    });
    let mut versions: Vec<i64> =
        futures_util::future::join_all(writes).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=16).collect::<Vec<_>>());
    // The same path, each expecting version 0: exactly one wins.
    let races = (0..8).map(|n| {
        let (cx, alice) = (i.cx.clone(), alice.clone());
        tokio::spawn(async move {
            let options = PutOptions { expected_version: Some(0), ..Default::default() };
            cx.storage().put_file(&alice, &client(), p, "contended", body(format!("writer {n}")), options).await
        })
    });
    let outcomes: Vec<_> = futures_util::future::join_all(races).await.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
    assert!(outcomes.iter().filter_map(|o| o.as_ref().err()).all(|e| e.kind() == ErrorKind::PreconditionFailed));
    assert_eq!(i.cx.storage().project(&alice, p).await.unwrap().files, 17);
}

fn tar_gz(entries: &[(&str, &[u8])], link: Option<&str>) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        // Written raw: the tar crate refuses to write the hostile names these tests need.
        let raw = &mut header.as_old_mut().name;
        raw.fill(0);
        raw[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        tar.append(&header, *content).unwrap();
    }
    if let Some(link) = link {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        tar.append_link(&mut header, link, "/etc/passwd").unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write as _;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, content) in entries {
        zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(content).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

async fn collect(stream: ByteStream) -> Vec<u8> {
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    chunks.concat()
}

async fn archives_go_in_and_out_whole(postgres: bool, backend: Backend) {
    let Some(i) = instance(postgres, backend, |c| c.storage.project_quota_files = 10).await else { return };
    let s = i.cx.storage();
    let (alice, _) = user(&i.cx, "alice").await;
    let p = project(&i.cx, &alice, "packed").await;
    put(&i.cx, &alice, p, "keep.txt", "kept").await.unwrap();

    // A tar.gz into a folder: one version; a link is left out and named.
    let archive =
        tar_gz(&[("./src/main.rs", b"fn main() {}\n"), ("README.md", b"# packed\n"), ("empty", b"")], Some("link"));
    let up = s.upload_archive(&alice, &client(), p, "app", ArchiveFormat::TarGz, body(archive), None).await.unwrap();
    assert_eq!((up.version, up.files, up.bytes, up.skipped.as_slice()), (2, 3, 22, &["link".to_owned()][..]));
    assert_eq!(read(&i.cx, &alice, p, "app/src/main.rs", None).await.unwrap(), b"fn main() {}\n");
    let history = s.history(&alice, p, "app/README.md", 1).await.unwrap();
    assert_eq!(history[0].message.as_deref(), Some("uploaded an archive"));

    // A zip too.
    let archive = zip_of(&[("docs/a.md", b"a"), ("docs/b.md", b"b")]);
    let up = s.upload_archive(&alice, &client(), p, "", ArchiveFormat::Zip, body(archive), Some("docs")).await.unwrap();
    assert_eq!((up.version, up.files), (3, 2));

    // Bad entries refuse the whole archive: nothing is written.
    for (name, rule) in [("../escape.txt", "`..`"), ("/abs.txt", "starts with `/`")] {
        let archive = tar_gz(&[("fine.txt", b"x"), (name, b"x")], None);
        let err =
            s.upload_archive(&alice, &client(), p, "", ArchiveFormat::TarGz, body(archive), None).await.unwrap_err();
        assert!(err.kind() == ErrorKind::InvalidInput && err.message().contains(rule), "{name}: {}", err.message());
    }
    let err =
        s.upload_archive(&alice, &client(), p, "", ArchiveFormat::Zip, body("not a zip"), None).await.unwrap_err();
    assert!(err.kind() == ErrorKind::InvalidInput && err.message().contains("not a zip"), "{}", err.message());
    let many: Vec<(String, Vec<u8>)> = (0..8).map(|n| (format!("many/{n}"), vec![b'x'])).collect();
    let refs: Vec<(&str, &[u8])> = many.iter().map(|(n, c)| (n.as_str(), c.as_slice())).collect();
    let err = s
        .upload_archive(&alice, &client(), p, "", ArchiveFormat::TarGz, body(tar_gz(&refs, None)), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded, "{}", err.message());
    assert_eq!(s.project(&alice, p).await.unwrap().version, 3);
    assert_eq!(s.list_files(&alice, p, "", None, true).await.unwrap().entries.len(), 6);

    // Out again: the whole project, a folder, an earlier version, both formats.
    let whole = s.download_archive(&alice, p, "", None, ArchiveFormat::TarGz).await.unwrap();
    assert_eq!((whole.version, whole.file_name.as_str()), (3, "packed-v3.tar.gz"));
    let bytes = collect(whole.body).await;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    let mut names: Vec<String> =
        tar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    names.sort();
    assert_eq!(names, ["app/README.md", "app/empty", "app/src/main.rs", "docs/a.md", "docs/b.md", "keep.txt"]);
    let folder = s.download_archive(&alice, p, "app/", Some(2), ArchiveFormat::Zip).await.unwrap();
    assert_eq!(folder.file_name, "packed-app-v2.zip");
    let bytes = collect(folder.body).await;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut main = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("src/main.rs").unwrap(), &mut main).unwrap();
    assert_eq!((zip.len(), main.as_str()), (3, "fn main() {}\n"));
    let err = s.download_archive(&alice, p, "docs", Some(2), ArchiveFormat::Zip).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}
