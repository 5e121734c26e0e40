//! Enrollment tokens and their redemption. A token is shown once at creation and stored only as
//! a hash. Redemption is a single conditional UPDATE (`uses < max_uses`), so N concurrent
//! redemptions of a single-use token yield exactly one success, whatever the replica count.

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use serde_json::{Value, json};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::Actor;
use crate::ca::{CaError, CertificateAuthority, IssuedCertificate};
use crate::crypto::{generate_secret, hash_secret};
use crate::fleet::{HostFacts, Labels};

/// Prefix of enrollment token secrets (`moe_` + 192 random bits, base64url).
pub const TOKEN_PREFIX: &str = "moe_";
const TOKEN_BYTES: usize = 24;
/// Anything longer cannot be one of ours; refused before hashing.
const MAX_TOKEN_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("unknown enrollment token")]
    UnknownToken,
    #[error("the enrollment token has expired")]
    Expired,
    #[error("the enrollment token was revoked")]
    Revoked,
    #[error("the enrollment token has already been used")]
    Exhausted,
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A token as listed (never the secret).
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: Uuid,
    pub labels: Value,
    pub note: String,
    pub max_uses: i32,
    pub uses: i32,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRow {
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.uses >= self.max_uses {
            "exhausted"
        } else if self.expires_at <= now {
            "expired"
        } else {
            "active"
        }
    }
}

/// What to create.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub ttl: Duration,
    pub max_uses: i32,
    pub labels: Labels,
    pub note: String,
}

/// Creates a token and its audit row in one transaction; returns the row and the secret.
pub async fn create_token(
    pool: &PgPool,
    actor: &Actor,
    new: &NewToken,
    now: DateTime<Utc>,
    rng: &mut (dyn RngCore + Send),
) -> Result<(TokenRow, zeroize::Zeroizing<String>), sqlx::Error> {
    let secret = generate_secret(TOKEN_PREFIX, TOKEN_BYTES, rng);
    let id = Uuid::now_v7();
    let labels = serde_json::to_value(&new.labels).unwrap_or_default();
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        TokenRow,
        "insert into enrollment_tokens (id, token_hash, labels, note, max_uses, created_at, created_by, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         returning id, labels, note, max_uses, uses, created_at, created_by, expires_at, revoked_at",
        id,
        hash_secret(&secret),
        labels,
        new.note,
        new.max_uses,
        now,
        actor.label(),
        now + new.ttl,
    )
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor,
            action: "enrollment_token.create",
            target_kind: "enrollment_token",
            target_id: id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({ "max_uses": new.max_uses, "ttl_seconds": new.ttl.num_seconds(), "labels": labels }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok((row, secret))
}

pub async fn list_tokens(db: impl PgExecutor<'_>) -> Result<Vec<TokenRow>, sqlx::Error> {
    sqlx::query_as!(
        TokenRow,
        "select id, labels, note, max_uses, uses, created_at, created_by, expires_at, revoked_at
         from enrollment_tokens order by id"
    )
    .fetch_all(db)
    .await
}

/// Revokes a token; `None` when there is no such token. Revoking twice is not an error.
pub async fn revoke_token(
    pool: &PgPool,
    actor: &Actor,
    token_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<()>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query!(
        "select revoked_at from enrollment_tokens where id = $1 for update",
        token_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    match found {
        None => return Ok(None),
        // Already revoked: nothing changes, so nothing is audited.
        Some(row) if row.revoked_at.is_some() => return Ok(Some(())),
        Some(_) => {}
    }
    sqlx::query!(
        "update enrollment_tokens set revoked_at = $2 where id = $1",
        token_id,
        now
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor,
            action: "enrollment_token.revoke",
            target_kind: "enrollment_token",
            target_id: token_id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Some(()))
}

/// Everything an enrolling agent sends. `Debug` leaves the token out.
pub struct EnrollRequest<'a> {
    pub token: &'a str,
    pub csr_der: &'a [u8],
    pub facts: HostFacts,
    pub agent_version: String,
}

impl std::fmt::Debug for EnrollRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"<redacted>")
            .field("csr_bytes", &self.csr_der.len())
            .field("facts", &self.facts)
            .field("agent_version", &self.agent_version)
            .finish()
    }
}

/// A successful enrollment.
#[derive(Debug)]
pub struct Enrolled {
    pub node_id: Uuid,
    pub certificate: IssuedCertificate,
}

/// Redeems a token for a node certificate. The token is checked (one indexed lookup) before the
/// CSR is even parsed, so an anonymous caller cannot make the server do costly work.
pub async fn enroll(
    pool: &PgPool,
    ca: &CertificateAuthority,
    request: EnrollRequest<'_>,
    certificate_lifetime: Duration,
    now: DateTime<Utc>,
    rng: &mut (dyn RngCore + Send),
) -> Result<Enrolled, EnrollError> {
    if request.token.len() > MAX_TOKEN_LEN || !request.token.starts_with(TOKEN_PREFIX) {
        return Err(EnrollError::UnknownToken);
    }
    let hash = hash_secret(request.token);
    let token = sqlx::query_as!(
        TokenRow,
        "select id, labels, note, max_uses, uses, created_at, created_by, expires_at, revoked_at
         from enrollment_tokens where token_hash = $1",
        hash
    )
    .fetch_optional(pool)
    .await?
    .ok_or(EnrollError::UnknownToken)?;
    match token.state(now) {
        "revoked" => return Err(EnrollError::Revoked),
        "exhausted" => return Err(EnrollError::Exhausted),
        "expired" => return Err(EnrollError::Expired),
        _ => {}
    }

    let csr = CertificateAuthority::parse_csr(request.csr_der)?;
    let node_id = Uuid::now_v7();
    let certificate = ca.sign_node_certificate(&csr, node_id, now, certificate_lifetime, rng)?;

    let mut tx = pool.begin().await?;
    // The authoritative check: the row lock makes concurrent redemptions queue here, and only
    // those that still find `uses < max_uses` succeed.
    let redeemed = sqlx::query!(
        "update enrollment_tokens set uses = uses + 1
         where id = $1 and revoked_at is null and expires_at > $2 and uses < max_uses
         returning labels",
        token.id,
        now
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(redeemed) = redeemed else {
        // Lost a race: say which one.
        let state = sqlx::query_as!(
            TokenRow,
            "select id, labels, note, max_uses, uses, created_at, created_by, expires_at, revoked_at
             from enrollment_tokens where id = $1",
            token.id
        )
        .fetch_one(&mut *tx)
        .await?;
        return Err(match state.state(now) {
            "revoked" => EnrollError::Revoked,
            "expired" => EnrollError::Expired,
            _ => EnrollError::Exhausted,
        });
    };
    let facts = &request.facts;
    sqlx::query!(
        "insert into nodes (id, hostname, labels, agent_version, os, os_version, arch, cpu_cores,
                            memory_bytes, disk_free_bytes, enrolled_at, enrollment_token_id,
                            certificate_serial, certificate_not_after)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        node_id,
        facts.hostname,
        redeemed.labels,
        request.agent_version,
        facts.os,
        facts.os_version,
        facts.arch,
        facts.cpu_cores,
        facts.memory_bytes,
        facts.disk_free_bytes,
        now,
        token.id,
        certificate.serial_hex,
        certificate.not_after,
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor: &Actor::Agent { node_id },
            action: "node.enroll",
            target_kind: "node",
            target_id: node_id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({
                "enrollment_token_id": token.id,
                "hostname": facts.hostname,
                "certificate_serial": certificate.serial_hex,
            }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Enrolled {
        node_id,
        certificate,
    })
}
