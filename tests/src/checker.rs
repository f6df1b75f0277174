//! The fault suite's checker: a pure function of the history and of the state read back at the
//! end, after the faults are healed. It judges, never the code under test:
//! - **acknowledged writes lost**: OK, a replica confirmed it (`WAIT` ≥ 1), and absent at the
//!   end (a SET key without its value, an RPUSH value missing from its list, a counter below
//!   a value an acknowledged INCR returned). Must be 0.
//! - **OK-only writes lost**: OK without a replica's confirmation, absent at the end; the
//!   price of asynchronous replication, bounded by `min-replicas-to-write`/`-max-lag`. Those
//!   that started after a newer master had already acknowledged a write were taken by a
//!   master that should have stopped by then (the old master's lag bound longer than the
//!   failover): those must be 0.
//! - **split brain**: a master (a replication id: a promotion takes a new one) acknowledging
//!   a write that started after a newer master had acknowledged one; and two acknowledged
//!   INCRs of one counter returning the same value (only two diverged histories do that).
//!   Must be 0.
//! - **unavailability**: per fault, the longest time without an acknowledged write.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{Op, Outcome, Record};

/// What was read back at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalState {
    /// Each SET key's value (`None`: absent).
    pub values: BTreeMap<String, Option<String>>,
    /// Each list's elements.
    pub lists: BTreeMap<String, Vec<String>>,
    /// Each counter's value (absent: 0).
    pub counters: BTreeMap<String, i64>,
}

impl FinalState {
    /// The keys, lists and counters the history wrote, to read back.
    pub fn wanted(records: &[Record]) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
        let (mut keys, mut lists, mut counters) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for record in records {
            match &record.op {
                Op::Set { key, .. } => keys.insert(key.clone()),
                Op::Push { list, .. } => lists.insert(list.clone()),
                Op::Incr { counter } => counters.insert(counter.clone()),
            };
        }
        (keys, lists, counters)
    }
}

/// Two masters acknowledging writes at once.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitBrain {
    /// The older master's replication id.
    pub older: String,
    /// The newer one's.
    pub newer: String,
    /// How long the older one went on acknowledging after the newer one had (ms).
    pub window_ms: f64,
}

/// A fault's time span, for the unavailability figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// What it was.
    pub kind: String,
    /// When the fault began (ms since the run began).
    pub start_ms: f64,
    /// When the set was judged healthy again after the fault was undone.
    pub end_ms: f64,
}

/// The verdict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Operations invoked.
    pub operations: usize,
    /// Acknowledged by a replica.
    pub acknowledged: usize,
    /// OK without a replica's confirmation.
    pub ok_only: usize,
    /// Refused by the server.
    pub failed: usize,
    /// Without an answer.
    pub unknown: usize,
    /// Acknowledged writes absent at the end, described.
    pub lost_acknowledged: Vec<String>,
    /// OK-only writes absent at the end.
    pub lost_ok_only: usize,
    /// Of those, the ones that started after a newer master had acknowledged a write.
    pub lost_ok_only_after_failover: usize,
    /// Counters whose value contradicts the increments (described).
    pub counter_violations: Vec<String>,
    /// Masters acknowledging at once.
    pub split_brain: Vec<SplitBrain>,
    /// Per window: the longest time without an acknowledged write (ms).
    pub unavailability_ms: Vec<(String, f64)>,
}

impl Report {
    /// Whether the run kept its promises: something was acknowledged, nothing acknowledged
    /// was lost, no old master took writes after a newer one acknowledged, no counter
    /// contradicts its increments, no two masters acknowledged at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.acknowledged == 0 {
            problems.push("no write was acknowledged at all".to_owned());
        }
        if !self.lost_acknowledged.is_empty() {
            problems.push(format!(
                "{} acknowledged writes lost, e.g. {:?}",
                self.lost_acknowledged.len(),
                &self.lost_acknowledged[..self.lost_acknowledged.len().min(5)]
            ));
        }
        if self.lost_ok_only_after_failover > 0 {
            problems.push(format!(
                "{} OK-only writes lost that an old master took after a newer master had \
                 acknowledged (min-replicas-max-lag outlives the failover)",
                self.lost_ok_only_after_failover
            ));
        }
        if !self.counter_violations.is_empty() {
            problems.push(format!("counters: {:?}", self.counter_violations));
        }
        if !self.split_brain.is_empty() {
            problems.push(format!("split brain: {:?}", self.split_brain));
        }
        problems
    }
}

