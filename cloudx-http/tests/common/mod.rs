//! The daemon on a real socket, shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use cloudx_core::Cloudx;
use cloudx_core::config::ConfigLoader;
use cloudx_http::{App, AppState, Server};
use tokio::sync::oneshot;

pub struct Daemon {
    pub addr: SocketAddr,
    pub cx: Cloudx,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with(env, |router| router).await
    }

    /// Starts a daemon on a random port, with `extra` applied to the router (for test routes).
    pub async fn start_with(env: &[(&str, &str)], extra: impl FnOnce(axum::Router) -> axum::Router) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap().to_owned();
        let mut vars = vec![("CLOUDX_DATA_DIR", data_dir.as_str()), ("CLOUDX_HTTP__BIND", "127.0.0.1:0")];
        vars.extend_from_slice(env);
        let config = ConfigLoader::new().env(vars).load().unwrap();
        let cx = Cloudx::connect(config.clone()).await.unwrap();
        let app = App::new(extra(cloudx_http::router(AppState::new(cx.clone()))), &config.http);
        let server = Server::bind(app, &config.http).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let done = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Self { addr, cx, stop: Some(stop), done, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(self.url(path)).await.unwrap()
    }

    pub async fn stop(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap()
    }
}

pub async fn problem(response: reqwest::Response) -> serde_json::Value {
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], request_id, "the problem carries the request id of the header");
    assert_eq!(body["type"], "about:blank");
    body
}

/// The password of the accounts the tests make.
pub const PASSWORD: &str = "Correct-Horse-Battery-7781";

/// Registers `email` and signs in; answers the access token and the account's id.
pub async fn sign_up(d: &Daemon, email: &str) -> (String, String) {
    let http = reqwest::Client::new();
    let body = serde_json::json!({"email": email, "password": PASSWORD, "display_name": email});
    let r = http.post(d.url("/api/v1/auth/register")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let user: serde_json::Value = r.json().await.unwrap();
    let tokens: serde_json::Value = http
        .post(d.url("/api/v1/auth/login"))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = user["id"].as_str().or(user["user"]["id"].as_str()).unwrap_or_default().to_owned();
    (tokens["access_token"].as_str().unwrap().to_owned(), id)
}
