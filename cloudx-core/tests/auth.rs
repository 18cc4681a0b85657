//! The conformance suite of the `Auth` port, run on SQLite and on a real Postgres.

use std::time::Duration;

use cloudx_core::auth::audit::Client;
use cloudx_core::auth::{Authenticated, NewApiKey, NewUser};
use cloudx_core::config::{ConfigLoader, Registration};
use cloudx_core::testing::TestPostgres;
use cloudx_core::{Cloudx, CloudxConfig, ErrorKind, Principal, Role, Scopes};

const PASSWORD: &str = "Correct-Horse-Battery-7781";
const OTHER_PASSWORD: &str = "Unguessable-Staple-Pony-4410";

/// An instance on SQLite, or on a fresh Postgres database, with `tune` applied to its configuration.
struct Instance {
    cx: Cloudx,
    _pg: Option<TestPostgres>,
    dir: tempfile::TempDir,
}

async fn instance(postgres: bool, tune: impl FnOnce(&mut CloudxConfig)) -> Option<Instance> {
    let dir = tempfile::tempdir().unwrap();
    let pg = if postgres { Some(TestPostgres::create().await?) } else { None };
    let mut env = vec![("CLOUDX_DATA_DIR".to_owned(), dir.path().to_str().unwrap().to_owned())];
    if let Some(pg) = &pg {
        env.push(("CLOUDX_DATABASE__URL".into(), pg.url().to_owned()));
    }
    let mut config = ConfigLoader::new().env(env).load().unwrap();
    tune(&mut config);
    let cx = Cloudx::connect(config).await.unwrap();
    Some(Instance { cx, _pg: pg, dir })
}

fn new_user(email: &str, password: &str) -> NewUser {
    NewUser { email: email.into(), password: password.into(), display_name: format!("User {email}") }
}

fn client() -> Client {
    Client::new(Some("127.0.0.1".into()), Some("auth-tests"))
}

/// Runs `$test(postgres)` as two tests: one on SQLite, one on Postgres.
macro_rules! on_both {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $test() { super::$test(false).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $test() { super::$test(true).await })*
        }
    };
}

on_both!(
    first_account_is_admin_and_registration_follows_the_setting,
    unknown_user_and_wrong_password_get_the_same_answer,
    refresh_rotates_and_a_reuse_revokes_the_session,
    a_lost_reply_within_the_grace_window_gets_the_same_tokens,
    concurrent_refreshes_cannot_fork_the_family,
    password_change_ends_the_other_sessions,
    disabling_a_user_stops_their_tokens_at_once,
    role_changes_and_the_last_admin,
    the_audit_chain_detects_an_edited_row,
    api_keys_are_shown_once_scoped_and_revocable,
    invites_are_one_time_and_give_their_role,
    websocket_tickets_work_once,
    repeated_failed_logins_are_delayed_alike_for_unknown_emails,
    other_nodes_hear_of_revocations,
    a_deleted_users_tokens_stay_refused_on_nodes_that_start_later,
    racing_first_registrations_make_one_admin,
    the_last_enabled_admin_cannot_be_removed,
);

async fn a_deleted_users_tokens_stay_refused_on_nodes_that_start_later(postgres: bool) {
    let Some(i) = instance(postgres, |_| {}).await else { return };
    let auth = i.cx.auth();
    let ada = auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    let admin = Principal::user(ada.id, Role::Admin);
    let bob = auth.add_user(&admin, new_user("bob@example.com", PASSWORD), Role::Member, &client()).await.unwrap();
    let (_, tokens) = auth.login("bob@example.com", PASSWORD, &client()).await.unwrap();
    auth.delete_user(&admin, bob.id, &client()).await.unwrap();
    assert!(auth.authenticate(&tokens.access_token).is_err());
    // The sessions went with the account: a node that rebuilds its revocations from the
    // database afterwards (a restart, a reconnect, SQLite's poll) must still refuse the token.
    let later = Cloudx::connect(i.cx.config().clone()).await.unwrap();
    assert_eq!(later.auth().authenticate(&tokens.access_token).unwrap_err().kind(), ErrorKind::Unauthenticated);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(auth.authenticate(&tokens.access_token).is_err(), "still refused after a reload");
    later.close().await;
}

async fn racing_first_registrations_make_one_admin(postgres: bool) {
    let Some(i) = instance(postgres, |c| c.auth.registration = Registration::Open).await else { return };
    let mut racers = Vec::new();
    for n in 0..6 {
        let auth = i.cx.auth().clone();
        racers.push(tokio::spawn(async move {
            auth.register(new_user(&format!("racer{n}@example.com"), PASSWORD), None, &client()).await.unwrap()
        }));
    }
    let mut admins = 0;
    for racer in racers {
        admins += usize::from(racer.await.unwrap().role == Role::Admin);
    }
    assert_eq!(admins, 1, "exactly one of the racing first registrations becomes the administrator");
}

