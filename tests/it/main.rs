//! End-to-end tests: real binaries, real TLS, real Postgres, over loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// These tests drive real processes in real time, so they read the wall clock.
#![allow(clippy::disallowed_methods)]

mod audit;
mod cli;
mod drain;
mod enrollment;
mod gateway;
mod https;
mod jobs;
mod lifecycle;
mod mtls;
mod pairing;
mod replicas;
mod sso;
mod stream_rules;
mod web_ui;

use std::sync::Arc;

use moltops_agent::tls::{PinnedCaVerifier, channel, enrollment_config, parse_pin};
use moltops_proto::agent::agent_service_client::AgentServiceClient;
use tonic::transport::Channel;

/// A gRPC client that verifies the server against the pin, without a client certificate
/// (what an enrolling agent uses).
pub async fn anonymous_client(server: &moltops_e2e::Server) -> AgentServiceClient<Channel> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let verifier = Arc::new(PinnedCaVerifier::new(parse_pin(&server.ca_pin).unwrap()));
    let config = enrollment_config(verifier).unwrap();
    AgentServiceClient::new(channel(&server.agent_address(), config).await.unwrap())
}
