//! The real node of the local cluster (`REAL_NODE=1 hack/cluster.sh up`): containerd and a
//! kubelet run pods for real. A pod pinned to that node starts real processes from the locally
//! built images, its probes run, it gets an address on the pod network that the host reaches,
//! it reaches the API server, Services work by name (CoreDNS, kube-proxy), and `exec` and
//! `port-forward` go through the API server to the kubelet and containerd. The seed's
//! standalone Redis runs there as a real `redis-server`.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, DeleteParams, PostParams};
use operator_kit::testing::TestNamespace;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use integration_tests::local_redis::FailedWrite;
use integration_tests::real_node as real_node_support;
use real_node_support::is_ready;

const TIMEOUT: Duration = Duration::from_secs(90);

/// One test at a time on the real node: its pods share two cores with the control plane and
/// the other tests, and exec probes with a 1 s timeout fail when three Redis sets start at
/// once (seen in CI: the seed's probes timed out and liveness restarted healthy containers).
static REAL_NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const PAGE: &str = "served by a real process";

/// `GET /index.html` over a byte stream; returns the body.
async fn get_page<S>(mut stream: S) -> Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    ensure!(head.split_whitespace().nth(1) == Some("200"), "{head}");
    Ok(body.trim().to_owned())
}

/// Runs `command` in container `container` of pod `web`; returns its standard output, and
/// fails unless it exits 0.
async fn exec_output(pods: &kube::Api<Pod>, container: &str, command: &[&str]) -> Result<String> {
    let mut attached = pods
        .exec(
            "web",
            command.to_vec(),
            &AttachParams::default().container(container).stderr(false),
        )
        .await?;
    let mut output = attached.stdout().context("no stdout")?;
    let exited = attached.take_status().context("no status")?;
    let mut text = String::new();
    output.read_to_string(&mut text).await?;
    let status = exited.await.context("no exit status")?;
    ensure!(
        status.status.as_deref() == Some("Success"),
        "{command:?}: {status:?}"
    );
    Ok(text)
}

