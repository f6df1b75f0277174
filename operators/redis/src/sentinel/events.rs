//! Sentinel's own notifications, turned into what the controller reports: a subscriber per
//! resource listens to one sentinel's `±sdown`, `+odown`, `+try-failover`, `+vote-for-leader`,
//! `+switch-master` and `-failover-abort-*` channels, keeps a [`FailoverLog`], and asks the
//! controller to reconcile when the master moves — so status, labels and events follow a
//! failover within moments, not at the next periodic check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc::UnboundedSender;

use super::data_plane::{Node, Resolver, connect};
use crate::resp::{COMMAND_TIMEOUT, Connection, Credentials, RespError, Value};
use crate::v1beta1::RedisSentinel;

/// A message of one of the subscribed channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentinelEvent {
    /// The first sign, from the sentinel listened to, that the master is failing: it sees the
    /// master down itself (`+sdown`), tries a failover (`+try-failover`) or votes for a
    /// sentinel that does (`+vote-for-leader`). A failover's duration is counted from the
    /// first of them: a sentinel that is not the leader may hear of the new master before it
    /// reaches `+odown` itself (the leader needs only a quorum), but it is always asked for its
    /// vote first.
    MasterFailing,
    /// The sentinel listened to sees the master answer again (`-sdown`): no failover is under
    /// way from its point of view.
    MasterBack,
    /// The sentinels agree the master at this host is down.
    ObjectivelyDown {
        /// The master's host.
        host: String,
        /// The master's port.
        port: u16,
    },
    /// The master moved.
    SwitchMaster {
        /// The old master's host and port.
        from: (String, u16),
        /// The new master's host and port.
        to: (String, u16),
    },
    /// A failover was given up (`-failover-abort-…`: no good replica, not elected, …).
    FailoverAborted {
        /// The channel's name, which says why.
        reason: String,
    },
}

/// Parses a Pub/Sub message (`message` or `pmessage`) into an event, for `master_set` only.
pub fn parse(message: &Value, master_set: &str) -> Option<SentinelEvent> {
    let items = message.items();
    let (channel, payload) = match items.first()?.text()?.as_str() {
        "message" => (items.get(1)?.text()?, items.get(2)?.text()?),
        "pmessage" => (items.get(2)?.text()?, items.get(3)?.text()?),
        _ => return None,
    };
    let words: Vec<&str> = payload.split_whitespace().collect();
    // "master mymaster <host> <port> …": the instance is this set's master.
    let about_master = words.first() == Some(&"master") && words.get(1) == Some(&master_set);
    match channel.as_str() {
        // "mymaster <old-host> <old-port> <new-host> <new-port>"
        "+switch-master" if words.first() == Some(&master_set) => {
            Some(SentinelEvent::SwitchMaster {
                from: (words.get(1)?.to_string(), words.get(2)?.parse().ok()?),
                to: (words.get(3)?.to_string(), words.get(4)?.parse().ok()?),
            })
        }
        // "master mymaster <host> <port> #quorum 2/2"
        "+odown" if about_master => Some(SentinelEvent::ObjectivelyDown {
            host: words.get(2)?.to_string(),
            port: words.get(3)?.parse().ok()?,
        }),
        "+sdown" | "+try-failover" if about_master => Some(SentinelEvent::MasterFailing),
        // "<leader run id> <epoch>": it names no master, and the operator's sentinels monitor
        // exactly one, this set's.
        "+vote-for-leader" => Some(SentinelEvent::MasterFailing),
        "-sdown" if about_master => Some(SentinelEvent::MasterBack),
        channel if channel.starts_with("-failover-abort") => Some(SentinelEvent::FailoverAborted {
            reason: channel.trim_start_matches('-').to_owned(),
        }),
        _ => None,
    }
}

/// A failover as the sentinels reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The old master's pod.
    pub from: String,
    /// The new master's pod.
    pub to: String,
    /// When the sentinel listened to first saw the master failing ([`SentinelEvent::MasterFailing`]
    /// or `+odown`); `None` when it announced the switch without a sign before it (it was
    /// listened to only from then on, or the master had come back meanwhile).
    pub started_at: Option<SystemTime>,
    /// When the new master was announced.
    pub finished_at: SystemTime,
}

impl Switch {
    /// How long the failover took, when its start was heard.
    pub fn duration(&self) -> Option<Duration> {
        self.started_at.map(|started_at| {
            self.finished_at
                .duration_since(started_at)
                .unwrap_or_default()
        })
    }
}

