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

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use moltops_proto::agent::agent_service_server::{AgentService, AgentServiceServer};
use moltops_proto::agent::{AgentMessage, EnrollRequest, EnrollResponse, ServerMessage};
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::ca::{CaError, CertificateAuthority};
use crate::enrollment::{self, EnrollError};
use crate::hub::SessionHandle;
use crate::serve::AppState;

/// Requests are small; anything bigger is refused before it is decoded.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Commands waiting to be written to one agent's stream. A slow agent fills this and the rest
/// stay queued in Postgres rather than in memory.
const OUTBOUND_QUEUE: usize = 32;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections (with or without a client certificate) one replica holds at once; beyond this,
/// new connections are closed at accept. Sized for the 10,000-agent target with headroom.
const MAX_CONNECTIONS: usize = 50_000;
/// Server certificate lifetime; it is re-issued in place after two thirds of it.
const SERVER_CERT_LIFETIME_DAYS: i64 = 30;

/// Who is on the other end of a TLS connection, fixed at the handshake.
#[derive(Debug, Clone)]
pub struct AgentConnectInfo {
    pub remote_addr: Option<SocketAddr>,
    /// Present when the client presented a certificate that chains to our CA and names a node.
    pub peer: Option<PeerCertificate>,
}

/// The facts of a verified client certificate that the session needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    pub node_id: Uuid,
    pub serial_hex: String,
    pub not_after: DateTime<Utc>,
}

/// A server-side TLS stream that carries its [`AgentConnectInfo`] into tonic.
pub struct AgentTlsStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: AgentConnectInfo,
    /// Released when the connection closes.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl AgentTlsStream {
    fn new(
        inner: tokio_rustls::server::TlsStream<TcpStream>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Self {
        let (tcp, conn) = inner.get_ref();
        let peer = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(peer_certificate);
        let info = AgentConnectInfo {
            remote_addr: tcp.peer_addr().ok(),
            peer,
        };
        Self {
            inner,
            info,
            _permit: permit,
        }
    }
}

/// Node id (the one moltops URI SAN), serial and expiry of a client certificate.
pub fn peer_certificate(cert: &CertificateDer<'_>) -> Option<PeerCertificate> {
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
    let node_id = ids.next()?;
    if ids.next().is_some() {
        return None;
    }
    Some(PeerCertificate {
        node_id,
        serial_hex: hex::encode(parsed.raw_serial()),
        not_after: DateTime::from_timestamp(parsed.validity().not_after.timestamp(), 0)?,
    })
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
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection limit reached; closing new connection");
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            // Handshakes run concurrently so one slow client cannot stall the accept loop.
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(AgentTlsStream::new(tls, permit))).await;
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
    // Every stream is closed the moment the drain starts, by a task of its own: not from tonic's
    // shutdown signal, which tonic stops polling once `incoming` ends — and the accept loop above
    // ends `incoming` on this same cancellation, so whichever tonic saw first decided whether the
    // agents were told to go or the drain sat out its deadline with their streams open.
    let hub = state.hub.clone();
    let drain = shutdown.clone();
    tokio::spawn(async move {
        drain.cancelled().await;
        hub.close_all();
    });
    let signal = shutdown.cancelled_owned();
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .concurrency_limit_per_connection(8)
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
        let peer = request
            .extensions()
            .get::<AgentConnectInfo>()
            .and_then(|info| info.peer.clone())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "a client certificate issued by this control plane is required",
                )
            })?;
        crate::session::admit(&self.state, &peer).await?;
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let handle = SessionHandle {
            session_id: Uuid::now_v7(),
            outbound: tx,
            wake: Arc::new(Notify::new()),
            cancel: CancellationToken::new(),
        };
        self.state.hub.register(peer.node_id, handle.clone());
        let inbound = request.into_inner();
        let session = crate::session::Session::new(self.state.clone(), peer, handle);
        tokio::spawn(session.run(inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Logs an internal failure under an incident id and returns a status naming only that id.
pub fn internal(e: impl std::fmt::Display) -> Status {
    let incident = Uuid::new_v4();
    tracing::error!(%incident, error = %e, "agent call failed");
    Status::internal(format!("internal error (incident {incident})"))
}
