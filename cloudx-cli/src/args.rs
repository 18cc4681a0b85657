//! The command line, as clap types only; the commands live in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// cloudx: a self-hostable platform for AI coding agents.
///
/// With no configuration, everything is embedded under ./cloudx-data (SQLite, local files).
#[derive(Debug, Parser)]
#[command(name = "cloudx", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// The configuration file (default: $CLOUDX_CONFIG, else ./cloudx.toml if it exists).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The data folder (overrides data_dir; default ./cloudx-data).
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start the HTTP daemon (REST API, metrics) on the configured database.
    Serve(ServeArgs),
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the version.
    Version,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on, IP:PORT (overrides http.bind; default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    pub(crate) bind: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the configuration without starting anything, and print it with secrets redacted.
    Check,
}