/// Each replication id's acknowledged writes: (first end, last start).
fn terms(records: &[Record]) -> BTreeMap<String, (f64, f64)> {
    let mut terms: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for record in records.iter().filter(|record| record.acknowledged()) {
        let Some(replid) = &record.replid else {
            continue;
        };
        let entry = terms
            .entry(replid.clone())
            .or_insert((record.end_ms, record.start_ms));
        entry.0 = entry.0.min(record.end_ms);
        entry.1 = entry.1.max(record.start_ms);
    }
    terms
}

/// Checks `records` against what was read back at the end.
pub fn check(records: &[Record], state: &FinalState, windows: &[Window]) -> Report {
    let mut report = Report {
        operations: records.len(),
        ..Report::default()
    };
    let terms = terms(records);
    // When a newer master than `replid` first acknowledged a write.
    let superseded_at = |replid: Option<&String>| -> Option<f64> {
        let own = terms.get(replid?)?.0;
        terms
            .values()
            .map(|(first_end, _)| *first_end)
            .filter(|first_end| *first_end > own)
            .reduce(f64::min)
    };
    let mut increments: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for record in records {
        match record.outcome {
            Outcome::Ok if record.acknowledged() => report.acknowledged += 1,
            Outcome::Ok => report.ok_only += 1,
            Outcome::Fail => report.failed += 1,
            Outcome::Unknown => report.unknown += 1,
        }
        let present = match &record.op {
            Op::Set { key, value } => {
                state.values.get(key).and_then(Option::as_deref) == Some(value.as_str())
            }
            Op::Push { list, value } => state
                .lists
                .get(list)
                .is_some_and(|values| values.contains(value)),
            Op::Incr { counter } => {
                increments.entry(counter).or_default().push(record);
                continue;
            }
        };
        if present || record.outcome != Outcome::Ok {
            continue;
        }
        if record.acknowledged() {
            report.lost_acknowledged.push(format!(
                "{:?} by {} at {:.0} ms on {:?}",
                record.op,
                record.client,
                record.start_ms,
                record.master.as_deref().unwrap_or("?")
            ));
        } else {
            report.lost_ok_only += 1;
            // An OK-only write carries no replication id when WAIT failed; the last one its
            // client saw on that master is not known here, so only those with one count.
            if superseded_at(record.replid.as_ref()).is_some_and(|at| record.start_ms > at) {
                report.lost_ok_only_after_failover += 1;
            }
        }
    }
    for (counter, records) in increments {
        let value = state.counters.get(counter).copied().unwrap_or(0);
        let acknowledged: Vec<i64> = records
            .iter()
            .filter(|record| record.acknowledged())
            .filter_map(|record| record.returned)
            .collect();
        let possible = records
            .iter()
            .filter(|record| record.outcome != Outcome::Fail)
            .count();
        if let Some(highest) = acknowledged.iter().max()
            && value < *highest
        {
            report.counter_violations.push(format!(
                "{counter} is {value}, below the {highest} an acknowledged INCR returned"
            ));
        }
        if value < acknowledged.len() as i64 {
            report.counter_violations.push(format!(
                "{counter} is {value}, below its {} acknowledged increments",
                acknowledged.len()
            ));
        }
        if value > possible as i64 {
            report.counter_violations.push(format!(
                "{counter} is {value}, above the {possible} increments that may have happened"
            ));
        }
        let mut seen = BTreeSet::new();
        for returned in &acknowledged {
            if !seen.insert(*returned) {
                report.counter_violations.push(format!(
                    "two acknowledged INCRs of {counter} returned {returned}: two masters"
                ));
            }
        }
    }
    let mut ordered: Vec<(&String, &(f64, f64))> = terms.iter().collect();
    ordered.sort_by(|left, right| left.1.0.total_cmp(&right.1.0));
    for (index, (older, (_, older_last_start))) in ordered.iter().enumerate() {
        for (newer, (newer_first_end, _)) in &ordered[index + 1..] {
            if older_last_start > newer_first_end {
                report.split_brain.push(SplitBrain {
                    older: (*older).clone(),
                    newer: (*newer).clone(),
                    window_ms: older_last_start - newer_first_end,
                });
            }
        }
    }
    let mut acknowledged_ends: Vec<f64> = records
        .iter()
        .filter(|record| record.acknowledged())
        .map(|record| record.end_ms)
        .collect();
    acknowledged_ends.sort_by(f64::total_cmp);
    for window in windows {
        report
            .unavailability_ms
            .push((window.kind.clone(), longest_gap(&acknowledged_ends, window)));
    }
    report
}

/// The longest time within `window` (from its start to the first acknowledgement after its
/// end) without an acknowledged write; `ends` sorted.
pub fn longest_gap(ends: &[f64], window: &Window) -> f64 {
    let mut previous = window.start_ms;
    let mut longest: f64 = 0.0;
    for end in ends.iter().copied().filter(|end| *end > window.start_ms) {
        longest = longest.max(end - previous);
        previous = end;
        if end > window.end_ms {
            return longest;
        }
    }
    longest.max(window.end_ms - previous)
}

