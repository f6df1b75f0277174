//! redis-operator's `RedisSentinel` on the local cluster. The Kubernetes side is real (the
//! API server, the StatefulSet controller, kwok's pods); the pods run no process, so the
//! operator's data-plane resolver is pointed at local `redis-server` and `redis-sentinel`
//! processes started by the pods' own scripts — one per pod, by ordinal. What the operator
//! sees and does there (failover, labels, status, events) is what it does with real pods.

use integration_tests::local_redis as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use operator_kit::admin::ReconcileResult;
use operator_kit::testing::{RunningOperator, TestNamespace};
use redis_operator::sentinel::access::Access;
use redis_operator::sentinel::build::ROLE_LABEL;
use redis_operator::sentinel::data_plane::Node;
use redis_operator::v1beta1::{Phase, RedisSentinel};
use serde_json::json;
use support::{LocalSet, PASSWORD};

const TIMEOUT: Duration = Duration::from_secs(90);

async fn start(namespace: &TestNamespace, set: &LocalSet) -> Result<RunningOperator> {
    let nodes: Vec<Node> = set.nodes.clone();
    let addresses = Arc::new(move |resource: &RedisSentinel| {
        let count = usize::try_from(resource.spec.replicas).unwrap_or(0);
        nodes[..count.min(nodes.len())].to_vec()
    });
    let controller = redis_operator::redis_sentinel_controller_with(Access::Direct, addresses);
    Ok(namespace
        .start_operator(
            redis_operator::OPERATOR_NAME,
            &redis_operator::crds(),
            |operator| operator.with_controller(controller),
        )
        .await?)
}

fn resource(name: &str, replicas: i32) -> Result<RedisSentinel> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "redis.operator-kit.io/v1beta1",
        "kind": "RedisSentinel",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "sentinel": { "downAfterMilliseconds": 1000, "failoverTimeout": 5000 },
            "kubernetesConfig": {
                "image": "redis:7.4",
                "redisSecret": { "name": "redis-auth", "key": "password" },
            },
            "storage": { "volumeClaimTemplate": { "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": { "requests": { "storage": "1Gi" } },
            } } },
        },
    }))?)
}

async fn wait_healthy(
    namespace: &TestNamespace,
    name: &str,
    replicas: i32,
    master_other_than: Option<&str>,
) -> Result<RedisSentinel> {
    let api = namespace.api::<RedisSentinel>();
    let excluded = master_other_than.map(str::to_owned);
    Ok(namespace
        .wait_for(
            &api,
            name,
            "Ready with the expected master",
            TIMEOUT,
            move |resource: &RedisSentinel| {
                resource.spec.replicas == replicas
                    && resource.status.as_ref().is_some_and(|status| {
                        status.phase == Phase::Ready
                            && status.observed_generation == resource.metadata.generation
                            && status.master.is_some()
                            && status.master != excluded
                    })
            },
        )
        .await?)
}

async fn master_labels(namespace: &TestNamespace) -> Result<Vec<String>> {
    let pods = namespace
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("{ROLE_LABEL}=master")))
        .await?;
    Ok(pods
        .items
        .iter()
        .map(|pod| pod.metadata.name.clone().unwrap_or_default())
        .collect())
}

