//! The `cloudx` binary as a user runs it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cloudx");

/// A `cloudx` command in `dir` with a clean environment: no CLOUDX_ variable leaks in from the
/// developer's shell.
fn cloudx(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("cloudx runs")
}

/// Makes the administrator root@example.com on the instance in `dir`, as the local operator.
fn add_local_admin(dir: &Path) {
    let out = run_with_stdin(
        cloudx(dir).args(["user", "add", "root@example.com", "--admin", "--password-stdin"]),
        ADMIN_PASSWORD,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `cloudx serve` and the address it printed.
struct Serve {
    child: Child,
    addr: String,
    first_line: String,
}

impl Serve {
    fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Self {
        Self::start_logging_to(dir, extra_env, Stdio::null())
    }

    fn start_logging_to(dir: &Path, extra_env: &[(&str, &str)], log: impl Into<Stdio>) -> Self {
        let mut cmd = cloudx(dir);
        cmd.args(["serve", "--bind", "127.0.0.1:0"]).envs(extra_env.iter().copied());
        let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first_line = lines.next().expect("serve prints where it listens").unwrap();
        let addr = first_line.rsplit("http://").next().unwrap().trim().to_owned();
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, addr, first_line }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    fn wait(mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("cloudx serve did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn version_prints_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(cloudx(dir.path()).arg("version"));
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), format!("cloudx {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn serve_on_an_empty_folder_starts_embedded_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    assert!(serve.first_line.starts_with("cloudx ") && serve.first_line.contains("listening on http://127.0.0.1:"));
    let health = reqwest::get(serve.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = reqwest::get(serve.url("/readyz")).await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"][0]["detail"], "sqlite");
    assert!(dir.path().join("cloudx-data/cloudx.db").is_file(), "data lives under ./cloudx-data");
    assert!(dir.path().join("cloudx-data/jwt-secret").is_file());
    serve.signal("TERM");
    assert!(serve.wait(Duration::from_secs(10)).success(), "SIGTERM exits 0");
}

#[tokio::test]
async fn prod_logs_are_json_lines_carrying_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let env = [
        ("CLOUDX_PROFILE", "prod"),
        ("CLOUDX_AUTH__JWT_SECRET", "0123456789abcdef0123456789abcdef-test-only"),
        ("RUST_LOG", "info,cloudx_http=debug"),
    ];
    let serve = Serve::start_logging_to(dir.path(), &env, std::fs::File::create(&log_path).unwrap());
    let client = reqwest::Client::new();
    let health = client.get(serve.url("/healthz")).header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(health.headers()["x-request-id"], "trace-me-42");
    serve.signal("TERM");
    assert!(serve.wait(Duration::from_secs(10)).success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let answered = lines
        .iter()
        .find(|l| l["message"] == "answered")
        .unwrap_or_else(|| panic!("no line for the request in:\n{log}"));
    assert_eq!(answered["request_id"], "trace-me-42");
    assert_eq!(answered["status"], 200);
    assert!(lines.iter().filter(|l| l["message"] != "answered").all(|l| l.get("request_id").is_none()));
}

#[tokio::test]
async fn sigterm_under_load_answers_every_accepted_request_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        let url = serve.url("/readyz");
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i)).await;
            // A request that gets no response at all was not accepted: refused after the listener
            // closed, or sent on a keep-alive connection the server closed as idle (the usual
            // HTTP/1.1 race, which clients retry). What must never happen is a response that
            // starts and is cut short.
            let response = client.get(url).send().await.ok()?;
            Some((response.status().as_u16(), response.text().await.is_ok()))
        }));
    }
    tokio::time::sleep(Duration::from_millis(80)).await;
    serve.signal("TERM");
    let mut answered = 0;
    for task in tasks {
        if let Some((status, complete)) = task.await.unwrap() {
            assert_eq!(status, 200);
            assert!(complete, "the body of an accepted request arrives whole");
            answered += 1;
        }
    }
    assert!(answered > 0);
    assert!(serve.wait(Duration::from_secs(10)).success());
}

#[test]
fn serve_reports_a_busy_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(cloudx(dir.path()).args(["serve", "--bind", &addr]));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")) && err.contains("--bind"), "{err}");
}

#[test]
fn config_check_prints_the_effective_configuration_redacted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cloudx.toml"), "[http]\nbind = \"127.0.0.1:9999\"\n").unwrap();
    let out = run(cloudx(dir.path()).args(["config", "check"]).env("CLOUDX_LLM__API_KEY", "sk-very-secret"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("# configuration is valid"), "{stdout}");
    assert!(stdout.contains("bind = \"127.0.0.1:9999\""), "./cloudx.toml is read: {stdout}");
    assert!(stdout.contains("api_key = \"<redacted>\""), "{stdout}");
    assert!(!stdout.contains("sk-very-secret"));
    assert!(!dir.path().join("cloudx-data").exists(), "config check starts nothing and creates nothing");
}

