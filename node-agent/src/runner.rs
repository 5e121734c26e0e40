//! Running host CLIs (`systemctl`, `launchctl`, `docker`, `brew`) and looking at the host, both
//! behind small traits so that everything built on them is tested without touching the host.
//!
//! A command is always an argv vector: the program, then each argument as its own string. Nothing
//! here goes through a shell, so no argument is ever re-split or expanded. [`Runner`] runs one;
//! [`ProcessRunner`] is the real one. [`HostView`] answers the few questions service selection and
//! install methods ask about the host (the OS, whether a file exists, the environment, the
//! effective uid); [`RealHost`] is the real one. Test doubles for both live in [`fake`].
#![deny(missing_docs)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

/// A boxed, sendable future: what the object-safe traits of the agent return, so they can be
/// used as `Arc<dyn Trait>` (the workspace has no `async-trait`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a finished command left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    /// Standard output, decoded as UTF-8 (invalid bytes replaced).
    pub stdout: String,
    /// Standard error, decoded as UTF-8 (invalid bytes replaced).
    pub stderr: String,
}

impl CommandOutput {
    /// Whether the command exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// A successful exit with `stdout` (for test doubles and tests).
    pub fn ok(stdout: &str) -> Self {
        Self {
            code: Some(0),
            stdout: stdout.to_owned(),
            stderr: String::new(),
        }
    }

    /// A failed exit with `code` and `stderr` (for test doubles and tests).
    pub fn failed(code: i32, stderr: &str) -> Self {
        Self {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.to_owned(),
        }
    }
}

/// Runs one command given as an argv vector.
pub trait Runner: Send + Sync {
    /// Runs `argv[0]` with `argv[1..]` as its arguments and returns what it left behind. An
    /// unsuccessful exit is an `Ok` with its code; `Err` means it could not be run at all (no such
    /// program, an empty argv, or it outlived the runner's deadline).
    fn run<'a>(&'a self, argv: &'a [String]) -> BoxFuture<'a, Result<CommandOutput, String>>;
}

/// The real runner: `tokio::process::Command` with the arguments passed one by one, stdin closed,
/// and the process killed if it outlives `timeout` or the caller stops waiting.
#[derive(Debug, Clone)]
pub struct ProcessRunner {
    /// How long one command may take. It must exceed the longest stop a command waits for
    /// (`systemctl stop` and `docker stop -t` wait up to the gateway's 330 s drain).
    pub timeout: Duration,
}

impl Default for ProcessRunner {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15 * 60),
        }
    }
}

impl Runner for ProcessRunner {
    fn run<'a>(&'a self, argv: &'a [String]) -> BoxFuture<'a, Result<CommandOutput, String>> {
        Box::pin(async move {
            let Some((program, args)) = argv.split_first() else {
                return Err("refusing to run an empty command".to_owned());
            };
            let mut command = tokio::process::Command::new(program);
            command
                .args(args)
                // The parsers here read English output and UTC timestamps: make every host
                // print them that way (`systemctl show` formats times in the local zone).
                .env("LC_ALL", "C")
                .env("TZ", "UTC")
                .stdin(Stdio::null())
                .kill_on_drop(true);
            match tokio::time::timeout(self.timeout, command.output()).await {
                Err(_) => Err(format!(
                    "`{}` did not finish within {} s",
                    describe_argv(argv),
                    self.timeout.as_secs()
                )),
                Ok(Err(e)) => Err(format!("cannot run {program}: {e}")),
                Ok(Ok(out)) => Ok(CommandOutput {
                    code: out.status.code(),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                }),
            }
        })
    }
}

/// Runs `argv` and returns its standard output when it exits 0; otherwise an error that names the
/// command, its exit and the last lines of its standard error.
pub async fn run_checked(runner: &dyn Runner, argv: &[String]) -> Result<String, String> {
    let out = runner.run(argv).await?;
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(failure(argv, &out))
    }
}

/// The error message for a command that exited unsuccessfully.
pub fn failure(argv: &[String], out: &CommandOutput) -> String {
    let exit = out
        .code
        .map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}"));
    let detail = if out.stderr.trim().is_empty() {
        &out.stdout
    } else {
        &out.stderr
    };
    let tail: Vec<&str> = detail
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .rev()
        .take(4)
        .collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    if tail.is_empty() {
        format!("`{}` failed ({exit})", describe_argv(argv))
    } else {
        format!(
            "`{}` failed ({exit}): {}",
            describe_argv(argv),
            tail.join(" | ")
        )
    }
}

