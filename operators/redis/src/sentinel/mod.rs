//! Redis with Sentinel: the `RedisSentinel` controller.
//!
//! validate → build → apply → data plane → status:
//! - `validate` checks the password Secret (and reads the password, kept in memory only).
//! - [`build`] turns the spec into a ConfigMap (configuration and scripts), a StatefulSet
//!   `<name>-node` whose pods run Redis and Sentinel, a headless, a client and a master
//!   Service, and a PodDisruptionBudget.
//! - `apply` goes through operator-kit's `Children`.
//! - The [`data_plane`] is checked on every reconcile and every few seconds: one master, every
//!   replica following it, every sentinel monitoring it with quorum. What is wrong is healed,
//!   and the pods are labelled with their role so that `<name>-master` selects the master.
//! - [`events`] turns the sentinels' own notifications into Events, `status.lastFailover`
//!   and an immediate reconcile.

pub mod build;
pub mod data_plane;
pub mod events;
pub mod scripts;

pub use crate::{access, passwords};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use operator_kit::api_error::describe;
use operator_kit::conditions::{ConditionUpdate, READY, set_condition, set_condition_at};
use operator_kit::{Action, ChildError, Context, ErrorClass, ReconcileError, Reconciler};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::warn;

use self::build::{Names, ROLE_LABEL};
use self::data_plane::{KEEP_DATA_OF, Memory, Node, Observation, Plan, Undecided};
use self::events::{FailoverLog, FailoverLogs};
use crate::access::Access;
use crate::passwords::{Process, Step, Target};
use crate::pod::{self, REDIS_PORT};
use crate::resp::Credentials;
use crate::resp::RespError;
use crate::rotation::{
    self, Rotating, Rotation, RotationError, rotation_event, rotation_recheck, rotation_status,
};
use crate::secret::{PasswordSecret, SecretError, SecretPassword, read_password_secret};
use crate::v1beta1::{Failover, PasswordRotation, Phase, RedisSentinel, RedisSentinelStatus};

/// How often a healthy set is checked when nothing else triggers a reconcile.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(15);
/// How soon a set that is not healthy yet is checked again.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(3);
/// How soon a set whose sentinels are failing over is checked again: the operator follows a
/// failover within a second of its end, not a recheck interval later.
pub const FAILOVER_RECHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between checks of a set none of whose processes answers: nothing can be
/// done there until one does, and a pod that starts or turns ready is seen at once through
/// its StatefulSet's watch, so the timer only stands in for a network that heals. Out of the
/// cluster every attempt is a port-forward through the API server, hence the long bound.
pub const UNREACHABLE_RECHECK_MAX: Duration = Duration::from_secs(300);

