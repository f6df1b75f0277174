//! redis-operator's `Redis` kind on the local cluster: the seed manifest reaches Ready, changes
//! roll out, features come and go with their objects, drift is reverted, a missing Secret is
//! reported and recovered from, deletion cleans up, and invalid manifests are rejected at
//! admission with a message naming the field.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Event, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use operator_kit::conditions::{READY, find_condition};
use operator_kit::testing::{self, RunningOperator, TestNamespace};
use redis_operator::pod::CONFIG_HASH_ANNOTATION;
use redis_operator::v1beta1::{Phase, Redis};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);
const SEED: &str = include_str!("../../examples/redis-standalone.yaml");

async fn start(namespace: &TestNamespace) -> Result<RunningOperator> {
    let controller = redis_operator::redis_controller();
    Ok(namespace
        .start_operator(
            redis_operator::OPERATOR_NAME,
            &redis_operator::crds(),
            |operator| operator.with_controller(controller),
        )
        .await?)
}

fn seed() -> Result<Redis> {
    Ok(serde_yaml::from_str(SEED)?)
}

async fn wait_ready(namespace: &TestNamespace, name: &str) -> Result<Redis> {
    let redises = namespace.api::<Redis>();
    let generation = redises.get(name).await?.metadata.generation;
    Ok(namespace
        .wait_for(&redises, name, "Ready", TIMEOUT, move |redis: &Redis| {
            redis.status.as_ref().is_some_and(|status| {
                status.phase == Phase::Ready && status.observed_generation == generation
            })
        })
        .await?)
}

