//! Projects and their members.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::files::Change;
use super::{Access, Storage, now, to_i64, to_u64, unique_violation};
use crate::access::{ProjectAction, ProjectRole, check_project};
use crate::auth::audit::{self, Client, Event, Outcome};
use crate::config::StorageConfig;
use crate::db::{Database, db_error};
use crate::error::{Error, ErrorKind, Result};
use crate::principal::{Principal, Scopes};

/// A project, as seen by one caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Project {
    /// The id, used by every route.
    pub id: Uuid,
    /// A URL-safe name unique among its owner's projects, for display and CLI lookup.
    pub slug: String,
    /// The name shown.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The user whose project it is.
    pub owner_id: Uuid,
    /// The caller's role on it (none for an administrator who is not a member).
    pub role: Option<ProjectRole>,
    /// The latest version: each write makes the next.
    pub version: i64,
    /// The size of its current files, in bytes.
    pub bytes: u64,
    /// How many current files it has.
    pub files: u64,
    /// How many bytes its current files may hold.
    pub quota_bytes: u64,
    /// How many files it may hold.
    pub quota_files: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its settings or files last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was deleted, if it is (an owner can restore it; an administrator can purge it).
    pub deleted_at: Option<DateTime<Utc>>,
}

/// What a new project is made of.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// The name shown (1 to 200 characters).
    pub name: String,
    /// The slug; derived from the name when absent.
    #[serde(default)]
    pub slug: Option<String>,
    /// What it is for.
    #[serde(default)]
    pub description: Option<String>,
    /// A built-in template (`empty`, `python`, `rust`, `node`); `empty` when absent.
    #[serde(default)]
    pub template: Option<String>,
    /// Start as a copy of the current files of this project (which the caller must be able to read).
    #[serde(default)]
    pub copy_from: Option<Uuid>,
    /// Whose project it is: the caller when absent. Administrators (and the local CLI) may name another user.
    #[serde(default)]
    pub owner_id: Option<Uuid>,
}

/// A change to a project's settings; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProjectUpdate {
    /// A new name (owners).
    #[serde(default)]
    pub name: Option<String>,
    /// A new slug (owners).
    #[serde(default)]
    pub slug: Option<String>,
    /// A new description (editors and owners).
    #[serde(default)]
    pub description: Option<String>,
    /// The project's own byte quota; 0 returns to the configured one (administrators).
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    /// The project's own file-count quota; 0 returns to the configured one (administrators).
    #[serde(default)]
    pub quota_files: Option<u64>,
}

/// A member of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    /// The account.
    pub user_id: Uuid,
    /// Its email.
    pub email: String,
    /// Its name.
    pub display_name: String,
    /// Its role on the project.
    pub role: ProjectRole,
    /// Whether this is the project's owner (whose namespace holds the slug).
    pub is_owner: bool,
    /// When it was added.
    pub added_at: DateTime<Utc>,
}

/// A built-in template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Template {
    /// Its name, as given to `template`.
    pub name: String,
    /// What it holds.
    pub description: String,
    /// The paths it creates.
    pub files: Vec<String>,
}

macro_rules! project_columns {
    () => {
        "p.id, p.owner_id, p.slug, p.name, p.description, p.head, p.bytes, p.files, p.quota_bytes, p.quota_files, \
         p.created_at, p.updated_at, p.deleted_at"
    };
}

type ProjectRow = (
    Uuid,
    Uuid,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<String>,
);

fn project(row: ProjectRow, config: &StorageConfig) -> Access {
    let (id, owner_id, slug, name, description, head, bytes, files, qb, qf, created_at, updated_at, deleted_at, role) =
        row;
    let role = role.and_then(|r| r.parse().ok());
    Access {
        project: Project {
            id,
            slug,
            name,
            description,
            owner_id,
            role,
            version: head,
            bytes: to_u64(bytes),
            files: to_u64(files),
            quota_bytes: qb.map_or(config.project_quota_bytes.as_u64(), to_u64),
            quota_files: qf.map_or(config.project_quota_files, to_u64),
            created_at,
            updated_at,
            deleted_at,
        },
        role,
    }
}