#[tokio::test]
async fn a_pod_on_the_real_node_runs_probes_serves_and_reaches_the_api_server() -> Result<()> {
    let _one_at_a_time = REAL_NODE.lock().await;
    let namespace = TestNamespace::create("real-node").await?;
    let nodes = kube::Api::<k8s_openapi::api::core::v1::Node>::all(namespace.client().clone());
    ensure!(
        nodes.get_opt("real-node-0").await?.is_some(),
        "no real node: start the cluster with REAL_NODES=3 hack/cluster.sh up"
    );
    let pods = namespace.api::<Pod>();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "web", "labels": { "app": "web" } },
        "spec": {
            "nodeSelector": { "operator-kit.io/real-node": "true" },
            "tolerations": [{ "key": "operator-kit.io/real-node", "operator": "Exists" }],
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "web",
                    "image": "busybox:1",
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c",
                        format!("mkdir -p /www && echo '{PAGE}' > /www/index.html && exec httpd -f -p 8080 -h /www")],
                    "ports": [{ "containerPort": 8080 }],
                    "readinessProbe": {
                        "httpGet": { "path": "/index.html", "port": 8080 },
                        "periodSeconds": 1,
                        "failureThreshold": 1,
                    },
                },
                {
                    // Ready once the API server has answered it: plain HTTP to its TLS port gets
                    // Go's "Client sent an HTTP request to an HTTPS server".
                    "name": "api-check",
                    "image": "busybox:1",
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c",
                        "until printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 3 nc 10.88.0.1 6443 \
                         | grep -q 'HTTPS server'; do sleep 1; done; touch /tmp/reached; exec sleep 3600"],
                    "readinessProbe": {
                        "exec": { "command": ["test", "-f", "/tmp/reached"] },
                        "periodSeconds": 1,
                    },
                },
            ],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let ready = namespace
        .wait_for(&pods, "web", "Ready", TIMEOUT, |pod: &Pod| {
            is_ready(pod) == Some(true)
        })
        .await?;
    let status = ready.status.context("no status")?;
    // Node i has the address 10.88.0.1<i> and the pod network 10.89.<i>.0/24.
    let node = ready
        .spec
        .as_ref()
        .and_then(|spec| spec.node_name.as_deref())
        .and_then(|name| name.strip_prefix("real-node-"))
        .context("not on a real node")?
        .to_owned();
    ensure!(
        status.host_ip.as_deref() == Some(format!("10.88.0.1{node}").as_str()),
        "{status:?}"
    );
    let pod_ip = status.pod_ip.context("no pod IP")?;
    ensure!(
        pod_ip.starts_with(&format!("10.89.{node}.")),
        "pod IP {pod_ip}"
    );

    // The host reaches the pod on the pod network.
    let direct = tokio::net::TcpStream::connect((pod_ip.as_str(), 8080)).await?;
    ensure!(get_page(direct).await? == PAGE);

    // port-forward: API server → kubelet → containerd's stream server → the pod.
    let mut forwarder = pods.portforward("web", &[8080]).await?;
    let forwarded = forwarder.take_stream(8080).context("no forwarded stream")?;
    ensure!(get_page(forwarded).await? == PAGE);

    // exec: the process serving is the container's PID 1, really running.
    let cmdline = exec_output(&pods, "web", &["cat", "/proc/1/cmdline"])
        .await?
        .replace('\0', " ");
    ensure!(cmdline.contains("httpd"), "PID 1 runs {cmdline:?}");

    // Services: cluster DNS (CoreDNS) names the Service, kube-proxy carries it to the pod.
    let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "web" },
        "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80, "targetPort": 8080 }] },
    }))?;
    namespace
        .api::<k8s_openapi::api::core::v1::Service>()
        .create(&PostParams::default(), &service)
        .await?;
    let cluster_ip = namespace
        .api::<k8s_openapi::api::core::v1::Service>()
        .get("web")
        .await?
        .spec
        .and_then(|spec| spec.cluster_ip)
        .context("no cluster IP")?;
    // CoreDNS answers the pod's query for the Service's name with its cluster IP.
    let fqdn = format!("web.{}.svc.cluster.local", namespace.name());
    let answer = exec_output(&pods, "api-check", &["nslookup", &fqdn]).await?;
    ensure!(
        answer.contains(&cluster_ip),
        "{fqdn} → {answer:?}, not {cluster_ip}"
    );
    // kube-proxy carries the cluster IP to the pod (once it has synced the new Service).
    let mut through_service = None;
    for _ in 0..50 {
        if let Ok(stream) = tokio::net::TcpStream::connect((cluster_ip.as_str(), 80)).await {
            through_service = Some(get_page(stream).await?);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        through_service.as_deref() == Some(PAGE),
        "{through_service:?}"
    );

    // The readiness probe runs: without the page the pod turns NotReady.
    exec_output(&pods, "web", &["rm", "/www/index.html"]).await?;
    namespace
        .wait_for(&pods, "web", "NotReady", TIMEOUT, |pod: &Pod| {
            is_ready(pod) == Some(false)
        })
        .await?;

    pods.delete("web", &DeleteParams::default()).await?;
    namespace.wait_for_deletion(&pods, "web", TIMEOUT).await?;
    namespace.delete().await?;
    Ok(())
}

/// The seed's standalone Redis (`examples/redis-standalone.yaml`) with a password Secret and
/// pinned to the real node; waits until it is Ready.
async fn create_seed_redis(namespace: &TestNamespace, password: &str) -> Result<()> {
    use redis_operator::v1beta1::{Phase, Redis};

    namespace
        .create_secret("redis-auth", "password", password)
        .await?;
    let mut redis: Redis =
        serde_yaml::from_str(include_str!("../../examples/redis-standalone.yaml"))?;
    let mut spec = serde_json::to_value(&redis.spec)?;
    spec["kubernetesConfig"]["redisSecret"] = json!({ "name": "redis-auth", "key": "password" });
    (spec["nodeSelector"], spec["tolerations"]) = real_node_support::real_node_placement();
    redis.spec = serde_json::from_value(spec)?;
    let redises = namespace.api::<Redis>();
    redises.create(&PostParams::default(), &redis).await?;
    namespace
        .wait_for(
            &redises,
            "redis-standalone",
            "Ready",
            TIMEOUT,
            |redis: &Redis| {
                redis
                    .status
                    .as_ref()
                    .is_some_and(|status| status.phase == Phase::Ready)
            },
        )
        .await?;
    Ok(())
}

