//! Device pairing and device sessions.
//!
//! A device calls `/pair/start` and gets a short code to show and a secret to keep. An
//! Owner/Admin approves the code (binding a role and a name). The device then calls
//! `/pair/confirm` with code and secret and receives an access token (15 min) and a refresh token
//! (30 days, rotated on every use; presenting a replaced one revokes the session). At first boot,
//! while no Owner exists, a *setup code* is printed to the server console: it is pre-approved as
//! Owner and needs no secret, because the console is the trusted channel.
//!
//! Codes are 8 Crockford base-32 characters (40 bits); see docs/security.md for the guessing bound.

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::{Actor, Role};
use crate::crypto::{generate_secret, hash_secret};

pub const PAIRING_TTL: Duration = Duration::minutes(10);
pub const SETUP_TTL: Duration = Duration::minutes(10);
pub const ACCESS_TTL: Duration = Duration::minutes(15);
pub const REFRESH_TTL: Duration = Duration::days(30);
/// Pending pairings allowed at once, so an anonymous flood cannot grow the table without bound.
pub const MAX_PENDING: i64 = 10_000;

pub const ACCESS_PREFIX: &str = "moa_";
pub const REFRESH_PREFIX: &str = "mor_";
const SECRET_PREFIX: &str = "mop_";
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"; // pragma: allowlist secret
const CODE_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    #[error("unknown or expired pairing code")]
    UnknownCode,
    #[error("the pairing has not been approved yet")]
    NotApproved,
    #[error("the pairing code was already used")]
    AlreadyUsed,
    #[error("too many pending pairings; try again later")]
    TooManyPending,
    #[error("{0}")]
    Forbidden(String),
    #[error("invalid or expired refresh token")]
    InvalidRefresh,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A new 8-character code, shown as `XXXX-XXXX`.
pub fn generate_code(rng: &mut dyn RngCore) -> String {
    let mut out = String::with_capacity(CODE_LEN + 1);
    for i in 0..CODE_LEN {
        if i == 4 {
            out.push('-');
        }
        let index = (rng.next_u32() % 32) as usize;
        out.push(char::from(CODE_ALPHABET[index]));
    }
    out
}

/// Canonical form of a typed code: case, dashes and spaces ignored; O→0, I/L→1.
pub fn normalize_code(input: &str) -> Option<String> {
    let mut out = String::with_capacity(CODE_LEN);
    for c in input.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        };
        if !c.is_ascii() || !CODE_ALPHABET.contains(&(c as u8)) {
            return None;
        }
        out.push(c);
    }
    (out.len() == CODE_LEN).then_some(out)
}

fn code_hash(normalized: &str) -> Vec<u8> {
    hash_secret(&format!("pairing-code:{normalized}"))
}

/// What `/pair/start` returns.
pub struct Started {
    pub code: String,
    pub secret: Zeroizing<String>,
    pub expires_in: Duration,
}

pub async fn start(
    pool: &PgPool,
    client_addr: &str,
    requested_name: &str,
    now: DateTime<Utc>,
    rng: &mut (dyn RngCore + Send),
) -> Result<Started, PairingError> {
    let pending: i64 = sqlx::query_scalar!(
        r#"select count(*) as "n!" from pairings where consumed_at is null and expires_at > $1"#,
        now
    )
    .fetch_one(pool)
    .await?;
    if pending >= MAX_PENDING {
        return Err(PairingError::TooManyPending);
    }
    // Spent pairings are kept a day for the audit trail's sake, then dropped, so the space of
    // live codes stays nearly empty.
    sqlx::query!(
        "delete from pairings where expires_at < $1",
        now - Duration::days(1)
    )
    .execute(pool)
    .await?;
    let secret = generate_secret(SECRET_PREFIX, 24, rng);
    // A collision with a code still in the table is vanishingly rare; draw again if it happens.
    let mut attempts = 0;
    let mut tx = pool.begin().await?;
    let (code, pairing_id) = loop {
        let code = generate_code(rng);
        let normalized = normalize_code(&code).ok_or(PairingError::UnknownCode)?;
        let pairing_id = Uuid::now_v7();
        let inserted = sqlx::query!(
            "insert into pairings (id, kind, code_hash, secret_hash, client_addr, requested_name, created_at, expires_at)
             values ($1, 'device', $2, $3, $4, $5, $6, $7)
             on conflict (code_hash) do nothing",
            pairing_id,
            code_hash(&normalized),
            hash_secret(&secret),
            client_addr,
            requested_name,
            now,
            now + PAIRING_TTL
        )
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1 {
            break (code, pairing_id);
        }
        attempts += 1;
        if attempts >= 5 {
            return Err(PairingError::TooManyPending);
        }
    };
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor: &Actor::Anonymous {
                client: client_addr.to_owned(),
            },
            action: "pairing.start",
            target_kind: "pairing",
            target_id: pairing_id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({ "requested_name": requested_name }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Started {
        code,
        secret,
        expires_in: PAIRING_TTL,
    })
}

