//! Revocation, liveness, reconnection after a control-plane restart, and certificate renewal.

use moltops_e2e::{Agent, Fixture, ServerOptions, wait_for};
use serde_json::json;
use sqlx::Row;

#[tokio::test]
async fn revoke_closes_the_stream_and_the_certificate_is_refused_afterwards() {
    // Heartbeats every 60 s: the stream can only close this fast through the notification.
    let fx = Fixture::start(ServerOptions {
        heartbeat_seconds: 60,
        ..Default::default()
    })
    .await;
    let (node_id, state) = fx.enroll("agent", json!({})).await;
    let mut agent = Agent::start(&state);
    fx.api.wait_status(&node_id, "online").await;

    let revoked_at = std::time::Instant::now();
    let (status, node) = fx
        .api
        .confirmed(
            reqwest::Method::POST,
            &format!("/v1/nodes/{node_id}/revoke"),
            Some(json!({ "reason": "host decommissioned" })),
        )
        .await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["status"], "revoked");
    let exit = agent.wait_exit();
    assert_eq!(exit.code(), Some(3), "agent log:\n{}", agent.log_text());
    assert!(
        revoked_at.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        revoked_at.elapsed()
    );

    // A later connect with the same certificate is refused the same way.
    let mut again = Agent::start(&state);
    assert_eq!(
        again.wait_exit().code(),
        Some(3),
        "agent log:\n{}",
        again.log_text()
    );

    // Revocation is audited with its reason; commands to a revoked node are refused.
    let mut db = fx.db.as_ref().unwrap().connect().await;
    let row = sqlx::query("select reason, actor_kind from audit_events where action = 'node.revoke' and target_id = $1")
        .bind(&node_id)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("reason"), "host decommissioned");
    assert_eq!(row.get::<String, _>("actor_kind"), "api_token");
    let (status, _) = fx
        .api
        .post(&format!("/v1/nodes/{node_id}/ping"), json!(null))
        .await;
    assert_eq!(status, 409);
    fx.finish().await;
}

#[tokio::test]
async fn a_killed_agent_goes_offline_at_once_and_a_hung_one_within_the_heartbeat_window() {
    let fx = Fixture::start(ServerOptions {
        heartbeat_seconds: 1,
        ..Default::default()
    })
    .await;
    let (node_id, state) = fx.enroll("agent", json!({})).await;

    // Killed: the connection closes, the stream ends, the node is offline.
    let mut agent = Agent::start(&state);
    fx.api.wait_status(&node_id, "online").await;
    agent.kill();
    fx.api.wait_status(&node_id, "offline").await;

    // Hung: the connection stays open but heartbeats stop; the liveness window (3 × 1 s) decides.
    let agent = Agent::start(&state);
    fx.api.wait_status(&node_id, "online").await;
    agent.freeze(true);
    let frozen_at = std::time::Instant::now();
    fx.api.wait_status(&node_id, "offline").await;
    let took = frozen_at.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(2),
        "offline before the window passed: {took:?}"
    );
    let (_, offline) = fx.api.get("/v1/nodes?status=offline").await;
    assert_eq!(offline["items"][0]["id"], node_id.as_str());

    // Thawed, it notices the closed stream and comes back by itself.
    agent.freeze(false);
    fx.api.wait_status(&node_id, "online").await;
    fx.api.ping(&node_id).await;
    fx.finish().await;
}

