//! Who is acting: every facade call that touches user data takes a [`Principal`].

use std::fmt;

use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};

/// The global role of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages users, invites, the audit log and every project.
    Admin,
    /// An ordinary account: sees its own projects and those shared with it.
    Member,
}

impl Role {
    /// The role's name: `admin` or `member`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            other => Err(Error::invalid(format!("role: `{other}` is not a role (admin or member)"))),
        }
    }
}

/// What a principal may do, whatever its role allows: a signed-in session has every scope, an
/// API key the ones it was created with.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// Read projects, files, jobs and one's own account.
    pub const READ: Scopes = Scopes(1);
    /// Change projects and files, submit jobs, talk to the agent.
    pub const WRITE: Scopes = Scopes(2);
    /// Run code in the sandbox.
    pub const EXEC: Scopes = Scopes(4);
    /// Use the account's administrator rights (only meaningful for an administrator).
    pub const ADMIN: Scopes = Scopes(8);
    /// Every scope: what a session has.
    pub const ALL: Scopes = Scopes(15);
    /// No scope at all (what an unreadable stored scope list grants).
    pub(crate) const NONE: Scopes = Scopes(0);

    const NAMES: [(Scopes, &'static str); 4] =
        [(Self::READ, "read"), (Self::WRITE, "write"), (Self::EXEC, "exec"), (Self::ADMIN, "admin")];

    /// Whether every scope of `other` is in `self`.
    pub fn contains(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    /// The scope names, in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES.iter().filter(|(s, _)| self.contains(*s)).map(|(_, n)| *n).collect()
    }

    /// Reads scope names (`read`, `write`, `exec`, `admin`); at least one is needed.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] naming an unknown scope, or for an empty list.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Scopes> {
        let mut scopes = 0;
        for name in names {
            let name = name.trim();
            let (scope, _) = Self::NAMES.iter().find(|(_, n)| *n == name).ok_or_else(|| {
                Error::invalid(format!("scopes: `{name}` is not a scope (read, write, exec or admin)"))
            })?;
            scopes |= scope.0;
        }
        if scopes == 0 {
            return Err(Error::invalid("scopes: name at least one of read, write, exec, admin"));
        }
        Ok(Scopes(scopes))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({})", self.names().join(","))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl serde::Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(self.names())
    }
}

impl<'de> serde::Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        Scopes::parse(names.iter().map(String::as_str)).map_err(|e| serde::de::Error::custom(e.message()))
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Scopes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        ArrayBuilder::new()
            .items(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(Self::NAMES.map(|(_, n)| n))))
            .description(Some("Scopes: `read`, `write`, `exec`, `admin`"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Scopes {}

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
        /// What this principal may do: [`Scopes::ALL`] for a session, the key's for an API key.
        scopes: Scopes,
        /// The API key acting, if one is.
        api_key: Option<Uuid>,
    },
}

impl Principal {
    /// A signed-in user (every scope).
    pub fn user(id: Uuid, role: Role) -> Self {
        Principal::User { id, role, scopes: Scopes::ALL, api_key: None }
    }

    /// Whether this principal has administrator rights over the whole instance: an
    /// administrator's session, or an administrator's key with the `admin` scope.
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::System => true,
            Principal::User { role, scopes, .. } => *role == Role::Admin && scopes.contains(Scopes::ADMIN),
        }
    }

    /// The account id, when the principal is a user.
    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Principal::System => None,
            Principal::User { id, .. } => Some(*id),
        }
    }

    /// The principal's scopes ([`Scopes::ALL`] for the system principal).
    pub fn scopes(&self) -> Scopes {
        match self {
            Principal::System => Scopes::ALL,
            Principal::User { scopes, .. } => *scopes,
        }
    }

    /// Fails unless the principal holds `scope`.
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] naming the missing scope.
    pub fn require(&self, scope: Scopes) -> Result<()> {
        if self.scopes().contains(scope) {
            return Ok(());
        }
        Err(Error::new(ErrorKind::PermissionDenied, format!("this API key lacks the `{scope}` scope")))
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
        let member = Principal::user(id, Role::Member);
        assert!(!member.is_admin());
        assert_eq!(member.user_id(), Some(id));
        assert!(Principal::user(id, Role::Admin).is_admin());
    }

    #[test]
    fn an_admin_key_without_the_admin_scope_is_not_admin() {
        let id = Uuid::now_v7();
        let key = Principal::User { id, role: Role::Admin, scopes: Scopes::READ, api_key: Some(Uuid::now_v7()) };
        assert!(!key.is_admin());
        assert!(key.require(Scopes::READ).is_ok());
        let denied = key.require(Scopes::WRITE).unwrap_err();
        assert_eq!(denied.kind(), ErrorKind::PermissionDenied);
        assert!(denied.message().contains("`write`"), "{}", denied.message());
    }

    #[test]
    fn scopes_parse_and_print() {
        let scopes = Scopes::parse(["write", "read"]).unwrap();
        assert_eq!(scopes.to_string(), "read,write");
        assert!(scopes.contains(Scopes::READ) && !scopes.contains(Scopes::EXEC));
        assert_eq!(Scopes::parse("read,write,exec,admin".split(',')).unwrap(), Scopes::ALL);
        assert!(Scopes::parse(["root"]).unwrap_err().message().contains("`root`"));
        assert!(Scopes::parse([]).is_err());
    }
}
