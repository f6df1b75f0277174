//! operator-kit's capabilities, each proven against the local cluster: the worked example end
//! to end, zero writes when converged, drift revert and pruning, backoff, error classes,
//! deduplicated Warning events, finalizers, bounded concurrency, graceful shutdown, leader
//! election and the admin server.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use operator_kit::admin::{Metrics, ReconcileResult};
use operator_kit::backoff::BackoffPolicy;
use operator_kit::children::{INSTANCE_LABEL, MANAGED_BY_LABEL};
use operator_kit::conditions::{READY, is_true};
use operator_kit::testing::{self, RunningOperator, StallingProxy, TestNamespace, wait_until};
use operator_kit::{
    Action, ChildError, Context, Controller, ErrorClass, Operator, OperatorArgs, ReconcileError,
    Reconciler, ShutdownHandle,
};
use serde_json::json;
use tokio::task::JoinHandle;
use website_operator::{Website, WebsiteReconciler};

const TIMEOUT: Duration = Duration::from_secs(60);

fn args_for(namespace: &TestNamespace) -> OperatorArgs {
    OperatorArgs {
        watch_namespace: Some(namespace.name().to_owned()),
        ..OperatorArgs::for_tests()
    }
}

fn start<R: Reconciler>(
    client: Client,
    args: OperatorArgs,
    controller: Controller<R>,
) -> RunningOperator {
    RunningOperator::spawn(Operator::new("test-operator", client, args).with_controller(controller))
}

fn website_controller() -> Controller<WebsiteReconciler> {
    Controller::new("website", WebsiteReconciler)
        .owns::<ConfigMap>()
        .owns::<Deployment>()
        .owns::<Service>()
}

async fn create_website(
    namespace: &TestNamespace,
    name: &str,
    replicas: i32,
    expose: bool,
) -> Result<()> {
    testing::install_crd(namespace.client(), &Website::crd(), TIMEOUT).await?;
    let site: Website = serde_json::from_value(json!({
        "apiVersion": "examples.operator-kit.io/v1alpha1", "kind": "Website",
        "metadata": { "name": name },
        "spec": { "html": "<h1>hello</h1>", "replicas": replicas, "expose": expose },
    }))?;
    namespace
        .api::<Website>()
        .create(&PostParams::default(), &site)
        .await?;
    Ok(())
}

async fn wait_ready(namespace: &TestNamespace, name: &str) -> Result<Website> {
    let sites = namespace.api::<Website>();
    Ok(namespace
        .wait_for(&sites, name, "Ready", TIMEOUT, |site: &Website| {
            site.status
                .as_ref()
                .is_some_and(|status| is_true(&status.conditions, READY))
                && site.status.as_ref().map(|status| status.ready_replicas)
                    == Some(site.spec.replicas)
        })
        .await?)
}

#[tokio::test]
async fn website_becomes_ready_with_owned_and_labelled_children() -> Result<()> {
    let namespace = TestNamespace::create("kit-website-ready").await?;
    let operator = start(
        namespace.client().clone(),
        args_for(&namespace),
        website_controller(),
    );
    create_website(&namespace, "blog", 2, true).await?;
    let site = wait_ready(&namespace, "blog").await?;
    let uid = site.uid().context("no uid")?;
    let deployment = namespace.api::<Deployment>().get("blog").await?;
    let owner = &deployment.owner_references()[0];
    ensure!(
        owner.uid == uid
            && owner.controller == Some(true)
            && owner.block_owner_deletion == Some(true)
    );
    let labels = deployment.labels();
    ensure!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some("test-operator"),
        "{labels:?}"
    );
    ensure!(
        labels.get(INSTANCE_LABEL).map(String::as_str) == Some("blog"),
        "{labels:?}"
    );
    namespace.api::<Service>().get("blog").await?;
    namespace.api::<ConfigMap>().get("blog-html").await?;
    let ready = &site.status.context("no status")?.conditions[0];
    ensure!(
        ready.observed_generation == site.metadata.generation,
        "{ready:?}"
    );

    // Deleting the Website garbage-collects every child through the owner references.
    namespace
        .api::<Website>()
        .delete("blog", &DeleteParams::default())
        .await?;
    namespace
        .wait_for_deletion(&namespace.api::<Deployment>(), "blog", TIMEOUT)
        .await?;
    namespace
        .wait_for_deletion(&namespace.api::<ConfigMap>(), "blog-html", TIMEOUT)
        .await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// An object being deleted is the garbage collector's: a reconcile of it (each change to it is
