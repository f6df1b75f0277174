//! The Redis and Sentinel processes of a `RedisSentinel`: what the operator observes
//! ([`observe`]), what it decides ([`plan`], a pure function), and how it heals ([`heal`]).
//!
//! The rules, in order:
//! - A master named by a majority of all sentinels, reachable and acting as master, is the
//!   master. Any other master is demoted to replicate from it (with a warning).
//! - When a majority of sentinels is reachable and names a master that is down, the sentinels
//!   are failing over: the operator waits and changes nothing.
//! - Otherwise (a cold start, a lost sentinel quorum, sentinels that disagree) the operator
//!   keeps the only live master; else it compares replication histories (`master_replid`,
//!   `master_replid2` and offsets), never key counts: the node whose history contains every
//!   other one wins. Nodes restarted from their files have a fresh history, so after a restart
//!   of every pod the last master the operator saw (`status.master`) wins; without it, the
//!   operator waits for every pod, and if two nodes hold data it cannot order, it changes
//!   nothing until a person chooses one ([`Memory::chosen`]).
//! - Nothing is ever flushed, and sentinels are re-pointed one by one (`SENTINEL REMOVE` +
//!   `MONITOR`) only when they name another master: there is no blanket `SENTINEL RESET`.

use std::collections::BTreeMap;

use crate::resp::{Connection, Credentials, OPERATOR_USER, RespError, Value};

/// One pod: its name and where its Redis and Sentinel are announced (stable DNS name in a
/// cluster, never a pod IP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The pod's name (`<name>-node-<ordinal>`).
    pub pod: String,
    /// The announced host name.
    pub host: String,
    /// Redis's port.
    pub redis_port: u16,
    /// Sentinel's port.
    pub sentinel_port: u16,
}

/// The Sentinel settings of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The monitored master's name in Sentinel (`masterSet`).
    pub master_set: String,
    /// Sentinels that must agree that the master is down.
    pub quorum: u32,
    /// How long the master must be unreachable before it is considered down.
    pub down_after_milliseconds: u64,
    /// Sentinel's failover timeout.
    pub failover_timeout: u64,
    /// Replicas resynchronised at the same time after a failover.
    pub parallel_syncs: u32,
}

pub use crate::access::{Connecting, DirectResolver, Resolver, connect};

/// A node's role as Redis reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Accepts writes.
    Master,
    /// Replicates from `host:port`; `link_up` when the link is established.
    Replica {
        /// The master's announced host.
        host: String,
        /// The master's port.
        port: u16,
        /// `master_link_status:up`.
        link_up: bool,
    },
}

/// What one Redis answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisState {
    /// Its role.
    pub role: Role,
    /// Its replication offset (`master_repl_offset`, or `slave_repl_offset` on a replica).
    pub offset: i64,
    /// Keys in all databases.
    pub keys: u64,
    /// On a master, the replicas it counts as good for `min-replicas-to-write`
    /// (`min_slaves_good_slaves`; without that setting, the replicas in state `online`). A
    /// replica can report its link up a moment before its master counts it, and until then the
    /// master refuses writes with NOREPLICAS. Always 0 on a replica.
    pub good_replicas: usize,
    /// Still loading its data from disk (`loading:1`): its offset and keys say nothing yet.
    pub loading: bool,
    /// The ID of the replication history it holds (`master_replid`; a replica reports its
    /// master's). A node restarted from its files starts a new one at offset 0.
    pub replid: String,
    /// The history it continued when it was promoted (`master_replid2`), up to which offset
    /// (`second_repl_offset`): it holds that history's data below that offset.
    pub previous_history: Option<(String, i64)>,
}

impl RedisState {
    /// Holds any data at all.
    pub fn has_data(&self) -> bool {
        self.offset > 0 || self.keys > 0
    }

    /// Whether this node holds everything `other` holds, as far as replication histories
    /// tell: `other` is empty, or its history is this one's (or the one this one continued)
    /// up to an offset this one has reached. The data of a node restarted from its files
    /// (offset 0: a fresh history) is contained by nothing.
    pub fn contains(&self, other: &RedisState) -> bool {
        if !other.has_data() {
            return true;
        }
        if other.offset == 0 || other.replid.is_empty() {
            return false;
        }
        // A node promoted with nothing written since (a replica forced to master) holds only
        // the history it continued: it is that history, at its offset.
        let continued = other
            .previous_history
            .as_ref()
            .filter(|(_, until)| other.offset < *until)
            .map(|(replid, _)| replid.as_str());
        [Some(other.replid.as_str()), continued]
            .into_iter()
            .flatten()
            .any(|replid| {
                (self.replid == replid && self.offset >= other.offset)
                    || self
                        .previous_history
                        .as_ref()
                        .is_some_and(|(previous, until)| {
                            previous == replid && other.offset < *until
                        })
            })
    }
}

/// What the operator remembers between observations, beyond what the processes say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// The node that was master when the operator last looked (`status.master`): after a
    /// restart of every pod it holds every acknowledged write.
    pub last_master: Option<usize>,
    /// The node a person chose to keep (the [`KEEP_DATA_OF`] annotation), used only when the
    /// histories cannot tell which node holds the newest data.
    pub chosen: Option<usize>,
}

/// The annotation on a `RedisSentinel` by which a person chooses the node whose data to keep
/// when the operator cannot tell: `<pod>/<history>`, as the condition prints it. The history
/// tag makes an annotation left in place harmless later: a node's history changes when it
/// restarts or follows another master, and then the annotation no longer matches.
pub const KEEP_DATA_OF: &str = "redis.operator-kit.io/keep-data-of";

/// A short tag of a node's replication history (the start of `master_replid`).
pub fn history_tag(state: &RedisState) -> &str {
    state.replid.get(..8).unwrap_or(&state.replid)
}

/// The node a [`KEEP_DATA_OF`] annotation names, if it still holds the history it names.
pub fn chosen_by_annotation(
    value: &str,
    nodes: &[Node],
    observation: &Observation,
) -> Option<usize> {
    let (pod, tag) = value.trim().split_once('/')?;
    let index = nodes.iter().position(|node| node.pod == pod)?;
    let state = observation.redis.get(index)?.as_ref()?;
    (!tag.is_empty() && history_tag(state) == tag).then_some(index)
}

/// What one Sentinel answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelState {
    /// The master it monitors under the master set name, if any.
    pub master: Option<(String, u16)>,
    /// `SENTINEL CKQUORUM` succeeded.
    pub quorum_ok: bool,
    /// Other sentinels it knows (`SENTINEL SENTINELS`), gone ones included.
    pub known_sentinels: usize,
    /// Replicas it knows (`SENTINEL REPLICAS`), gone ones included.
    pub known_replicas: usize,
    /// Replicas it would promote now ([`promotable`]): until it sees every replica so, a
    /// failover — the graceful handover of a deleted master pod included — can be refused.
    pub promotable_replicas: usize,
    /// It is running a failover right now (`failover_in_progress` among the master's flags in
    /// `SENTINEL MASTER`).
    pub failover_in_progress: bool,
    /// Its configuration epoch (`config-epoch`): each failover raises it, and sentinels adopt
    /// the configuration of a higher epoch, so the highest one is the newest view.
    pub config_epoch: u64,
    /// The votes it needs to declare the master down (`quorum`).
    pub quorum: u32,
}

/// Everything observed, by node index (`None`: unreachable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// Each node's Redis.
    pub redis: Vec<Option<RedisState>>,
    /// Each node's Sentinel.
    pub sentinels: Vec<Option<SentinelState>>,
    /// The pods whose Redis or Sentinel refused the operator's password (the Secret changed
    /// since they started): they answer, but nothing can be asked of them.
    pub password_refused: Vec<String>,
}

impl Observation {
    /// The pods whose Redis did not answer.
    pub fn unreachable<'a>(&self, nodes: &'a [Node]) -> Vec<&'a str> {
        nodes
            .iter()
            .zip(&self.redis)
            .filter(|(_, state)| state.is_none())
            .map(|(node, _)| node.pod.as_str())
            .collect()
    }
}

