//! The fault suite on the real nodes: `examples/redis-sentinel.yaml` on three pods, one per
//! node and zone, redis-operator installed with Helm as two replicas on different nodes, a
//! client in every zone (a thread in that node's network namespace), and rounds of faults from
//! a seeded [`nemesis::schedule`]. Each round waits until the checker judges the set healthy,
//! makes its fault, holds it, undoes it (`hack/faults.sh heal`, whose errors end the run),
//! waits until the set is healthy again, then reads everything back and checks the whole
//! history so far ([`checker::check`]). Every fault must fire; every window must hold writes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use operator_kit::testing::TestNamespace;
use tokio::sync::watch;

use crate::checker::{self, FinalState, Report, Window, quantile};
use crate::history::History;
use crate::nemesis::{self, Faults, Kind, Step};
use crate::real_node::{SENTINEL_NAME, create_seed_sentinel, helm_install_on_real_nodes};
use crate::real_set::{Member, RealSet};
use crate::workload::{self, ClientConfig, Target};

/// How long the set may take to be healthy again after a fault is undone.
pub const PATIENCE: Duration = Duration::from_secs(300);
/// How long after a fault is undone (and the set is healthy) a client may take to have a
/// write acknowledged again: a Sentinel-aware client re-resolves the master within seconds.
const RESUME_PATIENCE: Duration = Duration::from_secs(30);
/// The real nodes (`REAL_NODES=3 hack/cluster.sh up`).
pub const NODES: usize = 3;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The schedule's seed.
    pub seed: u64,
    /// How many rounds.
    pub rounds: usize,
    /// The kinds to draw from.
    pub kinds: Vec<Kind>,
    /// Clients per zone.
    pub clients_per_zone: usize,
    /// Where to write the history (JSON lines), if anywhere.
    pub history: Option<PathBuf>,
}

impl Config {
    /// From the environment: `FAULT_SEED` (else the clock), `FAULT_ROUNDS` (else one per
    /// kind), `FAULT_KINDS` (comma-separated names, else all), `FAULT_HISTORY` (a path).
    pub fn from_env() -> Result<Self> {
        let seed = match std::env::var("FAULT_SEED") {
            Ok(seed) => seed.parse().context("FAULT_SEED is not a number")?,
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64,
        };
        let kinds = match std::env::var("FAULT_KINDS") {
            Ok(names) if !names.trim().is_empty() => names
                .split(',')
                .map(|name| Kind::parse(name.trim()))
                .collect::<Result<Vec<_>>>()?,
            _ => Kind::ALL.to_vec(),
        };
        let rounds = match std::env::var("FAULT_ROUNDS") {
            Ok(rounds) => rounds.parse().context("FAULT_ROUNDS is not a number")?,
            Err(_) => kinds.len(),
        };
        Ok(Self {
            seed,
            rounds,
            kinds,
            clients_per_zone: 1,
            history: std::env::var_os("FAULT_HISTORY").map(PathBuf::from),
        })
    }
}

/// What one round measured.
#[derive(Debug, Clone)]
pub struct Round {
    /// Its step of the schedule.
    pub step: Step,
    /// The longest time without an acknowledged write, from the fault until the set was
    /// healthy again (s).
    pub unavailable: f64,
    /// From undoing the fault until the checker judged the set healthy (s).
    pub recovery: f64,
    /// Operations started during the round's window.
    pub operations: usize,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Every round.
    pub rounds: Vec<Round>,
    /// The checker's verdict on the whole history, read back after the last round with the
    /// clients stopped.
    pub report: Report,
}

