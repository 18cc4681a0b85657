//! Who is acting: every facade call that touches user data takes a [`Principal`].

use uuid::Uuid;

/// The global role of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages users, invites, the audit log and every project.
    Admin,
    /// An ordinary account: sees its own projects and those shared with it.
    Member,
}

/// The acting identity of a facade call.
///
/// The [`Principal::System`] principal is what the CLI and the embedded Python use on a local data
/// folder: it has no password and can never be obtained over HTTP, because whoever can open the
/// data folder already owns everything in it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Principal {
    /// The local operator of an embedded data folder.
    System,
    /// A signed-in user, or the user an API key belongs to.
    User {
        /// The account id.
        id: Uuid,
        /// The account's global role.
        role: Role,
    },
}

impl Principal {
    /// Whether this principal has administrator rights over the whole instance.
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::System => true,
            Principal::User { role, .. } => *role == Role::Admin,
        }
    }

    /// The account id, when the principal is a user.
    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Principal::System => None,
            Principal::User { id, .. } => Some(*id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_is_admin_and_has_no_user_id() {
        assert!(Principal::System.is_admin());
        assert_eq!(Principal::System.user_id(), None);
        let id = Uuid::now_v7();
        let member = Principal::User { id, role: Role::Member };
        assert!(!member.is_admin());
        assert_eq!(member.user_id(), Some(id));
        assert!(Principal::User { id, role: Role::Admin }.is_admin());
    }
}
