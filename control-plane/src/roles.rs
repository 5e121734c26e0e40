//! Custom roles: named sets of permissions an owner defines on top of the built-in owner, admin
//! and viewer. A custom role's permissions are casbin rules in `rbac_rules` and must be a subset
//! of what Admin may ever be given ([`assignable`]): managing users, roles and API tokens stays
//! with owners, so a custom role can never be a path to more power. Changes reach every replica
//! through the `rbac_rules` trigger.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::{Action, Actor, Role};

/// One permission: an object and an action on it (`nodes`/`read`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    pub object: String,
    pub action: String,
}

/// What a custom role may hold: every permission except the owner-only ones.
pub fn assignable() -> Vec<Permission> {
    let mut out: Vec<Permission> = Action::ALL
        .iter()
        .filter(|a| !a.owner_only())
        .map(|a| {
            let (object, action) = crate::rbac::permission(*a);
            Permission {
                object: object.to_owned(),
                action: action.to_owned(),
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct RoleInfo {
    pub name: String,
    pub description: String,
    pub builtin: bool,
    pub permissions: Vec<Permission>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("no such role: {0}")]
    Unknown(String),
    #[error("built-in roles cannot be changed or deleted")]
    Builtin,
    #[error("{0}")]
    Invalid(String),
    #[error("the role is held by {0} active principal(s); reassign them first")]
    InUse(i64),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A granted role must exist (built-in roles always do).
pub async fn ensure_exists(conn: &mut PgConnection, role: &Role) -> Result<(), RoleError> {
    if role.is_builtin() {
        return Ok(());
    }
    let found = sqlx::query_scalar!("select name from roles where name = $1", role.as_str())
        .fetch_optional(conn)
        .await?;
    found
        .map(|_| ())
        .ok_or_else(|| RoleError::Unknown(role.to_string()))
}

pub async fn list(pool: &PgPool) -> Result<Vec<RoleInfo>, sqlx::Error> {
    let roles = sqlx::query!(
        "select name, description, builtin, created_at, updated_at from roles order by builtin desc, name"
    )
    .fetch_all(pool)
    .await?;
    let rules =
        sqlx::query!("select v0, v1, v2 from rbac_rules where ptype = 'p' order by v0, v1, v2")
            .fetch_all(pool)
            .await?;
    Ok(roles
        .into_iter()
        .map(|r| RoleInfo {
            permissions: rules
                .iter()
                .filter(|rule| rule.v0 == r.name)
                .map(|rule| Permission {
                    object: rule.v1.clone(),
                    action: rule.v2.clone(),
                })
                .collect(),
            name: r.name,
            description: r.description,
            builtin: r.builtin,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
        .collect())
}

/// Creates or replaces a custom role; returns whether it was created.
pub async fn put(
    pool: &PgPool,
    actor: &Actor,
    role: &Role,
    description: &str,
    permissions: &[Permission],
    now: DateTime<Utc>,
) -> Result<bool, RoleError> {
    if role.is_builtin() {
        return Err(RoleError::Builtin);
    }
    if description.chars().count() > 200 || description.chars().any(char::is_control) {
        return Err(RoleError::Invalid(
            "description must be at most 200 characters, without control characters".into(),
        ));
    }
    let allowed = assignable();
    let mut wanted: Vec<Permission> = permissions.to_vec();
    wanted.sort();
    wanted.dedup();
    if let Some(bad) = wanted.iter().find(|p| !allowed.contains(p)) {
        return Err(RoleError::Invalid(format!(
            "permission {}/{} cannot be given to a custom role (allowed: {})",
            bad.object,
            bad.action,
            allowed
                .iter()
                .map(|p| format!("{}/{}", p.object, p.action))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut tx = pool.begin().await?;
    let before = sqlx::query!(
        "select name from roles where name = $1 for update",
        role.as_str()
    )
    .fetch_optional(&mut *tx)
    .await?;
    let old_rules = sqlx::query!(
        "select v1, v2 from rbac_rules where ptype = 'p' and v0 = $1 order by v1, v2",
        role.as_str()
    )
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query!(
        "insert into roles (name, description, builtin, created_at, updated_at)
         values ($1, $2, false, $3, $3)
         on conflict (name) do update set description = excluded.description, updated_at = excluded.updated_at",
        role.as_str(),
        description,
        now
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "delete from rbac_rules where ptype = 'p' and v0 = $1",
        role.as_str()
    )
    .execute(&mut *tx)
    .await?;
    for p in &wanted {
        sqlx::query!(
            "insert into rbac_rules (ptype, v0, v1, v2) values ('p', $1, $2, $3)",
            role.as_str(),
            p.object,
            p.action
        )
        .execute(&mut *tx)
        .await?;
    }
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor,
            action: if before.is_some() { "role.update" } else { "role.create" },
            target_kind: "role",
            target_id: role.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({
                "before": old_rules.iter().map(|r| format!("{}/{}", r.v1, r.v2)).collect::<Vec<_>>(),
                "after": wanted.iter().map(|p| format!("{}/{}", p.object, p.action)).collect::<Vec<_>>(),
            }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(before.is_none())
}

/// Deletes a custom role nobody active holds.
pub async fn delete(
    pool: &PgPool,
    actor: &Actor,
    role: &Role,
    now: DateTime<Utc>,
) -> Result<(), RoleError> {
    if role.is_builtin() {
        return Err(RoleError::Builtin);
    }
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "select name from roles where name = $1 for update",
        role.as_str()
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| RoleError::Unknown(role.to_string()))?;
    let holders: i64 = sqlx::query_scalar!(
        r#"select (select count(*) from api_tokens where role = $1 and revoked_at is null
                   and (expires_at is null or expires_at > $2))
                + (select count(*) from devices where role = $1 and revoked_at is null)
                + (select count(*) from sso_users where role = $1 and disabled_at is null)
                + (select count(*) from pairings where role = $1 and consumed_at is null and expires_at > $2)
                as "n!""#,
        role.as_str(),
        now
    )
    .fetch_one(&mut *tx)
    .await?;
    if holders > 0 {
        return Err(RoleError::InUse(holders));
    }
    sqlx::query!(
        "delete from rbac_rules where ptype = 'p' and v0 = $1",
        role.as_str()
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!("delete from roles where name = $1", role.as_str())
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor,
            action: "role.delete",
            target_kind: "role",
            target_id: role.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_roles_can_never_hold_owner_only_permissions() {
        let allowed = assignable();
        for owner_only in [
            ("users", "manage"),
            ("roles", "manage"),
            ("api_tokens", "manage"),
        ] {
            assert!(
                !allowed
                    .iter()
                    .any(|p| (p.object.as_str(), p.action.as_str()) == owner_only),
                "{owner_only:?}"
            );
        }
        assert!(
            allowed
                .iter()
                .any(|p| p.object == "nodes" && p.action == "read")
        );
    }
}
