//! Real Redis with Sentinel on this machine, for the tests and benchmarks that need it: a set
//! of local `redis-server` and `redis-sentinel` processes started by redis-operator's own
//! ConfigMap scripts, exactly as a pod starts them, on loopback, and clients of it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use operator_kit::testing::TestNamespace;
use redis_operator::resp::{Connection, Credentials, Value};
use redis_operator::sentinel::build::{self, Names};
use redis_operator::sentinel::data_plane::{
    self, DirectResolver, Memory, Node, Observation, Plan, Settings,
};
use redis_operator::sentinel::passwords::PodPasswords;
use redis_operator::v1beta1::RedisSentinel;
use serde_json::json;

pub const PASSWORD: &str = r#"sentinel "test" pass\word"#;
/// The operator's user's password (the operator generates hex; this one tests the escaping).
pub const OPERATOR_PASSWORD: &str = r#"operator's "own" pass\word"#;

/// What the operator authenticates with before any rotation.
pub fn as_operator() -> Credentials {
    Credentials {
        operator: Some(OPERATOR_PASSWORD.to_owned()),
        passwords: vec![PASSWORD.to_owned()],
    }
}

/// What a client of the set authenticates with: the default user and [`PASSWORD`].
pub fn as_client() -> Credentials {
    Credentials::password(Some(PASSWORD))
}

/// Creates the Secret `name` in `namespace`, holding [`PASSWORD`] under the key `password`.
pub async fn create_password_secret(namespace: &TestNamespace, name: &str) -> Result<()> {
    namespace.create_secret(name, "password", PASSWORD).await?;
    Ok(())
}

/// Creates the operator's Secret of the RedisSentinel `resource` with the passwords a
/// [`LocalSet`]'s processes start with, labelled as that resource's: the operator adopts it
/// (as after a restore from a backup) instead of generating an operator password the local
/// processes do not know.
pub async fn create_pod_passwords(namespace: &TestNamespace, resource: &str) -> Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": format!("{resource}-operator-credentials"),
            "labels": {
                "app.kubernetes.io/name": "redis-operator",
                "app.kubernetes.io/managed-by": "redis-operator",
                "app.kubernetes.io/instance": resource,
            },
        },
        "stringData": { "operator-password": OPERATOR_PASSWORD, "password": PASSWORD },
    }))?;
    namespace
        .api::<Secret>()
        .create(&kube::api::PostParams::default(), &secret)
        .await?;
    Ok(())
}

pub struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port, never the same twice in this process: the tests of a binary run in
/// parallel, and two sets handed the same just-released port would talk to each other's
/// processes (a sentinel then counts the other set's sentinels).
fn free_port() -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
}

/// `capacity` nodes (ports reserved), each a Redis and a Sentinel with its own directories,
/// as pods of `<name>-node` would be.
pub struct LocalSet {
    pub directory: PathBuf,
    pub nodes: Vec<Node>,
    pub resource: RedisSentinel,
    redis: Vec<Option<Process>>,
    sentinels: Vec<Option<Process>>,
    /// What the operator remembers between checks (its `status.master`), as the controller
    /// keeps it.
    pub memory: std::sync::Arc<std::sync::Mutex<Memory>>,
    /// What the operator's Secret holds: the passwords a process starts with.
    pub passwords: std::sync::Mutex<PodPasswords>,
    /// Processes start as pods from before the operator's user did: the clients' password
    /// for everything, no `OPERATOR_PASSWORD`.
    pub before_operator_user: bool,
    /// The operator is a release from before it had its own user: it authenticates with the
    /// clients' password only (and points sentinels at Redis with it).
    pub old_operator: bool,
}

impl LocalSet {
    /// Starts the first `started` of `capacity` nodes of a RedisSentinel called `name` whose
    /// sentinels declare a master down after `down_after` milliseconds.
    pub async fn new(name: &str, capacity: usize, started: usize, down_after: u64) -> Result<Self> {
        Self::start(name, capacity, started, down_after, false).await
    }

    /// [`LocalSet::new`], its processes started as pods of an earlier release, before the
    /// operator had its own user.
    pub async fn before_operator_user(
        name: &str,
        capacity: usize,
        started: usize,
        down_after: u64,
    ) -> Result<Self> {
        Self::start(name, capacity, started, down_after, true).await
    }

