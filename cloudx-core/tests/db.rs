//! Migrations and connection settings on SQLite and on a real Postgres server.

use cloudx_core::config::ConfigLoader;
use cloudx_core::db::Database;
use cloudx_core::testing::TestPostgres;
use cloudx_core::{Cloudx, CloudxConfig, ErrorKind};

fn sqlite_config(dir: &tempfile::TempDir) -> CloudxConfig {
    CloudxConfig::embedded(dir.path().join("data"))
}

async fn postgres_config(pg: &TestPostgres, dir: &tempfile::TempDir) -> CloudxConfig {
    ConfigLoader::new()
        .env([("CLOUDX_DATABASE__URL", pg.url()), ("CLOUDX_DATA_DIR", dir.path().to_str().unwrap())])
        .load()
        .unwrap()
}

/// Runs the same migration contract on a database.
async fn migrations_apply_once_and_refuse_a_newer_schema(config: CloudxConfig) {
    let db = Database::connect(&config).await.unwrap();
    let first = db.migrate().await.unwrap();
    assert_eq!(first.applied.len() as i64, db.known_version(), "a fresh database gets every migration");
    assert_eq!(first.version, db.known_version());
    let second = db.migrate().await.unwrap();
    assert!(second.applied.is_empty(), "migrations are applied once: {second:?}");
    let instance = db.instance_id().await.unwrap();
    db.migrate().await.unwrap();
    assert_eq!(db.instance_id().await.unwrap(), instance, "the instance row is written once");

    // A newer cloudx migrated this database: refuse it, naming both versions, and change nothing.
    let newer = db.known_version() + 1000;
    let insert = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES ";
    let sql = match &db {
        Database::Sqlite(_) => format!("{insert} ({newer}, 'from the future', 1, x'00', 0)"),
        Database::Postgres(_) => format!("{insert} ({newer}, 'from the future', true, '\\x00', 0)"),
    };
    match &db {
        Database::Sqlite(pool) => sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await.map(drop),
        Database::Postgres(pool) => sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await.map(drop),
    }
    .unwrap();
    let err = db.migrate().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.message().contains(&format!("schema is at version {newer}")), "{}", err.message());
    assert!(err.message().contains(&format!("up to {}", db.known_version())), "{}", err.message());
    let err = Cloudx::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "the facade refuses it too");
    db.close().await;
}

#[tokio::test]
async fn sqlite_migrations() {
    let dir = tempfile::tempdir().unwrap();
    migrations_apply_once_and_refuse_a_newer_schema(sqlite_config(&dir)).await;
}

#[tokio::test]
async fn postgres_migrations() {
    let Some(pg) = TestPostgres::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    migrations_apply_once_and_refuse_a_newer_schema(postgres_config(&pg, &dir).await).await;
}

#[tokio::test]
async fn postgres_nodes_starting_at_once_migrate_once() {
    let Some(pg) = TestPostgres::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = postgres_config(&pg, &dir).await;
    let nodes = (0..4).map(|_| {
        let config = config.clone();
        tokio::spawn(async move { Cloudx::connect(config).await.map(|cx| cx.instance_id()) })
    });
    let mut ids = Vec::new();
    for node in nodes {
        ids.push(node.await.unwrap().unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every node sees the same instance");
    let cx = Cloudx::connect(config).await.unwrap();
    let known = cx.database().known_version();
    let Database::Postgres(pool) = cx.database().clone() else { panic!() };
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.unwrap();
    let instances: i64 = sqlx::query_scalar("SELECT count(*) FROM instance").fetch_one(&pool).await.unwrap();
    assert_eq!((rows, instances), (known, 1), "each migration applied once, one instance row");
    pool.close().await;
}

#[tokio::test]
async fn sqlite_is_opened_in_wal_mode_with_foreign_keys_and_a_busy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cx = Cloudx::connect(sqlite_config(&dir)).await.unwrap();
    let Database::Sqlite(pool) = cx.database() else { panic!("embedded default is SQLite") };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(pool).await.unwrap();
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(pool).await.unwrap();
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(pool).await.unwrap();
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(pool).await.unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(fk, 1);
    assert_eq!(busy, 5000);
    assert_eq!(sync, 1, "NORMAL");
    assert!(dir.path().join("data/cloudx.db").is_file());
    cx.close().await;
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable_and_names_the_host_not_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigLoader::new()
        .env([
            ("CLOUDX_DATABASE__URL", "postgres://u:hunter2@127.0.0.1:1/none"),
            ("CLOUDX_DATABASE__ACQUIRE_TIMEOUT", "1s"),
            ("CLOUDX_DATA_DIR", dir.path().to_str().unwrap()),
        ])
        .load()
        .unwrap();
    let err = Cloudx::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.message().contains("127.0.0.1:1"), "{}", err.message());
    assert!(!err.message().contains("hunter2"), "{}", err.message());
}

#[tokio::test]
async fn readiness_reports_a_closed_database() {
    let dir = tempfile::tempdir().unwrap();
    let cx = Cloudx::connect(sqlite_config(&dir)).await.unwrap();
    assert!(cx.readiness().await.is_ready());
    cx.close().await;
    let readiness = cx.readiness().await;
    assert!(!readiness.is_ready());
    assert_eq!(readiness.checks[0].name, "database");
    assert!(readiness.checks[0].detail.contains("does not answer"), "{}", readiness.checks[0].detail);
}

#[tokio::test]
async fn generated_jwt_secret_persists_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let first = Cloudx::connect(sqlite_config(&dir)).await.unwrap();
    let secret = first.jwt_secret().expose().to_owned();
    first.close().await;
    let second = Cloudx::connect(sqlite_config(&dir)).await.unwrap();
    assert_eq!(second.jwt_secret().expose(), secret);
    assert!(secret.len() >= 64);
}
