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
    expires_in: Option<Duration>,
    now: DateTime<Utc>,
) -> Result<CreatedToken, sqlx::Error> {
    let secret = generate_secret(TOKEN_PREFIX, 32, &mut rand::rng());
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "insert into api_tokens (id, name, role, token_hash, created_at, expires_at) values ($1, $2, $3, $4, $5, $6)",
        id,
        name,
        role.as_str(),
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
            detail: json!({ "name": name, "role": role.as_str() }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(CreatedToken { id, secret })
}
