//! Code run as if on one real node of the local cluster: a thread of this process joins the
//! node's network namespace (`okit-node-<i>`, made by `hack/node.sh`) and runs its own tokio
//! runtime there, so every socket it opens is the node's — a partition of that node cuts this
//! code off as it cuts the node's pods.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context as _, Result};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use nix::sched::CloneFlags;

/// The cluster's DNS (CoreDNS on the nodes' bridge, see `hack/node.sh`).
pub const CLUSTER_DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 1));

/// The file of node `node`'s network namespace.
pub fn namespace_path(node: usize) -> String {
    format!("/run/netns/okit-node-{node}")
}

/// Runs `work` to its end on a new thread inside node `node`'s network namespace, on a
/// single-threaded runtime of its own (its tasks never leave that thread, so never the
/// namespace).
pub fn spawn_in_node<F, Fut, T>(node: usize, work: F) -> std::thread::JoinHandle<Result<T>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(format!("node-{node}"))
        .spawn(move || {
            let path = namespace_path(node);
            let namespace =
                std::fs::File::open(&path).with_context(|| format!("failed to open {path:?}"))?;
            nix::sched::setns(&namespace, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("failed to join {path:?}"))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(work())
        })
        .unwrap_or_else(|error| {
            std::thread::spawn(move || Err(anyhow::anyhow!("failed to start a thread: {error}")))
        })
}

/// A resolver asking only the cluster's DNS, without caching (a pod that restarted has a new
/// address at once, as far as CoreDNS knows it). Its sockets are opened by the runtime it is
/// used on.
pub fn cluster_resolver() -> TokioResolver {
    let config = ResolverConfig::from_parts(
        None,
        Vec::new(),
        NameServerConfigGroup::from_ips_clear(&[CLUSTER_DNS], 53, true),
    );
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.attempts = 1;
    options.timeout = std::time::Duration::from_millis(500);
    TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(options)
        .build()
}

/// The address of `host:port`, a cluster name (`<pod>.<headless>.<namespace>.svc`, completed
/// with `cluster.local`) or an IPv4 address.
pub async fn resolve(resolver: &TokioResolver, host: &str, port: u16) -> Result<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let name = if host.ends_with(".svc") {
        format!("{host}.cluster.local.")
    } else {
        format!("{host}.")
    };
    let answer = resolver
        .ipv4_lookup(name.as_str())
        .await
        .with_context(|| format!("failed to resolve {host:?}"))?;
    let ip = answer
        .iter()
        .next()
        .with_context(|| format!("no address for {host:?}"))?;
    Ok(SocketAddr::new(IpAddr::V4(ip.0), port))
}
