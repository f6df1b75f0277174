//! The fault suite on the three real nodes (see `integration_tests::fault_suite`): every
//! nemesis kind at least once, in an order drawn from a seed, under clients in every zone;
//! the checker must find every acknowledged write, no counter below an acknowledged increment
//! and no two masters acknowledging at once. `FAULT_SEED` replays a run, `FAULT_ROUNDS` and
//! `FAULT_KINDS` lengthen or narrow it (`hack/bench.sh faults` runs it at length).

use anyhow::{Result, ensure};
use integration_tests::fault_suite::{self, Config};
use integration_tests::nemesis::Kind;
use operator_kit::testing::TestNamespace;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_keeps_every_acknowledged_write_through_every_fault() -> Result<()> {
    let config = Config::from_env()?;
    let namespace = TestNamespace::create("fault-suite").await?;
    let set = fault_suite::prepare(&namespace).await?;
    let outcome = fault_suite::run(&namespace, &set, &config).await?;
    // Every kind asked for fired (a round that could not make its fault fails on its own).
    for kind in &config.kinds {
        ensure!(
            config.rounds < config.kinds.len()
                || outcome.rounds.iter().any(|round| round.step.kind == *kind),
            "{} never ran",
            kind.name()
        );
    }
    ensure!(
        config.kinds != Kind::ALL || outcome.rounds.len() >= Kind::ALL.len(),
        "a short run"
    );
    namespace.delete().await?;
    Ok(())
}
