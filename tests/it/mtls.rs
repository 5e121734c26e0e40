//! The stream accepts only clients with a certificate issued by this control plane.

use moltops_agent::tls::{channel, mtls_config};
use moltops_e2e::{Fixture, ServerOptions};
use moltops_proto::agent::agent_message::Body;
use moltops_proto::agent::agent_service_client::AgentServiceClient;
use moltops_proto::agent::{AgentMessage, Hello};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use serde_json::json;

use crate::anonymous_client;

fn hello() -> impl tokio_stream::Stream<Item = AgentMessage> {
    tokio_stream::iter(vec![AgentMessage {
        body: Some(Body::Hello(Hello {
            agent_version: "test".into(),
            facts: None,
        })),
    }])
}

#[tokio::test]
async fn a_client_without_a_certificate_cannot_connect() {
    let fx = Fixture::start(ServerOptions::default()).await;
    let mut client = anonymous_client(fx.server()).await;
    let status = client.connect(hello()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    fx.finish().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_even_with_a_real_node_id() {
    let fx = Fixture::start(ServerOptions::default()).await;
    let (node_id, _) = fx.enroll("victim", json!({})).await;

    // An attacker's CA issues a certificate claiming the victim's identity.
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "moltops fleet CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let uri = moltops_proto::identity::node_uri(node_id.parse().unwrap());
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let forged = params.signed_by(&key, &issuer).unwrap();
    let _ = ca_cert;

    let (_, ca) = fx.api.get("/v1/ca").await;
    let config = mtls_config(
        ca["certificate_pem"].as_str().unwrap(),
        &forged.pem(),
        &key.serialize_pem(),
    )
    .unwrap();
    // Under TLS 1.3 the client may see the refusal at connect time or only as a closed
    // connection on the first request; the server's log says why.
    let opened = match channel(&fx.server().agent_address(), config).await {
        Err(_) => false,
        Ok(ch) => AgentServiceClient::new(ch).connect(hello()).await.is_ok(),
    };
    assert!(!opened, "a certificate from a foreign CA opened a stream");
    moltops_e2e::wait_for("the server to log why it refused the handshake", || async {
        let log = fx.server().log_text();
        (log.contains("TLS handshake refused") && log.contains("UnknownIssuer")).then_some(())
    })
    .await;
    let node = fx.api.node(&node_id).await;
    assert_eq!(
        node["last_seen"],
        serde_json::Value::Null,
        "the forged client must never have been seen"
    );
    fx.finish().await;
}