/// At start-up: if no Owner exists, mints a setup code (pre-approved as Owner) and returns it for
/// the console. Never served over HTTP.
pub async fn setup_code_if_ownerless(
    pool: &PgPool,
    now: DateTime<Utc>,
    rng: &mut (dyn RngCore + Send),
) -> Result<Option<String>, sqlx::Error> {
    let owner_exists: bool = sqlx::query_scalar!(
        r#"select exists(select 1 from api_tokens where role = 'owner' and revoked_at is null
                             and (expires_at is null or expires_at > $1))
               or exists(select 1 from devices where role = 'owner' and revoked_at is null) as "exists!""#,
        now
    )
    .fetch_one(pool)
    .await?;
    if owner_exists {
        return Ok(None);
    }
    let code = generate_code(rng);
    let normalized = normalize_code(&code).unwrap_or_default();
    sqlx::query!(
        "insert into pairings (id, kind, code_hash, created_at, expires_at, approved_at, approved_by, role)
         values ($1, 'setup', $2, $3, $4, $3, 'system:console', 'owner')",
        Uuid::now_v7(),
        code_hash(&normalized),
        now,
        now + SETUP_TTL
    )
    .execute(pool)
    .await?;
    Ok(Some(code))
}

/// A pending pairing, as listed to approvers (never the code or secret).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PendingPairing {
    pub id: Uuid,
    pub requested_name: String,
    pub client_addr: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub approved: bool,
}

pub async fn list_pending(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<Vec<PendingPairing>, sqlx::Error> {
    sqlx::query_as!(
        PendingPairing,
        r#"select id, requested_name, client_addr, created_at, expires_at, approved_at is not null as "approved!"
           from pairings where kind = 'device' and consumed_at is null and expires_at > $1
           order by created_at"#,
        now
    )
    .fetch_all(pool)
    .await
}

/// Approves a device's code, binding a role and a name. An approver cannot grant more than it
/// holds: only an Owner grants Owner.
/// What an approver decides about a device's code.
#[derive(Debug, Clone)]
pub struct Approval<'a> {
    pub code: &'a str,
    pub role: Role,
    pub device_name: &'a str,
    /// Label selector the device's role is limited to ('' for the whole fleet).
    pub scope: &'a str,
}