/// Parses `INFO` output into its `key:value` fields.
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.trim_end().split_once(':'))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// The role, offset and key count from `INFO replication` and `INFO keyspace` fields.
pub fn redis_state(info: &BTreeMap<String, String>) -> Option<RedisState> {
    let number = |key: &str| info.get(key).and_then(|value| value.parse::<i64>().ok());
    let role = match info.get("role").map(String::as_str) {
        Some("master") => Role::Master,
        Some("slave") => Role::Replica {
            host: info.get("master_host")?.clone(),
            port: info.get("master_port")?.parse().ok()?,
            link_up: info.get("master_link_status").map(String::as_str) == Some("up"),
        },
        _ => return None,
    };
    let offset = match role {
        Role::Master => number("master_repl_offset"),
        Role::Replica { .. } => number("slave_repl_offset").or(number("master_repl_offset")),
    }
    .unwrap_or(0);
    // Keyspace lines look like `db0:keys=3,expires=0,avg_ttl=0`.
    let keys = info
        .iter()
        .filter(|(key, _)| key.starts_with("db"))
        .filter_map(|(_, value)| value.split(',').find_map(|pair| pair.strip_prefix("keys=")))
        .filter_map(|count| count.parse::<u64>().ok())
        .sum();
    let good_replicas = match role {
        Role::Replica { .. } => 0,
        Role::Master => info
            .get("min_slaves_good_slaves")
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| {
                // `slave0:ip=…,port=6379,state=online,offset=…,lag=0`
                info.iter()
                    .filter(|(key, value)| {
                        key.strip_prefix("slave")
                            .is_some_and(|index| index.parse::<usize>().is_ok())
                            && value.split(',').any(|pair| pair == "state=online")
                    })
                    .count()
            }),
    };
    let replid = info.get("master_replid").cloned().unwrap_or_default();
    let previous_history = info
        .get("master_replid2")
        .filter(|replid| !replid.is_empty() && replid.bytes().any(|byte| byte != b'0'))
        .zip(number("second_repl_offset").filter(|until| *until > 0))
        .map(|(replid, until)| (replid.clone(), until));
    Some(RedisState {
        role,
        offset,
        keys,
        good_replicas,
        loading: info.get("loading").map(String::as_str) == Some("1"),
        replid,
        previous_history,
    })
}

async fn observe_redis(
    node: &Node,
    resolver: &dyn Resolver,
    credentials: &Credentials,
) -> Result<RedisState, RespError> {
    let mut connection = connect(resolver, &node.host, node.redis_port, credentials).await?;
    let mut text = String::new();
    for section in ["replication", "keyspace", "persistence"] {
        let reply = connection.command(&["INFO", section]).await?;
        text.push_str(&reply.text().unwrap_or_default());
    }
    redis_state(&parse_info(&text))
        .ok_or_else(|| RespError::Protocol("INFO replication has no role".to_owned()))
}

async fn observe_sentinel(
    node: &Node,
    resolver: &dyn Resolver,
    settings: &Settings,
    credentials: &Credentials,
) -> Result<SentinelState, RespError> {
    // Sentinels ask for the same password as Redis.
    let mut connection = connect(resolver, &node.host, node.sentinel_port, credentials).await?;
    let reply = connection
        .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &settings.master_set])
        .await?;
    let master = match reply.items() {
        [host, port] => host
            .text()
            .zip(port.text().and_then(|port| port.parse().ok())),
        _ => None,
    };
    if master.is_none() {
        return Ok(SentinelState {
            master,
            quorum_ok: false,
            known_sentinels: 0,
            known_replicas: 0,
            promotable_replicas: 0,
            failover_in_progress: false,
            config_epoch: 0,
            quorum: 0,
        });
    }
    let set = settings.master_set.as_str();
    let fields = sentinel_master_fields(&connection.command(&["SENTINEL", "MASTER", set]).await?);
    let failover_in_progress = fields
        .get("flags")
        .is_some_and(|flags| flags.split(',').any(|flag| flag == "failover_in_progress"));
    let config_epoch = fields
        .get("config-epoch")
        .and_then(|epoch| epoch.parse().ok())
        .unwrap_or(0);
    let quorum = fields
        .get("quorum")
        .and_then(|quorum| quorum.parse().ok())
        .unwrap_or(0);
    let quorum_ok = connection
        .command(&["SENTINEL", "CKQUORUM", set])
        .await
        .is_ok();
    let known_sentinels = connection
        .command(&["SENTINEL", "SENTINELS", set])
        .await?
        .items()
        .len();
    let replicas = connection.command(&["SENTINEL", "REPLICAS", set]).await?;
    let known_replicas = replicas.items().len();
    let promotable_replicas = replicas
        .items()
        .iter()
        .filter(|replica| promotable(&sentinel_master_fields(replica)))
        .count();
    Ok(SentinelState {
        master,
        quorum_ok,
        known_sentinels,
        known_replicas,
        promotable_replicas,
        failover_in_progress,
        config_epoch,
        quorum,
    })
}

/// Whether a sentinel would promote this replica (the fields of one `SENTINEL REPLICAS`
/// entry): connected and not down, its link to the master up, and a priority other than 0 —
/// the checks of Sentinel's own replica selection that do not depend on the moment.
pub fn promotable(fields: &BTreeMap<String, String>) -> bool {
    let flags_ok = fields.get("flags").is_some_and(|flags| {
        !flags
            .split(',')
            .any(|flag| ["s_down", "o_down", "disconnected"].contains(&flag))
    });
    let priority_ok = ["replica-priority", "slave-priority"]
        .iter()
        .find_map(|field| fields.get(*field))
        .is_none_or(|priority| priority != "0");
    flags_ok && priority_ok && fields.get("master-link-status").map(String::as_str) == Some("ok")
}

/// The field/value pairs of a `SENTINEL MASTER` reply.
pub fn sentinel_master_fields(reply: &Value) -> BTreeMap<String, String> {
    reply
        .items()
        .chunks_exact(2)
        .filter_map(|pair| Some((pair[0].text()?, pair[1].text()?)))
        .collect()
}

/// Asks every Redis and every Sentinel, concurrently; an unreachable one is `None`.
pub async fn observe(
    nodes: &[Node],
    resolver: &dyn Resolver,
    settings: &Settings,
    credentials: &Credentials,
) -> Observation {
    let redis = futures::future::join_all(
        nodes
            .iter()
            .map(|node| observe_redis(node, resolver, credentials)),
    );
    let sentinels = futures::future::join_all(
        nodes
            .iter()
            .map(|node| observe_sentinel(node, resolver, settings, credentials)),
    );
    let (redis, sentinels) = futures::join!(redis, sentinels);
    let password_refused = nodes
        .iter()
        .zip(redis.iter().zip(&sentinels))
        .filter(|(_, (redis, sentinel))| {
            [redis.as_ref().err(), sentinel.as_ref().err()]
                .into_iter()
                .flatten()
                .any(refuses_password)
        })
        .map(|(node, _)| node.pod.clone())
        .collect();
    Observation {
        redis: redis.into_iter().map(Result::ok).collect(),
        sentinels: sentinels.into_iter().map(Result::ok).collect(),
        password_refused,
    }
}

/// Whether an error is a server refusing our password: a wrong one (`WRONGPASS`, or
/// `invalid password` before Redis 6), or none accepted where one is required (`NOAUTH`).
pub fn refuses_password(error: &RespError) -> bool {
    matches!(error, RespError::Server { message, .. }
        if message.starts_with("WRONGPASS")
            || message.starts_with("NOAUTH")
            || message.contains("invalid password"))
}

/// One step of healing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `REPLICAOF NO ONE` on this node.
    Promote(usize),
    /// `REPLICAOF <master>` on `node`.
    Replicate {
        /// The node to point.
        node: usize,
        /// The node it replicates from.
        master: usize,
    },
    /// `SENTINEL RESET` of this node's sentinel, which still counts sentinels or replicas of
    /// pods that are gone (after a scale-down) and so needs more votes than exist to fail
    /// over. One sentinel at a time, only while every other one holds quorum.
    Reset(usize),
    /// `SENTINEL SET <set> quorum` on this node's sentinel, which monitors the right master
    /// with another quorum (the set was scaled). Set live, so scaling restarts no pod.
    Quorum(usize),
    /// `SENTINEL REMOVE` + `MONITOR` + `SET` on this node's sentinel, for `master`.
    Monitor {
        /// The sentinel's node.
        sentinel: usize,
        /// The node to monitor.
        master: usize,
    },
}

/// Why the master is the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// A majority of the sentinels names it.
    Sentinels,
    /// The only reachable master, holding data (or nobody holds any): kept, because replacing
    /// a master that takes writes with a replica read at another instant can lose writes.
    OnlyMaster,
    /// Chosen by replication history: it holds everything every other node holds.
    MostUpToDate,
    /// The last master the operator saw, after every node restarted from its files.
    LastMaster,
    /// Chosen by a person ([`KEEP_DATA_OF`]) when the histories could not tell.
    ChosenByPerson,
}

/// Nodes holding data that the operator cannot order: it leaves them as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecided {
    /// The nodes, each holding data some other lacks (as far as anyone can tell).
    pub nodes: Vec<usize>,
    /// Their histories split and each went on taking writes (two live masters of different
    /// histories), rather than only being impossible to compare (restarted from files).
    pub diverged: bool,
}