/// The `q` quantile of `samples` (nearest rank); 0 for none.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(client: &str, op: Op, at: f64, outcome: Outcome, replicas: i64) -> Record {
        Record {
            client: client.to_owned(),
            op,
            start_ms: at,
            end_ms: at + 5.0,
            outcome,
            returned: None,
            replicas: (outcome == Outcome::Ok).then_some(replicas),
            master: Some("node-0:6379".to_owned()),
            replid: Some("term-1".to_owned()),
            error: None,
        }
    }

    fn set(key: &str, at: f64, replicas: i64) -> Record {
        record(
            "a-0",
            Op::Set {
                key: key.to_owned(),
                value: format!("v-{key}"),
            },
            at,
            Outcome::Ok,
            replicas,
        )
    }

    fn state_with(keys: &[&str]) -> FinalState {
        FinalState {
            values: keys
                .iter()
                .map(|key| ((*key).to_owned(), Some(format!("v-{key}"))))
                .collect(),
            ..FinalState::default()
        }
    }

    #[test]
    fn an_acknowledged_write_missing_at_the_end_is_lost_and_an_ok_only_one_is_counted_apart() {
        let records = vec![set("a", 0.0, 1), set("b", 10.0, 1), set("c", 20.0, 0)];
        let report = check(&records, &state_with(&["a"]), &[]);
        assert_eq!(report.acknowledged, 2);
        assert_eq!(report.ok_only, 1);
        assert_eq!(report.lost_acknowledged.len(), 1, "{report:?}");
        assert!(report.lost_acknowledged[0].contains("\"b\""));
        assert_eq!(report.lost_ok_only, 1);
        assert_eq!(report.problems().len(), 1);
        // Everything there: no problem.
        assert!(
            check(&records, &state_with(&["a", "b", "c"]), &[])
                .problems()
                .is_empty()
        );
    }

    #[test]
    fn a_run_without_any_acknowledged_write_fails() {
        let records = vec![
            set("a", 0.0, 0),
            record(
                "a-0",
                Op::Incr {
                    counter: "c".to_owned(),
                },
                1.0,
                Outcome::Unknown,
                0,
            ),
        ];
        let report = check(&records, &state_with(&["a"]), &[]);
        assert_eq!(report.problems(), vec!["no write was acknowledged at all"]);
        assert!(check(&[], &FinalState::default(), &[]).problems().len() == 1);
    }

    #[test]
    fn failed_and_unknown_writes_may_be_absent() {
        let records = vec![
            set("a", 0.0, 1),
            record(
                "a-0",
                Op::Set {
                    key: "b".to_owned(),
                    value: "v-b".to_owned(),
                },
                1.0,
                Outcome::Fail,
                0,
            ),
            record(
                "a-0",
                Op::Push {
                    list: "l".to_owned(),
                    value: "x".to_owned(),
                },
                2.0,
                Outcome::Unknown,
                0,
            ),
        ];
        let report = check(&records, &state_with(&["a"]), &[]);
        assert!(report.problems().is_empty(), "{report:?}");
        assert_eq!((report.failed, report.unknown), (1, 1));
    }

    #[test]
    fn pushed_values_must_be_in_their_list() {
        let push = |value: &str, at: f64| {
            record(
                "b-0",
                Op::Push {
                    list: "l".to_owned(),
                    value: value.to_owned(),
                },
                at,
                Outcome::Ok,
                1,
            )
        };
        let records = vec![push("x", 0.0), push("y", 1.0)];
        let mut state = FinalState::default();
        state.lists.insert("l".to_owned(), vec!["y".to_owned()]);
        let report = check(&records, &state, &[]);
        assert_eq!(report.lost_acknowledged.len(), 1);
        assert!(report.lost_acknowledged[0].contains("\"x\""));
    }

    fn incr(returned: i64, at: f64, outcome: Outcome, replicas: i64, replid: &str) -> Record {
        Record {
            returned: (outcome == Outcome::Ok).then_some(returned),
            replid: Some(replid.to_owned()),
            ..record(
                "c-0",
                Op::Incr {
                    counter: "n".to_owned(),
                },
                at,
                outcome,
                replicas,
            )
        }
    }

    fn counter(value: i64) -> FinalState {
        FinalState {
            counters: BTreeMap::from([("n".to_owned(), value)]),
            ..FinalState::default()
        }
    }

    #[test]
    fn a_counter_must_reach_every_acknowledged_increment_and_no_more_than_were_tried() {
        let records = vec![
            incr(1, 0.0, Outcome::Ok, 1, "t"),
            incr(2, 1.0, Outcome::Ok, 0, "t"),
            incr(3, 2.0, Outcome::Ok, 1, "t"),
            incr(0, 3.0, Outcome::Unknown, 0, "t"),
            incr(0, 4.0, Outcome::Fail, 0, "t"),
        ];
        assert!(check(&records, &counter(3), &[]).problems().is_empty());
        assert!(check(&records, &counter(4), &[]).problems().is_empty());
        // The acknowledged 3 was lost.
        let report = check(&records, &counter(2), &[]);
        assert_eq!(report.counter_violations.len(), 1, "{report:?}");
        // More than could have happened.
        assert_eq!(
            check(&records, &counter(5), &[]).counter_violations.len(),
            1
        );
    }

    #[test]
    fn two_acknowledged_increments_returning_one_value_are_two_masters() {
        let records = vec![
            incr(1, 0.0, Outcome::Ok, 1, "t-1"),
            incr(2, 10.0, Outcome::Ok, 1, "t-1"),
            incr(2, 12.0, Outcome::Ok, 1, "t-2"),
        ];
        let report = check(&records, &counter(3), &[]);
        assert!(
            report
                .counter_violations
                .iter()
                .any(|violation| violation.contains("two masters")),
            "{report:?}"
        );
    }

    fn on(replid: &str, record: Record) -> Record {
        Record {
            replid: Some(replid.to_owned()),
            ..record
        }
    }

    #[test]
    fn an_old_master_acknowledging_after_a_new_one_is_a_split_brain() {
        // t-1 acknowledges until 100; t-2 takes over at 50: t-1's write started at 100, after
        // t-2's first acknowledgement ended at 55.
        let records = vec![
            on("t-1", set("a", 0.0, 1)),
            on("t-2", set("b", 50.0, 1)),
            on("t-1", set("c", 100.0, 1)),
        ];
        let report = check(&records, &state_with(&["a", "b", "c"]), &[]);
        assert_eq!(report.split_brain.len(), 1, "{report:?}");
        assert_eq!(report.split_brain[0].older, "t-1");
        assert!((report.split_brain[0].window_ms - 45.0).abs() < 1e-9);
        // A failover and back to the same node is a third id: no split brain.
        let records = vec![
            on("t-1", set("a", 0.0, 1)),
            on("t-2", set("b", 50.0, 1)),
            on("t-3", set("c", 100.0, 1)),
        ];
        assert!(
            check(&records, &state_with(&["a", "b", "c"]), &[])
                .split_brain
                .is_empty()
        );
        // An old master's write that was under way while the new one took over is not one.
        let mut slow = on("t-1", set("c", 40.0, 1));
        slow.end_ms = 70.0;
        let records = vec![
            on("t-1", set("a", 0.0, 1)),
            on("t-2", set("b", 50.0, 1)),
            slow,
        ];
        assert!(
            check(&records, &state_with(&["a", "b", "c"]), &[])
                .split_brain
                .is_empty()
        );
    }

    #[test]
    fn ok_only_writes_an_old_master_took_after_the_failover_are_told_apart() {
        let records = vec![
            on("t-1", set("a", 0.0, 1)),
            on("t-1", set("early", 40.0, 0)),
            on("t-2", set("b", 50.0, 1)),
            on("t-1", set("late", 80.0, 0)),
        ];
        let report = check(&records, &state_with(&["a", "b"]), &[]);
        assert_eq!(report.lost_ok_only, 2);
        assert_eq!(report.lost_ok_only_after_failover, 1);
        // Review finding 1: an old master that still takes writes once a new one has
        // acknowledged is the max-lag bound outliving the failover; the run fails on it.
        let problems = report.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("after a newer master"), "{problems:?}");
    }

    #[test]
    fn unavailability_is_the_longest_time_without_an_acknowledgement_in_a_window() {
        let ends = [10.0, 20.0, 30.0, 400.0, 410.0, 900.0];
        let window = |start_ms, end_ms| Window {
            kind: "k".to_owned(),
            start_ms,
            end_ms,
        };
        // From the fault at 25: 30, then nothing until 400.
        assert!((longest_gap(&ends, &window(25.0, 405.0)) - 370.0).abs() < 1e-9);
        // Nothing acknowledged after the window's end: up to its end.
        assert!((longest_gap(&ends, &window(905.0, 1000.0)) - 95.0).abs() < 1e-9);
        // The first acknowledgement after the window closes it.
        assert!((longest_gap(&ends, &window(405.0, 500.0)) - 490.0).abs() < 1e-9);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
