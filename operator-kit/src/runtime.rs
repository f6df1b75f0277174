//! The reconcile runtime: controllers over `kube_runtime::Controller`, run by an [`Operator`]
//! with leader election, an admin server and graceful shutdown.
//!
//! An author implements [`Reconciler`] for one custom resource kind, declares the child kinds
//! it owns on a [`Controller`], and adds the controller to an [`Operator`]. The runtime then
//! - reconciles at most `--concurrency` objects at once (never one object twice at once),
//! - retries a failed object with per-object exponential backoff that resets on success,
//!   except for errors classified [`ErrorClass::WaitForChange`] (an invalid spec), which wait
//!   for the object to change instead,
//! - turns every failure into a Warning event on the object (deduplicated) and a metric,
//! - reconciles only while it leads, keeping warm caches as a standby, and reconciles every
//!   object at once when it becomes the leader,
//! - keeps every watch alive through API server restarts and expired resource versions
//!   (see [`crate::watch`]); a failing watch holds up no other watch,
//! - on SIGTERM stops taking work, lets running reconciles finish within the grace period,
//!   releases the Lease and returns.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::{BoxFuture, join_all};
use futures::stream::BoxStream;
use kube::api::{Api, ApiResource, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::admin::{AdminError, AdminServer, Health, Metrics, ReconcileResult};
use crate::backoff::{BackoffPolicy, FailureCounts};
use crate::children::{ChildError, Children, NAME_LABEL};
use crate::config::OperatorArgs;
use crate::leader::{self, LeaderError};
use crate::rbac::Permissions;
use crate::scope::{self, ObjectScope};
use crate::watch::WatchName;

/// How the runtime treats a failed reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying: an API error, a timeout, a dependency not ready yet. Retried with
    /// per-object exponential backoff.
    Transient,
    /// Retrying cannot help until the object changes (an invalid spec, a missing reference the
    /// operator is told about by a watch). The object waits for its next change.
    WaitForChange,
}

/// What the runtime needs to know about a reconciler's errors.
pub trait ReconcileError: std::error::Error + Send + Sync + 'static {
    /// Whether retrying can help. Transient by default.
    fn class(&self) -> ErrorClass {
        ErrorClass::Transient
    }

    /// A CamelCase reason for the Warning event, such as `InvalidSpec`.
    fn reason(&self) -> &str {
        "ReconcileFailed"
    }
}

/// The logic of one controller: make the cluster match one object's spec.
pub trait Reconciler: Send + Sync + 'static {
    /// The custom resource kind this controller reconciles.
    /// Namespaced (`#[kube(namespaced)]`) or cluster-scoped (without it).
    type Resource: Resource<DynamicType = (), Scope: ObjectScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static;
    /// The reconciler's error type.
    type Error: ReconcileError;

    /// Brings the cluster in line with `object`. Called whenever the object or one of its
    /// children changes, and when the returned [`Action`] asks for it.
    fn reconcile(
        &self,
        object: Arc<Self::Resource>,
        context: &Context,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send;

    /// Cleans up what owner references cannot (state outside the cluster) before the object
    /// is deleted. Only called for controllers built with [`Controller::finalizer`].
    fn cleanup(
        &self,
        object: Arc<Self::Resource>,
        context: &Context,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send {
        let _ = (object, context);
        async { Ok(Action::await_change()) }
    }

    /// Drops what the reconciler keeps in memory about an object that is gone (tasks,
    /// connections, metric series), so that a long-running operator does not grow with every
    /// object ever created. Called when the watch reports the deletion; a deletion that happens
    /// while the watch is down and recovering is not reported, so keep such state small.
    fn deleted(&self, object: &ObjectRef<Self::Resource>, context: &Context) {
        let _ = (object, context);
    }
}

/// Errors of the runtime around a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError<E: std::error::Error + 'static> {
    /// The reconciler failed.
    #[error(transparent)]
    Reconcile(E),
    /// Adding or removing the finalizer, or the cleanup, failed.
    #[error("failed to run the finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<E>>),
}

impl<E: ReconcileError> RuntimeError<E> {
    fn inner(&self) -> Option<&E> {
        match self {
            Self::Reconcile(error) => Some(error),
            Self::Finalizer(error) => match error.as_ref() {
                finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => {
                    Some(error)
                }
                _ => None,
            },
        }
    }

    fn class(&self) -> ErrorClass {
        self.inner()
            .map_or(ErrorClass::Transient, ReconcileError::class)
    }

    fn reason(&self) -> &str {
        self.inner()
            .map_or("FinalizerFailed", ReconcileError::reason)
    }
}

/// Errors of running an operator.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The admin server could not start.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// This replica lost leadership and stopped.
    #[error(transparent)]
    Leader(#[from] LeaderError),
}