impl Outcome {
    /// The table: per kind, rounds, unavailability and recovery p50/p95/max.
    pub fn table(&self) -> String {
        let mut by_kind: BTreeMap<&str, Vec<&Round>> = BTreeMap::new();
        for round in &self.rounds {
            by_kind
                .entry(round.step.kind.name())
                .or_default()
                .push(round);
        }
        let mut table = String::from(
            "| nemesis | rounds | unavailable p50 / p95 / max (s) | heal to healthy p50 / p95 / max (s) |\n\
             |---|---|---|---|\n",
        );
        for (kind, rounds) in by_kind {
            let stats = |values: Vec<f64>| {
                let max = values.iter().copied().fold(0.0, f64::max);
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    quantile(&values, 0.5),
                    quantile(&values, 0.95),
                    max
                )
            };
            table.push_str(&format!(
                "| {kind} | {} | {} | {} |\n",
                rounds.len(),
                stats(rounds.iter().map(|round| round.unavailable).collect()),
                stats(rounds.iter().map(|round| round.recovery).collect()),
            ));
        }
        let report = &self.report;
        table.push_str(&format!(
            "\noperations {}: acknowledged {}, OK only {}, refused {}, unknown {}; \
             acknowledged writes lost {}; OK-only writes lost {} ({} taken after a newer master \
             had acknowledged); counter violations {}; split-brain windows {}\n",
            report.operations,
            report.acknowledged,
            report.ok_only,
            report.failed,
            report.unknown,
            report.lost_acknowledged.len(),
            report.lost_ok_only,
            report.lost_ok_only_after_failover,
            report.counter_violations.len(),
            report.split_brain.len(),
        ));
        table
    }
}

/// The operator's leader: the holder of its Lease.
async fn leader(namespace: &TestNamespace) -> Result<Option<String>> {
    Ok(namespace
        .api::<Lease>()
        .get_opt("redis-operator")
        .await?
        .and_then(|lease| lease.spec?.holder_identity))
}

/// The node and address of pod `name`.
async fn placement(namespace: &TestNamespace, name: &str) -> Result<(usize, String)> {
    let pod = namespace.api::<Pod>().get(name).await?;
    let node = crate::real_node::node_of(&pod)?;
    let ip = pod
        .status
        .and_then(|status| status.pod_ip)
        .with_context(|| format!("{name} has no address"))?;
    Ok((node, ip))
}

fn others(node: usize) -> Vec<usize> {
    (0..NODES).filter(|other| *other != node).collect()
}