/// What the subscriber heard since the controller last looked.
#[derive(Debug, Clone, Default)]
pub struct FailoverLog {
    /// Since when the master is failing, as far as the sentinel listened to tells.
    pub down_since: Option<SystemTime>,
    /// The latest switch not yet reported.
    pub switch: Option<Switch>,
    /// Events not yet reported: `(warning, reason, message)`.
    pub notes: Vec<(bool, &'static str, String)>,
}

impl FailoverLog {
    /// Records one event about the set of `nodes`; returns whether the controller should
    /// reconcile now.
    pub fn record(&mut self, event: SentinelEvent, at: SystemTime, nodes: &[Node]) -> bool {
        match event {
            SentinelEvent::MasterFailing => {
                self.down_since.get_or_insert(at);
                false
            }
            SentinelEvent::MasterBack => {
                self.down_since = None;
                false
            }
            SentinelEvent::ObjectivelyDown { host, port } => {
                self.down_since.get_or_insert(at);
                self.notes.push((
                    true,
                    "MasterDown",
                    format!(
                        "the sentinels agree that master {:?} is down; failing over",
                        pod_at(nodes, &host, port)
                    ),
                ));
                true
            }
            SentinelEvent::SwitchMaster { from, to } => {
                let (from, to) = (pod_at(nodes, &from.0, from.1), pod_at(nodes, &to.0, to.1));
                let switch = Switch {
                    from,
                    to,
                    started_at: self.down_since.take(),
                    finished_at: at,
                };
                let took = switch.duration().map_or_else(String::new, |duration| {
                    format!(" in {} ms", duration.as_millis())
                });
                self.notes.push((
                    false,
                    "Failover",
                    format!(
                        "master moved from {:?} to {:?}{took}",
                        switch.from, switch.to
                    ),
                ));
                self.switch = Some(switch);
                true
            }
            SentinelEvent::FailoverAborted { reason } => {
                self.notes.push((
                    true,
                    "FailoverAborted",
                    format!("the sentinels gave up a failover: {reason}"),
                ));
                true
            }
        }
    }
}

/// The pod announced at `host:port`, or the host itself when no node matches.
pub fn pod_at(nodes: &[Node], host: &str, port: u16) -> String {
    nodes
        .iter()
        .find(|node| node.host == host && node.redis_port == port)
        .map_or_else(|| host.to_owned(), |node| node.pod.clone())
}

/// The logs of every resource, shared by the subscribers and the controller.
pub type FailoverLogs = Arc<Mutex<HashMap<ObjectRef<RedisSentinel>, FailoverLog>>>;

/// The channels subscribed to, and the pattern for the abort channels.
const CHANNELS: [&str; 7] = [
    "SUBSCRIBE",
    "+sdown",
    "-sdown",
    "+odown",
    "+try-failover",
    "+vote-for-leader",
    "+switch-master",
];
const ABORT_PATTERN: [&str; 2] = ["PSUBSCRIBE", "-failover-abort-*"];
/// The subscriber's first and longest wait between rounds of connection attempts. The longest
/// is long because a reconcile that reaches the set wakes the subscriber at once
/// ([`Sentinels::wake`]): the wait matters only for a set nobody reaches, whose every attempt
/// out of the cluster is a port-forward through the API server.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// How long a subscription may stay silent before the sentinel must answer a PING.
const IDLE_PING: Duration = Duration::from_secs(15);

/// The next pushed message, or an error when the connection broke or went silent: after
/// `idle` without a message the sentinel must answer a PING within the command timeout. A
/// half-open connection (a node gone without a FIN) would otherwise be waited on for ever,
/// and every failover after it would go unreported.
pub async fn next_message(connection: &mut Connection, idle: Duration) -> Result<Value, RespError> {
    match tokio::time::timeout(idle, connection.read()).await {
        Ok(result) => result,
        Err(_) => {
            connection.send(&["PING"]).await?;
            tokio::time::timeout(COMMAND_TIMEOUT, connection.read())
                .await
                .map_err(|_| RespError::Timeout)?
        }
    }
}

/// The sentinels one subscriber listens to.
pub struct Sentinels {
    /// The resource they belong to.
    pub object: ObjectRef<RedisSentinel>,
    /// Its nodes, each with a sentinel.
    pub nodes: Vec<Node>,
    /// The master set they monitor.
    pub master_set: String,
    /// How to authenticate to them, as the last reconcile knew it.
    pub credentials: tokio::sync::watch::Receiver<Credentials>,
    /// Notified when a reconcile reached the set: a waiting subscriber tries again at once.
    pub wake: Arc<tokio::sync::Notify>,
}

/// Listens to the sentinels of one resource, one sentinel at a time, moving to the next when the
/// connection breaks. It runs until its task is aborted: the reconciler does that when the
/// controller's watch shows the resource deleted (a deletion missed while the watch was down
/// is found on its re-list), so knowing the resource is there costs no API request.
pub async fn subscribe(
    sentinels: Sentinels,
    resolver: Arc<dyn Resolver>,
    logs: FailoverLogs,
    trigger: UnboundedSender<ObjectRef<RedisSentinel>>,
) {
    let Sentinels {
        object,
        nodes,
        master_set,
        credentials,
        wake,
    } = sentinels;
    // Retries back off from 1 s to 5 min while no sentinel answers (pods starting, or a set
    // the operator cannot reach): out of the cluster each attempt is a port-forward through
    // the API server. A reconcile that reaches the set wakes the subscriber at once.
    let mut retry = RETRY_MIN;
    loop {
        for node in &nodes {
            // The credentials as the last reconcile knew them (they change with a rotation).
            let current = credentials.borrow().clone();
            let Ok(mut connection) =
                connect(resolver.as_ref(), &node.host, node.sentinel_port, &current).await
            else {
                continue;
            };
            if connection.send(&CHANNELS).await.is_err()
                || connection.send(&ABORT_PATTERN).await.is_err()
            {
                continue;
            }
            retry = RETRY_MIN;
            tracing::debug!(resource = %object, sentinel = %node.pod, "subscribed to sentinel notifications");
            while let Ok(message) = next_message(&mut connection, IDLE_PING).await {
                let Some(event) = parse(&message, &master_set) else {
                    continue;
                };
                tracing::debug!(resource = %object, sentinel = %node.pod, ?event, "sentinel notification");
                let reconcile = match logs.lock() {
                    Ok(mut logs) => logs.entry(object.clone()).or_default().record(
                        event,
                        SystemTime::now(),
                        &nodes,
                    ),
                    Err(_) => false,
                };
                if reconcile && trigger.send(object.clone()).is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => retry = (retry * 2).min(RETRY_MAX),
            () = wake.notified() => retry = RETRY_MIN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(channel: &str, payload: &str) -> Value {
        Value::Array(vec![
            Value::Bulk(b"message".to_vec()),
            Value::Bulk(channel.as_bytes().to_vec()),
            Value::Bulk(payload.as_bytes().to_vec()),
        ])
    }

    #[tokio::test]
    async fn a_silent_subscription_is_given_up_after_an_unanswered_ping() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A peer that answers the PING keeps the subscription.
        let (client, mut server) = tokio::io::duplex(1024);
        let mut connection = Connection::open(Box::new(client), &Credentials::default())
            .await
            .unwrap();
        let answering = tokio::spawn(async move {
            let mut request = [0_u8; 64];
            let read = server.read(&mut request).await.unwrap();
            assert!(String::from_utf8_lossy(&request[..read]).contains("PING"));
            server
                .write_all(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
                .await
                .unwrap();
            server
        });
        let pong = next_message(&mut connection, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(parse(&pong, "mymaster"), None);
        let _server = answering.await.unwrap();
        // A peer that has gone silent (a half-open connection) is given up.
        let (client, _silent) = tokio::io::duplex(1024);
        let mut connection = Connection::open(Box::new(client), &Credentials::default())
            .await
            .unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            next_message(&mut connection, Duration::from_millis(50)).await,
            Err(RespError::Timeout)
        ));
        assert!(started.elapsed() < COMMAND_TIMEOUT + Duration::from_secs(1));
    }

    #[test]
    fn sentinel_messages_become_events_and_a_timed_failover() {
        let down = parse(
            &message(
                "+odown",
                "master mymaster cache-node-0.h.ns.svc 6379 #quorum 2/2",
            ),
            "mymaster",
        )
        .unwrap();
        let switch = parse(
            &message(
                "+switch-master",
                "mymaster cache-node-0.h.ns.svc 6379 cache-node-2.h.ns.svc 6379",
            ),
            "mymaster",
        )
        .unwrap();
        assert_eq!(
            parse(&message("+switch-master", "other a 1 b 2"), "mymaster"),
            None
        );
        let abort = Value::Array(vec![
            Value::Bulk(b"pmessage".to_vec()),
            Value::Bulk(b"-failover-abort-*".to_vec()),
            Value::Bulk(b"-failover-abort-no-good-slave".to_vec()),
            Value::Bulk(b"master mymaster x 6379".to_vec()),
        ]);
        assert_eq!(
            parse(&abort, "mymaster"),
            Some(SentinelEvent::FailoverAborted {
                reason: "failover-abort-no-good-slave".into()
            })
        );

        let nodes: Vec<Node> = [0, 2]
            .map(|ordinal| Node {
                pod: format!("cache-node-{ordinal}"),
                host: format!("cache-node-{ordinal}.h.ns.svc"),
                redis_port: 6379,
                sentinel_port: 26379,
            })
            .to_vec();
        let mut log = FailoverLog::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert!(log.record(down, start, &nodes));
        assert!(log.record(switch, start + Duration::from_millis(6500), &nodes));
        let recorded = log.switch.clone().unwrap();
        assert_eq!(
            (recorded.from.as_str(), recorded.to.as_str()),
            ("cache-node-0", "cache-node-2")
        );
        assert_eq!(recorded.started_at, Some(start));
        assert_eq!(log.notes.len(), 2);
        assert!(log.notes[1].2.contains("in 6500 ms"), "{:?}", log.notes);
        assert!(log.down_since.is_none());
    }

    /// The subscribed sentinel may not be the leader: it can announce the switch before its own
    /// `+odown`, so the duration counts from its first sign of the failure, and a switch with
    /// no sign before it has no duration (never "0 ms").
    #[test]
    fn a_failover_is_timed_from_the_first_sign_of_the_master_failing() {
        let event = |channel: &str, payload: &str| parse(&message(channel, payload), "mymaster");
        let sdown = event("+sdown", "master mymaster 10.0.0.1 6379").unwrap();
        let back = event("-sdown", "master mymaster 10.0.0.1 6379").unwrap();
        let vote = event(
            "+vote-for-leader",
            "43561253f764f487f959025d119e9d63354dc399 7",
        )
        .unwrap();
        let try_failover = event("+try-failover", "master mymaster 10.0.0.1 6379").unwrap();
        let switch = event("+switch-master", "mymaster 10.0.0.1 6379 10.0.0.2 6379").unwrap();
        for sign in [&sdown, &vote, &try_failover] {
            assert_eq!(*sign, SentinelEvent::MasterFailing);
        }
        assert_eq!(back, SentinelEvent::MasterBack);
        // A replica or another set going down is not the master failing.
        assert_eq!(
            event(
                "+sdown",
                "slave 10.0.0.2:6379 10.0.0.2 6379 @ mymaster 10.0.0.1 6379"
            ),
            None
        );
        assert_eq!(event("+sdown", "master other 10.0.0.9 6379"), None);

        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let timed = |events: &[(&SentinelEvent, u64)]| {
            let mut log = FailoverLog::default();
            for (event, ms) in events {
                log.record((*event).clone(), at(*ms), &[]);
            }
            let switch = log.switch.clone().unwrap();
            let note = log.notes.last().unwrap().2.clone();
            (switch.started_at, note)
        };
        // Seen down, voted, switched: timed from the first sign; a sign alone asks for no
        // reconcile.
        let (started, note) = timed(&[(&sdown, 1_000), (&vote, 1_400), (&switch, 2_600)]);
        assert_eq!(started, Some(at(1_000)));
        assert!(note.ends_with("in 1600 ms"), "{note}");
        assert!(!FailoverLog::default().record(sdown.clone(), at(0), &[]));
        // Only asked for a vote (the leader got there first).
        assert_eq!(
            timed(&[(&vote, 5_000), (&switch, 5_900)]).0,
            Some(at(5_000))
        );
        // The master came back in between: that earlier sign does not count.
        let (started, note) = timed(&[(&sdown, 1_000), (&back, 1_500), (&switch, 9_000)]);
        assert_eq!(started, None);
        assert!(!note.contains(" ms"), "{note}");
        // Nothing heard before the switch.
        assert_eq!(timed(&[(&switch, 9_000)]).0, None);
    }
}
