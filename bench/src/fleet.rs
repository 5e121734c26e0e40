//! The simulated fleet: bulk enrollment through the real `Enroll` RPC, one task per agent
//! holding its stream, and the fleet-wide controls and observations the scenarios use — wait
//! until every stream is acknowledged, drop them all, make every agent drop its stream in the
//! middle of its next command, stop.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use moltops_agent::run::tokio_util_shim::CancellationToken;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use crate::agent::{
    AgentOptions, Connected, Counters, CountersSnapshot, Identity, Shared, SimulatedAgent,
};
use crate::error::{BenchError, BenchResult};
use crate::ledger::Ledger;
use crate::rest::Api;
use crate::stats::Summary;

/// The most agents one enrollment token may enroll (`max_uses` is bounded by the API).
pub const MAX_USES_PER_TOKEN: usize = 10_000;

/// Creates enough enrollment tokens for `agents` agents with `labels`. Returns the secrets (token
/// `i / MAX_USES_PER_TOKEN` is for agent `i`) and the CA pin the control plane reports.
pub async fn create_tokens(
    api: &Api,
    labels: &BTreeMap<String, String>,
    agents: usize,
    ttl: Duration,
) -> BenchResult<(Vec<String>, String)> {
    let mut tokens = Vec::new();
    let mut pin = String::new();
    let mut left = agents;
    while left > 0 {
        let uses = left.min(MAX_USES_PER_TOKEN);
        let created = api.create_enrollment_token(labels, uses, ttl).await?;
        tokens.push(created.token);
        pin = created.ca_pin;
        left -= uses;
    }
    Ok((tokens, pin))
}

