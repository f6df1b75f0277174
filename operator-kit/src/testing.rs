//! A test harness for operators, run against a real API server.
//!
//! Enabled by the `testing` feature. Every test gets its own namespace on a shared cluster, so
//! tests run in parallel without seeing each other's objects. The cluster is the one named by
//! `KUBECONFIG` (kind, a real cluster) or, when that is unset, the local cluster that the
//! repository's `hack/cluster.sh up` starts (its `.cluster/admin.kubeconfig`, found from the
//! current directory upwards, or `$OPERATOR_KIT_CLUSTER_DIR/admin.kubeconfig`).
//!
//! ```no_run
//! # async fn example() -> Result<(), operator_kit::testing::HarnessError> {
//! use std::time::Duration;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use operator_kit::testing::TestNamespace;
//!
//! let namespace = TestNamespace::create("configmap-roundtrip").await?;
//! let config_maps = namespace.api::<ConfigMap>();
//! // ... create objects, run the controller under test ...
//! let ready = namespace
//!     .wait_for(&config_maps, "settings", "has data", Duration::from_secs(30), |map: &ConfigMap| {
//!         map.data.is_some()
//!     })
//!     .await?;
//! namespace.delete().await?;
//! # Ok(()) }
//! ```
//!
//! A failed wait returns an error whose message holds the object's last status and the latest
//! events of the namespace, which is usually all one needs to see why a test failed.

pub mod proxy;
pub mod tools;

pub use proxy::StallingProxy;

use std::collections::BTreeMap;
use std::env;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::{Client, Config, Resource, ResourceExt};

use crate::OperatorArgs;
pub use crate::client::RequestCounter;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::operator::{Operator, OperatorError, ShutdownHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The field manager the harness uses for the objects it applies.
pub const FIELD_MANAGER: &str = "operator-kit-testing";
/// The label that marks namespaces created by the harness, so leftovers of killed test runs
/// can be found with `kubectl get namespaces -l operator-kit.io/test-namespace`.
pub const TEST_NAMESPACE_LABEL: &str = "operator-kit.io/test-namespace";
/// Set this environment variable to keep the namespaces of tests, to inspect them afterwards.
pub const KEEP_NAMESPACES_VARIABLE: &str = "OPERATOR_KIT_KEEP_NAMESPACES";

/// Errors of the test harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// No cluster could be found or its kubeconfig could not be loaded.
    #[error("failed to load the kubeconfig {path:?}: {source}")]
    Kubeconfig {
        /// The kubeconfig file that was tried.
        path: PathBuf,
        /// Why it could not be used.
        source: kube::config::KubeconfigError,
    },
    /// Neither `KUBECONFIG` nor a local cluster nor an in-cluster configuration was found.
    #[error("failed to find a cluster: set KUBECONFIG or run `hack/cluster.sh up` ({source})")]
    NoCluster {
        /// Why the in-cluster or default configuration failed too.
        source: kube::config::InferConfigError,
    },
    /// The client could not be built from the configuration.
    #[error("failed to create a client: {0}")]
    Client(#[source] kube::Error),
    /// A request to the API server failed.
    #[error("failed to {action}: {}", crate::api_error::describe(.source))]
    Api {
        /// What the harness was doing.
        action: String,
        /// The API error.
        source: kube::Error,
    },
    /// Watching an object failed (unknown kind, or no permission to watch it).
    #[error("failed to watch while waiting for {what}: {source}")]
    Watch {
        /// The object and the condition waited for.
        what: String,
        /// The watch error.
        source: kube::runtime::wait::Error,
    },
    /// An operator started by the harness failed or panicked.
    #[error("the operator under test failed: {0}")]
    Operator(String),
    /// A command-line tool (helm, kubectl, an operator binary) failed.
    #[error("failed to run {command:?}: {detail}")]
    Tool {
        /// The command line.
        command: String,
        /// Its exit status and output, or why it could not run.
        detail: String,
    },
    /// A wait ran out of time; the message shows the last state seen.
    #[error("timed out after {timeout:?} waiting for {what}\n{diagnostics}")]
    Timeout {
        /// The object and the condition waited for.
        what: String,
        /// How long the harness waited.
        timeout: Duration,
        /// The object's last status and the recent events of its namespace.
        diagnostics: String,
    },
}

/// Where the harness looks for a kubeconfig when `KUBECONFIG` is not set.
fn local_cluster_kubeconfig() -> Option<PathBuf> {
    if let Some(dir) = env::var_os("OPERATOR_KIT_CLUSTER_DIR") {
        return Some(Path::new(&dir).join("admin.kubeconfig"));
    }
    let start = env::current_dir().ok()?;
    start
        .ancestors()
        .map(|dir| dir.join(".cluster").join("admin.kubeconfig"))
        .find(|path| path.is_file())
}

/// Loads the client configuration of the test cluster: `KUBECONFIG` first, then the local
/// cluster of `hack/cluster.sh`, then the in-cluster configuration.
pub async fn config() -> Result<Config, HarnessError> {
    if env::var_os("KUBECONFIG").is_none()
        && let Some(path) = local_cluster_kubeconfig()
    {
        let kubeconfig =
            Kubeconfig::read_from(&path).map_err(|source| HarnessError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
        return Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| HarnessError::Kubeconfig { path, source });
    }
    Config::infer()
        .await
        .map_err(|source| HarnessError::NoCluster { source })
}

/// A client for the test cluster (see [`config`]).
pub async fn client() -> Result<Client, HarnessError> {
    Client::try_from(config().await?).map_err(HarnessError::Client)
}

/// Applies a CustomResourceDefinition with server-side apply and waits until the API server
/// reports it `Established`, so that objects of its kind can be created right away.
pub async fn install_crd(
    client: &Client,
    crd: &CustomResourceDefinition,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let name = crd.name_any();
    let mut crd = crd.clone();
    crd.metadata.managed_fields = None;
    crd.metadata.resource_version = None;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|source| HarnessError::Api {
        action: format!("apply CustomResourceDefinition {name:?}"),
        source,
    })?;
    wait_for(
        &api,
        &name,
        "Established",
        timeout,
        conditions::is_crd_established(),
    )
    .await
    .map(drop)
}

