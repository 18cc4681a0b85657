//! The route × role matrix of docs/security.md, checked against the daemon.
//!
//! Every operation of the OpenAPI document must have at least one row here, and every row must
//! name an operation of the document: a new route cannot ship without a decided permission.
//! Each row runs on a fresh instance, so that a row's side effects (a deleted user, a changed
//! password, an ended session) never decide another row's outcome.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request};
use cloudx_core::auth::audit::Client;
use cloudx_core::auth::{NewApiKey, NewUser};
use cloudx_core::config::ConfigLoader;
use cloudx_core::{Cloudx, Principal, Role, Scopes};
use cloudx_http::{App, AppState};
use serde_json::{Value, json};
use tower::ServiceExt as _;
use uuid::Uuid;

const ADMIN_PASSWORD: &str = "Matrix-Admin-Passphrase-5521";
const MEMBER_PASSWORD: &str = "Matrix-Member-Passphrase-8830";

/// The callers every row is tried with.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// No credential.
    Anonymous,
    /// A member's session.
    Member,
    /// An administrator's session.
    Admin,
    /// A member's API key with only the `read` scope.
    MemberReadKey,
    /// An administrator's API key without the `admin` scope.
    AdminKeyWithoutAdminScope,
}

const CALLERS: [Caller; 5] =
    [Caller::Anonymous, Caller::Member, Caller::Admin, Caller::MemberReadKey, Caller::AdminKeyWithoutAdminScope];

/// What a row needs from the instance: ids and secrets, made once in a template data folder
/// that each run copies (so that every run starts from the same state, cheaply).
#[derive(Clone)]
struct Secrets {
    member_email: String,
    admin_token: String,
    member_token: String,
    member_refresh: String,
    member_read_key: String,
    admin_key_without_admin: String,
    /// Another member, for the user administration routes to act on.
    victim: Uuid,
    /// A key of the administrator's that is not the one in use.
    admin_spare_key: Uuid,
    /// A key of the member's that is not the one in use.
    member_spare_key: Uuid,
    invite: String,
    /// The id of that invite.
    invite_id: Uuid,
    /// A project the member owns.
    own_project: Uuid,
    /// A queued job of the member's project, one of the viewed project, and a dead one there.
    own_job: Uuid,
    viewed_job: Uuid,
    dead_job: Uuid,
    /// The administrator's project, shared with the member as a viewer.
    viewed_project: Uuid,
    /// The administrator's project, not shared with the member.
    other_project: Uuid,
    /// The member's conversations about `viewed`: one with a queued task, one idle whose only
    /// task was cancelled.
    busy_conversation: Uuid,
    idle_conversation: Uuid,
    queued_task: Uuid,
    cancelled_task: Uuid,
}

fn config(dir: &std::path::Path) -> cloudx_core::CloudxConfig {
    ConfigLoader::new()
        .env([
            ("CLOUDX_DATA_DIR", dir.to_str().unwrap()),
            // The limits have their own tests; here they would only get in the way.
            ("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"),
            ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0"),
            ("CLOUDX_HTTP__AUTH_RATE_LIMIT_PER_IP", "0"),
            // `llm/check` asks the model endpoint: a closed local port, not the internet.
            ("CLOUDX_LLM__BASE_URL", "http://127.0.0.1:9/v1"),
            ("CLOUDX_LLM__API_KEY", "sk-matrix"),
            ("CLOUDX_LLM__MAX_RETRIES", "0"),
        ])
        .load()
        .unwrap()
}

struct Template {
    secrets: Secrets,
    dir: tempfile::TempDir,
}