/// Errors of the RedisSentinel controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The password Secret or its key is missing or unreadable.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Applying or pruning a child object failed.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// Reading or labelling the pods failed.
    #[error("failed to label the pods with their role: {}", describe(.0))]
    Pods(#[source] Box<kube::Error>),
    /// A healing command failed; the next reconcile starts from a fresh observation.
    #[error("failed to heal the replication: {0}")]
    Heal(#[source] RespError),
    /// Writing the status failed.
    #[error("failed to patch the status: {}", describe(.0))]
    Status(#[source] Box<kube::Error>),
    /// The operator's Secret with the pods' passwords could not be kept.
    #[error(transparent)]
    Passwords(#[from] RotationError),
}

impl ReconcileError for Error {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Secret(error) => error.class(),
            // Even a refused child is retried (with backoff): the reconcile is also what keeps
            // watching the data plane, which must not stop until the spec changes.
            _ => ErrorClass::Transient,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Self::Secret(error) => error.reason(),
            Self::Child(error) => error.reason(),
            Self::Pods(_) => "LabelFailed",
            Self::Heal(_) => "HealFailed",
            Self::Status(_) => "StatusFailed",
            Self::Passwords(error) => error.reason(),
        }
    }
}

/// Where a resource's nodes are announced; by default their stable DNS names
/// ([`build::nodes`]). Tests map them to local processes.
pub type NodeAddresses = Arc<dyn Fn(&RedisSentinel) -> Vec<Node> + Send + Sync>;

/// The Sentinel subscriber of one resource, and the credentials it authenticates with (the
/// reconcile keeps them current).
struct Subscriber {
    handle: tokio::task::JoinHandle<()>,
    credentials: tokio::sync::watch::Sender<Credentials>,
    wake: Arc<tokio::sync::Notify>,
}

/// The `RedisSentinel` reconciler and the state its Sentinel subscribers share with it.
pub struct RedisSentinelReconciler {
    access: Access,
    addresses: NodeAddresses,
    logs: FailoverLogs,
    subscribers: Mutex<HashMap<ObjectRef<RedisSentinel>, Subscriber>>,
    /// The reason of each resource's Ready condition as its last reconcile computed it.
    ready_reasons: Mutex<HashMap<ObjectRef<RedisSentinel>, String>>,
    /// The uid of each resource whose every reachable process this operator brought to its
    /// passwords since it started, while no rotation ran ([`rotate`]).
    passwords_checked: Mutex<HashMap<ObjectRef<RedisSentinel>, String>>,
    /// How many checks in a row found none of a resource's processes answering.
    unreachable: Mutex<HashMap<ObjectRef<RedisSentinel>, u32>>,
    trigger: mpsc::UnboundedSender<ObjectRef<RedisSentinel>>,
}

impl RedisSentinelReconciler {
    /// A reconciler reaching the data plane through `access` at `addresses`, and the stream of
    /// objects its Sentinel subscribers want reconciled (give it to
    /// `Controller::reconcile_on`).
    pub fn new(
        access: Access,
        addresses: NodeAddresses,
    ) -> (
        Self,
        impl futures::Stream<Item = ObjectRef<RedisSentinel>> + Send + 'static,
    ) {
        let (trigger, receiver) = mpsc::unbounded_channel();
        let triggers = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|object| (object, receiver))
        });
        let reconciler = Self {
            access,
            addresses,
            logs: FailoverLogs::default(),
            subscribers: Mutex::new(HashMap::new()),
            ready_reasons: Mutex::new(HashMap::new()),
            passwords_checked: Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            trigger,
        };
        (reconciler, triggers)
    }

    /// Starts the Sentinel subscriber of `resource` unless one runs, and gives it
    /// `credentials`.
    fn ensure_subscriber(
        &self,
        resource: &RedisSentinel,
        nodes: &[Node],
        resolver: Arc<dyn data_plane::Resolver>,
        credentials: &Credentials,
    ) {
        let object = ObjectRef::from_obj(resource);
        let Ok(mut subscribers) = self.subscribers.lock() else {
            return;
        };
        // Subscribers of deleted resources end on their own; forget their handles.
        subscribers.retain(|_, subscriber| !subscriber.handle.is_finished());
        if let Some(subscriber) = subscribers.get(&object) {
            subscriber.credentials.send_if_modified(|current| {
                let changed = current != credentials;
                if changed {
                    *current = credentials.clone();
                }
                changed
            });
            return;
        }
        let (credentials, credentials_receiver) = tokio::sync::watch::channel(credentials.clone());
        let wake = Arc::new(tokio::sync::Notify::new());
        let sentinels = events::Sentinels {
            object: object.clone(),
            nodes: nodes.to_vec(),
            master_set: build::settings(&resource.spec).master_set,
            credentials: credentials_receiver,
            wake: wake.clone(),
        };
        let handle = tokio::spawn(events::subscribe(
            sentinels,
            resolver,
            self.logs.clone(),
            self.trigger.clone(),
        ));
        subscribers.insert(
            object,
            Subscriber {
                handle,
                credentials,
                wake,
            },
        );
    }

    /// Wakes the subscriber of `resource` if it waits to try again: this reconcile reached the
    /// set.
    fn wake_subscriber(&self, resource: &RedisSentinel) {
        if let Ok(subscribers) = self.subscribers.lock()
            && let Some(subscriber) = subscribers.get(&ObjectRef::from_obj(resource))
        {
            subscriber.wake.notify_one();
        }
    }

    /// Records `reason` as the resource's Ready reason; returns the one recorded before.
    fn last_reason(&self, resource: &RedisSentinel, reason: &str) -> Option<String> {
        self.ready_reasons
            .lock()
            .ok()?
            .insert(ObjectRef::from_obj(resource), reason.to_owned())
    }

    /// Whether this operator already brought every reachable process of `resource` (this
    /// very object, by uid) to its passwords.
    fn passwords_checked(&self, resource: &RedisSentinel) -> bool {
        let object = ObjectRef::from_obj(resource);
        self.passwords_checked
            .lock()
            .is_ok_and(|checked| checked.get(&object) == resource.uid().as_ref())
    }

    /// Counts one more check in a row in which no process of `resource` answered, or starts
    /// over when one did; returns the count.
    fn count_unreachable(&self, resource: &RedisSentinel, observation: &Observation) -> u32 {
        let object = ObjectRef::from_obj(resource);
        let Ok(mut unreachable) = self.unreachable.lock() else {
            return 0;
        };
        if nothing_answered(observation) {
            let count = unreachable.entry(object).or_default();
            *count = count.saturating_add(1);
            *count
        } else {
            unreachable.remove(&object);
            0
        }
    }

    fn record_passwords_checked(&self, resource: &RedisSentinel) {
        if let (Ok(mut checked), Some(uid)) = (self.passwords_checked.lock(), resource.uid()) {
            checked.insert(ObjectRef::from_obj(resource), uid);
        }
    }

    fn take_log(&self, resource: &RedisSentinel) -> FailoverLog {
        let object = ObjectRef::from_obj(resource);
        self.logs
            .lock()
            .ok()
            .and_then(|mut logs| {
                // Read without inserting: a reconcile finishing after the resource's deletion
                // must not bring its log back.
                let log = logs.get_mut(&object)?;
                Some(FailoverLog {
                    down_since: log.down_since,
                    switch: log.switch.take(),
                    notes: std::mem::take(&mut log.notes),
                })
            })
            .unwrap_or_default()
    }
}

impl Drop for RedisSentinelReconciler {
    fn drop(&mut self) {
        if let Ok(subscribers) = self.subscribers.lock() {
            for subscriber in subscribers.values() {
                subscriber.handle.abort();
            }
        }
    }
}

/// The pods' readiness as the StatefulSet reports it: `(ready, wanted, rolled out)`.
fn stateful_set_progress(stateful_set: &StatefulSet) -> (i32, i32, bool) {
    let wanted = stateful_set.spec.replicas.unwrap_or(1);
    let status = stateful_set.status.as_ref();
    let ready = status.and_then(|status| status.ready_replicas).unwrap_or(0);
    let rolled_out = status.is_some_and(|status| {
        status.observed_generation >= stateful_set.metadata.generation
            && status.update_revision.is_some()
            && status.current_revision == status.update_revision
    });
    (ready, wanted, rolled_out)
}

/// Reasons of the Ready condition when the operator cannot tell which node holds the newest
/// data and waits for a person to choose.
pub const HISTORY_DIVERGED: &str = "HistoryDiverged";
/// See [`HISTORY_DIVERGED`].
pub const NEWEST_DATA_UNKNOWN: &str = "NewestDataUnknown";

/// What the operator knew before this observation: the last master it recorded and the node
/// a person chose with the [`KEEP_DATA_OF`] annotation.
pub fn memory(resource: &RedisSentinel, nodes: &[Node], observation: &Observation) -> Memory {
    let last_master = resource
        .status
        .as_ref()
        .and_then(|status| status.master.as_ref())
        .and_then(|pod| nodes.iter().position(|node| node.pod == *pod));
    let chosen = resource
        .annotations()
        .get(KEEP_DATA_OF)
        .and_then(|value| data_plane::chosen_by_annotation(value, nodes, observation));
    Memory {
        last_master,
        chosen,
    }
}

