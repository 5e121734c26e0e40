//! `/v1/nodes…`: the fleet registry, revocation, system info, and the ping command.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::{Action, Principal};
use crate::fleet::{self, Labels, NodeQuery, NodeRow, NodeStatus, Selector, validate_labels};
use crate::jobs::{self, CommandRow, NewCommand};

pub const DEFAULT_PAGE: i64 = 100;
pub const MAX_PAGE: i64 = 1000;
const MAX_REASON_LEN: usize = 1000;

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub id: Uuid,
    pub hostname: String,
    pub labels: Labels,
    pub status: NodeStatus,
    pub agent_version: String,
    pub os: String,
    pub arch: String,
    pub enrolled_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
    pub certificate_not_after: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The managed gateway at a glance, as last reported (none before the first report).
    pub gateway: Option<GatewayBrief>,
}

/// The gateway at a glance, for fleet lists (the full status is `GET …/moltbot/status`).
#[derive(Debug, Serialize)]
pub struct GatewayBrief {
    pub installed: bool,
    pub running: bool,
    pub ready: bool,
    pub version: Option<String>,
    pub crash_loop: bool,
}

impl GatewayBrief {
    fn from_report(g: &serde_json::Value) -> Self {
        let flag = |k: &str| g[k].as_bool().unwrap_or(false);
        Self {
            installed: flag("installed"),
            running: flag("running"),
            ready: flag("running") && flag("gateway_connected"),
            version: g["version"]
                .as_str()
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            crash_loop: flag("crash_loop"),
        }
    }
}

impl NodeView {
    fn new(row: NodeRow, state: &AppState, now: DateTime<Utc>) -> Self {
        Self {
            gateway: row.gateway.as_ref().map(GatewayBrief::from_report),
            status: row.status(state.settings.liveness, now),
            labels: row.labels(),
            id: row.id,
            hostname: row.hostname,
            agent_version: row.agent_version,
            os: row.os,
            arch: row.arch,
            enrolled_at: row.enrolled_at,
            last_seen: row.last_seen,
            certificate_not_after: row.certificate_not_after,
            revoked_at: row.revoked_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct NodeList {
    pub items: Vec<NodeView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub selector: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(cursor: &str) -> Option<Uuid> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    Uuid::from_slice(&bytes).ok()
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<NodeList>> {
    principal.authorize(Action::NodesRead)?;
    let selector =
        Selector::parse(params.selector.as_deref().unwrap_or("")).map_err(ApiError::bad_request)?;
    let status = match params.status.as_deref() {
        None => None,
        Some(s) => Some(NodeStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request("status must be one of online, offline, revoked")
        })?),
    };
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let after = match params.cursor.as_deref() {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| ApiError::bad_request("invalid cursor"))?),
    };
    let now = state.clock.now();
    // A scoped principal sees only its nodes: its scope is ANDed into the filter.
    let Some(selector) = selector.and(&principal.scope) else {
        return Ok(Json(NodeList {
            items: Vec::new(),
            next_cursor: None,
        }));
    };
    let query = NodeQuery {
        selector,
        status,
        after,
        limit,
    };
    let mut rows = fleet::list_nodes(&state.pool, &query, state.settings.liveness, now).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    let next_cursor = if has_more {
        rows.last().map(|r| encode_cursor(r.id))
    } else {
        None
    };
    Ok(Json(NodeList {
        items: rows
            .into_iter()
            .map(|r| NodeView::new(r, &state, now))
            .collect(),
        next_cursor,
    }))
}