/// one) would apply again the children the collector just deleted. A foreground deletion, or
/// another controller's finalizer, keeps such an object around for a while.
#[tokio::test]
async fn an_object_being_deleted_gets_none_of_its_children_back() -> Result<()> {
    let namespace = TestNamespace::create("kit-deleting").await?;
    let operator = start(
        namespace.client().clone(),
        args_for(&namespace),
        website_controller(),
    );
    create_website(&namespace, "old", 1, true).await?;
    wait_ready(&namespace, "old").await?;
    let sites = namespace.api::<Website>();
    // Someone else's finalizer keeps the Website, being deleted, for as long as the test needs.
    let hold = json!({ "metadata": { "finalizers": ["test.operator-kit.io/hold"] } });
    sites
        .patch("old", &PatchParams::default(), &Patch::Merge(&hold))
        .await?;
    sites.delete("old", &DeleteParams::foreground()).await?;
    let (deployments, services, config_maps) = (
        namespace.api::<Deployment>(),
        namespace.api::<Service>(),
        namespace.api::<ConfigMap>(),
    );
    namespace
        .wait_for_deletion(&deployments, "old", TIMEOUT)
        .await?;
    namespace
        .wait_for_deletion(&services, "old", TIMEOUT)
        .await?;
    namespace
        .wait_for_deletion(&config_maps, "old-html", TIMEOUT)
        .await?;

    let reconciles = || {
        operator
            .metrics()
            .reconcile_count("website", ReconcileResult::Success)
    };
    let before = reconciles();
    let poke = json!({ "metadata": { "annotations": { "test/poke": "1" } } });
    sites
        .patch("old", &PatchParams::default(), &Patch::Merge(&poke))
        .await?;
    wait_until("a reconcile of the Website being deleted", TIMEOUT, || {
        reconciles() > before
    })
    .await?;
    ensure!(
        deployments.get_opt("old").await?.is_none(),
        "the Deployment is back"
    );
    ensure!(
        services.get_opt("old").await?.is_none(),
        "the Service is back"
    );
    ensure!(
        config_maps.get_opt("old-html").await?.is_none(),
        "the ConfigMap is back"
    );

    let release = json!({ "metadata": { "finalizers": null } });
    sites
        .patch("old", &PatchParams::default(), &Patch::Merge(&release))
        .await?;
    namespace.wait_for_deletion(&sites, "old", TIMEOUT).await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// Whether `object` was applied under the field manager `manager` (status writes aside).
fn applied_by(object: &impl ResourceExt, manager: &str) -> bool {
    object.managed_fields().iter().any(|entry| {
        entry.manager.as_deref() == Some(manager)
            && entry.operation.as_deref() == Some("Apply")
            && entry.subresource.is_none()
    })
}

/// Waits until the renamed operator has applied `name` under its new name, labelled it so, and
/// released what it applied under the old one.
async fn wait_handed_over<K>(
    namespace: &TestNamespace,
    api: &kube::Api<K>,
    name: &str,
) -> Result<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize
        + Send
        + 'static,
{
    namespace
        .wait_for(
            api,
            name,
            "applied under the new name only",
            TIMEOUT,
            |object: &K| {
                object.labels().get(MANAGED_BY_LABEL).map(String::as_str)
                    == Some("renamed-operator")
                    && applied_by(object, "renamed-operator")
                    && !applied_by(object, "test-operator")
            },
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_renamed_operator_adopts_its_children_without_a_rollout() -> Result<()> {
    let namespace = TestNamespace::create("kit-rename").await?;
    let operator = start(
        namespace.client().clone(),
        args_for(&namespace),
        website_controller(),
    );
    create_website(&namespace, "blog", 2, true).await?;
    wait_ready(&namespace, "blog").await?;
    let deployments = namespace.api::<Deployment>();
    let before = deployments.get("blog").await?;
    let pods = namespace.api::<k8s_openapi::api::core::v1::Pod>();
    let pod_uids = |list: kube::core::ObjectList<k8s_openapi::api::core::v1::Pod>| {
        let mut uids: Vec<String> = list.items.iter().filter_map(|pod| pod.uid()).collect();
        uids.sort();
        uids
    };
    // (The Deployment's generation does move: the API server counts a changed annotation, our
    // applied hash, as a new generation of a Deployment. Its ReplicaSets tell a rollout.)
    let replica_sets = || async {
        let list = namespace
            .api::<k8s_openapi::api::apps::v1::ReplicaSet>()
            .list(&ListParams::default())
            .await?;
        let mut uids: Vec<String> = list.items.iter().filter_map(|set| set.uid()).collect();
        uids.sort();
        anyhow::Ok(uids)
    };
    let pods_before = pod_uids(pods.list(&ListParams::default()).await?);
    ensure!(pods_before.len() == 2, "{pods_before:?}");
    let replica_sets_before = replica_sets().await?;
    // A label a person added with their own server-side apply: not the operator's to release.
    let team_label = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "blog", "labels": { "team": "web" } },
    });
    deployments
        .patch(
            "blog",
            &PatchParams::apply("kubectl"),
            &Patch::Apply(&team_label),
        )
        .await?;
    operator.stop().await?;

    // The same operator under another name.
    let renamed = RunningOperator::spawn(
        Operator::new(
            "renamed-operator",
            namespace.client().clone(),
            args_for(&namespace),
        )
        .with_controller(website_controller()),
    );
    wait_handed_over(&namespace, &deployments, "blog").await?;
    wait_handed_over(&namespace, &namespace.api::<Service>(), "blog").await?;
    wait_handed_over(&namespace, &namespace.api::<ConfigMap>(), "blog-html").await?;
    let after = deployments.get("blog").await?;
    let spec = |deployment: &Deployment| {
        (
            deployment.spec.selector.clone(),
            deployment.spec.template.clone(),
        )
    };
    // No rollout: the same selector and pod template, the same ReplicaSet and pods.
    ensure!(
        spec(&after) == spec(&before),
        "{:?} became {:?}",
        spec(&before),
        spec(&after)
    );
    ensure!(
        replica_sets().await? == replica_sets_before,
        "a new ReplicaSet: a rollout"
    );
    ensure!(pod_uids(pods.list(&ListParams::default()).await?) == pods_before);
    ensure!(
        after.labels().get("team").map(String::as_str) == Some("web")
            && applied_by(&after, "kubectl"),
        "the label another field manager applied was released: {:?}",
        after.labels()
    );
    let site = wait_ready(&namespace, "blog").await?;
    ensure!(site.status.is_some());
    renamed.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn converged_website_costs_no_request_on_resync() -> Result<()> {
    let namespace = TestNamespace::create("kit-zero-writes").await?;
    let (client, requests) = testing::counting_client(namespace.config().clone())?;
    let operator = start(client, args_for(&namespace), website_controller());
    create_website(&namespace, "docs", 1, true).await?;
    wait_ready(&namespace, "docs").await?;
    // Let the last status write and the watch events it causes settle.
    let reconciles = || {
        operator
            .metrics()
            .reconcile_count("website", ReconcileResult::Success)
    };
    let settled = testing::wait_until_settled(
        "the reconciles to end",
        TIMEOUT,
        Duration::from_millis(500),
        reconciles,
    )
    .await?;
    let writes_before = requests.mutating();
    let requests_before = requests.total();
    // Each annotation change is a resync: a full reconcile of a converged object.
    for round in 0..5 {
        let patch = json!({ "metadata": { "annotations": { "test/resync": round.to_string() } } });
        namespace
            .api::<Website>()
            .patch("docs", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let target = settled + round + 1;
        wait_until("the resync reconcile ran", TIMEOUT, || {
            reconciles() >= target
        })
        .await?;
    }
    let writes = requests.mutating() - writes_before;
    ensure!(
        writes == 0,
        "a converged Website caused {writes} mutating requests over 5 resyncs"
    );
    ensure!(
        requests.count("GET") > 0,
        "the counting client saw no reads at all"
    );
    // Nor reads: its children are compared from what the watches keep (operator_kit::cache).
    let all = requests.total() - requests_before;
    ensure!(
        all == 0,
        "a converged Website caused {all} requests over 5 resyncs ({:?})",
        requests.by_method()
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn a_start_lists_its_own_objects_first_and_reconciles_from_the_childrens_caches() -> Result<()>
{
    let namespace = TestNamespace::create("kit-start-order").await?;
    let names = ["a", "b", "c"];
    let first = start(
        namespace.client().clone(),
        args_for(&namespace),
        website_controller(),
    );
    for name in names {
        create_website(&namespace, name, 1, true).await?;
    }
    for name in names {
        wait_ready(&namespace, name).await?;
    }
    first.stop().await?;

    // Another operator starts on the three Websites and their children.
    let (client, requests) = testing::counting_client(namespace.config().clone())?;
    let operator = start(client, args_for(&namespace), website_controller());
    wait_until("each Website reconciled", TIMEOUT, || {
        operator
            .metrics()
            .reconcile_count("website", ReconcileResult::Success)
            >= names.len() as u64
    })
    .await?;
    let sent = requests.sent();
    let first_of = |wanted: &dyn Fn(&str) -> bool| sent.iter().position(|request| wanted(request));
    // The Websites are listed first (their watch is opened once the list is in), and only
    // then the children: /readyz waits for the first list alone.
    let websites_watched =
        first_of(&|request| request.contains("/websites?") && request.contains("watch=true"))
            .context("the Websites were never watched")?;
    let children_listed = first_of(&|request| {
        ["/configmaps?", "/deployments?", "/services?"]
            .iter()
            .any(|kind| request.contains(kind))
    })
    .context("the children were never listed")?;
    ensure!(
        children_listed > websites_watched,
        "the children were listed before the Websites were in: {sent:#?}"
    );
    // And the reconciles waited for the children's caches instead of listing each Website's
    // children themselves (by its `app.kubernetes.io/instance` label).
    let listed_by_reconciles: Vec<_> = sent
        .iter()
        .filter(|request| request.contains("labelSelector=") && request.contains("instance"))
        .collect();
    ensure!(
        listed_by_reconciles.is_empty(),
        "reconciles listed children the watches were listing: {listed_by_reconciles:#?}"
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn hand_edits_are_reverted_and_disabled_children_pruned() -> Result<()> {
    let namespace = TestNamespace::create("kit-drift").await?;
    let operator = start(
        namespace.client().clone(),
        args_for(&namespace),
        website_controller(),
    );
    create_website(&namespace, "shop", 1, true).await?;
    wait_ready(&namespace, "shop").await?;
    let deployments = namespace.api::<Deployment>();
    deployments
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "replicas": 4 } })),
        )
        .await?;
    namespace
        .wait_for(
            &deployments,
            "shop",
            "scaled back to 1",
            TIMEOUT,
            |deployment: &Deployment| deployment.spec.replicas == Some(1),
        )
        .await?;
    let config_maps = namespace.api::<ConfigMap>();
    config_maps
        .patch(
            "shop-html",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "data": { "index.html": "defaced" } })),
        )
        .await?;
    namespace
        .wait_for(
            &config_maps,
            "shop-html",
            "restored",
            TIMEOUT,
            |map: &ConfigMap| {
                map.data
                    .as_ref()
                    .and_then(|data| data.get("index.html"))
                    .map(String::as_str)
                    == Some("<h1>hello</h1>")
            },
        )
        .await?;
    let expose_off = json!({ "spec": { "expose": false } });
    namespace
        .api::<Website>()
        .patch("shop", &PatchParams::default(), &Patch::Merge(&expose_off))
        .await?;
    namespace
        .wait_for_deletion(&namespace.api::<Service>(), "shop", TIMEOUT)
        .await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// A second controller owning ConfigMaps beside the Website's: for each Secret, a ConfigMap
