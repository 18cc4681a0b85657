//! `cloudx project ...` and `cloudx file ...` (on the daemon you signed in to, else on this
//! instance) and `cloudx storage gc` (on this instance's database and object store).

use std::io::Write as _;
use std::path::PathBuf;

use cloudx_core::storage::{NewProject, Project};
use cloudx_core::{CloudxConfig, Error, ErrorKind, Principal, ProjectRole};
use uuid::Uuid;

use crate::args::{FileCommand, GlobalArgs, ProjectCommand, StorageCommand};
use crate::commands::target::{self, Target};
use crate::commands::users::table;
use crate::print;

/// Finds a project by id, or by slug among the caller's projects.
pub(crate) async fn resolve(client: &Target, project: &str) -> anyhow::Result<Project> {
    client.resolve_project(project).await.map_err(|e| {
        if e.kind() == ErrorKind::NotFound && Uuid::parse_str(project).is_err() {
            Error::not_found(format!("{} (`cloudx project list`)", e.message())).into()
        } else {
            e.into()
        }
    })
}

fn size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// `cloudx project ...`.
pub(crate) async fn project(command: ProjectCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let client = target::open(|| Ok(crate::commands::load_config(global, |l| l)?)).await?;
    let done = project_on(&client, command).await;
    client.close().await;
    done
}

async fn project_on(client: &Target, command: ProjectCommand) -> anyhow::Result<()> {
    match command {
        ProjectCommand::Create { name, slug, description, template, copy_from, owner, json } => {
            let copy_from = match copy_from {
                Some(p) => Some(resolve(client, &p).await?.id),
                None => None,
            };
            let owner_id = match owner {
                Some(email) => Some(client.user_id(&email).await?),
                None if client.is_local() => {
                    return Err(Error::invalid(
                        "a project on this instance needs an owner: --owner EMAIL (or `cloudx login` to a daemon, which makes you the owner)",
                    )
                    .into());
                }
                None => None,
            };
            let new = NewProject { name, slug, description, template, copy_from, owner_id };
            let p = client.create_project(&new).await?;
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&p)?));
            } else {
                print(&format!(
                    "created project {} ({}) at version {} with {} files\n",
                    p.slug, p.id, p.version, p.files
                ));
            }
        }
        ProjectCommand::List { deleted, all, json } => {
            let projects = client.list_projects(deleted, all, None).await?;
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&projects)?));
            } else {
                print(&table(
                    &["SLUG", "NAME", "ROLE", "VERSION", "FILES", "SIZE", "ID"],
                    projects.iter().map(|p| {
                        vec![
                            p.slug.clone(),
                            p.name.clone(),
                            p.role.map_or("-".into(), |r| r.to_string()),
                            p.version.to_string(),
                            p.files.to_string(),
                            size(p.bytes),
                            p.id.to_string(),
                        ]
                    }),
                ));
            }
        }
        ProjectCommand::Show { project, json } => {
            let p = resolve(client, &project).await?;
            let members = client.members(p.id).await?;
            if json {
                let both = serde_json::json!({"project": p, "members": members});
                print(&format!("{}\n", serde_json::to_string_pretty(&both)?));
            } else {
                let mut out = format!(
                    "{} ({})\nid:          {}\nversion:     {}\nfiles:       {} of {}\nsize:        {} of {}\ndescription: {}\n",
                    p.name,
                    p.slug,
                    p.id,
                    p.version,
                    p.files,
                    p.quota_files,
                    size(p.bytes),
                    size(p.quota_bytes),
                    p.description
                );
                if let Some(at) = p.deleted_at {
                    out.push_str(&format!("deleted:     {at} (restore with `cloudx project restore {}`)\n", p.id));
                }
                out.push('\n');
                out.push_str(&table(
                    &["MEMBER", "ROLE", "SINCE"],
                    members.iter().map(|m| {
                        let role =
                            if m.is_owner { format!("{} (owner of record)", m.role) } else { m.role.to_string() };
                        vec![m.email.clone(), role, m.added_at.format("%Y-%m-%d").to_string()]
                    }),
                ));
                print(&out);
            }
        }
        ProjectCommand::Share { project, user, role } => {
            let role: ProjectRole = role.parse()?;
            let p = resolve(client, &project).await?;
            let m = client.set_member(p.id, &user, role).await?;
            print(&format!("{} is now {} of {}\n", m.email, m.role, p.slug));
        }
        ProjectCommand::Unshare { project, user } => {
            let p = resolve(client, &project).await?;
            client.remove_member(p.id, &user).await?;
            print(&format!("{user} is no longer a member of {}\n", p.slug));
        }
        ProjectCommand::Transfer { project, user } => {
            let p = resolve(client, &project).await?;
            client.transfer_project(p.id, &user).await?;
            print(&format!("{} now belongs to {user}\n", p.slug));
        }
        ProjectCommand::Rm { project, purge } => {
            let p = resolve(client, &project).await?;
            client.delete_project(p.id, purge).await?;
            if purge {
                print(&format!("purged {} ({}) and its history\n", p.slug, p.id));
            } else {
                print(&format!("deleted {}; `cloudx project restore {}` brings it back\n", p.slug, p.id));
            }
        }
        ProjectCommand::Restore { project } => {
            // Deleted projects are not found by slug among live ones: look there too.
            let id = match Uuid::parse_str(&project) {
                Ok(id) => id,
                Err(_) => {
                    let mut found = client.list_projects(true, false, Some(&project)).await?;
                    if found.len() != 1 {
                        return Err(Error::not_found(format!(
                            "no single deleted project `{project}` (`cloudx project list --deleted`)"
                        ))
                        .into());
                    }
                    found.remove(0).id
                }
            };
            let p = client.restore_project(id).await?;
            print(&format!("restored {} at version {}\n", p.slug, p.version));
        }
    }
    Ok(())
}

