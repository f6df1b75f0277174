//! The Helm chart, installed as a user would, and its RBAC proven by running the operator
//! binary out of cluster with nothing but the chart's ServiceAccount token: a Redis goes
//! through its whole lifecycle and a RedisSentinel gets its objects and status.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use operator_kit::testing::TestNamespace;
use operator_kit::testing::tools::{
    HelmRelease, OperatorProcess, enforce_restricted_pod_security, is_forbidden,
    service_account_kubeconfig,
};
use redis_operator::v1beta1::{Phase, Redis, RedisSentinel};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

/// Whether the chart's admission policy refused a request with `message`.
fn refused_by_policy<T: std::fmt::Debug>(result: kube::Result<T>, message: &str) -> Result<()> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 && status.message.contains(message) => {
            eprintln!("refused: {}", status.message);
            Ok(())
        }
        other => {
            anyhow::bail!("expected the admission policy to refuse with {message:?}, got {other:?}")
        }
    }
}

/// Waits until the chart's admission policy refuses `request`, made as a dry run so that it
/// changes nothing: the API server enforces a policy only once its watch has loaded it, a
/// moment after Helm created it. No watch tells when that is, so this asks every 100 ms.
async fn wait_for_policy<T, F>(message: &str, request: impl Fn() -> F) -> Result<()>
where
    T: std::fmt::Debug,
    F: std::future::Future<Output = kube::Result<T>>,
{
    let started = std::time::Instant::now();
    loop {
        match request().await {
            Err(kube::Error::Api(status))
                if status.code == 403 && status.message.contains(message) =>
            {
                return Ok(());
            }
            other if started.elapsed() > TIMEOUT => {
                anyhow::bail!("the admission policy was not in force after {TIMEOUT:?}: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charts/redis-operator")
}

#[tokio::test]
async fn namespace_scoped_chart_grants_exactly_what_a_redis_lifecycle_needs() -> Result<()> {
    let operator_namespace = TestNamespace::create("redis-chart-operator").await?;
    let watched = TestNamespace::create("redis-chart-watched").await?;
    let unrelated = TestNamespace::create("redis-chart-unrelated").await?;
    enforce_restricted_pod_security(&operator_namespace).await?;

    let release = HelmRelease::install(
        &chart(),
        "redis-operator",
        operator_namespace.name(),
        &[("watchNamespace", watched.name())],
    )?;

    // The objects a user gets: a Deployment that became available under the restricted
    // profile, a metrics Service, and a Role in the watched namespace instead of a ClusterRole.
    let deployment = operator_namespace
        .api::<Deployment>()
        .get("redis-operator")
        .await?;
    ensure!(
        deployment
            .status
            .as_ref()
            .and_then(|status| status.ready_replicas)
            == Some(1),
        "the operator's Deployment is not ready: {:?}",
        deployment.status
    );
    let pod = deployment.spec.template.spec.context("no pod spec")?;
    let container = &pod.containers[0];
    let security = container
        .security_context
        .clone()
        .context("no securityContext")?;
    ensure!(security.read_only_root_filesystem == Some(true));
    ensure!(security.allow_privilege_escalation == Some(false));
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .and_then(|probe| probe.http_get.as_ref())
            .and_then(|get| get.path.clone())
    };
    ensure!(probe_path(&container.liveness_probe).as_deref() == Some("/healthz"));
    ensure!(probe_path(&container.readiness_probe).as_deref() == Some("/readyz"));
    let watch_variable = container
        .env
        .iter()
        .flatten()
        .find(|variable| variable.name == "WATCH_NAMESPACE")
        .and_then(|variable| variable.value.clone());
    ensure!(watch_variable.as_deref() == Some(watched.name()));
    watched.api::<Role>().get("redis-operator").await?;
    let cluster_roles = Api::<ClusterRole>::all(watched.client().clone());
    ensure!(
        cluster_roles
            .get_opt(&format!("{}-redis-operator", operator_namespace.name()))
            .await?
            .is_none(),
        "a namespace-scoped install created a ClusterRole"
    );
    let manifest = release.manifest()?;
    ensure!(
        manifest.contains("kind: Service\n") && manifest.contains("name: redis-operator-metrics")
    );

    // What the ServiceAccount cannot do: read Secrets outside the namespace it watches.
    let (kubeconfig, account) =
        service_account_kubeconfig(operator_namespace.name(), "redis-operator").await?;
    let list = ListParams::default();
    ensure!(is_forbidden(
        &Api::<Secret>::namespaced(account.clone(), unrelated.name())
            .list(&list)
            .await
    ));
    ensure!(is_forbidden(
        &Api::<Secret>::namespaced(account.clone(), operator_namespace.name())
            .list(&list)
            .await
    ));
    ensure!(is_forbidden(
        &Api::<Secret>::all(account.clone()).list(&list).await
    ));
    ensure!(is_forbidden(
        &Api::<Redis>::all(account.clone()).list(&list).await
    ));

    // What it can do: the whole lifecycle of a Redis with a password, run by the real binary.
    let mut operator = OperatorProcess::spawn(
        PathBuf::from(env!("CARGO_BIN_EXE_redis-operator")).as_path(),
        &kubeconfig,
        &[
            "--watch-namespace",
            watched.name(),
            "--admin-address",
            "127.0.0.1:0",
        ],
    )?;
    watched
        .create_secret("redis-auth", "password", "not-a-real-password")
        .await?;
    let redis: Redis = serde_json::from_value(json!({
        "apiVersion": "redis.operator-kit.io/v1beta1",
        "kind": "Redis",
        "metadata": { "name": "cache" },
        "spec": {
            "kubernetesConfig": {
                "image": "redis:7.4",
                "redisSecret": { "name": "redis-auth", "key": "password" },
            },
            "storage": { "volumeClaimTemplate": { "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": { "requests": { "storage": "1Gi" } },
            } } },
        },
    }))?;
    let redises = watched.api::<Redis>();
    redises.create(&PostParams::default(), &redis).await?;
    let ready = watched
        .wait_for(&redises, "cache", "Ready", TIMEOUT, |redis: &Redis| {
            redis
                .status
                .as_ref()
                .is_some_and(|status| status.phase == Phase::Ready)
        })
        .await;
    operator.check_running()?;
    ready.with_context(|| format!("operator log:\n{}", operator.log()))?;
    watched.api::<StatefulSet>().get("cache").await?;
    // The data claim is the Redis's too (list + patch of claims), so it goes with it.
    let claims = watched.api::<PersistentVolumeClaim>();
    let uid = redises.get("cache").await?.metadata.uid;
    watched
        .wait_for(
            &claims,
            "data-cache-0",
            "owned by the Redis",
            TIMEOUT,
            |claim: &PersistentVolumeClaim| {
                claim
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|owner| Some(&owner.uid) == uid.as_ref())
            },
        )
        .await?;

    // What RBAC cannot narrow, the chart's admission policy does: the ServiceAccount may not
    // relabel a claim it manages (only its owner references, which it just did).
    let relabel = json!({ "metadata": { "labels": { "app.kubernetes.io/instance": "other" } } });
    let merge = |value: &serde_json::Value| Patch::Merge(value.clone());
    let account_claims = Api::<PersistentVolumeClaim>::namespaced(account.clone(), watched.name());
    let dry_run = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let relabel_patch = merge(&relabel);
    wait_for_policy("may change only the owner references of a claim", || {
        account_claims.patch("data-cache-0", &dry_run, &relabel_patch)
    })
    .await?;
    refused_by_policy(
        account_claims
            .patch("data-cache-0", &PatchParams::default(), &merge(&relabel))
            .await,
        "may change only the owner references of a claim",
    )?;

    redises.delete("cache", &DeleteParams::foreground()).await?;
    watched
        .wait_for_deletion(&redises, "cache", TIMEOUT)
        .await?;
    watched
        .wait_for_deletion(&watched.api::<StatefulSet>(), "cache", TIMEOUT)
        .await?;
    watched
        .wait_for_deletion(&claims, "data-cache-0", TIMEOUT)
        .await?;

    // A RedisSentinel through the same token: its objects, pod labels aside (kwok's pods run
    // no Redis for the operator to reach), and a status saying why it is not ready yet.
    let sentinel: RedisSentinel = serde_json::from_value(json!({
        "apiVersion": "redis.operator-kit.io/v1beta1",
        "kind": "RedisSentinel",
        "metadata": { "name": "ha" },
        "spec": { "kubernetesConfig": {
            "redisSecret": { "name": "redis-auth", "key": "password" },
        } },
    }))?;
    let sentinels = watched.api::<RedisSentinel>();
    sentinels.create(&PostParams::default(), &sentinel).await?;
    let reported = watched
        .wait_for(
            &sentinels,
            "ha",
            "a status",
            TIMEOUT,
            |resource: &RedisSentinel| {
                resource
                    .status
                    .as_ref()
                    .is_some_and(|status| !status.conditions.is_empty())
            },
        )
        .await;
    operator.check_running()?;
    reported.with_context(|| format!("operator log:\n{}", operator.log()))?;
    watched.api::<StatefulSet>().get("ha-node").await?;
    watched.api::<PodDisruptionBudget>().get("ha-node").await?;
    watched.api::<Service>().get("ha-master").await?;
    // The pods' passwords are in the operator's own Secret: the one kind of Secret it may
    // write, though RBAC lets it patch any in the namespace.
    let credentials = watched
        .api::<Secret>()
        .get("ha-operator-credentials")
        .await?;
    ensure!(
        credentials.data.as_ref().is_some_and(|data| {
            ["password", "operator-password"]
                .iter()
                .all(|key| data.contains_key(*key))
        }),
        "the operator's Secret lacks a password"
    );
    let account_secrets = Api::<Secret>::namespaced(account.clone(), watched.name());
    let tamper = json!({ "stringData": { "password": "theirs" } });
    refused_by_policy(
        account_secrets
            .patch("redis-auth", &PatchParams::default(), &merge(&tamper))
            .await,
        "may write only the <name>-operator-credentials Secrets of its Redis and RedisSentinel resources",
    )?;
    let planted: Secret = serde_json::from_value(json!({
        "metadata": { "name": "planted-operator-credentials" },
        "stringData": { "password": "theirs" },
    }))?;
    refused_by_policy(
        account_secrets
            .create(&PostParams::default(), &planted)
            .await,
        "may write only the <name>-operator-credentials Secrets of its Redis and RedisSentinel resources",
    )?;
    // The role label of its own pods is all it may change on a pod.
    let pods = watched.api::<Pod>();
    watched
        .wait_for(&pods, "ha-node-0", "created", TIMEOUT, |_: &Pod| true)
        .await?;
    let account_pods = Api::<Pod>::namespaced(account.clone(), watched.name());
    let role = json!({ "metadata": { "labels": { "redis.operator-kit.io/role": "replica" } } });
    account_pods
        .patch("ha-node-0", &PatchParams::default(), &merge(&role))
        .await
        .context("the role label of the operator's own pod")?;
    refused_by_policy(
        account_pods
            .patch("ha-node-0", &PatchParams::default(), &merge(&relabel))
            .await,
        "may change only the label redis.operator-kit.io/role of a pod",
    )?;
    let image =
        json!({ "spec": { "containers": [{ "name": "redis", "image": "attacker/redis" }] } });
    refused_by_policy(
        account_pods
            .patch(
                "ha-node-0",
                &PatchParams::default(),
                &Patch::Strategic(image),
            )
            .await,
        "may not change the spec or the annotations",
    )?;
    // Nor touch a pod or a claim it does not manage, though RBAC lets it patch both.
    let bystander: Pod = serde_json::from_value(json!({
        "metadata": { "name": "bystander", "labels": { "app": "web" } },
        "spec": { "containers": [{ "name": "web", "image": "nginx:1.27" }] },
    }))?;
    pods.create(&PostParams::default(), &bystander).await?;
    refused_by_policy(
        account_pods
            .patch("bystander", &PatchParams::default(), &merge(&role))
            .await,
        "may change only pods and claims labelled app.kubernetes.io/managed-by=redis-operator",
    )?;
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": { "name": "bystander-data" },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
    }))?;
    claims.create(&PostParams::default(), &claim).await?;
    let owned = json!({ "metadata": { "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "gone", "uid": "00000000-0000-0000-0000-000000000000",
    }] } });
    refused_by_policy(
        account_claims
            .patch("bystander-data", &PatchParams::default(), &merge(&owned))
            .await,
        "may change only pods and claims labelled",
    )?;

    sentinels.delete("ha", &DeleteParams::foreground()).await?;
    watched.wait_for_deletion(&sentinels, "ha", TIMEOUT).await?;

    operator.check_running()?;
    let log = operator.log();
    ensure!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused a request:\n{log}"
    );
    ensure!(
        !log.contains("not-a-real-password"),
        "the password reached the log"
    );
    // Written to a file, not a terminal: no colour codes.
    ensure!(
        !log.is_empty() && !log.contains('\u{1b}'),
        "escape sequences in the log"
    );
    drop(operator);
    drop(release);
    Ok(())
}
