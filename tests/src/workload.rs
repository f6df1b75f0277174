//! The fault suite's clients: each finds the master through the sentinels, as a Sentinel-aware
//! client does (ask a sentinel for the master's address, connect, check `ROLE`, ask again after
//! any error), and runs a mix of writes — `SET` of unique keys, `INCR` on a few counters,
//! `RPUSH` of unique values to a few lists — each followed by `WAIT 1 <ms>`, recording every
//! operation in the [`History`]. Run one per zone inside a node's network namespace
//! ([`crate::netns::spawn_in_node`]), so that a partition of that node cuts its client too.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use hickory_resolver::TokioResolver;
use redis_operator::resp::{Connection, Credentials, RespError, Value};
use tokio::sync::watch;

use crate::history::{History, Op, Outcome, Record};
use crate::netns::{cluster_resolver, resolve};

/// Counters and lists the clients share: few, so that they are contended.
pub const SHARED_KEYS: usize = 3;

/// Where the set is and how to log in, as a client knows it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The sentinels' announced names (`<pod>.<headless>.<namespace>.svc`) and port.
    pub sentinels: Vec<(String, u16)>,
    /// The master set's name.
    pub master_set: String,
    /// The clients' password.
    pub password: String,
}

/// How one client runs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Its name in the history (`<zone>-<n>`).
    pub name: String,
    /// The pause between two operations.
    pub interval: Duration,
    /// How long a command may take before its outcome is unknown.
    pub timeout: Duration,
    /// The `WAIT` timeout, in milliseconds.
    pub wait_ms: u64,
}

/// The operation a client makes at step `step`: unique SET keys and RPUSH values, shared
/// counters and lists.
pub fn operation(client: &str, step: u64) -> Op {
    let shared = (step / 3) % SHARED_KEYS as u64;
    match step % 3 {
        0 => Op::Set {
            key: format!("set:{client}:{step}"),
            value: format!("{client}:{step}"),
        },
        1 => Op::Incr {
            counter: format!("counter:{shared}"),
        },
        _ => Op::Push {
            list: format!("list:{shared}"),
            value: format!("{client}:{step}"),
        },
    }
}

/// The master's address as the sentinel at `sentinel` names it.
async fn ask_sentinel(
    resolver: &TokioResolver,
    sentinel: &(String, u16),
    target: &Target,
    timeout: Duration,
) -> Result<(String, u16)> {
    let address = resolve(resolver, &sentinel.0, sentinel.1).await?;
    let mut connection = open(address, &target.password, timeout).await?;
    let reply = tokio::time::timeout(
        timeout,
        connection.command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &target.master_set]),
    )
    .await
    .context("the sentinel did not answer")??;
    match reply.items() {
        [host, port] => Ok((
            host.text().context("no host")?,
            port.text()
                .and_then(|port| port.parse().ok())
                .context("no port")?,
        )),
        _ => bail!("the sentinel knows no master: {reply:?}"),
    }
}

async fn open(
    address: std::net::SocketAddr,
    password: &str,
    timeout: Duration,
) -> Result<Connection> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address))
        .await
        .with_context(|| format!("connecting to {address} timed out"))??;
    let connection = tokio::time::timeout(
        timeout,
        Connection::open(Box::new(stream), &Credentials::password(Some(password))),
    )
    .await
    .with_context(|| format!("logging in to {address} timed out"))??;
    Ok(connection)
}

/// A connection to the master, found through the sentinels starting with the `first`th.
async fn connect_master(
    resolver: &TokioResolver,
    target: &Target,
    first: usize,
    timeout: Duration,
) -> Result<(Connection, String)> {
    let mut errors = Vec::new();
    for offset in 0..target.sentinels.len() {
        let sentinel = &target.sentinels[(first + offset) % target.sentinels.len()];
        match ask_sentinel(resolver, sentinel, target, timeout).await {
            Ok((host, port)) => {
                let address = resolve(resolver, &host, port).await?;
                let mut connection = open(address, &target.password, timeout).await?;
                let role = tokio::time::timeout(timeout, connection.command(&["ROLE"]))
                    .await
                    .context("ROLE timed out")??;
                let role = role.items().first().and_then(Value::text);
                ensure!(
                    role.as_deref() == Some("master"),
                    "{host}:{port}, named by {}, is a {role:?}",
                    sentinel.0
                );
                return Ok((connection, format!("{host}:{port}")));
            }
            Err(error) => errors.push(format!("{}: {error:#}", sentinel.0)),
        }
    }
    bail!("no sentinel named a master: {errors:?}")
}