#[tokio::test]
async fn failover_scale_and_deletion_with_the_operator_following() -> Result<()> {
    let namespace = TestNamespace::create("redis-sentinel").await?;
    let mut set = LocalSet::new("cache", 5, 3, 1000).await?;
    let operator = start(&namespace, &set).await?;
    support::create_password_secret(&namespace, "redis-auth").await?;
    support::create_pod_passwords(
        &namespace,
        set.resource.metadata.name.as_deref().unwrap_or_default(),
    )
    .await?;
    let api = namespace.api::<RedisSentinel>();
    // It scales to five pods on three real nodes: the documented override for small clusters
    // (an empty affinity) lifts the default one-pod-per-node rule.
    let mut cache = resource("cache", 3)?;
    cache.spec.pod.affinity = Some(Box::default());
    api.create(&PostParams::default(), &cache).await?;

    // Bootstrap: the operator picks a master, points everyone at it and labels the pods.
    let ready = wait_healthy(&namespace, "cache", 3, None).await?;
    let status = ready.status.clone().context("no status")?;
    let master = status.master.clone().context("no master")?;
    ensure!(
        status.endpoint.as_deref() == Some(&*format!("cache-master.{}.svc:6379", namespace.name()))
    );
    wait_for_master_label(&namespace, &master).await?;

    // The objects.
    let stateful_set = namespace.api::<StatefulSet>().get("cache-node").await?;
    let spec = stateful_set.spec;
    ensure!(spec.replicas == Some(3) && spec.service_name.as_deref() == Some("cache-headless"));
    let pod = spec.template.spec.context("no pod spec")?;
    ensure!(
        pod.containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            == ["redis", "sentinel"]
    );
    for container in &pod.containers {
        let readiness = container
            .readiness_probe
            .clone()
            .context("no readiness probe")?;
        // The seed chart's timing, but for readiness's 2 s initial delay (see build.rs).
        ensure!(readiness.initial_delay_seconds == Some(2) && readiness.period_seconds == Some(5));
        let liveness = container
            .liveness_probe
            .clone()
            .context("no liveness probe")?;
        ensure!(liveness.initial_delay_seconds == Some(20));
    }
    let master_service = namespace.api::<Service>().get("cache-master").await?;
    let selector = master_service
        .spec
        .and_then(|spec| spec.selector)
        .context("no selector")?;
    ensure!(selector.get(ROLE_LABEL).map(String::as_str) == Some("master"));
    let headless = namespace.api::<Service>().get("cache-headless").await?;
    ensure!(
        headless
            .spec
            .and_then(|spec| spec.publish_not_ready_addresses)
            == Some(true)
    );
    // Redis on the client Service; Sentinel only on a ClusterIP Service of its own.
    let ports = |service: Service| {
        let spec = service.spec.unwrap_or_default();
        let ports: Vec<i32> = spec.ports.iter().flatten().map(|port| port.port).collect();
        (spec.type_, ports)
    };
    let client = ports(namespace.api::<Service>().get("cache").await?);
    ensure!(client.1 == [6379], "{client:?}");
    let sentinel = ports(namespace.api::<Service>().get("cache-sentinel").await?);
    ensure!(
        sentinel == (Some("ClusterIP".to_owned()), vec![26379]),
        "{sentinel:?}"
    );
    let budget = namespace
        .api::<PodDisruptionBudget>()
        .get("cache-node")
        .await?;
    ensure!(budget.spec.and_then(|spec| spec.max_unavailable) == Some(IntOrString::Int(1)));
    let config = namespace.api::<ConfigMap>().get("cache-config").await?;
    ensure!(!serde_json::to_string(&config)?.contains(PASSWORD));
    // The master Service's endpoints are the master pod, through the real EndpointSlice
    // controller.
    namespace
        .wait_for(
            &namespace.api::<EndpointSlice>(),
            &endpoint_slice_name(&namespace, "cache-master").await?,
            "the master endpoint",
            TIMEOUT,
            {
                let master = master.clone();
                move |slice: &EndpointSlice| {
                    slice
                        .endpoints
                        .iter()
                        .flatten()
                        .filter_map(|e| e.target_ref.as_ref()?.name.clone())
                        .collect::<Vec<_>>()
                        == vec![master.clone()]
                }
            },
        )
        .await?;

    // kill -9 of the master's Redis: the sentinels fail over, the operator hears it, and its
    // status, labels and events follow.
    let old_index: usize = master.rsplit('-').next().context("ordinal")?.parse()?;
    set.acknowledged_writes(old_index, "before", 50).await?;
    set.kill_redis(old_index);
    let failed_over = namespace
        .wait_for(&api, "cache", "a new master", TIMEOUT, {
            let master = master.clone();
            move |resource: &RedisSentinel| {
                resource.status.as_ref().is_some_and(|status| {
                    // A reconcile can see the new master a moment before the subscribed
                    // sentinel announces it; the announced failover (with its duration)
                    // replaces the one the reconcile recorded.
                    status.master.as_ref().is_some_and(|new| *new != master)
                        && status.last_failover.as_ref().is_some_and(|failover| {
                            failover.from == master && failover.duration_ms.is_some()
                        })
                })
            }
        })
        .await?;
    let status = failed_over.status.context("no status")?;
    let new_master = status.master.clone().context("no master")?;
    let failover = status.last_failover.context("no lastFailover")?;
    ensure!(failover.to == new_master, "{failover:?}");
    ensure!(
        failover.duration_ms.is_some_and(|ms| ms > 0 && ms < 30_000),
        "{failover:?}"
    );
    let new_index: usize = new_master.rsplit('-').next().context("ordinal")?.parse()?;
    ensure!(
        set.missing_keys(
            new_index,
            &(0..50).map(|i| format!("before:{i}")).collect::<Vec<_>>()
        )
        .await?
        .is_empty()
    );
    wait_for_master_label(&namespace, &new_master).await?;
    let events = namespace
        .api::<Event>()
        .list(&ListParams::default().fields("involvedObject.name=cache"))
        .await?;
    ensure!(
        events
            .items
            .iter()
            .any(|event| event.reason.as_deref() == Some("Failover")),
        "no Failover event: {:?}",
        events
            .items
            .iter()
            .map(|event| &event.reason)
            .collect::<Vec<_>>()
    );

    let metrics = operator.metrics().render();
    let counter = format!(
        "redis_sentinel_failovers_total{{namespace=\"{}\",name=\"cache\"}} 1",
        namespace.name()
    );
    ensure!(
        metrics.lines().any(|line| line == counter),
        "no {counter:?} in\n{metrics}"
    );
    ensure!(metrics.contains("redis_sentinel_failover_duration_seconds_count{"));

    // The old master's pod comes back (its script asks the sentinels and rejoins as replica).
    set.start_redis(old_index).await?;
    wait_healthy(&namespace, "cache", 3, Some(&master)).await?;

    // Scale 3 → 5 → 3: the quorum follows, set live on every sentinel, and the pod template
    // stays the same (a changed template would restart every pod, the master included).
    let template = namespace
        .api::<StatefulSet>()
        .get("cache-node")
        .await?
        .spec
        .template;
    set.start_redis(3).await?;
    set.start_sentinel(3).await?;
    set.start_redis(4).await?;
    set.start_sentinel(4).await?;
    for replicas in [5, 3] {
        let patch = json!({ "spec": { "replicas": replicas } });
        api.patch("cache", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        if replicas == 3 {
            // The StatefulSet deletes pods 3 and 4: so go their processes.
            for index in [3, 4] {
                set.kill_redis(index);
                set.kill_sentinel(index);
            }
        }
        wait_healthy(&namespace, "cache", replicas, None).await?;
        let stateful_set = namespace.api::<StatefulSet>().get("cache-node").await?;
        ensure!(stateful_set.spec.replicas == Some(replicas));
        ensure!(
            stateful_set.spec.template == template,
            "scaling to {replicas} changed the pod template"
        );
        let quorum = (replicas / 2 + 1).to_string();
        for node in &set.nodes[..usize::try_from(replicas)?] {
            let master =
                support::sentinel_cli(node.sentinel_port, &["SENTINEL", "MASTER", "mymaster"])?;
            let fields: Vec<&str> = master.lines().collect();
            let value = fields
                .iter()
                .position(|field| *field == "quorum")
                .and_then(|at| fields.get(at + 1));
            ensure!(
                value == Some(&quorum.as_str()),
                "sentinel of {} has quorum {value:?} at {replicas} replicas",
                node.pod
            );
        }
    }
    // The sentinels forget the removed pods (reset one at a time), so a failover needs 2
    // votes again, not 3 of a remembered 5. Sentinels relearn each other through hello
    // messages every 2 s, so this is polled rather than read once.
    for node in &set.nodes[..3] {
        support::wait_until("the sentinel to know exactly 2 others", TIMEOUT, || {
            let known =
                support::sentinel_cli(node.sentinel_port, &["SENTINEL", "SENTINELS", "mymaster"])?;
            Ok(known.lines().filter(|line| *line == "name").count() == 2)
        })
        .await
        .with_context(|| format!("sentinel of {}", node.pod))?;
    }

    // Deletion removes every object, and the operator forgets the resource: its failover
    // series leave /metrics.
    let series = format!(
        "redis_sentinel_failovers_total{{namespace=\"{}\",name=\"cache\"}}",
        namespace.name()
    );
    ensure!(
        operator.metrics().render().contains(&series),
        "no {series} before the deletion"
    );
    api.delete("cache", &DeleteParams::foreground()).await?;
    namespace.wait_for_deletion(&api, "cache", TIMEOUT).await?;
    support::wait_until("the failover series to go", TIMEOUT, || {
        Ok(!operator.metrics().render().contains(&series))
    })
    .await?;
    namespace
        .wait_for_deletion(&namespace.api::<StatefulSet>(), "cache-node", TIMEOUT)
        .await?;
    namespace
        .wait_for_deletion(&namespace.api::<Service>(), "cache-master", TIMEOUT)
        .await?;
    namespace
        .wait_for_deletion(
            &namespace.api::<PodDisruptionBudget>(),
            "cache-node",
            TIMEOUT,
        )
        .await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// Polls the pods every 100 ms until exactly `master` carries the master label.
async fn wait_for_master_label(namespace: &TestNamespace, master: &str) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let labelled = master_labels(namespace).await?;
        if labelled == [master] {
            return Ok(());
        }
        ensure!(
            started.elapsed() < TIMEOUT,
            "master label on {labelled:?}, expected {master:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn endpoint_slice_name(namespace: &TestNamespace, service: &str) -> Result<String> {
    let api = namespace.api::<EndpointSlice>();
    for _ in 0..100 {
        let slices = api
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
            .await?;
        if let Some(name) = slices
            .items
            .first()
            .and_then(|slice| slice.metadata.name.clone())
        {
            return Ok(name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no EndpointSlice for Service {service:?}")
}

#[tokio::test]
async fn invalid_specs_are_rejected_with_the_field_named() -> Result<()> {
    let namespace = TestNamespace::create("redis-sentinel-invalid").await?;
    operator_kit::testing::install_crd(
        namespace.client(),
        &<RedisSentinel as kube::CustomResourceExt>::crd(),
        TIMEOUT,
    )
    .await?;
    let api = namespace.api::<RedisSentinel>();
    // The example is accepted as it is.
    let example = include_str!("../../examples/redis-sentinel.yaml");
    let example: RedisSentinel =
        serde_yaml::from_str(example.split("\n---\n").nth(1).context("no resource")?)?;
    api.create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        &example,
    )
    .await?;
    let cases = [
        (json!({ "replicas": 4 }), "replicas must be an odd number"),
        (json!({ "replicas": 1 }), "replicas must be an odd number"),
        (
            json!({ "replicas": 3, "sentinel": { "quorum": 5 } }),
            "spec.sentinel.quorum must not exceed spec.replicas",
        ),
        (
            json!({ "replicas": 3, "sentinel": { "quorum": 0 } }),
            "sentinel.quorum must be at least 1",
        ),
        (
            json!({ "replicas": 3, "minReplicasToWrite": 3 }),
            "spec.minReplicasToWrite must be less than spec.replicas",
        ),
        (
            json!({ "replicas": 3, "minReplicasMaxLag": 10 }),
            "spec.minReplicasMaxLag must be shorter than spec.sentinel.downAfterMilliseconds",
        ),
        (
            json!({ "replicas": 3, "minReplicasMaxLag": 6, "sentinel": { "downAfterMilliseconds": 6000 } }),
            "spec.minReplicasMaxLag must be shorter than spec.sentinel.downAfterMilliseconds",
        ),
        (
            json!({ "replicas": 3, "sentinel": { "downAfterMilliseconds": 10 } }),
            "sentinel.downAfterMilliseconds must be at least 100",
        ),
        (
            json!({ "replicas": 3, "kubernetesConfig": { "resources": { "requests": { "cpu": "lots" } } } }),
            "spec.kubernetesConfig.resources: Invalid value",
        ),
        // Directives that would take replication away from Sentinel and the operator.
        (
            json!({ "replicas": 3, "redisConfig": { "additionalConfig": ["replicaof 10.0.0.1 6379"] } }),
            "must not set replicaof, slaveof, min-replicas-to-write",
        ),
        (
            json!({ "replicas": 3, "redisConfig": { "additionalConfig": ["  MIN-REPLICAS-TO-WRITE 0"] } }),
            "use spec.minReplicasToWrite",
        ),
        (
            json!({ "replicas": 3, "redisConfig": { "additionalConfig": ["rename-command CONFIG \"\""] } }),
            "must not rename a command Sentinel or the operator sends",
        ),
        (
            json!({ "replicas": 3, "redisConfig": { "additionalConfig": ["'slaveof' 10.0.0.1 6379"] } }),
            "directives must not be quoted",
        ),
        (
            json!({ "replicas": 3, "redisExporter": { "enabled": true, "port": 26379 } }),
            "not 6379 or 26379",
        ),
    ];
    for (spec, expected) in cases {
        let mut full = spec.clone();
        if full.get("kubernetesConfig").is_none() {
            full["kubernetesConfig"] = json!({});
        }
        let object: RedisSentinel = serde_json::from_value(json!({
            "apiVersion": "redis.operator-kit.io/v1beta1",
            "kind": "RedisSentinel",
            "metadata": { "name": "invalid" },
            "spec": full,
        }))?;
        match api.create(&PostParams::default(), &object).await {
            Err(kube::Error::Api(status)) => ensure!(
                status.code == 422 && status.message.contains(expected),
                "{spec}: {}",
                status.message
            ),
            other => anyhow::bail!("{spec} was not rejected: {other:?}"),
        }
    }
    let dotted: RedisSentinel = serde_json::from_value(json!({
        "apiVersion": "redis.operator-kit.io/v1beta1", "kind": "RedisSentinel",
        "metadata": { "name": "cache.v2" }, "spec": { "kubernetesConfig": {} },
    }))?;
    match api.create(&PostParams::default(), &dotted).await {
        Err(kube::Error::Api(status)) => ensure!(
            status.code == 422
                && status
                    .message
                    .contains("metadata.name must start with a lowercase letter"),
            "{}",
            status.message
        ),
        other => anyhow::bail!("the name cache.v2 was not rejected: {other:?}"),
    }
    namespace.delete().await?;
    Ok(())
}

/// A child the API server refuses (here the StatefulSet: the CRD leaves node selector keys to
/// the API server, which refuses one with a space) must not stop the data plane: after a failover the
/// pods still get their role labels, or `<name>-master` keeps sending clients to the old
/// master. The refusal is reported in the Ready condition.
#[tokio::test]
async fn a_refused_apply_does_not_keep_the_master_label_on_the_old_master() -> Result<()> {
    let namespace = TestNamespace::create("sentinel-apply-fails").await?;
    let mut set = LocalSet::new("refused", 3, 3, 1000).await?;
    let operator = start(&namespace, &set).await?;
    support::create_password_secret(&namespace, "redis-auth").await?;
    support::create_pod_passwords(
        &namespace,
        set.resource.metadata.name.as_deref().unwrap_or_default(),
    )
    .await?;
    let api = namespace.api::<RedisSentinel>();
    api.create(&PostParams::default(), &resource("refused", 3)?)
        .await?;
    let ready = wait_healthy(&namespace, "refused", 3, None).await?;
    let master = ready
        .status
        .and_then(|status| status.master)
        .context("no master")?;
    wait_for_master_label(&namespace, &master).await?;

    let patch = json!({ "spec": { "nodeSelector": { "disk type": "ssd" } } });
    api.patch("refused", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    namespace
        .wait_for(
            &api,
            "refused",
            "ApplyFailed",
            TIMEOUT,
            |resource: &RedisSentinel| {
                resource.status.as_ref().is_some_and(|status| {
                    status.conditions.iter().any(|condition| {
                        condition.type_ == "Ready" && condition.reason == "ApplyFailed"
                    })
                })
            },
        )
        .await?;

    let old_index: usize = master.rsplit('-').next().context("ordinal")?.parse()?;
    set.kill_redis(old_index);
    let failed_over = namespace
        .wait_for(&api, "refused", "a new master", TIMEOUT, {
            let master = master.clone();
            move |resource: &RedisSentinel| {
                resource
                    .status
                    .as_ref()
                    .and_then(|status| status.master.as_ref())
                    .is_some_and(|new| *new != master)
            }
        })
        .await?;
    let new_master = failed_over
        .status
        .and_then(|status| status.master)
        .context("no master")?;
    wait_for_master_label(&namespace, &new_master).await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// Nodes holding data the operator cannot order (here two nodes restarted from their files,
/// a fresh history each, and no record of which was master) are left as they are: the Ready
/// condition names them and says how to choose, one Warning event says the same, and the
/// person's choice (an annotation naming the pod and its history) is then carried out.
#[tokio::test]
async fn data_that_cannot_be_ordered_waits_for_a_person_to_choose() -> Result<()> {
    let namespace = TestNamespace::create("sentinel-undecided").await?;
    let set = LocalSet::new("undecided", 3, 3, 1000).await?;
    for (index, key) in [(1, "only-on-1"), (2, "only-on-2")] {
        set.seed(index, key, "kept?")?;
    }
    let operator = start(&namespace, &set).await?;
    support::create_password_secret(&namespace, "redis-auth").await?;
    support::create_pod_passwords(
        &namespace,
        set.resource.metadata.name.as_deref().unwrap_or_default(),
    )
    .await?;
    let api = namespace.api::<RedisSentinel>();
    api.create(&PostParams::default(), &resource("undecided", 3)?)
        .await?;
    let waiting = namespace
        .wait_for(
            &api,
            "undecided",
            "a condition asking a person to choose",
            TIMEOUT,
            |resource: &RedisSentinel| {
                resource.status.as_ref().is_some_and(|status| {
                    status.conditions.iter().any(|condition| {
                        condition.type_ == "Ready" && condition.reason == "NewestDataUnknown"
                    })
                })
            },
        )
        .await?;
    let message = waiting
        .status
        .iter()
        .flat_map(|status| &status.conditions)
        .find(|condition| condition.type_ == "Ready")
        .map(|condition| condition.message.clone())
        .unwrap_or_default();
    for needed in [
        "\"undecided-node-1/",
        "\"undecided-node-2/",
        "kubectl annotate -n ",
        "redissentinel undecided redis.operator-kit.io/keep-data-of=<pod/history>",
    ] {
        ensure!(
            message.contains(needed),
            "{needed:?} missing from {message:?}"
        );
    }
    ensure!(!message.contains("undecided-node-0"), "{message}");
    // Nothing was touched: both nodes are still masters with their own data.
    for (index, key) in [(1, "only-on-1"), (2, "only-on-2")] {
        ensure!(support::cli(set.port(index), &["GET", key])? == "kept?");
        ensure!(support::cli(set.port(index), &["ROLE"])?.starts_with("master"));
    }

    // The person keeps node 2's data, naming its history as the condition shows it.
    let info = support::cli(set.port(2), &["INFO", "replication"])?;
    let replid = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("master_replid:"))
        .context("no master_replid")?;
    let choice = format!("undecided-node-2/{}", &replid[..8]);
    ensure!(
        message.contains(&format!("{choice:?}")),
        "{choice:?} missing from {message:?}"
    );
    let patch = json!({ "metadata": { "annotations": {
        "redis.operator-kit.io/keep-data-of": choice } } });
    api.patch("undecided", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let ready = wait_healthy(&namespace, "undecided", 3, None).await?;
    ensure!(
        ready.status.and_then(|status| status.master).as_deref() == Some("undecided-node-2"),
        "another master was chosen"
    );
    for index in 0..3 {
        support::wait_until("node 2's data everywhere", Duration::from_secs(20), || {
            Ok(support::cli(set.port(index), &["GET", "only-on-2"])? == "kept?")
        })
        .await?;
    }
    // One Warning, published once (a repeat would make it a series).
    let warnings: Vec<String> = namespace
        .api::<k8s_openapi::api::events::v1::Event>()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|event| event.reason.as_deref() == Some("NewestDataUnknown"))
        .map(|event| format!("{:?} {:?} {:?}", event.type_, event.note, event.series))
        .collect();
    ensure!(
        warnings.len() == 1
            && warnings[0].starts_with("Some(\"Warning\")")
            && warnings[0].ends_with("None"),
        "one Warning expected: {warnings:#?}"
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn a_changed_password_secret_is_rotated_live_reported_and_recorded() -> Result<()> {
    const NEW_PASSWORD: &str = "the rotated password";
    let namespace = TestNamespace::create("redis-sentinel-rotation").await?;
    let set = LocalSet::new("rotate", 3, 3, 1000).await?;
    let operator = start(&namespace, &set).await?;
    support::create_password_secret(&namespace, "redis-auth").await?;
    support::create_pod_passwords(&namespace, "rotate").await?;
    let api = namespace.api::<RedisSentinel>();
    api.create(&PostParams::default(), &resource("rotate", 3)?)
        .await?;
    wait_healthy(&namespace, "rotate", 3, None).await?;
    let before = support::run_ids(&set).await?;

    // Clients with the old and the new password write throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let old_client = support::spawn_client(&set, "old", PASSWORD, stop.clone());
    let new_client = support::spawn_client(&set, "new", NEW_PASSWORD, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let secrets = namespace.api::<Secret>();
    let changed = secrets
        .patch(
            "redis-auth",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "password": NEW_PASSWORD } })),
        )
        .await?;
    let version = changed.metadata.resource_version.context("no version")?;
    let done = namespace
        .wait_for(
            &api,
            "rotate",
            "the rotation done",
            TIMEOUT,
            move |resource: &RedisSentinel| {
                resource
                    .status
                    .as_ref()
                    .and_then(|status| status.password_rotation.as_ref())
                    .is_some_and(|rotation| {
                        rotation.phase == "Done" && rotation.secret_resource_version == version
                    })
            },
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (old_log, new_log) = (old_client.await?, new_client.await?);
    eprintln!(
        "measured: old-password client {} acknowledged, {} errors; new-password client {} \
         acknowledged, {} errors (the rotation took the Secret's change to Done: {:?})",
        old_log.acknowledged.len(),
        old_log.errors.len(),
        new_log.acknowledged.len(),
        new_log.errors.len(),
        done.status
            .as_ref()
            .and_then(|status| status.password_rotation.as_ref())
    );

    // Every process takes only the new password now, none restarted, the set is Ready, and
    // the operator's Secret records it.
    ensure!(support::every_process_takes(&set, NEW_PASSWORD)?);
    ensure!(
        support::every_process_refuses(&set, PASSWORD)?,
        "a process does not refuse the old password"
    );
    ensure!(
        support::run_ids(&set).await? == before,
        "a process restarted"
    );
    let ready = wait_healthy(&namespace, "rotate", 3, None).await?;
    let credentials = secrets.get("rotate-operator-credentials").await?;
    let data = credentials.data.context("no data")?;
    ensure!(data.get("password").map(|value| value.0.as_slice()) == Some(NEW_PASSWORD.as_bytes()));
    ensure!(!data.contains_key("previous-password"));
    // No write a replica acknowledged is lost.
    let master = ready
        .status
        .and_then(|status| status.master)
        .context("no master")?;
    let index: usize = master.rsplit('-').next().context("ordinal")?.parse()?;
    let keys: Vec<String> = old_log
        .acknowledged
        .into_iter()
        .chain(new_log.acknowledged)
        .collect();
    let missing = set.missing_keys(index, &keys).await?;
    ensure!(
        missing.is_empty(),
        "{} acknowledged writes lost",
        missing.len()
    );
    // Each step was told once, and no password reached an event or the status.
    let events = namespace
        .api::<Event>()
        .list(&ListParams::default().fields("involvedObject.name=rotate"))
        .await?;
    let reasons: Vec<&str> = events
        .items
        .iter()
        .filter_map(|event| event.reason.as_deref())
        .collect();
    ensure!(
        reasons.contains(&"PasswordRotating") && reasons.contains(&"PasswordRotated"),
        "{reasons:?}"
    );
    let told = serde_json::to_string(&events.items)? + &serde_json::to_string(&done.status)?;
    ensure!(!told.contains(NEW_PASSWORD) && !told.contains(PASSWORD));
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn a_secret_in_the_way_of_the_operators_is_reported_and_the_set_still_healed() -> Result<()> {
    let namespace = TestNamespace::create("redis-sentinel-taken").await?;
    let set = LocalSet::new("taken", 3, 3, 1000).await?;
    let operator = start(&namespace, &set).await?;
    support::create_password_secret(&namespace, "redis-auth").await?;
    // Someone else's Secret has the name of the operator's.
    namespace
        .create_secret("taken-operator-credentials", "note", "not yours")
        .await?;
    let api = namespace.api::<RedisSentinel>();
    api.create(&PostParams::default(), &resource("taken", 3)?)
        .await?;
    // Told in the status, and the data plane is healed all the same (a master chosen and
    // recorded, as a client would authenticate); the pods are not built on a missing Secret.
    let reported = namespace
        .wait_for(
            &api,
            "taken",
            "CredentialsSecretTaken with a master",
            TIMEOUT,
            |resource: &RedisSentinel| {
                resource.status.as_ref().is_some_and(|status| {
                    status.master.is_some()
                        && status.conditions.iter().any(|condition| {
                            condition.type_ == "Ready"
                                && condition.reason == "CredentialsSecretTaken"
                        })
                })
            },
        )
        .await?;
    eprintln!(
        "reported: {:?}",
        reported.status.as_ref().map(|status| &status.conditions)
    );
    ensure!(
        namespace
            .api::<StatefulSet>()
            .get_opt("taken-node")
            .await?
            .is_none(),
        "the pods were built on a Secret the operator does not keep"
    );
    let secrets = namespace.api::<Secret>();
    let theirs = secrets.get("taken-operator-credentials").await?;
    ensure!(
        theirs
            .data
            .is_some_and(|data| data.keys().eq(["note"].iter().copied())),
        "someone else's Secret was changed"
    );
    // Once it is gone, the operator keeps its own, gives its user (a new password) to the
    // running processes next to the one they started with, and the set becomes Ready.
    secrets
        .delete("taken-operator-credentials", &DeleteParams::default())
        .await?;
    wait_healthy(&namespace, "taken", 3, None).await?;
    for node in set.first(3) {
        ensure!(support::cli(node.redis_port, &["PING"])? == "PONG");
        ensure!(support::cli(node.sentinel_port, &["PING"])? == "PONG");
    }
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// An operator whose every API request is counted, reaching `nodes` directly.
fn start_counting(
    namespace: &TestNamespace,
    nodes: Vec<Node>,
) -> Result<(RunningOperator, operator_kit::client::RequestCounter)> {
    let (client, requests) = operator_kit::testing::counting_client(namespace.config().clone())?;
    let addresses = Arc::new(move |resource: &RedisSentinel| {
        let count = usize::try_from(resource.spec.replicas).unwrap_or(0);
        nodes[..count.min(nodes.len())].to_vec()
    });
    let controller = redis_operator::redis_sentinel_controller_with(Access::Direct, addresses);
    let args = operator_kit::OperatorArgs {
        watch_namespace: Some(namespace.name().to_owned()),
        ..operator_kit::OperatorArgs::for_tests()
    };
    let operator = RunningOperator::spawn(
        operator_kit::Operator::new(redis_operator::OPERATOR_NAME, client, args)
            .with_controller(controller),
    );
    Ok((operator, requests))
}

/// How many reconciles of RedisSentinels `operator` has ended, whatever their result.
fn checks(operator: &RunningOperator) -> u64 {
    let metrics = operator.metrics();
    [
        ReconcileResult::Success,
        ReconcileResult::RequeueAfter,
        ReconcileResult::Error,
    ]
    .into_iter()
    .map(|result| metrics.reconcile_count("redis-sentinel", result))
    .sum()
}

/// A healthy set costs Redis round trips, not API requests: its periodic check (every 15 s)
/// compares the children, claims and pods with what the operator's watches keep, and reads the
/// password Secrets through them, so two checks in a row send nothing to the API server.
#[tokio::test]
async fn a_healthy_sets_periodic_check_costs_no_api_request() -> Result<()> {
    let namespace = TestNamespace::create("redis-sentinel-steady").await?;
    let set = LocalSet::new("steady", 3, 3, 1000).await?;
    for crd in redis_operator::crds() {
        operator_kit::testing::install_crd(namespace.client(), &crd, TIMEOUT).await?;
    }
    let (operator, requests) = start_counting(&namespace, set.nodes.clone())?;
    support::create_password_secret(&namespace, "redis-auth").await?;
    support::create_pod_passwords(&namespace, "steady").await?;
    namespace
        .api::<RedisSentinel>()
        .create(&PostParams::default(), &resource("steady", 3)?)
        .await?;
    wait_healthy(&namespace, "steady", 3, None).await?;
    let checks = || checks(&operator);
    // The rollout's own writes and the watch events they cause settle first.
    let settled = operator_kit::testing::wait_until_settled(
        "the reconciles to end",
        TIMEOUT,
        Duration::from_secs(2),
        checks,
    )
    .await?;
    let before = requests.by_method();
    let total_before = requests.total();
    operator_kit::testing::wait_until("two periodic checks", TIMEOUT, || checks() >= settled + 2)
        .await?;
    let sent = requests.total() - total_before;
    eprintln!(
        "measured: {} checks of a healthy set sent {sent} API requests (before them: {before:?})",
        checks() - settled
    );
    ensure!(
        sent == 0,
        "two checks of a healthy set sent {sent} API requests: {:?} after {before:?}",
        requests.by_method()
    );
    let healthy = wait_healthy(&namespace, "steady", 3, None).await?;
    ensure!(healthy.status.is_some_and(|status| status.master.is_some()));
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// A set none of whose processes answers (out of reach, or pods that run nothing) costs no API
/// request between status changes: a check finds nothing to write, and the Sentinel
/// subscriber, retrying with backoff, does not ask the API server whether the set still exists.
#[tokio::test]
async fn an_unreachable_set_costs_no_api_request_while_nothing_changes() -> Result<()> {
    let namespace = TestNamespace::create("redis-sentinel-unreachable").await?;
    for crd in redis_operator::crds() {
        operator_kit::testing::install_crd(namespace.client(), &crd, TIMEOUT).await?;
    }
    // Ports that take a connection and close it at once, counting each attempt to reach a
    // sentinel: no process answers there.
    let sentinel_attempts = Arc::new(AtomicUsize::new(0));
    let mut nodes = Vec::new();
    for ordinal in 0..3 {
        nodes.push(Node {
            pod: format!("silent-node-{ordinal}"),
            host: "127.0.0.1".to_owned(),
            redis_port: closing_port(Arc::new(AtomicUsize::new(0))).await?,
            sentinel_port: closing_port(sentinel_attempts.clone()).await?,
        });
    }
    let (operator, requests) = start_counting(&namespace, nodes)?;
    support::create_password_secret(&namespace, "redis-auth").await?;
    support::create_pod_passwords(&namespace, "silent").await?;
    namespace
        .api::<RedisSentinel>()
        .create(&PostParams::default(), &resource("silent", 3)?)
        .await?;
    // The rollout (children, pods turning ready, the status saying nothing answers) settles.
    let total = || u64::try_from(requests.total()).unwrap_or(u64::MAX);
    operator_kit::testing::wait_until_settled(
        "the rollout's requests to end",
        TIMEOUT,
        Duration::from_secs(3),
        total,
    )
    .await?;
    let settled = checks(&operator);
    let attempts = sentinel_attempts.load(Ordering::SeqCst);
    let (before, total_before) = (requests.by_method(), requests.total());
    // A change that is not the operator's (an annotation, written by the test's own client)
    // makes it check the set again; meanwhile the subscriber retries at least twice (three
    // attempts a round).
    namespace
        .api::<RedisSentinel>()
        .patch(
            "silent",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "metadata": { "annotations": { "example.com/touched": "yes" } } }),
            ),
        )
        .await?;
    operator_kit::testing::wait_until("a check and two rounds of retries", TIMEOUT, || {
        checks(&operator) > settled && sentinel_attempts.load(Ordering::SeqCst) >= attempts + 9
    })
    .await?;
    let sent = requests.total() - total_before;
    eprintln!(
        "measured: {} checks and {} attempts to reach a sentinel of an unreachable set sent {sent} \
         API requests (before them: {before:?})",
        checks(&operator) - settled,
        sentinel_attempts.load(Ordering::SeqCst) - attempts
    );
    ensure!(
        sent == 0,
        "an unreachable set sent {sent} API requests: {:?} after {before:?}",
        requests.by_method()
    );
    let resource = namespace.api::<RedisSentinel>().get("silent").await?;
    let status = resource.status.context("no status")?;
    ensure!(
        status.phase != Phase::Ready,
        "an unreachable set is not Ready: {status:?}"
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// A local port that takes each connection and closes it at once, counting them in `attempts`.
async fn closing_port(attempts: Arc<AtomicUsize>) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            attempts.fetch_add(1, Ordering::SeqCst);
            drop(connection);
        }
    });
    Ok(port)
}
