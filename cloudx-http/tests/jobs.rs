//! Jobs over HTTP: submission (idempotent), reading, listing with filters, events by offset,
//! cancelling, and an administrator's retry.

mod common;

use common::{Daemon, problem};
use reqwest::{Method as M, StatusCode};
use serde_json::{Value, json};

const PASSWORD: &str = "Correct-Horse-Battery-7781";

async fn session(d: &Daemon, email: &str) -> (reqwest::Client, String) {
    let http = reqwest::Client::new();
    let body = json!({"email": email, "password": PASSWORD, "display_name": email});
    assert_eq!(
        http.post(d.url("/api/v1/auth/register")).json(&body).send().await.unwrap().status(),
        StatusCode::CREATED
    );
    let tokens: Value = http
        .post(d.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (http, tokens["access_token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn jobs_are_submitted_once_read_listed_and_cancelled() {
    let d = Daemon::start(&[("CLOUDX_HTTP__RATE_LIMIT_PER_IP", "0"), ("CLOUDX_HTTP__RATE_LIMIT_PER_USER", "0")]).await;
    let (http, token) = session(&d, "ada@example.com").await;
    let call = |method: M, path: String, body: Option<Value>| {
        let mut req = http.request(method, d.url(&path)).bearer_auth(&token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send()
    };
    let p: Value =
        call(M::POST, "/api/v1/projects".into(), Some(json!({"name": "jobs"}))).await.unwrap().json().await.unwrap();
    let p = p["id"].as_str().unwrap().to_owned();

    // Submitted once, whatever the number of tries with the same key.
    let new =
        json!({"kind": "sandbox_exec", "project": p, "payload": {"argv": ["true"]}, "idempotency_key": "deploy-1"});
    let first = call(M::POST, "/api/v1/jobs".into(), Some(new.clone())).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = call(M::POST, "/api/v1/jobs".into(), Some(new)).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!((first["status"].as_str(), first["attempts"].as_u64()), (Some("queued"), Some(0)));
    let id = first["id"].as_str().unwrap().to_owned();

    // Bad input is named.
    let r = call(M::POST, "/api/v1/jobs".into(), Some(json!({"kind": "sandbox_exec"}))).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("project"));
    let r = call(M::POST, "/api/v1/jobs".into(), Some(json!({"kind": "k", "project": p, "max_attempts": 0})))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(problem(r).await["detail"].as_str().unwrap().contains("max_attempts"));

    // Read, listed by project and status, events by offset.
    let got: Value = call(M::GET, format!("/api/v1/jobs/{id}"), None).await.unwrap().json().await.unwrap();
    assert_eq!(got["kind"], "sandbox_exec");
    let queued: Value =
        call(M::GET, format!("/api/v1/jobs?project={p}&status=queued"), None).await.unwrap().json().await.unwrap();
    assert_eq!(queued.as_array().unwrap().len(), 1);
    let events: Value =
        call(M::GET, format!("/api/v1/jobs/{id}/events?after=0"), None).await.unwrap().json().await.unwrap();
    assert_eq!(events, json!([]));

    // Cancelled; a second cancel says so again; the list shows it.
    let cancelled: Value =
        call(M::POST, format!("/api/v1/jobs/{id}/cancel"), None).await.unwrap().json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let listed: Value =
        call(M::GET, format!("/api/v1/jobs?project={p}&status=cancelled"), None).await.unwrap().json().await.unwrap();
    assert_eq!(listed[0]["id"], first["id"]);
    // The first account is the administrator: it may queue it again.
    let retried: Value = call(M::POST, format!("/api/v1/jobs/{id}/retry"), None).await.unwrap().json().await.unwrap();
    assert_eq!(retried["status"], "queued");
    let r = call(M::POST, format!("/api/v1/jobs/{id}/retry"), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = call(M::GET, format!("/api/v1/jobs/{}", uuid::Uuid::now_v7()), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    d.stop().await.unwrap();
}
