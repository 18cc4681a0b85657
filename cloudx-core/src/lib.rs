//! cloudx-core: the library behind every cloudx front end.
//!
//! Open a [`Cloudx`] on a [`CloudxConfig`] and call it; the HTTP daemon, the CLI and the Python
//! extension are thin layers over this facade. Authorization, validation and limits live here,
//! so every front end is equally safe.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use cloudx_core::{Cloudx, config::ConfigLoader};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let config = ConfigLoader::new()
//!     .env([("CLOUDX_DATA_DIR", dir.path().to_str().unwrap())])
//!     .load()?;
//! let cx = Cloudx::connect(config).await?;
//! assert_eq!(cx.database().backend(), "sqlite");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

#![deny(missing_docs)]

/// Runs the same code on whichever pool a [`db::Database`] holds. The SQL must suit both
/// dialects: `$N` placeholders (SQLite numbers them in order of first use, so they must first
/// appear in ascending order), and types both drivers map alike (UUIDs, `DateTime<Utc>`, bytes).
macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::Database::Sqlite($pool) => $body,
            $crate::db::Database::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` (an expression using the transaction `$tx` and giving a
/// `Result<_, sqlx::Error>`, which commits or drops it) in a write transaction: on SQLite one
/// opened with `BEGIN IMMEDIATE`, so it takes the write lock up front instead of failing to
/// upgrade a read; on Postgres a plain one, after taking the transaction-scoped advisory lock
/// `$lock` when given (to serialise a check and the write it allows).
macro_rules! in_write_tx {
    ($db:expr, $(lock = $lock:expr,)? |$tx:ident| $body:expr) => {
        match $db {
            $crate::db::Database::Sqlite(pool) => match pool.begin_with("BEGIN IMMEDIATE").await {
                Ok($tx) => $body,
                Err(e) => Err(e),
            },
            $crate::db::Database::Postgres(pool) => match pool.begin().await {
                #[allow(unused_mut)]
                Ok(mut $tx) => {
                    let locked: ::std::result::Result<(), sqlx::Error> = async {
                        $(sqlx::query("SELECT pg_advisory_xact_lock($1)").bind($lock).execute(&mut *$tx).await?;)?
                        Ok(())
                    }
                    .await;
                    match locked {
                        Ok(()) => $body,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
        }
    };
}

pub mod access;
pub mod agent;
pub mod auth;
mod cloudx;
pub mod config;
pub mod db;
pub mod error;
mod fs;
mod principal;
pub mod queue;
pub mod sandbox;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;

pub use crate::access::{ProjectAction, ProjectRole, check_project};
pub use crate::cloudx::{Check, Cloudx, Readiness};
pub use crate::config::CloudxConfig;
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::principal::{Principal, Role, Scopes};

/// The version of this build, as in `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
