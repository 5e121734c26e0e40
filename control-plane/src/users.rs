//! Users: paired devices and SSO users. Owners change a device's role and scope or remove any
//! user; the change applies from the very next request, because every request re-reads the
//! principal, and removal revokes every session at once. An SSO user's role comes from the
//! provider's group mapping at each sign-in, so it is not edited here; removing an SSO user
//! disables it (later sign-ins are refused).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::{Actor, Role};

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: Uuid,
    pub kind: &'static str,
    pub name: String,
    pub role: String,
    pub scope: String,
    pub created_at: DateTime<Utc>,
    pub approved_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub active_sessions: i64,
    /// SSO users: the provider they sign in with, and their email.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub access_expires_at: DateTime<Utc>,
    pub refresh_expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn list(pool: &PgPool, now: DateTime<Utc>) -> Result<Vec<User>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select d.id, d.name, d.role, d.scope, d.created_at, d.approved_by, d.revoked_at,
                  (select count(*) from device_sessions s
                   where s.device_id = d.id and s.revoked_at is null and s.refresh_expires_at > $1) as "active!"
           from devices d order by d.id"#,
        now
    )
    .fetch_all(pool)
    .await?;
    let mut users: Vec<User> = rows
        .into_iter()
        .map(|r| User {
            id: r.id,
            kind: "device",
            name: r.name,
            role: r.role,
            scope: r.scope,
            created_at: r.created_at,
            approved_by: r.approved_by,
            revoked_at: r.revoked_at,
            active_sessions: r.active,
            provider: None,
            email: None,
        })
        .collect();
    let sso = sqlx::query!(
        r#"select u.id, u.provider, u.email, u.name, u.role, u.scope, u.created_at, u.disabled_at,
                  (select count(*) from device_sessions s
                   where s.sso_user_id = u.id and s.revoked_at is null and s.refresh_expires_at > $1) as "active!"
           from sso_users u order by u.id"#,
        now
    )
    .fetch_all(pool)
    .await?;
    users.extend(sso.into_iter().map(|r| User {
        id: r.id,
        kind: "sso",
        name: if r.name.is_empty() {
            r.email.clone()
        } else {
            r.name
        },
        // No role: the groups no longer map to one; the user can do nothing.
        role: r.role.unwrap_or_default(),
        scope: r.scope,
        created_at: r.created_at,
        approved_by: format!("oidc:{}", r.provider),
        revoked_at: r.disabled_at,
        active_sessions: r.active,
        provider: Some(r.provider),
        email: Some(r.email),
    }));
    users.sort_by_key(|u| u.id);
    Ok(users)
}

pub async fn sessions(pool: &PgPool, user_id: Uuid) -> Result<Option<Vec<Session>>, sqlx::Error> {
    let exists = sqlx::query_scalar!(
        r#"select id as "id!" from devices where id = $1 union all select id from sso_users where id = $1"#,
        user_id
    )
    .fetch_optional(pool)
    .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let sessions = sqlx::query_as!(
        Session,
        "select id, created_at, access_expires_at, refresh_expires_at, revoked_at
         from device_sessions where device_id = $1 or sso_user_id = $1 order by id",
        user_id
    )
    .fetch_all(pool)
    .await?;
    Ok(Some(sessions))
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("no such user")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error(
        "an SSO user's role comes from the identity provider's group mapping; change the mapping"
    )]
    RoleFromProvider,
    #[error("{0}")]
    Unconfirmed(crate::confirm::ConfirmError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Whether a device or SSO user with this id exists (removed ones included).
pub async fn exists(pool: &PgPool, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let found = sqlx::query_scalar!(
        r#"select id as "id!" from devices where id = $1 union all select id from sso_users where id = $1"#,
        user_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

/// Sets a user's role and scope (audited with both values before and after).
pub async fn change_role(
    pool: &PgPool,
    actor: &Actor,
    user_id: Uuid,
    role: Role,
    scope: &str,
    now: DateTime<Utc>,
) -> Result<(), UserError> {
    if role == Role::Owner && !scope.is_empty() {
        return Err(UserError::Invalid("an owner is never scoped".into()));
    }
    let mut tx = pool.begin().await?;
    let sso = sqlx::query_scalar!("select id from sso_users where id = $1", user_id)
        .fetch_optional(&mut *tx)
        .await?;
    if sso.is_some() {
        return Err(UserError::RoleFromProvider);
    }
    let before = sqlx::query!(
        "select role, scope from devices where id = $1 and revoked_at is null for update",
        user_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(UserError::NotFound)?;
    sqlx::query!(
        "update devices set role = $2, scope = $3 where id = $1",
        user_id,
        role.as_str(),
        scope
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor,
            action: "user.role_change",
            target_kind: "user",
            target_id: user_id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({
                "before": { "role": before.role, "scope": before.scope },
                "after": { "role": role.as_str(), "scope": scope },
            }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Removes a user: the device is revoked (an SSO user disabled) and every session ends now. The
/// confirmation token is spent in the same transaction.
pub async fn remove(
    pool: &PgPool,
    actor: &Actor,
    user_id: Uuid,
    reason: &str,
    (token, intent): (&str, &crate::confirm::Intent<'_>),
    now: DateTime<Utc>,
) -> Result<(), UserError> {
    let mut tx = pool.begin().await?;
    crate::confirm::redeem(&mut tx, token, intent, now)
        .await
        .map_err(|e| match e {
            crate::confirm::ConfirmError::Database(d) => UserError::Database(d),
            other => UserError::Unconfirmed(other),
        })?;
    let device = sqlx::query_scalar!(
        "select revoked_at from devices where id = $1 for update",
        user_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let sso = sqlx::query_scalar!(
        "select disabled_at from sso_users where id = $1 for update",
        user_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let (already_gone, kind) = match (device, sso) {
        (Some(revoked), _) => (revoked.is_some(), "device"),
        (None, Some(disabled)) => (disabled.is_some(), "sso"),
        (None, None) => return Err(UserError::NotFound),
    };
    if !already_gone {
        if kind == "device" {
            sqlx::query!(
                "update devices set revoked_at = $2 where id = $1",
                user_id,
                now
            )
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query!(
                "update sso_users set disabled_at = $2 where id = $1",
                user_id,
                now
            )
            .execute(&mut *tx)
            .await?;
        }
        let ended = sqlx::query!(
            "update device_sessions set revoked_at = $2
             where (device_id = $1 or sso_user_id = $1) and revoked_at is null",
            user_id,
            now
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        audit::record(
            &mut tx,
            now,
            AuditEvent {
                actor,
                action: "user.remove",
                target_kind: "user",
                target_id: user_id.to_string(),
                reason: Some(reason),
                outcome: Outcome::Success,
                detail: json!({ "sessions_ended": ended, "kind": kind }),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