/// The condition when the nodes' data cannot be ordered: which nodes, why, and the command
/// that chooses one.
pub fn undecided_condition(
    resource: (&str, &str),
    nodes: &[Node],
    observation: &Observation,
    undecided: &Undecided,
) -> ConditionUpdate<'static> {
    let (namespace, name) = resource;
    let choices: Vec<String> = undecided
        .nodes
        .iter()
        .filter_map(|index| {
            let state = observation.redis.get(*index)?.as_ref()?;
            let choice = format!("{}/{}", nodes[*index].pod, data_plane::history_tag(state));
            Some(format!(
                "{choice:?} (offset {}, {} keys)",
                state.offset, state.keys
            ))
        })
        .collect();
    let (reason, why) = if undecided.diverged {
        (
            HISTORY_DIVERGED,
            "they are masters whose replication histories split, and each has taken writes since",
        )
    } else {
        (
            NEWEST_DATA_UNKNOWN,
            "they restarted from their files (a fresh history each) and no record says which was master",
        )
    };
    ConditionUpdate::fails(
        READY,
        reason,
        format!(
            "cannot tell which node holds the newest data: {why}. Nothing is changed until you \
             choose the node whose data to keep with `kubectl annotate -n {namespace} \
             redissentinel {name} {KEEP_DATA_OF}=<pod/history>`, one of {}; the other nodes then \
             replicate from it and lose what only they hold",
            choices.join(", ")
        ),
    )
}

/// The Ready reason while pods refuse the password the Secret now holds.
pub const PASSWORD_REFUSED: &str = "PasswordRefused";

/// The Ready condition from the StatefulSet's progress and the data plane's state.
pub fn readiness(
    resource: (&str, &str),
    nodes: &[Node],
    progress: (i32, i32, bool),
    observation: &Observation,
    plan: &Plan,
) -> ConditionUpdate<'static> {
    let (ready, wanted, rolled_out) = progress;
    if !observation.password_refused.is_empty() {
        // Told before anything else: it explains every other symptom (no node answers, the
        // roles cannot be labelled), and the way out is the person's.
        return ConditionUpdate::fails(
            READY,
            PASSWORD_REFUSED,
            format!(
                "{:?} refuse the password now in the Secret named by kubernetesConfig.redisSecret: \
                 it changed after they started, and running pods cannot take a new password yet. \
                 Nothing is healed meanwhile. Put the previous value back; restarting pods with the \
                 new one would split the set by password",
                observation.password_refused
            ),
        );
    }
    let reachable = observation.redis.iter().flatten().count();
    if reachable == 0 && ready < wanted {
        return ConditionUpdate::fails(
            READY,
            "PodsNotReady",
            format!("{ready} of {wanted} pods are ready"),
        );
    }
    if reachable == 0 {
        return ConditionUpdate::fails(
            READY,
            "NodesUnreachable",
            "the pods are ready but no Redis answers the operator",
        );
    }
    if let Some(undecided) = &plan.undecided {
        return undecided_condition(resource, nodes, observation, undecided);
    }
    if let Some(reason) = &plan.waiting {
        let condition_reason = if plan.failover_in_progress {
            "FailoverInProgress"
        } else {
            "WaitingForSentinels"
        };
        return ConditionUpdate::fails(READY, condition_reason, reason.clone());
    }
    let Some(master) = plan.master else {
        return ConditionUpdate::fails(READY, "NoMaster", "no node can be made master yet");
    };
    if !plan.is_healthy(observation) {
        let unreachable = observation.unreachable(nodes);
        let detail = if plan.actions.is_empty() {
            format!(
                "waiting for replicas to sync and sentinels to know each other; unreachable: {unreachable:?}"
            )
        } else {
            format!("healing: {:?}", plan.actions)
        };
        return ConditionUpdate::fails(READY, "Degraded", detail);
    }
    if ready < wanted || !rolled_out {
        return ConditionUpdate::fails(
            READY,
            "RollingOut",
            format!("{ready} of {wanted} pods are ready with the current spec"),
        );
    }
    ConditionUpdate::holds(
        READY,
        "Healthy",
        format!(
            "master {:?}; {} replicas in sync; every sentinel agrees",
            nodes[master].pod,
            nodes.len() - 1
        ),
    )
}

/// What one reconcile found, for [`next_status`].
pub struct Observed<'a> {
    /// The resource's `metadata.generation`.
    pub generation: Option<i64>,
    /// Where clients connect.
    pub endpoint: String,
    /// The master pod the plan settled on; `None` when it could not tell (the previous one is
    /// kept).
    pub master: Option<String>,
    /// The failover the sentinels announced since the last reconcile.
    pub switch: Option<events::Switch>,
    /// The Ready condition.
    pub ready: ConditionUpdate<'a>,
    /// The password rotation's progress; `None` keeps the previous one.
    pub password_rotation: Option<PasswordRotation>,
}