async fn the_last_enabled_admin_cannot_be_removed(postgres: bool) {
    let Some(i) = instance(postgres, |c| c.auth.registration = Registration::Closed).await else { return };
    let auth = i.cx.auth();
    // Closed means closed, even on an empty instance: the operator makes the first administrator.
    let refused = auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::PermissionDenied);
    assert!(refused.message().contains("cloudx user add --admin"), "{}", refused.message());
    let ada =
        auth.add_user(&Principal::System, new_user("ada@example.com", PASSWORD), Role::Admin, &client()).await.unwrap();
    for result in [
        auth.set_disabled(&Principal::System, ada.id, true, &client()).await.map(drop),
        auth.delete_user(&Principal::System, ada.id, &client()).await,
    ] {
        assert_eq!(result.unwrap_err().kind(), ErrorKind::Conflict);
    }
    let bob =
        auth.add_user(&Principal::System, new_user("bob@example.com", PASSWORD), Role::Admin, &client()).await.unwrap();
    // Two administrators demoting each other at once: one of them stays.
    let (ada_p, bob_p) = (Principal::user(ada.id, Role::Admin), Principal::user(bob.id, Role::Admin));
    let from = client();
    let (a, b) = tokio::join!(
        auth.set_role(&ada_p, bob.id, Role::Member, &from),
        auth.set_role(&bob_p, ada.id, Role::Member, &from),
    );
    assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
    let users = auth.list_users(&Principal::System).await.unwrap();
    assert_eq!(users.iter().filter(|u| u.role == Role::Admin).count(), 1);
    // A key with `admin` but not `write` may look, not change.
    let admin_email = if a.is_ok() { "ada@example.com" } else { "bob@example.com" };
    let (_, tokens) = auth.login(admin_email, PASSWORD, &client()).await.unwrap();
    let session = auth.authenticate(&tokens.access_token).unwrap();
    let scopes = Scopes::parse(["read", "admin"]).unwrap();
    let key = NewApiKey { name: "audit".into(), scopes, expires_at: None };
    let key = auth.create_api_key(&session.principal, key, &client()).await.unwrap();
    let auditor = auth.authenticate_bearer(&key.secret).await.unwrap().principal;
    auth.list_users(&auditor).await.unwrap();
    auth.audit_log(&auditor, None, 10).await.unwrap();
    let refused = auth.add_user(&auditor, new_user("carl@example.com", PASSWORD), Role::Member, &client()).await;
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::PermissionDenied);
    let refused = auth.create_invite(&auditor, Role::Member, None, &client()).await;
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::PermissionDenied);
    // The last one goes only once another administrator exists.
    let other = if a.is_ok() { bob.id } else { ada.id };
    auth.set_role(&Principal::System, other, Role::Admin, &client()).await.unwrap();
    auth.delete_user(&Principal::System, session.principal.user_id().unwrap(), &client()).await.unwrap();
    assert_eq!(auth.list_users(&Principal::System).await.unwrap().len(), 1);
}

async fn first_account_is_admin_and_registration_follows_the_setting(postgres: bool) {
    let Some(i) = instance(postgres, |_| {}).await else { return };
    let auth = i.cx.auth();
    let admin = auth.register(new_user("Ada@Example.com", PASSWORD), None, &client()).await.unwrap();
    assert_eq!((admin.role, admin.email.as_str()), (Role::Admin, "ada@example.com"));
    // Default: invite only.
    let err = auth.register(new_user("bob@example.com", PASSWORD), None, &client()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("invite"));
    // Administrators add accounts whatever the setting; emails are unique case-insensitively.
    let bob = auth
        .add_user(&Principal::System, new_user("bob@example.com", PASSWORD), Role::Member, &client())
        .await
        .unwrap();
    assert_eq!(bob.role, Role::Member);
    let dup = auth.add_user(&Principal::System, new_user("BOB@example.com", PASSWORD), Role::Member, &client()).await;
    assert_eq!(dup.unwrap_err().kind(), ErrorKind::Conflict);
    let member = Principal::user(bob.id, Role::Member);
    let denied = auth.add_user(&member, new_user("eve@example.com", PASSWORD), Role::Admin, &client()).await;
    assert_eq!(denied.unwrap_err().kind(), ErrorKind::PermissionDenied);
    // Bad input names the rule.
    let weak =
        auth.add_user(&Principal::System, new_user("carl@example.com", "password1"), Role::Member, &client()).await;
    assert!(weak.unwrap_err().to_string().contains("most common"));
    let bad_email =
        auth.add_user(&Principal::System, new_user("not-an-email", PASSWORD), Role::Member, &client()).await;
    assert!(bad_email.unwrap_err().to_string().contains("email"));

    let Some(open) = instance(postgres, |c| c.auth.registration = Registration::Open).await else { return };
    open.cx.auth().register(new_user("a@example.com", PASSWORD), None, &client()).await.unwrap();
    let second = open.cx.auth().register(new_user("b@example.com", PASSWORD), None, &client()).await.unwrap();
    assert_eq!(second.role, Role::Member);

    let Some(closed) = instance(postgres, |c| c.auth.registration = Registration::Closed).await else { return };
    closed
        .cx
        .auth()
        .add_user(&Principal::System, new_user("a@example.com", PASSWORD), Role::Admin, &client())
        .await
        .unwrap();
    let err = closed.cx.auth().register(new_user("b@example.com", PASSWORD), None, &client()).await.unwrap_err();
    assert!(err.to_string().contains("closed"));
}

