//! Failover benchmark (not a timed test): a RedisSentinel on the local cluster, with real
//! `redis-server`/`redis-sentinel` processes behind its pods and the operator running in
//! process. Each run kills the master with SIGKILL and measures the time until (a) the
//! sentinels announce `+switch-master` and (b) the operator has updated `status.master` and
//! moved the master label. Prints every run, then p50 and p95.
//!
//! `cargo bench -p integration-tests --bench failover [-- runs [down-after-ms]]`
//! (`hack/bench.sh failover` starts the cluster first).

use integration_tests::local_redis as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use operator_kit::testing::TestNamespace;
use redis_operator::resp::Connection;
use redis_operator::sentinel::access::Access;
use redis_operator::sentinel::build::ROLE_LABEL;
use redis_operator::sentinel::data_plane::{DirectResolver, Resolver};
use redis_operator::v1beta1::{Phase, RedisSentinel};
use serde_json::json;
use support::LocalSet;

const TIMEOUT: Duration = Duration::from_secs(120);

async fn status_master(api: &kube::Api<RedisSentinel>) -> Result<(Option<String>, Phase)> {
    let resource = api.get("bench").await?;
    let status = resource.status.unwrap_or_default();
    Ok((status.master, status.phase))
}

async fn labelled_master(pods: &kube::Api<Pod>) -> Result<Vec<String>> {
    let list = pods
        .list_metadata(&ListParams::default().labels(&format!("{ROLE_LABEL}=master")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|pod| pod.metadata.name)
        .collect())
}

/// Waits until `condition` holds, polling every 20 ms; returns when it first held.
async fn poll<F, Fut>(what: &str, mut condition: F) -> Result<Instant>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if condition().await? {
            return Ok(Instant::now());
        }
        if started.elapsed() > TIMEOUT {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let arguments: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runs: usize = arguments.first().map_or(Ok(10), |value| value.parse())?;
    let down_after: u64 = arguments.get(1).map_or(Ok(5000), |value| value.parse())?;

    let namespace = TestNamespace::create("bench-failover").await?;
    let mut set = LocalSet::new("bench", 3, 3, down_after).await?;
    let nodes = set.nodes.clone();
    let controller = redis_operator::redis_sentinel_controller_with(
        Access::Direct,
        Arc::new(move |_: &RedisSentinel| nodes.clone()),
    );
    let operator = namespace
        .start_operator(
            redis_operator::OPERATOR_NAME,
            &redis_operator::crds(),
            |operator| operator.with_controller(controller),
        )
        .await?;
    support::create_password_secret(&namespace, "auth").await?;
    support::create_pod_passwords(&namespace, "bench").await?;
    let resource: RedisSentinel = serde_json::from_value(json!({
        "apiVersion": "redis.operator-kit.io/v1beta1",
        "kind": "RedisSentinel",
        "metadata": { "name": "bench" },
        "spec": {
            "sentinel": { "downAfterMilliseconds": down_after },
            "kubernetesConfig": { "redisSecret": { "name": "auth", "key": "password" } },
        },
    }))?;
    let api = namespace.api::<RedisSentinel>();
    let pods = namespace.api::<Pod>();
    api.create(&PostParams::default(), &resource).await?;
    println!("failover benchmark: {runs} runs, downAfterMilliseconds {down_after}");

    let (mut switches, mut follows) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        poll("Ready", || async {
            Ok(status_master(&api).await?.1 == Phase::Ready)
        })
        .await?;
        let master = status_master(&api).await?.0.context("no master")?;
        poll("the master label", || async {
            Ok(labelled_master(&pods).await? == [master.clone()])
        })
        .await?;
        let index: usize = master.rsplit('-').next().context("ordinal")?.parse()?;
        // Listen for the switch on a sentinel of a surviving node.
        let listener = &set.nodes[(index + 1) % 3];
        let stream = DirectResolver
            .connect(&listener.host, listener.sentinel_port)
            .await?;
        let mut subscription = Connection::open(stream, &support::as_client()).await?;
        subscription.send(&["SUBSCRIBE", "+switch-master"]).await?;
        subscription.read().await?;
        let switched = tokio::spawn(async move {
            loop {
                let message = subscription.read().await?;
                if message
                    .items()
                    .get(1)
                    .and_then(|channel| channel.text())
                    .as_deref()
                    == Some("+switch-master")
                {
                    return Ok::<Instant, anyhow::Error>(Instant::now());
                }
            }
        });

        let killed = Instant::now();
        set.kill_redis(index);
        let followed = poll("the operator to follow", || async {
            let (current, _) = status_master(&api).await?;
            Ok(current.as_ref().is_some_and(|current| *current != master)
                && labelled_master(&pods).await? == [current.unwrap_or_default()])
        })
        .await?;
        let switched = tokio::time::timeout(TIMEOUT, switched).await???;
        let (switch_seconds, follow_seconds) = (
            switched.duration_since(killed).as_secs_f64(),
            followed.duration_since(killed).as_secs_f64(),
        );
        println!(
            "run {run:2}: {master} killed; sentinels switched after {switch_seconds:.2} s, \
             operator status and label after {follow_seconds:.2} s"
        );
        switches.push(switch_seconds);
        follows.push(follow_seconds);
        // The killed pod comes back and rejoins as a replica before the next run.
        set.start_redis(index).await?;
    }
    for values in [&mut switches, &mut follows] {
        values.sort_by(f64::total_cmp);
    }
    println!(
        "(a) kill → sentinels' +switch-master:          p50 {:.2} s, p95 {:.2} s",
        percentile(&switches, 0.5),
        percentile(&switches, 0.95)
    );
    println!(
        "(b) kill → operator's status.master and label: p50 {:.2} s, p95 {:.2} s",
        percentile(&follows, 0.5),
        percentile(&follows, 0.95)
    );
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}
