//! `moltopsctl`: the moltops command line. It speaks only the REST API (`api/openapi.yaml`).
//!
//! Credentials: `--token` / `MOLTOPS_TOKEN` (an API token), or the device session saved by
//! `moltopsctl login` (pairing) in `$MOLTOPS_CONFIG_DIR/credentials.json` (default
//! `~/.config/moltops`), written 0600 and refreshed automatically when the access token expires.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "moltopsctl",
    version,
    about = "Operate a moltops fleet from the command line"
)]
struct Cli {
    /// Control plane URL, e.g. https://moltops.example:7337 (default: the saved login, else http://127.0.0.1:7337).
    #[arg(long, env = "MOLTOPS_SERVER", global = true)]
    server: Option<String>,
    /// An API token; without it, the saved device session is used.
    #[arg(long, env = "MOLTOPS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM CA certificate to trust for HTTPS (in addition to the system roots).
    #[arg(long, env = "MOLTOPS_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Print raw JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign in: with --sso PROVIDER through your identity provider in a browser; otherwise pair
    /// this CLI as a device (shows a code for an Owner/Admin to approve). Saves a session.
    Login {
        /// The name to request for this device.
        #[arg(long, default_value = "moltopsctl")]
        name: String,
        /// Sign in through this configured OpenID provider (see GET /v1/auth/providers).
        #[arg(long)]
        sso: Option<String>,
        /// Only print the sign-in URL; do not try to open a browser.
        #[arg(long)]
        no_browser: bool,
        /// How often to ask whether the code was approved.
        #[arg(long, default_value_t = 7000, hide = true)]
        poll_interval_ms: u64,
    },
    /// End the saved device session.
    Logout,
    /// Who am I, to the control plane.
    Whoami,
    /// Device pairings.
    Pair {
        #[command(subcommand)]
        command: PairCommand,
    },
    /// The fleet.
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// The gateway on a node: install, status, start, stop, restart.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// The audit trail: list, export, verify.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// One-time tokens that enroll new hosts.
    EnrollmentTokens {
        #[command(subcommand)]
        command: EnrollmentCommand,
    },
    /// Jobs (commands run by agents): list, show, follow live, cancel.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Recent jobs, newest first.
    List {
        #[arg(long)]
        node: Option<String>,
        /// queued, dispatched, running, succeeded, failed, cancelled or expired
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One job.
    Get { job_id: String },
    /// Follow a job's steps and log lines until it ends.
    Watch { job_id: String },
    /// Cancel a job: at once if still queued, else the agent stops at its next safe point.
    Cancel {
        job_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum PairCommand {
    /// Pending pairings.
    List,
    /// Approve the code a device shows, binding a role and a name.
    Approve {
        code: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum NodesCommand {
    /// List nodes.
    List {
        /// Label selector, e.g. env=prod,tier!=db
        #[arg(long)]
        selector: Option<String>,
        /// online, offline or revoked
        #[arg(long)]
        status: Option<String>,
    },
    /// Send a ping and wait for the pong.
    Ping { node_id: String },
    /// A node's latest reported metrics (CPU, memory, disk, uptime) and their age.
    Metrics { node_id: String },
    /// Counts by status and agent version.
    Summary,
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Install the gateway with npm (a job; waits for it).
    Install {
        node_id: String,
        #[arg(long, default_value = "stable")]
        channel: String,
        /// An exact version instead of the channel's.
        #[arg(long)]
        version: Option<String>,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Confirm without asking.
        #[arg(long)]
        yes: bool,
    },
    /// The gateway's last reported status.
    Status { node_id: String },
    /// Start, stop or restart it; waits until the effect is verified (or not).
    #[command(name = "action")]
    Action {
        node_id: String,
        /// start, stop or restart
        action: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recent events, newest first.
    List {
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        target_id: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Write the whole log with its checkpoints as JSON Lines (keep it off the box).
    Export {
        /// File to write (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Re-walk the chain on the server; with --checkpoints, also check checkpoints from an
    /// earlier export (catches a full rewrite whose stored checkpoints were deleted too).
    /// Exits non-zero when the chain is broken.
    Verify {
        /// An earlier export (its checkpoint lines are used).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EnrollmentCommand {
    /// Create a token (shown once) and print the enroll command.
    Create {
        /// key=value, repeatable
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
    },
}

/// The saved device session.
#[derive(Debug, Serialize, Deserialize)]
struct Credentials {
    server: String,
    access_token: String,
    refresh_token: String,
    access_expires_at: DateTime<Utc>,
}

/// The wall clock: the CLI is a thin shell around HTTP calls, with no logic worth pinning time for.
#[allow(clippy::disallowed_methods)]
fn now() -> DateTime<Utc> {
    Utc::now()
}

fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MOLTOPS_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("HOME is not set; set MOLTOPS_CONFIG_DIR"))?;
    Ok(PathBuf::from(home).join(".config").join("moltops"))
}

/// An exclusive lock on `credentials.lock`, held while refreshing and saving.
fn lock_credentials() -> anyhow::Result<std::fs::File> {
    let dir = config_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("credentials.lock"))?;
    file.lock().context("locking the saved session")?;
    Ok(file)
}

fn load_credentials() -> anyhow::Result<Option<Credentials>> {
    let path = config_dir()?.join("credentials.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the credentials 0600, atomically.
fn save_credentials(credentials: &Credentials) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = config_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let temp = dir.join(".credentials.json.tmp");
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(&serde_json::to_vec_pretty(credentials)?)?;
    file.sync_all()?;
    std::fs::rename(&temp, dir.join("credentials.json"))?;
    Ok(())
}

struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
    credentials: Option<Credentials>,
}

impl Client {
    fn new(cli: &Cli) -> anyhow::Result<Self> {
        let mut credentials = if cli.token.is_some() {
            None
        } else {
            load_credentials()?
        };
        // The saved session belongs to the server it was made with; never send it elsewhere.
        if let (Some(saved), Some(asked)) = (&credentials, &cli.server)
            && saved.server.trim_end_matches('/') != asked.trim_end_matches('/')
        {
            credentials = None;
        }
        let server = cli
            .server
            .clone()
            .or_else(|| credentials.as_ref().map(|c| c.server.clone()))
            .unwrap_or_else(|| "http://127.0.0.1:7337".to_owned());
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(path) = &cli.ca_file {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Self {
            http: builder.build()?,
            server: server.trim_end_matches('/').to_owned(),
            token: cli.token.clone(),
            credentials,
        })
    }

    async fn bearer(&mut self) -> anyhow::Result<String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let Some(credentials) = &self.credentials else {
            bail!("not signed in: run `moltopsctl login`, or pass --token / MOLTOPS_TOKEN");
        };
        if credentials.access_expires_at > now() + chrono::Duration::seconds(30) {
            return Ok(credentials.access_token.clone());
        }
        // Two moltopsctl processes refreshing the same session at once would look like a stolen
        // token to the server; serialise them on a lock file and re-read what the other saved.
        let lock = lock_credentials()?;
        if let Some(current) = load_credentials()?
            && current.server == credentials.server
            && current.access_expires_at > now() + chrono::Duration::seconds(30)
        {
            let access = current.access_token.clone();
            self.credentials = Some(current);
            drop(lock);
            return Ok(access);
        }
        let refreshed = self
            .send(
                reqwest::Method::POST,
                "/v1/auth/refresh",
                None,
                Some(json!({ "refresh_token": credentials.refresh_token })),
            )
            .await
            .context(
                "refreshing the saved session (run `moltopsctl login` again if it was revoked)",
            )?;
        let renewed = credentials_from(&self.server, &refreshed)?;
        save_credentials(&renewed)?;
        let access = renewed.access_token.clone();
        self.credentials = Some(renewed);
        Ok(access)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.server));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("reaching {}", self.server))?;
        let status = response.status();
        let text = response.text().await?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            Ok(value)
        } else {
            let message = value["message"].as_str().unwrap_or("no message").to_owned();
            let code = value["code"].as_str().unwrap_or("error").to_owned();
            Err(anyhow!(ApiFailure {
                status: status.as_u16(),
                code,
                message
            }))
        }
    }

    async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let bearer = self.bearer().await?;
        self.send(method, path, Some(&bearer), body).await
    }
}

