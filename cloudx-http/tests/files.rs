//! Projects and files over HTTP: raw uploads and downloads, ETags and preconditions, ranges,
//! limits before and during the body, safe download headers, and interrupted uploads.

mod common;

use common::{Daemon, problem};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

const PASSWORD: &str = "Correct-Horse-Battery-7781";
const NO_LIMITS: [(&str, &str); 3] = [
    ("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"),
    ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0"),
    ("CLOUDX_HTTP__AUTH_RATE_LIMIT_PER_IP", "0"),
];

struct Session {
    http: reqwest::Client,
    token: String,
}

impl Session {
    async fn new(d: &Daemon) -> Self {
        let http = reqwest::Client::new();
        let body = json!({"email": "ada@example.com", "password": PASSWORD, "display_name": "Ada"});
        let r = http.post(d.url("/api/v1/auth/register")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body = json!({"email": "ada@example.com", "password": PASSWORD});
        let tokens: Value =
            http.post(d.url("/api/v1/auth/login")).json(&body).send().await.unwrap().json().await.unwrap();
        Self { http, token: tokens["access_token"].as_str().unwrap().to_owned() }
    }

    fn req(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.token)
    }
}

async fn project(d: &Daemon, s: &Session) -> String {
    let r = s.req(reqwest::Method::POST, d.url("/api/v1/projects")).json(&json!({"name": "Web"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["slug"], "web");
    p["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn files_go_up_and_come_down_with_versions_etags_and_ranges() {
    let d = Daemon::start(&NO_LIMITS).await;
    let s = Session::new(&d).await;
    let p = project(&d, &s).await;
    let file = |path: &str| d.url(&format!("/api/v1/projects/{p}/files/{path}"));
    use reqwest::Method as M;

    let page = "<html><script>alert(1)</script></html>";
    let r = s.req(M::PUT, file("site/index.html?message=first")).body(page).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"v1\"");
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["version"].as_i64(), v["size"].as_u64(), v["message"].as_str()), (Some(1), Some(38), Some("first")));

    // Downloads are attachments that a browser never renders or sniffs.
    let r = s.req(M::GET, file("site/index.html")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/html");
    assert_eq!(h["content-disposition"], "attachment; filename=\"index.html\"");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert_eq!((h["etag"].to_str().unwrap(), h["accept-ranges"].to_str().unwrap()), ("\"v1\"", "bytes"));
    assert_eq!(r.text().await.unwrap(), page);

    let r = s.req(M::GET, file("site/index.html")).header("if-none-match", "\"v1\"").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = s.req(M::GET, file("site/index.html")).header("range", "bytes=6-13").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 6-13/38");
    assert_eq!(r.text().await.unwrap(), "<script>");
    // A resumed download of another version gets the whole file.
    let r = s
        .req(M::GET, file("site/index.html"))
        .header("range", "bytes=6-13")
        .header("if-range", "\"v0\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s.req(M::GET, file("site/index.html")).header("range", "bytes=100-").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */38");
    let refused = problem(r).await;
    assert_eq!((refused["status"].as_u64(), refused["code"].as_str()), (Some(416), Some("range_not_satisfiable")));

    // Preconditions: If-Match for the version read, If-None-Match: * for a new file.
    let r = s.req(M::PUT, file("site/index.html")).header("if-match", "\"v1\"").body("v2").send().await.unwrap();
    assert_eq!(r.headers()["etag"], "\"v2\"");
    let r = s.req(M::PUT, file("site/index.html")).header("if-match", "\"v1\"").body("lost").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("at version 2, not 1"));
    let r = s.req(M::PUT, file("site/index.html")).header("if-none-match", "*").body("x").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = s.req(M::GET, file("site/index.html?version=1")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), page);

    // Listing, history, move, delete, restore.
    s.req(M::PUT, file("site/a.css")).body("a{}").send().await.unwrap();
    let tree: Value =
        s.req(M::GET, d.url(&format!("/api/v1/projects/{p}/tree"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(tree["version"], 3);
    assert_eq!(
        (tree["entries"][0]["path"].as_str(), tree["entries"][0]["folder"].as_bool()),
        (Some("site"), Some(true))
    );
    let url = d.url(&format!("/api/v1/projects/{p}/tree?prefix=site/&recursive=true&version=1"));
    let tree: Value = s.req(M::GET, url).send().await.unwrap().json().await.unwrap();
    assert_eq!(tree["entries"].as_array().unwrap().len(), 1);
    let history: Value = s
        .req(M::GET, d.url(&format!("/api/v1/projects/{p}/history/site/index.html")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2);
    let r = s
        .req(M::POST, d.url(&format!("/api/v1/projects/{p}/move")))
        .json(&json!({"from": "site", "to": "www"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 4);
    let r = s.req(M::DELETE, file("www/a.css")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 5);
    assert_eq!(s.req(M::GET, file("www/a.css")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let r = s
        .req(M::POST, d.url(&format!("/api/v1/projects/{p}/restore/www/a.css")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.req(M::GET, file("www/a.css")).send().await.unwrap().text().await.unwrap(), "a{}");

    // A whole project down as one archive, and one up.
    let r = s.req(M::GET, d.url(&format!("/api/v1/projects/{p}/archive?format=zip"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/zip");
    assert_eq!(r.headers()["content-disposition"], "attachment; filename=\"web-v6.zip\"");
    let zip = r.bytes().await.unwrap();
    let url = d.url(&format!("/api/v1/projects/{p}/archive?format=zip&prefix=copy"));
    let r = s.req(M::POST, url).body(zip).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let up: Value = r.json().await.unwrap();
    assert_eq!((up["version"].as_i64(), up["files"].as_u64()), (Some(7), Some(2)));
    assert_eq!(s.req(M::GET, file("copy/www/a.css")).send().await.unwrap().text().await.unwrap(), "a{}");

    // Path rules are 400s naming the rule.
    for (path, rule) in [("a/..%2Fb", "`..`"), ("a%00b", "U+0000"), ("a//b", "empty segment")] {
        let r = s.req(M::PUT, file(path)).body("x").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        assert!(problem(r).await["detail"].as_str().unwrap().contains(rule), "{path}");
    }
    d.stop().await.unwrap();
}

#[tokio::test]
async fn upload_limits_apply_before_and_during_the_body() {
    let mut env = NO_LIMITS.to_vec();
    // File uploads are held to storage.max_file_size, not to the JSON body limit.
    env.extend([
        ("CLOUDX_HTTP__MAX_BODY_SIZE", "1KiB"),
        ("CLOUDX_STORAGE__MAX_FILE_SIZE", "64KiB"),
        ("CLOUDX_STORAGE__PROJECT_QUOTA_BYTES", "130KiB"),
    ]);
    let d = Daemon::start(&env).await;
    let s = Session::new(&d).await;
    let p = project(&d, &s).await;
    let file = |path: &str| d.url(&format!("/api/v1/projects/{p}/files/{path}"));
    use reqwest::Method as M;

    let r = s.req(M::PUT, file("ok.bin")).body(vec![7u8; 60 * 1024]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "larger than http.max_body_size, within storage.max_file_size");

    // Declared too large: refused before the body is read.
    let r = s.req(M::PUT, file("big.bin")).body(vec![7u8; 65 * 1024]).send().await.unwrap();
    let status = r.status();
    let detail = problem(r).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{detail}");
    assert!(detail["detail"].as_str().unwrap().contains("storage.max_file_size"));
    // Undeclared (chunked): refused once it passes the limit.
    let chunks = futures_util::stream::iter((0..80).map(|_| Ok::<_, std::io::Error>(vec![1u8; 1024])));
    let r = s.req(M::PUT, file("big.bin")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Past the quota: 507.
    let r = s.req(M::PUT, file("more.bin")).body(vec![8u8; 60 * 1024]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s.req(M::PUT, file("most.bin")).body(vec![9u8; 60 * 1024]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("quota"));
    d.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_no_version_and_no_temporary_file() {
    let d = Daemon::start(&NO_LIMITS).await;
    let s = Session::new(&d).await;
    let p = project(&d, &s).await;
    let mut stream = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let head = format!(
        "PUT /api/v1/projects/{p}/files/half.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1048576\r\n\r\n",
        s.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![3u8; 300 * 1024]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(stream);
    let tmp = d.dir.path().join("blobs/tmp");
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = std::fs::read_dir(&tmp).unwrap().count();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the temporary file of the interrupted upload is removed");
    let r = s.req(reqwest::Method::GET, d.url(&format!("/api/v1/projects/{p}/files/half.bin"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let project: Value = s
        .req(reqwest::Method::GET, d.url(&format!("/api/v1/projects/{p}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(project["version"], 0);
    d.stop().await.unwrap();
}
