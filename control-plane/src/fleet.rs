//! The fleet registry: nodes, their labels and liveness. Shared by the REST handlers and the gRPC
//! service; the commands queued for nodes are in [`crate::jobs`].

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

/// Label sets are small maps of short strings, like Kubernetes labels.
pub type Labels = BTreeMap<String, String>;

pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_LEN: usize = 63;

/// Postgres channels the replicas listen on.
pub const CHANNEL_NODE_REVOKED: &str = "moltops_node_revoked";
pub const CHANNEL_COMMAND_QUEUED: &str = "moltops_command_queued";

/// Checks label keys and values; the message names the offending label.
pub fn validate_labels(labels: &Labels) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels are allowed"));
    }
    for (key, value) in labels {
        if !is_label_token(key, false) {
            return Err(format!(
                "label key {key:?} must be 1-{MAX_LABEL_LEN} characters of [A-Za-z0-9._/-], starting and ending with a letter or digit"
            ));
        }
        if !is_label_token(value, true) {
            return Err(format!(
                "label {key:?} has value {value:?}: values must be at most {MAX_LABEL_LEN} characters of [A-Za-z0-9._-], starting and ending with a letter or digit"
            ));
        }
    }
    Ok(())
}

fn is_label_token(s: &str, is_value: bool) -> bool {
    if s.is_empty() {
        return is_value;
    }
    let bytes = s.as_bytes();
    let edge_ok = |b: u8| b.is_ascii_alphanumeric();
    s.len() <= MAX_LABEL_LEN
        && edge_ok(bytes[0])
        && edge_ok(bytes[bytes.len() - 1])
        && bytes.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || b == b'.'
                || b == b'_'
                || b == b'-'
                || (!is_value && b == b'/')
        })
}

/// A label selector: `env=prod,tier!=db,canary` (equality, inequality, existence; all must hold).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selector {
    pub equals: Labels,
    pub not_equals: Vec<(String, String)>,
    pub exists: Vec<String>,
}

impl Selector {
    pub fn parse(input: &str) -> Result<Self, String> {
        let mut selector = Self::default();
        for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Some((k, v)) = term.split_once("!=") {
                check_term(k, v, term)?;
                selector
                    .not_equals
                    .push((k.trim().to_owned(), v.trim().to_owned()));
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                check_term(k, v, term)?;
                selector
                    .equals
                    .insert(k.trim().to_owned(), v.trim().to_owned());
            } else {
                if !is_label_token(term, false) {
                    return Err(format!("selector term {term:?} is not a label key"));
                }
                selector.exists.push(term.to_owned());
            }
        }
        Ok(selector)
    }

    /// Whether a label set satisfies every term.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.equals.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self
                .not_equals
                .iter()
                .all(|(k, v)| labels.get(k) != Some(v))
            && self.exists.iter().all(|k| labels.contains_key(k))
    }

    pub fn is_empty(&self) -> bool {
        self.equals.is_empty() && self.not_equals.is_empty() && self.exists.is_empty()
    }

    /// Both selectors at once; `None` when they cannot both hold (`env=a` and `env=b`).
    pub fn and(&self, other: &Self) -> Option<Self> {
        let mut merged = self.clone();
        for (k, v) in &other.equals {
            match merged.equals.get(k) {
                Some(existing) if existing != v => return None,
                _ => {
                    merged.equals.insert(k.clone(), v.clone());
                }
            }
        }
        merged.not_equals.extend(other.not_equals.iter().cloned());
        merged.exists.extend(other.exists.iter().cloned());
        Some(merged)
    }

    pub fn equals_json(&self) -> Value {
        serde_json::to_value(&self.equals).unwrap_or_default()
    }

    pub fn not_equals_json(&self) -> Value {
        Value::Array(
            self.not_equals
                .iter()
                .map(|(k, v)| serde_json::json!({ k: v }))
                .collect(),
        )
    }
}

/// Canonical text form (`k=v,k!=v,k`), which `Selector::parse` reads back.
impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let terms = self
            .equals
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(self.not_equals.iter().map(|(k, v)| format!("{k}!={v}")))
            .chain(self.exists.iter().cloned());
        f.write_str(&terms.collect::<Vec<_>>().join(","))
    }
}

fn check_term(k: &str, v: &str, term: &str) -> Result<(), String> {
    if is_label_token(k.trim(), false) && is_label_token(v.trim(), true) {
        Ok(())
    } else {
        Err(format!(
            "selector term {term:?} is not key=value or key!=value"
        ))
    }
}

