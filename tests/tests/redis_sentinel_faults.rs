//! A fault suite for Redis with Sentinel, on real `redis-server` / `redis-sentinel` processes
//! started by the pods' own scripts: rounds of faults chosen by a seeded generator (kill -9 of
//! the master or of a replica, SIGSTOP/SIGCONT of the master as the others see a partition, the
//! master's graceful preStop handover, a restart of every Redis and Sentinel, after which the
//! operator chooses the master by data), while two operator instances race each other
//! (observe → plan → heal every 100 ms each) and a writer does `SET` + `WAIT 1` against
//! whichever node the sentinels name, recording every acknowledged write. After each round:
//! exactly one master, and every acknowledged key on it with its value.
//!
//! `FAULT_SEED` replays a run (the seed is printed); `FAULT_ROUNDS` sets its length (CI runs a
//! short one).

use integration_tests::local_redis as support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, ensure};
use redis_operator::resp::Value;
use redis_operator::sentinel::data_plane::{self, DirectResolver, Memory, Node, Role, Settings};
use support::{LocalSet, as_client, as_operator};
use tokio::sync::Mutex;

const DOWN_AFTER_MILLISECONDS: u64 = 1000;

/// xorshift64*: enough to replay a sequence from its seed.
struct Generator(u64);

impl Generator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % bound as u64).unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillMaster,
    KillReplica,
    PauseMaster,
    Handover,
    RestartAll,
    /// 3 → 5 → 3 replicas, as the StatefulSet adds pods and removes the highest ordinals
    /// (each running its preStop hook).
    Scale,
    /// kill -9 of the master, and both operator instances killed at a random moment of the
    /// failover that follows and started again (their only memory is the status).
    RestartOperators,
}

const FAULTS: [Fault; 7] = [
    Fault::KillMaster,
    Fault::KillReplica,
    Fault::PauseMaster,
    Fault::Handover,
    Fault::RestartAll,
    Fault::Scale,
    Fault::RestartOperators,
];

/// The nodes of the resource as its spec has them now, and its settings.
type Shape = Arc<std::sync::Mutex<(Vec<Node>, Settings)>>;

fn set_shape(shape: &Shape, set: &mut LocalSet, replicas: usize) {
    set.resource.spec.replicas = i32::try_from(replicas).unwrap_or(3);
    if let Ok(mut shape) = shape.lock() {
        *shape = (set.first(replicas), set.settings());
    }
}

/// One operator instance: the controller's data-plane pass, every 100 ms until `stop`. Its
/// memory (`status.master`) is shared with the other instance, as both read one status.
async fn operator(
    shape: Shape,
    memory: Arc<std::sync::Mutex<Memory>>,
    stop: Arc<AtomicBool>,
) -> Result<usize> {
    let mut failed = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok((nodes, settings)) = shape.lock().map(|shape| shape.clone()) else {
            anyhow::bail!("the shape's lock is poisoned");
        };
        let observation =
            data_plane::observe(&nodes, &DirectResolver, &settings, &as_operator()).await;
        let known = memory
            .lock()
            .map(|memory| memory.clone())
            .unwrap_or_default();
        let plan = data_plane::plan(&nodes, &observation, &settings, &known);
        // A failed command (a node killed meanwhile) is retried from a fresh observation, as
        // the controller does; the failures are counted and reported.
        let healed = data_plane::heal(
            &nodes,
            &plan,
            &DirectResolver,
            &settings,
            &known,
            &as_operator(),
            &|| true,
        )
        .await;
        if let Err(error) = healed {
            failed += 1;
            eprintln!("operator: failed to heal: {error}");
        }
        if let Some(master) = plan.master
            && let Ok(mut memory) = memory.lock()
        {
            memory.last_master = Some(master);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(failed)
}

/// The node the sentinels name as master, asked of the first that answers.
async fn named_master(nodes: &[Node], settings: &Settings) -> Option<usize> {
    for node in nodes {
        let Ok(mut sentinel) = data_plane::connect(
            &DirectResolver,
            &node.host,
            node.sentinel_port,
            &as_client(),
        )
        .await
        else {
            continue;
        };
        let Ok(reply) = sentinel
            .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &settings.master_set])
            .await
        else {
            continue;
        };
        let port = reply.items().get(1).and_then(Value::text)?;
        return nodes
            .iter()
            .position(|node| node.redis_port.to_string() == port);
    }
    None
}

