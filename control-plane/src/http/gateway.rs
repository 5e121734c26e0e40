//! The managed gateway on a node: install (seed `POST /install/local`), its status (seed `GET
//! /moltbot/status`), start/stop/restart (seed `POST /ops/action`), and the jobs these start
//! (`GET /v1/jobs/{job_id}`). Installs and actions are commands to the node's agent, stored
//! first, confirmed (they are destructive), audited in the same transaction.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath};
use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::{Action, Principal};
use crate::fleet;
use crate::jobs::{self, NewCommand};

const MAX_REASON: usize = 500;

fn check_reason(reason: &str) -> ApiResult<()> {
    if reason.trim().is_empty()
        || reason.chars().count() > MAX_REASON
        || reason.chars().any(char::is_control)
    {
        return Err(ApiError::validation(
            "reason is required (at most 500 characters, no control characters): this is destructive, say why",
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Npm,
    Docker,
    Brew,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Stable,
    Beta,
    Nightly,
}

/// The seed's `InstallLocalRequest`, plus an exact version and the reason.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    pub method: Method,
    #[serde(default)]
    pub channel: Option<Channel>,
    /// An exact version (CalVer such as 2026.9.1); otherwise the channel's.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// The seed's `JobAccepted`.
#[derive(Debug, Serialize)]
pub struct JobAccepted {
    pub job_id: Uuid,
    pub status: &'static str,
}

/// Loads the node for a command (locked for share): 404 outside the scope, 409 when revoked.
pub(super) async fn commandable(
    tx: &mut sqlx::PgConnection,
    principal: &Principal,
    node_id: Uuid,
) -> ApiResult<()> {
    let node = sqlx::query!(
        "select revoked_at, labels from nodes where id = $1 for share",
        node_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("no such node"))?;
    principal.authorize_node(
        Action::CommandsCreate,
        &serde_json::from_value(node.labels).unwrap_or_default(),
    )?;
    if node.revoked_at.is_some() {
        return Err(ApiError::conflict("the node is revoked"));
    }
    Ok(())
}

/// Node exists and is in scope (for the 404 before a confirmation is offered).
async fn visible(state: &AppState, principal: &Principal, node_id: Uuid) -> ApiResult<()> {
    let node = fleet::get_node(&state.pool, node_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such node"))?;
    principal.authorize_node(Action::CommandsCreate, &node.labels())
}

/// A confirmed command for a node's agent.
struct Job<'a> {
    node_id: Uuid,
    kind: &'static str,
    payload: &'a Value,
    audit_action: &'static str,
    reason: &'a str,
}

/// A retry of a request that already created its job (same `Idempotency-Key`, same request):
/// (job id, audit event id) of that job. Checked before any confirmation is asked for or spent,
/// so a client that lost the answer can simply send the same request again.
async fn replayed(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    job: &Job<'_>,
) -> ApiResult<Option<(Uuid, Uuid)>> {
    let key = super::jobs::idempotency_key(headers)?;
    let hash = super::jobs::request_hash(job.node_id, job.kind, job.payload, job.reason);
    Ok(super::jobs::replay(state, principal, key.as_deref(), &hash)
        .await?
        .map(|row| (row.id, row.audit_event_id.unwrap_or_default())))
}

/// Queues the command with its audit row, spending the confirmation in the same transaction;
/// returns (command id, audit event id).
async fn enqueue(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    job: Job<'_>,
    confirmation: (&str, &crate::confirm::Intent<'_>),
) -> ApiResult<(Uuid, Uuid)> {
    let Job {
        node_id,
        kind,
        payload,
        audit_action,
        reason,
    } = job;
    let key = super::jobs::idempotency_key(headers)?;
    let hash = super::jobs::request_hash(node_id, kind, payload, reason);
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    commandable(&mut tx, principal, node_id).await?;
    crate::confirm::redeem(&mut tx, confirmation.0, confirmation.1, now)
        .await
        .map_err(super::confirm::confirm_error)?;
    let created_by = principal.actor.label();
    let new = NewCommand {
        node_id,
        kind,
        payload,
        created_by: &created_by,
        idempotency: key.as_deref().map(|k| (k, hash.as_str())),
    };
    let command = match jobs::enqueue_command(&mut tx, new, now).await {
        Ok(c) => c,
        Err(e) if super::jobs::is_idempotency_race(&e) => {
            // A concurrent request with the same key won; its confirmation spend is undone
            // with this transaction, and the caller gets the winner's job.
            drop(tx);
            let row = super::jobs::replay(state, principal, key.as_deref(), &hash)
                .await?
                .ok_or_else(|| ApiError::internal(e))?;
            return Ok((row.id, row.audit_event_id.unwrap_or_default()));
        }
        Err(e) => return Err(e.into()),
    };
    let event = audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor: &principal.actor,
            action: audit_action,
            target_kind: "node",
            target_id: node_id.to_string(),
            reason: Some(reason),
            outcome: Outcome::Success,
            detail: json!({ "job_id": command.id, "kind": kind, "parameters": payload }),
        },
    )
    .await?;
    jobs::set_audit_event(&mut *tx, command.id, event).await?;
    tx.commit().await?;
    Ok((command.id, event))
}

pub async fn install(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiPath(node_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<InstallRequest>,
) -> ApiResult<(StatusCode, Json<JobAccepted>)> {
    principal.authorize(Action::CommandsCreate)?;
    check_reason(&body.reason)?;
    // The agent decides whether its host can use the method (docker and brew need their CLIs;
    // a host without them fails the job with that reason).
    let method = match body.method {
        Method::Npm => "npm",
        Method::Docker => "docker",
        Method::Brew => "brew",
    };
    let channel = match body.channel.unwrap_or(Channel::Stable) {
        Channel::Stable => "stable",
        Channel::Beta => "beta",
        Channel::Nightly => "nightly",
    };
    let version = body.version.unwrap_or_default();
    // Exact: three numeric fields, an optional pre-release tag (npm would read `2026` as a range).
    let (core, pre) = version.split_once('-').unwrap_or((version.as_str(), ""));
    let exact = core.split('.').count() == 3
        && core
            .split('.')
            .all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
        && pre
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !version.is_empty() && (version.len() > 64 || !exact) {
        return Err(ApiError::validation(
            "version must be an exact version such as 2026.9.1",
        ));
    }
    visible(&state, &principal, node_id).await?;
    let payload = json!({ "method": method, "channel": channel, "version": version });
    let params = json!({ "parameters": payload, "reason": body.reason.trim() });
    let intent = crate::confirm::Intent {
        actor: &principal.actor,
        action: "gateway.install",
        target: node_id.to_string(),
        params: &params,
    };
    let job = Job {
        node_id,
        kind: "install",
        payload: &payload,
        audit_action: "gateway.install",
        reason: body.reason.trim(),
    };
    let (job_id, _) = match replayed(&state, &principal, &headers, &job).await? {
        Some(done) => done,
        None => {
            let token = super::confirm::token_or_428(&state, &headers, &intent).await?;
            enqueue(&state, &principal, &headers, job, (&token, &intent)).await?
        }
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(JobAccepted {
            job_id,
            status: "accepted",
        }),
    ))
}

/// The seed's `OpsActionRequest`, plus the reason.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsActionRequest {
    pub action: String,
    #[serde(default)]
    pub params: Option<serde_json::Map<String, Value>>,
    /// The confirmation token may come here (as in the seed) or in `X-Confirmation-Token`.
    #[serde(default)]
    pub confirmation_token: Option<String>,
    #[serde(default)]
    pub reason: String,
}

/// The seed's `OpsActionResult`.
#[derive(Debug, Serialize)]
pub struct OpsActionResult {
    pub ok: bool,
    pub message: String,
    pub audit_event_id: Uuid,
    pub job_id: Option<Uuid>,
}

pub async fn ops_action(
    State(state): State<AppState>,
    principal: Principal,
    mut headers: HeaderMap,
    ApiPath(node_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<OpsActionRequest>,
) -> ApiResult<Json<OpsActionResult>> {
    principal.authorize(Action::CommandsCreate)?;
    let action = match body.action.as_str() {
        a @ ("start" | "stop" | "restart") => a,
        "upgrade" | "backup" | "restore" | "rollback" => {
            return Err(ApiError::validation(format!(
                "{} is not available yet; start, stop and restart are",
                body.action
            )));
        }
        other => {
            return Err(ApiError::validation(format!(
                "unknown action {other:?} (start, stop, restart, upgrade, backup, restore, rollback)"
            )));
        }
    };
    check_reason(&body.reason)?;
    let timeout = body
        .params
        .as_ref()
        .and_then(|p| p.get("verify_timeout_seconds"))
        .map(|v| {
            v.as_u64()
                .filter(|s| (1..=600).contains(s))
                .ok_or_else(|| ApiError::validation("params.verify_timeout_seconds must be 1..600"))
        })
        .transpose()?
        .unwrap_or(60);
    visible(&state, &principal, node_id).await?;
    if let Some(token) = &body.confirmation_token
        && let Ok(value) = axum::http::HeaderValue::from_str(token)
    {
        headers.insert(crate::confirm::HEADER, value);
    }
    let payload = json!({ "action": action, "verify_timeout_seconds": timeout });
    let params = json!({ "parameters": payload, "reason": body.reason.trim() });
    let audit_action = match action {
        "start" => "gateway.start",
        "stop" => "gateway.stop",
        _ => "gateway.restart",
    };
    let intent = crate::confirm::Intent {
        actor: &principal.actor,
        action: audit_action,
        target: node_id.to_string(),
        params: &params,
    };
    let job = Job {
        node_id,
        kind: "service_action",
        payload: &payload,
        audit_action,
        reason: body.reason.trim(),
    };
    let (job_id, event) = match replayed(&state, &principal, &headers, &job).await? {
        Some(done) => done,
        None => {
            let token = super::confirm::token_or_428(&state, &headers, &intent).await?;
            enqueue(&state, &principal, &headers, job, (&token, &intent)).await?
        }
    };
    Ok(Json(OpsActionResult {
        ok: true,
        message: format!(
            "{action} accepted; job {job_id} reports success only once the gateway is verified {}",
            if action == "stop" { "gone" } else { "ready" }
        ),
        audit_event_id: event,
        job_id: Some(job_id),
    }))
}

/// The seed's `MoltBotStatus`, as the agent last reported it, with its age.
#[derive(Debug, Serialize)]
pub struct GatewayStatusView {
    pub installed: bool,
    pub running: bool,
    pub version: Option<String>,
    pub service_manager: String,
    pub config_path: Option<String>,
    pub last_start_time: Option<DateTime<Utc>>,
    pub restart_count_24h: i64,
    pub gateway_connected: bool,
    pub crash_loop: bool,
    pub last_exit: Option<String>,
    /// When the agent reported it (absent before the first report).
    pub reported_at: Option<DateTime<Utc>>,
    pub age_seconds: Option<i64>,
}

pub async fn status(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(node_id): ApiPath<Uuid>,
) -> ApiResult<Json<GatewayStatusView>> {
    principal.authorize(Action::NodesRead)?;
    let node = fleet::get_node(&state.pool, node_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such node"))?;
    principal.authorize_node(Action::NodesRead, &node.labels())?;
    let row = sqlx::query!(
        "select gateway, gateway_at from nodes where id = $1",
        node_id
    )
    .fetch_one(&state.pool)
    .await?;
    let g = row.gateway.unwrap_or_else(|| json!({}));
    let text = |k: &str| g[k].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let flag = |k: &str| g[k].as_bool().unwrap_or(false);
    let now = state.clock.now();
    Ok(Json(GatewayStatusView {
        installed: flag("installed"),
        running: flag("running"),
        version: text("version"),
        service_manager: text("service_manager").unwrap_or_else(|| "supervisor".into()),
        config_path: text("config_path"),
        last_start_time: g["last_start_unix_ms"]
            .as_i64()
            .filter(|ms| *ms > 0)
            .and_then(DateTime::from_timestamp_millis),
        restart_count_24h: g["restart_count_24h"].as_i64().unwrap_or(0),
        gateway_connected: flag("gateway_connected"),
        crash_loop: flag("crash_loop"),
        last_exit: text("last_exit"),
        reported_at: row.gateway_at,
        age_seconds: row.gateway_at.map(|t| (now - t).num_seconds().max(0)),
    }))
}
