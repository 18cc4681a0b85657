//! The peer of the file download benchmark: a bare axum file server (tower-http's `ServeDir`)
//! on the same runtime and profile as the daemon.
//!
//! Usage: `bare-files 127.0.0.1:PORT DIR` serves the files under DIR.

use axum::Router;
use tower_http::services::ServeDir;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8082".to_owned());
    let dir = args.next().expect("usage: bare-files ADDR DIR");
    let app = Router::new().fallback_service(ServeDir::new(dir));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
