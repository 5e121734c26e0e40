//! The end-to-end harness: real `moltops-server` and `moltops-agent` processes over loopback,
//! each test with its own Postgres database (on `MOLTOPS_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! Waiting is always for a condition (a log line, an HTTP state, a process exit) with a deadline,
//! never a fixed sleep.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use uuid::Uuid;

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/e2e-<hash> -> target/debug
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; scripts/test does this)",
        path.display()
    );
    path
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moltops-e2e-{label}-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `check` until it returns `Some`, or fails the test after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_for_within(what, DEADLINE, check).await
}

/// [`wait_for`] with its own deadline, for steps that really take minutes (a real install).
pub async fn wait_for_within<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A database of its own for one test.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        // reqwest is built with rustls and no default provider (the CLI's choice, unified across
        // the workspace): every test starts here, so install ring once for the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let admin_url = std::env::var("MOLTOPS_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("moltops_e2e_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin_url.rsplit_once('/').unwrap().0;
        Self {
            url: format!("{base}/{name}"),
            name,
            admin_url,
        }
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    /// Drops the database (terminating leftover connections).
    pub async fn drop_database(self) {
        let mut conn = PgConnection::connect(&self.admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop database if exists {} with (force)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

/// Options for starting a control plane.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub http_addr: String,
    pub grpc_addr: String,
    pub heartbeat_seconds: u64,
    pub agent_certificate_ttl_seconds: u64,
    /// (certificate chain PEM file, key PEM file) to serve the REST port over HTTPS.
    pub http_tls: Option<(PathBuf, PathBuf)>,
    /// A config file's text (passed with `--config`), e.g. `[[oidc]]` providers.
    pub config_toml: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:0".into(),
            grpc_addr: "127.0.0.1:0".into(),
            heartbeat_seconds: 1,
            agent_certificate_ttl_seconds: 3600,
            http_tls: None,
            config_toml: None,
            env: Vec::new(),
        }
    }
}

