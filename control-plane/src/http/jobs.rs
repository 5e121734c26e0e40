//! `/v1/jobs…`: the commands queued for agents, followed through their life — one job
//! (`GET /v1/jobs/{job_id}`), a page of them (`GET /v1/jobs`), its events as a resumable
//! Server-Sent Events stream (`GET /v1/jobs/{job_id}/events`, `Last-Event-ID`), and cooperative
//! cancel (`POST /v1/jobs/{job_id}/cancel`). Also the `Idempotency-Key` rules shared by every
//! request that starts a job.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiPath, ApiQuery, OptionalJson};
use super::nodes::CommandView;
use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::{Action, Principal};
use crate::fleet::Selector;
use crate::jobs::{self, Cancel, CommandRow, JobEvent, JobQuery};

/// The header a client sets to make a request that starts a job safe to retry.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The `Idempotency-Key` header, if given: 1 to 128 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=128).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::validation("Idempotency-Key must be 1 to 128 visible ASCII characters")
        })?;
    Ok(Some(key.to_owned()))
}

/// What makes two requests "the same request" for an idempotency key.
pub fn request_hash(
    node_id: Uuid,
    kind: &str,
    payload: &serde_json::Value,
    reason: &str,
) -> String {
    let canonical =
        json!({ "node_id": node_id, "kind": kind, "payload": payload, "reason": reason });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The job an earlier request with this key created, if any: the same request gets it back, a
/// different one is refused (422), so a key never silently means two things.
pub async fn replay(
    state: &AppState,
    principal: &Principal,
    key: Option<&str>,
    hash: &str,
) -> ApiResult<Option<CommandRow>> {
    let Some(key) = key else {
        return Ok(None);
    };
    let Some(row) = jobs::find_idempotent(&state.pool, &principal.actor.label(), key).await? else {
        return Ok(None);
    };
    if row.request_hash.as_deref() != Some(hash) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request; use a new key for a new request",
        ));
    }
    Ok(Some(row))
}

/// Whether a database error is the idempotency key's unique index (two concurrent requests with
/// one key: the loser answers with the winner's job).
pub fn is_idempotency_race(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.constraint())
        .is_some_and(|c| c == "commands_idempotency_idx")
}

