//! The audit trail's single write path. Every change to the fleet calls [`record`] inside the
//! same transaction as the change, so a change that cannot be audited does not happen.
//! [P3] extends this one function with the hash chain; callers do not change.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
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

/// Appends one audit row in the caller's transaction and returns its id.
pub async fn record(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    event: AuditEvent<'_>,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query!(
        "insert into audit_events
           (id, occurred_at, actor_kind, actor_id, action, target_kind, target_id, reason, outcome, detail)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        id,
        now,
        event.actor.kind(),
        event.actor.id(),
        event.action,
        event.target_kind,
        event.target_id,
        event.reason,
        event.outcome.as_str(),
        event.detail,
    )
    .execute(conn)
    .await?;
    Ok(id)
}