/// What the operator concluded from an [`Observation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The master after healing, if one can be chosen now.
    pub master: Option<usize>,
    /// How it was chosen.
    pub choice: Option<Choice>,
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// Situations worth a Warning event (for example, two masters).
    pub warnings: Vec<String>,
    /// The sentinels hold quorum and are failing over: do nothing.
    pub failover_in_progress: bool,
    /// Why the operator leaves everything as it is for now, if it does (a failover under way,
    /// a new master being announced, a master in a pod being removed).
    pub waiting: Option<String>,
    /// Nodes whose data cannot be ordered: a person must choose (see [`Memory::chosen`]).
    pub undecided: Option<Undecided>,
}

impl Plan {
    /// A plan that changes nothing and says why.
    pub fn wait(failover_in_progress: bool, reason: String) -> Self {
        Self {
            master: None,
            choice: None,
            actions: Vec::new(),
            warnings: Vec::new(),
            failover_in_progress,
            waiting: Some(reason),
            undecided: None,
        }
    }

    /// Exactly one master that counts every replica as good (so it takes writes), every
    /// replica attached to it, every sentinel monitoring it with quorum: nothing to heal.
    pub fn is_healthy(&self, observation: &Observation) -> bool {
        let Some(master) = self.master else {
            return false;
        };
        let replicas = observation.redis.len().saturating_sub(1);
        self.actions.is_empty()
            && observation
                .redis
                .iter()
                .enumerate()
                .all(|(index, state)| match state {
                    Some(RedisState {
                        role: Role::Master,
                        good_replicas,
                        ..
                    }) => index == master && *good_replicas >= replicas,
                    Some(RedisState {
                        role: Role::Replica { link_up, .. },
                        ..
                    }) => *link_up,
                    None => false,
                })
            && observation.sentinels.iter().all(|state| {
                state.as_ref().is_some_and(|state| {
                    state.quorum_ok
                        && state.promotable_replicas >= replicas
                        && !remembers_gone_pods(state, observation)
                })
            })
    }
}

fn address_of(nodes: &[Node], host: &str, port: u16) -> Option<usize> {
    nodes
        .iter()
        .position(|node| node.host == host && node.redis_port == port)
}

/// Decides the master and the actions that make every node and sentinel follow it.
///
/// Sentinel is the authority on failovers; the operator only fills in what Sentinel cannot
/// do (a cold start, sentinels that lost their quorum or their memory). So it changes nothing
/// while a sentinel fails over, while a newer configuration is still spreading between the
/// sentinels, or while the sentinels name a master in a pod outside the set; and it never
/// replaces a reachable master that holds data by its own choice. `memory` holds what the
/// operator knew before this observation.
pub fn plan(
    nodes: &[Node],
    observation: &Observation,
    settings: &Settings,
    memory: &Memory,
) -> Plan {
    let plan = plan_from_view(nodes, observation, settings, memory);
    match plan
        .master
        .and_then(|master| unconfirmed(nodes, observation, &plan, master))
    {
        Some(reason) => Plan::wait(false, reason),
        None => plan,
    }
}

/// Why a plan whose master is `master` is not confirmed by the sentinels, if it is not.
///
/// The operator's view can be partial (a partition between it and some pods), and a partial
/// view can look exactly like a master that is gone. So a master is promoted, re-pointed to,
/// labelled or recorded only when a majority of the sentinels answers (the same majority a
/// Sentinel failover needs to be authorised) and no answering sentinel knows better:
/// - a sentinel that names another node which could be taking writes (one the operator
///   cannot reach, or a master holding data) at a newer configuration epoch than those naming
///   `master` (or, when no majority names `master`, at any epoch not older) has seen a
///   failover the operator has not;
/// - a promotion waits while another node in the set still has replicas connected to it: it
///   is alive and serving, wherever the operator cannot see it from.
fn unconfirmed(
    nodes: &[Node],
    observation: &Observation,
    plan: &Plan,
    master: usize,
) -> Option<String> {
    let majority = nodes.len() / 2 + 1;
    let answering: Vec<(usize, &SentinelState)> = observation
        .sentinels
        .iter()
        .enumerate()
        .filter_map(|(index, state)| state.as_ref().map(|state| (index, state)))
        .collect();
    if answering.len() < majority {
        return Some(format!(
            "only {} of {} sentinels answer; the operator changes nothing a sentinel majority \
             cannot confirm",
            answering.len(),
            nodes.len()
        ));
    }
    let named = |state: &SentinelState| {
        state
            .master
            .as_ref()
            .and_then(|(host, port)| address_of(nodes, host, *port))
    };
    let supporters: Vec<u64> = answering
        .iter()
        .filter(|(_, state)| named(state) == Some(master))
        .map(|(_, state)| state.config_epoch)
        .collect();
    let by_majority = supporters.len() >= majority;
    let support_epoch = supporters.iter().copied().max();
    for (index, state) in &answering {
        let Some((host, port)) = state.master.as_ref() else {
            continue;
        };
        // A master outside the set (a pod a scale-down removes) is out of view: it may take
        // writes as much as an unreachable one.
        let other = address_of(nodes, host, *port);
        if other == Some(master) {
            continue;
        }
        let may_take_writes = match other.and_then(|other| observation.redis.get(other)) {
            Some(Some(redis)) => redis.role == Role::Master && redis.has_data(),
            _ => true,
        };
        let knows_better = match support_epoch {
            Some(epoch) if by_majority => state.config_epoch > epoch,
            Some(epoch) => state.config_epoch >= epoch,
            None => true,
        };
        if may_take_writes && knows_better {
            return Some(format!(
                "the sentinel of {:?} names {:?} as master (configuration epoch {}), which the \
                 operator cannot confirm; waiting for the sentinels to agree",
                nodes[*index].pod,
                other.map_or(host.as_str(), |other| nodes[other].pod.as_str()),
                state.config_epoch
            ));
        }
    }
    if plan.actions.contains(&Action::Promote(master))
        && let Some((index, served)) =
            observation
                .redis
                .iter()
                .enumerate()
                .find_map(
                    |(index, state)| match state.as_ref().map(|state| &state.role) {
                        Some(Role::Replica {
                            host,
                            port,
                            link_up: true,
                        }) => address_of(nodes, host, *port)
                            .filter(|served| *served != master)
                            .map(|served| (index, served)),
                        _ => None,
                    },
                )
    {
        return Some(format!(
            "{:?} still replicates from {:?}, which is alive; not promoting {:?} beside it",
            nodes[index].pod, nodes[served].pod, nodes[master].pod
        ));
    }
    None
}

