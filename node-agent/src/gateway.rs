//! The managed gateway on this host, for one product: OpenClaw by default, or Moltis (each
//! product's conventions — package, run arguments, environment, configuration file, readiness
//! endpoint — come from [`crate::managed`]).
//!
//! - **Install**: with npm through the governed egress proxy into a versioned prefix, or with
//!   Homebrew or docker ([`crate::methods`]); then a minimal loopback configuration is written.
//! - **Run**: under the service manager chosen once at start ([`crate::service::select`]): the
//!   built-in supervisor ([`crate::supervisor`]), driven directly, or systemd, launchd or docker,
//!   driven through [`ServiceControl`] with a definition generated from the same [`Spec`] the
//!   supervisor would get. A docker install always runs as a container (the docker manager).
//! - **Verify**: ready means the manager's process is running, the same one throughout, and the
//!   product's readiness path answers ready (the JSON body, not just the status); stopped means
//!   the port no longer answers.
//! - **Remember**: what is installed, how, and under which manager is kept in the state
//!   directory. After an agent restart a supervised gateway is started again; one under a service
//!   manager kept running on its own and is only re-attached to.
#![deny(missing_docs)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use moltops_proto::agent::service_action::Action;
use moltops_proto::agent::{
    ActionDone, EgressReport, GatewayStatus, Install, Installed, ServiceAction,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::commands::Context;
use crate::egress::{EgressProxy, Policy, npm_registry_host};
use crate::install::Npm;
use crate::managed::{GatewayDirs, ManagedGateway, OpenClaw};
use crate::methods::{BrewMethod, DockerMethod, Wanted};
use crate::runner::{HostView, ProcessRunner, RealHost, Runner, find_program, run_checked};
use crate::service::{
    ContainerSpec, PortMapping, ServiceControl, ServiceKind, ServiceState, UnitSpec, VolumeMount,
    control_for,
};
use crate::supervisor::{Spec, Stopped, Supervisor};

/// How this agent manages its gateway.
#[derive(Debug, Clone)]
pub struct Options {
    /// The product whose conventions the gateway follows (OpenClaw by default).
    pub product: &'static dyn ManagedGateway,
    /// The npm package to install; `None` means the product's own (`openclaw`).
    pub package: Option<String>,
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
    /// The service manager that runs the gateway, chosen once when the agent starts
    /// ([`crate::service::select`]). A docker install runs under docker whatever this says.
    pub service: ServiceKind,
    /// The image repository docker installs pull from; `None` means the product's own (OpenClaw
    /// publishes one; for Moltis an operator has to name it).
    pub image_repository: Option<String>,
    /// How long a status query to an external service manager may take on the heartbeat path
    /// before the last state it reported is used instead.
    pub status_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            product: &OpenClaw,
            package: None,
            package_file: None,
            port: 18789,
            byte_budget: 2 * 1024 * 1024 * 1024,
            npm_cache: None,
            stop_timeout: Duration::from_secs(330),
            restart_delay: Duration::from_secs(5),
            service: ServiceKind::Supervisor,
            image_repository: None,
            status_timeout: Duration::from_secs(2),
        }
    }
}

/// How the gateway reaches the host: the runner for service-manager and package-manager CLIs,
/// and the view of the host that finds programs and reads `HOME` and the uid. The real ones in
/// the agent; fakes in tests.
#[derive(Clone)]
pub struct HostAccess {
    /// Runs `systemctl`, `launchctl`, `docker` and `brew` (argv vectors, never a shell).
    pub runner: Arc<dyn Runner>,
    /// Answers where programs are, the environment, the OS and the effective uid.
    pub host: Arc<dyn HostView + Send + Sync>,
}

impl HostAccess {
    /// This host, with the CLIs run as real processes.
    pub fn real() -> Self {
        Self {
            runner: Arc::new(ProcessRunner::default()),
            host: Arc::new(RealHost),
        }
    }
}

/// Why an install or action did not complete.
#[derive(Debug, Clone, PartialEq)]
pub enum OpError {
    /// It failed; the message says why.
    Failed(String),
    /// Stopped at the control plane's request, in `step`; `message` says what that leaves.
    Cancelled {
        /// The step that was running.
        step: String,
        /// What the cancel leaves behind.
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

/// How the installed gateway got onto the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Method {
    /// npm into a versioned prefix, run by a Node runtime (records written before the other
    /// methods existed are npm installs).
    #[default]
    Npm,
    /// A Homebrew formula, whose executable runs the gateway.
    Brew,
    /// A container image, run by docker.
    Docker,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Npm => "npm",
            Method::Brew => "brew",
            Method::Docker => "docker",
        }
    }
}

/// What is installed, written to `<state>/gateway.json`. The fields after `script` were added
/// with brew, docker, Moltis and service managers; a record without them is an npm install of
/// OpenClaw under the supervisor, which is what every earlier agent wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Record {
    package: String,
    version: String,
    /// npm: the versioned prefix; brew: the Homebrew prefix; docker: empty.
    prefix: PathBuf,
    /// npm: the Node runtime that runs `script`; brew: the product's executable; docker: empty.
    node: PathBuf,
    /// npm: the package's executable script; otherwise empty.
    script: PathBuf,
    #[serde(default)]
    method: Method,
    #[serde(default = "openclaw")]
    product: String,
    /// [`ServiceKind`]'s name.
    #[serde(default = "supervisor")]
    service_manager: String,
    /// docker: the image id the pull produced, which the container runs (pinned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<String>,
}

fn openclaw() -> String {
    "openclaw".into()
}

fn supervisor() -> String {
    "supervisor".into()
}

/// The managed gateway of this host. One per agent; installs and actions run one at a time.
pub struct Gateway {
    options: Options,
    root: PathBuf,
    access: HostAccess,
    inner: tokio::sync::Mutex<Inner>,
    /// Woken on every status change, so the agent reports it at once.
    changed: Arc<tokio::sync::Notify>,
    /// Installs and actions on the gateway run one at a time, in the order they arrive.
    operations: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct Inner {
    record: Option<Record>,
    manager: Option<Manager>,
}

/// What runs the installed gateway.
#[derive(Clone)]
enum Manager {
    /// The built-in supervisor, inside the agent.
    Supervised(Supervisor),
    /// systemd, launchd or docker, through its CLI.
    External(Arc<External>),
}

/// A service manager outside the agent, and the last state it reported.
struct External {
    control: Box<dyn ServiceControl>,
    /// The service's name (unit, label, container).
    name: String,
    last: std::sync::Mutex<ServiceState>,
}

impl External {
    fn kind(&self) -> ServiceKind {
        self.control.kind()
    }

    /// What the manager says now, within `within` (a slow or failing query is an error).
    async fn query_fresh(&self, within: Duration) -> Result<ServiceState, String> {
        let state = tokio::time::timeout(within, self.control.status())
            .await
            .map_err(|_| {
                format!(
                    "{} did not answer a status query within {} ms",
                    self.kind(),
                    within.as_millis()
                )
            })??;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = state.clone();
        Ok(state)
    }

    /// What the manager says now or, when it does not answer within `within`, what it said last:
    /// the heartbeat path must not wait on a slow `systemctl`.
    async fn query(&self, within: Duration) -> ServiceState {
        match self.query_fresh(within).await {
            Ok(state) => state,
            Err(e) => {
                tracing::debug!("gateway status: {e}; reporting the last known state");
                self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
            }
        }
    }
}

/// What verification needs to know about the gateway's process.
#[derive(Debug, Clone, Default, PartialEq)]
struct Observed {
    running: bool,
    pid: Option<u32>,
    started: Option<DateTime<Utc>>,
}

impl Manager {
    fn kind(&self) -> ServiceKind {
        match self {
            Manager::Supervised(_) => ServiceKind::Supervisor,
            Manager::External(e) => e.kind(),
        }
    }

