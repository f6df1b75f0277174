//! The API server restarts under a running operator, as it does on every control-plane
//! upgrade of a single-API-server cluster such as kind (`hack/cluster.sh restart
//! kube-apiserver`: the same arguments, etcd and everything else keep running). The operator's
//! watches must recover without a restart of the operator: a Redis created, a Redis changed and
//! a child deleted after the restart are all handled, by the leader and by a standby that takes
//! over afterwards.
//!
//! And a watch that keeps failing (here: refused by RBAC) turns the operator's `/readyz` not
//! ready, naming the watch, until it recovers.
//!
//! These tests restart the shared API server, so they live in a binary of their own (cargo runs
//! test binaries one at a time) and take turns within it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use operator_kit::testing::{RunningOperator, TestNamespace, wait_until};
use operator_kit::{Operator, OperatorArgs};
use redis_operator::v1beta1::{Phase, Redis};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

/// One API server restart at a time.
static RESTARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Restarts the local cluster's kube-apiserver and returns when its `/readyz` answers again.
fn restart_api_server() -> Result<Instant> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/cluster.sh");
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(&script)
        .args(["restart", "kube-apiserver"])
        .status()
        .with_context(|| format!("failed to run {script:?}"))?;
    ensure!(
        status.success(),
        "`hack/cluster.sh restart kube-apiserver` failed ({status}); these tests need the \
         local cluster of hack/cluster.sh"
    );
    eprintln!(
        "kube-apiserver restarted and ready in {:?}",
        started.elapsed()
    );
    Ok(Instant::now())
}

/// A standalone Redis without storage or Secret: enough to exercise every watch.
fn redis(name: &str) -> Result<Redis> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "redis.operator-kit.io/v1beta1",
        "kind": "Redis",
        "metadata": { "name": name },
        "spec": { "kubernetesConfig": { "image": "redis:7.4" } },
    }))?)
}

async fn create_redis(namespace: &TestNamespace, name: &str) -> Result<()> {
    namespace
        .api::<Redis>()
        .create(&PostParams::default(), &redis(name)?)
        .await?;
    Ok(())
}

async fn wait_ready(namespace: &TestNamespace, name: &str) -> Result<()> {
    let redises = namespace.api::<Redis>();
    let generation = redises.get(name).await?.metadata.generation;
    namespace
        .wait_for(&redises, name, "Ready", TIMEOUT, move |redis: &Redis| {
            redis.status.as_ref().is_some_and(|status| {
                status.phase == Phase::Ready && status.observed_generation == generation
            })
        })
        .await?;
    Ok(())
}

async fn install_crds(namespace: &TestNamespace) -> Result<()> {
    for crd in redis_operator::crds() {
        operator_kit::testing::install_crd(namespace.client(), &crd, TIMEOUT).await?;
    }
    Ok(())
}

fn operator(namespace: &TestNamespace, args: OperatorArgs) -> Operator {
    Operator::new(
        redis_operator::OPERATOR_NAME,
        namespace.client().clone(),
        OperatorArgs {
            watch_namespace: Some(namespace.name().to_owned()),
            ..args
        },
    )
    .with_controller(redis_operator::redis_controller())
}

