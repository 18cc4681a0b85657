//! `cloudx login`, `cloudx logout` and `cloudx apikey ...`: commands that talk to a daemon with
//! the session `cloudx login` stored.
//!
//! The session lives in `$XDG_CONFIG_HOME/cloudx/credentials.json` (else
//! `~/.config/cloudx/credentials.json`), mode 0600 in a 0700 folder, replaced atomically. Each
//! refresh token works once, so the file is rewritten after every refresh.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cloudx_core::{Error, ErrorKind, Scopes};
use cloudx_http::client::{Client, Credential};
use serde::{Deserialize, Serialize};

use crate::args::{ApiKeyCommand, LoginArgs};
use crate::commands::users::{read_password, table};

/// What `cloudx login` keeps.
#[derive(Serialize, Deserialize)]
struct Stored {
    url: String,
    email: String,
    access_token: String,
    refresh_token: String,
}

fn credentials_path() -> anyhow::Result<PathBuf> {
    let base =
        match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or_else(|| {
                Error::invalid("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the session")
            })?)
            .join(".config"),
        };
    Ok(base.join("cloudx").join("credentials.json"))
}

fn save(path: &Path, stored: &Stored) -> anyhow::Result<()> {
    let dir = path.parent().expect("the credentials file has a folder");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let temp = dir.join(format!(".credentials.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("writing {}", temp.display()))?;
    file.write_all(&serde_json::to_vec_pretty(stored)?)?;
    file.sync_all()?;
    std::fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

fn load(path: &Path) -> anyhow::Result<Stored> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(
                Error::new(ErrorKind::Unauthenticated, "not signed in: run `cloudx login --url URL` first").into()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&bytes).with_context(|| {
        format!("{} is not a session this version understands; run `cloudx login --url URL` again", path.display())
    })
}

/// A client acting with the stored session, which it keeps up to date as tokens rotate.
fn client() -> anyhow::Result<(Client, Stored)> {
    let path = credentials_path()?;
    let stored = load(&path)?;
    let (url, email) = (stored.url.clone(), stored.email.clone());
    let client = Client::new(&stored.url)?
        .with_credential(Credential::Session {
            access_token: stored.access_token.clone(),
            refresh_token: stored.refresh_token.clone(),
        })
        .on_refresh(move |tokens| {
            let updated = Stored {
                url: url.clone(),
                email: email.clone(),
                access_token: tokens.access_token.clone(),
                refresh_token: tokens.refresh_token.clone(),
            };
            if let Err(e) = save(&path, &updated) {
                tracing::warn!(error = %format!("{e:#}"), "cannot store the refreshed session; the next command will have to sign in again");
            }
        });
    Ok((client, stored))
}

/// Whether a login is stored (then project and file commands act on that daemon).
pub(crate) fn signed_in() -> anyhow::Result<bool> {
    Ok(credentials_path()?.exists())
}

/// A client acting with the stored session (for the commands that talk to a daemon).
pub(crate) fn session() -> anyhow::Result<Client> {
    Ok(client()?.0)
}

/// `cloudx login`.
pub(crate) async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.url)?;
    if let Some(host) = client.cleartext_remote_host() {
        eprintln!(
            "warning: {host} is reached over plain http: the password and the session travel unencrypted; use https:// for anything but this machine"
        );
    }
    let email = match args.email {
        Some(email) => email,
        None if !args.password.password_stdin => prompt("Email: ")?,
        None => return Err(Error::invalid("--password-stdin needs --email").into()),
    };
    let password = read_password(&args.password, false)?;
    let signed_in = client.login(&email, &password).await?;
    let path = credentials_path()?;
    save(
        &path,
        &Stored {
            url: client.base_url().to_owned(),
            email: signed_in.user.email.clone(),
            access_token: signed_in.tokens.access_token,
            refresh_token: signed_in.tokens.refresh_token,
        },
    )?;
    crate::print(&format!(
        "signed in to {} as {} ({}); session stored in {}\n",
        client.base_url(),
        signed_in.user.email,
        signed_in.user.role.as_str(),
        path.display()
    ));
    Ok(())
}

fn prompt(label: &str) -> anyhow::Result<String> {
    use std::io::BufRead as _;
    eprint!("{label}");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading from stdin")?;
    Ok(line.trim().to_owned())
}

/// `cloudx logout`.
pub(crate) async fn logout() -> anyhow::Result<()> {
    let path = credentials_path()?;
    let (client, stored) = client()?;
    // Forget the session even if the daemon is gone or it had already ended.
    let ended = client.logout().await;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    match ended {
        Ok(()) => crate::print(&format!("signed out of {}\n", stored.url)),
        Err(e) if e.kind() == ErrorKind::Unauthenticated => {
            crate::print(&format!("the session at {} had already ended; forgotten\n", stored.url));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "forgot the local session, but could not end it at {} (it ends when its refresh token expires)",
                stored.url
            )));
        }
    }
    Ok(())
}

/// `cloudx apikey ...`.
pub(crate) async fn apikey(command: ApiKeyCommand) -> anyhow::Result<()> {
    let (client, _) = client()?;
    match command {
        ApiKeyCommand::Create { name, scopes, expires_in, json } => {
            let scopes = Scopes::parse(scopes.split(','))?;
            let expires_at = expires_in
                .map(|d| {
                    chrono::Duration::from_std(*d)
                        .ok()
                        .and_then(|d| chrono::Utc::now().checked_add_signed(d))
                        .ok_or_else(|| Error::invalid("--expires-in: too far in the future"))
                })
                .transpose()?;
            let created = client.create_api_key(&name, scopes, expires_at).await?;
            if json {
                crate::print(&format!("{}\n", serde_json::to_string_pretty(&created)?));
            } else {
                crate::print(&format!(
                    "created API key {} ({}, scopes {}); its secret, shown only now:\n{}\n",
                    created.key.name, created.key.id, created.key.scopes, created.secret
                ));
            }
        }
        ApiKeyCommand::List { json } => {
            let keys = client.list_api_keys().await?;
            if json {
                crate::print(&format!("{}\n", serde_json::to_string_pretty(&keys)?));
            } else {
                let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string())
                };
                let rows = keys.iter().map(|k| {
                    vec![
                        k.id.to_string(),
                        k.name.clone(),
                        k.prefix.clone(),
                        k.scopes.to_string(),
                        when(k.last_used_at),
                        when(k.expires_at),
                        if k.revoked_at.is_some() { "revoked" } else { "active" }.to_owned(),
                    ]
                });
                crate::print(&table(&["ID", "NAME", "PREFIX", "SCOPES", "LAST USED", "EXPIRES", "STATUS"], rows));
            }
        }
        ApiKeyCommand::Revoke { id } => {
            let key = client.revoke_api_key(id).await?;
            crate::print(&format!("revoked API key {} ({})\n", key.name, key.prefix));
        }
    }
    Ok(())
}
