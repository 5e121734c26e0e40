//! API tokens for automation: named, bound to a role, optionally expiring, shown once and stored
//! as a hash. [P2] adds the REST endpoints to list and revoke them.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::{Actor, Role};
use crate::crypto::{generate_secret, hash_secret};

/// Prefix of API token secrets (`mot_` + 256 random bits, base64url).
pub const TOKEN_PREFIX: &str = "mot_";

pub struct CreatedToken {
    pub id: Uuid,
    pub secret: zeroize::Zeroizing<String>,
}

pub async fn create(
    pool: &PgPool,
    actor: &Actor,
    name: &str,
    role: Role,
    scope: &str,
    expires_in: Option<Duration>,
    now: DateTime<Utc>,
) -> Result<CreatedToken, sqlx::Error> {
    let secret = generate_secret(TOKEN_PREFIX, 32, &mut rand::rng());
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "insert into api_tokens (id, name, role, scope, token_hash, created_at, expires_at) values ($1, $2, $3, $4, $5, $6, $7)",
        id,
        name,
        role.as_str(),
        scope,
        hash_secret(&secret),
        now,
        expires_in.map(|d| now + d)
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor,
            action: "api_token.create",
            target_kind: "api_token",
            target_id: id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({ "name": name, "role": role.as_str(), "scope": scope }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(CreatedToken { id, secret })
}

/// A token as listed (never the secret).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub scope: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, sqlx::Error> {
    sqlx::query_as!(
        TokenInfo,
        "select id, name, role, scope, created_at, expires_at, revoked_at, last_used_at from api_tokens order by id"
    )
    .fetch_all(pool)
    .await
}

/// Revokes a token at once; `None` when there is no such token. Revoking twice changes nothing.
pub async fn revoke(
    pool: &PgPool,
    actor: &Actor,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<()>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(row) = sqlx::query!(
        "select revoked_at from api_tokens where id = $1 for update",
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    if row.revoked_at.is_none() {
        sqlx::query!(
            "update api_tokens set revoked_at = $2 where id = $1",
            id,
            now
        )
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            now,
            AuditEvent {
                actor,
                action: "api_token.revoke",
                target_kind: "api_token",
                target_id: id.to_string(),
                reason: None,
                outcome: Outcome::Success,
                detail: json!({}),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Some(()))
}