fn replid(info: &Value) -> Option<String> {
    info.text()?
        .lines()
        .find_map(|line| line.strip_prefix("master_replid:"))
        .map(|id| id.trim().to_owned())
}

/// Runs one operation on `connection`: the command, then `WAIT 1` and the master's replication
/// id after a success. Returns the record's outcome fields; an error that leaves the
/// connection unusable is reported with `broken`.
async fn run(
    connection: &mut Connection,
    op: &Op,
    config: &ClientConfig,
) -> (
    Outcome,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    bool,
) {
    let args: Vec<&str> = match op {
        Op::Set { key, value } => vec!["SET", key, value],
        Op::Incr { counter } => vec!["INCR", counter],
        Op::Push { list, value } => vec!["RPUSH", list, value],
    };
    let reply = tokio::time::timeout(config.timeout, connection.command(&args)).await;
    let returned = match reply {
        Ok(Ok(Value::Integer(value))) => Some(value),
        Ok(Ok(_)) => None,
        Ok(Err(RespError::Server { message, .. })) => {
            return (Outcome::Fail, None, None, None, Some(message), false);
        }
        Ok(Err(error)) => {
            return (
                Outcome::Unknown,
                None,
                None,
                None,
                Some(error.to_string()),
                true,
            );
        }
        Err(_) => {
            return (
                Outcome::Unknown,
                None,
                None,
                None,
                Some("timed out".to_owned()),
                true,
            );
        }
    };
    let wait_ms = config.wait_ms.to_string();
    let wait = tokio::time::timeout(
        config.timeout + Duration::from_millis(config.wait_ms),
        connection.command(&["WAIT", "1", &wait_ms]),
    )
    .await;
    let replicas = match wait {
        Ok(Ok(Value::Integer(count))) => count,
        // The write took effect; only its confirmation is unknown.
        _ => {
            return (
                Outcome::Ok,
                returned,
                None,
                None,
                Some("WAIT failed".to_owned()),
                true,
            );
        }
    };
    let info = tokio::time::timeout(config.timeout, connection.command(&["INFO", "replication"]))
        .await
        .ok()
        .and_then(Result::ok);
    (
        Outcome::Ok,
        returned,
        Some(replicas),
        info.as_ref().and_then(replid),
        None,
        info.is_none(),
    )
}

/// One client: operations every `interval` until `stop` turns true, each recorded.
pub async fn client(
    history: History,
    target: Target,
    config: ClientConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let resolver = cluster_resolver();
    let mut connection: Option<(Connection, String)> = None;
    let mut first_sentinel = 0;
    for step in 0_u64.. {
        if *stop.borrow() {
            break;
        }
        if connection.is_none() {
            match connect_master(&resolver, &target, first_sentinel, config.timeout).await {
                Ok(found) => connection = Some(found),
                Err(_) => {
                    // The next attempt asks another sentinel first.
                    first_sentinel += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(config.interval) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            }
        }
        let Some((open, master)) = connection.as_mut() else {
            continue;
        };
        let op = operation(&config.name, step);
        let start_ms = history.now_ms();
        let (outcome, returned, replicas, replid, error, broken) = run(open, &op, &config).await;
        history.push(Record {
            client: config.name.clone(),
            op,
            start_ms,
            end_ms: history.now_ms(),
            outcome,
            returned,
            replicas,
            master: Some(master.clone()),
            replid,
            error,
        });
        // A refusal (READONLY: not the master any more; NOREPLICAS) or a broken connection
        // sends the client back to the sentinels, as a Sentinel-aware client does.
        if broken || outcome != Outcome::Ok {
            connection = None;
            first_sentinel += 1;
        }
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = stop.changed() => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_write_unique_keys_and_values_and_share_counters_and_lists() {
        let ops: Vec<Op> = (0..9).map(|step| operation("a-0", step)).collect();
        assert_eq!(
            ops[0],
            Op::Set {
                key: "set:a-0:0".to_owned(),
                value: "a-0:0".to_owned()
            }
        );
        assert_eq!(
            ops[4],
            Op::Incr {
                counter: "counter:1".to_owned()
            }
        );
        assert_eq!(
            ops[8],
            Op::Push {
                list: "list:2".to_owned(),
                value: "a-0:8".to_owned()
            }
        );
        assert_ne!(operation("a-0", 2), operation("b-0", 2));
    }
}
