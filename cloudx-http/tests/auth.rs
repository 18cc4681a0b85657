//! Identity over HTTP on a real socket: the sign-in flow, bearer handling, rate limits, client
//! addresses behind proxies, the OpenAPI security scheme, and that no secret is ever stored or
//! logged.

use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;

use common::{Daemon, problem};

const PASSWORD: &str = "Http-Suite-Passphrase-6620";
const NEW_PASSWORD: &str = "Http-Suite-Changed-Passphrase-9915";

/// No limits, unless a test sets its own.
const NO_LIMITS: [(&str, &str); 3] = [
    ("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"),
    ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0"),
    ("CLOUDX_HTTP__AUTH_RATE_LIMIT_PER_IP", "0"),
];

async fn post(d: &Daemon, path: &str, bearer: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(d.url(path)).json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn get(d: &Daemon, path: &str, bearer: &str) -> reqwest::Response {
    reqwest::Client::new().get(d.url(path)).bearer_auth(bearer).send().await.unwrap()
}

async fn register(d: &Daemon, email: &str) -> Value {
    let r =
        post(d, "/api/v1/auth/register", None, &json!({"email": email, "password": PASSWORD, "display_name": "Ada"}))
            .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

async fn login(d: &Daemon, email: &str, password: &str) -> reqwest::Response {
    post(d, "/api/v1/auth/login", None, &json!({"email": email, "password": password})).await
}

async fn tokens(d: &Daemon, email: &str) -> Value {
    let r = login(d, email, PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_new_user_registers_signs_in_refreshes_and_signs_out() {
    let d = Daemon::start(&NO_LIMITS).await;
    let user = register(&d, "Ada@Example.com").await;
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["role"], "admin", "the first account administers the instance");
    assert!(user.get("password_hash").is_none());

    let session = tokens(&d, "ada@example.com").await;
    assert_eq!(session["user"]["id"], user["id"]);
    assert_eq!(session["token_type"], "Bearer");
    let access = session["access_token"].as_str().unwrap();
    let me: Value = get(&d, "/api/v1/auth/me", access).await.json().await.unwrap();
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["scopes"], json!(["read", "write", "exec", "admin"]));

    // Refresh: new tokens, and the spent refresh token is no good after the grace period
    // (within it, a retry gets the same successor).
    let refreshed = post(&d, "/api/v1/auth/refresh", None, &json!({"refresh_token": session["refresh_token"]})).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let refreshed: Value = refreshed.json().await.unwrap();
    assert_ne!(refreshed["refresh_token"], session["refresh_token"]);
    let access = refreshed["access_token"].as_str().unwrap().to_owned();

    // Change the password: the other session ends, this one goes on.
    let other = tokens(&d, "ada@example.com").await;
    let r = post(
        &d,
        "/api/v1/auth/password",
        Some(&access),
        &json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(get(&d, "/api/v1/auth/me", other["access_token"].as_str().unwrap()).await.status(), 401);
    assert_eq!(get(&d, "/api/v1/auth/me", &access).await.status(), 200);
    assert_eq!(login(&d, "ada@example.com", PASSWORD).await.status(), 401);

    // Sign out: the access token stops working at once, with a problem document.
    assert_eq!(post(&d, "/api/v1/auth/logout", Some(&access), &json!({})).await.status(), 204);
    let r = get(&d, "/api/v1/auth/me", &access).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body = problem(r).await;
    assert_eq!(body["code"], "unauthenticated");
    assert!(body["detail"].as_str().unwrap().contains("session has ended"), "{body}");
    d.stop().await.unwrap();
}

#[tokio::test]
async fn credentials_are_read_from_the_authorization_header_only() {
    let d = Daemon::start(&NO_LIMITS).await;
    register(&d, "ada@example.com").await;
    let session = tokens(&d, "ada@example.com").await;
    let access = session["access_token"].as_str().unwrap();
    for path in [format!("/api/v1/auth/me?access_token={access}"), format!("/api/v1/auth/me?token={access}")] {
        let r = reqwest::get(d.url(&path)).await.unwrap();
        assert_eq!(r.status(), 401, "a token in the query string is ignored");
    }
    let cases = [
        (format!("Basic {access}"), "Bearer scheme"),
        ("Bearer".to_owned(), "carries no token"),
        ("Bearer not-a-jwt".to_owned(), "malformed"),
        (format!("Bearer {}", tamper(access)), "signature"),
        ("Bearer cxk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(), "API key"),
    ];
    for (header, needle) in cases {
        let r =
            reqwest::Client::new().get(d.url("/api/v1/auth/me")).header("authorization", &header).send().await.unwrap();
        assert_eq!(r.status(), 401, "{header}");
        let body = problem(r).await;
        assert!(body["detail"].as_str().unwrap().contains(needle), "{header}: {body}");
        assert!(!body.to_string().contains(access), "the token is never echoed");
    }
    d.stop().await.unwrap();
}

/// The token with one character of its signature changed (not the last, whose low bits are padding).
fn tamper(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let at = bytes.len() - 10;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn api_keys_work_as_bearer_credentials_with_their_scopes_until_revoked() {
    let d = Daemon::start(&NO_LIMITS).await;
    register(&d, "ada@example.com").await;
    let session = tokens(&d, "ada@example.com").await;
    let access = session["access_token"].as_str().unwrap();
    let r = post(&d, "/api/v1/api-keys", Some(access), &json!({"name": "notebook", "scopes": ["read"]})).await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("cxk_"));
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));

    let me: Value = get(&d, "/api/v1/auth/me", secret).await.json().await.unwrap();
    assert_eq!(me["scopes"], json!(["read"]));
    assert_eq!(me["api_key_id"], created["id"]);
    // Read-only: listing works, administration and key management do not.
    let listed: Value = get(&d, "/api/v1/api-keys", secret).await.json().await.unwrap();
    assert_eq!(listed[0]["name"], "notebook");
    assert!(listed[0].get("secret").is_none(), "a listed key never shows its secret");
    assert_eq!(get(&d, "/api/v1/users", secret).await.status(), 403);
    let r = post(&d, "/api/v1/api-keys", Some(secret), &json!({"name": "child", "scopes": ["read"]})).await;
    assert_eq!(r.status(), 403);

    // Bad input names the problem.
    let r = post(&d, "/api/v1/api-keys", Some(access), &json!({"name": "x", "scopes": ["root"]})).await;
    assert_eq!(r.status(), 422);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("`root` is not a scope"));

    let id = created["id"].as_str().unwrap();
    let r = reqwest::Client::new()
        .delete(d.url(&format!("/api/v1/api-keys/{id}")))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get(&d, "/api/v1/auth/me", secret).await.status(), 401, "a revoked key stops at once");
    d.stop().await.unwrap();
}

