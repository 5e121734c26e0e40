//! The load tool against a real control plane and Postgres (started by the e2e harness): the
//! library's enrollment, fleet and fan-out functions at N=200, and a whole `run` with every
//! scenario at a small N. Correctness only — no assertion on a timing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use moltops_bench::agent::AgentOptions;
use moltops_bench::fanout::{FanoutCommand, FanoutFigures, FanoutOptions, fanout};
use moltops_bench::fleet::{self, EnrollPlan, Fleet, FleetOptions};
use moltops_bench::rest::Api;
use moltops_bench::scenario::{self, RunConfig, Scenario};
use moltops_bench::server::{ManagedServer, ServerSpec, SharedServer};
use moltops_e2e::{Fixture, ServerOptions, TestDatabase};

/// The longest any wait may take (debug builds on a loaded CI machine).
const DEADLINE: Duration = Duration::from_secs(120);

async fn fixture() -> Fixture {
    moltops_bench::install_crypto_provider();
    // Heartbeats every 5 s (the harness's 1 s would make 200 agents a heartbeat benchmark).
    Fixture::start(ServerOptions {
        heartbeat_seconds: 5,
        ..Default::default()
    })
    .await
}

fn fanout_options(
    selector: &str,
    command: FanoutCommand,
    round: &str,
    expect_redelivery: bool,
) -> FanoutOptions {
    FanoutOptions {
        selector: selector.to_owned(),
        command,
        concurrency: 32,
        deadline: DEADLINE,
        round: round.to_owned(),
        expect_redelivery,
    }
}

