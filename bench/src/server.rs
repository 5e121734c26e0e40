//! A control plane the bench starts and owns (`moltops-bench run --spawn-server`): a real
//! `moltops-server serve` process on loopback, on a database of its own, that the `restart`
//! scenario can stop (SIGTERM, drained) and start again on the same addresses — the reconnect
//! storm after a control-plane restart. Its stderr goes to `server.log` in its data directory.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use crate::error::{BenchError, BenchResult};
use crate::scenario::{BoxFuture, ControlPlane};

/// How to start the control plane.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// `moltops-server`.
    pub binary: PathBuf,
    /// Its database (`MOLTOPS_DATABASE_URL`).
    pub database_url: String,
    /// Its data directory (the master key file, when none is in the environment); also where
    /// `server.log` goes.
    pub data_dir: PathBuf,
    /// `--http-addr` / `--grpc-addr` of the first start (port 0: any free port); a restart
    /// reuses the bound ones.
    pub http_addr: String,
    pub grpc_addr: String,
    /// How long a start may take until the server logs that it is ready, and a stop until it
    /// exits.
    pub deadline: Duration,
}

/// What the server said when it was ready.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ready {
    http: SocketAddr,
    grpc: SocketAddr,
    ca_pin: String,
}

/// A running (or stopped) `moltops-server serve` owned by the bench.
pub struct ManagedServer {
    spec: ServerSpec,
    child: Option<Child>,
    ready: Ready,
}

impl std::fmt::Debug for ManagedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedServer")
            .field("pid", &self.pid())
            .field("http", &self.ready.http)
            .field("grpc", &self.ready.grpc)
            .finish_non_exhaustive()
    }
}

fn server_error(what: &str, problem: impl std::fmt::Display) -> BenchError {
    BenchError::Fleet {
        what: what.to_owned(),
        problem: problem.to_string(),
    }
}

impl ManagedServer {
    /// Starts the server and waits until it logs `moltops-server ready`.
    pub async fn start(spec: ServerSpec) -> BenchResult<Self> {
        std::fs::create_dir_all(&spec.data_dir)
            .map_err(|e| server_error("creating the server's data directory", e))?;
        let (child, ready) = spawn(&spec, &spec.http_addr, &spec.grpc_addr).await?;
        Ok(Self {
            spec,
            child: Some(child),
            ready,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.ready.http)
    }

    /// The agent port by a name in the server's certificate, as agents dial it.
    pub fn agent_address(&self) -> String {
        format!("localhost:{}", self.ready.grpc.port())
    }

    pub fn ca_pin(&self) -> &str {
        &self.ready.ca_pin
    }

    pub fn log_path(&self) -> PathBuf {
        self.spec.data_dir.join("server.log")
    }

    /// An owner API token, from `moltops-server admin create-api-token`.
    pub fn create_owner_token(&self) -> BenchResult<String> {
        let out = Command::new(&self.spec.binary)
            .args(["admin", "create-api-token", "--role", "owner", "--name"])
            .arg(format!("moltops-bench-{}", uuid::Uuid::new_v4().simple()))
            .env("MOLTOPS_DATABASE_URL", &self.spec.database_url)
            .output()
            .map_err(|e| server_error("running moltops-server admin create-api-token", e))?;
        if !out.status.success() {
            return Err(server_error(
                "moltops-server admin create-api-token",
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                server_error("moltops-server admin create-api-token", "printed no token")
            })
    }

    /// SIGTERM, then waits for the process to exit (it drains its streams and requests first).
    /// Returns how long that took. Fails if it does not exit within the deadline or exits
    /// unsuccessfully.
    pub async fn stop(&mut self) -> BenchResult<Duration> {
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        let started = Instant::now();
        let pid = nix::unistd::Pid::from_raw(
            i32::try_from(child.id()).map_err(|e| server_error("the server's pid", e))?,
        );
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| server_error("sending SIGTERM to the server", e))?;
        let deadline = self.spec.deadline;
        let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, deadline))
            .await
            .map_err(|e| server_error("waiting for the server to exit", e))??;
        if !status.success() {
            return Err(server_error(
                "stopping the server",
                format!(
                    "it exited with {status} (log: {})",
                    self.log_path().display()
                ),
            ));
        }
        Ok(started.elapsed())
    }

    /// Starts it again on the addresses it had (agents and the REST client keep their
    /// addresses) and waits until it is ready; returns the new pid.
    pub async fn restart(&mut self) -> BenchResult<u32> {
        if self.child.is_some() {
            self.stop().await?;
        }
        let (http, grpc) = (self.ready.http.to_string(), self.ready.grpc.to_string());
        let (child, ready) = spawn(&self.spec, &http, &grpc).await?;
        if ready.ca_pin != self.ready.ca_pin {
            return Err(server_error(
                "restarting the server",
                "it came back with another CA: its data directory or database changed",
            ));
        }
        let pid = child.id();
        self.child = Some(child);
        self.ready = ready;
        Ok(pid)
    }
}

impl Drop for ManagedServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The [`ControlPlane`] the restart scenario drives.
#[derive(Debug, Clone)]
pub struct SharedServer(pub Arc<Mutex<ManagedServer>>);

