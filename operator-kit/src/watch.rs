//! Watches that recover on their own: after an API server restart, after an expired resource
//! version, after a dropped connection.
//!
//! kube-runtime's watcher lists with `resourceVersion=0` (served from the API server's watch
//! cache, cheap) and resumes watching from the version that list returned. When a watch falls
//! out of the API server's window (HTTP 410 "too old resource version") it lists again the same
//! way. After an API server restart the fresh watch cache can hand back a version that the
//! same server then calls too old, and the watcher loops for ever: list, watch, 410, list.
//! client-go's reflector answers a 410 with a consistent list (no `resourceVersion`: the
//! newest state, read through to etcd's revision), which is what [`recovering`] does: every
//! watch starts on the cheap list, and after an expiry it starts over from a consistent one.
//!
//! Each watch also reports its failures: `/readyz` turns not ready while one keeps failing
//! (see [`crate::health::Health`]), and `/metrics` counts failures and restarts
//! (`operator_kit_watch_failures_total`, `operator_kit_watch_restarts_total`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::hash::{BuildHasher, Hasher};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use tracing::{info, warn};

use crate::backoff::BackoffPolicy;
use crate::health::Health;
use crate::metrics::Metrics;

/// How a failing watch retries: fast at first, and never more than 5 s apart, so that a watch
/// is back within seconds of the API server (kube-runtime's default grows to 30 s and more with
/// its jitter, which after a 15 s outage meant a further half minute of blindness). A failed
/// attempt costs one request, so even the cap is cheap.
const RETRY: BackoffPolicy = BackoffPolicy {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(5),
};

/// Failures further apart than this start the backoff over.
const FRESH_START_AFTER: Duration = Duration::from_secs(60);

const FAILURES_TOTAL: &str = "operator_kit_watch_failures_total";
const FAILURES_HELP: &str = "Failed list or watch requests of a controller's watches";
const RESTARTS_TOTAL: &str = "operator_kit_watch_restarts_total";
const RESTARTS_HELP: &str =
    "Watches started over from a consistent list after their resource version expired";

/// Which watch: the controller it feeds and the resource it watches (`statefulsets.apps`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchName {
    /// The controller the watch feeds.
    pub controller: String,
    /// The watched resource, `plural.group` (`plural` for the core group).
    pub resource: String,
}

impl WatchName {
    /// The watch of `K` by the controller `controller`.
    pub fn of<K: kube::Resource<DynamicType = ()>>(controller: &str) -> Self {
        let group = K::group(&());
        let plural = K::plural(&());
        Self {
            controller: controller.to_owned(),
            resource: if group.is_empty() {
                plural.into_owned()
            } else {
                format!("{plural}.{group}")
            },
        }
    }
}

impl std::fmt::Display for WatchName {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{} (controller {})",
            self.resource, self.controller
        )
    }
}

/// Whether `error` says the watch's resource version is gone from the API server (HTTP 410),
/// so that resuming cannot work and only a fresh list can.
pub fn is_expired(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// A watch stream that never ends and never yields an error: it starts as `start` builds it
/// with the cheap `resourceVersion=0` list, retries failures after 0.5 s doubling to 5 s (with
/// jitter, so that many watches do not return in step), and after an expiry starts over with a
/// consistent list. Failures are logged, counted and reported to `health`.
pub fn recovering<T, S>(
    name: WatchName,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    start: impl Fn(watcher::Config) -> S + Send + 'static,
) -> impl Stream<Item = Result<watcher::Event<T>, watcher::Error>> + Send
where
    T: Send + 'static,
    S: Stream<Item = Result<watcher::Event<T>, watcher::Error>> + Send + 'static,
{
    let inner = start(watcher::Config::default().any_semantic()).boxed();
    let state = Recovering {
        inner,
        start: Box::new(move |config| start(config).boxed()),
        failures: 0,
        last_failure: None,
        failing: false,
        expired_last: false,
        name,
        health,
        metrics,
        listing: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        let event = state.next_event().await?;
        Some((Ok(event), state))
    })
}

/// Builds a fresh watch stream from a configuration.
type Start<T> = Box<
    dyn Fn(watcher::Config) -> BoxStream<'static, Result<watcher::Event<T>, watcher::Error>> + Send,
>;

struct Recovering<T> {
    inner: BoxStream<'static, Result<watcher::Event<T>, watcher::Error>>,
    start: Start<T>,
    /// Failures in a row (for the retry delay).
    failures: u32,
    last_failure: Option<Instant>,
    /// Whether the last item was an error (the watch has not delivered anything since).
    failing: bool,
    /// Whether the last failure was an expiry.
    expired_last: bool,
    name: WatchName,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// A list in progress: when it started and how many objects it has delivered.
    listing: Option<(Instant, usize)>,
}

