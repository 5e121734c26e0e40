//! A bare host with only the agent on it, taken to a running, verified gateway from the API:
//! install (npm, through the governed egress path, into a versioned prefix), status, restart,
//! stop and start — each verified on the host, each audited. The gateway here is the scenario
//! gateway (same install path, same health endpoints); real OpenClaw is [P4]'s golden-path test.

use moltops_e2e::{Agent, Fixture, ServerOptions, free_port, pack_scenario_gateway, wait_for};
use reqwest::Method;
use serde_json::{Value, json};

async fn job(fx: &Fixture, job_id: &str) -> Value {
    wait_for("the job to finish", || async {
        let (_, job) = fx.api.get(&format!("/v1/jobs/{job_id}")).await;
        matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled" | "expired")
        )
        .then_some(job)
    })
    .await
}

async fn action(fx: &Fixture, node: &str, action: &str) -> Value {
    let (status, accepted) = fx
        .api
        .confirmed(
            Method::POST,
            &format!("/v1/nodes/{node}/ops/action"),
            Some(json!({ "action": action, "reason": "e2e", "params": { "verify_timeout_seconds": 30 } })),
        )
        .await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["ok"], true);
    job(fx, accepted["job_id"].as_str().unwrap()).await
}

#[tokio::test]
async fn an_agent_installs_runs_restarts_and_stops_its_gateway_with_every_step_verified() {
    let fx = Fixture::start(ServerOptions::default()).await;
    let tarball = pack_scenario_gateway(&fx.dir.join("pack"));
    let (node, state) = fx.enroll("host", json!({ "env": "lab" })).await;
    let port = free_port().to_string();
    let mut agent = Agent::start_with(
        &state,
        &[
            "--gateway-package-file",
            tarball.to_str().unwrap(),
            "--gateway-port",
            &port,
        ],
    );
    fx.api.wait_status(&node, "online").await;

    // Before: nothing installed.
    let (_, before) = fx
        .api
        .get(&format!("/v1/nodes/{node}/moltbot/status"))
        .await;
    assert_eq!(before["installed"], false, "{before}");

    // Install: 428 first, then the job, which ends with the gateway ready.
    let (status, accepted) = fx
        .api
        .confirmed(
            Method::POST,
            &format!("/v1/nodes/{node}/install/local"),
            Some(
                json!({ "method": "npm", "channel": "stable", "reason": "bring up the lab host" }),
            ),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "accepted");
    let installed = job(&fx, accepted["job_id"].as_str().unwrap()).await;
    assert_eq!(installed["status"], "succeeded", "{installed}");
    let result = &installed["result"]["installed"];
    assert_eq!(result["version"], "2026.9.1");
    assert!(
        result["prefix"]
            .as_str()
            .unwrap()
            .ends_with("moltops-scenario-gateway/2026.9.1"),
        "{result}"
    );

    // Status, as the agent reports it with its heartbeats.
    let status = wait_for("installed, running and connected", || async {
        let (_, s) = fx
            .api
            .get(&format!("/v1/nodes/{node}/moltbot/status"))
            .await;
        (s["installed"] == true && s["running"] == true && s["gateway_connected"] == true)
            .then_some(s)
    })
    .await;
    assert_eq!(status["version"], "2026.9.1");
    assert_eq!(status["service_manager"], "supervisor");
    // The node list carries the gateway at a glance.
    let listed = fx.api.node(&node).await;
    assert_eq!(
        listed["gateway"],
        json!({ "installed": true, "running": true, "ready": true, "version": "2026.9.1", "crash_loop": false })
    );
    // The fleet at a glance counts it by gateway version and state.
    let (_, summary) = fx.api.get("/v1/fleet/summary").await;
    assert_eq!(
        summary["gateway_versions"],
        json!({ "2026.9.1": 1 }),
        "{summary}"
    );
    assert_eq!(
        summary["gateways"],
        json!({ "installed": 1, "running": 1, "ready": 1, "crash_loop": 0 })
    );
    assert_eq!(status["restart_count_24h"], 0);
    let first_start = status["last_start_time"].as_str().unwrap().to_owned();

    // Restart: verified ready again, with a new start time and the count up.
    let restarted = action(&fx, &node, "restart").await;
    assert_eq!(restarted["status"], "succeeded", "{restarted}");
    assert!(
        restarted["result"]["action"]["evidence"]
            .as_str()
            .unwrap()
            .contains("ready")
    );
    wait_for("the restart in the status", || async {
        let (_, s) = fx
            .api
            .get(&format!("/v1/nodes/{node}/moltbot/status"))
            .await;
        (s["restart_count_24h"] == 1
            && s["gateway_connected"] == true
            && s["last_start_time"].as_str() != Some(first_start.as_str()))
        .then_some(())
    })
    .await;

    // Stop: verified gone.
    let stopped = action(&fx, &node, "stop").await;
    assert_eq!(stopped["status"], "succeeded", "{stopped}");
    assert!(
        stopped["result"]["action"]["evidence"]
            .as_str()
            .unwrap()
            .contains("port closed")
    );
    wait_for("stopped in the status", || async {
        let (_, s) = fx
            .api
            .get(&format!("/v1/nodes/{node}/moltbot/status"))
            .await;
        (s["running"] == false && s["gateway_connected"] == false).then_some(())
    })
    .await;
    // Start again, this time from the CLI, which waits for the verification.
    let server = fx.server().url("");
    let ctl = |args: &[&str]| {
        std::process::Command::new(moltops_e2e::binary("moltopsctl"))
            .arg("--server")
            .arg(&server)
            .args(args)
            .env("MOLTOPS_TOKEN", &fx.api.token)
            .env("MOLTOPS_CONFIG_DIR", fx.dir.join("cli"))
            .output()
            .unwrap()
    };
    let out = ctl(&[
        "gateway",
        "action",
        &node,
        "start",
        "--reason",
        "cli start",
        "--yes",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("start: verified"), "{text}");
    let out = wait_for("the CLI sees it running", || async {
        let out = ctl(&["gateway", "status", &node]);
        String::from_utf8_lossy(&out.stdout)
            .contains("running true  ready true")
            .then_some(out)
    })
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("version 2026.9.1"));

    // The agent is killed outright (no chance to stop its gateway) and started again: the new
    // agent finds the gateway the old one left behind, stops it, and runs exactly one.
    let orphan = std::fs::read_to_string(state.join("gateway.pid")).unwrap();
    let orphan = orphan.trim().to_owned();
    assert!(!orphan.is_empty());
    // The report about the orphan, which stays on record until the new agent reports its own
    // gateway: the wait below must not mistake it for the new one.
    let (_, orphan_report) = fx
        .api
        .get(&format!("/v1/nodes/{node}/moltbot/status"))
        .await;
    let orphan_started = orphan_report["last_start_time"].clone();
    assert!(orphan_started.is_string(), "{orphan_report}");
    agent.kill();
    assert!(
        std::path::Path::new(&format!("/proc/{orphan}")).exists(),
        "the killed agent's gateway outlives it"
    );
    let extra = [
        "--gateway-package-file",
        tarball.to_str().unwrap(),
        "--gateway-port",
        port.as_str(),
    ];
    let _agent = Agent::start_with(&state, &extra);
    let gateways_on_port = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains("scenario-gateway.js") && c.contains(&format!("--port {port}")))
            .count()
    };
    let state_of = |pid: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("gone")
            .to_owned()
    };
    // Gone, or exited and awaiting its new parent's wait.
    wait_for("the orphan stopped", || async {
        matches!(state_of(&orphan).as_str(), "gone" | "Z").then_some(())
    })
    .await;
    wait_for(
        "one new gateway, ready, after the agent's restart",
        || async {
            let current = std::fs::read_to_string(state.join("gateway.pid")).unwrap_or_default();
            let (_, s) = fx
                .api
                .get(&format!("/v1/nodes/{node}/moltbot/status"))
                .await;
            (current.trim() != orphan
                && !current.trim().is_empty()
                && s["last_start_time"] != orphan_started
                && s["gateway_connected"] == true
                && gateways_on_port() == 1)
                .then_some(())
        },
    )
    .await;

    // A docker install on a host that cannot run containers fails saying why, and leaves the
    // running gateway alone.
    let (status, accepted) = fx
        .api
        .confirmed(
            Method::POST,
            &format!("/v1/nodes/{node}/install/local"),
            Some(json!({ "method": "docker", "reason": "try containers" })),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let refused = job(&fx, accepted["job_id"].as_str().unwrap()).await;
    assert_eq!(refused["status"], "failed", "{refused}");
    let why = refused["error"].as_str().unwrap();
    assert!(
        why.contains("docker is not installed") || why.contains("docker daemon is not reachable"),
        "{why}"
    );
    let (_, after) = fx
        .api
        .get(&format!("/v1/nodes/{node}/moltbot/status"))
        .await;
    assert_eq!(after["gateway_connected"], true, "{after}");

    // Every step is in the audit log with its reason.
    for action in [
        "gateway.install",
        "gateway.restart",
        "gateway.stop",
        "gateway.start",
    ] {
        let (_, page) = fx.api.get(&format!("/v1/audit?action={action}")).await;
        assert_eq!(
            page["items"][0]["target_id"],
            node.as_str(),
            "{action}: {page}"
        );
        assert!(page["items"][0]["reason"].is_string(), "{action}");
    }
    // Unsupported actions are refused clearly.
    let (status, body) = fx
        .api
        .send(
            Method::POST,
            &format!("/v1/nodes/{node}/ops/action"),
            Some(json!({ "action": "upgrade", "reason": "later" })),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("validation_failed")),
        "{body}"
    );
    fx.finish().await;
}

