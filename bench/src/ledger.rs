//! Exactly-once bookkeeping across the simulated fleet. Every delivery of a command to a
//! simulated agent, every execution and every answer from an agent's journal is counted here by
//! command id; [`verdict`] compares those counts with the jobs the control plane recorded.
//!
//! The agents themselves keep a per-agent journal (as the real agent does on disk) that decides
//! whether a delivery is executed or answered from the journal; the ledger only counts, so a bug
//! in either the control plane's redelivery or the agents' journal shows up as a duplicate.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use serde::Serialize;
use uuid::Uuid;

/// What happened to one command on the agents' side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CommandRecord {
    /// The agent (node) that received it first.
    pub node_id: Uuid,
    /// Nodes other than `node_id` that received it too (never expected).
    pub other_nodes: Vec<Uuid>,
    pub deliveries: u32,
    pub executions: u32,
    pub journal_answers: u32,
}

#[derive(Debug, Default)]
pub struct Ledger {
    records: Mutex<HashMap<Uuid, CommandRecord>>,
}

impl Ledger {
    pub fn delivered(&self, command_id: Uuid, node_id: Uuid) {
        self.update(command_id, node_id, |r| r.deliveries += 1);
    }

    pub fn executed(&self, command_id: Uuid, node_id: Uuid) {
        self.update(command_id, node_id, |r| r.executions += 1);
    }

    pub fn answered_from_journal(&self, command_id: Uuid, node_id: Uuid) {
        self.update(command_id, node_id, |r| r.journal_answers += 1);
    }

    fn update(&self, command_id: Uuid, node_id: Uuid, change: impl FnOnce(&mut CommandRecord)) {
        // A poisoned lock means an agent task panicked while counting; keep counting with what
        // is there rather than lose every later record.
        let mut records = self
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = records.entry(command_id).or_insert_with(|| CommandRecord {
            node_id,
            ..CommandRecord::default()
        });
        if record.node_id != node_id && !record.other_nodes.contains(&node_id) {
            record.other_nodes.push(node_id);
        }
        change(record);
    }

    /// A copy of every record.
    pub fn snapshot(&self) -> HashMap<Uuid, CommandRecord> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// One job as the control plane recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedJob {
    pub job_id: Uuid,
    pub node_id: Uuid,
    pub status: String,
    /// The result is the one this kind of command must produce (a pong; a verified action).
    pub result_as_expected: bool,
}

/// Whether a fan-out ran exactly once on every node. Lists hold job ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub jobs: usize,
    /// Recorded as succeeded with the expected result.
    pub succeeded: usize,
    /// Executed by exactly one agent exactly once.
    pub executed_once: usize,
    /// Delivered more than once (a stream dropped before the result); fine as long as it ran once.
    pub redelivered: usize,
    /// Never executed by any agent.
    pub lost: Vec<Uuid>,
    /// Executed more than once.
    pub duplicated: Vec<Uuid>,
    /// Received by a node other than the job's (or by several).
    pub misrouted: Vec<Uuid>,
    /// Not recorded as succeeded with the expected result: (job, status).
    pub not_succeeded: Vec<(Uuid, String)>,
}

impl Verdict {
    pub fn is_exactly_once(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.misrouted.is_empty()
            && self.not_succeeded.is_empty()
            && self.succeeded == self.jobs
            && self.executed_once == self.jobs
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} jobs: {} succeeded, {} executed exactly once, {} redelivered; {} lost, {} duplicated, {} misrouted, {} not succeeded",
            self.jobs,
            self.succeeded,
            self.executed_once,
            self.redelivered,
            self.lost.len(),
            self.duplicated.len(),
            self.misrouted.len(),
            self.not_succeeded.len()
        )?;
        let examples = |ids: &[Uuid]| {
            ids.iter()
                .take(3)
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.lost.is_empty() {
            write!(f, "; lost e.g. {}", examples(&self.lost))?;
        }
        if !self.duplicated.is_empty() {
            write!(f, "; duplicated e.g. {}", examples(&self.duplicated))?;
        }
        if !self.misrouted.is_empty() {
            write!(f, "; misrouted e.g. {}", examples(&self.misrouted))?;
        }
        if let Some((id, status)) = self.not_succeeded.first() {
            write!(f, "; not succeeded e.g. {id} ({status})")?;
        }
        Ok(())
    }
}

