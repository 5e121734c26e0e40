//! The built-in supervisor, for hosts without a service manager (as here, and in containers): it
//! runs the gateway, restarts it with backoff when it exits, counts restarts over 24 hours and
//! notices a crash loop, captures stdout and stderr into a size-rotated log file, and stops it
//! with SIGTERM and, past a deadline, SIGKILL.
//!
//! One task owns the child; callers talk to it through a channel and watch its [`Status`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// stdout and stderr go here; rotated to `.1`, `.2`, … at `log_max_bytes`.
    pub log_path: PathBuf,
    pub log_max_bytes: u64,
    pub log_keep: usize,
    /// After SIGTERM, how long before SIGKILL.
    pub stop_timeout: Duration,
    /// First restart delay; doubles on each quick exit, up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run at least this long resets the backoff.
    pub stable_after: Duration,
    /// This many unrequested exits within `crash_loop_window` is a crash loop.
    pub crash_loop_exits: usize,
    pub crash_loop_window: Duration,
}

impl Spec {
    /// Defaults modelled on upstream's unit (`Restart=always`, `RestartSec=5`,
    /// `TimeoutStopSec=330`), with exponential backoff on top.
    pub fn new(program: PathBuf, args: Vec<String>, log_path: PathBuf) -> Self {
        Self {
            program,
            args,
            env: Vec::new(),
            cwd: None,
            log_path,
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 3,
            stop_timeout: Duration::from_secs(330),
            backoff_initial: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            stable_after: Duration::from_secs(60),
            crash_loop_exits: 5,
            crash_loop_window: Duration::from_secs(300),
        }
    }
}

/// What the supervisor knows, as of its last change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The process is alive (it may not be ready: that is the gateway's own health).
    pub running: bool,
    pub pid: Option<u32>,
    pub last_start_time: Option<DateTime<Utc>>,
    /// Starts after the first, in the last 24 hours: crashes and requested restarts alike.
    pub restart_count_24h: u32,
    /// Exits without being asked, in the last 24 hours.
    pub crash_count_24h: u32,
    pub crash_loop: bool,
    /// How the last run ended (`exit code 1`, `signal 9`, …).
    pub last_exit: Option<String>,
    /// Whether the supervisor wants it running (false after a stop).
    pub desired_running: bool,
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Exited after SIGTERM within the deadline.
    Graceful,
    /// Ignored SIGTERM; killed at the deadline.
    Killed,
    /// Was not running.
    NotRunning,
}

enum Control {
    Stop(oneshot::Sender<Stopped>),
    Start,
    Restart(oneshot::Sender<Stopped>),
}

/// A handle to a supervised process.
#[derive(Clone)]
pub struct Supervisor {
    control: mpsc::Sender<Control>,
    status: watch::Receiver<Status>,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Supervisor {
    /// Starts the process now and keeps it running.
    pub fn start(spec: Spec) -> Self {
        let (control, inbox) = mpsc::channel(8);
        let (publish, status) = watch::channel(Status::default());
        tokio::spawn(run(spec, inbox, publish));
        Self { control, status }
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// SIGTERM, then SIGKILL at the deadline; it stays stopped until [`Supervisor::resume`].
    pub async fn stop(&self) -> Stopped {
        let (reply, answer) = oneshot::channel();
        if self.control.send(Control::Stop(reply)).await.is_err() {
            return Stopped::NotRunning;
        }
        answer.await.unwrap_or(Stopped::NotRunning)
    }

    /// Stop (as [`Supervisor::stop`]) and start again at once.
    pub async fn restart(&self) -> Stopped {
        let (reply, answer) = oneshot::channel();
        if self.control.send(Control::Restart(reply)).await.is_err() {
            return Stopped::NotRunning;
        }
        answer.await.unwrap_or(Stopped::NotRunning)
    }

    /// Starts it again after a stop.
    pub async fn resume(&self) {
        let _ = self.control.send(Control::Start).await;
    }
}

fn wall_now() -> DateTime<Utc> {
    DateTime::<Utc>::from(SystemTime::now())
}

struct State {
    status: Status,
    starts: VecDeque<Instant>,
    crashes: VecDeque<Instant>,
    /// The very first start: not a restart.
    first_start: Option<Instant>,
}

impl State {
    fn prune(&mut self, now: Instant) {
        while self
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) > DAY)
        {
            self.starts.pop_front();
        }
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > DAY)
        {
            self.crashes.pop_front();
        }
        let count = |q: &VecDeque<Instant>| u32::try_from(q.len()).unwrap_or(u32::MAX);
        let first_in_window = u32::from(
            self.starts.front().is_some() && self.starts.front() == self.first_start.as_ref(),
        );
        self.status.restart_count_24h = count(&self.starts).saturating_sub(first_in_window);
        self.status.crash_count_24h = count(&self.crashes);
    }
}