/// The status after one reconcile, as of `now`: pure. The master is the one observed, else the
/// previous one; the last failover is the one the sentinels announced, else, when the master
/// moved while no subscriber listened (an operator restart), one inferred without a duration;
/// the phase is `Ready` exactly when the Ready condition holds.
pub fn next_status(
    previous: &RedisSentinelStatus,
    observed: Observed<'_>,
    now: SystemTime,
) -> RedisSentinelStatus {
    let Observed {
        generation,
        endpoint,
        master,
        switch,
        ready,
        password_rotation,
    } = observed;
    let mut status = RedisSentinelStatus {
        observed_generation: generation,
        endpoint: Some(endpoint),
        ..previous.clone()
    };
    if let Some(switch) = switch {
        status.last_failover = Some(Failover {
            started_at: timestamp(switch.started_at.unwrap_or(switch.finished_at)),
            duration_ms: switch
                .duration()
                .and_then(|duration| i64::try_from(duration.as_millis()).ok()),
            from: switch.from,
            to: switch.to,
        });
    } else if let (Some(old), Some(new)) = (&previous.master, &master)
        && old != new
    {
        status.last_failover = Some(Failover {
            from: old.clone(),
            to: new.clone(),
            started_at: timestamp(now),
            duration_ms: None,
        });
    }
    if master.is_some() {
        status.master = master;
    }
    if password_rotation.is_some() {
        status.password_rotation = password_rotation;
    }
    status.phase = if ready.status {
        Phase::Ready
    } else {
        Phase::Pending
    };
    let now = Timestamp::try_from(now).unwrap_or_else(|_| Timestamp::now());
    set_condition_at(&mut status.conditions, ready.observed(generation), now);
    status
}

/// Counts a failover the sentinels announced, and how long it took.
fn record_failover_metrics(
    context: &Context,
    namespace: &str,
    name: &str,
    switch: &events::Switch,
) {
    let labels = [("namespace", namespace), ("name", name)];
    context.metrics().count(
        "redis_sentinel_failovers_total",
        "Failovers announced by the sentinels (+switch-master)",
        &labels,
    );
    // A failover whose start the subscriber did not hear has no duration to count.
    let Some(duration) = switch.duration() else {
        return;
    };
    context.metrics().observe(
        "redis_sentinel_failover_duration_seconds",
        "Time from the first sign of the master failing to the new master",
        &labels,
        duration.as_secs_f64(),
    );
}

fn timestamp(at: SystemTime) -> String {
    Timestamp::try_from(at)
        .map(|timestamp| timestamp.to_string())
        .unwrap_or_default()
}

/// Sets the role label of each pod that has the wrong one; returns how many were patched.
async fn label_pods(
    context: &Context,
    namespace: &str,
    nodes: &[Node],
    master: usize,
    instance_labels: &BTreeMap<String, String>,
) -> Result<usize, Error> {
    let pods = Api::<Pod>::namespaced(context.client().clone(), namespace);
    // From the controller's cache of its pods; listed only until that watch has listed.
    let listed = match context.cached_metadata::<Pod>(Some(namespace), instance_labels) {
        Some(cached) => cached,
        None => {
            let selector = operator_kit::children::label_selector(instance_labels);
            pods.list_metadata(&ListParams::default().labels(&selector))
                .await
                .map_err(|source| Error::Pods(Box::new(source)))?
                .items
                .into_iter()
                .map(|pod| pod.metadata)
                .collect()
        }
    };
    let roles: BTreeMap<&str, &str> = data_plane::roles(nodes, master).into_iter().collect();
    let mut patched = 0;
    for pod in listed {
        let name = pod.name.clone().unwrap_or_default();
        let Some(role) = roles.get(name.as_str()) else {
            continue;
        };
        if pod
            .labels
            .as_ref()
            .and_then(|labels| labels.get(ROLE_LABEL))
            .map(String::as_str)
            == Some(*role)
        {
            continue;
        }
        let patch = json!({ "metadata": { "labels": { ROLE_LABEL: role } } });
        pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Pods(Box::new(source)))?;
        patched += 1;
    }
    Ok(patched)
}

impl Reconciler for RedisSentinelReconciler {
    type Resource = RedisSentinel;
    type Error = Error;

    /// A deleted resource's subscriber stops, and its failover log and metric series go.
    fn deleted(&self, object: &ObjectRef<RedisSentinel>, context: &Context) {
        if let Ok(mut subscribers) = self.subscribers.lock()
            && let Some(subscriber) = subscribers.remove(object)
        {
            subscriber.handle.abort();
        }
        if let Ok(mut logs) = self.logs.lock() {
            logs.remove(object);
        }
        if let Ok(mut reasons) = self.ready_reasons.lock() {
            reasons.remove(object);
        }
        if let Ok(mut checked) = self.passwords_checked.lock() {
            checked.remove(object);
        }
        if let Ok(mut unreachable) = self.unreachable.lock() {
            unreachable.remove(object);
        }
        let namespace = object.namespace.clone().unwrap_or_default();
        context
            .metrics()
            .forget(&[("namespace", &namespace), ("name", &object.name)]);
    }

    /// validate → passwords → build + apply → data plane → status, each a step below.
    async fn reconcile(
        &self,
        resource: Arc<RedisSentinel>,
        context: &Context,
    ) -> Result<Action, Error> {
        let wanted = self.validate(&resource, context).await?;
        let names = Names::of(&resource.name_any());
        let mut children = context.children(&*resource)?;
        let plane = DataPlane {
            nodes: (self.addresses)(&resource),
            settings: build::settings(&resource.spec),
            resolver: self.access.resolver(context.client()),
        };
        // A failed step (the operator's Secret unwritable or taken, an immutable field
        // changed) must not stop the data plane below: after a failover the pods still need
        // their role labels, or `<name>-master` keeps sending clients to the old master. Its
        // error is reported at the end.
        let (rotation, refused) = match &wanted {
            Some(wanted) => match self
                .passwords(&resource, context, children.labels(), &plane, wanted)
                .await
            {
                Ok(rotation) => (Some(rotation), None),
                Err(error) => (None, Some(error)),
            },
            None => (None, None),
        };
        let credentials = match (&rotation, &wanted) {
            (Some(rotation), _) => rotation.pods.credentials(None),
            // Without the operator's Secret: as a client would, with the Secret's password.
            (None, Some(wanted)) => Credentials::password(Some(&wanted.value)),
            (None, None) => Credentials::default(),
        };

        // build + apply, unless the pods' passwords could not be kept: the pods would then
        // refer to a Secret that is not there.
        let selector_labels = children.selector_labels().clone();
        let applied = match refused {
            None => apply_children(&resource, &names, &mut children).await,
            Some(error) => Err(error.into()),
        };
        if let Err(error) = &applied {
            warn!(%error, "failed to apply the children; checking the data plane all the same");
        }

        let (observation, plan) = self
            .heal(&resource, context, &plane, &credentials, &selector_labels)
            .await?;
        let healthy = self
            .report(
                &resource,
                context,
                Outcome {
                    names: &names,
                    nodes: &plane.nodes,
                    applied: &applied,
                    observation: &observation,
                    plan: &plan,
                    rotation: rotation.as_ref().zip(wanted.as_ref()),
                },
            )
            .await?;
        applied?;
        let unreachable = self.count_unreachable(&resource, &observation);
        Ok(Action::requeue(next_check(
            healthy,
            plan.failover_in_progress,
            rotation.as_ref(),
            unreachable,
        )))
    }
}

