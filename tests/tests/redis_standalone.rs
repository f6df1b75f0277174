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
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use operator_kit::conditions::{READY, find_condition};
use operator_kit::testing::{self, RunningOperator, TestNamespace};
use redis_operator::standalone::CONFIG_HASH_ANNOTATION;
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

#[tokio::test]
async fn the_exporter_comes_and_goes_and_drift_is_reverted() -> Result<()> {
    let namespace = TestNamespace::create("redis-exporter").await?;
    let operator = start(&namespace).await?;
    let mut redis = seed()?;
    redis.metadata.name = Some("cache".to_owned());
    redis.spec.pod.storage = None;
    namespace
        .api::<Redis>()
        .create(&PostParams::default(), &redis)
        .await?;
    wait_ready(&namespace, "cache").await?;
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

    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("redis-auth".to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_owned(),
            ByteString(b"hunter2-long-enough".to_vec()),
        )])),
        ..Secret::default()
    };
    namespace
        .api::<Secret>()
        .create(&PostParams::default(), &secret)
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
    let storage = |size: &str| {
        json!({ "storage": { "volumeClaimTemplate": { "spec": {
            "resources": { "requests": { "storage": size } }
        } } } })
    };
    let failed_reconciles = || {
        operator
            .metrics()
            .reconcile_count("redis", operator_kit::admin::ReconcileResult::Error)
    };
    let failures_before = failed_reconciles();
    patch_spec(&namespace, "redis-standalone", storage("2Gi")).await?;
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
            && message.contains("field is immutable")
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

    patch_spec(&namespace, "redis-standalone", storage("1Gi")).await?;
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
    let cases: [(&str, Value, &str); 16] = [
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
