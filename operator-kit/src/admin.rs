//! The admin server: `/healthz`, `/readyz` and `/metrics`.
//!
//! Metric names follow controller-runtime and client-go wherever one exists, so dashboards
//! and alerts written for Go operators work unchanged:
//! `controller_runtime_reconcile_total{controller,result}`,
//! `controller_runtime_reconcile_errors_total{controller}`,
//! `controller_runtime_reconcile_time_seconds{controller}` (histogram),
//! `controller_runtime_active_workers{controller}`,
//! `controller_runtime_max_concurrent_reconciles{controller}`,
//! `workqueue_depth{name}` and `leader_election_master_status{name}`. The runtime adds
//! `operator_kit_watch_failures_total{controller,resource}` and
//! `operator_kit_watch_restarts_total{controller,resource}` (see [`crate::watch`]).
//!
//! `/readyz` answers 503 with the reason until every controller's cache has synced, and while
//! a watch has kept failing for longer than [`WATCH_FAILURE_BOUND`].
//!
//! The server speaks just enough HTTP/1.1 for probes and Prometheus scrapes, which keeps a
//! web framework out of every operator's dependency tree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::client::RequestCounter;
use crate::watch::WatchName;

/// Upper bounds of the reconcile time histogram, controller-runtime's buckets.
const TIME_BUCKETS: [f64; 22] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9,
    1.0, 1.25, 1.5, 1.75, 2.0,
];

/// The result label of `controller_runtime_reconcile_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReconcileResult {
    /// The reconcile succeeded and asked for no requeue.
    Success,
    /// The reconcile failed.
    Error,
    /// The reconcile succeeded and asked to run again after a delay.
    RequeueAfter,
}

impl ReconcileResult {
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::RequeueAfter => "requeue_after",
        }
    }
}