async fn load(state: &AppState, node_id: Uuid) -> ApiResult<NodeRow> {
    fleet::get_node(&state.pool, node_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such node"))
}

pub async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(node_id): ApiPath<Uuid>,
) -> ApiResult<Json<NodeView>> {
    principal.authorize(Action::NodesRead)?;
    let row = load(&state, node_id).await?;
    principal.authorize_node(Action::NodesRead, &row.labels())?;
    Ok(Json(NodeView::new(row, &state, state.clock.now())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// Replaces the node's labels.
    pub labels: Labels,
}

pub async fn update_labels(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(node_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateRequest>,
) -> ApiResult<Json<NodeView>> {
    principal.authorize(Action::NodesWrite)?;
    validate_labels(&body.labels).map_err(ApiError::validation)?;
    let now = state.clock.now();
    let labels = serde_json::to_value(&body.labels).map_err(ApiError::internal)?;
    let mut tx = state.pool.begin().await?;
    let previous = sqlx::query!("select labels from nodes where id = $1 for update", node_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::not_found("no such node"))?;
    let before: Labels = serde_json::from_value(previous.labels.clone()).unwrap_or_default();
    principal.authorize_node(Action::NodesWrite, &before)?;
    if !principal.scope.matches(&body.labels) {
        return Err(ApiError::forbidden(
            "the new labels would move the node out of your scope",
        ));
    }
    sqlx::query!(
        "update nodes set labels = $2 where id = $1",
        node_id,
        labels
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor: &principal.actor,
            action: "node.update_labels",
            target_kind: "node",
            target_id: node_id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({ "before": previous.labels, "after": labels }),
        },
    )
    .await?;
    tx.commit().await?;
    let row = load(&state, node_id).await?;
    Ok(Json(NodeView::new(row, &state, now)))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why; recorded in the audit log.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Revokes the node: its stream is closed within seconds (every replica hears the notification;
/// the heartbeat check is the backstop) and its certificate is refused from then on.
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    ApiPath(node_id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RevokeRequest>,
) -> ApiResult<Json<NodeView>> {
    principal.authorize(Action::NodesRevoke)?;
    let reason = body.reason.unwrap_or_default();
    if reason.chars().count() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "reason must be at most {MAX_REASON_LEN} characters, without control characters"
        )));
    }
    if reason.trim().is_empty() {
        return Err(ApiError::validation(
            "reason is required: revoking a node is destructive, say why",
        ));
    }
    // Out of scope or unknown: 404 before any confirmation is offered.
    let labels = load(&state, node_id).await?.labels();
    principal.authorize_node(Action::NodesRevoke, &labels)?;
    let params = json!({ "reason": reason });
    let intent = crate::confirm::Intent {
        actor: &principal.actor,
        action: "node.revoke",
        target: node_id.to_string(),
        params: &params,
    };
    let token = super::confirm::token_or_428(&state, &headers, &intent).await?;
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    crate::confirm::redeem(&mut tx, &token, &intent, now)
        .await
        .map_err(super::confirm::confirm_error)?;
    let row = sqlx::query!(
        "select revoked_at, labels from nodes where id = $1 for update",
        node_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("no such node"))?;
    principal.authorize_node(
        Action::NodesRevoke,
        &serde_json::from_value(row.labels).unwrap_or_default(),
    )?;
    if row.revoked_at.is_none() {
        sqlx::query!(
            "update nodes set revoked_at = $2, revoked_reason = $3, connected = false where id = $1",
            node_id,
            now,
            reason
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "select pg_notify($1, $2)",
            fleet::CHANNEL_NODE_REVOKED,
            node_id.to_string()
        )
        .execute(&mut *tx)
        .await?;
        let failed_commands = jobs::fail_pending_for_revoked(&mut tx, node_id, now).await?;
        audit::record(
            &mut tx,
            now,
            AuditEvent {
                actor: &principal.actor,
                action: "node.revoke",
                target_kind: "node",
                target_id: node_id.to_string(),
                reason: Some(&reason),
                outcome: Outcome::Success,
                detail: json!({ "failed_pending_commands": failed_commands }),
            },
        )
        .await?;
    }
    tx.commit().await?;
    let row = load(&state, node_id).await?;
    Ok(Json(NodeView::new(row, &state, now)))
}

/// The seed contract's `SystemInfo`, as the agent last reported it.
#[derive(Debug, Serialize)]
pub struct SystemInfo {
    pub os: String,
    pub os_version: String,
    pub arch: String,
    pub cpu_cores: i32,
    pub memory_bytes: i64,
    pub disk_free_bytes: i64,
    pub hostname: String,
}

