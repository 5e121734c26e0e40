//! The agent-facing gRPC service on the agent port: TLS termination (client certificates
//! optional at the handshake, required by every call but `Enroll`), and the `AgentService`.
//!
//! Identity: the accept loop verifies the client chain against our CA (rustls), then reads the
//! node id from the leaf's URI SAN into [`AgentConnectInfo`]. Handlers take the node id only
//! from there — never from a message field.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::Duration as ChronoDuration;
use moltops_proto::agent::agent_message::Body as AgentBody;
use moltops_proto::agent::agent_service_server::{AgentService, AgentServiceServer};
use moltops_proto::agent::command_result::Outcome as CommandOutcome;
use moltops_proto::agent::server_message::Body as ServerBody;
use moltops_proto::agent::{
    AgentMessage, Command, EnrollRequest, EnrollResponse, HelloAck, Ping, RenewResponse,
    ServerMessage, command,
};
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::audit::{self, AuditEvent, Outcome};
use crate::auth::Actor;
use crate::ca::{CaError, CertificateAuthority};
use crate::enrollment::{self, EnrollError};
use crate::fleet;
use crate::hub::{REVOKED_MESSAGE, SessionHandle};
use crate::serve::AppState;

/// Requests are small; anything bigger is refused before it is decoded.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Commands waiting to be written to one agent's stream. A slow agent fills this and the rest
/// stay queued in Postgres rather than in memory.
const OUTBOUND_QUEUE: usize = 32;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Server certificate lifetime; it is re-issued in place after two thirds of it.
const SERVER_CERT_LIFETIME_DAYS: i64 = 30;

/// Who is on the other end of a TLS connection, fixed at the handshake.
#[derive(Debug, Clone)]
pub struct AgentConnectInfo {
    pub remote_addr: Option<SocketAddr>,
    /// Present when the client presented a certificate that chains to our CA and names a node.
    pub node_id: Option<Uuid>,
}

/// A server-side TLS stream that carries its [`AgentConnectInfo`] into tonic.
pub struct AgentTlsStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: AgentConnectInfo,
}

impl AgentTlsStream {
    fn new(inner: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        let (tcp, conn) = inner.get_ref();
        let node_id = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(node_id_from_certificate);
        let info = AgentConnectInfo {
            remote_addr: tcp.peer_addr().ok(),
            node_id,
        };
        Self { inner, info }
    }
}

/// The node id in a certificate's URI SAN, if it has exactly one moltops node identity.
pub fn node_id_from_certificate(cert: &CertificateDer<'_>) -> Option<Uuid> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => moltops_proto::identity::parse_node_uri(uri),
            _ => None,
        });
    let first = ids.next()?;
    ids.next().is_none().then_some(first)
}

