//! docker: the gateway as a container with a restart policy. The `docker` CLI calls as argv
//! vectors, and the parser of `docker inspect`.
//!
//! The container is locked down the same way every time: read-only root filesystem (state on
//! volumes, scratch on tmpfs), every capability dropped, no privilege escalation, ports published
//! on loopback unless the spec says otherwise, and `--restart unless-stopped` (docker's own
//! backoff; an operator's stop lasts). Docker has no "do not restart on this exit status", so
//! [`RestartPolicy::prevent_exit_statuses`](super::RestartPolicy) does not apply here.
#![deny(missing_docs)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{
    ContainerSpec, ServiceControl, ServiceKind, ServiceState, UnitSpec, check_same_name,
    check_text, path_text, validate_name,
};
use crate::runner::{BoxFuture, Runner, failure, run_checked};

/// Restarts (docker's `RestartCount`) while docker is in its restart backoff that make a crash
/// loop: the built-in supervisor's default of 5.
pub const CRASH_LOOP_RESTARTS: u32 = 5;

/// Checks an image reference such as `ghcr.io/openclaw/openclaw:2026.9.1` or
/// `repo@sha256:<64 hex>`: no whitespace or control characters, nothing that could be read as an
/// option, only the characters references use, and a well-formed digest when pinned.
pub fn validate_image(image: &str) -> Result<(), String> {
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@');
    let starts_well = image
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if !starts_well || !image.bytes().all(allowed) || image.len() > 255 {
        return Err(format!("invalid image reference {image:?}"));
    }
    if let Some((_, digest)) = image.split_once('@') {
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "invalid image digest in {image:?} (expected sha256: and 64 lowercase hex digits)"
            ));
        }
    }
    Ok(())
}

fn check_mount_part(what: &str, value: &str) -> Result<(), String> {
    check_text(what, value)?;
    if value.is_empty() || value.contains([':', ',']) || value.starts_with('-') {
        return Err(format!(
            "{what} {value:?} must be non-empty, without ':' or ',', and not start with '-'"
        ));
    }
    Ok(())
}

fn publish(port: &super::PortMapping) -> String {
    match port.host_ip {
        IpAddr::V4(ip) => format!("{ip}:{}:{}", port.host_port, port.container_port),
        IpAddr::V6(ip) => format!("[{ip}]:{}:{}", port.host_port, port.container_port),
    }
}

fn container(unit: &UnitSpec) -> Result<&ContainerSpec, String> {
    unit.container.as_ref().ok_or_else(|| {
        format!(
            "{} has no container (image, ports, volumes): it cannot run under docker",
            unit.name
        )
    })
}

