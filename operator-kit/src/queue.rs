//! [`WorkQueue`]: which objects wait for a worker, for `workqueue_depth`.
//!
//! kube-runtime keeps its queue to itself, so the runtime tracks the same thing from outside:
//! an object is queued when a watch event, a data-plane trigger or a leader takeover names it,
//! or when its retry after a failure falls due; it leaves the queue when a worker starts on it,
//! or when it is deleted. That is controller-runtime's `workqueue_depth`: items ready to be
//! processed, not the ones waiting out a delay. One gap remains: a requeue a reconciler asks for
//! with [`Action::requeue`](kube::runtime::controller::Action::requeue) is not seen when it falls
//! due (kube-runtime does not tell its delay), so it is not counted while it waits for a worker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// The objects of one controller that wait for a worker, by `namespace/name`, with the time
/// from which each is due.
#[derive(Debug, Default)]
pub struct WorkQueue {
    waiting: Mutex<HashMap<String, Instant>>,
}

/// The queue key of an object.
pub fn key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_owned(),
    }
}

impl WorkQueue {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The object is due for a reconcile from `at` on (now, for a change; later, for a retry).
    /// An object queues once, at the earliest time it was asked for, as in kube-runtime.
    pub fn add(&self, key: String, at: Instant) {
        self.waiting()
            .entry(key)
            .and_modify(|due| *due = (*due).min(at))
            .or_insert(at);
    }

    /// A worker started on the object, or it is gone: it no longer waits.
    pub fn remove(&self, key: &str) {
        self.waiting().remove(key);
    }

    /// How many objects are due at `now` and wait for a worker.
    pub fn depth(&self, now: Instant) -> usize {
        self.waiting().values().filter(|due| **due <= now).count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_depth_counts_objects_due_and_not_yet_started() {
        let queue = WorkQueue::default();
        let now = Instant::now();
        queue.add(key(Some("shop"), "a"), now);
        queue.add(key(Some("shop"), "a"), now);
        queue.add(key(Some("shop"), "b"), now + Duration::from_secs(10));
        queue.add(key(None, "c"), now);
        assert_eq!(queue.depth(now), 2);
        // A retry falls due.
        assert_eq!(queue.depth(now + Duration::from_secs(10)), 3);
        // A change before the retry makes it due now.
        queue.add(key(Some("shop"), "b"), now);
        assert_eq!(queue.depth(now), 3);
        queue.remove("shop/a");
        queue.remove("c");
        assert_eq!(queue.depth(now), 1);
    }
}
