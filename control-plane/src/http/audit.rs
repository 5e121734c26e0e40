//! `/v1/audit`: read with filters and cursor pagination, export as JSON Lines (streamed), verify
//! the chain (against the stored checkpoints, and any the caller kept), and checkpoints.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use crate::audit::{self, Checkpoint, Row, Verification};
use crate::audit_keys::{self, PublicKeys};
use crate::auth::{Action, Principal};

/// The audit log spans the fleet: a scoped principal may not read it.
fn authorize(principal: &Principal, action: Action) -> ApiResult<()> {
    principal.authorize(action)?;
    if principal.is_scoped() {
        return Err(ApiError::forbidden(
            "the audit log is not visible to a scoped principal",
        ));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target_kind: Option<String>,
    pub target_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct Page {
    pub items: Vec<Row>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn parse_cursor(cursor: Option<&str>) -> ApiResult<Option<i64>> {
    cursor
        .map(|c| {
            c.strip_prefix("s")
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::bad_request("malformed cursor"))
        })
        .transpose()
}

/// Newest first.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(filter): ApiQuery<Filter>,
) -> ApiResult<Json<Page>> {
    authorize(&principal, Action::AuditRead)?;
    let limit = filter.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::validation("limit must be between 1 and 500"));
    }
    let before = parse_cursor(filter.cursor.as_deref())?.unwrap_or(i64::MAX);
    let mut items = sqlx::query_as!(
        Row,
        "select seq, id, occurred_at, actor_kind, actor_id, auth_method, action, target_kind,
                target_id, reason, outcome, request_id, detail, prev_hash, hash
         from audit_events
         where seq < $1
           and ($2::text is null or actor_id = $2)
           and ($3::text is null or action = $3)
           and ($4::text is null or target_kind = $4)
           and ($5::text is null or target_id = $5)
           and ($6::timestamptz is null or occurred_at >= $6)
           and ($7::timestamptz is null or occurred_at < $7)
         order by seq desc limit $8",
        before,
        filter.actor,
        filter.action,
        filter.target_kind,
        filter.target_id,
        filter.since,
        filter.until,
        limit + 1
    )
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = if items.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
        items.pop();
        items.last().map(|r| format!("s{}", r.seq))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

#[derive(Debug, Serialize)]
pub struct PublicKeyView {
    pub key_id: String,
    /// Base64 of the raw Ed25519 public key.
    pub public_key: String,
}

#[derive(Debug, Serialize)]
pub struct CheckpointList {
    pub items: Vec<Checkpoint>,
    pub keys: Vec<PublicKeyView>,
}

async fn public_keys(state: &AppState) -> ApiResult<Vec<PublicKeyView>> {
    Ok(
        sqlx::query!("select id, public_key from audit_signing_keys order by created_at")
            .fetch_all(&state.pool)
            .await?
            .into_iter()
            .map(|r| PublicKeyView {
                key_id: r.id,
                public_key: base64::engine::general_purpose::STANDARD.encode(r.public_key),
            })
            .collect(),
    )
}

