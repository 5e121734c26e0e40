//! A whole run: enroll the fleet, connect it, then the chosen scenarios in a fixed order (steady,
//! fanout, api, reconnect, restart — the disruptive ones last), each adding its figures to the
//! [`Report`].
//! Any correctness failure ends the run with an error; the figures gathered so far stay in the
//! report.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::agent::{AgentOptions, CountersSnapshot};
use crate::error::{BenchError, BenchResult};
use crate::fanout::{FanoutCommand, FanoutFigures, FanoutOptions, fanout};
use crate::fleet::{self, EnrollFigures, EnrollPlan, Fleet, FleetOptions};
use crate::procfs::{self, Pid, ProcessSample};
use crate::rest::Api;
use crate::stats::Summary;

/// The label every simulated node carries, with the run's id as its value.
pub const RUN_LABEL: &str = "moltops-bench";

/// Sockets and files the bench needs besides one per agent (REST pool, runtime, stdio).
const SPARE_FILES: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Enroll N agents (and stop there, unless other scenarios follow).
    Enroll,
    /// All N connected: the control plane's RSS and CPU over a window, and the bench's own RSS.
    Steady,
    /// One job per node through REST, until every result is recorded; exactly once.
    Fanout,
    /// `GET /v1/nodes?limit=100&selector=…` latency, idle and while a fan-out runs.
    Api,
    /// Audited changes (label updates) from many clients at once: appended events/s, then the
    /// whole hash chain verified intact.
    Audit,
    /// Drop every stream: time until all are back; then a fan-out with every agent dropping its
    /// stream mid-command (redelivered, answered from the journal, run once).
    Reconnect,
    /// Restart the control plane (SIGTERM, drain, start again) with every agent connected: time
    /// until all are back, its CPU meanwhile, refusals; then a ping fan-out, exactly once. Needs a
    /// control plane the bench can restart (`--spawn-server`).
    Restart,
    /// Every scenario above (restart only with a control plane the bench can restart).
    All,
}

/// A boxed future, for [`ControlPlane`]'s methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A control plane the bench can stop and start again (same addresses, database and CA).
pub trait ControlPlane: Send + Sync + std::fmt::Debug {
    /// SIGTERM, then wait until the process exited; how long that took.
    fn stop(&self) -> BoxFuture<'_, BenchResult<Duration>>;
    /// Start it again and wait until it is ready; its new pid.
    fn start(&self) -> BoxFuture<'_, BenchResult<u32>>;
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// REST base URL, e.g. `http://127.0.0.1:7337`.
    pub server_http: String,
    /// Agent port as agents dial it, e.g. `localhost:7338`.
    pub server_grpc: String,
    /// `sha256:<hex>`; none: the pin the control plane reports when the enrollment token is made.
    pub ca_pin: Option<String>,
    /// An owner or admin API token.
    pub token: String,
    pub agents: usize,
    /// Enrollments, first connections and REST create requests in flight at once.
    pub concurrency: usize,
    /// Labels for every simulated node, besides `moltops-bench=<run id>`.
    pub labels: BTreeMap<String, String>,
    pub heartbeat_override: Option<Duration>,
    pub scenarios: Vec<Scenario>,
    /// The control plane's process, for its RSS and CPU (same host only).
    pub server_pid: Option<u32>,
    pub steady_window: Duration,
    pub fanout_commands: Vec<FanoutCommand>,
    pub api_requests: usize,
    pub api_concurrency: usize,
    /// The audit scenario's audited changes, and how many clients send them at once.
    pub audit_events: usize,
    pub audit_concurrency: usize,
    /// The longest any single wait may take.
    pub deadline: Duration,
    /// The run's id (the `moltops-bench` label's value).
    pub run_id: String,
    /// The control plane, when the bench can restart it (the restart scenario).
    pub control_plane: Option<Arc<dyn ControlPlane>>,
}