/// A node's liveness, derived from stored facts and the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Online,
    Offline,
    Revoked,
}

impl NodeStatus {
    /// A node is online while its stream is open and its last heartbeat is within the window.
    /// The SQL filter in [`list_nodes`] states the same rule; a test keeps them in agreement.
    pub fn derive(
        revoked: bool,
        connected: bool,
        last_seen: Option<DateTime<Utc>>,
        online_since: DateTime<Utc>,
    ) -> Self {
        if revoked {
            Self::Revoked
        } else if connected && last_seen.is_some_and(|t| t > online_since) {
            Self::Online
        } else {
            Self::Offline
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "online" => Some(Self::Online),
            "offline" => Some(Self::Offline),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Revoked => "revoked",
        }
    }
}

/// How liveness is judged.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// A node whose last heartbeat is older than this is offline.
    pub window: Duration,
}

impl Liveness {
    pub fn online_since(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - self.window
    }
}

/// What an agent reported, checked: an agent is not trusted to send sane numbers, so
/// percentages are clamped and non-finite values become 0.
pub fn metrics_json(m: &moltops_proto::agent::Metrics) -> serde_json::Value {
    let percent = |v: f32| {
        if v.is_finite() {
            f64::from(v.clamp(0.0, 100.0))
        } else {
            0.0
        }
    };
    let finite = |v: f32| {
        if v.is_finite() {
            f64::from(v.max(0.0))
        } else {
            0.0
        }
    };
    serde_json::json!({
        "cpu_percent": percent(m.cpu_percent),
        "mem_percent": percent(m.mem_percent),
        "disk_free_bytes": m.disk_free_bytes,
        "uptime_seconds": m.uptime_seconds,
        "restart_count_24h": m.restart_count_24h,
        "memory_used_bytes": m.memory_used_bytes,
        "memory_total_bytes": m.memory_total_bytes,
        "load_1m": finite(m.load_1m),
    })
}

/// The gateway state an agent reported, bounded (an agent is not trusted with sizes).
pub fn gateway_json(g: &moltops_proto::agent::GatewayStatus) -> serde_json::Value {
    let text = |s: &str| s.chars().take(512).collect::<String>();
    serde_json::json!({
        "installed": g.installed,
        "running": g.running,
        "version": text(&g.version),
        "service_manager": text(&g.service_manager),
        "config_path": text(&g.config_path),
        "last_start_unix_ms": g.last_start_unix_ms,
        "restart_count_24h": g.restart_count_24h,
        "gateway_connected": g.gateway_connected,
        "crash_loop": g.crash_loop,
        "last_exit": text(&g.last_exit),
    })
}

/// A node as stored.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub id: Uuid,
    pub hostname: String,
    pub labels: Value,
    pub agent_version: String,
    pub os: String,
    pub os_version: String,
    pub arch: String,
    pub cpu_cores: i32,
    pub memory_bytes: i64,
    pub disk_free_bytes: i64,
    pub enrolled_at: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
    pub connected: bool,
    pub certificate_not_after: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The gateway as the agent last reported it (see [`gateway_json`]).
    pub gateway: Option<Value>,
}

impl NodeRow {
    pub fn status(&self, liveness: Liveness, now: DateTime<Utc>) -> NodeStatus {
        NodeStatus::derive(
            self.revoked_at.is_some(),
            self.connected,
            self.last_seen,
            liveness.online_since(now),
        )
    }

    pub fn labels(&self) -> Labels {
        serde_json::from_value(self.labels.clone()).unwrap_or_default()
    }
}

/// Filters and page of a node listing.
#[derive(Debug, Default, Clone)]
pub struct NodeQuery {
    pub selector: Selector,
    pub status: Option<NodeStatus>,
    pub after: Option<Uuid>,
    pub limit: i64,
}

pub async fn get_node(
    db: impl PgExecutor<'_>,
    node_id: Uuid,
) -> Result<Option<NodeRow>, sqlx::Error> {
    sqlx::query_as!(
        NodeRow,
        "select id, hostname, labels, agent_version, os, os_version, arch, cpu_cores, memory_bytes,
                disk_free_bytes, enrolled_at, last_seen, connected, certificate_not_after, revoked_at,
                gateway
         from nodes where id = $1",
        node_id
    )
    .fetch_optional(db)
    .await
}

