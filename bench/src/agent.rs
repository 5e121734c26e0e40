//! One simulated agent. It enrolls as `moltops-agent enroll` does (its own P-256 key and CSR, the
//! server accepted only if its chain holds the pinned CA, the returned CA checked against the pin)
//! and holds its stream as `moltops-agent run` does (one HTTP/2 connection with its own client
//! certificate; Hello, heartbeats at the interval the HelloAck names, reconnects with the agent's
//! jittered backoff). Commands are answered without touching the host: a Ping with a Pong, a
//! start/stop/restart with a verified no-op `ActionDone`, each preceded by `CommandProgress
//! STARTED`; a command delivered again is answered from the agent's in-memory journal, never run
//! twice. The TLS, key and backoff code is the real agent's (`moltops_agent::{tls, enroll,
//! backoff}`), so the handshakes are the real ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use moltops_agent::backoff::Backoff;
use moltops_agent::run::tokio_util_shim::CancellationToken;
use moltops_agent::tls;
use moltops_proto::agent::agent_message::Body as AgentBody;
use moltops_proto::agent::agent_service_client::AgentServiceClient;
use moltops_proto::agent::command::Kind;
use moltops_proto::agent::command_progress::Kind as ProgressKind;
use moltops_proto::agent::command_result::Outcome;
use moltops_proto::agent::server_message::Body as ServerBody;
use moltops_proto::agent::service_action::Action;
use moltops_proto::agent::{
    ActionDone, AgentMessage, Command, CommandFailure, CommandProgress, CommandResult,
    EnrollRequest, GatewayStatus, Heartbeat, Hello, HostFacts, Metrics, Pong,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::ledger::Ledger;

/// What the simulated agents report as their version (the fleet summary groups them by it).
pub const AGENT_VERSION: &str = concat!("moltops-bench/", env!("CARGO_PKG_VERSION"));

/// An enrolled simulated agent: its node id and the key and certificate it holds.
#[derive(Clone)]
pub struct Identity {
    pub index: usize,
    pub node_id: Uuid,
    pub hostname: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("index", &self.index)
            .field("node_id", &self.node_id)
            .field("hostname", &self.hostname)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The host facts a simulated agent reports (at enrollment and in every Hello).
pub fn facts(hostname: &str) -> HostFacts {
    HostFacts {
        hostname: hostname.to_owned(),
        os: std::env::consts::OS.to_owned(),
        os_version: "simulated".to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        cpu_cores: 2,
        memory_bytes: 4 << 30,
        disk_free_bytes: 50 << 30,
    }
}

/// Enrolls one agent. Returns the reason as text on failure (one line, with the TLS cause).
pub async fn enroll(
    server: &str,
    ca_pin: [u8; 32],
    token: &str,
    index: usize,
    hostname: String,
) -> Result<Identity, String> {
    let (key_pem, csr_der) = moltops_agent::enroll::new_key_and_csr(&hostname)
        .map_err(|e| format!("generating the key: {e:#}"))?;
    let verifier = Arc::new(tls::PinnedCaVerifier::new(ca_pin));
    let config = tls::enrollment_config(verifier).map_err(|e| format!("{e:#}"))?;
    let channel = tls::channel(server, config)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let response = AgentServiceClient::new(channel)
        .enroll(EnrollRequest {
            token: token.to_owned(),
            csr_der,
            facts: Some(facts(&hostname)),
            agent_version: AGENT_VERSION.to_owned(),
        })
        .await
        .map_err(|status| format!("enrollment refused: {}", status.message()))?
        .into_inner();
    // The CA the server returns must be the one pinned, as the real agent checks.
    let ca_der = CertificateDer::from_pem_slice(response.ca_certificate_pem.as_bytes())
        .map_err(|_| "the control plane returned an unreadable CA certificate".to_owned())?;
    if Sha256::digest(ca_der.as_ref()).as_slice() != ca_pin {
        return Err(
            "the CA certificate returned by the control plane does not match the pin".into(),
        );
    }
    let node_id = Uuid::parse_str(&response.node_id)
        .map_err(|_| "the control plane returned a bad node id".to_owned())?;
    Ok(Identity {
        index,
        node_id,
        hostname,
        ca_pem: response.ca_certificate_pem,
        cert_pem: response.certificate_pem,
        key_pem,
    })
}

/// How the simulated agents behave on their streams.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Heartbeat at this interval instead of the one the HelloAck names (a real agent always
    /// follows the HelloAck). Longer than three server intervals makes nodes go offline.
    pub heartbeat_override: Option<Duration>,
    /// The real agent's defaults: 500 ms, doubling to 30 s, full jitter.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            heartbeat_override: None,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
        }
    }
}

