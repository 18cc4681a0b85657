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
    /// Manage the accounts of this instance (on its database, as the local operator).
    #[command(subcommand)]
    User(UserCommand),
    /// Read and check the audit log of this instance (on its database).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Sign in to a daemon; later commands that talk to a daemon use this session.
    Login(LoginArgs),
    /// Sign out of the daemon (the session ends everywhere) and forget the session.
    Logout,
    /// Manage your API keys on the daemon you signed in to.
    #[command(subcommand)]
    Apikey(ApiKeyCommand),
    /// Print the version.
    Version,
}

/// How a command reads a password: prompted on a terminal, or one line of stdin.
#[derive(Debug, Args)]
pub(crate) struct PasswordArgs {
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long)]
    pub(crate) password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Create an account (the first administrator of a fresh install: `--admin`).
    Add {
        /// The email address (the sign-in name).
        email: String,
        /// The name shown to others (default: the part of the email before @).
        #[arg(long)]
        name: Option<String>,
        /// Make the account an administrator.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// List every account.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: its sessions and API keys stop working at once.
    Disable {
        /// The account's email or id.
        user: String,
    },
    /// Enable a disabled account.
    Enable {
        /// The account's email or id.
        user: String,
    },
    /// Set an account's global role; its sessions end.
    SetRole {
        /// The account's email or id.
        user: String,
        /// `admin` or `member`.
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Print the audit log, newest first.
    List {
        /// At most this many entries (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only entries before this sequence number (the next page).
        #[arg(long)]
        before: Option<i64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain; exits 65 if a row was edited, inserted or removed.
    Verify,
}

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// The daemon, such as https://cloudx.example.com or http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub(crate) url: String,
    /// The account's email (prompted for when absent).
    #[arg(long)]
    pub(crate) email: Option<String>,
    #[command(flatten)]
    pub(crate) password: PasswordArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApiKeyCommand {
    /// Create a key; its secret is printed once.
    Create {
        /// A name to recognise it by.
        name: String,
        /// Comma-separated scopes: read, write, exec, admin.
        #[arg(long, default_value = "read,write,exec")]
        scopes: String,
        /// How long it stays valid, such as 30d or 12h (default: until revoked).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<humantime::Duration>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List your keys (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it stops working at once.
    Revoke {
        /// The key's id (from `cloudx apikey list`).
        id: uuid::Uuid,
    },
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
