//! Command execution. One function per command kind; the proto enum is closed, so a command the
//! agent does not know cannot be executed — it is reported as a failure.
//!
//! A running command gets a [`Context`]: a cancellation token the control plane can trip
//! (cooperative cancel: each step checks it at a point where stopping is safe) and a
//! [`Progress`] reporter for its steps and log lines.

use moltops_proto::agent::agent_message::Body as AgentBody;
use moltops_proto::agent::command::Kind;
use moltops_proto::agent::command_progress::Kind as ProgressKind;
use moltops_proto::agent::command_result::Outcome;
use moltops_proto::agent::{AgentMessage, Cancelled, CommandFailure, CommandProgress, Pong};
use tokio::sync::mpsc;

use crate::gateway::{Gateway, OpError};
use crate::run::tokio_util_shim::CancellationToken;

/// Reports a command's progress to the control plane. Best effort: when the stream is down and
/// the queue is full, progress is dropped (the result never is).
#[derive(Clone, Debug)]
pub struct Progress {
    command_id: String,
    to: Option<mpsc::Sender<AgentMessage>>,
}

impl Progress {
    pub fn new(command_id: &str, to: mpsc::Sender<AgentMessage>) -> Self {
        Self {
            command_id: command_id.to_owned(),
            to: Some(to),
        }
    }

    /// Reports nothing (tests, and commands run outside a stream).
    pub fn none() -> Self {
        Self {
            command_id: String::new(),
            to: None,
        }
    }

    fn send(&self, kind: ProgressKind, step: &str, message: &str) {
        if let Some(to) = &self.to {
            let _ = to.try_send(AgentMessage {
                body: Some(AgentBody::CommandProgress(CommandProgress {
                    command_id: self.command_id.clone(),
                    kind: kind.into(),
                    step: step.to_owned(),
                    message: message.to_owned(),
                })),
            });
        }
    }

    /// The command started (or, on a re-delivery, is still running).
    pub fn started(&self) {
        self.send(ProgressKind::Started, "", "");
    }

    pub fn step(&self, step: &str, message: &str) {
        tracing::info!(command_id = %self.command_id, step, "{message}");
        self.send(ProgressKind::Step, step, message);
    }

    pub fn log(&self, line: &str) {
        self.send(ProgressKind::Log, "", line);
    }
}

/// What a running command is given.
#[derive(Clone, Debug)]
pub struct Context {
    pub cancel: CancellationToken,
    pub progress: Progress,
}

impl Context {
    /// Never cancelled, reports nothing.
    pub fn detached() -> Self {
        Self {
            cancel: CancellationToken::new(),
            progress: Progress::none(),
        }
    }
}

fn op_outcome<T>(result: Result<T, OpError>, ok: impl FnOnce(T) -> Outcome) -> Outcome {
    match result {
        Ok(v) => ok(v),
        Err(OpError::Failed(message)) => Outcome::Failure(CommandFailure { message }),
        Err(OpError::Cancelled { step, message }) => {
            Outcome::Cancelled(Cancelled { step, message })
        }
    }
}

/// Executes one command and returns its outcome. `now_unix_ms` is a parameter (time as input).
pub async fn execute(
    kind: Option<Kind>,
    now_unix_ms: i64,
    gateway: &Gateway,
    ctx: &Context,
) -> Outcome {
    match kind {
        Some(Kind::Ping(_)) => Outcome::Pong(Pong {
            agent_version: crate::VERSION.to_owned(),
            agent_time_unix_ms: now_unix_ms,
        }),
        Some(Kind::Install(request)) => {
            op_outcome(gateway.install(&request, ctx).await, Outcome::Installed)
        }
        Some(Kind::ServiceAction(request)) => {
            op_outcome(gateway.action(&request, ctx).await, Outcome::ActionDone)
        }
        None => Outcome::Failure(CommandFailure {
            message: "this agent does not know that command kind; upgrade the agent".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moltops_proto::agent::Ping;

    #[tokio::test]
    async fn ping_pongs_and_unknown_commands_fail() {
        let dir = std::env::temp_dir().join(format!(
            "moltops-commands-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let gateway = Gateway::new(&dir, crate::gateway::Options::default());
        let ctx = Context::detached();
        match execute(Some(Kind::Ping(Ping {})), 1234, &gateway, &ctx).await {
            Outcome::Pong(p) => {
                assert_eq!(p.agent_time_unix_ms, 1234);
                assert_eq!(p.agent_version, crate::VERSION);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            execute(None, 0, &gateway, &ctx).await,
            Outcome::Failure(_)
        ));
        // No gateway installed: service actions fail with a reason.
        let stop = moltops_proto::agent::ServiceAction {
            action: 2,
            verify_timeout_seconds: 1,
        };
        match execute(Some(Kind::ServiceAction(stop)), 0, &gateway, &ctx).await {
            Outcome::Failure(f) => assert!(
                f.message.contains("no gateway is installed"),
                "{}",
                f.message
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_command_cancelled_while_it_waits_for_another_reports_where_it_stopped() {
        let dir = std::env::temp_dir().join(format!(
            "moltops-commands-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let gateway = Gateway::new(&dir, crate::gateway::Options::default());
        let ctx = Context::detached();
        ctx.cancel.cancel();
        let start = moltops_proto::agent::ServiceAction {
            action: 1,
            verify_timeout_seconds: 1,
        };
        match execute(Some(Kind::ServiceAction(start)), 0, &gateway, &ctx).await {
            Outcome::Cancelled(c) => {
                assert_eq!(c.step, "wait");
                assert!(c.message.contains("nothing was changed"), "{}", c.message);
            }
            other => panic!("{other:?}"),
        }
    }
}