/// `<name>-keys` listing the Secret's keys.
struct SecretKeys;

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct SecretKeysError(#[from] ChildError);

impl ReconcileError for SecretKeysError {
    fn class(&self) -> ErrorClass {
        self.0.class()
    }
}

impl Reconciler for SecretKeys {
    type Resource = Secret;
    type Error = SecretKeysError;

    async fn reconcile(
        &self,
        secret: Arc<Secret>,
        context: &Context,
    ) -> Result<Action, SecretKeysError> {
        let keys: Vec<&str> = secret
            .data
            .iter()
            .flatten()
            .map(|(key, _)| key.as_str())
            .collect();
        let mut children = context.children(&*secret)?;
        children
            .apply(ConfigMap {
                metadata: ObjectMeta {
                    name: Some(format!("{}-keys", secret.name_any())),
                    ..ObjectMeta::default()
                },
                data: Some([("keys".to_owned(), keys.join(","))].into()),
                ..ConfigMap::default()
            })
            .await?;
        Ok(Action::await_change())
    }
}

#[tokio::test]
async fn controllers_owning_the_same_kind_share_one_watch_and_both_revert_drift() -> Result<()> {
    let namespace = TestNamespace::create("kit-shared-watch").await?;
    let (client, requests) = testing::counting_client(namespace.config().clone())?;
    let operator = RunningOperator::spawn(
        Operator::new("test-operator", client, args_for(&namespace))
            .with_controller(website_controller())
            .with_controller(Controller::new("secret-keys", SecretKeys).owns::<ConfigMap>()),
    );
    create_website(&namespace, "shop", 1, false).await?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("creds".to_owned()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            [("user", "shop"), ("password", "s3cret")]
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .into(),
        ),
        ..Secret::default()
    };
    namespace
        .api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await?;
    wait_ready(&namespace, "shop").await?;
    let config_maps = namespace.api::<ConfigMap>();
    let keys_listed = |map: &ConfigMap| {
        map.data
            .as_ref()
            .and_then(|data| data.get("keys"))
            .map(String::as_str)
            == Some("password,user")
    };
    namespace
        .wait_for(
            &config_maps,
            "creds-keys",
            "listing the keys",
            TIMEOUT,
            keys_listed,
        )
        .await?;
    // Both controllers own ConfigMaps in this namespace: one watch serves them both.
    let path = format!("/api/v1/namespaces/{}/configmaps", namespace.name());
    let watches = requests.watches();
    ensure!(
        watches.get(&path) == Some(&1),
        "expected one watch of {path:?}, the operator opened {watches:?}"
    );
    // And each still hears of its own children through it: a hand edit of either child is
    // reverted (the Website's controller started the watch, the other follows it).
    for (name, key) in [("shop-html", "index.html"), ("creds-keys", "keys")] {
        config_maps
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "data": { key: "defaced" } })),
            )
            .await?;
    }
    namespace
        .wait_for(
            &config_maps,
            "shop-html",
            "restored",
            TIMEOUT,
            |map: &ConfigMap| {
                map.data
                    .as_ref()
                    .and_then(|data| data.get("index.html"))
                    .map(String::as_str)
                    == Some("<h1>hello</h1>")
            },
        )
        .await?;
    namespace
        .wait_for(&config_maps, "creds-keys", "restored", TIMEOUT, keys_listed)
        .await?;
    // The follower compares its converged child from the shared store: a resync of the Secret
    // costs no request.
    let reconciles = || {
        operator
            .metrics()
            .reconcile_count("secret-keys", ReconcileResult::Success)
    };
    let settled = testing::wait_until_settled(
        "the reconciles to end",
        TIMEOUT,
        Duration::from_millis(500),
        reconciles,
    )
    .await?;
    let requests_before = requests.total();
    let resync = json!({ "metadata": { "annotations": { "test/resync": "1" } } });
    namespace
        .api::<Secret>()
        .patch("creds", &PatchParams::default(), &Patch::Merge(&resync))
        .await?;
    wait_until("the resync reconcile ran", TIMEOUT, || {
        reconciles() > settled
    })
    .await?;
    let sent = requests.total() - requests_before;
    ensure!(
        sent == 0,
        "a converged Secret's resync sent {sent} requests ({:?})",
        requests.by_method()
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// A reconciler over plain ConfigMaps whose behaviour each test scripts through the data.
#[derive(Clone, Default)]
struct Scripted {
    attempts: Arc<Mutex<Vec<(String, Instant)>>>,
    running: Arc<AtomicUsize>,
    most_running: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    cleaned_up: Arc<AtomicUsize>,
    /// The metadata of each object as the reconciler last got it, by name.
    metadata: Arc<Mutex<HashMap<String, ObjectMeta>>>,
}

#[derive(Debug, thiserror::Error)]
enum ScriptedError {
    #[error("failed on purpose")]
    Transient,
    #[error("spec is invalid: data.valid is not \"true\"")]
    Invalid,
}

impl ReconcileError for ScriptedError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Transient => ErrorClass::Transient,
            Self::Invalid => ErrorClass::WaitForChange,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Self::Transient => "ScriptedFailure",
            Self::Invalid => "InvalidSpec",
        }
    }
}

