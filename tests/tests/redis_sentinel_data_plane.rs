//! Redis with Sentinel, for real: three `redis-server` and three `redis-sentinel` processes on
//! loopback, started by redis-operator's own pod scripts and driven by its data-plane code
//! (observe → plan → heal) exactly as its controller drives the pods. Bootstrap, a kill -9 of
//! the master, a restarted old master, a forced second master and a cold restart of
//! everything — and no write acknowledged with `WAIT 1` is ever lost.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use redis_operator::sentinel::data_plane::{Choice, Observation, Role};
use support::{LocalSet, cli, wait_until};

/// Short, so the tests run quickly; the benchmark uses the default 5000.
const DOWN_AFTER_MILLISECONDS: u64 = 1000;

fn role_of(observation: &Observation, index: usize) -> Option<&Role> {
    observation.redis[index].as_ref().map(|state| &state.role)
}

#[tokio::test]
async fn bootstrap_failover_and_rejoin_lose_no_acknowledged_write() -> Result<()> {
    let mut set = LocalSet::new("failover", 3, 3, DOWN_AFTER_MILLISECONDS)?;

    // Cold start: three empty masters, sentinels monitoring nothing. The operator picks one
    // master (all equal: the lowest ordinal) and points every replica and sentinel at it.
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(master == 0, "bootstrap chose node {master}");
    // A lone master refuses writes (min-replicas-to-write 1), so a partitioned one cannot
    // take writes that a failover would discard.
    let config = cli(set.port(0), &["CONFIG", "GET", "min-replicas-to-write"])?;
    ensure!(config.ends_with('1'), "{config}");

    let keys = set.acknowledged_writes(0, "before-kill", 300).await?;

    // kill -9 the master: the sentinels promote a replica; the operator waits for them
    // (failover in progress), then its view follows.
    set.kill_redis(0);
    let killed = Instant::now();
    let mut saw_failover_in_progress = false;
    let new_master = loop {
        let (observation, plan) = set.reconcile(3).await?;
        saw_failover_in_progress |= plan.failover_in_progress;
        if let Some(master) = plan.master
            && master != 0
            && role_of(&observation, master) == Some(&Role::Master)
        {
            ensure!(plan.choice == Some(Choice::Sentinels), "{plan:?}");
            break master;
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover: {observation:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(
        saw_failover_in_progress,
        "the operator never saw the failover under way"
    );
    let missing = set.missing_keys(new_master, &keys).await?;
    ensure!(
        missing.is_empty(),
        "{} acknowledged writes lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    // The old master comes back on its old data, as a master: it must rejoin as a replica.
    set.start_redis(0)?;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(master == new_master, "the old master took over again");
    let observation = set.observe(3).await;
    ensure!(matches!(
        role_of(&observation, 0),
        Some(Role::Replica { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn two_masters_are_healed_toward_the_most_up_to_date_node() -> Result<()> {
    let mut set = LocalSet::new("two-masters", 3, 3, DOWN_AFTER_MILLISECONDS)?;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let rogue = (master + 1) % 3;
    set.acknowledged_writes(master, "shared", 50).await?;

    // With sentinels: a replica is forced to master. The sentinels' master stays, the rogue
    // is demoted, and the operator warns.
    cli(set.port(rogue), &["REPLICAOF", "NO", "ONE"])?;
    let (_, plan) = set.reconcile(3).await?;
    ensure!(plan.master == Some(master), "{plan:?}");
    ensure!(
        plan.warnings
            .iter()
            .any(|warning| warning.contains("two masters")),
        "{plan:?}"
    );
    let (healed, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(healed == master);

    // Without sentinels: the rogue master is behind (it stopped replicating; the master
    // took more acknowledged writes), so the master with the higher offset is kept.
    for index in 0..3 {
        set.kill_sentinel(index);
    }
    cli(set.port(rogue), &["REPLICAOF", "NO", "ONE"])?;
    let later = set.acknowledged_writes(master, "later", 50).await?;
    let (_, plan) = set.reconcile(3).await?;
    ensure!(
        plan.master == Some(master) && plan.choice == Some(Choice::MostUpToDate),
        "{plan:?}"
    );
    ensure!(
        plan.warnings
            .iter()
            .any(|warning| warning.contains("two masters")),
        "{plan:?}"
    );
    wait_until(
        "the rogue to replicate again",
        Duration::from_secs(20),
        || Ok(cli(set.port(rogue), &["INFO", "replication"])?.contains("master_link_status:up")),
    )?;
    ensure!(set.missing_keys(rogue, &later).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_cold_restart_keeps_the_data_of_the_most_up_to_date_node() -> Result<()> {
    let mut set = LocalSet::new("cold-restart", 3, 3, DOWN_AFTER_MILLISECONDS)?;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let (stale, fresh) = ((master + 1) % 3, (master + 2) % 3);
    set.acknowledged_writes(master, "early", 100).await?;
    // One replica stops early; the master goes on with the other one.
    set.stop_redis(stale)?;
    let late = set.acknowledged_writes(master, "late", 100).await?;
    // Then everything stops: redis and sentinels (whose configuration is on an emptyDir).
    for index in [master, fresh] {
        set.stop_redis(index)?;
    }
    for index in 0..3 {
        set.kill_sentinel(index);
    }
    // The stale node comes back first, alone, and the others after it: it must not win.
    for index in [stale, master, fresh] {
        set.start_redis(index)?;
    }
    for index in 0..3 {
        set.start_sentinel(index)?;
    }
    let (chosen, plans) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(chosen != stale, "the stale node became master: {plans:#?}");
    ensure!(plans[0].choice == Some(Choice::MostUpToDate));
    let missing = set.missing_keys(chosen, &late).await?;
    ensure!(
        missing.is_empty(),
        "{} acknowledged writes lost",
        missing.len()
    );
    wait_until("every replica to catch up", Duration::from_secs(20), || {
        Ok(cli(set.port(stale), &["EXISTS", "late:99"])? == "1")
    })?;
    Ok(())
}

#[tokio::test]
async fn the_masters_pre_stop_hook_hands_over_without_losing_writes() -> Result<()> {
    let set = LocalSet::new("pre-stop", 3, 3, DOWN_AFTER_MILLISECONDS)?;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let keys = set.acknowledged_writes(master, "before-stop", 100).await?;
    // What the kubelet runs before stopping the master's container.
    let started = Instant::now();
    let status = set.command(master, "prestop-redis.sh").status()?;
    ensure!(status.success(), "the preStop hook failed: {status}");
    // The hook returns once the sentinels name another master; then they demote this one.
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "the hook took {:?}",
        started.elapsed()
    );
    wait_until(
        "the old master to become a replica",
        Duration::from_secs(20),
        || Ok(cli(set.port(master), &["ROLE"])?.starts_with("slave")),
    )?;
    let (new_master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(new_master != master);
    ensure!(set.missing_keys(new_master, &keys).await?.is_empty());
    Ok(())
}