/// A command sent on a stream that dies before its result arrives is delivered again on the
/// node's next stream (the agent's journal keeps it from running twice).
#[tokio::test]
async fn a_command_in_flight_on_a_dead_stream_is_delivered_again() {
    let fx = Fixture::start(ServerOptions {
        heartbeat_seconds: 60,
        ..Default::default()
    })
    .await;
    let (node_id, state) = fx.enroll("agent", json!({})).await;
    let mut agent = Agent::start(&state);
    fx.api.wait_status(&node_id, "online").await;
    agent.freeze(true);
    let (status, command) = fx
        .api
        .post(&format!("/v1/nodes/{node_id}/ping"), json!(null))
        .await;
    assert_eq!(status, 202);
    let path = format!(
        "/v1/nodes/{node_id}/commands/{}",
        command["id"].as_str().unwrap()
    );
    wait_for("the command to be sent", || async {
        let (_, c) = fx.api.get(&path).await;
        (c["status"] == "dispatched").then_some(())
    })
    .await;
    agent.kill();
    // Until the node is back, it stays dispatched: nobody knows whether it ran.
    let (_, c) = fx.api.get(&path).await;
    assert_eq!(c["status"], "dispatched");
    let _agent = Agent::start(&state);
    let done = wait_for("the command to be delivered again and answered", || async {
        let (_, c) = fx.api.get(&path).await;
        (c["status"] == "succeeded").then_some(c)
    })
    .await;
    assert!(done["result"]["pong"].is_object(), "{done}");
    fx.finish().await;
}

#[tokio::test]
async fn the_agent_reconnects_by_itself_after_a_control_plane_restart() {
    let mut fx = Fixture::start(ServerOptions::default()).await;
    let (node_id, state) = fx.enroll("agent", json!({})).await;
    let mut agent = Agent::start(&state);
    fx.api.wait_status(&node_id, "online").await;

    fx.restart_server().await;
    let restarted_at = chrono::Utc::now();
    let node = wait_for("the agent to say hello to the new server", || async {
        let node = fx.api.node(&node_id).await;
        let seen = node["last_seen"]
            .as_str()
            .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok());
        (node["status"] == "online" && seen.is_some_and(|t| t > restarted_at)).then_some(node)
    })
    .await;
    assert_eq!(node["status"], "online");
    fx.api.ping(&node_id).await;
    assert!(agent.is_running());
    fx.finish().await;
}

#[tokio::test]
async fn the_agent_renews_its_certificate_and_stays_on_the_same_stream_across_several_lifetimes() {
    let lifetime = 4;
    let fx = Fixture::start(ServerOptions {
        agent_certificate_ttl_seconds: lifetime,
        ..Default::default()
    })
    .await;
    let (node_id, state) = fx.enroll("agent", json!({})).await;
    let first_cert = std::fs::read_to_string(state.join("agent.crt")).unwrap();
    let mut agent = Agent::start(&state);
    fx.api.wait_status(&node_id, "online").await;
    let mut db = fx.db.as_ref().unwrap().connect().await;
    let session = |row: sqlx::postgres::PgRow| row.get::<Option<uuid::Uuid>, _>("session_id");
    let first_session = session(
        sqlx::query("select session_id from nodes where id = $1::uuid")
            .bind(&node_id)
            .fetch_one(&mut db)
            .await
            .unwrap(),
    );
    assert!(first_session.is_some());

    // Four renewals cover more than three lifetimes of the first certificate.
    let started = std::time::Instant::now();
    wait_for("four certificate renewals", || {
        let url = fx.db.as_ref().unwrap().url.clone();
        let node_id = node_id.clone();
        async move {
            let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.ok()?;
            let n: i64 = sqlx::query_scalar(
                "select count(*) from audit_events where action = 'node.certificate_renew' and target_id = $1",
            )
            .bind(&node_id)
            .fetch_one(&mut db)
            .await
            .ok()?;
            (n >= 4).then_some(())
        }
    })
    .await;
    assert!(
        started.elapsed() > std::time::Duration::from_secs(lifetime * 2),
        "renewals came too fast"
    );
    assert!(agent.is_running(), "agent log:\n{}", agent.log_text());
    let node = fx.api.wait_status(&node_id, "online").await;
    let same_session = session(
        sqlx::query("select session_id from nodes where id = $1::uuid")
            .bind(&node_id)
            .fetch_one(&mut db)
            .await
            .unwrap(),
    );
    assert_eq!(
        first_session, same_session,
        "renewal must not drop the stream"
    );
    assert_ne!(
        std::fs::read_to_string(state.join("agent.crt")).unwrap(),
        first_cert
    );
    let not_after: chrono::DateTime<chrono::Utc> = node["certificate_not_after"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        not_after > chrono::Utc::now(),
        "the registry shows the renewed certificate"
    );
    fx.api.ping(&node_id).await;
    fx.finish().await;
}