/// Loads a project with `user`'s role on it.
pub(super) async fn load(
    db: &Database,
    config: &StorageConfig,
    id: Uuid,
    user: Option<Uuid>,
) -> Result<Option<Access>> {
    let sql = concat!(
        "SELECT ",
        project_columns!(),
        ", m.role FROM projects p LEFT JOIN project_members m ON m.project_id = p.id AND m.user_id = $1 WHERE p.id = $2"
    );
    let row: Option<ProjectRow> =
        on_db!(db, |pool| sqlx::query_as(sql).bind(user.unwrap_or_else(Uuid::nil)).bind(id).fetch_optional(pool).await)
            .map_err(|e| db_error("reading the project", e))?;
    Ok(row.map(|r| project(r, config)))
}

/// Which projects [`Storage::list_projects`] returns.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProjectFilter {
    /// Deleted projects instead of live ones (to restore one).
    #[serde(default)]
    pub deleted: bool,
    /// Every project of the instance, not only the caller's (administrators).
    #[serde(default)]
    pub all: bool,
    /// Only the projects with this slug.
    #[serde(default)]
    pub slug: Option<String>,
}

impl Storage {
    /// The built-in templates.
    pub fn templates(&self) -> Vec<Template> {
        super::templates::ALL
            .iter()
            .map(|t| Template {
                name: t.name.to_owned(),
                description: t.description.to_owned(),
                files: t.files.iter().map(|(p, _)| (*p).to_owned()).collect(),
            })
            .collect()
    }

