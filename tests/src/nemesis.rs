//! The fault suite's nemesis: which faults, in which order and for how long, drawn from a
//! seed (the same seed gives the same schedule), and their execution through
//! `hack/faults.sh`, which undoes each of them itself.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// The master's node cut from the other two, with the client of its zone (the classic
    /// Sentinel split brain).
    IsolateMaster,
    /// One random node against the other two, both ways or one way.
    RandomHalves,
    /// Every process of the master's node stopped for 30–90 s, then resumed.
    FreezeMaster,
    /// The master's node loses power, and boots again with its disk or an empty one.
    KillMaster,
    /// The node of the operator's leader loses power (the standby must take over).
    KillLeader,
    /// The node of the operator's leader frozen past its Lease (the standby takes over; the
    /// old leader, thawed in the middle of a reconcile, must not act).
    FreezeLeader,
    /// The operator's leader cut from every Redis pod while it still reaches the API server.
    CutOperator,
    /// One node cut from the API server only (it goes NotReady; its pods keep running).
    CutNodeFromApi,
    /// `kubectl drain` of the master's node (the PodDisruptionBudget honoured), then uncordon.
    DrainMaster,
    /// `kubectl delete pod` of the master: the planned handover.
    DeleteMaster,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 10] = [
        Kind::IsolateMaster,
        Kind::RandomHalves,
        Kind::FreezeMaster,
        Kind::KillMaster,
        Kind::KillLeader,
        Kind::FreezeLeader,
        Kind::CutOperator,
        Kind::CutNodeFromApi,
        Kind::DrainMaster,
        Kind::DeleteMaster,
    ];

    /// Its name in reports and in `FAULT_KINDS`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::IsolateMaster => "isolate-master",
            Kind::RandomHalves => "random-halves",
            Kind::FreezeMaster => "freeze-master",
            Kind::KillMaster => "kill-master",
            Kind::KillLeader => "kill-leader",
            Kind::FreezeLeader => "freeze-leader",
            Kind::CutOperator => "cut-operator",
            Kind::CutNodeFromApi => "cut-node-from-api",
            Kind::DrainMaster => "drain-master",
            Kind::DeleteMaster => "delete-master",
        }
    }

    /// The kind called `name`.
    pub fn parse(name: &str) -> Result<Kind> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .with_context(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|kind| kind.name()).collect();
                format!("unknown fault {name:?}; the kinds are {names:?}")
            })
    }
}

/// xorshift64*: enough to replay a sequence from its seed.
#[derive(Debug, Clone)]
pub struct Generator(u64);

impl Generator {
    /// A generator; a seed of 0 is moved off 0 (xorshift stays at 0).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next_u64() % bound.max(1) as u64).unwrap_or(0)
    }

    /// A duration in `low..=high` whole seconds.
    pub fn seconds(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_secs(low + self.next_u64() % (high.saturating_sub(low) + 1))
    }
}

/// One round of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The fault.
    pub kind: Kind,
    /// How long it stays before it is undone (for a kill: how long the node stays down).
    pub hold: Duration,
    /// The node it concerns when the kind does not name one by role (random halves, the node
    /// cut from the API server).
    pub node: usize,
    /// A partition in one direction only (random halves).
    pub one_way: bool,
    /// A killed node boots with an empty disk.
    pub empty_disk: bool,
}

/// `rounds` steps over `kinds`: each run of `kinds.len()` rounds holds every kind once, in an
/// order drawn from `seed`, so a run as long as the kinds has each of them.
pub fn schedule(seed: u64, rounds: usize, kinds: &[Kind], nodes: usize) -> Vec<Step> {
    let mut generator = Generator::new(seed);
    let mut steps = Vec::with_capacity(rounds);
    while steps.len() < rounds && !kinds.is_empty() {
        let mut order = kinds.to_vec();
        // Fisher–Yates.
        for index in (1..order.len()).rev() {
            order.swap(index, generator.below(index + 1));
        }
        for kind in order {
            if steps.len() == rounds {
                break;
            }
            let hold = match kind {
                Kind::IsolateMaster => generator.seconds(20, 40),
                Kind::RandomHalves => generator.seconds(15, 40),
                Kind::FreezeMaster => generator.seconds(30, 90),
                Kind::KillMaster | Kind::KillLeader => generator.seconds(15, 40),
                // Past the Lease's 15 s, so that the standby has taken over before the thaw.
                Kind::FreezeLeader => generator.seconds(25, 45),
                Kind::CutOperator => generator.seconds(20, 40),
                // Longer than the node controller's grace period (40 s): the node goes
                // NotReady and its pods with it, while they keep running.
                Kind::CutNodeFromApi => generator.seconds(50, 70),
                Kind::DrainMaster => generator.seconds(5, 15),
                Kind::DeleteMaster => Duration::ZERO,
            };
            steps.push(Step {
                kind,
                hold,
                node: generator.below(nodes),
                one_way: generator.below(3) == 0,
                empty_disk: generator.below(3) == 0,
            });
        }
    }
    steps
}