/// Where a resource's data plane is and how it is reached, for one reconcile.
struct DataPlane {
    nodes: Vec<Node>,
    settings: data_plane::Settings,
    resolver: Arc<dyn data_plane::Resolver>,
}

/// What one reconcile did, for its status.
struct Outcome<'a> {
    names: &'a Names,
    nodes: &'a [Node],
    applied: &'a Result<StatefulSet, Error>,
    observation: &'a Observation,
    plan: &'a Plan,
    rotation: Option<(&'a Rotation, &'a SecretPassword)>,
}

impl RedisSentinelReconciler {
    /// validate: the password Secret (only the operator can check it). A missing Secret or
    /// key is reported in the status (phase Failed) before its error ends the reconcile.
    async fn validate(
        &self,
        resource: &RedisSentinel,
        context: &Context,
    ) -> Result<Option<SecretPassword>, Error> {
        let namespace = resource.namespace().unwrap_or_default();
        match read_password_secret(resource.password_secret(), &namespace, context).await {
            Ok(password) => Ok(password),
            Err(error) => {
                if error.class() == ErrorClass::WaitForChange {
                    let generation = resource.meta().generation;
                    let mut status = resource.status.clone().unwrap_or_default();
                    let update = ConditionUpdate::fails(READY, error.reason(), error.to_string());
                    set_condition(&mut status.conditions, update.observed(generation));
                    status.phase = Phase::Failed;
                    status.observed_generation = generation;
                    context
                        .patch_status(resource, &status)
                        .await
                        .map_err(|source| Error::Status(Box::new(source)))?;
                }
                Err(error.into())
            }
        }
    }

    /// passwords: before the pods are (re)built, every Redis and Sentinel gets the operator's
    /// user (after an upgrade) and the next step of a rotation toward `wanted`.
    async fn passwords(
        &self,
        resource: &RedisSentinel,
        context: &Context,
        labels: &BTreeMap<String, String>,
        plane: &DataPlane,
        wanted: &SecretPassword,
    ) -> Result<Rotation, RotationError> {
        // Between rotations a pod starts with exactly the passwords of the operator's Secret,
        // so the processes are checked once per operator start (which, after an upgrade, gives
        // the running pods the operator's user before their StatefulSet rolls), not on every
        // check.
        let targets = password_targets(&plane.nodes);
        let rotation = rotation::rotate(
            context,
            resource,
            labels,
            (
                &targets,
                plane.resolver.as_ref(),
                &plane.settings.master_set,
            ),
            &wanted.value,
            !self.passwords_checked(resource),
        )
        .await?;
        if rotation.step == Step::Steady && rotation.converged.complete_where_reachable() {
            self.record_passwords_checked(resource);
        }
        Ok(rotation)
    }

    /// data plane: observe → plan → heal, then the role labels and the plan's warnings.
    async fn heal(
        &self,
        resource: &RedisSentinel,
        context: &Context,
        plane: &DataPlane,
        credentials: &Credentials,
        selector_labels: &BTreeMap<String, String>,
    ) -> Result<(Observation, Plan), Error> {
        let DataPlane {
            nodes,
            settings,
            resolver,
        } = plane;
        self.ensure_subscriber(resource, nodes, resolver.clone(), credentials);
        let observation =
            data_plane::observe(nodes, resolver.as_ref(), settings, credentials).await;
        if !nothing_answered(&observation) {
            self.wake_subscriber(resource);
        }
        let memory = memory(resource, nodes, &observation);
        // (Pods that refuse the password get no plan at all: no command, role label or
        // status.master; see `data_plane::plan`.)
        let plan = data_plane::plan(nodes, &observation, settings, &memory);
        data_plane::heal(
            nodes,
            &plan,
            resolver.as_ref(),
            settings,
            &memory,
            credentials,
            &|| context.lease_held(),
        )
        .await
        .map_err(Error::Heal)?;
        // The role labels route the clients (`<name>-master`), and a merge patch carries no
        // resource version for the API server to refuse a stale leader's by: fenced as the
        // commands are.
        if let Some(master) = plan.master
            && context.lease_held()
        {
            let namespace = resource.namespace().unwrap_or_default();
            label_pods(context, &namespace, nodes, master, selector_labels).await?;
        }
        // Events only after healing, so that publishing them cannot delay an action past the
        // observation it was planned on.
        for warning in &plan.warnings {
            context
                .publish(
                    resource,
                    EventType::Warning,
                    "SplitBrain",
                    "Heal",
                    warning.clone(),
                )
                .await;
        }
        Ok((observation, plan))
    }

