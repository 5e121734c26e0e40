//! Jobs over real processes: an operator follows a job live (Server-Sent Events), cancels it
//! where it stands on the host, and resumes the stream after a break; and the supervisor's
//! failure paths seen through the API — a crashing gateway restarted and counted, a crash loop
//! reported, a gateway that ignores SIGTERM killed at the deadline with the stop still verified.

use moltops_e2e::{Agent, Fixture, ServerOptions, free_port, pack_scenario_gateway, wait_for};
use reqwest::Method;
use serde_json::{Value, json};

async fn finished(fx: &Fixture, job_id: &str) -> Value {
    wait_for("the job to end", || async {
        let (_, job) = fx.api.get(&format!("/v1/jobs/{job_id}")).await;
        matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled" | "expired")
        )
        .then_some(job)
    })
    .await
}

/// Starts an agent whose scenario gateway reads its toggles from `scenario.json` (rewritten by
/// the test between steps; each gateway start reads it afresh), installs it, and returns the
/// file's path with the agent.
async fn installed(fx: &Fixture, extra: &[&str]) -> (String, std::path::PathBuf, Agent) {
    let tarball = pack_scenario_gateway(&fx.dir.join("pack"));
    let (node, state) = fx.enroll("host", json!({ "env": "lab" })).await;
    let scenario = fx.dir.join("scenario.json");
    std::fs::write(&scenario, "{}").unwrap();
    let port = free_port().to_string();
    let mut args = vec![
        "--gateway-package-file",
        tarball.to_str().unwrap(),
        "--gateway-port",
        &port,
    ];
    args.extend_from_slice(extra);
    let agent = Agent::start_with_env(
        &state,
        &args,
        &[("SCENARIO_FILE", scenario.to_str().unwrap())],
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
    let done = finished(fx, accepted["job_id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    (node, scenario, agent)
}

async fn action(fx: &Fixture, node: &str, action: &str, timeout: u64) -> String {
    let (status, accepted) = fx
        .api
        .confirmed(
            Method::POST,
            &format!("/v1/nodes/{node}/ops/action"),
            Some(json!({ "action": action, "reason": "e2e", "params": { "verify_timeout_seconds": timeout } })),
        )
        .await;
    assert_eq!(status, 200, "{accepted}");
    accepted["job_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_operator_follows_a_job_live_and_cancels_it_where_it_stands_on_the_host() {
    let fx = Fixture::start(ServerOptions::default()).await;
    let (node, scenario, agent) = installed(&fx, &[]).await;

    // The gateway will not be ready for ten minutes: a restart waits in its verify step.
    std::fs::write(&scenario, r#"{"start_delay_ms": 600000}"#).unwrap();
    let job_id = action(&fx, &node, "restart", 600).await;
    let mut events = fx.api.job_events(&job_id, 0).await;
    let (_, queued) = events.next().await.unwrap();
    assert_eq!(
        (queued["kind"].as_str(), queued["status"].as_str()),
        (Some("state"), Some("queued"))
    );
    events.until("running", |e| e["status"] == "running").await;
    let (verify_id, _) = events
        .until("the verify step", |e| {
            e["kind"] == "step" && e["step"] == "verify"
        })
        .await;
    let (_, running) = fx.api.get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(
        (running["status"].as_str(), running["step"].as_str()),
        (Some("running"), Some("verify"))
    );

    // Cancel: the request reaches the agent, which stops waiting and says what that leaves.
    let (status, requested) = fx
        .api
        .post(
            &format!("/v1/jobs/{job_id}/cancel"),
            json!({ "reason": "taking too long" }),
        )
        .await;
    assert_eq!(status, 202, "{requested}");
    let rest = events.rest().await;
    let last = &rest.last().expect("events after the cancel").1;
    assert_eq!(
        (last["kind"].as_str(), last["status"].as_str()),
        (Some("state"), Some("cancelled")),
        "{rest:?}"
    );
    let job = finished(&fx, &job_id).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["result"]["cancelled"]["step"], "verify");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("restarted, but was not verified ready"),
        "{job}"
    );
    // A stream resumed after the verify step replays exactly what followed it, then ends.
    let mut resumed = fx.api.job_events(&job_id, verify_id).await;
    let replay = resumed.rest().await;
    assert_eq!(replay.first().map(|e| e.0), Some(verify_id + 1));
    assert_eq!(
        replay,
        rest.iter()
            .filter(|e| e.0 > verify_id)
            .cloned()
            .collect::<Vec<_>>()
    );
    // Ended jobs cannot be cancelled; the cancel is in the audit log with its reason.
    let (status, _) = fx
        .api
        .post(&format!("/v1/jobs/{job_id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409);
    let (_, audit) = fx.api.get("/v1/audit?action=job.cancel").await;
    assert_eq!(audit["items"][0]["target_id"], job_id.as_str());
    assert_eq!(audit["items"][0]["reason"], "taking too long");
    // The agent's next job runs normally (the cancelled one released the gateway).
    std::fs::write(&scenario, "{}").unwrap();
    let again = finished(&fx, &action(&fx, &node, "restart", 30).await).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    // From the CLI: the job list shows both.
    let out = std::process::Command::new(moltops_e2e::binary("moltopsctl"))
        .args([
            "--server",
            &fx.server().url(""),
            "jobs",
            "list",
            "--node",
            &node,
        ])
        .env("MOLTOPS_TOKEN", &fx.api.token)
        .env("MOLTOPS_CONFIG_DIR", fx.dir.join("cli"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{job_id}  service_action cancelled")),
        "{text}"
    );
    drop(agent);
    fx.finish().await;
}

#[tokio::test]
async fn a_crashing_gateway_is_restarted_and_counted_a_crash_loop_is_reported_and_a_hung_stop_is_killed()
 {
    let fx = Fixture::start(ServerOptions::default()).await;
    let (node, scenario, _agent) = installed(
        &fx,
        &[
            "--gateway-restart-delay-ms",
            "200",
            "--gateway-stop-timeout-seconds",
            "2",
        ],
    )
    .await;
    let status = || async {
        fx.api
            .get(&format!("/v1/nodes/{node}/moltbot/status"))
            .await
            .1
    };
    assert_eq!(status().await["restart_count_24h"], 0);

    // It crashes 400 ms after every start: the supervisor restarts it (with backoff), counts
    // each restart, and after five exits in five minutes reports a crash loop.
    std::fs::write(&scenario, r#"{"crash_after_ms": 400, "exit_code": 3}"#).unwrap();
    let restart = finished(&fx, &action(&fx, &node, "restart", 30).await).await;
    assert_eq!(
        restart["status"], "succeeded",
        "ready before its first crash: {restart}"
    );
    let looping = wait_for("a crash loop in the status", || async {
        let s = status().await;
        (s["crash_loop"] == true).then_some(s)
    })
    .await;
    assert!(
        looping["restart_count_24h"].as_i64().unwrap() >= 5,
        "{looping}"
    );
    assert!(
        looping["last_exit"].as_str().unwrap().contains('3'),
        "{looping}"
    );

    // Fixed, and now it ignores SIGTERM: a restart brings it back ready; a stop waits the
    // two-second deadline, kills it, and still verifies it gone.
    std::fs::write(&scenario, r#"{"ignore_sigterm": "1"}"#).unwrap();
    let restart = finished(&fx, &action(&fx, &node, "restart", 30).await).await;
    assert_eq!(restart["status"], "succeeded", "{restart}");
    let stop = finished(&fx, &action(&fx, &node, "stop", 30).await).await;
    assert_eq!(stop["status"], "succeeded", "{stop}");
    let evidence = stop["result"]["action"]["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("ignored SIGTERM and was killed at the deadline"),
        "{evidence}"
    );
    assert!(evidence.contains("port closed"), "{evidence}");
    let (_, events) = fx
        .api
        .get(&format!("/v1/jobs/{}", stop["id"].as_str().unwrap()))
        .await;
    assert_eq!(events["step"], "verify");
    wait_for("stopped in the status", || async {
        let s = status().await;
        (s["running"] == false && s["gateway_connected"] == false).then_some(())
    })
    .await;
    fx.finish().await;
}