/// What a reconcile can use besides its object: one per controller, shared by all reconciles.
pub struct Context {
    client: Client,
    metrics: Arc<Metrics>,
    field_manager: String,
    selector_labels: BTreeMap<String, String>,
    owned_kinds: Vec<ApiResource>,
    recorder: Recorder,
}

impl Context {
    /// The Kubernetes client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The operator's metrics, for a controller's own counters and histograms
    /// ([`Metrics::count`], [`Metrics::observe`]), served on `/metrics` with the runtime's.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The field manager of every write the operator makes.
    pub fn field_manager(&self) -> &str {
        &self.field_manager
    }

    /// The children of `owner` (see [`Children`]); pruning covers the controller's owned kinds.
    pub fn children<K>(&self, owner: &K) -> Result<Children, ChildError>
    where
        K: Resource<DynamicType = (), Scope: ObjectScope>,
    {
        Children::new(
            self.client.clone(),
            &self.field_manager,
            &self.selector_labels,
            owner,
            self.owned_kinds.clone(),
        )
    }

    /// Writes `status` to the object's status subresource with server-side apply — only when
    /// it differs from the status the object already has. Returns whether it wrote.
    pub async fn patch_status<K, S>(&self, object: &K, status: &S) -> Result<bool, kube::Error>
    where
        K: Resource<DynamicType = (), Scope: ObjectScope>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
        S: Serialize,
    {
        let desired = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
        let current = serde_json::to_value(object).map_err(kube::Error::SerdeError)?;
        if current.get("status") == Some(&desired) {
            return Ok(false);
        }
        let api = scope::api::<K>(self.client.clone(), object.namespace().as_deref());
        let patch =
            json!({ "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": desired });
        api.patch_status(
            &object.name_any(),
            &PatchParams::apply(&self.field_manager).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(true)
    }

    /// Publishes an event about `object` (events.k8s.io, aggregated into series).
    pub async fn publish<K>(
        &self,
        object: &K,
        event_type: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_: event_type,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            warn!(%error, reason, "failed to publish event");
        }
    }
}

/// Adds one watch (an owned kind or a watched kind) to the kube-runtime controller.
type OwnRegistration<K> =
    Box<dyn FnOnce(controller::Controller<K>, &WatchSetup) -> controller::Controller<K> + Send>;

/// What a controller's watches are built from.
struct WatchSetup {
    client: Client,
    namespace: Option<String>,
    controller: String,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl WatchSetup {
    /// An API handle of `K` in the watched namespace, or in all namespaces (always, for a
    /// cluster-scoped kind).
    fn api<K>(&self) -> Api<K>
    where
        K: Resource,
        K::Scope: ObjectScope,
        K::DynamicType: Default,
    {
        scope::api(self.client.clone(), self.namespace.as_deref())
    }

    /// A watch of `K` that recovers on its own (see [`crate::watch`]).
    fn recovering<K, T, S>(
        &self,
        start: impl Fn(watcher::Config) -> S + Send + 'static,
    ) -> BoxStream<'static, Result<watcher::Event<T>, watcher::Error>>
    where
        K: Resource<DynamicType = ()>,
        T: Send + 'static,
        S: futures::Stream<Item = Result<watcher::Event<T>, watcher::Error>> + Send + 'static,
    {
        crate::watch::recovering(
            WatchName::of::<K>(&self.controller),
            self.health.clone(),
            self.metrics.clone(),
            start,
        )
        .boxed()
    }
}

/// One controller: a [`Reconciler`] and the child kinds it owns.
pub struct Controller<R: Reconciler> {
    name: String,
    reconciler: R,
    owns: Vec<OwnRegistration<R::Resource>>,
    owned_kinds: Vec<ApiResource>,
    finalizer: Option<String>,
    backoff: BackoffPolicy,
    event_dedup_window: Duration,
    permissions: Permissions,
    selector_labels: BTreeMap<String, String>,
}

/// The group and plural of `K`, as RBAC names them.
fn rbac_name<K: Resource<DynamicType = ()>>() -> (String, String) {
    (K::group(&()).into_owned(), K::plural(&()).into_owned())
}

impl<R: Reconciler> Controller<R> {
    /// A controller named `name`: the `controller` label of its metrics, and the
    /// `app.kubernetes.io/name` label of its children, in their selectors (see
    /// [`Controller::selector_labels`]). Choose it once: a workload's selector cannot change.
    pub fn new(name: &str, reconciler: R) -> Self {
        // Its own resource: read and watched, its status written, and it owns children with
        // `blockOwnerDeletion`, which the API server allows only to who may update its
        // finalizers. Events about it are published.
        let (group, plural) = rbac_name::<R::Resource>();
        let mut permissions = Permissions::default();
        permissions.allow(&group, &plural, &["get", "list", "watch"]);
        permissions.allow(&group, &format!("{plural}/status"), &["get", "patch"]);
        permissions.allow(&group, &format!("{plural}/finalizers"), &["update"]);
        permissions.allow("events.k8s.io", "events", &["create", "patch"]);
        Self {
            name: name.to_owned(),
            reconciler,
            owns: Vec::new(),
            owned_kinds: Vec::new(),
            finalizer: None,
            backoff: BackoffPolicy::default(),
            event_dedup_window: Duration::from_secs(300),
            permissions,
            selector_labels: BTreeMap::from([(NAME_LABEL.to_owned(), name.to_owned())]),
        }
    }

