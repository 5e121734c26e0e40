//! Several replicas against one database: one CA, and a revocation made on one replica closes a
//! stream held by another.

use moltops_e2e::{
    Agent, Api, Server, ServerOptions, TestDatabase, create_api_token, enroll_agent, scratch,
};
use serde_json::json;

#[tokio::test]
async fn replicas_share_one_ca_and_revocation_reaches_the_replica_holding_the_stream() {
    let db = TestDatabase::create().await;
    let dir = scratch("replicas");
    // Both start at once against an empty database: migrations and CA creation race.
    // Heartbeats every 60 s: cross-replica delivery below can only be this fast through NOTIFY.
    let options = ServerOptions {
        heartbeat_seconds: 60,
        ..Default::default()
    };
    let key_dir = dir.join("server");
    std::fs::create_dir_all(&key_dir).unwrap();
    let (a, b) = tokio::join!(
        Server::start(&db.url, &key_dir, &options),
        Server::start(&db.url, &key_dir, &options)
    );
    assert_eq!(a.ca_pin, b.ca_pin, "replicas must agree on one CA");

    let token = create_api_token(&db.url, "admin");
    let api_a = Api::new(&a, &token);
    let api_b = Api::new(&b, &token);
    let (_, secret) = api_a.enrollment_token(json!({})).await;
    let state = dir.join("agent");
    let out = enroll_agent(&a.agent_address(), &secret, &a.ca_pin, &state);
    assert!(out.success, "{}", out.stderr);
    let node_id = out.node_id();
    let mut agent = Agent::start(&state); // Streams to replica A.
    api_b.wait_status(&node_id, "online").await;
    let started = std::time::Instant::now();
    api_b.ping(&node_id).await; // Queued on B, delivered by A.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let started = std::time::Instant::now();
    let (status, _) = api_b
        .confirmed(
            reqwest::Method::POST,
            &format!("/v1/nodes/{node_id}/revoke"),
            Some(json!({ "reason": "replica test" })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        agent.wait_exit().code(),
        Some(3),
        "agent log:\n{}",
        agent.log_text()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop((a, b));
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(&dir);
}