impl Connected for AgentTlsStream {
    type ConnectInfo = AgentConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for AgentTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgentTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The server certificate, swappable while connections are served.
#[derive(Debug)]
pub struct RotatingServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for RotatingServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

fn issue_server_key(
    ca: &CertificateAuthority,
    names: &[String],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(CertifiedKey, chrono::DateTime<chrono::Utc>), anyhow::Error> {
    let (issued, key) = ca.issue_server_certificate(
        names,
        now,
        ChronoDuration::days(SERVER_CERT_LIFETIME_DAYS),
        &mut rand::rng(),
    )?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider.key_provider.load_private_key(key)?;
    // The chain includes the CA so that an enrolling agent can check its pin against it.
    let chain = vec![issued.der.clone(), ca.certificate_der().clone()];
    Ok((CertifiedKey::new(chain, signing_key), issued.not_after))
}

/// The rustls configuration of the agent port.
pub fn tls_config(
    state: &AppState,
) -> Result<(Arc<rustls::ServerConfig>, Arc<RotatingServerCert>), anyhow::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(state.ca.certificate_der().clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let (key, _) = issue_server_key(
        &state.ca,
        &state.settings.grpc_server_names,
        state.clock.now(),
    )?;
    let resolver = Arc::new(RotatingServerCert {
        current: RwLock::new(Arc::new(key)),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), resolver))
}

/// Serves the agent port on an already-bound listener until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), anyhow::Error> {
    let (config, resolver) = tls_config(&state)?;
    tokio::spawn(rotate_server_certificate(
        state.clone(),
        resolver,
        shutdown.clone(),
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = mpsc::channel::<Result<AgentTlsStream, std::io::Error>>(128);
    let accept_shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = accept_shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            // Handshakes run concurrently so one slow client cannot stall the accept loop.
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(AgentTlsStream::new(tls))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    let service = AgentServiceServer::new(AgentServiceImpl {
        state: state.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let hub = state.hub.clone();
    let signal = async move {
        shutdown.cancelled().await;
        hub.close_all();
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(service)
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), signal)
        .await?;
    Ok(())
}

async fn rotate_server_certificate(
    state: AppState,
    resolver: Arc<RotatingServerCert>,
    shutdown: CancellationToken,
) {
    let lifetime = ChronoDuration::days(SERVER_CERT_LIFETIME_DAYS);
    let mut renew_at = state.clock.now() + lifetime * 2 / 3;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        let now = state.clock.now();
        if now < renew_at {
            continue;
        }
        match issue_server_key(&state.ca, &state.settings.grpc_server_names, now) {
            Ok((key, _)) => {
                if let Ok(mut current) = resolver.current.write() {
                    *current = Arc::new(key);
                }
                renew_at = now + lifetime * 2 / 3;
                tracing::info!("renewed the agent-port server certificate");
            }
            Err(e) => {
                tracing::error!(error = %e, "could not renew the agent-port server certificate")
            }
        }
    }
}

struct AgentServiceImpl {
    state: AppState,
}

fn enroll_status(e: EnrollError) -> Status {
    match e {
        EnrollError::UnknownToken
        | EnrollError::Expired
        | EnrollError::Revoked
        | EnrollError::Exhausted => Status::unauthenticated(e.to_string()),
        EnrollError::Ca(CaError::CsrTooLarge | CaError::CsrInvalid) => {
            Status::invalid_argument(e.to_string())
        }
        other => {
            let incident = Uuid::new_v4();
            tracing::error!(%incident, error = %other, "enrollment failed");
            Status::internal(format!("internal error (incident {incident})"))
        }
    }
}

#[tonic::async_trait]
impl AgentService for AgentServiceImpl {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let peer = request
            .extensions()
            .get::<AgentConnectInfo>()
            .and_then(|i| i.remote_addr);
        let req = request.into_inner();
        let state = &self.state;
        // Send-able rng: enrollment crosses awaits.
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
        let result = enrollment::enroll(
            &state.pool,
            &state.ca,
            enrollment::EnrollRequest {
                token: &req.token,
                csr_der: &req.csr_der,
                facts: req.facts.unwrap_or_default().into(),
                agent_version: req
                    .agent_version
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect(),
            },
            state.settings.agent_certificate_lifetime,
            state.clock.now(),
            &mut rng,
        )
        .await;
        match result {
            Ok(enrolled) => {
                tracing::info!(node_id = %enrolled.node_id, ?peer, "node enrolled");
                Ok(Response::new(EnrollResponse {
                    node_id: enrolled.node_id.to_string(),
                    certificate_pem: enrolled.certificate.pem,
                    ca_certificate_pem: state.ca.certificate_pem().to_owned(),
                }))
            }
            Err(e) => {
                tracing::info!(?peer, reason = %e, "enrollment refused");
                Err(enroll_status(e))
            }
        }
    }

    type ConnectStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let node_id = request
            .extensions()
            .get::<AgentConnectInfo>()
            .and_then(|info| info.node_id)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "a client certificate issued by this control plane is required",
                )
            })?;
        let node = fleet::get_node(&self.state.pool, node_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::permission_denied("unknown node"))?;
        if node.revoked_at.is_some() {
            return Err(Status::permission_denied(REVOKED_MESSAGE));
        }
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let session = SessionHandle {
            session_id: Uuid::now_v7(),
            outbound: tx,
            wake: Arc::new(Notify::new()),
            cancel: CancellationToken::new(),
        };
        self.state.hub.register(node_id, session.clone());
        let inbound = request.into_inner();
        tokio::spawn(run_session(self.state.clone(), node_id, session, inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    let incident = Uuid::new_v4();
    tracing::error!(%incident, error = %e, "agent call failed");
    Status::internal(format!("internal error (incident {incident})"))
}

/// One agent stream, from hello to close. Owns the inbound half; writes through the bounded
/// outbound queue.
async fn run_session(
    state: AppState,
    node_id: Uuid,
    session: SessionHandle,
    mut inbound: Streaming<AgentMessage>,
) {
    let idle_limit = state
        .settings
        .liveness
        .window
        .to_std()
        .unwrap_or(Duration::from_secs(45));
    let end: Result<(), Status> = loop {
        let message = tokio::select! {
            () = session.cancel.cancelled() => break Ok(()),
            () = session.wake.notified() => {
                if let Err(status) = dispatch(&state, node_id, &session).await {
                    break Err(status);
                }
                continue;
            }
            received = tokio::time::timeout(idle_limit, inbound.message()) => received,
        };
        let message = match message {
            Err(_) => {
                break Err(Status::deadline_exceeded(
                    "no heartbeat within the liveness window",
                ));
            }
            Ok(Err(status)) => {
                tracing::debug!(%node_id, %status, "agent stream ended with an error");
                break Ok(());
            }
            Ok(Ok(None)) => break Ok(()),
            Ok(Ok(Some(m))) => m,
        };
        if let Err(status) = handle_message(&state, node_id, &session, message).await {
            break Err(status);
        }
    };
    if let Err(status) = end {
        let _ = session.outbound.try_send(Err(status));
    }
    state.hub.unregister(node_id, session.session_id);
    if let Err(e) = fleet::record_disconnect(&state.pool, node_id, session.session_id).await {
        tracing::warn!(%node_id, error = %e, "could not record disconnect");
    }
    tracing::info!(%node_id, "agent stream closed");
}

async fn send(session: &SessionHandle, body: ServerBody) -> Result<(), Status> {
    session
        .outbound
        .send(Ok(ServerMessage { body: Some(body) }))
        .await
        .map_err(|_| Status::cancelled("stream closed"))
}

async fn handle_message(
    state: &AppState,
    node_id: Uuid,
    session: &SessionHandle,
    message: AgentMessage,
) -> Result<(), Status> {
    let now = state.clock.now();
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
                &state.pool,
                node_id,
                session.session_id,
                &version,
                &facts,
                now,
            )
            .await
            .map_err(internal)?;
            if !allowed {
                return Err(Status::permission_denied(REVOKED_MESSAGE));
            }
            tracing::info!(%node_id, agent_version = %version, "agent connected");
            send(
                session,
                ServerBody::HelloAck(HelloAck {
                    node_id: node_id.to_string(),
                    heartbeat_interval_seconds: u32::try_from(
                        state.settings.heartbeat_interval.as_secs(),
                    )
                    .unwrap_or(u32::MAX)
                    .max(1),
                }),
            )
            .await?;
            dispatch(state, node_id, session).await
        }
        Some(AgentBody::Heartbeat(_)) => {
            let outcome = fleet::record_heartbeat(&state.pool, node_id, session.session_id, now)
                .await
                .map_err(internal)?;
            if outcome.revoked {
                return Err(Status::permission_denied(REVOKED_MESSAGE));
            }
            if outcome.queued_commands > 0 {
                dispatch(state, node_id, session).await?;
            }
            Ok(())
        }
        Some(AgentBody::CommandResult(result)) => {
            let Ok(command_id) = Uuid::parse_str(&result.command_id) else {
                return Ok(());
            };
            let outcome = match result.outcome {
                Some(CommandOutcome::Pong(pong)) => Ok(json!({
                    "pong": { "agent_version": pong.agent_version, "agent_time_unix_ms": pong.agent_time_unix_ms }
                })),
                Some(CommandOutcome::Failure(f)) => Err(f.message.chars().take(4096).collect()),
                None => Err("the agent sent a result without an outcome".to_owned()),
            };
            record_command_result(state, node_id, command_id, outcome, now).await
        }
        Some(AgentBody::RenewRequest(renew)) => {
            renew_certificate(state, node_id, session, &renew.csr_der).await
        }
        None => Err(Status::invalid_argument("empty message")),
    }
}