/// Streams up: how many agents have a stream the control plane acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connected {
    /// Bumped by every deliberate drop of all streams.
    pub generation: u64,
    /// Agents whose stream, opened in this generation, got its HelloAck (each counted once).
    pub acked: usize,
    /// Streams acknowledged and still open now.
    pub live: usize,
}

/// What the fleet counted, over its whole life.
#[derive(Debug, Default)]
pub struct Counters {
    pub streams_opened: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Stream requests the control plane answered with an error status (it was up and said no).
    pub server_refusals: AtomicU64,
    pub unexpected_disconnects: AtomicU64,
    pub deliberate_drops: AtomicU64,
    pub heartbeats: AtomicU64,
    pub commands_received: AtomicU64,
    pub executions: AtomicU64,
    pub journal_answers: AtomicU64,
    pub refused_after_deadline: AtomicU64,
    pub cancels_received: AtomicU64,
    pub unreadable_command_ids: AtomicU64,
}

/// A copy of [`Counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    pub streams_opened: u64,
    pub connect_failures: u64,
    pub server_refusals: u64,
    pub unexpected_disconnects: u64,
    pub deliberate_drops: u64,
    pub heartbeats: u64,
    pub commands_received: u64,
    pub executions: u64,
    pub journal_answers: u64,
    pub refused_after_deadline: u64,
    pub cancels_received: u64,
    pub unreadable_command_ids: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            streams_opened: get(&self.streams_opened),
            connect_failures: get(&self.connect_failures),
            server_refusals: get(&self.server_refusals),
            unexpected_disconnects: get(&self.unexpected_disconnects),
            deliberate_drops: get(&self.deliberate_drops),
            heartbeats: get(&self.heartbeats),
            commands_received: get(&self.commands_received),
            executions: get(&self.executions),
            journal_answers: get(&self.journal_answers),
            refused_after_deadline: get(&self.refused_after_deadline),
            cancels_received: get(&self.cancels_received),
            unreadable_command_ids: get(&self.unreadable_command_ids),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What every agent task shares with the fleet that started it.
pub(crate) struct Shared {
    pub server: String,
    pub options: AgentOptions,
    pub shutdown: CancellationToken,
    /// The drop generation; a change makes every agent drop its stream and reconnect.
    pub drops: watch::Sender<u64>,
    pub connected: watch::Sender<Connected>,
    /// Bumped to make every agent drop its stream once more, right after executing its next
    /// command and before sending the result (the control plane must deliver it again, and the
    /// agent's journal must answer).
    pub drop_mid_command: AtomicU64,
    /// Bounds the first connections (the ramp); reconnects are not bounded, as in a real fleet.
    pub ramp: Semaphore,
    pub ledger: Ledger,
    pub counters: Counters,
    /// Per agent: a stream is up now.
    pub up: Vec<AtomicBool>,
    /// Per agent: the last reason its stream failed or ended unexpectedly.
    pub last_error: std::sync::Mutex<HashMap<usize, String>>,
    pub started: SystemTime,
}

impl Shared {
    fn record_error(&self, index: usize, error: String) {
        if let Ok(mut errors) = self.last_error.lock() {
            errors.insert(index, error);
        }
    }

    fn set_up(&self, index: usize, up: bool) {
        if let Some(flag) = self.up.get(index) {
            flag.store(up, Ordering::Relaxed);
        }
        self.connected.send_modify(|c| {
            if up {
                c.live += 1;
            } else {
                c.live = c.live.saturating_sub(1);
            }
        });
    }

    /// Counts an acknowledged stream opened in `generation`, unless a drop has begun another.
    fn acked(&self, generation: u64) -> bool {
        let mut counted = false;
        self.connected.send_modify(|c| {
            if c.generation == generation {
                c.acked += 1;
                counted = true;
            }
        });
        counted
    }
}