/// An error answer from the API, in its `{code, message}` envelope.
#[derive(Debug)]
struct ApiFailure {
    status: u16,
    code: String,
    message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiFailure {}

fn credentials_from(server: &str, tokens: &Value) -> anyhow::Result<Credentials> {
    let field = |name: &str| {
        tokens[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the server's answer has no {name}"))
    };
    let expires_in = tokens["expires_in_seconds"].as_i64().unwrap_or(0);
    Ok(Credentials {
        server: server.to_owned(),
        access_token: field("access_token")?,
        refresh_token: field("refresh_token")?,
        access_expires_at: now() + chrono::Duration::seconds(expires_in),
    })
}

fn print(json_output: bool, value: &Value, human: impl FnOnce(&Value)) {
    if json_output {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        human(value);
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moltopsctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = Client::new(&cli)?;
    let json_output = cli.json;
    use reqwest::Method;
    match cli.command {
        Command::Login {
            sso: Some(provider),
            no_browser,
            poll_interval_ms,
            ..
        } => sso_login(&client, &provider, no_browser, poll_interval_ms).await?,
        Command::Login {
            name,
            poll_interval_ms,
            ..
        } => {
            let started = client
                .send(
                    Method::POST,
                    "/pair/start",
                    None,
                    Some(json!({ "device_name": name })),
                )
                .await?;
            let code = started["pairing_code"]
                .as_str()
                .ok_or_else(|| anyhow!("no pairing code in the answer"))?
                .to_owned();
            let secret = started["pairing_secret"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            println!("pairing code: {code}");
            println!(
                "ask an Owner or Admin to approve it: moltopsctl pair approve {code} --role viewer --name {name}"
            );
            let deadline = std::time::Instant::now()
                + Duration::from_secs(
                    u64::try_from(started["expires_in_seconds"].as_i64().unwrap_or(600))
                        .unwrap_or(600),
                );
            let body =
                json!({ "pairing_code": code, "device_name": name, "pairing_secret": secret });
            loop {
                tokio::time::sleep(Duration::from_millis(poll_interval_ms)).await;
                match client
                    .send(Method::POST, "/pair/confirm", None, Some(body.clone()))
                    .await
                {
                    Ok(tokens) => {
                        save_credentials(&credentials_from(&client.server, &tokens)?)?;
                        println!(
                            "paired; session saved in {}",
                            config_dir()?.join("credentials.json").display()
                        );
                        return Ok(());
                    }
                    Err(e) => match e.downcast_ref::<ApiFailure>() {
                        Some(f) if f.code == "pairing_pending" || f.status == 429 => {
                            if std::time::Instant::now() > deadline {
                                bail!("the pairing code expired before it was approved");
                            }
                        }
                        _ => return Err(e),
                    },
                }
            }
        }
        Command::Logout => {
            client.call(Method::POST, "/v1/auth/logout", None).await?;
            let _ = std::fs::remove_file(config_dir()?.join("credentials.json"));
            println!("signed out");
        }
        Command::Whoami => {
            let me = client.call(Method::GET, "/v1/me", None).await?;
            print(json_output, &me, |me| {
                println!(
                    "{} {} ({}), role {}",
                    me["kind"].as_str().unwrap_or(""),
                    me["name"].as_str().unwrap_or(""),
                    me["id"].as_str().unwrap_or(""),
                    me["role"].as_str().unwrap_or("")
                );
            });
        }
        Command::Pair {
            command: PairCommand::List,
        } => {
            let list = client.call(Method::GET, "/v1/pairings", None).await?;
            print(json_output, &list, |list| {
                for p in list["items"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {}  from {}  expires {}",
                        p["id"].as_str().unwrap_or(""),
                        p["requested_name"].as_str().unwrap_or(""),
                        p["client_addr"].as_str().unwrap_or(""),
                        p["expires_at"].as_str().unwrap_or("")
                    );
                }
            });
        }
        Command::Pair {
            command: PairCommand::Approve { code, role, name },
        } => {
            let approved = client
                .call(
                    Method::POST,
                    "/v1/pairings/approve",
                    Some(json!({ "pairing_code": code, "role": role, "device_name": name })),
                )
                .await?;
            print(json_output, &approved, |_| {
                println!("approved {name} as {role}")
            });
        }
        Command::Nodes {
            command: NodesCommand::List { selector, status },
        } => {
            let mut query = Vec::new();
            if let Some(s) = selector {
                query.push(format!("selector={}", urlencode(&s)));
            }
            if let Some(s) = status {
                query.push(format!("status={}", urlencode(&s)));
            }
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = query.clone();
                if let Some(c) = &cursor {
                    q.push(format!("cursor={c}"));
                }
                let page = client
                    .call(Method::GET, &format!("/v1/nodes?{}", q.join("&")), None)
                    .await?;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            let all = Value::Array(items);
            print(json_output, &all, |all| {
                println!(
                    "{:<38} {:<24} {:<8} {:<10} LABELS",
                    "ID", "HOSTNAME", "STATUS", "AGENT"
                );
                for n in all.as_array().into_iter().flatten() {
                    let labels: Vec<String> = n["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect();
                    println!(
                        "{:<38} {:<24} {:<8} {:<10} {}",
                        n["id"].as_str().unwrap_or(""),
                        n["hostname"].as_str().unwrap_or(""),
                        n["status"].as_str().unwrap_or(""),
                        n["agent_version"].as_str().unwrap_or(""),
                        labels.join(",")
                    );
                }
            });
        }
        Command::Nodes {
            command: NodesCommand::Metrics { node_id },
        } => {
            let m = client
                .call(
                    Method::GET,
                    &format!("/v1/nodes/{}/metrics/current", urlencode(&node_id)),
                    None,
                )
                .await?;
            print(json_output, &m, |m| {
                let gib = |k: &str| m[k].as_f64().unwrap_or(0.0) / f64::from(1u32 << 30);
                println!(
                    "cpu {:.1}%  mem {:.1}% ({:.1}/{:.1} GiB)  disk free {:.1} GiB  load {:.2}  up {} s  gateway restarts 24h {}  ({} s ago)",
                    m["cpu_percent"].as_f64().unwrap_or(0.0),
                    m["mem_percent"].as_f64().unwrap_or(0.0),
                    gib("memory_used_bytes"),
                    gib("memory_total_bytes"),
                    gib("disk_free_bytes"),
                    m["load_1m"].as_f64().unwrap_or(0.0),
                    m["uptime_seconds"],
                    m["restart_count_24h"],
                    m["age_seconds"]
                );
            });
        }
        Command::Nodes {
            command: NodesCommand::Summary,
        } => {
            let s = client.call(Method::GET, "/v1/fleet/summary", None).await?;
            print(json_output, &s, |s| {
                println!(
                    "{} nodes: {} online, {} offline, {} revoked",
                    s["total"], s["online"], s["offline"], s["revoked"]
                );
                for (version, count) in s["agent_versions"].as_object().into_iter().flatten() {
                    println!("  agent {version}: {count}");
                }
                let g = &s["gateways"];
                println!(
                    "gateways: {} installed, {} running, {} ready, {} crash-looping",
                    g["installed"], g["running"], g["ready"], g["crash_loop"]
                );
                for (version, count) in s["gateway_versions"].as_object().into_iter().flatten() {
                    println!("  gateway {version}: {count}");
                }
            });
        }
        Command::Nodes {
            command: NodesCommand::Ping { node_id },
        } => {
            let command = client
                .call(Method::POST, &format!("/v1/nodes/{node_id}/ping"), None)
                .await?;
            let id = command["id"]
                .as_str()
                .ok_or_else(|| anyhow!("no command id in the answer"))?
                .to_owned();
            let started = std::time::Instant::now();
            loop {
                let c = client
                    .call(
                        Method::GET,
                        &format!("/v1/nodes/{node_id}/commands/{id}"),
                        None,
                    )
                    .await?;
                match c["status"].as_str() {
                    Some("succeeded") => {
                        print(json_output, &c, |_| {
                            println!(
                                "pong from {node_id} in {} ms",
                                started.elapsed().as_millis()
                            )
                        });
                        return Ok(());
                    }
                    Some("failed") => {
                        bail!("ping failed: {}", c["error"].as_str().unwrap_or("unknown"))
                    }
                    _ if started.elapsed() > Duration::from_secs(30) => {
                        bail!("no pong within 30 s (is the node online?)")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Command::Audit { command } => audit(&mut client, command, json_output).await?,
        Command::Gateway { command } => gateway(&mut client, command, json_output).await?,
        Command::Jobs { command } => jobs(&mut client, command, json_output).await?,
        Command::EnrollmentTokens {
            command:
                EnrollmentCommand::Create {
                    labels,
                    ttl_seconds,
                    max_uses,
                },
        } => {
            let mut map = serde_json::Map::new();
            for label in labels {
                let (k, v) = label
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--label must be key=value, got {label:?}"))?;
                map.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let created = client
                .call(
                    Method::POST,
                    "/v1/enrollment-tokens",
                    Some(
                        json!({ "labels": map, "ttl_seconds": ttl_seconds, "max_uses": max_uses }),
                    ),
                )
                .await?;
            print(json_output, &created, |c| {
                println!("token (shown once): {}", c["token"].as_str().unwrap_or(""));
                println!("expires: {}", c["expires_at"].as_str().unwrap_or(""));
                println!(
                    "on the host:\n  {}",
                    c["enroll_command"].as_str().unwrap_or("")
                );
            });
        }
    }
    Ok(())
}

/// A destructive call: on 428, asks (or, with `yes`, goes ahead) and repeats it with the token.
async fn confirmed(
    client: &mut Client,
    method: reqwest::Method,
    path: &str,
    body: Value,
    yes: bool,
) -> anyhow::Result<Value> {
    let bearer = client.bearer().await?;
    // One key for this invocation: a retry after a lost answer gets the same job, never a second.
    let key = idempotency_key();
    let send = |token: Option<&str>| {
        let mut request = client
            .http
            .request(method.clone(), format!("{}{path}", client.server))
            .bearer_auth(&bearer)
            .header("idempotency-key", &key)
            .json(&body);
        if let Some(t) = token {
            request = request.header("x-confirmation-token", t);
        }
        request.send()
    };
    let first = send(None)
        .await
        .with_context(|| format!("reaching {}", client.server))?;
    let status = first.status();
    let value: Value = first.json().await.unwrap_or(Value::Null);
    let value = if status.as_u16() == 428 {
        let token = value["confirmation_token"]
            .as_str()
            .ok_or_else(|| anyhow!("the server asked for confirmation without a token"))?
            .to_owned();
        if !yes {
            eprint!(
                "{} on {} is destructive. Proceed? [y/N] ",
                value["action"].as_str().unwrap_or("this"),
                value["target"].as_str().unwrap_or("the target")
            );
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            if !matches!(line.trim(), "y" | "Y" | "yes") {
                bail!("not confirmed; nothing was done");
            }
        }
        // The confirmed request is retried once if its answer is lost (same key: same job).
        let second = match send(Some(&token)).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("no answer ({e}); asking again with the same idempotency key");
                send(Some(&token)).await?
            }
        };
        let status = second.status();
        let value: Value = second.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{} ({}): {}",
                status.as_u16(),
                value["code"].as_str().unwrap_or("error"),
                value["message"].as_str().unwrap_or("")
            );
        }
        value
    } else if status.is_success() {
        value
    } else {
        bail!(
            "{} ({}): {}",
            status.as_u16(),
            value["code"].as_str().unwrap_or("error"),
            value["message"].as_str().unwrap_or("")
        );
    };
    Ok(value)
}

/// A fresh idempotency key for one invocation.
fn idempotency_key() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("moltopsctl-{}-{nanos}", std::process::id())
}

fn terminal(status: Option<&str>) -> bool {
    matches!(
        status,
        Some("succeeded" | "failed" | "cancelled" | "expired")
    )
}

/// Follows a job's event stream until it ends, printing steps and log lines to stderr; resumes
/// with `Last-Event-ID` when the connection drops. Returns the finished job.
async fn wait_job(client: &mut Client, job_id: &str) -> anyhow::Result<Value> {
    let mut last = 0u64;
    let mut failures = 0;
    loop {
        let bearer = client.bearer().await?;
        let response = client
            .http
            .get(format!("{}/v1/jobs/{job_id}/events", client.server))
            .bearer_auth(&bearer)
            .header("accept", "text/event-stream")
            .header("last-event-id", last.to_string())
            .send()
            .await;
        let streamed = match response {
            Ok(r) if r.status().is_success() => follow_events(r, &mut last).await,
            Ok(r) => Err(anyhow!("the event stream answered {}", r.status())),
            Err(e) => Err(e.into()),
        };
        let job = client
            .call(reqwest::Method::GET, &format!("/v1/jobs/{job_id}"), None)
            .await?;
        if terminal(job["status"].as_str()) {
            return Ok(job);
        }
        if let Err(e) = streamed {
            failures += 1;
            if failures > 30 {
                return Err(e.context("following the job"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Reads one SSE response to its end, printing each event.
async fn follow_events(mut response: reqwest::Response, last: &mut u64) -> anyhow::Result<()> {
    let mut buffer = String::new();
    while let Some(chunk) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<u64>().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str::<Value>(v.trim()).ok();
                }
            }
            if let (Some(id), Some(event)) = (id, data) {
                *last = id;
                print_event(&event);
            }
        }
    }
    Ok(())
}

fn print_event(e: &Value) {
    let at = e["at"].as_str().unwrap_or("");
    let at = at.get(11..19).unwrap_or(at);
    let message = e["message"].as_str().unwrap_or("");
    match e["kind"].as_str() {
        Some("state") => eprintln!("{at}  {:<10} {message}", e["status"].as_str().unwrap_or("")),
        Some("step") => eprintln!("{at}  [{}] {message}", e["step"].as_str().unwrap_or("")),
        _ => eprintln!("{at}    {message}"),
    }
}

async fn jobs(client: &mut Client, command: JobsCommand, json_output: bool) -> anyhow::Result<()> {
    use reqwest::Method;
    let line = |j: &Value| {
        println!(
            "{}  {:<14} {:<10} {:<12} {}  {}",
            j["id"].as_str().unwrap_or(""),
            j["kind"].as_str().unwrap_or(""),
            j["status"].as_str().unwrap_or(""),
            j["step"].as_str().unwrap_or("-"),
            j["created_at"].as_str().unwrap_or(""),
            j["error"].as_str().unwrap_or("")
        );
    };
    match command {
        JobsCommand::List {
            node,
            status,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            if let Some(n) = node {
                query.push(format!("node_id={}", urlencode(&n)));
            }
            if let Some(s) = status {
                query.push(format!("status={}", urlencode(&s)));
            }
            let page = client
                .call(Method::GET, &format!("/v1/jobs?{}", query.join("&")), None)
                .await?;
            print(json_output, &page, |p| {
                for j in p["items"].as_array().into_iter().flatten() {
                    line(j);
                }
            });
        }
        JobsCommand::Get { job_id } => {
            let job = client
                .call(
                    Method::GET,
                    &format!("/v1/jobs/{}", urlencode(&job_id)),
                    None,
                )
                .await?;
            print(json_output, &job, line);
        }
        JobsCommand::Watch { job_id } => {
            let job = wait_job(client, &urlencode(&job_id)).await?;
            print(json_output, &job, line);
            if job["status"] != "succeeded" {
                bail!(
                    "{}: {}",
                    job["status"].as_str().unwrap_or("?"),
                    job["error"].as_str().unwrap_or("")
                );
            }
        }
        JobsCommand::Cancel { job_id, reason } => {
            let job = client
                .call(
                    Method::POST,
                    &format!("/v1/jobs/{}/cancel", urlencode(&job_id)),
                    Some(json!({ "reason": reason })),
                )
                .await?;
            print(json_output, &job, |j| {
                if j["status"] == "cancelled" {
                    println!("cancelled; it will not run");
                } else {
                    println!(
                        "cancel requested; the agent stops at its next safe point (follow with `moltopsctl jobs watch {}`)",
                        j["id"].as_str().unwrap_or("")
                    );
                }
            });
        }
    }
    Ok(())
}

async fn gateway(
    client: &mut Client,
    command: GatewayCommand,
    json_output: bool,
) -> anyhow::Result<()> {
    use reqwest::Method;
    let finish = |job: &Value| -> anyhow::Result<()> {
        if job["status"] == "succeeded" {
            Ok(())
        } else {
            bail!(
                "{}: {}",
                job["status"].as_str().unwrap_or("failed"),
                job["error"].as_str().unwrap_or("unknown")
            )
        }
    };
    match command {
        GatewayCommand::Install {
            node_id,
            channel,
            version,
            reason,
            yes,
        } => {
            let accepted = confirmed(
                client,
                Method::POST,
                &format!("/v1/nodes/{}/install/local", urlencode(&node_id)),
                json!({ "method": "npm", "channel": channel, "version": version, "reason": reason }),
                yes,
            )
            .await?;
            let job_id = accepted["job_id"].as_str().unwrap_or_default().to_owned();
            eprintln!("install job {job_id} queued; waiting for it");
            let job = wait_job(client, &job_id).await?;
            print(json_output, &job, |job| {
                let i = &job["result"]["installed"];
                if job["status"] == "succeeded" {
                    println!(
                        "installed {} in {} ({} ms), running and ready",
                        i["version"].as_str().unwrap_or(""),
                        i["prefix"].as_str().unwrap_or(""),
                        i["duration_ms"]
                    );
                }
            });
            finish(&job)?;
        }
        GatewayCommand::Status { node_id } => {
            let s = client
                .call(
                    Method::GET,
                    &format!("/v1/nodes/{}/moltbot/status", urlencode(&node_id)),
                    None,
                )
                .await?;
            print(json_output, &s, |s| {
                println!(
                    "installed {}  running {}  ready {}  version {}  restarts 24h {}  last start {}  ({} s ago)",
                    s["installed"],
                    s["running"],
                    s["gateway_connected"],
                    s["version"].as_str().unwrap_or("-"),
                    s["restart_count_24h"],
                    s["last_start_time"].as_str().unwrap_or("-"),
                    s["age_seconds"]
                );
            });
        }
        GatewayCommand::Action {
            node_id,
            action,
            reason,
            yes,
        } => {
            let accepted = confirmed(
                client,
                Method::POST,
                &format!("/v1/nodes/{}/ops/action", urlencode(&node_id)),
                json!({ "action": action, "reason": reason }),
                yes,
            )
            .await?;
            let job_id = accepted["job_id"].as_str().unwrap_or_default().to_owned();
            let job = wait_job(client, &job_id).await?;
            print(json_output, &job, |job| {
                if job["status"] == "succeeded" {
                    println!(
                        "{action}: verified — {}",
                        job["result"]["action"]["evidence"].as_str().unwrap_or("")
                    );
                }
            });
            finish(&job)?;
        }
    }
    Ok(())
}

async fn audit(
    client: &mut Client,
    command: AuditCommand,
    json_output: bool,
) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        AuditCommand::List {
            action,
            actor,
            target_id,
            limit,
        } => {
            let mut query = format!("/v1/audit?limit={limit}");
            for (key, value) in [
                ("action", action),
                ("actor", actor),
                ("target_id", target_id),
            ] {
                if let Some(v) = value {
                    query.push_str(&format!("&{key}={}", urlencode(&v)));
                }
            }
            let page = client.call(Method::GET, &query, None).await?;
            print(json_output, &page, |page| {
                for e in page["items"].as_array().into_iter().flatten() {
                    println!(
                        "{:>6}  {}  {:<24} {}:{}  {} {}  {}",
                        e["seq"],
                        e["occurred_at"].as_str().unwrap_or(""),
                        e["action"].as_str().unwrap_or(""),
                        e["actor_kind"].as_str().unwrap_or(""),
                        e["actor_id"].as_str().unwrap_or(""),
                        e["target_kind"].as_str().unwrap_or(""),
                        e["target_id"].as_str().unwrap_or(""),
                        e["outcome"].as_str().unwrap_or("")
                    );
                }
            });
        }
        AuditCommand::Export { output } => {
            let bearer = client.bearer().await?;
            let mut response = client
                .http
                .get(format!("{}/v1/audit/export", client.server))
                .bearer_auth(bearer)
                .send()
                .await
                .with_context(|| format!("reaching {}", client.server))?;
            if !response.status().is_success() {
                bail!(
                    "export refused: {}",
                    response.text().await.unwrap_or_default()
                );
            }
            let mut sink: Box<dyn std::io::Write> = match &output {
                Some(path) => Box::new(std::fs::File::create(path)?),
                None => Box::new(std::io::stdout().lock()),
            };
            // Streamed to the sink as it arrives: constant memory however long the log.
            while let Some(chunk) = response.chunk().await? {
                sink.write_all(&chunk)?;
            }
            sink.flush()?;
        }
        AuditCommand::Verify { checkpoints } => {
            let result = match checkpoints {
                None => client.call(Method::GET, "/v1/audit/verify", None).await?,
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let mut kept = Vec::new();
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        let mut value: Value = serde_json::from_str(line)
                            .with_context(|| format!("{}: not JSON Lines", path.display()))?;
                        if value["type"] == "checkpoint" {
                            if let Some(map) = value.as_object_mut() {
                                map.remove("type");
                            }
                            kept.push(value);
                        }
                    }
                    client
                        .call(
                            Method::POST,
                            "/v1/audit/verify",
                            Some(json!({ "checkpoints": kept })),
                        )
                        .await?
                }
            };
            print(json_output, &result, |r| {
                if r["ok"] == true {
                    println!(
                        "audit chain intact: {} rows, {} checkpoints checked, head {}",
                        r["rows_checked"], r["checkpoints_checked"], r["head_seq"]
                    );
                } else {
                    println!(
                        "audit chain BROKEN at {}: {}",
                        r["first_bad_seq"],
                        r["problem"].as_str().unwrap_or("")
                    );
                }
            });
            if result["ok"] != true {
                bail!("the audit chain does not verify");
            }
        }
    }
    Ok(())
}

/// Device-style SSO sign-in: the server gives a URL and a code; the person signs in in a
/// browser and confirms the code there; this polls until the server hands over tokens.
async fn sso_login(
    client: &Client,
    provider: &str,
    no_browser: bool,
    poll_interval_ms: u64,
) -> anyhow::Result<()> {
    use reqwest::Method;
    let started = client
        .send(
            Method::POST,
            &format!("/v1/auth/oidc/{}/cli", urlencode(provider)),
            None,
            None,
        )
        .await?;
    let field = |name: &str| {
        started[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the server's answer has no {name}"))
    };
    let (url, code, poll_token) = (
        field("login_url")?,
        field("user_code")?,
        field("poll_token")?,
    );
    println!("sign in: {url}");
    println!("confirm code: {code}");
    if !no_browser {
        // The URL is an argument, never a shell string; failing to open a browser is fine.
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    let interval = Duration::from_millis(poll_interval_ms.min(
        u64::try_from(started["interval_seconds"].as_i64().unwrap_or(2) * 1000).unwrap_or(2000),
    ));
    let body = json!({ "poll_token": poll_token });
    loop {
        tokio::time::sleep(interval).await;
        let answer = client
            .send(Method::POST, "/v1/auth/cli/poll", None, Some(body.clone()))
            .await?;
        if answer["status"] == "pending" {
            continue;
        }
        save_credentials(&credentials_from(&client.server, &answer)?)?;
        println!(
            "signed in; session saved in {}",
            config_dir()?.join("credentials.json").display()
        );
        return Ok(());
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
