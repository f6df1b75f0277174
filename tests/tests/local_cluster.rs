//! Proves that the local cluster behaves like a real one for what operators rely on:
//! workloads become Ready, claims bind, owners garbage-collect their children, namespaces
//! finish deleting, and the harness explains a failed wait.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use operator_kit::testing::{self, TestNamespace};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), app.to_owned())])
}

fn deployment(
    name: &str,
    replicas: i32,
    node_selector: Option<(&str, &str)>,
) -> Result<Deployment> {
    let node_selector = node_selector.map(|(key, value)| json!({ key: value }));
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": labels(name) },
            "template": {
                "metadata": { "labels": labels(name) },
                "spec": {
                    "nodeSelector": node_selector,
                    "containers": [{ "name": "web", "image": "example.invalid/web:1" }],
                },
            },
        },
    }))?)
}

#[tokio::test]
async fn api_server_is_the_pinned_version_and_ready() -> Result<()> {
    let client = testing::client().await?;
    let version = client.apiserver_version().await?;
    ensure!(
        version.git_version == "v1.37.2",
        "server version is {:?}",
        version.git_version
    );
    let readyz = client
        .request_text(http::Request::get("/readyz").body(Vec::new())?)
        .await?;
    ensure!(readyz.trim() == "ok", "/readyz answered {readyz:?}");
    Ok(())
}