    /// status: the Ready condition, the master, the last failover and the rotation, then the
    /// events they deserve (each told once). Returns whether the set is Ready.
    async fn report(
        &self,
        resource: &RedisSentinel,
        context: &Context,
        outcome: Outcome<'_>,
    ) -> Result<bool, Error> {
        let Outcome {
            names,
            nodes,
            applied,
            observation,
            plan,
            rotation,
        } = outcome;
        let namespace = resource.namespace().unwrap_or_default();
        let log = self.take_log(resource);
        for (warning, reason, note) in &log.notes {
            let kind = if *warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            context
                .publish(resource, kind, reason, "Failover", note.clone())
                .await;
        }
        let previous = resource.status.clone().unwrap_or_default();
        if let Some(switch) = &log.switch {
            record_failover_metrics(context, &namespace, &resource.name_any(), switch);
        }
        let update = match applied {
            Ok(stateful_set) => readiness(
                (&namespace, &resource.name_any()),
                nodes,
                stateful_set_progress(stateful_set),
                observation,
                plan,
            ),
            Err(error) => ConditionUpdate::fails(READY, error.reason(), error.to_string()),
        };
        let healthy = update.status;
        let previous_reason = previous
            .conditions
            .iter()
            .find(|condition| condition.type_ == READY)
            .map(|condition| condition.reason.clone());
        // The status read may be stale (a reconcile can start before the watch delivers the
        // status the previous one wrote), so the reason last seen is also kept in memory.
        let last_seen = self.last_reason(resource, update.reason);
        let person_note = person_needed(
            update.reason,
            previous_reason.as_deref(),
            last_seen.as_deref(),
        )
        .then(|| (update.reason, update.message.to_string()));
        let now = SystemTime::now();
        let password_rotation = rotation.and_then(|(rotation, wanted)| {
            rotation_status(
                previous.password_rotation.as_ref(),
                &wanted.resource_version,
                rotation,
                resource.old_password_grace_seconds(),
                &timestamp(now),
            )
        });
        let rotation_note = rotation_event(
            previous.password_rotation.as_ref(),
            password_rotation.as_ref(),
        );
        let status = next_status(
            &previous,
            Observed {
                generation: resource.meta().generation,
                endpoint: format!("{}.{namespace}.svc:{REDIS_PORT}", names.master),
                master: plan.master.map(|master| nodes[master].pod.clone()),
                switch: log.switch,
                ready: update,
                password_rotation,
            },
            now,
        );
        // status.master is a merge patch too: a leader past its lease leaves it to the next.
        if context.lease_held() {
            context
                .patch_status(resource, &status)
                .await
                .map_err(|source| Error::Status(Box::new(source)))?;
        }
        if let Some((reason, note)) = person_note {
            context
                .publish(resource, EventType::Warning, reason, "Heal", note)
                .await;
        }
        if let Some((event_type, reason, note)) = rotation_note {
            context
                .publish(resource, event_type, reason, "RotatePassword", note)
                .await;
        }
        if healthy && previous.phase != Phase::Ready {
            let note = format!(
                "Redis with Sentinel is ready; master {:?}",
                status.master.unwrap_or_default()
            );
            context
                .publish(resource, EventType::Normal, "Ready", "Reconcile", note)
                .await;
        }
        Ok(healthy)
    }
}

/// Every Redis and Sentinel of the set, for its passwords.
pub fn password_targets(nodes: &[Node]) -> Vec<Target> {
    nodes
        .iter()
        .flat_map(|node| {
            [
                (Process::Redis, node.redis_port),
                (Process::Sentinel, node.sentinel_port),
            ]
            .map(|(process, port)| Target {
                pod: node.pod.clone(),
                host: node.host.clone(),
                port,
                process,
            })
        })
        .collect()
}

/// Whether a Ready reason asks a person to act and has not been told yet: a Warning is
/// published once, when such a reason starts (not on every check while it lasts): pure.
pub fn person_needed(reason: &str, previous: Option<&str>, last_seen: Option<&str>) -> bool {
    [HISTORY_DIVERGED, NEWEST_DATA_UNKNOWN, PASSWORD_REFUSED].contains(&reason)
        && previous != Some(reason)
        && last_seen != Some(reason)
}

/// Whether no process answered at all: neither a Redis nor a Sentinel (nor one refusing the
/// password, which answers too).
pub fn nothing_answered(observation: &Observation) -> bool {
    observation.redis.iter().all(Option::is_none)
        && observation.sentinels.iter().all(Option::is_none)
        && observation.password_refused.is_empty()
}

/// When to check again: every [`CHECK_INTERVAL`] while healthy, sooner while not, within a
/// second of a failover's end, and, during a rotation, at the next step (an overlap only
/// when its grace is over). A set none of whose processes answered `unreachable` checks in
/// a row is checked ever less often, from [`RECHECK_INTERVAL`] doubling up to
/// [`UNREACHABLE_RECHECK_MAX`]: pure.
pub fn next_check(
    healthy: bool,
    failover_in_progress: bool,
    rotation: Option<&Rotation>,
    unreachable: u32,
) -> Duration {
    if unreachable > 0 && !failover_in_progress {
        let factor = 2_u32.saturating_pow(unreachable - 1);
        return RECHECK_INTERVAL
            .saturating_mul(factor)
            .min(UNREACHABLE_RECHECK_MAX);
    }
    let check = if healthy {
        CHECK_INTERVAL
    } else if failover_in_progress {
        FAILOVER_RECHECK_INTERVAL
    } else {
        RECHECK_INTERVAL
    };
    rotation
        .and_then(|rotation| rotation_recheck(rotation, CHECK_INTERVAL))
        .map_or(check, |rotation| rotation.min(check))
}

