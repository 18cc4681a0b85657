//! `cloudx user ...` and `cloudx audit ...`: the operator's commands on the instance's own
//! database, acting as the local system principal (whoever can open the data folder owns it).

use anyhow::Context as _;
use cloudx_core::auth::NewUser;
use cloudx_core::auth::audit::Client;
use cloudx_core::{Cloudx, CloudxConfig, Error, ErrorKind, Principal, Role};
use uuid::Uuid;

use crate::args::{AuditCommand, PasswordArgs, UserCommand};

/// What the audit log records as the client of a local command.
fn local_client() -> Client {
    Client::new(None, Some(concat!("cloudx-cli/", env!("CARGO_PKG_VERSION"), " (local)")))
}

/// `cloudx user ...`.
pub(crate) async fn user(config: CloudxConfig, command: UserCommand) -> anyhow::Result<()> {
    let cx = Cloudx::connect(config).await?;
    let result = run_user(&cx, command).await;
    cx.close().await;
    result
}

async fn run_user(cx: &Cloudx, command: UserCommand) -> anyhow::Result<()> {
    let auth = cx.auth();
    let system = Principal::System;
    let client = local_client();
    match command {
        UserCommand::Add { email, name, admin, password } => {
            let display_name = name.unwrap_or_else(|| email.split('@').next().unwrap_or(&email).to_owned());
            let password = read_password(&password, true)?;
            let role = if admin { Role::Admin } else { Role::Member };
            let user = auth.add_user(&system, NewUser { email, password, display_name }, role, &client).await?;
            crate::print(&format!("created {} ({}) with id {}\n", user.email, user.role.as_str(), user.id));
        }
        UserCommand::List { json } => {
            let users = auth.list_users(&system).await?;
            if json {
                crate::print(&format!("{}\n", serde_json::to_string_pretty(&users)?));
            } else {
                let rows = users.iter().map(|u| {
                    vec![
                        u.id.to_string(),
                        u.email.clone(),
                        u.display_name.clone(),
                        u.role.as_str().to_owned(),
                        if u.disabled { "disabled" } else { "enabled" }.to_owned(),
                        u.created_at.format("%Y-%m-%d %H:%M").to_string(),
                    ]
                });
                crate::print(&table(&["ID", "EMAIL", "NAME", "ROLE", "STATUS", "CREATED (UTC)"], rows));
            }
        }
        UserCommand::Disable { user } => {
            let id = find_user(cx, &user).await?;
            let user = auth.set_disabled(&system, id, true, &client).await?;
            crate::print(&format!("disabled {}: its sessions and API keys no longer work\n", user.email));
        }
        UserCommand::Enable { user } => {
            let id = find_user(cx, &user).await?;
            let user = auth.set_disabled(&system, id, false, &client).await?;
            crate::print(&format!("enabled {}\n", user.email));
        }
        UserCommand::SetRole { user, role } => {
            let role: Role = role.parse()?;
            let id = find_user(cx, &user).await?;
            let user = auth.set_role(&system, id, role, &client).await?;
            crate::print(&format!("{} is now {} (its sessions ended)\n", user.email, user.role.as_str()));
        }
    }
    Ok(())
}

/// The id of the account named by `who`: an id, or an email (case-insensitive).
async fn find_user(cx: &Cloudx, who: &str) -> anyhow::Result<Uuid> {
    let users = cx.auth().list_users(&Principal::System).await?;
    let wanted = who.trim().to_lowercase();
    let found = users.iter().find(|u| u.email == wanted || u.id.to_string() == wanted);
    Ok(found.ok_or_else(|| Error::not_found(format!("no account has the email or id `{}`", who.trim())))?.id)
}

/// `cloudx audit ...`.
pub(crate) async fn audit(config: CloudxConfig, command: AuditCommand) -> anyhow::Result<()> {
    let cx = Cloudx::connect(config).await?;
    let result = run_audit(&cx, command).await;
    cx.close().await;
    result
}

async fn run_audit(cx: &Cloudx, command: AuditCommand) -> anyhow::Result<()> {
    let auth = cx.auth();
    match command {
        AuditCommand::List { limit, before, json } => {
            let entries = auth.audit_log(&Principal::System, before, limit).await?;
            if json {
                crate::print(&format!("{}\n", serde_json::to_string_pretty(&entries)?));
            } else {
                crate::print(&audit_table(&entries));
            }
        }
        AuditCommand::Verify => {
            let verification = auth.verify_audit_log(&Principal::System).await?;
            match verification.first_bad {
                None => {
                    crate::print(&format!("the audit log is intact: {} rows, hash chain verified\n", verification.rows))
                }
                Some(seq) => {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "the audit log was tampered with: row {seq} does not match its hash chain \
                             (edited, inserted, or a row before it removed); {} rows checked",
                            verification.rows
                        ),
                    ))
                    .context("cloudx audit verify");
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn audit_table(entries: &[cloudx_core::auth::audit::Entry]) -> String {
    let rows = entries.iter().map(|e| {
        vec![
            e.seq.to_string(),
            e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            e.action.clone(),
            e.outcome.clone(),
            e.actor_id.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            e.target.clone().unwrap_or_else(|| "-".into()),
            e.ip.clone().unwrap_or_else(|| "-".into()),
            e.detail.clone().unwrap_or_default(),
        ]
    });
    table(&["SEQ", "AT (UTC)", "ACTION", "OUTCOME", "ACTOR", "TARGET", "IP", "DETAIL"], rows)
}

/// Left-aligned columns, two spaces apart.
pub(crate) fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> =
        std::iter::once(header.iter().map(|h| (*h).to_owned()).collect()).chain(rows).collect();
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Reads a password: one line of stdin with `--password-stdin`, else a prompt on the terminal
/// (twice for a new password).
pub(crate) fn read_password(args: &PasswordArgs, new: bool) -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _};
    if args.password_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            return Err(Error::invalid("--password-stdin: stdin held no password").into());
        }
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        return Err(
            Error::invalid("no terminal to ask for the password on: pass it on stdin with --password-stdin").into()
        );
    }
    let password = rpassword::prompt_password("Password: ").context("reading the password")?;
    if new {
        let again = rpassword::prompt_password("Repeat it: ").context("reading the password")?;
        if again != password {
            return Err(Error::invalid("the two passwords differ").into());
        }
    }
    Ok(password)
}