impl Template {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cx = Cloudx::connect(config(dir.path())).await.unwrap();
        let auth = cx.auth();
        let client = Client::default();
        let system = Principal::System;
        let new = |email: &str, password: &str| NewUser {
            email: email.into(),
            password: password.into(),
            display_name: email.into(),
        };
        auth.add_user(&system, new("admin@example.com", ADMIN_PASSWORD), Role::Admin, &client).await.unwrap();
        auth.add_user(&system, new("member@example.com", MEMBER_PASSWORD), Role::Member, &client).await.unwrap();
        let victim =
            auth.add_user(&system, new("victim@example.com", MEMBER_PASSWORD), Role::Member, &client).await.unwrap();
        let (admin, admin_tokens) = auth.login("admin@example.com", ADMIN_PASSWORD, &client).await.unwrap();
        let (member, member_tokens) = auth.login("member@example.com", MEMBER_PASSWORD, &client).await.unwrap();
        let admin_principal = Principal::user(admin.id, Role::Admin);
        let member_principal = Principal::user(member.id, Role::Member);
        let key = |name: &str, scopes: Scopes| NewApiKey { name: name.into(), scopes, expires_at: None };
        let member_read_key =
            auth.create_api_key(&member_principal, key("read", Scopes::READ), &client).await.unwrap().secret;
        let admin_key_without_admin = auth
            .create_api_key(
                &admin_principal,
                key("no-admin", Scopes::parse(["read", "write", "exec"]).unwrap()),
                &client,
            )
            .await
            .unwrap()
            .secret;
        let admin_spare_key = auth.create_api_key(&admin_principal, key("spare", Scopes::READ), &client).await.unwrap();
        let member_spare_key =
            auth.create_api_key(&member_principal, key("spare", Scopes::READ), &client).await.unwrap();
        let invite = auth.create_invite(&system, Role::Member, None, &client).await.unwrap();
        let (invite_id, invite) = (invite.invite.id, invite.code);
        let storage = cx.storage();
        let project = |name: &str| cloudx_core::storage::NewProject { name: name.into(), ..Default::default() };
        let mut projects = Vec::new();
        for (owner, name) in [(&member_principal, "own"), (&admin_principal, "viewed"), (&admin_principal, "other")] {
            let p = storage.create_project(owner, &client, project(name)).await.unwrap();
            let content = futures_util::stream::iter([Ok(axum::body::Bytes::from_static(b"alpha"))]);
            let options = cloudx_core::storage::PutOptions::default();
            storage.put_file(owner, &client, p.id, "a.txt", Box::pin(content), options).await.unwrap();
            projects.push(p.id);
        }
        storage
            .set_member(&admin_principal, &client, projects[1], "member@example.com", cloudx_core::ProjectRole::Viewer)
            .await
            .unwrap();
        let queue = cx.queue();
        let job = |project: Uuid| cloudx_core::queue::NewJob {
            project: Some(project),
            ..cloudx_core::queue::NewJob::new("sandbox_exec", serde_json::json!({"argv": ["true"]}))
        };
        let own_job = queue.submit(member.id, job(projects[0])).await.unwrap().id;
        let viewed_job = queue.submit(admin.id, job(projects[1])).await.unwrap().id;
        let dead_job = queue
            .submit(
                admin.id,
                cloudx_core::queue::NewJob { max_attempts: Some(1), kind: "dead".into(), ..job(projects[1]) },
            )
            .await
            .unwrap()
            .id;
        let lease =
            queue.claim(Uuid::now_v7(), &["dead".to_owned()], 1, std::time::Duration::from_secs(60)).await.unwrap();
        queue.fail(&lease[0], "failed for the matrix", false).await.unwrap();
        // The member's conversations about the project they view (no worker runs here: a task
        // stays queued).
        let busy = cx.create_conversation(&member_principal, projects[1], None).await.unwrap();
        let queued_task = cx.post_message(&member_principal, &client, busy.id, "explain a.txt").await.unwrap().id;
        let idle = cx.create_conversation(&member_principal, projects[1], None).await.unwrap();
        let cancelled_task = cx.post_message(&member_principal, &client, idle.id, "explain a.txt").await.unwrap().id;
        cx.cancel_task(&member_principal, &client, cancelled_task).await.unwrap();
        // Closing checkpoints the WAL: the database is then one file to copy.
        cx.close().await;
        let secrets = Secrets {
            member_email: member.email,
            admin_token: admin_tokens.access_token,
            member_token: member_tokens.access_token,
            member_refresh: member_tokens.refresh_token,
            member_read_key,
            admin_key_without_admin,
            victim: victim.id,
            admin_spare_key: admin_spare_key.key.id,
            member_spare_key: member_spare_key.key.id,
            invite,
            invite_id,
            own_project: projects[0],
            own_job,
            viewed_job,
            dead_job,
            viewed_project: projects[1],
            other_project: projects[2],
            busy_conversation: busy.id,
            idle_conversation: idle.id,
            queued_task,
            cancelled_task,
        };
        Self { secrets, dir }
    }

    /// A fresh instance in the template's state.
    async fn instance(&self) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(self.dir.path(), dir.path());
        let cx = Cloudx::connect(config(dir.path())).await.unwrap();
        Fixture { app: cloudx_http::app(AppState::new(cx.clone())), cx, secrets: self.secrets.clone(), _dir: dir }
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