async fn record_command_result(
    state: &AppState,
    node_id: Uuid,
    command_id: Uuid,
    outcome: Result<serde_json::Value, String>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), Status> {
    let succeeded = outcome.is_ok();
    let mut tx = state.pool.begin().await.map_err(internal)?;
    let completed = fleet::complete_command(&mut *tx, node_id, command_id, outcome, now)
        .await
        .map_err(internal)?;
    if !completed {
        // Not this node's, or not outstanding: ignore rather than let one agent probe others.
        return Ok(());
    }
    audit::record(
        &mut tx,
        now,
        AuditEvent {
            actor: &Actor::Agent { node_id },
            action: "command.result",
            target_kind: "command",
            target_id: command_id.to_string(),
            reason: None,
            outcome: if succeeded {
                Outcome::Success
            } else {
                Outcome::Failure
            },
            detail: json!({ "node_id": node_id }),
        },
    )
    .await
    .map_err(internal)?;
    tx.commit().await.map_err(internal)
}

/// Sends as many queued commands as the outbound queue has room for.
async fn dispatch(state: &AppState, node_id: Uuid, session: &SessionHandle) -> Result<(), Status> {
    let room = i64::try_from(session.outbound.capacity()).unwrap_or(0);
    if room == 0 {
        return Ok(());
    }
    let claimed = fleet::claim_queued_commands(&state.pool, node_id, state.clock.now(), room)
        .await
        .map_err(internal)?;
    for (command_id, kind, _payload) in claimed {
        let kind = match kind.as_str() {
            "ping" => command::Kind::Ping(Ping {}),
            other => {
                let reason =
                    format!("command kind {other:?} is not supported by this control plane");
                record_command_result(state, node_id, command_id, Err(reason), state.clock.now())
                    .await?;
                continue;
            }
        };
        send(
            session,
            ServerBody::Command(Command {
                command_id: command_id.to_string(),
                kind: Some(kind),
            }),
        )
        .await?;
    }
    Ok(())
}

