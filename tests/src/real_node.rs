//! Shared by the real-node tests and the real-pod failover benchmark: the seed's
//! `RedisSentinel` example pinned to the real node, its master, its `<name>-master` Service
//! and the host process of a container.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use operator_kit::testing::TestNamespace;
use redis_operator::resp::{Connection, Credentials, Value};
use redis_operator::v1beta1::{Phase, RedisSentinel};
use serde_json::json;

/// The name of the example's RedisSentinel.
pub const SENTINEL_NAME: &str = "redis-ha";

/// The release binary of `operator` (`cargo build --release --bin <operator>`; `hack/test.sh`
/// builds it for the operators' images), beside this test's own target directory.
pub fn release_binary(operator: &str) -> Result<std::path::PathBuf> {
    let executable = std::env::current_exe()?;
    // <target>/debug/deps/<test> or <target>/release/deps/<bench>
    let target = executable
        .ancestors()
        .nth(3)
        .context("no target directory")?;
    let binary = target.join("release").join(operator);
    ensure!(
        binary.is_file(),
        "{binary:?} is missing: run `cargo build --release --bin {operator}` (hack/test.sh does)"
    );
    Ok(binary)
}

/// Whether a pod's `Ready` condition holds (`None`: not reported yet).
pub fn is_ready(pod: &Pod) -> Option<bool> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|condition| condition.type_ == "Ready")
        .map(|condition| condition.status == "True")
}

/// The node selector and toleration that pin a pod to the real node.
pub fn real_node_placement() -> (serde_json::Value, serde_json::Value) {
    (
        json!({ "operator-kit.io/real-node": "true" }),
        json!([{ "key": "operator-kit.io/real-node", "operator": "Exists" }]),
    )
}

/// Creates `examples/redis-sentinel.yaml` (its Secret and its RedisSentinel) in `namespace`,
/// pinned to the real node; returns the password.
pub async fn create_seed_sentinel(namespace: &TestNamespace) -> Result<String> {
    let mut documents = include_str!("../../examples/redis-sentinel.yaml").split("\n---\n");
    let secret: Secret = serde_yaml::from_str(documents.next().context("no Secret")?)?;
    let password = secret
        .string_data
        .as_ref()
        .and_then(|data| data.get("password").cloned())
        .context("no password")?;
    namespace
        .api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await?;
    let mut resource: RedisSentinel =
        serde_yaml::from_str(documents.next().context("no RedisSentinel")?)?;
    let (node_selector, tolerations) = real_node_placement();
    resource.spec.pod.node_selector = serde_json::from_value(node_selector)?;
    resource.spec.pod.tolerations = serde_json::from_value(tolerations)?;
    namespace
        .api::<RedisSentinel>()
        .create(&PostParams::default(), &resource)
        .await?;
    Ok(password)
}

/// Waits until the RedisSentinel is Ready with a master; returns the master's pod.
pub async fn ready_master(namespace: &TestNamespace, timeout: Duration) -> Result<String> {
    let ready = namespace
        .wait_for(
            &namespace.api::<RedisSentinel>(),
            SENTINEL_NAME,
            "Ready with a master",
            timeout,
            |resource: &RedisSentinel| {
                resource
                    .status
                    .as_ref()
                    .is_some_and(|status| status.phase == Phase::Ready && status.master.is_some())
            },
        )
        .await?;
    ready
        .status
        .and_then(|status| status.master)
        .context("no master")
}

/// A connection to `address`, authenticated with `password`, within a second.
pub async fn connect(address: (&str, u16), password: &str) -> Result<Connection> {
    let stream = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .context("connect timed out")??;
    Ok(Connection::open(Box::new(stream), &Credentials::password(Some(password))).await?)
}

/// Whether `result` failed because the server refused the password (`WRONGPASS`, `NOAUTH`),
/// not for any other reason: a timeout or a pod that is down is no refusal.
pub fn refused_password<T>(result: &Result<T>) -> bool {
    result.as_ref().err().is_some_and(|error| {
        error
            .downcast_ref::<redis_operator::resp::RespError>()
            .is_some_and(redis_operator::sentinel::data_plane::refuses_password)
    })
}

/// A connection to the Redis of `pod` by its pod IP.
pub async fn connect_pod(pods: &kube::Api<Pod>, pod: &str, password: &str) -> Result<Connection> {
    let ip = pods
        .get(pod)
        .await?
        .status
        .and_then(|status| status.pod_ip)
        .context("no pod IP")?;
    connect((ip.as_str(), 6379), password).await
}

/// Writes `count` keys `<prefix>:<n>` on `connection`, each acknowledged by a replica
/// (`WAIT 1`); returns them.
pub async fn acknowledged_writes(
    connection: &mut Connection,
    prefix: &str,
    count: usize,
) -> Result<Vec<String>> {
    let mut keys = Vec::with_capacity(count);
    for index in 0..count {
        let key = format!("{prefix}:{index}");
        connection.command(&["SET", &key, prefix]).await?;
        let replicas = connection.command(&["WAIT", "1", "2000"]).await?;
        ensure!(
            matches!(replicas, Value::Integer(count) if count >= 1),
            "{key} not acknowledged: {replicas:?}"
        );
        keys.push(key);
    }
    Ok(keys)
}