/// The sum of an operator's own counter over all its label sets, from its `/metrics` text.
fn counter_total(operator: &RunningOperator, name: &str) -> u64 {
    operator
        .metrics()
        .render()
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// After the restart: a new Redis becomes Ready, a changed Redis rolls out, and a deleted child
/// comes back. Prints how long the operator took from `since` to create the new Redis's
/// StatefulSet (its own part) and how long until the Redis was Ready, which also waits for the
/// controller manager to create the pod.
async fn changes_after_the_restart_are_handled(
    namespace: &TestNamespace,
    existing: &str,
    new: &str,
    since: Instant,
) -> Result<()> {
    create_redis(namespace, new).await?;
    let stateful_sets = namespace.api::<StatefulSet>();
    let services = namespace.api::<Service>();
    let patch = json!({ "spec": { "redisExporter": { "enabled": true } } });
    namespace
        .api::<Redis>()
        .patch(existing, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let deleted_uid = services.get(existing).await?.metadata.uid;
    services.delete(existing, &DeleteParams::default()).await?;

    namespace
        .wait_for(
            &stateful_sets,
            new,
            "created",
            TIMEOUT,
            |_: &StatefulSet| true,
        )
        .await?;
    let reacted = since.elapsed();
    wait_ready(namespace, new).await?;
    eprintln!(
        "measured: the new Redis's StatefulSet created after {reacted:?}, the Redis Ready after {:?}",
        since.elapsed()
    );
    namespace
        .wait_for(
            &stateful_sets,
            existing,
            "given the exporter",
            TIMEOUT,
            |stateful_set: &StatefulSet| {
                stateful_set
                    .spec
                    .template
                    .spec
                    .as_ref()
                    .is_some_and(|pod| pod.containers.iter().any(|c| c.name == "redis-exporter"))
            },
        )
        .await?;
    namespace
        .wait_for(
            &services,
            existing,
            "recreated",
            TIMEOUT,
            move |service: &Service| service.metadata.uid != deleted_uid,
        )
        .await?;
    wait_ready(namespace, existing).await?;
    Ok(())
}

#[tokio::test]
async fn the_operator_sees_new_changed_and_deleted_objects_after_an_api_server_restart()
-> Result<()> {
    let _turn = RESTARTS.lock().await;
    let namespace = TestNamespace::create("restart-leader").await?;
    install_crds(&namespace).await?;
    let running = RunningOperator::spawn(operator(&namespace, OperatorArgs::for_tests()));
    create_redis(&namespace, "before").await?;
    wait_ready(&namespace, "before").await?;

    // Measured from the restarted API server's /readyz.
    let ready_at = restart_api_server()?;
    changes_after_the_restart_are_handled(&namespace, "before", "after", ready_at).await?;
    eprintln!(
        "watch failures {}, watch restarts from a consistent list {}",
        counter_total(&running, "operator_kit_watch_failures_total"),
        counter_total(&running, "operator_kit_watch_restarts_total"),
    );
    ensure!(
        counter_total(&running, "operator_kit_watch_failures_total") > 0,
        "the restart went unnoticed by every watch: it tested nothing"
    );
    ensure!(
        running.health().is_ready(),
        "not ready after recovering: {:?}",
        running.health().not_ready_reason()
    );
    running.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn a_standby_takes_over_after_an_api_server_restart() -> Result<()> {
    let _turn = RESTARTS.lock().await;
    let namespace = TestNamespace::create("restart-standby").await?;
    install_crds(&namespace).await?;
    let replica = |identity: &str| {
        let args = OperatorArgs {
            leader_election: true,
            lease_name: Some("redis-operator-restart".to_owned()),
            lease_namespace: Some(namespace.name().to_owned()),
            identity: Some(identity.to_owned()),
            // Long enough that the leader keeps its Lease through the restart.
            lease_duration_seconds: 40.0,
            renew_deadline_seconds: 30.0,
            retry_period_seconds: 1.0,
            ..OperatorArgs::for_tests()
        };
        RunningOperator::spawn(operator(&namespace, args))
    };
    let leader = replica("replica-a");
    let started = Instant::now();
    while leader.metrics().is_leader() != Some(true) {
        ensure!(started.elapsed() < TIMEOUT, "replica-a never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let standby = replica("replica-b");
    create_redis(&namespace, "before").await?;
    wait_ready(&namespace, "before").await?;

    restart_api_server()?;
    // The leader leaves (a rolling update of the operator, say) and releases its Lease.
    leader.stop().await?;
    let stopped = Instant::now();
    while standby.metrics().is_leader() != Some(true) {
        ensure!(stopped.elapsed() < TIMEOUT, "replica-b never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "measured: the standby took over {:?} after the leader stopped",
        stopped.elapsed()
    );
    // Measured from the moment the leader stopped.
    changes_after_the_restart_are_handled(&namespace, "before", "after", stopped).await?;
    standby.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn a_watch_that_keeps_failing_makes_the_operator_unready_until_it_recovers() -> Result<()> {
    let _turn = RESTARTS.lock().await;
    let namespace = TestNamespace::create("watch-readiness").await?;
    install_crds(&namespace).await?;
    // The operator runs as a ServiceAccount that may do everything it needs but list Secrets,
    // so its Secret watch is refused (403) until the rule is added.
    let account = "limited-operator";
    let allowed = json!([
        { "apiGroups": ["", "apps", "policy", "networking.k8s.io", "redis.operator-kit.io"],
          "verbs": ["*"],
          "resources": ["redises", "redises/status", "statefulsets", "configmaps", "services",
                        "persistentvolumeclaims", "pods", "poddisruptionbudgets",
                        "networkpolicies"] },
        { "apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"] },
    ]);
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": account }, "rules": allowed,
    }))?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": account },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account },
        "subjects": [{ "kind": "ServiceAccount", "name": account, "namespace": namespace.name() }],
    }))?;
    let roles = namespace.api::<Role>();
    roles.create(&PostParams::default(), &role).await?;
    namespace
        .api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await?;
    let mut config = namespace.config().clone();
    config.auth_info.impersonate = Some(format!(
        "system:serviceaccount:{}:{account}",
        namespace.name()
    ));
    let operator = Operator::new(
        redis_operator::OPERATOR_NAME,
        kube::Client::try_from(config)?,
        OperatorArgs {
            watch_namespace: Some(namespace.name().to_owned()),
            ..OperatorArgs::for_tests()
        },
    )
    .with_controller(redis_operator::redis_controller());
    let running = RunningOperator::spawn(operator);

    let unready = wait_until("/readyz names the failing Secret watch", TIMEOUT, || {
        running
            .health()
            .not_ready_reason()
            .is_some_and(|reason| reason.contains("watch of secrets (controller redis)"))
    })
    .await
    .with_context(|| format!("last reason: {:?}", running.health().not_ready_reason()))?;
    eprintln!(
        "measured: not ready {unready:?} after the start: {}",
        running.health().not_ready_reason().unwrap_or_default()
    );
    ensure!(counter_total(&running, "operator_kit_watch_failures_total") > 0);

    let mut rules = allowed;
    if let Some(rules) = rules.as_array_mut() {
        rules.push(json!({ "apiGroups": [""], "resources": ["secrets"],
                           "verbs": ["get", "list", "watch"] }));
    }
    let patch = json!({ "rules": rules });
    roles
        .patch(account, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let granted = Instant::now();
    wait_until("/readyz is ready again", TIMEOUT, || {
        running.health().is_ready()
    })
    .await?;
    eprintln!(
        "measured: ready again {:?} after the rule was added",
        granted.elapsed()
    );
    running.stop().await?;
    namespace.delete().await?;
    Ok(())
}