#[test]
fn config_check_lists_every_problem_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(cloudx(dir.path())
        .args(["config", "check"])
        .env("CLOUDX_PROFILE", "prod")
        .env("CLOUDX_HTTP__BIND", "everywhere")
        .env("CLOUDX_HTTP__BNID", "typo"));
    assert_eq!(out.status.code(), Some(78));
    let err = text(&out.stderr);
    assert!(err.starts_with("error: invalid configuration (3 problems):"), "{err}");
    assert!(err.contains("CLOUDX_HTTP__BNID: unknown environment variable"), "{err}");
    assert!(err.contains("http.bind: `everywhere` is not an address"), "{err}");
    assert!(err.contains("auth.jwt_secret: profile `prod` requires"), "{err}");
}

#[test]
fn an_explicit_config_file_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(cloudx(dir.path()).args(["--config", "missing.toml", "config", "check"]));
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr).contains("missing.toml: cannot read the configuration file"), "{}", text(&out.stderr));
}

#[test]
fn migrate_applies_then_reports_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(cloudx(dir.path()).args(["migrate", "--data-dir", "state"]));
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("applied 1 0001_instance") && text(&first.stdout).contains("applied 2 0002_auth"),
        "{}",
        text(&first.stdout)
    );
    let second = run(cloudx(dir.path()).args(["migrate", "--data-dir", "state"]));
    assert!(text(&second.stdout).contains("is up to date at schema version 10"), "{}", text(&second.stdout));
    assert!(dir.path().join("state/cloudx.db").is_file());
}

