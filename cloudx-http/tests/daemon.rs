//! The daemon served on a real socket: ops endpoints, problem documents, headers, limits,
//! timeouts, the connection cap and graceful shutdown.

use std::time::{Duration, Instant};

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

use common::{Daemon, problem};

#[tokio::test]
async fn ops_endpoints_answer() {
    let d = Daemon::start(&[]).await;
    let health = d.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    let ready: serde_json::Value = d.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"][0]["name"], "database");
    assert_eq!(ready["instance_id"], d.cx.instance_id().to_string());

    let metrics = d.get("/metrics").await;
    assert!(metrics.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = metrics.text().await.unwrap();
    for needle in [
        "http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}",
        "http_request_duration_seconds_bucket{method=\"GET\",route=\"/readyz\",status=\"200\",le=\"0.005\"}",
        "http_requests_in_flight",
        "cloudx_build_info{version=",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    let doc: serde_json::Value = d.get("/api/v1/openapi.json").await.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], cloudx_core::VERSION);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} missing from the OpenAPI document");
    }
    d.stop().await.unwrap();
}

#[tokio::test]
async fn every_response_has_security_headers_and_a_request_id() {
    let d = Daemon::start(&[]).await;
    for path in ["/healthz", "/nope"] {
        let r = d.get(path).await;
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert!(h["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-request-id"].len(), 36, "a UUID");
    }
    // A caller's request id is kept, so logs can be joined across a proxy.
    let r = reqwest::Client::new().get(d.url("/healthz")).header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    // ...unless it is long or carries anything but plain characters: then a fresh one is made.
    for unusable in ["x".repeat(200), "two words".to_owned(), "quote\"d".to_owned()] {
        let r = reqwest::Client::new().get(d.url("/healthz")).header("x-request-id", &unusable).send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, unusable);
        assert_eq!(id.len(), 36, "a fresh UUID");
    }
    d.stop().await.unwrap();
}

#[tokio::test]
async fn errors_are_problem_documents_with_stable_codes() {
    let d = Daemon::start(&[("CLOUDX_HTTP__MAX_BODY_SIZE", "1KiB")]).await;
    let r = d.get("/api/v1/nothing-here").await;
    assert_eq!(r.status(), 404);
    let body = problem(r).await;
    assert_eq!(body["code"], "not_found");
    assert_eq!(body["status"], 404);

    let r = reqwest::Client::new().delete(d.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(problem(r).await["code"], "method_not_allowed");

    let r = reqwest::Client::new().post(d.url("/api/v1/anything")).body(vec![b'x'; 4096]).send().await.unwrap();
    assert_eq!(r.status(), 413, "a declared length over the limit is refused before the body is read");
    assert_eq!(problem(r).await["code"], "payload_too_large");
    d.stop().await.unwrap();
}

#[tokio::test]
async fn readyz_answers_503_naming_the_failed_check() {
    let d = Daemon::start(&[]).await;
    d.cx.close().await;
    let r = d.get("/readyz").await;
    assert_eq!(r.status(), 503);
    let body = problem(r).await;
    assert_eq!(body["code"], "unavailable");
    assert!(body["detail"].as_str().unwrap().starts_with("not ready: database:"), "{body}");
    assert_eq!(body["checks"][0]["ok"], false);
    assert_eq!(d.get("/healthz").await.status(), 200, "liveness does not depend on the database");
    d.stop().await.unwrap();
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let d = Daemon::start(&[("CLOUDX_HTTP__CORS_ORIGINS", "https://app.example.com")]).await;
    let client = reqwest::Client::new();
    let allowed = client.get(d.url("/healthz")).header("origin", "https://app.example.com").send().await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example.com");
    let other = client.get(d.url("/healthz")).header("origin", "https://evil.example").send().await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let preflight = client
        .request(reqwest::Method::OPTIONS, d.url("/api/v1/openapi.json"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "authorization, if-match")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let methods = preflight.headers()["access-control-allow-methods"].to_str().unwrap().to_owned();
    assert!(methods.contains("PUT"), "{methods}");
    d.stop().await.unwrap();
}

/// Reads until the peer closes the connection or `limit` passes; returns what was read and
/// whether the connection was closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

#[tokio::test]
async fn half_sent_request_is_dropped_after_the_header_timeout() {
    let d = Daemon::start(&[("CLOUDX_HTTP__HEADER_READ_TIMEOUT", "300ms")]).await;
    let mut slow = TcpStream::connect(d.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(closed, "the server must close a connection whose head never completes");
    assert!(started.elapsed() >= Duration::from_millis(250), "not before the timeout");

    // A connection that sends nothing at all is dropped too.
    let mut silent = TcpStream::connect(d.addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert!(closed, "an idle connection must not be held forever");

    // Meanwhile the server still answers others.
    assert_eq!(d.get("/healthz").await.status(), 200);
    d.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_request_head_is_refused() {
    let d = Daemon::start(&[("CLOUDX_HTTP__MAX_HEADER_SIZE", "8KiB")]).await;
    let r = reqwest::Client::new().get(d.url("/healthz")).header("x-big", "a".repeat(20_000)).send().await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => panic!("expected a 431 answer, got {e}"),
    }
    assert_eq!(d.get("/healthz").await.status(), 200);
    d.stop().await.unwrap();
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let d = Daemon::start(&[("CLOUDX_HTTP__MAX_CONNECTIONS", "1"), ("CLOUDX_HTTP__HEADER_READ_TIMEOUT", "1s")]).await;
    // The one slot is taken by a client that sends half a request.
    let mut hog = TcpStream::connect(d.addr).await.unwrap();
    hog.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut waiting = TcpStream::connect(d.addr).await.unwrap();
    waiting.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (early, _) = read_until_closed(&mut waiting, Duration::from_millis(300)).await;
    assert!(early.is_empty(), "a second connection must not be served while the cap is reached");
    // Once the hog is dropped by the header timeout, the waiting request is served.
    let (answer, closed) = read_until_closed(&mut waiting, Duration::from_secs(10)).await;
    assert!(closed);
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    d.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let d = Daemon::start_with(&[], |router| {
        router.route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(700)).await;
                "finished"
            }),
        )
    })
    .await;
    let url = d.url("/slow");
    let addr = d.addr;
    let in_flight = tokio::spawn(async move { reqwest::get(url).await?.text().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(d.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed once shutdown begins");
    assert_eq!(in_flight.await.unwrap().unwrap(), "finished", "the in-flight request completes");
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_gives_up_after_the_grace_period() {
    let d = Daemon::start_with(&[("CLOUDX_HTTP__SHUTDOWN_GRACE", "300ms")], |router| {
        router.route("/forever", get(std::future::pending::<&'static str>))
    })
    .await;
    let url = d.url("/forever");
    let stuck = tokio::spawn(async move { reqwest::get(url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    d.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown is bounded by the grace period");
    let outcome = tokio::time::timeout(Duration::from_secs(5), stuck).await.expect("the stuck request ends").unwrap();
    assert!(outcome.is_err(), "the connection still open after the grace period is closed");
}
