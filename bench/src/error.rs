//! The bench's one error type. A correctness failure (an agent that could not enroll or connect,
//! a command lost or run twice) is an error like any other: the tool exits non-zero with it.

use std::time::Duration;

use moltops_agent::tls::error_chain;

use crate::ledger::Verdict;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad options, found before anything was started.
    #[error("{0}")]
    Config(String),
    /// The REST call did not get an answer. (The whole cause chain is in the message, which is
    /// also what the JSON report keeps, so it is not also a `source` for `{:#}` to repeat.)
    #[error("{what}: {}", error_chain(cause))]
    Http { what: String, cause: reqwest::Error },
    /// The control plane answered, but not with what the call needs.
    #[error("{what}: the control plane answered {status}: {body}")]
    Api {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{failed} of {total} simulated agents could not enroll; for example: {examples}")]
    Enroll {
        failed: usize,
        total: usize,
        examples: String,
    },
    #[error("timed out after {waited:?} waiting for {what} ({progress})")]
    Timeout {
        what: String,
        waited: Duration,
        progress: String,
    },
    #[error("{what}: {problem}")]
    Fleet { what: String, problem: String },
    #[error("the {command} fan-out was not executed exactly once: {verdict}")]
    ExactlyOnce {
        command: &'static str,
        verdict: Box<Verdict>,
    },
    #[error("reading {path}: {cause}")]
    Proc { path: String, cause: std::io::Error },
}

pub type BenchResult<T> = Result<T, BenchError>;
