//! `moltops-bench run`: N simulated agents against a control plane — one already running, or one
//! the bench starts on a fresh database (`--spawn-server`, which the restart scenario needs);
//! prints the figures of each scenario and optionally writes them as JSON. Exits 1 if any agent
//! fails to enroll or connect, or any command is lost or run twice. See bench/README.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use moltops_bench::fanout::FanoutCommand;
use moltops_bench::scenario::{self, ControlPlane, RunConfig, Scenario};
use moltops_bench::server::{self, ManagedServer, ServerSpec, SharedServer};

#[derive(Parser)]
#[command(
    name = "moltops-bench",
    version,
    about = "Simulated agents against a real moltops control plane, and the figures"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll N simulated agents, connect them, run the scenarios, print the figures.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The control plane's REST base URL.
    #[arg(long, default_value = "http://127.0.0.1:7337")]
    server_http: String,
    /// The agent port as agents dial it (the name must be in the server's certificate).
    #[arg(long, default_value = "localhost:7338")]
    server_grpc: String,
    /// sha256:<hex> of the fleet CA (default: the pin the control plane reports with the
    /// enrollment token, i.e. trust the REST connection).
    #[arg(long)]
    ca_pin: Option<String>,
    /// An owner or admin API token (made by the bench with --spawn-server).
    #[arg(long, env = "MOLTOPS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Start this `moltops-server` binary on loopback (ephemeral ports) on a fresh database
    /// `moltops_bench_<run id>` created on the Postgres of --database-url, stop it at the end,
    /// drop the database unless --keep-database; --server-http/--server-grpc/--ca-pin/--token/
    /// --server-pid then come from it. The restart scenario needs this.
    #[arg(long, value_name = "MOLTOPS_SERVER_BINARY")]
    spawn_server: Option<PathBuf>,
    /// With --spawn-server: a Postgres URL the bench may create a database with.
    #[arg(
        long,
        env = "MOLTOPS_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    database_url: String,
    /// With --spawn-server: keep the database (and the server's data directory) after the run.
    #[arg(long)]
    keep_database: bool,
    /// How many agents to simulate.
    #[arg(long)]
    agents: usize,
    /// Enrollments, first connections and REST create requests in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Extra labels for every simulated node, k=v (comma-separated or repeated).
    #[arg(long = "labels", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Heartbeat at this interval instead of the one the server's HelloAck names.
    #[arg(long)]
    heartbeat_seconds: Option<u64>,
    /// Scenarios to run (comma-separated): enroll, steady, fanout, api, audit, reconnect, restart,
    /// all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    scenario: Vec<Scenario>,
    /// The control plane's pid on this host, to sample its RSS and CPU (steady).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Length of the steady window.
    #[arg(long, default_value_t = 30)]
    steady_seconds: u64,
    /// Fan-outs to run, in order (comma-separated): ping, restart.
    #[arg(long, value_delimiter = ',', default_value = "ping,restart")]
    fanout: Vec<FanoutCommand>,
    /// `GET /v1/nodes` requests to time, idle and again during a fan-out.
    #[arg(long, default_value_t = 500)]
    api_requests: usize,
    /// Of those, in flight at once.
    #[arg(long, default_value_t = 4)]
    api_concurrency: usize,
    /// Audited changes (label updates) the audit scenario sends.
    #[arg(long, default_value_t = 5000)]
    audit_events: usize,
    /// Of those, in flight at once.
    #[arg(long, default_value_t = 64)]
    audit_concurrency: usize,
    /// The longest any single wait may take before the run fails.
    #[arg(long, default_value_t = 600)]
    deadline_seconds: u64,
    /// Also write the figures here as JSON (written on failure too, with `error` set).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("a label is key=value, got {s:?}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    moltops_bench::install_crypto_provider();
    let Command::Run(args) = Cli::parse().command;
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moltops-bench: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let deadline = Duration::from_secs(args.deadline_seconds);
    let mut managed = None;
    if let Some(binary) = &args.spawn_server {
        let (name, url) = server::create_database(&args.database_url, &run_id).await?;
        let data_dir = server::data_dir(&std::env::temp_dir(), &run_id);
        println!(
            "moltops-bench: starting {} on database {name} (data and server.log in {})",
            binary.display(),
            data_dir.display()
        );
        let started = ManagedServer::start(ServerSpec {
            binary: binary.clone(),
            database_url: url,
            data_dir: data_dir.clone(),
            http_addr: "127.0.0.1:0".into(),
            grpc_addr: "127.0.0.1:0".into(),
            deadline,
        })
        .await;
        match started {
            Ok(s) => managed = Some((Arc::new(tokio::sync::Mutex::new(s)), name, data_dir)),
            Err(e) => {
                cleanup(&args, &name, &data_dir).await;
                return Err(e.into());
            }
        }
    }
    let result = run_with(&args, run_id, deadline, managed.as_ref().map(|m| &m.0)).await;
    if let Some((server, name, data_dir)) = managed {
        let stopped = server.lock().await.stop().await;
        drop(server);
        if let Err(e) = stopped {
            eprintln!("moltops-bench: stopping the server at the end: {e}");
        }
        cleanup(&args, &name, &data_dir).await;
    }
    result
}

