//! TLS to the control plane, and the tonic channel over it.
//!
//! Enrollment uses [`PinnedCaVerifier`]: the server must present, in its chain, a CA certificate
//! whose SHA-256 equals `--ca-pin`, and its leaf must verify against that CA for the server name.
//! Only then is the token sent — there is no trust on first use. After enrollment the agent
//! trusts exactly the CA it saved, and authenticates with its client certificate.

use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow, bail};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses `sha256:<64 hex>`.
pub fn parse_pin(pin: &str) -> anyhow::Result<[u8; 32]> {
    let hex_part = pin
        .strip_prefix("sha256:")
        .ok_or_else(|| anyhow!("--ca-pin must look like sha256:<64 hex digits>"))?;
    let bytes = hex::decode(hex_part).map_err(|_| anyhow!("--ca-pin is not hexadecimal"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow!("--ca-pin must have 64 hex digits"))
}

/// Accepts a server only if its chain contains the pinned CA and its leaf verifies against it.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// The CA that matched, for saving after enrollment.
    pub matched_ca: Mutex<Option<CertificateDer<'static>>>,
}

impl PinnedCaVerifier {
    pub fn new(pin: [u8; 32]) -> Self {
        Self {
            pin,
            provider: provider(),
            matched_ca: Mutex::new(None),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the control plane's CA does not match --ca-pin; refusing to send the token"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        if let Ok(mut slot) = self.matched_ca.lock() {
            *slot = Some(ca.clone().into_owned());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client config for enrollment: pinned CA, no client certificate.
pub fn enrollment_config(verifier: Arc<PinnedCaVerifier>) -> anyhow::Result<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Client config for the stream: trust only our CA, present our certificate.
pub fn mtls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("parsing ca.crt")?)?;
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing agent.crt")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("parsing agent.key")?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("agent.crt and agent.key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Splits `host:port` (or `[v6]:port`) into the TLS server name and the dial address.
pub fn server_name(server: &str) -> anyhow::Result<ServerName<'static>> {
    let host = match server.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => bail!("--server must be host:port, got {server:?}"),
    };
    ServerName::try_from(host.to_owned())
        .map_err(|_| anyhow!("{host:?} is not a valid server name"))
}

/// A gRPC channel to `server` over TLS with `config`. Connects eagerly, so errors (a refused
/// handshake, a wrong pin) surface here with their cause.
pub async fn channel(server: &str, config: rustls::ClientConfig) -> anyhow::Result<Channel> {
    let name = server_name(server)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let address = server.to_owned();
    // The scheme is http because TLS happens inside the connector, not in tonic.
    let endpoint = Endpoint::from_shared(format!("http://{server}"))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10));
    let make = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let name = name.clone();
        let address = address.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&address).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(make)
        .await
        .map_err(|e| anyhow!("connecting to {server}: {}", error_chain(&e)))
}

/// The full cause chain of an error, on one line (tonic hides the TLS reason otherwise).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_server_names_parse_strictly() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parse_pin(&pin).unwrap(), [0xab; 32]);
        assert!(parse_pin("ab").is_err());
        assert!(parse_pin("sha256:abcd").is_err());
        assert!(parse_pin(&format!("sha256:{}", "zz".repeat(32))).is_err());
        assert_eq!(server_name("localhost:7338").unwrap().to_str(), "localhost");
        assert_eq!(server_name("127.0.0.1:7338").unwrap().to_str(), "127.0.0.1");
        assert_eq!(server_name("[::1]:7338").unwrap().to_str(), "::1");
        assert!(server_name("localhost").is_err());
    }
}
