//! A `RedisSentinel` on the real nodes as the fault suite's checker sees it — through its own
//! connections to every pod (by pod IP, from the host), never through the operator: whether it
//! is healthy, where its master is, and what it holds at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use redis_operator::resp::{Connection, Value};

use crate::checker::FinalState;
use crate::real_node::{connect, is_ready, node_of};

/// One pod of the set, as its StatefulSet names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The pod's name.
    pub pod: String,
    /// The name Redis and Sentinel announce it by (`<pod>.<headless>.<namespace>.svc`).
    pub announced: String,
    /// The real node it runs on.
    pub node: usize,
    /// Its address.
    pub ip: String,
}

/// The set's pods and how to log in.
#[derive(Debug, Clone)]
pub struct RealSet {
    /// The pods' API.
    pub pods: kube::Api<Pod>,
    /// The resource's name (`<name>-node-<i>` pods, `<name>-headless`).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// How many pods it has.
    pub replicas: usize,
    /// The clients' password.
    pub password: String,
    /// The master set's name.
    pub master_set: String,
}

/// Why the set is not healthy yet, or its master.
pub type Health = std::result::Result<Member, String>;

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

impl RealSet {
    /// The announced name of pod `pod`.
    pub fn announced(&self, pod: &str) -> String {
        format!("{pod}.{}-headless.{}.svc", self.name, self.namespace)
    }

    /// The pods as the API server has them now: every one Ready, scheduled and with an
    /// address, or why not.
    pub async fn members(&self) -> Result<std::result::Result<Vec<Member>, String>> {
        let mut members = Vec::new();
        for ordinal in 0..self.replicas {
            let pod = format!("{}-node-{ordinal}", self.name);
            let Some(found) = self.pods.get_opt(&pod).await? else {
                return Ok(Err(format!("{pod} does not exist")));
            };
            if found.metadata.deletion_timestamp.is_some() {
                return Ok(Err(format!("{pod} is being deleted")));
            }
            if is_ready(&found) != Some(true) {
                return Ok(Err(format!("{pod} is not Ready")));
            }
            let Some(ip) = found
                .status
                .as_ref()
                .and_then(|status| status.pod_ip.clone())
            else {
                return Ok(Err(format!("{pod} has no address")));
            };
            members.push(Member {
                announced: self.announced(&pod),
                node: node_of(&found)?,
                pod,
                ip,
            });
        }
        Ok(Ok(members))
    }

    async fn redis(&self, member: &Member) -> Result<Connection> {
        connect((member.ip.as_str(), 6379), &self.password).await
    }

    async fn sentinel(&self, member: &Member) -> Result<Connection> {
        connect((member.ip.as_str(), 26379), &self.password).await
    }