/// `docker run -d …` for `unit`: the container named after the unit, locked down (see the module
/// doc), with the unit's environment, working directory and stop deadline, running the image with
/// [`UnitSpec::args`] as its command.
pub fn run_argv(docker: &str, unit: &UnitSpec) -> Result<Vec<String>, String> {
    let spec = container(unit)?;
    unit.validate()?;
    validate_image(&spec.image)?;
    let mut argv: Vec<String> = [
        docker,
        "run",
        "--detach",
        "--name",
        &unit.name,
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
        &unit.stop_timeout.as_secs().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for port in &spec.ports {
        argv.push("--publish".into());
        argv.push(publish(port));
    }
    for volume in &spec.volumes {
        check_mount_part("a volume source", &volume.source)?;
        check_mount_part("a volume target", &volume.target)?;
        if !volume.target.starts_with('/') {
            return Err(format!(
                "the volume target {:?} must be an absolute path",
                volume.target
            ));
        }
        argv.push("--volume".into());
        let mode = if volume.read_only { ":ro" } else { "" };
        argv.push(format!("{}:{}{mode}", volume.source, volume.target));
    }
    for dir in &spec.tmpfs {
        check_mount_part("a tmpfs path", dir)?;
        argv.push("--tmpfs".into());
        argv.push(dir.clone());
    }
    for (key, value) in &unit.env {
        argv.push("--env".into());
        argv.push(format!("{key}={value}"));
    }
    if let Some(dir) = &unit.working_dir {
        argv.push("--workdir".into());
        argv.push(path_text(dir)?);
    }
    if let Some(user) = &spec.user {
        check_mount_part("the container user", user)?;
        argv.push("--user".into());
        argv.push(user.clone());
    }
    if let Some(entrypoint) = &spec.entrypoint {
        check_mount_part("the entrypoint", entrypoint)?;
        argv.push("--entrypoint".into());
        argv.push(entrypoint.clone());
    }
    // Everything after the image is the container's command, never docker's options.
    argv.push(spec.image.clone());
    argv.extend(unit.args.iter().cloned());
    Ok(argv)
}

/// `docker start NAME`.
pub fn start_argv(docker: &str, name: &str) -> Vec<String> {
    vec![docker.into(), "start".into(), name.into()]
}

/// `docker stop -t SECONDS NAME`: SIGTERM, SIGKILL after the deadline.
pub fn stop_argv(docker: &str, name: &str, timeout: Duration) -> Vec<String> {
    vec![
        docker.into(),
        "stop".into(),
        "-t".into(),
        timeout.as_secs().to_string(),
        name.into(),
    ]
}

/// `docker restart -t SECONDS NAME`.
pub fn restart_argv(docker: &str, name: &str, timeout: Duration) -> Vec<String> {
    vec![
        docker.into(),
        "restart".into(),
        "-t".into(),
        timeout.as_secs().to_string(),
        name.into(),
    ]
}

/// `docker rm NAME` (of a stopped container).
pub fn rm_argv(docker: &str, name: &str) -> Vec<String> {
    vec![docker.into(), "rm".into(), name.into()]
}

/// The `--format` template of the status query: the container's `State` as JSON, plus its
/// `RestartCount`, which docker keeps beside `State`, not in it.
pub const INSPECT_FORMAT: &str =
    r#"{"State":{{json .State}},"RestartCount":{{json .RestartCount}}}"#;

/// `docker inspect --type container --format TEMPLATE NAME`.
pub fn inspect_argv(docker: &str, name: &str) -> Vec<String> {
    vec![
        docker.into(),
        "inspect".into(),
        "--type".into(),
        "container".into(),
        "--format".into(),
        INSPECT_FORMAT.into(),
        name.into(),
    ]
}

/// What `docker inspect` says about a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerStatus {
    /// `created`, `running`, `restarting`, `exited`, `paused`, `dead`.
    pub status: String,
    /// The container's process is running.
    pub running: bool,
    /// Docker is between restarts of a process that exited.
    pub restarting: bool,
    /// The main process (0 in docker's output when there is none).
    pub pid: Option<u32>,
    /// When the current (or last) run started.
    pub started_at: Option<DateTime<Utc>>,
    /// Restarts docker made under the restart policy.
    pub restart_count: u32,
    /// The last run's exit code.
    pub exit_code: i64,
    /// The kernel's OOM killer ended the last run.
    pub oom_killed: bool,
    /// Docker's error for the last start, if any.
    pub error: String,
}

#[derive(Deserialize)]
struct Inspect {
    #[serde(rename = "State")]
    state: RawState,
    #[serde(rename = "RestartCount", default)]
    restart_count: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawState {
    #[serde(default)]
    status: String,
    #[serde(default)]
    running: bool,
    #[serde(default)]
    restarting: bool,
    #[serde(rename = "OOMKilled", default)]
    oom_killed: bool,
    #[serde(default)]
    pid: u32,
    #[serde(default)]
    exit_code: i64,
    #[serde(default)]
    error: String,
    #[serde(default)]
    started_at: String,
}

/// Parses the output of [`inspect_argv`]. Docker writes `0001-01-01T00:00:00Z` for "never":
/// that reads as no start time.
pub fn parse_inspect(json: &str) -> Result<DockerStatus, String> {
    let raw: Inspect = serde_json::from_str(json.trim())
        .map_err(|e| format!("docker inspect printed something other than the state: {e}"))?;
    let started_at = DateTime::parse_from_rfc3339(&raw.state.started_at)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .filter(|t| t.timestamp() > 0);
    Ok(DockerStatus {
        status: raw.state.status,
        running: raw.state.running,
        restarting: raw.state.restarting,
        pid: Some(raw.state.pid).filter(|p| *p > 0),
        started_at,
        restart_count: raw.restart_count,
        exit_code: raw.state.exit_code,
        oom_killed: raw.state.oom_killed,
        error: raw.state.error,
    })
}

impl DockerStatus {
    /// The manager-neutral state.
    pub fn to_state(&self) -> ServiceState {
        let running = self.running && !self.restarting && self.pid.is_some();
        let last_exit = if running || self.started_at.is_none() {
            None
        } else if self.oom_killed {
            Some(format!("exit code {} (out of memory)", self.exit_code))
        } else {
            Some(format!("exit code {}", self.exit_code))
        };
        ServiceState {
            installed: true,
            running,
            pid: if running { self.pid } else { None },
            state: self.status.clone(),
            started_at: self.started_at,
            restart_count: Some(self.restart_count),
            last_exit,
            crash_loop: self.restarting && self.restart_count >= CRASH_LOOP_RESTARTS,
        }
    }
}

fn no_such_container(output: &str) -> bool {
    output.contains("No such container") || output.contains("No such object")
}

/// One container, driven with the `docker` CLI.
pub struct Docker {
    runner: Arc<dyn Runner>,
    docker: String,
    name: String,
    stop_timeout: Duration,
}

impl Docker {
    /// The container `name`, managed with the `docker` program (`"docker"`, or a path), stopped
    /// with `stop_timeout` before SIGKILL.
    pub fn new(
        runner: Arc<dyn Runner>,
        docker: &str,
        name: &str,
        stop_timeout: Duration,
    ) -> Result<Self, String> {
        validate_name(name)?;
        check_mount_part("the docker program", docker)?;
        Ok(Self {
            runner,
            docker: docker.to_owned(),
            name: name.to_owned(),
            stop_timeout,
        })
    }

