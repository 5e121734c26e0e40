//! The managed gateway on this host: installed with npm through the governed egress proxy into a
//! versioned prefix, configured for loopback, run under the built-in supervisor, probed on its
//! own `/readyz` (the JSON body, not just the status), and started, stopped and restarted with
//! the effect verified. What is installed is remembered in the state directory, so an agent
//! restart brings the gateway back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moltops_proto::agent::service_action::Action;
use moltops_proto::agent::{
    ActionDone, EgressReport, GatewayStatus, Install, Installed, ServiceAction,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::commands::Context;
use crate::egress::{EgressProxy, Policy, npm_registry_host};
use crate::install::Npm;
use crate::supervisor::{Spec, Stopped, Supervisor};

/// How this agent manages its gateway.
#[derive(Debug, Clone)]
pub struct Options {
    /// The npm package (default `openclaw`).
    pub package: String,
    /// A package tarball to install instead of the registry's (the scenario gateway in tests).
    pub package_file: Option<PathBuf>,
    /// The gateway's loopback port.
    pub port: u16,
    /// Default download budget for an install.
    pub byte_budget: u64,
    /// npm's download cache (default `<state>/npm-cache`).
    pub npm_cache: Option<PathBuf>,
    /// SIGTERM, then this long, then SIGKILL.
    pub stop_timeout: Duration,
    /// The first delay before a restart after an exit (doubling up to 300 s).
    pub restart_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            package: "openclaw".into(),
            package_file: None,
            port: 18789,
            byte_budget: 2 * 1024 * 1024 * 1024,
            npm_cache: None,
            stop_timeout: Duration::from_secs(330),
            restart_delay: Duration::from_secs(5),
        }
    }
}

/// Why an install or action did not complete.
#[derive(Debug, Clone, PartialEq)]
pub enum OpError {
    Failed(String),
    /// Stopped at the control plane's request, in `step`; `message` says what that leaves.
    Cancelled {
        step: String,
        message: String,
    },
}

impl From<String> for OpError {
    fn from(message: String) -> Self {
        Self::Failed(message)
    }
}

impl From<&str> for OpError {
    fn from(message: &str) -> Self {
        Self::Failed(message.to_owned())
    }
}