/// One page of nodes in id order (ids are UUIDv7, so that is enrollment order). Fetches one row
/// more than asked, so the caller knows whether there is a next page.
pub async fn list_nodes(
    db: impl PgExecutor<'_>,
    query: &NodeQuery,
    liveness: Liveness,
    now: DateTime<Utc>,
) -> Result<Vec<NodeRow>, sqlx::Error> {
    let exists: Vec<String> = query.selector.exists.clone();
    sqlx::query_as!(
        NodeRow,
        r#"select id, hostname, labels, agent_version, os, os_version, arch, cpu_cores, memory_bytes,
                  disk_free_bytes, enrolled_at, last_seen, connected, certificate_not_after, revoked_at,
                  gateway
           from nodes n
           where ($1::uuid is null or n.id > $1)
             and n.labels @> $2::jsonb
             and not exists (select 1 from jsonb_array_elements($3::jsonb) e where n.labels @> e)
             and n.labels ?& $4::text[]
             and (
               $5::text is null
               or ($5 = 'revoked' and n.revoked_at is not null)
               or ($5 = 'online' and n.revoked_at is null and n.connected and n.last_seen > $6)
               or ($5 = 'offline' and n.revoked_at is null
                   and not (n.connected and coalesce(n.last_seen > $6, false)))
             )
           order by n.id
           limit $7"#,
        query.after,
        query.selector.equals_json(),
        query.selector.not_equals_json(),
        &exists,
        query.status.map(NodeStatus::as_str),
        liveness.online_since(now),
        query.limit + 1,
    )
    .fetch_all(db)
    .await
}

/// Facts an agent reports about its host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub os_version: String,
    pub arch: String,
    pub cpu_cores: i32,
    pub memory_bytes: i64,
    pub disk_free_bytes: i64,
}

/// Bounds what an agent may write into the registry: strings are cut to a sane length and
/// stripped of control characters (Postgres rejects NUL), numbers clamp to the column type.
impl From<moltops_proto::agent::HostFacts> for HostFacts {
    fn from(f: moltops_proto::agent::HostFacts) -> Self {
        fn clean(s: String) -> String {
            s.chars().filter(|c| !c.is_control()).take(255).collect()
        }
        Self {
            hostname: clean(f.hostname),
            os: clean(f.os),
            os_version: clean(f.os_version),
            arch: clean(f.arch),
            cpu_cores: i32::try_from(f.cpu_cores).unwrap_or(i32::MAX),
            memory_bytes: i64::try_from(f.memory_bytes).unwrap_or(i64::MAX),
            disk_free_bytes: i64::try_from(f.disk_free_bytes).unwrap_or(i64::MAX),
        }
    }
}

/// Records a hello on a new stream: facts, version, and which stream is current.
pub async fn record_hello(
    db: impl PgExecutor<'_>,
    node_id: Uuid,
    session_id: Uuid,
    agent_version: &str,
    facts: &HostFacts,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query!(
        "update nodes set connected = true, session_id = $2, last_seen = $3, agent_version = $4,
                hostname = $5, os = $6, os_version = $7, arch = $8, cpu_cores = $9,
                memory_bytes = $10, disk_free_bytes = $11
         where id = $1 and revoked_at is null
         returning id",
        node_id,
        session_id,
        now,
        agent_version,
        facts.hostname,
        facts.os,
        facts.os_version,
        facts.arch,
        facts.cpu_cores,
        facts.memory_bytes,
        facts.disk_free_bytes,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.is_some())
}

/// What a heartbeat learns: whether the node is still allowed, and whether work is waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    pub revoked: bool,
    /// Commands waiting to be sent, and cancels waiting to be sent.
    pub queued_commands: i64,
}

