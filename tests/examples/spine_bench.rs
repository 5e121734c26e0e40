//! Measures the spine's figures on this machine and prints them as Markdown:
//! enrollment latency (in-process gRPC `Enroll`, and the whole `moltops-agent enroll` command),
//! and the idle resident memory of a connected agent and of the control plane.
//!
//! Run with `scripts/bench` (which builds release binaries and writes docs/benchmarks.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use moltops_agent::tls::{PinnedCaVerifier, channel, enrollment_config, parse_pin};
use moltops_e2e::{Agent, Fixture, ServerOptions, enroll_agent};
use moltops_proto::agent::agent_service_client::AgentServiceClient;
use moltops_proto::agent::{EnrollRequest, HostFacts};
use serde_json::json;

const GRPC_ENROLLMENTS: usize = 200;
const CLI_ENROLLMENTS: usize = 20;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
        .unwrap()
}

fn summary(name: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    format!(
        "| {name} | {} | {} | {} | {} |",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.95)),
        ms(*samples.last().unwrap())
    )
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fx = Fixture::start(ServerOptions {
        heartbeat_seconds: 15,
        ..Default::default()
    })
    .await;
    let server = fx.server();

    // In-process: one TLS connection, many Enroll calls (server-side cost: token lookup, CSR
    // verification, signing, one transaction).
    let verifier = Arc::new(PinnedCaVerifier::new(parse_pin(&server.ca_pin).unwrap()));
    let mut client = AgentServiceClient::new(
        channel(
            &server.agent_address(),
            enrollment_config(verifier).unwrap(),
        )
        .await
        .unwrap(),
    );
    let mut grpc = Vec::new();
    for i in 0..GRPC_ENROLLMENTS {
        let (_, token) = fx.api.enrollment_token(json!({})).await;
        let (_, csr_der) = moltops_agent::enroll::new_key_and_csr(&format!("bench-{i}")).unwrap();
        let started = Instant::now();
        client
            .enroll(EnrollRequest {
                token,
                csr_der,
                facts: Some(HostFacts {
                    hostname: format!("bench-{i}"),
                    ..Default::default()
                }),
                agent_version: "bench".into(),
            })
            .await
            .unwrap();
        grpc.push(started.elapsed());
    }

    // The whole command an operator runs: process start, key generation, pinned TLS, enroll, writes.
    let mut cli = Vec::new();
    for i in 0..CLI_ENROLLMENTS {
        let (_, token) = fx.api.enrollment_token(json!({})).await;
        let state = fx.dir.join(format!("cli-{i}"));
        let started = Instant::now();
        let out = enroll_agent(&server.agent_address(), &token, &server.ca_pin, &state);
        cli.push(started.elapsed());
        assert!(out.success, "{}", out.stderr);
    }

    // Idle memory: one connected agent, sampled after it has settled.
    let (node_id, state) = fx.enroll("idle", json!({})).await;
    let agent = Agent::start(&state);
    fx.api.wait_status(&node_id, "online").await;
    fx.api.ping(&node_id).await;
    let mut agent_rss = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await; // Sampling interval, not synchronisation.
        agent_rss = agent_rss.max(rss_kib(agent.pid()));
    }
    let server_pid = server.pid();
    let server_rss = rss_kib(server_pid);

    println!("| Measurement | n | p50 | p95 | max |");
    println!("|---|---|---|---|---|");
    println!(
        "{}",
        summary(
            "gRPC `Enroll` round trip (token check, CSR verify, sign, commit)",
            grpc
        )
    );
    println!(
        "{}",
        summary(
            "`moltops-agent enroll` end to end (process, keygen, pinned TLS, files)",
            cli
        )
    );
    println!();
    println!("| Idle resident memory | RSS |");
    println!("|---|---|");
    println!(
        "| `moltops-agent run`, connected, 1 node | {:.1} MiB |",
        agent_rss as f64 / 1024.0
    );
    println!(
        "| `moltops-server serve` after {} enrollments, 1 stream | {:.1} MiB |",
        GRPC_ENROLLMENTS + CLI_ENROLLMENTS + 1,
        server_rss as f64 / 1024.0
    );
    drop(agent);
    fx.finish().await;
}