/// Writes `SET key value` + `WAIT 1` to whichever node the sentinels name, until `stop`;
/// returns the acknowledged writes.
async fn writer(
    nodes: Vec<Node>,
    settings: Settings,
    stop: Arc<AtomicBool>,
) -> Result<BTreeMap<String, String>> {
    let mut acknowledged = BTreeMap::new();
    let mut sequence = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(master) = named_master(&nodes, &settings).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let node = &nodes[master];
        let Ok(mut connection) =
            data_plane::connect(&DirectResolver, &node.host, node.redis_port, &as_client()).await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for _ in 0..20 {
            sequence += 1;
            // Each key is written once, so a stored value is exactly the acknowledged one.
            let (key, value) = (format!("key:{sequence}"), sequence.to_string());
            if connection.command(&["SET", &key, &value]).await.is_err() {
                break;
            }
            match connection.command(&["WAIT", "1", "500"]).await {
                Ok(Value::Integer(replicas)) if replicas >= 1 => {
                    acknowledged.insert(key, value);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Ok(acknowledged)
}

/// Two-master windows: spans during which two nodes at once were masters able to take
/// writes (a master counting at least one good replica, as `min-replicas-to-write 1` needs).
#[derive(Debug, Default)]
struct TwoMasterWindows {
    count: usize,
    longest: Duration,
}

/// Samples every node's role every 50 ms until `stop`, counting two-master windows.
async fn watch_masters(nodes: Vec<Node>, stop: Arc<AtomicBool>) -> Result<TwoMasterWindows> {
    let mut windows = TwoMasterWindows::default();
    let mut opened: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut writable = 0;
        for node in &nodes {
            let Ok(mut connection) =
                data_plane::connect(&DirectResolver, &node.host, node.redis_port, &as_client())
                    .await
            else {
                continue;
            };
            let Ok(reply) = connection.command(&["INFO", "replication"]).await else {
                continue;
            };
            let state =
                data_plane::redis_state(&data_plane::parse_info(&reply.text().unwrap_or_default()));
            if state.is_some_and(|state| state.role == Role::Master && state.good_replicas >= 1) {
                writable += 1;
            }
        }
        match (writable >= 2, opened) {
            (true, None) => {
                windows.count += 1;
                opened = Some(Instant::now());
            }
            (false, Some(since)) => {
                windows.longest = windows.longest.max(since.elapsed());
                opened = None;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(since) = opened {
        windows.longest = windows.longest.max(since.elapsed());
    }
    Ok(windows)
}

#[tokio::test]
async fn random_faults_lose_no_acknowledged_write() -> Result<()> {
    let seed = match std::env::var("FAULT_SEED") {
        Ok(seed) => seed.parse().context("FAULT_SEED")?,
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64 | 1,
    };
    // Every kind runs in every run: the rounds go through shuffled passes over all of them.
    let rounds: usize =
        std::env::var("FAULT_ROUNDS").map_or(Ok(FAULTS.len()), |rounds| rounds.parse())?;
    ensure!(
        rounds >= FAULTS.len(),
        "FAULT_ROUNDS must be at least {} (one round of each fault)",
        FAULTS.len()
    );
    eprintln!("fault suite: seed {seed}, {rounds} rounds (replay with FAULT_SEED={seed})");
    let mut generator = Generator(seed);
    let set = Arc::new(Mutex::new(
        LocalSet::new("faults", 5, 3, DOWN_AFTER_MILLISECONDS).await?,
    ));
    let (nodes, settings, memory) = {
        let set = set.lock().await;
        set.reconcile_until_healthy(3, Duration::from_secs(30))
            .await?;
        // The writer and the watcher know every node that may exist.
        (set.first(5), set.settings(), set.memory.clone())
    };
    let shape: Shape = Arc::new(std::sync::Mutex::new((
        nodes[..3].to_vec(),
        settings.clone(),
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let start_operators = || -> Vec<_> {
        (0..2)
            .map(|_| tokio::spawn(operator(shape.clone(), memory.clone(), stop.clone())))
            .collect()
    };
    let mut operators = start_operators();
    let writing = tokio::spawn(writer(nodes.clone(), settings.clone(), stop.clone()));
    let watching = tokio::spawn(watch_masters(nodes.clone(), stop.clone()));
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    let started = Instant::now();
    let result = async {
        let mut pass = FAULTS;
        for round in 0..rounds {
            if round % FAULTS.len() == 0 {
                // Fisher-Yates from the seed: the same seed, the same schedule.
                for index in (1..pass.len()).rev() {
                    pass.swap(index, generator.below(index + 1));
                }
            }
            let fault = pass[round % FAULTS.len()];
            *injected.entry(fault).or_default() += 1;
            let mut set = set.lock().await;
            let observation = set.observe(3).await;
            let master = (0..3)
                .find(|index| {
                    observation.redis[*index]
                        .as_ref()
                        .is_some_and(|state| state.role == Role::Master)
                })
                .context("no master before the round")?;
            let replica = (master + 1 + generator.below(2)) % 3;
            eprintln!("round {round}: {fault:?} (master node {master})");
            match fault {
                Fault::KillMaster => {
                    set.kill_redis(master);
                    tokio::time::sleep(Duration::from_millis(DOWN_AFTER_MILLISECONDS * 3)).await;
                    set.start_redis(master).await?;
                }
                Fault::KillReplica => {
                    set.kill_redis(replica);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    set.start_redis(replica).await?;
                }
                Fault::PauseMaster => {
                    set.signal_redis(master, "STOP")?;
                    tokio::time::sleep(Duration::from_millis(DOWN_AFTER_MILLISECONDS * 4)).await;
                    set.signal_redis(master, "CONT")?;
                }
                Fault::RestartAll => {
                    for index in 0..3 {
                        set.kill_sentinel(index);
                        set.stop_redis(index).await?;
                    }
                    // They come back in a random order, up to a second apart: a stale node
                    // may answer first, alone.
                    let first = generator.below(3);
                    for index in [first, (first + 1) % 3, (first + 2) % 3] {
                        set.spawn_redis(index)?;
                        let pause = generator.below(1000) as u64;
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    for index in 0..3 {
                        set.start_sentinel(index).await?;
                    }
                }
                Fault::Scale => {
                    for index in [3, 4] {
                        set.start_redis(index).await?;
                        set.start_sentinel(index).await?;
                    }
                    set_shape(&shape, &mut set, 5);
                    set.reconcile_until_healthy(5, Duration::from_secs(60))
                        .await
                        .with_context(|| format!("round {round}: the scale-up did not heal"))?;
                    // The StatefulSet shrinks: the operator looks at three pods at once, and
                    // the two last pods go one after the other, each through its preStop.
                    set_shape(&shape, &mut set, 3);
                    for index in [4, 3] {
                        let status = set.command(index, "prestop-redis.sh").status()?;
                        ensure!(status.success(), "the preStop hook failed: {status}");
                        set.stop_redis(index).await?;
                        set.kill_sentinel(index);
                    }
                }
                Fault::RestartOperators => {
                    set.kill_redis(master);
                    let lifetime = generator.below(3000) as u64;
                    tokio::time::sleep(Duration::from_millis(lifetime)).await;
                    for operator in operators.drain(..) {
                        operator.abort();
                    }
                    operators = start_operators();
                    tokio::time::sleep(Duration::from_millis(DOWN_AFTER_MILLISECONDS * 3)).await;
                    set.start_redis(master).await?;
                }
                Fault::Handover => {
                    let status = set.command(master, "prestop-redis.sh").status()?;
                    ensure!(status.success(), "the preStop hook failed: {status}");
                    set.stop_redis(master).await?;
                    set.start_redis(master).await?;
                }
            }
            // The round ends when the set is healthy again (the two operators keep running).
            set.reconcile_until_healthy(3, Duration::from_secs(60))
                .await
                .with_context(|| format!("round {round} ({fault:?}) did not heal"))?;
        }
        anyhow::Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writing.await??;
    let windows = watching.await??;
    let mut heal_failures = 0;
    for operator in operators {
        heal_failures += operator.await??;
    }
    result?;

    let set = set.lock().await;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(60))
        .await?;
    let observation = set.observe(3).await;
    let masters = observation
        .redis
        .iter()
        .flatten()
        .filter(|state| state.role == Role::Master)
        .count();
    ensure!(
        masters == 1,
        "{masters} masters at the end: {observation:#?}"
    );
    let node = &set.nodes[master];
    let mut connection =
        data_plane::connect(&DirectResolver, &node.host, node.redis_port, &as_client()).await?;
    let mut lost = Vec::new();
    for (key, value) in &acknowledged {
        let stored = connection.command(&["GET", key]).await?;
        if stored.text().as_deref() != Some(value.as_str()) {
            lost.push((key.clone(), value.clone(), stored));
        }
    }
    eprintln!(
        "measured: seed {seed}, {rounds} rounds in {:?}, faults {injected:?}, {} writes \
         acknowledged, {} lost, {} two-master windows (longest {:?}), {heal_failures} failed \
         heals of the last operators",
        started.elapsed(),
        acknowledged.len(),
        lost.len(),
        windows.count,
        windows.longest
    );
    ensure!(
        lost.is_empty(),
        "{} acknowledged writes lost (seed {seed}): {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // A run in which nothing was acknowledged proves nothing.
    ensure!(
        acknowledged.len() >= rounds,
        "only {} writes acknowledged in {rounds} rounds (seed {seed})",
        acknowledged.len()
    );
    ensure!(
        injected.len() == FAULTS.len(),
        "not every fault ran: {injected:?}"
    );
    ensure!(
        windows.count == 0,
        "{} windows with two masters able to take writes, the longest {:?} (seed {seed})",
        windows.count,
        windows.longest
    );
    Ok(())
}
