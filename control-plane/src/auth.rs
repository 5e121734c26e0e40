//! Who is calling, and may they do this. Every REST handler takes a [`Principal`] (the extractor
//! is in `http::extract`) and calls [`Principal::authorize`] with an [`Action`], which asks the
//! casbin policy in [`crate::rbac`]; gRPC calls get an agent identity from the verified client
//! certificate and act only on their own node.

use std::fmt;

use uuid::Uuid;

use crate::http::error::ApiError;

/// A role: one of the three built-in roles, or a custom role an owner defined (its permissions
/// are casbin rules in `rbac_rules`, a subset of what Admin may do; see [`crate::roles`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    Owner,
    Admin,
    Viewer,
    Custom(String),
}

impl Role {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Viewer => "viewer",
            Self::Custom(name) => name,
        }
    }

    /// Ordering for granting: nobody grants a role ranked above their own. A custom role is
    /// held at Viewer's rank and only owners grant one.
    pub fn rank(&self) -> u8 {
        match self {
            Self::Viewer | Self::Custom(_) => 1,
            Self::Admin => 2,
            Self::Owner => 3,
        }
    }

    /// The rank a granter needs to grant this role.
    pub fn grant_rank(&self) -> u8 {
        match self {
            Self::Custom(_) => 3,
            other => other.rank(),
        }
    }

    pub fn is_builtin(&self) -> bool {
        !matches!(self, Self::Custom(_))
    }

    /// A built-in role's name, or a well-formed custom role name (whether it exists is the
    /// database's business): 1-32 characters of a-z, 0-9, '-' and '_', starting with a letter.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Self::Owner),
            "admin" => Some(Self::Admin),
            "viewer" => Some(Self::Viewer),
            custom if is_role_name(custom) => Some(Self::Custom(custom.to_owned())),
            _ => None,
        }
    }
}

fn is_role_name(s: &str) -> bool {
    s.len() <= 32
        && s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "role {s:?} is not owner, admin, viewer or a custom role name \
                 (1-32 characters of a-z, 0-9, '-', '_', starting with a letter)"
            ))
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who did something, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    ApiToken {
        id: Uuid,
        name: String,
    },
    /// A paired device (browser, CLI, phone) signed in with a device session.
    Device {
        id: Uuid,
        name: String,
    },
    /// A person signed in through an OpenID provider.
    SsoUser {
        id: Uuid,
        name: String,
    },
    Agent {
        node_id: Uuid,
    },
    /// An unauthenticated caller, by client address (refused sign-ins).
    Anonymous {
        client: String,
    },
    /// The server itself, or an operator at the server's console (`moltops-server admin …`).
    System {
        what: &'static str,
    },
}

impl Actor {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ApiToken { .. } => "api_token",
            Self::Device { .. } => "device",
            Self::SsoUser { .. } => "sso_user",
            Self::Agent { .. } => "agent",
            Self::Anonymous { .. } => "anonymous",
            Self::System { .. } => "system",
        }
    }

    pub fn id(&self) -> String {
        match self {
            Self::ApiToken { id, .. } | Self::Device { id, .. } | Self::SsoUser { id, .. } => {
                id.to_string()
            }
            Self::Agent { node_id } => node_id.to_string(),
            Self::Anonymous { client } => client.clone(),
            Self::System { what } => (*what).to_owned(),
        }
    }

    /// A short label for `created_by` columns: `api_token:<id>`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.kind(), self.id())
    }
}

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    NodesRead,
    NodesWrite,
    NodesRevoke,
    CommandsRead,
    CommandsCreate,
    EnrollmentTokensRead,
    EnrollmentTokensWrite,
    CaRead,
    /// See and approve pending device pairings.
    PairingsApprove,
    /// Create, list and revoke API tokens.
    ApiTokensManage,
    /// Read one's own identity.
    SelfRead,
    /// List users (devices, later SSO users) and their sessions.
    UsersRead,
    /// Change a user's role or scope, or remove the user.
    UsersManage,
    /// List roles and their permissions.
    RolesRead,
    /// Define, change and delete custom roles.
    RolesManage,
    /// Read the audit log and its checkpoints.
    AuditRead,
    /// Export the audit log; sign a checkpoint now.
    AuditExport,
    /// Re-walk the chain.
    AuditVerify,
}

impl Action {
    pub const ALL: &[Action] = &[
        Self::NodesRead,
        Self::NodesWrite,
        Self::NodesRevoke,
        Self::CommandsRead,
        Self::CommandsCreate,
        Self::EnrollmentTokensRead,
        Self::EnrollmentTokensWrite,
        Self::CaRead,
        Self::PairingsApprove,
        Self::ApiTokensManage,
        Self::SelfRead,
        Self::UsersRead,
        Self::UsersManage,
        Self::RolesRead,
        Self::RolesManage,
        Self::AuditRead,
        Self::AuditExport,
        Self::AuditVerify,
    ];

    /// Powers that stay with owners: who holds which role, and credentials that carry roles.
    pub fn owner_only(self) -> bool {
        matches!(
            self,
            Self::ApiTokensManage | Self::UsersManage | Self::RolesManage
        )
    }
}

/// An authenticated caller of the REST API.
#[derive(Debug, Clone)]
pub struct Principal {
    pub actor: Actor,
    pub role: Role,
    /// The session the request came with, if any (for logout).
    pub session_id: Option<Uuid>,
    /// The policy this request is judged by.
    pub authz: std::sync::Arc<crate::rbac::Authz>,
    /// The nodes the role applies to (a label selector); empty means the whole fleet.
    pub scope: crate::fleet::Selector,
}

impl Principal {
    /// The one enforcement point for REST handlers.
    pub fn authorize(&self, action: Action) -> Result<(), ApiError> {
        if self.authz.allows(&self.role, action) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "role {} may not perform this operation",
                self.role
            )))
        }
    }

    /// For an action on one node: the role must allow it and the node must be in scope. A node
    /// outside the scope is reported as not found, so a scoped principal learns nothing of it.
    pub fn authorize_node(
        &self,
        action: Action,
        labels: &crate::fleet::Labels,
    ) -> Result<(), ApiError> {
        self.authorize(action)?;
        if self.scope.matches(labels) {
            Ok(())
        } else {
            Err(ApiError::not_found("no such node"))
        }
    }

    pub fn is_scoped(&self) -> bool {
        !self.scope.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip() {
        for role in [
            Role::Owner,
            Role::Admin,
            Role::Viewer,
            Role::Custom("db-operators".into()),
        ] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        for bad in ["", "Root", "9lives", "a b", &"x".repeat(33)] {
            assert_eq!(Role::parse(bad), None, "{bad:?}");
        }
    }
}