/// A running `moltops-server serve`.
pub struct Server {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub ca_pin: String,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub async fn start(database_url: &str, data_dir: &Path, options: &ServerOptions) -> Self {
        let mut command = Command::new(binary("moltops-server"));
        if let Some((cert, key)) = &options.http_tls {
            command
                .arg("serve")
                .arg("--http-tls-cert")
                .arg(cert)
                .arg("--http-tls-key")
                .arg(key);
        } else {
            command.arg("serve");
        }
        if let Some(text) = &options.config_toml {
            std::fs::create_dir_all(data_dir).unwrap();
            let path = data_dir.join("moltops.toml");
            std::fs::write(&path, text).unwrap();
            command.arg("--config").arg(path);
        }
        command.envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut child = command
            .args(["--log-format", "json"])
            .args([
                "--http-addr",
                &options.http_addr,
                "--grpc-addr",
                &options.grpc_addr,
            ])
            .args([
                "--heartbeat-interval-seconds",
                &options.heartbeat_seconds.to_string(),
            ])
            .args([
                "--agent-certificate-ttl-seconds",
                &options.agent_certificate_ttl_seconds.to_string(),
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .env("MOLTOPS_DATABASE_URL", database_url)
            .env_remove("MOLTOPS_MASTER_KEY")
            .env("MOLTOPS_LOG", "info,moltops_server=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, mut ready_rx) = watch::channel(None::<(SocketAddr, SocketAddr, String)>);
        let stderr = child.stderr.take().unwrap();
        let log_lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let f = &v["fields"];
                    if f["message"] == "moltops-server ready" {
                        let http = f["http"].as_str().unwrap().parse().unwrap();
                        let grpc = f["grpc"].as_str().unwrap().parse().unwrap();
                        let pin = f["ca_pin"].as_str().unwrap().to_owned();
                        let _ = ready_tx.send(Some((http, grpc, pin)));
                    }
                }
                log_lines.lock().unwrap().push(line);
            }
        });
        let ready = tokio::time::timeout(DEADLINE, ready_rx.wait_for(Option::is_some)).await;
        let (http, grpc, ca_pin) = match ready {
            Ok(Ok(v)) => v.clone().unwrap(),
            _ => {
                let status = child.try_wait().unwrap();
                panic!(
                    "server did not become ready (exit: {status:?}); log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Self {
            child,
            http,
            grpc,
            ca_pin,
            data_dir: data_dir.to_path_buf(),
            database_url: database_url.to_owned(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The agent-facing address as agents are told to dial it (by name, as in production).
    pub fn agent_address(&self) -> String {
        format!("localhost:{}", self.grpc.port())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        terminate(&mut self.child)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn terminate(child: &mut Child) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    wait_exit(child, DEADLINE).expect("process did not exit after SIGTERM")
}

/// Waits for a child to exit, up to `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Creates an API token with `moltops-server admin create-api-token`.
pub fn create_api_token(database_url: &str, role: &str) -> String {
    let out = Command::new(binary("moltops-server"))
        .args([
            "admin",
            "create-api-token",
            "--role",
            role,
            "--name",
            &format!("e2e-{role}"),
        ])
        .env("MOLTOPS_DATABASE_URL", database_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// A REST client bound to one server and token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(server: &Server, token: &str) -> Self {
        Self {
            base: format!("http://{}", server.http),
            token: token.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.send_with(method, path, body, None).await
    }

    /// A destructive call as an operator makes it: the first answer is 428 with a confirmation
    /// token, and the identical call is repeated with it.
    pub async fn confirmed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, answer) = self
            .send_with(method.clone(), path, body.clone(), None)
            .await;
        if status != 428 {
            return (status, answer);
        }
        let token = answer["confirmation_token"].as_str().unwrap().to_owned();
        self.send_with(method, path, body, Some(&token)).await
    }

    async fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        confirmation: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(token) = confirmation {
            req = req.header("x-confirmation-token", token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// Opens a job's Server-Sent Events stream after event `after`.
    pub async fn job_events(&self, job_id: &str, after: u64) -> JobEvents {
        let response = self
            .client
            .get(format!("{}/v1/jobs/{job_id}/events", self.base))
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream")
            .header("last-event-id", after.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        JobEvents {
            response,
            buffer: String::new(),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates an enrollment token; returns (token id, secret).
    pub async fn enrollment_token(&self, body: Value) -> (String, String) {
        let (status, created) = self.post("/v1/enrollment-tokens", body).await;
        assert_eq!(status, 201, "{created}");
        (
            created["id"].as_str().unwrap().to_owned(),
            created["token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn node(&self, node_id: &str) -> Value {
        let (status, node) = self.get(&format!("/v1/nodes/{node_id}")).await;
        assert_eq!(status, 200, "{node}");
        node
    }

    pub async fn wait_status(&self, node_id: &str, wanted: &str) -> Value {
        wait_for(&format!("node {node_id} to be {wanted}"), || async {
            let node = self.node(node_id).await;
            (node["status"] == wanted).then_some(node)
        })
        .await
    }

    /// Waits until the node's gateway status says it answers ready on its own health endpoint;
    /// returns that status report.
    pub async fn gateway_ready(&self, node_id: &str, what: &str) -> Value {
        wait_for(what, || async {
            let (_, s) = self
                .get(&format!("/v1/nodes/{node_id}/moltbot/status"))
                .await;
            (s["gateway_connected"] == true).then_some(s)
        })
        .await
    }

    /// Queues a ping and waits for its pong.
    pub async fn ping(&self, node_id: &str) -> Value {
        let (status, command) = self
            .post(&format!("/v1/nodes/{node_id}/ping"), Value::Null)
            .await;
        assert_eq!(status, 202, "{command}");
        let command_id = command["id"].as_str().unwrap().to_owned();
        wait_for("the ping's pong", || async {
            let (_, c) = self
                .get(&format!("/v1/nodes/{node_id}/commands/{command_id}"))
                .await;
            (c["status"] == "succeeded").then_some(c)
        })
        .await
    }
}

/// Result of a `moltops-agent enroll` run.
pub struct EnrollOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl EnrollOutput {
    pub fn node_id(&self) -> String {
        self.stdout
            .trim()
            .strip_prefix("enrolled as node ")
            .unwrap()
            .to_owned()
    }
}

pub fn enroll_agent(server_addr: &str, token: &str, pin: &str, state_dir: &Path) -> EnrollOutput {
    let out = Command::new(binary("moltops-agent"))
        .args([
            "enroll",
            "--server",
            server_addr,
            "--token",
            token,
            "--ca-pin",
            pin,
            "--state-dir",
        ])
        .arg(state_dir)
        .output()
        .unwrap();
    EnrollOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `moltops-agent run`.
pub struct Agent {
    child: Child,
    pub state_dir: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    pub fn start(state_dir: &Path) -> Self {
        Self::start_with(state_dir, &[])
    }

    /// With extra `run` arguments (e.g. the gateway's package and port).
    pub fn start_with(state_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(state_dir, extra, &[])
    }

    /// With extra arguments and environment (which the gateway it runs inherits).
    pub fn start_with_env(state_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary("moltops-agent"))
            .args(["run", "--max-backoff-seconds", "1", "--state-dir"])
            .arg(state_dir)
            .args(extra)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            state_dir: state_dir.to_path_buf(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP / SIGCONT: the process freezes with its connection open (a hung host).
    pub fn freeze(&self, frozen: bool) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let signal = if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn stop(&mut self) -> ExitStatus {
        terminate(&mut self.child)
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_exit(&mut self.child, DEADLINE)
            .unwrap_or_else(|| panic!("agent did not exit; log:\n{}", self.log_text()))
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Agent {
    /// SIGTERM first (after SIGCONT, in case a test froze it), so the agent stops the gateway it
    /// supervises; SIGKILL if it lingers. Never panics.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        if wait_exit(&mut self.child, Duration::from_secs(15)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One control plane with its own database, an owner token and a scratch dir.
pub struct Fixture {
    pub db: Option<TestDatabase>,
    pub server: Option<Server>,
    pub api: Api,
    pub dir: PathBuf,
    pub options: ServerOptions,
}

impl Fixture {
    pub async fn start(options: ServerOptions) -> Self {
        let db = TestDatabase::create().await;
        let dir = scratch("fixture");
        let server = Server::start(&db.url, &dir.join("server"), &options).await;
        let token = create_api_token(&db.url, "owner");
        let api = Api::new(&server, &token);
        Self {
            db: Some(db),
            server: Some(server),
            api,
            dir,
            options,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    /// Creates a token and enrolls an agent into `<dir>/<name>`; returns (node id, state dir).
    pub async fn enroll(&self, name: &str, labels: Value) -> (String, PathBuf) {
        let (_, token) = self
            .api
            .enrollment_token(serde_json::json!({ "labels": labels }))
            .await;
        let state = self.dir.join(name);
        let out = enroll_agent(
            &self.server().agent_address(),
            &token,
            &self.server().ca_pin,
            &state,
        );
        assert!(out.success, "enroll failed: {}", out.stderr);
        (out.node_id(), state)
    }

    /// Enrolls a host that reaches the agent port through `address` (a [`Relay`]).
    pub async fn enroll_via(&self, name: &str, labels: Value, address: &str) -> (String, PathBuf) {
        let (_, token) = self
            .api
            .enrollment_token(serde_json::json!({ "labels": labels }))
            .await;
        let state = self.dir.join(name);
        let out = enroll_agent(address, &token, &self.server().ca_pin, &state);
        assert!(out.success, "enroll failed: {}", out.stderr);
        (out.node_id(), state)
    }

    /// SIGKILLs the control plane (no drain, no goodbye to its streams) and starts a new one on
    /// the same ports, data dir and database.
    pub async fn crash_server(&mut self) {
        let mut old = self.server.take().unwrap();
        let (http, grpc, data_dir, url) = (
            old.http,
            old.grpc,
            old.data_dir.clone(),
            old.database_url.clone(),
        );
        old.child.kill().unwrap();
        old.child.wait().unwrap();
        drop(old);
        let options = ServerOptions {
            http_addr: http.to_string(),
            grpc_addr: grpc.to_string(),
            ..self.options.clone()
        };
        self.server = Some(Server::start(&url, &data_dir, &options).await);
    }

    /// Restarts the control plane on the same ports, data dir and database.
    pub async fn restart_server(&mut self) {
        let old = self.server.take().unwrap();
        let (http, grpc, data_dir, url) = (
            old.http,
            old.grpc,
            old.data_dir.clone(),
            old.database_url.clone(),
        );
        let status = old.stop();
        assert!(status.success(), "server exited with {status}");
        let options = ServerOptions {
            http_addr: http.to_string(),
            grpc_addr: grpc.to_string(),
            ..self.options.clone()
        };
        self.server = Some(Server::start(&url, &data_dir, &options).await);
    }

    pub async fn finish(mut self) {
        drop(self.server.take());
        if let Some(db) = self.db.take() {
            db.drop_database().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real OpenID provider (npm `oidc-provider`, `tests/oidc/idp.mjs`) on loopback. Tests set the
/// account that signs in next and can make it tamper with the ID tokens it issues.
pub struct Idp {
    child: Child,
    pub issuer: String,
    client: reqwest::Client,
}

impl Idp {
    pub async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "the test OpenID provider is not installed: run `npm ci` in {} (scripts/test does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("idp.mjs"))
            .arg(r#"{"port":0,"clients":[]}"#)
            // The provider exits when this pipe closes, so it never outlives the test.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting node tests/oidc/idp.mjs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(DEADLINE))
            .await
            .unwrap()
            .expect("the OpenID provider did not start");
        let ready: Value = serde_json::from_str(&line).expect("the provider's ready line");
        Self {
            child,
            issuer: ready["issuer"].as_str().unwrap().to_owned(),
            client: reqwest::Client::new(),
        }
    }

    async fn control(&self, path: &str, body: Value) {
        let response = self
            .client
            .post(format!("{}/__test/{path}", self.issuer))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "IdP control {path}: {}",
            response.status()
        );
    }

    pub async fn register_client(&self, client_id: &str, secret: &str, redirect_uri: &str) {
        self.control(
            "clients",
            serde_json::json!({
                "client_id": client_id, "client_secret": secret, "redirect_uris": [redirect_uri],
            }),
        )
        .await;
    }

    /// Who signs in next.
    pub async fn set_account(&self, sub: &str, email: &str, groups: &[&str]) {
        self.control(
            "account",
            serde_json::json!({ "sub": sub, "email": email, "name": sub, "groups": groups }),
        )
        .await;
    }

    /// `off`, `alg_none`, `other_key`, `wrong_aud`, `expired`, `wrong_nonce`, `wrong_iss`.
    pub async fn tamper(&self, mode: &str) {
        self.control("tamper", serde_json::json!({ "mode": mode }))
            .await;
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser stand-in: a cookie jar and manual redirects, so a test can stop at any hop.
pub struct Browser {
    pub client: reqwest::Client,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    /// Follows redirects from `url` until one points at a URL starting with `stop_at`, which is
    /// returned unvisited; panics on a non-redirect response first.
    pub async fn follow_until(&self, url: &str, stop_at: &str) -> String {
        let mut url = url.to_owned();
        for _ in 0..20 {
            if url.starts_with(stop_at) {
                return url;
            }
            let response = self.client.get(&url).send().await.unwrap();
            let status = response.status();
            let Some(location) = response.headers().get("location") else {
                let body = response.text().await.unwrap_or_default();
                panic!("{url}: {status} without a redirect: {body}");
            };
            let location = location.to_str().unwrap().to_owned();
            url = reqwest::Url::parse(&url)
                .unwrap()
                .join(&location)
                .unwrap()
                .to_string();
        }
        panic!("too many redirects");
    }

    /// One GET, redirects not followed.
    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.client.get(url).send().await.unwrap()
    }
}

/// A loopback port free at the moment of asking (for a process that must be told its port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `npm pack` of the scenario gateway into `dir`; returns the tarball.
pub fn pack_scenario_gateway(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenario-gateway");
    let out = Command::new("npm")
        .args(["pack", "--silent", "--pack-destination"])
        .arg(dir)
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join(String::from_utf8_lossy(&out.stdout).trim())
}

/// A job's live event stream, one event at a time.
pub struct JobEvents {
    response: reqwest::Response,
    buffer: String,
}

impl JobEvents {
    /// The next event as (id, data); none when the stream ended (the job is over). Keep-alive
    /// comments are skipped.
    pub async fn next(&mut self) -> Option<(u64, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}:")))
                        .map(|v| v.trim().to_owned())
                };
                if let (Some(id), Some(data)) = (field("id"), field("data")) {
                    return Some((id.parse().unwrap(), serde_json::from_str(&data).unwrap()));
                }
                continue;
            }
            let chunk = self.response.chunk().await.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads events until one matches; panics if the stream ends first.
    pub async fn until(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> (u64, Value) {
        loop {
            match self.next().await {
                Some((id, e)) if matches(&e) => return (id, e),
                Some(_) => {}
                None => panic!("the event stream ended before {what}"),
            }
        }
    }

    /// Every remaining event, to the end of the stream.
    pub async fn rest(&mut self) -> Vec<(u64, Value)> {
        let mut all = Vec::new();
        while let Some(e) = self.next().await {
            all.push(e);
        }
        all
    }
}

/// A TCP relay on loopback in front of `target`, whose live connections can be cut at once (a
/// network break between an agent and the control plane) while it keeps accepting new ones. It
/// runs on its own thread, so blocking calls in a test (enrolling) do not stall it.
///
/// With several targets ([`Relay::front`]) it is the Service in front of the replicas: each new
/// connection goes to the first target that accepts it, so a replica that stopped accepting
/// (draining, or gone) is passed over, as a Service passes over a pod that is not ready.
pub struct Relay {
    pub address: String,
    cut: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    forwarded: Arc<Vec<std::sync::atomic::AtomicU64>>,
}

impl Relay {
    pub async fn start(target: String) -> Self {
        Self::front(vec![target]).await
    }

    /// A front for several targets, tried in order for every new connection.
    pub async fn front(targets: Vec<String>) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let address = format!("localhost:{}", std_listener.local_addr().unwrap().port());
        let (cut, _) = watch::channel(0u64);
        let (stop, mut stopped) = watch::channel(false);
        let cuts = cut.clone();
        let forwarded: Arc<Vec<_>> = Arc::new(
            targets
                .iter()
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        );
        let counts = forwarded.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let accepted = tokio::select! {
                        _ = stopped.changed() => return,
                        a = listener.accept() => a,
                    };
                    let Ok((mut inbound, _)) = accepted else {
                        return;
                    };
                    let targets = targets.clone();
                    let counts = counts.clone();
                    let mut cut = cuts.subscribe();
                    tokio::spawn(async move {
                        for (index, target) in targets.iter().enumerate() {
                            let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await
                            else {
                                continue;
                            };
                            counts[index].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = cut.changed() => {}
                            }
                            return;
                        }
                    });
                }
            });
        });
        Self {
            address,
            cut,
            stop,
            forwarded,
        }
    }

    /// Drops every connection open now.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// How many connections went to each target so far, in the order given.
    pub fn forwarded(&self) -> Vec<u64> {
        self.forwarded
            .iter()
            .map(|n| n.load(std::sync::atomic::Ordering::SeqCst))
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