/// The seed document's standalone Redis, unchanged but for a password and the two lines that
/// pin it to the real node: a real `redis-server` in a pod (the locally built image answers
/// to the seed's image name), its claim bound and written, its probes running.
#[tokio::test]
async fn the_seeds_standalone_redis_runs_for_real_with_its_password() -> Result<()> {
    use redis_operator::resp::{Connection, Credentials, Value};

    let _one_at_a_time = REAL_NODE.lock().await;

    const PASSWORD: &str = "seed's password";
    let namespace = TestNamespace::create("real-redis").await?;
    let controller = redis_operator::redis_controller();
    let operator = namespace
        .start_operator(
            redis_operator::OPERATOR_NAME,
            &redis_operator::crds(),
            |operator| operator.with_controller(controller),
        )
        .await?;
    create_seed_redis(&namespace, PASSWORD).await?;
    let pods = namespace.api::<Pod>();
    let pod = pods.get("redis-standalone-0").await?;
    let pod_ip = pod
        .status
        .and_then(|status| status.pod_ip)
        .context("no pod IP")?;

    // A client on the pod network: the password is required, then writes and reads work.
    let stream = tokio::net::TcpStream::connect((pod_ip.as_str(), 6379)).await?;
    let mut anonymous = Connection::open(Box::new(stream), &Credentials::default()).await?;
    let refused = anonymous
        .command(&["SET", "k", "v"])
        .await
        .map_err(anyhow::Error::from);
    ensure!(
        real_node_support::refused_password(&refused),
        "a write without the password: {refused:?}"
    );
    let stream = tokio::net::TcpStream::connect((pod_ip.as_str(), 6379)).await?;
    let mut client =
        Connection::open(Box::new(stream), &Credentials::password(Some(PASSWORD))).await?;
    client
        .command(&["SET", "seed", "written in a real pod"])
        .await?;
    let value = client.command(&["GET", "seed"]).await?;
    ensure!(
        value.text().as_deref() == Some("written in a real pod"),
        "{value:?}"
    );

    // Through the API server's port-forward, as `kubectl port-forward` does.
    let mut forwarder = pods.portforward("redis-standalone-0", &[6379]).await?;
    let forwarded = forwarder.take_stream(6379).context("no forwarded stream")?;
    let mut forwarded =
        Connection::open(Box::new(forwarded), &Credentials::password(Some(PASSWORD))).await?;
    ensure!(forwarded.command(&["PING"]).await? == Value::Status("PONG".to_owned()));

    // And the seed's own command, from the host: `kubectl port-forward svc/redis-standalone`.
    let local_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut kubectl = operator_kit::testing::tools::OperatorProcess::spawn(
        std::path::Path::new("kubectl"),
        &operator_kit::testing::tools::kubeconfig_path()?,
        &[
            "port-forward",
            "--namespace",
            namespace.name(),
            "svc/redis-standalone",
            &format!("{local_port}:6379"),
        ],
    )?;
    operator_kit::testing::wait_until("kubectl to forward", TIMEOUT, || {
        kubectl.log().contains("Forwarding from")
    })
    .await
    .with_context(|| kubectl.log())?;
    kubectl.check_running()?;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", local_port)).await?;
    let mut through_kubectl =
        Connection::open(Box::new(stream), &Credentials::password(Some(PASSWORD))).await?;
    ensure!(through_kubectl.command(&["PING"]).await? == Value::Status("PONG".to_owned()));
    ensure!(
        through_kubectl
            .command(&["GET", "seed"])
            .await?
            .text()
            .as_deref()
            == Some("written in a real pod")
    );
    drop(through_kubectl);
    drop(kubectl);

    // Its data is on the claim: the file Redis writes is in the volume's directory.
    client.command(&["SAVE"]).await?;
    let claims = namespace.api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>();
    let claim = claims.get("data-redis-standalone-0").await?;
    let volume_name = claim
        .spec
        .and_then(|spec| spec.volume_name)
        .context("claim not bound")?;
    let volume =
        kube::Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(namespace.client().clone())
            .get(&volume_name)
            .await?;
    let directory = volume
        .spec
        .and_then(|spec| spec.host_path)
        .map(|source| source.path)
        .context("not a hostPath volume")?;
    let dump = std::path::Path::new(&directory).join("dump.rdb");
    ensure!(dump.exists(), "{dump:?} missing");

    // A new password in the Secret reaches the running server without a restart: the
    // operator adds it, then removes the old one (no grace here), and says so in the status.
    const NEW_PASSWORD: &str = "seed's rotated password";
    let changed = namespace
        .api::<k8s_openapi::api::core::v1::Secret>()
        .patch(
            "redis-auth",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "stringData": { "password": NEW_PASSWORD } })),
        )
        .await?;
    let version = changed.metadata.resource_version.context("no version")?;
    let rotated = std::time::Instant::now();
    namespace
        .wait_for(
            &namespace.api::<redis_operator::v1beta1::Redis>(),
            "redis-standalone",
            "the rotation done",
            TIMEOUT,
            move |redis: &redis_operator::v1beta1::Redis| {
                redis
                    .status
                    .as_ref()
                    .and_then(|status| status.password_rotation.as_ref())
                    .is_some_and(|rotation| {
                        rotation.phase == "Done" && rotation.secret_resource_version == version
                    })
            },
        )
        .await?;
    eprintln!(
        "measured: the standalone server took the new password and dropped the old one {:?} \
         after the Secret changed",
        rotated.elapsed()
    );
    let connect = |password: &'static str| {
        let address = (pod_ip.clone(), 6379);
        async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            anyhow::Ok(
                Connection::open(Box::new(stream), &Credentials::password(Some(password))).await?,
            )
        }
    };
    let old = connect(PASSWORD).await;
    ensure!(
        real_node_support::refused_password(&old),
        "the old password is not refused: {:?}",
        old.err()
    );
    let mut renewed = connect(NEW_PASSWORD).await?;
    ensure!(
        renewed.command(&["GET", "seed"]).await?.text().as_deref() == Some("written in a real pod")
    );
    let pod = pods.get("redis-standalone-0").await?;
    ensure!(
        real_node_support::restart_count(&pod, "redis") == 0 && is_ready(&pod) == Some(true),
        "the rotation restarted the server or made it unready"
    );

    // The probes run: a Redis that no longer takes the probes' credentials (the operator's
    // user, which a client's password change never touches) fails its readiness probe (the
    // pod turns NotReady), then its liveness probe (the container is restarted, and with the
    // pod's passwords it is Ready again).
    renewed
        .command(&[
            "ACL",
            "SETUSER",
            "redis-operator",
            "resetpass",
            ">not the pod's",
        ])
        .await?;
    namespace
        .wait_for(
            &pods,
            "redis-standalone-0",
            "NotReady",
            TIMEOUT,
            |pod: &Pod| is_ready(pod) == Some(false),
        )
        .await?;
    namespace
        .wait_for(
            &pods,
            "redis-standalone-0",
            "restarted by its liveness probe, and Ready",
            TIMEOUT,
            |pod: &Pod| {
                is_ready(pod) == Some(true)
                    && pod
                        .status
                        .as_ref()
                        .and_then(|status| status.container_statuses.as_ref())
                        .is_some_and(|statuses| {
                            statuses.iter().any(|status| status.restart_count >= 1)
                        })
            },
        )
        .await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