async fn run(spec: Spec, mut inbox: mpsc::Receiver<Control>, publish: watch::Sender<Status>) {
    let mut state = State {
        status: Status {
            desired_running: true,
            ..Status::default()
        },
        starts: VecDeque::new(),
        crashes: VecDeque::new(),
        first_start: None,
    };
    let mut backoff = Duration::ZERO;
    loop {
        if !state.status.desired_running {
            // Stopped: wait to be told to start.
            match inbox.recv().await {
                None => return,
                Some(Control::Start) => state.status.desired_running = true,
                Some(Control::Stop(reply)) => {
                    let _ = reply.send(Stopped::NotRunning);
                }
                // A restart of a stopped process starts it.
                Some(Control::Restart(reply)) => {
                    let _ = reply.send(Stopped::NotRunning);
                    state.status.desired_running = true;
                }
            }
            continue;
        }
        let mut child = match spawn(&spec) {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(program = %spec.program.display(), error = %e, "cannot start the supervised process");
                state.status.last_exit = Some(format!("could not start: {e}"));
                state.crashes.push_back(Instant::now());
                backoff = next_backoff(backoff, &spec);
                if wait_or_control(&mut inbox, backoff, &mut state, &publish).await {
                    return;
                }
                continue;
            }
        };
        let started = Instant::now();
        state.starts.push_back(started);
        state.first_start.get_or_insert(started);
        state.status.running = true;
        state.status.pid = child.id();
        state.status.last_start_time = Some(wall_now());
        state.prune(started);
        let _ = publish.send(state.status.clone());
        // Supervise until it exits or we are told something.
        let exit = tokio::select! {
            status = child.wait() => Exit::Died(status.map_or_else(|e| e.to_string(), describe)),
            message = inbox.recv() => match message {
                None => {
                    let _ = terminate(&mut child, spec.stop_timeout).await;
                    return;
                }
                Some(Control::Start) => Exit::Ignored,
                Some(Control::Stop(reply)) => Exit::Stopped(reply, false),
                Some(Control::Restart(reply)) => Exit::Stopped(reply, true),
            },
        };
        match exit {
            Exit::Ignored => {
                // Already running: keep supervising (the child is still ours).
                let (status, keep) = keep_supervising(child, &mut inbox, &spec).await;
                match keep {
                    Keep::Exited => {
                        record_crash(&mut state, &spec, started, &status, &mut backoff);
                        let _ = publish.send(state.status.clone());
                        if wait_or_control(&mut inbox, backoff, &mut state, &publish).await {
                            return;
                        }
                    }
                    Keep::Stop(stopped, restart, reply) => {
                        finish_stop(&mut state, stopped, restart, reply, &publish);
                        backoff = Duration::ZERO;
                    }
                    Keep::Closed => return,
                }
            }
            Exit::Died(how) => {
                record_crash(&mut state, &spec, started, &how, &mut backoff);
                let _ = publish.send(state.status.clone());
                if wait_or_control(&mut inbox, backoff, &mut state, &publish).await {
                    return;
                }
            }
            Exit::Stopped(reply, restart) => {
                let stopped = terminate(&mut child, spec.stop_timeout).await;
                finish_stop(&mut state, stopped, restart, reply, &publish);
                backoff = Duration::ZERO;
            }
        }
    }
}