enum SessionEnd {
    Shutdown,
    /// Dropped on purpose (all streams, or mid-command).
    Dropped,
    /// The stream ended without being asked to.
    Closed {
        reason: String,
        healthy: bool,
    },
}

enum AfterCommand {
    Continue,
    DropStream,
}

/// An agent's state across its streams.
pub(crate) struct SimulatedAgent {
    index: usize,
    node_id: Uuid,
    hostname: String,
    tls: rustls::ClientConfig,
    /// Outcomes of the commands this agent ran, by id: a re-delivery is answered from here.
    journal: HashMap<Uuid, Outcome>,
    acked_generation: Option<u64>,
    drop_mid_command_served: u64,
    sequence: u64,
}

impl SimulatedAgent {
    pub fn new(identity: &Identity) -> Result<Self, String> {
        let mut tls = tls::mtls_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)
            .map_err(|e| format!("{e:#}"))?;
        // The real agent keeps rustls' default session cache (256 server names, allocated up
        // front); it only ever talks to one server name, so one entry behaves identically and
        // keeps a thousand simulated agents from holding a thousand empty caches.
        tls.resumption = rustls::client::Resumption::in_memory_sessions(1);
        Ok(Self {
            index: identity.index,
            node_id: identity.node_id,
            hostname: identity.hostname.clone(),
            tls,
            journal: HashMap::new(),
            acked_generation: None,
            drop_mid_command_served: 0,
            sequence: 0,
        })
    }

    /// Holds a stream until shutdown, reconnecting like the real agent.
    pub async fn run(mut self, shared: Arc<Shared>) {
        self.drop_mid_command_served = shared.drop_mid_command.load(Ordering::Relaxed);
        let mut backoff = Backoff::new(shared.options.backoff_base, shared.options.backoff_cap);
        let mut first = true;
        loop {
            let end = self.session(&shared, first).await;
            first = false;
            match end {
                Ok(SessionEnd::Shutdown) => return,
                Ok(SessionEnd::Dropped) => {
                    bump(&shared.counters.deliberate_drops);
                    backoff.reset();
                }
                Ok(SessionEnd::Closed { reason, healthy }) => {
                    bump(&shared.counters.unexpected_disconnects);
                    shared.record_error(self.index, reason);
                    if healthy {
                        backoff.reset();
                    }
                }
                Err(reason) => {
                    bump(&shared.counters.connect_failures);
                    shared.record_error(self.index, reason);
                }
            }
            let delay = backoff.next_delay(&mut rand::rng());
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(&mut self, shared: &Shared, ramp: bool) -> Result<SessionEnd, String> {
        let mut drops = shared.drops.subscribe();
        let generation = *drops.borrow_and_update();
        let mut permit = if ramp {
            Some(
                shared
                    .ramp
                    .acquire()
                    .await
                    .map_err(|_| "the fleet is stopping".to_owned())?,
            )
        } else {
            None
        };
        let channel = tokio::select! {
            () = shared.shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            c = tls::channel(&shared.server, self.tls.clone()) => c.map_err(|e| format!("{e:#}"))?,
        };
        bump(&shared.counters.streams_opened);
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<AgentMessage>(16);
        let hello = AgentMessage {
            body: Some(AgentBody::Hello(Hello {
                agent_version: AGENT_VERSION.to_owned(),
                facts: Some(facts(&self.hostname)),
            })),
        };
        tx.send(hello)
            .await
            .map_err(|_| "stream closed".to_owned())?;
        let mut inbound = match client.connect(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                bump(&shared.counters.server_refusals);
                return Err(format!(
                    "control plane said {:?}: {}",
                    status.code(),
                    status.message()
                ));
            }
        };
        let started = Instant::now();
        let healthy = || started.elapsed() > Duration::from_secs(30);
        // Like the real agent: the first heartbeat goes out at once, the next ones at the
        // HelloAck's interval.
        let mut heartbeat_every = Duration::from_secs(15);
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut up = false;
        let end = loop {
            tokio::select! {
                () = shared.shutdown.cancelled() => break SessionEnd::Shutdown,
                _ = drops.changed() => break SessionEnd::Dropped,
                _ = heartbeat.tick() => {
                    if tx.send(self.heartbeat(shared)).await.is_err() {
                        break closed("the stream closed", healthy());
                    }
                    bump(&shared.counters.heartbeats);
                }
                message = inbound.message() => {
                    let message = match message {
                        Ok(Some(m)) => m,
                        Ok(None) => break closed("the control plane ended the stream", healthy()),
                        Err(status) => break closed(&format!("control plane said {:?}: {}", status.code(), status.message()), healthy()),
                    };
                    match message.body {
                        Some(ServerBody::HelloAck(ack)) => {
                            let every = shared.options.heartbeat_override.unwrap_or_else(|| {
                                Duration::from_secs(u64::from(ack.heartbeat_interval_seconds.max(1)))
                            });
                            if every != heartbeat_every {
                                heartbeat_every = every;
                                heartbeat = tokio::time::interval_at(Instant::now() + every, every);
                                heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            }
                            if !up {
                                up = true;
                                shared.set_up(self.index, true);
                                permit.take();
                            }
                            if self.acked_generation != Some(generation) && shared.acked(generation) {
                                self.acked_generation = Some(generation);
                            }
                        }
                        Some(ServerBody::Command(command)) => {
                            match self.command(command, &tx, shared).await {
                                Ok(AfterCommand::Continue) => {}
                                Ok(AfterCommand::DropStream) => break SessionEnd::Dropped,
                                Err(()) => break closed("the stream closed while answering a command", healthy()),
                            }
                        }
                        Some(ServerBody::CancelCommand(_)) => {
                            // Commands finish as soon as they arrive here: nothing is running
                            // to cancel, as for a real agent asked after the fact.
                            bump(&shared.counters.cancels_received);
                        }
                        // Never asked for: the simulated agents do not renew (runs are shorter than
                        // two thirds of a certificate's life).
                        Some(ServerBody::RenewResponse(_)) | None => {}
                    }
                }
            }
        };
        if up {
            shared.set_up(self.index, false);
        }
        Ok(end)
    }

    fn heartbeat(&mut self, shared: &Shared) -> AgentMessage {
        self.sequence += 1;
        let uptime = SystemTime::now()
            .duration_since(shared.started)
            .unwrap_or_default();
        AgentMessage {
            body: Some(AgentBody::Heartbeat(Heartbeat {
                sequence: self.sequence,
                metrics: Some(Metrics {
                    cpu_percent: 3.5,
                    mem_percent: 25.0,
                    disk_free_bytes: 50 << 30,
                    uptime_seconds: 86_400 + uptime.as_secs(),
                    restart_count_24h: 0,
                    memory_used_bytes: 1 << 30,
                    memory_total_bytes: 4 << 30,
                    load_1m: 0.15,
                }),
                gateway: Some(GatewayStatus {
                    installed: true,
                    running: true,
                    version: "0.0.0-simulated".to_owned(),
                    service_manager: "supervisor".to_owned(),
                    config_path: "/simulated/openclaw.json".to_owned(),
                    last_start_unix_ms: unix_ms(shared.started),
                    restart_count_24h: 0,
                    gateway_connected: true,
                    crash_loop: false,
                    last_exit: String::new(),
                }),
            })),
        }
    }

    /// Answers one delivered command: from the journal if it ran before, else runs it once.
    async fn command(
        &mut self,
        command: Command,
        tx: &mpsc::Sender<AgentMessage>,
        shared: &Shared,
    ) -> Result<AfterCommand, ()> {
        bump(&shared.counters.commands_received);
        let Ok(id) = Uuid::parse_str(&command.command_id) else {
            bump(&shared.counters.unreadable_command_ids);
            return Ok(AfterCommand::Continue);
        };
        shared.ledger.delivered(id, self.node_id);
        let now_ms = unix_ms(SystemTime::now());
        let outcome = if let Some(outcome) = self.journal.get(&id) {
            shared.ledger.answered_from_journal(id, self.node_id);
            bump(&shared.counters.journal_answers);
            outcome.clone()
        } else if command.deadline_unix_ms > 0 && now_ms > command.deadline_unix_ms {
            bump(&shared.counters.refused_after_deadline);
            let outcome = Outcome::Failure(CommandFailure {
                message: "the command reached the agent after its deadline; it was not started"
                    .into(),
            });
            self.journal.insert(id, outcome.clone());
            outcome
        } else {
            let started = AgentMessage {
                body: Some(AgentBody::CommandProgress(CommandProgress {
                    command_id: command.command_id.clone(),
                    kind: ProgressKind::Started.into(),
                    step: String::new(),
                    message: String::new(),
                })),
            };
            tx.send(started).await.map_err(|_| ())?;
            let outcome = execute(command.kind, now_ms);
            shared.ledger.executed(id, self.node_id);
            bump(&shared.counters.executions);
            self.journal.insert(id, outcome.clone());
            let armed = shared.drop_mid_command.load(Ordering::Relaxed);
            if armed > self.drop_mid_command_served {
                // Ran, journaled, result not sent: the control plane must deliver it again.
                self.drop_mid_command_served = armed;
                return Ok(AfterCommand::DropStream);
            }
            outcome
        };
        let result = AgentMessage {
            body: Some(AgentBody::CommandResult(CommandResult {
                command_id: command.command_id,
                outcome: Some(outcome),
            })),
        };
        tx.send(result).await.map_err(|_| ())?;
        Ok(AfterCommand::Continue)
    }
}