    /// The process as its manager sees it now. An external manager that cannot say counts as
    /// not running: verification never rests on a stale answer.
    async fn observe(&self, within: Duration) -> Observed {
        match self {
            Manager::Supervised(s) => {
                let status = s.status();
                Observed {
                    running: status.running,
                    pid: status.pid,
                    started: status.last_start_time,
                }
            }
            Manager::External(e) => match e.query_fresh(within).await {
                Ok(state) => Observed {
                    running: state.running,
                    pid: state.pid,
                    started: state.started_at,
                },
                Err(_) => Observed::default(),
            },
        }
    }
}

const RECORD: &str = "gateway.json";
const PID_FILE: &str = "gateway.pid";
/// Present while an operator wants the gateway stopped.
const STOPPED_FILE: &str = "gateway.stopped";
/// Where a container sees the gateway's state directory (a bind mount of the host's).
const CONTAINER_STATE_DIR: &str = "/var/lib/moltops-gateway";
/// How long an install waits for the new version to be ready.
const INSTALL_READY_WITHIN: Duration = Duration::from_secs(120);

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

/// The name of the gateway's service under every external manager: the systemd unit (plus
/// `.service`), the launchd label and the docker container. Ours, not upstream's
/// ([`ManagedGateway::upstream_systemd_unit`]), so that it never collides with a unit an operator
/// installed with the product's own `gateway install`.
pub fn service_name(product: &dyn ManagedGateway) -> String {
    format!("moltops-{}", product.product())
}

impl Gateway {
    /// `root` is the agent's state directory. The host is reached for real.
    pub fn new(root: &Path, options: Options) -> Arc<Self> {
        Self::with_host(root, options, HostAccess::real())
    }

