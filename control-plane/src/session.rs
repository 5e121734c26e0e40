//! One agent stream on this replica, from admission to close: hello, heartbeats, command
//! dispatch and results, certificate renewal, and the rules that end a stream (revocation, a
//! newer stream, silence past the liveness window, the certificate's expiry).

use std::time::Duration;

use chrono::{DateTime, Utc};
use moltops_proto::agent::agent_message::Body as AgentBody;
use moltops_proto::agent::command_progress::Kind as ProgressKind;
use moltops_proto::agent::command_result::Outcome as CommandOutcome;
use moltops_proto::agent::server_message::Body as ServerBody;
use moltops_proto::agent::{
    AgentMessage, CancelCommand, Command, HelloAck, Ping, RenewResponse, ServerMessage, command,
};
use serde_json::json;
use tokio::time::Instant;
use tonic::{Status, Streaming};
use uuid::Uuid;

use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::Actor;
use crate::ca::CertificateAuthority;
use crate::fleet;
use crate::grpc::{PeerCertificate, internal};
use crate::hub::{REVOKED_MESSAGE, SessionHandle};
use crate::jobs::{self, Finish, Progress};
use crate::serve::AppState;

/// The status message for a certificate replaced by a renewal the agent has confirmed.
pub const SUPERSEDED_MESSAGE: &str = "certificate superseded by a renewal";

/// Decides whether a verified certificate may open a stream: the node exists, is not revoked,
/// and the certificate is its current one — or the one just superseded, while the agent has
/// not yet confirmed the renewal (its response may have been lost).
pub async fn admit(state: &AppState, peer: &PeerCertificate) -> Result<(), Status> {
    let node = sqlx::query!(
        "select revoked_at, certificate_serial, previous_certificate_serial from nodes where id = $1",
        peer.node_id
    )
    .fetch_optional(&state.pool)
    .await
    .map_err(internal)?
    .ok_or_else(|| Status::permission_denied("unknown node"))?;
    if node.revoked_at.is_some() {
        return Err(Status::permission_denied(REVOKED_MESSAGE));
    }
    if node.certificate_serial == peer.serial_hex {
        if node.previous_certificate_serial.is_some() {
            // The agent holds the renewed certificate: retire the old one.
            sqlx::query!(
                "update nodes set previous_certificate_serial = null where id = $1 and certificate_serial = $2",
                peer.node_id,
                peer.serial_hex
            )
            .execute(&state.pool)
            .await
            .map_err(internal)?;
        }
        return Ok(());
    }
    if node.previous_certificate_serial.as_deref() == Some(peer.serial_hex.as_str()) {
        return Ok(());
    }
    Err(Status::permission_denied(SUPERSEDED_MESSAGE))
}

pub struct Session {
    state: AppState,
    node_id: Uuid,
    handle: SessionHandle,
    /// Serial and expiry of the certificate this stream is currently authenticated by (the one it
    /// opened with, or the last one renewed on it).
    serial_hex: String,
    not_after: DateTime<Utc>,
    last_inbound: Instant,
}

impl Session {
    pub fn new(state: AppState, peer: PeerCertificate, handle: SessionHandle) -> Self {
        Self {
            state,
            node_id: peer.node_id,
            handle,
            serial_hex: peer.serial_hex,
            not_after: peer.not_after,
            last_inbound: Instant::now(),
        }
    }

