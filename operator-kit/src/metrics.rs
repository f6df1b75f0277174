//! The operator's metrics, on `prometheus-client`, served on `/metrics` by
//! [`crate::admin::AdminServer`].
//!
//! Metric names follow controller-runtime and client-go wherever one exists, so dashboards
//! and alerts written for Go operators work unchanged:
//! `controller_runtime_reconcile_total{controller,result}`,
//! `controller_runtime_reconcile_errors_total{controller}`,
//! `controller_runtime_reconcile_time_seconds{controller}` (histogram),
//! `controller_runtime_active_workers{controller}`,
//! `controller_runtime_max_concurrent_reconciles{controller}`,
//! `workqueue_depth{name}` (objects waiting for a worker; see [`crate::queue`]),
//! `rest_client_requests_total{method}` and `leader_election_master_status{name}`; of those
//! requests, `operator_kit_port_forward_requests_total` opened a port-forward to a pod. The runtime
//! adds `operator_kit_watch_failures_total{controller,resource}` and
//! `operator_kit_watch_restarts_total{controller,resource}` (see [`crate::watch`]), and an
//! operator its own counters and histograms ([`Metrics::count`], [`Metrics::observe`]).
//!
//! [`Metrics::render`] writes the Prometheus text format (what controller-runtime serves);
//! [`Metrics::render_openmetrics`] writes OpenMetrics, for scrapers that ask for it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::client::RequestCounter;
use crate::queue::WorkQueue;

/// Upper bounds of the reconcile time histogram, controller-runtime's buckets.
const TIME_BUCKETS: [f64; 22] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9,
    1.0, 1.25, 1.5, 1.75, 2.0,
];

/// Buckets of an operator's own histograms ([`Metrics::observe`]): seconds to minutes, for
/// things like failovers and rollouts.
const DURATION_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
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
    const ALL: [Self; 3] = [Self::Success, Self::Error, Self::RequeueAfter];

    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::RequeueAfter => "requeue_after",
        }
    }
}