    /// As [`Gateway::new`], reaching the host through `access` (tests pass fakes).
    pub fn with_host(root: &Path, options: Options, access: HostAccess) -> Arc<Self> {
        Arc::new(Self {
            options,
            root: root.to_path_buf(),
            access,
            inner: tokio::sync::Mutex::new(Inner::default()),
            changed: Arc::new(tokio::sync::Notify::new()),
            operations: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.root.join("gateway-state")
    }

    /// The gateway's directories on this host: state and configuration in `gateway-state`,
    /// its own logs in `gateway-state/logs`.
    fn host_dirs(&self) -> GatewayDirs {
        GatewayDirs::under(&self.state_dir())
    }

    /// The directories as the gateway process sees them: a container sees the state directory
    /// where it is mounted. Its configuration and environment name these.
    fn process_dirs(&self, record: &Record) -> GatewayDirs {
        match record.method {
            Method::Docker => GatewayDirs::under(Path::new(CONTAINER_STATE_DIR)),
            Method::Npm | Method::Brew => self.host_dirs(),
        }
    }

    /// The product an installed gateway follows: the one it was installed as.
    fn product_of(&self, record: &Record) -> &'static dyn ManagedGateway {
        crate::managed::by_name(&record.product).unwrap_or(self.options.product)
    }

    /// The service manager an install with `method` runs the gateway under.
    fn kind_for(&self, method: Method) -> Result<ServiceKind, String> {
        match (method, self.options.service) {
            (Method::Docker, _) => Ok(ServiceKind::Docker),
            (method, ServiceKind::Docker) => Err(format!(
                "the docker service manager runs the gateway as a container: install with method \
                 docker, not {}",
                method.as_str()
            )),
            (_, kind) => Ok(kind),
        }
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

    /// The control of an external manager for `record`, and the definition it installs. Built
    /// and checked before anything on the host is changed.
    fn external(
        &self,
        kind: ServiceKind,
        record: &Record,
    ) -> Result<(Arc<External>, UnitSpec), String> {
        let unit = self.unit(kind, record)?;
        let uid = self.access.host.effective_uid();
        // User units and launch agents live under the agent user's home directory.
        let needs_home = match kind {
            ServiceKind::Systemd { user } => user,
            ServiceKind::Launchd => uid != 0,
            ServiceKind::Supervisor | ServiceKind::Docker => false,
        };
        let home = match self.access.host.env("HOME").filter(|h| h.starts_with('/')) {
            Some(home) => PathBuf::from(home),
            None if needs_home => {
                return Err(format!(
                    "{kind} keeps the gateway's definition under the agent user's home directory, \
                     and HOME is not set to an absolute path"
                ));
            }
            None => PathBuf::from("/"),
        };
        let control = control_for(kind, self.access.runner.clone(), &unit, &home, uid)?
            .ok_or_else(|| format!("{kind} is not an external service manager"))?;
        let external = External {
            control,
            name: unit.name.clone(),
            last: std::sync::Mutex::new(ServiceState::default()),
        };
        Ok((Arc::new(external), unit))
    }

    /// The definition an external manager gets: the supervisor's [`Spec`] for the same record,
    /// with the product's "do not restart" exit statuses; for docker, the container around it.
    fn unit(&self, kind: ServiceKind, record: &Record) -> Result<UnitSpec, String> {
        let product = self.product_of(record);
        let mut unit = UnitSpec::from_supervisor_spec(
            &service_name(product),
            &format!("{} gateway (managed by moltops-agent)", product.product()),
            &self.spec(record),
        );
        unit.restart.prevent_exit_statuses = product.restart_prevent_exit_statuses();
        match (kind, record.method) {
            (ServiceKind::Docker, Method::Docker) => {
                let image = record
                    .image
                    .clone()
                    .ok_or("the gateway's record names no image to run")?;
                let port = self.options.port;
                // The container's command, environment and working directory are the image's
                // world, not the host's: state is the bind-mounted directory.
                unit.args = product.container_args(port);
                unit.env = product.environment(&self.process_dirs(record));
                unit.working_dir = None;
                unit.writable_paths = Vec::new();
                unit.container = Some(ContainerSpec {
                    image,
                    ports: vec![PortMapping {
                        host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        host_port: port,
                        container_port: port,
                    }],
                    volumes: vec![VolumeMount {
                        source: crate::service::path_text(&self.state_dir())?,
                        target: CONTAINER_STATE_DIR.to_owned(),
                        read_only: false,
                    }],
                    tmpfs: vec!["/tmp".to_owned()],
                    entrypoint: None,
                    // The agent's uid owns the state directory it created.
                    user: Some(self.access.host.effective_uid().to_string()),
                });
                Ok(unit)
            }
            (ServiceKind::Docker, method) => Err(format!(
                "a {} install cannot run under docker: install with method docker",
                method.as_str()
            )),
            (_, Method::Docker) => Err(format!(
                "a docker install runs as a container, not under {kind}"
            )),
            (_, Method::Npm | Method::Brew) => Ok(unit),
        }
    }

    /// A gateway left running by an agent that was killed: stop it before starting ours (two
    /// gateways must not share a state directory or a port). Only a process whose command line
    /// is our gateway's (its npm script or brew executable) is touched.
    async fn reap_orphan(&self, record: &Record) {
        let identity = match record.method {
            Method::Npm => &record.script,
            Method::Brew => &record.node,
            Method::Docker => return,
        };
        let identity = identity.display().to_string();
        if identity.is_empty() {
            return;
        }
        let Ok(text) = tokio::fs::read_to_string(self.root.join(PID_FILE)).await else {
            return;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return;
        };
        let cmdline = tokio::fs::read(format!("/proc/{pid}/cmdline"))
            .await
            .unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(&identity) {
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

    /// After an agent start: the gateway installed before is back under its manager. The
    /// supervisor starts it again (it died with the old agent); a service manager kept it
    /// running on its own, so the agent only re-attaches — except that a gateway an operator
    /// stopped, which the manager started again (an enabled unit after a reboot), is stopped.
    pub async fn resume(&self) {
        let Ok(text) = tokio::fs::read_to_string(self.root.join(RECORD)).await else {
            return;
        };
        let Ok(record) = serde_json::from_str::<Record>(&text) else {
            tracing::warn!("the gateway record is unreadable; not starting the gateway");
            return;
        };
        let kind = match record.service_manager.parse::<ServiceKind>() {
            Ok(kind) => kind,
            Err(e) => {
                tracing::warn!(
                    "the gateway record names no known service manager ({e}); not starting the gateway"
                );
                return;
            }
        };
        if kind != self.options.service && record.method != Method::Docker {
            tracing::warn!(
                installed_under = %kind,
                configured = %self.options.service,
                "the gateway stays under the service manager it was installed under until the next install"
            );
        }
        if kind == ServiceKind::Supervisor {
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
            inner.manager = Some(Manager::Supervised(supervisor));
            inner.record = Some(record);
            return;
        }
        let external = match self.external(kind, &record) {
            Ok((external, _)) => external,
            Err(e) => {
                tracing::warn!("cannot re-attach to the gateway under {kind}: {e}");
                self.inner.lock().await.record = Some(record);
                return;
            }
        };
        tracing::info!(service = %external.name, "re-attached to the gateway {kind} runs");
        if !desired(&self.root).await {
            // In the background, but ahead of any command (it holds the operations lock): a
            // stop can take the whole drain deadline, and the agent must connect meanwhile.
            let guard = self.operations.clone().lock_owned().await;
            let within = Duration::from_secs(30);
            let stopping = external.clone();
            tokio::spawn(async move {
                let _one_at_a_time = guard;
                if stopping.query_fresh(within).await.is_ok_and(|s| s.running) {
                    match stopping.control.stop().await {
                        Ok(()) => tracing::info!(
                            "the managed gateway was running although an operator stopped it; stopped it again"
                        ),
                        Err(e) => tracing::warn!("could not keep the gateway stopped: {e}"),
                    }
                }
            });
        }
        let mut inner = self.inner.lock().await;
        inner.manager = Some(Manager::External(external));
        inner.record = Some(record);
    }

    fn spec(&self, record: &Record) -> Spec {
        let product = self.product_of(record);
        let mut args = match record.method {
            Method::Npm => vec![record.script.display().to_string()],
            Method::Brew | Method::Docker => Vec::new(),
        };
        args.extend(product.run_args(self.options.port));
        let mut spec = Spec::new(
            record.node.clone(),
            args,
            self.state_dir().join("gateway.out.log"),
        );
        // Its own directories, and (OpenClaw) a doctor that must not fight our manager.
        spec.env = product.environment(&self.process_dirs(record));
        spec.cwd = Some(self.state_dir());
        spec.stop_timeout = self.options.stop_timeout;
        spec.backoff_initial = self.options.restart_delay;
        spec
    }

    /// Installs (or switches to) the requested version with the request's method (`npm`, `brew`
    /// or `docker`), starts it and waits until it is ready.
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
        let mut installed = match request.method.as_str() {
            "npm" => self.install_npm(request, ctx).await?,
            "brew" => self.install_brew(request, ctx).await?,
            "docker" => self.install_docker(request, ctx).await?,
            other => {
                return Err(format!(
                    "install method {other:?} is not available on this agent (npm, brew and docker are)"
                )
                .into());
            }
        };
        installed.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(installed)
    }

    /// npm through the egress proxy, which allows only npm's configured registry.
    async fn install_npm(&self, request: &Install, ctx: &Context) -> Result<Installed, OpError> {
        let kind = self.kind_for(Method::Npm)?;
        let product = self.options.product;
        let package = match (&self.options.package, product.npm_package()) {
            (Some(package), _) => package.clone(),
            (None, Some(package)) => package.to_owned(),
            // A tarball names its own package.
            (None, None) if self.options.package_file.is_some() => String::new(),
            (None, None) => {
                return Err(format!(
                    "{} is not published as an npm package: install it with method brew or docker",
                    product.product()
                )
                .into());
            }
        };
        let (host, port) = npm_registry_host(Path::new("npm"))
            .await
            .map_err(|e| format!("cannot read npm's registry: {e}"))?;
        let budget = if request.byte_budget > 0 {
            request.byte_budget
        } else {
            self.options.byte_budget
        };
        ctx.progress.log(&format!(
            "egress allowed to {host}:{port} (npm's configured registry), budget {budget} bytes"
        ));
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
        let outcome = self.install_with(&npm, &package, kind, request, ctx).await;
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
        Ok(installed)
    }

    async fn install_with(
        &self,
        npm: &Npm,
        package: &str,
        kind: ServiceKind,
        request: &Install,
        ctx: &Context,
    ) -> Result<Installed, OpError> {
        let resolve = async {
            self.resolve(npm, package, request)
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
        self.configure_step(ctx);
        let script = bin_script(&prefix, &name).await?;
        let record = Record {
            package: name,
            version: version.clone(),
            prefix: prefix.clone(),
            node: node.clone(),
            script,
            method: Method::Npm,
            product: self.options.product.product().to_owned(),
            service_manager: kind.as_str().to_owned(),
            image: None,
        };
        self.activate(record, kind, ctx).await?;
        Ok(Installed {
            version,
            prefix: prefix.display().to_string(),
            node: node.display().to_string(),
            egress: Vec::new(),
            duration_ms: 0,
        })
    }

    /// Homebrew: the product's formula at its stable version (Homebrew has no other), run from
    /// the executable it links into Homebrew's `bin`, under the selected manager. Homebrew
    /// downloads through its own client: the agent's egress proxy and byte budget do not apply.
    async fn install_brew(&self, request: &Install, ctx: &Context) -> Result<Installed, OpError> {
        let kind = self.kind_for(Method::Brew)?;
        let product = self.options.product;
        let wanted = Wanted::from_request(&request.channel, &request.version)?;
        let brew = BrewMethod::locate(&*self.access.host, product.package())?;
        ctx.progress
            .log(&format!("Homebrew: {}", brew.brew.display()));
        let done = step(
            ctx,
            "install",
            &format!("brew install or upgrade {}", brew.formula),
            "brew was stopped part-way (running brew again completes or repairs it); the running gateway was not touched",
            brew.install(&*self.access.runner, &wanted),
        )
        .await??;
        ctx.progress.log(&format!(
            "{} {} {}",
            brew.formula, done.version, done.action
        ));
        let bin = brew
            .brew
            .parent()
            .ok_or("Homebrew's brew has no directory")?;
        let binary = bin.join(product.binary());
        if !self.access.host.is_executable(&binary) {
            return Err(format!(
                "brew installed {} {}, but {} is not an executable",
                brew.formula,
                done.version,
                binary.display()
            )
            .into());
        }
        self.configure_step(ctx);
        let prefix = bin.parent().unwrap_or(bin).to_path_buf();
        let record = Record {
            package: brew.formula.clone(),
            version: done.version.clone(),
            prefix: prefix.clone(),
            node: binary.clone(),
            script: PathBuf::new(),
            method: Method::Brew,
            product: product.product().to_owned(),
            service_manager: kind.as_str().to_owned(),
            image: None,
        };
        self.activate(record, kind, ctx).await?;
        Ok(Installed {
            version: done.version,
            prefix: prefix.display().to_string(),
            node: binary.display().to_string(),
            egress: Vec::new(),
            duration_ms: 0,
        })
    }

    /// docker: pull the product's image (the request's version as the tag, or the channel's),
    /// pin the id the pull produced, and run it as a container under docker — whatever service
    /// manager was selected, because a container has no other. The daemon pulls through its own
    /// network path: the agent's egress proxy and byte budget do not apply.
    async fn install_docker(&self, request: &Install, ctx: &Context) -> Result<Installed, OpError> {
        let product = self.options.product;
        if find_program(&*self.access.host, "docker").is_none() {
            return Err("docker is not installed on this host (no docker CLI on PATH)".into());
        }
        let repository = self
            .options
            .image_repository
            .as_deref()
            .or(product.image_repository())
            .ok_or_else(|| {
                format!(
                    "no container image is known for {}: start the agent with --gateway-image REPOSITORY",
                    product.product()
                )
            })?;
        let method = DockerMethod::new("docker", repository)?;
        let wanted = Wanted::from_request(&request.channel, &request.version)?;
        if self.options.service != ServiceKind::Docker {
            ctx.progress.log(&format!(
                "a docker install runs as a container under docker (the agent's service manager is {})",
                self.options.service
            ));
        }
        let daemon = daemon_version_argv();
        let server = step(
            ctx,
            "daemon",
            "checking that the docker daemon answers",
            "nothing was changed",
            run_checked(&*self.access.runner, &daemon),
        )
        .await?
        .map_err(|e| format!("the docker daemon is not reachable: {e}"))?;
        ctx.progress
            .log(&format!("docker daemon {}", server.trim()));
        let image = method.image_for(&wanted);
        let pulled = step(
            ctx,
            "install",
            &format!("docker pull {image}"),
            "the pull was stopped (docker keeps what it fetched); the running gateway was not touched",
            method.install(&*self.access.runner, &wanted, None),
        )
        .await??;
        let version = match pulled.version {
            Some(version) => version,
            None => {
                ctx.progress.log(&format!(
                    "{image} carries no version label; recording its tag"
                ));
                pulled.image.tag.clone()
            }
        };
        self.configure_step(ctx);
        let record = Record {
            package: repository.to_owned(),
            version: version.clone(),
            prefix: PathBuf::new(),
            node: PathBuf::new(),
            script: PathBuf::new(),
            method: Method::Docker,
            product: product.product().to_owned(),
            service_manager: ServiceKind::Docker.as_str().to_owned(),
            image: Some(pulled.id.clone()),
        };
        self.activate(record, ServiceKind::Docker, ctx).await?;
        Ok(Installed {
            version,
            prefix: format!("{} ({})", pulled.image, pulled.id),
            node: String::new(),
            egress: Vec::new(),
            duration_ms: 0,
        })
    }

    fn configure_step(&self, ctx: &Context) {
        ctx.progress.step(
            "configure",
            "writing the local configuration and switching the service to the new version",
        );
    }

    /// Switches to `record` under `kind` and waits until it is ready.
    async fn activate(
        &self,
        record: Record,
        kind: ServiceKind,
        ctx: &Context,
    ) -> Result<(), OpError> {
        let product = self.product_of(&record);
        let version = record.version.clone();
        let manager = self.switch(record, kind).await?;
        let ready = step(
            ctx,
            "verify",
            &format!(
                "waiting for the gateway's {} to say ready",
                product.readiness_path()
            ),
            &format!("version {version} is installed and started, but was not verified ready"),
            self.wait_ready(&manager, product, INSTALL_READY_WITHIN),
        )
        .await?;
        if !ready {
            return Err(format!(
                "installed {version}, but it did not become ready within {} s",
                INSTALL_READY_WITHIN.as_secs()
            )
            .into());
        }
        Ok(())
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

    /// Writes the configuration and the record, and moves the gateway to the new version under
    /// `kind` (not cancellable: it is short, and half of it would leave no gateway). An external
    /// manager's definition is checked before anything is changed; the manager is kept even when
    /// its install fails, so status reports what it says and a start can be retried.
    async fn switch(&self, record: Record, kind: ServiceKind) -> Result<Manager, String> {
        let product = self.product_of(&record);
        let external = match kind {
            ServiceKind::Supervisor => None,
            _ => Some(self.external(kind, &record)?),
        };
        let dirs = self.host_dirs();
        for dir in [&dirs.state_dir, &dirs.config_dir, &dirs.log_dir] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        // A minimal local configuration: loopback, and its own log file (never a shared one).
        let config = product.minimal_config(&self.process_dirs(&record), self.options.port);
        write_atomic(&product.config_path(&dirs), config.as_bytes()).await?;
        write_atomic(
            &self.root.join(RECORD),
            serde_json::to_string_pretty(&record)
                .map_err(|e| e.to_string())?
                .as_bytes(),
        )
        .await?;
        // The status path must never wait behind a stop (up to the stop deadline).
        let old = self.inner.lock().await.manager.take();
        self.retire(old, external.as_ref().map(|(e, _)| e)).await;
        self.reap_orphan(&record).await;
        let (manager, installed) = match external {
            None => (Manager::Supervised(self.supervise(&record)), Ok(())),
            Some((external, unit)) => {
                // The pid file is the supervisor's: a stale one must never name this gateway.
                let _ = tokio::fs::remove_file(self.root.join(PID_FILE)).await;
                let installed = external.control.install(&unit).await.map_err(|e| {
                    format!("{kind} could not install and start the gateway's service: {e}")
                });
                (Manager::External(external), installed)
            }
        };
        {
            let mut inner = self.inner.lock().await;
            inner.manager = Some(manager.clone());
            inner.record = Some(record);
        }
        set_desired(&self.root, true).await;
        if kind != ServiceKind::Supervisor {
            self.changed.notify_one();
        }
        installed?;
        Ok(manager)
    }

    /// Takes the previous manager's gateway away before the new one starts: the supervisor's is
    /// stopped; another external service is removed. The same external service is left alone,
    /// because installing the new definition replaces it.
    async fn retire(&self, old: Option<Manager>, next: Option<&Arc<External>>) {
        match old {
            None => {}
            Some(Manager::Supervised(supervisor)) => {
                supervisor.stop().await;
            }
            Some(Manager::External(old)) => {
                let same = next.is_some_and(|n| n.kind() == old.kind() && n.name == old.name);
                if !same && let Err(e) = old.control.uninstall().await {
                    tracing::warn!(
                        "could not remove the previous gateway service {} from {}: {e}",
                        old.name,
                        old.kind()
                    );
                }
            }
        }
    }

    /// Ready means: the manager's process is running, the same one throughout, and the port
    /// answers ready — so another process on the port, or one that crashes while an old one still
    /// answers, is not mistaken for success.
    async fn wait_ready(
        &self,
        manager: &Manager,
        product: &dyn ManagedGateway,
        within: Duration,
    ) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let before = manager.observe(self.options.status_timeout).await;
            if before.running && probe_ready(self.options.port, product).await {
                let after = manager.observe(self.options.status_timeout).await;
                if after.running && after.pid == before.pid {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    async fn wait_gone(&self, product: &dyn ManagedGateway, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !answers(self.options.port, product).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Start, stop or restart, then verify: ready for start and restart (a restart also needs a
    /// new start time or a new process), no longer answering for stop.
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
        let (manager, product) = {
            let inner = self.inner.lock().await;
            let Some(record) = &inner.record else {
                return Err("no gateway is installed on this node".into());
            };
            let manager = inner
                .manager
                .clone()
                .ok_or_else(|| "the gateway has no service manager attached".to_owned())?;
            (manager, self.product_of(record))
        };
        let kind = manager.kind();
        let before = manager.observe(self.options.status_timeout).await;
        let elapsed = |t: Instant| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
        let verifying = format!(
            "waiting for the gateway's {} to say ready",
            product.readiness_path()
        );
        let result = match Action::try_from(request.action) {
            Ok(Action::Start) => {
                ctx.progress.step("start", "starting the gateway");
                match &manager {
                    Manager::Supervised(supervisor) => {
                        if !supervisor.status().desired_running {
                            supervisor.resume().await;
                        }
                    }
                    Manager::External(external) => external
                        .control
                        .start()
                        .await
                        .map_err(|e| format!("{kind} could not start the gateway: {e}"))?,
                }
                set_desired(&self.root, true).await;
                let ready = step(
                    ctx,
                    "verify",
                    &verifying,
                    "the gateway was started, but was not verified ready",
                    self.wait_ready(&manager, product, within),
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
                let how = match &manager {
                    Manager::Supervised(supervisor) => {
                        let stopped = step(
                            ctx,
                            "stop",
                            "stopping the gateway: SIGTERM, then SIGKILL at the deadline",
                            "the stop goes on without the job: the gateway was sent SIGTERM and is killed at the deadline",
                            supervisor.stop(),
                        )
                        .await?;
                        match stopped {
                            Stopped::Graceful => "exited on SIGTERM",
                            Stopped::Killed => "ignored SIGTERM and was killed at the deadline",
                            Stopped::NotRunning => "was not running",
                        }
                        .to_owned()
                    }
                    Manager::External(external) => {
                        step(
                            ctx,
                            "stop",
                            &format!(
                                "stopping the gateway with {kind}: SIGTERM, then SIGKILL at the deadline"
                            ),
                            &format!(
                                "the job stopped waiting; {kind} was asked to stop the gateway and may still be stopping it"
                            ),
                            external.control.stop(),
                        )
                        .await?
                        .map_err(|e| format!("{kind} could not stop the gateway: {e}"))?;
                        format!("stopped by {kind}")
                    }
                };
                let gone = step(
                    ctx,
                    "verify",
                    "waiting for the gateway's port to close",
                    "the gateway process was stopped; its port was not yet verified closed",
                    self.wait_gone(product, within),
                )
                .await?;
                let evidence = if gone {
                    format!("{how}; port closed after {} ms", elapsed(started))
                } else {
                    format!("{how}; still answering after {} s", within.as_secs())
                };
                (gone, evidence)
            }
            Ok(Action::Restart) => {
                set_desired(&self.root, true).await;
                match &manager {
                    Manager::Supervised(supervisor) => {
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
                    }
                    Manager::External(external) => step(
                        ctx,
                        "restart",
                        &format!("restarting the gateway with {kind}"),
                        &format!(
                            "the job stopped waiting; {kind} was asked to restart the gateway and may still be restarting it"
                        ),
                        external.control.restart(),
                    )
                    .await?
                    .map_err(|e| format!("{kind} could not restart the gateway: {e}"))?,
                }
                let ready = step(
                    ctx,
                    "verify",
                    &verifying,
                    "the gateway was restarted, but was not verified ready",
                    self.wait_ready(&manager, product, within),
                )
                .await?;
                let after = manager.observe(self.options.status_timeout).await;
                let restarted = after.started > before.started
                    || (before.pid.is_some() && after.pid.is_some() && after.pid != before.pid);
                let evidence = match (ready, restarted) {
                    (true, true) => format!("restarted and ready after {} ms", elapsed(started)),
                    (false, _) => format!("not ready after {} s", within.as_secs()),
                    (true, false) => "answering, but no new start was seen".to_owned(),
                };
                (ready && restarted, evidence)
            }
            _ => return Err("unknown service action".into()),
        };
        let (verified, evidence) = result;
        if kind != ServiceKind::Supervisor {
            // The supervisor reports its own changes; an external manager's are seen here.
            self.changed.notify_one();
        }
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

    /// What the control plane is told with every heartbeat. Quick: an external manager's query
    /// is bounded by [`Options::status_timeout`], after which its last answer is reported.
    pub async fn status(&self) -> GatewayStatus {
        let (record, manager) = {
            let inner = self.inner.lock().await;
            (inner.record.clone(), inner.manager.clone())
        };
        let Some(record) = record else {
            return GatewayStatus {
                service_manager: self.options.service.as_str().into(),
                ..GatewayStatus::default()
            };
        };
        let product = self.product_of(&record);
        let (service_manager, seen) = match &manager {
            Some(Manager::Supervised(supervisor)) => {
                let status = supervisor.status();
                (
                    ServiceKind::Supervisor.as_str().to_owned(),
                    Seen {
                        running: status.running,
                        last_start: status.last_start_time,
                        restarts: status.restart_count_24h,
                        crash_loop: status.crash_loop,
                        last_exit: status.last_exit.unwrap_or_default(),
                    },
                )
            }
            Some(Manager::External(external)) => {
                let state = external.query(self.options.status_timeout).await;
                (
                    external.kind().as_str().to_owned(),
                    Seen {
                        running: state.running,
                        last_start: state.started_at,
                        restarts: state.restart_count.unwrap_or(0),
                        crash_loop: state.crash_loop,
                        last_exit: state.last_exit.unwrap_or_default(),
                    },
                )
            }
            None => (record.service_manager.clone(), Seen::default()),
        };
        // A quick probe: this runs on the agent's session loop.
        let connected = seen.running
            && tokio::time::timeout(
                Duration::from_millis(500),
                probe_ready(self.options.port, product),
            )
            .await
            .unwrap_or(false);
        GatewayStatus {
            installed: true,
            running: seen.running,
            version: record.version,
            service_manager,
            config_path: product.config_path(&self.host_dirs()).display().to_string(),
            last_start_unix_ms: seen.last_start.map_or(0, |t| t.timestamp_millis()),
            restart_count_24h: seen.restarts,
            gateway_connected: connected,
            crash_loop: seen.crash_loop,
            last_exit: seen.last_exit,
        }
    }

    /// When the agent shuts down: a supervised gateway stops with it; one under a service
    /// manager keeps running (that is what the manager is for).
    pub async fn shutdown(&self) {
        let manager = self.inner.lock().await.manager.take();
        match manager {
            Some(Manager::Supervised(supervisor)) => {
                supervisor.stop().await;
            }
            Some(Manager::External(external)) => {
                tracing::info!(
                    service = %external.name,
                    "the gateway keeps running under {}",
                    external.kind()
                );
            }
            None => {}
        }
    }
}

/// The manager-neutral figures a heartbeat reports.
#[derive(Default)]
struct Seen {
    running: bool,
    last_start: Option<DateTime<Utc>>,
    /// The supervisor counts restarts over 24 hours; systemd and docker since the service was
    /// loaded or created.
    restarts: u32,
    crash_loop: bool,
    last_exit: String,
}

/// `docker version --format {{.Server.Version}}`: fails when the daemon does not answer.
fn daemon_version_argv() -> Vec<String> {
    crate::runner::argv(&["docker", "version", "--format", "{{.Server.Version}}"])
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

/// Whether the gateway on `port` says it is ready, as `product` judges the answer on its
/// readiness path (OpenClaw: `/readyz` with `{"ready": true}`; Moltis: `/health` with
/// `{"status": "ok"}`). The body is checked, because an unknown path answers 200 HTML.
pub async fn probe_ready(port: u16, product: &dyn ManagedGateway) -> bool {
    match get(port, product.readiness_path()).await {
        Some((status, body)) => product.judge_ready(status, &body),
        None => false,
    }
}

/// Whether anything answers HTTP on the port.
async fn answers(port: u16, product: &dyn ManagedGateway) -> bool {
    get(port, product.readiness_path()).await.is_some()
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

#[cfg(test)]
mod tests {
    //! The gateway driven through external service managers and the brew and docker methods,
    //! against a fake host: a runner that plays `systemctl --user`, `brew` and `docker` over a
    //! small model of the host, and a loopback HTTP server that plays the gateway process (it
    //! answers while the model says the service runs). The supervisor path with real processes
    //! is covered end to end (`tests/it/gateway.rs`, `tests/it/jobs.rs`).
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use moltops_proto::agent::ServiceAction;

    use super::*;
    use crate::managed::Moltis;
    use crate::runner::fake::FakeHost;
    use crate::runner::{BoxFuture, CommandOutput};

    const LINUXBREW_BIN: &str = "/home/linuxbrew/.linuxbrew/bin";
    const IMAGE_ID: &str =
        "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("moltops-gateway-{}", uuid::Uuid::new_v4().simple()))
    }

    /// The stand-in for the gateway process: a loopback HTTP server that answers the product's
    /// readiness path while `serving`, and closes every connection unanswered otherwise (a
    /// stopped gateway's port).
    struct FakeProcess {
        port: u16,
        serving: Arc<AtomicBool>,
        paths: Arc<Mutex<Vec<String>>>,
    }

    impl FakeProcess {
        async fn start(product: &dyn ManagedGateway) -> Self {
            let ready_path = product.readiness_path();
            let ready_body = match product.product() {
                "moltis" => r#"{"status":"ok","version":"0.9.3"}"#,
                _ => r#"{"ready":true,"failing":[]}"#,
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let serving = Arc::new(AtomicBool::new(false));
            let paths = Arc::new(Mutex::new(Vec::new()));
            let (on, seen) = (serving.clone(), paths.clone());
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    if !on.load(Ordering::SeqCst) {
                        continue;
                    }
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let mut request = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                        let text = String::from_utf8_lossy(&request).into_owned();
                        let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                        seen.lock().unwrap().push(path.clone());
                        // Unknown paths answer the UI's HTML with 200, as OpenClaw's do.
                        let (kind, body) = if path == ready_path {
                            ("application/json", ready_body)
                        } else {
                            ("text/html", "<!doctype html><title>gateway</title>")
                        };
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            });
            Self {
                port,
                serving,
                paths,
            }
        }

        fn paths(&self) -> Vec<String> {
            self.paths.lock().unwrap().clone()
        }
    }

    /// The host's state as the fake CLIs see and change it.
    #[derive(Default)]
    struct World {
        brew_installed: Option<String>,
        running: bool,
        pid: u32,
        starts: u32,
        container: bool,
        daemon_up: bool,
        hang_status: bool,
    }

    /// Plays `brew`, `systemctl --user` and `docker` over a [`World`], recording every argv.
    struct FakeCli {
        calls: Mutex<Vec<Vec<String>>>,
        world: Mutex<World>,
        serving: Arc<AtomicBool>,
    }

    impl FakeCli {
        fn new(process: &FakeProcess) -> Arc<Self> {
            Arc::new(Self {
                calls: Mutex::new(Vec::new()),
                world: Mutex::new(World {
                    daemon_up: true,
                    pid: 4200,
                    ..World::default()
                }),
                serving: process.serving.clone(),
            })
        }

        /// Every argv so far, each joined with spaces; and forgets them.
        fn take_lines(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap())
                .iter()
                .map(|argv| argv.join(" "))
                .collect()
        }

        fn take_calls(&self) -> Vec<Vec<String>> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }

        fn world(&self) -> std::sync::MutexGuard<'_, World> {
            self.world.lock().unwrap()
        }

        fn start(&self, world: &mut World, fresh: bool) {
            if fresh || !world.running {
                world.running = true;
                world.pid += 1;
                world.starts += 1;
            }
            self.serving.store(true, Ordering::SeqCst);
        }

        fn stop(&self, world: &mut World) {
            world.running = false;
            self.serving.store(false, Ordering::SeqCst);
        }

        fn answer(&self, argv: &[&str]) -> Option<Result<CommandOutput, String>> {
            let mut world = self.world.lock().unwrap();
            let ok = |out: &str| Some(Ok(CommandOutput::ok(out)));
            let brew = format!("{LINUXBREW_BIN}/brew");
            match argv {
                [b, "list", "--versions", formula] if *b == brew => match &world.brew_installed {
                    Some(v) => ok(&format!("{formula} {v}\n")),
                    None => Some(Ok(CommandOutput::failed(
                        1,
                        &format!("Error: No such keg: /home/linuxbrew/.linuxbrew/Cellar/{formula}"),
                    ))),
                },
                [b, "info", "--json=v2", formula] if *b == brew => ok(&format!(
                    r#"{{"formulae":[{{"name":"{formula}","versions":{{"stable":"2026.9.6"}}}}],"casks":[]}}"#
                )),
                [b, "install", _] if *b == brew => {
                    world.brew_installed = Some("2026.9.6".into());
                    ok("")
                }
                [
                    "systemctl",
                    "--user",
                    "daemon-reload" | "enable" | "reset-failed",
                    ..,
                ] => ok(""),
                ["systemctl", "--user", "start", _] => {
                    self.start(&mut world, false);
                    ok("")
                }
                ["systemctl", "--user", "restart", _] => {
                    self.start(&mut world, true);
                    ok("")
                }
                ["systemctl", "--user", "stop", _] => {
                    self.stop(&mut world);
                    ok("")
                }
                ["systemctl", "--user", "show", ..] if world.hang_status => None,
                ["systemctl", "--user", "show", ..] => {
                    let (active, sub, pid, code) = if world.running {
                        ("active", "running", world.pid, 0)
                    } else {
                        ("inactive", "dead", 0, 1)
                    };
                    ok(&format!(
                        "LoadState=loaded\nActiveState={active}\nSubState={sub}\nResult=success\n\
                         MainPID={pid}\nExecMainStartTimestamp=Sat 2026-11-21 16:11:{:02} UTC\n\
                         NRestarts=0\nExecMainCode={code}\nExecMainStatus=0\n",
                        world.starts
                    ))
                }
                ["docker", "version", ..] if world.daemon_up => ok("28.2.2\n"),
                ["docker", "version", ..] => Some(Ok(CommandOutput::failed(
                    1,
                    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?",
                ))),
                ["docker", "pull", _] => ok("Status: Downloaded newer image\n"),
                ["docker", "image", "inspect", "--format", "{{.Id}}", _] => {
                    ok(&format!("{IMAGE_ID}\n"))
                }
                ["docker", "image", "inspect", "--format", _, _] => ok("2026.9.1\n"),
                ["docker", "inspect", ..] if world.hang_status => None,
                ["docker", "inspect", .., name] if !world.container => Some(Ok(
                    CommandOutput::failed(1, &format!("Error: No such container: {name}")),
                )),
                ["docker", "inspect", ..] => ok(&format!(
                    r#"{{"State":{{"Status":"{}","Running":{},"Restarting":false,"OOMKilled":false,"Pid":{},"ExitCode":0,"Error":"","StartedAt":"2026-11-21T16:11:{:02}.5Z"}},"RestartCount":0}}"#,
                    if world.running { "running" } else { "exited" },
                    world.running,
                    if world.running { world.pid } else { 0 },
                    world.starts
                )),
                ["docker", "run", ..] => {
                    world.container = true;
                    self.start(&mut world, true);
                    ok("0123abcd\n")
                }
                ["docker", "stop", ..] => {
                    self.stop(&mut world);
                    ok("")
                }
                ["docker", "rm", _] => {
                    world.container = false;
                    ok("")
                }
                _ => Some(Err(format!("unexpected command: {}", argv.join(" ")))),
            }
        }
    }

    impl Runner for FakeCli {
        fn run<'a>(&'a self, argv: &'a [String]) -> BoxFuture<'a, Result<CommandOutput, String>> {
            self.calls.lock().unwrap().push(argv.to_vec());
            let words: Vec<&str> = argv.iter().map(String::as_str).collect();
            match self.answer(&words) {
                Some(answer) => Box::pin(async move { answer }),
                // A manager that never answers.
                None => Box::pin(std::future::pending()),
            }
        }
    }

    /// A Linux host with linuxbrew (and the product's executable in its `bin`) and docker.
    fn host(home: &Path, product: &dyn ManagedGateway) -> FakeHost {
        FakeHost::new("linux", 1000)
            .var("HOME", &home.display().to_string())
            .var("PATH", "/usr/local/bin:/usr/bin")
            .executable(&format!("{LINUXBREW_BIN}/brew"))
            .executable(&format!("{LINUXBREW_BIN}/{}", product.binary()))
            .executable("/usr/bin/docker")
    }

    struct Setup {
        root: PathBuf,
        home: PathBuf,
        process: FakeProcess,
        cli: Arc<FakeCli>,
        options: Options,
    }

    impl Setup {
        async fn new(product: &'static dyn ManagedGateway, service: ServiceKind) -> Self {
            let dir = scratch();
            let process = FakeProcess::start(product).await;
            let cli = FakeCli::new(&process);
            let options = Options {
                product,
                service,
                port: process.port,
                stop_timeout: Duration::from_secs(30),
                ..Options::default()
            };
            Self {
                root: dir.join("state"),
                home: dir.join("home"),
                process,
                cli,
                options,
            }
        }

        /// A gateway as a (re)started agent has it, on this setup's host.
        fn gateway(&self, host: FakeHost) -> Arc<Gateway> {
            Gateway::with_host(
                &self.root,
                self.options.clone(),
                HostAccess {
                    runner: self.cli.clone(),
                    host: Arc::new(host),
                },
            )
        }

        fn host(&self) -> FakeHost {
            host(&self.home, self.options.product)
        }

        fn read(&self, relative: &str) -> String {
            std::fs::read_to_string(self.root.join(relative)).unwrap()
        }
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            if let Some(dir) = self.root.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn install(method: &str, channel: &str, version: &str) -> Install {
        Install {
            method: method.into(),
            channel: channel.into(),
            version: version.into(),
            ..Install::default()
        }
    }

    fn action(action: Action) -> ServiceAction {
        ServiceAction {
            action: action.into(),
            verify_timeout_seconds: 10,
        }
    }

    fn failure<T: std::fmt::Debug>(result: Result<T, OpError>) -> String {
        match result {
            Err(OpError::Failed(message)) => message,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_brew_install_under_systemd_user_writes_the_unit_starts_it_and_verifies_readiness() {
        let setup = Setup::new(&OpenClaw, ServiceKind::Systemd { user: true }).await;
        let gateway = setup.gateway(setup.host());
        let ctx = Context::detached();

        let installed = gateway
            .install(&install("brew", "stable", ""), &ctx)
            .await
            .unwrap();
        assert_eq!(installed.version, "2026.9.6");
        assert_eq!(installed.node, format!("{LINUXBREW_BIN}/openclaw"));
        assert_eq!(installed.prefix, "/home/linuxbrew/.linuxbrew");
        assert!(installed.egress.is_empty());
        assert_eq!(
            setup.cli.take_lines(),
            [
                format!("{LINUXBREW_BIN}/brew list --versions openclaw"),
                format!("{LINUXBREW_BIN}/brew info --json=v2 openclaw"),
                format!("{LINUXBREW_BIN}/brew install openclaw"),
                format!("{LINUXBREW_BIN}/brew list --versions openclaw"),
                "systemctl --user daemon-reload".into(),
                "systemctl --user enable moltops-openclaw.service".into(),
                "systemctl --user reset-failed moltops-openclaw.service".into(),
                "systemctl --user restart moltops-openclaw.service".into(),
                // Verification: running, ready, and still the same process.
                format!(
                    "systemctl --user show moltops-openclaw.service -p {}",
                    crate::service::systemd::SHOW_PROPERTIES
                ),
                format!(
                    "systemctl --user show moltops-openclaw.service -p {}",
                    crate::service::systemd::SHOW_PROPERTIES
                ),
            ]
        );

        // The unit runs exactly what the supervisor would have run.
        let state = setup.root.join("gateway-state");
        let unit = std::fs::read_to_string(
            setup
                .home
                .join(".config/systemd/user/moltops-openclaw.service"),
        )
        .unwrap();
        let port = setup.process.port;
        for line in [
            format!(
                "ExecStart=\"{LINUXBREW_BIN}/openclaw\" \"gateway\" \"run\" \"--bind\" \"loopback\" \"--port\" \"{port}\" \"--allow-unconfigured\""
            ),
            format!("Environment=\"OPENCLAW_STATE_DIR={}\"", state.display()),
            format!(
                "Environment=\"OPENCLAW_CONFIG_PATH={}\"",
                state.join("openclaw.json").display()
            ),
            "Environment=\"OPENCLAW_SERVICE_REPAIR_POLICY=external\"".into(),
            format!("WorkingDirectory={}", state.display()),
            format!(
                "StandardOutput=append:{}",
                state.join("gateway.out.log").display()
            ),
            "RestartPreventExitStatus=78".into(),
            "TimeoutStopSec=30".into(),
            "Description=openclaw gateway (managed by moltops-agent)".into(),
        ] {
            assert!(unit.lines().any(|l| l == line), "{line:?} not in:\n{unit}");
        }
        // OpenClaw's configuration, byte for byte what the agent has always written.
        assert_eq!(
            setup.read("gateway-state/openclaw.json"),
            format!(
                r#"{{"gateway":{{"mode":"local"}},"logging":{{"file":"{}"}}}}"#,
                state.join("logs/openclaw.log").display()
            )
        );
        let record: serde_json::Value = serde_json::from_str(&setup.read("gateway.json")).unwrap();
        assert_eq!(record["method"], "brew");
        assert_eq!(record["service_manager"], "systemd-user");
        assert_eq!(record["product"], "openclaw");
        assert!(setup.process.paths().iter().all(|p| p == "/readyz"));

        let status = gateway.status().await;
        assert_eq!(
            status,
            GatewayStatus {
                installed: true,
                running: true,
                version: "2026.9.6".into(),
                service_manager: "systemd-user".into(),
                config_path: state.join("openclaw.json").display().to_string(),
                last_start_unix_ms: "2026-11-21T16:11:01Z"
                    .parse::<DateTime<Utc>>()
                    .unwrap()
                    .timestamp_millis(),
                restart_count_24h: 0,
                gateway_connected: true,
                crash_loop: false,
                last_exit: String::new(),
            }
        );
        // The agent shutting down leaves the service to its manager.
        setup.cli.take_lines();
        gateway.shutdown().await;
        assert!(setup.cli.take_lines().is_empty());
        assert!(setup.cli.world().running);
    }

    #[tokio::test]
    async fn actions_go_through_the_external_manager_and_an_agent_restart_only_reattaches() {
        let setup = Setup::new(&OpenClaw, ServiceKind::Systemd { user: true }).await;
        let ctx = Context::detached();
        let first = setup.gateway(setup.host());
        first.install(&install("brew", "", ""), &ctx).await.unwrap();
        first.shutdown().await;
        setup.cli.take_lines();
        let show = format!(
            "systemctl --user show moltops-openclaw.service -p {}",
            crate::service::systemd::SHOW_PROPERTIES
        );

        // A restarted agent re-attaches: nothing is stopped or started.
        let gateway = setup.gateway(setup.host());
        gateway.resume().await;
        assert!(setup.cli.take_lines().is_empty());
        let pid = setup.cli.world().pid;
        assert!(gateway.status().await.running);
        assert_eq!(setup.cli.take_lines(), std::slice::from_ref(&show));

        let done = gateway
            .action(&action(Action::Restart), &ctx)
            .await
            .unwrap();
        assert!(done.verified, "{}", done.evidence);
        assert!(
            done.evidence.starts_with("restarted and ready after"),
            "{}",
            done.evidence
        );
        assert_eq!(setup.cli.world().pid, pid + 1);
        assert_eq!(
            setup.cli.take_lines(),
            [
                show.clone(),
                "systemctl --user reset-failed moltops-openclaw.service".into(),
                "systemctl --user restart moltops-openclaw.service".into(),
                show.clone(),
                show.clone(),
                show.clone(),
            ]
        );

        let done = gateway.action(&action(Action::Stop), &ctx).await.unwrap();
        assert!(done.verified, "{}", done.evidence);
        assert!(
            done.evidence
                .starts_with("stopped by systemd-user; port closed after"),
            "{}",
            done.evidence
        );
        assert_eq!(
            setup.cli.take_lines(),
            [
                show.clone(),
                "systemctl --user stop moltops-openclaw.service".into()
            ]
        );
        assert!(setup.root.join(STOPPED_FILE).exists());
        let status = gateway.status().await;
        assert!(!status.running && !status.gateway_connected);
        assert_eq!(status.last_exit, "exit code 0");
        setup.cli.take_lines();

        // The host rebooted and the enabled unit came up again: the operator's stop lasts. The
        // agent stops it in the background, ahead of the next command.
        setup.cli.start(&mut setup.cli.world(), true);
        let gateway = setup.gateway(setup.host());
        gateway.resume().await;
        let done = gateway.action(&action(Action::Start), &ctx).await.unwrap();
        assert!(done.verified, "{}", done.evidence);
        assert!(
            done.evidence.starts_with("ready after"),
            "{}",
            done.evidence
        );
        assert!(!setup.root.join(STOPPED_FILE).exists());
        assert_eq!(
            setup.cli.take_lines(),
            [
                show.clone(),
                "systemctl --user stop moltops-openclaw.service".into(),
                show.clone(),
                "systemctl --user reset-failed moltops-openclaw.service".into(),
                "systemctl --user start moltops-openclaw.service".into(),
                show.clone(),
                show.clone(),
            ]
        );
    }

    #[tokio::test]
    async fn a_heartbeat_reports_the_last_known_state_when_the_manager_hangs() {
        let mut setup = Setup::new(&OpenClaw, ServiceKind::Systemd { user: true }).await;
        setup.options.status_timeout = Duration::from_millis(50);
        let gateway = setup.gateway(setup.host());
        gateway
            .install(&install("brew", "", ""), &Context::detached())
            .await
            .unwrap();
        setup.cli.world().hang_status = true;
        let status = tokio::time::timeout(Duration::from_secs(10), gateway.status())
            .await
            .expect("the status query is bounded");
        assert!(status.running && status.installed);
        assert_eq!(status.service_manager, "systemd-user");
        // Verification never rests on a stale answer: a hung manager is not ready.
        let ctx = Context::detached();
        let mut start = action(Action::Start);
        start.verify_timeout_seconds = 1;
        setup.cli.world().hang_status = false;
        setup.cli.stop(&mut setup.cli.world());
        setup.cli.world().hang_status = true;
        let done = tokio::time::timeout(Duration::from_secs(10), gateway.action(&start, &ctx))
            .await
            .expect("verification is bounded")
            .unwrap();
        assert!(!done.verified, "{}", done.evidence);
    }

    #[tokio::test]
    async fn a_docker_install_pulls_pins_the_image_and_runs_a_locked_down_container() {
        // The agent's manager is the supervisor: a docker install runs under docker regardless.
        let setup = Setup::new(&OpenClaw, ServiceKind::Supervisor).await;
        let gateway = setup.gateway(setup.host());
        let installed = gateway
            .install(&install("docker", "", "2026.9.1"), &Context::detached())
            .await
            .unwrap();
        let image = format!("{}:2026.9.1", crate::methods::OPENCLAW_IMAGE_REPOSITORY);
        assert_eq!(installed.version, "2026.9.1");
        assert_eq!(installed.prefix, format!("{image} ({IMAGE_ID})"));
        let calls = setup.cli.take_calls();
        let lines: Vec<String> = calls.iter().map(|argv| argv.join(" ")).collect();
        assert_eq!(lines[0], "docker version --format {{.Server.Version}}");
        assert_eq!(lines[1], format!("docker pull {image}"));
        assert_eq!(
            lines[2],
            format!("docker image inspect --format {{{{.Id}}}} {image}")
        );
        assert!(lines[3].starts_with("docker image inspect --format {{index .Config.Labels"));
        // No container yet, so nothing to replace; then the run; then verification.
        assert!(lines[4].starts_with("docker inspect --type container"));
        assert!(lines[6].starts_with("docker inspect --type container"));
        assert!(lines[7].starts_with("docker inspect --type container"));
        assert_eq!(lines.len(), 8);
        let port = setup.process.port;
        let state = setup.root.join("gateway-state");
        let run = &calls[5];
        let expected: Vec<String> = [
            "docker",
            "run",
            "--detach",
            "--name",
            "moltops-openclaw",
            "--restart",
            "unless-stopped",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--stop-signal",
            "SIGTERM",
            "--stop-timeout",
            "30",
            "--publish",
            &format!("127.0.0.1:{port}:{port}"),
            "--volume",
            &format!("{}:/var/lib/moltops-gateway", state.display()),
            "--tmpfs",
            "/tmp",
            "--env",
            "OPENCLAW_STATE_DIR=/var/lib/moltops-gateway", // pragma: allowlist secret
            "--env",
            "OPENCLAW_CONFIG_PATH=/var/lib/moltops-gateway/openclaw.json",
            "--env",
            "OPENCLAW_SERVICE_REPAIR_POLICY=external",
            "--user",
            "1000",
            IMAGE_ID,
            "node",
            "dist/index.js",
            "gateway",
            "run",
            "--bind",
            "lan",
            "--port",
            &port.to_string(),
            "--allow-unconfigured",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        assert_eq!(run, &expected);
        // The configuration sits on the host and names the paths the container sees.
        assert_eq!(
            setup.read("gateway-state/openclaw.json"),
            r#"{"gateway":{"mode":"local"},"logging":{"file":"/var/lib/moltops-gateway/logs/openclaw.log"}}"#
        );
        let status = gateway.status().await;
        assert_eq!(status.service_manager, "docker");
        assert!(status.running && status.gateway_connected);
        assert_eq!(
            status.config_path,
            state.join("openclaw.json").display().to_string()
        );
    }

    #[tokio::test]
    async fn installs_fail_cleanly_where_their_cli_or_daemon_is_missing() {
        let setup = Setup::new(&OpenClaw, ServiceKind::Supervisor).await;
        let ctx = Context::detached();
        // This machine's situation for brew, and for docker without its CLI.
        let bare = FakeHost::new("linux", 0).var("PATH", "/usr/bin");
        let gateway = setup.gateway(bare);
        assert_eq!(
            failure(gateway.install(&install("docker", "", ""), &ctx).await),
            "docker is not installed on this host (no docker CLI on PATH)"
        );
        assert_eq!(
            failure(gateway.install(&install("brew", "", ""), &ctx).await),
            "Homebrew refuses to run as root: run the agent as the user who owns the Homebrew prefix, or use the npm method"
        );
        let user = FakeHost::new("linux", 1000).var("PATH", "/usr/bin");
        assert!(
            failure(
                setup
                    .gateway(user)
                    .install(&install("brew", "", ""), &ctx)
                    .await
            )
            .starts_with("Homebrew is a macOS install method, and this linux host has no Homebrew")
        );
        assert_eq!(
            failure(gateway.install(&install("apt", "", ""), &ctx).await),
            "install method \"apt\" is not available on this agent (npm, brew and docker are)"
        );
        assert!(setup.cli.take_lines().is_empty());

        // This machine's situation for docker: the CLI is there, its daemon is not.
        setup.cli.world().daemon_up = false;
        let gateway = setup.gateway(setup.host());
        assert_eq!(
            failure(gateway.install(&install("docker", "", ""), &ctx).await),
            "the docker daemon is not reachable: `docker version --format {{.Server.Version}}` failed (exit 1): Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
        );
        assert_eq!(setup.cli.take_lines().len(), 1);
        // A request that names something invalid is refused before anything runs.
        setup.cli.world().daemon_up = true;
        assert!(
            failure(
                gateway
                    .install(&install("docker", "", "--privileged"), &ctx)
                    .await
            )
            .starts_with("invalid version \"--privileged\"")
        );
        assert!(setup.cli.take_lines().is_empty());
        assert!(!setup.root.join(RECORD).exists());
        assert_eq!(gateway.status().await.service_manager, "supervisor");
    }

    #[tokio::test]
    async fn a_container_manager_takes_only_container_installs() {
        let setup = Setup::new(&OpenClaw, ServiceKind::Docker).await;
        let gateway = setup.gateway(setup.host());
        let ctx = Context::detached();
        for method in ["npm", "brew"] {
            assert_eq!(
                failure(gateway.install(&install(method, "", ""), &ctx).await),
                format!(
                    "the docker service manager runs the gateway as a container: install with method docker, not {method}"
                )
            );
        }
        assert!(setup.cli.take_lines().is_empty());
        assert_eq!(gateway.status().await.service_manager, "docker");
    }

    #[tokio::test]
    async fn moltis_gets_its_config_at_its_path_and_is_judged_ready_on_health() {
        let setup = Setup::new(&Moltis, ServiceKind::Systemd { user: true }).await;
        let gateway = setup.gateway(setup.host());
        let ctx = Context::detached();
        assert_eq!(
            failure(gateway.install(&install("npm", "", ""), &ctx).await),
            "moltis is not published as an npm package: install it with method brew or docker"
        );
        assert_eq!(
            failure(gateway.install(&install("docker", "", ""), &ctx).await),
            "no container image is known for moltis: start the agent with --gateway-image REPOSITORY"
        );
        assert!(setup.cli.take_lines().is_empty());

        let installed = gateway
            .install(&install("brew", "stable", ""), &ctx)
            .await
            .unwrap();
        assert_eq!(installed.node, format!("{LINUXBREW_BIN}/moltis"));
        let lines = setup.cli.take_lines();
        assert_eq!(lines[2], format!("{LINUXBREW_BIN}/brew install moltis"));
        assert_eq!(lines[7], "systemctl --user restart moltops-moltis.service");

        let state = setup.root.join("gateway-state");
        let port = setup.process.port;
        assert_eq!(
            setup.read("gateway-state/moltis.toml"),
            Moltis.minimal_config(&GatewayDirs::under(&state), port)
        );
        assert!(!state.join("openclaw.json").exists());
        let unit = std::fs::read_to_string(
            setup
                .home
                .join(".config/systemd/user/moltops-moltis.service"),
        )
        .unwrap();
        for line in [
            format!(
                "ExecStart=\"{LINUXBREW_BIN}/moltis\" \"gateway\" \"--bind\" \"127.0.0.1\" \"--port\" \"{port}\""
            ),
            format!("Environment=\"MOLTIS_CONFIG_DIR={}\"", state.display()),
            format!("Environment=\"MOLTIS_DATA_DIR={}\"", state.display()),
            "Environment=\"MOLTIS_NO_TLS=true\"".into(),
        ] {
            assert!(unit.lines().any(|l| l == line), "{line:?} not in:\n{unit}");
        }
        assert!(!unit.contains("RestartPreventExitStatus"));
        // Readiness was asked of /health, and only of it.
        let paths = setup.process.paths();
        assert!(
            !paths.is_empty() && paths.iter().all(|p| p == "/health"),
            "{paths:?}"
        );

        let status = gateway.status().await;
        assert!(status.gateway_connected);
        assert_eq!(
            status.config_path,
            state.join("moltis.toml").display().to_string()
        );
        assert_eq!(status.service_manager, "systemd-user");
    }

    #[test]
    fn records_from_earlier_agents_are_npm_openclaw_supervisor_installs() {
        let old = r#"{"package":"openclaw","version":"2026.9.1","prefix":"/p","node":"/n","script":"/s"}"#;
        let record: Record = serde_json::from_str(old).unwrap();
        assert_eq!(record.method, Method::Npm);
        assert_eq!(record.product, "openclaw");
        assert_eq!(record.service_manager, "supervisor");
        assert_eq!(record.image, None);
        assert_eq!(service_name(&OpenClaw), "moltops-openclaw");
        assert_eq!(service_name(&Moltis), "moltops-moltis");
    }

    #[tokio::test]
    async fn the_supervisor_runs_what_it_ran_before_for_openclaw() {
        // The supervised spec for an npm install of OpenClaw, as the end-to-end tests observe it.
        let root = scratch();
        let gateway = Gateway::new(&root, Options::default());
        let record = Record {
            package: "openclaw".into(),
            version: "2026.9.1".into(),
            prefix: PathBuf::from("/p"),
            node: PathBuf::from("/p/node"),
            script: PathBuf::from("/p/lib/node_modules/openclaw/openclaw.mjs"),
            method: Method::Npm,
            product: "openclaw".into(),
            service_manager: "supervisor".into(),
            image: None,
        };
        let spec = gateway.spec(&record);
        let state = root.join("gateway-state");
        assert_eq!(spec.program, Path::new("/p/node"));
        assert_eq!(
            spec.args,
            [
                "/p/lib/node_modules/openclaw/openclaw.mjs",
                "gateway",
                "run",
                "--bind",
                "loopback",
                "--port",
                "18789",
                "--allow-unconfigured"
            ]
        );
        assert_eq!(
            spec.env,
            [
                ("OPENCLAW_STATE_DIR".to_owned(), state.display().to_string()),
                (
                    "OPENCLAW_CONFIG_PATH".to_owned(),
                    state.join("openclaw.json").display().to_string()
                ),
                (
                    "OPENCLAW_SERVICE_REPAIR_POLICY".to_owned(),
                    "external".to_owned()
                ),
            ]
        );
        assert_eq!(spec.cwd.as_deref(), Some(state.as_path()));
        assert_eq!(spec.log_path, state.join("gateway.out.log"));
        let status = gateway.status().await;
        assert_eq!(status.service_manager, "supervisor");
        assert!(!status.installed);
    }
}