enum Exit {
    Died(String),
    Stopped(oneshot::Sender<Stopped>, bool),
    Ignored,
}

enum Keep {
    Exited,
    Stop(Stopped, bool, oneshot::Sender<Stopped>),
    Closed,
}

/// Keeps waiting on a running child after a no-op message.
async fn keep_supervising(
    mut child: Child,
    inbox: &mut mpsc::Receiver<Control>,
    spec: &Spec,
) -> (String, Keep) {
    loop {
        tokio::select! {
            status = child.wait() => {
                return (status.map_or_else(|e| e.to_string(), describe), Keep::Exited);
            }
            message = inbox.recv() => match message {
                None => {
                    let _ = terminate(&mut child, spec.stop_timeout).await;
                    return (String::new(), Keep::Closed);
                }
                Some(Control::Start) => {}
                Some(Control::Stop(reply)) => {
                    let stopped = terminate(&mut child, spec.stop_timeout).await;
                    return (String::new(), Keep::Stop(stopped, false, reply));
                }
                Some(Control::Restart(reply)) => {
                    let stopped = terminate(&mut child, spec.stop_timeout).await;
                    return (String::new(), Keep::Stop(stopped, true, reply));
                }
            }
        }
    }
}

fn finish_stop(
    state: &mut State,
    stopped: Stopped,
    restart: bool,
    reply: oneshot::Sender<Stopped>,
    publish: &watch::Sender<Status>,
) {
    state.status.running = false;
    state.status.pid = None;
    state.status.last_exit = Some(match stopped {
        Stopped::Graceful => "stopped".to_owned(),
        Stopped::Killed => "killed after the stop deadline".to_owned(),
        Stopped::NotRunning => "was not running".to_owned(),
    });
    state.status.desired_running = restart;
    // A requested stop clears the crash-loop verdict: the operator has acted.
    state.status.crash_loop = false;
    let _ = publish.send(state.status.clone());
    let _ = reply.send(stopped);
}

fn record_crash(
    state: &mut State,
    spec: &Spec,
    started: Instant,
    how: &str,
    backoff: &mut Duration,
) {
    let now = Instant::now();
    state.status.running = false;
    state.status.pid = None;
    state.status.last_exit = Some(how.to_owned());
    state.crashes.push_back(now);
    state.prune(now);
    let recent = state
        .crashes
        .iter()
        .filter(|t| now.duration_since(**t) <= spec.crash_loop_window)
        .count();
    // Once in a crash loop, it stays one until a run lasts (or an operator stops it): a backoff
    // longer than the window must not quietly clear the verdict.
    let stable = now.duration_since(started) >= spec.stable_after;
    state.status.crash_loop =
        !stable && (state.status.crash_loop || recent >= spec.crash_loop_exits);
    *backoff = if now.duration_since(started) >= spec.stable_after {
        spec.backoff_initial
    } else {
        next_backoff(*backoff, spec)
    };
    tracing::warn!(exit = %how, restart_in_ms = backoff.as_millis() as u64, crash_loop = state.status.crash_loop, "supervised process exited");
}

fn next_backoff(current: Duration, spec: &Spec) -> Duration {
    if current.is_zero() {
        spec.backoff_initial
    } else {
        (current * 2).min(spec.backoff_max)
    }
}

