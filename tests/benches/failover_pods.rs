//! Failover benchmark on real pods (not a timed test): `examples/redis-sentinel.yaml` on the
//! real node of the local cluster (`REAL_NODE=1 hack/cluster.sh up`, images imported), the
//! operator running in this process as `cargo run` runs it. Each run takes the master away —
//! `delete`: `kubectl delete pod` of its pod (its preStop hook hands over); `kill`: SIGKILL of
//! its `redis-server` from the host (no graceful path) — and probes `<name>-master` every
//! 50 ms (a new connection to the Service's cluster IP, a `SET` a replica acknowledges with
//! `WAIT 1`): the time from the fault until writes are acknowledged again after they stopped
//! (after a deletion: by the promoted replica, known by its new replication id), and how long
//! none was. Then it waits until the set is Ready again. Prints every run, then p50 and p95.
//!
//! `cargo bench -p integration-tests --bench failover_pods [-- runs [delete|kill|both]]`
//! (`hack/bench.sh failover-pods [runs] [fault]` brings up the cluster and the images first).

use integration_tests::real_node as real_node_support;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::DeleteParams;
use operator_kit::testing::TestNamespace;
use real_node_support::{
    SENTINEL_NAME, acknowledged_writes, connect, connect_pod, create_seed_sentinel, is_ready,
    kill_container_process, ready_master, restart_count,
};
use redis_operator::resp::Value;

const PATIENCE: Duration = Duration::from_secs(300);

