//! [`Health`]: what `/readyz` answers. Not ready until every controller has listed its own
//! objects, and while a watch has kept failing for longer than [`WATCH_FAILURE_BOUND`]. The
//! watches of children start listing then, and reconciles wait for them (see
//! [`crate::controller`]): a replica that is ready knows what it is responsible for, in about a
//! second or two at 10,000 objects, rather than after all of their 60,000 children are listed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::watch::WatchName;

/// How long a watch may keep failing before `/readyz` reports the operator not ready: longer
/// than a routine API server restart, short enough for a Deployment's readiness to show it.
pub const WATCH_FAILURE_BOUND: Duration = Duration::from_secs(15);

/// How long past its scheduled retry a failed watch that reported nothing new still counts as
/// failing. A resumed watch delivers nothing until something changes, so silence after the
/// retry is taken as recovery.
const RETRY_GRACE: Duration = Duration::from_secs(10);

/// Errors of one watch this close together belong to one outage.
const OUTAGE_GAP: Duration = Duration::from_secs(60);

/// Health state shared between the runtime and the admin server.
#[derive(Debug, Default)]
pub struct Health {
    /// Whether every controller has listed its own objects.
    caches_synced: AtomicBool,
    failing_watches: Mutex<BTreeMap<WatchName, WatchFailure>>,
}

/// A watch's current run of failures.
#[derive(Debug)]
struct WatchFailure {
    since: Instant,
    retry_at: Instant,
    error: String,
}

impl Health {
    /// Marks every controller's own objects as listed: `/readyz` answers 200 from now on,
    /// unless a watch keeps failing.
    pub fn set_ready(&self) {
        self.caches_synced.store(true, Ordering::Release);
    }

    /// Whether the operator is ready.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the operator is not ready: its own objects not listed yet, or a watch failing for longer than
    /// [`WATCH_FAILURE_BOUND`].
    pub fn not_ready_reason(&self) -> Option<String> {
        self.not_ready_reason_at(Instant::now())
    }

    fn not_ready_reason_at(&self, now: Instant) -> Option<String> {
        if !self.caches_synced.load(Ordering::Acquire) {
            return Some("the controllers' own objects are not listed yet".to_owned());
        }
        let failing = self
            .failing_watches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failing.iter().find_map(|(name, failure)| {
            let still_failing = now < failure.retry_at + RETRY_GRACE;
            let failing_for = now.saturating_duration_since(failure.since);
            (still_failing && failing_for >= WATCH_FAILURE_BOUND).then(|| {
                format!(
                    "watch of {name} failing for {} s: {}",
                    failing_for.as_secs(),
                    failure.error
                )
            })
        })
    }

    /// Records a failure of a watch that retries at `retry_at`.
    pub(crate) fn watch_failed(&self, name: &WatchName, error: &str, retry_at: Instant) {
        self.watch_failed_at(name, error, Instant::now(), retry_at);
    }

    fn watch_failed_at(&self, name: &WatchName, error: &str, now: Instant, retry_at: Instant) {
        let mut failing = self
            .failing_watches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let since = failing
            .get(name)
            .filter(|previous| now < previous.retry_at + OUTAGE_GAP)
            .map_or(now, |previous| previous.since);
        failing.insert(
            name.clone(),
            WatchFailure {
                since,
                retry_at,
                error: error.to_owned(),
            },
        );
    }

    /// Records that a watch delivers events again.
    pub(crate) fn watch_recovered(&self, name: &WatchName) {
        self.failing_watches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_failing_longer_than_the_bound_makes_the_operator_unready() {
        let health = Health::default();
        health.set_ready();
        let name = WatchName {
            controller: "redis".to_owned(),
            resource: "redis.redis.operator-kit.io".to_owned(),
        };
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        // Failures every few seconds, as the backoff retries: ready until the bound passes.
        for (failed, retry) in [(0, 1), (1, 3), (3, 7), (7, 13), (13, 25)] {
            health.watch_failed_at(&name, "connection refused", at(failed), at(retry));
        }
        assert_eq!(health.not_ready_reason_at(at(14)), None);
        let reason = health.not_ready_reason_at(at(16)).unwrap();
        assert_eq!(
            reason,
            "watch of redis.redis.operator-kit.io (controller redis) failing for 16 s: connection refused"
        );
        // No new failure for a grace period after the retry: the resumed watch is taken as healthy.
        assert!(health.not_ready_reason_at(at(34)).is_some());
        assert_eq!(health.not_ready_reason_at(at(36)), None);
        // A failure long after the last one starts a new outage.
        health.watch_failed_at(&name, "connection refused", at(200), at(201));
        assert_eq!(health.not_ready_reason_at(at(201)), None);
        // Events again: recovered at once.
        health.watch_failed_at(&name, "connection refused", at(216), at(230));
        assert!(health.not_ready_reason_at(at(217)).is_some());
        health.watch_recovered(&name);
        assert_eq!(health.not_ready_reason_at(at(217)), None);
    }
}
