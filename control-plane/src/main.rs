//! `moltops-server`: `serve` runs a control-plane replica; `admin …` are console commands run on
//! the server host (they talk to the database directly and never over the network).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use moltops_server::auth::{Actor, Role};
use moltops_server::config::{LogFormat, ServeArgs};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "moltops-server", version, about = "The moltops control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a control-plane replica.
    Serve {
        #[command(flatten)]
        args: ServeArgs,
        /// Base64 of 32 bytes; seals the CA key. Without it, <data_dir>/master.key is used.
        #[arg(
            long = "master-key",
            env = "MOLTOPS_MASTER_KEY",
            hide_env_values = true
        )]
        master_key: Option<String>,
    },
    /// Console administration on the server host.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
        #[command(flatten)]
        args: ServeArgs,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an API token; prints it as the last line of standard output.
    CreateApiToken {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        name: String,
        /// Expire after this many days (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Limit the role to nodes matching this label selector, e.g. env=staging.
        #[arg(long, default_value = "")]
        scope: String,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s)
        .ok_or_else(|| "role must be owner, admin, viewer or a custom role's name".to_owned())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOLTOPS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moltops-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve { args, master_key } => {
            let config = args.resolve()?;
            init_tracing(config.log_format);
            let http = tokio::net::TcpListener::bind(config.http_addr)
                .await
                .with_context(|| format!("binding the REST address {}", config.http_addr))?;
            let grpc = tokio::net::TcpListener::bind(config.grpc_addr)
                .await
                .with_context(|| format!("binding the agent gRPC address {}", config.grpc_addr))?;
            let kek = moltops_server::serve::load_kek(master_key.as_deref(), &config)?;
            let state = moltops_server::serve::prepare(
                &config,
                &kek,
                moltops_server::serve::system_clock(),
            )
            .await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            moltops_server::serve::run(&config, state, http, grpc, shutdown).await
        }
        Command::Admin { command, args } => {
            init_tracing(LogFormat::Text);
            let (url, max) = args.database()?;
            let pool = moltops_server::db::connect(&url, max)
                .await
                .context("connecting to Postgres")?;
            moltops_server::db::migrate(&pool)
                .await
                .context("running database migrations")?;
            match command {
                AdminCommand::CreateApiToken {
                    role,
                    name,
                    expires_in_days,
                    scope,
                } => {
                    let scope = moltops_server::fleet::Selector::parse(&scope)
                        .map_err(|e| anyhow::anyhow!("--scope: {e}"))?
                        .to_string();
                    if role == Role::Owner && !scope.is_empty() {
                        anyhow::bail!("an owner token cannot be scoped");
                    }
                    let mut conn = pool.acquire().await?;
                    moltops_server::roles::ensure_exists(&mut conn, &role).await?;
                    drop(conn);
                    let clock = moltops_server::serve::system_clock();
                    let actor = Actor::System { what: "console" };
                    let created = moltops_server::api_tokens::create(
                        &pool,
                        &actor,
                        &name,
                        role.clone(),
                        &scope,
                        expires_in_days.map(|d| chrono::Duration::days(i64::from(d))),
                        clock.now(),
                    )
                    .await?;
                    eprintln!(
                        "created API token {} ({role}) named {name:?}; it is shown once:",
                        created.id
                    );
                    println!("{}", created.secret.as_str());
                    Ok(())
                }
            }
        }
    }
}

async fn signal_shutdown(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
}