/// The replication id of the master that acknowledged one write through `address` (a
/// replica took it: `WAIT 1`), on a new connection; `None` when no write was acknowledged.
async fn acknowledged_by(address: (&str, u16), password: &str, key: &str) -> Option<String> {
    let attempt = async {
        let mut connection = connect(address, password).await?;
        connection.command(&["SET", key, "probe"]).await?;
        let replicas = connection.command(&["WAIT", "1", "500"]).await?;
        ensure!(matches!(replicas, Value::Integer(count) if count >= 1));
        let info = connection.command(&["INFO", "replication"]).await?;
        let text = info.text().unwrap_or_default();
        text.lines()
            .find_map(|line| line.strip_prefix("master_replid:"))
            .map(|id| id.trim().to_owned())
            .context("no master_replid")
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .and_then(Result::ok)
}

/// When writes through `address` stopped and when they were acknowledged again, by a master
/// with another replication id than `before` if `moved` (a promoted replica takes a new one),
/// probing every 50 ms from now.
async fn outage(
    address: (&str, u16),
    password: &str,
    before: &str,
    moved: bool,
) -> Result<(Instant, Instant)> {
    let started = Instant::now();
    let mut stopped = None;
    for attempt in 0_u64.. {
        let probed = Instant::now();
        match acknowledged_by(address, password, &format!("bench:probe:{attempt}")).await {
            Some(id) if stopped.is_some() && (!moved || id != before) => {
                return Ok((stopped.unwrap_or(probed), Instant::now()));
            }
            Some(_) => {}
            None => {
                stopped.get_or_insert(probed);
            }
        }
        if started.elapsed() > PATIENCE {
            bail!("{address:?}: no write acknowledged again within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no more probes")
}

/// The measurements of one kind of fault, in seconds, one per run.
#[derive(Default)]
struct Series {
    kind: &'static str,
    /// From the fault until writes were acknowledged again.
    to_writes: Vec<f64>,
    /// From the first refused write until writes were acknowledged again.
    no_writes: Vec<f64>,
    /// From the fault until the pod and the resource were Ready again.
    to_ready: Vec<f64>,
}

/// The `q` quantile of `samples` (nearest rank).
fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<()> {
    let arguments: Vec<String> = std::env::args()
        .skip(1)
        .filter(|argument| !argument.starts_with('-'))
        .collect();
    let runs: usize = arguments
        .first()
        .map(|runs| runs.parse())
        .transpose()?
        .unwrap_or(5);
    let kinds: Vec<&'static str> = match arguments.get(1).map(String::as_str) {
        None | Some("both") => vec!["delete", "kill"],
        Some("delete") => vec!["delete"],
        Some("kill") => vec!["kill"],
        Some(other) => bail!("unknown fault {other:?}: expected delete, kill or both"),
    };
    let namespace = TestNamespace::create("bench-failover-pods").await?;
    let controller = redis_operator::redis_sentinel_controller();
    let operator = namespace
        .start_operator(
            redis_operator::OPERATOR_NAME,
            &redis_operator::crds(),
            |operator| operator.with_controller(controller),
        )
        .await?;
    let password = create_seed_sentinel(&namespace).await?;
    let pods = namespace.api::<Pod>();
    let mut master = ready_master(&namespace, PATIENCE).await?;
    let cluster_ip = namespace
        .api::<Service>()
        .get(&format!("{SENTINEL_NAME}-master"))
        .await?
        .spec
        .and_then(|spec| spec.cluster_ip)
        .context("no cluster IP")?;
    let service = (cluster_ip.as_str(), 6379);
    let mut written = 0;
    let mut results = Vec::new();
    for kind in kinds {
        let mut series = Series {
            kind,
            ..Series::default()
        };
        for run in 1..=runs {
            let before = acknowledged_by(service, &password, "bench:before")
                .await
                .context("the master Service takes no write before the fault")?;
            let mut client = connect_pod(&pods, &master, &password).await?;
            let keys = acknowledged_writes(&mut client, &format!("{kind}-{run}"), 20).await?;
            written += keys.len();
            let old = master.clone();
            let old_pod = pods.get(&old).await?;
            let started = Instant::now();
            if kind == "delete" {
                pods.delete(&old, &DeleteParams::default()).await?;
            } else {
                kill_container_process(&old_pod, "redis")?;
            }
            let (stopped, serving) = outage(service, &password, &before, kind == "delete").await?;
            // Ready again: the pod that was master is back (recreated, or its container
            // restarted) and Ready, and the resource reports Ready.
            let old_uid = old_pod.metadata.uid.clone();
            let restarts = restart_count(&old_pod, "redis");
            namespace
                .wait_for(&pods, &old, "back and Ready", PATIENCE, move |pod: &Pod| {
                    (pod.metadata.uid != old_uid || restart_count(pod, "redis") > restarts)
                        && is_ready(pod) == Some(true)
                })
                .await?;
            master = ready_master(&namespace, PATIENCE).await?;
            let ready = Instant::now();
            let mut check = connect_pod(&pods, &master, &password).await?;
            for key in &keys {
                let exists = check.command(&["EXISTS", key]).await?;
                ensure!(exists == Value::Integer(1), "{kind} run {run}: {key} lost");
            }
            let (writes, without, again) = (
                serving.duration_since(started).as_secs_f64(),
                serving.duration_since(stopped).as_secs_f64(),
                ready.duration_since(started).as_secs_f64(),
            );
            println!(
                "{kind} run {run}: master {old} -> {master}; writes acknowledged again after \
                 {writes:.2} s (none for {without:.2} s), Ready after {again:.2} s"
            );
            series.to_writes.push(writes);
            series.no_writes.push(without);
            series.to_ready.push(again);
        }
        results.push(series);
    }
    println!("\n{runs} runs of each; no acknowledged write lost ({written} checked)");
    for Series {
        kind,
        to_writes,
        no_writes,
        to_ready,
    } in &results
    {
        println!(
            "{kind}: writes through <name>-master acknowledged again p50 {:.2} s, p95 {:.2} s \
             after the fault (none for p50 {:.2} s, p95 {:.2} s); Ready p50 {:.2} s, p95 {:.2} s",
            quantile(to_writes, 0.5),
            quantile(to_writes, 0.95),
            quantile(no_writes, 0.5),
            quantile(no_writes, 0.95),
            quantile(to_ready, 0.5),
            quantile(to_ready, 0.95),
        );
    }
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}
