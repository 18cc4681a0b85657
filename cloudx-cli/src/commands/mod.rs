//! One module per command area; each converts its arguments, calls core once, renders the result.

pub(crate) mod agent;
pub(crate) mod config;
pub(crate) mod jobs;
pub(crate) mod llm;
pub(crate) mod projects;
pub(crate) mod remote;
pub(crate) mod sandbox;
pub(crate) mod serve;
pub(crate) mod sync;
pub(crate) mod target;
pub(crate) mod users;
pub(crate) mod worker;

use anyhow::Context as _;
use cloudx_core::CloudxConfig;
use cloudx_core::config::ConfigLoader;

use crate::args::GlobalArgs;

/// Loads the configuration from its layers, with the command line's flags on top.
pub(crate) fn load_config(
    global: &GlobalArgs,
    extra: impl FnOnce(ConfigLoader) -> ConfigLoader,
) -> Result<CloudxConfig, cloudx_core::config::ConfigError> {
    let mut loader = ConfigLoader::new()
        .env(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))))
        .default_file("cloudx.toml");
    if let Some(file) = &global.config {
        loader = loader.file(file);
    }
    if let Some(dir) = &global.data_dir {
        loader = loader.flag("data_dir", "--data-dir", dir.to_string_lossy().into_owned());
    }
    extra(loader).load()
}

/// `cloudx migrate`.
pub(crate) async fn migrate(config: CloudxConfig) -> anyhow::Result<()> {
    let db = cloudx_core::db::Database::connect(&config).await?;
    let report = db
        .migrate()
        .await
        .context("migration failed (each migration runs in its own transaction: the failed one left nothing behind)")?;
    let location = config.database_target().map(|t| t.display_location()).unwrap_or_default();
    let mut out = String::new();
    if report.applied.is_empty() {
        out.push_str(&format!("{location} ({}) is up to date at schema version {}\n", db.backend(), report.version));
    } else {
        for (version, name) in &report.applied {
            out.push_str(&format!("applied {version} {name}\n"));
        }
        out.push_str(&format!("{location} ({}) is now at schema version {}\n", db.backend(), report.version));
    }
    db.close().await;
    crate::print(&out);
    Ok(())
}