pub async fn system_info(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(node_id): ApiPath<Uuid>,
) -> ApiResult<Json<SystemInfo>> {
    principal.authorize(Action::NodesRead)?;
    let row = load(&state, node_id).await?;
    principal.authorize_node(Action::NodesRead, &row.labels())?;
    Ok(Json(SystemInfo {
        os: row.os,
        os_version: row.os_version,
        arch: row.arch,
        cpu_cores: row.cpu_cores,
        memory_bytes: row.memory_bytes,
        disk_free_bytes: row.disk_free_bytes,
        hostname: row.hostname,
    }))
}

#[derive(Debug, Serialize)]
pub struct CommandView {
    pub id: Uuid,
    pub node_id: Uuid,
    pub kind: String,
    pub status: String,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub step: Option<String>,
    pub deliveries: i32,
    pub idempotency_key: Option<String>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub cancel_requested_by: Option<String>,
    pub last_event_id: i32,
}

impl From<CommandRow> for CommandView {
    fn from(r: CommandRow) -> Self {
        Self {
            id: r.id,
            node_id: r.node_id,
            kind: r.kind,
            status: r.status,
            result: r.result,
            error: r.error,
            created_by: r.created_by,
            created_at: r.created_at,
            sent_at: r.sent_at,
            completed_at: r.completed_at,
            started_at: r.started_at,
            deadline_at: r.deadline_at,
            step: r.step,
            deliveries: r.attempts + i32::from(r.sent_at.is_some()),
            idempotency_key: r.idempotency_key,
            cancel_requested_at: r.cancel_requested_at,
            cancel_requested_by: r.cancel_requested_by,
            last_event_id: r.events,
        }
    }
}

/// Queues a `Ping`; the agent's `Pong` shows up on the command.
pub async fn ping(
    State(state): State<AppState>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    ApiPath(node_id): ApiPath<Uuid>,
) -> ApiResult<(StatusCode, Json<CommandView>)> {
    principal.authorize(Action::CommandsCreate)?;
    let key = super::jobs::idempotency_key(&headers)?;
    let payload = json!({});
    let hash = super::jobs::request_hash(node_id, "ping", &payload, "");
    if let Some(row) = super::jobs::replay(&state, &principal, key.as_deref(), &hash).await? {
        return Ok((StatusCode::ACCEPTED, Json(row.into())));
    }
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    super::gateway::commandable(&mut tx, &principal, node_id).await?;
    let created_by = principal.actor.label();
    let new = NewCommand {
        node_id,
        kind: "ping",
        payload: &payload,
        created_by: &created_by,
        idempotency: key.as_deref().map(|k| (k, hash.as_str())),
    };
    let command = match jobs::enqueue_command(&mut tx, new, now).await {
        Ok(c) => c,
        Err(e) if super::jobs::is_idempotency_race(&e) => {
            drop(tx);
            let row = super::jobs::replay(&state, &principal, key.as_deref(), &hash)
                .await?
                .ok_or_else(|| ApiError::internal(e))?;
            return Ok((StatusCode::ACCEPTED, Json(row.into())));
        }
        Err(e) => return Err(e.into()),
    };
    let event = audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor: &principal.actor,
            action: "command.create",
            target_kind: "node",
            target_id: node_id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({ "command_id": command.id, "kind": "ping" }),
        },
    )
    .await?;
    jobs::set_audit_event(&mut *tx, command.id, event).await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(command.into())))
}