struct Fixture {
    app: App,
    cx: Cloudx,
    secrets: Secrets,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Fixture {
    type Target = Secrets;

    fn deref(&self) -> &Secrets {
        &self.secrets
    }
}

impl Fixture {
    fn credential(&self, caller: Caller) -> Option<&str> {
        match caller {
            Caller::Anonymous => None,
            Caller::Member => Some(&self.member_token),
            Caller::Admin => Some(&self.admin_token),
            Caller::MemberReadKey => Some(&self.member_read_key),
            Caller::AdminKeyWithoutAdminScope => Some(&self.admin_key_without_admin),
        }
    }

    async fn send(&self, caller: Caller, method: &Method, path: &str, body: Option<Value>) -> u16 {
        let mut request = Request::builder().method(method.clone()).uri(path);
        if let Some(credential) = self.credential(caller) {
            request = request.header("authorization", format!("Bearer {credential}"));
        }
        let request = match body {
            Some(body) => request.header("content-type", "application/json").body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        self.app.clone().oneshot(request).await.unwrap().status().as_u16()
    }
}

/// One row: an operation, how to call it on a fixture, and the status each caller gets, in the
/// order of [`CALLERS`].
struct Row {
    method: Method,
    /// The path template, as in the OpenAPI document.
    template: &'static str,
    call: fn(&Fixture) -> (String, Option<Value>),
    expect: [u16; 5],
}

fn row(method: Method, template: &'static str, call: fn(&Fixture) -> (String, Option<Value>), expect: [u16; 5]) -> Row {
    Row { method, template, call, expect }
}

fn plain(path: &str) -> (String, Option<Value>) {
    (path.to_owned(), None)
}

/// The matrix. Columns: anonymous, member, admin, member's read-only key, admin's key without
/// the `admin` scope.
fn matrix() -> Vec<Row> {
    use Method as M;
    vec![
        // Operations: public.
        row(M::GET, "/healthz", |_| plain("/healthz"), [200, 200, 200, 200, 200]),
        row(M::GET, "/readyz", |_| plain("/readyz"), [200, 200, 200, 200, 200]),
        row(M::GET, "/metrics", |_| plain("/metrics"), [200, 200, 200, 200, 200]),
        row(M::GET, "/.well-known/jwks.json", |_| plain("/.well-known/jwks.json"), [200, 200, 200, 200, 200]),
        // Credential routes: anyone may try; a bearer token changes nothing.
        row(
            M::POST,
            "/api/v1/auth/register",
            |f| {
                let body = json!({"email": format!("new-{}@example.com", Uuid::new_v4()), "password": "Fresh-Registrant-Passphrase-1", "display_name": "New", "invite": f.invite});
                ("/api/v1/auth/register".into(), Some(body))
            },
            [201, 201, 201, 201, 201],
        ),
        row(
            M::POST,
            "/api/v1/auth/login",
            |f| {
                let body = json!({"email": f.member_email, "password": MEMBER_PASSWORD});
                ("/api/v1/auth/login".into(), Some(body))
            },
            [200, 200, 200, 200, 200],
        ),
        row(
            M::POST,
            "/api/v1/auth/refresh",
            |f| ("/api/v1/auth/refresh".into(), Some(json!({"refresh_token": f.member_refresh}))),
            [200, 200, 200, 200, 200],
        ),
        // One's own session and account. An API key has no session to end or password to change.
        row(M::POST, "/api/v1/auth/logout", |_| plain("/api/v1/auth/logout"), [401, 204, 204, 400, 400]),
        row(M::GET, "/api/v1/auth/me", |_| plain("/api/v1/auth/me"), [401, 200, 200, 200, 200]),
        row(
            M::POST,
            "/api/v1/auth/password",
            // The member's password: right for the member, wrong for the administrator.
            |_| {
                let body = json!({"current_password": MEMBER_PASSWORD, "new_password": "Another-Fine-Passphrase-42"});
                ("/api/v1/auth/password".into(), Some(body))
            },
            [401, 204, 403, 403, 403],
        ),
        row(M::POST, "/api/v1/auth/ws-ticket", |_| plain("/api/v1/auth/ws-ticket"), [401, 200, 200, 200, 200]),
        // Administration: an administrator's session, or key with the admin scope.
        row(M::GET, "/api/v1/users", |_| plain("/api/v1/users"), [401, 403, 200, 403, 403]),
        row(
            M::POST,
            "/api/v1/users",
            |_| {
                let body = json!({"email": "added@example.com", "password": "Added-By-Admin-Passphrase-3", "display_name": "Added"});
                ("/api/v1/users".into(), Some(body))
            },
            [401, 403, 201, 403, 403],
        ),
        row(
            M::PATCH,
            "/api/v1/users/{id}",
            |f| (format!("/api/v1/users/{}", f.victim), Some(json!({"role": "admin"}))),
            [401, 403, 200, 403, 403],
        ),
        row(
            M::PATCH,
            "/api/v1/users/{id}",
            |f| (format!("/api/v1/users/{}", f.victim), Some(json!({"disabled": true}))),
            [401, 403, 200, 403, 403],
        ),
        row(
            M::PATCH,
            "/api/v1/users/{id}",
            |_| (format!("/api/v1/users/{}", Uuid::new_v4()), Some(json!({"disabled": true}))),
            [401, 403, 404, 403, 403],
        ),
        row(
            M::DELETE,
            "/api/v1/users/{id}",
            |f| plain(&format!("/api/v1/users/{}", f.victim)),
            [401, 403, 204, 403, 403],
        ),
        row(M::GET, "/api/v1/invites", |_| plain("/api/v1/invites"), [401, 403, 200, 403, 403]),
        row(
            M::POST,
            "/api/v1/invites",
            |_| ("/api/v1/invites".into(), Some(json!({"role": "member"}))),
            [401, 403, 201, 403, 403],
        ),
        row(
            M::DELETE,
            "/api/v1/invites/{id}",
            |f| plain(&format!("/api/v1/invites/{}", f.invite_id)),
            [401, 403, 200, 403, 403],
        ),
        row(M::GET, "/api/v1/audit", |_| plain("/api/v1/audit?limit=10"), [401, 403, 200, 403, 403]),
        row(M::GET, "/api/v1/audit/verify", |_| plain("/api/v1/audit/verify"), [401, 403, 200, 403, 403]),
        // API keys: one's own. Keys are made from sessions only; revoking needs `write`.
        row(M::GET, "/api/v1/api-keys", |_| plain("/api/v1/api-keys"), [401, 200, 200, 200, 200]),
        row(
            M::POST,
            "/api/v1/api-keys",
            |_| ("/api/v1/api-keys".into(), Some(json!({"name": "ci", "scopes": ["read"]}))),
            [401, 201, 201, 403, 403],
        ),
        // The administrator's key: another user's object is 404 for the member, whose key
        // also lacks `write` (403 comes first); the admin's own key-without-admin owns it.
        row(
            M::DELETE,
            "/api/v1/api-keys/{id}",
            |f| plain(&format!("/api/v1/api-keys/{}", f.admin_spare_key)),
            [401, 404, 200, 403, 200],
        ),
        // The member's key: the administrator may revoke anyone's, but a key without the
        // `admin` scope acts as an ordinary user, to whom it is someone else's: 404.
        row(
            M::DELETE,
            "/api/v1/api-keys/{id}",
            |f| plain(&format!("/api/v1/api-keys/{}", f.member_spare_key)),
            [401, 200, 200, 403, 404],
        ),
        // Projects: members by role (the member owns `own` and views `viewed`; `other` is the
        // administrator's alone). An administrator may act on any project; a key without the
        // admin scope acts as the plain user (owner of `viewed` and `other`, stranger to `own`).
        // A project one may not see is 404, whatever the call.
        row(M::GET, "/api/v1/projects", |_| plain("/api/v1/projects"), [401, 200, 200, 200, 200]),
        row(M::GET, "/api/v1/projects", |_| plain("/api/v1/projects?all=true"), [401, 403, 200, 403, 403]),
        row(
            M::POST,
            "/api/v1/projects",
            |_| ("/api/v1/projects".into(), Some(json!({"name": "fresh", "template": "python"}))),
            [401, 201, 201, 403, 201],
        ),
        row(M::GET, "/api/v1/templates", |_| plain("/api/v1/templates"), [401, 200, 200, 200, 200]),
        row(
            M::GET,
            "/api/v1/projects/{project}",
            |f| plain(&format!("/api/v1/projects/{}", f.own_project)),
            [401, 200, 200, 200, 404],
        ),
        row(
            M::GET,
            "/api/v1/projects/{project}",
            |f| plain(&format!("/api/v1/projects/{}", f.other_project)),
            [401, 404, 200, 404, 200],
        ),
        row(
            M::PATCH,
            "/api/v1/projects/{project}",
            |f| (format!("/api/v1/projects/{}", f.own_project), Some(json!({"name": "renamed"}))),
            [401, 200, 200, 403, 404],
        ),
        row(
            M::PATCH,
            "/api/v1/projects/{project}",
            |f| (format!("/api/v1/projects/{}", f.viewed_project), Some(json!({"name": "renamed"}))),
            [401, 403, 200, 403, 200],
        ),
        row(
            M::PATCH,
            "/api/v1/projects/{project}",
            |f| (format!("/api/v1/projects/{}", f.own_project), Some(json!({"quota_files": 5}))),
            [401, 403, 200, 403, 404],
        ),
        row(
            M::DELETE,
            "/api/v1/projects/{project}",
            |f| plain(&format!("/api/v1/projects/{}", f.own_project)),
            [401, 204, 204, 403, 404],
        ),
        row(
            M::DELETE,
            "/api/v1/projects/{project}",
            |f| plain(&format!("/api/v1/projects/{}?purge=true", f.own_project)),
            [401, 403, 204, 403, 403],
        ),
        row(
            M::POST,
            "/api/v1/projects/{project}/restore",
            |f| plain(&format!("/api/v1/projects/{}/restore", f.own_project)),
            [401, 409, 409, 403, 404],
        ),
        row(
            M::POST,
            "/api/v1/projects/{project}/transfer",
            |f| (format!("/api/v1/projects/{}/transfer", f.own_project), Some(json!({"to": "victim@example.com"}))),
            [401, 200, 200, 403, 404],
        ),
        row(
            M::GET,
            "/api/v1/projects/{project}/members",
            |f| plain(&format!("/api/v1/projects/{}/members", f.viewed_project)),
            [401, 200, 200, 200, 200],
        ),
        row(
            M::PUT,
            "/api/v1/projects/{project}/members/{user}",
            |f| {
                let path = format!("/api/v1/projects/{}/members/victim@example.com", f.viewed_project);
                (path, Some(json!({"role": "editor"})))
            },
            [401, 403, 200, 403, 200],
        ),
        row(
            M::PUT,
            "/api/v1/projects/{project}/members/{user}",
            |f| (format!("/api/v1/projects/{}/members/{}", f.own_project, f.victim), Some(json!({"role": "viewer"}))),
            [401, 200, 200, 403, 404],
        ),
        // The member leaving a project they view (a read-only key cannot).
        row(
            M::DELETE,
            "/api/v1/projects/{project}/members/{user}",
            |f| plain(&format!("/api/v1/projects/{}/members/member@example.com", f.viewed_project)),
            [401, 204, 204, 403, 204],
        ),
        // Files: viewers read, editors and owners write.
        row(
            M::GET,
            "/api/v1/projects/{project}/tree",
            |f| plain(&format!("/api/v1/projects/{}/tree", f.viewed_project)),
            [401, 200, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/projects/{project}/tree",
            |f| plain(&format!("/api/v1/projects/{}/tree", f.other_project)),
            [401, 404, 200, 404, 200],
        ),
        row(
            M::GET,
            "/api/v1/projects/{project}/files/{path}",
            |f| plain(&format!("/api/v1/projects/{}/files/a.txt", f.viewed_project)),
            [401, 200, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/projects/{project}/files/{path}",
            |f| plain(&format!("/api/v1/projects/{}/files/a.txt", f.other_project)),
            [401, 404, 200, 404, 200],
        ),
        row(
            M::PUT,
            "/api/v1/projects/{project}/files/{path}",
            |f| (format!("/api/v1/projects/{}/files/b.json", f.viewed_project), Some(json!({"b": 1}))),
            [401, 403, 200, 403, 200],
        ),
        row(
            M::PUT,
            "/api/v1/projects/{project}/files/{path}",
            |f| (format!("/api/v1/projects/{}/files/b.json", f.own_project), Some(json!({"b": 1}))),
            [401, 200, 200, 403, 404],
        ),
        row(
            M::DELETE,
            "/api/v1/projects/{project}/files/{path}",
            |f| plain(&format!("/api/v1/projects/{}/files/a.txt", f.viewed_project)),
            [401, 403, 200, 403, 200],
        ),
        row(
            M::GET,
            "/api/v1/projects/{project}/history/{path}",
            |f| plain(&format!("/api/v1/projects/{}/history/a.txt", f.other_project)),
            [401, 404, 200, 404, 200],
        ),
        row(
            M::POST,
            "/api/v1/projects/{project}/restore/{path}",
            |f| (format!("/api/v1/projects/{}/restore/a.txt", f.own_project), Some(json!({"version": 1}))),
            [401, 200, 200, 403, 404],
        ),
        row(
            M::GET,
            "/api/v1/projects/{project}/archive",
            |f| plain(&format!("/api/v1/projects/{}/archive?format=zip", f.viewed_project)),
            [401, 200, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/projects/{project}/archive",
            |f| plain(&format!("/api/v1/projects/{}/archive", f.other_project)),
            [401, 404, 200, 404, 200],
        ),
        // Allowed callers get as far as reading the body, which is not an archive.
        row(
            M::POST,
            "/api/v1/projects/{project}/archive",
            |f| (format!("/api/v1/projects/{}/archive", f.viewed_project), Some(json!({"not": "an archive"}))),
            [401, 403, 400, 403, 400],
        ),
        row(
            M::POST,
            "/api/v1/projects/{project}/move",
            |f| (format!("/api/v1/projects/{}/move", f.viewed_project), Some(json!({"from": "a.txt", "to": "c.txt"}))),
            [401, 403, 200, 403, 200],
        ),
        // The sandbox: viewers read the policy, owners change it; editors and owners run code
        // (an API key needs the `exec` scope).
        row(
            M::GET,
            "/api/v1/projects/{project}/policy",
            |f| plain(&format!("/api/v1/projects/{}/policy", f.viewed_project)),
            [401, 200, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/projects/{project}/policy",
            |f| plain(&format!("/api/v1/projects/{}/policy", f.other_project)),
            [401, 404, 200, 404, 200],
        ),
        row(
            M::PUT,
            "/api/v1/projects/{project}/policy",
            |f| (format!("/api/v1/projects/{}/policy", f.own_project), Some(json!({"limits": {"memory": 268435456}}))),
            [401, 200, 200, 403, 404],
        ),
        row(
            M::PUT,
            "/api/v1/projects/{project}/policy",
            |f| (format!("/api/v1/projects/{}/policy", f.viewed_project), Some(json!({"network": "loopback"}))),
            [401, 403, 200, 403, 200],
        ),
        row(
            M::POST,
            "/api/v1/projects/{project}/exec",
            |f| (format!("/api/v1/projects/{}/exec", f.own_project), Some(json!({"argv": ["cat", "a.txt"]}))),
            [401, 200, 200, 403, 404],
        ),
        row(
            M::POST,
            "/api/v1/projects/{project}/exec",
            |f| (format!("/api/v1/projects/{}/exec", f.viewed_project), Some(json!({"argv": ["true"]}))),
            [401, 403, 200, 403, 200],
        ),
        // Jobs: members read their projects' jobs, editors and owners submit and cancel,
        // administrators list everything and queue dead jobs again.
        row(
            M::POST,
            "/api/v1/jobs",
            |f| (plain("/api/v1/jobs").0, Some(json!({"kind": "sandbox_exec", "project": f.own_project}))),
            [401, 201, 201, 403, 404],
        ),
        row(
            M::POST,
            "/api/v1/jobs",
            |f| (plain("/api/v1/jobs").0, Some(json!({"kind": "sandbox_exec", "project": f.viewed_project}))),
            [401, 403, 201, 403, 201],
        ),
        row(
            M::GET,
            "/api/v1/jobs",
            |f| plain(&format!("/api/v1/jobs?project={}", f.viewed_project)),
            [401, 200, 200, 200, 200],
        ),
        row(M::GET, "/api/v1/jobs", |_| plain("/api/v1/jobs"), [401, 400, 200, 400, 400]),
        row(
            M::GET,
            "/api/v1/jobs/{id}",
            |f| plain(&format!("/api/v1/jobs/{}", f.viewed_job)),
            [401, 200, 200, 200, 200],
        ),
        row(M::GET, "/api/v1/jobs/{id}", |f| plain(&format!("/api/v1/jobs/{}", f.own_job)), [401, 200, 200, 200, 404]),
        row(
            M::GET,
            "/api/v1/jobs/{id}/events",
            |f| plain(&format!("/api/v1/jobs/{}/events?after=0", f.viewed_job)),
            [401, 200, 200, 200, 200],
        ),
        row(
            M::POST,
            "/api/v1/jobs/{id}/cancel",
            |f| plain(&format!("/api/v1/jobs/{}/cancel", f.own_job)),
            [401, 200, 200, 403, 404],
        ),
        row(
            M::POST,
            "/api/v1/jobs/{id}/cancel",
            |f| plain(&format!("/api/v1/jobs/{}/cancel", f.viewed_job)),
            [401, 403, 200, 403, 200],
        ),
        row(M::GET, "/api/v1/workers", |_| plain("/api/v1/workers"), [401, 403, 200, 403, 403]),
        row(
            M::POST,
            "/api/v1/jobs/{id}/retry",
            |f| plain(&format!("/api/v1/jobs/{}/retry", f.dead_job)),
            [401, 403, 200, 403, 403],
        ),
        // The agent: a conversation is its user's (administrators may read it; a key without
        // `admin` acts as a plain user, to whom it is someone else's). Talking needs only read
        // access to the project: the agent acts with the poster's rights when it runs.
        row(
            M::GET,
            "/api/v1/projects/{project}/conversations",
            |f| plain(&format!("/api/v1/projects/{}/conversations", f.viewed_project)),
            [401, 200, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/v1/projects/{project}/conversations",
            |f| plain(&format!("/api/v1/projects/{}/conversations", f.other_project)),
            [401, 404, 200, 404, 200],
        ),
        row(
            M::POST,
            "/api/v1/projects/{project}/conversations",
            |f| (format!("/api/v1/projects/{}/conversations", f.viewed_project), Some(json!({"title": "hi"}))),
            [401, 201, 201, 201, 201],
        ),
        row(
            M::POST,
            "/api/v1/projects/{project}/conversations",
            |f| (format!("/api/v1/projects/{}/conversations", f.own_project), Some(json!({}))),
            [401, 201, 201, 201, 404],
        ),
        row(
            M::GET,
            "/api/v1/conversations/{id}",
            |f| plain(&format!("/api/v1/conversations/{}", f.busy_conversation)),
            [401, 200, 200, 200, 404],
        ),
        row(
            M::POST,
            "/api/v1/conversations/{id}/messages",
            |f| (format!("/api/v1/conversations/{}/messages", f.idle_conversation), Some(json!({"text": "go on"}))),
            [401, 202, 404, 202, 404],
        ),
        row(
            M::GET,
            "/api/v1/conversations/{id}/events",
            |f| plain(&format!("/api/v1/conversations/{}/events?after=0", f.busy_conversation)),
            [401, 200, 200, 200, 404],
        ),
        row(M::GET, "/api/v1/tasks", |_| plain("/api/v1/tasks"), [401, 200, 200, 200, 200]),
        row(
            M::GET,
            "/api/v1/tasks/{id}",
            |f| plain(&format!("/api/v1/tasks/{}", f.queued_task)),
            [401, 200, 200, 200, 404],
        ),
        row(
            M::GET,
            "/api/v1/tasks/{id}/transcript",
            |f| plain(&format!("/api/v1/tasks/{}/transcript", f.queued_task)),
            [401, 200, 200, 200, 404],
        ),
        row(
            M::POST,
            "/api/v1/tasks/{id}/cancel",
            |f| plain(&format!("/api/v1/tasks/{}/cancel", f.queued_task)),
            [401, 200, 200, 200, 404],
        ),
        row(
            M::POST,
            "/api/v1/tasks/{id}/replay",
            |f| plain(&format!("/api/v1/tasks/{}/replay", f.cancelled_task)),
            [401, 202, 404, 202, 404],
        ),
        row(M::POST, "/api/v1/llm/check", |_| plain("/api/v1/llm/check"), [401, 200, 200, 200, 200]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_as_the_matrix_says() {
    let rows = matrix();
    // Completeness: the table and the OpenAPI document name the same operations.
    let documented: BTreeSet<(String, String)> = cloudx_http::openapi()
        .paths
        .paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            methods.into_iter().filter(|(_, has)| *has).map(move |(m, _)| (m.to_owned(), path.clone()))
        })
        .collect();
    let tabled: BTreeSet<(String, String)> =
        rows.iter().map(|r| (r.method.as_str().to_owned(), r.template.to_owned())).collect();
    let missing: Vec<_> = documented.difference(&tabled).collect();
    assert!(missing.is_empty(), "routes without a row in the permission matrix: {missing:?}");
    let stale: Vec<_> = tabled.difference(&documented).collect();
    assert!(stale.is_empty(), "matrix rows for routes that do not exist: {stale:?}");

    let template = Template::new().await;
    let mut failures = Vec::new();
    for row in &rows {
        for (caller, expected) in CALLERS.iter().zip(row.expect) {
            let fixture = template.instance().await;
            let (path, body) = (row.call)(&fixture);
            let got = fixture.send(*caller, &row.method, &path, body).await;
            if got != expected {
                failures.push(format!("{} {path} as {caller:?}: expected {expected}, got {got}", row.method));
            }
            fixture.cx.close().await;
        }
    }
    assert!(failures.is_empty(), "the permission matrix is not what the daemon does:\n{}", failures.join("\n"));
}
