//! Redis with Sentinel, for real: three `redis-server` and three `redis-sentinel` processes on
//! loopback, started by redis-operator's own pod scripts and driven by its data-plane code
//! (observe → plan → heal) exactly as its controller drives the pods. Bootstrap, a kill -9 of
//! the master, a restarted old master, a forced second master and a cold restart of
//! everything — and no write acknowledged with `WAIT 1` is ever lost.

use integration_tests::local_redis as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use redis_operator::resp::Credentials;
use redis_operator::sentinel;
use redis_operator::sentinel::data_plane::{self, Choice, DirectResolver, Observation, Role};
use redis_operator::sentinel::passwords::{self, Converged, Step};
use support::{
    LocalSet, PASSWORD, anonymous_cli, cli, client_cli, every_process_takes, run_ids, sentinel_cli,
    spawn_client, wait_until,
};

/// Short, so the tests run quickly; the benchmark uses the default 5000.
const DOWN_AFTER_MILLISECONDS: u64 = 1000;

fn role_of(observation: &Observation, index: usize) -> Option<&Role> {
    observation.redis[index].as_ref().map(|state| &state.role)
}

#[tokio::test]
async fn bootstrap_failover_and_rejoin_lose_no_acknowledged_write() -> Result<()> {
    let mut set = LocalSet::new("failover", 3, 3, DOWN_AFTER_MILLISECONDS).await?;

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
    set.start_redis(0).await?;
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
async fn sentinels_refuse_whoever_lacks_the_password_and_the_operator_still_heals() -> Result<()> {
    let set = LocalSet::new("sentinel-auth", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let sentinel = set.sentinel_port(1);
    let master_set = set.settings().master_set;
    // What someone who reaches port 26379 would try: send Sentinel-aware clients, and their
    // password, to a host of theirs. Refused, and nothing changed.
    for attack in [
        vec!["SENTINEL", "REMOVE", master_set.as_str()],
        vec!["SENTINEL", "MONITOR", "theirs", "127.0.0.1", "1", "1"],
        vec!["SENTINEL", "SET", master_set.as_str(), "quorum", "1"],
    ] {
        let answer = anonymous_cli(sentinel, &attack)?;
        ensure!(
            answer.starts_with("NOAUTH"),
            "{attack:?} answered {answer:?}"
        );
    }
    let answer = sentinel_cli(
        sentinel,
        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &master_set],
    )?;
    ensure!(
        answer.ends_with(&set.port(master).to_string()),
        "the sentinel's master became {answer:?}"
    );
    // With the password, a change is taken; the operator, which authenticates, puts the
    // sentinel right again.
    let removed = sentinel_cli(sentinel, &["SENTINEL", "REMOVE", &master_set])?;
    ensure!(removed == "OK", "{removed}");
    let (healed, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(
        healed == master,
        "the master moved from {master} to {healed}"
    );
    Ok(())
}

#[tokio::test]
async fn a_changed_password_is_reported_and_nothing_is_healed() -> Result<()> {
    let set = LocalSet::new("password-changed", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    // The Secret now holds another password than the running pods: every Redis and Sentinel
    // refuses it. The operator sees that, not "unreachable", and plans nothing.
    let nodes = set.first(3);
    let settings = set.settings();
    let observation = data_plane::observe(
        &nodes,
        &DirectResolver,
        &settings,
        &Credentials::password(Some("the new password")),
    )
    .await;
    let pods: Vec<String> = nodes.iter().map(|node| node.pod.clone()).collect();
    ensure!(observation.password_refused == pods, "{observation:?}");
    let plan = data_plane::plan(&nodes, &observation, &settings, &set.memory(3));
    ensure!(plan.master.is_none() && plan.actions.is_empty(), "{plan:?}");
    let condition = sentinel::readiness(("test", "set"), &nodes, (3, 3, true), &observation, &plan);
    ensure!(condition.reason == "PasswordRefused", "{condition:?}");
    ensure!(
        !condition.message.contains("the new password"),
        "{condition:?}"
    );
    // With the pods' own password, all is as it was.
    let observation = set.observe(3).await;
    ensure!(observation.password_refused.is_empty(), "{observation:?}");
    let (still, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(still == master);
    Ok(())
}

#[tokio::test]
async fn two_masters_are_healed_toward_the_most_up_to_date_node() -> Result<()> {
    let mut set = LocalSet::new("two-masters", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
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
    // took more acknowledged writes). While no sentinel answers, the operator touches
    // nothing (it cannot tell a partition from a failure); once the sentinels are back,
    // restarted without a master, the master, whose history contains the rogue's, is kept.
    for index in 0..3 {
        set.kill_sentinel(index);
    }
    cli(set.port(rogue), &["REPLICAOF", "NO", "ONE"])?;
    let later = set.acknowledged_writes(master, "later", 50).await?;
    let (_, plan) = set.reconcile(3).await?;
    ensure!(
        plan.actions.is_empty() && plan.master.is_none(),
        "acted without a sentinel majority: {plan:?}"
    );
    for index in 0..3 {
        set.start_sentinel(index).await?;
    }
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
    )
    .await?;
    ensure!(set.missing_keys(rogue, &later).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_cold_restart_keeps_the_data_of_the_most_up_to_date_node() -> Result<()> {
    let mut set = LocalSet::new("cold-restart", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let (stale, fresh) = ((master + 1) % 3, (master + 2) % 3);
    set.acknowledged_writes(master, "early", 100).await?;
    // One replica stops early; the master goes on with the other one.
    set.stop_redis(stale).await?;
    let late = set.acknowledged_writes(master, "late", 100).await?;
    // Then everything stops: redis and sentinels (whose configuration is on an emptyDir).
    for index in [master, fresh] {
        set.stop_redis(index).await?;
    }
    for index in 0..3 {
        set.kill_sentinel(index);
    }
    // The stale node comes back first, alone, and the others after it: it must not win.
    for index in [stale, master, fresh] {
        set.start_redis(index).await?;
    }
    for index in 0..3 {
        set.start_sentinel(index).await?;
    }
    let (chosen, plans) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(chosen != stale, "the stale node became master: {plans:#?}");
    // After a restart of every node, only the operator's record of the last master says
    // which node is newest.
    ensure!(
        plans[0].choice == Some(Choice::LastMaster),
        "{:?}",
        plans[0]
    );
    let missing = set.missing_keys(chosen, &late).await?;
    ensure!(
        missing.is_empty(),
        "{} acknowledged writes lost",
        missing.len()
    );
    wait_until("every replica to catch up", Duration::from_secs(20), || {
        Ok(cli(set.port(stale), &["EXISTS", "late:99"])? == "1")
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_masters_pre_stop_hook_hands_over_without_losing_writes() -> Result<()> {
    let mut set = LocalSet::new("pre-stop", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
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
    // Then the kubelet stops the container, and the StatefulSet's new pod starts on the same
    // data: it asks the sentinels and comes back as a replica.
    set.stop_redis(master).await?;
    set.start_redis(master).await?;
    ensure!(cli(set.port(master), &["ROLE"])?.starts_with("slave"));
    let (new_master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(new_master != master);
    ensure!(set.missing_keys(new_master, &keys).await?.is_empty());
    Ok(())
}

/// Stops (SIGSTOP) every replica of `master` and waits until the master's sentinel sees them
/// down: no replica can take over (none acknowledges the master's offset, and a sentinel
/// would refuse with NOGOODSLAVE). It also waits until the master reports every replica's
/// lag above the hook's threshold (2 s), so the hook never pauses writes for a replica that
/// will not catch up: a pause longer than down-after would make the master look down.
async fn freeze_replicas(set: &LocalSet, master: usize) -> Result<Vec<usize>> {
    let replicas: Vec<usize> = (0..set.nodes.len())
        .filter(|index| *index != master)
        .collect();
    for replica in &replicas {
        set.signal_redis(*replica, "STOP")?;
    }
    let master_set = set.settings().master_set;
    let sentinel = set.nodes[master].sentinel_port;
    wait_until(
        "the sentinel to see the replicas down",
        Duration::from_secs(20),
        || {
            let answer = sentinel_cli(sentinel, &["SENTINEL", "REPLICAS", &master_set])?;
            Ok(answer
                .lines()
                .filter(|line| line.contains("s_down"))
                .count()
                == replicas.len())
        },
    )
    .await?;
    wait_until(
        "the master to see every replica's lag above 2 s",
        Duration::from_secs(20),
        || {
            let info = cli(set.port(master), &["INFO", "replication"])?;
            let lags: Vec<u64> = info
                .lines()
                .filter(|line| line.starts_with("slave"))
                .filter_map(|line| {
                    line.split(',')
                        .find_map(|field| field.strip_prefix("lag="))
                        .and_then(|lag| lag.trim().parse().ok())
                })
                .collect();
            Ok(lags.len() == replicas.len() && lags.iter().all(|lag| *lag >= 3))
        },
    )
    .await?;
    Ok(replicas)
}

/// While no replica can take over (replicas not yet in sync after a restart, say), the
/// master's preStop hook must not give up and let the pod stop as master, nor ask for a
/// failover that could promote a replica lacking acknowledged writes: it waits until every
/// replica has the master's whole stream, then hands over.
#[tokio::test]
async fn the_pre_stop_hook_asks_again_while_no_replica_can_take_over() -> Result<()> {
    let mut set = LocalSet::new("pre-stop-refused", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let keys = set.acknowledged_writes(master, "before-stop", 100).await?;
    let replicas = freeze_replicas(&set, master).await?;
    let mut hook = set.command(master, "prestop-redis.sh").spawn()?;
    wait_until("the hook to wait", Duration::from_secs(20), || {
        Ok(set
            .script_log(master, "prestop-redis.sh")
            .contains("waiting for every replica to reach the master's offset"))
    })
    .await?;
    for replica in &replicas {
        set.signal_redis(*replica, "CONT")?;
    }
    let mut status = None;
    wait_until("the hook to finish", Duration::from_secs(30), || {
        status = hook.try_wait()?;
        Ok(status.is_some())
    })
    .await?;
    let log = set.script_log(master, "prestop-redis.sh");
    ensure!(
        status.is_some_and(|status| status.success()),
        "the preStop hook failed ({status:?}): {log}"
    );
    ensure!(log.contains("handed over to"), "{log}");
    set.stop_redis(master).await?;
    set.start_redis(master).await?;
    let (new_master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(new_master != master, "node {master} is master still");
    ensure!(set.missing_keys(new_master, &keys).await?.is_empty());
    Ok(())
}

/// When no replica can take over within the hook's time, the hook says so and fails — the
/// kubelet shows that as a FailedPreStopHook event — and the node stays master with its data
/// and takes writes again.
#[tokio::test]
async fn the_pre_stop_hook_fails_saying_why_when_no_replica_takes_over() -> Result<()> {
    let set = LocalSet::new("pre-stop-no-replica", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let keys = set.acknowledged_writes(master, "before-stop", 20).await?;
    let replicas = freeze_replicas(&set, master).await?;
    // While the hook waits, the master must not look down to the sentinels (a long write
    // pause does that): they would fail over on their own to any replica fit, even one
    // lacking writes.
    let master_set = set.settings().master_set;
    let mut hook = set.command(master, "prestop-redis.sh").spawn()?;
    let mut looked_down = Vec::new();
    let output = loop {
        if let Some(status) = hook.try_wait()? {
            break status;
        }
        let seen = sentinel_cli(
            set.nodes[master].sentinel_port,
            &["SENTINEL", "MASTER", &master_set],
        )?;
        let flags = seen
            .lines()
            .skip_while(|line| *line != "flags")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        if flags.contains("s_down") {
            looked_down.push(flags);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = set.script_log(master, "prestop-redis.sh");
    ensure!(
        !output.success(),
        "the hook succeeded without a handover: {log}"
    );
    ensure!(
        log.contains("no replica took over within")
            && log.contains("waiting for every replica to reach the master's offset"),
        "{log}"
    );
    ensure!(
        looked_down.is_empty(),
        "the master looked down to its sentinel while the hook waited ({} of its answers: \
         {:?}): {log}",
        looked_down.len(),
        looked_down.first()
    );
    for replica in &replicas {
        set.signal_redis(*replica, "CONT")?;
    }
    let (still, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(
        still == master,
        "node {still} became master without a handover"
    );
    ensure!(set.missing_keys(master, &keys).await?.is_empty());
    // Writes are no longer paused.
    set.acknowledged_writes(master, "after-the-hook", 5).await?;
    Ok(())
}

/// Sentinel's own failover (the master's preStop asks for one with `SENTINEL FAILOVER`) must
/// not be undone by the operator. For a second or so the old master still reports `master` and
/// most sentinels still name it, while the promoted replica is a master already: reconciling
/// as fast as it can all through the handover, the operator must change nothing until the
/// sentinels agree on the new master.
#[tokio::test]
async fn reconciling_through_a_sentinel_failover_never_undoes_it() -> Result<()> {
    let set = LocalSet::new("mid-failover", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
    let (old, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let keys = set.acknowledged_writes(old, "before-handover", 100).await?;
    let master_set = set.settings().master_set;
    let answer = sentinel_cli(
        set.nodes[old].sentinel_port,
        &["SENTINEL", "FAILOVER", &master_set],
    )?;
    ensure!(answer == "OK", "SENTINEL FAILOVER answered {answer:?}");
    let started = Instant::now();
    let mut against_the_failover = Vec::new();
    let mut reconciles = 0;
    let new = loop {
        let (observation, plan) = set.reconcile(3).await?;
        reconciles += 1;
        if plan.master == Some(old) && !plan.actions.is_empty() {
            against_the_failover.push(plan.actions.clone());
        }
        if let Some(master) = plan.master
            && master != old
            && plan.is_healthy(&observation)
        {
            break master;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the failover never completed ({reconciles} reconciles); actions against it: \
             {against_the_failover:?}; last observation: {observation:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "measured: handover to node {new} in {:?}, {reconciles} reconciles meanwhile",
        started.elapsed()
    );
    ensure!(
        against_the_failover.is_empty(),
        "the operator acted against Sentinel's failover: {against_the_failover:?}"
    );
    let missing = set.missing_keys(new, &keys).await?;
    ensure!(
        missing.is_empty(),
        "{} acknowledged writes lost",
        missing.len()
    );
    Ok(())
}

/// Scale-down 5 → 3 while the master is ordinal 4: the remaining three nodes are its replicas
/// and no sentinel names one of them. Promoting one would make a second master while the old
/// one still takes writes; the operator must leave the failover to Sentinel, which happens when
/// the pod goes, and no acknowledged write may be lost.
#[tokio::test]
async fn a_scale_down_that_removes_the_master_leaves_the_failover_to_sentinel() -> Result<()> {
    let mut set = LocalSet::new("scale-down-master", 5, 5, DOWN_AFTER_MILLISECONDS).await?;
    // Make node 4 the master: on a cold start the node with data wins.
    set.seed(4, "seed", "1")?;
    let (master, _) = set
        .reconcile_until_healthy(5, Duration::from_secs(30))
        .await?;
    ensure!(master == 4, "bootstrap chose node {master}");
    let mut keys = set.acknowledged_writes(4, "before-scale-down", 100).await?;

    // The StatefulSet is scaled to 3: the operator now looks at nodes 0..2 only, while pods 3
    // and 4 are still terminating and node 4 still takes writes.
    for round in 0..10 {
        let (_, plan) = set.reconcile(3).await?;
        ensure!(
            plan.actions.is_empty(),
            "round {round}: the operator acted while the master is outside the set: {plan:?}"
        );
        keys.extend(
            set.acknowledged_writes(4, &format!("while-scaling-{round}"), 10)
                .await?,
        );
    }
    // The pods go: Sentinel fails over to one of the three, and the operator follows.
    for index in [3, 4] {
        set.kill_redis(index);
        set.kill_sentinel(index);
    }
    let (new_master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(60))
        .await?;
    ensure!(new_master < 3);
    let missing = set.missing_keys(new_master, &keys).await?;
    ensure!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(5)]
    );
    Ok(())
}

/// A master without storage whose pod is recreated before the sentinels notice it was gone
/// starts empty while the sentinels still name it. Serving as master, it would have every
/// replica copy its empty dataset. Its start script waits for the sentinels' failover instead,
/// and no node loses an acknowledged write.
#[tokio::test]
async fn an_empty_master_restarted_at_once_does_not_wipe_its_replicas() -> Result<()> {
    let mut set = LocalSet::new("empty-master", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
    let (old, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let keys = set.acknowledged_writes(old, "before-restart", 100).await?;
    set.kill_redis(old);
    set.wipe_data(old)?;
    set.spawn_redis(old)?;
    let (new, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(60))
        .await?;
    ensure!(new != old, "the empty node stayed master");
    for index in 0..3 {
        let missing = set.missing_keys(index, &keys).await?;
        ensure!(
            missing.is_empty(),
            "node {index} lost {} of {} acknowledged writes",
            missing.len(),
            keys.len()
        );
    }
    Ok(())
}

/// The same empty master restarted while only its own sentinel answers (one other frozen, as
/// a paused VM, one killed): no majority names anyone, and the one answer names this node.
/// Starting as master then would have its replicas copy nothing once the sentinels are back
/// and still name it. Its start script waits, not answering, for as long as no majority
/// forms, and replicates from the master the sentinels elect once they are back.
#[tokio::test]
async fn an_empty_master_restarted_without_a_sentinel_majority_waits() -> Result<()> {
    // A thawed sentinel counts a replica fit for promotion only if its link to the master
    // went down less than ten down-afters before the master's: 3 s leaves room for the
    // freeze below, the test's usual 1 s does not (and no failover could end the wait).
    let mut set = LocalSet::new("empty-minority", 3, 3, 3000).await?;
    let (old, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let keys = set.acknowledged_writes(old, "before-restart", 100).await?;
    let others: Vec<usize> = (0..3).filter(|index| *index != old).collect();
    set.signal_sentinel(others[0], "STOP")?;
    set.kill_sentinel(others[1]);
    set.kill_redis(old);
    set.wipe_data(old)?;
    set.spawn_redis(old)?;
    // Longer than find-master's three attempts (about 12 s with a frozen sentinel, after
    // which the script used to start as master) and than the wait of the script for a
    // majority (2 × (down-after + failover-timeout) = 16 s here): it must still not answer.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(18) {
        ensure!(
            !cli(set.port(old), &["PING"]).is_ok_and(|reply| reply == "PONG"),
            "the empty node {old} answers after {:?} with only a minority of sentinels up",
            watched.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(
        set.script_log(old, "start-redis.sh")
            .contains("only a minority of the sentinels answers"),
        "start-redis.sh did not say why it waits:\n{}",
        set.script_log(old, "start-redis.sh")
    );
    set.signal_sentinel(others[0], "CONT")?;
    set.start_sentinel(others[1]).await?;
    let (new, plans) = set
        .reconcile_until_healthy(3, Duration::from_secs(90))
        .await?;
    ensure!(
        new != old,
        "the empty node stayed master: {plans:#?}\n{}\n{}",
        set.script_log(old, "start-redis.sh"),
        set.script_log(old, "start-sentinel.sh"),
    );
    for index in 0..3 {
        let missing = set.missing_keys(index, &keys).await?;
        ensure!(
            missing.is_empty(),
            "node {index} lost {} of {} acknowledged writes",
            missing.len(),
            keys.len()
        );
    }
    Ok(())
}

/// Sets every key of `keys` to `value` on node `master`, each write acknowledged by a replica.
async fn overwrite(set: &LocalSet, master: usize, keys: &[String], value: &str) -> Result<()> {
    let node = &set.nodes[master];
    let mut connection = redis_operator::sentinel::data_plane::connect(
        &redis_operator::sentinel::data_plane::DirectResolver,
        &node.host,
        node.redis_port,
        &support::as_client(),
    )
    .await?;
    for key in keys {
        connection.command(&["SET", key, value]).await?;
        let replicas = connection.command(&["WAIT", "1", "2000"]).await?;
        ensure!(
            replicas == redis_operator::resp::Value::Integer(1),
            "SET {key} was not acknowledged by a replica: {replicas:?}"
        );
    }
    Ok(())
}

/// After every pod restarts (AOF on), each Redis comes up as a master with a new replication
/// ID and offset 0: offsets say nothing, and key counts say nothing when writes overwrite
/// keys. A stale node that answers first, alone, must not be chosen (the others would then
/// resync from it); the last master the operator saw, which holds every acknowledged write, is.
#[tokio::test]
async fn a_cold_restart_does_not_choose_a_stale_node_that_answers_first() -> Result<()> {
    let mut set = LocalSet::new("cold-stale-first", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
    // Make node 2 the master (on a first start the node with data wins), so that the stale
    // node, 0, also wins every tie on ordinal.
    set.seed(2, "seed", "1")?;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(master == 2, "bootstrap chose node {master}");
    let keys = set.acknowledged_writes(2, "key", 100).await?;
    // Node 0 stops; the master overwrites every key with node 1 acknowledging.
    set.stop_redis(0).await?;
    overwrite(&set, 2, &keys, "late").await?;
    for index in [1, 2] {
        set.stop_redis(index).await?;
    }
    for index in 0..3 {
        set.kill_sentinel(index);
    }
    // The stale node and its sentinel come back first, alone, for a few checks.
    set.start_redis(0).await?;
    set.start_sentinel(0).await?;
    for _ in 0..5 {
        let (_, plan) = set.reconcile(3).await?;
        ensure!(
            plan.actions.is_empty(),
            "the operator acted with only the stale node up: {plan:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for index in [1, 2] {
        set.start_redis(index).await?;
        set.start_sentinel(index).await?;
    }
    let (chosen, plans) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    ensure!(chosen == 2, "node {chosen} became master: {plans:#?}");
    for index in 0..3 {
        wait_until(
            "every node to hold the late values",
            Duration::from_secs(20),
            || Ok(cli(set.port(index), &["GET", "key:99"])? == "late"),
        )
        .await?;
    }
    Ok(())
}

/// The password the Secret holds after a person changed it.
const NEW_PASSWORD: &str = r#"rotated "new" pass\word"#;

/// One pass of the controller's password step over the set, as `rotation::rotate` takes it:
/// converge every process, then record the step's passwords (the operator's Secret).
async fn rotation_pass(set: &LocalSet, wanted: &str) -> Result<(Step, Converged)> {
    let pods = set.pod_passwords();
    let step = passwords::step(&pods, wanted, true);
    let converged = passwords::converge(
        &sentinel::password_targets(&set.first(3)),
        &DirectResolver,
        &pods,
        &step,
        &set.settings().master_set,
    )
    .await;
    if let Step::AddNew { next } | Step::RemoveOld { next } = &step
        && converged.complete()
        && let Ok(mut recorded) = set.passwords.lock()
    {
        *recorded = next.clone();
    }
    Ok((step, converged))
}

#[tokio::test]
async fn a_password_rotation_moves_every_process_live_and_loses_no_write() -> Result<()> {
    let mut set = LocalSet::new("rotation", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
    set.reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let before = run_ids(&set).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let old_client = spawn_client(&set, "old", PASSWORD, stop.clone());
    let new_client = spawn_client(&set, "new", NEW_PASSWORD, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The Secret now holds the new password. First pass: every process takes it next to the
    // old one, and the operator's Secret says so.
    let (step, converged) = rotation_pass(&set, NEW_PASSWORD).await?;
    let accepted = Instant::now();
    ensure!(
        matches!(step, Step::AddNew { .. }) && converged.complete(),
        "{step:?} {converged:?}"
    );
    ensure!(converged.changed.len() == 6, "{converged:?}");
    ensure!(every_process_takes(&set, PASSWORD)? && every_process_takes(&set, NEW_PASSWORD)?);
    // Both clients write for a while; so do the operator's checks.
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Second pass: the old password goes.
    let removing = Instant::now();
    let (step, converged) = rotation_pass(&set, NEW_PASSWORD).await?;
    let removed = Instant::now();
    ensure!(
        matches!(step, Step::RemoveOld { .. }) && converged.complete(),
        "{step:?} {converged:?}"
    );
    ensure!(set.pod_passwords().previous.is_none() && set.pod_passwords().current == NEW_PASSWORD);
    ensure!(every_process_takes(&set, NEW_PASSWORD)?);
    ensure!(
        client_cli(set.port(master), PASSWORD, &["PING"])?.contains("WRONGPASS")
            || client_cli(set.port(master), PASSWORD, &["PING"])?.contains("NOAUTH"),
        "the old password still works"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A third pass changes nothing: the set is steady at the new password.
    let (step, converged) = rotation_pass(&set, NEW_PASSWORD).await?;
    ensure!(
        step == Step::Steady && converged.changed.is_empty(),
        "{converged:?}"
    );
    stop.store(true, Ordering::Relaxed);
    let (old_log, new_log) = (old_client.await?, new_client.await?);

    // A write spans several round trips: the old password must not fail one that had failed
    // before its removal began, and the new one must not fail one that started once every
    // process had taken it.
    let old_before_removal: Vec<_> = old_log
        .errors
        .iter()
        .filter(|write| write.failed < removing)
        .collect();
    let old_after_removal = old_log
        .errors
        .iter()
        .filter(|write| write.started >= removed)
        .count();
    let new_before = new_log
        .errors
        .iter()
        .filter(|write| write.failed < accepted)
        .count();
    let new_after: Vec<_> = new_log
        .errors
        .iter()
        .filter(|write| write.started >= accepted)
        .collect();
    let old_in_flight = old_log
        .errors
        .iter()
        .filter(|write| write.started < removing && write.failed >= removing)
        .count();
    eprintln!(
        "measured: old-password client: {} acknowledged writes, {} errors before the old password \
         was removed, {old_in_flight} in flight as it was, {old_after_removal} after; \
         new-password client: {} acknowledged writes, {new_before} errors before every process \
         took it, {} after",
        old_log.acknowledged.len(),
        old_before_removal.len(),
        new_log.acknowledged.len(),
        new_after.len()
    );
    ensure!(old_before_removal.is_empty(), "{old_before_removal:?}");
    ensure!(new_after.is_empty(), "{new_after:?}");
    ensure!(
        old_after_removal > 0,
        "the old-password client never noticed the removal: the test proved nothing"
    );

    // No process restarted, no acknowledged write is missing, and the operator and the
    // sentinels (as the operator's user) still heal and fail over.
    ensure!(run_ids(&set).await? == before, "a process restarted");
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let keys: Vec<String> = old_log
        .acknowledged
        .into_iter()
        .chain(new_log.acknowledged)
        .collect();
    let missing = set.missing_keys(master, &keys).await?;
    ensure!(
        missing.is_empty(),
        "{} acknowledged writes lost",
        missing.len()
    );
    set.kill_redis(master);
    let killed = Instant::now();
    loop {
        let (observation, plan) = set.reconcile(3).await?;
        if let Some(new_master) = plan.master
            && new_master != master
            && role_of(&observation, new_master) == Some(&Role::Master)
        {
            let missing = set.missing_keys(new_master, &keys).await?;
            ensure!(
                missing.is_empty(),
                "{} acknowledged writes lost",
                missing.len()
            );
            break;
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover after the rotation: {observation:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_process_restarted_during_a_rotation_takes_both_passwords_then_only_the_new_one()
-> Result<()> {
    let mut set = LocalSet::new("rotation-restart", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let (step, converged) = rotation_pass(&set, NEW_PASSWORD).await?;
    ensure!(matches!(step, Step::AddNew { .. }) && converged.complete());
    // A replica's pod restarts now: it starts from the operator's Secret, which holds both.
    let replica = (master + 1) % 3;
    set.stop_redis(replica).await?;
    set.kill_sentinel(replica);
    set.start_redis(replica).await?;
    set.start_sentinel(replica).await?;
    for password in [PASSWORD, NEW_PASSWORD] {
        for port in [set.port(replica), set.sentinel_port(replica)] {
            ensure!(client_cli(port, password, &["PING"])? == "PONG");
        }
    }
    set.reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let (step, converged) = rotation_pass(&set, NEW_PASSWORD).await?;
    ensure!(matches!(step, Step::RemoveOld { .. }) && converged.complete());
    ensure!(every_process_takes(&set, NEW_PASSWORD)?);
    for node in set.first(3) {
        for port in [node.redis_port, node.sentinel_port] {
            let answer = client_cli(port, PASSWORD, &["PING"])?;
            ensure!(
                answer != "PONG",
                "{} still takes the old password",
                node.pod
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_set_from_before_the_operators_user_upgrades_pod_by_pod_without_losing_a_write()
-> Result<()> {
    let mut set = LocalSet::before_operator_user("upgrade", 3, 3, DOWN_AFTER_MILLISECONDS).await?;
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    let mut keys = set.acknowledged_writes(master, "before", 100).await?;
    // The upgraded operator's first pass: the running processes get its user, and replication
    // and the sentinels use it, before any pod is rebuilt.
    set.old_operator = false;
    let (step, converged) = rotation_pass(&set, PASSWORD).await?;
    ensure!(
        step == Step::Steady && converged.complete(),
        "{converged:?}"
    );
    let added = converged
        .changed
        .iter()
        .filter(|change| change.ends_with("added the operator's user"))
        .count();
    ensure!(added == 6, "{converged:?}");
    for node in set.first(3) {
        ensure!(cli(node.redis_port, &["PING"])? == "PONG");
        ensure!(cli(node.sentinel_port, &["PING"])? == "PONG");
    }
    // The StatefulSet rolls from the highest ordinal: each old pod runs its preStop hook with
    // its old environment, and its replacement starts with the new one.
    for index in (0..3).rev() {
        set.before_operator_user = true;
        let mut hook = set.command(index, "prestop-redis.sh");
        let hook = tokio::task::spawn_blocking(move || hook.status()).await??;
        ensure!(hook.success(), "the preStop hook of node {index} failed");
        set.stop_redis(index).await?;
        set.kill_sentinel(index);
        set.before_operator_user = false;
        set.start_redis(index).await?;
        set.start_sentinel(index).await?;
        let (master, _) = set
            .reconcile_until_healthy(3, Duration::from_secs(60))
            .await?;
        keys.extend(
            set.acknowledged_writes(master, &format!("after-{index}"), 20)
                .await?,
        );
    }
    let (master, _) = set
        .reconcile_until_healthy(3, Duration::from_secs(30))
        .await?;
    for index in 0..3 {
        let missing = set.missing_keys(index, &keys).await?;
        ensure!(
            missing.is_empty(),
            "node {index} (master {master}) lacks {} acknowledged writes",
            missing.len()
        );
    }
    Ok(())
}