impl RunConfig {
    fn wants(&self, scenario: Scenario) -> bool {
        if scenario == Scenario::Restart && !self.scenarios.contains(&Scenario::Restart) {
            // `all` includes it only where it can run.
            return self.scenarios.contains(&Scenario::All) && self.control_plane.is_some();
        }
        self.scenarios.contains(&scenario) || self.scenarios.contains(&Scenario::All)
    }

    fn connects(&self) -> bool {
        [
            Scenario::Steady,
            Scenario::Fanout,
            Scenario::Api,
            Scenario::Audit,
            Scenario::Reconnect,
            Scenario::Restart,
        ]
        .into_iter()
        .any(|s| self.wants(s))
    }

    pub fn selector(&self) -> String {
        format!("{RUN_LABEL}={}", self.run_id)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectFigures {
    pub ramp_concurrency: usize,
    /// Until every agent's stream was acknowledged (HelloAck).
    pub all_acknowledged_s: f64,
    /// Until the API listed every node online.
    pub all_online_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerProcessFigures {
    pub pid: u32,
    pub rss_at_start_bytes: u64,
    pub rss_before_streams_bytes: u64,
    pub rss_min_bytes: u64,
    pub rss_mean_bytes: u64,
    pub rss_max_bytes: u64,
    /// (mean RSS over the window − RSS before the streams) / agents.
    pub bytes_per_agent: f64,
    /// CPU over the window; 100 = one core busy.
    pub cpu_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SteadyFigures {
    pub agents: usize,
    pub window_s: f64,
    pub samples: usize,
    pub server: Option<ServerProcessFigures>,
    pub bench_rss_before_fleet_bytes: u64,
    pub bench_rss_connected_bytes: u64,
    /// (bench RSS with every stream up − before the fleet started) / agents.
    pub bench_bytes_per_agent: f64,
    pub heartbeats_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiFigures {
    pub requests: usize,
    pub concurrency: usize,
    pub idle: Summary,
    /// The same requests, started together with a fan-out.
    pub during_fanout: Summary,
    /// How many of those finished before the fan-out's last result was recorded.
    pub finished_during_fanout: usize,
    pub fanout: FanoutFigures,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditFigures {
    /// Audited changes sent (label updates, each one chained audit row).
    pub events: usize,
    pub concurrency: usize,
    pub total_s: f64,
    pub events_per_s: f64,
    /// One change's round trip.
    pub latency: Summary,
    /// The chain's head before and after: it grew by at least `events`.
    pub head_seq_before: i64,
    pub head_seq_after: i64,
    /// The whole chain verified afterwards: intact, how many rows, how long the walk took.
    pub chain_ok: bool,
    pub rows_checked: i64,
    pub verify_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReconnectFigures {
    pub agents: usize,
    /// From the drop until every agent's new stream was acknowledged.
    pub all_back_s: f64,
    /// From the drop until the API listed every node online again.
    pub all_online_s: f64,
    /// Stream requests the control plane answered with an error status until all were back.
    pub refused: u64,
    /// A ping fan-out during which every agent dropped its stream after running the command and
    /// before sending the result.
    pub mid_command: FanoutFigures,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartFigures {
    pub agents: usize,
    /// SIGTERM until the old process exited (it drains first).
    pub stop_s: f64,
    /// Start of the new process until it logged that it was ready (migrations checked, CA
    /// loaded, ports bound).
    pub start_s: f64,
    /// From SIGTERM until every agent's new stream was acknowledged.
    pub all_back_after_sigterm_s: f64,
    /// From the new process's start until every agent's new stream was acknowledged.
    pub all_back_after_start_s: f64,
    /// From the new process's start until the API listed every node online.
    pub all_online_after_start_s: f64,
    /// The new process's CPU over quarter-second intervals until all were back: the highest
    /// and the mean (100 = one core busy).
    pub cpu_peak_percent: f64,
    pub cpu_mean_percent: f64,
    /// Its RSS when every agent was back.
    pub rss_after_bytes: u64,
    /// Stream requests the new process answered with an error status (a refused agent).
    pub refused_by_new_server: u64,
    /// Connection attempts that failed at the transport (mostly while no process listened).
    pub transport_failures: u64,
    /// A ping fan-out once all were back: exactly once.
    pub after: Option<FanoutFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: String,
    pub selector: String,
    pub agents: usize,
    pub concurrency: usize,
    pub server_http: String,
    pub server_grpc: String,
    pub heartbeat_override_s: Option<u64>,
    pub open_files_limit: Option<u64>,
    pub enroll: Option<EnrollFigures>,
    pub connect: Option<ConnectFigures>,
    pub steady: Option<SteadyFigures>,
    pub fanouts: Vec<FanoutFigures>,
    pub api: Option<ApiFigures>,
    pub audit: Option<AuditFigures>,
    pub reconnect: Option<ReconnectFigures>,
    pub restart: Option<RestartFigures>,
    pub agent_counters: CountersSnapshot,
    /// Why the run failed, if it did.
    pub error: Option<String>,
}

/// Runs the configured scenarios. The report is returned whether or not the run succeeded;
/// `log` receives one line per finished step.
pub async fn run(config: &RunConfig, log: &(dyn Fn(&str) + Sync)) -> (Report, BenchResult<()>) {
    let mut report = Report {
        run_id: config.run_id.clone(),
        selector: config.selector(),
        agents: config.agents,
        concurrency: config.concurrency,
        server_http: config.server_http.clone(),
        server_grpc: config.server_grpc.clone(),
        heartbeat_override_s: config.heartbeat_override.map(|d| d.as_secs()),
        open_files_limit: procfs::open_files_limit(Pid::This),
        enroll: None,
        connect: None,
        steady: None,
        fanouts: Vec::new(),
        api: None,
        audit: None,
        reconnect: None,
        restart: None,
        agent_counters: CountersSnapshot::default(),
        error: None,
    };
    let mut fleet = None;
    let result = run_steps(config, log, &mut report, &mut fleet).await;
    if let Some(fleet) = fleet {
        report.agent_counters = fleet.counters();
        fleet.shutdown().await;
    }
    if let Err(e) = &result {
        report.error = Some(e.to_string());
    }
    (report, result)
}

async fn run_steps(
    config: &RunConfig,
    log: &(dyn Fn(&str) + Sync),
    report: &mut Report,
    fleet_slot: &mut Option<Fleet>,
) -> BenchResult<()> {
    preflight(config)?;
    let api = Api::new(&config.server_http, &config.token)?;
    let selector = config.selector();
    let server_at_start = config
        .server_pid
        .map(|p| procfs::sample(Pid::Other(p)))
        .transpose()?;

    // Enroll.
    let mut labels = config.labels.clone();
    labels.insert(RUN_LABEL.to_owned(), config.run_id.clone());
    let (tokens, reported_pin) = fleet::create_tokens(
        &api,
        &labels,
        config.agents,
        Duration::from_secs(3600).max(config.deadline),
    )
    .await?;
    let pin_text = config.ca_pin.clone().unwrap_or(reported_pin);
    let ca_pin = moltops_agent::tls::parse_pin(&pin_text)
        .map_err(|e| BenchError::Config(format!("{e:#}")))?;
    let plan = EnrollPlan {
        server_grpc: config.server_grpc.clone(),
        ca_pin,
        tokens,
        agents: config.agents,
        concurrency: config.concurrency,
        hostname_prefix: format!("bench-{}", config.run_id),
    };
    let (identities, enrolled) = fleet::enroll_all(&plan).await?;
    log(&format!(
        "enroll     {} agents in {:.2} s ({:.1}/s, {} at a time); one enrollment {}",
        enrolled.agents,
        enrolled.total_s,
        enrolled.per_second,
        enrolled.concurrency,
        enrolled.latency.brief()
    ));
    report.enroll = Some(enrolled);
    if !config.connects() {
        return Ok(());
    }

    // Connect.
    let server_before_streams = config
        .server_pid
        .map(|p| procfs::sample(Pid::Other(p)))
        .transpose()?;
    let bench_before_fleet = procfs::sample(Pid::This)?;
    let started = Instant::now();
    let fleet = fleet_slot.insert(Fleet::start(
        &identities,
        FleetOptions {
            server_grpc: config.server_grpc.clone(),
            ramp_concurrency: config.concurrency,
            agent: AgentOptions {
                heartbeat_override: config.heartbeat_override,
                ..AgentOptions::default()
            },
        },
    )?);
    // The keys now live in the agents' TLS configurations only.
    drop(identities);
    let acknowledged = fleet.wait_connected(config.deadline).await?;
    fleet::wait_online(&api, &selector, config.agents, config.deadline).await?;
    let online = started.elapsed();
    log(&format!(
        "connect    {} streams acknowledged after {:.2} s ({} connecting at a time); all online per the API after {:.2} s",
        config.agents,
        acknowledged.as_secs_f64(),
        config.concurrency,
        online.as_secs_f64()
    ));
    report.connect = Some(ConnectFigures {
        ramp_concurrency: config.concurrency,
        all_acknowledged_s: acknowledged.as_secs_f64(),
        all_online_s: online.as_secs_f64(),
    });

    if config.wants(Scenario::Steady) {
        let figures = steady(
            config,
            &api,
            fleet,
            server_at_start,
            server_before_streams,
            bench_before_fleet,
        )
        .await?;
        log(&steady_line(&figures));
        report.steady = Some(figures);
    }

    if config.wants(Scenario::Fanout) {
        for (round, command) in config.fanout_commands.iter().enumerate() {
            let figures = fanout(
                &api,
                fleet,
                &fanout_options(config, *command, &format!("fanout{round}"), false),
            )
            .await?;
            log(&format!("fanout     {}", figures.brief()));
            let checked = figures.check();
            report.fanouts.push(figures);
            checked?;
        }
    }

    if config.wants(Scenario::Api) {
        let figures = api_scenario(config, &api, fleet).await?;
        log(&format!(
            "api        GET /v1/nodes?limit=100&selector={selector}: idle {}; during a ping fan-out {} ({} finished before its last result)",
            figures.idle.brief(),
            figures.during_fanout.brief(),
            figures.finished_during_fanout
        ));
        log(&format!(
            "api        (its fan-out) {}",
            figures.fanout.brief()
        ));
        let checked = figures.fanout.check();
        report.api = Some(figures);
        checked?;
    }

    if config.wants(Scenario::Audit) {
        let figures = audit_scenario(config, &api, fleet.node_ids()).await?;
        log(&format!(
            "audit      {} audited changes, {} clients at a time: {:.2} s, {:.0} events/s; one change {}; chain {} → {}, verified {} ({} rows in {:.2} s)",
            figures.events,
            figures.concurrency,
            figures.total_s,
            figures.events_per_s,
            figures.latency.brief(),
            figures.head_seq_before,
            figures.head_seq_after,
            if figures.chain_ok { "intact" } else { "BROKEN" },
            figures.rows_checked,
            figures.verify_s
        ));
        let ok = figures.chain_ok;
        let grew = figures.head_seq_after - figures.head_seq_before;
        report.audit = Some(figures);
        if !ok {
            return Err(BenchError::Fleet {
                what: "verifying the audit chain after the audit scenario".into(),
                problem: "GET /v1/audit/verify says the chain is broken".into(),
            });
        }
        if grew < config.audit_events as i64 {
            return Err(BenchError::Fleet {
                what: "the audit scenario".into(),
                problem: format!(
                    "{} audited changes succeeded but the chain grew by {grew} rows",
                    config.audit_events
                ),
            });
        }
    }

    if config.wants(Scenario::Reconnect) {
        let before = fleet.counters();
        let dropped = Instant::now();
        fleet.drop_all();
        let back = fleet.wait_connected(config.deadline).await?;
        let refused = fleet.counters().server_refusals - before.server_refusals;
        fleet::wait_online(&api, &selector, config.agents, config.deadline).await?;
        let online = dropped.elapsed();
        fleet.drop_mid_next_command();
        let mid_command = fanout(
            &api,
            fleet,
            &fanout_options(config, FanoutCommand::Ping, "reconnect", true),
        )
        .await?;
        log(&format!(
            "reconnect  {} streams dropped: all acknowledged again after {:.2} s, all online per the API after {:.2} s; {refused} stream requests refused meanwhile",
            config.agents,
            back.as_secs_f64(),
            online.as_secs_f64()
        ));
        log(&format!(
            "reconnect  every agent dropping its stream mid-command: {}",
            mid_command.brief()
        ));
        let checked = mid_command.check();
        report.reconnect = Some(ReconnectFigures {
            agents: config.agents,
            all_back_s: back.as_secs_f64(),
            all_online_s: online.as_secs_f64(),
            refused,
            mid_command,
        });
        checked?;
    }

    if config.wants(Scenario::Restart) {
        let Some(control_plane) = &config.control_plane else {
            return Err(BenchError::Config(
                "the restart scenario needs a control plane the bench can restart (--spawn-server)"
                    .into(),
            ));
        };
        let figures = restart(config, &api, fleet, control_plane.as_ref()).await?;
        log(&format!(
            "restart    SIGTERM → exited in {:.2} s; new process ready in {:.2} s; all {} back {:.2} s after its start ({:.2} s after SIGTERM), all online per the API after {:.2} s; its CPU peak {:.0} % mean {:.0} % of a core; RSS {:.1} MiB; {} refused by the new process, {} transport failures while it was down",
            figures.stop_s,
            figures.start_s,
            figures.agents,
            figures.all_back_after_start_s,
            figures.all_back_after_sigterm_s,
            figures.all_online_after_start_s,
            figures.cpu_peak_percent,
            figures.cpu_mean_percent,
            mib(figures.rss_after_bytes),
            figures.refused_by_new_server,
            figures.transport_failures
        ));
        let figures = report.restart.insert(figures);
        let after = fanout(
            &api,
            fleet,
            &fanout_options(config, FanoutCommand::Ping, "restart", false),
        )
        .await?;
        log(&format!("restart    (then) {}", after.brief()));
        let checked = after.check();
        figures.after = Some(after);
        checked?;
    }
    report.agent_counters = fleet.counters();
    Ok(())
}

/// The control plane restarts with every agent connected: the old process drains and exits, a
/// new one starts on the same addresses, and every agent reconnects on its own backoff.
async fn restart(
    config: &RunConfig,
    api: &Api,
    fleet: &Fleet,
    control_plane: &dyn ControlPlane,
) -> BenchResult<RestartFigures> {
    let sigterm = Instant::now();
    let stop = control_plane.stop().await?;
    // Every stream is gone with the old process; count acknowledgements from here.
    fleet.drop_all();
    let before = fleet.counters();
    let started = Instant::now();
    let pid = control_plane.start().await?;
    let start = started.elapsed();
    let at_start = fleet.counters();
    // Sample the new process's CPU every quarter second until every agent is back.
    let sampling = moltops_agent::run::tokio_util_shim::CancellationToken::new();
    let sampler = {
        let stop = sampling.clone();
        tokio::spawn(async move {
            let mut intervals = Vec::new();
            let mut last = procfs::sample(Pid::Other(pid)).ok();
            let mut last_at = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Ok(now) = procfs::sample(Pid::Other(pid)) else {
                    break;
                };
                if let Some(prev) = last {
                    let ticks = now.cpu_ticks.saturating_sub(prev.cpu_ticks);
                    let seconds = last_at.elapsed().as_secs_f64();
                    if seconds > 0.0 {
                        intervals
                            .push(ticks as f64 / procfs::TICKS_PER_SECOND as f64 / seconds * 100.0);
                    }
                }
                last = Some(now);
                last_at = Instant::now();
            }
            intervals
        })
    };
    let back = fleet.wait_connected(config.deadline).await;
    let back_at = started.elapsed();
    let back_since_sigterm = sigterm.elapsed();
    sampling.cancel();
    let intervals = sampler.await.unwrap_or_default();
    back?;
    let selector = config.selector();
    fleet::wait_online(api, &selector, config.agents, config.deadline).await?;
    let online = started.elapsed();
    let after_back = fleet.counters();
    let rss_after = procfs::sample(Pid::Other(pid))?.rss_bytes;
    let peak = intervals.iter().copied().fold(0.0_f64, f64::max);
    let mean = if intervals.is_empty() {
        0.0
    } else {
        intervals.iter().sum::<f64>() / intervals.len() as f64
    };
    Ok(RestartFigures {
        agents: config.agents,
        stop_s: stop.as_secs_f64(),
        start_s: start.as_secs_f64(),
        all_back_after_sigterm_s: back_since_sigterm.as_secs_f64(),
        all_back_after_start_s: back_at.as_secs_f64(),
        all_online_after_start_s: online.as_secs_f64(),
        cpu_peak_percent: peak,
        cpu_mean_percent: mean,
        rss_after_bytes: rss_after,
        refused_by_new_server: after_back.server_refusals - at_start.server_refusals,
        transport_failures: after_back.connect_failures - before.connect_failures,
        after: None,
    })
}

fn fanout_options(
    config: &RunConfig,
    command: FanoutCommand,
    round: &str,
    expect_redelivery: bool,
) -> FanoutOptions {
    FanoutOptions {
        selector: config.selector(),
        command,
        concurrency: config.concurrency,
        deadline: config.deadline,
        round: format!("bench-{}-{round}", config.run_id),
        expect_redelivery,
    }
}

/// Refuses a run that cannot work, before anything is created.
fn preflight(config: &RunConfig) -> BenchResult<()> {
    if config.agents == 0 {
        return Err(BenchError::Config("--agents must be at least 1".into()));
    }
    if config.scenarios.is_empty() {
        return Err(BenchError::Config("no scenario given".into()));
    }
    // One socket per agent on each side: a process out of descriptors fails in ways that look
    // like the control plane's fault (refused handshakes, accept errors).
    let needed = config.agents as u64 + SPARE_FILES;
    if let Some(limit) = procfs::open_files_limit(Pid::This)
        && needed > limit
    {
        return Err(BenchError::Config(format!(
            "{} agents need about {needed} open files (one socket each) but this process may open {limit}: raise it with `ulimit -n {needed}` (the control plane needs as many)",
            config.agents
        )));
    }
    if let Some(pid) = config.server_pid
        && let Some(limit) = procfs::open_files_limit(Pid::Other(pid))
        && needed > limit
    {
        return Err(BenchError::Config(format!(
            "{} agents need about {needed} open files in the control plane (pid {pid}) but it may open {limit}: restart it after `ulimit -n {needed}`",
            config.agents
        )));
    }
    if let Some(pin) = &config.ca_pin {
        moltops_agent::tls::parse_pin(pin).map_err(|e| BenchError::Config(format!("{e:#}")))?;
    }
    Ok(())
}

async fn steady(
    config: &RunConfig,
    api: &Api,
    fleet: &Fleet,
    server_at_start: Option<ProcessSample>,
    server_before_streams: Option<ProcessSample>,
    bench_before_fleet: ProcessSample,
) -> BenchResult<SteadyFigures> {
    let window = config.steady_window;
    let every = Duration::from_secs(1).min(window.max(Duration::from_millis(100)));
    let disconnects_before = fleet.counters().unexpected_disconnects;
    let heartbeats_before = fleet.counters().heartbeats;
    let started = Instant::now();
    let mut server_samples = Vec::new();
    let mut bench_samples = Vec::new();
    loop {
        if let Some(pid) = config.server_pid {
            server_samples.push(procfs::sample(Pid::Other(pid))?);
        }
        bench_samples.push(procfs::sample(Pid::This)?);
        if started.elapsed() >= window {
            break;
        }
        // Pacing the samples of a measurement window, not waiting for a state.
        tokio::time::sleep(every.min(window.saturating_sub(started.elapsed()))).await;
    }
    let elapsed = started.elapsed();
    let heartbeats = fleet.counters().heartbeats - heartbeats_before;
    let disconnects = fleet.counters().unexpected_disconnects - disconnects_before;
    if disconnects > 0 {
        return Err(BenchError::Fleet {
            what: "holding every stream through the steady window".into(),
            problem: format!(
                "{disconnects} streams closed unexpectedly; {}",
                fleet.not_connected_summary()
            ),
        });
    }
    let online = api.nodes(&config.selector(), Some("online")).await?.len();
    if online != config.agents {
        return Err(BenchError::Fleet {
            what: "the steady window".into(),
            problem: format!(
                "the API lists {online} of {} nodes online at its end",
                config.agents
            ),
        });
    }
    let agents = config.agents as f64;
    let server = match (config.server_pid, server_at_start, server_before_streams) {
        (Some(pid), Some(at_start), Some(before)) if !server_samples.is_empty() => {
            let rss: Vec<u64> = server_samples.iter().map(|s| s.rss_bytes).collect();
            let mean = rss.iter().sum::<u64>() / rss.len() as u64;
            let first = server_samples[0];
            let last = server_samples[server_samples.len() - 1];
            let cpu_seconds =
                (last.cpu_ticks - first.cpu_ticks) as f64 / procfs::TICKS_PER_SECOND as f64;
            Some(ServerProcessFigures {
                pid,
                rss_at_start_bytes: at_start.rss_bytes,
                rss_before_streams_bytes: before.rss_bytes,
                rss_min_bytes: rss.iter().copied().min().unwrap_or(0),
                rss_mean_bytes: mean,
                rss_max_bytes: rss.iter().copied().max().unwrap_or(0),
                bytes_per_agent: (mean as f64 - before.rss_bytes as f64) / agents,
                cpu_percent: 100.0 * cpu_seconds / elapsed.as_secs_f64().max(f64::EPSILON),
            })
        }
        _ => None,
    };
    let bench_connected = bench_samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
    Ok(SteadyFigures {
        agents: config.agents,
        window_s: elapsed.as_secs_f64(),
        samples: bench_samples.len(),
        server,
        bench_rss_before_fleet_bytes: bench_before_fleet.rss_bytes,
        bench_rss_connected_bytes: bench_connected,
        bench_bytes_per_agent: (bench_connected as f64 - bench_before_fleet.rss_bytes as f64)
            / agents,
        heartbeats_per_s: heartbeats as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn steady_line(f: &SteadyFigures) -> String {
    let server = match &f.server {
        Some(s) => format!(
            "control plane RSS {:.1} MiB (min {:.1}, max {:.1}; {:.1} MiB before the streams, {:.1} MiB at start) = {:.1} KiB per connected agent, CPU {:.1} % of a core",
            mib(s.rss_mean_bytes),
            mib(s.rss_min_bytes),
            mib(s.rss_max_bytes),
            mib(s.rss_before_streams_bytes),
            mib(s.rss_at_start_bytes),
            s.bytes_per_agent / 1024.0,
            s.cpu_percent
        ),
        None => "control plane not sampled (no --server-pid)".to_owned(),
    };
    format!(
        "steady     {} agents over {:.1} s: {server}; {:.1} heartbeats/s; bench RSS {:.1} MiB = {:.1} KiB per simulated agent",
        f.agents,
        f.window_s,
        f.heartbeats_per_s,
        mib(f.bench_rss_connected_bytes),
        f.bench_bytes_per_agent / 1024.0
    )
}

/// `GET /v1/nodes?limit=100&selector=…` timed: `requests` of them idle, then as many again
/// started together with a ping fan-out.
async fn api_scenario(config: &RunConfig, api: &Api, fleet: &Fleet) -> BenchResult<ApiFigures> {
    let selector = config.selector();
    let idle = list_latencies(api, &selector, config.api_requests, config.api_concurrency).await?;
    let options = fanout_options(config, FanoutCommand::Ping, "api", false);
    let (fanned, during) = tokio::join!(
        fanout(api, fleet, &options),
        list_latencies(api, &selector, config.api_requests, config.api_concurrency)
    );
    let fanned = fanned?;
    let during = during?;
    let finished_during = during
        .iter()
        .filter(|(_, end)| *end <= fanned.finished_at)
        .count();
    let took =
        |v: &[(Instant, Instant)]| -> Vec<Duration> { v.iter().map(|(a, b)| *b - *a).collect() };
    Ok(ApiFigures {
        requests: config.api_requests,
        concurrency: config.api_concurrency,
        idle: Summary::of(&took(&idle)),
        during_fanout: Summary::of(&took(&during)),
        finished_during_fanout: finished_during,
        fanout: fanned,
    })
}

/// `audit_events` label updates over the fleet's nodes (each keeps the run's labels and adds
/// `moltops-bench-audit=<n>`), `audit_concurrency` at a time, then a walk of the whole chain.
async fn audit_scenario(
    config: &RunConfig,
    api: &Api,
    nodes: &[uuid::Uuid],
) -> BenchResult<AuditFigures> {
    if nodes.is_empty() {
        return Err(BenchError::Config(
            "the audit scenario needs enrolled nodes".into(),
        ));
    }
    let before = api.verify_audit().await?;
    let mut base = config.labels.clone();
    base.insert(RUN_LABEL.to_owned(), config.run_id.clone());
    let nodes: Arc<Vec<uuid::Uuid>> = Arc::new(nodes.to_vec());
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..config.audit_concurrency.max(1) {
        let (api, nodes, issued, base) = (api.clone(), nodes.clone(), issued.clone(), base.clone());
        let events = config.audit_events;
        workers.spawn(async move {
            let mut times = Vec::new();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= events {
                    break;
                }
                let mut labels = base.clone();
                labels.insert("moltops-bench-audit".to_owned(), n.to_string());
                let node = nodes[n % nodes.len()];
                let start = Instant::now();
                api.set_labels(node, &labels).await?;
                times.push(start.elapsed());
            }
            Ok::<_, BenchError>(times)
        });
    }
    let mut latencies = Vec::with_capacity(config.audit_events);
    while let Some(joined) = workers.join_next().await {
        latencies.extend(joined.map_err(|e| BenchError::Fleet {
            what: "sending audited changes".into(),
            problem: e.to_string(),
        })??);
    }
    let total = started.elapsed();
    let verify_started = Instant::now();
    let after = api.verify_audit().await?;
    let verify = verify_started.elapsed();
    Ok(AuditFigures {
        events: config.audit_events,
        concurrency: config.audit_concurrency,
        total_s: total.as_secs_f64(),
        events_per_s: config.audit_events as f64 / total.as_secs_f64().max(f64::EPSILON),
        latency: Summary::of(&latencies),
        head_seq_before: before.head_seq,
        head_seq_after: after.head_seq,
        chain_ok: after.ok,
        rows_checked: after.rows_checked,
        verify_s: verify.as_secs_f64(),
    })
}

/// `requests` page reads, `concurrency` at a time: each one's (start, end).
async fn list_latencies(
    api: &Api,
    selector: &str,
    requests: usize,
    concurrency: usize,
) -> BenchResult<Vec<(Instant, Instant)>> {
    let issued = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let api = api.clone();
        let selector = selector.to_owned();
        let issued = issued.clone();
        workers.spawn(async move {
            let mut times = Vec::new();
            while issued.fetch_add(1, Ordering::Relaxed) < requests {
                let start = Instant::now();
                api.list_nodes_page(&selector).await?;
                times.push((start, Instant::now()));
            }
            Ok::<_, BenchError>(times)
        });
    }
    let mut all = Vec::with_capacity(requests);
    while let Some(joined) = workers.join_next().await {
        let times = joined.map_err(|e| BenchError::Fleet {
            what: "timing GET /v1/nodes".into(),
            problem: e.to_string(),
        })??;
        all.extend(times);
    }
    Ok(all)
}
