//! The per-project permission model: who may do what to a project.
//!
//! Projects arrive with the storage port; the rule they will be checked by is fixed here, with
//! the global one of [`Principal`], so that every later call asks one function:
//! [`check_project`]. Deny by default, and a project one cannot see does not exist: a
//! principal that is neither a member nor an administrator gets `NotFound`, never
//! `PermissionDenied`, so a guessed id reveals nothing.

use std::fmt;

use crate::error::{Error, ErrorKind, Result};
use crate::principal::{Principal, Scopes};

/// A user's role on one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProjectRole {
    /// Reads the project: files, history, runs and jobs.
    Viewer,
    /// Also changes files, runs code and talks to the agent.
    Editor,
    /// Also shares the project, changes members, renames, deletes and transfers it.
    Owner,
}

impl ProjectRole {
    /// The role's name: `owner`, `editor` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectRole::Viewer => "viewer",
            ProjectRole::Editor => "editor",
            ProjectRole::Owner => "owner",
        }
    }
}

impl fmt::Display for ProjectRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProjectRole {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "owner" => Ok(ProjectRole::Owner),
            "editor" => Ok(ProjectRole::Editor),
            "viewer" => Ok(ProjectRole::Viewer),
            other => Err(Error::invalid(format!("role: `{other}` is not a project role (owner, editor or viewer)"))),
        }
    }
}

/// What a call wants to do to a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProjectAction {
    /// See it and read its files, history, runs and jobs.
    Read,
    /// Change its files, description or settings; submit jobs; talk to the agent.
    Write,
    /// Run code in the sandbox on it.
    Exec,
    /// Share it, change or remove members, rename, delete, restore or transfer it.
    Manage,
}

impl ProjectAction {
    /// Every action, for tables and tests.
    pub const ALL: [ProjectAction; 4] =
        [ProjectAction::Read, ProjectAction::Write, ProjectAction::Exec, ProjectAction::Manage];

    /// The least project role that may do it.
    pub fn least_role(self) -> ProjectRole {
        match self {
            ProjectAction::Read => ProjectRole::Viewer,
            ProjectAction::Write | ProjectAction::Exec => ProjectRole::Editor,
            ProjectAction::Manage => ProjectRole::Owner,
        }
    }

    /// The API-key scope it needs (a session has every scope).
    pub fn scope(self) -> Scopes {
        match self {
            ProjectAction::Read => Scopes::READ,
            ProjectAction::Write | ProjectAction::Manage => Scopes::WRITE,
            ProjectAction::Exec => Scopes::EXEC,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            ProjectAction::Read => "read",
            ProjectAction::Write => "change",
            ProjectAction::Exec => "run code in",
            ProjectAction::Manage => "manage",
        }
    }
}