    async fn start(
        name: &str,
        capacity: usize,
        started: usize,
        down_after: u64,
        before_operator_user: bool,
    ) -> Result<Self> {
        let resource: RedisSentinel = serde_json::from_value(json!({
            "apiVersion": "redis.operator-kit.io/v1beta1",
            "kind": "RedisSentinel",
            "metadata": { "name": name, "namespace": "local" },
            "spec": {
                "kubernetesConfig": {},
                "sentinel": { "downAfterMilliseconds": down_after, "failoverTimeout": 5000 },
            },
        }))?;
        let directory = std::env::temp_dir().join(format!(
            "operator-kit-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ u128::from(free_port()?)
        ));
        std::fs::create_dir_all(&directory)?;
        let mut nodes = Vec::new();
        for index in 0..capacity {
            nodes.push(Node {
                pod: format!("{name}-node-{index}"),
                host: "127.0.0.1".to_owned(),
                redis_port: free_port()?,
                sentinel_port: free_port()?,
            });
        }
        let mut set = Self {
            directory,
            nodes,
            resource,
            redis: (0..capacity).map(|_| None).collect(),
            sentinels: (0..capacity).map(|_| None).collect(),
            memory: std::sync::Arc::default(),
            passwords: std::sync::Mutex::new(PodPasswords {
                operator: OPERATOR_PASSWORD.to_owned(),
                current: PASSWORD.to_owned(),
                previous: None,
            }),
            before_operator_user,
            old_operator: before_operator_user,
        };
        for index in 0..capacity {
            set.write_config(index)?;
        }
        for index in 0..started {
            set.start_redis(index).await?;
            set.start_sentinel(index).await?;
        }
        Ok(set)
    }

    pub fn settings(&self) -> Settings {
        build::settings(&self.resource.spec)
    }