/// One label: `controller="redis"`, `name="redis-operator"`.
type OneLabel = [(&'static str, String); 1];
/// `controller` and `result`.
type ResultLabels = [(&'static str, String); 2];
/// The labels of an operator's own metric, in the order it gave them.
type OwnLabels = Vec<(String, String)>;
/// A histogram family with its buckets.
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn controller_label(controller: &str) -> OneLabel {
    [("controller", controller.to_owned())]
}

fn time_histogram() -> Histogram {
    Histogram::new(TIME_BUCKETS)
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Takes a lock, also after a panic elsewhere: metrics are counters, never left half-written.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The operator's metrics; cheap to share, updated by the runtime.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    errors: Family<OneLabel, Counter>,
    time: HistogramFamily<OneLabel>,
    active_workers: Family<OneLabel, Gauge>,
    max_concurrent: Family<OneLabel, Gauge>,
    leader: Family<OneLabel, Gauge>,
    /// The leader election status, for [`Metrics::is_leader`].
    leading: Mutex<Option<bool>>,
    scraped: Arc<Scraped>,
}

/// What is read when `/metrics` is scraped rather than counted as it happens.
#[derive(Debug, Default)]
struct Scraped {
    requests: Mutex<Option<RequestCounter>>,
    queues: Mutex<BTreeMap<String, Arc<WorkQueue>>>,
    own: Mutex<BTreeMap<String, OwnFamily>>,
}

/// A metric an operator defines itself (see [`Metrics::count`] and [`Metrics::observe`]).
#[derive(Debug)]
enum OwnFamily {
    Counter {
        help: String,
        samples: Family<OwnLabels, Counter>,
    },
    Histogram {
        help: String,
        samples: HistogramFamily<OwnLabels>,
    },
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabels, Counter>::default();
        let errors = Family::<OneLabel, Counter>::default();
        let time = HistogramFamily::<OneLabel>::new_with_constructor(time_histogram);
        let active_workers = Family::<OneLabel, Gauge>::default();
        let max_concurrent = Family::<OneLabel, Gauge>::default();
        let leader = Family::<OneLabel, Gauge>::default();
        let scraped = Arc::new(Scraped::default());
        // Counters are registered without `_total`: the encoders add it.
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            reconciles.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            time.clone(),
        );
        registry.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            active_workers.clone(),
        );
        registry.register(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            max_concurrent.clone(),
        );
        registry.register(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates \
             backup, 1 indicates master.",
            leader.clone(),
        );
        registry.register_collector(Box::new(scraped.clone()));
        Self {
            registry,
            reconciles,
            errors,
            time,
            active_workers,
            max_concurrent,
            leader,
            leading: Mutex::new(None),
            scraped,
        }
    }
}

impl Metrics {
    /// Registers a controller and its concurrency limit; its series show from now on, at 0.
    pub fn register(&self, controller: &str, max_concurrent: u16) {
        let label = controller_label(controller);
        self.max_concurrent
            .get_or_create(&label)
            .set(i64::from(max_concurrent));
        // Created at 0, so that a dashboard's rate() has a start.
        self.active_workers.get_or_create(&label).inc_by(0);
        self.errors.get_or_create(&label).inc_by(0);
        for result in ReconcileResult::ALL {
            self.reconciles
                .get_or_create(&[
                    ("controller", controller.to_owned()),
                    ("result", result.label().to_owned()),
                ])
                .inc_by(0);
        }
    }

    /// Reports `queue` as the controller's `workqueue_depth`.
    pub(crate) fn register_queue(&self, controller: &str, queue: Arc<WorkQueue>) {
        lock(&self.scraped.queues).insert(controller.to_owned(), queue);
    }

    /// Counts a reconcile start: one more active worker.
    pub fn reconcile_started(&self, controller: &str) {
        self.active_workers
            .get_or_create(&controller_label(controller))
            .inc();
    }

    /// Counts a finished reconcile with its outcome and duration.
    pub fn reconcile_finished(&self, controller: &str, result: ReconcileResult, elapsed: Duration) {
        let label = controller_label(controller);
        self.active_workers.get_or_create(&label).dec();
        self.reconciles
            .get_or_create(&[
                ("controller", controller.to_owned()),
                ("result", result.label().to_owned()),
            ])
            .inc();
        if result == ReconcileResult::Error {
            self.errors.get_or_create(&label).inc();
        }
        self.time
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the leader election status of the named Lease.
    pub fn set_leader(&self, lease: &str, leading: bool) {
        self.leader
            .get_or_create(&[("name", lease.to_owned())])
            .set(i64::from(leading));
        *lock(&self.leading) = Some(leading);
    }

    /// Reports the requests counted by `counter` as `rest_client_requests_total{method}`.
    pub fn count_requests(&self, counter: RequestCounter) {
        *lock(&self.scraped.requests) = Some(counter);
    }

    /// Whether this replica currently leads (`None` without leader election).
    pub fn is_leader(&self) -> Option<bool> {
        *lock(&self.leading)
    }

    /// The count of finished reconciles of a controller with the given result.
    pub fn reconcile_count(&self, controller: &str, result: ReconcileResult) -> u64 {
        self.reconciles
            .get(&[
                ("controller", controller.to_owned()),
                ("result", result.label().to_owned()),
            ])
            .map_or(0, |counter| counter.get())
    }

    /// Adds one to the operator's own counter `name` (a Prometheus counter; end the name in
    /// `_total`) for this label set.
    pub fn count(&self, name: &str, help: &str, labels: &[(&str, &str)]) {
        let family_name = name.strip_suffix("_total").unwrap_or(name);
        let mut own = lock(&self.scraped.own);
        let family = own
            .entry(family_name.to_owned())
            .or_insert_with(|| OwnFamily::Counter {
                help: help.to_owned(),
                samples: Family::default(),
            });
        if let OwnFamily::Counter { samples, .. } = family {
            samples.get_or_create(&own_labels(labels)).inc();
        }
    }

    /// Records `seconds` in the operator's own histogram `name` for this label set (buckets
    /// from 0.1 s to 5 min).
    pub fn observe(&self, name: &str, help: &str, labels: &[(&str, &str)], seconds: f64) {
        let mut own = lock(&self.scraped.own);
        let family = own
            .entry(name.to_owned())
            .or_insert_with(|| OwnFamily::Histogram {
                help: help.to_owned(),
                samples: HistogramFamily::new_with_constructor(duration_histogram),
            });
        if let OwnFamily::Histogram { samples, .. } = family {
            samples.get_or_create(&own_labels(labels)).observe(seconds);
        }
    }

    /// Removes the samples with exactly this label set from every metric the operator defined
    /// itself (for example the series of a deleted object, from
    /// [`Reconciler::deleted`](crate::Reconciler::deleted)).
    pub fn forget(&self, labels: &[(&str, &str)]) {
        let labels = own_labels(labels);
        for family in lock(&self.scraped.own).values() {
            match family {
                OwnFamily::Counter { samples, .. } => samples.remove(&labels),
                OwnFamily::Histogram { samples, .. } => samples.remove(&labels),
            };
        }
    }

    /// The metrics in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would leave a partial page, which
        // a scraper rejects as a whole.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render_openmetrics(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn own_labels(labels: &[(&str, &str)]) -> OwnLabels {
    labels
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(requests) = lock(&self.requests).clone() {
            let mut family = encoder.encode_descriptor(
                "rest_client_requests",
                "Number of HTTP requests, partitioned by method.",
                None,
                MetricType::Counter,
            )?;
            for (method, count) in requests.by_method() {
                let count = u64::try_from(count).unwrap_or(u64::MAX);
                ConstCounter::new(count).encode(family.encode_family(&[("method", method)])?)?;
            }
            let port_forwards = u64::try_from(requests.port_forwards()).unwrap_or(u64::MAX);
            ConstCounter::new(port_forwards).encode(encoder.encode_descriptor(
                "operator_kit_port_forward_requests",
                "Requests that opened a port-forward to a pod (also counted in \
                 rest_client_requests_total).",
                None,
                MetricType::Counter,
            )?)?;
        }
        let queues = lock(&self.queues);
        if !queues.is_empty() {
            let mut family = encoder.encode_descriptor(
                "workqueue_depth",
                "Current depth of workqueue",
                None,
                MetricType::Gauge,
            )?;
            let now = Instant::now();
            for (controller, queue) in queues.iter() {
                let depth = i64::try_from(queue.depth(now)).unwrap_or(i64::MAX);
                ConstGauge::new(depth).encode(family.encode_family(&[("name", controller)])?)?;
            }
        }
        drop(queues);
        for (name, family) in lock(&self.own).iter() {
            match family {
                OwnFamily::Counter { help, samples } => {
                    samples.encode(encoder.encode_descriptor(
                        name,
                        help,
                        None,
                        MetricType::Counter,
                    )?)?;
                }
                OwnFamily::Histogram { help, samples } => {
                    samples.encode(encoder.encode_descriptor(
                        name,
                        help,
                        None,
                        MetricType::Histogram,
                    )?)?;
                }
            }
        }
        Ok(())
    }
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
        metrics.register_queue("redis", Arc::default());
        let text = metrics.render();
        for line in [
            "# TYPE controller_runtime_reconcile_total counter",
            "controller_runtime_reconcile_total{controller=\"redis\",result=\"success\"} 1",
            "controller_runtime_reconcile_total{controller=\"redis\",result=\"error\"} 1",
            "controller_runtime_reconcile_total{controller=\"redis\",result=\"requeue_after\"} 0",
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
        assert_eq!(metrics.reconcile_count("redis", ReconcileResult::Error), 1);
        assert_eq!(metrics.is_leader(), Some(true));
        assert!(metrics.render_openmetrics().contains(
            "\ncontroller_runtime_reconcile_total{controller=\"redis\",result=\"success\"} 1\n"
        ));
    }

    #[test]
    fn an_operator_adds_its_own_counters_and_histograms_and_forgets_them() {
        let metrics = Metrics::default();
        let labels = [("namespace", "shop"), ("name", "cache \"a\"")];
        let other = [("namespace", "shop"), ("name", "b")];
        metrics.count("redis_failovers_total", "Failovers seen", &labels);
        metrics.count("redis_failovers_total", "Failovers seen", &labels);
        metrics.count("redis_failovers_total", "Failovers seen", &other);
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
            "redis_failovers_total{namespace=\"shop\",name=\"b\"} 1",
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
        metrics.forget(&labels);
        let text = metrics.render();
        assert!(!text.contains("cache"), "{text}");
        assert!(
            text.lines()
                .any(|line| line == "redis_failovers_total{namespace=\"shop\",name=\"b\"} 1"),
            "{text}"
        );
    }
}