    /// Replaces the labels that, with `app.kubernetes.io/instance`, tell the children of one
    /// object apart (by default `app.kubernetes.io/name` set to the controller's name). They
    /// are written in code, never derived from the operator's name, so that renaming the
    /// operator changes no selector ([`Children::selector_labels`]). Set them to keep the
    /// selectors of workloads an earlier release made: ours keep
    /// `app.kubernetes.io/name` and `managed-by` as the operator's name before this existed.
    pub fn selector_labels<'a>(
        mut self,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        self.selector_labels = labels
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        self
    }

    /// Declares what the reconciler does with a kind besides owning or watching it — reading a
    /// Secret, labelling pods — so that `--print-rbac` grants it.
    pub fn uses<K: Resource<DynamicType = ()>>(self, verbs: &[&str]) -> Self {
        let (group, plural) = rbac_name::<K>();
        self.uses_resource(&group, &plural, verbs)
    }

    /// [`Controller::uses`] for a resource without a Rust type here (an OpenShift Route, a
    /// subresource such as `pods/portforward`): its API group (`""` for the core group), its
    /// plural name, and the verbs.
    pub fn uses_resource(mut self, group: &str, resource: &str, verbs: &[&str]) -> Self {
        self.permissions.allow(group, resource, verbs);
        self
    }

    /// What this controller needs to be allowed (see [`crate::rbac`]).
    pub fn permissions(&self) -> &Permissions {
        &self.permissions
    }