#[tokio::test]
async fn migrate_on_postgres() {
    let Some(pg) = cloudx_core::testing::TestPostgres::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = run(cloudx(dir.path()).arg("migrate").env("CLOUDX_DATABASE__URL", pg.url()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("applied 1 0001_instance")
            && stdout.contains("applied 2 0002_auth")
            && stdout.contains("(postgres)"),
        "{stdout}"
    );
    assert!(!stdout.contains("postgres@"), "the user name is not printed: {stdout}");
}

#[tokio::test]
async fn a_database_from_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run(cloudx(dir.path()).arg("migrate")).status.success());
    let url = format!("sqlite://{}", dir.path().join("cloudx-data/cloudx.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'future', 1, x'00', 0)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let out = run(cloudx(dir.path()).args(["serve", "--bind", "127.0.0.1:0"]));
    assert_eq!(out.status.code(), Some(65));
    let err = text(&out.stderr);
    assert!(err.contains("schema is at version 9999") && err.contains("newer than this cloudx"), "{err}");
}

/// Runs `cloudx` with `stdin` as its standard input.
fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

const ADMIN_PASSWORD: &str = "Cli-Admin-Passphrase-3141\n";

#[tokio::test]
async fn user_and_audit_commands_manage_the_local_instance() {
    let dir = tempfile::tempdir().unwrap();
    let add =
        |args: &[&str], password: &str| run_with_stdin(cloudx(dir.path()).args(["user", "add"]).args(args), password);
    let out = add(&["root@example.com", "--admin", "--password-stdin"], ADMIN_PASSWORD);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("created root@example.com (admin)"), "{}", text(&out.stdout));
    let out = add(&["bob@example.com", "--name", "Bob", "--password-stdin"], "Bobs-Own-Passphrase-2718\n");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Bad input is named and changes nothing.
    let out = add(&["bob@example.com", "--password-stdin"], "Another-Passphrase-1618\n");
    assert_eq!(out.status.code(), Some(65), "a taken email is a conflict: {}", text(&out.stderr));
    let out = add(&["carol@example.com", "--password-stdin"], "password\n");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("password"), "{}", text(&out.stderr));
    let out = run(cloudx(dir.path()).args(["user", "add", "dave@example.com"]).stdin(Stdio::null()));
    assert!(text(&out.stderr).contains("--password-stdin"), "no terminal: {}", text(&out.stderr));

    let out = run(cloudx(dir.path()).args(["user", "disable", "BOB@example.com"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(cloudx(dir.path()).args(["user", "set-role", "bob@example.com", "admin"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(cloudx(dir.path()).args(["user", "set-role", "bob@example.com", "owner"]));
    assert!(text(&out.stderr).contains("`owner` is not a role"), "{}", text(&out.stderr));
    let out = run(cloudx(dir.path()).args(["user", "enable", "nobody@example.com"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no account has the email or id `nobody@example.com`"));

    let out = run(cloudx(dir.path()).args(["user", "list", "--json"]));
    let users: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
    let bob = users.as_array().unwrap().iter().find(|u| u["email"] == "bob@example.com").unwrap();
    assert_eq!((bob["role"].as_str(), bob["disabled"].as_bool()), (Some("admin"), Some(true)));
    let table = text(&run(cloudx(dir.path()).args(["user", "list"])).stdout);
    assert!(table.starts_with("ID") && table.contains("bob@example.com") && table.contains("disabled"), "{table}");

    let log = text(&run(cloudx(dir.path()).args(["audit", "list"])).stdout);
    for action in ["user_add", "user_disable", "role_change"] {
        assert!(log.contains(action), "{action} in\n{log}");
    }
    let out = run(cloudx(dir.path()).args(["audit", "verify"]));
    assert!(out.status.success() && text(&out.stdout).contains("intact"), "{}", text(&out.stdout));

    // Edit one row behind cloudx's back: verify names it and exits 65.
    let db = dir.path().join("cloudx-data/cloudx.db");
    let mut conn =
        <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    // The table refuses updates; someone with the file can drop that guard, not the chain.
    sqlx::query("DROP TRIGGER audit_log_no_update").execute(&mut conn).await.unwrap();
    sqlx::query("UPDATE audit_log SET outcome = 'failure' WHERE seq = 2").execute(&mut conn).await.unwrap();
    sqlx::Connection::close(conn).await.unwrap();
    let out = run(cloudx(dir.path()).args(["audit", "verify"]));
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("row 2 does not match"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn login_stores_a_private_session_that_apikey_commands_use_and_refresh() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    add_local_admin(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let cli = |args: &[&str]| {
        let mut cmd = cloudx(dir.path());
        cmd.env("HOME", &home).args(args);
        cmd
    };

    let out = run_with_stdin(
        &mut cli(&["login", "--url", &serve.url(""), "--email", "root@example.com", "--password-stdin"]),
        "Wrong-Passphrase-000\n",
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("the email or the password is wrong"), "{}", text(&out.stderr));
    let out = run_with_stdin(
        &mut cli(&["login", "--url", &serve.url(""), "--email", "root@example.com", "--password-stdin"]),
        ADMIN_PASSWORD,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stored = home.join(".config/cloudx/credentials.json");
    assert_eq!(std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(stored.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(!text(&out.stdout).contains("cxr_"), "the tokens are not printed");

    let out = run(&mut cli(&["apikey", "create", "ci", "--scopes", "read", "--expires-in", "30d", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let me = |credential: String| {
        let url = serve.url("/api/v1/auth/me");
        async move { reqwest::Client::new().get(url).bearer_auth(credential).send().await.unwrap().status() }
    };
    assert_eq!(me(secret.clone()).await, 200);

    // An expired (here: spoiled) access token is refreshed, and the rotated tokens are stored.
    let mut session: serde_json::Value = serde_json::from_slice(&std::fs::read(&stored).unwrap()).unwrap();
    let old_refresh = session["refresh_token"].clone();
    session["access_token"] = "spoiled".into();
    std::fs::write(&stored, serde_json::to_vec(&session).unwrap()).unwrap();
    let out = run(&mut cli(&["apikey", "list"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ci") && text(&out.stdout).contains("read"), "{}", text(&out.stdout));
    let session: serde_json::Value = serde_json::from_slice(&std::fs::read(&stored).unwrap()).unwrap();
    assert_ne!(session["refresh_token"], old_refresh, "the rotated refresh token was stored");
    assert_eq!(std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777, 0o600);

    let out = run(&mut cli(&["apikey", "revoke", created["id"].as_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(me(secret).await, 401);

    let access = session["access_token"].as_str().unwrap().to_owned();
    let out = run(&mut cli(&["logout"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!stored.exists());
    assert_eq!(me(access).await, 401, "the session ended at the daemon too");
    let out = run(&mut cli(&["apikey", "list"]));
    assert!(text(&out.stderr).contains("not signed in"), "{}", text(&out.stderr));
    serve.signal("TERM");
    assert!(serve.wait(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn projects_files_push_and_pull_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    add_local_admin(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let cli = |args: &[&str]| {
        let mut cmd = cloudx(dir.path());
        cmd.env("HOME", &home).args(args);
        cmd
    };
    let ok = |args: &[&str]| {
        let out = run(&mut cli(args));
        assert!(out.status.success(), "cloudx {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    };
    let out = run_with_stdin(
        &mut cli(&["login", "--url", &serve.url(""), "--email", "root@example.com", "--password-stdin"]),
        ADMIN_PASSWORD,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A project from the python template: pulled, its test passes offline.
    assert!(ok(&["project", "create", "Demo App", "--template", "python"]).contains("created project demo-app"));
    assert!(ok(&["project", "list"]).contains("demo-app"));
    let work = dir.path().join("work");
    let pulled = ok(&["pull", "demo-app", work.to_str().unwrap()]);
    assert!(pulled.contains("fetched hello/__init__.py") && pulled.contains("in step"), "{pulled}");
    let test = Command::new("python3").args(["-m", "unittest", "-q"]).current_dir(&work).output().unwrap();
    assert!(test.status.success(), "the template's test runs: {}", text(&test.stderr));
    assert!(ok(&["pull", "demo-app", work.to_str().unwrap()]).contains("0 files fetched"), "nothing changed");

    // Local edits go up; only what changed is sent.
    std::fs::write(work.join("hello/__init__.py"), "def greet(name):\n    return f'Hi, {name}!'\n").unwrap();
    std::fs::write(work.join("notes.txt"), "new file\n").unwrap();
    std::fs::remove_file(work.join("pyproject.toml")).unwrap();
    let pushed = ok(&["push", work.to_str().unwrap(), "demo-app"]);
    assert!(pushed.contains("sent hello/__init__.py") && pushed.contains("sent notes.txt"), "{pushed}");
    assert!(pushed.contains("deleted pyproject.toml in the project") && pushed.contains("3 files sent"), "{pushed}");
    assert!(ok(&["file", "ls", "demo-app", "-r"]).contains("notes.txt"));

    // A local name the project cannot hold is reported, and the rest of the state is kept.
    std::fs::write(work.join("bad\u{1}name"), "x").unwrap();
    let out = run(&mut cli(&["push", work.to_str().unwrap(), "demo-app"]));
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("cannot be sent") && text(&out.stdout).contains("U+0001"),
        "{}",
        text(&out.stdout)
    );
    std::fs::remove_file(work.join("bad\u{1}name")).unwrap();
    assert!(ok(&["push", work.to_str().unwrap(), "demo-app"]).contains("0 files sent"), "nothing else changed");

    // The same file changed on both sides: a conflict, reported, neither side overwritten.
    let upstream = dir.path().join("upstream.txt");
    std::fs::write(&upstream, "changed in the project\n").unwrap();
    ok(&["file", "put", "demo-app", upstream.to_str().unwrap(), "notes.txt", "-m", "edited upstream"]);
    std::fs::write(work.join("notes.txt"), "changed here\n").unwrap();
    let out = run(&mut cli(&["push", work.to_str().unwrap(), "demo-app"]));
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("notes.txt: changed here and in the project"), "{}", text(&out.stdout));
    let out = run(&mut cli(&["pull", "demo-app", work.to_str().unwrap()]));
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(work.join("notes.txt")).unwrap(), "changed here\n");
    let fetched = dir.path().join("fetched.txt");
    ok(&["file", "get", "demo-app", "notes.txt", fetched.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&fetched).unwrap(), "changed in the project\n");

    // History, delete, restore, move, versions.
    let log = ok(&["file", "log", "demo-app", "notes.txt"]);
    assert!(log.contains("edited upstream"), "{log}");
    ok(&["file", "rm", "demo-app", "notes.txt"]);
    ok(&["file", "restore", "demo-app", "notes.txt"]);
    ok(&["file", "mv", "demo-app", "notes.txt", "docs/notes.txt"]);
    let listing = ok(&["file", "ls", "demo-app"]);
    assert!(listing.contains("docs/") && !listing.contains("notes.txt"), "{listing}");
    let old = dir.path().join("old.toml");
    ok(&["file", "get", "demo-app", "pyproject.toml", old.to_str().unwrap(), "--at", "1"]);
    assert!(std::fs::read_to_string(&old).unwrap().contains("[project]"));
    let out = run(&mut cli(&["file", "get", "demo-app", "../etc/passwd", "-"]));
    assert!(!out.status.success() && text(&out.stderr).contains("`..`"), "{}", text(&out.stderr));

    // Sharing, deletion and restore.
    let out = run(&mut cli(&["project", "share", "demo-app", "nobody@example.com", "viewer"]));
    assert!(!out.status.success() && text(&out.stderr).contains("nobody@example.com"));
    assert!(ok(&["project", "show", "demo-app"]).contains("root@example.com"));
    ok(&["project", "rm", "demo-app"]);
    assert!(!ok(&["project", "list"]).contains("demo-app"));
    assert!(ok(&["project", "restore", "demo-app"]).contains("restored demo-app"));
    serve.signal("TERM");
    assert!(serve.wait(Duration::from_secs(10)).success());

    // Garbage collection on the local instance: nothing referenced goes.
    let gc = text(&run(cloudx(dir.path()).args(["storage", "gc"])).stdout);
    assert!(gc.contains("deleted 0"), "{gc}");
}

#[tokio::test]
async fn without_a_login_projects_and_files_act_on_the_local_instance() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    add_local_admin(dir.path());
    let cli = |args: &[&str]| {
        let mut cmd = cloudx(dir.path());
        cmd.env("HOME", &home).args(args);
        run(&mut cmd)
    };
    let out = cli(&["project", "create", "Local Work", "--template", "rust"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--owner EMAIL"), "{}", text(&out.stderr));
    let out = cli(&["project", "create", "Local Work", "--template", "rust", "--owner", "root@example.com"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&cli(&["project", "list"]).stdout).contains("local-work"));
    let note = dir.path().join("note.txt");
    std::fs::write(&note, "kept locally\n").unwrap();
    assert!(cli(&["file", "put", "local-work", note.to_str().unwrap(), "docs/note.txt"]).status.success());
    let work = dir.path().join("work");
    let out = cli(&["pull", "local-work", work.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(work.join("docs/note.txt")).unwrap(), "kept locally\n");
    assert!(work.join("src/lib.rs").exists());
    // The writes are the local operator's, in the audit log of the instance.
    let audit = text(&cli(&["audit", "list"]).stdout);
    assert!(audit.contains("file_write") && audit.contains("project_create"), "{audit}");
}

#[test]
fn run_streams_output_and_exits_with_the_commands_code() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(cloudx(dir.path()).args(["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]));
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    // No database, no data folder.
    assert!(!dir.path().join("cloudx-data").exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let out = run(cloudx(dir.path()).args(["run", "--time", "300ms", "--", "sleep", "10"]));
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("wall-clock limit of 300ms"), "{}", text(&out.stderr));

    let out = run(cloudx(dir.path()).args(["run", "--", "no-such-tool"]));
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("command not found in the sandbox: `no-such-tool`"), "{}", text(&out.stderr));

    let out = run(cloudx(dir.path()).args(["run", "--", "sh", "-c", "kill -KILL $$"]));
    assert_eq!(out.status.code(), Some(128 + 9));

    let out = run(cloudx(dir.path()).args(["run", "--net", "internet", "--", "true"]));
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("unknown network mode `internet`"), "{}", text(&out.stderr));
}

#[test]
fn run_on_a_folder_with_env_and_piped_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("input.txt"), "from the host\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = cloudx(dir.path());
    cmd.args([
        "run",
        "--dir",
        "work",
        "-e",
        "NAME=sandbox",
        "--",
        "sh",
        "-c",
        "cat input.txt; cat; echo \"hi $NAME\" > out.txt",
    ]);
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from the host\npiped\n");
    assert_eq!(std::fs::read_to_string(work.join("out.txt")).unwrap(), "hi sandbox\n");
}

#[test]
fn run_explain_and_sandbox_check_say_what_protects_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(cloudx(dir.path()).args(["run", "--explain", "--mem", "256M", "--pids", "32", "--", "true"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let explained = text(&out.stderr);
    for needle in [
        "isolation of this run",
        "user, pid, mount, network, ipc, uts, cgroup",
        "setgroups denied",
        "landlock",
        "io_uring_setup",
        "256.0 MiB",
        "process limit  32",
        "/usr: bind of /usr, read-only",
    ] {
        assert!(explained.contains(needle), "{needle} missing from:\n{explained}");
    }
    let out = run(cloudx(dir.path()).args(["run", "--json", "--", "echo", "hi"]));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["stdout"], "hi\n");
    assert_eq!(outcome["exit_code"], 0);
    assert_eq!(outcome["isolation"]["capabilities"], "none");

    let out = run(cloudx(dir.path()).args(["sandbox", "check"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains("ok   user namespaces") && report.contains("the sandbox can run here"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_runs_jobs_and_stops_on_sigterm() {
    use cloudx_core::queue::{JobStatus, NewJob};
    let dir = tempfile::tempdir().unwrap();
    let bad = run(cloudx(dir.path()).args(["worker", "--kinds", "nope"]));
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("cloudx runs no job kind `nope`"), "{}", text(&bad.stderr));
    // A job submitted on the instance's database, run by a separate worker process.
    let config = cloudx_core::config::ConfigLoader::new()
        .env([("CLOUDX_DATA_DIR", dir.path().join("cloudx-data").to_str().unwrap())])
        .load()
        .unwrap();
    add_local_admin(dir.path());
    let cx = cloudx_core::Cloudx::connect(config).await.unwrap();
    let system = cloudx_core::Principal::System;
    let client = cloudx_core::auth::audit::Client::default();
    let admin = cx.auth().principal_for(&system, "root@example.com").await.unwrap();
    let project = cx
        .storage()
        .create_project(&admin, &client, cloudx_core::storage::NewProject { name: "w".into(), ..Default::default() })
        .await
        .unwrap();
    let mut worker = cloudx(dir.path()).args(["worker", "--concurrency", "2"]).stderr(Stdio::null()).spawn().unwrap();
    let (job, _) = cx
        .submit_job(
            &admin,
            &client,
            NewJob {
                project: Some(project.id),
                ..NewJob::new("sandbox_exec", serde_json::json!({"argv": ["echo", "from the worker"]}))
            },
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let done = loop {
        let job = cx.queue().get(job.id).await.unwrap();
        if job.status.is_finished() {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "the worker did not run the job: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(done.result.unwrap()["outcome"]["stdout"], "from the worker\n");
    assert!(Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap().success());
    let status = worker.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    cx.close().await;
}

/// `cloudx worker --metrics-bind`: the worker process serves `/metrics` (its own job metrics,
/// the queue's gauges, the process's) on the address it prints, and stops with the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_serves_metrics_when_asked() {
    use cloudx_core::queue::{JobStatus, NewJob};
    let dir = tempfile::tempdir().unwrap();
    let bad = run(cloudx(dir.path()).args(["worker", "--metrics-bind", "localhost"]));
    assert_eq!(bad.status.code(), Some(78), "a configuration error");
    assert!(text(&bad.stderr).contains("worker.metrics_bind"), "{}", text(&bad.stderr));

    let mut worker = cloudx(dir.path())
        .args(["worker", "--metrics-bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let first_line = lines.next().expect("the worker prints where it serves metrics").unwrap();
    let url = first_line.rsplit(' ').next().unwrap().to_owned();
    assert!(first_line.starts_with("cloudx worker metrics on http://127.0.0.1:") && url.ends_with("/metrics"));
    std::thread::spawn(move || lines.for_each(drop));

    // A job it takes and fails for good (it names no project): counted by this process.
    let config = cloudx_core::config::ConfigLoader::new()
        .env([("CLOUDX_DATA_DIR", dir.path().join("cloudx-data").to_str().unwrap())])
        .load()
        .unwrap();
    let cx = cloudx_core::Cloudx::connect(config).await.unwrap();
    let job = cx.queue().submit(uuid::Uuid::nil(), NewJob::new("sandbox_exec", serde_json::json!({}))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cx.queue().get(job.id).await.unwrap().status.is_finished() {
        assert!(Instant::now() < deadline, "the worker did not take the job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cx.queue().get(job.id).await.unwrap().status, JobStatus::Dead);
    // The gauges are read at most once a second: ask until they show the worker and the job.
    let metrics = loop {
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 200);
        let metrics = r.text().await.unwrap();
        if metrics.contains("cloudx_jobs{kind=\"sandbox_exec\",status=\"dead\"} 1") {
            break metrics;
        }
        assert!(Instant::now() < deadline, "no dead job in\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for needle in [
        "cloudx_workers{health=\"alive\"} 1",
        "cloudx_job_attempts_total{kind=\"sandbox_exec\"} 1",
        "cloudx_jobs_finished_total{kind=\"sandbox_exec\",outcome=\"failed\"} 1",
        "cloudx_job_duration_seconds_count{kind=\"sandbox_exec\",outcome=\"failed\"} 1",
        "cloudx_job_wait_seconds_count{kind=\"sandbox_exec\"} 1",
        "cloudx_build_info{version=",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    // Only /metrics is served there.
    assert_eq!(reqwest::get(url.replace("/metrics", "/api/v1/jobs")).await.unwrap().status(), 404);
    assert!(Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap().success());
    assert!(worker.wait().unwrap().success(), "SIGTERM exits 0");
    assert!(reqwest::get(&url).await.is_err(), "the listener closed with the worker");
    cx.close().await;
}

/// Runs `cmd` and checks that it succeeded; its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// The `id` of the JSON object `cloudx ... --json` printed.
fn json_id(stdout: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    value["id"].as_str().unwrap_or_else(|| panic!("no id in {value}")).to_owned()
}

#[test]
fn job_commands_on_the_local_instance_wait_for_a_worker_process() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let cli = |args: &[&str]| {
        let mut cmd = cloudx(dir.path());
        cmd.env("HOME", &home).args(["--data-dir", "state"]).args(args);
        cmd
    };
    let out = run_with_stdin(&mut cli(&["user", "add", "root@example.com", "--password-stdin"]), ADMIN_PASSWORD);
    assert!(out.status.success(), "{}", text(&out.stderr));
    ok(&mut cli(&["project", "create", "Batch", "--owner", "root@example.com"]));
    let echo = r#"{"argv":["sh","-c","echo hi; echo oops >&2"]}"#;

    // No worker runs on this data folder: waiting says so at once instead of hanging.
    let started = Instant::now();
    let out = run(&mut cli(&["job", "submit", "sandbox_exec", "--project", "batch", "--payload", echo, "--wait"]));
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(5), "it did not wait: {:?}", started.elapsed());
    let err = text(&out.stderr);
    assert!(
        err.contains("no worker that runs `sandbox_exec` jobs is running on this data folder")
            && err.contains("`cloudx worker --data-dir state`"),
        "{err}"
    );
    let first = text(&out.stdout).split_whitespace().nth(2).unwrap().to_owned();
    assert!(ok(&mut cli(&["job", "get", &first])).contains("status:     queued"));
    let out = run(&mut cli(&["job", "logs", "-f", &first]));
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));

    // Bad input is named.
    let out = run(&mut cli(&["job", "submit", "sandbox_exec", "--project", "batch", "--payload", r#"{"argv": [}"#]));
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--payload is not JSON: expected value at line 1 column 11"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&mut cli(&["job", "submit", "sandbox_exec", "--payload", echo]));
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--project: a job belongs to a project"), "{}", text(&out.stderr));
    let out = run(&mut cli(&["job", "get", "01a22ff4-0000-7000-8000-000000000000"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no job 01a22ff4-0000-7000-8000-000000000000"), "{}", text(&out.stderr));

    // A worker process runs the queued job and the next ones.
    let mut worker = cloudx(dir.path()).args(["--data-dir", "state", "worker"]).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(&mut cli(&["job", "workers"])).contains("alive") {
        assert!(Instant::now() < deadline, "the worker never registered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run(&mut cli(&["job", "logs", "--follow", &first]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    // The job's stderr, without any log line of the CLI itself (a slow statement under load).
    let job_stderr: String = text(&out.stderr).lines().filter(|l| !is_log_line(l)).map(|l| format!("{l}\n")).collect();
    assert_eq!(job_stderr, "oops\n", "{}", text(&out.stderr));
    let shown = ok(&mut cli(&["job", "get", &first]));
    assert!(shown.contains("status:     succeeded") && shown.contains("attempts:   1 of 3"), "{shown}");
    let payload = dir.path().join("payload.json");
    std::fs::write(&payload, r#"{"argv":["echo","from stdin"]}"#).unwrap();
    let submit = ["job", "submit", "sandbox_exec", "--project", "batch", "--payload-file", "-", "--wait", "--json"];
    let waited = ok(cli(&submit).stdin(std::fs::File::open(&payload).unwrap()));
    let job: serde_json::Value = serde_json::from_str(&waited).unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(ok(&mut cli(&["job", "logs", job["id"].as_str().unwrap()])), "from stdin\n");
    assert_eq!(ok(&mut cli(&["job", "logs", job["id"].as_str().unwrap(), "--after", "1"])), "");
    let listed = ok(&mut cli(&["job", "ls", "--status", "succeeded", "--json"]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&listed).unwrap().as_array().unwrap().len(), 2, "{listed}");

    assert!(Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap().success());
    assert!(worker.wait().unwrap().success());
}

#[test]
fn job_commands_through_the_daemon_submit_follow_filter_cancel_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    add_local_admin(dir.path());
    let serve = Serve::start(dir.path(), &[]);
    let cli = |args: &[&str]| {
        let mut cmd = cloudx(dir.path());
        cmd.env("HOME", &home).args(args);
        cmd
    };
    let out = run_with_stdin(
        &mut cli(&["login", "--url", &serve.url(""), "--email", "root@example.com", "--password-stdin"]),
        ADMIN_PASSWORD,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    ok(&mut cli(&["project", "create", "Jobs"]));

    // The daemon's embedded worker runs it; `logs -f` streams its output and exits 0.
    let submit = |payload: &str, extra: &[&str]| {
        let mut args = vec!["job", "submit", "sandbox_exec", "--project", "jobs", "--payload", payload, "--json"];
        args.extend_from_slice(extra);
        json_id(&ok(&mut cli(&args)))
    };
    let echo = submit(r#"{"argv":["sh","-c","echo hi"]}"#, &[]);
    let out = run(&mut cli(&["job", "logs", "-f", &echo]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");

    // A job whose time has not come stays queued: filters, cancel, retry.
    let later = submit(r#"{"argv":["echo","later"]}"#, &["--run-at", "2099-01-01T00:00:00Z", "--priority", "-1"]);
    let ids = |status: &str| -> Vec<String> {
        let listed = ok(&mut cli(&["job", "ls", "--project", "jobs", "--status", status, "--json"]));
        let jobs: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
        jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids("queued"), [later.as_str()]);
    assert_eq!(ids("succeeded"), [echo.as_str()]);
    let table = ok(&mut cli(&["job", "ls", "--project", "jobs"]));
    assert!(table.starts_with("ID") && table.contains(&later) && table.contains(&echo), "{table}");
    let out = run(&mut cli(&["job", "ls", "--status", "finished"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown status `finished`"), "{}", text(&out.stderr));

    assert!(ok(&mut cli(&["job", "cancel", &later])).contains(&format!("cancelled job {later}")));
    assert_eq!(ids("cancelled"), [later.as_str()]);
    let out = run(&mut cli(&["job", "logs", "-f", &later]));
    assert_eq!(out.status.code(), Some(1), "a cancelled job did not succeed");
    assert!(text(&out.stderr).contains("ended cancelled"), "{}", text(&out.stderr));
    let out = run(&mut cli(&["job", "cancel", &echo]));
    assert_eq!(out.status.code(), Some(65), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("has already ended (succeeded)"), "{}", text(&out.stderr));
    assert!(ok(&mut cli(&["job", "retry", &later])).contains("queued again"));
    let out = run(&mut cli(&["job", "logs", "-f", &later]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "later\n");

    // A payload the handler cannot read: dead at once, and `logs -f` exits 1 saying why.
    let bad = submit(r#""not a run""#, &[]);
    let out = run(&mut cli(&["job", "logs", "-f", &bad]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("job {bad} ended dead: the payload is not a run")),
        "{}",
        text(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_str(&ok(&mut cli(&["job", "get", &bad, "--json"]))).unwrap();
    assert_eq!(shown["status"], "dead");

    let workers = ok(&mut cli(&["job", "workers"]));
    assert!(workers.contains("alive") && workers.contains("sandbox_exec"), "{workers}");
    serve.signal("TERM");
    assert!(serve.wait(Duration::from_secs(10)).success());
}

/// Whether `line` is one of the CLI's own log lines (`2026-…Z  WARN target: …`).
fn is_log_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let (Some(at), Some(level)) = (words.next(), words.next()) else { return false };
    at.len() > 20
        && at.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && at.ends_with('Z')
        && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
}

/// Signs in as the administrator made by [`add_local_admin`] over HTTP; answers the token.
async fn http_login(serve: &Serve) -> String {
    let password = ADMIN_PASSWORD.trim_end();
    let r: serde_json::Value = reqwest::Client::new()
        .post(serve.url("/api/v1/auth/login"))
        .json(&serde_json::json!({"email": "root@example.com", "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_agent_task_resumes_after_the_daemon_restarts() {
    use cloudx_testkit::{ScriptedLlm, Turn};
    // The first answer streams slowly and is interrupted by the restart; the task's job is
    // released on shutdown and taken again by the restarted daemon, which asks again.
    let llm = ScriptedLlm::start([
        Turn::text("thinking ".repeat(100)).chunks(100).delay(Duration::from_millis(100)),
        Turn::text("done after the restart"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    add_local_admin(dir.path());
    let base = llm.base_url();
    let env = [
        ("CLOUDX_LLM__BASE_URL", base.as_str()),
        ("CLOUDX_LLM__MODEL", "scripted-model"),
        ("CLOUDX_WORKER__GRACE", "1s"),
    ];
    let serve = Serve::start(dir.path(), &env);
    let token = http_login(&serve).await;
    let http = reqwest::Client::new();
    let call = |serve: &Serve, path: &str, body: Option<serde_json::Value>| {
        let req = match body {
            Some(b) => http.post(serve.url(path)).json(&b),
            None => http.get(serve.url(path)),
        };
        let req = req.bearer_auth(&token);
        async move {
            let r = req.send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let p = call(&serve, "/api/v1/projects", Some(serde_json::json!({"name": "restart"}))).await;
    let c = call(
        &serve,
        &format!("/api/v1/projects/{}/conversations", p["id"].as_str().unwrap()),
        Some(serde_json::json!({})),
    )
    .await;
    let c = c["id"].as_str().unwrap().to_owned();
    let task =
        call(&serve, &format!("/api/v1/conversations/{c}/messages"), Some(serde_json::json!({"text": "think"}))).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = call(&serve, &format!("/api/v1/conversations/{c}/events?after=0&wait=1"), None).await;
        if page["events"].as_array().unwrap().iter().any(|e| e["kind"] == "delta") {
            break;
        }
        assert!(Instant::now() < deadline, "the answer never started streaming");
    }
    serve.signal("TERM");
    assert!(serve.wait(Duration::from_secs(15)).success());

    let serve = Serve::start(dir.path(), &env);
    let deadline = Instant::now() + Duration::from_secs(30);
    let task = loop {
        let t = call(&serve, &format!("/api/v1/tasks/{id}"), None).await;
        if matches!(t["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            break t;
        }
        assert!(Instant::now() < deadline, "the task hangs: {t:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (task["status"].as_str(), task["answer"].as_str()),
        (Some("succeeded"), Some("done after the restart")),
        "{task:#}"
    );
    assert_eq!(llm.requests().len(), 2);
    let page = call(&serve, &format!("/api/v1/conversations/{c}/events?after=0"), None).await;
    let statuses: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "status")
        .map(|e| e["data"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["queued", "running", "queued", "running", "succeeded"], "{page:#}");
    serve.signal("TERM");
    assert!(serve.wait(Duration::from_secs(10)).success());
}

#[test]
fn task_commands_through_the_daemon_list_show_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    add_local_admin(dir.path());
    // No worker: a task stays queued.
    let serve = Serve::start(dir.path(), &[("CLOUDX_WORKER__EMBEDDED", "false")]);
    let cli = |args: &[&str]| {
        let mut cmd = cloudx(dir.path());
        cmd.env("HOME", &home).args(args);
        cmd
    };
    let out = run_with_stdin(
        &mut cli(&["login", "--url", &serve.url(""), "--email", "root@example.com", "--password-stdin"]),
        ADMIN_PASSWORD,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    ok(&mut cli(&["project", "create", "Talk"]));

    // Nobody runs `codegen` jobs there: `chat` says so instead of waiting for ever.
    let out = run(&mut cli(&["chat", "talk", "add a README"]));
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("no worker that runs `codegen` jobs"), "{err}");
    let task = err.lines().find_map(|l| l.split_once(", task ")).map(|(_, t)| t.trim().to_owned()).expect(&err);

    let table = ok(&mut cli(&["task", "ls"]));
    assert!(table.starts_with("ID") && table.contains(&task) && table.contains("queued"), "{table}");
    assert!(table.contains("add a README"), "{table}");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&mut cli(&["task", "ls", "--project", "talk", "--status", "queued", "--json"])))
            .unwrap();
    assert_eq!(listed[0]["id"], task.as_str());
    let shown = ok(&mut cli(&["task", "show", &task]));
    assert!(shown.contains("status:       queued") && shown.contains("  add a README"), "{shown}");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&mut cli(&["task", "show", &task, "--transcript", "--json"]))).unwrap();
    assert_eq!(
        (shown["task"]["status"].as_str(), shown["transcript"].as_array().map(Vec::len)),
        (Some("queued"), Some(0))
    );
    let out = run(&mut cli(&["task", "ls", "--status", "done"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown status `done`"), "{}", text(&out.stderr));

    assert!(ok(&mut cli(&["task", "cancel", &task])).contains(&format!("cancelled task {task}")));
    let shown = ok(&mut cli(&["task", "show", &task]));
    assert!(
        shown.contains("status:       cancelled") && shown.contains("reason:       cancelled before it started"),
        "{shown}"
    );
    let out = run(&mut cli(&["task", "show", "01a22ff4-0000-7000-8000-000000000000"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no task"), "{}", text(&out.stderr));
    serve.signal("TERM");
    assert!(serve.wait(Duration::from_secs(10)).success());
}