/// Loads a job the principal may see (with `action`); another scope's job is a 404.
async fn visible_job(
    state: &AppState,
    principal: &Principal,
    job_id: Uuid,
    action: Action,
) -> ApiResult<CommandRow> {
    principal.authorize(action)?;
    let row = sqlx::query!(
        "select n.labels from commands c join nodes n on n.id = c.node_id where c.id = $1",
        job_id
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("no such job"))?;
    principal
        .authorize_node(
            action,
            &serde_json::from_value(row.labels).unwrap_or_default(),
        )
        .map_err(|_| ApiError::not_found("no such job"))?;
    jobs::get(&state.pool, job_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such job"))
}

/// A job: a command and where it stands.
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(job_id): ApiPath<Uuid>,
) -> ApiResult<Json<CommandView>> {
    let row = visible_job(&state, &principal, job_id, Action::CommandsRead).await?;
    Ok(Json(row.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub node_id: Option<Uuid>,
    pub status: Option<String>,
    pub kind: Option<String>,
    /// A label selector on the jobs' nodes.
    pub selector: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct JobList {
    pub items: Vec<CommandView>,
    pub next_cursor: Option<String>,
}

const STATUSES: [&str; 7] = [
    "queued",
    "dispatched",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "expired",
];

fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{id}", at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (micros, id) = text.split_once('|')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

/// Jobs, newest first, within the caller's scope.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<JobList>> {
    principal.authorize(Action::CommandsRead)?;
    if let Some(status) = &params.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        )));
    }
    if let Some(kind) = &params.kind
        && !["ping", "install", "service_action"].contains(&kind.as_str())
    {
        return Err(ApiError::bad_request(
            "kind must be one of ping, install, service_action",
        ));
    }
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    let before = match params.cursor.as_deref() {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::bad_request("invalid cursor"))?),
    };
    let selector =
        Selector::parse(params.selector.as_deref().unwrap_or("")).map_err(ApiError::bad_request)?;
    let Some(selector) = selector.and(&principal.scope) else {
        return Ok(Json(JobList {
            items: Vec::new(),
            next_cursor: None,
        }));
    };
    let query = JobQuery {
        node_id: params.node_id,
        status: params.status,
        kind: params.kind,
        selector,
        before,
        limit: limit + 1,
    };
    let mut rows = jobs::list(&state.pool, &query).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = more
        .then(|| rows.last().map(|r| encode_cursor(r.created_at, r.id)))
        .flatten();
    Ok(Json(JobList {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Resume after this event (the same as the `Last-Event-ID` header, which wins).
    pub after: Option<i32>,
}

fn sse_event(e: &JobEvent) -> Event {
    Event::default()
        .id(e.seq.to_string())
        .event(e.kind.clone())
        .data(serde_json::to_string(e).unwrap_or_default())
}

struct Follow {
    state: AppState,
    job_id: Uuid,
    after: i32,
    pending: VecDeque<JobEvent>,
    notices: tokio::sync::broadcast::Receiver<Uuid>,
    closing: tokio_util::sync::CancellationToken,
}

impl Follow {
    /// The next event, waiting for it if need be; none once the job has ended and every event
    /// was sent (or the replica is shutting down).
    async fn next(&mut self) -> Option<JobEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                self.after = e.seq;
                return Some(e);
            }
            // The status first: if it is final, every event before it is already visible.
            let status =
                sqlx::query_scalar!("select status from commands where id = $1", self.job_id)
                    .fetch_optional(&self.state.pool)
                    .await
                    .ok()
                    .flatten()?;
            let batch = jobs::events(&self.state.pool, self.job_id, self.after, 200)
                .await
                .ok()?;
            if !batch.is_empty() {
                self.pending.extend(batch);
                continue;
            }
            if jobs::is_terminal(&status) {
                return None;
            }
            // Wait for a notice about this job. Notices can be lost while the listener
            // reconnects, so the database is read again every few seconds regardless.
            let wait = async {
                loop {
                    match self.notices.recv().await {
                        Ok(id) if id == self.job_id => return true,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return true,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
                    }
                }
            };
            tokio::select! {
                () = self.closing.cancelled() => return None,
                open = wait => if !open { return None },
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct JobEventPage {
    pub items: Vec<JobEvent>,
    pub status: String,
    pub more: bool,
}

/// A job's events as Server-Sent Events: every event after `Last-Event-ID` (or `after`), then
/// new ones as they happen; the stream ends after the job's final state. A client that asks for
/// JSON only gets one page of what is recorded so far.
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiPath(job_id): ApiPath<Uuid>,
    ApiQuery(params): ApiQuery<EventParams>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let row = visible_job(&state, &principal, job_id, Action::CommandsRead).await?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i32>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event's id"))?,
        None => params.after.unwrap_or(0),
    };
    if after < 0 {
        return Err(ApiError::bad_request("after must not be negative"));
    }
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("application/json") && !accept.contains("text/event-stream") {
        const PAGE: i64 = 1000;
        let mut items = jobs::events(&state.pool, job_id, after, PAGE + 1).await?;
        let more = items.len() as i64 > PAGE;
        items.truncate(PAGE as usize);
        return Ok(Json(JobEventPage {
            items,
            status: row.status,
            more,
        })
        .into_response());
    }
    // Subscribed before the first read, so nothing that happens in between is missed.
    let follow = Follow {
        notices: state.hub.subscribe_job_events(),
        closing: state.hub.closing(),
        state,
        job_id,
        after,
        pending: VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let e = f.next().await?;
        Some((Ok::<_, Infallible>(sse_event(&e)), f))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Cancels a queued job at once; asks the agent to stop a dispatched or running one (202: it
/// ends as `cancelled` — or with its result, if it finished first).
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(job_id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<CancelRequest>,
) -> ApiResult<(StatusCode, Json<CommandView>)> {
    let reason = body
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if let Some(r) = reason
        && (r.chars().count() > 500 || r.chars().any(char::is_control))
    {
        return Err(ApiError::validation(
            "reason must be at most 500 characters, without control characters",
        ));
    }
    let row = visible_job(&state, &principal, job_id, Action::CommandsCreate).await?;
    let now = state.clock.now();
    let by = principal.actor.label();
    let mut tx = state.pool.begin().await?;
    let outcome = jobs::cancel(&mut tx, job_id, &by, reason, now).await?;
    let code = match &outcome {
        Cancel::Cancelled => StatusCode::OK,
        Cancel::Requested | Cancel::AlreadyRequested => StatusCode::ACCEPTED,
        Cancel::Finished(status) => {
            return Err(ApiError::conflict(format!(
                "the job already ended ({status}); there is nothing to cancel"
            )));
        }
    };
    if !matches!(outcome, Cancel::AlreadyRequested) {
        audit::record(
            &mut tx,
            now,
            AuditEvent {
                actor: &principal.actor,
                action: "job.cancel",
                target_kind: "command",
                target_id: job_id.to_string(),
                reason,
                outcome: Outcome::Success,
                detail: json!({
                    "node_id": row.node_id,
                    "kind": row.kind,
                    "was": row.status,
                    "cancelled_at_once": matches!(outcome, Cancel::Cancelled),
                }),
            },
        )
        .await?;
    }
    tx.commit().await?;
    let row = jobs::get(&state.pool, job_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such job"))?;
    Ok((code, Json(row.into())))
}