/// The ready addresses behind the Service `service`.
pub async fn service_addresses(namespace: &TestNamespace, service: &str) -> Result<Vec<String>> {
    let listed = namespace
        .api::<EndpointSlice>()
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await?;
    Ok(listed
        .items
        .iter()
        .flat_map(|slice| slice.endpoints.iter().flatten())
        .filter(|endpoint| endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|endpoint| endpoint.addresses.clone())
        .collect())
}

/// The container id of container `name` of `pod` (without the `containerd://` prefix).
pub fn container_id(pod: &Pod, name: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|status| status.name == name)?
        .container_id
        .as_deref()
        .map(|id| id.trim_start_matches("containerd://").to_owned())
}

/// The restarts of container `name` of `pod`.
pub fn restart_count(pod: &Pod, name: &str) -> i32 {
    pod.status
        .as_ref()
        .and_then(|status| status.container_statuses.as_ref())
        .and_then(|statuses| statuses.iter().find(|status| status.name == name))
        .map_or(0, |status| status.restart_count)
}

/// The local cluster's state directory (`.cluster/`, or `OPERATOR_KIT_CLUSTER_DIR`).
pub fn cluster_dir() -> String {
    std::env::var("OPERATOR_KIT_CLUSTER_DIR")
        .unwrap_or_else(|_| format!("{}/../.cluster", env!("CARGO_MANIFEST_DIR")))
}

/// The index of the real node `name` (`real-node-<index>`).
pub fn node_index(name: &str) -> Result<usize> {
    name.strip_prefix("real-node-")
        .and_then(|index| index.parse().ok())
        .with_context(|| format!("{name:?} is not a real node"))
}

/// The index of the real node `pod` runs on.
pub fn node_of(pod: &Pod) -> Result<usize> {
    node_index(
        pod.spec
            .as_ref()
            .and_then(|spec| spec.node_name.as_deref())
            .context("the pod is not scheduled")?,
    )
}

/// The host process id of a running container on real node `node`, from its containerd (for a kill -9
/// from outside: inside its PID namespace, PID 1 ignores SIGKILL).
pub fn host_pid(node: usize, container_id: &str) -> Result<u32> {
    let socket = format!("{}/nodes/{node}/containerd.sock", cluster_dir());
    let output = std::process::Command::new("ctr")
        .args(["--address", &socket, "--namespace", "k8s.io", "tasks", "ls"])
        .output()
        .context("failed to run ctr")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    listing
        .lines()
        .find(|line| line.starts_with(container_id))
        // A stopped task keeps its last PID, which the kernel may have handed to another
        // process since: only a running task's PID is worth a kill.
        .filter(|line| line.split_whitespace().nth(2) == Some("RUNNING"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|pid| pid.parse().ok())
        .with_context(|| format!("no running task {container_id} in {listing}"))
}

/// kill -9 of the process of container `container` of `pod`, from the host.
pub fn kill_container_process(pod: &Pod, container: &str) -> Result<()> {
    let id = container_id(pod, container).with_context(|| format!("no {container} container"))?;
    let pid = host_pid(node_of(pod)?, &id)?;
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -9 {pid}: {status}");
    Ok(())
}

/// `helm install` of `charts/<operator>` into the test's namespace, watching only it, with
/// `replicas` pods on the real nodes (each on a node of its own) and `--set` values `extra`;
/// waits until every replica is available (through the operator's own `/readyz`).
pub async fn helm_install_on_real_nodes(
    namespace: &TestNamespace,
    operator: &str,
    replicas: usize,
    extra: &[&str],
) -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;

    let ns = namespace.name();
    let chart = format!("{}/../charts/{operator}", env!("CARGO_MANIFEST_DIR"));
    let watch = format!("watchNamespace={ns}");
    let replica_count = format!("replicaCount={replicas}");
    // The operator's own pods only (its release is named after it): the pods it manages carry
    // `app.kubernetes.io/name: <operator>` too, and must not be kept off the operator's nodes.
    let spread = json!({ "podAntiAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [{
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": { "matchLabels": {
            "app.kubernetes.io/name": operator,
            "app.kubernetes.io/instance": operator,
        } },
    }] } });
    let affinity = format!("affinity={spread}");
    let mut args = vec![
        "install",
        operator,
        &chart,
        "--namespace",
        ns,
        "--set",
        &watch,
        "--set",
        &replica_count,
        "--set-json",
        &affinity,
        "--set-string",
        "nodeSelector.operator-kit\\.io/real-node=true",
        "--set",
        "tolerations[0].key=operator-kit.io/real-node",
        "--set",
        "tolerations[0].operator=Exists",
    ];
    for value in extra {
        args.extend(["--set", value]);
    }
    operator_kit::testing::tools::run("helm", &args, None).with_context(|| {
        format!(
            "helm install failed (the image comes from `cargo build --release --bin {operator}` \
             and `hack/images.sh import-operators <containerd socket>`, which hack/test.sh runs)"
        )
    })?;
    let deployments = namespace.api::<Deployment>();
    let wanted = i32::try_from(replicas).unwrap_or(i32::MAX);
    namespace
        .wait_for(
            &deployments,
            operator,
            "available",
            Duration::from_secs(120),
            |deployment: &Deployment| {
                deployment
                    .status
                    .as_ref()
                    .and_then(|status| status.available_replicas)
                    == Some(wanted)
            },
        )
        .await?;
    Ok(())
}