async fn patch_spec(namespace: &TestNamespace, name: &str, spec: Value) -> Result<()> {
    let patch = json!({ "spec": spec });
    namespace
        .api::<Redis>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

fn template_annotation(stateful_set: &StatefulSet, key: &str) -> Option<String> {
    stateful_set
        .spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

#[tokio::test]
async fn the_seed_manifest_becomes_ready_and_changes_roll_out() -> Result<()> {
    let namespace = TestNamespace::create("redis-seed").await?;
    let operator = start(&namespace).await?;
    // The example is applied as a user would: unchanged.
    namespace
        .api::<Redis>()
        .create(&PostParams::default(), &seed()?)
        .await?;
    let redis = wait_ready(&namespace, "redis-standalone").await?;
    let status = redis.status.context("no status")?;
    let expected_endpoint = format!("redis-standalone.{}.svc:6379", namespace.name());
    ensure!(
        status.endpoint.as_deref() == Some(expected_endpoint.as_str()),
        "{status:?}"
    );
    let ready = find_condition(&status.conditions, READY).context("no Ready condition")?;
    ensure!(ready.reason == "ServerReady", "{ready:?}");
    let claim = namespace
        .api::<PersistentVolumeClaim>()
        .get("data-redis-standalone-0")
        .await?;
    ensure!(
        claim.status.and_then(|status| status.phase).as_deref() == Some("Bound"),
        "the data claim is not bound"
    );
    namespace
        .api::<Service>()
        .get("redis-standalone-headless")
        .await?;
    namespace
        .api::<ConfigMap>()
        .get("redis-standalone-config")
        .await?;

    // An image change rolls the pod and the resource is Ready again on the new revision.
    let stateful_sets = namespace.api::<StatefulSet>();
    patch_spec(
        &namespace,
        "redis-standalone",
        json!({ "kubernetesConfig": { "image": "redis:7.4" } }),
    )
    .await?;
    wait_ready(&namespace, "redis-standalone").await?;
    let rolled = stateful_sets.get("redis-standalone").await?;
    ensure!(
        rolled
            .spec
            .template
            .spec
            .as_ref()
            .is_some_and(|pod| pod.containers[0].image.as_deref() == Some("redis:7.4"))
    );
    let revisions = rolled.status.clone().context("no StatefulSet status")?;
    ensure!(
        revisions.current_revision == revisions.update_revision,
        "the rollout did not finish"
    );

    // A redis.conf change gives the pod template a new config hash.
    let before = template_annotation(&rolled, CONFIG_HASH_ANNOTATION).context("no config hash")?;
    patch_spec(
        &namespace,
        "redis-standalone",
        json!({ "redisConfig": { "additionalConfig": ["maxmemory 64mb"] } }),
    )
    .await?;
    let changed = namespace
        .wait_for(
            &stateful_sets,
            "redis-standalone",
            "given a new config hash",
            TIMEOUT,
            |stateful_set: &StatefulSet| {
                template_annotation(stateful_set, CONFIG_HASH_ANNOTATION)
                    .is_some_and(|hash| hash != before)
            },
        )
        .await?;
    ensure!(template_annotation(&changed, CONFIG_HASH_ANNOTATION) != Some(before));
    let config = namespace
        .api::<ConfigMap>()
        .get("redis-standalone-config")
        .await?;
    ensure!(config.data.context("no data")?["redis.conf"].contains("maxmemory 64mb"));
    wait_ready(&namespace, "redis-standalone").await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// The seed's Redis as `cache`, without storage, once Ready.
async fn create_ready_cache(namespace: &TestNamespace) -> Result<Redis> {
    let mut redis = seed()?;
    redis.metadata.name = Some("cache".to_owned());
    redis.spec.pod.storage = None;
    namespace
        .api::<Redis>()
        .create(&PostParams::default(), &redis)
        .await?;
    wait_ready(namespace, "cache").await
}

#[tokio::test]
async fn the_exporter_comes_and_goes_and_drift_is_reverted() -> Result<()> {
    let namespace = TestNamespace::create("redis-exporter").await?;
    let operator = start(&namespace).await?;
    create_ready_cache(&namespace).await?;
    let stateful_sets = namespace.api::<StatefulSet>();
    let services = namespace.api::<Service>();
    let has_sidecar = |stateful_set: &StatefulSet| {
        stateful_set
            .spec
            .template
            .spec
            .as_ref()
            .is_some_and(|pod| pod.containers.iter().any(|c| c.name == "redis-exporter"))
    };
    let metrics_ports = |service: &Service| {
        service
            .spec
            .as_ref()
            .and_then(|spec| spec.ports.as_ref())
            .map_or(0, |ports| {
                ports
                    .iter()
                    .filter(|port| port.name.as_deref() == Some("metrics"))
                    .count()
            })
    };

    patch_spec(
        &namespace,
        "cache",
        json!({ "redisExporter": { "enabled": true } }),
    )
    .await?;
    namespace
        .wait_for(
            &stateful_sets,
            "cache",
            "given the exporter",
            TIMEOUT,
            has_sidecar,
        )
        .await?;
    namespace
        .wait_for(
            &services,
            "cache",
            "given the metrics port",
            TIMEOUT,
            |s: &Service| metrics_ports(s) == 1,
        )
        .await?;
    wait_ready(&namespace, "cache").await?;
    patch_spec(
        &namespace,
        "cache",
        json!({ "redisExporter": { "enabled": false } }),
    )
    .await?;
    namespace
        .wait_for(
            &stateful_sets,
            "cache",
            "rid of the exporter",
            TIMEOUT,
            |s: &StatefulSet| !has_sidecar(s),
        )
        .await?;
    namespace
        .wait_for(
            &services,
            "cache",
            "rid of the metrics port",
            TIMEOUT,
            |s: &Service| metrics_ports(s) == 0,
        )
        .await?;

    // Scaling the StatefulSet by hand is drift: the operator puts it back to one replica.
    let scale = json!({ "spec": { "replicas": 3 } });
    stateful_sets
        .patch("cache", &PatchParams::default(), &Patch::Merge(&scale))
        .await?;
    namespace
        .wait_for(
            &stateful_sets,
            "cache",
            "scaled back to 1",
            TIMEOUT,
            |stateful_set: &StatefulSet| stateful_set.spec.replicas == Some(1),
        )
        .await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn the_network_policy_comes_and_goes() -> Result<()> {
    let namespace = TestNamespace::create("redis-network-policy").await?;
    let operator = start(&namespace).await?;
    create_ready_cache(&namespace).await?;
    let policies = namespace.api::<NetworkPolicy>();
    ensure!(
        policies.get_opt("cache").await?.is_none(),
        "a NetworkPolicy by default"
    );
    patch_spec(
        &namespace,
        "cache",
        json!({ "networkPolicy": { "enabled": true, "clientPodLabels": { "role": "web" } } }),
    )
    .await?;
    // The API server took it as the operator built it: Redis for the client pods, the
    // Redis's own pods and the operator.
    let policy = namespace
        .wait_for(
            &policies,
            "cache",
            "created",
            TIMEOUT,
            |_: &NetworkPolicy| true,
        )
        .await?;
    let spec = policy.spec.context("no spec")?;
    let rule = &spec.ingress.as_deref().unwrap_or_default()[0];
    let peers = rule.from.as_deref().unwrap_or_default();
    ensure!(peers.len() == 3, "{peers:?}");
    ensure!(
        peers[0]
            .pod_selector
            .as_ref()
            .and_then(|selector| selector.match_labels.as_ref())
            == Some(&BTreeMap::from([("role".to_owned(), "web".to_owned())])),
        "{peers:?}"
    );
    let ports: Vec<_> = rule
        .ports
        .iter()
        .flatten()
        .map(|port| port.port.clone())
        .collect();
    ensure!(ports == [Some(IntOrString::Int(6379))], "{ports:?}");
    wait_ready(&namespace, "cache").await?;
    patch_spec(
        &namespace,
        "cache",
        json!({ "networkPolicy": { "enabled": false } }),
    )
    .await?;
    namespace
        .wait_for_deletion(&policies, "cache", TIMEOUT)
        .await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_secret_is_reported_once_and_recovered_from() -> Result<()> {
    let namespace = TestNamespace::create("redis-secret").await?;
    let operator = start(&namespace).await?;
    let mut redis = seed()?;
    redis.metadata.name = Some("guarded".to_owned());
    redis.spec.pod.storage = None;
    redis.spec.pod.kubernetes_config.redis_secret = Some(serde_json::from_value(
        json!({ "name": "redis-auth", "key": "password" }),
    )?);
    namespace
        .api::<Redis>()
        .create(&PostParams::default(), &redis)
        .await?;
    let redises = namespace.api::<Redis>();
    let failed = namespace
        .wait_for(
            &redises,
            "guarded",
            "failed for the missing Secret",
            TIMEOUT,
            |redis: &Redis| {
                redis.status.as_ref().is_some_and(|status| {
                    find_condition(&status.conditions, READY)
                        .is_some_and(|ready| ready.reason == "SecretNotFound")
                })
            },
        )
        .await?;
    ensure!(
        failed
            .status
            .as_ref()
            .is_some_and(|status| status.phase == Phase::Failed)
    );
    // No retry storm: the error waits for a change, so the event is published once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = namespace.api::<Event>();
    let warnings = events
        .list(&ListParams::default().fields("involvedObject.name=guarded,reason=SecretNotFound"))
        .await?;
    ensure!(
        warnings.items.len() == 1,
        "expected one SecretNotFound event, found {}: {:#?}",
        warnings.items.len(),
        warnings
            .items
            .iter()
            .map(|event| (
                &event.metadata.name,
                &event.message,
                &event.count,
                &event.event_time,
                &event.reporting_instance
            ))
            .collect::<Vec<_>>()
    );
    let warning = &warnings.items[0];
    ensure!(warning.type_.as_deref() == Some("Warning"));
    ensure!(
        warning.count.unwrap_or(1) == 1 && warning.series.is_none(),
        "the failure was retried: {warning:?}"
    );
    ensure!(
        namespace
            .api::<StatefulSet>()
            .get_opt("guarded")
            .await?
            .is_none(),
        "a pod was started without its Secret"
    );

    namespace
        .create_secret("redis-auth", "password", "hunter2-long-enough")
        .await?;
    wait_ready(&namespace, "guarded").await?;
    // The password is never copied into objects, status or events.
    let mut everything = serde_json::to_string(&namespace.api::<Redis>().get("guarded").await?)?;
    everything += &serde_json::to_string(&namespace.api::<StatefulSet>().get("guarded").await?)?;
    everything += &serde_json::to_string(
        &namespace
            .api::<ConfigMap>()
            .list(&ListParams::default())
            .await?,
    )?;
    everything += &serde_json::to_string(&events.list(&ListParams::default()).await?)?;
    ensure!(
        !everything.contains("hunter2"),
        "the password leaked into an object"
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// A change the API server refuses for a child — the claim template of an existing StatefulSet
/// cannot change — is reported in the server's own words (Ready=False, reason `ApplyFailed`, no
/// debug dump) with exactly one Warning event, and is not retried until the spec changes: then
/// the Redis is Ready again.
#[tokio::test]
async fn a_child_the_api_server_refuses_is_reported_once_in_its_words() -> Result<()> {
    let namespace = TestNamespace::create("redis-refused").await?;
    let operator = start(&namespace).await?;
    let redises = namespace.api::<Redis>();
    redises.create(&PostParams::default(), &seed()?).await?;
    wait_ready(&namespace, "redis-standalone").await?;
    let failed_reconciles = || {
        operator
            .metrics()
            .reconcile_count("redis", operator_kit::admin::ReconcileResult::Error)
    };
    let failures_before = failed_reconciles();
    // Label keys are the API server's to judge (a prefix, a name, their lengths): the CRD leaves
    // nodeSelector free, and the StatefulSet apply is refused.
    patch_spec(
        &namespace,
        "redis-standalone",
        json!({ "nodeSelector": { "disk type": "ssd" } }),
    )
    .await?;
    let failed = namespace
        .wait_for(
            &redises,
            "redis-standalone",
            "failed to apply",
            TIMEOUT,
            |redis: &Redis| {
                redis.status.as_ref().is_some_and(|status| {
                    find_condition(&status.conditions, READY)
                        .is_some_and(|ready| ready.reason == "ApplyFailed")
                })
            },
        )
        .await?;
    let status = failed.status.context("no status")?;
    let message = find_condition(&status.conditions, READY)
        .context("no Ready condition")?
        .message
        .clone();
    ensure!(
        message.starts_with("failed to apply StatefulSet \"redis-standalone\": ")
            && message.contains("nodeSelector")
            && message.ends_with("(Invalid, HTTP 422)"),
        "{message}"
    );
    ensure!(
        !message.contains("Status {") && !message.contains("ListMeta"),
        "a debug dump: {message}"
    );
    ensure!(status.phase == Phase::Failed, "{:?}", status.phase);
    // Not retried: nothing can be waited for here, so the operator is given two seconds in
    // which a retry (the first backoff step is well under a second) would show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warnings = namespace
        .api::<Event>()
        .list(
            &ListParams::default()
                .fields("involvedObject.name=redis-standalone,reason=ApplyFailed"),
        )
        .await?;
    ensure!(
        warnings.items.len() == 1,
        "expected one ApplyFailed event, found {}",
        warnings.items.len()
    );
    let warning = &warnings.items[0];
    ensure!(
        warning.count.unwrap_or(1) == 1 && warning.series.is_none(),
        "the refusal was retried: {warning:?}"
    );
    ensure!(warning.message.as_deref() == Some(message.as_str()));
    // One for the change, one for the watch event of the status the first one wrote (it is
    // then already written, so nothing changes and nothing follows).
    let failures = failed_reconciles() - failures_before;
    ensure!(failures <= 2, "{failures} failed reconciles");

    patch_spec(
        &namespace,
        "redis-standalone",
        json!({ "nodeSelector": null }),
    )
    .await?;
    wait_ready(&namespace, "redis-standalone").await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// A password that cannot work (`echo pw | base64` leaves a line break at its end) is reported
/// in the status and once as an event, in words and without the password, and no pod is
/// started to crash-loop on it; fixing the Secret makes the Redis Ready.
#[tokio::test]
async fn a_password_with_a_line_break_is_reported_not_crash_looped() -> Result<()> {
    let namespace = TestNamespace::create("redis-password").await?;
    let operator = start(&namespace).await?;
    let secret = |password: &str| Secret {
        metadata: ObjectMeta {
            name: Some("redis-auth".to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_owned(),
            ByteString(password.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    let secrets = namespace.api::<Secret>();
    secrets
        .create(&PostParams::default(), &secret("hunter2-long\n"))
        .await?;
    let mut redis = seed()?;
    redis.metadata.name = Some("newline".to_owned());
    redis.spec.pod.kubernetes_config.redis_secret = Some(serde_json::from_value(
        json!({ "name": "redis-auth", "key": "password" }),
    )?);
    let redises = namespace.api::<Redis>();
    redises.create(&PostParams::default(), &redis).await?;
    let failed = namespace
        .wait_for(
            &redises,
            "newline",
            "refused for its password",
            TIMEOUT,
            |redis: &Redis| {
                redis.status.as_ref().is_some_and(|status| {
                    find_condition(&status.conditions, READY)
                        .is_some_and(|ready| ready.reason == "PasswordUnusable")
                })
            },
        )
        .await?;
    let status = failed.status.context("no status")?;
    let message = &find_condition(&status.conditions, READY)
        .context("no Ready condition")?
        .message;
    ensure!(
        message.contains("ends with a line break") && !message.contains("hunter2"),
        "{message}"
    );
    ensure!(status.phase == Phase::Failed);
    // The runtime publishes the event once the reconcile has returned, after the status.
    let events = namespace.api::<Event>();
    let selector =
        ListParams::default().fields("involvedObject.name=newline,reason=PasswordUnusable");
    let listed = || events.list(&selector);
    let started = std::time::Instant::now();
    while listed().await?.items.is_empty() && started.elapsed() < TIMEOUT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let published = listed().await?.items;
    ensure!(published.len() == 1, "{} events", published.len());
    ensure!(
        published[0].count.unwrap_or(1) == 1
            && !published[0]
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("hunter2")
    );
    ensure!(
        namespace
            .api::<StatefulSet>()
            .get_opt("newline")
            .await?
            .is_none(),
        "a pod was started with the unusable password"
    );
    secrets
        .replace(
            "redis-auth",
            &PostParams::default(),
            &secret("hunter2-long"),
        )
        .await?;
    wait_ready(&namespace, "newline").await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// Whether `claim` lists the object with `uid` among its owners.
fn owned_by(claim: &PersistentVolumeClaim, uid: Option<&String>) -> bool {
    claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| Some(&owner.uid) == uid)
}

/// Deleting a Redis deletes its claim unless `keepAfterDelete` is set. The claims do not rely on
/// the StatefulSet's retention policy alone (its owner reference can be lost to a race when
/// the set is deleted right after it created the claim): the Redis becomes their owner too,
/// and stops being one when `keepAfterDelete` is turned on.
#[tokio::test]
async fn deleting_removes_everything_and_keep_after_delete_keeps_the_data() -> Result<()> {
    let namespace = TestNamespace::create("redis-delete").await?;
    let operator = start(&namespace).await?;
    let redises = namespace.api::<Redis>();
    for name in ["ephemeral", "precious"] {
        let mut redis = seed()?;
        redis.metadata.name = Some(name.to_owned());
        redises.create(&PostParams::default(), &redis).await?;
    }
    wait_ready(&namespace, "ephemeral").await?;
    wait_ready(&namespace, "precious").await?;
    let claims = namespace.api::<PersistentVolumeClaim>();
    for name in ["ephemeral", "precious"] {
        let uid = redises.get(name).await?.metadata.uid;
        namespace
            .wait_for(
                &claims,
                &format!("data-{name}-0"),
                &format!("owned by Redis {name:?}"),
                TIMEOUT,
                |claim| owned_by(claim, uid.as_ref()),
            )
            .await?;
    }
    // What a lost race in the StatefulSet controller leaves behind: a claim without the set's
    // owner reference (kubernetes/kubernetes#142130). The Redis's own reference still
    // deletes it below.
    let claim = claims.get("data-ephemeral-0").await?;
    let set_reference = claim
        .metadata
        .owner_references
        .iter()
        .flatten()
        .position(|owner| owner.kind == "StatefulSet");
    if let Some(index) = set_reference {
        let strip: json_patch::Patch = serde_json::from_value(json!([
            { "op": "test", "path": format!("/metadata/ownerReferences/{index}/kind"), "value": "StatefulSet" },
            { "op": "remove", "path": format!("/metadata/ownerReferences/{index}") },
        ]))?;
        claims
            .patch(
                "data-ephemeral-0",
                &PatchParams::default(),
                &Patch::Json::<()>(strip),
            )
            .await?;
    }

    // Turning keepAfterDelete on takes the Redis off the claim's owners, and the StatefulSet
    // controller takes the set off (its retention policy becomes Retain): nothing owns it.
    let keep = json!({ "spec": { "storage": { "keepAfterDelete": true } } });
    redises
        .patch("precious", &PatchParams::default(), &Patch::Merge(&keep))
        .await?;
    namespace
        .wait_for(
            &claims,
            "data-precious-0",
            "owned by nothing",
            TIMEOUT,
            |claim| {
                claim
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_none_or(Vec::is_empty)
            },
        )
        .await?;
    wait_ready(&namespace, "precious").await?;

    for name in ["ephemeral", "precious"] {
        redises.delete(name, &DeleteParams::default()).await?;
        namespace
            .wait_for_deletion(&namespace.api::<StatefulSet>(), name, TIMEOUT)
            .await?;
        namespace
            .wait_for_deletion(&namespace.api::<Service>(), name, TIMEOUT)
            .await?;
        namespace
            .wait_for_deletion(
                &namespace.api::<ConfigMap>(),
                &format!("{name}-config"),
                TIMEOUT,
            )
            .await?;
    }
    namespace
        .wait_for_deletion(&claims, "data-ephemeral-0", TIMEOUT)
        .await?;
    let kept = claims.get_opt("data-precious-0").await?;
    ensure!(
        kept.is_some_and(|claim| claim.metadata.deletion_timestamp.is_none()),
        "keepAfterDelete lost the claim"
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// Each manifest breaks one rule; the API server must refuse it with a message naming the field.
#[tokio::test]
async fn invalid_manifests_are_rejected_with_the_field_named() -> Result<()> {
    let namespace = TestNamespace::create("redis-invalid").await?;
    for crd in redis_operator::crds() {
        testing::install_crd(namespace.client(), &crd, TIMEOUT).await?;
    }
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        namespace.client().clone(),
        namespace.name(),
        &kube::api::ApiResource::erase::<Redis>(&()),
    );
    let cases: [(&str, Value, &str); 18] = [
        (
            "empty image",
            json!({ "kubernetesConfig": { "image": "" } }),
            "kubernetesConfig.image",
        ),
        (
            "pull policy",
            json!({ "kubernetesConfig": { "image": "redis", "imagePullPolicy": "Sometimes" } }),
            "imagePullPolicy",
        ),
        (
            "service type",
            json!({ "kubernetesConfig": { "image": "redis", "serviceType": "Ingress" } }),
            "serviceType",
        ),
        (
            "secret name",
            json!({ "kubernetesConfig": { "image": "redis", "redisSecret": { "name": "", "key": "p" } } }),
            "redisSecret.name",
        ),
        (
            "secret key",
            json!({ "kubernetesConfig": { "image": "redis", "redisSecret": { "name": "s", "key": "a b" } } }),
            "redisSecret.key",
        ),
        (
            "exporter port",
            json!({ "kubernetesConfig": { "image": "redis" }, "redisExporter": { "enabled": true, "port": 70000 } }),
            "redisExporter.port",
        ),
        (
            "password in config",
            json!({ "kubernetesConfig": { "image": "redis" }, "redisConfig": { "additionalConfig": ["requirepass x"] } }),
            "redisConfig.additionalConfig",
        ),
        (
            "storage size",
            json!({ "kubernetesConfig": { "image": "redis" }, "storage": { "volumeClaimTemplate": { "spec": { "accessModes": ["ReadWriteOnce"] } } } }),
            "requests.storage",
        ),
        (
            "keep flag type",
            json!({ "kubernetesConfig": { "image": "redis" }, "storage": { "keepAfterDelete": "yes", "volumeClaimTemplate": { "spec": { "resources": { "requests": { "storage": "1Gi" } } } } } }),
            "keepAfterDelete",
        ),
        (
            "probe period",
            json!({ "kubernetesConfig": { "image": "redis" }, "readinessProbe": { "periodSeconds": 0 } }),
            "periodSeconds",
        ),
        (
            "priority class",
            json!({ "kubernetesConfig": { "image": "redis" }, "priorityClassName": "Not_Valid" }),
            "priorityClassName",
        ),
        (
            "missing kubernetesConfig",
            json!({ "storage": null }),
            "kubernetesConfig",
        ),
        // The issue's own example: admitted before, then a 500 on the StatefulSet apply.
        (
            "cpu request",
            json!({ "kubernetesConfig": { "image": "redis", "resources": { "requests": { "cpu": "lots" } } } }),
            "kubernetesConfig.resources",
        ),
        (
            "memory limit",
            json!({ "kubernetesConfig": { "image": "redis", "resources": { "limits": { "memory": "1 GB" } } } }),
            "kubernetesConfig.resources",
        ),
        (
            "exporter resources",
            json!({ "kubernetesConfig": { "image": "redis" }, "redisExporter": { "enabled": true, "resources": { "requests": { "memory": "-x" } } } }),
            "redisExporter.resources",
        ),
        (
            "exporter on the sentinel port",
            json!({ "kubernetesConfig": { "image": "redis" }, "redisExporter": { "enabled": true, "port": 26379 } }),
            "redisExporter.port",
        ),
        // Redis unquotes `"requirepass"`: a quoted directive would slip past the list above.
        (
            "quoted directive",
            json!({ "kubernetesConfig": { "image": "redis" }, "redisConfig": { "additionalConfig": ["\"requirepass\" hunter2"] } }),
            "directives must not be quoted",
        ),
        (
            "storage quantity",
            json!({ "kubernetesConfig": { "image": "redis" }, "storage": { "volumeClaimTemplate": { "spec": { "resources": { "requests": { "storage": "big" } } } } } }),
            "requests.storage must be a quantity",
        ),
    ];
    let mut failures = Vec::new();
    for (case, spec, field) in cases {
        let object: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "redis.operator-kit.io/v1beta1", "kind": "Redis",
            "metadata": { "name": format!("invalid-{}", case.replace(' ', "-").to_lowercase()) },
            "spec": spec,
        }))?;
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => failures.push(format!("{case}: accepted")),
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(field) =>
            {
                eprintln!("rejected ({case}): {}", status.message);
            }
            Err(error) => failures.push(format!(
                "{case}: expected a 422 naming {field:?}, got {error}"
            )),
        }
    }
    for (case, name) in [("dot in name", "cache.v2"), ("leading digit", "2cache")] {
        let object = json!({
            "apiVersion": "redis.operator-kit.io/v1beta1", "kind": "Redis",
            "metadata": { "name": name }, "spec": { "kubernetesConfig": { "image": "redis" } },
        });
        match api
            .create(&PostParams::default(), &serde_json::from_value(object)?)
            .await
        {
            Err(kube::Error::Api(status))
                if status.code == 422
                    && status
                        .message
                        .contains("metadata.name must start with a lowercase letter") =>
            {
                eprintln!("rejected ({case}): {}", status.message);
            }
            other => failures.push(format!("{case}: {other:?}")),
        }
    }
    // Changes a StatefulSet cannot take are refused as updates, not accepted and failed forever.
    let with_storage: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "redis.operator-kit.io/v1beta1", "kind": "Redis",
        "metadata": { "name": "with-storage" },
        "spec": { "kubernetesConfig": { "image": "redis" }, "storage": { "volumeClaimTemplate": { "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } } } } },
    }))?;
    api.create(&PostParams::default(), &with_storage).await?;
    let updates = [
        (
            "storage size change",
            json!({ "spec": { "storage": { "volumeClaimTemplate": { "spec": { "resources": { "requests": { "storage": "2Gi" } } } } } } }),
            "spec.storage.volumeClaimTemplate cannot change",
        ),
        (
            "storage removal",
            json!({ "spec": { "storage": null } }),
            "spec.storage cannot be added or removed",
        ),
    ];
    for (case, patch, message) in updates {
        match api
            .patch(
                "with-storage",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(message) =>
            {
                eprintln!("rejected ({case}): {}", status.message);
            }
            other => failures.push(format!("{case}: {other:?}")),
        }
    }
    // What can change still does: keepAfterDelete is the StatefulSet's retention policy.
    let keep = json!({ "spec": { "storage": { "keepAfterDelete": true } } });
    if let Err(error) = api
        .patch(
            "with-storage",
            &PatchParams::default(),
            &Patch::Merge(&keep),
        )
        .await
    {
        failures.push(format!("keepAfterDelete change refused: {error}"));
    }
    let too_long = json!({
        "apiVersion": "redis.operator-kit.io/v1beta1", "kind": "Redis",
        "metadata": { "name": "x".repeat(53) }, "spec": { "kubernetesConfig": { "image": "redis" } },
    });
    match api
        .create(&PostParams::default(), &serde_json::from_value(too_long)?)
        .await
    {
        Err(kube::Error::Api(status))
            if status.message.contains("metadata.name must be at most 52") => {}
        other => failures.push(format!("long name: {other:?}")),
    }
    ensure!(
        failures.is_empty(),
        "invalid manifests not rejected as they should be:\n{}",
        failures.join("\n")
    );
    namespace.delete().await?;
    Ok(())
}

/// The Ready condition's reason and message, once the reason is `reason`.
async fn wait_reason<K>(
    namespace: &TestNamespace,
    name: &str,
    reason: &'static str,
) -> Result<String>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize
        + Send
        + Sync
        + 'static,
{
    let api = namespace.api::<K>();
    let object = namespace
        .wait_for(&api, name, reason, TIMEOUT, move |object: &K| {
            ready_condition(object).is_some_and(|(found, _)| found == reason)
        })
        .await?;
    Ok(ready_condition(&object)
        .map(|(_, message)| message)
        .unwrap_or_default())
}

/// The Ready condition of any of our kinds, read from its JSON.
fn ready_condition<K: serde::Serialize>(object: &K) -> Option<(String, String)> {
    let value = serde_json::to_value(object).ok()?;
    let conditions = value.pointer("/status/conditions")?.as_array()?;
    let ready = conditions
        .iter()
        .find(|condition| condition["type"] == "Ready")?;
    Some((
        ready["reason"].as_str()?.to_owned(),
        ready["message"].as_str()?.to_owned(),
    ))
}

#[tokio::test]
async fn a_user_object_with_a_child_name_is_left_untouched_and_reported() -> Result<()> {
    let namespace = TestNamespace::create("redis-taken-name").await?;
    let operator = start(&namespace).await?;
    let config_maps = namespace.api::<ConfigMap>();
    let mine: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "redis-standalone-config" },
        "data": { "mine": "yes" },
    }))?;
    let mine = config_maps.create(&PostParams::default(), &mine).await?;
    namespace
        .api::<Redis>()
        .create(&PostParams::default(), &seed()?)
        .await?;
    let message = wait_reason::<Redis>(&namespace, "redis-standalone", "NameConflict").await?;
    eprintln!("reported: {message}");
    ensure!(
        message.starts_with("failed to apply ConfigMap \"redis-standalone-config\": it already exists and was not made by \"redis-operator\""),
        "{message}"
    );
    // Retried with backoff (the other object may go), yet reported once.
    let failed = || {
        operator
            .metrics()
            .reconcile_count("redis", operator_kit::admin::ReconcileResult::Error)
    };
    testing::wait_until("three failed reconciles", TIMEOUT, || failed() >= 3).await?;
    let after = config_maps.get("redis-standalone-config").await?;
    ensure!(
        after.metadata.resource_version == mine.metadata.resource_version,
        "the user's ConfigMap was written: {after:?}"
    );
    ensure!(after.metadata.owner_references.is_none() && after.metadata.labels.is_none());
    ensure!(
        namespace
            .api::<StatefulSet>()
            .get_opt("redis-standalone")
            .await?
            .is_none(),
        "the Redis went on past the conflict"
    );
    let events = namespace
        .api::<Event>()
        .list(
            &ListParams::default()
                .fields("involvedObject.name=redis-standalone,reason=NameConflict"),
        )
        .await?;
    ensure!(
        events.items.len() == 1 && events.items[0].count.unwrap_or(1) == 1,
        "expected one NameConflict event after {} failed reconciles: {:?}",
        failed(),
        events.items
    );
    // Once the user's object goes, the Redis takes the name.
    config_maps
        .delete("redis-standalone-config", &DeleteParams::default())
        .await?;
    wait_ready(&namespace, "redis-standalone").await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn a_redis_and_a_redis_sentinel_of_one_name_share_nothing() -> Result<()> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use redis_operator::v1beta1::RedisSentinel;
    let namespace = TestNamespace::create("redis-same-name").await?;
    let operator = namespace
        .start_operator(
            redis_operator::OPERATOR_NAME,
            &redis_operator::crds(),
            |operator| {
                operator
                    .with_controller(redis_operator::redis_controller())
                    .with_controller(redis_operator::redis_sentinel_controller())
            },
        )
        .await?;
    let redis = |name: &str| -> Result<Redis> {
        let mut redis = seed()?;
        redis.metadata.name = Some(name.to_owned());
        Ok(redis)
    };
    let sentinel = |name: &str| -> Result<RedisSentinel> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "redis.operator-kit.io/v1beta1", "kind": "RedisSentinel",
            "metadata": { "name": name },
            "spec": { "kubernetesConfig": { "image": "redis:7" } },
        }))?)
    };
    let versions = |names: Vec<(&'static str, String)>| {
        let namespace = &namespace;
        async move {
            let mut versions = Vec::new();
            for (kind, name) in names {
                // A StatefulSet's status moves on as its pods start: its spec's generation
                // tells a write of ours; the others have no status that changes.
                let (meta, version) = match kind {
                    "ConfigMap" => {
                        let meta = namespace.api::<ConfigMap>().get(&name).await?.metadata;
                        let version = meta.resource_version.clone();
                        (meta, version)
                    }
                    "Service" => {
                        let meta = namespace.api::<Service>().get(&name).await?.metadata;
                        let version = meta.resource_version.clone();
                        (meta, version)
                    }
                    _ => {
                        let meta = namespace.api::<StatefulSet>().get(&name).await?.metadata;
                        let version = meta.generation.map(|generation| generation.to_string());
                        (meta, version)
                    }
                };
                let owners: Vec<_> = meta
                    .owner_references
                    .unwrap_or_default()
                    .into_iter()
                    .map(|owner| owner.kind)
                    .collect();
                versions.push((kind, name, version, owners));
            }
            anyhow::Ok(versions)
        }
    };

    // A Redis first: the RedisSentinel of its name stops at the first shared name.
    namespace
        .api::<Redis>()
        .create(&PostParams::default(), &redis("shared")?)
        .await?;
    wait_ready(&namespace, "shared").await?;
    // The children both kinds would name alike, and the StatefulSet of each.
    let children = |name: &str, stateful_set: &str| {
        vec![
            ("ConfigMap", format!("{name}-config")),
            ("Service", name.to_owned()),
            ("Service", format!("{name}-headless")),
            ("StatefulSet", stateful_set.to_owned()),
        ]
    };
    let redis_children = || children("shared", "shared");
    let before = versions(redis_children()).await?;
    namespace
        .api::<RedisSentinel>()
        .create(&PostParams::default(), &sentinel("shared")?)
        .await?;
    let message = wait_reason::<RedisSentinel>(&namespace, "shared", "NameConflict").await?;
    eprintln!("reported: {message}");
    ensure!(
        message.contains("ConfigMap \"shared-config\": it is controlled by Redis \"shared\""),
        "{message}"
    );
    ensure!(
        versions(redis_children()).await? == before,
        "the Redis's children changed"
    );
    ensure!(
        before.iter().all(|(_, _, _, owners)| owners == &["Redis"]),
        "{before:?}"
    );
    for name in ["shared-node", "shared-master"] {
        ensure!(
            namespace
                .api::<StatefulSet>()
                .get_opt(name)
                .await?
                .is_none()
        );
        ensure!(namespace.api::<Service>().get_opt(name).await?.is_none());
    }
    let slices = namespace
        .api::<EndpointSlice>()
        .list(&ListParams::default().labels("kubernetes.io/service-name=shared"))
        .await?;
    let pods: Vec<_> = slices
        .items
        .iter()
        .flat_map(|slice| slice.endpoints.iter().flatten())
        .filter_map(|endpoint| endpoint.target_ref.as_ref()?.name.clone())
        .collect();
    ensure!(pods == ["shared-0"], "the Redis Service selects {pods:?}");

    // A RedisSentinel first: the Redis of its name is the one refused.
    namespace
        .api::<RedisSentinel>()
        .create(&PostParams::default(), &sentinel("other")?)
        .await?;
    namespace
        .wait_for(
            &namespace.api::<StatefulSet>(),
            "other-node",
            "created",
            TIMEOUT,
            |_: &StatefulSet| true,
        )
        .await?;
    let sentinel_children = || children("other", "other-node");
    let before = versions(sentinel_children()).await?;
    namespace
        .api::<Redis>()
        .create(&PostParams::default(), &redis("other")?)
        .await?;
    let message = wait_reason::<Redis>(&namespace, "other", "NameConflict").await?;
    eprintln!("reported: {message}");
    ensure!(
        message.contains("controlled by RedisSentinel \"other\""),
        "{message}"
    );
    ensure!(
        versions(sentinel_children()).await? == before,
        "the RedisSentinel's children changed"
    );
    ensure!(
        namespace
            .api::<StatefulSet>()
            .get_opt("other")
            .await?
            .is_none()
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn fields_removed_from_the_spec_leave_the_statefulset_and_quantities_do_not_churn()
-> Result<()> {
    let namespace = TestNamespace::create("redis-removals").await?;
    let operator = start(&namespace).await?;
    let mut redis = seed()?;
    redis.spec.pod.node_selector = Some(BTreeMap::from([("type".to_owned(), "kwok".to_owned())]));
    redis.spec.pod.tolerations = Some(vec![serde_json::from_value(json!({
        "key": "example.com/dedicated", "operator": "Exists", "effect": "NoSchedule",
    }))?]);
    // The API server writes these back as 500m and 1Gi.
    redis.spec.pod.kubernetes_config.resources = Some(serde_json::from_value(json!({
        "requests": { "cpu": "0.5", "memory": "1024Mi" },
    }))?);
    namespace
        .api::<Redis>()
        .create(&PostParams::default(), &redis)
        .await?;
    wait_ready(&namespace, "redis-standalone").await?;
    let stateful_sets = namespace.api::<StatefulSet>();
    let before = stateful_sets.get("redis-standalone").await?;
    let pod_spec = |set: &StatefulSet| set.spec.template.spec.clone();
    ensure!(
        pod_spec(&before)
            .and_then(|spec| spec.node_selector)
            .is_some()
    );
    let requests = pod_spec(&before)
        .and_then(|spec| spec.containers[0].resources.clone()?.requests)
        .unwrap_or_default();
    ensure!(
        requests.get("memory").map(|q| q.0.as_str()) == Some("1Gi"),
        "the API server kept {requests:?}"
    );

    // A reconcile of the converged Redis (a label change triggers one) writes nothing.
    let succeeded = || {
        operator
            .metrics()
            .reconcile_count("redis", operator_kit::admin::ReconcileResult::Success)
    };
    let reconciles = succeeded();
    let touch = json!({ "metadata": { "labels": { "touched": "yes" } } });
    namespace
        .api::<Redis>()
        .patch(
            "redis-standalone",
            &PatchParams::default(),
            &Patch::Merge(&touch),
        )
        .await?;
    testing::wait_until("a reconcile of the converged Redis", TIMEOUT, || {
        succeeded() > reconciles
    })
    .await?;
    let after = stateful_sets.get("redis-standalone").await?;
    ensure!(
        after.metadata.resource_version == before.metadata.resource_version,
        "a converged StatefulSet was written again (normalised quantities read as drift)"
    );

    // Removing fields removes them from the child.
    patch_spec(
        &namespace,
        "redis-standalone",
        json!({ "nodeSelector": null, "tolerations": null }),
    )
    .await?;
    wait_ready(&namespace, "redis-standalone").await?;
    let removed = pod_spec(&stateful_sets.get("redis-standalone").await?).context("no pod spec")?;
    ensure!(
        removed.node_selector.is_none(),
        "nodeSelector stayed: {:?}",
        removed.node_selector
    );
    ensure!(
        removed.tolerations.is_none(),
        "tolerations stayed: {:?}",
        removed.tolerations
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}