/// The seed's demo of high availability, on real pods: `examples/redis-sentinel.yaml` (three
/// pods × Redis + Sentinel, the seed's exec probes), the operator out of the cluster reaching
/// them through port-forward (as `cargo run` does), a writer whose every write is
/// acknowledged with `WAIT 1`; then `kubectl delete pod` of the master (its preStop hands
/// over: a replica takes over, `<name>-master` selects it, the old pod comes back as a replica)
/// and a kill -9 of the next master's process (the kubelet restarts the container within a
/// second, before the sentinels' 5 s `downAfterMilliseconds`: the same node is master again,
/// on its own data). Each time no acknowledged write is lost.
#[tokio::test]
async fn the_seeds_sentinel_demo_on_real_pods_loses_no_acknowledged_write() -> Result<()> {
    use real_node_support::{
        SENTINEL_NAME, acknowledged_writes, connect_pod, create_seed_sentinel,
        kill_container_process, ready_master, restart_count, service_addresses,
    };
    use redis_operator::resp::Value;

    let _one_at_a_time = REAL_NODE.lock().await;

    let namespace = TestNamespace::create("real-sentinel").await?;
    // The operator as README's `cargo run --bin redis-operator` runs it: the binary on the
    // host with the admin kubeconfig, reaching the pods through the API server's port-forward.
    for crd in redis_operator::crds() {
        operator_kit::testing::install_crd(namespace.client(), &crd, TIMEOUT).await?;
    }
    let mut operator = operator_kit::testing::tools::OperatorProcess::spawn(
        &real_node_support::release_binary("redis-operator")?,
        &operator_kit::testing::tools::kubeconfig_path()?,
        &[
            "--watch-namespace",
            namespace.name(),
            "--admin-address",
            "127.0.0.1:0",
        ],
    )?;
    let password = create_seed_sentinel(&namespace).await?;
    let pods = namespace.api::<Pod>();
    let master_service = format!("{SENTINEL_NAME}-master");
    let patience = Duration::from_secs(300);

    let mut master = ready_master(&namespace, patience).await?;
    let mut acknowledged = Vec::new();
    for round in ["delete", "kill"] {
        let mut client = connect_pod(&pods, &master, &password).await?;
        acknowledged.extend(acknowledged_writes(&mut client, round, 100).await?);
        let old = master.clone();
        let old_pod = pods.get(&old).await?;
        if round == "delete" {
            // The master's preStop hook hands over before the pod goes: a replica is
            // promoted, and the pod comes back (a new one, on the same claim) as a replica.
            pods.delete(&old, &DeleteParams::default()).await?;
            let old_uid = old_pod.metadata.uid.clone();
            namespace
                .wait_for(
                    &pods,
                    &old,
                    "recreated and Ready",
                    patience,
                    move |pod: &Pod| pod.metadata.uid != old_uid && is_ready(pod) == Some(true),
                )
                .await?;
            master = ready_master(&namespace, patience).await?;
            ensure!(
                master != old,
                "no replica took over from the deleted master {old}; events:\n{}",
                operator_kit::testing::recent_events(namespace.client(), namespace.name(), 30)
                    .await
            );
            // The operator heard the sentinels announce it, through the port-forward.
            let resource = namespace
                .api::<redis_operator::v1beta1::RedisSentinel>()
                .get(SENTINEL_NAME)
                .await?;
            let failover = resource
                .status
                .and_then(|status| status.last_failover)
                .context("no status.lastFailover")?;
            ensure!(
                (failover.from.as_str(), failover.to.as_str()) == (old.as_str(), master.as_str()),
                "status.lastFailover {failover:?}"
            );
        } else {
            // One SIGKILL proves little: the kubelet restarts redis-server within a second or
            // two, before the sentinels' down-after has passed, and it is rightly the master
            // again, with its data. To prove the failover and the rejoin, this master keeps
            // crashing: every redis-server the kubelet starts in its container is killed until
            // the sentinel majority (which the operator's status follows) names another master.
            let before = restart_count(&old_pod, "redis");
            let resources = namespace.api::<redis_operator::v1beta1::RedisSentinel>();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            let mut kills = 0;
            loop {
                if kill_container_process(&pods.get(&old).await?, "redis").is_ok() {
                    kills += 1;
                }
                let named = resources
                    .get(SENTINEL_NAME)
                    .await?
                    .status
                    .and_then(|status| status.master);
                if named.as_ref().is_some_and(|named| *named != old) {
                    break;
                }
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "kill: after {kills} kills of {old}'s redis the master is still {named:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            ensure!(
                kills > 0,
                "kill: no redis-server of {old} was ever running to kill"
            );
            namespace
                .wait_for(
                    &pods,
                    &old,
                    "its redis restarted and Ready",
                    patience,
                    move |pod: &Pod| {
                        restart_count(pod, "redis") > before && is_ready(pod) == Some(true)
                    },
                )
                .await?;
            master = ready_master(&namespace, patience).await?;
            eprintln!("measured: kill: {kills} kills of {old}'s redis-server until a failover");
        }
        eprintln!("measured: {round} of master {old}: the master is now {master}");
        // <name>-master selects the master's pod.
        let master_ip = pods
            .get(&master)
            .await?
            .status
            .and_then(|status| status.pod_ip)
            .context("no pod IP")?;
        let mut addresses = Vec::new();
        for _ in 0..300 {
            addresses = service_addresses(&namespace, &master_service).await?;
            if addresses == [master_ip.clone()] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(
            addresses == [master_ip.clone()],
            "{round}: {master_service} selects {addresses:?}, not {master_ip}"
        );
        // Every acknowledged write is on the master.
        let mut client = connect_pod(&pods, &master, &password).await?;
        for key in &acknowledged {
            let value = client.command(&["EXISTS", key]).await?;
            ensure!(value == Value::Integer(1), "{round}: {key} lost");
        }
        // A kill that nothing failed over from proves nothing about the rejoin below.
        ensure!(
            master != old,
            "{round}: {old} is master again; no replica took over"
        );
        // The old pod is back as a replica, and the set is Ready with all three.
        let mut returned = connect_pod(&pods, &old, &password).await?;
        let role = returned.command(&["ROLE"]).await?;
        ensure!(
            role.items().first().and_then(Value::text).as_deref() == Some("slave"),
            "{round}: {old} came back as {role:?}"
        );
        ready_master(&namespace, patience).await?;
    }
    operator.check_running()?;
    drop(operator);
    namespace.delete().await?;
    Ok(())
}

/// What one client of the real pods saw: keys a replica acknowledged, and failed writes.
#[derive(Default)]
struct RealClientLog {
    acknowledged: Vec<String>,
    errors: Vec<FailedWrite>,
}

/// A client writing with `password` every 20 ms until `stop`, each write on fresh connections
/// (so that each authenticates again) to the pod that says it is master.
fn spawn_real_client(
    ips: Vec<String>,
    name: &'static str,
    password: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<RealClientLog> {
    use redis_operator::resp::Value;
    tokio::spawn(async move {
        let mut log = RealClientLog::default();
        let mut index = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let at = std::time::Instant::now();
            let key = format!("{name}:{index}");
            index += 1;
            let mut outcome = Err(anyhow::anyhow!("no pod said it was master"));
            for ip in &ips {
                let attempt = async {
                    let mut connection =
                        real_node_support::connect((ip.as_str(), 6379), &password).await?;
                    let role = connection.command(&["ROLE"]).await?;
                    if role.items().first().and_then(Value::text).as_deref() != Some("master") {
                        return Ok(None);
                    }
                    connection.command(&["SET", &key, name]).await?;
                    let replicas = connection.command(&["WAIT", "1", "1000"]).await?;
                    anyhow::Ok(Some(
                        matches!(replicas, Value::Integer(count) if count >= 1),
                    ))
                };
                match attempt.await {
                    Ok(None) => {}
                    Ok(Some(acknowledged)) => {
                        outcome = Ok(acknowledged);
                        break;
                    }
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                }
            }
            match outcome {
                Ok(true) => log.acknowledged.push(key),
                Ok(false) => {}
                Err(error) => log.errors.push(FailedWrite::now(at, error)),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        log
    })
}

#[tokio::test]
async fn a_password_rotation_on_real_pods_restarts_nothing_and_loses_no_write() -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams};
    use real_node_support::{SENTINEL_NAME, create_seed_sentinel, ready_master, restart_count};
    use redis_operator::resp::Value;
    use redis_operator::v1beta1::RedisSentinel;

    const NEW_PASSWORD: &str = "rotated on the real node";
    let _one_at_a_time = REAL_NODE.lock().await;
    let namespace = TestNamespace::create("real-rotation").await?;
    for crd in redis_operator::crds() {
        operator_kit::testing::install_crd(namespace.client(), &crd, TIMEOUT).await?;
    }
    let mut operator = operator_kit::testing::tools::OperatorProcess::spawn(
        &real_node_support::release_binary("redis-operator")?,
        &operator_kit::testing::tools::kubeconfig_path()?,
        &[
            "--watch-namespace",
            namespace.name(),
            "--admin-address",
            "127.0.0.1:0",
        ],
    )?;
    let password = create_seed_sentinel(&namespace).await?;
    // The example keeps the old password 5 minutes; 10 s is enough to see both work.
    const GRACE: Duration = Duration::from_secs(10);
    let sentinels = namespace.api::<RedisSentinel>();
    sentinels
        .patch(
            SENTINEL_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "passwordRotation": {
                "oldPasswordGraceSeconds": GRACE.as_secs(),
            } } })),
        )
        .await?;
    let patience = Duration::from_secs(300);
    ready_master(&namespace, patience).await?;
    let pods = namespace.api::<Pod>();
    let restarts = |listed: &[Pod]| -> Vec<i32> {
        listed
            .iter()
            .flat_map(|pod| ["redis", "sentinel"].map(|container| restart_count(pod, container)))
            .collect()
    };
    let listed = pods.list(&kube::api::ListParams::default()).await?.items;
    let before = restarts(&listed);
    let ips: Vec<String> = listed
        .iter()
        .filter_map(|pod| pod.status.as_ref()?.pod_ip.clone())
        .collect();
    ensure!(ips.len() == 3, "{ips:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let old_client = spawn_real_client(ips.clone(), "old", password.clone(), stop.clone());
    let new_client = spawn_real_client(ips.clone(), "new", NEW_PASSWORD.to_owned(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let changed = namespace
        .api::<Secret>()
        .patch(
            "redis-ha-auth",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "password": NEW_PASSWORD } })),
        )
        .await?;
    let changed_at = std::time::Instant::now();
    let version = changed.metadata.resource_version.context("no version")?;
    // Followed through the status: when every pod accepted the new password (its
    // lastTransitionTime, recorded once they all did), and when the old one is gone.
    let mut accepted_at = None;
    let done_at = loop {
        let rotation = sentinels
            .get(SENTINEL_NAME)
            .await?
            .status
            .and_then(|status| status.password_rotation)
            .filter(|rotation| rotation.secret_resource_version == version);
        match rotation.as_ref().map(|rotation| rotation.phase.as_str()) {
            Some("NewPasswordAccepted") if accepted_at.is_none() => {
                let recorded: std::time::SystemTime = rotation
                    .as_ref()
                    .context("no rotation")?
                    .last_transition_time
                    .parse::<k8s_openapi::jiff::Timestamp>()?
                    .into();
                let ago = std::time::SystemTime::now()
                    .duration_since(recorded)
                    .unwrap_or_default();
                accepted_at = Some(std::time::Instant::now() - ago);
            }
            Some("Done") => break std::time::Instant::now(),
            _ => {}
        }
        ensure!(
            changed_at.elapsed() < patience,
            "no rotation: {rotation:?}\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Probes keep passing for two periods after (they use the operator's own user).
    tokio::time::sleep(Duration::from_secs(12)).await;
    stop.store(true, Ordering::Relaxed);
    let (old_log, new_log) = (old_client.await?, new_client.await?);
    let accepted_at = accepted_at.context("the status never said NewPasswordAccepted")?;
    // The old password works for the whole grace, the new one from the acceptance on (a write
    // spans several round trips: see `FailedWrite`).
    let old_before: Vec<_> = old_log
        .errors
        .iter()
        .filter(|write| write.failed < accepted_at + GRACE)
        .collect();
    let old_after = old_log
        .errors
        .iter()
        .filter(|write| write.started >= done_at)
        .count();
    let new_after: Vec<_> = new_log
        .errors
        .iter()
        .filter(|write| write.started >= accepted_at)
        .collect();
    let listed = pods.list(&kube::api::ListParams::default()).await?.items;
    eprintln!(
        "measured: the Secret changed; every pod accepted the new password {:?} later, the old \
         one was gone {:?} later (grace {GRACE:?}); old-password client {} acknowledged writes, \
         {} errors until the grace ended, {old_after} after the removal; new-password client {} \
         acknowledged, {} errors before the acceptance, {} after; container restarts {:?} -> {:?}",
        accepted_at.saturating_duration_since(changed_at),
        done_at - changed_at,
        old_log.acknowledged.len(),
        old_before.len(),
        new_log.acknowledged.len(),
        new_log.errors.len() - new_after.len(),
        new_after.len(),
        before,
        restarts(&listed)
    );
    ensure!(old_before.is_empty(), "{old_before:?}");
    ensure!(new_after.is_empty(), "{new_after:?}");
    ensure!(
        old_after > 0,
        "the old password kept working: the test proved nothing"
    );
    ensure!(restarts(&listed) == before, "a container restarted");
    ensure!(
        listed.iter().all(|pod| is_ready(pod) == Some(true)),
        "a pod is not ready"
    );
    // Every pod takes the new password only, and holds every acknowledged write.
    let master = ready_master(&namespace, patience).await?;
    for ip in &ips {
        let old = real_node_support::connect((ip.as_str(), 6379), &password).await;
        ensure!(
            real_node_support::refused_password(&old),
            "{ip} does not refuse the old password: {:?}",
            old.err()
        );
    }
    let master_ip = pods
        .get(&master)
        .await?
        .status
        .and_then(|status| status.pod_ip)
        .context("no pod IP")?;
    let mut client = real_node_support::connect((master_ip.as_str(), 6379), NEW_PASSWORD).await?;
    for key in old_log.acknowledged.iter().chain(&new_log.acknowledged) {
        ensure!(
            client.command(&["EXISTS", key]).await? == Value::Integer(1),
            "{key} lost"
        );
    }
    operator.check_running()?;
    ensure!(
        !operator.log().contains(NEW_PASSWORD) && !operator.log().contains(&password),
        "a password reached the operator's log"
    );
    drop(operator);
    namespace.delete().await?;
    Ok(())
}

/// redis-operator as users install it: `helm install` of `charts/redis-operator` with the
/// locally built image (named as the chart's default), in a pod on the real node. It is Ready
/// through its own `/readyz`, uses in-cluster configuration and its ServiceAccount, holds its
/// Lease, and reconciles the seed's standalone Redis into a real, Ready redis-server.
#[tokio::test]
async fn the_operator_installed_by_helm_runs_in_a_pod_and_reconciles() -> Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    use operator_kit::testing::tools::run;

    let _one_at_a_time = REAL_NODE.lock().await;

    let namespace = TestNamespace::create("real-helm").await?;
    real_node_support::helm_install_on_real_nodes(
        &namespace,
        "redis-operator",
        1,
        &["leaderElection.enabled=true"],
    )
    .await?;
    // It holds its Lease.
    let leases = namespace.api::<Lease>();
    namespace
        .wait_for(
            &leases,
            "redis-operator",
            "held",
            TIMEOUT,
            |lease: &Lease| {
                lease
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.holder_identity.as_ref())
                    .is_some_and(|holder| holder.starts_with("redis-operator-"))
            },
        )
        .await?;

    create_seed_redis(&namespace, "in-cluster").await?;
    run(
        "helm",
        &[
            "uninstall",
            "redis-operator",
            "--namespace",
            namespace.name(),
            "--wait",
        ],
        None,
    )?;
    namespace.delete().await?;
    Ok(())
}