/// The golden path with the real thing: OpenClaw 2026.9.1 from npm (its `engines` want Node
/// 22.22.3+, 24.15+ or 25.9+, so the agent provides a private runtime), through the egress proxy, to a gateway whose
/// own `/readyz` says ready; then restart and stop, verified. npm's cache is shared between runs
/// (under target/) so CI downloads it once.
#[tokio::test]
async fn real_openclaw_installs_from_npm_through_the_egress_path_and_runs_ready() {
    let fx = Fixture::start(ServerOptions::default()).await;
    let (node, state) = fx.enroll("openclaw-host", json!({ "env": "lab" })).await;
    let port = free_port().to_string();
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("openclaw-npm-cache");
    let _agent = Agent::start_with(
        &state,
        &[
            "--gateway-port",
            &port,
            "--npm-cache",
            cache.to_str().unwrap(),
        ],
    );
    fx.api.wait_status(&node, "online").await;
    let started = std::time::Instant::now();
    let (status, accepted) = fx
        .api
        .confirmed(
            Method::POST,
            &format!("/v1/nodes/{node}/install/local"),
            Some(json!({ "method": "npm", "version": "2026.9.1", "reason": "golden path" })),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    // A real install takes tens of seconds: allow up to five minutes.
    let installed = moltops_e2e::wait_for_within(
        "the install job",
        std::time::Duration::from_secs(300),
        || async {
            let (_, job) = fx.api.get(&format!("/v1/jobs/{job_id}")).await;
            matches!(
                job["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled" | "expired")
            )
            .then_some(job)
        },
    )
    .await;
    assert_eq!(installed["status"], "succeeded", "{installed}");
    let result = &installed["result"]["installed"];
    assert_eq!(result["version"], "2026.9.1");
    // The host's Node is too old for its `engines`: a private runtime runs it.
    assert!(
        result["node"]
            .as_str()
            .unwrap()
            .contains("/gateways/runtime/"),
        "{result}"
    );
    let egress = result["egress"].as_array().unwrap();
    assert!(
        !egress.is_empty() && egress.iter().all(|c| c["allowed"] == true),
        "{result}"
    );
    eprintln!(
        "golden path: install job {} ms (agent's count), {} s wall; egress {} connections, {} bytes down",
        result["duration_ms"],
        started.elapsed().as_secs(),
        egress.len(),
        egress
            .iter()
            .map(|c| c["bytes_down"].as_u64().unwrap_or(0))
            .sum::<u64>()
    );
    let status = fx.api.gateway_ready(&node, "OpenClaw reported ready").await;
    assert_eq!(status["version"], "2026.9.1");
    let t = std::time::Instant::now();
    let restarted = action(&fx, &node, "restart").await;
    assert_eq!(restarted["status"], "succeeded", "{restarted}");
    eprintln!(
        "golden path: restart verified in {} ms",
        t.elapsed().as_millis()
    );
    let t = std::time::Instant::now();
    let stopped = action(&fx, &node, "stop").await;
    assert_eq!(stopped["status"], "succeeded", "{stopped}");
    eprintln!(
        "golden path: stop verified in {} ms",
        t.elapsed().as_millis()
    );
    fx.finish().await;
}

/// Exactly once across a control-plane restart mid-command: a restart whose verification takes
/// seconds (the gateway starts slowly) is in flight when the control plane restarts; the command
/// is delivered again to the reconnected agent while it still runs (the journal knows), and the
/// result reaches the new control plane. Then a finished command whose result the control plane
/// lost is delivered again and answered from the journal. The gateway restarted exactly once.
#[tokio::test]
async fn a_command_in_flight_during_a_control_plane_restart_runs_exactly_once() {
    let mut fx = Fixture::start(ServerOptions::default()).await;
    let tarball = pack_scenario_gateway(&fx.dir.join("pack"));
    let (node, state) = fx.enroll("host", json!({})).await;
    let port = free_port().to_string();
    let agent = Agent::start_with_env(
        &state,
        &[
            "--gateway-package-file",
            tarball.to_str().unwrap(),
            "--gateway-port",
            &port,
        ],
        &[("SCENARIO_START_DELAY_MS", "3000")],
    );
    fx.api.wait_status(&node, "online").await;
    let (status, accepted) = fx
        .api
        .confirmed(
            Method::POST,
            &format!("/v1/nodes/{node}/install/local"),
            Some(json!({ "method": "npm", "reason": "setup" })),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(
        job(&fx, accepted["job_id"].as_str().unwrap()).await["status"],
        "succeeded"
    );
    let (status, accepted) = fx
        .api
        .confirmed(
            Method::POST,
            &format!("/v1/nodes/{node}/ops/action"),
            Some(json!({ "action": "restart", "reason": "exactly once" })),
        )
        .await;
    assert_eq!(status, 200, "{accepted}");
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    wait_for("the restart to be on the host", || async {
        let (_, j) = fx.api.get(&format!("/v1/jobs/{job_id}")).await;
        (j["status"] == "running").then_some(())
    })
    .await;
    // The control plane restarts while the host is still verifying the restart.
    fx.restart_server().await;
    let done = job(&fx, &job_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The control plane "loses" the finished result (as if the stream had dropped before it
    // arrived), and a new stream comes: the command goes out again.
    {
        let mut conn = fx.db.as_ref().unwrap().connect().await;
        sqlx::query("update commands set status = 'dispatched', result = null, completed_at = null where id = $1::uuid")
            .bind(&job_id)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    fx.restart_server().await;
    let again = job(&fx, &job_id).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(
        again["result"], done["result"],
        "the recorded result, not a new run"
    );
    wait_for("the journal's answer to the re-delivery", || async {
        agent
            .log_text()
            .contains("answered a re-delivered command from the journal")
            .then_some(())
    })
    .await;
    let status = fx
        .api
        .gateway_ready(&node, "the status after the restart")
        .await;
    assert_eq!(
        status["restart_count_24h"], 1,
        "restarted exactly once: {status}"
    );
    fx.finish().await;
}

/// The agent reports a change of the gateway's state at once, not at its next heartbeat (a
/// minute away here).
#[tokio::test]
async fn gateway_state_changes_are_pushed_without_waiting_for_a_heartbeat() {
    let fx = Fixture::start(ServerOptions {
        heartbeat_seconds: 60,
        ..ServerOptions::default()
    })
    .await;
    let tarball = pack_scenario_gateway(&fx.dir.join("pack"));
    let (node, state) = fx.enroll("host", json!({})).await;
    let port = free_port().to_string();
    let args = [
        "--gateway-package-file",
        tarball.to_str().unwrap(),
        "--gateway-port",
        &port,
    ];
    let agent = Agent::start_with(&state, &args);
    fx.api.wait_status(&node, "online").await;
    let (_, accepted) = fx
        .api
        .confirmed(
            Method::POST,
            &format!("/v1/nodes/{node}/install/local"),
            Some(json!({ "method": "npm", "reason": "push test" })),
        )
        .await;
    assert_eq!(
        job(&fx, accepted["job_id"].as_str().unwrap()).await["status"],
        "succeeded"
    );
    wait_for("installed and running, pushed", || async {
        let (_, s) = fx
            .api
            .get(&format!("/v1/nodes/{node}/moltbot/status"))
            .await;
        (s["installed"] == true && s["running"] == true).then_some(())
    })
    .await;
    assert_eq!(action(&fx, &node, "stop").await["status"], "succeeded");
    wait_for("stopped, pushed", || async {
        let (_, s) = fx
            .api
            .get(&format!("/v1/nodes/{node}/moltbot/status"))
            .await;
        (s["running"] == false).then_some(())
    })
    .await;
    // An operator's stop lasts across an agent restart.
    drop(agent);
    let agent = Agent::start_with(&state, &args);
    wait_for("the restarted agent to say so", || async {
        agent
            .log_text()
            .contains("stays stopped, as an operator left it")
            .then_some(())
    })
    .await;
    let (_, s) = fx
        .api
        .get(&format!("/v1/nodes/{node}/moltbot/status"))
        .await;
    assert_eq!(s["running"], false, "{s}");
    fx.finish().await;
}