pub async fn approve(
    pool: &PgPool,
    approver: &Actor,
    approver_role: &Role,
    approval: Approval<'_>,
    now: DateTime<Utc>,
) -> Result<Uuid, PairingError> {
    let Approval {
        code,
        role,
        device_name,
        scope,
    } = approval;
    if role.grant_rank() > approver_role.rank() {
        return Err(PairingError::Forbidden(
            "nobody can approve a role above their own".into(),
        ));
    }
    if role == Role::Owner && !scope.is_empty() {
        return Err(PairingError::Forbidden("an owner is never scoped".into()));
    }
    let normalized = normalize_code(code).ok_or(PairingError::UnknownCode)?;
    let mut tx = pool.begin().await?;
    let row = sqlx::query!(
        "update pairings set approved_at = $2, approved_by = $3, role = $4, device_name = $5, scope = $6
         where code_hash = $1 and kind = 'device' and consumed_at is null and expires_at > $2
               and approved_at is null
         returning id",
        code_hash(&normalized),
        now,
        approver.label(),
        role.as_str(),
        device_name,
        scope
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(PairingError::UnknownCode)?;
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor: approver,
            action: "pairing.approve",
            target_kind: "pairing",
            target_id: row.id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({ "role": role.as_str(), "device_name": device_name, "scope": scope }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(row.id)
}

/// Access and refresh tokens for a device session.
pub struct Tokens {
    pub access: Zeroizing<String>,
    pub refresh: Zeroizing<String>,
    pub access_expires_in: Duration,
}

fn new_tokens(rng: &mut (dyn RngCore + Send)) -> Tokens {
    Tokens {
        access: generate_secret(ACCESS_PREFIX, 32, rng),
        refresh: generate_secret(REFRESH_PREFIX, 32, rng),
        access_expires_in: ACCESS_TTL,
    }
}

/// Redeems an approved code (once) for a device and its first session.
pub async fn confirm(
    pool: &PgPool,
    code: &str,
    secret: Option<&str>,
    device_name: &str,
    web: bool,
    now: DateTime<Utc>,
    rng: &mut (dyn RngCore + Send),
) -> Result<(Uuid, Tokens, Option<WebSession>), PairingError> {
    let normalized = normalize_code(code).ok_or(PairingError::UnknownCode)?;
    let mut tx = pool.begin().await?;
    let pairing = sqlx::query!(
        "select id, kind, secret_hash, approved_at, approved_by, role, device_name, scope, consumed_at, expires_at
         from pairings where code_hash = $1 for update",
        code_hash(&normalized)
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(PairingError::UnknownCode)?;
    // A device pairing is bound to the secret its starter received; without it, someone who only
    // saw the code on a screen cannot take the tokens.
    if let Some(expected) = &pairing.secret_hash {
        let presented = secret.map(hash_secret).unwrap_or_default();
        if !constant_time_eq(expected, &presented) {
            return Err(PairingError::UnknownCode);
        }
    }
    if pairing.expires_at <= now {
        return Err(PairingError::UnknownCode);
    }
    if pairing.consumed_at.is_some() {
        return Err(PairingError::AlreadyUsed);
    }
    let (Some(_), Some(role)) = (pairing.approved_at, pairing.role.as_deref()) else {
        return Err(PairingError::NotApproved);
    };
    if pairing.kind == "device" {
        approver_still_entitled(
            &mut tx,
            pairing.approved_by.as_deref(),
            role,
            &pairing.scope,
            now,
        )
        .await?;
    }
    let name = pairing
        .device_name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| device_name.to_owned());
    let device_id = Uuid::now_v7();
    sqlx::query!(
        "insert into devices (id, name, role, scope, created_at, approved_by) values ($1, $2, $3, $4, $5, $6)",
        device_id,
        name,
        role,
        pairing.scope,
        now,
        pairing.approved_by.as_deref().unwrap_or("unknown")
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "update pairings set consumed_at = $2, device_id = $3 where id = $1",
        pairing.id,
        now,
        device_id
    )
    .execute(&mut *tx)
    .await?;
    let mut tokens = new_tokens(rng);
    // A browser gets a cookie session (HttpOnly cookie + CSRF token), never tokens a script
    // could read.
    let web_session = web.then(|| WebSession {
        cookie: tokens.access.clone(),
        csrf: generate_secret("", 32, rng),
        expires_in: WEB_SESSION_TTL,
    });
    if web {
        tokens.access_expires_in = WEB_SESSION_TTL;
    }
    insert_owned_session(
        &mut tx,
        SessionOwner::Device(device_id),
        &tokens,
        web_session.as_ref().map(|w| w.csrf.as_str()),
        now,
    )
    .await?;
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor: &Actor::Device {
                id: device_id,
                name: name.clone(),
            },
            action: "pairing.confirm",
            target_kind: "device",
            target_id: device_id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({ "pairing_id": pairing.id, "kind": pairing.kind, "role": role, "session": if web { "cookie" } else { "tokens" } }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok((device_id, tokens, web_session))
}

/// An approval is only as good as its approver at the moment of use: if the approver was
/// removed, revoked, expired or demoted below the granted role, or its scope changed, since it
/// approved, the pairing no longer confirms.
async fn approver_still_entitled(
    tx: &mut sqlx::PgConnection,
    approved_by: Option<&str>,
    granted_role: &str,
    granted_scope: &str,
    now: DateTime<Utc>,
) -> Result<(), PairingError> {
    let revoked = || {
        PairingError::Forbidden("the approver of this pairing no longer holds that right".into())
    };
    let (kind, id) = approved_by
        .and_then(|a| a.split_once(':'))
        .ok_or_else(revoked)?;
    let id = Uuid::parse_str(id).map_err(|_| revoked())?;
    let holder = match kind {
        "api_token" => sqlx::query!(
            "select role, scope from api_tokens
                 where id = $1 and revoked_at is null and (expires_at is null or expires_at > $2)",
            id,
            now
        )
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| (r.role, r.scope)),
        "device" => sqlx::query!(
            "select role, scope from devices where id = $1 and revoked_at is null",
            id
        )
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| (r.role, r.scope)),
        "sso_user" => sqlx::query!(
            r#"select role as "role!", scope from sso_users
               where id = $1 and disabled_at is null and role is not null"#,
            id
        )
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| (r.role, r.scope)),
        _ => None,
    };
    let (role, scope) = holder.ok_or_else(revoked)?;
    let (Some(held), Some(granted)) = (Role::parse(&role), Role::parse(granted_role)) else {
        return Err(revoked());
    };
    if held.rank() < granted.grant_rank() || (!scope.is_empty() && scope != granted_scope) {
        return Err(revoked());
    }
    Ok(())
}