impl Scripted {
    fn attempts_of(&self, name: &str) -> Vec<Instant> {
        let attempts = self.attempts.lock().expect("attempts lock");
        attempts
            .iter()
            .filter(|(object, _)| object == name)
            .map(|(_, at)| *at)
            .collect()
    }
}

impl Reconciler for Scripted {
    type Resource = ConfigMap;
    type Error = ScriptedError;

    async fn reconcile(
        &self,
        map: Arc<ConfigMap>,
        _context: &Context,
    ) -> Result<Action, ScriptedError> {
        let name = map.name_any();
        self.metadata
            .lock()
            .expect("metadata lock")
            .insert(name.clone(), map.metadata.clone());
        let attempt = {
            let mut attempts = self.attempts.lock().expect("attempts lock");
            attempts.push((name.clone(), Instant::now()));
            attempts
                .iter()
                .filter(|(object, _)| *object == name)
                .count()
        };
        let data = map.data.clone().unwrap_or_default();
        let setting = |key: &str| {
            data.get(key)
                .and_then(|value| value.parse::<usize>().ok())
                .unwrap_or(0)
        };
        if data.get("valid").is_some_and(|valid| valid != "true") {
            return Err(ScriptedError::Invalid);
        }
        if attempt <= setting("fail-first") {
            return Err(ScriptedError::Transient);
        }
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(running, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(setting("sleep-ms") as u64)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(Action::await_change())
    }

    async fn cleanup(
        &self,
        _map: Arc<ConfigMap>,
        _context: &Context,
    ) -> Result<Action, ScriptedError> {
        self.cleaned_up.fetch_add(1, Ordering::SeqCst);
        Ok(Action::await_change())
    }
}

async fn create_config_map(
    namespace: &TestNamespace,
    name: &str,
    data: serde_json::Value,
) -> Result<()> {
    let map: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": name }, "data": data }))?;
    namespace
        .api::<ConfigMap>()
        .create(&PostParams::default(), &map)
        .await?;
    Ok(())
}

#[tokio::test]
async fn failures_back_off_exponentially_reset_on_success_and_publish_one_event() -> Result<()> {
    let namespace = TestNamespace::create("kit-backoff").await?;
    let scripted = Scripted::default();
    let policy = BackoffPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(30),
    };
    let controller = Controller::new("scripted", scripted.clone()).backoff(policy);
    let operator = start(namespace.client().clone(), args_for(&namespace), controller);
    create_config_map(&namespace, "flaky", json!({ "fail-first": "5" })).await?;
    wait_until("six attempts", TIMEOUT, || {
        scripted.attempts_of("flaky").len() >= 6
    })
    .await?;
    let attempts = scripted.attempts_of("flaky");
    let gaps: Vec<Duration> = attempts.windows(2).map(|pair| pair[1] - pair[0]).collect();
    eprintln!("measured retry gaps: {gaps:?}");
    for (index, gap) in gaps.iter().take(5).enumerate() {
        let expected = policy.delay(index as u32 + 1);
        ensure!(
            *gap >= expected.mul_f64(0.9) && *gap < expected + Duration::from_millis(700),
            "retry {} came after {gap:?}, expected about {expected:?}; all gaps: {gaps:?}",
            index + 1
        );
    }
    ensure!(
        scripted.finished.load(Ordering::SeqCst) >= 1,
        "the sixth attempt did not succeed"
    );

