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

pub mod auth;
mod cloudx;
pub mod config;
pub mod db;
pub mod error;
mod fs;
mod principal;
#[cfg(feature = "testing")]
pub mod testing;

pub use crate::cloudx::{Check, Cloudx, Readiness};
pub use crate::config::CloudxConfig;
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::principal::{Principal, Role, Scopes};

/// The version of this build, as in `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
