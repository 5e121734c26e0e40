//! Jobs over real processes: an operator follows a job live (Server-Sent Events), cancels it
//! where it stands on the host, and resumes the stream after a break; and the supervisor's
//! failure paths seen through the API — a crashing gateway restarted and counted, a crash loop
//! reported, a gateway that ignores SIGTERM killed at the deadline with the stop still verified.

use moltops_e2e::{
    Agent, Fixture, Relay, ServerOptions, free_port, pack_scenario_gateway, wait_for,
};
use reqwest::Method;
use serde_json::{Value, json};

pub(crate) async fn finished(fx: &Fixture, job_id: &str) -> Value {
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
    installed_via(fx, extra, None).await
}

pub(crate) async fn installed_via(
    fx: &Fixture,
    extra: &[&str],
    relay: Option<&str>,
) -> (String, std::path::PathBuf, Agent) {
    let tarball = pack_scenario_gateway(&fx.dir.join("pack"));
    let (node, state) = match relay {
        Some(address) => {
            fx.enroll_via("host", json!({ "env": "lab" }), address)
                .await
        }
        None => fx.enroll("host", json!({ "env": "lab" })).await,
    };
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

pub(crate) async fn action(fx: &Fixture, node: &str, action: &str, timeout: u64) -> String {
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

/// Exactly once, whatever breaks mid-command: the network between agent and control plane drops
/// while a restart is being verified on the host, and later the control plane is SIGKILLed in the
/// same spot. Each time the command is delivered again to the reconnected agent, whose journal
/// knows it is running; the true result is recorded, and the gateway restarted exactly once per
/// command.
#[tokio::test]
async fn a_command_runs_once_when_the_stream_drops_or_the_control_plane_is_killed_mid_command() {
    let mut fx = Fixture::start(ServerOptions::default()).await;
    let relay = Relay::start(fx.server().agent_address()).await;
    let (node, scenario, _agent) = installed_via(&fx, &[], Some(&relay.address)).await;
    std::fs::write(&scenario, r#"{"start_delay_ms": 5000}"#).unwrap();
    let restarts = |fx: &Fixture| {
        let path = format!("/v1/nodes/{node}/moltbot/status");
        let api = fx.api.clone();
        async move { api.get(&path).await.1["restart_count_24h"].clone() }
    };
    let running = |fx: &Fixture, job_id: String| {
        let api = fx.api.clone();
        async move {
            wait_for("the restart to be running on the host", || async {
                let (_, j) = api.get(&format!("/v1/jobs/{job_id}")).await;
                (j["status"] == "running").then_some(())
            })
            .await
        }
    };

    // 1. The stream drops.
    let job_id = action(&fx, &node, "restart", 60).await;
    running(&fx, job_id.clone()).await;
    relay.cut();
    let done = finished(&fx, &job_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["deliveries"], 2,
        "delivered again after the break: {done}"
    );
    let (_, events) = fx.api.get(&format!("/v1/jobs/{job_id}")).await;
    assert!(events["last_event_id"].as_i64().unwrap() > 5);
    let mut stream = fx.api.job_events(&job_id, 0).await;
    let all = stream.rest().await;
    let messages: Vec<&str> = all
        .iter()
        .filter_map(|(_, e)| e["message"].as_str())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("queued to be sent again")),
        "{messages:?}"
    );
    let runs = all.iter().filter(|(_, e)| e["status"] == "running").count();
    assert_eq!(
        runs, 2,
        "running, then running again after the re-delivery: {messages:?}"
    );
    wait_for("one restart", || async {
        (restarts(&fx).await == 1).then_some(())
    })
    .await;

    // 2. The control plane is killed outright.
    let job_id = action(&fx, &node, "restart", 60).await;
    running(&fx, job_id.clone()).await;
    fx.crash_server().await;
    let done = finished(&fx, &job_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["deliveries"], 2, "{done}");
    wait_for("two restarts in all", || async {
        (restarts(&fx).await == 2).then_some(())
    })
    .await;
    fx.finish().await;
}

/// A package registry stand-in on loopback (what npm's configured registry would be): it serves
/// the packument of `lab-dep-far`, whose tarball lives on another host (127.0.0.2, not the
/// registry), and of `lab-dep-big`, whose tarball never ends.
fn fake_registry() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    // The proxy forwards absolute-form or origin-form; the path is what counts.
                    let path = target
                        .split_once("://")
                        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
                        .unwrap_or(target);
                    let packument = |name: &str, tarball: String| {
                        json!({
                            "name": name,
                            "dist-tags": { "latest": "1.0.0" },
                            "versions": { "1.0.0": {
                                "name": name, "version": "1.0.0",
                                "dist": { "tarball": tarball }
                            } }
                        })
                        .to_string()
                    };
                    let body = match path.as_str() {
                        "/lab-dep-far" => packument(
                            "lab-dep-far",
                            format!("http://127.0.0.2:{port}/lab-dep-far/-/lab-dep-far-1.0.0.tgz"),
                        ),
                        "/lab-dep-big" => packument(
                            "lab-dep-big",
                            format!("http://localhost:{port}/lab-dep-big/-/lab-dep-big-1.0.0.tgz"),
                        ),
                        "/lab-dep-big/-/lab-dep-big-1.0.0.tgz" => {
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n")
                                .await;
                            let chunk = vec![0x5au8; 64 * 1024];
                            while socket.write_all(&chunk).await.is_ok() {}
                            return;
                        }
                        _ => {
                            let _ = socket
                                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                    };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
    });
    port
}