/// Whose session it is.
#[derive(Debug, Clone, Copy)]
pub enum SessionOwner {
    Device(Uuid),
    SsoUser(Uuid),
}

/// Inserts a session; a web session also stores its CSRF token's hash, and its access token
/// (the cookie) lives as long as the refresh token.
async fn insert_owned_session(
    tx: &mut sqlx::PgConnection,
    owner: SessionOwner,
    tokens: &Tokens,
    csrf: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Uuid, sqlx::Error> {
    let (device_id, sso_user_id) = match owner {
        SessionOwner::Device(id) => (Some(id), None),
        SessionOwner::SsoUser(id) => (None, Some(id)),
    };
    let id = Uuid::now_v7();
    sqlx::query!(
        "insert into device_sessions (id, device_id, sso_user_id, access_hash, access_expires_at,
                                      refresh_hash, refresh_expires_at, created_at, csrf_hash)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        id,
        device_id,
        sso_user_id,
        hash_secret(&tokens.access),
        now + tokens.access_expires_in,
        hash_secret(&tokens.refresh),
        now + match owner {
            // An SSO user signs in again at the provider at least this often.
            SessionOwner::SsoUser(_) => SSO_SESSION_TTL,
            SessionOwner::Device(_) => REFRESH_TTL,
        },
        now,
        csrf.map(hash_secret)
    )
    .execute(tx)
    .await?;
    Ok(id)
}

/// How long a browser session (cookie) lasts; it is not refreshed.
pub const WEB_SESSION_TTL: Duration = Duration::hours(12);
/// How long any SSO session lives, refreshes included: then the person signs in at the provider
/// again, which re-reads their groups.
pub const SSO_SESSION_TTL: Duration = Duration::hours(12);

/// A browser session: the cookie value and the CSRF token the page echoes in `X-CSRF-Token`.
pub struct WebSession {
    pub cookie: Zeroizing<String>,
    pub csrf: Zeroizing<String>,
    pub expires_in: Duration,
}

/// Starts a session for a signed-in SSO user: a web session (cookie + CSRF token) or, for the
/// CLI, access and refresh tokens. Audited in the same transaction.
pub async fn sso_session(
    pool: &PgPool,
    user_id: Uuid,
    actor: &Actor,
    web: bool,
    detail: serde_json::Value,
    now: DateTime<Utc>,
    rng: &mut (dyn RngCore + Send),
) -> Result<(Tokens, Option<WebSession>), sqlx::Error> {
    let mut tokens = new_tokens(rng);
    let web_session = web.then(|| WebSession {
        cookie: tokens.access.clone(),
        csrf: generate_secret("", 32, rng),
        expires_in: WEB_SESSION_TTL,
    });
    if web {
        tokens.access_expires_in = WEB_SESSION_TTL;
    }
    let mut tx = pool.begin().await?;
    let session_id = insert_owned_session(
        &mut tx,
        SessionOwner::SsoUser(user_id),
        &tokens,
        web_session.as_ref().map(|w| w.csrf.as_str()),
        now,
    )
    .await?;
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor,
            action: "session.login",
            target_kind: "session",
            target_id: session_id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail,
        },
    )
    .await?;
    tx.commit().await?;
    Ok((tokens, web_session))
}