    async fn run(&self, argv: Vec<String>) -> Result<(), String> {
        run_checked(&*self.runner, &argv).await.map(drop)
    }

    /// The container's status, or `None` when there is no such container.
    async fn inspect(&self) -> Result<Option<DockerStatus>, String> {
        let argv = inspect_argv(&self.docker, &self.name);
        let out = self.runner.run(&argv).await?;
        if out.success() {
            return parse_inspect(&out.stdout).map(Some);
        }
        if no_such_container(&format!("{}{}", out.stdout, out.stderr)) {
            return Ok(None);
        }
        Err(failure(&argv, &out))
    }

    /// Stops (with the deadline) and removes the container, if there is one.
    async fn remove(&self) -> Result<(), String> {
        if self.inspect().await?.is_some() {
            self.run(stop_argv(&self.docker, &self.name, self.stop_timeout))
                .await?;
            self.run(rm_argv(&self.docker, &self.name)).await?;
        }
        Ok(())
    }
}

impl ServiceControl for Docker {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Docker
    }

    fn install<'a>(&'a self, unit: &'a UnitSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            check_same_name(&self.name, unit)?;
            // Checked and built before the old container is touched.
            let run = run_argv(&self.docker, unit)?;
            // A container cannot change its definition: replace it, stopping it gracefully.
            self.remove().await?;
            self.run(run).await
        })
    }

    fn uninstall(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.remove())
    }

    fn start(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.run(start_argv(&self.docker, &self.name)))
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.run(stop_argv(&self.docker, &self.name, self.stop_timeout)))
    }

    fn restart(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.run(restart_argv(&self.docker, &self.name, self.stop_timeout)))
    }

    fn status(&self) -> BoxFuture<'_, Result<ServiceState, String>> {
        Box::pin(async move {
            Ok(match self.inspect().await? {
                Some(status) => status.to_state(),
                None => ServiceState {
                    state: "no container".into(),
                    ..ServiceState::default()
                },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    use super::*;
    use crate::runner::CommandOutput;
    use crate::runner::fake::FakeRunner;
    use crate::service::{PortMapping, VolumeMount, testing::gateway_unit};

    fn container_unit() -> UnitSpec {
        let mut unit = gateway_unit();
        unit.program = PathBuf::new();
        unit.args = vec![
            "node".into(),
            "dist/index.js".into(),
            "gateway".into(),
            "--port".into(),
            "18789".into(),
        ];
        unit.env = vec![("OPENCLAW_STATE_DIR".into(), "/home/node/.openclaw".into())];
        unit.working_dir = None;
        unit.container = Some(ContainerSpec {
            image: "ghcr.io/openclaw/openclaw:2026.9.1".into(),
            ports: vec![PortMapping {
                host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                host_port: 18789,
                container_port: 18789,
            }],
            volumes: vec![VolumeMount {
                source: "moltops-gateway-state".into(),
                target: "/home/node/.openclaw".into(),
                read_only: false,
            }],
            tmpfs: vec!["/tmp".into()],
            entrypoint: None,
            user: None,
        });
        unit
    }

    #[test]
    fn the_run_argv_is_locked_down_and_ends_with_the_image_and_command() {
        assert_eq!(
            run_argv("docker", &container_unit()).unwrap(),
            [
                "docker",
                "run",
                "--detach",
                "--name",
                "moltops-gateway",
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
                "330",
                "--publish",
                "127.0.0.1:18789:18789",
                "--volume",
                "moltops-gateway-state:/home/node/.openclaw",
                "--tmpfs",
                "/tmp",
                "--env",
                "OPENCLAW_STATE_DIR=/home/node/.openclaw",
                "ghcr.io/openclaw/openclaw:2026.9.1",
                "node",
                "dist/index.js",
                "gateway",
                "--port",
                "18789",
            ]
        );
        let mut unit = container_unit();
        let spec = unit.container.as_mut().unwrap();
        spec.ports[0].host_ip = "::1".parse().unwrap();
        spec.volumes[0].read_only = true;
        spec.user = Some("1000".into());
        spec.entrypoint = Some("/usr/bin/tini".into());
        unit.working_dir = Some(PathBuf::from("/app"));
        let argv = run_argv("docker", &unit).unwrap().join(" ");
        assert!(argv.contains("--publish [::1]:18789:18789"), "{argv}");
        assert!(argv.contains(":/home/node/.openclaw:ro"), "{argv}");
        assert!(
            argv.contains("--workdir /app --user 1000 --entrypoint /usr/bin/tini ghcr.io/"),
            "{argv}"
        );
    }

    #[test]
    fn what_could_smuggle_an_option_or_break_a_mount_is_refused() {
        let check = |change: &dyn Fn(&mut UnitSpec), expected: &str| {
            let mut unit = container_unit();
            change(&mut unit);
            assert_eq!(run_argv("docker", &unit), Err(expected.to_owned()));
        };
        check(
            &|u| u.container.as_mut().unwrap().image = "--privileged".into(),
            "invalid image reference \"--privileged\"",
        );
        check(
            &|u| u.container.as_mut().unwrap().image = "openclaw latest".into(),
            "invalid image reference \"openclaw latest\"",
        );
        check(
            &|u| u.container.as_mut().unwrap().image = "openclaw@sha256:abc".into(),
            "invalid image digest in \"openclaw@sha256:abc\" (expected sha256: and 64 lowercase hex digits)",
        );
        check(
            &|u| u.container.as_mut().unwrap().volumes[0].source = "/etc:/host".into(),
            "a volume source \"/etc:/host\" must be non-empty, without ':' or ',', and not start with '-'",
        );
        check(
            &|u| u.container.as_mut().unwrap().volumes[0].target = "data".into(),
            "the volume target \"data\" must be an absolute path",
        );
        check(
            &|u| u.container = None,
            "moltops-gateway has no container (image, ports, volumes): it cannot run under docker",
        );
        check(
            &|u| u.env.push(("X".into(), "a\nb".into())),
            "the value of X contains a line break",
        );
        assert_eq!(
            validate_image(&format!(
                "ghcr.io/openclaw/openclaw@sha256:{}",
                "a".repeat(64)
            )),
            Ok(())
        );
        assert_eq!(
            validate_image("localhost:5000/openclaw:2026.9.1-beta.2"),
            Ok(())
        );
    }

    #[test]
    fn lifecycle_argv() {
        let t = Duration::from_secs(330);
        assert_eq!(start_argv("docker", "g1"), ["docker", "start", "g1"]);
        assert_eq!(
            stop_argv("docker", "g1", t),
            ["docker", "stop", "-t", "330", "g1"]
        );
        assert_eq!(
            restart_argv("docker", "g1", t),
            ["docker", "restart", "-t", "330", "g1"]
        );
        assert_eq!(rm_argv("docker", "g1"), ["docker", "rm", "g1"]);
        assert_eq!(
            inspect_argv("docker", "g1"),
            [
                "docker",
                "inspect",
                "--type",
                "container",
                "--format",
                r#"{"State":{{json .State}},"RestartCount":{{json .RestartCount}}}"#,
                "g1"
            ]
        );
    }

    const RUNNING: &str = r#"{"State":{"Status":"running","Running":true,"Paused":false,"Restarting":false,"OOMKilled":false,"Dead":false,"Pid":31337,"ExitCode":0,"Error":"","StartedAt":"2026-11-21T16:11:02.123456789Z","FinishedAt":"0001-01-01T00:00:00Z"},"RestartCount":1}
"#;

    #[test]
    fn inspect_output_is_parsed() {
        let status = parse_inspect(RUNNING).unwrap();
        assert_eq!(
            status,
            DockerStatus {
                status: "running".into(),
                running: true,
                restarting: false,
                pid: Some(31337),
                started_at: "2026-11-21T16:11:02.123456789Z".parse().ok(),
                restart_count: 1,
                exit_code: 0,
                oom_killed: false,
                error: String::new(),
            }
        );
        let state = status.to_state();
        assert!(state.installed && state.running && !state.crash_loop);
        assert_eq!(state.pid, Some(31337));
        assert_eq!(state.restart_count, Some(1));
        assert_eq!(state.last_exit, None);

        let oom = parse_inspect(
            r#"{"State":{"Status":"exited","Running":false,"Restarting":false,"OOMKilled":true,"Pid":0,"ExitCode":137,"Error":"","StartedAt":"2026-11-21T16:11:02Z","FinishedAt":"2026-11-21T16:20:00Z"},"RestartCount":0}"#,
        )
        .unwrap()
        .to_state();
        assert!(!oom.running);
        assert_eq!(oom.pid, None);
        assert_eq!(
            oom.last_exit.as_deref(),
            Some("exit code 137 (out of memory)")
        );

        let looping = parse_inspect(
            r#"{"State":{"Status":"restarting","Running":true,"Restarting":true,"OOMKilled":false,"Pid":0,"ExitCode":1,"Error":"","StartedAt":"2026-11-21T16:11:02Z","FinishedAt":"2026-11-21T16:11:03Z"},"RestartCount":7}"#,
        )
        .unwrap()
        .to_state();
        assert!(!looping.running && looping.crash_loop);
        assert_eq!(looping.last_exit.as_deref(), Some("exit code 1"));

        let created = parse_inspect(
            r#"{"State":{"Status":"created","Running":false,"Pid":0,"ExitCode":0,"StartedAt":"0001-01-01T00:00:00Z"},"RestartCount":0}"#,
        )
        .unwrap();
        assert_eq!(created.started_at, None);
        assert_eq!(created.to_state().last_exit, None);

        assert!(parse_inspect("<no value>").is_err());
    }

    #[tokio::test]
    async fn install_replaces_an_existing_container_gracefully() {
        let runner = Arc::new(
            FakeRunner::new()
                .then_ok(RUNNING)
                .then_ok("moltops-gateway\n")
                .then_ok("moltops-gateway\n")
                .then_ok("0123abcd\n"),
        );
        let control = Docker::new(
            runner.clone(),
            "docker",
            "moltops-gateway",
            Duration::from_secs(330),
        )
        .unwrap();
        assert_eq!(control.kind(), ServiceKind::Docker);
        control.install(&container_unit()).await.unwrap();
        let lines = runner.lines();
        assert!(lines[0].starts_with("docker inspect --type container --format"));
        assert_eq!(lines[1], "docker stop -t 330 moltops-gateway");
        assert_eq!(lines[2], "docker rm moltops-gateway");
        assert_eq!(
            runner.calls()[3],
            run_argv("docker", &container_unit()).unwrap()
        );

        // No container yet: straight to run.
        let runner = Arc::new(
            FakeRunner::new()
                .then(CommandOutput::failed(
                    1,
                    "Error: No such container: moltops-gateway",
                ))
                .then_ok("0123abcd\n"),
        );
        let control = Docker::new(
            runner.clone(),
            "docker",
            "moltops-gateway",
            Duration::from_secs(330),
        )
        .unwrap();
        control.install(&container_unit()).await.unwrap();
        assert_eq!(runner.calls().len(), 2);
        assert_eq!(runner.calls()[1][1], "run");
    }

    #[tokio::test]
    async fn lifecycle_and_status_through_the_runner() {
        let runner = Arc::new(
            FakeRunner::new()
                .then_ok("moltops-gateway\n")
                .then_ok("moltops-gateway\n")
                .then_ok("moltops-gateway\n")
                .then_ok(RUNNING)
                .then(CommandOutput::failed(1, "Error: No such object: moltops-gateway"))
                .then(CommandOutput::failed(
                    1,
                    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?",
                ))
                // uninstall: present → stop, rm
                .then_ok(RUNNING)
                .then_ok("")
                .then_ok(""),
        );
        let control = Docker::new(
            runner.clone(),
            "docker",
            "moltops-gateway",
            Duration::from_secs(30),
        )
        .unwrap();
        control.start().await.unwrap();
        control.stop().await.unwrap();
        control.restart().await.unwrap();
        assert!(control.status().await.unwrap().running);
        let gone = control.status().await.unwrap();
        assert!(!gone.installed && !gone.running);
        assert!(
            control
                .status()
                .await
                .unwrap_err()
                .contains("Is the docker daemon running?")
        );
        control.uninstall().await.unwrap();
        let lines = runner.lines();
        assert_eq!(
            lines[..3],
            [
                "docker start moltops-gateway",
                "docker stop -t 30 moltops-gateway",
                "docker restart -t 30 moltops-gateway",
            ]
        );
        assert_eq!(
            lines[7..],
            [
                "docker stop -t 30 moltops-gateway",
                "docker rm moltops-gateway"
            ]
        );
    }
}