pub async fn get_command(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((node_id, command_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<Json<CommandView>> {
    principal.authorize(Action::CommandsRead)?;
    let node = load(&state, node_id).await?;
    principal.authorize_node(Action::CommandsRead, &node.labels())?;
    let row = jobs::get_command(&state.pool, node_id, command_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such command"))?;
    Ok(Json(row.into()))
}

/// The seed contract's `MetricsSnapshot`, as the agent last reported it, with its age.
#[derive(Debug, Serialize)]
pub struct MetricsSnapshot {
    pub cpu_percent: f64,
    pub mem_percent: f64,
    pub disk_free_bytes: i64,
    pub uptime_seconds: i64,
    pub restart_count_24h: i64,
    pub memory_used_bytes: i64,
    pub memory_total_bytes: i64,
    pub load_1m: f64,
    /// When the agent reported these figures.
    pub reported_at: DateTime<Utc>,
    pub age_seconds: i64,
}

pub async fn metrics(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(node_id): ApiPath<Uuid>,
) -> ApiResult<Json<MetricsSnapshot>> {
    principal.authorize(Action::NodesRead)?;
    let row = load(&state, node_id).await?;
    principal.authorize_node(Action::NodesRead, &row.labels())?;
    let stored = sqlx::query!(
        "select metrics, metrics_at from nodes where id = $1",
        node_id
    )
    .fetch_one(&state.pool)
    .await?;
    let (Some(m), Some(at)) = (stored.metrics, stored.metrics_at) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_metrics",
            "the node has not reported metrics yet (its agent reports them with each heartbeat)",
        ));
    };
    let int = |k: &str| m[k].as_i64().unwrap_or(0);
    let float = |k: &str| m[k].as_f64().unwrap_or(0.0);
    let now = state.clock.now();
    Ok(Json(MetricsSnapshot {
        cpu_percent: float("cpu_percent"),
        mem_percent: float("mem_percent"),
        disk_free_bytes: int("disk_free_bytes"),
        uptime_seconds: int("uptime_seconds"),
        restart_count_24h: int("restart_count_24h"),
        memory_used_bytes: int("memory_used_bytes"),
        memory_total_bytes: int("memory_total_bytes"),
        load_1m: float("load_1m"),
        reported_at: at,
        age_seconds: (now - at).num_seconds().max(0),
    }))
}

/// Counts by status and agent version, over the nodes the principal may see.
#[derive(Debug, Serialize)]
pub struct FleetSummary {
    pub total: i64,
    pub online: i64,
    pub offline: i64,
    pub revoked: i64,
    /// Agent version → number of (not revoked) nodes.
    pub agent_versions: std::collections::BTreeMap<String, i64>,
    /// Installed gateway version (`none`: no gateway) → number of (not revoked) nodes.
    pub gateway_versions: std::collections::BTreeMap<String, i64>,
    pub gateways: GatewayCounts,
}

#[derive(Debug, Default, Serialize)]
pub struct GatewayCounts {
    pub installed: i64,
    pub running: i64,
    pub ready: i64,
    pub crash_loop: i64,
}

pub async fn summary(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<FleetSummary>> {
    principal.authorize(Action::NodesRead)?;
    let now = state.clock.now();
    let online_since = state.settings.liveness.online_since(now);
    let rows = sqlx::query!(
        r#"select labels, agent_version, connected, last_seen, revoked_at is not null as "revoked!",
                  case when coalesce((gateway->>'installed')::boolean, false)
                       then coalesce(nullif(gateway->>'version', ''), 'unknown') end as gateway_version,
                  coalesce((gateway->>'running')::boolean, false) as "gateway_running!",
                  coalesce((gateway->>'gateway_connected')::boolean, false) as "gateway_ready!",
                  coalesce((gateway->>'crash_loop')::boolean, false) as "gateway_crash_loop!"
           from nodes"#
    )
    .fetch_all(&state.pool)
    .await?;
    let mut summary = FleetSummary {
        total: 0,
        online: 0,
        offline: 0,
        revoked: 0,
        agent_versions: std::collections::BTreeMap::new(),
        gateway_versions: std::collections::BTreeMap::new(),
        gateways: GatewayCounts::default(),
    };
    for row in rows {
        let labels: crate::fleet::Labels = serde_json::from_value(row.labels).unwrap_or_default();
        if !principal.scope.matches(&labels) {
            continue;
        }
        summary.total += 1;
        match NodeStatus::derive(row.revoked, row.connected, row.last_seen, online_since) {
            NodeStatus::Online => summary.online += 1,
            NodeStatus::Offline => summary.offline += 1,
            NodeStatus::Revoked => summary.revoked += 1,
        }
        if !row.revoked {
            *summary.agent_versions.entry(row.agent_version).or_default() += 1;
            let installed = row.gateway_version.is_some();
            *summary
                .gateway_versions
                .entry(row.gateway_version.unwrap_or_else(|| "none".into()))
                .or_default() += 1;
            let g = &mut summary.gateways;
            g.installed += i64::from(installed);
            g.running += i64::from(installed && row.gateway_running);
            g.ready += i64::from(installed && row.gateway_running && row.gateway_ready);
            g.crash_loop += i64::from(installed && row.gateway_crash_loop);
        }
    }
    Ok(Json(summary))
}
