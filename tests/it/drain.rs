//! Draining a replica: two control planes share one database and sit behind one front (what a
//! Kubernetes Service is to agents). The replica holding the streams gets SIGTERM — with a command
//! in flight on the host, and with several idle agents — and exits within its drain deadline; its
//! agents reconnect through the front to the other replica, which finishes the job with its true
//! result, run once on the host, and serves the agents from then on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moltops_e2e::{Agent, Api, Fixture, Relay, Server, ServerOptions, wait_for};
use serde_json::{Value, json};

use crate::jobs::{action, finished, installed_via};

/// The drain deadline the replicas run with.
const DRAIN_SECONDS: u64 = 5;

/// Replica A (the fixture's server) and replica B on the same database and data dir (so the same
/// key-encryption key, hence the same CA), and a front that prefers A while it accepts.
async fn two_replicas_behind_a_front(label: &str) -> (Fixture, Server, Relay) {
    let options = ServerOptions {
        env: vec![("MOLTOPS_DRAIN_SECONDS".into(), DRAIN_SECONDS.to_string())],
        // A liveness window of 15 s: only the drain moves a stream, even on a loaded machine.
        heartbeat_seconds: 5,
        ..ServerOptions::default()
    };
    let fx = Fixture::start(options.clone()).await;
    let b = Server::start(
        &fx.db.as_ref().unwrap().url,
        &fx.server().data_dir,
        &options,
    )
    .await;
    assert_eq!(b.ca_pin, fx.server().ca_pin, "{label}: one CA for both");
    let front = Relay::front(vec![fx.server().grpc.to_string(), b.grpc.to_string()]).await;
    (fx, b, front)
}

/// How many streams of `node` said hello to the replica that wrote `log`.
fn hellos(log: &Arc<Mutex<Vec<String>>>, node: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["fields"]["message"] == "agent connected" && v["fields"]["node_id"] == node)
        .count()
}

/// Waits until `node`'s stream has said hello to the replica that wrote `log` (the line is read
/// from the process's stderr, so it may trail the database by a moment).
async fn wait_hello(log: &Arc<Mutex<Vec<String>>>, node: &str, replica: &str) {
    wait_for(&format!("{node}'s stream on replica {replica}"), || async {
        (hellos(log, node) >= 1).then_some(())
    })
    .await;
}

/// SIGTERMs replica A and checks that it drained: a clean exit, before the deadline, and its own
/// word that everything closed in time (not "deadline passed"). Then B becomes the fixture's
/// server, so the helpers talk to it. Returns A's log.
async fn drain_a(fx: &mut Fixture, b: Server) -> Arc<Mutex<Vec<String>>> {
    let a = fx.server.take().unwrap();
    let log = a.log.clone();
    let started = Instant::now();
    let status = a.stop();
    let took = started.elapsed();
    assert!(status.success(), "replica A exited with {status}");
    assert!(
        took < Duration::from_secs(DRAIN_SECONDS),
        "replica A took {took:?} to exit, drain deadline {DRAIN_SECONDS} s; its log:\n{}",
        log.lock().unwrap().join("\n")
    );
    wait_for("replica A's drain report", || async {
        let lines = log.lock().unwrap();
        let drained = lines
            .iter()
            .any(|l| l.contains("drained within the deadline"));
        assert!(
            !lines.iter().any(|l| l.contains("drain deadline passed")),
            "replica A did not drain in time:\n{}",
            lines.join("\n")
        );
        drained.then_some(())
    })
    .await;
    eprintln!(
        "drain: replica A exited {} ms after SIGTERM",
        took.as_millis()
    );
    fx.server = Some(b);
    fx.api = Api::new(fx.server(), &fx.api.token);
    log
}