fn closed(reason: &str, healthy: bool) -> SessionEnd {
    SessionEnd::Closed {
        reason: reason.to_owned(),
        healthy,
    }
}

/// What a command does on a simulated host: nothing, reported truthfully as nothing.
pub fn execute(kind: Option<Kind>, now_unix_ms: i64) -> Outcome {
    match kind {
        Some(Kind::Ping(_)) => Outcome::Pong(Pong {
            agent_version: AGENT_VERSION.to_owned(),
            agent_time_unix_ms: now_unix_ms,
        }),
        Some(Kind::ServiceAction(request)) => {
            let action = match Action::try_from(request.action) {
                Ok(Action::Start) => "start",
                Ok(Action::Stop) => "stop",
                Ok(Action::Restart) => "restart",
                _ => {
                    return Outcome::Failure(CommandFailure {
                        message: "unknown service action".to_owned(),
                    });
                }
            };
            Outcome::ActionDone(ActionDone {
                verified: true,
                evidence: format!(
                    "simulated agent: {action} is a no-op here; nothing on the host changed"
                ),
                duration_ms: 0,
            })
        }
        Some(Kind::Install(_)) => Outcome::Failure(CommandFailure {
            message: "moltops-bench's simulated agents install nothing".to_owned(),
        }),
        None => Outcome::Failure(CommandFailure {
            message: "this agent does not know that command kind; upgrade the agent".to_owned(),
        }),
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moltops_proto::agent::{Install, Ping, ServiceAction};

    #[test]
    fn commands_are_answered_without_touching_the_host() {
        match execute(Some(Kind::Ping(Ping {})), 42) {
            Outcome::Pong(p) => assert_eq!(
                (p.agent_time_unix_ms, p.agent_version.as_str()),
                (42, AGENT_VERSION)
            ),
            other => panic!("{other:?}"),
        }
        for (action, name) in [
            (Action::Start, "start"),
            (Action::Stop, "stop"),
            (Action::Restart, "restart"),
        ] {
            let request = ServiceAction {
                action: action.into(),
                verify_timeout_seconds: 0,
            };
            match execute(Some(Kind::ServiceAction(request)), 0) {
                Outcome::ActionDone(done) => {
                    assert!(done.verified);
                    assert!(done.evidence.contains(name), "{}", done.evidence);
                }
                other => panic!("{other:?}"),
            }
        }
        let unspecified = ServiceAction {
            action: 0,
            verify_timeout_seconds: 0,
        };
        assert!(matches!(
            execute(Some(Kind::ServiceAction(unspecified)), 0),
            Outcome::Failure(_)
        ));
        assert!(matches!(
            execute(Some(Kind::Install(Install::default())), 0),
            Outcome::Failure(_)
        ));
        assert!(matches!(execute(None, 0), Outcome::Failure(_)));
    }
}
