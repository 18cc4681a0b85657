//! The SQL database: one sqlx pool (SQLite or Postgres) and the migrations of each dialect.
//!
//! Migrations are embedded in the binary with `include_str!` and applied through sqlx's
//! `Migrator` built at run time, so building cloudx needs no database and no `query!` macros.
//! A database migrated by a newer cloudx is refused before anything touches it.

use std::borrow::Cow;
use std::str::FromStr;

use sqlx::migrate::{Migrate, MigrateError, Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous as SqlxSynchronous};
use sqlx::{Connection as _, PgConnection, PgPool, SqlSafeStr, SqlitePool};
use uuid::Uuid;

use crate::config::{CloudxConfig, DatabaseTarget, SqliteSynchronous};
use crate::error::{Error, ErrorKind, Result};

/// One migration of one dialect: version, description, SQL.
type Embedded = (i64, &'static str, &'static str);

macro_rules! migrations {
    ($dialect:literal: $(($version:literal, $name:literal)),* $(,)?) => {
        &[$(($version, $name, include_str!(concat!("../migrations/", $dialect, "/", $name, ".sql")))),*]
    };
}

const SQLITE_MIGRATIONS: &[Embedded] = migrations!("sqlite": (1, "0001_instance"), (2, "0002_auth"), (3, "0003_tickets_and_deletions"), (4, "0004_projects"), (5, "0005_sandbox_policy"), (6, "0006_jobs"), (7, "0007_workers"), (8, "0008_jobs_ready_index"), (9, "0009_jobs_keys_callbacks"), (10, "0010_agent"));
const POSTGRES_MIGRATIONS: &[Embedded] = migrations!("postgres": (1, "0001_instance"), (2, "0002_auth"), (3, "0003_tickets_and_deletions"), (4, "0004_projects"), (5, "0005_sandbox_policy"), (6, "0006_jobs"), (7, "0007_workers"), (8, "0008_jobs_ready_index"), (9, "0009_jobs_keys_callbacks"), (10, "0010_agent"));

/// The Postgres advisory lock key held while migrating ("cloudx" in ASCII, then 1).
const MIGRATION_LOCK: i64 = 0x636c_6f75_6478_0001;

/// The connection pool of the configured database.
#[derive(Debug, Clone)]
pub enum Database {
    /// The embedded default.
    Sqlite(SqlitePool),
    /// A Postgres server, for many nodes.
    Postgres(PgPool),
}

/// What [`Database::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The migrations applied by this call, as `(version, name)`.
    pub applied: Vec<(i64, String)>,
    /// The schema version after the call.
    pub version: i64,
}

impl Database {
    /// Opens the pool the configuration names; creates the SQLite file (and its folder) if needed.
    ///
    /// SQLite is opened in WAL mode with foreign keys on, the configured busy timeout and
    /// `synchronous` level (`normal` by default: durable across a crash of the process, while a
    /// power loss may drop the last commits without corrupting the file).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a bad URL, [`ErrorKind::Unavailable`] when the database
    /// cannot be reached or opened.
    pub async fn connect(config: &CloudxConfig) -> Result<Self> {
        let db = &config.database;
        let target = config.database_target().map_err(|why| Error::invalid(format!("database.url: {why}")))?;
        match target {
            DatabaseTarget::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    crate::fs::create_private_dir(parent)?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .foreign_keys(true)
                    .busy_timeout(db.busy_timeout)
                    .synchronous(match db.sqlite_synchronous {
                        SqliteSynchronous::Normal => SqlxSynchronous::Normal,
                        SqliteSynchronous::Full => SqlxSynchronous::Full,
                    });
                let pool = SqlitePoolOptions::new()
                    .max_connections(db.max_connections)
                    .acquire_timeout(db.acquire_timeout)
                    .connect_with(options)
                    .await
                    .map_err(|e| unavailable(&format!("cannot open the SQLite database {}", path.display()), e))?;
                Ok(Self::Sqlite(pool))
            }
            DatabaseTarget::Postgres(url) => {
                let options =
                    PgConnectOptions::from_str(&url).map_err(|e| Error::invalid(format!("database.url: {e}")))?;
                let pool = PgPoolOptions::new()
                    .max_connections(db.max_connections)
                    .acquire_timeout(db.acquire_timeout)
                    .connect_with(options)
                    .await
                    .map_err(|e| {
                        let location = DatabaseTarget::Postgres(url.clone()).display_location();
                        unavailable(&format!("cannot connect to Postgres at {location}"), e)
                    })?;
                Ok(Self::Postgres(pool))
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Applies the pending migrations of this dialect.
    ///
    /// Safe to run from many processes at once: sqlx takes an advisory lock on Postgres, and
    /// SQLite serialises writers.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when the database was migrated by a newer cloudx (its schema is
    /// left untouched) or an applied migration was modified; [`ErrorKind::Unavailable`] when
    /// the database fails meanwhile.
    pub async fn migrate(&self) -> Result<MigrationReport> {
        let Self::Postgres(pool) = self else { return self.migrate_locked().await };
        // sqlx creates its bookkeeping table before it takes its own advisory lock, so nodes
        // starting together on a fresh database could race there. Hold a lock of ours, on a
        // session outside the pool (which may have a single connection), for the whole
        // check-and-apply; closing that session releases the lock whatever happens.
        let options = pool.connect_options();
        let mut lock =
            PgConnection::connect_with(&options).await.map_err(|e| unavailable("cannot reach the database", e))?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut lock)
            .await
            .map_err(|e| db_error("cannot take the migration lock", e))?;
        let result = self.migrate_locked().await;
        let _ = lock.close().await;
        result
    }

    async fn migrate_locked(&self) -> Result<MigrationReport> {
        let embedded = self.embedded_migrations();
        let known = embedded.last().map_or(0, |m| m.0);
        let before = self.applied_versions().await?;
        if let Some(newest) = before.iter().copied().max().filter(|v| *v > known) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "the database schema is at version {newest}, newer than this cloudx {} knows (up to {known}): it was upgraded by a newer release. Run that release, or restore the backup taken before the upgrade",
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
        let migrator = Migrator::with_migrations(
            embedded
                .iter()
                .map(|(version, name, sql)| {
                    Migration::new(*version, Cow::Borrowed(*name), MigrationType::Simple, sql.into_sql_str(), false)
                })
                .collect(),
        );
        let result = match self {
            Self::Sqlite(pool) => migrator.run(pool).await,
            Self::Postgres(pool) => migrator.run(pool).await,
        };
        result.map_err(migrate_error)?;
        let applied = embedded
            .iter()
            .filter(|(v, ..)| !before.contains(v))
            .map(|(v, name, _)| (*v, (*name).to_owned()))
            .collect();
        self.ensure_instance().await?;
        Ok(MigrationReport { applied, version: known })
    }

    /// The newest migration this binary knows for this dialect.
    pub fn known_version(&self) -> i64 {
        self.embedded_migrations().last().map_or(0, |m| m.0)
    }

    fn embedded_migrations(&self) -> &'static [Embedded] {
        match self {
            Self::Sqlite(_) => SQLITE_MIGRATIONS,
            Self::Postgres(_) => POSTGRES_MIGRATIONS,
        }
    }