/// Runs one step of an operation: reported as progress, abandoned at once when the command is
/// cancelled (only steps where stopping is safe are run through here), with `left` saying what
/// a cancel at this point leaves behind.
async fn step<T>(
    ctx: &Context,
    name: &str,
    message: &str,
    left: &str,
    work: impl std::future::Future<Output = T>,
) -> Result<T, OpError> {
    let cancelled = || OpError::Cancelled {
        step: name.to_owned(),
        message: left.to_owned(),
    };
    if ctx.cancel.is_cancelled() {
        return Err(cancelled());
    }
    ctx.progress.step(name, message);
    tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => Err(cancelled()),
        value = work => Ok(value),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Record {
    package: String,
    version: String,
    prefix: PathBuf,
    node: PathBuf,
    script: PathBuf,
}

pub struct Gateway {
    options: Options,
    root: PathBuf,
    inner: tokio::sync::Mutex<Inner>,
    /// Woken on every supervisor status change, so the agent reports it at once.
    changed: Arc<tokio::sync::Notify>,
    /// Installs and actions on the gateway run one at a time, in the order they arrive.
    operations: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Inner {
    record: Option<Record>,
    supervisor: Option<Supervisor>,
}

const RECORD: &str = "gateway.json";
const PID_FILE: &str = "gateway.pid";
/// Present while an operator wants the gateway stopped.
const STOPPED_FILE: &str = "gateway.stopped";

async fn set_desired(root: &Path, running: bool) {
    let path = root.join(STOPPED_FILE);
    if running {
        let _ = tokio::fs::remove_file(path).await;
    } else {
        let _ = tokio::fs::write(path, b"").await;
    }
}

async fn desired(root: &Path) -> bool {
    !tokio::fs::try_exists(root.join(STOPPED_FILE))
        .await
        .unwrap_or(false)
}

impl Gateway {
    /// `root` is the agent's state directory.
    pub fn new(root: &Path, options: Options) -> Arc<Self> {
        Arc::new(Self {
            options,
            root: root.to_path_buf(),
            inner: tokio::sync::Mutex::new(Inner::default()),
            changed: Arc::new(tokio::sync::Notify::new()),
            operations: tokio::sync::Mutex::new(()),
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.root.join("gateway-state")
    }

    fn config_path(&self) -> PathBuf {
        self.state_dir().join("openclaw.json")
    }

    /// Starts the supervisor and keeps `<state>/gateway.pid` current, so a later agent can find
    /// a gateway this one left behind (if it was killed without stopping it).
    fn supervise(&self, record: &Record) -> Supervisor {
        let supervisor = Supervisor::start(self.spec(record));
        let mut watch = supervisor.watch();
        let pid_file = self.root.join(PID_FILE);
        let changed = self.changed.clone();
        tokio::spawn(async move {
            loop {
                let pid = watch.borrow_and_update().pid;
                let text = pid.map(|p| p.to_string()).unwrap_or_default();
                let _ = tokio::fs::write(&pid_file, text).await;
                changed.notify_one();
                if watch.changed().await.is_err() {
                    return;
                }
            }
        });
        supervisor
    }

    /// A gateway left running by an agent that was killed: stop it before starting ours (two
    /// gateways must not share a state directory or a port). Only a process whose command line
    /// is our gateway's script is touched.
    async fn reap_orphan(&self, record: &Record) {
        let Ok(text) = tokio::fs::read_to_string(self.root.join(PID_FILE)).await else {
            return;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return;
        };
        let cmdline = tokio::fs::read(format!("/proc/{pid}/cmdline"))
            .await
            .unwrap_or_default();
        let script = record.script.display().to_string();
        if !String::from_utf8_lossy(&cmdline).contains(&script) {
            return;
        }
        tracing::warn!(
            pid,
            "a gateway from an earlier agent run is still running; stopping it"
        );
        let target = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
        // An abandoned gateway gets a short grace (its output pipe died with the old agent).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && alive(pid).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if alive(pid).await {
            let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// After an agent start: the gateway installed before runs again.
    pub async fn resume(&self) {
        let Ok(text) = tokio::fs::read_to_string(self.root.join(RECORD)).await else {
            return;
        };
        let Ok(record) = serde_json::from_str::<Record>(&text) else {
            tracing::warn!("the gateway record is unreadable; not starting the gateway");
            return;
        };
        self.reap_orphan(&record).await;
        let supervisor = self.supervise(&record);
        if !desired(&self.root).await {
            // An operator stopped it: it stays stopped until started.
            supervisor.stop().await;
            tracing::info!("the managed gateway stays stopped, as an operator left it");
        } else {
            tracing::info!("the managed gateway is running again");
        }
        let mut inner = self.inner.lock().await;
        inner.supervisor = Some(supervisor);
        inner.record = Some(record);
    }

    fn spec(&self, record: &Record) -> Spec {
        let mut spec = Spec::new(
            record.node.clone(),
            vec![
                record.script.display().to_string(),
                "gateway".into(),
                "run".into(),
                "--bind".into(),
                "loopback".into(),
                "--port".into(),
                self.options.port.to_string(),
                "--allow-unconfigured".into(),
            ],
            self.state_dir().join("gateway.out.log"),
        );
        spec.env = vec![
            (
                "OPENCLAW_STATE_DIR".into(),
                self.state_dir().display().to_string(),
            ),
            (
                "OPENCLAW_CONFIG_PATH".into(),
                self.config_path().display().to_string(),
            ),
            // Its doctor must not fight our supervisor.
            ("OPENCLAW_SERVICE_REPAIR_POLICY".into(), "external".into()),
        ];
        spec.cwd = Some(self.state_dir());
        spec.stop_timeout = self.options.stop_timeout;
        spec.backoff_initial = self.options.restart_delay;
        spec
    }

    /// Installs (or switches to) the requested version, starts it and waits until it is ready.
    pub async fn install(&self, request: &Install, ctx: &Context) -> Result<Installed, OpError> {
        let _one_at_a_time = step(
            ctx,
            "wait",
            "waiting for the gateway's previous operation to finish",
            "nothing was changed",
            self.operations.lock(),
        )
        .await?;
        let started = Instant::now();
        if request.method != "npm" {
            return Err(format!(
                "install method {:?} is not available on this agent (npm is)",
                request.method
            )
            .into());
        }
        let (host, port) = npm_registry_host(Path::new("npm"))
            .await
            .map_err(|e| format!("cannot read npm's registry: {e}"))?;
        ctx.progress.log(&format!(
            "egress allowed to {host}:{port} (npm's configured registry), budget {budget} bytes",
            budget = if request.byte_budget > 0 {
                request.byte_budget
            } else {
                self.options.byte_budget
            }
        ));
        let budget = if request.byte_budget > 0 {
            request.byte_budget
        } else {
            self.options.byte_budget
        };
        let proxy = EgressProxy::start(Policy {
            allowed_hosts: vec![host],
            allowed_ports: vec![port],
            byte_budget: budget,
        })
        .await
        .map_err(|e| format!("cannot start the egress proxy: {e}"))?;
        let npm = Npm {
            npm: PathBuf::from("npm"),
            root: self.root.join("gateways"),
            cache: self
                .options
                .npm_cache
                .clone()
                .unwrap_or_else(|| self.root.join("npm-cache")),
            proxy: Some(proxy.url()),
        };
        let outcome = self.install_with(&npm, request, ctx).await;
        let egress: Vec<EgressReport> = proxy
            .reports()
            .into_iter()
            .map(|r| EgressReport {
                host: r.host,
                port: u32::from(r.port),
                allowed: r.allowed,
                bytes_up: r.bytes_up,
                bytes_down: r.bytes_down,
                note: r.note.unwrap_or_default(),
            })
            .collect();
        for r in &egress {
            ctx.progress.log(&format!(
                "egress {} {}:{} up {} down {}{}",
                if r.allowed { "allowed" } else { "DENIED" },
                r.host,
                r.port,
                r.bytes_up,
                r.bytes_down,
                if r.note.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.note)
                }
            ));
        }
        let mut installed = outcome.map_err(|e| match e {
            OpError::Failed(e) => {
                let refused: Vec<String> = egress
                    .iter()
                    .filter(|r| !r.allowed || !r.note.is_empty())
                    .map(|r| format!("{}:{} {}", r.host, r.port, r.note))
                    .collect();
                if refused.is_empty() {
                    OpError::Failed(e)
                } else {
                    OpError::Failed(format!("{e} (egress: {})", refused.join("; ")))
                }
            }
            cancelled => cancelled,
        })?;
        installed.egress = egress;
        installed.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(installed)
    }

    async fn install_with(
        &self,
        npm: &Npm,
        request: &Install,
        ctx: &Context,
    ) -> Result<Installed, OpError> {
        let package = self.options.package.clone();
        let resolve = async {
            self.resolve(npm, &package, request)
                .await
                .map_err(OpError::Failed)
        };
        let (spec, version, engines, name) = step(
            ctx,
            "resolve",
            "resolving the version and its Node engine range",
            "nothing was changed",
            resolve,
        )
        .await??;
        let node = step(
            ctx,
            "runtime",
            &format!(
                "finding a Node runtime for engines {}",
                engines.as_deref().unwrap_or("(any)")
            ),
            "nothing was changed on the gateway",
            npm.runtime_for(engines.as_deref()),
        )
        .await?
        .map_err(|e| e.to_string())?;
        ctx.progress
            .log(&format!("Node runtime: {}", node.display()));
        let prefix = step(
            ctx,
            "install",
            &format!("npm install {name}@{version} into its own versioned prefix"),
            "the new version's prefix is incomplete (it is installed again next time); the running gateway was not touched",
            npm.install(&name, &version, &spec, &node),
        )
        .await?
        .map_err(|e| e.to_string())?;
        ctx.progress.step(
            "configure",
            "writing the local configuration and switching the service to the new version",
        );
        self.switch(&name, &version, &prefix, &node).await?;
        let supervisor = self
            .inner
            .lock()
            .await
            .supervisor
            .clone()
            .ok_or("the gateway has no supervisor")?;
        let ready = step(
            ctx,
            "verify",
            "waiting for the gateway's /readyz to say ready",
            &format!("version {version} is installed and started, but was not verified ready"),
            self.wait_ready(&supervisor, Duration::from_secs(120)),
        )
        .await?;
        if !ready {
            return Err(
                format!("installed {version}, but it did not become ready within 120 s").into(),
            );
        }
        Ok(Installed {
            version,
            prefix: prefix.display().to_string(),
            node: node.display().to_string(),
            egress: Vec::new(),
            duration_ms: 0,
        })
    }

    /// (spec to install, version, its engines.node range, package name).
    async fn resolve(
        &self,
        npm: &Npm,
        package: &str,
        request: &Install,
    ) -> Result<(String, String, Option<String>, String), String> {
        Ok(match &self.options.package_file {
            Some(file) => {
                let file = file.display().to_string();
                let (name, version) = tarball_identity(&file).await?;
                let engines = npm.engines_node(&file).await.map_err(|e| e.to_string())?;
                (file, version, engines, name)
            }
            None => {
                let wanted = if request.version.is_empty() {
                    request.channel.as_str()
                } else {
                    request.version.as_str()
                };
                let wanted = if wanted.is_empty() { "stable" } else { wanted };
                let version = npm
                    .resolve(package, wanted)
                    .await
                    .map_err(|e| e.to_string())?;
                let spec = format!("{package}@{version}");
                let engines = npm.engines_node(&spec).await.map_err(|e| e.to_string())?;
                (spec, version, engines, package.to_owned())
            }
        })
    }

    /// Writes the configuration and the record, and moves the supervisor to the new version
    /// (not cancellable: it is short, and half of it would leave no gateway).
    async fn switch(
        &self,
        name: &str,
        version: &str,
        prefix: &Path,
        node: &Path,
    ) -> Result<(), String> {
        let script = bin_script(prefix, name).await?;
        let record = Record {
            package: name.to_owned(),
            version: version.to_owned(),
            prefix: prefix.to_path_buf(),
            node: node.to_path_buf(),
            script,
        };
        tokio::fs::create_dir_all(self.state_dir().join("logs"))
            .await
            .map_err(|e| e.to_string())?;
        // A minimal local configuration: its own log file (never the shared /tmp one).
        let config = serde_json::json!({
            "gateway": { "mode": "local" },
            "logging": { "file": self.state_dir().join("logs/openclaw.log") },
        });
        write_atomic(&self.config_path(), config.to_string().as_bytes()).await?;
        write_atomic(
            &self.root.join(RECORD),
            serde_json::to_string_pretty(&record)
                .map_err(|e| e.to_string())?
                .as_bytes(),
        )
        .await?;
        // The status path must never wait behind a stop (up to the stop deadline).
        let old = self.inner.lock().await.supervisor.take();
        if let Some(old) = old {
            old.stop().await;
        }
        self.reap_orphan(&record).await;
        let supervisor = self.supervise(&record);
        {
            let mut inner = self.inner.lock().await;
            inner.supervisor = Some(supervisor);
            inner.record = Some(record);
        }
        set_desired(&self.root, true).await;
        Ok(())
    }

    /// Ready means: our supervised process is running, the same one throughout, and the port
    /// answers ready — so another process on the port, or one that crashes while an old one still
    /// answers, is not mistaken for success.
    async fn wait_ready(&self, supervisor: &Supervisor, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let before = supervisor.status();
            if before.running
                && probe_ready(self.options.port).await
                && supervisor.status().pid == before.pid
                && supervisor.status().running
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    async fn wait_gone(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !answers(self.options.port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Start, stop or restart, then verify: ready for start and restart (a restart also needs a
    /// new start time), no longer answering for stop.
    pub async fn action(
        &self,
        request: &ServiceAction,
        ctx: &Context,
    ) -> Result<ActionDone, OpError> {
        let _one_at_a_time = step(
            ctx,
            "wait",
            "waiting for the gateway's previous operation to finish",
            "nothing was changed",
            self.operations.lock(),
        )
        .await?;
        let started = Instant::now();
        let within = Duration::from_secs(if request.verify_timeout_seconds == 0 {
            60
        } else {
            u64::from(request.verify_timeout_seconds)
        });
        let supervisor = {
            let inner = self.inner.lock().await;
            if inner.record.is_none() {
                return Err("no gateway is installed on this node".into());
            }
            inner
                .supervisor
                .clone()
                .ok_or_else(|| "the gateway has no supervisor".to_owned())?
        };
        let before = supervisor.status();
        let elapsed = |t: Instant| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (verified, evidence) = match Action::try_from(request.action) {
            Ok(Action::Start) => {
                ctx.progress.step("start", "starting the gateway");
                if !before.desired_running {
                    supervisor.resume().await;
                }
                set_desired(&self.root, true).await;
                let ready = step(
                    ctx,
                    "verify",
                    "waiting for the gateway's /readyz to say ready",
                    "the gateway was started, but was not verified ready",
                    self.wait_ready(&supervisor, within),
                )
                .await?;
                let evidence = if ready {
                    format!("ready after {} ms", elapsed(started))
                } else {
                    format!("not ready after {} s", within.as_secs())
                };
                (ready, evidence)
            }
            Ok(Action::Stop) => {
                // An operator's stop lasts: a restarted agent does not start it again.
                set_desired(&self.root, false).await;
                let stopped = step(
                    ctx,
                    "stop",
                    "stopping the gateway: SIGTERM, then SIGKILL at the deadline",
                    "the stop goes on without the job: the gateway was sent SIGTERM and is killed at the deadline",
                    supervisor.stop(),
                )
                .await?;
                let gone = step(
                    ctx,
                    "verify",
                    "waiting for the gateway's port to close",
                    "the gateway process was stopped; its port was not yet verified closed",
                    self.wait_gone(within),
                )
                .await?;
                let how = match stopped {
                    Stopped::Graceful => "exited on SIGTERM",
                    Stopped::Killed => "ignored SIGTERM and was killed at the deadline",
                    Stopped::NotRunning => "was not running",
                };
                let evidence = if gone {
                    format!("{how}; port closed after {} ms", elapsed(started))
                } else {
                    format!("{how}; still answering after {} s", within.as_secs())
                };
                (gone, evidence)
            }
            Ok(Action::Restart) => {
                set_desired(&self.root, true).await;
                let stopped = step(
                    ctx,
                    "restart",
                    "restarting the gateway",
                    "the restart goes on without the job: the gateway was sent SIGTERM and is started again",
                    supervisor.restart(),
                )
                .await?;
                if stopped == Stopped::Killed {
                    ctx.progress
                        .log("the gateway ignored SIGTERM and was killed at the deadline");
                }
                let ready = step(
                    ctx,
                    "verify",
                    "waiting for the gateway's /readyz to say ready",
                    "the gateway was restarted, but was not verified ready",
                    self.wait_ready(&supervisor, within),
                )
                .await?;
                let after = supervisor.status();
                let restarted = after.last_start_time > before.last_start_time;
                let evidence = match (ready, restarted) {
                    (true, true) => format!("restarted and ready after {} ms", elapsed(started)),
                    (false, _) => format!("not ready after {} s", within.as_secs()),
                    (true, false) => "answering, but no new start was seen".to_owned(),
                };
                (ready && restarted, evidence)
            }
            _ => return Err("unknown service action".into()),
        };
        ctx.progress.log(&evidence);
        Ok(ActionDone {
            verified,
            evidence,
            duration_ms: elapsed(started),
        })
    }

    /// Resolves when the gateway's state changed (started, exited, stopped).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// What the control plane is told with every heartbeat.
    pub async fn status(&self) -> GatewayStatus {
        let (record, supervisor) = {
            let inner = self.inner.lock().await;
            (inner.record.clone(), inner.supervisor.clone())
        };
        let Some(record) = record else {
            return GatewayStatus {
                service_manager: "supervisor".into(),
                ..GatewayStatus::default()
            };
        };
        let status = supervisor.map(|s| s.status()).unwrap_or_default();
        // A quick probe: this runs on the agent's session loop.
        let connected = status.running
            && tokio::time::timeout(Duration::from_millis(500), probe_ready(self.options.port))
                .await
                .unwrap_or(false);
        GatewayStatus {
            installed: true,
            running: status.running,
            version: record.version,
            service_manager: "supervisor".into(),
            config_path: self.config_path().display().to_string(),
            last_start_unix_ms: status.last_start_time.map_or(0, |t| t.timestamp_millis()),
            restart_count_24h: status.restart_count_24h,
            gateway_connected: connected,
            crash_loop: status.crash_loop,
            last_exit: status.last_exit.unwrap_or_default(),
        }
    }

    /// Stops the gateway when the agent shuts down.
    pub async fn shutdown(&self) {
        let supervisor = self.inner.lock().await.supervisor.take();
        if let Some(s) = supervisor {
            s.stop().await;
        }
    }
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, bytes)
        .await
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// (name, version) of a package tarball.
async fn tarball_identity(file: &str) -> Result<(String, String), String> {
    let out = tokio::process::Command::new("tar")
        .args(["-xzOf", file, "package/package.json"])
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|_| format!("{file} is not a package"))?;
    match (manifest["name"].as_str(), manifest["version"].as_str()) {
        (Some(n), Some(v)) => Ok((n.to_owned(), v.to_owned())),
        _ => Err(format!("{file} has no name or version")),
    }
}

/// The installed package's executable script (its first `bin`).
async fn bin_script(prefix: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = prefix.join("lib/node_modules").join(name);
    let text = tokio::fs::read_to_string(dir.join("package.json"))
        .await
        .map_err(|e| format!("the installed package.json: {e}"))?;
    let manifest: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let relative = match &manifest["bin"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(map) => map
            .get(name)
            .or_else(|| map.values().next())
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        _ => None,
    }
    .ok_or_else(|| format!("{name} declares no executable"))?;
    Ok(dir.join(relative))
}

/// One HTTP GET on loopback with a short timeout: (status, body).
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
}

/// `/readyz` answers 200 with `{"ready": true}` — the body is checked, because an unknown path
/// answers 200 HTML.
pub async fn probe_ready(port: u16) -> bool {
    match get(port, "/readyz").await {
        Some((200, body)) => {
            // Chunked bodies: the JSON object is the part between the outer braces.
            let json = body
                .find('{')
                .zip(body.rfind('}'))
                .map(|(a, b)| &body[a..=b])
                .unwrap_or("");
            serde_json::from_str::<serde_json::Value>(json)
                .is_ok_and(|v| v["ready"] == serde_json::Value::Bool(true))
        }
        _ => false,
    }
}

/// Whether anything answers HTTP on the port.
async fn answers(port: u16) -> bool {
    get(port, "/healthz").await.is_some()
}

/// Whether a process is running (an exited one awaiting its parent's wait — a zombie — is not).
async fn alive(pid: i32) -> bool {
    match tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