#[tokio::test]
async fn disabling_a_user_stops_their_tokens_at_once() {
    let d = Daemon::start(&[&NO_LIMITS[..], &[("CLOUDX_AUTH__REGISTRATION", "open")]].concat()).await;
    register(&d, "admin@example.com").await;
    let member = register(&d, "member@example.com").await;
    assert_eq!(member["role"], "member");
    let admin = tokens(&d, "admin@example.com").await;
    let admin = admin["access_token"].as_str().unwrap();
    let session = tokens(&d, "member@example.com").await;
    let access = session["access_token"].as_str().unwrap();
    assert_eq!(get(&d, "/api/v1/auth/me", access).await.status(), 200);

    let url = d.url(&format!("/api/v1/users/{}", member["id"].as_str().unwrap()));
    let r =
        reqwest::Client::new().patch(&url).bearer_auth(admin).json(&json!({"disabled": true})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["disabled"], true);
    assert_eq!(get(&d, "/api/v1/auth/me", access).await.status(), 401);
    let r = post(&d, "/api/v1/auth/refresh", None, &json!({"refresh_token": session["refresh_token"]})).await;
    assert_eq!(r.status(), 401);
    assert_eq!(login(&d, "member@example.com", PASSWORD).await.status(), 401);

    // Nothing to change is a clear 400; an unknown id 404; a malformed one 400.
    let r = reqwest::Client::new().patch(&url).bearer_auth(admin).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("nothing to change"));
    let r = reqwest::Client::new()
        .patch(d.url("/api/v1/users/not-a-uuid"))
        .bearer_auth(admin)
        .json(&json!({"disabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    d.stop().await.unwrap();
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let d = Daemon::start(&[
        ("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "8"),
        ("CLOUDX_HTTP__AUTH_RATE_LIMIT_PER_IP", "3"),
        ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0"),
    ])
    .await;
    // Credential routes: 3 a minute from one address, whatever the outcome.
    for _ in 0..3 {
        assert_eq!(login(&d, "nobody@example.com", "Wrong-Passphrase-123").await.status(), 401);
    }
    let r = login(&d, "nobody@example.com", "Wrong-Passphrase-123").await;
    assert_eq!(r.status(), 429);
    let after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&after), "{after}");
    let body = problem(r).await;
    assert_eq!(body["code"], "rate_limited");
    assert!(body["detail"].as_str().unwrap().contains("sign-in requests from this address"), "{body}");

    // Every API route: 8 a minute from one address (the 4 logins above counted too).
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(reqwest::get(d.url("/api/v1/auth/me")).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429]);
    // Operations routes are not limited: a monitor must always get through.
    for _ in 0..20 {
        assert_eq!(d.get("/healthz").await.status(), 200);
    }
    d.stop().await.unwrap();
}

