//! Test helpers shared by the workspace's tests (feature `testing`; not part of the stable API).
//!
//! Tests that need Postgres read `CLOUDX_TEST_POSTGRES_URL` (an admin connection URL, set by the
//! README's test command) and get a fresh database each, dropped afterwards. Without the
//! variable such a test is skipped with a note on stderr; in CI (`CI=true`) it fails instead,
//! because there a missing service must never pass silently.

use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// A database created for one test and dropped when this value is dropped.
#[derive(Debug)]
pub struct TestPostgres {
    admin_url: String,
    name: String,
    url: String,
}

impl TestPostgres {
    /// Creates a fresh database, or returns `None` (with a note) when Postgres is not configured
    /// outside CI.
    ///
    /// # Panics
    /// In CI when `CLOUDX_TEST_POSTGRES_URL` is unset, and whenever the server cannot be used.
    pub async fn create() -> Option<Self> {
        let Ok(admin_url) = std::env::var("CLOUDX_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CLOUDX_TEST_POSTGRES_URL is not set: in CI the Postgres tests must run (use the README's test command)"
            );
            eprintln!(
                "note: CLOUDX_TEST_POSTGRES_URL is not set; skipping a Postgres test (the README's test command sets it)"
            );
            return None;
        };
        let name = format!("cloudx_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to CLOUDX_TEST_POSTGRES_URL: {e}"));
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database: {e}"));
        let _ = admin.close().await;
        let mut url = url::Url::parse(&admin_url).expect("CLOUDX_TEST_POSTGRES_URL is a URL");
        url.set_path(&name);
        Some(Self { admin_url, name, url: url.to_string() })
    }

    /// The URL of the test database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                tokio::time::timeout(Duration::from_secs(10), sqlx::query(AssertSqlSafe(sql)).execute(&mut admin))
                    .await
                    .ok()?
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("note: could not drop the test database {}", self.name);
        }
    }
}

/// The S3-compatible server the tests use: `(endpoint, bucket)` from `CLOUDX_TEST_S3_ENDPOINT`
/// and `CLOUDX_TEST_S3_BUCKET` (set by the README's test command, which starts moto's server on
/// loopback and creates the bucket), or `None` (with a note) outside CI.
///
/// # Panics
/// In CI when the variables are unset.
pub fn s3() -> Option<(String, String)> {
    match (std::env::var("CLOUDX_TEST_S3_ENDPOINT"), std::env::var("CLOUDX_TEST_S3_BUCKET")) {
        (Ok(endpoint), Ok(bucket)) => Some((endpoint, bucket)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CLOUDX_TEST_S3_ENDPOINT and CLOUDX_TEST_S3_BUCKET are not set: in CI the S3 tests must run (use the README's test command)"
            );
            eprintln!(
                "note: CLOUDX_TEST_S3_ENDPOINT is not set; skipping an S3 test (the README's test command sets it)"
            );
            None
        }
    }
}
