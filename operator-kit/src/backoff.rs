//! Per-object exponential backoff for failed reconciles.
//!
//! kube-runtime's `error_policy` learns neither how often an object has failed nor when it
//! succeeds again. The runtime keeps that count per object here: the first retry comes fast,
//! each further failure doubles the delay up to a cap, and one success resets it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// How retry delays grow. The defaults retry after 250 ms, then 0.5 s, 1 s, … up to 5 minutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(300),
        }
    }
}

impl BackoffPolicy {
    /// The delay after the `failures`-th consecutive failure (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.initial
            .saturating_mul(1_u32 << doublings.min(31))
            .min(self.max)
    }
}

/// Consecutive failure counts, one per object key.
#[derive(Debug)]
pub struct FailureCounts<Key> {
    counts: Mutex<HashMap<Key, u32>>,
}

impl<Key> Default for FailureCounts<Key> {
    fn default() -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
        }
    }
}

impl<Key: Eq + Hash> FailureCounts<Key> {
    /// Records a failure of `key` and returns how many failures in a row it has now.
    pub fn record_failure(&self, key: Key) -> u32 {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// Forgets the failures of `key` after a success.
    pub fn record_success(&self, key: &Key) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.remove(key);
    }

    /// The number of objects that are currently failing.
    pub fn failing(&self) -> usize {
        self.counts
            .lock()
            .map(|counts| counts.len())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_initial_up_to_the_cap() {
        let policy = BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<_> = (1..=6)
            .map(|failures| policy.delay(failures).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn success_resets_the_count_of_that_object_only() {
        let counts = FailureCounts::default();
        assert_eq!(counts.record_failure("a"), 1);
        assert_eq!(counts.record_failure("a"), 2);
        assert_eq!(counts.record_failure("b"), 1);
        counts.record_success(&"a");
        assert_eq!(counts.failing(), 1);
        assert_eq!(counts.record_failure("a"), 1);
        assert_eq!(counts.record_failure("b"), 2);
    }
}