    // The same failure, five times: one Warning event, not five.
    let events = namespace.api::<Event>();
    let selector = ListParams::default().fields("involvedObject.name=flaky,reason=ScriptedFailure");
    let warnings = events.list(&selector).await?.items;
    ensure!(!warnings.is_empty(), "no Warning event for the failures");
    ensure!(
        warnings
            .iter()
            .all(|event| event.type_.as_deref() == Some("Warning")),
        "{warnings:?}"
    );
    ensure!(
        warnings.len() == 1,
        "identical failures produced {} events: {warnings:?}",
        warnings.len()
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn an_invalid_spec_waits_for_a_change_instead_of_retrying() -> Result<()> {
    let namespace = TestNamespace::create("kit-wait-for-change").await?;
    let scripted = Scripted::default();
    let operator = start(
        namespace.client().clone(),
        args_for(&namespace),
        Controller::new("scripted", scripted.clone()),
    );
    create_config_map(&namespace, "invalid", json!({ "valid": "no" })).await?;
    wait_until("the first attempt", TIMEOUT, || {
        !scripted.attempts_of("invalid").is_empty()
    })
    .await?;
    // Proving an absence takes a window: with the default backoff a retry would come after
    // 250 ms, 500 ms and 1 s, so three seconds show whether the runtime retries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        scripted.attempts_of("invalid").len() == 1,
        "an invalid spec was retried"
    );
    let events = namespace
        .api::<Event>()
        .list(&ListParams::default().fields("reason=InvalidSpec"))
        .await?;
    ensure!(
        events.items.len() == 1,
        "expected one InvalidSpec event, found {}",
        events.items.len()
    );
    let fix = json!({ "data": { "valid": "true" } });
    namespace
        .api::<ConfigMap>()
        .patch("invalid", &PatchParams::default(), &Patch::Merge(&fix))
        .await?;
    wait_until("the fixed object succeeds", TIMEOUT, || {
        scripted.finished.load(Ordering::SeqCst) >= 1
    })
    .await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// The controller keeps its own objects without what no reconcile reads and what makes an
/// object about twice its size: the managedFields, and the copy of the whole object that
/// `kubectl apply` keeps in an annotation. Every other annotation is kept.
#[tokio::test]
async fn reconcilers_get_objects_without_managed_fields_or_kubectls_last_applied_copy() -> Result<()>
{
    let namespace = TestNamespace::create("kit-compact-objects").await?;
    let scripted = Scripted::default();
    let operator = start(
        namespace.client().clone(),
        args_for(&namespace),
        Controller::new("scripted", scripted.clone()),
    );
    let map: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "applied", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"ConfigMap\"}",
            "team": "cache",
        } },
        "data": { "a": "1" },
    }))?;
    let created = namespace
        .api::<ConfigMap>()
        .create(&PostParams::default(), &map)
        .await?;
    ensure!(
        !created.managed_fields().is_empty(),
        "the API server kept no managedFields to drop"
    );
    let seen = || {
        scripted
            .metadata
            .lock()
            .expect("metadata lock")
            .get("applied")
            .cloned()
    };
    wait_until("a reconcile of the ConfigMap", TIMEOUT, || seen().is_some()).await?;
    let meta = seen().context("never reconciled")?;
    ensure!(meta.managed_fields.is_none(), "{:?}", meta.managed_fields);
    let annotations = meta.annotations.unwrap_or_default();
    ensure!(
        !annotations.contains_key("kubectl.kubernetes.io/last-applied-configuration")
            && annotations.get("team").map(String::as_str) == Some("cache"),
        "{annotations:?}"
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn finalizer_runs_cleanup_before_the_object_goes() -> Result<()> {
    let namespace = TestNamespace::create("kit-finalizer").await?;
    let scripted = Scripted::default();
    let controller =
        Controller::new("scripted", scripted.clone()).finalizer("operator-kit.io/test-cleanup");
    let operator = start(namespace.client().clone(), args_for(&namespace), controller);
    create_config_map(&namespace, "external", json!({})).await?;
    let config_maps = namespace.api::<ConfigMap>();
    namespace
        .wait_for(
            &config_maps,
            "external",
            "finalized",
            TIMEOUT,
            |map: &ConfigMap| {
                map.finalizers()
                    .iter()
                    .any(|finalizer| finalizer == "operator-kit.io/test-cleanup")
            },
        )
        .await?;
    config_maps
        .delete("external", &DeleteParams::default())
        .await?;
    namespace
        .wait_for_deletion(&config_maps, "external", TIMEOUT)
        .await?;
    ensure!(
        scripted.cleaned_up.load(Ordering::SeqCst) >= 1,
        "cleanup never ran"
    );
    // The controller finalizes every ConfigMap of the namespace (kube-root-ca.crt too), so it
    // must keep running until the namespace is gone.
    namespace.delete().await?;
    operator.stop().await?;
    Ok(())
}

#[tokio::test]
async fn concurrency_is_bounded_and_shutdown_drains_running_reconciles() -> Result<()> {
    let namespace = TestNamespace::create("kit-concurrency").await?;
    let scripted = Scripted::default();
    let args = OperatorArgs {
        concurrency: 2,
        ..args_for(&namespace)
    };
    for index in 0..6 {
        create_config_map(
            &namespace,
            &format!("slow-{index}"),
            json!({ "sleep-ms": "400" }),
        )
        .await?;
    }
    let operator = start(
        namespace.client().clone(),
        args,
        Controller::new("scripted", scripted.clone()),
    );
    wait_until("six slow reconciles", TIMEOUT, || {
        scripted.finished.load(Ordering::SeqCst) >= 6
    })
    .await?;
    let most = scripted.most_running.load(Ordering::SeqCst);
    ensure!(
        most == 2,
        "at most 2 reconciles may run at once, saw {most}"
    );

    create_config_map(&namespace, "last", json!({ "sleep-ms": "1500" })).await?;
    let before = scripted.finished.load(Ordering::SeqCst);
    wait_until("the last reconcile started", TIMEOUT, || {
        scripted.running.load(Ordering::SeqCst) == 1
    })
    .await?;
    let started = Instant::now();
    operator.stop().await?;
    ensure!(
        scripted.finished.load(Ordering::SeqCst) > before,
        "shutdown abandoned a running reconcile"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    namespace.delete().await?;
    Ok(())
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn http_get(address: SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

#[tokio::test]
async fn admin_server_reports_readiness_and_controller_runtime_metrics() -> Result<()> {
    let namespace = TestNamespace::create("kit-admin").await?;
    let scripted = Scripted::default();
    let address = free_port()?;
    let args = OperatorArgs {
        admin_address: address,
        ..args_for(&namespace)
    };
    create_config_map(&namespace, "observed", json!({})).await?;
    let operator = start(
        namespace.client().clone(),
        args,
        Controller::new("scripted", scripted.clone()),
    );
    wait_until("a reconcile", TIMEOUT, || {
        scripted.finished.load(Ordering::SeqCst) >= 1
    })
    .await?;
    let started = Instant::now();
    loop {
        if http_get(address, "/readyz")
            .await
            .is_ok_and(|response| response.starts_with("HTTP/1.1 200"))
        {
            break;
        }
        ensure!(started.elapsed() < TIMEOUT, "/readyz never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        http_get(address, "/healthz")
            .await?
            .starts_with("HTTP/1.1 200")
    );
    let metrics = http_get(address, "/metrics").await?;
    for needle in [
        "controller_runtime_reconcile_total{controller=\"scripted\",result=\"success\"}",
        "controller_runtime_reconcile_time_seconds_count{controller=\"scripted\"}",
        "workqueue_depth{name=\"scripted\"}",
    ] {
        ensure!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// The value of the sample `name` (with its labels) in a `/metrics` page.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

/// `workqueue_depth` is what dashboards built for controller-runtime read it as: the objects
/// waiting for a worker. With one worker and five objects listed at start, four wait while the
/// first runs, and the queue drains to 0 as they finish.
#[tokio::test]
async fn workqueue_depth_counts_the_objects_waiting_for_a_worker() -> Result<()> {
    let namespace = TestNamespace::create("kit-queue").await?;
    let scripted = Scripted::default();
    let address = free_port()?;
    let args = OperatorArgs {
        admin_address: address,
        concurrency: 1,
        ..args_for(&namespace)
    };
    // Four slow objects, and the namespace's own kube-root-ca.crt.
    for index in 0..4 {
        create_config_map(
            &namespace,
            &format!("slow-{index}"),
            json!({ "sleep-ms": "800" }),
        )
        .await?;
    }
    let objects = namespace
        .api::<ConfigMap>()
        .list(&ListParams::default())
        .await?
        .items
        .len();
    let operator = start(
        namespace.client().clone(),
        args,
        Controller::new("scripted", scripted.clone()),
    );
    let name = "workqueue_depth{name=\"scripted\"}";
    let mut depths = Vec::new();
    let started = Instant::now();
    while scripted.finished.load(Ordering::SeqCst) < objects {
        ensure!(
            started.elapsed() < TIMEOUT,
            "reconciles never finished; depths {depths:?}"
        );
        if let Ok(metrics) = http_get(address, "/metrics").await
            && let Some(depth) = sample(&metrics, name)
        {
            depths.push(depth);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deepest = depths.iter().copied().fold(0.0, f64::max);
    eprintln!("{objects} objects, one worker: workqueue_depth went up to {deepest}");
    ensure!(
        deepest >= (objects - 2) as f64 && deepest <= (objects - 1) as f64,
        "with {objects} objects and one worker the depth should reach {} while the first runs; \
         saw {depths:?}",
        objects - 1
    );
    let metrics = http_get(address, "/metrics").await?;
    ensure!(
        sample(&metrics, name) == Some(0.0),
        "the queue did not drain:\n{metrics}"
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// An operator in a runtime of its own, so that dropping the runtime kills it the way a crash
/// would: no lease release, no goodbye.
struct Replica {
    runtime: Option<tokio::runtime::Runtime>,
    metrics: Arc<Metrics>,
    shutdown: ShutdownHandle,
    scripted: Scripted,
    task: JoinHandle<Result<(), operator_kit::OperatorError>>,
}

fn start_replica(namespace: &TestNamespace, identity: &str) -> Result<Replica> {
    let scripted = Scripted::default();
    let controller = Controller::new("scripted", scripted.clone());
    let mut replica =
        start_replica_with(namespace, identity, namespace.config().clone(), controller)?;
    replica.scripted = scripted;
    Ok(replica)
}

/// A replica with leader election (lease 4 s, renew deadline 3 s, retry 0.5 s) running
/// `controller` with a client built from `config`.
fn start_replica_with<R: Reconciler>(
    namespace: &TestNamespace,
    identity: &str,
    config: kube::Config,
    controller: Controller<R>,
) -> Result<Replica> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let args = OperatorArgs {
        leader_election: true,
        lease_name: Some("test-operator".to_owned()),
        lease_namespace: Some(namespace.name().to_owned()),
        identity: Some(identity.to_owned()),
        lease_duration_seconds: 4.0,
        renew_deadline_seconds: 3.0,
        retry_period_seconds: 0.5,
        ..args_for(namespace)
    };
    let (ready, mut handles) = tokio::sync::oneshot::channel();
    let task = runtime.spawn(async move {
        let client = Client::try_from(config).expect("client from the test config");
        let operator = Operator::new("test-operator", client, args).with_controller(controller);
        let _ = ready.send((operator.metrics(), operator.shutdown_handle()));
        operator.run().await
    });
    let (metrics, shutdown) = loop {
        match handles.try_recv() {
            Ok(handles) => break handles,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(error) => anyhow::bail!("replica {identity} did not start: {error}"),
        }
    };
    Ok(Replica {
        runtime: Some(runtime),
        metrics,
        shutdown,
        scripted: Scripted::default(),
        task,
    })
}

impl Replica {
    fn leads(&self) -> bool {
        self.metrics.is_leader() == Some(true)
    }

    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() -> Result<()> {
    let namespace = TestNamespace::create("kit-leader").await?;
    let mut first = start_replica(&namespace, "replica-a")?;
    wait_until("replica-a leads", TIMEOUT, || first.leads()).await?;
    let mut second = start_replica(&namespace, "replica-b")?;
    create_config_map(&namespace, "work", json!({})).await?;
    wait_until("the leader reconciled", TIMEOUT, || {
        !first.scripted.attempts_of("work").is_empty()
    })
    .await?;
    // The standby's caches are warm (its store synced) but it must not touch the object.
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        second.scripted.attempts_of("work").is_empty(),
        "the standby reconciled"
    );
    ensure!(
        second.metrics.is_leader() == Some(false),
        "the standby claims to lead"
    );

    // A crash: no release, so the standby must wait for the lease (4 s) to expire.
    first.kill();
    let takeover = wait_until("replica-b leads", TIMEOUT, || second.leads()).await?;
    eprintln!("measured takeover after a crash: {takeover:?} (lease duration 4 s)");
    ensure!(
        takeover <= Duration::from_secs(4) + Duration::from_millis(1500),
        "takeover took {takeover:?}"
    );
    wait_until("the new leader reconciled every object", TIMEOUT, || {
        !second.scripted.attempts_of("work").is_empty()
    })
    .await?;

    // A clean shutdown releases the lease: a third replica takes over at its next retry.
    let third = start_replica(&namespace, "replica-c")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(!third.leads(), "two leaders at once");
    second.shutdown.shutdown();
    let stopped = Instant::now();
    wait_until("replica-c leads after the release", TIMEOUT, || {
        third.leads()
    })
    .await?;
    let handover = stopped.elapsed();
    eprintln!("measured handover after a release: {handover:?}");
    ensure!(
        handover < Duration::from_secs(3),
        "handover after a release took {handover:?}"
    );
    let second_result = (&mut second.task).await?;
    ensure!(
        second_result.is_ok(),
        "replica-b failed to stop: {second_result:?}"
    );
    second.kill();
    drop(third);
    namespace.delete().await?;
    Ok(())
}

/// A reconciler that, as long as it leads, writes one new ConfigMap per reconcile of "work"
/// (`w-<identity>-<n>`), every 200 ms, and notes when it started each write.
#[derive(Clone)]
struct Writer {
    identity: String,
    started: Arc<Mutex<Vec<Instant>>>,
}

impl Writer {
    fn new(identity: &str) -> Self {
        Self {
            identity: identity.to_owned(),
            started: Arc::default(),
        }
    }

    fn started(&self) -> Vec<Instant> {
        self.started.lock().expect("writer lock").clone()
    }
}

impl Reconciler for Writer {
    type Resource = ConfigMap;
    type Error = ScriptedError;

    async fn reconcile(
        &self,
        map: Arc<ConfigMap>,
        context: &Context,
    ) -> Result<Action, ScriptedError> {
        if map.name_any() != "work" {
            return Ok(Action::await_change());
        }
        let sequence = {
            let mut started = self.started.lock().expect("writer lock");
            started.push(Instant::now());
            started.len() - 1
        };
        let written: ConfigMap = serde_json::from_value(json!({
            "metadata": {
                "name": format!("w-{}-{sequence}", self.identity),
                "labels": { "written-by": self.identity, "sequence": sequence.to_string() },
            },
        }))
        .map_err(|_| ScriptedError::Transient)?;
        kube::Api::<ConfigMap>::namespaced(
            context.client().clone(),
            &map.namespace().unwrap_or_default(),
        )
        .create(&PostParams::default(), &written)
        .await
        .map_err(|_| ScriptedError::Transient)?;
        Ok(Action::requeue(Duration::from_millis(200)))
    }
}

#[tokio::test]
async fn a_leader_whose_connection_hangs_stops_writing_before_a_standby_takes_over() -> Result<()> {
    let namespace = TestNamespace::create("kit-hang").await?;
    let proxy = StallingProxy::start(namespace.config()).await?;
    let writer_a = Writer::new("replica-a");
    let mut first = start_replica_with(
        &namespace,
        "replica-a",
        proxy.config().clone(),
        Controller::new("writer", writer_a.clone()),
    )?;
    wait_until("replica-a leads", TIMEOUT, || first.leads()).await?;
    create_config_map(&namespace, "work", json!({})).await?;
    wait_until("replica-a writes", TIMEOUT, || {
        writer_a.started().len() >= 3
    })
    .await?;
    let writer_b = Writer::new("replica-b");
    let second = start_replica_with(
        &namespace,
        "replica-b",
        namespace.config().clone(),
        Controller::new("writer", writer_b.clone()),
    )?;
    wait_until("replica-b stands by", TIMEOUT, || {
        second.metrics.is_leader() == Some(false)
    })
    .await?;

    // The leader's connection goes dead: its requests hang, none fails.
    proxy.stall();
    let stalled = Instant::now();
    let renew_deadline = Duration::from_secs(3);
    wait_until("replica-a stops leading", TIMEOUT, || !first.leads()).await?;
    let stopped_after = stalled.elapsed();
    wait_until("replica-b leads", TIMEOUT, || second.leads()).await?;
    let took_over_after = stalled.elapsed();
    wait_until("replica-b writes", TIMEOUT, || {
        !writer_b.started().is_empty()
    })
    .await?;
    eprintln!(
        "measured: the hung leader stopped leading {stopped_after:?} after its connection died \
         (renew deadline {renew_deadline:?}); the standby led {took_over_after:?} after \
         (lease 4 s); gap with no leader {:?}",
        took_over_after.saturating_sub(stopped_after)
    );
    ensure!(
        stopped_after <= renew_deadline + Duration::from_millis(250),
        "the hung leader went on leading for {stopped_after:?}"
    );

    // The connection comes back. Whatever the old leader still wanted to write would land now;
    // it must have stopped instead, leadership lost.
    proxy.resume();
    let result = tokio::time::timeout(TIMEOUT, &mut first.task).await??;
    ensure!(
        matches!(result, Err(operator_kit::OperatorError::Leader(_))),
        "replica-a ended with {result:?}, not with leadership lost"
    );
    let deadline = stalled + renew_deadline;
    let started = writer_a.started();
    // Two leaders at once would show as writes of both replicas started in one span: every
    // write the old leader started (its list is final, its task ended) precedes the first of
    // the new one.
    let last_of_a = started.iter().max().copied();
    let first_of_b = writer_b.started().iter().min().copied();
    ensure!(
        last_of_a.is_some() && first_of_b.is_some() && last_of_a < first_of_b,
        "two leaders at once: replica-a started a write at {last_of_a:?}, replica-b its first at {first_of_b:?}"
    );
    let late: Vec<_> = started.iter().filter(|at| **at >= deadline).collect();
    ensure!(
        late.is_empty(),
        "replica-a started {} writes after its renew deadline",
        late.len()
    );
    let stored = namespace
        .api::<ConfigMap>()
        .list(&ListParams::default().labels("written-by=replica-a"))
        .await?;
    for map in &stored.items {
        let sequence: usize = map.labels()["sequence"].parse()?;
        ensure!(
            started[sequence] < stalled,
            "write {sequence} of replica-a, started {:?} after the connection died, reached the API server",
            started[sequence] - stalled
        );
    }
    eprintln!(
        "measured: replica-a started {} writes, {} reached the API server, all before its connection died",
        started.len(),
        stored.items.len()
    );
    first.kill();
    drop(second);
    drop(proxy);
    namespace.delete().await?;
    Ok(())
}