    /// Creates a project, empty, from a template, or as a copy of another project's current
    /// files; the creator (or the named owner) becomes its owner.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a bad name, slug or template, [`ErrorKind::Conflict`]
    /// when the owner already has a project with that slug, [`ErrorKind::NotFound`] for a
    /// source project the caller cannot read, [`ErrorKind::QuotaExceeded`] when a copy does not
    /// fit in the quota.
    pub async fn create_project(&self, actor: &Principal, client: &Client, new: NewProject) -> Result<Project> {
        actor.require(Scopes::WRITE)?;
        let owner = match (actor, new.owner_id) {
            (Principal::System, Some(owner)) => owner,
            (Principal::System, None) => return Err(Error::invalid("owner: a project created locally needs an owner")),
            (Principal::User { id, .. }, None) => *id,
            (Principal::User { id, .. }, Some(owner)) if owner == *id => owner,
            (Principal::User { .. }, Some(owner)) if actor.is_admin() => owner,
            (Principal::User { .. }, Some(_)) => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    "only an administrator can create a project for another user",
                ));
            }
        };
        let name = check_name(&new.name)?;
        let description = check_description(new.description.as_deref().unwrap_or(""))?;
        let explicit_slug = new.slug.as_deref().map(check_slug).transpose()?;
        let base_slug = explicit_slug.clone().unwrap_or_else(|| slugify(&name));
        // What it starts with, checked (and a template's files spooled) before anything is
        // written; the blobs are leased and published once the project exists.
        let mut spooled = Vec::new();
        let initial: Vec<Change> = match (&new.template, new.copy_from) {
            (Some(_), Some(_)) => return Err(Error::invalid("give either a template or a project to copy, not both")),
            (None, Some(source)) => {
                let source = self.access(actor, source, ProjectAction::Read, false).await?;
                self.current_files_as_changes(source.project.id).await?
            }
            (template, None) => {
                let name = template.as_deref().unwrap_or("empty");
                let template = super::templates::find(name).ok_or_else(|| {
                    Error::invalid(format!(
                        "template: `{name}` is not a template ({})",
                        super::templates::ALL.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                    ))
                })?;
                let mut changes = Vec::with_capacity(template.files.len());
                for (path, content) in template.files {
                    let file = self.blobs.spool_bytes(bytes::Bytes::from_static(content.as_bytes())).await?;
                    changes.push(Change::put(super::ProjectPath::parse(path)?, file.id, file.size, None));
                    spooled.push(file);
                }
                changes
            }
        };
        let id = Uuid::now_v7();
        let at = now();
        let mut slug = base_slug.clone();
        for attempt in 2.. {
            let inserted = insert_project(&self.db, id, owner, &slug, &name, &description, at).await;
            match inserted {
                Ok(()) => break,
                Err(e) if unique_violation(&e) && explicit_slug.is_none() && attempt < 100 => {
                    slug = format!("{}-{attempt}", base_slug.chars().take(58).collect::<String>());
                }
                Err(e) if unique_violation(&e) => {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("the owner already has a project with the slug `{slug}`; choose another slug"),
                    ));
                }
                Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                    return Err(Error::not_found("owner: no such user"));
                }
                Err(e) => return Err(db_error("creating the project", e)),
            }
        }
        if !initial.is_empty() {
            let message = match (&new.template, new.copy_from) {
                (_, Some(source)) => format!("copied from project {source}"),
                (template, None) => format!("created from the `{}` template", template.as_deref().unwrap_or("empty")),
            };
            let author = actor.user_id().or(Some(owner));
            // Leased until the commit: garbage collection must not take a blob that existed
            // unreferenced before this write found it, nor a copied one whose source is purged.
            let blobs = initial.iter().filter_map(Change::blob).collect::<Vec<_>>();
            let committed = match self.lease(&blobs).await {
                Ok(lease) => {
                    let done = match self.blobs.publish_many(spooled).await {
                        Ok(()) => self.commit(id, author, initial, Some(&message)).await,
                        Err(e) => Err(e),
                    };
                    self.release(lease).await;
                    done
                }
                Err(e) => Err(e),
            };
            if let Err(e) = committed {
                // Nothing of a project that could not be filled stays behind.
                let _ = on_db!(&self.db, |pool| sqlx::query("DELETE FROM projects WHERE id = $1")
                    .bind(id)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected()));
                return Err(e);
            }
        }
        self.audit(actor, client, "project_create", id, Some(format!("slug {slug}"))).await?;
        let created = self.access(&Principal::System, id, ProjectAction::Read, false).await?.project;
        Ok(Project { role: Some(ProjectRole::Owner).filter(|_| actor.user_id() == Some(owner)), ..created })
    }

    /// The projects the caller is a member of (or, for an administrator asking for `all`,
    /// every project), by name.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for `all` without administrator rights.
    pub async fn list_projects(&self, actor: &Principal, filter: &ProjectFilter) -> Result<Vec<Project>> {
        actor.require(Scopes::READ)?;
        let everything = *actor == Principal::System || filter.all;
        if filter.all && !actor.is_admin() && *actor != Principal::System {
            return Err(Error::new(ErrorKind::PermissionDenied, "listing every project needs an administrator"));
        }
        let user = actor.user_id().unwrap_or_else(Uuid::nil);
        let sql = if everything {
            concat!(
                "SELECT ",
                project_columns!(),
                ", m.role FROM projects p LEFT JOIN project_members m ON m.project_id = p.id AND m.user_id = $1 \
                 WHERE (p.deleted_at IS NOT NULL) = $2 AND ($3 IS NULL OR p.slug = $3) ORDER BY p.name, p.id"
            )
        } else {
            concat!(
                "SELECT ",
                project_columns!(),
                ", m.role FROM projects p JOIN project_members m ON m.project_id = p.id AND m.user_id = $1 \
                 WHERE (p.deleted_at IS NOT NULL) = $2 AND ($3 IS NULL OR p.slug = $3) ORDER BY p.name, p.id"
            )
        };
        let rows: Vec<ProjectRow> = on_db!(&self.db, |pool| sqlx::query_as(sql)
            .bind(user)
            .bind(filter.deleted)
            .bind(filter.slug.as_deref())
            .fetch_all(pool)
            .await)
        .map_err(|e| db_error("listing projects", e))?;
        Ok(rows.into_iter().map(|r| project(r, &self.config).project).collect())
    }

    /// One project.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when it does not exist or the caller may not see it.
    pub async fn project(&self, actor: &Principal, id: Uuid) -> Result<Project> {
        Ok(self.access(actor, id, ProjectAction::Read, true).await?.project)
    }

    /// Changes a project's settings: name and slug need an owner, the description an editor,
    /// quotas an administrator.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a bad value, [`ErrorKind::Conflict`] for a taken slug,
    /// [`ErrorKind::PermissionDenied`] for a change beyond the caller's role.
    pub async fn update_project(
        &self,
        actor: &Principal,
        client: &Client,
        id: Uuid,
        update: ProjectUpdate,
    ) -> Result<Project> {
        let action =
            if update.name.is_some() || update.slug.is_some() { ProjectAction::Manage } else { ProjectAction::Write };
        let current = self.access(actor, id, action, false).await?.project;
        if (update.quota_bytes.is_some() || update.quota_files.is_some())
            && !(actor.is_admin() || *actor == Principal::System)
        {
            return Err(Error::new(ErrorKind::PermissionDenied, "quotas are set by an administrator"));
        }
        let name = update.name.as_deref().map(check_name).transpose()?.unwrap_or(current.name);
        let slug = update.slug.as_deref().map(check_slug).transpose()?.unwrap_or(current.slug);
        let description =
            update.description.as_deref().map(check_description).transpose()?.unwrap_or(current.description);
        let quota = |new: Option<u64>, old: Option<i64>| match new {
            Some(0) => None,
            Some(n) => Some(to_i64(n)),
            None => old,
        };
        let (old_qb, old_qf): (Option<i64>, Option<i64>) =
            on_db!(&self.db, |pool| sqlx::query_as("SELECT quota_bytes, quota_files FROM projects WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await)
            .map_err(|e| db_error("reading the project", e))?;
        let updated = on_db!(&self.db, |pool| {
            sqlx::query(
            "UPDATE projects SET name = $1, slug = $2, description = $3, quota_bytes = $4, quota_files = $5, updated_at = $6 \
             WHERE id = $7"
        )
        .bind(&name)
        .bind(&slug)
        .bind(&description)
        .bind(quota(update.quota_bytes, old_qb))
        .bind(quota(update.quota_files, old_qf))
        .bind(now())
        .bind(id)
        .execute(pool)
        .await.map(|r| r.rows_affected())
        });
        match updated {
            Ok(_) => {}
            Err(e) if unique_violation(&e) => {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("the owner already has a project with the slug `{slug}`; choose another slug"),
                ));
            }
            Err(e) => return Err(db_error("updating the project", e)),
        }
        self.audit(actor, client, "project_update", id, None).await?;
        self.project(actor, id).await
    }

    /// Checks, before anything is done, that `actor` may do every one of `actions` to the
    /// project (each missing role or API-key scope is named by the first refusal).
    pub(crate) async fn authorize(&self, actor: &Principal, id: Uuid, actions: &[ProjectAction]) -> Result<()> {
        let Some((&first, rest)) = actions.split_first() else { return Ok(()) };
        let access = self.access(actor, id, first, false).await?;
        for &action in rest {
            check_project(actor, access.role, action)?;
        }
        Ok(())
    }

    /// The project's sandbox policy as stored (JSON; `None` when it has none), checking that
    /// `actor` may `action` the project.
    pub(crate) async fn sandbox_policy_json(
        &self,
        actor: &Principal,
        id: Uuid,
        action: ProjectAction,
    ) -> Result<Option<String>> {
        self.access(actor, id, action, false).await?;
        on_db!(&self.db, |pool| sqlx::query_scalar("SELECT sandbox_policy FROM projects WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await)
        .map_err(|e| db_error("reading the sandbox policy", e))
    }

    /// Stores the project's sandbox policy (already checked); owners only. Audited.
    pub(crate) async fn set_sandbox_policy_json(
        &self,
        actor: &Principal,
        client: &Client,
        id: Uuid,
        json: Option<String>,
    ) -> Result<()> {
        self.access(actor, id, ProjectAction::Manage, false).await?;
        on_db!(&self.db, |pool| sqlx::query("UPDATE projects SET sandbox_policy = $1, updated_at = $2 WHERE id = $3")
            .bind(&json)
            .bind(now())
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| db_error("storing the sandbox policy", e))?;
        self.audit(actor, client, "sandbox_policy", id, json).await
    }

    /// Deletes a project softly: it disappears from lists and its files cannot be reached,
    /// until an owner restores it or an administrator purges it.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for a caller who is not an owner.
    pub async fn delete_project(&self, actor: &Principal, client: &Client, id: Uuid) -> Result<()> {
        self.access(actor, id, ProjectAction::Manage, false).await?;
        self.set_deleted(id, Some(now())).await?;
        self.audit(actor, client, "project_delete", id, None).await
    }

    /// Brings a deleted project back.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when it is not deleted.
    pub async fn restore_project(&self, actor: &Principal, client: &Client, id: Uuid) -> Result<Project> {
        let access = self.access(actor, id, ProjectAction::Manage, true).await?;
        if access.project.deleted_at.is_none() {
            return Err(Error::new(ErrorKind::Conflict, "the project is not deleted"));
        }
        self.set_deleted(id, None).await?;
        self.audit(actor, client, "project_restore", id, None).await?;
        self.project(actor, id).await
    }

    /// Removes a project and its whole history for good (administrators). Its blobs that no
    /// other project shares are deleted by the next `cloudx storage gc`.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for a non-administrator.
    pub async fn purge_project(&self, actor: &Principal, client: &Client, id: Uuid) -> Result<()> {
        if !(actor.is_admin() || *actor == Principal::System) {
            return Err(Error::new(ErrorKind::PermissionDenied, "purging a project needs an administrator"));
        }
        actor.require(Scopes::WRITE)?;
        let gone = on_db!(&self.db, |pool| sqlx::query("DELETE FROM projects WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| db_error("purging the project", e))?;
        if gone == 0 {
            return Err(Error::not_found("no such project"));
        }
        self.audit(actor, client, "project_purge", id, None).await
    }

    async fn set_deleted(&self, id: Uuid, at: Option<DateTime<Utc>>) -> Result<()> {
        on_db!(&self.db, |pool| sqlx::query("UPDATE projects SET deleted_at = $1, updated_at = $2 WHERE id = $3")
            .bind(at)
            .bind(now())
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| db_error("updating the project", e))?;
        Ok(())
    }

    /// The members of a project, owners first.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the caller may not see the project.
    pub async fn members(&self, actor: &Principal, id: Uuid) -> Result<Vec<Member>> {
        let access = self.access(actor, id, ProjectAction::Read, false).await?;
        let rows: Vec<(Uuid, String, String, String, DateTime<Utc>)> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT m.user_id, u.email, u.display_name, m.role, m.added_at FROM project_members m \
             JOIN users u ON u.id = m.user_id WHERE m.project_id = $1 ORDER BY m.added_at, u.email"
        )
        .bind(id)
        .fetch_all(pool)
        .await)
        .map_err(|e| db_error("listing members", e))?;
        let mut members: Vec<Member> = rows
            .into_iter()
            .filter_map(|(user_id, email, display_name, role, added_at)| {
                Some(Member {
                    user_id,
                    email,
                    display_name,
                    role: role.parse().ok()?,
                    is_owner: user_id == access.project.owner_id,
                    added_at,
                })
            })
            .collect();
        members.sort_by_key(|m| (!m.is_owner, std::cmp::Reverse(m.role)));
        Ok(members)
    }

    /// Shares a project with a user (by id or email) as `role`, or changes their role.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for an unknown user, [`ErrorKind::Conflict`] when the change
    /// would take the owner role from the project's owner (transfer the project first).
    pub async fn set_member(
        &self,
        actor: &Principal,
        client: &Client,
        id: Uuid,
        user: &str,
        role: ProjectRole,
    ) -> Result<Member> {
        let access = self.access(actor, id, ProjectAction::Manage, false).await?;
        let user_id = self.resolve_user(user).await?;
        if user_id == access.project.owner_id && role != ProjectRole::Owner {
            return Err(Error::new(
                ErrorKind::Conflict,
                "this user owns the project: transfer it to another user before changing their role",
            ));
        }
        on_db!(&self.db, |pool| sqlx::query(
            "INSERT INTO project_members (project_id, user_id, role, added_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role"
        )
        .bind(id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(now())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| db_error("sharing the project", e))?;
        self.audit(actor, client, "project_share", id, Some(format!("user:{user_id} as {role}"))).await?;
        self.members(&Principal::System, id)
            .await?
            .into_iter()
            .find(|m| m.user_id == user_id)
            .ok_or_else(|| Error::not_found("no such member"))
    }

    /// Removes a member (owners may remove anyone but the project's owner; any member may leave).
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] for the project's owner, [`ErrorKind::NotFound`] for a non-member.
    pub async fn remove_member(&self, actor: &Principal, client: &Client, id: Uuid, user: &str) -> Result<()> {
        // Whether the project is visible comes first: a stranger learns nothing about accounts.
        let access = self.access(actor, id, ProjectAction::Read, false).await?;
        let user_id = self.resolve_user(user).await?;
        if actor.user_id() == Some(user_id) {
            actor.require(Scopes::WRITE)?; // leaving
        } else {
            check_project(actor, access.role, ProjectAction::Manage)?;
        }
        if user_id == access.project.owner_id {
            return Err(Error::new(
                ErrorKind::Conflict,
                "this user owns the project: transfer it to another user before removing them",
            ));
        }
        let gone =
            on_db!(&self.db, |pool| sqlx::query("DELETE FROM project_members WHERE project_id = $1 AND user_id = $2")
                .bind(id)
                .bind(user_id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()))
            .map_err(|e| db_error("removing the member", e))?;
        if gone == 0 {
            return Err(Error::not_found("this user is not a member of the project"));
        }
        self.audit(actor, client, "project_unshare", id, Some(format!("user:{user_id}"))).await
    }

    /// Makes another user the project's owner. They become an owner member; the previous owner
    /// stays an owner member until removed.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when the new owner already has a project with this slug.
    pub async fn transfer_project(&self, actor: &Principal, client: &Client, id: Uuid, to: &str) -> Result<Project> {
        self.access(actor, id, ProjectAction::Manage, false).await?;
        let new_owner = self.resolve_user(to).await?;
        let at = now();
        macro_rules! transfer {
            ($tx:expr) => {
                async {
                    let mut tx = $tx;
                    sqlx::query("UPDATE projects SET owner_id = $1, updated_at = $2 WHERE id = $3")
                        .bind(new_owner)
                        .bind(at)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO project_members (project_id, user_id, role, added_at) VALUES ($1, $2, 'owner', $3) \
                         ON CONFLICT (project_id, user_id) DO UPDATE SET role = 'owner'",
                    )
                    .bind(id)
                    .bind(new_owner)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await
                }
                .await
            };
        }
        match in_write_tx!(&self.db, |tx| transfer!(tx)) {
            Ok(()) => {}
            Err(e) if unique_violation(&e) => {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "the new owner already has a project with this slug; rename it first",
                ));
            }
            Err(e) => return Err(db_error("transferring the project", e)),
        }
        self.audit(actor, client, "project_transfer", id, Some(format!("to user:{new_owner}"))).await?;
        self.project(actor, id).await
    }

    /// A user named by id or email.
    async fn resolve_user(&self, user: &str) -> Result<Uuid> {
        let found: Option<Uuid> = match Uuid::parse_str(user.trim()) {
            Ok(id) => on_db!(&self.db, |pool| sqlx::query_scalar("SELECT id FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await),
            Err(_) => on_db!(&self.db, |pool| sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
                .bind(user.trim().to_lowercase())
                .fetch_optional(pool)
                .await),
        }
        .map_err(|e| db_error("looking up the user", e))?;
        found.ok_or_else(|| Error::not_found(format!("user: no account `{}`", user.trim())))
    }

    pub(super) async fn audit(
        &self,
        actor: &Principal,
        client: &Client,
        action: &'static str,
        project: Uuid,
        detail: Option<String>,
    ) -> Result<()> {
        audit::append(
            &self.db,
            &Event {
                action,
                outcome: Outcome::Success,
                actor: actor.user_id(),
                target: Some(format!("project:{project}")),
                client,
                detail,
            },
        )
        .await
    }
}

async fn insert_project(
    db: &Database,
    id: Uuid,
    owner: Uuid,
    slug: &str,
    name: &str,
    description: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    macro_rules! insert {
        ($tx:expr) => {
            async {
                let mut tx = $tx;
                sqlx::query(
                    "INSERT INTO projects (id, owner_id, slug, name, description, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6)",
                )
                .bind(id)
                .bind(owner)
                .bind(slug)
                .bind(name)
                .bind(description)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO project_members (project_id, user_id, role, added_at) VALUES ($1, $2, 'owner', $3)",
                )
                .bind(id)
                .bind(owner)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            }
            .await
        };
    }
    in_write_tx!(db, |tx| insert!(tx))
}