    /// Healthy, as judged here: every pod Ready; exactly one master, every other pod its
    /// replica with the link up and no sync under way, the master counting them all online;
    /// every sentinel naming it, holding quorum and knowing every other sentinel and replica;
    /// and a write both replicas confirm (`WAIT <all> 1000`). Returns the master, or why not.
    pub async fn health(&self) -> Result<Health> {
        let members = match self.members().await? {
            Ok(members) => members,
            Err(reason) => return Ok(Err(reason)),
        };
        let mut master = None;
        for member in &members {
            let info = match self.redis(member).await {
                Ok(mut connection) => connection.command(&["INFO", "replication"]).await,
                Err(error) => return Ok(Err(format!("{}: {error:#}", member.pod))),
            };
            let info = match info {
                Ok(info) => info.text().unwrap_or_default(),
                Err(error) => return Ok(Err(format!("{}: {error}", member.pod))),
            };
            match field(&info, "role") {
                Some("master") if master.is_none() => master = Some((member.clone(), info)),
                Some("master") => return Ok(Err("two masters".to_owned())),
                Some("slave") => {}
                role => return Ok(Err(format!("{} reports role {role:?}", member.pod))),
            }
        }
        let Some((master, master_info)) = master else {
            return Ok(Err("no master".to_owned()));
        };
        let replicas = members.len() - 1;
        let online = master_info
            .lines()
            .filter(|line| line.starts_with("slave") && line.contains("state=online"))
            .count();
        if online != replicas {
            return Ok(Err(format!(
                "the master counts {online} of {replicas} replicas online"
            )));
        }
        for member in members.iter().filter(|member| **member != master) {
            let info = match self.redis(member).await {
                Ok(mut connection) => connection.command(&["INFO", "replication"]).await?,
                Err(error) => return Ok(Err(format!("{}: {error:#}", member.pod))),
            };
            let info = info.text().unwrap_or_default();
            if field(&info, "master_host") != Some(master.announced.as_str())
                || field(&info, "master_link_status") != Some("up")
                || field(&info, "master_sync_in_progress") != Some("0")
            {
                return Ok(Err(format!(
                    "{} does not follow the master in sync",
                    member.pod
                )));
            }
        }
        for member in &members {
            let mut sentinel = match self.sentinel(member).await {
                Ok(connection) => connection,
                Err(error) => return Ok(Err(format!("sentinel of {}: {error:#}", member.pod))),
            };
            let named = sentinel
                .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master_set])
                .await?;
            let host = named.items().first().and_then(Value::text);
            if host.as_deref() != Some(master.announced.as_str()) {
                return Ok(Err(format!(
                    "the sentinel of {} names {host:?}",
                    member.pod
                )));
            }
            if sentinel
                .command(&["SENTINEL", "CKQUORUM", &self.master_set])
                .await
                .is_err()
            {
                return Ok(Err(format!("the sentinel of {} lacks quorum", member.pod)));
            }
            let fields = sentinel
                .command(&["SENTINEL", "MASTER", &self.master_set])
                .await?;
            let fields: BTreeMap<String, String> = fields
                .items()
                .chunks_exact(2)
                .filter_map(|pair| Some((pair[0].text()?, pair[1].text()?)))
                .collect();
            let count = |name: &str| {
                fields
                    .get(name)
                    .and_then(|value| value.parse::<usize>().ok())
            };
            if fields.get("flags").map(String::as_str) != Some("master")
                || count("num-other-sentinels") != Some(replicas)
                || count("num-slaves") != Some(replicas)
            {
                return Ok(Err(format!(
                    "the sentinel of {} sees flags {:?}, {:?} other sentinels, {:?} replicas",
                    member.pod,
                    fields.get("flags"),
                    count("num-other-sentinels"),
                    count("num-slaves")
                )));
            }
        }
        let mut connection = self.redis(&master).await?;
        if let Err(error) = connection.command(&["SET", "checker:probe", "1"]).await {
            return Ok(Err(format!("the master refuses a write: {error}")));
        }
        let confirmed = connection
            .command(&["WAIT", &replicas.to_string(), "1000"])
            .await?;
        if confirmed != Value::Integer(replicas as i64) {
            return Ok(Err(format!(
                "a write confirmed by {confirmed:?} of {replicas} replicas"
            )));
        }
        Ok(Ok(master))
    }

    /// Waits until [`Self::health`] holds; returns the master. Fails with the last reason
    /// after `patience`.
    pub async fn wait_healthy(&self, patience: Duration) -> Result<Member> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let last = match tokio::time::timeout(Duration::from_secs(10), self.health()).await {
                Ok(Ok(Ok(master))) => return Ok(master),
                Ok(Ok(Err(reason))) => reason,
                Ok(Err(error)) => format!("{error:#}"),
                Err(_) => "a health check took over 10 s".to_owned(),
            };
            if tokio::time::Instant::now() > deadline {
                bail!("the set was not healthy within {patience:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reads back every key, list and counter the history wrote, from `master`.
    pub async fn read_back(
        &self,
        master: &Member,
        wanted: (
            std::collections::BTreeSet<String>,
            std::collections::BTreeSet<String>,
            std::collections::BTreeSet<String>,
        ),
    ) -> Result<FinalState> {
        let (keys, lists, counters) = wanted;
        let mut connection = self.redis(master).await?;
        let mut state = FinalState::default();
        let keys: Vec<String> = keys.into_iter().collect();
        for chunk in keys.chunks(500) {
            let mut args = vec!["MGET"];
            args.extend(chunk.iter().map(String::as_str));
            let values = connection.command(&args).await?;
            ensure!(
                values.items().len() == chunk.len(),
                "MGET answered {values:?}"
            );
            for (key, value) in chunk.iter().zip(values.items()) {
                state.values.insert(key.clone(), value.text());
            }
        }
        for list in lists {
            let values = connection.command(&["LRANGE", &list, "0", "-1"]).await?;
            state.lists.insert(
                list,
                values.items().iter().filter_map(Value::text).collect(),
            );
        }
        for counter in counters {
            let value = connection.command(&["GET", &counter]).await?;
            let value = match value.text() {
                Some(text) => text
                    .parse()
                    .with_context(|| format!("{counter} is {text:?}"))?,
                None => 0,
            };
            state.counters.insert(counter, value);
        }
        Ok(state)
    }
}