/// Drops the spawned server's database and data directory, unless --keep-database.
async fn cleanup(args: &RunArgs, name: &str, data_dir: &std::path::Path) {
    if args.keep_database {
        println!(
            "moltops-bench: kept database {name} and {}",
            data_dir.display()
        );
        return;
    }
    if let Err(e) = server::drop_database(&args.database_url, name).await {
        eprintln!("moltops-bench: {e}");
    }
    let _ = std::fs::remove_dir_all(data_dir);
}

async fn run_with(
    args: &RunArgs,
    run_id: String,
    deadline: Duration,
    managed: Option<&Arc<tokio::sync::Mutex<ManagedServer>>>,
) -> anyhow::Result<()> {
    let (server_http, server_grpc, ca_pin, token, server_pid, control_plane) = match managed {
        Some(server) => {
            let s = server.lock().await;
            let control: Arc<dyn ControlPlane> = Arc::new(SharedServer(server.clone()));
            (
                s.http_url(),
                s.agent_address(),
                Some(s.ca_pin().to_owned()),
                s.create_owner_token()?,
                s.pid(),
                Some(control),
            )
        }
        None => (
            args.server_http.clone(),
            args.server_grpc.clone(),
            args.ca_pin.clone(),
            args.token
                .clone()
                .context("--token (or MOLTOPS_TOKEN) is required without --spawn-server")?,
            args.server_pid,
            None,
        ),
    };
    let config = RunConfig {
        server_http,
        server_grpc,
        ca_pin,
        token,
        agents: args.agents,
        concurrency: args.concurrency,
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        heartbeat_override: args.heartbeat_seconds.map(Duration::from_secs),
        scenarios: args.scenario.clone(),
        server_pid,
        steady_window: Duration::from_secs(args.steady_seconds),
        fanout_commands: args.fanout.clone(),
        api_requests: args.api_requests,
        api_concurrency: args.api_concurrency,
        audit_events: args.audit_events,
        audit_concurrency: args.audit_concurrency,
        deadline,
        run_id,
        control_plane,
    };
    println!(
        "moltops-bench run {}: {} simulated agents against {} / {} (nodes labelled {})",
        config.run_id,
        config.agents,
        config.server_http,
        config.server_grpc,
        config.selector()
    );
    let print = |line: &str| println!("{line}");
    if config.scenarios.contains(&Scenario::All) && config.control_plane.is_none() {
        println!(
            "restart    not run: it needs a control plane the bench can restart (--spawn-server)"
        );
    }
    let (report, outcome) = scenario::run(&config, &print).await;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    let c = &report.agent_counters;
    if c.streams_opened > 0 {
        println!(
            "agents     {} streams opened, {} connect failures, {} refused by the server, {} unexpected disconnects, {} heartbeats, {} commands received, {} executed, {} answered from the journal",
            c.streams_opened,
            c.connect_failures,
            c.server_refusals,
            c.unexpected_disconnects,
            c.heartbeats,
            c.commands_received,
            c.executions,
            c.journal_answers
        );
    }
    outcome?;
    let mut verdict = format!("OK: all {} agents enrolled", report.agents);
    if report.connect.is_some() {
        verdict.push_str(" and connected");
    }
    if c.commands_received > 0 {
        verdict.push_str("; every command executed exactly once");
    }
    println!("{verdict}");
    Ok(())
}