async fn unknown_user_and_wrong_password_get_the_same_answer(postgres: bool) {
    let Some(i) = instance(postgres, |_| {}).await else { return };
    let auth = i.cx.auth();
    auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    // The fastest of three tries each (below the login delay's threshold), so that a moment of
    // load on a shared machine does not decide the comparison.
    let (mut wrong_took, mut unknown_took) = (Duration::MAX, Duration::MAX);
    let (mut wrong, mut unknown) = (None, None);
    for _ in 0..3 {
        let started = std::time::Instant::now();
        wrong = Some(auth.login("ada@example.com", OTHER_PASSWORD, &client()).await.unwrap_err());
        wrong_took = wrong_took.min(started.elapsed());
        let started = std::time::Instant::now();
        unknown = Some(auth.login("nobody@example.com", OTHER_PASSWORD, &client()).await.unwrap_err());
        unknown_took = unknown_took.min(started.elapsed());
    }
    let (wrong, unknown) = (wrong.unwrap(), unknown.unwrap());
    assert_eq!((wrong.kind(), wrong.to_string()), (unknown.kind(), unknown.to_string()));
    assert_eq!(wrong.kind(), ErrorKind::Unauthenticated);
    // Both verify one argon2 hash: within a factor of three of each other on a noisy machine.
    let (fast, slow) = if wrong_took < unknown_took { (wrong_took, unknown_took) } else { (unknown_took, wrong_took) };
    assert!(
        slow < fast * 3 + Duration::from_millis(30),
        "wrong password {wrong_took:?}, unknown user {unknown_took:?}"
    );
    let (user, tokens) = auth.login("ADA@example.com ", PASSWORD, &client()).await.unwrap();
    let who = auth.authenticate(&tokens.access_token).unwrap();
    assert_eq!(who.principal, Principal::user(user.id, Role::Admin));
    assert_eq!(auth.me(&who.principal).await.unwrap().email, "ada@example.com");
}

async fn refresh_rotates_and_a_reuse_revokes_the_session(postgres: bool) {
    let Some(i) = instance(postgres, |c| c.auth.refresh_reuse_grace = Duration::ZERO).await else { return };
    let auth = i.cx.auth();
    auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    let (_, first) = auth.login("ada@example.com", PASSWORD, &client()).await.unwrap();
    let second = auth.refresh(&first.refresh_token, &client()).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.session_id, first.session_id);
    let third = auth.refresh(&second.refresh_token, &client()).await.unwrap();
    auth.authenticate(&third.access_token).unwrap();
    // The first token again: a reuse. The whole family dies, the live token and access tokens too.
    let reuse = auth.refresh(&first.refresh_token, &client()).await.unwrap_err();
    assert_eq!(reuse.kind(), ErrorKind::Unauthenticated);
    assert_eq!(auth.refresh(&third.refresh_token, &client()).await.unwrap_err().kind(), ErrorKind::Unauthenticated);
    assert_eq!(auth.authenticate(&third.access_token).unwrap_err().kind(), ErrorKind::Unauthenticated);
    let log = auth.audit_log(&Principal::System, None, 100).await.unwrap();
    assert!(log.iter().any(|e| e.action == "refresh_reuse" && e.outcome == "failure"));
    // Garbage and tokens of the wrong shape.
    for bad in ["", "cxr_", "cxr_AAAA", &third.access_token] {
        assert_eq!(auth.refresh(bad, &client()).await.unwrap_err().kind(), ErrorKind::Unauthenticated);
    }
    // Logout ends a session.
    let (_, other) = auth.login("ada@example.com", PASSWORD, &client()).await.unwrap();
    let who = auth.authenticate(&other.access_token).unwrap();
    auth.logout(&who, &client()).await.unwrap();
    assert!(auth.authenticate(&other.access_token).is_err());
    assert!(auth.refresh(&other.refresh_token, &client()).await.is_err());
}

