//! `moltops-agent enroll …` and `moltops-agent run …`.
//!
//! Exit codes of `run`: 0 after SIGTERM/SIGINT, 3 when the node was revoked, 4 when the
//! certificate expired before it could be renewed (both need a new enrollment), 2 for a flag
//! clap refuses, 1 otherwise (including a `--service-manager` this host cannot honour, refused
//! before anything connects).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use moltops_agent::enroll::{EnrollOptions, enroll};
use moltops_agent::managed::ManagedGateway;
use moltops_agent::run::tokio_util_shim::CancellationToken;
use moltops_agent::run::{RunEnd, RunOptions, run};
use moltops_agent::service::{HostProbe, ServiceKind, select};
use moltops_agent::state::StateDir;

#[derive(Parser)]
#[command(name = "moltops-agent", version, about = "The moltops node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this host with a one-time token.
    Enroll {
        /// The control plane's agent address, host:port.
        #[arg(long)]
        server: String,
        /// The one-time enrollment token (or --token-file, or MOLTOPS_ENROLL_TOKEN).
        #[arg(
            long,
            env = "MOLTOPS_ENROLL_TOKEN",
            hide_env_values = true,
            required_unless_present = "token_file"
        )]
        token: Option<String>,
        /// Read the token from this file ("-" for standard input), keeping it out of shell
        /// history and the process list.
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// sha256:<hex> of the control plane's CA certificate.
        #[arg(long)]
        ca_pin: String,
        #[arg(
            long,
            env = "MOLTOPS_AGENT_STATE_DIR",
            default_value = "/var/lib/moltops-agent"
        )]
        state_dir: PathBuf,
    },
    /// Connect and serve commands until stopped.
    Run {
        #[arg(
            long,
            env = "MOLTOPS_AGENT_STATE_DIR",
            default_value = "/var/lib/moltops-agent"
        )]
        state_dir: PathBuf,
        /// Upper bound of the reconnect delay.
        #[arg(long, default_value_t = 30)]
        max_backoff_seconds: u64,
        /// The managed gateway's loopback port (default: the product's, 18789 for OpenClaw,
        /// 13131 for Moltis).
        #[arg(long, env = "MOLTOPS_GATEWAY_PORT")]
        gateway_port: Option<u16>,
        /// Which gateway product this host runs: its package, run arguments, configuration file
        /// and readiness endpoint.
        #[arg(
            long,
            env = "MOLTOPS_GATEWAY_PRODUCT",
            default_value = "openclaw",
            value_parser = ["openclaw", "moltis"]
        )]
        gateway_product: String,
        /// What runs the gateway: auto (chosen from the host), supervisor (built in), systemd,
        /// systemd-user, launchd or docker. An explicit choice this host cannot honour stops the
        /// agent at start with the reason.
        #[arg(
            long,
            env = "MOLTOPS_SERVICE_MANAGER",
            default_value = "auto",
            value_parser = parse_service_manager
        )]
        service_manager: ServiceManagerChoice,
        /// The image repository docker installs pull from (default: the product's published
        /// one; Moltis has none known, so name it here).
        #[arg(long, env = "MOLTOPS_GATEWAY_IMAGE")]
        gateway_image: Option<String>,
        /// Install this package tarball instead of OpenClaw from the registry (the scenario
        /// gateway for tests and demos).
        #[arg(long, env = "MOLTOPS_GATEWAY_PACKAGE_FILE")]
        gateway_package_file: Option<PathBuf>,
        /// npm's download cache for installs (default: <state-dir>/npm-cache).
        #[arg(long, env = "MOLTOPS_NPM_CACHE")]
        npm_cache: Option<PathBuf>,
        /// How long a stopping gateway gets after SIGTERM before SIGKILL (upstream's unit: 330).
        #[arg(long, default_value_t = 330)]
        gateway_stop_timeout_seconds: u64,
        /// The first delay before restarting a gateway that exited; it doubles up to 300 s
        /// (upstream's unit: RestartSec=5).
        #[arg(long, default_value_t = 5000)]
        gateway_restart_delay_ms: u64,
        /// Bytes an install may move through the egress proxy before it is cut (default 2 GiB).
        #[arg(long, env = "MOLTOPS_INSTALL_BYTE_BUDGET", default_value_t = 2 * 1024 * 1024 * 1024)]
        install_byte_budget: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOLTOPS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Enroll {
            server,
            token,
            token_file,
            ca_pin,
            state_dir,
        } => {
            let result = async {
                let token = match (token, token_file) {
                    (Some(token), _) => token,
                    (None, Some(path)) => read_token(&path)?,
                    (None, None) => anyhow::bail!("--token or --token-file is required"),
                };
                let state = StateDir::open(&state_dir)?;
                enroll(
                    &state,
                    &EnrollOptions {
                        server,
                        token,
                        ca_pin,
                    },
                )
                .await
            }
            .await;
            match result {
                Ok(node) => {
                    println!("enrolled as node {}", node.node_id);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("moltops-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            state_dir,
            max_backoff_seconds,
            gateway_port,
            gateway_product,
            service_manager,
            gateway_image,
            gateway_package_file,
            npm_cache,
            gateway_stop_timeout_seconds,
            gateway_restart_delay_ms,
            install_byte_budget,
        } => {
            // Resolved once, before anything connects: a choice this host cannot honour is an
            // operator's mistake to fix now, not a failure to discover at the first install.
            let product: &'static dyn ManagedGateway =
                match moltops_agent::managed::by_name(&gateway_product) {
                    Ok(product) => product,
                    Err(e) => {
                        eprintln!("moltops-agent: --gateway-product: {e}");
                        return ExitCode::FAILURE;
                    }
                };
            let service = match select(&HostProbe::detect(), service_manager.0) {
                Ok(kind) => kind,
                Err(e) => {
                    eprintln!("moltops-agent: --service-manager: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(Err(e)) = gateway_image
                .as_deref()
                .map(moltops_agent::methods::validate_repository)
            {
                eprintln!("moltops-agent: --gateway-image: {e}");
                return ExitCode::FAILURE;
            }
            tracing::info!(
                service_manager = %service,
                chosen = if service_manager.0.is_some() { "by the operator" } else { "automatically" },
                product = product.product(),
                "the gateway's service manager"
            );
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            let options = RunOptions {
                backoff_cap: Duration::from_secs(max_backoff_seconds.max(1)),
                gateway: moltops_agent::gateway::Options {
                    product,
                    service,
                    image_repository: gateway_image,
                    port: gateway_port.unwrap_or_else(|| product.default_port()),
                    package_file: gateway_package_file,
                    npm_cache,
                    stop_timeout: Duration::from_secs(gateway_stop_timeout_seconds),
                    restart_delay: Duration::from_millis(gateway_restart_delay_ms),
                    byte_budget: install_byte_budget,
                    ..moltops_agent::gateway::Options::default()
                },
                ..RunOptions::default()
            };
            let result = async {
                let state = StateDir::open(&state_dir)?;
                run(&state, &options, shutdown).await
            }
            .await;
            match result {
                Ok(RunEnd::Shutdown) => ExitCode::SUCCESS,
                Ok(RunEnd::Revoked) => {
                    eprintln!(
                        "moltops-agent: this node's certificate was revoked by the control plane; enroll again with a new token"
                    );
                    ExitCode::from(3)
                }
                Ok(RunEnd::CertificateExpired) => {
                    eprintln!(
                        "moltops-agent: the client certificate expired before it could be renewed; enroll again with a new token"
                    );
                    ExitCode::from(4)
                }
                Err(e) => {
                    eprintln!("moltops-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `--service-manager`: `auto` (`None`) or a [`ServiceKind`] an operator insists on.
#[derive(Debug, Clone, Copy)]
struct ServiceManagerChoice(Option<ServiceKind>);

fn parse_service_manager(text: &str) -> Result<ServiceManagerChoice, String> {
    if text == "auto" {
        return Ok(ServiceManagerChoice(None));
    }
    text.parse::<ServiceKind>()
        .map(|kind| ServiceManagerChoice(Some(kind)))
        .map_err(|e| format!("{e}, or auto"))
}

/// The first non-empty line of a file, or of standard input for "-".
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let text = if path.as_os_str() == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the token from standard input")?;
        line
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no token in {}", path.display()))
}

async fn signal_shutdown(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    if let Ok(mut term) = signal(SignalKind::terminate()) {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
