//! The peer of the `/healthz` benchmark: a bare axum hello-world on the same runtime and profile.
//!
//! Usage: `bare-axum 127.0.0.1:PORT`

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let app = Router::new().route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