/// What bulk enrollment needs.
#[derive(Debug, Clone)]
pub struct EnrollPlan {
    /// `host:port` of the agent port, as agents dial it.
    pub server_grpc: String,
    pub ca_pin: [u8; 32],
    /// See [`create_tokens`].
    pub tokens: Vec<String>,
    pub agents: usize,
    /// Enrollments in flight at once.
    pub concurrency: usize,
    /// Agent `i` is host `<prefix>-<i>`.
    pub hostname_prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnrollFigures {
    pub agents: usize,
    pub concurrency: usize,
    pub total_s: f64,
    pub per_second: f64,
    /// One agent's enrollment: TCP connect, pinned TLS handshake, `Enroll` round trip.
    pub latency: Summary,
}

/// Enrolls `plan.agents` agents, each with its own key, `plan.concurrency` at a time. Any
/// failure fails the whole enrollment (with examples of the reasons).
pub async fn enroll_all(plan: &EnrollPlan) -> BenchResult<(Vec<Identity>, EnrollFigures)> {
    if plan.tokens.len() * MAX_USES_PER_TOKEN < plan.agents {
        return Err(BenchError::Config(format!(
            "{} enrollment tokens cannot enroll {} agents",
            plan.tokens.len(),
            plan.agents
        )));
    }
    let permits = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for index in 0..plan.agents {
        let permits = permits.clone();
        let server = plan.server_grpc.clone();
        let token = plan.tokens[index / MAX_USES_PER_TOKEN].clone();
        let hostname = format!("{}-{index:05}", plan.hostname_prefix);
        let pin = plan.ca_pin;
        // A task per agent, so key generation and handshakes spread over every core.
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let t0 = Instant::now();
            let result = crate::agent::enroll(&server, pin, &token, index, hostname).await;
            (index, t0.elapsed(), result)
        });
    }
    let mut identities = Vec::with_capacity(plan.agents);
    let mut latencies = Vec::with_capacity(plan.agents);
    let mut failures: Vec<String> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, took, Ok(identity))) => {
                latencies.push(took);
                identities.push(identity);
            }
            Ok((index, _, Err(reason))) => failures.push(format!("agent {index}: {reason}")),
            Err(e) => failures.push(format!("an enrollment task failed: {e}")),
        }
    }
    let total = started.elapsed();
    if !failures.is_empty() {
        return Err(BenchError::Enroll {
            failed: failures.len(),
            total: plan.agents,
            examples: failures
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    identities.sort_by_key(|i| i.index);
    let figures = EnrollFigures {
        agents: plan.agents,
        concurrency: plan.concurrency,
        total_s: total.as_secs_f64(),
        per_second: plan.agents as f64 / total.as_secs_f64().max(f64::EPSILON),
        latency: Summary::of(&latencies),
    };
    Ok((identities, figures))
}

/// How the fleet connects.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub server_grpc: String,
    /// First connections in flight at once (the ramp).
    pub ramp_concurrency: usize,
    pub agent: AgentOptions,
}

/// Running simulated agents, one task each, all on the caller's runtime.
pub struct Fleet {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    nodes: Vec<Uuid>,
}

impl Fleet {
    /// Starts one task per identity; each connects (at most `ramp_concurrency` at a time at
    /// first) and then holds its stream until [`Fleet::shutdown`].
    pub fn start(identities: &[Identity], options: FleetOptions) -> BenchResult<Self> {
        let agents = identities
            .iter()
            .map(SimulatedAgent::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|problem| BenchError::Fleet {
                what: "building the agents' TLS configurations".into(),
                problem,
            })?;
        let (drops, _) = watch::channel(0u64);
        let (connected, _) = watch::channel(Connected::default());
        let shared = Arc::new(Shared {
            server: options.server_grpc,
            options: options.agent,
            shutdown: CancellationToken::new(),
            drops,
            connected,
            drop_mid_command: AtomicU64::new(0),
            ramp: Semaphore::new(options.ramp_concurrency.max(1)),
            ledger: Ledger::default(),
            counters: Counters::default(),
            up: identities.iter().map(|_| AtomicBool::new(false)).collect(),
            last_error: std::sync::Mutex::new(HashMap::new()),
            started: SystemTime::now(),
        });
        let mut tasks = JoinSet::new();
        for agent in agents {
            tasks.spawn(agent.run(shared.clone()));
        }
        Ok(Self {
            shared,
            tasks,
            nodes: identities.iter().map(|i| i.node_id).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node_ids(&self) -> &[Uuid] {
        &self.nodes
    }

    pub fn ledger(&self) -> &Ledger {
        &self.shared.ledger
    }

    pub fn counters(&self) -> CountersSnapshot {
        self.shared.counters.snapshot()
    }

    pub fn connected(&self) -> Connected {
        *self.shared.connected.borrow()
    }

    /// Waits until every agent has a stream the control plane acknowledged (since the last
    /// [`Fleet::drop_all`]) and every stream is still open. Fails after `deadline`, naming
    /// agents that are not connected and why.
    pub async fn wait_connected(&self, deadline: Duration) -> BenchResult<Duration> {
        let started = Instant::now();
        let n = self.len();
        let mut rx = self.shared.connected.subscribe();
        let done = tokio::time::timeout(deadline, rx.wait_for(|c| c.acked >= n && c.live >= n));
        match done.await {
            Ok(Ok(_)) => Ok(started.elapsed()),
            _ => Err(BenchError::Timeout {
                what: format!("all {n} simulated agents to connect"),
                waited: deadline,
                progress: self.not_connected_summary(),
            }),
        }
    }

    /// Who is not connected and why, for error messages.
    pub fn not_connected_summary(&self) -> String {
        let c = self.connected();
        let down: Vec<usize> = self
            .shared
            .up
            .iter()
            .enumerate()
            .filter(|(_, up)| !up.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .collect();
        let errors = self
            .shared
            .last_error
            .lock()
            .map(|e| {
                down.iter()
                    .filter_map(|i| e.get(i).map(|r| format!("agent {i}: {r}")))
                    .take(3)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        format!(
            "{} acknowledged since the last drop, {} streams open, {} agents down; {}",
            c.acked,
            c.live,
            down.len(),
            if errors.is_empty() {
                "no errors recorded".to_owned()
            } else {
                errors.join("; ")
            }
        )
    }

    /// Every agent drops its stream (its TCP connection closes) and reconnects after the real
    /// agent's jittered backoff. [`Fleet::wait_connected`] then waits for all of them again.
    pub fn drop_all(&self) {
        // The count restarts before the agents hear of the drop, so an acknowledgement of a
        // stream from before the drop is never counted as one after it.
        self.shared.connected.send_modify(|c| {
            c.generation += 1;
            c.acked = 0;
        });
        self.shared.drops.send_modify(|g| *g += 1);
    }

    /// Every agent, on its next command, runs it and records it in its journal, then drops its
    /// stream before sending the result — a host that lost its connection mid-command. The
    /// control plane must deliver the command again on the next stream, and the journal answers.
    pub fn drop_mid_next_command(&self) {
        self.shared.drop_mid_command.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops every agent (each closes its stream) and waits for their tasks.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Polls the API until `n` nodes matching `selector` are online; returns how long it took.
pub async fn wait_online(
    api: &Api,
    selector: &str,
    n: usize,
    deadline: Duration,
) -> BenchResult<Duration> {
    let started = Instant::now();
    loop {
        let online = api.nodes(selector, Some("online")).await?.len();
        if online == n {
            return Ok(started.elapsed());
        }
        if started.elapsed() > deadline {
            return Err(BenchError::Timeout {
                what: format!("the API to list {n} nodes online for {selector:?}"),
                waited: deadline,
                progress: format!("{online} online"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