/// Waits until the named object satisfies `condition`, for at most `timeout`, and returns the
/// object (`None` when the condition was met by its absence).
///
/// On timeout the error shows the object's last `status` (or that it does not exist) and the
/// latest events of its namespace.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    description: &str,
    timeout: Duration,
    condition: impl Condition<K>,
) -> Result<Option<K>, HarnessError>
where
    K: Resource + Clone + Debug + DeserializeOwned + Serialize + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let what = format!("{kind} {name:?} to be {description}");
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, condition)).await {
        Ok(Ok(object)) => Ok(object),
        Ok(Err(source)) => Err(HarnessError::Watch { what, source }),
        Err(_elapsed) => {
            let last = api.get_opt(name).await.ok().flatten();
            let namespace = last.as_ref().and_then(|object| object.namespace());
            let diagnostics = describe(last.as_ref(), api, namespace.as_deref()).await;
            Err(HarnessError::Timeout {
                what,
                timeout,
                diagnostics,
            })
        }
    }
}

/// The last status of an object and the latest events of its namespace, for error messages.
async fn describe<K>(object: Option<&K>, api: &Api<K>, namespace: Option<&str>) -> String
where
    K: Resource + Clone + Serialize,
{
    let status = match object {
        None => "object: does not exist".to_owned(),
        Some(object) => {
            let value = serde_json::to_value(object).unwrap_or_default();
            let status = value
                .get("status")
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            // What holds an object back from deletion: its finalizers, its owners (the garbage
            // collector's view) and whether a deletion has begun.
            let meta = object.meta();
            format!(
                "last status: {}\ndeletionTimestamp: {:?}\nfinalizers: {:?}\nownerReferences: {}",
                serde_json::to_string_pretty(&status).unwrap_or_default(),
                meta.deletion_timestamp
                    .as_ref()
                    .map(|time| time.0.to_string()),
                meta.finalizers.as_deref().unwrap_or_default(),
                serde_json::to_string(&meta.owner_references).unwrap_or_default(),
            )
        }
    };
    let events = match namespace {
        Some(namespace) => recent_events(&api.clone().into_client(), namespace, 15).await,
        None => String::new(),
    };
    format!("{status}\n{events}")
}

/// The latest `limit` events of a namespace, oldest first, one line each.
pub async fn recent_events(client: &Client, namespace: &str, limit: usize) -> String {
    let api = Api::<Event>::namespaced(client.clone(), namespace);
    let mut events = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(error) => return format!("events: failed to list: {error}"),
    };
    events.sort_by_key(|event| {
        event
            .last_timestamp
            .as_ref()
            .map(|time| time.0)
            .or_else(|| event.event_time.as_ref().map(|time| time.0))
            .or_else(|| {
                event
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|time| time.0)
            })
    });
    let skip = events.len().saturating_sub(limit);
    let mut text = format!("latest events in namespace {namespace:?}:\n");
    if events.is_empty() {
        text.push_str("  (none)\n");
    }
    for event in events.into_iter().skip(skip) {
        let object = &event.involved_object;
        text.push_str(&format!(
            "  {} {} {}/{}: {}\n",
            event.type_.unwrap_or_default(),
            event.reason.unwrap_or_default(),
            object.kind.as_deref().unwrap_or_default(),
            object.name.as_deref().unwrap_or_default(),
            event.message.unwrap_or_default().trim_end(),
        ));
    }
    text
}