impl ControlPlane for SharedServer {
    fn stop(&self) -> BoxFuture<'_, BenchResult<Duration>> {
        Box::pin(async move { self.0.lock().await.stop().await })
    }

    fn start(&self) -> BoxFuture<'_, BenchResult<u32>> {
        Box::pin(async move { self.0.lock().await.restart().await })
    }
}

async fn spawn(spec: &ServerSpec, http: &str, grpc: &str) -> BenchResult<(Child, Ready)> {
    let log_path = spec.data_dir.join("server.log");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| server_error("opening server.log", e))?;
    let mut child = Command::new(&spec.binary)
        .arg("serve")
        .args([
            "--log-format",
            "json",
            "--http-addr",
            http,
            "--grpc-addr",
            grpc,
        ])
        .arg("--data-dir")
        .arg(&spec.data_dir)
        .env("MOLTOPS_DATABASE_URL", &spec.database_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| server_error(&format!("starting {}", spec.binary.display()), e))?;
    let Some(stderr) = child.stderr.take() else {
        return Err(server_error("starting the server", "no stderr pipe"));
    };
    // The log is copied to server.log for as long as the process lives; the ready line is
    // picked out on the way.
    let (ready_tx, mut ready_rx) = watch::channel(None::<Ready>);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(ready) = parse_ready(&line) {
                let _ = ready_tx.send(Some(ready));
            }
            let _ = writeln!(log, "{line}");
        }
    });
    let waited = tokio::time::timeout(spec.deadline, ready_rx.wait_for(Option::is_some)).await;
    let ready = match waited {
        Ok(Ok(ready)) => ready.clone(),
        _ => None,
    };
    match ready {
        Some(ready) => Ok((child, ready)),
        None => {
            let _ = child.kill();
            let status = child.wait().ok();
            Err(server_error(
                "starting the server",
                format!(
                    "it did not log that it was ready within {:?} (exit: {status:?}; log: {})",
                    spec.deadline,
                    log_path.display()
                ),
            ))
        }
    }
}

/// The `moltops-server ready` line of the JSON log: its bound addresses and CA pin.
fn parse_ready(line: &str) -> Option<Ready> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let f = &v["fields"];
    if f["message"] != "moltops-server ready" {
        return None;
    }
    Some(Ready {
        http: f["http"].as_str()?.parse().ok()?,
        grpc: f["grpc"].as_str()?.parse().ok()?,
        ca_pin: f["ca_pin"].as_str()?.to_owned(),
    })
}

fn wait_exit(child: &mut Child, deadline: Duration) -> BenchResult<std::process::ExitStatus> {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| server_error("waiting for the server to exit", e))?
        {
            return Ok(status);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(server_error(
                "stopping the server",
                format!("it did not exit within {deadline:?} of SIGTERM; killed"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A database of the bench's own on the Postgres `admin_url` points at (`create database
/// moltops_bench_<run id>`); returns its URL.
pub async fn create_database(admin_url: &str, run_id: &str) -> BenchResult<(String, String)> {
    let name = format!("moltops_bench_{run_id}");
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(BenchError::Config(format!(
            "the run id makes an unusable database name: {name}"
        )));
    }
    let mut conn = PgConnection::connect(admin_url)
        .await
        .map_err(|e| server_error("connecting to Postgres (--database-url)", e))?;
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut conn)
        .await
        .map_err(|e| server_error(&format!("create database {name}"), e))?;
    let base = admin_url
        .split_once('?')
        .map_or(admin_url, |(base, _)| base)
        .rsplit_once('/')
        .map(|(base, _)| base)
        .ok_or_else(|| BenchError::Config(format!("not a database URL: {admin_url}")))?;
    Ok((name.clone(), format!("{base}/{name}")))
}

/// Drops a database [`create_database`] made (terminating leftover connections).
pub async fn drop_database(admin_url: &str, name: &str) -> BenchResult<()> {
    let mut conn = PgConnection::connect(admin_url)
        .await
        .map_err(|e| server_error("connecting to Postgres (--database-url)", e))?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists {name} with (force)"
    )))
    .execute(&mut conn)
    .await
    .map_err(|e| server_error(&format!("drop database {name}"), e))?;
    Ok(())
}

/// The directory for a managed server's data and log.
pub fn data_dir(root: &Path, run_id: &str) -> PathBuf {
    root.join(format!("moltops-bench-{run_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_gives_the_bound_addresses_and_pin() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"moltops-server ready","http":"127.0.0.1:40001","grpc":"127.0.0.1:40002","ca_pin":"sha256:ab"},"target":"moltops_server"}"#;
        assert_eq!(
            parse_ready(line),
            Some(Ready {
                http: "127.0.0.1:40001".parse().unwrap(),
                grpc: "127.0.0.1:40002".parse().unwrap(),
                ca_pin: "sha256:ab".to_owned(),
            })
        );
        assert_eq!(parse_ready(r#"{"fields":{"message":"other"}}"#), None);
        assert_eq!(parse_ready("not json"), None);
    }
}