async fn renew_certificate(
    state: &AppState,
    node_id: Uuid,
    session: &SessionHandle,
    csr_der: &[u8],
) -> Result<(), Status> {
    let csr = CertificateAuthority::parse_csr(csr_der)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let now = state.clock.now();
    let issued = {
        let mut rng = rand::rng();
        state
            .ca
            .sign_node_certificate(
                &csr,
                node_id,
                now,
                state.settings.agent_certificate_lifetime,
                &mut rng,
            )
            .map_err(internal)?
    };
    let mut tx = state.pool.begin().await.map_err(internal)?;
    let updated = sqlx::query!(
        "update nodes set certificate_serial = $2, certificate_not_after = $3
         where id = $1 and revoked_at is null returning id",
        node_id,
        issued.serial_hex,
        issued.not_after
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
            actor: &Actor::Agent { node_id },
            action: "node.certificate_renew",
            target_kind: "node",
            target_id: node_id.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({ "certificate_serial": issued.serial_hex, "not_after": issued.not_after }),
        },
    )
    .await
    .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    tracing::info!(%node_id, not_after = %issued.not_after, "renewed agent certificate");
    send(
        session,
        ServerBody::RenewResponse(RenewResponse {
            certificate_pem: issued.pem,
        }),
    )
    .await
}