impl<T> Recovering<T> {
    async fn next_event(&mut self) -> Option<watcher::Event<T>> {
        loop {
            match self.inner.next().await? {
                Ok(event) => {
                    // `Init` only announces a list about to be made; anything else is an
                    // answer from the API server.
                    if self.failing && !matches!(event, watcher::Event::Init) {
                        self.failing = false;
                        self.expired_last = false;
                        self.failures = 0;
                        self.health.watch_recovered(&self.name);
                        info!(watch = %self.name, "watch recovered");
                    }
                    self.note_listing(&event);
                    return Some(event);
                }
                Err(error) => self.failed(&error).await,
            }
        }
    }

    /// Logs each list once it is in: how many objects, and how long it took (a start on many
    /// objects shows where its time went).
    fn note_listing(&mut self, event: &watcher::Event<T>) {
        match event {
            watcher::Event::Init => self.listing = Some((Instant::now(), 0)),
            watcher::Event::InitApply(_) => {
                if let Some((_, objects)) = &mut self.listing {
                    *objects += 1;
                }
            }
            watcher::Event::InitDone => {
                if let Some((started, objects)) = self.listing.take() {
                    info!(watch = %self.name, objects, took = ?started.elapsed(), "listed");
                }
            }
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {}
        }
    }

    async fn failed(&mut self, error: &watcher::Error) {
        let labels = [
            ("controller", self.name.controller.as_str()),
            ("resource", self.name.resource.as_str()),
        ];
        self.metrics.count(FAILURES_TOTAL, FAILURES_HELP, &labels);
        let expired = is_expired(error);
        let now = Instant::now();
        if self
            .last_failure
            .is_some_and(|last| now.duration_since(last) > FRESH_START_AFTER)
        {
            self.failures = 0;
        }
        self.last_failure = Some(now);
        // An expiry is answered at once with a consistent list, as client-go does (a second
        // one in a row waits, in case the API server keeps saying so); anything else waits.
        let delay = if expired && !self.expired_last {
            Duration::ZERO
        } else {
            self.failures = self.failures.saturating_add(1);
            jittered(RETRY.delay(self.failures))
        };
        self.failing = true;
        self.expired_last = expired;
        self.health
            .watch_failed(&self.name, &error.to_string(), Instant::now() + delay);
        if expired {
            self.metrics.count(RESTARTS_TOTAL, RESTARTS_HELP, &labels);
            warn!(watch = %self.name, %error, "watch expired; starting over from a consistent list");
            self.inner = (self.start)(watcher::Config::default());
        } else {
            warn!(watch = %self.name, %error, retry_in = ?delay, "watch failed");
        }
        tokio::time::sleep(delay).await;
    }
}

/// `delay` spread over ±25 %, from the standard library's randomly seeded hasher.
fn jittered(delay: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let fraction = (random % 1_000) as f64 / 1_000.0;
    delay.mul_f64(0.75 + fraction / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Secret;
    use kube::core::Status;

    fn status(code: u16) -> Status {
        Status::failure("too old resource version: 1 (2)", "Expired").with_code(code)
    }

    #[test]
    fn only_a_gone_resource_version_is_an_expiry() {
        assert!(is_expired(&watcher::Error::WatchError(Box::new(status(
            410
        )))));
        assert!(is_expired(&watcher::Error::WatchStartFailed(
            kube::Error::Api(Box::new(status(410)))
        )));
        assert!(!is_expired(&watcher::Error::WatchError(Box::new(status(
            500
        )))));
        assert!(!is_expired(&watcher::Error::InitialListFailed(
            kube::Error::Api(Box::new(status(403)))
        )));
        assert!(!is_expired(&watcher::Error::NoResourceVersion));
    }

    #[test]
    fn retries_stay_within_a_quarter_of_the_policy() {
        for failures in 1..10 {
            let delay = jittered(RETRY.delay(failures));
            assert!(delay >= RETRY.delay(failures).mul_f64(0.75), "{delay:?}");
            assert!(delay <= RETRY.delay(failures).mul_f64(1.25), "{delay:?}");
        }
        assert_eq!(RETRY.delay(20), Duration::from_secs(5));
    }

    #[test]
    fn watch_names_say_plural_and_group() {
        assert_eq!(
            WatchName::of::<StatefulSet>("redis").resource,
            "statefulsets.apps"
        );
        assert_eq!(WatchName::of::<Secret>("redis").resource, "secrets");
        assert_eq!(
            WatchName::of::<Secret>("redis").to_string(),
            "secrets (controller redis)"
        );
    }
}