    /// The versions recorded as applied (empty on a fresh database).
    async fn applied_versions(&self) -> Result<Vec<i64>> {
        let result = match self {
            Self::Sqlite(pool) => {
                let mut conn = pool.acquire().await.map_err(|e| unavailable("cannot reach the database", e))?;
                conn.ensure_migrations_table("_sqlx_migrations").await?;
                conn.list_applied_migrations("_sqlx_migrations").await
            }
            Self::Postgres(pool) => {
                let mut conn = pool.acquire().await.map_err(|e| unavailable("cannot reach the database", e))?;
                conn.ensure_migrations_table("_sqlx_migrations").await?;
                conn.list_applied_migrations("_sqlx_migrations").await
            }
        };
        Ok(result.map_err(migrate_error)?.into_iter().map(|m| m.version).collect())
    }

    /// Writes the instance row on first start.
    async fn ensure_instance(&self) -> Result<()> {
        let id = Uuid::now_v7();
        let now = chrono::Utc::now();
        let result = match self {
            Self::Sqlite(pool) => {
                sqlx::query("INSERT INTO instance (id, created_at) VALUES (?, ?) ON CONFLICT (singleton) DO NOTHING")
                    .bind(id.to_string())
                    .bind(now.to_rfc3339())
                    .execute(pool)
                    .await
                    .map(drop)
            }
            Self::Postgres(pool) => {
                sqlx::query("INSERT INTO instance (id, created_at) VALUES ($1, $2) ON CONFLICT (singleton) DO NOTHING")
                    .bind(id)
                    .bind(now)
                    .execute(pool)
                    .await
                    .map(drop)
            }
        };
        result.map_err(|e| db_error("cannot record the instance", e))
    }

    /// The id of the instance this database belongs to: every node on one database reports the
    /// same one.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn instance_id(&self) -> Result<Uuid> {
        let id = match self {
            Self::Sqlite(pool) => sqlx::query_scalar::<_, String>("SELECT id FROM instance")
                .fetch_one(pool)
                .await
                .map_err(|e| db_error("cannot read the instance", e))?
                .parse()
                .map_err(|e| Error::internal("the instance id is not a UUID", e))?,
            Self::Postgres(pool) => sqlx::query_scalar::<_, Uuid>("SELECT id FROM instance")
                .fetch_one(pool)
                .await
                .map_err(|e| db_error("cannot read the instance", e))?,
        };
        Ok(id)
    }

    /// Checks that the database answers a trivial query.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] with the reason.
    pub async fn ping(&self) -> Result<()> {
        let result = match self {
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
        };
        result.map_err(|e| unavailable("the database does not answer", e))
    }

    /// Closes every connection (SQLite checkpoints its WAL on the last close).
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

fn unavailable(context: &str, err: sqlx::Error) -> Error {
    // The cause is in the message already; as a `source` too it would be printed twice.
    Error::new(ErrorKind::Unavailable, format!("{context}: {err}"))
}

/// Maps a failed query: connectivity problems are `Unavailable`, anything else `Internal`.
pub(crate) fn db_error(context: &str, err: sqlx::Error) -> Error {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            unavailable(context, err)
        }
        other => Error::internal(context.to_owned(), other),
    }
}

fn migrate_error(err: MigrateError) -> Error {
    match err {
        MigrateError::VersionMismatch(v) => Error::new(
            ErrorKind::Conflict,
            format!(
                "migration {v} was changed after it was applied to this database; the database and this binary disagree about its schema"
            ),
        ),
        MigrateError::Execute(e) => db_error("a migration failed", e),
        other => Error::internal("migrating the database failed", other),
    }
}

impl From<MigrateError> for Error {
    fn from(err: MigrateError) -> Self {
        migrate_error(err)
    }
}