/// kwok must renew the node leases: without them the node lifecycle controller marks every
/// node not-ready after the grace period and flips the Ready condition of running pods to False.
#[tokio::test]
async fn node_leases_are_renewed() -> Result<()> {
    let client = testing::client().await?;
    let leases = Api::<Lease>::namespaced(client, "kube-node-lease")
        .list(&ListParams::default())
        .await?;
    let nodes: Vec<_> = leases
        .items
        .iter()
        .filter(|lease| {
            lease
                .metadata
                .name
                .as_deref()
                .is_some_and(|name| name.starts_with("kwok-node-"))
        })
        .collect();
    ensure!(
        nodes.len() >= 3,
        "expected a lease per kwok node, found {}",
        nodes.len()
    );
    for lease in nodes {
        let spec = lease.spec.as_ref().context("lease without spec")?;
        let renewed = spec.renew_time.as_ref().context("lease never renewed")?.0;
        let age = k8s_openapi::jiff::Timestamp::now().duration_since(renewed);
        ensure!(
            age.as_secs() < 40,
            "lease {:?} was renewed {age:?} ago",
            lease.metadata.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn deployment_reaches_three_ready_pods() -> Result<()> {
    let namespace = TestNamespace::create("deployment-ready").await?;
    let deployments = namespace.api::<Deployment>();
    deployments
        .create(&PostParams::default(), &deployment("web", 3, None)?)
        .await?;
    namespace
        .wait_for(
            &deployments,
            "web",
            "3 ready replicas",
            TIMEOUT,
            |deployment: &Deployment| {
                deployment
                    .status
                    .as_ref()
                    .and_then(|status| status.ready_replicas)
                    == Some(3)
            },
        )
        .await?;
    let pods = namespace
        .api::<Pod>()
        .list(&ListParams::default().labels("app=web"))
        .await?;
    let ready = pods
        .items
        .iter()
        .filter(|pod| {
            let conditions = pod
                .status
                .as_ref()
                .and_then(|status| status.conditions.as_ref());
            conditions.is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|condition| condition.type_ == "Ready" && condition.status == "True")
            })
        })
        .count();
    ensure!(ready == 3, "{ready} of {} pods are Ready", pods.items.len());
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn statefulset_claims_bind_and_pods_become_ready() -> Result<()> {
    let namespace = TestNamespace::create("statefulset-volumes").await?;
    let statefulsets = namespace.api::<StatefulSet>();
    let statefulset: StatefulSet = serde_json::from_value(json!({
        "metadata": { "name": "db" },
        "spec": {
            "replicas": 2,
            "serviceName": "db",
            "selector": { "matchLabels": labels("db") },
            "template": {
                "metadata": { "labels": labels("db") },
                "spec": { "containers": [{
                    "name": "db", "image": "example.invalid/db:1",
                    "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
                }] },
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
            }],
        },
    }))?;
    statefulsets
        .create(&PostParams::default(), &statefulset)
        .await?;
    namespace
        .wait_for(
            &statefulsets,
            "db",
            "2 ready replicas",
            TIMEOUT,
            |statefulset: &StatefulSet| {
                statefulset
                    .status
                    .as_ref()
                    .and_then(|status| status.ready_replicas)
                    == Some(2)
            },
        )
        .await?;
    let claims = namespace.api::<PersistentVolumeClaim>();
    for name in ["data-db-0", "data-db-1"] {
        let claim = claims
            .get(name)
            .await
            .with_context(|| format!("claim {name}"))?;
        let phase = claim.status.and_then(|status| status.phase);
        ensure!(
            phase.as_deref() == Some("Bound"),
            "claim {name} is {phase:?}"
        );
        ensure!(
            claim
                .spec
                .and_then(|spec| spec.storage_class_name)
                .as_deref()
                == Some("standard"),
            "claim {name} did not get the default storage class"
        );
    }
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_children() -> Result<()> {
    let namespace = TestNamespace::create("garbage-collection").await?;
    let deployments = namespace.api::<Deployment>();
    let owner = deployments
        .create(&PostParams::default(), &deployment("owner", 1, None)?)
        .await?;
    namespace
        .wait_for(
            &deployments,
            "owner",
            "1 ready replica",
            TIMEOUT,
            |deployment: &Deployment| {
                deployment
                    .status
                    .as_ref()
                    .and_then(|status| status.ready_replicas)
                    == Some(1)
            },
        )
        .await?;
    // A child of our own next to the ReplicaSet the controller made.
    let config_maps = namespace.api::<ConfigMap>();
    let child = ConfigMap {
        metadata: ObjectMeta {
            name: Some("child".to_owned()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".to_owned(),
                kind: "Deployment".to_owned(),
                name: "owner".to_owned(),
                uid: owner.metadata.uid.clone().context("owner has no uid")?,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    config_maps.create(&PostParams::default(), &child).await?;
    let replica_sets = namespace
        .api::<ReplicaSet>()
        .list(&ListParams::default())
        .await?;
    ensure!(
        replica_sets.items.len() == 1,
        "expected one ReplicaSet, found {}",
        replica_sets.items.len()
    );

    deployments
        .delete("owner", &DeleteParams::background())
        .await?;
    namespace
        .wait_for_deletion(&config_maps, "child", TIMEOUT)
        .await?;
    let replica_set_name = replica_sets.items[0]
        .metadata
        .name
        .clone()
        .context("unnamed ReplicaSet")?;
    namespace
        .wait_for_deletion(&namespace.api::<ReplicaSet>(), &replica_set_name, TIMEOUT)
        .await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_namespace_with_objects_completes() -> Result<()> {
    let namespace = TestNamespace::create("namespace-deletion").await?;
    let name = namespace.name().to_owned();
    let client = namespace.client().clone();
    namespace
        .api::<Deployment>()
        .create(&PostParams::default(), &deployment("web", 2, None)?)
        .await?;
    namespace
        .api::<ConfigMap>()
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("settings".to_owned()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
        .await?;
    // `delete` waits until the namespace object itself is gone.
    namespace.delete().await?;
    let remaining = Api::<Namespace>::all(client).get_opt(&name).await?;
    ensure!(remaining.is_none(), "namespace {name} still exists");
    Ok(())
}

#[tokio::test]
async fn failed_wait_shows_last_status_and_events() -> Result<()> {
    let namespace = TestNamespace::create("wait-diagnostics").await?;
    let deployments = namespace.api::<Deployment>();
    // No node carries this label, so the pod stays Pending with a FailedScheduling event.
    let stuck = deployment("stuck", 1, Some(("operator-kit.io/no-such-node", "true")))?;
    deployments.create(&PostParams::default(), &stuck).await?;
    let pods = namespace.api::<Pod>();
    namespace
        .wait_for(
            &pods,
            "missing-pod",
            "created",
            Duration::from_millis(300),
            |_: &Pod| true,
        )
        .await
        .err()
        .filter(|error| error.to_string().contains("does not exist"))
        .context("waiting for a missing object did not report that it does not exist")?;
    let error = namespace
        .wait_for(
            &deployments,
            "stuck",
            "1 ready replica",
            Duration::from_secs(5),
            |deployment: &Deployment| {
                deployment
                    .status
                    .as_ref()
                    .and_then(|status| status.ready_replicas)
                    == Some(1)
            },
        )
        .await
        .err()
        .context("a deployment whose pod cannot be scheduled became ready")?;
    let message = error.to_string();
    ensure!(message.contains("timed out after 5s"), "{message}");
    ensure!(message.contains("last status"), "{message}");
    ensure!(message.contains("FailedScheduling"), "{message}");
    namespace.delete().await?;
    Ok(())
}