/// Decides whether `principal`, whose role on the project is `role` (`None`: not a member),
/// may do `action` to it.
///
/// - The local system principal may do anything.
/// - An administrator (role and `admin` scope) may do anything to any project, within the
///   scopes of the credential in use.
/// - A member may do what their role allows, within the scopes of the credential in use.
/// - Anyone else is told the project does not exist.
///
/// # Errors
/// [`ErrorKind::NotFound`] for a principal that may not see the project,
/// [`ErrorKind::PermissionDenied`] for one that may see it but not do `action` (the role or
/// the key's scopes fall short; the message says which).
pub fn check_project(principal: &Principal, role: Option<ProjectRole>, action: ProjectAction) -> Result<()> {
    if *principal == Principal::System {
        return Ok(());
    }
    let admin = principal.is_admin();
    if role.is_none() && !admin {
        return Err(Error::not_found("no such project"));
    }
    principal.require(action.scope())?;
    if admin {
        return Ok(());
    }
    match role {
        Some(role) if role >= action.least_role() => Ok(()),
        Some(role) => Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "a project {role} cannot {} the project; that needs {}",
                action.verb(),
                match action.least_role() {
                    ProjectRole::Viewer => "any role",
                    ProjectRole::Editor => "the editor or owner role",
                    ProjectRole::Owner => "the owner role",
                }
            ),
        )),
        None => Err(Error::not_found("no such project")),
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::principal::Role;

    fn member() -> Principal {
        Principal::user(Uuid::now_v7(), Role::Member)
    }

    fn key(role: Role, scopes: &[&str]) -> Principal {
        Principal::User {
            id: Uuid::now_v7(),
            role,
            scopes: Scopes::parse(scopes.iter().copied()).unwrap(),
            api_key: Some(Uuid::now_v7()),
        }
    }

    /// The whole model as a table: for each project role (or none), which actions a member's
    /// session may take. Every combination is checked.
    #[test]
    fn each_role_may_do_what_the_table_says() {
        use ProjectAction::{Exec, Manage, Read, Write};
        let table: [(Option<ProjectRole>, &[ProjectAction]); 4] = [
            (None, &[]),
            (Some(ProjectRole::Viewer), &[Read]),
            (Some(ProjectRole::Editor), &[Read, Write, Exec]),
            (Some(ProjectRole::Owner), &[Read, Write, Exec, Manage]),
        ];
        for (role, allowed) in table {
            for action in ProjectAction::ALL {
                let result = check_project(&member(), role, action);
                if allowed.contains(&action) {
                    result.unwrap();
                } else if role.is_none() {
                    // Not a member: the project does not exist, whatever the action.
                    assert_eq!(result.unwrap_err().kind(), ErrorKind::NotFound, "{role:?} {action:?}");
                } else {
                    assert_eq!(result.unwrap_err().kind(), ErrorKind::PermissionDenied, "{role:?} {action:?}");
                }
            }
        }
    }

    #[test]
    fn administrators_and_the_system_may_do_anything_within_their_scopes() {
        for action in ProjectAction::ALL {
            check_project(&Principal::System, None, action).unwrap();
            check_project(&Principal::user(Uuid::now_v7(), Role::Admin), None, action).unwrap();
        }
        // An administrator's key without the admin scope is an ordinary non-member.
        let plain = key(Role::Admin, &["read", "write", "exec"]);
        assert_eq!(check_project(&plain, None, ProjectAction::Read).unwrap_err().kind(), ErrorKind::NotFound);
        // With the admin scope but only `read`, it can look, not change.
        let auditor = key(Role::Admin, &["read", "admin"]);
        check_project(&auditor, None, ProjectAction::Read).unwrap();
        let denied = check_project(&auditor, None, ProjectAction::Write).unwrap_err();
        assert_eq!(denied.kind(), ErrorKind::PermissionDenied);
        assert!(denied.message().contains("`write` scope"), "{}", denied.message());
    }

    #[test]
    fn a_keys_scopes_bound_what_its_owners_role_allows() {
        let read_only = key(Role::Member, &["read"]);
        check_project(&read_only, Some(ProjectRole::Owner), ProjectAction::Read).unwrap();
        for action in [ProjectAction::Write, ProjectAction::Exec, ProjectAction::Manage] {
            let denied = check_project(&read_only, Some(ProjectRole::Owner), action).unwrap_err();
            assert_eq!(denied.kind(), ErrorKind::PermissionDenied, "{action:?}");
        }
        let exec_only = key(Role::Member, &["exec"]);
        check_project(&exec_only, Some(ProjectRole::Editor), ProjectAction::Exec).unwrap();
        // Scopes never lift a role: an exec key of a viewer still cannot run code.
        let denied = check_project(&exec_only, Some(ProjectRole::Viewer), ProjectAction::Exec).unwrap_err();
        assert!(denied.message().contains("viewer"), "{}", denied.message());
        // And a non-member's key learns nothing, whatever its scopes.
        assert_eq!(check_project(&exec_only, None, ProjectAction::Exec).unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn roles_parse_and_print() {
        for role in [ProjectRole::Owner, ProjectRole::Editor, ProjectRole::Viewer] {
            assert_eq!(role.as_str().parse::<ProjectRole>().unwrap(), role);
        }
        assert!("admin".parse::<ProjectRole>().unwrap_err().message().contains("owner, editor or viewer"));
    }
}