/// Makes the fault of `step`, holds it and undoes it. Fails unless it fired.
async fn fault(
    namespace: &TestNamespace,
    set: &RealSet,
    faults: &Faults,
    step: &Step,
    master: &Member,
) -> Result<String> {
    let hold = || tokio::time::sleep(step.hold);
    let what = match step.kind {
        Kind::IsolateMaster => {
            faults
                .partition(&[master.node], &others(master.node), false)
                .await?;
            format!(
                "node {} (master {}) cut from the others",
                master.node, master.pod
            )
        }
        Kind::RandomHalves => {
            faults
                .partition(&[step.node], &others(step.node), step.one_way)
                .await?;
            let way = if step.one_way { "one way" } else { "both ways" };
            format!("node {} cut from the others, {way}", step.node)
        }
        Kind::FreezeMaster => {
            faults.freeze(master.node).await?;
            format!("node {} (master {}) frozen", master.node, master.pod)
        }
        Kind::KillMaster => {
            faults.kill(master.node).await?;
            format!("node {} (master {}) killed", master.node, master.pod)
        }
        Kind::KillLeader => {
            let holder = leader(namespace).await?.context("no leader")?;
            let (node, _) = placement(namespace, &holder).await?;
            faults.kill(node).await?;
            format!("node {node} (operator leader {holder}) killed")
        }
        Kind::FreezeLeader => {
            let holder = leader(namespace).await?.context("no leader")?;
            let (node, _) = placement(namespace, &holder).await?;
            faults.freeze(node).await?;
            format!("node {node} (operator leader {holder}) frozen")
        }
        Kind::CutOperator => {
            let holder = leader(namespace).await?.context("no leader")?;
            let (_, ip) = placement(namespace, &holder).await?;
            let members = set
                .members()
                .await?
                .map_err(|reason| anyhow::anyhow!("{reason}"))?;
            let pods: Vec<String> = members.iter().map(|member| member.ip.clone()).collect();
            faults.cut_pods(std::slice::from_ref(&ip), &pods).await?;
            format!("operator leader {holder} cut from the Redis pods")
        }
        Kind::CutNodeFromApi => {
            faults.cut_api(step.node).await?;
            format!("node {} cut from the API server", step.node)
        }
        Kind::DrainMaster => {
            faults.drain(master.node).await?;
            format!("node {} (master {}) drained", master.node, master.pod)
        }
        Kind::DeleteMaster => {
            let pods = namespace.api::<Pod>();
            let before = pods.get(&master.pod).await?.metadata.uid;
            pods.delete(&master.pod, &DeleteParams::default()).await?;
            // Fired once the pod was replaced (its preStop handed over first).
            let deadline = Instant::now() + PATIENCE;
            loop {
                let now = pods.get_opt(&master.pod).await?;
                if now.is_some_and(|pod| pod.metadata.uid != before) {
                    break;
                }
                ensure!(Instant::now() < deadline, "{} was not replaced", master.pod);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            return Ok(format!("master pod {} deleted", master.pod));
        }
    };
    hold().await;
    faults.ensure_in_place(&what).await?;
    if matches!(step.kind, Kind::KillLeader | Kind::FreezeLeader) {
        // The standby takes the Lease once it expires (15 s after the last renewal).
        let killed = what.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        let before = what
            .split("operator leader ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_default()
            .to_owned();
        while leader(namespace).await?.as_deref() == Some(before.as_str()) {
            ensure!(
                Instant::now() < deadline,
                "{killed}: the standby never took the Lease"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if matches!(step.kind, Kind::KillMaster | Kind::KillLeader) {
        // heal boots killed nodes with their disks; this one may get an empty one.
        let killed = if step.kind == Kind::KillMaster {
            master.node
        } else {
            node_of_down(faults).await?
        };
        faults
            .boot(killed, step.kind == Kind::KillMaster && step.empty_disk)
            .await?;
    }
    faults.heal().await?;
    let remaining = faults.status().await?;
    ensure!(
        remaining.is_empty(),
        "faults left after heal: {remaining:?}"
    );
    Ok(what)
}

/// The node `hack/faults.sh status` reports down.
async fn node_of_down(faults: &Faults) -> Result<usize> {
    faults
        .status()
        .await?
        .iter()
        .find_map(|line| {
            line.strip_suffix(": down")?
                .strip_prefix("node ")?
                .parse()
                .ok()
        })
        .context("no node is down")
}

/// Starts the clients: `per_zone` in each node's network namespace.
fn start_clients(
    history: &History,
    set: &RealSet,
    per_zone: usize,
    stop: &watch::Receiver<bool>,
) -> Vec<std::thread::JoinHandle<Result<()>>> {
    let target = Target {
        sentinels: (0..set.replicas)
            .map(|ordinal| {
                (
                    set.announced(&format!("{}-node-{ordinal}", set.name)),
                    26379,
                )
            })
            .collect(),
        master_set: set.master_set.clone(),
        password: set.password.clone(),
    };
    let mut clients = Vec::new();
    for node in 0..NODES {
        for index in 0..per_zone {
            let (history, target, stop) = (history.clone(), target.clone(), stop.clone());
            let config = ClientConfig {
                name: format!("{}-{index}", ["a", "b", "c"][node]),
                interval: Duration::from_millis(20),
                timeout: Duration::from_millis(1000),
                wait_ms: 500,
            };
            clients.push(crate::netns::spawn_in_node(node, move || {
                workload::client(history, target, config, stop)
            }));
        }
    }
    clients
}

/// The set of `examples/redis-sentinel.yaml` created in `namespace` with redis-operator
/// installed by Helm (two replicas), once healthy.
pub async fn prepare(namespace: &TestNamespace) -> Result<RealSet> {
    helm_install_on_real_nodes(namespace, "redis-operator", 2, &[]).await?;
    let password = create_seed_sentinel(namespace).await?;
    let set = RealSet {
        pods: namespace.api::<Pod>(),
        name: SENTINEL_NAME.to_owned(),
        namespace: namespace.name().to_owned(),
        replicas: 3,
        password,
        master_set: "mymaster".to_owned(),
    };
    set.wait_healthy(PATIENCE).await?;
    Ok(set)
}

/// Runs the schedule of `config` against `set`; fails at the first round the checker or a
/// fault finds wrong (after undoing every fault and writing the history).
pub async fn run(namespace: &TestNamespace, set: &RealSet, config: &Config) -> Result<Outcome> {
    let faults = Faults::new();
    faults.heal().await?;
    let schedule = nemesis::schedule(config.seed, config.rounds, &config.kinds, NODES);
    println!(
        "fault suite: seed {} ({} rounds over {:?}); replay with FAULT_SEED={}",
        config.seed,
        schedule.len(),
        config
            .kinds
            .iter()
            .map(|kind| kind.name())
            .collect::<Vec<_>>(),
        config.seed
    );
    let history = History::new();
    let (stop, stopped) = watch::channel(false);
    let clients = start_clients(&history, set, config.clients_per_zone, &stopped);
    let result = rounds(namespace, set, &faults, &history, &schedule).await;
    let healed = faults.heal().await;
    stop.send_replace(true);
    for client in clients {
        match client.join() {
            Ok(result) => result?,
            Err(_) => bail!("a client panicked"),
        }
    }
    if let Some(path) = &config.history {
        history.write_json_lines(path)?;
        println!("history: {path:?}");
    }
    let (rounds, windows) = result?;
    healed?;
    // The final check: clients stopped, everything read back once more.
    let master = set.wait_healthy(PATIENCE).await?;
    let records = history.records();
    let state = set.read_back(&master, FinalState::wanted(&records)).await?;
    let report = checker::check(&records, &state, &windows);
    let outcome = Outcome { rounds, report };
    println!("{}", outcome.table());
    let problems = outcome.report.problems();
    ensure!(problems.is_empty(), "the checker found: {problems:?}");
    Ok(outcome)
}

type Rounds = (Vec<Round>, Vec<Window>);

async fn rounds(
    namespace: &TestNamespace,
    set: &RealSet,
    faults: &Faults,
    history: &History,
    schedule: &[Step],
) -> Result<Rounds> {
    let mut done = Vec::new();
    let mut windows = Vec::new();
    for (index, step) in schedule.iter().enumerate() {
        let master = set.wait_healthy(PATIENCE).await?;
        let start_ms = history.now_ms();
        let what = fault(namespace, set, faults, step, &master)
            .await
            .with_context(|| format!("round {} ({})", index + 1, step.kind.name()))?;
        let healed_ms = history.now_ms();
        let master = set
            .wait_healthy(PATIENCE)
            .await
            .with_context(|| format!("after round {} ({what})", index + 1))?;
        let end_ms = history.now_ms();
        let window = Window {
            kind: step.kind.name().to_owned(),
            start_ms,
            end_ms,
        };
        let records = history.records();
        let operations = records
            .iter()
            .filter(|record| record.start_ms >= start_ms && record.start_ms <= end_ms)
            .count();
        ensure!(
            operations > 0,
            "round {}: no operation during {what}",
            index + 1
        );
        // Healthy by the checker's reading is not enough: the clients must be writing again.
        let resumed = Instant::now() + RESUME_PATIENCE;
        while !history
            .records()
            .iter()
            .any(|record| record.acknowledged() && record.end_ms >= healed_ms)
        {
            ensure!(
                Instant::now() < resumed,
                "round {}: no write acknowledged within {RESUME_PATIENCE:?} after {what} was \
                 undone",
                index + 1
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Every write so far read back; the counters' upper bound waits for the end (the
        // clients go on incrementing while this reads).
        let state = set.read_back(&master, FinalState::wanted(&records)).await?;
        let mut report = checker::check(&records, &state, std::slice::from_ref(&window));
        report
            .counter_violations
            .retain(|violation| !violation.contains("may have happened"));
        let unavailable = report
            .unavailability_ms
            .first()
            .map_or(0.0, |(_, gap)| gap / 1000.0);
        println!(
            "round {}/{}: {what} for {:?}: no acknowledged write for {unavailable:.2} s; \
             healthy {:.1} s after the heal; {operations} operations; acknowledged lost {}, \
             OK-only lost {}",
            index + 1,
            schedule.len(),
            step.hold,
            (end_ms - healed_ms) / 1000.0,
            report.lost_acknowledged.len(),
            report.lost_ok_only,
        );
        let problems = report.problems();
        ensure!(
            problems.is_empty(),
            "round {} ({what}): the checker found {problems:?}",
            index + 1
        );
        windows.push(window);
        done.push(Round {
            step: step.clone(),
            unavailable,
            recovery: (end_ms - healed_ms) / 1000.0,
            operations,
        });
    }
    Ok((done, windows))
}
