//! Sandboxed runs on projects over HTTP: the project's policy within the instance's ceilings,
//! runs on the project's files, changes committed back as a version, and the audit log.

mod common;

use common::{Daemon, problem};
use reqwest::{Method as M, StatusCode};
use serde_json::{Value, json};

const PASSWORD: &str = "Correct-Horse-Battery-7781";

struct Session {
    http: reqwest::Client,
    token: String,
}

impl Session {
    async fn new(d: &Daemon, email: &str) -> Self {
        let http = reqwest::Client::new();
        let body = json!({"email": email, "password": PASSWORD, "display_name": email});
        let r = http.post(d.url("/api/v1/auth/register")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body = json!({"email": email, "password": PASSWORD});
        let tokens: Value =
            http.post(d.url("/api/v1/auth/login")).json(&body).send().await.unwrap().json().await.unwrap();
        Self { http, token: tokens["access_token"].as_str().unwrap().to_owned() }
    }

    async fn call(&self, d: &Daemon, method: M, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut req = self.http.request(method, d.url(path)).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    async fn ok(&self, d: &Daemon, method: M, path: &str, body: Option<Value>) -> Value {
        let r = self.call(d, method, path, body).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_use_the_projects_files_and_policy_and_commit_back() {
    let toolchain = tempfile::tempdir().unwrap();
    std::fs::create_dir(toolchain.path().join("tool")).unwrap();
    std::fs::write(toolchain.path().join("tool/VERSION"), "tool 1.2.3\n").unwrap();
    let bindable = toolchain.path().to_str().unwrap().to_owned();
    let d = Daemon::start(&[
        ("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"),
        ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0"),
        ("CLOUDX_SANDBOX__BINDABLE", &bindable),
        ("CLOUDX_SANDBOX__MAX_MEMORY", "1GiB"),
        ("CLOUDX_AUTH__REGISTRATION", "open"),
    ])
    .await;
    let admin = Session::new(&d, "admin@example.com").await;
    let ada = Session::new(&d, "ada@example.com").await;
    let p: Value = ada.ok(&d, M::POST, "/api/v1/projects", Some(json!({"name": "calc"}))).await;
    let p = p["id"].as_str().unwrap().to_owned();
    let put = |path: &str, body: &'static str| {
        let url = d.url(&format!("/api/v1/projects/{p}/files/{path}"));
        let req = ada.http.put(url).bearer_auth(&ada.token).body(body);
        async move { assert_eq!(req.send().await.unwrap().status(), StatusCode::OK) }
    };
    put("calc.py", "import sys\nprint(sum(int(a) for a in sys.argv[1:]))\n").await;
    put("data/numbers.txt", "1 2 3\n").await;

    // The policy: the defaults until an owner sets one, within the ceilings.
    let policy_path = format!("/api/v1/projects/{p}/policy");
    let policy = ada.ok(&d, M::GET, &policy_path, None).await;
    assert_eq!(policy, json!({"limits": {}, "network": "none", "binds": []}));
    let r = ada.call(&d, M::PUT, &policy_path, Some(json!({"limits": {"memory": 2u64 << 30}}))).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let detail = problem(r).await["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("sandbox.max_memory"), "{detail}");
    let r =
        ada.call(&d, M::PUT, &policy_path, Some(json!({"binds": [{"source": "/etc", "target": "/opt/etc"}]}))).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("sandbox.bindable"));
    let r = ada.call(&d, M::PUT, &policy_path, Some(json!({"limits": {"memory": "lots"}}))).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let wanted = json!({
        "limits": {"memory": 268435456, "wall_time": "20s"},
        "network": "loopback",
        "binds": [{"source": format!("{bindable}/tool"), "target": "/opt/tool"}],
    });
    let set = ada.ok(&d, M::PUT, &policy_path, Some(wanted.clone())).await;
    assert_eq!(ada.ok(&d, M::GET, &policy_path, None).await, set);

    // A run on the project's files, under the policy.
    let exec = format!("/api/v1/projects/{p}/exec");
    let run = ada
        .ok(&d, M::POST, &exec, Some(json!({"argv": ["sh", "-c", "python3 calc.py $(cat data/numbers.txt); cat /opt/tool/VERSION; ip -o link 2>/dev/null | wc -l"]})))
        .await;
    let outcome = &run["outcome"];
    assert_eq!(outcome["exit_code"], 0, "{run}");
    // The sum, the bound toolchain, and one network interface (loopback, up).
    assert_eq!(outcome["stdout"].as_str().unwrap().replace(' ', ""), "6\ntool1.2.3\n1\n", "{run}");
    assert_eq!(outcome["isolation"]["limits"]["memory"], 268435456);
    assert_eq!(outcome["isolation"]["limits"]["wall_time"], "20s");
    assert_eq!(outcome["isolation"]["network"], "loopback");
    assert_eq!(run["version"], 2);
    assert_eq!(run["commit"], Value::Null);

    // Limits above the project's are refused, naming the limit; lower ones apply.
    let r = ada.call(&d, M::POST, &exec, Some(json!({"argv": ["true"], "limits": {"memory": 512u64 << 20}}))).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("limits.memory"));
    let run =
        ada.ok(&d, M::POST, &exec, Some(json!({"argv": ["sleep", "30"], "limits": {"wall_time": "300ms"}}))).await;
    assert_eq!(
        (run["outcome"]["timed_out"].clone(), run["outcome"]["limit"].clone()),
        (json!(true), json!("wall_time"))
    );

    // Bad commands get errors that name the problem.
    let r = ada.call(&d, M::POST, &exec, Some(json!({"argv": []}))).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = ada.call(&d, M::POST, &exec, Some(json!({"argv": ["no-such-program"]}))).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("command not found"));

    // A run that changes files, committed back as a version by its caller; a symlink it
    // planted is not followed.
    let script = "python3 calc.py 40 2 > data/answer.txt && rm data/numbers.txt && ln -s /etc/passwd data/link";
    let run = ada
        .ok(&d, M::POST, &exec, Some(json!({"argv": ["sh", "-c", script], "commit": true, "message": "compute"})))
        .await;
    assert_eq!(run["outcome"]["exit_code"], 0, "{run}");
    let commit = &run["commit"];
    assert_eq!(commit["version"], 3, "{run}");
    assert_eq!(commit["written"], json!(["data/answer.txt"]));
    assert_eq!(commit["deleted"], json!(["data/numbers.txt"]));
    assert_eq!(commit["skipped"], json!(["data/link: a symlink, not a file"]));
    let r = ada.http.get(d.url(&format!("/api/v1/projects/{p}/files/data/answer.txt"))).bearer_auth(&ada.token);
    assert_eq!(r.send().await.unwrap().text().await.unwrap(), "42\n");
    let history = ada.ok(&d, M::GET, &format!("/api/v1/projects/{p}/history/data/answer.txt"), None).await;
    assert_eq!(history[0]["message"], "compute");

    // An older version, changed and committed: the paths it touches moved on, so nothing lands.
    let r = ada
        .call(&d, M::POST, &exec, Some(json!({"argv": ["rm", "data/numbers.txt"], "version": 2, "commit": true})))
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("since version 2"));

    // Every run is in the audit log, with the command and how it ended.
    let audit = admin.ok(&d, M::GET, "/api/v1/audit?limit=100", None).await;
    let runs: Vec<&Value> = audit.as_array().unwrap().iter().filter(|e| e["action"] == "sandbox_exec").collect();
    assert_eq!(runs.len(), 5, "{audit}");
    assert!(
        runs.iter().any(|e| e["detail"].as_str().unwrap().starts_with("sleep 30 on version 2: signal 9")),
        "{audit}"
    );
    assert!(audit.as_array().unwrap().iter().any(|e| e["action"] == "sandbox_policy"));
    assert!(audit.as_array().unwrap().iter().any(|e| e["action"] == "workspace_commit"));
    // Nothing of the runs' workspaces is left behind.
    let workspaces = d.dir.path().join("workspaces");
    for _ in 0..100 {
        if std::fs::read_dir(&workspaces).unwrap().next().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let left: Vec<_> = std::fs::read_dir(&workspaces).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    d.stop().await.unwrap();
}
