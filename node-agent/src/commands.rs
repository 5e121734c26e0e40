//! Command execution. One function per command kind; the proto enum is closed, so a command the
//! agent does not know cannot be executed — it is reported as a failure.

use moltops_proto::agent::command::Kind;
use moltops_proto::agent::command_result::Outcome;
use moltops_proto::agent::{CommandFailure, Pong};

use crate::gateway::Gateway;

/// Executes one command and returns its outcome. `now_unix_ms` is a parameter (time as input).
pub async fn execute(kind: Option<Kind>, now_unix_ms: i64, gateway: &Gateway) -> Outcome {
    let failed = |message: String| Outcome::Failure(CommandFailure { message });
    match kind {
        Some(Kind::Ping(_)) => Outcome::Pong(Pong {
            agent_version: crate::VERSION.to_owned(),
            agent_time_unix_ms: now_unix_ms,
        }),
        Some(Kind::Install(request)) => match gateway.install(&request).await {
            Ok(installed) => Outcome::Installed(installed),
            Err(e) => failed(e),
        },
        Some(Kind::ServiceAction(request)) => match gateway.action(&request).await {
            Ok(done) => Outcome::ActionDone(done),
            Err(e) => failed(e),
        },
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
        match execute(Some(Kind::Ping(Ping {})), 1234, &gateway).await {
            Outcome::Pong(p) => {
                assert_eq!(p.agent_time_unix_ms, 1234);
                assert_eq!(p.agent_version, crate::VERSION);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            execute(None, 0, &gateway).await,
            Outcome::Failure(_)
        ));
        // No gateway installed: service actions fail with a reason.
        let stop = moltops_proto::agent::ServiceAction {
            action: 2,
            verify_timeout_seconds: 1,
        };
        match execute(Some(Kind::ServiceAction(stop)), 0, &gateway).await {
            Outcome::Failure(f) => assert!(
                f.message.contains("no gateway is installed"),
                "{}",
                f.message
            ),
            other => panic!("{other:?}"),
        }
    }
}
