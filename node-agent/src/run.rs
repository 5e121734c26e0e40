//! `moltops-agent run`: one mTLS stream to the control plane, for as long as the agent runs.
//! Hello, heartbeats, commands, certificate renewal at two thirds of the certificate's life;
//! on any break, reconnect with exponential backoff and full jitter.

use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use moltops_proto::agent::agent_message::Body as AgentBody;
use moltops_proto::agent::agent_service_client::AgentServiceClient;
use moltops_proto::agent::command_result::Outcome;
use moltops_proto::agent::server_message::Body as ServerBody;
use moltops_proto::agent::{
    AgentMessage, CommandFailure, CommandResult, Heartbeat, Hello, RenewComplete, RenewRequest,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util_shim::CancellationToken;

use crate::backoff::Backoff;
use crate::state::{CA_FILE, CERT_FILE, KEY_FILE, StateDir};

/// Re-exported so the binary and tests share one cancellation type.
pub mod tokio_util_shim {
    pub use tokio::sync::watch;

    /// A minimal cancellation flag (the agent avoids a dependency for this one use).
    #[derive(Clone, Debug)]
    pub struct CancellationToken {
        tx: std::sync::Arc<watch::Sender<bool>>,
    }

    impl Default for CancellationToken {
        fn default() -> Self {
            Self::new()
        }
    }

    impl CancellationToken {
        pub fn new() -> Self {
            let (tx, _) = watch::channel(false);
            Self {
                tx: std::sync::Arc::new(tx),
            }
        }

        pub fn cancel(&self) {
            self.tx.send_replace(true);
        }

        pub fn is_cancelled(&self) -> bool {
            *self.tx.borrow()
        }

        pub async fn cancelled(&self) {
            let mut rx = self.tx.subscribe();
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

/// How `run` ended, for the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// SIGTERM/SIGINT.
    Shutdown,
    /// The control plane revoked this node.
    Revoked,
    /// The certificate expired while the agent could not renew it.
    CertificateExpired,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How this agent manages its gateway.
    pub gateway: crate::gateway::Options,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            gateway: crate::gateway::Options::default(),
        }
    }
}

/// The status message the control plane uses for a revoked node.
const REVOKED_MESSAGE: &str = "node revoked";

enum SessionEnd {
    Shutdown,
    Revoked,
    /// The stream ended; `healthy` if it had been up long enough to reset the backoff.
    Disconnected {
        healthy: bool,
    },
}

pub async fn run(
    state: &StateDir,
    options: &RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<RunEnd> {
    state
        .recover()
        .context("recovering an interrupted certificate renewal")?;
    let node = state
        .node()
        .context("this state directory is not enrolled; run `moltops-agent enroll` first")?;
    tracing::info!(node_id = %node.node_id, server = %node.server, "starting");
    // The gateway this agent manages keeps running across reconnects. A supervised one stops with
    // the agent; one under a service manager (systemd, launchd, docker) keeps running without it.
    let gateway = crate::gateway::Gateway::new(state.root(), options.gateway.clone());
    gateway.resume().await;
    let journal = std::sync::Arc::new(
        crate::journal::Journal::open(state.root()).context("opening the command journal")?,
    );
    journal.prune(Duration::from_secs(7 * 24 * 3600));
    let ctx = Carried {
        gateway: gateway.clone(),
        journal,
        results: mpsc::channel(256),
        running: std::sync::Arc::default(),
    };
    let end = run_sessions(state, options, &node.server, ctx, shutdown).await;
    gateway.shutdown().await;
    end
}

/// What outlives a session: the gateway, the command journal, and the results waiting to be
/// sent (a result that finishes after its stream dropped goes out on the next one).
struct Carried {
    gateway: std::sync::Arc<crate::gateway::Gateway>,
    journal: std::sync::Arc<crate::journal::Journal>,
    results: (mpsc::Sender<AgentMessage>, mpsc::Receiver<AgentMessage>),
    /// The commands running now, with the token that cancels each.
    running: Running,
}

type Running =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, CancellationToken>>>;

/// Runs a delivered command off the session loop: once (the journal answers a re-delivery),
/// never after its deadline, cancellable through `running`.
fn spawn_command(
    command: moltops_proto::agent::Command,
    gateway: std::sync::Arc<crate::gateway::Gateway>,
    journal: std::sync::Arc<crate::journal::Journal>,
    results: mpsc::Sender<AgentMessage>,
    running: Running,
) {
    let id = command.command_id.clone();
    // Registered before the task starts, so a cancel that follows on the stream finds it.
    let cancel = {
        let Ok(mut map) = running.lock() else {
            return;
        };
        map.entry(id.clone()).or_default().clone()
    };
    tokio::spawn(async move {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let progress = crate::commands::Progress::new(&id, results.clone());
        let outcome = match journal.begin(&id) {
            crate::journal::Begin::Running => {
                // Delivered again while it runs: say so, so the control plane shows it running.
                progress.started();
                return;
            }
            crate::journal::Begin::Done(outcome) => {
                tracing::info!(command_id = %id, "answered a re-delivered command from the journal");
                outcome
            }
            crate::journal::Begin::Interrupted => {
                let outcome = crate::journal::interrupted();
                journal.finish(&id, &outcome);
                outcome
            }
            crate::journal::Begin::Fresh
                if command.deadline_unix_ms > 0 && now_ms > command.deadline_unix_ms =>
            {
                let outcome = Outcome::Failure(CommandFailure {
                    message: "the command reached the agent after its deadline; it was not started"
                        .into(),
                });
                journal.finish(&id, &outcome);
                outcome
            }
            crate::journal::Begin::Fresh => {
                tracing::info!(
                    command_id = %id,
                    actor = %command.actor,
                    idempotency_key = %command.idempotency_key,
                    "running a command"
                );
                progress.started();
                let ctx = crate::commands::Context { cancel, progress };
                let outcome = crate::commands::execute(command.kind, now_ms, &gateway, &ctx).await;
                journal.finish(&id, &outcome);
                outcome
            }
        };
        if let Ok(mut map) = running.lock() {
            map.remove(&id);
        }
        let result = AgentMessage {
            body: Some(AgentBody::CommandResult(CommandResult {
                command_id: id,
                outcome: Some(outcome),
            })),
        };
        // A closed stream loses the result; the control plane delivers the command again and
        // the journal answers.
        let _ = results.send(result).await;
    });
}

async fn run_sessions(
    state: &StateDir,
    options: &RunOptions,
    server: &str,
    mut ctx: Carried,
    shutdown: CancellationToken,
) -> anyhow::Result<RunEnd> {
    let mut backoff = Backoff::new(options.backoff_base, options.backoff_cap);
    loop {
        if certificate_expired(state)? {
            return Ok(RunEnd::CertificateExpired);
        }
        match session(state, server, &mut ctx, &shutdown).await {
            Ok(SessionEnd::Shutdown) => return Ok(RunEnd::Shutdown),
            Ok(SessionEnd::Revoked) => return Ok(RunEnd::Revoked),
            Ok(SessionEnd::Disconnected { healthy }) => {
                if healthy {
                    backoff.reset();
                }
                tracing::warn!("stream to the control plane closed; reconnecting");
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot reach the control plane"),
        }
        let delay = backoff.next_delay(&mut rand::rng());
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "waiting before reconnecting"
        );
        tokio::select! {
            () = shutdown.cancelled() => return Ok(RunEnd::Shutdown),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn current_certificate(state: &StateDir) -> anyhow::Result<x509_parser_owned::CertTimes> {
    let pem = state.read_string(CERT_FILE)?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).context("parsing agent.crt")?;
    x509_parser_owned::times(&der)
}

fn certificate_expired(state: &StateDir) -> anyhow::Result<bool> {
    let times = current_certificate(state)?;
    Ok(SystemTime::now() >= times.not_after)
}

/// When to renew: two thirds of the way from when we received the certificate to its expiry.
pub fn renewal_time(received_at: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after
        .duration_since(received_at)
        .unwrap_or(Duration::ZERO);
    received_at + life * 2 / 3
}

mod x509_parser_owned {
    //! The two validity times the agent needs, parsed from its certificate.
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use anyhow::anyhow;
    use x509_parser::prelude::*;

    pub struct CertTimes {
        pub not_after: SystemTime,
    }

    pub fn times(der: &[u8]) -> anyhow::Result<CertTimes> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| anyhow!("parsing certificate: {e}"))?;
        let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
        Ok(CertTimes {
            not_after: UNIX_EPOCH + Duration::from_secs(secs),
        })
    }
}

async fn session(
    state: &StateDir,
    server: &str,
    ctx: &mut Carried,
    shutdown: &CancellationToken,
) -> anyhow::Result<SessionEnd> {
    let gateway = ctx.gateway.clone();
    let config = crate::tls::mtls_config(
        &state.read_string(CA_FILE)?,
        &state.read_string(CERT_FILE)?,
        &state.read_string(KEY_FILE)?,
    )?;
    let channel = tokio::select! {
        () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
        c = crate::tls::channel(server, config) => c?,
    };
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let facts = crate::facts::collect(state.root());
    tx.send(AgentMessage {
        body: Some(AgentBody::Hello(Hello {
            agent_version: crate::VERSION.to_owned(),
            facts: Some(facts),
        })),
    })
    .await
    .map_err(|_| anyhow!("stream closed"))?;
    let response = match client.connect(ReceiverStream::new(rx)).await {
        Ok(r) => r,
        Err(status) => return classify(status),
    };
    let mut inbound = response.into_inner();
    let started = tokio::time::Instant::now();
    let mut heartbeat_every = Duration::from_secs(15);
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    let mut sampler = crate::facts::Sampler::new(state.root());
    let mut renewal_in_flight: Option<tokio::time::Instant> = None;
    let healthy = move || started.elapsed() > Duration::from_secs(30);
    loop {
        let renew_at = renewal_deadline(state)?;
        tokio::select! {
            () = shutdown.cancelled() => {
                // Dropping the sender half-closes our side; the server sees a clean end.
                drop(tx);
                return Ok(SessionEnd::Shutdown);
            }
            Some(result) = ctx.results.1.recv() => {
                // Lost if the stream is gone: the control plane delivers the command again and
                // the journal answers.
                if tx.send(result).await.is_err() {
                    return Ok(SessionEnd::Disconnected { healthy: healthy() });
                }
            }
            () = gateway.changed() => {
                // The gateway changed state: report it now, not at the next heartbeat.
                sequence += 1;
                let status = gateway.status().await;
                let mut metrics = sampler.sample();
                metrics.restart_count_24h = status.restart_count_24h;
                let beat = Heartbeat { sequence, metrics: Some(metrics), gateway: Some(status) };
                if tx.send(AgentMessage { body: Some(AgentBody::Heartbeat(beat)) }).await.is_err() {
                    return Ok(SessionEnd::Disconnected { healthy: healthy() });
                }
            }
            _ = heartbeat.tick() => {
                sequence += 1;
                let mut metrics = sampler.sample();
                let status = gateway.status().await;
                metrics.restart_count_24h = status.restart_count_24h;
                let beat = Heartbeat { sequence, metrics: Some(metrics), gateway: Some(status) };
                if tx.send(AgentMessage { body: Some(AgentBody::Heartbeat(beat)) }).await.is_err() {
                    return Ok(SessionEnd::Disconnected { healthy: healthy() });
                }
            }
            () = tokio::time::sleep_until(renew_at), if renewal_in_flight.is_none_or(|t| t.elapsed() > heartbeat_every * 4) => {
                let (key_pem, csr_der) = crate::enroll::new_key_and_csr("moltops-agent")?;
                state.stage_renewal_key(&key_pem)?;
                tracing::info!("requesting certificate renewal");
                if tx.send(AgentMessage { body: Some(AgentBody::RenewRequest(RenewRequest { csr_der })) }).await.is_err() {
                    return Ok(SessionEnd::Disconnected { healthy: healthy() });
                }
                renewal_in_flight = Some(tokio::time::Instant::now());
            }
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(SessionEnd::Disconnected { healthy: healthy() }),
                    Err(status) => return classify(status),
                };
                match message.body {
                    Some(ServerBody::HelloAck(ack)) => {
                        let every = Duration::from_secs(u64::from(ack.heartbeat_interval_seconds.max(1)));
                        if every != heartbeat_every {
                            heartbeat_every = every;
                            heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                        tracing::info!(node_id = %ack.node_id, heartbeat_seconds = every.as_secs(), "connected");
                    }
                    Some(ServerBody::Command(command)) => {
                        // Commands run off the session loop, so a long one never delays heartbeats.
                        spawn_command(
                            command,
                            gateway.clone(),
                            ctx.journal.clone(),
                            ctx.results.0.clone(),
                            ctx.running.clone(),
                        );
                    }
                    Some(ServerBody::CancelCommand(cancel)) => {
                        let token = ctx.running.lock().ok().and_then(|m| m.get(&cancel.command_id).cloned());
                        match token {
                            Some(token) => {
                                tracing::info!(command_id = %cancel.command_id, "cancelling a running command");
                                token.cancel();
                            }
                            None => tracing::info!(command_id = %cancel.command_id, "asked to cancel a command that is not running here"),
                        }
                    }
                    Some(ServerBody::RenewResponse(renewed)) => {
                        accept_renewal(state, &renewed.certificate_pem)?;
                        renewal_in_flight = None;
                        let done = AgentMessage { body: Some(AgentBody::RenewComplete(RenewComplete {})) };
                        if tx.send(done).await.is_err() {
                            return Ok(SessionEnd::Disconnected { healthy: healthy() });
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

fn renewal_deadline(state: &StateDir) -> anyhow::Result<tokio::time::Instant> {
    let times = current_certificate(state)?;
    let at = renewal_time(state.certificate_received_at()?, times.not_after);
    let wait = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Ok(tokio::time::Instant::now() + wait)
}

/// Checks that the new certificate is for the staged key, then makes both current.
fn accept_renewal(state: &StateDir, cert_pem: &str) -> anyhow::Result<()> {
    let key_pem = state
        .staged_renewal_key()
        .ok_or_else(|| anyhow!("received a certificate without a renewal in progress"))?;
    // Building a client config proves that certificate and key belong together.
    crate::tls::mtls_config(&state.read_string(CA_FILE)?, cert_pem, &key_pem)
        .context("the renewed certificate does not match the staged key")?;
    state.commit_renewal(cert_pem)?;
    tracing::info!("certificate renewed");
    Ok(())
}

fn classify(status: tonic::Status) -> anyhow::Result<SessionEnd> {
    if status.code() == tonic::Code::PermissionDenied && status.message() == REVOKED_MESSAGE {
        return Ok(SessionEnd::Revoked);
    }
    Err(anyhow!(
        "control plane said {:?}: {}",
        status.code(),
        status.message()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_happens_at_two_thirds_of_the_received_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            renewal_time(t0, t0 + Duration::from_secs(90)),
            t0 + Duration::from_secs(60)
        );
        assert_eq!(
            renewal_time(t0, t0 + Duration::from_secs(24 * 3600)),
            t0 + Duration::from_secs(16 * 3600)
        );
        // Already expired: renew now.
        assert_eq!(renewal_time(t0, t0 - Duration::from_secs(5)), t0);
    }
}