/// Every job succeeded with the expected result and ran exactly once on its own node.
fn assert_exactly_once(f: &FanoutFigures, n: usize) {
    f.check().unwrap();
    let v = &f.verdict;
    assert_eq!(
        (f.nodes, v.jobs, v.succeeded, v.executed_once),
        (n, n, n, n),
        "{v}"
    );
    assert!(
        v.lost.is_empty() && v.duplicated.is_empty() && v.misrouted.is_empty(),
        "{v}"
    );
    assert!(v.not_succeeded.is_empty(), "{v}");
    assert_eq!(f.job_latency.count, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_simulated_agents_enroll_connect_and_run_each_command_exactly_once() {
    const N: usize = 200;
    let fx = fixture().await;
    let server = fx.server();
    let api = Api::new(&server.url(""), &fx.api.token).unwrap();
    let labels = BTreeMap::from([("moltops-bench".to_owned(), "it200".to_owned())]);
    let selector = "moltops-bench=it200";

    // One token for all N; the pin the API reports is the server's.
    let (tokens, pin) = fleet::create_tokens(&api, &labels, N, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(pin, server.ca_pin);
    let plan = EnrollPlan {
        server_grpc: server.agent_address(),
        ca_pin: moltops_agent::tls::parse_pin(&server.ca_pin).unwrap(),
        tokens,
        agents: N,
        concurrency: 16,
        hostname_prefix: "it".to_owned(),
    };
    let (identities, enrolled) = fleet::enroll_all(&plan).await.unwrap();
    assert_eq!((identities.len(), enrolled.agents), (N, N));
    let ids: HashSet<_> = identities.iter().map(|i| i.node_id).collect();
    assert_eq!(ids.len(), N, "every agent is its own node");
    // The token allowed exactly N: one more is refused.
    let extra = moltops_bench::agent::enroll(
        &server.agent_address(),
        plan.ca_pin,
        &plan.tokens[0],
        N,
        "it-extra".to_owned(),
    )
    .await;
    assert!(
        extra
            .as_ref()
            .is_err_and(|e| e.contains("enrollment refused")),
        "{:?}",
        extra.map(|i| i.node_id)
    );
    // A wrong pin never reaches the Enroll call.
    let wrong = moltops_bench::agent::enroll(
        &server.agent_address(),
        [7; 32],
        &plan.tokens[0],
        N,
        "it-wrong-pin".to_owned(),
    )
    .await;
    assert!(
        wrong
            .as_ref()
            .is_err_and(|e| e.contains("does not match --ca-pin")),
        "{:?}",
        wrong.map(|i| i.node_id)
    );

    // All connected, and the API lists all N online.
    let fleet = Fleet::start(
        &identities,
        FleetOptions {
            server_grpc: server.agent_address(),
            ramp_concurrency: 32,
            agent: AgentOptions::default(),
        },
    )
    .unwrap();
    fleet.wait_connected(DEADLINE).await.unwrap();
    fleet::wait_online(&api, selector, N, DEADLINE)
        .await
        .unwrap();
    let online: HashSet<_> = api
        .nodes(selector, Some("online"))
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(online, ids);

    // A ping to every node: all acknowledged, none lost, none run twice.
    let ping = fanout(
        &api,
        &fleet,
        &fanout_options(selector, FanoutCommand::Ping, "it-ping", false),
    )
    .await
    .unwrap();
    assert_exactly_once(&ping, N);
    assert_eq!(ping.verdict.redelivered, 0, "{}", ping.verdict);

    // A confirmed gateway restart on every node: a verified no-op ActionDone each.
    let restart = fanout(
        &api,
        &fleet,
        &fanout_options(selector, FanoutCommand::Restart, "it-restart", false),
    )
    .await
    .unwrap();
    assert_exactly_once(&restart, N);

    // Every stream dropped: all come back.
    fleet.drop_all();
    fleet.wait_connected(DEADLINE).await.unwrap();
    fleet::wait_online(&api, selector, N, DEADLINE)
        .await
        .unwrap();

    // Every agent drops its stream after running its command, before the result: each command is
    // delivered again, answered from the agent's journal, and still run only once.
    let journal_before = fleet.counters().journal_answers;
    fleet.drop_mid_next_command();
    let mid = fanout(
        &api,
        &fleet,
        &fanout_options(selector, FanoutCommand::Ping, "it-mid-command", true),
    )
    .await
    .unwrap();
    assert_exactly_once(&mid, N);
    assert_eq!(mid.verdict.redelivered, N, "{}", mid.verdict);
    let counters = fleet.counters();
    assert!(
        counters.journal_answers - journal_before >= N as u64,
        "{counters:?}"
    );
    assert_eq!(counters.executions, 3 * N as u64, "{counters:?}");
    assert_eq!(counters.unexpected_disconnects, 0, "{counters:?}");

    fleet.shutdown().await;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_run_with_every_scenario_reports_every_figure() {
    const N: usize = 20;
    moltops_bench::install_crypto_provider();
    // The control plane the bench starts itself (as `--spawn-server` does), so the restart
    // scenario can stop and start it.
    let db = TestDatabase::create().await;
    let dir = moltops_e2e::scratch("bench-run");
    let managed = ManagedServer::start(ServerSpec {
        binary: moltops_e2e::binary("moltops-server"),
        database_url: db.url.clone(),
        data_dir: dir.join("server"),
        http_addr: "127.0.0.1:0".into(),
        grpc_addr: "127.0.0.1:0".into(),
        deadline: DEADLINE,
    })
    .await
    .unwrap();
    let (http, grpc, pin) = (
        managed.http_url(),
        managed.agent_address(),
        managed.ca_pin().to_owned(),
    );
    let first_pid = managed.pid().unwrap();
    let token = managed.create_owner_token().unwrap();
    let server = Arc::new(tokio::sync::Mutex::new(managed));
    let config = RunConfig {
        server_http: http.clone(),
        server_grpc: grpc,
        ca_pin: Some(pin),
        token: token.clone(),
        agents: N,
        concurrency: 8,
        labels: BTreeMap::from([("env".to_owned(), "bench".to_owned())]),
        heartbeat_override: None,
        scenarios: vec![Scenario::All],
        server_pid: Some(first_pid),
        steady_window: Duration::from_secs(1),
        fanout_commands: vec![FanoutCommand::Ping, FanoutCommand::Restart],
        api_requests: 20,
        api_concurrency: 2,
        audit_events: 100,
        audit_concurrency: 8,
        deadline: DEADLINE,
        run_id: "itrun".to_owned(),
        control_plane: Some(Arc::new(SharedServer(server.clone()))),
    };
    let (report, outcome) = scenario::run(&config, &|line| eprintln!("{line}")).await;
    outcome.unwrap();
    assert_eq!(report.error, None);
    assert_eq!(report.selector, "moltops-bench=itrun");
    assert_eq!(report.enroll.as_ref().unwrap().agents, N);
    assert!(report.connect.is_some());
    let steady = report.steady.as_ref().unwrap();
    let cp = steady.server.as_ref().unwrap();
    assert_eq!(cp.pid, first_pid);
    assert!(cp.rss_min_bytes > 0 && cp.rss_min_bytes <= cp.rss_max_bytes);
    assert!(steady.bench_rss_connected_bytes > 0);
    let commands: Vec<_> = report.fanouts.iter().map(|f| f.command).collect();
    assert_eq!(commands, ["ping", "restart"]);
    for f in &report.fanouts {
        assert_exactly_once(f, N);
    }
    let api = report.api.as_ref().unwrap();
    assert_eq!((api.idle.count, api.during_fanout.count), (20, 20));
    assert_exactly_once(&api.fanout, N);
    // Every audited change is a chained row, and the chain is intact afterwards.
    let audit = report.audit.as_ref().unwrap();
    assert_eq!((audit.events, audit.latency.count), (100, 100));
    assert!(audit.chain_ok);
    assert!(audit.head_seq_after - audit.head_seq_before >= 100);
    assert!(audit.rows_checked >= audit.head_seq_after);
    let reconnect = report.reconnect.as_ref().unwrap();
    assert_exactly_once(&reconnect.mid_command, N);
    assert_eq!(reconnect.mid_command.verdict.redelivered, N);
    // The control plane was really replaced, every agent came back to the new process without
    // being refused, and the fleet still runs each command exactly once.
    let restart = report.restart.as_ref().unwrap();
    assert_eq!(restart.agents, N);
    assert_eq!(restart.refused_by_new_server, 0);
    assert!(restart.rss_after_bytes > 0);
    assert_exactly_once(restart.after.as_ref().unwrap(), N);
    let new_pid = server.lock().await.pid().unwrap();
    assert_ne!(new_pid, first_pid);
    // Nodes carry the extra label too.
    let api_client = Api::new(&http, &token).unwrap();
    assert_eq!(
        api_client
            .nodes("moltops-bench=itrun,env=bench", None)
            .await
            .unwrap()
            .len(),
        N
    );
    // The report is what --json writes.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["fanouts"][0]["verdict"]["executed_once"], N);
    assert_eq!(json["restart"]["after"]["verdict"]["executed_once"], N);
    server.lock().await.stop().await.unwrap();
    drop(server);
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(&dir);
}