/// `GET /` over a new connection to `address`; the page, or why not.
async fn fetch(address: (&str, u16)) -> Result<String> {
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .context("connect timed out")??;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: adam-doc\r\n\r\n")
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut response))
        .await
        .context("read timed out")??;
    let (head, body) = response.split_once("\r\n\r\n").context("not HTTP")?;
    ensure!(head.split_whitespace().nth(1) == Some("200"), "{head}");
    Ok(body.to_owned())
}

/// app-operator as users install it (`helm install charts/app-operator`, its image in a pod)
/// deploys the seed's adam-doc site (`examples/adam-doc.yaml`: the image it names, port 4000)
/// on the real node; its Service answers 200; an image update rolls out while a client polls
/// without pause (a new connection per request), and the failed requests are reported.
#[tokio::test]
async fn the_adam_doc_app_serves_on_port_4000_and_rolls_out_an_update() -> Result<()> {
    use app_operator::v1beta1::App;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Patch, PatchParams};
    use operator_kit::testing::tools::run;

    let _one_at_a_time = REAL_NODE.lock().await;

    let namespace = TestNamespace::create("real-app").await?;
    real_node_support::helm_install_on_real_nodes(&namespace, "app-operator", 1, &[]).await?;
    let deployments = namespace.api::<Deployment>();

    let mut app: App = serde_yaml::from_str(include_str!("../../examples/adam-doc.yaml"))?;
    let (node_selector, tolerations) = real_node_support::real_node_placement();
    app.spec.node_selector = serde_json::from_value(node_selector)?;
    app.spec.tolerations = serde_json::from_value(tolerations)?;
    let apps = namespace.api::<App>();
    apps.create(&PostParams::default(), &app).await?;
    let rolled_out = |version: &'static str| {
        move |deployment: &Deployment| {
            let image_is = deployment
                .spec
                .template
                .spec
                .as_ref()
                .and_then(|pod| pod.containers.first())
                .and_then(|container| container.image.as_deref())
                .is_some_and(|image| image.ends_with(version));
            image_is
                && deployment.status.as_ref().is_some_and(|status| {
                    status.observed_generation == deployment.metadata.generation
                        && status.updated_replicas == Some(2)
                        && status.available_replicas == Some(2)
                        && status.replicas == Some(2)
                })
        }
    };
    namespace
        .wait_for(
            &deployments,
            "adam-doc",
            "2 replicas of 1.0 available",
            TIMEOUT,
            rolled_out(":1.0"),
        )
        .await?;
    let cluster_ip = namespace
        .api::<Service>()
        .get("adam-doc")
        .await?
        .spec
        .and_then(|spec| spec.cluster_ip)
        .context("no cluster IP")?;
    let mut page = Err(anyhow::anyhow!("not fetched"));
    for _ in 0..50 {
        page = fetch((cluster_ip.as_str(), 4000)).await;
        if page.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(page?.contains("adam-doc 1.0"), "not the 1.0 page");

    // The update, under a client polling without pause.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = tokio::spawn({
        let (cluster_ip, stop) = (cluster_ip.clone(), stop.clone());
        async move {
            let (mut served, mut failed, mut last_error) = (0_u32, 0_u32, None);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match fetch((cluster_ip.as_str(), 4000)).await {
                    Ok(_) => served += 1,
                    Err(error) => {
                        failed += 1;
                        last_error = Some(error.to_string());
                    }
                }
            }
            (served, failed, last_error)
        }
    });
    let patch = json!({ "spec": { "image": "registry.example.com/adam/adam-doc:1.1" } });
    apps.patch("adam-doc", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    namespace
        .wait_for(
            &deployments,
            "adam-doc",
            "2 replicas of 1.1 available",
            TIMEOUT,
            rolled_out(":1.1"),
        )
        .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failed, last_error) = poller.await?;
    eprintln!(
        "measured: rollout 1.0 → 1.1 under a polling client: {served} requests served, {failed} \
         failed (last error: {last_error:?})"
    );
    ensure!(served > 0, "nothing served during the rollout");
    ensure!(
        failed == 0,
        "{failed} of {} requests failed during the rollout (last error: {last_error:?})",
        served + failed
    );
    // Once kube-proxy has dropped the old pods' endpoints, only 1.1 answers.
    let mut page = String::new();
    for _ in 0..50 {
        page = fetch((cluster_ip.as_str(), 4000)).await.unwrap_or_default();
        if page.contains("adam-doc 1.1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        page.contains("adam-doc 1.1"),
        "not the 1.1 page after the rollout: {page}"
    );
    run(
        "helm",
        &[
            "uninstall",
            "app-operator",
            "--namespace",
            namespace.name(),
            "--wait",
        ],
        None,
    )?;
    namespace.delete().await?;
    Ok(())
}
