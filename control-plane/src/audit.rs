//! The audit trail: one append-only, hash-chained table written through one function.
//!
//! Every change to the fleet calls [`record`] inside the same transaction as the change, so a
//! change that cannot be audited does not happen. [`record`] locks the single chain-head row,
//! takes the next sequence number, and stores `hash = SHA-256(prev_hash || canonical(row))`
//! ([`canonical`]). The lock is held until the writer commits, so appends from any number of
//! requests and replicas form one chain without forks or gaps (a rolled-back writer rolls back
//! its head move too). The database refuses UPDATE, DELETE and TRUNCATE on the table.
//!
//! [`verify`] re-walks the chain in batches and checks signed checkpoints (see
//! [`crate::audit_keys`]), reporting the first bad sequence number.

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::auth::Actor;

/// What an audit row says. `detail` must never hold a secret: callers put ids, names and
/// counts in it, never token values, keys or certificates' private parts.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub actor: &'a Actor,
    pub action: &'static str,
    pub target_kind: &'static str,
    pub target_id: String,
    pub reason: Option<&'a str>,
    pub outcome: Outcome,
    pub detail: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Denied,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failure => "failure",
        }
    }
}

tokio::task_local! {
    /// The id of the REST request being served (set by the HTTP layer), for the audit row.
    pub static REQUEST_ID: String;
}

/// The chain's first `prev_hash`.
pub const GENESIS: [u8; 32] = [0; 32];

/// One stored row, as the chain covers it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub seq: i64,
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub actor_kind: String,
    pub actor_id: String,
    pub auth_method: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub reason: Option<String>,
    pub outcome: String,
    pub request_id: String,
    pub detail: Value,
    #[serde(serialize_with = "hex_opt")]
    pub prev_hash: Option<Vec<u8>>,
    #[serde(serialize_with = "hex_opt")]
    pub hash: Option<Vec<u8>>,
}

fn hex_opt<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(bytes) => s.serialize_str(&hex::encode(bytes)),
        None => s.serialize_none(),
    }
}

/// How the actor authenticated, from what kind of actor it is.
pub fn auth_method(actor: &Actor) -> &'static str {
    match actor {
        Actor::ApiToken { .. } => "api_token",
        Actor::Device { .. } => "device_session",
        Actor::SsoUser { .. } => "sso_session",
        Actor::Agent { .. } => "mtls",
        Actor::Anonymous { .. } => "none",
        Actor::System { .. } => "system",
    }
}

/// The bytes the hash covers: a JSON array of the row's fields in a fixed order, objects with
/// their keys sorted, no whitespace, the time in RFC 3339 with microseconds (Postgres's
/// precision). Any change to any field changes these bytes.
pub fn canonical(row: &Row) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    let fields: [Value; 14] = [
        Value::from("moltops-audit-v1"),
        Value::from(row.seq),
        Value::from(row.id.to_string()),
        Value::from(
            row.occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
        Value::from(row.actor_kind.as_str()),
        Value::from(row.actor_id.as_str()),
        Value::from(row.auth_method.as_str()),
        Value::from(row.action.as_str()),
        Value::from(row.target_kind.as_str()),
        Value::from(row.target_id.as_str()),
        row.reason.as_deref().map_or(Value::Null, Value::from),
        Value::from(row.outcome.as_str()),
        Value::from(row.request_id.as_str()),
        row.detail.clone(),
    ];
    out.push('[');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_canonical(field, &mut out);
    }
    out.push(']');
    out.into_bytes()
}

/// Canonical JSON text of a value (keys sorted, no whitespace).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

/// JSON with object keys sorted bytewise, whatever map order serde_json was built with.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `SHA-256(prev_hash || canonical(row))`.
pub fn chain_hash(prev_hash: &[u8], row: &Row) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(canonical(row));
    hasher.finalize().to_vec()
}

/// Appends one audit row in the caller's transaction and returns its id.
pub async fn record(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    event: AuditEvent<'_>,
) -> Result<Uuid, sqlx::Error> {
    // Held until the caller commits: the one point that serialises the chain.
    let head = sqlx::query!("select seq, hash from audit_head where id for update")
        .fetch_one(&mut *conn)
        .await?;
    let row = Row {
        seq: head.seq + 1,
        id: Uuid::now_v7(),
        // Postgres keeps microseconds: hash what will be stored.
        occurred_at: now.trunc_subsecs(6),
        actor_kind: event.actor.kind().to_owned(),
        actor_id: event.actor.id(),
        auth_method: auth_method(event.actor).to_owned(),
        action: event.action.to_owned(),
        target_kind: event.target_kind.to_owned(),
        target_id: event.target_id,
        reason: event.reason.map(str::to_owned),
        outcome: event.outcome.as_str().to_owned(),
        request_id: REQUEST_ID.try_with(Clone::clone).unwrap_or_default(),
        detail: event.detail,
        prev_hash: Some(head.hash.clone()),
        hash: None,
    };
    let hash = chain_hash(&head.hash, &row);
    sqlx::query!(
        "insert into audit_events
           (seq, id, occurred_at, actor_kind, actor_id, auth_method, action, target_kind, target_id,
            reason, outcome, request_id, detail, prev_hash, hash)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        row.seq,
        row.id,
        row.occurred_at,
        row.actor_kind,
        row.actor_id,
        row.auth_method,
        row.action,
        row.target_kind,
        row.target_id,
        row.reason,
        row.outcome,
        row.request_id,
        row.detail,
        head.hash,
        hash,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "update audit_head set seq = $1, hash = $2 where id",
        row.seq,
        hash
    )
    .execute(&mut *conn)
    .await?;
    Ok(row.id)
}