    /// What the operator's Secret holds now.
    pub fn pod_passwords(&self) -> PodPasswords {
        self.passwords
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// How the operator authenticates, as its controller does.
    pub fn credentials(&self) -> Credentials {
        if self.old_operator {
            Credentials::password(Some(&self.pod_passwords().current))
        } else {
            self.pod_passwords().credentials(None)
        }
    }

    fn node_dir(&self, index: usize) -> PathBuf {
        self.directory.join(format!("node-{index}"))
    }

    /// What a script run by [`LocalSet::command`] on node `index` printed so far.
    pub fn script_log(&self, index: usize, script: &str) -> String {
        std::fs::read_to_string(self.node_dir(index).join(format!("{script}.log")))
            .unwrap_or_default()
    }

    /// The ConfigMap's files, as the pod mounts them at /etc/redis.
    fn write_config(&self, index: usize) -> Result<()> {
        let names = Names::of(&self.resource.metadata.name.clone().unwrap_or_default());
        let config = build::config_map(&names, &build::redis_conf(&self.resource.spec));
        let dir = self.node_dir(index);
        for sub in ["config", "run", "data", "sentinel"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        for (key, value) in config.data.context("no ConfigMap data")? {
            std::fs::write(dir.join("config").join(key), value)?;
        }
        Ok(())
    }

    /// The environment the pod gives both containers, pointed at this machine.
    pub fn command(&self, index: usize, script: &str) -> Command {
        let node = &self.nodes[index];
        let settings = self.settings();
        let dir = self.node_dir(index);
        let passwords = self.pod_passwords();
        let sentinels: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.sentinel_port))
            .collect();
        let mut command = Command::new("sh");
        command
            .arg(dir.join("config").join(script))
            .env("POD_NAME", &node.pod)
            .env("ANNOUNCE_HOST", &node.host)
            .env("REDIS_BIND", "127.0.0.1")
            .env("REDIS_PORT", node.redis_port.to_string())
            .env("SENTINEL_PORT", node.sentinel_port.to_string())
            .env("REDIS_CONFIG_DIR", dir.join("config"))
            .env("REDIS_RUN_DIR", dir.join("run"))
            .env("REDIS_DATA_DIR", dir.join("data"))
            .env("SENTINEL_RUN_DIR", dir.join("sentinel"))
            .env("SENTINEL_HOSTS", sentinels.join(" "))
            .env("MASTER_SET", &settings.master_set)
            .env("QUORUM", settings.quorum.to_string())
            .env(
                "DOWN_AFTER_MILLISECONDS",
                settings.down_after_milliseconds.to_string(),
            )
            .env("FAILOVER_TIMEOUT", settings.failover_timeout.to_string())
            .env("PARALLEL_SYNCS", settings.parallel_syncs.to_string())
            .env("REDIS_PASSWORD", &passwords.current);
        if self.before_operator_user {
            command.env("REDISCLI_AUTH", &passwords.current);
        } else {
            command
                .env("OPERATOR_PASSWORD", &passwords.operator)
                .env("REDISCLI_AUTH", &passwords.operator);
        }
        if let Some(previous) = &passwords.previous {
            command.env("REDIS_PREVIOUS_PASSWORD", previous);
        }
        // Each process logs to <node>/<script>.log, for a failing test to be read.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{script}.log")));
        match log {
            Ok(log) => {
                let errors = log.try_clone().map_or_else(|_| Stdio::null(), Stdio::from);
                command.stdout(log).stderr(errors);
            }
            Err(_) => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        command
    }

    /// Whether the process on `port` answers PING, as the probes ask.
    fn ping(&self, port: u16) -> bool {
        let reply = if self.before_operator_user {
            client_cli(port, PASSWORD, &["PING"])
        } else {
            cli(port, &["PING"])
        };
        reply.is_ok_and(|reply| reply == "PONG")
    }

    /// Starts (or restarts, on its old data) one Redis with the pod's start script.
    pub async fn start_redis(&mut self, index: usize) -> Result<()> {
        self.spawn_redis(index)?;
        let port = self.nodes[index].redis_port;
        wait_until("redis to answer", Duration::from_secs(10), || {
            Ok(self.ping(port))
        })
        .await?;
        self.check_running(index, "redis")
    }

    /// Starts one Redis with the pod's start script without waiting for it to answer (the
    /// script may wait for the sentinels first).
    pub fn spawn_redis(&mut self, index: usize) -> Result<()> {
        let child = self
            .command(index, "start-redis.sh")
            .spawn()
            .context("failed to start redis (run hack/install-deps.sh)")?;
        self.redis[index] = Some(Process(child));
        Ok(())
    }

    /// Removes the data of a node, as a pod without storage starts with none.
    pub fn wipe_data(&self, index: usize) -> Result<()> {
        let data = self.node_dir(index).join("data");
        std::fs::remove_dir_all(&data)?;
        std::fs::create_dir_all(&data)?;
        Ok(())
    }

    /// Fails when the process just started has exited (say, its port was taken), so that a
    /// PONG from someone else's process is never mistaken for it.
    fn check_running(&mut self, index: usize, what: &str) -> Result<()> {
        let processes = if what == "redis" {
            &mut self.redis
        } else {
            &mut self.sentinels
        };
        if let Some(Process(child)) = processes[index].as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "{what} of node {index} exited with {status}; see {:?}",
                self.directory
            );
        }
        Ok(())
    }

    /// Starts one Sentinel with the pod's start script and a fresh configuration.
    pub async fn start_sentinel(&mut self, index: usize) -> Result<()> {
        let _ = std::fs::remove_file(self.node_dir(index).join("sentinel").join("sentinel.conf"));
        let child = self
            .command(index, "start-sentinel.sh")
            .spawn()
            .context("failed to start redis-sentinel (run hack/install-deps.sh)")?;
        self.sentinels[index] = Some(Process(child));
        let port = self.nodes[index].sentinel_port;
        wait_until("sentinel to answer", Duration::from_secs(10), || {
            Ok(self.ping(port))
        })
        .await?;
        self.check_running(index, "sentinel")
    }

    /// kill -9 of one Redis.
    pub fn kill_redis(&mut self, index: usize) {
        self.redis[index] = None;
    }

    /// Sends a signal (`STOP`, `CONT`, …) to one Redis process.
    pub fn signal_redis(&self, index: usize, signal: &str) -> Result<()> {
        let Some(Process(child)) = self.redis[index].as_ref() else {
            bail!("redis of node {index} is not running");
        };
        let status = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed: {status}");
        Ok(())
    }

    /// Sends a signal (`STOP`, `CONT`, …) to one Sentinel process.
    pub fn signal_sentinel(&self, index: usize, signal: &str) -> Result<()> {
        let Some(Process(child)) = self.sentinels[index].as_ref() else {
            bail!("sentinel of node {index} is not running");
        };
        let status = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed: {status}");
        Ok(())
    }

    pub fn kill_sentinel(&mut self, index: usize) {
        self.sentinels[index] = None;
    }

    /// SIGTERM, as Kubernetes stops a container: Redis saves and exits. A replica that is
    /// writing its first AOF after a sync refuses to exit ("Writing initial AOF, can't exit"),
    /// so the signal is repeated every 500 ms, for at most 30 s.
    pub async fn stop_redis(&mut self, index: usize) -> Result<()> {
        let Some(mut process) = self.redis[index].take() else {
            return Ok(());
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            Command::new("kill")
                .args(["-TERM", &process.0.id().to_string()])
                .status()?;
            let signalled = Instant::now();
            while signalled.elapsed() < Duration::from_millis(500) {
                if process.0.try_wait()?.is_some() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        bail!("redis of node {index} did not stop within 30 s of SIGTERM")
    }

    /// Writes `key` on node `index` while it has no replica (a lone master refuses writes
    /// otherwise: `min-replicas-to-write 1`), so that it holds data of its own.
    pub fn seed(&self, index: usize, key: &str, value: &str) -> Result<()> {
        let port = self.port(index);
        cli(port, &["CONFIG", "SET", "min-replicas-to-write", "0"])?;
        let reply = cli(port, &["SET", key, value]);
        cli(port, &["CONFIG", "SET", "min-replicas-to-write", "1"])?;
        anyhow::ensure!(reply? == "OK", "SET {key} on node {index} failed");
        Ok(())
    }

    pub fn port(&self, index: usize) -> u16 {
        self.nodes[index].redis_port
    }

    pub fn sentinel_port(&self, index: usize) -> u16 {
        self.nodes[index].sentinel_port
    }

    /// The first `count` nodes, the data plane of a resource with `count` replicas.
    pub fn first(&self, count: usize) -> Vec<Node> {
        self.nodes[..count].to_vec()
    }

    pub async fn observe(&self, count: usize) -> Observation {
        data_plane::observe(
            &self.first(count),
            &DirectResolver,
            &self.settings(),
            &self.credentials(),
        )
        .await
    }

    /// What the operator remembers, for a plan over the first `count` nodes.
    pub fn memory(&self, count: usize) -> Memory {
        let memory = self
            .memory
            .lock()
            .map(|memory| memory.clone())
            .unwrap_or_default();
        Memory {
            last_master: memory.last_master.filter(|index| *index < count),
            chosen: memory.chosen.filter(|index| *index < count),
        }
    }

    /// One pass of the operator's check over the first `count` nodes: observe, plan, heal;
    /// then, as the controller writes `status.master`, it remembers the planned master.
    pub async fn reconcile(&self, count: usize) -> Result<(Observation, Plan)> {
        let nodes = self.first(count);
        let observation = self.observe(count).await;
        let memory = self.memory(count);
        let plan = data_plane::plan(&nodes, &observation, &self.settings(), &memory);
        let healed = data_plane::heal(
            &nodes,
            &plan,
            &DirectResolver,
            &self.settings(),
            &memory,
            &self.credentials(),
            &|| true,
        )
        .await;
        if let Some(master) = plan.master
            && let Ok(mut memory) = self.memory.lock()
        {
            memory.last_master = Some(master);
        }
        healed?;
        Ok((observation, plan))
    }

    /// Runs the operator's check until the set is healthy; returns the master and the plans.
    pub async fn reconcile_until_healthy(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<(usize, Vec<Plan>)> {
        let started = Instant::now();
        let mut plans = Vec::new();
        loop {
            // A failed command is retried from a fresh observation, as the controller does
            // (another operator instance may have changed a sentinel between two commands).
            match self.reconcile(count).await {
                Ok((_, plan)) => plans.push(plan),
                Err(error) if started.elapsed() < timeout => {
                    eprintln!("healing failed, retrying: {error}");
                }
                Err(error) => return Err(error),
            }
            let after = self.observe(count).await;
            let check = data_plane::plan(
                &self.first(count),
                &after,
                &self.settings(),
                &self.memory(count),
            );
            if check.is_healthy(&after) {
                return Ok((check.master.context("healthy without a master")?, plans));
            }
            if started.elapsed() > timeout {
                bail!("not healthy after {timeout:?}: {after:#?}\nplan: {check:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Writes `count` keys to node `master`, each acknowledged by a replica (`WAIT 1`).
    pub async fn acknowledged_writes(
        &self,
        master: usize,
        prefix: &str,
        count: usize,
    ) -> Result<Vec<String>> {
        let mut connection = self.connect_redis(master).await?;
        let mut acknowledged = Vec::new();
        for index in 0..count {
            let key = format!("{prefix}:{index}");
            connection
                .command(&["SET", &key, &index.to_string()])
                .await?;
            let replicas = connection.command(&["WAIT", "1", "2000"]).await?;
            if matches!(replicas, Value::Integer(count) if count >= 1) {
                acknowledged.push(key);
            }
        }
        anyhow::ensure!(
            acknowledged.len() == count,
            "only {} of {count} writes were acknowledged by a replica",
            acknowledged.len()
        );
        Ok(acknowledged)
    }

    /// A connection to node `index`'s Redis, as the operator authenticates.
    pub async fn connect_redis(&self, index: usize) -> Result<Connection> {
        let node = &self.nodes[index];
        Ok(data_plane::connect(
            &DirectResolver,
            &node.host,
            node.redis_port,
            &self.credentials(),
        )
        .await?)
    }

    /// The keys of `keys` that node `index` lacks.
    pub async fn missing_keys(&self, index: usize, keys: &[String]) -> Result<Vec<String>> {
        let mut connection = self.connect_redis(index).await?;
        let mut missing = Vec::new();
        for key in keys {
            if connection.command(&["EXISTS", key]).await? != Value::Integer(1) {
                missing.push(key.clone());
            }
        }
        Ok(missing)
    }
}

impl Drop for LocalSet {
    fn drop(&mut self) {
        self.redis.clear();
        self.sentinels.clear();
        if std::env::var_os("OPERATOR_KIT_KEEP_NAMESPACES").is_none() {
            let _ = std::fs::remove_dir_all(&self.directory);
        }
    }
}

/// redis-cli as the operator's user (its password in REDISCLI_AUTH), as the probes do.
pub fn cli(port: u16, args: &[&str]) -> Result<String> {
    let output = Command::new("redis-cli")
        .args([
            "--user",
            "redis-operator",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(args)
        .env("REDISCLI_AUTH", OPERATOR_PASSWORD)
        .output()
        .context("failed to run redis-cli")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// redis-cli as a client: the default user with `password`.
pub fn client_cli(port: u16, password: &str, args: &[&str]) -> Result<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .env("REDISCLI_AUTH", password)
        .output()
        .context("failed to run redis-cli")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// redis-cli to a sentinel, which asks for the same password as Redis.
pub fn sentinel_cli(port: u16, args: &[&str]) -> Result<String> {
    cli(port, args)
}

/// redis-cli without a password: what anyone who reaches the port can do. Its whole answer,
/// errors included.
pub fn anonymous_cli(port: u16, args: &[&str]) -> Result<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .env_remove("REDISCLI_AUTH")
        .output()
        .context("failed to run redis-cli")?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
    .trim()
    .to_owned())
}

/// One write of a client that authenticates with `password`: it asks a sentinel for the
/// master (Sentinel-aware clients send the same password there), opens a fresh connection,
/// so that every write authenticates again, sets `key` and waits for a replica. `Ok(true)`
/// when a replica acknowledged it.
pub async fn client_write(
    nodes: &[Node],
    master_set: &str,
    password: &str,
    key: &str,
) -> Result<bool> {
    let credentials = Credentials::password(Some(password));
    let mut refusals = Vec::new();
    for node in nodes {
        let mut sentinel = match data_plane::connect(
            &DirectResolver,
            &node.host,
            node.sentinel_port,
            &credentials,
        )
        .await
        {
            Ok(connection) => connection,
            Err(error) => {
                refusals.push(format!("sentinel {}: {error}", node.pod));
                continue;
            }
        };
        let reply = sentinel
            .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_set])
            .await?;
        let (Some(host), Some(port)) = (
            reply.items().first().and_then(Value::text),
            reply
                .items()
                .get(1)
                .and_then(Value::text)
                .and_then(|port| port.parse::<u16>().ok()),
        ) else {
            continue;
        };
        let mut master = data_plane::connect(&DirectResolver, &host, port, &credentials).await?;
        master.command(&["SET", key, "1"]).await?;
        let replicas = master.command(&["WAIT", "1", "1000"]).await?;
        return Ok(matches!(replicas, Value::Integer(count) if count >= 1));
    }
    anyhow::bail!("no sentinel named the master: {refusals:?}")
}

/// What one client saw: the keys a replica acknowledged, and each failed write.
#[derive(Default)]
pub struct ClientLog {
    pub acknowledged: Vec<String>,
    pub errors: Vec<FailedWrite>,
}

/// A write that failed, with when it started and when it failed. A write is several round
/// trips (a sentinel's AUTH, the master's AUTH, SET, WAIT), so a password change can land in
/// the middle of one: a write counts as refused *before* a change only if it had already
/// failed by then, and *after* a change only if it started after it.
#[derive(Debug)]
pub struct FailedWrite {
    pub started: Instant,
    pub failed: Instant,
    pub error: String,
}

impl FailedWrite {
    /// A write that started at `started` and failed now.
    pub fn now(started: Instant, error: impl std::fmt::Display) -> Self {
        FailedWrite {
            started,
            failed: Instant::now(),
            error: error.to_string(),
        }
    }
}

/// A client writing with `password` every 10 ms until `stop`.
pub fn spawn_client(
    set: &LocalSet,
    name: &'static str,
    password: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<ClientLog> {
    let nodes = set.first(3);
    let master_set = set.settings().master_set;
    tokio::spawn(async move {
        let mut log = ClientLog::default();
        let mut index = 0;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("{name}:{index}");
            index += 1;
            let at = Instant::now();
            match client_write(&nodes, &master_set, password, &key).await {
                Ok(true) => log.acknowledged.push(key),
                Ok(false) => {}
                Err(error) => log.errors.push(FailedWrite::now(at, error)),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        log
    })
}

/// Each process's `run_id`, which changes when it restarts.
pub async fn run_ids(set: &LocalSet) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for node in set.first(3) {
        for port in [node.redis_port, node.sentinel_port] {
            let mut connection =
                data_plane::connect(&DirectResolver, &node.host, port, &set.credentials()).await?;
            let info = connection.command(&["INFO", "server"]).await?;
            let fields = data_plane::parse_info(&info.text().unwrap_or_default());
            ids.push(fields.get("run_id").cloned().context("no run_id")?);
        }
    }
    Ok(ids)
}

/// Whether every Redis and Sentinel of the set takes `password` from a client.
pub fn every_process_takes(set: &LocalSet, password: &str) -> Result<bool> {
    for node in set.first(3) {
        for port in [node.redis_port, node.sentinel_port] {
            if client_cli(port, password, &["PING"])? != "PONG" {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether every Redis and sentinel process of the first three nodes refuses `password` as
/// a password (`WRONGPASS`/`NOAUTH`), each one: not merely "some process does not answer".
pub fn every_process_refuses(set: &LocalSet, password: &str) -> Result<bool> {
    for node in set.first(3) {
        for port in [node.redis_port, node.sentinel_port] {
            let output = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "PING"])
                .env("REDISCLI_AUTH", password)
                .output()
                .context("failed to run redis-cli")?;
            let answer = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            if !(answer.contains("WRONGPASS") || answer.contains("NOAUTH")) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Polls a condition every 100 ms until it holds or `timeout` passes. It sleeps
/// asynchronously: an operator under test runs on the test's own runtime, and a blocking sleep
/// would stop it from seeing anything meanwhile (a deletion, a failover).
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let started = Instant::now();
    while !condition()? {
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