/// The plan from this observation alone, before [`unconfirmed`] checks it against the
/// sentinels.
fn plan_from_view(
    nodes: &[Node],
    observation: &Observation,
    settings: &Settings,
    memory: &Memory,
) -> Plan {
    if !observation.password_refused.is_empty() {
        // Pods that refuse the password are as good as unseen, and acting on the others alone
        // could demote the node that holds the newest writes, or record the wrong master for
        // the next cold start: no master, no command, wait and report.
        return Plan::wait(
            false,
            format!(
                "{:?} refuse the operator's password",
                observation.password_refused
            ),
        );
    }
    let majority = nodes.len() / 2 + 1;
    let sentinels: Vec<&SentinelState> = observation.sentinels.iter().flatten().collect();
    let named_by = |state: &SentinelState| {
        state
            .master
            .as_ref()
            .and_then(|(host, port)| address_of(nodes, host, *port))
    };
    let is_master = |index: usize| {
        matches!(
            observation.redis.get(index),
            Some(Some(RedisState {
                role: Role::Master,
                ..
            }))
        )
    };
    // A sentinel running a failover keeps its flag for a second or so after the switch. Its
    // failover is visibly over when every reachable sentinel names the same master and that
    // master is the only one; until then (the promoted node and the old master are both
    // masters, the sentinels disagree) the operator touches nothing.
    let masters = (0..nodes.len()).filter(|index| is_master(*index)).count();
    let agreed = sentinels
        .iter()
        .map(|state| named_by(state))
        .reduce(|left, right| if left == right { left } else { None })
        .flatten()
        .filter(|index| is_master(*index) && masters == 1);
    if let Some(index) = observation.sentinels.iter().position(|state| {
        state
            .as_ref()
            .is_some_and(|state| state.failover_in_progress)
    }) && agreed.is_none()
    {
        return Plan::wait(
            true,
            format!(
                "the sentinel of {:?} is running a failover",
                nodes[index].pod
            ),
        );
    }
    let mut votes: BTreeMap<usize, usize> = BTreeMap::new();
    for state in &sentinels {
        if let Some(index) = named_by(state) {
            *votes.entry(index).or_default() += 1;
        }
    }
    let named = votes
        .iter()
        .find(|(_, count)| **count >= majority)
        .map(|(index, _)| *index);
    // A failover has just ended: the sentinel that ran it (the highest configuration epoch)
    // names the new master, which is already a master, while the others still name the old
    // one, a master too, for a moment. Following the majority now would undo Sentinel's own
    // failover.
    if let Some(newest) = sentinels
        .iter()
        .filter(|state| state.master.is_some())
        .map(|state| state.config_epoch)
        .max()
    {
        let newest_views: std::collections::BTreeSet<Option<usize>> = sentinels
            .iter()
            .filter(|state| state.master.is_some() && state.config_epoch == newest)
            .map(|state| named_by(state))
            .collect();
        let older_name_another_master = |view: usize| {
            sentinels
                .iter()
                .filter(|state| state.config_epoch < newest)
                .filter_map(|state| named_by(state))
                .any(|index| index != view && is_master(index))
        };
        if let [Some(view)] = newest_views.into_iter().collect::<Vec<_>>()[..]
            && is_master(view)
            && older_name_another_master(view)
        {
            return Plan::wait(
                true,
                format!(
                    "the sentinels are announcing {:?} as the new master",
                    nodes[view].pod
                ),
            );
        }
    }
    let mut warnings = Vec::new();
    let (master, choice) = match named {
        Some(index) if is_master(index) => (index, Choice::Sentinels),
        Some(index) => {
            // A majority of the sentinels agrees on a master that is down or not a master:
            // their failover is under way (or about to be). Acting now would race them.
            return Plan::wait(
                true,
                format!(
                    "the sentinels name {:?}, which is not a reachable master: they are failing over",
                    nodes[index].pod
                ),
            );
        }
        None => {
            // The sentinels name a master that is not one of the pods (a scale-down removes
            // it): Sentinel fails over when the pod goes; promoting another node now would
            // make a second master while that one still takes writes.
            if let Some((host, _)) = sentinels
                .iter()
                .filter_map(|state| state.master.as_ref())
                .find(|(host, port)| address_of(nodes, host, *port).is_none())
            {
                return Plan::wait(
                    false,
                    format!(
                        "the sentinels name {host:?}, a pod outside the set, as master; \
                         waiting for them to fail over"
                    ),
                );
            }
            match chosen_without_sentinels(nodes, observation, memory) {
                Decision::Chosen(index, choice) => (index, choice),
                Decision::Wait(reason) => return Plan::wait(false, reason),
                Decision::Undecided(undecided) => {
                    let pods: Vec<&str> = undecided
                        .nodes
                        .iter()
                        .map(|index| nodes[*index].pod.as_str())
                        .collect();
                    let mut plan = Plan::wait(
                        false,
                        format!("cannot tell which of {pods:?} holds the newest data"),
                    );
                    plan.undecided = Some(undecided);
                    return plan;
                }
                Decision::Nothing => {
                    return Plan {
                        master: None,
                        choice: None,
                        actions: Vec::new(),
                        warnings,
                        failover_in_progress: false,
                        waiting: None,
                        undecided: None,
                    };
                }
            }
        }
    };
    let mut actions = Vec::new();
    if !is_master(master) {
        actions.push(Action::Promote(master));
    }
    let target = &nodes[master];
    for (index, state) in observation.redis.iter().enumerate() {
        let Some(state) = state else { continue };
        if index == master {
            continue;
        }
        match &state.role {
            Role::Master => {
                // An empty master is a pod that started before the sentinels knew a master
                // (a normal bootstrap); one with data is a real second master.
                if state.offset > 0 || state.keys > 0 {
                    warnings.push(format!(
                        "two masters: {:?} is a master too; demoting it to replicate from {:?} \
                     ({})",
                        nodes[index].pod,
                        target.pod,
                        match choice {
                            Choice::Sentinels => "named by the sentinels",
                            Choice::OnlyMaster => "the only master",
                            Choice::MostUpToDate => "the most up-to-date node",
                            Choice::LastMaster => "the last master",
                            Choice::ChosenByPerson => "chosen by annotation",
                        }
                    ));
                }
                actions.push(Action::Replicate {
                    node: index,
                    master,
                });
            }
            Role::Replica { host, port, .. } => {
                if address_of(nodes, host, *port) != Some(master) {
                    actions.push(Action::Replicate {
                        node: index,
                        master,
                    });
                }
            }
        }
    }
    for (index, state) in observation.sentinels.iter().enumerate() {
        let Some(state) = state else { continue };
        let monitored = state
            .master
            .as_ref()
            .and_then(|(host, port)| address_of(nodes, host, *port));
        if monitored != Some(master) {
            actions.push(Action::Monitor {
                sentinel: index,
                master,
            });
        } else if state.quorum != settings.quorum {
            actions.push(Action::Quorum(index));
        }
    }
    // Sentinels forget nothing on their own: after a scale-down they still count the removed
    // pods' sentinels, which raises the votes a failover needs. Reset one that does, when the
    // rest is settled, so that the others keep the quorum while it relearns.
    let settled = actions.is_empty()
        && observation
            .sentinels
            .iter()
            .all(|state| state.as_ref().is_some_and(|state| state.quorum_ok));
    if settled
        && let Some(stale) = observation.sentinels.iter().position(|state| {
            state
                .as_ref()
                .is_some_and(|state| remembers_gone_pods(state, observation))
        })
    {
        actions.push(Action::Reset(stale));
    }
    Plan {
        master: Some(master),
        choice: Some(choice),
        actions,
        warnings,
        failover_in_progress: false,
        waiting: None,
        undecided: None,
    }
}

/// What to do when no sentinel majority names a live master.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Chosen(usize, Choice),
    Wait(String),
    Undecided(Undecided),
    Nothing,
}

/// The master when no sentinel majority names a live one, by these rules in order:
/// 1. The only master that is serving (offset above 0: it has had replicas since it started)
///    is kept: replacing a master that takes writes by a node read at another instant could
///    lose writes. Of several serving masters, the one whose history contains the others';
///    if none does, their histories diverged and a person must choose.
/// 2. Nothing is compared while a node loads its data (it looks empty or behind meanwhile).
/// 3. The last master the operator saw, if it answers with data: after a restart of every
///    pod each node has a fresh history at offset 0, and only this record says who is newest.
/// 4. Replicas whose master is gone, all of one history: the furthest, as Sentinel would.
/// 5. Otherwise every pod must answer, then the node whose history contains every other's
///    (or, when nobody holds data, the lowest ordinal); if none does, a person chooses.
fn chosen_without_sentinels(
    nodes: &[Node],
    observation: &Observation,
    memory: &Memory,
) -> Decision {
    let reachable: Vec<(usize, &RedisState)> = observation
        .redis
        .iter()
        .enumerate()
        .filter_map(|(index, state)| state.as_ref().map(|state| (index, state)))
        .collect();
    if reachable.is_empty() {
        return Decision::Nothing;
    }
    let state_of = |index: usize| observation.redis.get(index).and_then(Option::as_ref);
    let contains_all = |candidate: usize, others: &[usize]| {
        state_of(candidate).is_some_and(|state| {
            others.iter().all(|other| {
                *other == candidate || state_of(*other).is_some_and(|other| state.contains(other))
            })
        })
    };
    let chosen_by_person = memory
        .chosen
        .filter(|index| state_of(*index).is_some_and(|state| !state.loading));
    let serving: Vec<usize> = reachable
        .iter()
        .filter(|(_, state)| state.role == Role::Master && state.offset > 0)
        .map(|(index, _)| *index)
        .collect();
    match serving[..] {
        [only] => return Decision::Chosen(only, Choice::OnlyMaster),
        [] => {}
        _ => {
            let live: Vec<usize> = reachable
                .iter()
                .filter(|(_, state)| state.offset > 0)
                .map(|(index, _)| *index)
                .collect();
            if let Some(index) = serving.iter().find(|index| contains_all(**index, &live)) {
                return Decision::Chosen(*index, Choice::MostUpToDate);
            }
            if let Some(index) = chosen_by_person {
                return Decision::Chosen(index, Choice::ChosenByPerson);
            }
            return Decision::Undecided(Undecided {
                nodes: serving,
                diverged: true,
            });
        }
    }
    if let Some((loading, _)) = reachable.iter().find(|(_, state)| state.loading) {
        return Decision::Wait(format!(
            "waiting for {:?} to finish loading its data before choosing a master",
            nodes[*loading].pod
        ));
    }
    if let Some(last) = memory.last_master
        && state_of(last).is_some_and(RedisState::has_data)
    {
        return Decision::Chosen(last, Choice::LastMaster);
    }
    let with_data: Vec<usize> = reachable
        .iter()
        .filter(|(_, state)| state.has_data())
        .map(|(index, _)| *index)
        .collect();
    let replicas_only = !with_data.is_empty()
        && with_data.iter().all(|index| {
            state_of(*index).is_some_and(|state| state.role != Role::Master && state.offset > 0)
        });
    if replicas_only
        && let Some(index) = with_data
            .iter()
            .copied()
            .filter(|index| contains_all(*index, &with_data))
            .min()
    {
        return Decision::Chosen(index, Choice::MostUpToDate);
    }
    let unreachable = observation.unreachable(nodes);
    if !unreachable.is_empty() {
        if let Some(index) = chosen_by_person {
            return Decision::Chosen(index, Choice::ChosenByPerson);
        }
        return Decision::Wait(format!(
            "waiting for {unreachable:?} to answer: with no master named by the sentinels or \
             last seen by the operator, only every node together tells which holds the newest data"
        ));
    }
    if with_data.is_empty() {
        return most_up_to_date(observation).map_or(Decision::Nothing, |index| {
            Decision::Chosen(index, Choice::MostUpToDate)
        });
    }
    // Two nodes contain each other only when they hold the same history to the same offset:
    // then the lowest ordinal.
    if let Some(index) = with_data
        .iter()
        .copied()
        .filter(|index| contains_all(*index, &with_data))
        .min()
    {
        return Decision::Chosen(index, Choice::MostUpToDate);
    }
    if let Some(index) = chosen_by_person {
        return Decision::Chosen(index, Choice::ChosenByPerson);
    }
    Decision::Undecided(Undecided {
        nodes: with_data,
        diverged: false,
    })
}