/// `hack/faults.sh`, run to its end; its error output is the error.
#[derive(Debug, Clone)]
pub struct Faults {
    script: PathBuf,
}

impl Default for Faults {
    fn default() -> Self {
        Self::new()
    }
}

impl Faults {
    /// The repository's `hack/faults.sh`.
    pub fn new() -> Self {
        Self {
            script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hack/faults.sh"),
        }
    }

    /// Runs the tool with `args`; returns its standard output.
    pub async fn run(&self, args: &[&str]) -> Result<String> {
        let script = self.script.clone();
        let owned: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("bash")
                .arg(&script)
                .args(&owned)
                .output()
        })
        .await??;
        if !output.status.success() {
            bail!(
                "hack/faults.sh {}: {}: {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn list(nodes: &[usize]) -> String {
        nodes
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Drops traffic from `from` to `to`, and back unless `one_way`.
    pub async fn partition(&self, from: &[usize], to: &[usize], one_way: bool) -> Result<()> {
        let (from, to) = (Self::list(from), Self::list(to));
        let mut args = vec!["partition", from.as_str(), to.as_str()];
        if one_way {
            args.push("one-way");
        }
        self.run(&args).await.map(drop)
    }

    /// Cuts node `node` from the API server.
    pub async fn cut_api(&self, node: usize) -> Result<()> {
        self.run(&["cut-api", &node.to_string()]).await.map(drop)
    }

    /// Cuts the pods at `left` from those at `right`.
    pub async fn cut_pods(&self, left: &[String], right: &[String]) -> Result<()> {
        self.run(&["cut-pods", &left.join(","), &right.join(",")])
            .await
            .map(drop)
    }

    /// Freezes every process of node `node`.
    pub async fn freeze(&self, node: usize) -> Result<()> {
        self.run(&["freeze", &node.to_string()]).await.map(drop)
    }

    /// Power loss of node `node`.
    pub async fn kill(&self, node: usize) -> Result<()> {
        self.run(&["kill", &node.to_string()]).await.map(drop)
    }

    /// Boots node `node` after a kill, with an empty disk when `empty`.
    pub async fn boot(&self, node: usize, empty: bool) -> Result<()> {
        let disk = if empty { "empty" } else { "keep" };
        self.run(&["boot", &node.to_string(), disk]).await.map(drop)
    }

    /// `kubectl drain` of node `node`.
    pub async fn drain(&self, node: usize) -> Result<()> {
        self.run(&["drain", &node.to_string()]).await.map(drop)
    }

    /// Undoes every fault.
    pub async fn heal(&self) -> Result<()> {
        self.run(&["heal"]).await.map(drop)
    }

    /// The faults in place, one per line.
    pub async fn status(&self) -> Result<Vec<String>> {
        Ok(self
            .run(&["status"])
            .await?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// Fails unless some fault is in place (the fault fired).
    pub async fn ensure_in_place(&self, what: &str) -> Result<()> {
        let status = self.status().await?;
        ensure!(
            !status.is_empty(),
            "{what}: no fault in place after it was made"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_and_every_kind_once_per_pass() {
        let first = schedule(42, 30, &Kind::ALL, 3);
        assert_eq!(first, schedule(42, 30, &Kind::ALL, 3));
        assert_ne!(first, schedule(43, 30, &Kind::ALL, 3));
        for pass in first.chunks(Kind::ALL.len()) {
            let mut kinds: Vec<Kind> = pass.iter().map(|step| step.kind).collect();
            kinds.sort();
            assert_eq!(kinds, Kind::ALL.to_vec());
        }
        assert!(first.iter().all(|step| step.node < 3));
        let freezes: Vec<u64> = first
            .iter()
            .filter(|step| step.kind == Kind::FreezeMaster)
            .map(|step| step.hold.as_secs())
            .collect();
        assert!(freezes.iter().all(|seconds| (30..=90).contains(seconds)));
        // A short run still has every kind.
        let short = schedule(7, Kind::ALL.len(), &Kind::ALL, 3);
        assert_eq!(short.len(), Kind::ALL.len());
        assert_eq!(schedule(7, 2, &[Kind::DeleteMaster], 3).len(), 2);
    }

    #[test]
    fn kinds_are_named_and_parsed_back() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.name()).ok(), Some(kind));
        }
        assert!(Kind::parse("flood").is_err());
    }
}