/// `cloudx file ...`.
pub(crate) async fn file(command: FileCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let client = target::open(|| Ok(crate::commands::load_config(global, |l| l)?)).await?;
    let done = file_on(&client, command).await;
    client.close().await;
    done
}

async fn file_on(client: &Target, command: FileCommand) -> anyhow::Result<()> {
    match command {
        FileCommand::Put { project, local, path, expect_version, message } => {
            let p = resolve(client, &project).await?;
            let path = match path {
                Some(path) => path,
                None => local
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| Error::invalid("name the file's path in the project"))?
                    .to_owned(),
            };
            let v = client.put_file(p.id, &path, &local, expect_version, message.as_deref()).await?;
            print(&format!("{} at version {} ({})\n", v.path, v.version, size(v.size)));
        }
        FileCommand::Get { project, path, local, at: version } => {
            let p = resolve(client, &project).await?;
            let local = local.unwrap_or_else(|| PathBuf::from(path.rsplit('/').next().unwrap_or(&path)));
            if local.as_os_str() == "-" {
                let temp = temp_file()?;
                client.get_file(p.id, &path, version, temp.path()).await?;
                let mut out = std::io::stdout().lock();
                std::io::copy(&mut std::fs::File::open(temp.path())?, &mut out)?;
                out.flush()?;
            } else {
                let got = client.get_file(p.id, &path, version, &local).await?;
                eprintln!("{} (version {}, {}) -> {}", path, got.version, size(got.size), local.display());
            }
        }
        FileCommand::Ls { project, folder, recursive, at: version, json } => {
            let p = resolve(client, &project).await?;
            let tree = client.tree(p.id, &folder, version, recursive).await?;
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&tree)?));
            } else {
                print(&table(
                    &["PATH", "SIZE", "VERSION", "MODIFIED"],
                    tree.entries.iter().map(|e| {
                        let path = if e.folder { format!("{}/", e.path) } else { e.path.clone() };
                        vec![
                            path,
                            size(e.size),
                            e.version.to_string(),
                            e.modified_at.format("%Y-%m-%d %H:%M").to_string(),
                        ]
                    }),
                ));
            }
        }
        FileCommand::Log { project, path, limit, json } => {
            let p = resolve(client, &project).await?;
            let history = client.history(p.id, &path, limit).await?;
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&history)?));
            } else {
                print(&table(
                    &["VERSION", "WHEN", "SIZE", "WHAT", "MESSAGE"],
                    history.iter().map(|v| {
                        vec![
                            v.version.to_string(),
                            v.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            size(v.size),
                            if v.deleted { "deleted".into() } else { "written".into() },
                            v.message.clone().unwrap_or_default(),
                        ]
                    }),
                ));
            }
        }
        FileCommand::Rm { project, path, message } => {
            let p = resolve(client, &project).await?;
            let v = client.delete_file(p.id, &path, None, message.as_deref()).await?;
            print(&format!("deleted {path} at version {v}; `cloudx file restore` brings it back\n"));
        }
        FileCommand::Restore { project, path, at: version } => {
            let p = resolve(client, &project).await?;
            let v = client.restore_file(p.id, &path, version).await?;
            print(&format!("{} restored at version {}\n", v.path, v.version));
        }
        FileCommand::Mv { project, from, to, message } => {
            let p = resolve(client, &project).await?;
            let v = client.move_file(p.id, &from, &to, message.as_deref()).await?;
            print(&format!("moved {from} to {to} at version {v}\n"));
        }
    }
    Ok(())
}

/// A temporary file removed on drop, for `file get -`.
struct Temp(PathBuf);

impl Temp {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_file() -> anyhow::Result<Temp> {
    Ok(Temp(std::env::temp_dir().join(format!("cloudx-get-{}-{}", std::process::id(), Uuid::new_v4().simple()))))
}

/// `cloudx storage gc`, on this instance (as the local operator).
pub(crate) async fn storage(config: CloudxConfig, command: StorageCommand) -> anyhow::Result<()> {
    let cx = cloudx_core::Cloudx::connect(config).await?;
    let StorageCommand::Gc { dry_run } = command;
    let report = cx.storage().gc(&Principal::System, dry_run).await;
    cx.close().await;
    let report = report?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    let mut out = format!(
        "{} blobs in the store; {verb} {} ({}) that no version refers to; removed {} temporary files\n",
        report.blobs,
        report.deleted,
        size(report.bytes_freed),
        report.temp_files
    );
    if report.missing > 0 {
        out.push_str(&format!(
            "warning: {} versions refer to blobs missing from the store: restore the object store from a backup\n",
            report.missing
        ));
    }
    print(&out);
    Ok(())
}
