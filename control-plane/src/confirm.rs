//! Confirmation tokens for destructive actions. A destructive operation called without a token
//! answers 428 with one, bound to (principal, action, target, SHA-256 of the parameters), valid
//! five minutes and good once; the same call with the token in `X-Confirmation-Token` goes
//! through, and the token is spent in the same transaction as the change and its audit row.

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::auth::Actor;
use crate::crypto::{generate_secret, hash_secret};

pub const TTL: Duration = Duration::minutes(5);
pub const PREFIX: &str = "mcf_";
pub const HEADER: &str = "x-confirmation-token";

/// What is being confirmed.
#[derive(Debug, Clone)]
pub struct Intent<'a> {
    pub actor: &'a Actor,
    pub action: &'static str,
    pub target: String,
    /// The operation's parameters (body and query), canonicalised before hashing.
    pub params: &'a Value,
}

impl Intent<'_> {
    fn params_hash(&self) -> Vec<u8> {
        Sha256::digest(crate::audit::canonical_json(self.params).as_bytes()).to_vec()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error(
        "the confirmation token is unknown, used, expired, or for another user, action, target or parameters"
    )]
    Invalid,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Issues a token for `intent`.
pub async fn issue(
    pool: &PgPool,
    intent: &Intent<'_>,
    now: DateTime<Utc>,
    rng: &mut (dyn RngCore + Send),
) -> Result<(Zeroizing<String>, DateTime<Utc>), sqlx::Error> {
    let token = generate_secret(PREFIX, 32, rng);
    let expires_at = now + TTL;
    sqlx::query!(
        "insert into confirmation_tokens
           (id, token_hash, principal, action, target, params_hash, created_at, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
        Uuid::now_v7(),
        hash_secret(&token),
        intent.actor.label(),
        intent.action,
        intent.target,
        intent.params_hash(),
        now,
        expires_at
    )
    .execute(pool)
    .await?;
    sqlx::query!(
        "delete from confirmation_tokens where expires_at < $1",
        now - TTL
    )
    .execute(pool)
    .await?;
    Ok((token, expires_at))
}

/// Spends the token in the caller's transaction if it matches `intent` exactly.
pub async fn redeem(
    conn: &mut PgConnection,
    token: &str,
    intent: &Intent<'_>,
    now: DateTime<Utc>,
) -> Result<(), ConfirmError> {
    if !token.starts_with(PREFIX) || token.len() > 128 {
        return Err(ConfirmError::Invalid);
    }
    let spent = sqlx::query!(
        "update confirmation_tokens set used_at = $2
         where token_hash = $1 and used_at is null and expires_at > $2
               and principal = $3 and action = $4 and target = $5 and params_hash = $6
         returning id",
        hash_secret(token),
        now,
        intent.actor.label(),
        intent.action,
        intent.target,
        intent.params_hash()
    )
    .fetch_optional(conn)
    .await?;
    spent.map(|_| ()).ok_or(ConfirmError::Invalid)
}