/// Whether a sentinel counts more sentinels or replicas than the set has pods.
fn remembers_gone_pods(state: &SentinelState, observation: &Observation) -> bool {
    let others = observation.sentinels.len().saturating_sub(1);
    state.known_sentinels > others || state.known_replicas > others
}

/// The reachable node with the highest offset, then the most keys, then already a master,
/// then the lowest ordinal.
fn most_up_to_date(observation: &Observation) -> Option<usize> {
    observation
        .redis
        .iter()
        .enumerate()
        .filter_map(|(index, state)| state.as_ref().map(|state| (index, state)))
        .max_by_key(|(index, state)| {
            (
                state.offset,
                state.keys,
                state.role == Role::Master,
                std::cmp::Reverse(*index),
            )
        })
        .map(|(index, _)| index)
}

/// The role label of each pod, given the master.
pub fn roles(nodes: &[Node], master: usize) -> Vec<(&str, &'static str)> {
    nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let role = if index == master { "master" } else { "replica" };
            (node.pod.as_str(), role)
        })
        .collect()
}

/// Runs the plan's actions in order; returns how many were applied. Each action is checked
/// against a fresh observation just before it is sent: the set is observed again, planned
/// again, and the action goes out only if the new plan keeps the same master and still asks
/// for it. Anything else (a sentinel started a failover meanwhile, a node changed role) stops
/// healing; the next reconcile starts over. Stops at the first failure too.
pub async fn heal(
    nodes: &[Node],
    plan: &Plan,
    resolver: &dyn Resolver,
    settings: &Settings,
    memory: &Memory,
    credentials: &Credentials,
    lease_held: &(dyn Fn() -> bool + Sync),
) -> Result<usize, RespError> {
    let mut applied = 0;
    for action in &plan.actions {
        let fresh = observe(nodes, resolver, settings, credentials).await;
        let replanned = self::plan(nodes, &fresh, settings, memory);
        if replanned.master != plan.master || !replanned.actions.contains(action) {
            tracing::info!(
                ?action,
                waiting = ?replanned.waiting,
                "not healing: the set changed since it was observed"
            );
            return Ok(applied);
        }
        // Each command goes to a fresh connection, on the node the action names.
        let (index, port) = match *action {
            Action::Promote(index) | Action::Replicate { node: index, .. } => {
                (index, nodes[index].redis_port)
            }
            Action::Reset(index)
            | Action::Quorum(index)
            | Action::Monitor {
                sentinel: index, ..
            } => (index, nodes[index].sentinel_port),
        };
        let mut connection = connect(resolver, &nodes[index].host, port, credentials).await?;
        // A leader frozen since the observation may have been replaced meanwhile: the last
        // look at the clock is right before the command.
        if !lease_held() {
            tracing::warn!(
                ?action,
                "not healing: this replica's lease may have passed to another"
            );
            return Ok(applied);
        }
        match *action {
            Action::Promote(_) => {
                connection.command(&["REPLICAOF", "NO", "ONE"]).await?;
            }
            Action::Replicate { master, .. } => {
                let master = &nodes[master];
                connection
                    .command(&["REPLICAOF", &master.host, &master.redis_port.to_string()])
                    .await?;
            }
            Action::Reset(_) => {
                connection
                    .command(&["SENTINEL", "RESET", &settings.master_set])
                    .await?;
            }
            Action::Quorum(_) => {
                connection
                    .command(&[
                        "SENTINEL",
                        "SET",
                        &settings.master_set,
                        "quorum",
                        &settings.quorum.to_string(),
                    ])
                    .await?;
            }
            Action::Monitor { master, .. } => {
                monitor(&mut connection, &nodes[master], settings, credentials).await?;
            }
        }
        applied += 1;
    }
    Ok(applied)
}

/// Points one sentinel at `master` with the resource's settings.
async fn monitor(
    connection: &mut Connection,
    master: &Node,
    settings: &Settings,
    credentials: &Credentials,
) -> Result<(), RespError> {
    let set = settings.master_set.as_str();
    // REMOVE fails when the sentinel monitors nothing yet, which is fine.
    let _ = connection.command(&["SENTINEL", "REMOVE", set]).await;
    connection
        .command(&[
            "SENTINEL",
            "MONITOR",
            set,
            &master.host,
            &master.redis_port.to_string(),
            &settings.quorum.to_string(),
        ])
        .await?;
    let (down_after, failover_timeout, parallel_syncs) = (
        settings.down_after_milliseconds.to_string(),
        settings.failover_timeout.to_string(),
        settings.parallel_syncs.to_string(),
    );
    connection
        .command(&[
            "SENTINEL",
            "SET",
            set,
            "down-after-milliseconds",
            &down_after,
            "failover-timeout",
            &failover_timeout,
            "parallel-syncs",
            &parallel_syncs,
        ])
        .await?;
    // The sentinel reaches Redis as the operator's user where there is one (its password never
    // changes), else with the clients' password (a set started before it had that user).
    if let Some(operator) = &credentials.operator {
        connection
            .command(&[
                "SENTINEL",
                "SET",
                set,
                "auth-user",
                OPERATOR_USER,
                "auth-pass",
                operator,
            ])
            .await?;
    } else if let Some(password) = credentials.passwords.first() {
        connection
            .command(&["SENTINEL", "SET", set, "auth-pass", password])
            .await?;
    }
    Ok(())
}

