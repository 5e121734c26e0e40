//! The agent's durable journal of commands, so that no command runs twice: the control plane
//! delivers a command again whenever it is not sure the result arrived (a stream that dropped, a
//! replica that died), and the agent answers a command it already finished with the recorded
//! result instead of running it again. A command that was started but never finished (the agent
//! itself died mid-way) is reported as interrupted, never re-run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use moltops_proto::agent::command_result::Outcome;
use moltops_proto::agent::{CommandFailure, CommandResult};
use prost::Message;

/// What to do with a delivered command.
#[derive(Debug)]
pub enum Begin {
    /// Never seen: run it (it is now journalled as started).
    Fresh,
    /// Running in this process right now: its result will be sent when it finishes.
    Running,
    /// Finished before: send this recorded result again.
    Done(Outcome),
    /// Started by an earlier run of the agent that died before finishing it.
    Interrupted,
}

pub struct Journal {
    dir: PathBuf,
    running: Mutex<HashSet<String>>,
}

/// Command ids are UUIDs; anything else is refused before it can name a file.
fn valid(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

impl Journal {
    pub fn open(state_root: &Path) -> std::io::Result<Self> {
        let dir = state_root.join("journal");
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            running: Mutex::new(HashSet::new()),
        })
    }

    pub fn begin(&self, id: &str) -> Begin {
        if !valid(id) {
            return Begin::Done(Outcome::Failure(CommandFailure {
                message: "malformed command id".into(),
            }));
        }
        let Ok(mut running) = self.running.lock() else {
            return Begin::Running;
        };
        if running.contains(id) {
            return Begin::Running;
        }
        if let Ok(bytes) = std::fs::read(self.dir.join(format!("{id}.done"))) {
            return match CommandResult::decode(bytes.as_slice()) {
                Ok(CommandResult {
                    outcome: Some(outcome),
                    ..
                }) => Begin::Done(outcome),
                _ => Begin::Done(Outcome::Failure(CommandFailure {
                    message: "the journalled result is unreadable".into(),
                })),
            };
        }
        if self.dir.join(format!("{id}.started")).exists() {
            return Begin::Interrupted;
        }
        // Durable before running: a crash from here on is "interrupted", never "run again".
        if write_durably(&self.dir.join(format!("{id}.started")), b"").is_err() {
            tracing::warn!(
                command_id = id,
                "cannot journal a command; running it anyway"
            );
        }
        running.insert(id.to_owned());
        Begin::Fresh
    }

    /// Records the result (durably) and forgets that it is running.
    pub fn finish(&self, id: &str, outcome: &Outcome) {
        if valid(id) {
            let record = CommandResult {
                command_id: id.to_owned(),
                outcome: Some(outcome.clone()),
            };
            if let Err(e) = write_durably(
                &self.dir.join(format!("{id}.done")),
                &record.encode_to_vec(),
            ) {
                tracing::warn!(command_id = id, error = %e, "cannot journal a command's result");
            }
        }
        if let Ok(mut running) = self.running.lock() {
            running.remove(id);
        }
    }

    /// Drops journal entries older than `age` (the control plane gives up re-delivering long
    /// before).
    pub fn prune(&self, age: std::time::Duration) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|e| e > age);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes a file so that it survives a crash: temp file, fsync, rename, fsync the directory.
fn write_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The failure sent for a command an earlier agent run started and never finished.
pub fn interrupted() -> Outcome {
    Outcome::Failure(CommandFailure {
        message: "interrupted: the agent stopped while running this command; it was not run again, and its effect on the host is unknown".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moltops_proto::agent::Pong;

    #[test]
    fn a_command_runs_once_and_its_result_is_replayed() {
        let dir =
            std::env::temp_dir().join(format!("moltops-journal-{}", uuid::Uuid::new_v4().simple()));
        let journal = Journal::open(&dir).unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        assert!(matches!(journal.begin(&id), Begin::Fresh));
        assert!(
            matches!(journal.begin(&id), Begin::Running),
            "a second delivery while running"
        );
        let pong = Outcome::Pong(Pong {
            agent_version: "x".into(),
            agent_time_unix_ms: 7,
        });
        journal.finish(&id, &pong);
        match journal.begin(&id) {
            Begin::Done(Outcome::Pong(p)) => assert_eq!(p.agent_time_unix_ms, 7),
            other => panic!("{other:?}"),
        }
        // Another process (a restarted agent) sees the same.
        let again = Journal::open(&dir).unwrap();
        assert!(matches!(again.begin(&id), Begin::Done(_)));
        // Started but never finished by a process that died: interrupted, not run again.
        let other = uuid::Uuid::new_v4().to_string();
        assert!(matches!(journal.begin(&other), Begin::Fresh));
        let restarted = Journal::open(&dir).unwrap();
        assert!(matches!(restarted.begin(&other), Begin::Interrupted));
        assert!(matches!(
            journal.begin("../../etc/passwd"),
            Begin::Done(Outcome::Failure(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