/// Rows with `seq > after`, in order, at most `limit`.
pub async fn rows_after<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    after: i64,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as!(
        Row,
        "select seq, id, occurred_at, actor_kind, actor_id, auth_method, action, target_kind,
                target_id, reason, outcome, request_id, detail, prev_hash, hash
         from audit_events where seq > $1 order by seq limit $2",
        after,
        limit
    )
    .fetch_all(executor)
    .await
}

/// What a walk of the chain found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verification {
    pub ok: bool,
    /// Rows checked (chained rows only).
    pub rows_checked: i64,
    /// The last sequence number in the table.
    pub head_seq: i64,
    /// Rows written before the chain existed (not verifiable).
    pub unchained_rows: i64,
    pub checkpoints_checked: i64,
    /// The first sequence number at which the chain is broken, if any.
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
}

/// A checkpoint to check the chain against: `hash` at `seq`, signed.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    /// Hex.
    pub hash: String,
    pub signed_at: DateTime<Utc>,
    pub key_id: String,
    /// Base64 (standard) of the Ed25519 signature.
    pub signature: String,
}

/// Walks the whole chain in batches (constant memory) and checks every checkpoint given:
/// each must be validly signed by one of `keys` and match the row at its sequence number.
pub async fn verify(
    pool: &PgPool,
    checkpoints: &[Checkpoint],
    keys: &crate::audit_keys::PublicKeys,
) -> Result<Verification, sqlx::Error> {
    const BATCH: i64 = 1000;
    let head = sqlx::query!("select seq, hash, chain_start, legacy_rows from audit_head where id")
        .fetch_one(pool)
        .await?;
    let chain_start = head.chain_start;
    let unchained = sqlx::query_scalar!(
        r#"select count(*) as "n!" from audit_events where seq < $1"#,
        chain_start
    )
    .fetch_one(pool)
    .await?;
    let mut result = Verification {
        ok: true,
        rows_checked: 0,
        head_seq: chain_start - 1,
        unchained_rows: unchained,
        checkpoints_checked: 0,
        first_bad_seq: None,
        problem: None,
    };
    let fail = |result: &mut Verification, seq: i64, problem: String| {
        if result.first_bad_seq.is_none_or(|s| seq < s) {
            result.first_bad_seq = Some(seq);
            result.problem = Some(problem);
        }
        result.ok = false;
    };
    if unchained != head.legacy_rows {
        fail(
            &mut result,
            0,
            format!(
                "{} rows sit before the chain, but {} did when it began: rows were slipped in below it",
                unchained, head.legacy_rows
            ),
        );
    }
    // Checkpoints by sequence number; each is checked when the walk reaches it.
    let mut pending: Vec<&Checkpoint> = checkpoints.iter().collect();
    pending.sort_by_key(|c| c.seq);
    let mut pending = pending.into_iter().peekable();
    let mut expected_seq = chain_start;
    let mut prev = GENESIS.to_vec();
    let mut after = chain_start - 1;
    'walk: loop {
        let batch = rows_after(pool, after, BATCH).await?;
        if batch.is_empty() {
            break;
        }
        for row in &batch {
            after = row.seq;
            result.head_seq = row.seq;
            if row.seq != expected_seq {
                fail(
                    &mut result,
                    expected_seq,
                    format!("row {expected_seq} is missing (next row is {})", row.seq),
                );
                break 'walk;
            }
            expected_seq += 1;
            result.rows_checked += 1;
            if row.prev_hash.as_deref() != Some(prev.as_slice()) {
                fail(
                    &mut result,
                    row.seq,
                    format!("row {} does not link to the row before it", row.seq),
                );
                break 'walk;
            }
            let computed = chain_hash(&prev, row);
            if row.hash.as_deref() != Some(computed.as_slice()) {
                fail(
                    &mut result,
                    row.seq,
                    format!(
                        "row {} was altered (its hash does not match its content)",
                        row.seq
                    ),
                );
                break 'walk;
            }
            while let Some(cp) = pending.next_if(|c| c.seq <= row.seq) {
                result.checkpoints_checked += 1;
                if let Err(problem) = check_checkpoint(cp, keys) {
                    fail(&mut result, cp.seq, problem);
                } else if cp.seq == row.seq && hex::encode(&computed) != cp.hash {
                    fail(
                        &mut result,
                        cp.seq,
                        format!(
                            "row {} differs from the signed checkpoint of {}: the chain was rewritten",
                            cp.seq, cp.signed_at
                        ),
                    );
                } else if cp.seq < row.seq {
                    // A checkpoint whose row the walk passed without seeing it (a gap).
                    fail(
                        &mut result,
                        cp.seq,
                        format!("checkpoint row {} is missing", cp.seq),
                    );
                }
            }
            prev = computed;
        }
    }
    // The head must be the last row: otherwise rows were cut from the end (or added past it).
    if result.first_bad_seq.is_none()
        && (head.seq != result.head_seq || (head.seq >= chain_start && head.hash != prev))
    {
        let last = result.head_seq;
        fail(
            &mut result,
            last.min(head.seq) + 1,
            format!(
                "the chain head says row {} but the last row is {last}: rows were removed from the end",
                head.seq
            ),
        );
    }
    // Checkpoints beyond the end: the tail was cut off.
    for cp in pending {
        result.checkpoints_checked += 1;
        let head = result.head_seq;
        match check_checkpoint(cp, keys) {
            Err(problem) => fail(&mut result, cp.seq, problem),
            Ok(()) => fail(
                &mut result,
                head + 1,
                format!(
                    "the chain ends at {head} but a checkpoint signed at {} covers row {}: rows were removed from the end",
                    cp.signed_at, cp.seq
                ),
            ),
        }
    }
    Ok(result)
}