async fn a_lost_reply_within_the_grace_window_gets_the_same_tokens(postgres: bool) {
    let Some(i) = instance(postgres, |c| c.auth.refresh_reuse_grace = Duration::from_secs(30)).await else { return };
    let auth = i.cx.auth();
    auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    let (_, first) = auth.login("ada@example.com", PASSWORD, &client()).await.unwrap();
    let second = auth.refresh(&first.refresh_token, &client()).await.unwrap();
    let again = auth.refresh(&first.refresh_token, &client()).await.unwrap();
    assert_eq!(again.refresh_token, second.refresh_token, "the same successor, not a fork");
    // Once the successor is used, the old token is a reuse even within the window.
    let third = auth.refresh(&second.refresh_token, &client()).await.unwrap();
    assert!(auth.refresh(&first.refresh_token, &client()).await.is_err());
    assert!(auth.refresh(&third.refresh_token, &client()).await.is_err(), "the session was revoked");
}

async fn concurrent_refreshes_cannot_fork_the_family(postgres: bool) {
    let Some(i) = instance(postgres, |c| c.auth.refresh_reuse_grace = Duration::from_secs(30)).await else { return };
    let auth = i.cx.auth().clone();
    auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    let (_, first) = auth.login("ada@example.com", PASSWORD, &client()).await.unwrap();
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (auth, token) = (auth.clone(), first.refresh_token.clone());
            tokio::spawn(async move { auth.refresh(&token, &client()).await })
        })
        .collect();
    let mut successors = std::collections::HashSet::new();
    for racer in racers {
        if let Ok(tokens) = racer.await.unwrap() {
            successors.insert(tokens.refresh_token);
        }
    }
    assert_eq!(successors.len(), 1, "every winner got the one successor");
    let successor = successors.into_iter().next().unwrap();
    auth.refresh(&successor, &client()).await.unwrap();
}

async fn password_change_ends_the_other_sessions(postgres: bool) {
    let Some(i) = instance(postgres, |_| {}).await else { return };
    let auth = i.cx.auth();
    auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    let (_, laptop) = auth.login("ada@example.com", PASSWORD, &client()).await.unwrap();
    let (_, phone) = auth.login("ada@example.com", PASSWORD, &client()).await.unwrap();
    let who: Authenticated = auth.authenticate(&laptop.access_token).unwrap();
    let wrong = auth.change_password(&who, OTHER_PASSWORD, OTHER_PASSWORD, &client()).await.unwrap_err();
    // 403, not 401: the token is fine, and a client must not refresh and retry.
    assert_eq!(wrong.kind(), ErrorKind::PermissionDenied);
    let weak = auth.change_password(&who, PASSWORD, "qwerty123", &client()).await.unwrap_err();
    assert_eq!(weak.kind(), ErrorKind::InvalidInput);
    auth.change_password(&who, PASSWORD, OTHER_PASSWORD, &client()).await.unwrap();
    auth.authenticate(&laptop.access_token).unwrap();
    assert!(auth.authenticate(&phone.access_token).is_err(), "the other session's access token stops at once");
    assert!(auth.refresh(&phone.refresh_token, &client()).await.is_err());
    auth.refresh(&laptop.refresh_token, &client()).await.unwrap();
    assert!(auth.login("ada@example.com", PASSWORD, &client()).await.is_err());
    auth.login("ada@example.com", OTHER_PASSWORD, &client()).await.unwrap();
}