/// The scenario gateway with one dependency from the registry.
fn pack_with_dependency(fx: &Fixture, dependency: &str) -> std::path::PathBuf {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenario-gateway");
    let copy = fx.dir.join(format!("pkg-{dependency}"));
    std::fs::create_dir_all(copy.join("bin")).unwrap();
    for entry in std::fs::read_dir(source.join("bin")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join("bin").join(entry.file_name())).unwrap();
    }
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("package.json")).unwrap())
            .unwrap();
    manifest["dependencies"] = json!({ dependency: "1.0.0" });
    std::fs::write(copy.join("package.json"), manifest.to_string()).unwrap();
    let out = std::process::Command::new("npm")
        .args(["pack", "--silent", "--pack-destination"])
        .arg(&fx.dir)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let renamed = fx.dir.join(format!("{dependency}-{name}"));
    std::fs::rename(fx.dir.join(name), &renamed).unwrap();
    renamed
}

/// The governed egress path, seen through install jobs: npm's configured registry is the only
/// host an install may reach (a dependency whose tarball lives elsewhere is refused, and the
/// refusal is in the job), and the byte budget cuts a download that never ends.
#[tokio::test]
async fn an_install_reaches_only_its_registry_and_stops_at_its_byte_budget() {
    let fx = Fixture::start(ServerOptions::default()).await;
    let registry = fake_registry();
    let registry_url = format!("http://localhost:{registry}/");
    let install = |node: String| {
        let api = fx.api.clone();
        async move {
            let (status, accepted) = api
                .confirmed(
                    Method::POST,
                    &format!("/v1/nodes/{node}/install/local"),
                    Some(json!({ "method": "npm", "reason": "egress" })),
                )
                .await;
            assert_eq!(status, 202, "{accepted}");
            accepted["job_id"].as_str().unwrap().to_owned()
        }
    };

    // A dependency from another host: refused by the proxy, reported, and the install fails.
    let far = pack_with_dependency(&fx, "lab-dep-far");
    let (node, state) = fx.enroll("far", json!({})).await;
    let port = free_port().to_string();
    let cache = fx.dir.join("cache-far");
    let _far_agent = Agent::start_with_env(
        &state,
        &[
            "--gateway-package-file",
            far.to_str().unwrap(),
            "--gateway-port",
            &port,
            "--npm-cache",
            cache.to_str().unwrap(),
        ],
        &[("npm_config_registry", &registry_url)],
    );
    fx.api.wait_status(&node, "online").await;
    let job_id = install(node.clone()).await;
    let job = finished(&fx, &job_id).await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains(&format!("127.0.0.2:{registry}")), "{error}");
    assert!(error.contains("allowlist"), "{error}");
    let mut events = fx.api.job_events(&job_id, 0).await;
    let logs: Vec<String> = events
        .rest()
        .await
        .into_iter()
        .filter(|(_, e)| e["kind"] == "log")
        .map(|(_, e)| e["message"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        logs.iter()
            .any(|l| l.starts_with(&format!("egress allowed to localhost:{registry}"))),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.starts_with(&format!("egress DENIED 127.0.0.2:{registry}"))),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.starts_with(&format!("egress allowed localhost:{registry}"))),
        "the registry itself was reached: {logs:?}"
    );

    // A download that never ends: cut at the budget (1 MiB), reported, and the install fails.
    let big = pack_with_dependency(&fx, "lab-dep-big");
    let (node, state) = fx.enroll("big", json!({})).await;
    let port = free_port().to_string();
    let cache = fx.dir.join("cache-big");
    let _big_agent = Agent::start_with_env(
        &state,
        &[
            "--gateway-package-file",
            big.to_str().unwrap(),
            "--gateway-port",
            &port,
            "--npm-cache",
            cache.to_str().unwrap(),
            "--install-byte-budget",
            "1048576",
        ],
        &[("npm_config_registry", &registry_url)],
    );
    fx.api.wait_status(&node, "online").await;
    let job = finished(&fx, &install(node.clone()).await).await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("budget"), "{error}");
    // Nothing was installed: the node reports no gateway.
    let (_, status) = fx
        .api
        .get(&format!("/v1/nodes/{node}/moltbot/status"))
        .await;
    assert_eq!(status["installed"], false, "{status}");
    fx.finish().await;
}