/// Applies every child of `resource`, prunes what is no longer wanted and takes ownership of
/// the data claims; returns the StatefulSet as the API server has it.
async fn apply_children(
    resource: &RedisSentinel,
    names: &Names,
    children: &mut operator_kit::Children,
) -> Result<StatefulSet, Error> {
    let labels = children.selector_labels().clone();
    let config = build::config_map(names, &build::redis_conf(&resource.spec));
    let hash = build::config_hash(&config);
    children.apply(config).await?;
    children
        .apply(build::headless_service(names, &labels))
        .await?;
    // Before the client Service gives up 26379 and the pods are told to ask this one.
    children
        .apply(build::sentinel_service(names, &labels))
        .await?;
    children
        .apply(build::client_service(&resource.spec, names, &labels))
        .await?;
    children
        .apply(build::master_service(names, &labels))
        .await?;
    let ports = [REDIS_PORT, build::SENTINEL_PORT];
    if let Some(policy) = pod::network_policy(&names.client, &resource.spec.pod, &labels, &ports) {
        children.apply(policy).await?;
    }
    children
        .apply(build::pod_disruption_budget(names, &labels))
        .await?;
    let (stateful_set, _) = children
        .apply(build::stateful_set(resource, names, &labels, &hash))
        .await?;
    children.prune().await?;
    pod::own_data_claims(children, &resource.spec.pod, &names.nodes).await?;
    Ok(stateful_set)
}

#[cfg(test)]
mod tests {
    use super::data_plane::{RedisState, Role};
    use super::*;

    fn nodes() -> Vec<Node> {
        data_plane::test_nodes()
    }

    fn restarted(keys: u64, replid: &str) -> Option<RedisState> {
        Some(RedisState {
            role: Role::Master,
            offset: 0,
            keys,
            good_replicas: 0,
            loading: false,
            replid: replid.to_owned(),
            previous_history: None,
        })
    }

    #[test]
    fn undecided_data_names_each_node_and_the_command_that_chooses() {
        let observation = Observation {
            redis: vec![
                restarted(0, "00aa"),
                restarted(12, "1234567890abcdef"),
                restarted(10, "fedcba0987654321"),
            ],
            sentinels: vec![None; 3],
            password_refused: Vec::new(),
        };
        let undecided = Undecided {
            nodes: vec![1, 2],
            diverged: false,
        };
        let plan = Plan {
            undecided: Some(undecided),
            ..Plan::wait(false, "cannot tell".to_owned())
        };
        let condition = readiness(
            ("shop", "cache"),
            &nodes(),
            (3, 3, true),
            &observation,
            &plan,
        );
        assert!(!condition.status);
        assert_eq!(condition.reason, NEWEST_DATA_UNKNOWN);
        for needed in [
            "kubectl annotate -n shop redissentinel cache redis.operator-kit.io/keep-data-of=",
            "\"cache-node-1/12345678\" (offset 0, 12 keys)",
            "\"cache-node-2/fedcba09\" (offset 0, 10 keys)",
        ] {
            assert!(condition.message.contains(needed), "{}", condition.message);
        }
        assert!(!condition.message.contains("cache-node-0"));

        let diverged = Plan {
            undecided: Some(Undecided {
                nodes: vec![1, 2],
                diverged: true,
            }),
            ..plan
        };
        let condition = readiness(
            ("shop", "cache"),
            &nodes(),
            (3, 3, true),
            &observation,
            &diverged,
        );
        assert_eq!(condition.reason, HISTORY_DIVERGED);
    }