/// Waits until `count` (a metric, such as a reconcile count) stops moving: the same value on
/// two reads `interval` apart. Returns that value. For "the reconciles a write caused have
/// ended", which no single condition tells; fails after `timeout`.
pub async fn wait_until_settled(
    what: &str,
    timeout: Duration,
    interval: Duration,
    count: impl Fn() -> u64,
) -> Result<u64, HarnessError> {
    let started = std::time::Instant::now();
    let mut settled = count();
    loop {
        tokio::time::sleep(interval).await;
        let now = count();
        if now == settled {
            return Ok(now);
        }
        if started.elapsed() >= timeout {
            return Err(HarnessError::Timeout {
                what: what.to_owned(),
                timeout,
                diagnostics: format!("still moving: {settled} then {now}"),
            });
        }
        settled = now;
    }
}

/// Polls `check` every 20 ms until it holds and returns how long that took: for conditions on
/// the operator's own state ([`RunningOperator::metrics`], [`RunningOperator::health`]) that no
/// watch can wait for. It sleeps asynchronously, because the operator of a test runs on the
/// test's runtime: a blocking wait would stop the operator from seeing anything meanwhile.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<Duration, HarnessError> {
    let started = std::time::Instant::now();
    while !check() {
        if started.elapsed() >= timeout {
            return Err(HarnessError::Timeout {
                what: what.to_owned(),
                timeout,
                diagnostics: String::new(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(started.elapsed())
}

/// An operator running inside a test, watching only its test namespace (see
/// [`TestNamespace::start_operator`]).
pub struct RunningOperator {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: ShutdownHandle,
    task: tokio::task::JoinHandle<Result<(), OperatorError>>,
}

impl RunningOperator {
    /// Runs `operator` in the current runtime, for a test that builds its own operator (with a
    /// counting client, say); [`TestNamespace::start_operator`] covers the common case.
    pub fn spawn(operator: Operator) -> Self {
        let (metrics, shutdown) = (operator.metrics(), operator.shutdown_handle());
        Self {
            metrics,
            health: operator.health(),
            shutdown,
            task: tokio::spawn(operator.run()),
        }
    }

    /// The operator's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The operator's health, as its `/readyz` reports it.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Shuts the operator down as SIGTERM would and waits until it has stopped.
    pub async fn stop(self) -> Result<(), HarnessError> {
        self.shutdown.shutdown();
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(HarnessError::Operator(error.to_string())),
            Err(join_error) => Err(HarnessError::Operator(join_error.to_string())),
        }
    }
}

/// A client whose every request is counted by the returned [`RequestCounter`], to prove that
/// code under test makes no writes, and recorded in order ([`RequestCounter::sent`]).
pub fn counting_client(config: Config) -> Result<(Client, RequestCounter), HarnessError> {
    let counter = RequestCounter::recording();
    let client =
        crate::client::client_counted_by(config, &counter).map_err(HarnessError::Client)?;
    Ok((client, counter))
}

/// A namespace of its own for one test, deleted when the test is done.
///
/// Call [`TestNamespace::delete`] at the end of a test to delete the namespace and wait until it
/// is gone. If the test fails before, dropping the value still deletes the namespace (without
/// waiting), unless `OPERATOR_KIT_KEEP_NAMESPACES` is set.
pub struct TestNamespace {
    config: Config,
    client: Client,
    name: String,
    deleted: bool,
}

impl TestNamespace {
    /// Creates a namespace named after the test, with a unique suffix, on the test cluster.
    pub async fn create(test_name: &str) -> Result<Self, HarnessError> {
        let config = config().await?;
        let client = Client::try_from(config.clone()).map_err(HarnessError::Client)?;
        let name = unique_name(test_name);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    TEST_NAMESPACE_LABEL.to_owned(),
                    "true".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .map_err(|source| HarnessError::Api {
                action: format!("create namespace {name:?}"),
                source,
            })?;
        Ok(Self {
            config,
            client,
            name,
            deleted: false,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A client for the test cluster.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client configuration, for code under test that builds its own client.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Creates the Secret `name` in this namespace with `value` under `key` — a password, say.
    pub async fn create_secret(
        &self,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<Secret, HarnessError> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                key.to_owned(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        };
        self.api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|source| HarnessError::Api {
                action: format!("create Secret {name:?}"),
                source,
            })
    }

    /// An API handle for namespaced objects of kind `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Waits until the named object satisfies `condition` (see [`wait_for`]); takes any API
    /// handle, so conditions on objects of other namespaces work too.
    pub async fn wait_for<K>(
        &self,
        api: &Api<K>,
        name: &str,
        description: &str,
        timeout: Duration,
        condition: impl Fn(&K) -> bool,
    ) -> Result<K, HarnessError>
    where
        K: Resource + Clone + Debug + DeserializeOwned + Serialize + Send + 'static,
        K::DynamicType: Default,
    {
        let found = wait_for(
            api,
            name,
            description,
            timeout,
            move |object: Option<&K>| object.is_some_and(&condition),
        )
        .await?;
        // The condition cannot hold for a missing object, so a match always carries one.
        found.ok_or_else(|| HarnessError::Timeout {
            what: format!("{name:?} to be {description}"),
            timeout,
            diagnostics: "object: does not exist".to_owned(),
        })
    }

    /// Waits until the named object no longer exists.
    pub async fn wait_for_deletion<K>(
        &self,
        api: &Api<K>,
        name: &str,
        timeout: Duration,
    ) -> Result<(), HarnessError>
    where
        K: Resource + Clone + Debug + DeserializeOwned + Serialize + Send + 'static,
        K::DynamicType: Default,
    {
        let gone = |object: Option<&K>| object.is_none();
        wait_for(api, name, "deleted", timeout, gone)
            .await
            .map(drop)
    }

    /// Installs `crds` and starts an operator named `name` in this test's runtime, watching only
    /// this namespace, with the controllers `controllers` adds. Stop it with
    /// [`RunningOperator::stop`].
    pub async fn start_operator(
        &self,
        name: &str,
        crds: &[CustomResourceDefinition],
        controllers: impl FnOnce(Operator) -> Operator,
    ) -> Result<RunningOperator, HarnessError> {
        for crd in crds {
            install_crd(&self.client, crd, Duration::from_secs(60)).await?;
        }
        let args = OperatorArgs {
            watch_namespace: Some(self.name.clone()),
            ..OperatorArgs::for_tests()
        };
        let operator = controllers(Operator::new(name, self.client.clone(), args));
        Ok(RunningOperator::spawn(operator))
    }

    /// Deletes the namespace and waits until the API server has removed it, which proves that
    /// every object in it could be finalized.
    pub async fn delete(mut self) -> Result<(), HarnessError> {
        self.deleted = true;
        let api = Api::<Namespace>::all(self.client.clone());
        match api.delete(&self.name, &DeleteParams::foreground()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(source) => {
                return Err(HarnessError::Api {
                    action: format!("delete namespace {:?}", self.name),
                    source,
                });
            }
        }
        self.wait_for_deletion(&api, &self.name, Duration::from_secs(120))
            .await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted || env::var_os(KEEP_NAMESPACES_VARIABLE).is_some() {
            return;
        }
        // The test's runtime may be shutting down (a panic unwinds through here), so the
        // deletion runs on a runtime of its own, in a thread of its own, with a new client.
        let config = self.config.clone();
        let name = self.name.clone();
        let deletion = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(runtime) = runtime else { return };
            runtime.block_on(async move {
                if let Ok(client) = Client::try_from(config) {
                    let _ = Api::<Namespace>::all(client)
                        .delete(&name, &DeleteParams::background())
                        .await;
                }
            });
        });
        let _ = deletion.join();
    }
}

/// A DNS label made of the test name and a suffix unique across processes and calls.
fn unique_name(test_name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut prefix: String = test_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    prefix.truncate(50);
    let prefix = prefix.trim_matches('-');
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or_default();
    let mixed = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // A finalizing mix so that names made in the same nanosecond still differ in every digit.
    let mixed = (mixed ^ (mixed >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let suffix = format!("{:08x}", (mixed ^ (mixed >> 29)) as u32);
    if prefix.is_empty() {
        format!("test-{suffix}")
    } else {
        format!("{prefix}-{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels_and_differ() {
        let first = unique_name("My_Test::with spaces");
        let second = unique_name("My_Test::with spaces");
        assert_ne!(first, second);
        assert!(first.starts_with("my-test--with-spaces-"), "{first}");
        assert!(first.len() <= 63);
        assert!(
            first
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(unique_name("___").starts_with("test-"));
    }
}
