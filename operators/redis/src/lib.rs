//! redis-operator: Redis on Kubernetes, reconciled by operator-kit.
//!
//! - [`v1beta1`]: the custom resource types (`Redis`).
//! - [`standalone`]: the `Redis` controller, validate → build → apply → status.
//! - [`sentinel`]: the `RedisSentinel` controller (Redis with Sentinel), which also checks and
//!   heals the replication topology through [`resp`], a small Redis client.
#![forbid(unsafe_code)]

pub mod access;
pub mod passwords;
pub mod pod;
pub mod resp;
pub mod rotation;
pub mod secret;
pub mod sentinel;
pub mod standalone;
pub mod v1beta1;

use k8s_openapi::api::apps::v1::StatefulSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use operator_kit::Controller;
use operator_kit::children::{MANAGED_BY_LABEL, NAME_LABEL};

/// The operator's name: its field manager, event reporter and Lease name.
pub const OPERATOR_NAME: &str = "redis-operator";

/// The labels that, with the instance label, select the pods of a resource: fixed here, so that
/// renaming the operator changes no selector. They are what releases before
/// `Controller::selector_labels` derived from the operator's name; selectors are immutable, so
/// the workloads those releases made keep them, without a rollout.
pub const SELECTOR_LABELS: [(&str, &str); 2] = [
    (NAME_LABEL, "redis-operator"),
    (MANAGED_BY_LABEL, "redis-operator"),
];

/// Every CRD of the operator, as committed in `crds/redis-operator.yaml`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![v1beta1::Redis::crd(), v1beta1::RedisSentinel::crd()]
}

/// The `Redis` controller with the kinds it owns and the Secrets it watches.
pub fn redis_controller() -> Controller<standalone::RedisReconciler> {
    redis_controller_with(
        access::Access::Automatic,
        Arc::new(standalone::server_address),
    )
}

/// The `Redis` controller with its own way to the server (tests use a local process).
pub fn redis_controller_with(
    access: access::Access,
    address: standalone::ServerAddress,
) -> Controller<standalone::RedisReconciler> {
    Controller::new("redis", standalone::RedisReconciler::new(access, address))
        .selector_labels(SELECTOR_LABELS)
        .owns::<ConfigMap>()
        .owns::<Service>()
        .owns::<StatefulSet>()
        .owns::<NetworkPolicy>()
        .watches_metadata::<Secret, _>(resources_using_secret)
        // The data claims, by metadata: ownership is checked from the cache.
        .caches::<PersistentVolumeClaim>()
        // The password Secret is read (in memory only) and the pod's passwords kept in the
        // operator's own Secret `<name>-operator-credentials`; the data claims get the Redis as
        // an owner (get: a claim re-read when its owner references changed under the patch).
        .uses::<Secret>(&["get", "create", "patch"])
        .uses::<PersistentVolumeClaim>(&["get", "list", "patch"])
}

/// The resources of kind `K` to reconcile when `secret` changes: those reading their password
/// from it.
fn resources_using_secret<K: secret::PasswordSecret + Clone + 'static>(
    secret: &PartialObjectMeta<Secret>,
    store: &Store<K>,
) -> Vec<ObjectRef<K>> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    secret::referring_to_secret(secret.metadata.namespace.as_deref(), &name, store.state())
        .collect()
}

/// The `RedisSentinel` controller, reaching the pods by DNS in the cluster and through
/// port-forward outside it.
pub fn redis_sentinel_controller() -> Controller<sentinel::RedisSentinelReconciler> {
    redis_sentinel_controller_with(
        sentinel::access::Access::Automatic,
        Arc::new(sentinel::build::nodes),
    )
}

/// The `RedisSentinel` controller with its own way to the data plane (tests use local
/// processes).
pub fn redis_sentinel_controller_with(
    access: sentinel::access::Access,
    addresses: sentinel::NodeAddresses,
) -> Controller<sentinel::RedisSentinelReconciler> {
    let (reconciler, triggers) = sentinel::RedisSentinelReconciler::new(access, addresses);
    Controller::new("redis-sentinel", reconciler)
        .selector_labels(SELECTOR_LABELS)
        .owns::<ConfigMap>()
        .owns::<Service>()
        .owns::<StatefulSet>()
        .owns::<PodDisruptionBudget>()
        .owns::<NetworkPolicy>()
        .watches_metadata::<Secret, _>(resources_using_secret)
        .reconcile_on(triggers)
        // The data claims and the pods, by metadata: ownership and role labels are checked
        // from the cache.
        .caches::<PersistentVolumeClaim>()
        .caches::<Pod>()
        // The password is read to authenticate to Redis (kept in memory only), and the pods'
        // passwords kept in the operator's own Secret `<name>-operator-credentials`; the
        // claims as for Redis; the pods labelled with their role, for the master Service.
        .uses::<Secret>(&["get", "create", "patch"])
        .uses::<PersistentVolumeClaim>(&["get", "list", "patch"])
        .uses::<Pod>(&["list", "patch"])
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_crds_match_the_types() {
        // crds/ for kubectl users, and the Helm chart's crds/ folder, which Helm installs.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for path in [
            "crds/redis-operator.yaml",
            "charts/redis-operator/crds/redis-operator.yaml",
        ] {
            operator_kit::crd::check_file(&root.join(path), &super::crds()).unwrap();
        }
    }

    /// The StatefulSets, built from typed structs, are exactly what the json builders of
    /// earlier releases applied (kept in `src/testdata`, with the spec each was built from):
    /// upgrading rolls no pod, and no field is lost on the way.
    #[test]
    fn typed_stateful_sets_are_what_the_json_builders_applied() {
        use crate::{sentinel, standalone, v1beta1};
        use std::collections::BTreeMap;
        let labels = BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "redis-operator".to_owned(),
            ),
            ("app.kubernetes.io/instance".to_owned(), "cache".to_owned()),
        ]);
        let fixtures = [
            (
                "redis-standalone-plain",
                include_str!("testdata/redis-standalone-plain.json"),
            ),
            (
                "redis-standalone-full",
                include_str!("testdata/redis-standalone-full.json"),
            ),
            (
                "redis-standalone-nostorage",
                include_str!("testdata/redis-standalone-nostorage.json"),
            ),
            (
                "redis-sentinel-plain",
                include_str!("testdata/redis-sentinel-plain.json"),
            ),
            (
                "redis-sentinel-full",
                include_str!("testdata/redis-sentinel-full.json"),
            ),
            (
                "redis-sentinel-nostorage",
                include_str!("testdata/redis-sentinel-nostorage.json"),
            ),
        ];
        for (name, text) in fixtures {
            let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
            let resource = serde_json::json!({
                "metadata": { "name": "cache", "namespace": "shop" },
                "spec": fixture["spec"],
            });
            let built = if name.starts_with("redis-standalone") {
                let redis: v1beta1::Redis = serde_json::from_value(resource).unwrap();
                let names = standalone::Names::of("cache");
                serde_json::to_value(standalone::stateful_set(&redis, &names, &labels, "h"))
            } else {
                let resource: v1beta1::RedisSentinel = serde_json::from_value(resource).unwrap();
                let names = sentinel::build::Names::of("cache");
                serde_json::to_value(sentinel::build::stateful_set(
                    &resource, &names, &labels, "h",
                ))
            }
            .unwrap();
            assert_eq!(built, fixture["statefulSet"], "{name}");
        }
    }
}