    /// Declares a child kind: changes to children of this kind trigger a reconcile of their
    /// owner, and [`Children::prune`] deletes children of this kind that are no longer desired.
    /// A namespaced resource owns namespaced children in its own namespace; a cluster-scoped one
    /// may own namespaced children in any namespace and cluster-scoped ones.
    pub fn owns<C>(mut self) -> Self
    where
        C: Resource<DynamicType = (), Scope: ObjectScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        self.owned_kinds.push(ApiResource::erase::<C>(&()));
        // Applied (server-side apply creates with a patch, which needs create as well), pruned,
        // and watched.
        let (group, plural) = rbac_name::<C>();
        self.permissions.allow(
            &group,
            &plural,
            &["get", "list", "watch", "create", "patch", "delete"],
        );
        self.owns.push(Box::new(|controller, setup| {
            // Children are watched by metadata only: their owner references are all we need.
            let api = setup.api::<PartialObjectMeta<C>>();
            let children = setup
                .recovering::<C, _, _>(move |config| watcher(api.clone(), config))
                .touched_objects();
            // Not kube-runtime's `owns_stream`: it names a cluster-scoped owner with the
            // child's namespace. The store still finds the owner, but the queue takes that name
            // for another object than the owner's own watch queues, so two reconciles of one
            // owner could run at once (and its failures be counted apart).
            controller.watches_stream(children, |child| owners_of::<R::Resource>(child.meta()))
        }));
        self
    }

    /// Watches the metadata of another kind (its data is never loaded into memory) and
    /// reconciles the objects `mapper` names when one changes — for example the resources that
    /// refer to a changed Secret. `mapper` gets the changed object and the controller's cache of
    /// its own resources.
    pub fn watches_metadata<C, F>(mut self, mapper: F) -> Self
    where
        C: Resource<DynamicType = (), Scope: ObjectScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
        F: Fn(&PartialObjectMeta<C>, &Store<R::Resource>) -> Vec<ObjectRef<R::Resource>>
            + Send
            + Sync
            + 'static,
    {
        let (group, plural) = rbac_name::<C>();
        self.permissions.allow(&group, &plural, &["list", "watch"]);
        self.owns.push(Box::new(move |controller, setup| {
            let api = setup.api::<PartialObjectMeta<C>>();
            let store = controller.store();
            let objects = setup
                .recovering::<C, _, _>(move |config| watcher(api.clone(), config))
                .touched_objects();
            controller.watches_stream(objects, move |object| mapper(&object, &store))
        }));
        self
    }

    /// Reconciles the objects `trigger` names, for changes the API server does not see — for
    /// example a data plane's own notifications (a failover reported by Redis Sentinel).
    pub fn reconcile_on<S>(mut self, trigger: S) -> Self
    where
        S: futures::Stream<Item = ObjectRef<R::Resource>> + Send + 'static,
    {
        self.owns.push(Box::new(move |controller, _| {
            controller.reconcile_on(trigger)
        }));
        self
    }

    /// Manages a finalizer of this name on every object, so that [`Reconciler::cleanup`] runs
    /// before the object is deleted (built on kube-runtime's finalizer helper).
    pub fn finalizer(mut self, name: &str) -> Self {
        self.finalizer = Some(name.to_owned());
        // The finalizer is added and removed with a JSON patch of the resource.
        let (group, plural) = rbac_name::<R::Resource>();
        self.permissions.allow(&group, &plural, &["patch"]);
        self
    }

    /// Sets the retry backoff of failed reconciles.
    pub fn backoff(mut self, policy: BackoffPolicy) -> Self {
        self.backoff = policy;
        self
    }

    fn into_task(self, environment: Environment) -> BoxFuture<'static, ()> {
        let Environment {
            client,
            args,
            operator_name,
            metrics,
            health,
            health_ready,
            leading,
            shutdown,
        } = environment;
        let setup = WatchSetup {
            client: client.clone(),
            namespace: args.watch_namespace.clone(),
            controller: self.name.clone(),
            health,
            metrics: metrics.clone(),
        };
        let (store, writer) = reflector::store::<R::Resource>();
        let reporter = Reporter {
            controller: operator_name.clone(),
            instance: args.identity.clone(),
        };
        metrics.register(&self.name, args.concurrency);
        let shared = Arc::new(Shared {
            name: self.name,
            reconciler: self.reconciler,
            context: Context {
                metrics: metrics.clone(),
                recorder: Recorder::new(client.clone(), reporter),
                client,
                field_manager: operator_name.clone(),
                selector_labels: self.selector_labels,
                owned_kinds: self.owned_kinds,
            },
            finalizer: self.finalizer,
            backoff: self.backoff,
            failures: FailureCounts::default(),
            metrics,
            leading: leading.clone(),
            published: Mutex::new(HashMap::new()),
            event_dedup_window: self.event_dedup_window,
        });
        let api = setup.api::<R::Resource>();
        let forgetting = shared.clone();
        let mut deletions = Deletions::default();
        let objects = setup
            .recovering::<R::Resource, _, _>(move |config| watcher(api.clone(), config))
            .reflect(writer)
            .inspect(move |event| {
                if let Ok(event) = event {
                    for gone in deletions.observe(event) {
                        forgetting.deleted(&gone);
                    }
                }
            })
            .applied_objects();
        let mut runtime_controller = controller::Controller::for_stream(objects, store.clone())
            .with_config(controller::Config::default().concurrency(args.concurrency));
        for registration in self.owns {
            runtime_controller = registration(runtime_controller, &setup);
        }
        let became_leader = futures::stream::unfold(leading, |mut leading| async move {
            loop {
                leading.changed().await.ok()?;
                if *leading.borrow_and_update() {
                    return Some(((), leading));
                }
            }
        });
        let mut shutdown_signal = shutdown.clone();
        let stream = runtime_controller
            .reconcile_all_on(became_leader)
            .graceful_shutdown_on(async move {
                let _ = shutdown_signal.wait_for(|stop| *stop).await;
            })
            .run(reconcile::<R>, error_policy::<R>, shared.clone());
        Box::pin(async move {
            let ready = async move {
                if store.wait_until_ready().await.is_ok() {
                    health_ready.send_modify(|count| *count += 1);
                }
            };
            let drive = stream.for_each(|result| {
                if let Err(error) = result {
                    match error {
                        controller::Error::ReconcilerFailed(..) => {}
                        // A reconcile queued for an object deleted meanwhile: normal.
                        controller::Error::ObjectNotFound(object) => {
                            debug!(controller = %shared.name, %object, "the object is gone; nothing to reconcile")
                        }
                        error => {
                            warn!(controller = %shared.name, %error, "controller stream error")
                        }
                    }
                }
                std::future::ready(())
            });
            futures::join!(ready, drive);
        })
    }
}

/// The objects of kind `K` among the owners of a child with metadata `child`: in the child's
/// namespace when `K` is namespaced (owner references never cross namespaces), cluster-wide when
/// it is cluster-scoped.
fn owners_of<K>(child: &kube::api::ObjectMeta) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()>,
    K::Scope: ObjectScope,
{
    let (api_version, kind) = (K::api_version(&()), K::kind(&()));
    child
        .owner_references
        .iter()
        .flatten()
        .filter(|owner| owner.api_version == api_version && owner.kind == kind)
        .map(|owner| {
            let owner_ref = ObjectRef::new(&owner.name);
            match &child.namespace {
                Some(namespace) if scope::is_namespaced::<K>() => owner_ref.within(namespace),
                _ => owner_ref,
            }
        })
        .collect()
}

/// The part of the operator every controller task gets.
struct Environment {
    client: Client,
    args: OperatorArgs,
    operator_name: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    health_ready: Arc<watch::Sender<usize>>,
    leading: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
}

