//! Enrollment: the happy path, and every way a token or CSR can be wrong.

use moltops_e2e::{Agent, Fixture, ServerOptions, enroll_agent};
use moltops_proto::agent::{EnrollRequest, HostFacts};
use serde_json::json;

use crate::anonymous_client;

#[tokio::test]
async fn token_to_online_node_with_labels_system_info_and_pong() {
    let fx = Fixture::start(ServerOptions::default()).await;
    let (node_id, state) = fx
        .enroll("agent", json!({ "env": "staging", "role": "gateway" }))
        .await;
    // The key never left the host, and is private.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.join("agent.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let mut agent = Agent::start(&state);
    let node = fx.api.wait_status(&node_id, "online").await;
    assert_eq!(
        node["labels"],
        json!({ "env": "staging", "role": "gateway" })
    );
    assert_eq!(node["agent_version"], env!("CARGO_PKG_VERSION"));

    let (status, list) = fx
        .api
        .get("/v1/nodes?selector=env%3Dstaging&status=online")
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], node_id.as_str());
    let (_, none) = fx.api.get("/v1/nodes?selector=env%3Dprod").await;
    assert_eq!(none["items"], json!([]));

    let (status, info) = fx
        .api
        .get(&format!("/v1/nodes/{node_id}/system/info"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(info["os"], std::env::consts::OS);
    assert_eq!(info["arch"], std::env::consts::ARCH);
    assert!(info["cpu_cores"].as_i64().unwrap() >= 1);
    assert!(info["memory_bytes"].as_i64().unwrap() > 0);
    assert!(!info["hostname"].as_str().unwrap().is_empty());

    let pong = fx.api.ping(&node_id).await;
    assert_eq!(
        pong["result"]["pong"]["agent_version"],
        env!("CARGO_PKG_VERSION")
    );
    // The agent's result is in the audit log, from the agent, authenticated by its certificate,
    // and found through the audit API.
    let (status, page) = fx
        .api
        .get(&format!(
            "/v1/audit?action=command.result&target_id={}",
            pong["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    let row = &page["items"][0];
    assert_eq!(row["actor_kind"], "agent");
    assert_eq!(row["actor_id"], node_id.as_str());
    assert_eq!(row["auth_method"], "mtls");
    let (_, verified) = fx.api.get("/v1/audit/verify").await;
    assert_eq!(verified["ok"], true, "{verified}");

    // The agent reports this host's real figures with its heartbeats.
    let metrics = moltops_e2e::wait_for("the node's first metrics", || async {
        let (status, m) = fx
            .api
            .get(&format!("/v1/nodes/{node_id}/metrics/current"))
            .await;
        (status == 200).then_some(m)
    })
    .await;
    let total = metrics["memory_total_bytes"].as_i64().unwrap();
    assert!(
        total > 0 && metrics["memory_used_bytes"].as_i64().unwrap() <= total,
        "{metrics}"
    );
    let mem = metrics["mem_percent"].as_f64().unwrap();
    assert!(mem > 0.0 && mem <= 100.0, "{metrics}");
    let cpu = metrics["cpu_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&cpu), "{metrics}");
    assert!(
        metrics["disk_free_bytes"].as_i64().unwrap() > 0,
        "{metrics}"
    );
    assert!(metrics["uptime_seconds"].as_i64().unwrap() > 0, "{metrics}");
    assert_eq!(metrics["restart_count_24h"], 0, "no gateway is managed yet");
    assert!(metrics["age_seconds"].as_i64().unwrap() < 30, "{metrics}");
    let (_, summary) = fx.api.get("/v1/fleet/summary").await;
    assert_eq!(summary["total"], 1, "{summary}");
    assert_eq!(summary["online"], 1, "{summary}");
    assert_eq!(
        summary["agent_versions"][env!("CARGO_PKG_VERSION")],
        1,
        "{summary}"
    );

    // SIGTERM: a clean exit, and the control plane sees the stream end at once.
    let status = agent.stop();
    assert!(status.success(), "agent exited with {status}");
    fx.api.wait_status(&node_id, "offline").await;
    fx.finish().await;
}

#[tokio::test]
async fn reused_expired_and_revoked_tokens_and_a_wrong_pin_are_refused() {
    let fx = Fixture::start(ServerOptions::default()).await;
    let server = fx.server();

    // Reuse of a single-use token.
    let (_, token) = fx.api.enrollment_token(json!({})).await;
    assert!(
        enroll_agent(
            &server.agent_address(),
            &token,
            &server.ca_pin,
            &fx.dir.join("a1")
        )
        .success
    );
    let again = enroll_agent(
        &server.agent_address(),
        &token,
        &server.ca_pin,
        &fx.dir.join("a2"),
    );
    assert!(!again.success);
    assert!(
        again.stderr.contains("already been used"),
        "{}",
        again.stderr
    );

    // Expiry: move the token's expiry into the past (time is data here, not a sleep).
    let (expired_id, expired) = fx.api.enrollment_token(json!({ "ttl_seconds": 60 })).await;
    let mut db = fx.db.as_ref().unwrap().connect().await;
    sqlx::query(
        "update enrollment_tokens set expires_at = now() - interval '1 second' where id = $1::uuid",
    )
    .bind(&expired_id)
    .execute(&mut db)
    .await
    .unwrap();
    let out = enroll_agent(
        &server.agent_address(),
        &expired,
        &server.ca_pin,
        &fx.dir.join("a3"),
    );
    assert!(
        !out.success && out.stderr.contains("expired"),
        "{}",
        out.stderr
    );

    // Revocation.
    let (revoked_id, revoked) = fx.api.enrollment_token(json!({})).await;
    let (status, _) = fx
        .api
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/enrollment-tokens/{revoked_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let out = enroll_agent(
        &server.agent_address(),
        &revoked,
        &server.ca_pin,
        &fx.dir.join("a4"),
    );
    assert!(
        !out.success && out.stderr.contains("revoked"),
        "{}",
        out.stderr
    );

    // A wrong pin: the agent refuses the server before sending the token, so it stays unused.
    let (wrong_pin_id, fresh) = fx.api.enrollment_token(json!({})).await;
    let wrong_pin = format!("sha256:{}", "00".repeat(32));
    let out = enroll_agent(
        &server.agent_address(),
        &fresh,
        &wrong_pin,
        &fx.dir.join("a5"),
    );
    assert!(
        !out.success && out.stderr.contains("does not match --ca-pin"),
        "{}",
        out.stderr
    );
    let (_, tokens) = fx.api.get("/v1/enrollment-tokens").await;
    let listed = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == wrong_pin_id.as_str())
        .unwrap();
    assert_eq!(listed["uses"], 0);
    assert_eq!(listed["state"], "active");
    // The listing never carries a secret.
    assert!(!tokens.to_string().contains("moe_"));

    // An unknown token.
    let out = enroll_agent(
        &server.agent_address(),
        "moe_not-a-real-token",
        &server.ca_pin,
        &fx.dir.join("a6"),
    );
    assert!(
        !out.success && out.stderr.contains("unknown enrollment token"),
        "{}",
        out.stderr
    );
    fx.finish().await;
}

#[tokio::test]
async fn garbage_and_oversized_csrs_are_refused_without_using_the_token() {
    let fx = Fixture::start(ServerOptions::default()).await;
    let (token_id, token) = fx.api.enrollment_token(json!({})).await;
    let mut client = anonymous_client(fx.server()).await;
    let request = |csr_der: Vec<u8>| EnrollRequest {
        token: token.clone(),
        csr_der,
        facts: Some(HostFacts::default()),
        agent_version: "test".into(),
    };
    let garbage = client
        .enroll(request(b"definitely not DER".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage:?}");
    let oversized = client
        .enroll(request(vec![0x30; 9 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(oversized.code(), tonic::Code::InvalidArgument);
    assert!(oversized.message().contains("larger than"), "{oversized:?}");
    // A message far over the gRPC limit never reaches the handler.
    let huge = client
        .enroll(request(vec![0x30; 1024 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(huge.code(), tonic::Code::OutOfRange, "{huge:?}");

    let (_, tokens) = fx.api.get("/v1/enrollment-tokens").await;
    let listed = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == token_id.as_str())
        .unwrap();
    assert_eq!(
        listed["uses"], 0,
        "a refused CSR must not consume the token"
    );
    fx.finish().await;
}

#[tokio::test]
async fn concurrent_redemptions_of_a_single_use_token_give_exactly_one_node() {
    let fx = Fixture::start(ServerOptions::default()).await;
    let (_, token) = fx.api.enrollment_token(json!({ "max_uses": 1 })).await;
    let client = anonymous_client(fx.server()).await;
    let attempts = 16;
    let mut tasks = Vec::new();
    for i in 0..attempts {
        let mut client = client.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let (_, csr_der) =
                moltops_agent::enroll::new_key_and_csr(&format!("racer-{i}")).unwrap();
            client
                .enroll(EnrollRequest {
                    token,
                    csr_der,
                    facts: Some(HostFacts {
                        hostname: format!("racer-{i}"),
                        ..Default::default()
                    }),
                    agent_version: "test".into(),
                })
                .await
        }));
    }
    let mut successes = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => successes += 1,
            Err(status) => assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}"),
        }
    }
    assert_eq!(successes, 1);
    let (_, nodes) = fx.api.get("/v1/nodes").await;
    assert_eq!(nodes["items"].as_array().unwrap().len(), 1);
    fx.finish().await;
}

#[tokio::test]
async fn the_token_can_come_from_a_file_or_standard_input_instead_of_the_command_line() {
    use std::io::Write;
    let fx = Fixture::start(ServerOptions::default()).await;
    let server = fx.server();
    let agent = moltops_e2e::binary("moltops-agent");

    let (_, from_file) = fx.api.enrollment_token(json!({})).await;
    let token_file = fx.dir.join("token");
    std::fs::write(&token_file, format!("\n{from_file}\n")).unwrap();
    let out = std::process::Command::new(&agent)
        .args([
            "enroll",
            "--server",
            &server.agent_address(),
            "--ca-pin",
            &server.ca_pin,
            "--token-file",
        ])
        .arg(&token_file)
        .arg("--state-dir")
        .arg(fx.dir.join("f"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (_, from_stdin) = fx.api.enrollment_token(json!({})).await;
    let mut child = std::process::Command::new(&agent)
        .args([
            "enroll",
            "--server",
            &server.agent_address(),
            "--ca-pin",
            &server.ca_pin,
            "--token-file",
            "-",
        ])
        .arg("--state-dir")
        .arg(fx.dir.join("s"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{from_stdin}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (_, nodes) = fx.api.get("/v1/nodes").await;
    assert_eq!(nodes["items"].as_array().unwrap().len(), 2);
    fx.finish().await;
}
