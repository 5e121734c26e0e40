//! Command execution. One function per command kind; the proto enum is closed, so a command the
//! agent does not know cannot be executed — it is reported as a failure.

use moltops_proto::agent::command::Kind;
use moltops_proto::agent::command_result::Outcome;
use moltops_proto::agent::{CommandFailure, Pong};

/// Executes one command and returns its outcome. `now_unix_ms` is a parameter (time as input).
pub fn execute(kind: Option<Kind>, now_unix_ms: i64) -> Outcome {
    match kind {
        Some(Kind::Ping(_)) => Outcome::Pong(Pong {
            agent_version: crate::VERSION.to_owned(),
            agent_time_unix_ms: now_unix_ms,
        }),
        None => Outcome::Failure(CommandFailure {
            message: "this agent does not know that command kind; upgrade the agent".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moltops_proto::agent::Ping;

    #[test]
    fn ping_pongs_and_unknown_commands_fail() {
        match execute(Some(Kind::Ping(Ping {})), 1234) {
            Outcome::Pong(p) => {
                assert_eq!(p.agent_time_unix_ms, 1234);
                assert_eq!(p.agent_version, crate::VERSION);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(execute(None, 0), Outcome::Failure(_)));
    }
}