#[tokio::test]
async fn the_per_account_limit_covers_all_of_an_accounts_credentials() {
    let d = Daemon::start(&[
        ("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"),
        ("CLOUDX_HTTP__AUTH_RATE_LIMIT_PER_IP", "0"),
        ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "5"),
    ])
    .await;
    register(&d, "ada@example.com").await;
    let one = tokens(&d, "ada@example.com").await;
    let two = tokens(&d, "ada@example.com").await;
    let mut statuses = Vec::new();
    for i in 0..7 {
        let session = if i % 2 == 0 { &one } else { &two };
        statuses.push(get(&d, "/api/v1/auth/me", session["access_token"].as_str().unwrap()).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    d.stop().await.unwrap();
}

#[tokio::test]
async fn repeated_failed_logins_are_delayed_with_retry_after() {
    let d = Daemon::start(&[&NO_LIMITS[..], &[("CLOUDX_AUTH__LOGIN_DELAY_AFTER", "2")]].concat()).await;
    register(&d, "ada@example.com").await;
    for _ in 0..2 {
        assert_eq!(login(&d, "ada@example.com", "Wrong-Passphrase-123").await.status(), 401);
    }
    // The third failure is answered 401 and arms a delay; trying during it is 429.
    assert_eq!(login(&d, "ada@example.com", "Wrong-Passphrase-123").await.status(), 401);
    let r = login(&d, "ada@example.com", PASSWORD).await;
    assert_eq!(r.status(), 429, "even the right password waits out the delay");
    assert!(r.headers().contains_key("retry-after"));
    // Unknown emails are delayed alike: the answer does not tell which accounts exist.
    for _ in 0..3 {
        assert_eq!(login(&d, "ghost@example.com", "Wrong-Passphrase-123").await.status(), 401);
    }
    assert_eq!(login(&d, "ghost@example.com", "Wrong-Passphrase-123").await.status(), 429);
    d.stop().await.unwrap();
}

#[tokio::test]
async fn the_client_address_comes_from_trusted_proxies_only() {
    let d = Daemon::start(&[&NO_LIMITS[..], &[("CLOUDX_HTTP__TRUSTED_PROXIES", "127.0.0.1")]].concat()).await;
    register(&d, "ada@example.com").await;
    let r = reqwest::Client::new()
        .post(d.url("/api/v1/auth/login"))
        .header("x-forwarded-for", "203.0.113.50, 198.51.100.7")
        .header("user-agent", "proxy-test/1.0")
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let session: Value = r.json().await.unwrap();
    let audit: Value =
        get(&d, "/api/v1/audit?limit=5", session["access_token"].as_str().unwrap()).await.json().await.unwrap();
    let login_entry = audit.as_array().unwrap().iter().find(|e| e["action"] == "login").unwrap();
    assert_eq!(login_entry["ip"], "198.51.100.7", "the nearest untrusted hop: {login_entry}");
    assert_eq!(login_entry["user_agent"], "proxy-test/1.0");
    assert_eq!(login_entry["outcome"], "success");
    let verified: Value =
        get(&d, "/api/v1/audit/verify", session["access_token"].as_str().unwrap()).await.json().await.unwrap();
    assert_eq!(verified["first_bad"], Value::Null);
    d.stop().await.unwrap();

    // Without trusted proxies the header is the client's own claim, and ignored.
    let d = Daemon::start(&NO_LIMITS).await;
    register(&d, "ada@example.com").await;
    let r = reqwest::Client::new()
        .post(d.url("/api/v1/auth/login"))
        .header("x-forwarded-for", "198.51.100.7")
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let session: Value = r.json().await.unwrap();
    let audit: Value =
        get(&d, "/api/v1/audit?limit=5", session["access_token"].as_str().unwrap()).await.json().await.unwrap();
    assert_eq!(audit[0]["ip"], "127.0.0.1");
    d.stop().await.unwrap();
}

#[tokio::test]
async fn the_openapi_document_declares_the_bearer_scheme_on_protected_routes() {
    let doc = serde_json::to_value(cloudx_http::openapi()).unwrap();
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let public = [
        "/healthz",
        "/readyz",
        "/metrics",
        "/.well-known/jwks.json",
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
    ];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let secured = operation["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            assert_eq!(secured, !public.contains(&path.as_str()), "{method} {path}");
            // What the extractors answer is documented too.
            if secured {
                assert!(operation["responses"]["401"].is_object(), "{method} {path} lacks 401");
            }
            if path.starts_with("/api/") {
                assert!(operation["responses"]["429"].is_object(), "{method} {path} lacks 429");
            }
        }
    }
}