    /// Serves the stream until it ends, then records the disconnect and fails the commands that
    /// were in flight on it.
    pub async fn run(mut self, mut inbound: Streaming<AgentMessage>) {
        let idle_limit = self
            .state
            .settings
            .liveness
            .window
            .to_std()
            .unwrap_or(Duration::from_secs(45));
        let end: Result<(), Status> = loop {
            let expires_in = (self.not_after - self.state.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            let idle_deadline = self.last_inbound + idle_limit;
            tokio::select! {
                biased;
                () = self.handle.cancel.cancelled() => break Ok(()),
                () = tokio::time::sleep(expires_in) => {
                    break Err(Status::unauthenticated("the client certificate expired; the stream must renew before expiry"));
                }
                () = tokio::time::sleep_until(idle_deadline) => {
                    break Err(Status::deadline_exceeded("no heartbeat within the liveness window"));
                }
                () = self.handle.wake.notified() => {
                    if let Err(status) = self.dispatch().await {
                        break Err(status);
                    }
                }
                received = inbound.message() => {
                    self.last_inbound = Instant::now();
                    match received {
                        Err(status) => {
                            tracing::debug!(node_id = %self.node_id, %status, "agent stream ended with an error");
                            break Ok(());
                        }
                        Ok(None) => break Ok(()),
                        Ok(Some(message)) => {
                            if let Err(status) = self.handle_message(message).await {
                                break Err(status);
                            }
                        }
                    }
                }
            }
        };
        if let Err(status) = end {
            tracing::info!(node_id = %self.node_id, code = ?status.code(), reason = status.message(), "closing agent stream");
            let _ = self.handle.outbound.try_send(Err(status));
        }
        self.state
            .hub
            .unregister(self.node_id, self.handle.session_id);
        if let Err(e) = self.finish().await {
            tracing::warn!(node_id = %self.node_id, error = %e, "could not record the end of a stream");
        }
        tracing::info!(node_id = %self.node_id, "agent stream closed");
    }

    /// Commands an earlier stream took without reporting back go out again on this one.
    async fn redeliver(&self, now: chrono::DateTime<chrono::Utc>) -> Result<(), sqlx::Error> {
        let mut tx = self.state.pool.begin().await?;
        let failed =
            jobs::redeliver_in_flight(&mut tx, self.node_id, self.handle.session_id, now).await?;
        for command_id in failed {
            audit::record(
                &mut tx,
                now,
                AuditEvent {
                    actor: &Actor::System {
                        what: "agent-session",
                    },
                    action: "command.result",
                    target_kind: "command",
                    target_id: command_id.to_string(),
                    reason: Some(jobs::OUTCOME_UNKNOWN),
                    outcome: Outcome::Failure,
                    detail: json!({ "node_id": self.node_id, "deliveries": jobs::MAX_DELIVERIES }),
                },
            )
            .await?;
        }
        tx.commit().await
    }

    /// The stream ended. Commands in flight on it stay as they are: the node's next stream gets them
    /// again (see [`Self::redeliver`]); the agent's journal keeps each from running twice.
    async fn finish(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.state.pool.begin().await?;
        fleet::record_disconnect(&mut *tx, self.node_id, self.handle.session_id).await?;
        tx.commit().await
    }

    /// Sends one message; gives up if the session is cancelled while the queue is full (an agent
    /// that stopped reading cannot pin the session).
    async fn send(&self, body: ServerBody) -> Result<(), Status> {
        let message = Ok(ServerMessage { body: Some(body) });
        tokio::select! {
            () = self.handle.cancel.cancelled() => Err(Status::cancelled("stream closed")),
            sent = self.handle.outbound.send(message) => sent.map_err(|_| Status::cancelled("stream closed")),
        }
    }

    async fn handle_message(&mut self, message: AgentMessage) -> Result<(), Status> {
        let now = self.state.clock.now();
        let node_id = self.node_id;
        match message.body {
            Some(AgentBody::Hello(hello)) => {
                let facts = hello.facts.unwrap_or_default().into();
                let version: String = hello
                    .agent_version
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect();
                let allowed = fleet::record_hello(
                    &self.state.pool,
                    node_id,
                    self.handle.session_id,
                    &version,
                    &facts,
                    now,
                )
                .await
                .map_err(internal)?;
                if !allowed {
                    return Err(Status::permission_denied(REVOKED_MESSAGE));
                }
                self.redeliver(now).await.map_err(internal)?;
                tracing::info!(%node_id, agent_version = %version, "agent connected");
                let heartbeat = u32::try_from(self.state.settings.heartbeat_interval.as_secs())
                    .unwrap_or(u32::MAX)
                    .max(1);
                self.send(ServerBody::HelloAck(HelloAck {
                    node_id: node_id.to_string(),
                    heartbeat_interval_seconds: heartbeat,
                }))
                .await?;
                self.dispatch().await
            }
            Some(AgentBody::Heartbeat(beat)) => {
                let recorded = fleet::record_heartbeat(
                    &self.state.pool,
                    node_id,
                    self.handle.session_id,
                    beat.metrics.as_ref(),
                    beat.gateway.as_ref(),
                    now,
                )
                .await;
                let outcome = match recorded {
                    Ok(outcome) => outcome,
                    // A database too busy to take one heartbeat is no reason to close the stream:
                    // the next one is written, and liveness allows three missed intervals.
                    // Closing would send the agent into a reconnect that asks more of the same
                    // busy database (measured: at 10,000 agents that cascaded into a storm).
                    Err(e) if is_transient(&e) => {
                        tracing::warn!(%node_id, error = %e, "heartbeat not recorded (database busy); the stream stays open");
                        return Ok(());
                    }
                    Err(e) => return Err(internal(e)),
                };
                if outcome.revoked {
                    return Err(Status::permission_denied(REVOKED_MESSAGE));
                }
                if outcome.queued_commands > 0 {
                    self.dispatch().await?;
                }
                Ok(())
            }
            Some(AgentBody::CommandResult(result)) => {
                let Ok(command_id) = Uuid::parse_str(&result.command_id) else {
                    return Ok(());
                };
                let finish = match result.outcome {
                    Some(CommandOutcome::Pong(pong)) => Finish::Succeeded(json!({
                        "pong": { "agent_version": pong.agent_version, "agent_time_unix_ms": pong.agent_time_unix_ms }
                    })),
                    Some(CommandOutcome::Failure(f)) => {
                        Finish::Failed(f.message.chars().take(4096).collect())
                    }
                    Some(CommandOutcome::Installed(i)) => Finish::Succeeded(json!({
                        "installed": {
                            "version": i.version,
                            "prefix": i.prefix,
                            "node": i.node,
                            "duration_ms": i.duration_ms,
                            "egress": i.egress.iter().take(1000).map(|e| json!({
                                "host": e.host, "port": e.port, "allowed": e.allowed,
                                "bytes_up": e.bytes_up, "bytes_down": e.bytes_down, "note": e.note,
                            })).collect::<Vec<_>>(),
                        }
                    })),
                    // An action whose effect could not be verified failed, with the evidence.
                    Some(CommandOutcome::ActionDone(done)) if done.verified => {
                        Finish::Succeeded(json!({
                            "action": { "verified": true, "evidence": done.evidence, "duration_ms": done.duration_ms }
                        }))
                    }
                    Some(CommandOutcome::ActionDone(done)) => Finish::Failed(format!(
                        "not verified: {}",
                        done.evidence.chars().take(1000).collect::<String>()
                    )),
                    Some(CommandOutcome::Cancelled(c)) => {
                        let step = bounded(&c.step, 64);
                        let message = bounded(&c.message, 1000);
                        Finish::Cancelled(
                            json!({ "cancelled": { "step": step, "message": message } }),
                            format!("cancelled during {step}: {message}"),
                        )
                    }
                    None => Finish::Failed("the agent sent a result without an outcome".to_owned()),
                };
                record_command_result(&self.state, node_id, command_id, finish, now).await
            }
            Some(AgentBody::CommandProgress(p)) => {
                let Ok(command_id) = Uuid::parse_str(&p.command_id) else {
                    return Ok(());
                };
                let step = bounded(&p.step, 64);
                let message = bounded(&p.message, 2000);
                let progress = match ProgressKind::try_from(p.kind) {
                    Ok(ProgressKind::Started) => Progress::Started,
                    Ok(ProgressKind::Step) => Progress::Step {
                        step: &step,
                        message: &message,
                    },
                    Ok(ProgressKind::Log) => Progress::Log(&message),
                    _ => return Ok(()),
                };
                let mut tx = self.state.pool.begin().await.map_err(internal)?;
                jobs::record_progress(&mut tx, node_id, command_id, progress, now)
                    .await
                    .map_err(internal)?;
                tx.commit().await.map_err(internal)
            }
            Some(AgentBody::RenewRequest(renew)) => self.renew(&renew.csr_der).await,
            Some(AgentBody::RenewComplete(_)) => {
                sqlx::query!(
                    "update nodes set previous_certificate_serial = null where id = $1 and certificate_serial = $2",
                    node_id,
                    self.serial_hex
                )
                .execute(&self.state.pool)
                .await
                .map_err(internal)?;
                Ok(())
            }
            None => Err(Status::invalid_argument("empty message")),
        }
    }

    /// Sends as many queued commands as the outbound queue has room for.
    async fn dispatch(&self) -> Result<(), Status> {
        let room = i64::try_from(self.handle.outbound.capacity()).unwrap_or(0);
        if room == 0 {
            return Ok(());
        }
        let now = self.state.clock.now();
        let claim = async {
            let mut tx = self.state.pool.begin().await?;
            let claimed = jobs::claim_queued_commands(
                &mut tx,
                self.node_id,
                self.handle.session_id,
                now,
                room,
            )
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(claimed)
        };
        let claimed = match claim.await {
            Ok(claimed) => claimed,
            // Nothing was claimed, so the commands are still queued: the next wake-up or
            // heartbeat tries again. The stream stays open (see the heartbeat case).
            Err(e) if is_transient(&e) => {
                tracing::warn!(node_id = %self.node_id, error = %e, "commands not claimed (database busy); trying again at the next wake-up");
                return Ok(());
            }
            Err(e) => return Err(internal(e)),
        };
        for claimed in claimed {
            let payload = &claimed.payload;
            let kind = match claimed.kind.as_str() {
                "ping" => command::Kind::Ping(Ping {}),
                "install" => command::Kind::Install(moltops_proto::agent::Install {
                    method: payload_str(payload, "method"),
                    channel: payload_str(payload, "channel"),
                    version: payload_str(payload, "version"),
                    byte_budget: payload["byte_budget"].as_u64().unwrap_or(0),
                }),
                "service_action" => {
                    use moltops_proto::agent::service_action::Action;
                    let action = match payload["action"].as_str() {
                        Some("start") => Action::Start,
                        Some("stop") => Action::Stop,
                        Some("restart") => Action::Restart,
                        _ => Action::Unspecified,
                    };
                    command::Kind::ServiceAction(moltops_proto::agent::ServiceAction {
                        action: action.into(),
                        verify_timeout_seconds: u32::try_from(
                            payload["verify_timeout_seconds"].as_u64().unwrap_or(0),
                        )
                        .unwrap_or(0),
                    })
                }
                other => {
                    let reason =
                        format!("command kind {other:?} is not supported by this control plane");
                    record_command_result(
                        &self.state,
                        self.node_id,
                        claimed.id,
                        Finish::Failed(reason),
                        now,
                    )
                    .await?;
                    continue;
                }
            };
            self.send(ServerBody::Command(Command {
                command_id: claimed.id.to_string(),
                kind: Some(kind),
                idempotency_key: claimed.idempotency_key.unwrap_or_default(),
                deadline_unix_ms: claimed.deadline_at.map_or(0, |d| d.timestamp_millis()),
                actor: claimed.created_by,
            }))
            .await?;
        }
        // Cancels asked for commands this stream carries (sent after the commands, so the agent
        // knows each one it is asked to stop).
        let cancels = jobs::take_cancels(&self.state.pool, self.node_id, self.handle.session_id)
            .await
            .map_err(internal)?;
        for id in cancels {
            self.send(ServerBody::CancelCommand(CancelCommand {
                command_id: id.to_string(),
            }))
            .await?;
        }
        Ok(())
    }

    /// Signs a new certificate for this node from a CSR sent on its authenticated stream.
    async fn renew(&mut self, csr_der: &[u8]) -> Result<(), Status> {
        let now = self.state.clock.now();
        let lifetime = self.state.settings.agent_certificate_lifetime;
        // Agents renew at two thirds of the lifetime; earlier than half is refused, so a client
        // cannot make the CA sign (and the audit log grow) in a loop.
        if now < self.not_after - lifetime / 2 {
            return Err(Status::failed_precondition(
                "too early to renew: more than half the certificate's life is left",
            ));
        }
        let csr = CertificateAuthority::parse_csr(csr_der)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let issued = {
            let mut rng = rand::rng();
            self.state
                .ca
                .sign_node_certificate(&csr, self.node_id, now, lifetime, &mut rng)
                .map_err(internal)?
        };
        let mut tx = self.state.pool.begin().await.map_err(internal)?;
        let updated = sqlx::query!(
            "update nodes set previous_certificate_serial = $4, certificate_serial = $2, certificate_not_after = $3
             where id = $1 and revoked_at is null returning id",
            self.node_id,
            issued.serial_hex,
            issued.not_after,
            self.serial_hex,
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(internal)?;
        if updated.is_none() {
            return Err(Status::permission_denied(REVOKED_MESSAGE));
        }
        audit::record(
            &mut tx,
            now,
            AuditEvent {
                actor: &Actor::Agent {
                    node_id: self.node_id,
                },
                action: "node.certificate_renew",
                target_kind: "node",
                target_id: self.node_id.to_string(),
                reason: None,
                outcome: Outcome::Success,
                detail: json!({
                    "certificate_serial": issued.serial_hex,
                    "previous_serial": self.serial_hex,
                    "not_after": issued.not_after,
                }),
            },
        )
        .await
        .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        tracing::info!(node_id = %self.node_id, not_after = %issued.not_after, "renewed agent certificate");
        // The agent proved possession of the new key (the CSR's signature), so the stream is now
        // authenticated by the new certificate.
        self.serial_hex = issued.serial_hex;
        self.not_after = issued.not_after;
        self.send(ServerBody::RenewResponse(RenewResponse {
            certificate_pem: issued.pem,
        }))
        .await
    }
}

async fn record_command_result(
    state: &AppState,
    node_id: Uuid,
    command_id: Uuid,
    finish: Finish,
    now: DateTime<Utc>,
) -> Result<(), Status> {
    let mut tx = state.pool.begin().await.map_err(internal)?;
    let completed = jobs::complete_command(&mut tx, node_id, command_id, finish, now)
        .await
        .map_err(internal)?;
    let Some(status) = completed else {
        // Not this node's, or already finished (a journal's answer to a re-delivery, or a result
        // that arrived after the command was given up on): ignore rather than let one agent
        // probe others, but say so.
        tracing::info!(%node_id, %command_id, "ignored a result for a command that is not outstanding");
        return Ok(());
    };
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor: &Actor::Agent { node_id },
            action: "command.result",
            target_kind: "command",
            target_id: command_id.to_string(),
            reason: None,
            outcome: if status == "succeeded" {
                Outcome::Success
            } else {
                Outcome::Failure
            },
            detail: json!({ "node_id": node_id, "status": status }),
        },
    )
    .await
    .map_err(internal)?;
    tx.commit().await.map_err(internal)
}

/// At most `max` characters of an agent's text, without control characters.
fn bounded(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// A string field of a command's payload ('' when absent).
fn payload_str(payload: &serde_json::Value, key: &str) -> String {
    payload[key].as_str().unwrap_or_default().to_owned()
}

/// A database error that says "busy", not "wrong": waiting for a pooled connection timed out, or
/// the connection failed underneath. Retrying later is the answer.
fn is_transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_))
}

#[cfg(test)]
mod tests {
    use super::is_transient;

    #[test]
    fn only_a_busy_or_broken_connection_is_transient() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::PoolClosed));
    }
}