/// Compares the jobs the control plane recorded with what the agents did.
pub fn verdict(jobs: &[RecordedJob], ledger: &HashMap<Uuid, CommandRecord>) -> Verdict {
    let mut v = Verdict {
        jobs: jobs.len(),
        ..Verdict::default()
    };
    for job in jobs {
        if job.status == "succeeded" && job.result_as_expected {
            v.succeeded += 1;
        } else {
            let status = if job.status == "succeeded" {
                "succeeded with an unexpected result".to_owned()
            } else {
                job.status.clone()
            };
            v.not_succeeded.push((job.job_id, status));
        }
        let Some(record) = ledger.get(&job.job_id) else {
            v.lost.push(job.job_id);
            continue;
        };
        if record.node_id != job.node_id || !record.other_nodes.is_empty() {
            v.misrouted.push(job.job_id);
        }
        match record.executions {
            0 => v.lost.push(job.job_id),
            1 => v.executed_once += 1,
            _ => v.duplicated.push(job.job_id),
        }
        if record.deliveries > 1 {
            v.redelivered += 1;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn job(n: u128, node: u128, status: &str) -> RecordedJob {
        RecordedJob {
            job_id: id(n),
            node_id: id(node),
            status: status.to_owned(),
            result_as_expected: true,
        }
    }

    /// Runs `events` (command, node, what) through a ledger and checks the verdict's counts:
    /// (succeeded, executed once, redelivered, lost, duplicated, misrouted, not succeeded).
    fn check(
        jobs: &[RecordedJob],
        events: &[(u128, u128, &str)],
        expected: (usize, usize, usize, usize, usize, usize, usize),
    ) {
        let ledger = Ledger::default();
        for (command, node, what) in events {
            match *what {
                "deliver" => ledger.delivered(id(*command), id(*node)),
                "execute" => ledger.executed(id(*command), id(*node)),
                "journal" => ledger.answered_from_journal(id(*command), id(*node)),
                other => panic!("unknown event {other}"),
            }
        }
        let v = verdict(jobs, &ledger.snapshot());
        let got = (
            v.succeeded,
            v.executed_once,
            v.redelivered,
            v.lost.len(),
            v.duplicated.len(),
            v.misrouted.len(),
            v.not_succeeded.len(),
        );
        assert_eq!(got, expected, "{v}");
        assert_eq!(
            v.is_exactly_once(),
            expected.3 + expected.4 + expected.5 + expected.6 == 0 && expected.0 == jobs.len(),
            "{v}"
        );
    }

    #[test]
    fn exactly_once_is_told_apart_from_lost_duplicated_and_misrouted() {
        let both = [job(1, 10, "succeeded"), job(2, 20, "succeeded")];
        // Each delivered and executed once on its own node.
        check(
            &both,
            &[
                (1, 10, "deliver"),
                (1, 10, "execute"),
                (2, 20, "deliver"),
                (2, 20, "execute"),
            ],
            (2, 2, 0, 0, 0, 0, 0),
        );
        // Delivered again after a dropped stream and answered from the journal: still once.
        check(
            &both,
            &[
                (1, 10, "deliver"),
                (1, 10, "execute"),
                (1, 10, "deliver"),
                (1, 10, "journal"),
                (2, 20, "deliver"),
                (2, 20, "execute"),
            ],
            (2, 2, 1, 0, 0, 0, 0),
        );
        // Never reached an agent.
        check(
            &both,
            &[(1, 10, "deliver"), (1, 10, "execute")],
            (2, 1, 0, 1, 0, 0, 0),
        );
        // Delivered but not executed (e.g. refused after its deadline) is lost too.
        check(
            &both,
            &[(1, 10, "deliver"), (1, 10, "execute"), (2, 20, "deliver")],
            (2, 1, 0, 1, 0, 0, 0),
        );
        // Executed twice.
        check(
            &both,
            &[
                (1, 10, "deliver"),
                (1, 10, "execute"),
                (1, 10, "deliver"),
                (1, 10, "execute"),
                (2, 20, "deliver"),
                (2, 20, "execute"),
            ],
            (2, 1, 1, 0, 1, 0, 0),
        );
        // Run by another node.
        check(
            &both,
            &[
                (1, 10, "deliver"),
                (1, 10, "execute"),
                (2, 30, "deliver"),
                (2, 30, "execute"),
            ],
            (2, 2, 0, 0, 0, 1, 0),
        );
        // The control plane did not record success.
        check(
            &[job(1, 10, "failed")],
            &[(1, 10, "deliver"), (1, 10, "execute")],
            (0, 1, 0, 0, 0, 0, 1),
        );
        let mut odd = job(1, 10, "succeeded");
        odd.result_as_expected = false;
        check(
            &[odd],
            &[(1, 10, "deliver"), (1, 10, "execute")],
            (0, 1, 0, 0, 0, 0, 1),
        );
    }
}