#[tokio::test]
async fn eddsa_tokens_are_checked_with_the_published_key() {
    let d = Daemon::start(&[&NO_LIMITS[..], &[("CLOUDX_AUTH__JWT_ALGORITHM", "EdDSA")]].concat()).await;
    register(&d, "ada@example.com").await;
    let session = tokens(&d, "ada@example.com").await;
    let access = session["access_token"].as_str().unwrap();
    assert_eq!(get(&d, "/api/v1/auth/me", access).await.status(), 200);
    let r = d.get("/.well-known/jwks.json").await;
    assert_eq!(r.headers()["cache-control"], "public, max-age=300");
    let jwks: Value = r.json().await.unwrap();
    let jwk = &jwks["keys"][0];
    let header = jsonwebtoken::decode_header(access).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(jwk["kid"].as_str(), header.kid.as_deref());
    // Another service checks the token with the published key alone.
    let key = jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["cloudx"]);
    let claims = jsonwebtoken::decode::<Value>(access, &key, &validation).unwrap().claims;
    assert_eq!(claims["sub"], session["user"]["id"]);
    // The generated key is private to the data folder.
    use std::os::unix::fs::PermissionsExt as _;
    let key_file = d.dir.path().join("jwt-ed25519.pem");
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    d.stop().await.unwrap();

    // With HS256 (the default) the set is empty: a shared secret is never published.
    let d = Daemon::start(&NO_LIMITS).await;
    let jwks: Value = d.get("/.well-known/jwks.json").await.json().await.unwrap();
    assert_eq!(jwks, json!({"keys": []}));
    d.stop().await.unwrap();
}

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every kind of secret goes through the daemon with every log line of this test process
/// captured at `trace` (sqlx's statements, hyper's connections, the daemon's own lines); then
/// neither the database files nor the logs contain any of them.
#[tokio::test]
async fn no_password_or_token_reaches_the_database_or_the_logs() {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .json()
        .with_writer(move || sink.clone())
        .finish();
    // Process-wide: the database's worker threads and blocking hash tasks log too.
    tracing::subscriber::set_global_default(subscriber).expect("no other test of this file sets a subscriber");

    let mut secrets = Vec::new();
    // SQLite: the database files as they are while running (with the write-ahead log), and
    // once closed.
    let d = Daemon::start(&[&NO_LIMITS[..], &[("CLOUDX_AUTH__LOGIN_DELAY_AFTER", "1")]].concat()).await;
    secrets.extend(exercise_every_secret(&d).await);
    let mut stores = database_files(d.dir.path());
    d.cx.close().await;
    stores.extend(database_files(d.dir.path()));
    d.stop().await.unwrap();
    assert!(stores.len() >= 2, "the database was found: {:?}", stores.iter().map(|s| &s.0).collect::<Vec<_>>());
    // Postgres: every row of every table, as text.
    if let Some(pg) = cloudx_core::testing::TestPostgres::create().await {
        let env =
            [&NO_LIMITS[..], &[("CLOUDX_AUTH__LOGIN_DELAY_AFTER", "1"), ("CLOUDX_DATABASE__URL", pg.url())]].concat();
        let d = Daemon::start(&env).await;
        secrets.extend(exercise_every_secret(&d).await);
        let cloudx_core::db::Database::Postgres(pool) = d.cx.database() else { panic!("not on Postgres") };
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert!(tables.iter().any(|t| t == "refresh_tokens") && tables.len() >= 8, "{tables:?}");
        for table in tables {
            let rows: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT string_agg(row_to_json(t)::text, E'\\n') FROM \"{table}\" t"
            )))
            .fetch_one(pool)
            .await
            .unwrap();
            stores.push((format!("postgres table {table}"), rows.unwrap_or_default().into_bytes()));
        }
        d.cx.close().await;
        d.stop().await.unwrap();
    }

    let logs = logs.0.lock().unwrap().clone();
    assert!(logs.len() > 10_000, "the logs were captured ({} bytes)", logs.len());
    stores.push(("logs".into(), logs));
    // Positive control: the stores hold the account's email (so they were read, and whole),
    // just not its secrets.
    let holds = |bytes: &[u8], needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    for kind in ["cloudx.db", "postgres table users"] {
        let found = stores.iter().any(|(name, bytes)| name.contains(kind) && holds(bytes, "ada@example.com"));
        assert!(
            found
                || (kind.starts_with("postgres")
                    && std::env::var("CI").as_deref() != Ok("true")
                    && std::env::var("CLOUDX_TEST_POSTGRES_URL").is_err()),
            "no {kind} store holds the email"
        );
    }
    for (name, bytes) in &stores {
        for secret in &secrets {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{name} contains a secret starting {}", &secret[..8]);
        }
    }
}