/// An argv for messages and logs only (never for running): arguments that contain spaces or
/// quotes are shown in double quotes.
pub fn describe_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds an argv from string slices.
pub fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

/// The questions asked about the host, answered by [`RealHost`] or, in tests, by
/// [`fake::FakeHost`].
pub trait HostView {
    /// The operating system as Rust names it (`linux`, `macos`, …).
    fn os(&self) -> String;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Whether `path` is a regular file with an executable bit set.
    fn is_executable(&self, path: &Path) -> bool;
    /// An environment variable, if set and valid UTF-8.
    fn env(&self, key: &str) -> Option<String>;
    /// The effective uid of this process.
    fn effective_uid(&self) -> u32;
}

/// The host this agent runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

impl HostView for RealHost {
    fn os(&self) -> String {
        std::env::consts::OS.to_owned()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn is_executable(&self, path: &Path) -> bool {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }

    fn env(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }

    fn effective_uid(&self) -> u32 {
        nix::unistd::geteuid().as_raw()
    }
}

/// Where `name` would be found on `PATH`, the way `which` finds it but without running anything.
/// A name containing `/` is checked as given.
pub fn find_program(host: &dyn HostView, name: &str) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        let path = PathBuf::from(name);
        return host.is_executable(&path).then_some(path);
    }
    let path = host.env("PATH")?;
    path.split(':')
        // An empty entry means the current directory, which a daemon must not search.
        .filter(|dir| !dir.is_empty() && dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| host.is_executable(candidate))
}

/// Test doubles: a runner that records argvs and answers from a script, and a host made of
/// plain data.
#[cfg(test)]
pub mod fake {
    use std::collections::{HashMap, HashSet, VecDeque};
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::{BoxFuture, CommandOutput, HostView, Runner};

    /// Records every argv it is asked to run and answers with the next scripted answer, in order.
    /// A command with no answer left is an error, so a test notices any command it did not expect.
    #[derive(Default)]
    pub struct FakeRunner {
        calls: Mutex<Vec<Vec<String>>>,
        answers: Mutex<VecDeque<Result<CommandOutput, String>>>,
    }

    impl FakeRunner {
        /// A runner with no answers yet.
        pub fn new() -> Self {
            Self::default()
        }

        /// Adds the answer to the next unanswered command.
        pub fn then(self, answer: CommandOutput) -> Self {
            self.answers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(Ok(answer));
            self
        }

        /// Adds a success with `stdout` as the next answer.
        pub fn then_ok(self, stdout: &str) -> Self {
            self.then(CommandOutput::ok(stdout))
        }

        /// Adds "could not be run at all" as the next answer.
        pub fn then_unrunnable(self, error: &str) -> Self {
            self.answers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(Err(error.to_owned()));
            self
        }

        /// Every argv run so far, in order.
        pub fn calls(&self) -> Vec<Vec<String>> {
            self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }

        /// Every argv run so far, each joined with spaces (for compact assertions).
        pub fn lines(&self) -> Vec<String> {
            self.calls().iter().map(|argv| argv.join(" ")).collect()
        }
    }

    impl Runner for FakeRunner {
        fn run<'a>(&'a self, argv: &'a [String]) -> BoxFuture<'a, Result<CommandOutput, String>> {
            self.calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(argv.to_vec());
            let answer = self
                .answers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
                .unwrap_or_else(|| Err(format!("unexpected command: {}", argv.join(" "))));
            Box::pin(async move { answer })
        }
    }

    /// A host described by plain data.
    #[derive(Debug, Clone, Default)]
    pub struct FakeHost {
        /// What [`HostView::os`] answers.
        pub os: String,
        /// Paths that exist.
        pub files: HashSet<PathBuf>,
        /// Paths that exist and are executable.
        pub executables: HashSet<PathBuf>,
        /// The environment.
        pub env: HashMap<String, String>,
        /// The effective uid.
        pub euid: u32,
    }

