//! Rules of the stream seen from a hand-driven client: renewal is refused while the certificate is
//! young, a stream ends when its certificate expires, and a certificate superseded by a confirmed
//! renewal cannot open a stream.

use std::time::Duration;

use moltops_agent::tls::{channel, mtls_config};
use moltops_e2e::{Agent, Fixture, ServerOptions, wait_for};
use moltops_proto::agent::agent_message::Body;
use moltops_proto::agent::agent_service_client::AgentServiceClient;
use moltops_proto::agent::{
    AgentMessage, EnrollRequest, Heartbeat, Hello, HostFacts, RenewRequest,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::anonymous_client;

/// Enrolls through gRPC directly; returns (node id, certificate PEM, key PEM, CA PEM).
async fn enroll_by_hand(fx: &Fixture) -> (String, String, String, String) {
    let (_, token) = fx.api.enrollment_token(json!({})).await;
    let (key_pem, csr_der) = moltops_agent::enroll::new_key_and_csr("by-hand").unwrap();
    let response = anonymous_client(fx.server())
        .await
        .enroll(EnrollRequest {
            token,
            csr_der,
            facts: Some(HostFacts::default()),
            agent_version: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    (
        response.node_id,
        response.certificate_pem,
        key_pem,
        response.ca_certificate_pem,
    )
}

fn message(body: Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

async fn open(
    fx: &Fixture,
    ca: &str,
    cert: &str,
    key: &str,
) -> Result<
    (
        mpsc::Sender<AgentMessage>,
        tonic::Streaming<moltops_proto::agent::ServerMessage>,
    ),
    tonic::Status,
> {
    let config = mtls_config(ca, cert, key).unwrap();
    let mut client =
        AgentServiceClient::new(channel(&fx.server().agent_address(), config).await.unwrap());
    let (tx, rx) = mpsc::channel(8);
    tx.send(message(Body::Hello(Hello {
        agent_version: "test".into(),
        facts: None,
    })))
    .await
    .unwrap();
    let inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

/// Reads server messages until the stream fails; returns that status.
async fn until_error(
    inbound: &mut tonic::Streaming<moltops_proto::agent::ServerMessage>,
) -> tonic::Status {
    loop {
        match tokio::time::timeout(moltops_e2e::DEADLINE, inbound.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("stream ended without a status"),
            Ok(Err(status)) => return status,
            Err(_) => panic!("stream did not end within {:?}", moltops_e2e::DEADLINE),
        }
    }
}

#[tokio::test]
async fn renewal_is_refused_while_more_than_half_the_life_is_left() {
    let fx = Fixture::start(ServerOptions {
        heartbeat_seconds: 60,
        ..Default::default()
    })
    .await;
    let (_, cert, key, ca) = enroll_by_hand(&fx).await;
    let (tx, mut inbound) = open(&fx, &ca, &cert, &key).await.unwrap();
    let (_, csr_der) = moltops_agent::enroll::new_key_and_csr("early").unwrap();
    tx.send(message(Body::RenewRequest(RenewRequest { csr_der })))
        .await
        .unwrap();
    let status = until_error(&mut inbound).await;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    fx.finish().await;
}

#[tokio::test]
async fn a_stream_ends_when_its_certificate_expires_without_renewal() {
    let fx = Fixture::start(ServerOptions {
        heartbeat_seconds: 1,
        agent_certificate_ttl_seconds: 3,
        ..Default::default()
    })
    .await;
    let (_, cert, key, ca) = enroll_by_hand(&fx).await;
    let (tx, mut inbound) = open(&fx, &ca, &cert, &key).await.unwrap();
    // Keep heartbeating so that only the expiry can end the stream.
    let beats = tokio::spawn(async move {
        let mut sequence = 0;
        while tx
            .send(message(Body::Heartbeat(Heartbeat {
                sequence,
                metrics: None,
                gateway: None,
            })))
            .await
            .is_ok()
        {
            sequence += 1;
            tokio::time::sleep(Duration::from_millis(300)).await; // Pacing, not synchronisation.
        }
    });
    let status = until_error(&mut inbound).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    beats.abort();
    fx.finish().await;
}

#[tokio::test]
async fn a_certificate_superseded_by_a_confirmed_renewal_is_refused() {
    let lifetime = 12;
    let fx = Fixture::start(ServerOptions {
        agent_certificate_ttl_seconds: lifetime,
        ..Default::default()
    })
    .await;
    let (node_id, state) = fx.enroll("agent", json!({})).await;
    let old_cert = std::fs::read_to_string(state.join("agent.crt")).unwrap();
    let old_key = std::fs::read_to_string(state.join("agent.key")).unwrap();
    let ca = std::fs::read_to_string(state.join("ca.crt")).unwrap();
    let _agent = Agent::start(&state);
    fx.api.wait_status(&node_id, "online").await;

    // Renewal happens at two thirds of the life; the agent confirms it with RenewComplete.
    let url = fx.db.as_ref().unwrap().url.clone();
    wait_for("a confirmed renewal", || {
        let url = url.clone();
        let node_id = node_id.clone();
        async move {
            let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.ok()?;
            let (renewals, previous): (i64, Option<String>) = sqlx::query_as(
                "select (select count(*) from audit_events where action = 'node.certificate_renew' and target_id = $1),
                        (select previous_certificate_serial from nodes where id = $1::uuid)",
            )
            .bind(&node_id)
            .fetch_one(&mut db)
            .await
            .ok()?;
            (renewals >= 1 && previous.is_none()).then_some(())
        }
    })
    .await;

    // The old certificate has not expired yet, so only the supersession can refuse it.
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(old_cert.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c)
        .unwrap();
    let (_, parsed) =
        <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<_>>::from_der(
            &der,
        )
        .unwrap();
    assert!(
        parsed.validity().not_after.timestamp() > chrono::Utc::now().timestamp() + 1,
        "inconclusive: the old certificate expired before the check (machine too slow for a {lifetime} s lifetime)"
    );
    let status = match open(&fx, &ca, &old_cert, &old_key).await {
        Ok(_) => panic!("the superseded certificate opened a stream"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("superseded"), "{status:?}");
    fx.api.ping(&node_id).await;
    fx.finish().await;
}