/// The issue's "done when": a restart is being verified on the host (the gateway starts slowly)
/// when the replica streaming to its agent gets SIGTERM. The replica drains and exits in time;
/// the agent moves to the other replica, which delivers the command again; the agent's journal
/// knows it is running, so it is not run again, and its result reaches the new replica. The
/// gateway restarted exactly once, and the next command is delivered by the new replica.
#[tokio::test]
async fn a_draining_replica_hands_its_agent_and_the_command_in_flight_to_another_replica() {
    let (mut fx, b, front) = two_replicas_behind_a_front("in flight").await;
    let (node, scenario, agent) = installed_via(&fx, &[], Some(&front.address)).await;
    let a_log = fx.server().log.clone();
    let b_log = b.log.clone();
    wait_hello(&a_log, &node, "A").await;
    assert_eq!(hellos(&b_log, &node), 0, "the agent streams to A only");
    assert_eq!(front.forwarded()[1], 0, "nothing reached B yet");

    // The gateway will take 8 s to be ready: the restart waits in its verify step meanwhile.
    std::fs::write(&scenario, r#"{"start_delay_ms": 8000}"#).unwrap();
    let job_id = action(&fx, &node, "restart", 60).await;
    wait_for("the restart to be running on the host", || async {
        let (_, job) = fx.api.get(&format!("/v1/jobs/{job_id}")).await;
        (job["status"] == "running").then_some(())
    })
    .await;
    // An operator follows the job on A; the drain ends that stream too.
    let mut followed_on_a = fx.api.job_events(&job_id, 0).await;
    followed_on_a
        .until("running", |e| e["status"] == "running")
        .await;

    drain_a(&mut fx, b).await;
    let seen_on_a = followed_on_a.rest().await;
    assert!(
        seen_on_a.iter().all(|(_, e)| e["status"] != "succeeded"),
        "A's event stream ended with the drain, before the result: {seen_on_a:?}"
    );

    // The agent is told to go, comes back through the front, and B now holds its stream.
    wait_hello(&b_log, &node, "B").await;
    assert!(front.forwarded()[1] >= 1, "{:?}", front.forwarded());
    fx.api.wait_status(&node, "online").await;

    let done = finished(&fx, &job_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        done["result"]["action"]["evidence"]
            .as_str()
            .unwrap()
            .contains("ready"),
        "the host's own verdict: {done}"
    );
    assert_eq!(done["deliveries"], 2, "delivered again by B: {done}");
    let history = fx.api.job_events(&job_id, 0).await.rest().await;
    let states: Vec<&str> = history
        .iter()
        .filter(|(_, e)| e["kind"] == "state")
        .filter_map(|(_, e)| e["status"].as_str())
        .collect();
    assert_eq!(
        states,
        [
            "queued",
            "dispatched",
            "running",
            "queued",
            "dispatched",
            "running",
            "succeeded"
        ],
        "re-queued by B, running again (the journal's acknowledgement), one result: {history:?}"
    );
    // One execution on the host: the agent started the command once, and the gateway restarted
    // once.
    let started = agent
        .log_text()
        .lines()
        .filter(|l| l.contains("running a command") && l.contains(&job_id))
        .count();
    assert_eq!(started, 1, "agent log:\n{}", agent.log_text());
    let status = fx
        .api
        .gateway_ready(&node, "the restart in the status")
        .await;
    assert_eq!(status["restart_count_24h"], 1, "{status}");

    // The next command is delivered by B (A is gone), the first time.
    let pong = fx.api.ping(&node).await;
    assert_eq!(pong["deliveries"], 1, "{pong}");
    drop(agent);
    fx.finish().await;
}

/// With nothing in flight: every agent of the draining replica moves to the other one, none lost.
#[tokio::test]
async fn a_draining_replica_hands_all_its_agents_to_another_replica() {
    let (mut fx, b, front) = two_replicas_behind_a_front("idle").await;
    let mut nodes = Vec::new();
    let mut agents = Vec::new();
    for name in ["one", "two", "three"] {
        let (node, state) = fx
            .enroll_via(name, json!({ "env": "lab" }), &front.address)
            .await;
        agents.push(Agent::start(&state));
        nodes.push(node);
    }
    let a_log = fx.server().log.clone();
    let b_log = b.log.clone();
    for node in &nodes {
        fx.api.wait_status(node, "online").await;
        wait_hello(&a_log, node, "A").await;
        assert_eq!(hellos(&b_log, node), 0, "{node} streams to A only");
    }
    assert_eq!(front.forwarded()[1], 0);

    drain_a(&mut fx, b).await;
    for node in &nodes {
        wait_hello(&b_log, node, "B").await;
        fx.api.wait_status(node, "online").await;
        assert_eq!(fx.api.ping(node).await["deliveries"], 1);
    }
    let (_, listed) = fx.api.get("/v1/nodes?status=online").await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
    drop(agents);
    fx.finish().await;
}