    impl FakeHost {
        /// A host with this OS and uid, no files and an empty environment.
        pub fn new(os: &str, euid: u32) -> Self {
            Self {
                os: os.to_owned(),
                euid,
                ..Self::default()
            }
        }

        /// Adds an existing path.
        pub fn file(mut self, path: &str) -> Self {
            self.files.insert(PathBuf::from(path));
            self
        }

        /// Adds an existing executable.
        pub fn executable(mut self, path: &str) -> Self {
            self.files.insert(PathBuf::from(path));
            self.executables.insert(PathBuf::from(path));
            self
        }

        /// Sets an environment variable.
        pub fn var(mut self, key: &str, value: &str) -> Self {
            self.env.insert(key.to_owned(), value.to_owned());
            self
        }
    }

    impl HostView for FakeHost {
        fn os(&self) -> String {
            self.os.clone()
        }
        fn exists(&self, path: &Path) -> bool {
            self.files.contains(path)
        }
        fn is_executable(&self, path: &Path) -> bool {
            self.executables.contains(path)
        }
        fn env(&self, key: &str) -> Option<String> {
            self.env.get(key).cloned()
        }
        fn effective_uid(&self) -> u32 {
            self.euid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeHost, FakeRunner};
    use super::*;

    #[test]
    fn programs_are_found_on_path_without_a_shell() {
        let host = FakeHost::new("linux", 1000)
            .var("PATH", "relative/bin::/usr/local/bin:/usr/bin")
            .file("/usr/local/bin/docker")
            .executable("/usr/bin/docker")
            .executable("relative/bin/brew");
        // The first directory holding an *executable* wins; a bare file is not a program.
        assert_eq!(
            find_program(&host, "docker"),
            Some(PathBuf::from("/usr/bin/docker"))
        );
        // Relative PATH entries are never searched by a daemon.
        assert_eq!(find_program(&host, "brew"), None);
        assert_eq!(
            find_program(&host, "/usr/bin/docker"),
            Some(PathBuf::from("/usr/bin/docker"))
        );
        assert_eq!(find_program(&host, ""), None);
        assert_eq!(find_program(&FakeHost::new("linux", 0), "docker"), None);
    }

    #[test]
    fn failures_name_the_command_and_the_end_of_stderr() {
        let argv = argv(&["systemctl", "start", "a b.service"]);
        let out = CommandOutput::failed(
            5,
            "\nFailed to start a b.service: Unit a b.service not found.\n",
        );
        assert_eq!(
            failure(&argv, &out),
            "`systemctl start \"a b.service\"` failed (exit 5): Failed to start a b.service: Unit a b.service not found."
        );
        let silent = CommandOutput {
            code: None,
            ..CommandOutput::default()
        };
        assert_eq!(
            failure(&argv, &silent),
            "`systemctl start \"a b.service\"` failed (killed by a signal)"
        );
    }

    #[tokio::test]
    async fn run_checked_returns_stdout_or_the_failure() {
        let runner = FakeRunner::new()
            .then_ok("hello\n")
            .then(CommandOutput::failed(1, "nope"));
        let cmd = argv(&["echo", "hello"]);
        assert_eq!(run_checked(&runner, &cmd).await.unwrap(), "hello\n");
        assert_eq!(
            run_checked(&runner, &cmd).await.unwrap_err(),
            "`echo hello` failed (exit 1): nope"
        );
        // Nothing scripted: the fake refuses, so a test sees an unexpected command.
        assert!(
            run_checked(&runner, &cmd)
                .await
                .unwrap_err()
                .contains("unexpected command")
        );
        assert_eq!(runner.lines(), vec!["echo hello"; 3]);
    }

    #[tokio::test]
    async fn the_process_runner_passes_arguments_verbatim() {
        // `printf` is run directly: a shell would have expanded `$HOME` and split on the space.
        let runner = ProcessRunner::default();
        let out = runner
            .run(&argv(&["printf", "%s|", "$HOME", "a b"]))
            .await
            .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, "$HOME|a b|");
        assert!(runner.run(&[]).await.is_err());
        assert!(
            runner
                .run(&argv(&["/nonexistent/moltops-no-such-program"]))
                .await
                .is_err()
        );
    }
}
