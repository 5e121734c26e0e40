//! Who is calling, and may they do this. Every REST handler takes a [`Principal`] (the extractor
//! is in `http::extract`) and calls [`Principal::authorize`] with an [`Action`], which asks the
//! casbin policy in [`crate::rbac`]; gRPC calls get an agent identity from the verified client
//! certificate and act only on their own node.

use std::fmt;

use uuid::Uuid;

use crate::http::error::ApiError;

/// Fixed roles until [P2] adds custom roles and label scoping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }

    /// Ordering of the built-in roles: nobody grants a role ranked above their own.
    pub fn rank(self) -> u8 {
        match self {
            Self::Viewer => 1,
            Self::Admin => 2,
            Self::Owner => 3,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Self::Owner),
            "admin" => Some(Self::Admin),
            "viewer" => Some(Self::Viewer),
            _ => None,
        }
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
            Self::Agent { .. } => "agent",
            Self::Anonymous { .. } => "anonymous",
            Self::System { .. } => "system",
        }
    }

    pub fn id(&self) -> String {
        match self {
            Self::ApiToken { id, .. } | Self::Device { id, .. } => id.to_string(),
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
}

/// An authenticated caller of the REST API.
#[derive(Debug, Clone)]
pub struct Principal {
    pub actor: Actor,
    pub role: Role,
    /// The device session the request came with, if any (for logout).
    pub session_id: Option<Uuid>,
    /// The policy this request is judged by.
    pub authz: std::sync::Arc<crate::rbac::Authz>,
    /// The nodes the role applies to (a label selector); empty means the whole fleet.
    pub scope: crate::fleet::Selector,
}

impl Principal {
    /// The one enforcement point for REST handlers.
    pub fn authorize(&self, action: Action) -> Result<(), ApiError> {
        if self.authz.allows(self.role, action) {
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
        for role in [Role::Owner, Role::Admin, Role::Viewer] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