fn check_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Error::invalid("name: a project name is 1 to 200 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("name: control characters are not allowed"));
    }
    Ok(name.to_owned())
}

fn check_description(raw: &str) -> Result<String> {
    if raw.chars().count() > 4000 {
        return Err(Error::invalid("description: at most 4000 characters"));
    }
    Ok(raw.trim().to_owned())
}

/// A slug: 1 to 63 of `a-z`, `0-9` and `-`, starting and ending with a letter or digit.
pub(crate) fn check_slug(raw: &str) -> Result<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 63
        && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !raw.starts_with('-')
        && !raw.ends_with('-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Error::invalid(format!(
            "slug: `{raw}` is not a slug: 1 to 63 lowercase letters, digits and `-`, starting and ending with a letter or digit"
        )))
    }
}

/// The slug a name suggests: `My Project!` → `my-project`.
pub(crate) fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 63 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() { "project".to_owned() } else { slug.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slugify("My Project!"), "my-project");
        assert_eq!(slugify("  Ünïcode ✓ "), "n-code");
        assert_eq!(slugify("✓✓"), "project");
        assert_eq!(slugify(&"a".repeat(100)).len(), 63);
        assert!(check_slug("ok-1").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(check_slug(bad).is_err(), "{bad}");
        }
    }
}