/// Waits out a backoff; a message may cut it short (start now, or stay stopped). True when the
/// supervisor is being dropped.
async fn wait_or_control(
    inbox: &mut mpsc::Receiver<Control>,
    wait: Duration,
    state: &mut State,
    publish: &watch::Sender<Status>,
) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        message = inbox.recv() => match message {
            None => true,
            Some(Control::Start) => false,
            Some(Control::Restart(reply)) => {
                let _ = reply.send(Stopped::NotRunning);
                false
            }
            Some(Control::Stop(reply)) => {
                state.status.desired_running = false;
                state.status.crash_loop = false;
                let _ = publish.send(state.status.clone());
                let _ = reply.send(Stopped::NotRunning);
                false
            }
        },
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "unknown".to_owned(),
    }
}

fn spawn(spec: &Spec) -> std::io::Result<Child> {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn()?;
    let log = std::sync::Arc::new(tokio::sync::Mutex::new(RotatingLog {
        path: spec.log_path.clone(),
        max_bytes: spec.log_max_bytes,
        keep: spec.log_keep,
    }));
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, log.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, log));
    }
    Ok(child)
}

/// SIGTERM, wait up to `timeout`, then SIGKILL.
async fn terminate(child: &mut Child, timeout: Duration) -> Stopped {
    let Some(pid) = child.id() else {
        return Stopped::NotRunning;
    };
    let Ok(pid) = i32::try_from(pid) else {
        return Stopped::NotRunning;
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(_) => Stopped::Graceful,
        Err(_) => {
            let _ = child.kill().await;
            Stopped::Killed
        }
    }
}

/// The log file and its rotation.
struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
}

impl RotatingLog {
    async fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        let size = tokio::fs::metadata(&self.path)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if size > 0 && size + bytes.len() as u64 > self.max_bytes {
            for n in (1..self.keep).rev() {
                let from = rotated(&self.path, n);
                if tokio::fs::try_exists(&from).await.unwrap_or(false) {
                    tokio::fs::rename(&from, rotated(&self.path, n + 1)).await?;
                }
            }
            if self.keep > 0 {
                tokio::fs::rename(&self.path, rotated(&self.path, 1)).await?;
            } else {
                tokio::fs::remove_file(&self.path).await?;
            }
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        file.write_all(bytes).await?;
        // tokio's File finishes writes in the background: wait, so the next size check is true.
        file.flush().await
    }
}