    fn observed(
        master: Option<&str>,
        switch: Option<events::Switch>,
        ready: bool,
    ) -> Observed<'static> {
        Observed {
            generation: Some(4),
            endpoint: "cache-master.shop.svc:6379".to_owned(),
            master: master.map(str::to_owned),
            switch,
            ready: if ready {
                ConditionUpdate::holds(READY, "Healthy", "fine")
            } else {
                ConditionUpdate::fails(READY, "Degraded", "not yet")
            },
            password_rotation: None,
        }
    }

    fn rotation(step: Step, failed: &[&str]) -> Rotation {
        let pods = crate::passwords::PodPasswords {
            operator: "operator".to_owned(),
            current: "old".to_owned(),
            previous: None,
        };
        Rotation {
            pods,
            step,
            converged: crate::passwords::Converged {
                changed: Vec::new(),
                failed: failed.iter().map(|failure| (*failure).to_owned()).collect(),
                unreachable: 0,
            },
            old_password_remaining: None,
        }
    }

    #[test]
    fn a_person_is_told_once_when_a_choice_becomes_theirs() {
        assert!(person_needed(HISTORY_DIVERGED, Some("Healthy"), None));
        assert!(person_needed(PASSWORD_REFUSED, None, Some("Degraded")));
        // Already in the status, or already seen by this operator (the status was stale).
        assert!(!person_needed(
            HISTORY_DIVERGED,
            Some(HISTORY_DIVERGED),
            None
        ));
        assert!(!person_needed(
            NEWEST_DATA_UNKNOWN,
            None,
            Some(NEWEST_DATA_UNKNOWN)
        ));
        // Reasons the operator heals on its own are no person's business.
        assert!(!person_needed("Degraded", Some("Healthy"), None));
    }

    #[test]
    fn a_set_answers_when_any_process_does_even_refusing_the_password() {
        let silent = Observation {
            redis: vec![None, None, None],
            sentinels: vec![None, None, None],
            password_refused: Vec::new(),
        };
        assert!(nothing_answered(&silent));
        let refusing = Observation {
            password_refused: vec!["cache-node-1".to_owned()],
            ..silent.clone()
        };
        assert!(!nothing_answered(&refusing));
    }

    #[test]
    fn the_next_check_follows_health_failovers_and_rotations() {
        assert_eq!(next_check(true, false, None, 0), CHECK_INTERVAL);
        assert_eq!(next_check(false, false, None, 0), RECHECK_INTERVAL);
        assert_eq!(next_check(false, true, None, 0), FAILOVER_RECHECK_INTERVAL);
        let steady = rotation(Step::Steady, &[]);
        assert_eq!(next_check(true, false, Some(&steady), 0), CHECK_INTERVAL);
        let adding = rotation(
            Step::AddNew {
                next: crate::passwords::PodPasswords {
                    operator: "operator".to_owned(),
                    current: "new".to_owned(),
                    previous: Some("old".to_owned()),
                },
            },
            &[],
        );
        assert_eq!(next_check(true, false, Some(&adding), 0), RECHECK_INTERVAL);
        // An overlap is checked again when its grace ends, at most a healthy interval later.
        let overlap = |left: u64| Rotation {
            old_password_remaining: Some(Duration::from_secs(left)),
            ..rotation(Step::Overlap, &[])
        };
        assert_eq!(
            next_check(true, false, Some(&overlap(7)), 0),
            Duration::from_secs(7)
        );
        assert_eq!(
            next_check(true, false, Some(&overlap(600)), 0),
            CHECK_INTERVAL
        );
        // A failover still comes first.
        assert_eq!(
            next_check(false, true, Some(&overlap(7)), 0),
            FAILOVER_RECHECK_INTERVAL
        );
        // Nothing answers: 3 s, 6 s, 12 s … up to 5 min, whatever else is going on.
        let unreachable: Vec<u64> = (1..=9)
            .map(|count| next_check(false, false, Some(&overlap(7)), count).as_secs())
            .collect();
        assert_eq!(unreachable, [3, 6, 12, 24, 48, 96, 192, 300, 300]);
        assert_eq!(
            next_check(false, false, None, u32::MAX),
            UNREACHABLE_RECHECK_MAX
        );
    }

    #[test]
    fn the_status_follows_the_master_and_tells_the_last_failover() {
        let at = |seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        let previous = RedisSentinelStatus {
            master: Some("cache-node-0".to_owned()),
            ..RedisSentinelStatus::default()
        };
        // Nothing moved: the master stays, no failover, Ready.
        let status = next_status(
            &previous,
            observed(Some("cache-node-0"), None, true),
            at(100),
        );
        assert_eq!(status.master.as_deref(), Some("cache-node-0"));
        assert_eq!(status.last_failover, None);
        assert_eq!(status.phase, Phase::Ready);
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.conditions[0].observed_generation, Some(4));

        // The sentinels announced a switch: it is the last failover, with its duration.
        let switch = events::Switch {
            from: "cache-node-0".to_owned(),
            to: "cache-node-1".to_owned(),
            started_at: Some(at(100)),
            finished_at: at(100) + Duration::from_millis(6_320),
        };
        let status = next_status(
            &previous,
            observed(Some("cache-node-1"), Some(switch), false),
            at(107),
        );
        let failover = status.last_failover.clone().unwrap();
        assert_eq!(
            (failover.from.as_str(), failover.to.as_str()),
            ("cache-node-0", "cache-node-1")
        );
        assert_eq!(failover.duration_ms, Some(6_320));
        assert_eq!(status.phase, Phase::Pending);

        // A switch whose start was not heard: when it happened, and no duration.
        let unheard = events::Switch {
            from: "cache-node-0".to_owned(),
            to: "cache-node-1".to_owned(),
            started_at: None,
            finished_at: at(150),
        };
        let status = next_status(
            &previous,
            observed(Some("cache-node-1"), Some(unheard), true),
            at(151),
        );
        let failover = status.last_failover.unwrap();
        assert_eq!(
            (failover.started_at.as_str(), failover.duration_ms),
            ("1970-01-01T00:02:30Z", None)
        );

        // The master moved while nobody listened: inferred, without a duration.
        let status = next_status(
            &previous,
            observed(Some("cache-node-2"), None, true),
            at(200),
        );
        let failover = status.last_failover.unwrap();
        assert_eq!(
            (failover.to.as_str(), failover.duration_ms),
            ("cache-node-2", None)
        );
        assert_eq!(failover.started_at, "1970-01-01T00:03:20Z");

        // No master known (pods refuse the password): the recorded one is kept, untouched.
        let status = next_status(&previous, observed(None, None, false), at(300));
        assert_eq!(status.master.as_deref(), Some("cache-node-0"));
        assert_eq!(status.last_failover, None);
    }

    #[test]
    fn a_refused_password_is_told_before_anything_else() {
        let observation = Observation {
            redis: vec![None; 3],
            sentinels: vec![None; 3],
            password_refused: vec!["cache-node-0".to_owned(), "cache-node-2".to_owned()],
        };
        let plan = Plan::wait(false, "pods refuse the password".to_owned());
        let condition = readiness(
            ("shop", "cache"),
            &nodes(),
            (1, 3, false),
            &observation,
            &plan,
        );
        assert!(!condition.status);
        assert_eq!(condition.reason, PASSWORD_REFUSED);
        assert!(
            condition
                .message
                .contains(r#"["cache-node-0", "cache-node-2"] refuse the password"#),
            "{}",
            condition.message
        );
        assert!(condition.message.contains("Put the previous value back"));
    }

    #[test]
    fn memory_comes_from_the_status_and_a_matching_annotation() {
        let observation = Observation {
            redis: vec![restarted(1, "aaaaaaaaaa"), restarted(1, "bbbbbbbbbb"), None],
            sentinels: vec![None; 3],
            password_refused: Vec::new(),
        };
        let mut resource: RedisSentinel = serde_json::from_value(json!({
            "apiVersion": "redis.operator-kit.io/v1beta1",
            "kind": "RedisSentinel",
            "metadata": { "name": "cache", "namespace": "shop", "annotations": {
                KEEP_DATA_OF: "cache-node-1/bbbbbbbb" } },
            "spec": { "kubernetesConfig": {} },
            "status": { "master": "cache-node-2", "phase": "Ready" },
        }))
        .expect("resource");
        assert_eq!(
            memory(&resource, &nodes(), &observation),
            Memory {
                last_master: Some(2),
                chosen: Some(1)
            }
        );
        resource
            .annotations_mut()
            .insert(KEEP_DATA_OF.to_owned(), "cache-node-1/aaaaaaaa".to_owned());
        assert_eq!(memory(&resource, &nodes(), &observation).chosen, None);
    }
}
