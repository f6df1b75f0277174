//! The history of a fault run, Jepsen-style: every operation a client invoked, when it started
//! and ended (milliseconds since the run began), what it returned, and whether a replica
//! confirmed it (`WAIT 1`). Kept in memory for the checker and written as JSON lines.

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// What an operation does. Every SET key and RPUSH value is unique to one operation, so that
/// its presence at the end tells whether that very write survived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// `SET key value`.
    Set {
        /// The key, never written twice.
        key: String,
        /// Its value.
        value: String,
    },
    /// `INCR counter`.
    Incr {
        /// One of a few counters.
        counter: String,
    },
    /// `RPUSH list value`.
    Push {
        /// One of a few lists.
        list: String,
        /// The value, never pushed twice.
        value: String,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The server answered with success (OK, or the counter's or list's new value).
    Ok,
    /// The server refused it with an error reply (READONLY, NOREPLICAS, ...): not applied.
    Fail,
    /// No answer (timeout, connection broken): it may or may not have been applied.
    Unknown,
}

/// One operation, as the client saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The client (`<zone>-<n>`).
    pub client: String,
    /// What it did.
    #[serde(flatten)]
    pub op: Op,
    /// When it was sent, in ms since the run began.
    pub start_ms: f64,
    /// When its answer (and WAIT's) came, or the client gave up.
    pub end_ms: f64,
    /// How it ended.
    pub outcome: Outcome,
    /// The integer reply of INCR and RPUSH.
    pub returned: Option<i64>,
    /// What `WAIT 1 <ms>` answered after a success: the replicas that confirmed it.
    pub replicas: Option<i64>,
    /// The master it was sent to (`host:port` as the sentinels announce it).
    pub master: Option<String>,
    /// The master's replication id right after the write (`master_replid`): a node takes a new
    /// one when it is promoted, so two ids are two masters, even on one node.
    pub replid: Option<String>,
    /// The error, for a failure.
    pub error: Option<String>,
}

impl Record {
    /// A success that a replica confirmed: the write the system promised to keep.
    pub fn acknowledged(&self) -> bool {
        self.outcome == Outcome::Ok && self.replicas.is_some_and(|replicas| replicas >= 1)
    }

    /// A success no replica confirmed (in time).
    pub fn ok_only(&self) -> bool {
        self.outcome == Outcome::Ok && !self.acknowledged()
    }
}

/// A shared, append-only history with the run's clock.
#[derive(Clone)]
pub struct History {
    started: Instant,
    records: Arc<Mutex<Vec<Record>>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            records: Arc::default(),
        }
    }

    /// Milliseconds since the run began.
    pub fn now_ms(&self) -> f64 {
        self.at_ms(Instant::now())
    }

    /// `at` in milliseconds since the run began.
    pub fn at_ms(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64() * 1000.0
    }

    /// Appends one record.
    pub fn push(&self, record: Record) {
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(record);
    }

    /// Every record so far, in the order they were appended.
    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Writes every record as one JSON object per line.
    pub fn write_json_lines(&self, path: &Path) -> Result<()> {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("failed to create {path:?}"))?,
        );
        for record in self.records() {
            serde_json::to_writer(&mut file, &record)?;
            file.write_all(b"\n")?;
        }
        file.flush()?;
        Ok(())
    }
}

/// Reads a history written by [`History::write_json_lines`].
pub fn read_json_lines(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("failed to read {path:?}"))?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).with_context(|| format!("not a record: {line}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_json_lines() -> Result<()> {
        let history = History::new();
        history.push(Record {
            client: "a-0".to_owned(),
            op: Op::Push {
                list: "list-1".to_owned(),
                value: "a-0:7".to_owned(),
            },
            start_ms: 1.5,
            end_ms: 3.0,
            outcome: Outcome::Ok,
            returned: Some(4),
            replicas: Some(1),
            master: Some("node-0:6379".to_owned()),
            replid: Some("abc".to_owned()),
            error: None,
        });
        let path = std::env::temp_dir().join(format!("history-{}.jsonl", std::process::id()));
        history.write_json_lines(&path)?;
        let text = std::fs::read_to_string(&path)?;
        assert!(text.contains(r#""op":"push""#), "{text}");
        assert_eq!(read_json_lines(&path)?, history.records());
        std::fs::remove_file(&path)?;
        Ok(())
    }
}