/// Sends every kind of secret through the daemon: passwords (right and wrong), access and
/// refresh tokens, a refresh, an API key and its use, an invite code, a WebSocket ticket, a
/// password change. Returns them all.
async fn exercise_every_secret(d: &Daemon) -> Vec<String> {
    let mut secrets: Vec<String> = vec![PASSWORD.into(), NEW_PASSWORD.into()];
    register(d, "ada@example.com").await;
    let session = tokens(d, "ada@example.com").await;
    let access = session["access_token"].as_str().unwrap().to_owned();
    secrets.push(access.clone());
    secrets.push(session["refresh_token"].as_str().unwrap().into());
    let refreshed: Value = post(d, "/api/v1/auth/refresh", None, &json!({"refresh_token": session["refresh_token"]}))
        .await
        .json()
        .await
        .unwrap();
    secrets.push(refreshed["access_token"].as_str().unwrap().into());
    secrets.push(refreshed["refresh_token"].as_str().unwrap().into());
    // A reuse after the grace window is the loud path: it must stay quiet about the token too.
    let key: Value = post(d, "/api/v1/api-keys", Some(&access), &json!({"name": "k", "scopes": ["read"]}))
        .await
        .json()
        .await
        .unwrap();
    secrets.push(key["secret"].as_str().unwrap().into());
    assert_eq!(get(d, "/api/v1/auth/me", key["secret"].as_str().unwrap()).await.status(), 200);
    let invite: Value = post(d, "/api/v1/invites", Some(&access), &json!({})).await.json().await.unwrap();
    secrets.push(invite["code"].as_str().unwrap().into());
    let ticket: Value = post(d, "/api/v1/auth/ws-ticket", Some(&access), &json!({})).await.json().await.unwrap();
    secrets.push(ticket["ticket"].as_str().unwrap().into());
    let wrong = "Wrong-But-Secret-Passphrase-77";
    secrets.push(wrong.into());
    assert_eq!(login(d, "ada@example.com", wrong).await.status(), 401);
    let r = post(
        d,
        "/api/v1/auth/password",
        Some(&access),
        &json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 204);
    secrets
}

fn database_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap().starts_with("cloudx.db") {
            files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    files
}