fn check_checkpoint(cp: &Checkpoint, keys: &crate::audit_keys::PublicKeys) -> Result<(), String> {
    let hash =
        hex::decode(&cp.hash).map_err(|_| format!("checkpoint {} has a malformed hash", cp.seq))?;
    let signature =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &cp.signature)
            .map_err(|_| format!("checkpoint {} has a malformed signature", cp.seq))?;
    keys.verify(&cp.key_id, cp.seq, &hash, cp.signed_at, &signature)
        .map_err(|e| format!("checkpoint {}: {e}", cp.seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row() -> Row {
        Row {
            seq: 7,
            id: Uuid::nil(),
            occurred_at: DateTime::from_timestamp(1_800_000_000, 123_456_000).unwrap_or_default(),
            actor_kind: "api_token".into(),
            actor_id: "a".into(),
            auth_method: "api_token".into(),
            action: "node.revoke".into(),
            target_kind: "node".into(),
            target_id: "n".into(),
            reason: Some("decommissioned".into()),
            outcome: "success".into(),
            request_id: "r".into(),
            detail: json!({ "b": 1, "a": [true, null, "x"] }),
            prev_hash: None,
            hash: None,
        }
    }

    #[test]
    fn canonical_form_is_fixed_and_covers_every_field() {
        let text = String::from_utf8(canonical(&row())).unwrap_or_default();
        assert_eq!(
            text,
            r#"["moltops-audit-v1",7,"00000000-0000-0000-0000-000000000000","2027-01-15T08:00:00.123456Z","api_token","a","api_token","node.revoke","node","n","decommissioned","success","r",{"a":[true,null,"x"],"b":1}]"#
        );
        let base = chain_hash(&GENESIS, &row());
        type Mutation = Box<dyn Fn(&mut Row)>;
        let mutations: Vec<Mutation> = vec![
            Box::new(|r| r.seq += 1),
            Box::new(|r| r.id = Uuid::max()),
            Box::new(|r| r.occurred_at += chrono::Duration::microseconds(1)),
            Box::new(|r| r.actor_kind.push('x')),
            Box::new(|r| r.actor_id.push('x')),
            Box::new(|r| r.auth_method.push('x')),
            Box::new(|r| r.action.push('x')),
            Box::new(|r| r.target_kind.push('x')),
            Box::new(|r| r.target_id.push('x')),
            Box::new(|r| r.reason = None),
            Box::new(|r| r.outcome.push('x')),
            Box::new(|r| r.request_id.push('x')),
            Box::new(|r| r.detail = json!({ "b": 2, "a": [true, null, "x"] })),
        ];
        for (i, mutate) in mutations.iter().enumerate() {
            let mut changed = row();
            mutate(&mut changed);
            assert_ne!(chain_hash(&GENESIS, &changed), base, "field {i}");
        }
        assert_ne!(chain_hash(&[1; 32], &row()), base, "the previous hash");
    }

    #[test]
    fn key_order_does_not_matter_but_values_do() {
        let mut a = row();
        let mut b = row();
        a.detail = serde_json::from_str(r#"{"x": 1, "y": {"q": 2, "p": 3}}"#).unwrap_or_default();
        b.detail = serde_json::from_str(r#"{"y": {"p": 3, "q": 2}, "x": 1}"#).unwrap_or_default();
        assert_eq!(canonical(&a), canonical(&b));
    }
}