/// Rotates a session's tokens. Presenting a refresh token that was already replaced revokes the
/// session: one of its two holders is not the device.
pub async fn refresh(
    pool: &PgPool,
    refresh_token: &str,
    now: DateTime<Utc>,
    rng: &mut (dyn RngCore + Send),
) -> Result<Tokens, PairingError> {
    if !refresh_token.starts_with(REFRESH_PREFIX) || refresh_token.len() > 128 {
        return Err(PairingError::InvalidRefresh);
    }
    let hash = hash_secret(refresh_token);
    let mut tx = pool.begin().await?;
    let spent = sqlx::query!(
        "select t.session_id, coalesce(s.device_id, s.sso_user_id) as \"owner!\" from spent_refresh_tokens t
         join device_sessions s on s.id = t.session_id where t.token_hash = $1",
        hash
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(spent) = spent {
        // A token this session already spent: one of its two holders is not the device.
        sqlx::query!(
            "update device_sessions set revoked_at = coalesce(revoked_at, $2) where id = $1",
            spent.session_id,
            now
        )
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            now,
            AuditEvent {
                actor: &Actor::System {
                    what: "session-guard",
                },
                action: "session.refresh_reuse",
                target_kind: "user",
                target_id: spent.owner.to_string(),
                reason: Some("a spent refresh token was presented again; the session was revoked"),
                outcome: Outcome::Denied,
                detail: json!({ "session_id": spent.session_id }),
            },
        )
        .await?;
        tx.commit().await?;
        return Err(PairingError::InvalidRefresh);
    }
    let session = sqlx::query!(
        r#"select s.id, s.refresh_expires_at, s.revoked_at, s.csrf_hash is not null as "web!",
                  (d.revoked_at is not null or u.disabled_at is not null
                   or (u.id is not null and u.role is null)) as "owner_gone!"
           from device_sessions s
           left join devices d on d.id = s.device_id
           left join sso_users u on u.id = s.sso_user_id
           where s.refresh_hash = $1
           for update of s"#,
        hash
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(PairingError::InvalidRefresh)?;
    // A web session is not refreshed: its cookie is its only credential.
    if session.revoked_at.is_some()
        || session.owner_gone
        || session.web
        || session.refresh_expires_at <= now
    {
        return Err(PairingError::InvalidRefresh);
    }
    sqlx::query!(
        "insert into spent_refresh_tokens (token_hash, session_id, spent_at) values ($1, $2, $3)",
        hash,
        session.id,
        now
    )
    .execute(&mut *tx)
    .await?;
    let tokens = new_tokens(rng);
    sqlx::query!(
        "update device_sessions set access_hash = $2, access_expires_at = $3, refresh_hash = $4
         where id = $1",
        session.id,
        hash_secret(&tokens.access),
        now + ACCESS_TTL,
        hash_secret(&tokens.refresh)
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor: &Actor::System {
                what: "session-refresh",
            },
            action: "session.refresh",
            target_kind: "session",
            target_id: session.id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(tokens)
}

/// Ends a session at once.
pub async fn logout(
    pool: &PgPool,
    actor: &Actor,
    session_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "update device_sessions set revoked_at = coalesce(revoked_at, $2) where id = $1",
        session_id,
        now
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor,
            action: "session.logout",
            target_kind: "session",
            target_id: session_id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({}),
        },
    )
    .await?;
    tx.commit().await
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn codes_have_the_shape_and_normalise() {
        let mut rng = StdRng::seed_from_u64(9);
        let code = generate_code(&mut rng);
        assert_eq!(code.len(), 9);
        assert_eq!(&code[4..5], "-");
        assert_eq!(normalize_code(&code).unwrap().len(), 8);
        assert_eq!(normalize_code("abcd-efgh"), Some("ABCDEFGH".into()));
        assert_eq!(normalize_code("o1l2 i3k4"), normalize_code("0112-13K4"));
        assert_eq!(
            normalize_code("ABCD-EFGU"),
            None,
            "U is not in the alphabet"
        );
        assert_eq!(normalize_code("ABCDEFG"), None);
        assert_eq!(normalize_code("ABCDEFGHJ"), None);
        assert_eq!(normalize_code("ÄBCDEFGH"), None);
        assert_ne!(generate_code(&mut rng), code);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