/// Tells, from a watch's events, which objects were deleted: each `Delete`, and after a
/// re-list (the watch expired or failed, and deletions meanwhile were never sent) every object
/// known before that the new list lacks — as client-go's informers do.
struct Deletions<K: Resource<DynamicType = ()>> {
    known: std::collections::HashSet<ObjectRef<K>>,
    relisted: Option<std::collections::HashSet<ObjectRef<K>>>,
}

impl<K: Resource<DynamicType = ()>> Default for Deletions<K> {
    fn default() -> Self {
        Self {
            known: std::collections::HashSet::new(),
            relisted: None,
        }
    }
}

impl<K: Resource<DynamicType = ()>> Deletions<K> {
    /// Takes one event; returns the objects it shows deleted.
    fn observe(&mut self, event: &watcher::Event<K>) -> Vec<ObjectRef<K>> {
        match event {
            watcher::Event::Apply(object) => {
                self.known.insert(ObjectRef::from_obj(object));
                Vec::new()
            }
            watcher::Event::Delete(object) => {
                let key = ObjectRef::from_obj(object);
                self.known.remove(&key);
                vec![key]
            }
            watcher::Event::Init => {
                self.relisted = Some(std::collections::HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(object) => {
                if let Some(relisted) = &mut self.relisted {
                    relisted.insert(ObjectRef::from_obj(object));
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let relisted = self.relisted.take().unwrap_or_default();
                let gone = self.known.difference(&relisted).cloned().collect();
                self.known = relisted;
                gone
            }
        }
    }
}

/// An object and the message of a Warning event published about it.
type PublishedKey<R> = (ObjectRef<<R as Reconciler>::Resource>, String);

/// The future of one wrapped reconcile.
type ReconcileFuture<R> =
    Pin<Box<dyn Future<Output = Result<Action, RuntimeError<<R as Reconciler>::Error>>> + Send>>;

/// State shared by the reconciles of one controller.
struct Shared<R: Reconciler> {
    name: String,
    reconciler: R,
    context: Context,
    finalizer: Option<String>,
    backoff: BackoffPolicy,
    failures: FailureCounts<ObjectRef<R::Resource>>,
    metrics: Arc<Metrics>,
    leading: watch::Receiver<bool>,
    published: Mutex<HashMap<PublishedKey<R>, Instant>>,
    event_dedup_window: Duration,
}

impl<R: Reconciler> Shared<R> {
    /// Forgets a deleted object: its failure count, and whatever its reconciler keeps.
    fn deleted(&self, key: &ObjectRef<R::Resource>) {
        info!(object = %key, "the object was deleted; forgetting it");
        self.failures.record_success(key);
        self.reconciler.deleted(key, &self.context);
    }

    /// Whether this failure was already published as an event within the dedup window.
    fn already_published(&self, key: ObjectRef<R::Resource>, message: &str) -> bool
    where
        ObjectRef<R::Resource>: Hash + Eq,
    {
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        published.retain(|_, at| now.duration_since(*at) < self.event_dedup_window);
        published.insert((key, message.to_owned()), now).is_some()
    }
}

fn reconcile<R: Reconciler>(
    object: Arc<R::Resource>,
    shared: Arc<Shared<R>>,
) -> ReconcileFuture<R> {
    Box::pin(async move {
        // A standby keeps its caches warm but leaves the cluster alone; it reconciles every
        // object once it becomes the leader (see `reconcile_all_on` above).
        if !*shared.leading.borrow() {
            return Ok(Action::await_change());
        }
        let key = ObjectRef::from_obj(&*object);
        let span = info_span!("reconcile", controller = %shared.name, object = %key);
        // Losing the Lease stops this reconcile at once, wherever it is — even inside a
        // request that hangs — as controller-runtime cancels its context: a standby may
        // already lead, and a write from here after that would be a second leader's.
        let mut leading = shared.leading.clone();
        let lost = async move {
            if leading.wait_for(|leading| !*leading).await.is_err() {
                // No leader election: nothing can be lost.
                std::future::pending::<()>().await;
            }
        };
        let work = async {
            shared.metrics.reconcile_started(&shared.name);
            let started = Instant::now();
            let result = match &shared.finalizer {
                None => shared
                    .reconciler
                    .reconcile(object.clone(), &shared.context)
                    .await
                    .map_err(RuntimeError::Reconcile),
                Some(name) => {
                    let api = scope::api::<R::Resource>(
                        shared.context.client.clone(),
                        object.namespace().as_deref(),
                    );
                    finalizer(&api, name, object.clone(), |event| async {
                        match event {
                            finalizer::Event::Apply(object) => {
                                shared.reconciler.reconcile(object, &shared.context).await
                            }
                            finalizer::Event::Cleanup(object) => {
                                shared.reconciler.cleanup(object, &shared.context).await
                            }
                        }
                    })
                    .await
                    .map_err(|error| RuntimeError::Finalizer(Box::new(error)))
                }
            };
            let outcome = match &result {
                Ok(action) if action == &Action::await_change() => ReconcileResult::Success,
                Ok(_) => ReconcileResult::RequeueAfter,
                Err(_) => ReconcileResult::Error,
            };
            shared
                .metrics
                .reconcile_finished(&shared.name, outcome, started.elapsed());
            match &result {
                Ok(_) => shared.failures.record_success(&key),
                Err(error) => {
                    let message = error.to_string();
                    warn!(reason = error.reason(), error = %message, "reconcile failed");
                    if !shared.already_published(key.clone(), &message) {
                        let reason = error.reason().to_owned();
                        shared
                            .context
                            .publish(&*object, EventType::Warning, &reason, "Reconcile", message)
                            .await;
                    }
                }
            }
            result
        };
        async {
            tokio::select! {
                result = work => result,
                () = lost => {
                    warn!("leadership lost; the reconcile was stopped where it was");
                    Ok(Action::await_change())
                }
            }
        }
        .instrument(span)
        .await
    })
}

fn error_policy<R: Reconciler>(
    object: Arc<R::Resource>,
    error: &RuntimeError<R::Error>,
    shared: Arc<Shared<R>>,
) -> Action {
    let failures = shared
        .failures
        .record_failure(ObjectRef::from_obj(&*object));
    shared
        .metrics
        .set_queue_depth(&shared.name, shared.failures.failing());
    match error.class() {
        ErrorClass::WaitForChange => Action::await_change(),
        ErrorClass::Transient => Action::requeue(shared.backoff.delay(failures)),
    }
}

/// Stops a running [`Operator`] as SIGTERM would.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Asks the operator to shut down gracefully.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

type Task = Box<dyn FnOnce(Environment) -> BoxFuture<'static, ()> + Send>;

/// An operator process: its controllers, leader election, admin server and shutdown.
pub struct Operator {
    name: String,
    client: Client,
    args: OperatorArgs,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Arc<watch::Sender<bool>>,
    tasks: Vec<Task>,
    permissions: Permissions,
}

impl Operator {
    /// An operator named `name`: its field manager, event reporter and default Lease name.
    pub fn new(name: &str, client: Client, args: OperatorArgs) -> Self {
        Self {
            name: name.to_owned(),
            client,
            args,
            metrics: Arc::default(),
            health: Arc::default(),
            shutdown: Arc::new(watch::channel(false).0),
            tasks: Vec::new(),
            permissions: Permissions::default(),
        }
    }

    /// An operator whose client is built from `config` and counts its requests, reported as
    /// `rest_client_requests_total{method}` on `/metrics`.
    pub fn from_config(
        name: &str,
        config: kube::Config,
        args: OperatorArgs,
    ) -> Result<Self, kube::Error> {
        let (client, counter) = crate::client::counted_client(config)?;
        let operator = Self::new(name, client, args);
        operator.metrics.count_requests(counter);
        Ok(operator)
    }

    /// Adds a controller.
    pub fn with_controller<R: Reconciler>(mut self, controller: Controller<R>) -> Self {
        self.permissions.merge(controller.permissions());
        self.tasks.push(Box::new(move |environment| {
            controller.into_task(environment)
        }));
        self
    }

    /// What the operator's controllers need to be allowed, without leader election's Lease
    /// (see [`crate::rbac`]).
    pub fn permissions(&self) -> &Permissions {
        &self.permissions
    }

    /// The operator's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The operator's health, as `/readyz` reports it.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// A handle that shuts the operator down gracefully, for embedding and tests.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Runs until SIGTERM, SIGINT or [`ShutdownHandle::shutdown`], or until leadership is lost.
    pub async fn run(self) -> Result<(), OperatorError> {
        let Self {
            name,
            client,
            args,
            metrics,
            health,
            shutdown,
            tasks,
            permissions: _,
        } = self;
        let admin = AdminServer::bind(args.admin_address, metrics.clone(), health.clone()).await?;
        if let Some(address) = admin.local_address() {
            info!(%address, "admin server listening");
        }
        tokio::spawn(admin.serve(shutdown.subscribe()));
        tokio::spawn(shutdown_on_signal(shutdown.clone()));

        let leader_config = args.leader_election_config(&name);
        let (leading, leading_receiver) = watch::channel(leader_config.is_none());
        let leader_task = leader_config.map(|config| {
            let lease = config.lease_name.clone();
            let metrics = metrics.clone();
            let mut observed = leading_receiver.clone();
            tokio::spawn(async move {
                loop {
                    metrics.set_leader(&lease, *observed.borrow_and_update());
                    if observed.changed().await.is_err() {
                        return;
                    }
                }
            });
            let (client, stop) = (client.clone(), shutdown.clone());
            tokio::spawn(async move {
                let result = leader::run(client, config, leading, stop.subscribe()).await;
                if let Err(error) = &result {
                    error!(%error, "stopping: leadership lost");
                    stop.send_replace(true);
                }
                result
            })
        });

        let controller_count = tasks.len();
        let health_ready = Arc::new(watch::channel(0_usize).0);
        let mut ready_count = health_ready.subscribe();
        let ready_health = health.clone();
        tokio::spawn(async move {
            if ready_count
                .wait_for(|count| *count >= controller_count)
                .await
                .is_ok()
            {
                ready_health.set_ready();
            }
        });
        let controllers = join_all(tasks.into_iter().map(|task| {
            task(Environment {
                client: client.clone(),
                args: args.clone(),
                operator_name: name.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
                health_ready: health_ready.clone(),
                leading: leading_receiver.clone(),
                shutdown: shutdown.subscribe(),
            })
        }));
        // Once shutdown starts, running reconciles get the grace period to finish.
        let mut stopping = shutdown.subscribe();
        let grace = args.shutdown_grace();
        tokio::select! {
            _ = controllers => info!("controllers stopped"),
            _ = async {
                let _ = stopping.wait_for(|stop| *stop).await;
                tokio::time::sleep(grace).await;
            } => warn!(?grace, "shutdown grace period over; abandoning running reconciles"),
        }
        shutdown.send_replace(true);
        if let Some(task) = leader_task {
            match task.await {
                Ok(Err(error)) => return Err(error.into()),
                Ok(Ok(())) => {}
                Err(join_error) => warn!(%join_error, "leader election task failed"),
            }
        }
        Ok(())
    }
}

async fn shutdown_on_signal(shutdown: Arc<watch::Sender<bool>>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("received SIGINT; shutting down"),
        _ = terminate => info!("received SIGTERM; shutting down"),
    }
    shutdown.send_replace(true);
}

/// The command line every operator binary shares: `--print-crds` and [`OperatorArgs`].
#[derive(Clone, Debug, clap::Parser)]
pub struct OperatorCommand {
    /// Print the CustomResourceDefinitions and exit.
    #[arg(long)]
    pub print_crds: bool,
    /// Print the RBAC the operator needs (a ClusterRole, and a Role for leader election's
    /// Lease) and exit.
    #[arg(long)]
    pub print_rbac: bool,
    /// The runtime flags.
    #[command(flatten)]
    pub operator: OperatorArgs,
}

/// Where the client of `--print-rbac` would connect; it never does.
const OFFLINE_URL: &str = "https://127.0.0.1:9";

/// Errors of [`run_main`].
#[derive(Debug, thiserror::Error)]
pub enum MainError {
    /// The CRDs could not be rendered.
    #[error(transparent)]
    Crd(#[from] crate::crd::CrdError),
    /// The RBAC could not be rendered.
    #[error(transparent)]
    Rbac(#[from] crate::rbac::RbacError),
    /// No cluster configuration was found (kubeconfig or in-cluster).
    #[error("failed to load the cluster configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The client could not be built.
    #[error("failed to create a client: {0}")]
    Client(#[from] kube::Error),
    /// The operator stopped with an error.
    #[error(transparent)]
    Operator(#[from] OperatorError),
}

/// The whole `main` of an operator binary: parses [`OperatorCommand`] from the process
/// arguments; with `--print-crds` prints `crds` as YAML, otherwise sets up logging, connects to
/// the cluster of the kubeconfig (or the pod's service account) and runs the controllers that
/// `controllers` adds until shutdown. `name` is the operator's one name: its command name in
/// `--help`, its field manager, event reporter, `managed-by` label and default Lease name.
pub async fn run_main(
    name: &'static str,
    crds: &[k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition],
    controllers: impl FnOnce(Operator) -> Operator,
) -> Result<(), MainError> {
    run_main_with(name, crds, |operator, NoFlags {}| controllers(operator)).await
}

/// No flags of the operator's own, for [`run_main`].
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct NoFlags {}

/// [`run_main`] with flags of the operator's own: `A`'s flags (a `#[derive(clap::Args)]`
/// struct) are parsed next to [`OperatorArgs`] and shown by `--help`, and `controllers` gets
/// them.
///
/// ```no_run
/// # use operator_kit::{Operator, run_main_with};
/// /// Flags of this operator.
/// #[derive(clap::Args)]
/// struct Flags {
///     /// The image of the pods it makes.
///     #[arg(long, env = "GREETING_IMAGE", default_value = "nginx:1.27")]
///     image: String,
/// }
///
/// # async fn example() -> Result<(), operator_kit::MainError> {
/// run_main_with("greeting-operator", &[], |operator: Operator, flags: Flags| {
///     // Controller::new("greeting", GreetingReconciler { image: flags.image }) …
///     # let _ = flags.image;
///     operator
/// })
/// .await
/// # }
/// ```
pub async fn run_main_with<A: clap::Args>(
    name: &'static str,
    crds: &[k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition],
    controllers: impl FnOnce(Operator, A) -> Operator,
) -> Result<(), MainError> {
    let (command, flags) =
        parse_command::<A>(name, std::env::args_os()).unwrap_or_else(|error| error.exit());
    if command.print_crds {
        print!("{}", crate::crd::to_yaml(crds)?);
        return Ok(());
    }
    if command.print_rbac {
        // The controllers are only asked what they need: the client never connects.
        let offline = Client::try_from(kube::Config::new(http::Uri::from_static(OFFLINE_URL)))?;
        let operator = controllers(Operator::new(name, offline, command.operator), flags);
        print!("{}", crate::rbac::to_yaml(name, operator.permissions())?);
        return Ok(());
    }
    command.operator.init_logging();
    let config = kube::Config::infer().await?;
    controllers(
        Operator::from_config(name, config, command.operator)?,
        flags,
    )
    .run()
    .await?;
    Ok(())
}

/// Parses the command line of [`run_main_with`]: [`OperatorCommand`] and the operator's own
/// flags `A`, under the command name `name`.
fn parse_command<A: clap::Args>(
    name: &'static str,
    arguments: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<(OperatorCommand, A), clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let command = A::augment_args(OperatorCommand::command())
        .name(name)
        .about(format!(
            "{name}: a Kubernetes operator built with operator-kit"
        ));
    let matches = command.try_get_matches_from(arguments)?;
    Ok((
        OperatorCommand::from_arg_matches(&matches)?,
        A::from_arg_matches(&matches)?,
    ))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn object(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("shop".to_owned()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[derive(clap::Args)]
    struct Flags {
        /// An operator's own flag.
        #[arg(long, default_value = "nginx:1.27")]
        image: String,
    }

    #[test]
    fn a_childs_owner_is_named_as_its_own_watch_names_it() {
        use k8s_openapi::api::core::v1::Namespace;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let owner = |api_version: &str, kind: &str, name: &str| OwnerReference {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            ..OwnerReference::default()
        };
        let child = ObjectMeta {
            namespace: Some("shop".to_owned()),
            owner_references: Some(vec![
                owner("v1", "Namespace", "team"),
                owner("v1", "ConfigMap", "settings"),
                owner("apps/v1", "Deployment", "web"),
            ]),
            ..ObjectMeta::default()
        };
        // A cluster-scoped owner: without the child's namespace.
        assert_eq!(
            owners_of::<Namespace>(&child),
            [ObjectRef::<Namespace>::new("team")]
        );
        // A namespaced owner: in the child's namespace.
        assert_eq!(
            owners_of::<ConfigMap>(&child),
            [ObjectRef::<ConfigMap>::new("settings").within("shop")]
        );
    }

    #[test]
    fn an_operators_own_flags_parse_next_to_the_runtime_flags() {
        let arguments = |list: &[&str]| {
            list.iter()
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
        };
        let (command, flags) = parse_command::<Flags>(
            "greeting-operator",
            arguments(&["greeting-operator", "--image=httpd:2", "--concurrency=2"]),
        )
        .unwrap();
        assert_eq!(flags.image, "httpd:2");
        assert_eq!(command.operator.concurrency, 2);
        let (command, flags) = parse_command::<Flags>(
            "greeting-operator",
            arguments(&["greeting-operator", "--print-crds"]),
        )
        .unwrap();
        assert!(command.print_crds);
        assert_eq!(flags.image, "nginx:1.27");
        let help = parse_command::<Flags>(
            "greeting-operator",
            arguments(&["greeting-operator", "--help"]),
        )
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
        assert!(
            help.contains("--image")
                && help.contains("--leader-election")
                && help.contains("greeting-operator"),
            "{help}"
        );
        assert!(parse_command::<NoFlags>("x", arguments(&["x", "--image=a"])).is_err());
    }

    #[test]
    fn deletions_are_told_from_delete_events_and_from_what_a_relist_lacks() {
        let mut deletions = Deletions::default();
        let names = |gone: Vec<ObjectRef<ConfigMap>>| -> Vec<String> {
            gone.into_iter().map(|key| key.name).collect()
        };
        // The first list.
        assert!(deletions.observe(&watcher::Event::Init).is_empty());
        for name in ["a", "b", "c"] {
            assert!(
                deletions
                    .observe(&watcher::Event::InitApply(object(name)))
                    .is_empty()
            );
        }
        assert!(deletions.observe(&watcher::Event::InitDone).is_empty());
        // Watched changes.
        assert!(
            deletions
                .observe(&watcher::Event::Apply(object("d")))
                .is_empty()
        );
        assert_eq!(
            names(deletions.observe(&watcher::Event::Delete(object("a")))),
            ["a"]
        );
        // The watch expired; b was deleted meanwhile, e created: the new list tells.
        deletions.observe(&watcher::Event::Init);
        for name in ["c", "d", "e"] {
            deletions.observe(&watcher::Event::InitApply(object(name)));
        }
        assert_eq!(names(deletions.observe(&watcher::Event::InitDone)), ["b"]);
        assert_eq!(
            names(deletions.observe(&watcher::Event::Delete(object("e")))),
            ["e"]
        );
    }
}