/// Three nodes of a resource called `cache`, for unit tests.
#[cfg(test)]
pub(crate) fn test_nodes() -> Vec<Node> {
    (0..3)
        .map(|index| Node {
            pod: format!("cache-node-{index}"),
            host: format!("cache-node-{index}.cache-headless"),
            redis_port: 6379,
            sentinel_port: 26379,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<Node> {
        test_nodes()
    }

    fn master(offset: i64, keys: u64) -> Option<RedisState> {
        Some(RedisState {
            role: Role::Master,
            offset,
            keys,
            good_replicas: 2,
            loading: false,
            replid: "history-a".to_owned(),
            previous_history: None,
        })
    }

    fn replica_of(index: usize, offset: i64) -> Option<RedisState> {
        Some(RedisState {
            role: Role::Replica {
                host: format!("cache-node-{index}.cache-headless"),
                port: 6379,
                link_up: true,
            },
            offset,
            keys: 1,
            good_replicas: 0,
            loading: false,
            replid: "history-a".to_owned(),
            previous_history: None,
        })
    }

    fn sentinel_on(index: Option<usize>) -> Option<SentinelState> {
        Some(SentinelState {
            master: index.map(|index| (format!("cache-node-{index}.cache-headless"), 6379)),
            quorum_ok: index.is_some(),
            known_sentinels: if index.is_some() { 2 } else { 0 },
            known_replicas: if index.is_some() { 2 } else { 0 },
            promotable_replicas: if index.is_some() { 2 } else { 0 },
            failover_in_progress: false,
            config_epoch: 1,
            quorum: 2,
        })
    }

    fn settings() -> Settings {
        Settings {
            master_set: "mymaster".to_owned(),
            quorum: 2,
            down_after_milliseconds: 5000,
            failover_timeout: 10000,
            parallel_syncs: 1,
        }
    }

    #[test]
    fn info_replication_parses_roles_offsets_and_keys() {
        let info = parse_info(
            "# Replication\r\nrole:slave\r\nmaster_host:cache-node-0.cache-headless\r\n\
             master_port:6379\r\nmaster_link_status:up\r\nslave_repl_offset:1234\r\n\
             master_repl_offset:1234\r\n# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n\
             db2:keys=4,expires=1,avg_ttl=0\r\n",
        );
        assert_eq!(
            redis_state(&info),
            Some(RedisState {
                role: Role::Replica {
                    host: "cache-node-0.cache-headless".into(),
                    port: 6379,
                    link_up: true
                },
                offset: 1234,
                keys: 7,
                good_replicas: 0,
                loading: false,
                replid: String::new(),
                previous_history: None,
            })
        );
        let info = parse_info("role:master\nmaster_repl_offset:99\n");
        assert_eq!(redis_state(&info).map(|state| state.offset), Some(99));
        // The master's own count of good replicas, or else the replicas online.
        let info = parse_info(
            "role:master\r\nconnected_slaves:2\r\nmin_slaves_good_slaves:1\r\n\
             slave0:ip=10.0.0.2,port=6379,state=online,offset=5,lag=0\r\n\
             slave1:ip=10.0.0.3,port=6379,state=wait_bgsave,offset=0,lag=0\r\n\
             master_repl_offset:5\r\n",
        );
        assert_eq!(redis_state(&info).map(|state| state.good_replicas), Some(1));
        let info = parse_info(
            "role:master\nslave0:ip=a,port=6379,state=online,offset=5,lag=0\n\
             slave1:ip=b,port=6379,state=online,offset=5,lag=1\nslave_read_only:1\n",
        );
        assert_eq!(redis_state(&info).map(|state| state.good_replicas), Some(2));
        assert_eq!(redis_state(&parse_info("loading:1\n")), None);
    }

    #[test]
    fn a_healthy_set_needs_nothing() {
        let observation = Observation {
            redis: vec![master(10, 1), replica_of(0, 10), replica_of(0, 10)],
            sentinels: vec![sentinel_on(Some(0)); 3],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert_eq!(plan.master, Some(0));
        assert_eq!(plan.choice, Some(Choice::Sentinels));
        assert!(plan.actions.is_empty());
        assert!(plan.is_healthy(&observation));

        // Replicas report their link up a moment before their master counts them: until it
        // does, it refuses writes, and the set is not healthy yet.
        let mut syncing = observation.clone();
        if let Some(Some(state)) = syncing.redis.get_mut(0) {
            state.good_replicas = 1;
        }
        assert!(plan.actions.is_empty());
        assert!(!plan.is_healthy(&syncing));

        // A sentinel that does not see both replicas fit to promote would refuse a failover
        // (NOGOODSLAVE): not healthy yet either.
        let mut unseen = observation.clone();
        if let Some(Some(state)) = unseen.sentinels.get_mut(2) {
            state.promotable_replicas = 1;
        }
        assert!(plan.actions.is_empty());
        assert!(!plan.is_healthy(&unseen));
    }

    #[test]
    fn a_replica_is_promotable_when_connected_in_sync_and_not_excluded() {
        let fields = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(field, value)| ((*field).to_owned(), (*value).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        let good = [
            ("flags", "slave"),
            ("master-link-status", "ok"),
            ("slave-priority", "100"),
        ];
        assert!(promotable(&fields(&good)));
        for (field, value) in [
            ("flags", "s_down,slave"),
            ("flags", "slave,disconnected"),
            ("master-link-status", "err"),
            ("slave-priority", "0"),
        ] {
            let mut changed = fields(&good);
            changed.insert(field.to_owned(), value.to_owned());
            assert!(!promotable(&changed), "{field}={value}");
        }
        assert!(!promotable(&fields(&[("flags", "slave")])));
    }

    #[test]
    fn a_cold_start_gets_one_master_and_every_sentinel_pointed_at_it() {
        let observation = Observation {
            redis: vec![master(0, 0), master(0, 0), master(0, 0)],
            sentinels: vec![sentinel_on(None); 3],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert_eq!(plan.master, Some(0));
        assert_eq!(
            plan.actions,
            vec![
                Action::Replicate { node: 1, master: 0 },
                Action::Replicate { node: 2, master: 0 },
                Action::Monitor {
                    sentinel: 0,
                    master: 0
                },
                Action::Monitor {
                    sentinel: 1,
                    master: 0
                },
                Action::Monitor {
                    sentinel: 2,
                    master: 0
                },
            ]
        );
    }

    #[test]
    fn with_only_replicas_and_a_sentinel_minority_in_view_nothing_is_promoted() {
        // Review finding 2: the operator lost its route to nodes 0 and 1 while the set was
        // healthy. Node 2 and its sentinel are all it sees; promoting node 2 would make a
        // second master beside node 0, which still takes writes on the other side.
        let observation = Observation {
            redis: vec![None, None, replica_of(0, 800)],
            sentinels: vec![None, None, sentinel_on(Some(0))],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert_eq!(plan.master, None, "{plan:?}");
        assert!(plan.waiting.unwrap().contains("1 of 3 sentinels"));

        // Five pods, nodes 3 and 4 (two sentinels of five) in view: promoting 3 and pointing
        // 4 at it would give node 3 a replica, so it would accept writes lost at heal.
        let five: Vec<Node> = (0..5)
            .map(|index| Node {
                pod: format!("cache-node-{index}"),
                host: format!("cache-node-{index}.cache-headless"),
                redis_port: 6379,
                sentinel_port: 26379,
            })
            .collect();
        let observation = Observation {
            redis: vec![None, None, None, replica_of(0, 800), replica_of(0, 700)],
            sentinels: vec![None, None, None, sentinel_on(Some(0)), sentinel_on(Some(0))],
            password_refused: Vec::new(),
        };
        let plan = super::plan(&five, &observation, &settings(), &Memory::default());
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert_eq!(plan.master, None, "{plan:?}");
    }

    #[test]
    fn a_failover_to_a_master_out_of_view_is_not_undone() {
        // Review finding 3: node 0 (the old master, isolated with the operator) is still a
        // master; the sentinel of node 2 ran a failover at epoch 2 to node 1, which the
        // operator cannot reach, and node 2 follows node 1. Pointing node 2 and its sentinel
        // back at node 0 would undo a failover a sentinel majority voted for.
        let mut newer = sentinel_on(Some(1));
        if let Some(state) = newer.as_mut() {
            state.config_epoch = 2;
        }
        let observation = Observation {
            redis: vec![master(500, 9), None, replica_of(1, 520)],
            sentinels: vec![sentinel_on(Some(0)), None, newer],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert!(plan.actions.is_empty(), "{plan:?}");
        // Review finding 4: nor are the role labels and status.master pinned to node 0.
        assert_eq!(plan.master, None, "{plan:?}");
        assert!(plan.waiting.unwrap().contains("cache-node-1"));
    }

    #[test]
    fn a_failover_to_a_pod_outside_the_set_is_not_undone() {
        // A review of the fix for finding 3: a sentinel naming a master the set does not
        // count (a pod a scale-down is removing) was skipped as if it named none. Its
        // sentinel failed over at epoch 2 to node 4, which node 2 follows; the other two
        // still name node 0 at epoch 1. Pointing node 2 and its sentinel back at node 0
        // would undo that failover.
        let mut newer = sentinel_on(Some(4));
        if let Some(state) = newer.as_mut() {
            state.config_epoch = 2;
        }
        let observation = Observation {
            redis: vec![master(500, 9), replica_of(0, 500), replica_of(4, 520)],
            sentinels: vec![sentinel_on(Some(0)), sentinel_on(Some(0)), newer],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert!(
            plan.waiting
                .as_deref()
                .is_some_and(|why| why.contains("cache-node-4")),
            "{plan:?}"
        );
    }

    #[test]
    fn with_a_sentinel_majority_the_highest_offset_wins_never_an_empty_node() {
        // Node 0 (the oldest) restarted empty; node 2 holds the most data; the sentinels
        // restarted without a master (their state lives in memory) and all answer.
        let observation = Observation {
            redis: vec![master(0, 0), replica_of(9, 500), replica_of(9, 800)],
            sentinels: vec![sentinel_on(None), sentinel_on(None), sentinel_on(None)],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert_eq!(plan.master, Some(2));
        assert_eq!(plan.choice, Some(Choice::MostUpToDate));
        assert_eq!(plan.actions[0], Action::Promote(2));
        assert!(
            plan.actions
                .contains(&Action::Replicate { node: 0, master: 2 })
        );
        assert!(
            plan.actions
                .contains(&Action::Replicate { node: 1, master: 2 })
        );
    }

    #[test]
    fn two_masters_keep_the_one_the_sentinels_name_and_warn() {
        let observation = Observation {
            redis: vec![master(100, 5), master(300, 9), replica_of(0, 100)],
            sentinels: vec![
                sentinel_on(Some(0)),
                sentinel_on(Some(0)),
                sentinel_on(Some(1)),
            ],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert_eq!(plan.master, Some(0));
        assert_eq!(
            plan.actions,
            vec![
                Action::Replicate { node: 1, master: 0 },
                Action::Monitor {
                    sentinel: 2,
                    master: 0
                },
            ]
        );
        assert_eq!(plan.warnings.len(), 1);
        assert!(
            plan.warnings[0].contains("two masters"),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn two_masters_unknown_to_the_sentinels_keep_the_one_whose_history_contains_the_other() {
        let observation = Observation {
            redis: vec![master(100, 5), master(300, 9), replica_of(0, 100)],
            sentinels: vec![sentinel_on(None); 3],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert_eq!(plan.master, Some(1));
        assert!(
            plan.actions
                .contains(&Action::Replicate { node: 0, master: 1 })
        );
    }

    #[test]
    fn a_failover_in_progress_is_left_to_the_sentinels() {
        // The master died; sentinels still name it and hold quorum.
        let observation = Observation {
            redis: vec![None, replica_of(0, 100), replica_of(0, 90)],
            sentinels: vec![None, sentinel_on(Some(0)), sentinel_on(Some(0))],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert!(plan.failover_in_progress);
        assert!(plan.actions.is_empty());
        assert_eq!(plan.master, None);
    }

    #[test]
    fn sentinels_remembering_removed_pods_are_reset_one_at_a_time() {
        // After a scale-down from 5: every sentinel still counts 4 others and 4 replicas.
        let mut remembering = sentinel_on(Some(0));
        if let Some(state) = remembering.as_mut() {
            state.known_sentinels = 4;
            state.known_replicas = 4;
        }
        let mut observation = Observation {
            redis: vec![master(10, 1), replica_of(0, 10), replica_of(0, 10)],
            sentinels: vec![remembering.clone(); 3],
            password_refused: Vec::new(),
        };
        let first = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert_eq!(first.actions, vec![Action::Reset(0)]);
        assert!(!first.is_healthy(&observation));
        // While sentinel 0 relearns (no quorum yet), nobody else is reset.
        observation.sentinels[0] = Some(SentinelState {
            quorum_ok: false,
            known_sentinels: 0,
            known_replicas: 0,
            ..remembering.clone().unwrap()
        });
        assert!(
            plan(&nodes(), &observation, &settings(), &Memory::default())
                .actions
                .is_empty()
        );
        // Once it has, the next one goes.
        observation.sentinels[0] = sentinel_on(Some(0));
        assert_eq!(
            plan(&nodes(), &observation, &settings(), &Memory::default()).actions,
            vec![Action::Reset(1)]
        );
    }

    #[test]
    fn nothing_is_done_while_a_sentinel_runs_a_failover() {
        // Mid-handover: node 1 was just promoted, node 0 still reports master, two sentinels
        // still name node 0, and the one running the failover says so.
        let mut leader = sentinel_on(Some(0));
        if let Some(state) = leader.as_mut() {
            state.failover_in_progress = true;
        }
        let observation = Observation {
            redis: vec![master(500, 9), master(500, 9), replica_of(0, 500)],
            sentinels: vec![leader, sentinel_on(Some(0)), sentinel_on(Some(0))],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert!(plan.failover_in_progress);
        assert_eq!(plan.master, None);
        assert!(plan.waiting.unwrap().contains("cache-node-0"));
    }

    #[test]
    fn a_failover_flag_left_after_the_switch_does_not_hold_the_operator_back() {
        // Every sentinel names node 1, the only master; the one that ran the failover still
        // shows its flag for a moment.
        let mut leader = sentinel_on(Some(1));
        if let Some(state) = leader.as_mut() {
            state.failover_in_progress = true;
        }
        let observation = Observation {
            redis: vec![None, master(500, 9), replica_of(1, 500)],
            sentinels: vec![sentinel_on(Some(1)), sentinel_on(Some(1)), leader],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert_eq!(plan.master, Some(1));
        assert_eq!(plan.waiting, None);
    }

    #[test]
    fn a_new_master_announced_with_a_newer_epoch_is_not_undone() {
        // The failover is over on the sentinel that ran it (epoch 2, names node 1, which is
        // a master now); the other two have not heard yet and still name node 0.
        let mut leader = sentinel_on(Some(1));
        if let Some(state) = leader.as_mut() {
            state.config_epoch = 2;
        }
        let observation = Observation {
            redis: vec![master(500, 9), master(500, 9), replica_of(0, 500)],
            sentinels: vec![leader, sentinel_on(Some(0)), sentinel_on(Some(0))],
            password_refused: Vec::new(),
        };
        let announcing = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert!(announcing.actions.is_empty(), "{announcing:?}");
        assert!(announcing.waiting.unwrap().contains("cache-node-1"));

        // A stale sentinel with an older epoch naming a node that is no master is re-pointed.
        let mut stale = sentinel_on(Some(2));
        if let Some(state) = stale.as_mut() {
            state.config_epoch = 0;
        }
        let observation = Observation {
            redis: vec![master(500, 9), replica_of(0, 500), replica_of(0, 500)],
            sentinels: vec![sentinel_on(Some(0)), sentinel_on(Some(0)), stale],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert_eq!(
            plan.actions,
            vec![Action::Monitor {
                sentinel: 2,
                master: 0
            }]
        );
    }

    #[test]
    fn without_a_sentinel_majority_naming_it_a_live_master_with_data_is_kept() {
        // Two sentinel reads timed out: nothing is changed, and no label or status moves.
        let mut observation = Observation {
            redis: vec![master(100, 5), replica_of(0, 120), replica_of(0, 110)],
            sentinels: vec![None, None, sentinel_on(Some(0))],
            password_refused: Vec::new(),
        };
        let waiting = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert!(waiting.actions.is_empty(), "{waiting:?}");
        assert_eq!(waiting.master, None);
        // Two sentinels answer, one restarted without a master; the replicas' offsets were
        // read a moment after the master's and look ahead of it. Promoting one would throw
        // away the master's writes.
        observation.sentinels[1] = sentinel_on(None);
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert_eq!(plan.master, Some(0));
        assert_eq!(plan.choice, Some(Choice::OnlyMaster));
        assert!(!plan.actions.contains(&Action::Promote(1)), "{plan:?}");
        assert!(
            plan.actions
                .iter()
                .all(|action| matches!(action, Action::Monitor { master: 0, .. })),
            "{plan:?}"
        );
    }

    #[test]
    fn a_master_in_a_pod_outside_the_set_is_left_to_the_sentinels() {
        // Scale-down 5 → 3 while the master is ordinal 4: the three remaining nodes are
        // replicas of it, and the sentinels still name it.
        let outside = Some(SentinelState {
            master: Some(("cache-node-4.cache-headless".to_owned(), 6379)),
            ..sentinel_on(Some(0)).unwrap()
        });
        let observation = Observation {
            redis: vec![replica_of(4, 900), replica_of(4, 900), replica_of(4, 880)],
            sentinels: vec![outside.clone(), outside.clone(), outside],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert!(!plan.failover_in_progress);
        assert!(plan.waiting.unwrap().contains("cache-node-4"));
    }

    #[test]
    fn sentinel_master_replies_give_flags_and_epoch() {
        let reply = Value::Array(
            [
                "name",
                "mymaster",
                "flags",
                "master,failover_in_progress",
                "config-epoch",
                "7",
            ]
            .iter()
            .map(|text| Value::Bulk(text.as_bytes().to_vec()))
            .collect(),
        );
        let fields = sentinel_master_fields(&reply);
        assert_eq!(fields["flags"], "master,failover_in_progress");
        assert_eq!(fields["config-epoch"], "7");
    }

    #[test]
    fn a_scaled_set_gets_its_new_quorum_live() {
        // 3 → 5: the desired quorum is 3; the sentinels still need 2 votes.
        let observation = Observation {
            redis: vec![master(10, 1), replica_of(0, 10), replica_of(0, 10)],
            sentinels: vec![sentinel_on(Some(0)); 3],
            password_refused: Vec::new(),
        };
        let five = Settings {
            quorum: 3,
            ..settings()
        };
        let plan = plan(&nodes(), &observation, &five, &Memory::default());
        assert_eq!(
            plan.actions,
            vec![Action::Quorum(0), Action::Quorum(1), Action::Quorum(2)]
        );
        assert!(!plan.is_healthy(&observation));
    }

    #[test]
    fn no_master_is_chosen_by_data_while_a_node_still_loads_its_data() {
        // A cold start: node 1 holds the most data but is still loading it from disk.
        let mut loading = master(0, 0);
        if let Some(state) = loading.as_mut() {
            state.loading = true;
        }
        let observation = Observation {
            redis: vec![master(0, 3), loading, master(0, 2)],
            sentinels: vec![sentinel_on(None); 3],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert!(plan.waiting.unwrap().contains("cache-node-1"));
        assert_eq!(
            redis_state(&parse_info("role:master\nloading:1\n")).map(|state| state.loading),
            Some(true)
        );
    }

    #[test]
    fn nothing_reachable_means_no_master_and_no_action() {
        let observation = Observation {
            redis: vec![None; 3],
            sentinels: vec![None; 3],
            password_refused: Vec::new(),
        };
        let plan = plan(&nodes(), &observation, &settings(), &Memory::default());
        assert_eq!(plan.master, None);
        assert!(plan.actions.is_empty());
        assert!(!plan.is_healthy(&observation));
    }

    fn restarted(keys: u64, replid: &str) -> Option<RedisState> {
        master(0, keys).map(|state| RedisState {
            replid: replid.to_owned(),
            good_replicas: 0,
            ..state
        })
    }

    #[test]
    fn histories_contain_what_they_replicated_and_nothing_restarted() {
        let a = |offset: i64| RedisState {
            offset,
            ..master(0, 1).expect("state")
        };
        assert!(a(500).contains(&a(400)));
        assert!(!a(400).contains(&a(500)));
        // Promoted at offset 450 from history-a, then went on as history-b.
        let promoted = RedisState {
            replid: "history-b".to_owned(),
            previous_history: Some(("history-a".to_owned(), 451)),
            offset: 900,
            ..a(0)
        };
        assert!(promoted.contains(&a(450)));
        assert!(
            !promoted.contains(&a(451)),
            "the old master went on after the split"
        );
        // Forced to master at offset 450 and nothing written since: still history-a.
        let forced = RedisState {
            replid: "history-c".to_owned(),
            previous_history: Some(("history-a".to_owned(), 451)),
            offset: 450,
            ..a(0)
        };
        assert!(a(500).contains(&forced));
        assert!(!a(449).contains(&forced));
        // Empty nodes are contained by anyone; a node restarted with data by no one.
        assert!(a(1).contains(&master(0, 0).expect("state")));
        assert!(!a(10_000).contains(&restarted(5, "fresh").expect("state")));
        assert_eq!(
            redis_state(&parse_info(
                "role:master\nmaster_replid:0123456789abcdef\n\
                 master_replid2:0000000000000000000000000000000000000000\n\
                 master_repl_offset:7\nsecond_repl_offset:-1\n"
            ))
            .map(|state| (state.replid, state.previous_history)),
            Some(("0123456789abcdef".to_owned(), None))
        );
        assert_eq!(
            redis_state(&parse_info(
                "role:master\nmaster_replid:bbbb\nmaster_replid2:aaaa\n\
                 master_repl_offset:70\nsecond_repl_offset:43\n"
            ))
            .and_then(|state| state.previous_history),
            Some(("aaaa".to_owned(), 43))
        );
    }

    #[test]
    fn after_every_pod_restarted_the_last_master_keeps_its_data() {
        // Every node restarted from its files: fresh histories at offset 0, and the stale
        // node 0 has as many keys as the others (writes overwrote keys).
        let mut observation = Observation {
            redis: vec![
                restarted(100, "fresh-0"),
                restarted(100, "fresh-1"),
                restarted(100, "fresh-2"),
            ],
            sentinels: vec![sentinel_on(None); 3],
            password_refused: Vec::new(),
        };
        let last_master = Memory {
            last_master: Some(2),
            chosen: None,
        };
        let planned = super::plan(&nodes(), &observation, &settings(), &last_master);
        assert_eq!(planned.master, Some(2));
        assert_eq!(planned.choice, Some(Choice::LastMaster));

        // The stale node answers first, alone: nothing is done until the last master answers.
        observation.redis[1] = None;
        observation.redis[2] = None;
        let planned = super::plan(&nodes(), &observation, &settings(), &last_master);
        assert!(planned.actions.is_empty(), "{planned:?}");
        assert!(
            planned
                .waiting
                .is_some_and(|reason| reason.contains("cache-node-2"))
        );
        // The same without a record of the last master.
        let planned = super::plan(&nodes(), &observation, &settings(), &Memory::default());
        assert!(planned.actions.is_empty(), "{planned:?}");
    }

    #[test]
    fn data_that_cannot_be_ordered_waits_for_a_person_to_choose() {
        // No record of the last master (its pod lost its data), two restarted nodes with data.
        let observation = Observation {
            redis: vec![
                master(0, 0),
                restarted(120, "fresh-1"),
                restarted(100, "fresh-2"),
            ],
            sentinels: vec![sentinel_on(None); 3],
            password_refused: Vec::new(),
        };
        let memory = Memory {
            last_master: Some(0),
            chosen: None,
        };
        let planned = super::plan(&nodes(), &observation, &settings(), &memory);
        assert!(planned.actions.is_empty(), "{planned:?}");
        assert_eq!(
            planned.undecided,
            Some(Undecided {
                nodes: vec![1, 2],
                diverged: false
            })
        );
        assert!(!planned.is_healthy(&observation));
        // Only one of them with data: that one, and nobody is asked.
        let mut one = observation.clone();
        one.redis[1] = master(0, 0);
        let planned = super::plan(&nodes(), &one, &settings(), &memory);
        assert_eq!(planned.master, Some(2));
        // A person chooses node 2 by pod and history.
        let chosen = chosen_by_annotation("cache-node-2/fresh-2", &nodes(), &observation);
        assert_eq!(chosen, Some(2));
        let planned = super::plan(
            &nodes(),
            &observation,
            &settings(),
            &Memory { chosen, ..memory },
        );
        assert_eq!(planned.master, Some(2));
        assert_eq!(planned.choice, Some(Choice::ChosenByPerson));
        assert!(
            planned
                .actions
                .contains(&Action::Replicate { node: 1, master: 2 })
        );
        // An annotation left from another time names another history: ignored.
        assert_eq!(
            chosen_by_annotation("cache-node-2/fresh-9", &nodes(), &observation),
            None
        );
        assert_eq!(
            chosen_by_annotation("cache-node-2", &nodes(), &observation),
            None
        );
        assert_eq!(
            chosen_by_annotation("cache-node-7/fresh-2", &nodes(), &observation),
            None
        );
    }

    #[test]
    fn two_masters_of_diverged_histories_are_not_healed_by_picking_one() {
        // Node 1 was promoted at offset 451 of history-a; node 0, the old master, went on in
        // history-a past that offset with node 2 still replicating from it: both took writes.
        let old = RedisState {
            offset: 800,
            ..master(0, 9).expect("state")
        };
        let promoted = RedisState {
            replid: "history-b".to_owned(),
            previous_history: Some(("history-a".to_owned(), 451)),
            offset: 700,
            ..master(0, 9).expect("state")
        };
        let observation = Observation {
            redis: vec![
                Some(old.clone()),
                Some(promoted.clone()),
                replica_of(0, 800),
            ],
            sentinels: vec![sentinel_on(None); 3],
            password_refused: Vec::new(),
        };
        let planned = super::plan(&nodes(), &observation, &settings(), &Memory::default());
        assert!(planned.actions.is_empty(), "{planned:?}");
        assert_eq!(
            planned.undecided,
            Some(Undecided {
                nodes: vec![0, 1],
                diverged: true
            })
        );
        // Had the old master stopped before the split, the promoted one holds it all.
        let observation = Observation {
            redis: vec![
                Some(RedisState { offset: 450, ..old }),
                Some(promoted),
                replica_of(1, 700).map(|state| RedisState {
                    replid: "history-b".to_owned(),
                    ..state
                }),
            ],
            sentinels: vec![sentinel_on(None); 3],
            password_refused: Vec::new(),
        };
        let planned = super::plan(&nodes(), &observation, &settings(), &Memory::default());
        assert_eq!(planned.master, Some(1));
        assert!(
            planned
                .actions
                .contains(&Action::Replicate { node: 0, master: 1 })
        );
    }
}