async fn disabling_a_user_stops_their_tokens_at_once(postgres: bool) {
    let Some(i) = instance(postgres, |_| {}).await else { return };
    let auth = i.cx.auth();
    let admin = auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    let admin = Principal::user(admin.id, Role::Admin);
    let bob = auth.add_user(&admin, new_user("bob@example.com", PASSWORD), Role::Member, &client()).await.unwrap();
    let (_, tokens) = auth.login("bob@example.com", PASSWORD, &client()).await.unwrap();
    auth.authenticate(&tokens.access_token).unwrap();
    let bob_principal = Principal::user(bob.id, Role::Member);
    assert_eq!(
        auth.set_disabled(&bob_principal, bob.id, true, &client()).await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    assert!(auth.set_disabled(&admin, bob.id, true, &client()).await.unwrap().disabled);
    assert!(auth.authenticate(&tokens.access_token).is_err());
    assert!(auth.refresh(&tokens.refresh_token, &client()).await.is_err());
    let login = auth.login("bob@example.com", PASSWORD, &client()).await.unwrap_err();
    assert_eq!(login.to_string(), "the email or the password is wrong", "no hint that the account exists");
    // A new instance on the same database knows it too (the revocation set is loaded at start).
    let reopened = Cloudx::connect(i.cx.config().clone()).await.unwrap();
    assert!(reopened.auth().authenticate(&tokens.access_token).is_err());
    auth.set_disabled(&admin, bob.id, false, &client()).await.unwrap();
    let (_, fresh) = auth.login("bob@example.com", PASSWORD, &client()).await.unwrap();
    auth.authenticate(&fresh.access_token).unwrap();
    assert_eq!(
        auth.set_disabled(&admin, uuid::Uuid::now_v7(), true, &client()).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    auth.delete_user(&admin, bob.id, &client()).await.unwrap();
    assert!(auth.authenticate(&fresh.access_token).is_err(), "a deleted user's tokens stop");
    let users = auth.list_users(&admin).await.unwrap();
    assert_eq!(users.len(), 1);
}

async fn role_changes_and_the_last_admin(postgres: bool) {
    let Some(i) = instance(postgres, |_| {}).await else { return };
    let auth = i.cx.auth();
    let ada = auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    let ada_p = Principal::user(ada.id, Role::Admin);
    let err = auth.set_role(&ada_p, ada.id, Role::Member, &client()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let bob = auth.add_user(&ada_p, new_user("bob@example.com", PASSWORD), Role::Member, &client()).await.unwrap();
    let (_, bob_tokens) = auth.login("bob@example.com", PASSWORD, &client()).await.unwrap();
    assert_eq!(auth.set_role(&ada_p, bob.id, Role::Admin, &client()).await.unwrap().role, Role::Admin);
    assert!(auth.authenticate(&bob_tokens.access_token).is_err(), "no token keeps the old role");
    let (_, bob_tokens) = auth.login("bob@example.com", PASSWORD, &client()).await.unwrap();
    assert!(auth.authenticate(&bob_tokens.access_token).unwrap().principal.is_admin());
    auth.set_role(&ada_p, ada.id, Role::Member, &client()).await.unwrap();
    let log = auth.audit_log(&Principal::System, None, 100).await.unwrap();
    assert!(log.iter().any(|e| e.action == "role_change" && e.detail.as_deref() == Some("admin -> member")));
}

async fn the_audit_chain_detects_an_edited_row(postgres: bool) {
    let Some(i) = instance(postgres, |_| {}).await else { return };
    let auth = i.cx.auth();
    auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    let _ = auth.login("ada@example.com", OTHER_PASSWORD, &client()).await;
    let (_, tokens) = auth.login("ada@example.com", PASSWORD, &client()).await.unwrap();
    let verification = auth.verify_audit_log(&Principal::System).await.unwrap();
    assert_eq!((verification.rows, verification.first_bad), (3, None));
    let log = auth.audit_log(&Principal::System, None, 10).await.unwrap();
    assert_eq!(log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["login", "login", "register"]);
    assert_eq!(log[1].outcome, "failure");
    assert_eq!(log[0].ip.as_deref(), Some("127.0.0.1"));
    let member = Principal::user(uuid::Uuid::now_v7(), Role::Member);
    assert_eq!(auth.audit_log(&member, None, 10).await.unwrap_err().kind(), ErrorKind::PermissionDenied);

    // The table refuses edits; someone with the database's keys can still force one, and the
    // chain shows it.
    match i.cx.database() {
        cloudx_core::db::Database::Sqlite(pool) => {
            assert!(sqlx::query("UPDATE audit_log SET outcome = 'success' WHERE seq = 2").execute(pool).await.is_err());
            sqlx::query("DROP TRIGGER audit_log_no_update").execute(pool).await.unwrap();
            sqlx::query("UPDATE audit_log SET outcome = 'success' WHERE seq = 2").execute(pool).await.unwrap();
        }
        cloudx_core::db::Database::Postgres(pool) => {
            assert!(sqlx::query("UPDATE audit_log SET outcome = 'success' WHERE seq = 2").execute(pool).await.is_err());
            sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only").execute(pool).await.unwrap();
            sqlx::query("UPDATE audit_log SET outcome = 'success' WHERE seq = 2").execute(pool).await.unwrap();
        }
    }
    assert_eq!(auth.verify_audit_log(&Principal::System).await.unwrap().first_bad, Some(2));

    // Nothing secret is stored: no password, no token, in the database file.
    if !postgres {
        i.cx.close().await;
        let mut stored = Vec::new();
        for entry in std::fs::read_dir(i.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with("cloudx.db") {
                stored.extend(std::fs::read(&path).unwrap());
            }
        }
        assert!(!stored.is_empty());
        let stored = String::from_utf8_lossy(&stored);
        for secret in [PASSWORD, OTHER_PASSWORD, &tokens.refresh_token, &tokens.access_token] {
            assert!(!stored.contains(secret), "a secret was stored in the clear");
        }
    }
}

async fn api_keys_are_shown_once_scoped_and_revocable(postgres: bool) {
    let Some(i) = instance(postgres, |_| {}).await else { return };
    let auth = i.cx.auth();
    let ada = auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    let admin = Principal::user(ada.id, Role::Admin);
    let bob = auth.add_user(&admin, new_user("bob@example.com", PASSWORD), Role::Member, &client()).await.unwrap();
    let bob_p = Principal::user(bob.id, Role::Member);
    let new = |scopes: Scopes| NewApiKey { name: "laptop".into(), scopes, expires_at: None };
    let created = auth.create_api_key(&bob_p, new(Scopes::READ), &client()).await.unwrap();
    assert!(created.secret.starts_with("cxk_") && created.secret.starts_with(&created.key.prefix));
    assert!(!format!("{created:?}").contains(&created.secret), "Debug hides the secret");
    let who = auth.authenticate_bearer(&created.secret).await.unwrap();
    assert_eq!(who.session_id, None);
    assert_eq!(who.principal.user_id(), Some(bob.id));
    assert_eq!(who.principal.scopes(), Scopes::READ);
    assert_eq!(who.principal.require(Scopes::WRITE).unwrap_err().kind(), ErrorKind::PermissionDenied);
    // Listed with prefix and last use, never with the secret.
    let listed = auth.list_api_keys(&bob_p).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].prefix, created.key.prefix);
    assert!(listed[0].last_used_at.is_some());
    assert!(!serde_json::to_string(&listed).unwrap().contains(&created.secret));
    // A key cannot mint keys; a member's key cannot be admin; the expiry must be ahead.
    assert_eq!(
        auth.create_api_key(&who.principal, new(Scopes::READ), &client()).await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        auth.create_api_key(&bob_p, new(Scopes::ALL), &client()).await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    let past = NewApiKey { expires_at: Some(chrono::Utc::now() - chrono::Duration::hours(1)), ..new(Scopes::READ) };
    assert_eq!(auth.create_api_key(&bob_p, past, &client()).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    // An administrator's key without the admin scope is not an administrator.
    let ada_key = auth.create_api_key(&admin, new(Scopes::READ), &client()).await.unwrap();
    let ada_by_key = auth.authenticate_bearer(&ada_key.secret).await.unwrap().principal;
    assert_eq!(auth.list_users(&ada_by_key).await.unwrap_err().kind(), ErrorKind::PermissionDenied);
    // Another user's key is not found; revocation stops the key at once.
    assert_eq!(auth.revoke_api_key(&bob_p, ada_key.key.id, &client()).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert!(auth.revoke_api_key(&bob_p, created.key.id, &client()).await.unwrap().revoked_at.is_some());
    let refused = auth.authenticate_bearer(&created.secret).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Unauthenticated);
    assert!(refused.message().contains("revoked"));
    // A disabled owner's keys stop too; unknown keys get the generic answer.
    let key2 = auth.create_api_key(&bob_p, new(Scopes::READ), &client()).await.unwrap();
    auth.set_disabled(&admin, bob.id, true, &client()).await.unwrap();
    assert!(auth.authenticate_bearer(&key2.secret).await.is_err());
    assert!(auth.authenticate_bearer("cxk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await.is_err());
    // An expired key stops.
    let soon =
        NewApiKey { expires_at: Some(chrono::Utc::now() + chrono::Duration::milliseconds(300)), ..new(Scopes::READ) };
    let short = auth.create_api_key(&admin, soon, &client()).await.unwrap();
    auth.authenticate_bearer(&short.secret).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(auth.authenticate_bearer(&short.secret).await.unwrap_err().message().contains("expired"));
    // Logging out or changing the password with a key is refused with a clear message.
    let ada_who = auth.authenticate_bearer(&ada_key.secret).await.unwrap();
    assert!(auth.logout(&ada_who, &client()).await.unwrap_err().message().contains("revoke the key"));
    let log = auth.audit_log(&admin, None, 100).await.unwrap();
    assert!(log.iter().any(|e| e.action == "api_key_create") && log.iter().any(|e| e.action == "api_key_revoke"));
}

async fn invites_are_one_time_and_give_their_role(postgres: bool) {
    let Some(i) = instance(postgres, |_| {}).await else { return };
    let auth = i.cx.auth();
    let ada = auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    let admin = Principal::user(ada.id, Role::Admin);
    let invite = auth.create_invite(&admin, Role::Member, None, &client()).await.unwrap();
    assert!(invite.code.starts_with("cxi_"));
    let member = Principal::user(uuid::Uuid::now_v7(), Role::Member);
    assert_eq!(
        auth.create_invite(&member, Role::Member, None, &client()).await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    // A registration that fails (bad password) leaves the invite usable.
    let weak = auth.register(new_user("bob@example.com", "password"), Some(&invite.code), &client()).await;
    assert_eq!(weak.unwrap_err().kind(), ErrorKind::InvalidInput);
    // Two registrations with one code at once: exactly one account.
    let from = client();
    let (a, b) = tokio::join!(
        auth.register(new_user("bob@example.com", PASSWORD), Some(&invite.code), &from),
        auth.register(new_user("carl@example.com", PASSWORD), Some(&invite.code), &from),
    );
    assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
    let bob = a.or(b).unwrap();
    assert_eq!(bob.role, Role::Member);
    let again = auth.register(new_user("dan@example.com", PASSWORD), Some(&invite.code), &client()).await;
    assert_eq!(again.unwrap_err().kind(), ErrorKind::PermissionDenied);
    let bogus = auth.register(new_user("dan@example.com", PASSWORD), Some("cxi_nope"), &client()).await;
    assert_eq!(bogus.unwrap_err().kind(), ErrorKind::PermissionDenied);
    // An admin invite makes an admin; the list shows who used what, never the code.
    let second = auth.create_invite(&admin, Role::Admin, Some(Duration::from_secs(3600)), &client()).await.unwrap();
    let eve = auth.register(new_user("eve@example.com", PASSWORD), Some(&second.code), &client()).await.unwrap();
    assert_eq!(eve.role, Role::Admin);
    let listed = auth.list_invites(&admin).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].used_by, Some(eve.id));
    assert_eq!(listed[1].used_by, Some(bob.id));
    assert!(!serde_json::to_string(&listed).unwrap().contains(&second.code));
    assert_eq!(
        auth.create_invite(&admin, Role::Member, Some(Duration::from_secs(1)), &client()).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    // An unused invite can be withdrawn; a used one, an unknown one, or by a member cannot.
    let third = auth.create_invite(&admin, Role::Member, None, &client()).await.unwrap();
    let kind = |r: cloudx_core::Result<cloudx_core::auth::Invite>| r.unwrap_err().kind();
    assert_eq!(kind(auth.revoke_invite(&member, third.invite.id, &client()).await), ErrorKind::PermissionDenied);
    let withdrawn = auth.revoke_invite(&admin, third.invite.id, &client()).await.unwrap();
    assert!(withdrawn.expires_at <= chrono::Utc::now());
    let late = auth.register(new_user("fay@example.com", PASSWORD), Some(&third.code), &client()).await;
    assert_eq!(late.unwrap_err().kind(), ErrorKind::PermissionDenied);
    assert_eq!(kind(auth.revoke_invite(&admin, second.invite.id, &client()).await), ErrorKind::Conflict);
    assert_eq!(kind(auth.revoke_invite(&admin, uuid::Uuid::now_v7(), &client()).await), ErrorKind::NotFound);
}

async fn websocket_tickets_work_once(postgres: bool) {
    let Some(i) = instance(postgres, |_| {}).await else { return };
    let auth = i.cx.auth();
    let ada = auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    let (_, tokens) = auth.login("ada@example.com", PASSWORD, &client()).await.unwrap();
    let who = auth.authenticate(&tokens.access_token).unwrap();
    let ticket = auth.issue_ws_ticket(&who).await.unwrap();
    assert!(ticket.ticket.starts_with("cxt_") && ticket.expires_in == 30);
    // A ticket is not a bearer credential.
    assert!(auth.authenticate_bearer(&ticket.ticket).await.is_err());
    assert_eq!(auth.redeem_ws_ticket(&ticket.ticket).await.unwrap(), Principal::user(ada.id, Role::Admin));
    assert_eq!(auth.redeem_ws_ticket(&ticket.ticket).await.unwrap_err().kind(), ErrorKind::Unauthenticated);
    assert!(auth.redeem_ws_ticket("cxt_unknown").await.is_err());
    // A key's ticket keeps the key's scopes, and dies with the key.
    let key = auth
        .create_api_key(
            &who.principal,
            NewApiKey { name: "ci".into(), scopes: Scopes::READ, expires_at: None },
            &client(),
        )
        .await
        .unwrap();
    let by_key = auth.authenticate_bearer(&key.secret).await.unwrap();
    let t1 = auth.issue_ws_ticket(&by_key).await.unwrap();
    assert_eq!(auth.redeem_ws_ticket(&t1.ticket).await.unwrap().scopes(), Scopes::READ);
    let t2 = auth.issue_ws_ticket(&by_key).await.unwrap();
    auth.revoke_api_key(&who.principal, key.key.id, &client()).await.unwrap();
    assert!(auth.redeem_ws_ticket(&t2.ticket).await.is_err());
    // A session's ticket dies with the session.
    let t3 = auth.issue_ws_ticket(&who).await.unwrap();
    auth.logout(&who, &client()).await.unwrap();
    assert_eq!(auth.redeem_ws_ticket(&t3.ticket).await.unwrap_err().kind(), ErrorKind::Unauthenticated);
}

async fn repeated_failed_logins_are_delayed_alike_for_unknown_emails(postgres: bool) {
    let Some(i) = instance(postgres, |c| {
        c.auth.login_delay_after = 2;
        c.auth.login_delay_max = Duration::from_secs(30);
    })
    .await
    else {
        return;
    };
    let auth = i.cx.auth();
    auth.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    for email in ["ada@example.com", "nobody@example.com"] {
        for _ in 0..3 {
            let err = auth.login(email, OTHER_PASSWORD, &client()).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{email}");
        }
        // The third failure imposed a delay: even the right password waits it out.
        let delayed = auth.login(email, PASSWORD, &client()).await.unwrap_err();
        assert_eq!(delayed.kind(), ErrorKind::RateLimited, "{email}");
        let wait = delayed.retry_after().unwrap();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(delayed.message().contains("try again in 1 s"), "{}", delayed.message());
    }
    // Other accounts are unaffected; once the delay has passed, the right password works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    auth.login("ada@example.com", PASSWORD, &client()).await.unwrap();
    let log = auth.audit_log(&Principal::System, None, 100).await.unwrap();
    assert!(log.iter().any(|e| e.detail.as_deref().is_some_and(|d| d.contains("next attempt delayed 1 s"))));
}

async fn other_nodes_hear_of_revocations(postgres: bool) {
    let Some(i) = instance(postgres, |_| {}).await else { return };
    let node_a = i.cx.auth();
    let other = Cloudx::connect(i.cx.config().clone()).await.unwrap();
    let node_b = other.auth();
    let ada = node_a.register(new_user("ada@example.com", PASSWORD), None, &client()).await.unwrap();
    let admin = Principal::user(ada.id, Role::Admin);
    let bob = node_a.add_user(&admin, new_user("bob@example.com", PASSWORD), Role::Member, &client()).await.unwrap();
    let (_, first) = node_a.login("bob@example.com", PASSWORD, &client()).await.unwrap();
    let (_, second) = node_a.login("bob@example.com", PASSWORD, &client()).await.unwrap();
    node_b.authenticate(&first.access_token).unwrap();
    // Postgres tells the other node at once (NOTIFY); SQLite's other processes poll every second.
    let heard = |token: String| {
        let node_b = node_b.clone();
        async move {
            for _ in 0..300 {
                if node_b.authenticate(&token).is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }
    };
    let who = node_a.authenticate(&first.access_token).unwrap();
    node_a.logout(&who, &client()).await.unwrap();
    assert!(heard(first.access_token.clone()).await, "node B still accepts a logged-out session");
    node_b.authenticate(&second.access_token).unwrap();
    node_a.set_disabled(&admin, bob.id, true, &client()).await.unwrap();
    assert!(heard(second.access_token.clone()).await, "node B still accepts a disabled user");
    // Enabling is heard too: a new login works on node B.
    node_a.set_disabled(&admin, bob.id, false, &client()).await.unwrap();
    let (_, third) = node_a.login("bob@example.com", PASSWORD, &client()).await.unwrap();
    let mut accepted = false;
    for _ in 0..300 {
        if node_b.authenticate(&third.access_token).is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(accepted, "node B did not hear that the user was enabled again");
    other.close().await;
}