pub async fn record_heartbeat(
    db: impl PgExecutor<'_>,
    node_id: Uuid,
    session_id: Uuid,
    metrics: Option<&moltops_proto::agent::Metrics>,
    gateway: Option<&moltops_proto::agent::GatewayStatus>,
    now: DateTime<Utc>,
) -> Result<HeartbeatOutcome, sqlx::Error> {
    let metrics = metrics.map(metrics_json);
    let gateway = gateway.map(gateway_json);
    let row = sqlx::query!(
        r#"update nodes set last_seen = case when session_id = $2 then $3 else last_seen end,
                            metrics = case when session_id = $2 and $4::jsonb is not null then $4 else metrics end,
                            metrics_at = case when session_id = $2 and $4::jsonb is not null then $3 else metrics_at end,
                            gateway = case when session_id = $2 and $5::jsonb is not null then $5 else gateway end,
                            gateway_at = case when session_id = $2 and $5::jsonb is not null then $3 else gateway_at end
           where id = $1
           returning revoked_at is not null as "revoked!",
                     (select count(*) from commands c where c.node_id = $1 and c.status = 'queued')
                     + (select count(*) from commands c
                        where c.node_id = $1 and c.status in ('dispatched', 'running')
                          and c.cancel_requested_at is not null
                          and c.cancel_sent_session is distinct from $2) as "queued!""#,
        node_id,
        session_id,
        now,
        metrics,
        gateway
    )
    .fetch_optional(db)
    .await?;
    Ok(match row {
        Some(r) => HeartbeatOutcome {
            revoked: r.revoked,
            queued_commands: r.queued,
        },
        None => HeartbeatOutcome {
            revoked: true,
            queued_commands: 0,
        },
    })
}

/// Marks the node disconnected, unless a newer stream has said hello since.
pub async fn record_disconnect(
    db: impl PgExecutor<'_>,
    node_id: Uuid,
    session_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update nodes set connected = false where id = $1 and session_id = $2",
        node_id,
        session_id
    )
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rules() {
        let ok: Labels = [
            ("env".into(), "prod".into()),
            ("team/owner".into(), "".into()),
        ]
        .into();
        assert!(validate_labels(&ok).is_ok());
        for (k, v) in [
            ("", "x"),
            ("-x", "y"),
            ("a b", "c"),
            ("k", "v/w"),
            ("k", "\u{0}"),
            ("k", "-v"),
        ] {
            let bad: Labels = [(k.to_owned(), v.to_owned())].into();
            assert!(validate_labels(&bad).is_err(), "{k:?}={v:?}");
        }
        let long: Labels = [("k".repeat(64), "v".into())].into();
        assert!(validate_labels(&long).is_err());
        let many: Labels = (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(validate_labels(&many).is_err());
    }

    #[test]
    fn selector_parsing() {
        let s = Selector::parse("env=prod, tier!=db,canary,region==eu").unwrap();
        assert_eq!(
            s.equals,
            Labels::from([
                ("env".into(), "prod".into()),
                ("region".into(), "eu".into())
            ])
        );
        assert_eq!(s.not_equals, vec![("tier".to_owned(), "db".to_owned())]);
        assert_eq!(s.exists, vec!["canary".to_owned()]);
        assert_eq!(Selector::parse("").unwrap(), Selector::default());
        for bad in ["=x", "a=b=c", "a b", "k!=v!", "k=v w"] {
            assert!(Selector::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn selectors_match_and_combine() {
        let labels: Labels = [
            ("env".into(), "staging".into()),
            ("tier".into(), "edge".into()),
        ]
        .into();
        let check = |selector: &str, expected: bool| {
            assert_eq!(
                Selector::parse(selector).unwrap().matches(&labels),
                expected,
                "{selector}"
            );
        };
        check("", true);
        check("env=staging", true);
        check("env=prod", false);
        check("env!=prod,tier", true);
        check("tier!=edge", false);
        check("owner", false);
        let a = Selector::parse("env=staging").unwrap();
        assert!(a.and(&Selector::parse("env=prod").unwrap()).is_none());
        let both = a
            .and(&Selector::parse("tier=edge,zone!=x").unwrap())
            .unwrap();
        assert!(both.matches(&labels));
        assert!(Selector::default().is_empty() && !a.is_empty());
    }

    #[test]
    fn status_derivation() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let since = now - Duration::seconds(45);
        let recent = Some(now - Duration::seconds(10));
        let stale = Some(now - Duration::seconds(46));
        let check = |revoked, connected, seen, expected| {
            assert_eq!(
                NodeStatus::derive(revoked, connected, seen, since),
                expected,
                "{revoked} {connected} {seen:?}"
            );
        };
        check(false, true, recent, NodeStatus::Online);
        check(false, true, stale, NodeStatus::Offline);
        check(false, false, recent, NodeStatus::Offline);
        check(false, true, None, NodeStatus::Offline);
        check(true, true, recent, NodeStatus::Revoked);
    }
}