fn rotated(path: &std::path::Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    log: std::sync::Arc<tokio::sync::Mutex<RotatingLog>>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let log = log.lock().await;
                if let Err(e) = log.append(&buffer[..n]).await {
                    tracing::warn!(error = %e, "cannot write the supervised process's log");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scenario gateway (tests/scenario-gateway), under Node.
    fn gateway(dir: &std::path::Path, env: &[(&str, &str)]) -> Spec {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/scenario-gateway/bin/scenario-gateway.js");
        let mut spec = Spec::new(
            PathBuf::from("node"),
            vec![
                script.display().to_string(),
                "gateway".into(),
                "run".into(),
                "--port".into(),
                "0".into(),
            ],
            dir.join("gateway.log"),
        );
        spec.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        spec.backoff_initial = Duration::from_millis(50);
        spec.backoff_max = Duration::from_millis(400);
        spec.stop_timeout = Duration::from_millis(500);
        spec
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "moltops-supervisor-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Waits (up to 30 s) until the status satisfies `done`.
    async fn until(supervisor: &Supervisor, what: &str, done: impl Fn(&Status) -> bool) -> Status {
        let mut watch = supervisor.watch();
        let wait = async {
            loop {
                {
                    let status = watch.borrow_and_update().clone();
                    if done(&status) {
                        return status;
                    }
                }
                if watch.changed().await.is_err() {
                    panic!("the supervisor went away waiting for {what}");
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", supervisor.status()))
    }

    #[tokio::test]
    async fn a_crashing_gateway_is_restarted_and_counted_and_its_output_kept() {
        let dir = scratch("crash");
        let supervisor = Supervisor::start(gateway(&dir, &[("SCENARIO_CRASH_AFTER_MS", "300")]));
        let first = until(&supervisor, "the first start", |s| s.running).await;
        let restarted = until(&supervisor, "a restart after the crash", |s| {
            s.running && s.restart_count_24h >= 1
        })
        .await;
        assert_ne!(first.pid, restarted.pid);
        assert!(restarted.crash_count_24h >= 1);
        assert_eq!(restarted.last_exit.as_deref(), Some("exit code 1"));
        assert!(restarted.last_start_time > first.last_start_time);
        let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap();
        assert!(
            log.contains("scenario crash") && log.contains("listening"),
            "{log}"
        );
        assert_eq!(supervisor.stop().await, Stopped::Graceful);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_crash_loop_is_reported_and_backs_off() {
        let dir = scratch("loop");
        let mut spec = gateway(&dir, &[("SCENARIO_CRASH_AFTER_MS", "1")]);
        spec.crash_loop_exits = 3;
        spec.crash_loop_window = Duration::from_secs(60);
        let supervisor = Supervisor::start(spec);
        let looping = until(&supervisor, "the crash loop verdict", |s| s.crash_loop).await;
        assert!(looping.crash_count_24h >= 3);
        // An operator's stop ends the verdict and it stays down.
        supervisor.stop().await;
        let stopped = until(&supervisor, "stopped", |s| !s.desired_running && !s.running).await;
        assert!(!stopped.crash_loop);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_gateway_that_ignores_sigterm_is_killed_at_the_deadline() {
        let dir = scratch("term");
        let supervisor = Supervisor::start(gateway(&dir, &[("SCENARIO_IGNORE_SIGTERM", "1")]));
        until(&supervisor, "the start", |s| s.running).await;
        // Let it install its SIGTERM handler (it logs when listening, after that): poll the log
        // for that line, with a deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(dir.join("gateway.log"))
            .unwrap_or_default()
            .contains("listening")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(supervisor.stop().await, Stopped::Killed);
        let status = supervisor.status();
        assert!(!status.running && status.pid.is_none());
        assert_eq!(
            status.last_exit.as_deref(),
            Some("killed after the stop deadline")
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn stop_restart_and_resume_do_what_they_say() {
        let dir = scratch("ops");
        let supervisor = Supervisor::start(gateway(&dir, &[]));
        let first = until(&supervisor, "the start", |s| s.running).await;
        assert_eq!(first.restart_count_24h, 0);
        assert_eq!(supervisor.restart().await, Stopped::Graceful);
        let second = until(&supervisor, "the restart", |s| {
            s.running && s.restart_count_24h == 1
        })
        .await;
        assert_ne!(first.pid, second.pid);
        assert!(second.last_start_time > first.last_start_time);
        assert_eq!(
            second.crash_count_24h, 0,
            "a requested restart is not a crash"
        );
        assert_eq!(supervisor.stop().await, Stopped::Graceful);
        let stopped = supervisor.status();
        assert!(!stopped.running && !stopped.desired_running);
        assert_eq!(supervisor.stop().await, Stopped::NotRunning);
        supervisor.resume().await;
        let third = until(&supervisor, "the resume", |s| s.running).await;
        assert_eq!(third.restart_count_24h, 2);
        supervisor.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn the_log_rotates_and_keeps_a_bounded_number_of_files() {
        let dir = scratch("rotate");
        let log = RotatingLog {
            path: dir.join("g.log"),
            max_bytes: 100,
            keep: 2,
        };
        for i in 0..10 {
            log.append(format!("{i:0>60}\n").as_bytes()).await.unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["g.log", "g.log.1", "g.log.2"]);
        for name in &names {
            assert!(std::fs::metadata(dir.join(name)).unwrap().len() <= 100);
        }
        let newest = std::fs::read_to_string(dir.join("g.log")).unwrap();
        assert!(newest.contains(&format!("{:0>60}", 9)));
        let _ = std::fs::remove_dir_all(dir);
    }
}