pub async fn checkpoints(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<CheckpointList>> {
    authorize(&principal, Action::AuditRead)?;
    Ok(Json(CheckpointList {
        items: audit_keys::stored(&state.pool).await?,
        keys: public_keys(&state).await?,
    }))
}

/// Signs the current head now (201), or answers the latest checkpoint if the head has not moved
/// since (200).
pub async fn create_checkpoint(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Response> {
    authorize(&principal, Action::AuditExport)?;
    let now = state.clock.now();
    let signed = audit_keys::checkpoint(&state.pool, &state.signer, now)
        .await
        .map_err(|e| match e {
            audit_keys::CheckpointError::Database(d) => ApiError::from(d),
            tampered @ audit_keys::CheckpointError::Tampered(_) => {
                tracing::error!(error = %tampered, "audit chain tampered");
                ApiError::conflict(tampered.to_string())
            }
        })?;
    if let Some(cp) = signed {
        // Recorded after signing (the record itself moves the head past the checkpoint).
        let mut tx = state.pool.begin().await?;
        audit::record(
            &mut tx,
            now,
            audit::AuditEvent {
                actor: &principal.actor,
                action: "audit.checkpoint",
                target_kind: "audit",
                target_id: cp.seq.to_string(),
                reason: None,
                outcome: audit::Outcome::Success,
                detail: serde_json::json!({ "hash": cp.hash, "key_id": cp.key_id }),
            },
        )
        .await?;
        tx.commit().await?;
        return Ok((StatusCode::CREATED, Json(cp)).into_response());
    }
    let latest = audit_keys::stored(&state.pool)
        .await?
        .pop()
        .ok_or_else(|| ApiError::conflict("the audit log is empty: nothing to checkpoint"))?;
    Ok((StatusCode::OK, Json(latest)).into_response())
}

/// Walks the chain and checks the stored checkpoints.
pub async fn verify(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Verification>> {
    authorize(&principal, Action::AuditVerify)?;
    let stored = audit_keys::stored(&state.pool).await?;
    let keys = PublicKeys::of(&state.signer);
    Ok(Json(audit::verify(&state.pool, &stored, &keys).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Checkpoints kept elsewhere (from an earlier export), checked besides the stored ones.
    pub checkpoints: Vec<Checkpoint>,
}

/// Walks the chain and checks the stored checkpoints and the caller's.
pub async fn verify_with(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> ApiResult<Json<Verification>> {
    authorize(&principal, Action::AuditVerify)?;
    if body.checkpoints.len() > 10_000 {
        return Err(ApiError::validation("at most 10,000 checkpoints"));
    }
    let mut all = audit_keys::stored(&state.pool).await?;
    all.extend(body.checkpoints);
    all.sort_by_key(|c| c.seq);
    all.dedup();
    let keys = PublicKeys::of(&state.signer);
    Ok(Json(audit::verify(&state.pool, &all, &keys).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFilter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line<'a> {
    Event(&'a Row),
    Checkpoint(&'a Checkpoint),
    PublicKey(&'a PublicKeyView),
}

/// JSON Lines, oldest first: every event (in batches, so memory stays constant), then every
/// checkpoint and the public keys that verify them. Audited.
pub async fn export(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(filter): ApiQuery<ExportFilter>,
) -> ApiResult<Response> {
    authorize(&principal, Action::AuditExport)?;
    let now = state.clock.now();
    {
        let mut tx = state.pool.begin().await?;
        audit::record(
            &mut tx,
            now,
            audit::AuditEvent {
                actor: &principal.actor,
                action: "audit.export",
                target_kind: "audit",
                target_id: String::new(),
                reason: None,
                outcome: audit::Outcome::Success,
                detail: serde_json::json!({ "since": filter.since, "until": filter.until }),
            },
        )
        .await?;
        tx.commit().await?;
    }
    let checkpoints = audit_keys::stored(&state.pool).await?;
    let keys = public_keys(&state).await?;
    let pool = state.pool.clone();
    let stream = async_stream_lines(pool, filter, checkpoints, keys);
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"moltops-audit.jsonl\""),
    );
    Ok(response)
}

fn async_stream_lines(
    pool: sqlx::PgPool,
    filter: ExportFilter,
    checkpoints: Vec<Checkpoint>,
    keys: Vec<PublicKeyView>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send {
    const BATCH: i64 = 500;
    enum Phase {
        Events(i64),
        Tail,
        Done,
    }
    futures_util::stream::unfold(
        (Phase::Events(0), pool, filter, checkpoints, keys),
        |(phase, pool, filter, checkpoints, keys)| async move {
            match phase {
                Phase::Events(after) => {
                    let rows = sqlx::query_as!(
                        Row,
                        "select seq, id, occurred_at, actor_kind, actor_id, auth_method, action,
                                target_kind, target_id, reason, outcome, request_id, detail,
                                prev_hash, hash
                         from audit_events
                         where seq > $1
                           and ($2::timestamptz is null or occurred_at >= $2)
                           and ($3::timestamptz is null or occurred_at < $3)
                         order by seq limit $4",
                        after,
                        filter.since,
                        filter.until,
                        BATCH
                    )
                    .fetch_all(&pool)
                    .await;
                    match rows {
                        Err(e) => {
                            tracing::error!(error = %e, "audit export failed mid-stream");
                            Some((
                                Err(std::io::Error::other("audit export failed")),
                                (Phase::Done, pool, filter, checkpoints, keys),
                            ))
                        }
                        Ok(rows) if rows.is_empty() => Some((
                            Ok(Vec::new()),
                            (Phase::Tail, pool, filter, checkpoints, keys),
                        )),
                        Ok(rows) => {
                            let last = rows.last().map_or(after, |r| r.seq);
                            let mut out = Vec::with_capacity(rows.len() * 400);
                            for row in &rows {
                                push_line(&mut out, &Line::Event(row));
                            }
                            Some((
                                Ok(out),
                                (Phase::Events(last), pool, filter, checkpoints, keys),
                            ))
                        }
                    }
                }
                Phase::Tail => {
                    let mut out = Vec::new();
                    for cp in &checkpoints {
                        push_line(&mut out, &Line::Checkpoint(cp));
                    }
                    for key in &keys {
                        push_line(&mut out, &Line::PublicKey(key));
                    }
                    Some((Ok(out), (Phase::Done, pool, filter, checkpoints, keys)))
                }
                Phase::Done => None,
            }
        },
    )
}

fn push_line(out: &mut Vec<u8>, line: &Line<'_>) {
    if serde_json::to_writer(&mut *out, line).is_ok() {
        out.push(b'\n');
    }
}