/// Buckets of an operator's own histograms ([`Metrics::observe`]): seconds to minutes, for
/// things like failovers and rollouts.
const DURATION_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(&TIME_BUCKETS)
    }
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn record(&mut self, seconds: f64) {
        self.count += 1;
        self.sum += seconds;
        for (bucket, bound) in self.buckets.iter_mut().zip(self.bounds) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
    }

    /// The `_bucket`, `_sum` and `_count` lines of `name` for one label set (`{…}`).
    fn render(&self, text: &mut String, name: &str, labels: &str) {
        // The label set without its braces, to add `le` to it.
        let inner = labels.trim_start_matches('{').trim_end_matches('}');
        let separator = if inner.is_empty() { "" } else { "," };
        for (count, bound) in self.buckets.iter().zip(self.bounds) {
            let _ = writeln!(
                text,
                "{name}_bucket{{{inner}{separator}le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            text,
            "{name}_bucket{{{inner}{separator}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(text, "{name}_sum{labels} {}", self.sum);
        let _ = writeln!(text, "{name}_count{labels} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct ControllerMetrics {
    reconciles: BTreeMap<ReconcileResult, u64>,
    errors: u64,
    time: Histogram,
    active_workers: i64,
    max_concurrent: u64,
    queue_depth: i64,
}

/// A metric an operator defines itself (see [`Metrics::count`] and [`Metrics::observe`]).
#[derive(Debug)]
struct CustomFamily {
    help: String,
    /// Samples by their rendered label set.
    samples: BTreeMap<String, CustomSample>,
}

#[derive(Debug)]
enum CustomSample {
    Counter(u64),
    Histogram(Histogram),
}

/// Renders labels as `{a="x",b="y"}`, escaping values as the exposition format wants.
fn render_labels(labels: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(name, value)| {
            let value = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{name}=\"{value}\"")
        })
        .collect();
    format!("{{{}}}", pairs.join(","))
}

/// The operator's metrics; cheap to share, updated by the runtime.
#[derive(Debug, Default)]
pub struct Metrics {
    controllers: Mutex<BTreeMap<String, ControllerMetrics>>,
    custom: Mutex<BTreeMap<String, CustomFamily>>,
    leader: Mutex<Option<(String, bool)>>,
    requests: Mutex<Option<RequestCounter>>,
}

impl Metrics {
    fn with<T>(&self, controller: &str, update: impl FnOnce(&mut ControllerMetrics) -> T) -> T {
        let mut controllers = self
            .controllers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        update(controllers.entry(controller.to_owned()).or_default())
    }

    /// Registers a controller and its concurrency limit.
    pub fn register(&self, controller: &str, max_concurrent: u16) {
        self.with(controller, |metrics| {
            metrics.max_concurrent = u64::from(max_concurrent)
        });
    }

    /// Counts a reconcile start: one more active worker, one less queued object.
    pub fn reconcile_started(&self, controller: &str) {
        self.with(controller, |metrics| metrics.active_workers += 1);
    }

    /// Counts a finished reconcile with its outcome and duration.
    pub fn reconcile_finished(&self, controller: &str, result: ReconcileResult, elapsed: Duration) {
        self.with(controller, |metrics| {
            metrics.active_workers -= 1;
            *metrics.reconciles.entry(result).or_default() += 1;
            if result == ReconcileResult::Error {
                metrics.errors += 1;
            }
            metrics.time.record(elapsed.as_secs_f64());
        });
    }

    /// Sets the number of objects waiting for a retry after a failure.
    pub fn set_queue_depth(&self, controller: &str, depth: usize) {
        self.with(controller, |metrics| {
            metrics.queue_depth = i64::try_from(depth).unwrap_or(i64::MAX)
        });
    }

    /// Sets the leader election status of the named Lease.
    pub fn set_leader(&self, lease: &str, leading: bool) {
        *self
            .leader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((lease.to_owned(), leading));
    }

    /// Reports the requests counted by `counter` as `rest_client_requests_total{method}`.
    pub fn count_requests(&self, counter: RequestCounter) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(counter);
    }

    /// Whether this replica currently leads (`None` without leader election).
    pub fn is_leader(&self) -> Option<bool> {
        self.leader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|(_, leading)| *leading)
    }

    /// The count of finished reconciles of a controller with the given result.
    pub fn reconcile_count(&self, controller: &str, result: ReconcileResult) -> u64 {
        self.with(controller, |metrics| {
            metrics.reconciles.get(&result).copied().unwrap_or_default()
        })
    }

    fn with_custom(&self, name: &str, help: &str, update: impl FnOnce(&mut CustomFamily)) {
        let mut custom = self
            .custom
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let family = custom
            .entry(name.to_owned())
            .or_insert_with(|| CustomFamily {
                help: help.to_owned(),
                samples: BTreeMap::new(),
            });
        update(family);
    }

    /// Adds one to the operator's own counter `name` (a Prometheus counter; end the name in
    /// `_total`) for this label set.
    pub fn count(&self, name: &str, help: &str, labels: &[(&str, &str)]) {
        self.with_custom(name, help, |family| {
            let sample = family
                .samples
                .entry(render_labels(labels))
                .or_insert(CustomSample::Counter(0));
            if let CustomSample::Counter(count) = sample {
                *count += 1;
            }
        });
    }

    /// Records `seconds` in the operator's own histogram `name` for this label set (buckets
    /// from 0.1 s to 5 min).
    pub fn observe(&self, name: &str, help: &str, labels: &[(&str, &str)], seconds: f64) {
        self.with_custom(name, help, |family| {
            let sample = family
                .samples
                .entry(render_labels(labels))
                .or_insert_with(|| CustomSample::Histogram(Histogram::new(&DURATION_BUCKETS)));
            if let CustomSample::Histogram(histogram) = sample {
                histogram.record(seconds);
            }
        });
    }

    /// Removes the samples with exactly this label set from every metric the operator defined
    /// itself (for example the series of a deleted object, from
    /// [`Reconciler::deleted`](crate::Reconciler::deleted)).
    pub fn forget(&self, labels: &[(&str, &str)]) {
        let rendered = render_labels(labels);
        let mut custom = self
            .custom
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for family in custom.values_mut() {
            family.samples.remove(&rendered);
        }
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let controllers = self
            .controllers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut text = String::new();
        let mut family =
            |name: &str, kind: &str, help: &str, samples: &mut dyn FnMut(&mut String)| {
                let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
                samples(&mut text);
            };
        family(
            "controller_runtime_reconcile_total",
            "counter",
            "Total number of reconciliations per controller",
            &mut |text| {
                for (controller, metrics) in controllers.iter() {
                    for result in [
                        ReconcileResult::Success,
                        ReconcileResult::Error,
                        ReconcileResult::RequeueAfter,
                    ] {
                        let count = metrics.reconciles.get(&result).copied().unwrap_or_default();
                        let _ = writeln!(
                            text,
                            "controller_runtime_reconcile_total{{controller=\"{controller}\",result=\"{}\"}} {count}",
                            result.label()
                        );
                    }
                }
            },
        );
        let simple = [
            (
                "controller_runtime_reconcile_errors_total",
                "counter",
                "Total number of reconciliation errors per controller",
            ),
            (
                "controller_runtime_active_workers",
                "gauge",
                "Number of currently used workers per controller",
            ),
            (
                "controller_runtime_max_concurrent_reconciles",
                "gauge",
                "Maximum number of concurrent reconciles per controller",
            ),
            ("workqueue_depth", "gauge", "Current depth of workqueue"),
        ];
        for (name, kind, help) in simple {
            family(name, kind, help, &mut |text| {
                for (controller, metrics) in controllers.iter() {
                    let (label, value) = match name {
                        "controller_runtime_reconcile_errors_total" => {
                            ("controller", metrics.errors as i64)
                        }
                        "controller_runtime_active_workers" => {
                            ("controller", metrics.active_workers)
                        }
                        "controller_runtime_max_concurrent_reconciles" => {
                            ("controller", metrics.max_concurrent as i64)
                        }
                        _ => ("name", metrics.queue_depth),
                    };
                    let _ = writeln!(text, "{name}{{{label}=\"{controller}\"}} {value}");
                }
            });
        }
        family(
            "controller_runtime_reconcile_time_seconds",
            "histogram",
            "Length of time per reconciliation per controller",
            &mut |text| {
                for (controller, metrics) in controllers.iter() {
                    metrics.time.render(
                        text,
                        "controller_runtime_reconcile_time_seconds",
                        &render_labels(&[("controller", controller)]),
                    );
                }
            },
        );
        drop(controllers);
        let leader = self
            .leader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some((lease, leading)) = leader {
            let _ = writeln!(
                text,
                "# HELP leader_election_master_status Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master.\n# TYPE leader_election_master_status gauge\nleader_election_master_status{{name=\"{lease}\"}} {}",
                u8::from(leading)
            );
        }
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(requests) = requests {
            let _ = writeln!(
                text,
                "# HELP rest_client_requests_total Number of HTTP requests, partitioned by method.\n# TYPE rest_client_requests_total counter"
            );
            for (method, count) in requests.by_method() {
                let _ = writeln!(
                    text,
                    "rest_client_requests_total{{method=\"{method}\"}} {count}"
                );
            }
        }
        let custom = self
            .custom
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (name, family) in custom.iter() {
            let kind = match family.samples.values().next() {
                Some(CustomSample::Histogram(_)) => "histogram",
                _ => "counter",
            };
            let _ = writeln!(text, "# HELP {name} {}\n# TYPE {name} {kind}", family.help);
            for (labels, sample) in &family.samples {
                match sample {
                    CustomSample::Counter(count) => {
                        let _ = writeln!(text, "{name}{labels} {count}");
                    }
                    CustomSample::Histogram(histogram) => histogram.render(&mut text, name, labels),
                }
            }
        }
        text
    }
}

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
    /// Marks the caches of every controller as synced: `/readyz` answers 200 from now on,
    /// unless a watch keeps failing.
    pub fn set_ready(&self) {
        self.caches_synced.store(true, Ordering::Release);
    }

    /// Whether the operator is ready.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the operator is not ready: caches not synced yet, or a watch failing for longer than
    /// [`WATCH_FAILURE_BOUND`].
    pub fn not_ready_reason(&self) -> Option<String> {
        self.not_ready_reason_at(Instant::now())
    }

    fn not_ready_reason_at(&self, now: Instant) -> Option<String> {
        if !self.caches_synced.load(Ordering::Acquire) {
            return Some("caches not synced".to_owned());
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

/// Errors of the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The listening socket could not be bound.
    #[error("failed to bind the admin server to {address:?}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A bound admin server, ready to serve.
pub struct AdminServer {
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl AdminServer {
    /// Binds the admin server (port 0 picks a free port; see [`AdminServer::local_address`]).
    pub async fn bind(
        address: SocketAddr,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, AdminError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| AdminError::Bind { address, source })?;
        Ok(Self {
            listener,
            metrics,
            health,
        })
    }

    /// The address the server listens on.
    pub fn local_address(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` becomes true.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let metrics = self.metrics.clone();
                        let health = self.health.clone();
                        tokio::spawn(async move {
                            if let Err(error) = respond(stream, &metrics, &health).await {
                                debug!(%error, "admin connection failed");
                            }
                        });
                    }
                    Err(error) => warn!(%error, "failed to accept an admin connection"),
                },
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}

async fn respond(mut stream: TcpStream, metrics: &Metrics, health: &Health) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buffer = [0_u8; 1024];
    // Read the request head only; these endpoints take no body.
    while !request.windows(4).any(|window| window == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await??;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    let head = String::from_utf8_lossy(&request);
    let mut words = head.split_whitespace();
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = target.split('?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        ("GET", "/healthz" | "/livez") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/readyz") => match health.not_ready_reason() {
            None => ("200 OK", "text/plain", "ok\n".to_owned()),
            Some(reason) => (
                "503 Service Unavailable",
                "text/plain",
                format!("{reason}\n"),
            ),
        },
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_use_controller_runtime_names() {
        let metrics = Metrics::default();
        metrics.register("redis", 4);
        metrics.reconcile_started("redis");
        metrics.reconcile_finished("redis", ReconcileResult::Success, Duration::from_millis(30));
        metrics.reconcile_started("redis");
        metrics.reconcile_finished("redis", ReconcileResult::Error, Duration::from_secs(3));
        metrics.set_leader("redis-operator", true);
        let text = metrics.render();
        for line in [
            "controller_runtime_reconcile_total{controller=\"redis\",result=\"success\"} 1",
            "controller_runtime_reconcile_total{controller=\"redis\",result=\"error\"} 1",
            "controller_runtime_reconcile_errors_total{controller=\"redis\"} 1",
            "controller_runtime_active_workers{controller=\"redis\"} 0",
            "controller_runtime_max_concurrent_reconciles{controller=\"redis\"} 4",
            "controller_runtime_reconcile_time_seconds_bucket{controller=\"redis\",le=\"0.05\"} 1",
            "controller_runtime_reconcile_time_seconds_bucket{controller=\"redis\",le=\"+Inf\"} 2",
            "controller_runtime_reconcile_time_seconds_count{controller=\"redis\"} 2",
            "workqueue_depth{name=\"redis\"} 0",
            "leader_election_master_status{name=\"redis-operator\"} 1",
        ] {
            assert!(
                text.lines().any(|candidate| candidate == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn an_operator_adds_its_own_counters_and_histograms() {
        let metrics = Metrics::default();
        let labels = [("namespace", "shop"), ("name", "cache \"a\"")];
        metrics.count("redis_failovers_total", "Failovers seen", &labels);
        metrics.count("redis_failovers_total", "Failovers seen", &labels);
        metrics.observe(
            "redis_failover_duration_seconds",
            "Failover time",
            &labels,
            6.3,
        );
        let text = metrics.render();
        for line in [
            "# TYPE redis_failovers_total counter",
            "redis_failovers_total{namespace=\"shop\",name=\"cache \\\"a\\\"\"} 2",
            "# TYPE redis_failover_duration_seconds histogram",
            "redis_failover_duration_seconds_bucket{namespace=\"shop\",name=\"cache \\\"a\\\"\",le=\"5\"} 0",
            "redis_failover_duration_seconds_bucket{namespace=\"shop\",name=\"cache \\\"a\\\"\",le=\"10\"} 1",
            "redis_failover_duration_seconds_sum{namespace=\"shop\",name=\"cache \\\"a\\\"\"} 6.3",
        ] {
            assert!(
                text.lines().any(|candidate| candidate == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

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

    #[tokio::test]
    async fn serves_probes_and_metrics() {
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::default());
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), metrics, health.clone())
            .await
            .unwrap();
        let address = server.local_address().unwrap();
        let (stop, stopped) = watch::channel(false);
        let serving = tokio::spawn(server.serve(stopped));
        let get = |path: &'static str| async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        health.set_ready();
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(
            get("/metrics")
                .await
                .contains("# TYPE controller_runtime_reconcile_total counter")
        );
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        stop.send_replace(true);
        serving.await.unwrap();
    }
}
