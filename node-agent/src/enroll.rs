//! `moltops-agent enroll`: generate a key on this host, prove the control plane holds the pinned
//! CA, then trade the one-time token and a CSR for a client certificate.

use std::sync::Arc;

use anyhow::{Context, bail};
use moltops_proto::agent::EnrollRequest;
use moltops_proto::agent::agent_service_client::AgentServiceClient;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use sha2::{Digest, Sha256};

use crate::state::{CA_FILE, CERT_FILE, KEY_FILE, NodeRecord, StateDir};
use crate::tls::{PinnedCaVerifier, channel, enrollment_config, parse_pin};

/// What `enroll` needs. `Debug` leaves the token out.
#[derive(Clone)]
pub struct EnrollOptions {
    pub server: String,
    pub token: String,
    pub ca_pin: String,
}

impl std::fmt::Debug for EnrollOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollOptions")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("ca_pin", &self.ca_pin)
            .finish()
    }
}

/// A fresh P-256 key and a CSR for it (PEM key, DER CSR). The CSR carries only a common name:
/// the control plane decides the identity.
pub fn new_key_and_csr(common_name: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

pub async fn enroll(state: &StateDir, options: &EnrollOptions) -> anyhow::Result<NodeRecord> {
    if state.is_enrolled() {
        bail!(
            "{} already holds an enrollment; use another --state-dir or remove it to enroll again",
            state.root().display()
        );
    }
    let pin = parse_pin(&options.ca_pin)?;
    let facts = crate::facts::collect(state.root());

    // The key is written (0600) before anything leaves the host, and never leaves it.
    let (key_pem, csr_der) = new_key_and_csr(&facts.hostname)?;
    state.write_atomic(KEY_FILE, key_pem.as_bytes(), 0o600)?;

    let verifier = Arc::new(PinnedCaVerifier::new(pin));
    let config = enrollment_config(verifier.clone())?;
    let channel = channel(&options.server, config).await?;
    let mut client = AgentServiceClient::new(channel);
    let response = client
        .enroll(EnrollRequest {
            token: options.token.clone(),
            csr_der,
            facts: Some(facts),
            agent_version: crate::VERSION.to_owned(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("enrollment refused: {}", status.message()))?
        .into_inner();

    // The CA the server returns must be the one we pinned.
    let ca_der =
        rustls::pki_types::pem::PemObject::from_pem_slice(response.ca_certificate_pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c)
            .context("the control plane returned an unreadable CA certificate")?;
    if Sha256::digest(ca_der.as_ref()).as_slice() != pin {
        bail!("the CA certificate returned by the control plane does not match --ca-pin");
    }
    let node_id = uuid::Uuid::parse_str(&response.node_id)
        .context("the control plane returned a bad node id")?;
    state.write_atomic(CA_FILE, response.ca_certificate_pem.as_bytes(), 0o644)?;
    state.write_atomic(CERT_FILE, response.certificate_pem.as_bytes(), 0o644)?;
    let record = NodeRecord {
        node_id,
        server: options.server.clone(),
        ca_pin: options.ca_pin.clone(),
    };
    // node.json last: its presence means "enrolled".
    state.save_node(&record)?;
    Ok(record)
}
