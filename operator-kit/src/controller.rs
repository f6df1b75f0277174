//! [`Controller`]: one [`Reconciler`] and the kinds it owns and watches, run over
//! `kube_runtime::Controller` with backoff, events, metrics and leader awareness.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backoff::{BackoffPolicy, FailureCounts};
use crate::cache::{self, ChildCache, Joined, SharedWatches, WatchedObject};
use crate::children::NAME_LABEL;
use crate::config::OperatorArgs;
use crate::context::Context;
use crate::events::EventPublisher;
use crate::health::Health;
use crate::leader::LeaseFence;
use crate::metrics::{Metrics, ReconcileResult};
use crate::queue::{self, WorkQueue};
use crate::rbac::Permissions;
use crate::reconciler::{ErrorClass, Reconciler, RuntimeError};
use crate::scope::{self, ObjectScope};
use crate::watch::WatchName;

/// Where `kubectl apply` (client-side) keeps the object as last applied: dropped from the
/// controller's own objects before they are stored (see [`Reconciler::reconcile`]).
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

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
    /// The objects waiting for a worker: every trigger adds one.
    queue: Arc<WorkQueue>,
    /// What the watches of owned and cached kinds keep for [`Children`](crate::Children).
    cache: Arc<ChildCache>,
    /// The operator's cached watches, shared with its other controllers.
    watches: Arc<SharedWatches>,
    /// The controller's selector labels (see [`Controller::selector_labels`]).
    selector_labels: BTreeMap<String, String>,
    /// Turns true once every controller of the operator has listed its own objects: the
    /// watches of children start then (see [`start_after`]).
    primaries_listed: watch::Receiver<bool>,
}

/// How long the watches of children wait for the operator's own objects to be listed, and
/// reconciles (from the first) for those watches to list, at most: past it (a watch that
/// cannot list, for lack of a permission, say) everything goes on as if nothing were cached,
/// and reports its errors.
const CACHES_BOUND: Duration = Duration::from_secs(30);

/// `stream`, not polled (so its requests not sent) until `gate` turns true, or for at most
/// [`CACHES_BOUND`]. An operator started on many objects lists its own first: that is what
/// `/readyz` waits for, and on two cores the lists of 60,000 children sent at the same time
/// held it back (started on 10,000 `Redis`: ready after 6.6 s, 1.9 s with this; medians of 3).
fn start_after<T: Send + 'static>(
    mut gate: watch::Receiver<bool>,
    stream: BoxStream<'static, T>,
) -> BoxStream<'static, T> {
    futures::stream::once(async move {
        // A closed gate (the operator is stopping) opens it too.
        let _ = tokio::time::timeout(CACHES_BOUND, gate.wait_for(|open| *open)).await;
        stream
    })
    .flatten()
    .boxed()
}

/// What a cached watch keeps of each object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    /// Its metadata, watched as metadata only.
    Metadata,
    /// Its metadata and status.
    MetadataAndStatus,
}

/// The queue key of an object.
fn queue_key<K: Resource>(object: &ObjectRef<K>) -> String {
    queue::key(object.namespace.as_deref(), &object.name)
}

impl WatchSetup {
    /// Records in the work queue the objects a trigger names.
    fn queued<K: Resource>(&self) -> impl Fn(Vec<ObjectRef<K>>) -> Vec<ObjectRef<K>> + use<K> {
        let queue = self.queue.clone();
        move |objects| {
            let now = Instant::now();
            for object in &objects {
                queue.add(queue_key(object), now);
            }
            objects
        }
    }

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

    /// A watch of `C` (in the watched namespace, or everywhere; with `labels`, only the objects
    /// carrying them) whose objects, slimmed to what `keep` says, fill the [`ChildCache`]; the
    /// stream yields them to trigger on. When another controller of the operator asked for the
    /// same watch first, this one reads that watch's store and gets what it delivers, and no
    /// second watch is opened ([`SharedWatches`]).
    fn cached<C>(
        &self,
        keep: Keep,
        labels: Option<String>,
    ) -> (
        BoxStream<'static, Result<WatchedObject, watcher::Error>>,
        ApiResource,
    )
    where
        C: Resource<DynamicType = (), Scope: ObjectScope>,
    {
        let resource = ApiResource::erase::<C>(&());
        let namespace = self
            .namespace
            .as_deref()
            .filter(|_| scope::is_namespaced::<C>());
        let (api, metadata_api) = match namespace {
            Some(namespace) => (
                Api::<WatchedObject>::namespaced_with(self.client.clone(), namespace, &resource),
                Api::<PartialObjectMeta<DynamicObject>>::namespaced_with(
                    self.client.clone(),
                    namespace,
                    &resource,
                ),
            ),
            None => (
                Api::<WatchedObject>::all_with(self.client.clone(), &resource),
                Api::<PartialObjectMeta<DynamicObject>>::all_with(self.client.clone(), &resource),
            ),
        };
        let key = (
            (resource.api_version.clone(), resource.kind.clone()),
            namespace.map(str::to_owned),
            labels.clone(),
            keep == Keep::MetadataAndStatus,
        );
        let watch = match self.watches.join(key) {
            Joined::Lead(watch) => watch,
            Joined::Follow(store, objects) => {
                self.cache
                    .adopt(&resource, namespace.map(str::to_owned), store);
                return (objects.map(Ok).boxed(), resource);
            }
        };
        let store = watch.store.clone();
        self.cache
            .adopt(&resource, namespace.map(str::to_owned), store.clone());
        let start = move |config: watcher::Config| {
            let config = match &labels {
                Some(labels) => config.labels(labels),
                None => config,
            };
            match keep {
                // Only the metadata crosses the wire (the data of a Secret never does).
                Keep::Metadata => watcher(metadata_api.clone(), config)
                    .map_ok(cache::metadata_event)
                    .boxed(),
                Keep::MetadataAndStatus => watcher(api.clone(), config).boxed(),
            }
        };
        let objects = self
            .recovering::<C, _, _>(start)
            .inspect(move |event| {
                if let Ok(event) = event {
                    store.apply(event);
                }
            })
            .touched_objects()
            .inspect(move |object| {
                if let Ok(object) = object {
                    watch.hand_on(object);
                }
            })
            .boxed();
        (
            start_after(self.primaries_listed.clone(), objects),
            resource,
        )
    }

    /// The controller's selector labels as a label selector.
    fn selector(&self) -> String {
        crate::children::label_selector(&self.selector_labels)
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
    /// operator changes no selector ([`Children::selector_labels`](crate::Children::selector_labels)). Set them to keep the
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
    /// owner, and [`Children::prune`](crate::Children::prune) deletes children of this kind that are no longer desired.
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
            // The watch keeps each child's metadata and status in the cache (not its spec), so
            // that a converged child costs no request; its owner references name the owner.
            let (children, resource) = setup.cached::<C>(Keep::MetadataAndStatus, None);
            let queued = setup.queued();
            // Not kube-runtime's `owns_stream`: it names a cluster-scoped owner with the
            // child's namespace. The store still finds the owner, but the queue takes that name
            // for another object than the owner's own watch queues, so two reconciles of one
            // owner could run at once (and its failures be counted apart).
            controller.watches_stream_with(
                children,
                move |child| queued(owners_of::<R::Resource>(child.meta())),
                resource,
            )
        }));
        self
    }

    /// Keeps the metadata of the objects of kind `C` that carry the controller's selector labels
    /// in its cache, without triggering reconciles: for objects another controller makes from
    /// a template the operator wrote (a StatefulSet's pods and claims), which
    /// [`Children::own_labelled`](crate::Children::own_labelled) and
    /// [`Context::cached_metadata`](crate::Context::cached_metadata) then read from the cache
    /// rather than listing them on every reconcile.
    pub fn caches<C>(mut self) -> Self
    where
        C: Resource<DynamicType = (), Scope: ObjectScope> + Send + Sync + 'static,
    {
        let (group, plural) = rbac_name::<C>();
        self.permissions.allow(&group, &plural, &["list", "watch"]);
        self.owns.push(Box::new(|controller, setup| {
            let (objects, resource) = setup.cached::<C>(Keep::Metadata, Some(setup.selector()));
            controller.watches_stream_with(objects, |_| None::<ObjectRef<R::Resource>>, resource)
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
            let store = controller.store();
            // Kept in the cache too, for reads through it (see [`Context::get`]).
            let (objects, resource) = setup.cached::<C>(Keep::Metadata, None);
            let queued = setup.queued();
            controller.watches_stream_with(
                objects,
                move |object| {
                    let object = PartialObjectMeta::<C> {
                        types: None,
                        metadata: object.metadata,
                        _phantom: std::marker::PhantomData,
                    };
                    queued(mapper(&object, &store))
                },
                resource,
            )
        }));
        self
    }

    /// Reconciles the objects `trigger` names, for changes the API server does not see — for
    /// example a data plane's own notifications (a failover reported by Redis Sentinel).
    pub fn reconcile_on<S>(mut self, trigger: S) -> Self
    where
        S: futures::Stream<Item = ObjectRef<R::Resource>> + Send + 'static,
    {
        self.owns.push(Box::new(move |controller, setup| {
            let queued = setup.queued();
            controller.reconcile_on(trigger.map(move |object| {
                queued(vec![object.clone()]);
                object
            }))
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

    pub(crate) fn into_task(self, environment: Environment) -> BoxFuture<'static, ()> {
        let Environment {
            client,
            args,
            operator_name,
            metrics,
            health,
            health_ready,
            primaries_listed,
            leading,
            fence,
            shutdown,
            watches,
        } = environment;
        let queue = Arc::new(WorkQueue::default());
        let cache = Arc::new(ChildCache::default());
        metrics.register_queue(&self.name, queue.clone());
        let setup = WatchSetup {
            client: client.clone(),
            namespace: args.watch_namespace.clone(),
            controller: self.name.clone(),
            health,
            metrics: metrics.clone(),
            queue: queue.clone(),
            cache: cache.clone(),
            watches,
            selector_labels: self.selector_labels.clone(),
            primaries_listed: primaries_listed.clone(),
        };
        let (store, writer) = reflector::store::<R::Resource>();
        metrics.register(&self.name, args.concurrency);
        let shared = Arc::new(Shared {
            name: self.name,
            reconciler: self.reconciler,
            context: Context {
                metrics: metrics.clone(),
                events: EventPublisher::new(
                    client.clone(),
                    &operator_name,
                    args.identity.as_deref(),
                ),
                client,
                field_manager: operator_name.clone(),
                selector_labels: self.selector_labels,
                owned_kinds: self.owned_kinds,
                cache,
                fence,
            },
            finalizer: self.finalizer,
            backoff: self.backoff,
            failures: FailureCounts::default(),
            metrics,
            queue: queue.clone(),
            leading: leading.clone(),
            published: Mutex::new(HashMap::new()),
            event_dedup_window: self.event_dedup_window,
            caches_deadline: std::sync::OnceLock::new(),
        });
        let api = setup.api::<R::Resource>();
        let forgetting = shared.clone();
        let mut deletions = Deletions::default();
        let changed = queue.clone();
        let objects = setup
            .recovering::<R::Resource, _, _>(move |config| watcher(api.clone(), config))
            // Every object is kept for as long as it exists. Its managedFields, which no
            // reconcile reads, are about half of it (750 of 1,557 bytes of JSON for a Redis),
            // and `kubectl apply` keeps a copy of the whole object in an annotation.
            .modify(|object| {
                let meta = object.meta_mut();
                meta.managed_fields = None;
                if let Some(annotations) = meta.annotations.as_mut() {
                    annotations.remove(LAST_APPLIED_ANNOTATION);
                }
            })
            .reflect(writer)
            .inspect(move |event| {
                if let Ok(event) = event {
                    for gone in deletions.observe(event) {
                        forgetting.deleted(&gone);
                    }
                }
            })
            .applied_objects()
            .inspect(move |object| {
                if let Ok(object) = object {
                    changed.add(queue_key(&ObjectRef::from_obj(object)), Instant::now());
                }
            });
        let mut runtime_controller = controller::Controller::for_stream(objects, store.clone())
            .with_config(controller::Config::default().concurrency(args.concurrency));
        for registration in self.owns {
            runtime_controller = registration(runtime_controller, &setup);
        }
        let (all, taken_over) = (store.clone(), queue.clone());
        let became_leader = futures::stream::unfold(leading, |mut leading| async move {
            loop {
                leading.changed().await.ok()?;
                if *leading.borrow_and_update() {
                    return Some(((), leading));
                }
            }
        })
        .inspect(move |()| {
            let now = Instant::now();
            for object in all.state() {
                taken_over.add(queue_key(&ObjectRef::from_obj(&*object)), now);
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
                            shared.queue.remove(&queue_key(&object));
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
pub(crate) struct Environment {
    pub(crate) client: Client,
    pub(crate) args: OperatorArgs,
    pub(crate) operator_name: String,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) health: Arc<Health>,
    pub(crate) health_ready: Arc<watch::Sender<usize>>,
    /// Turns true once every controller has listed its own objects (see [`start_after`]).
    pub(crate) primaries_listed: watch::Receiver<bool>,
    pub(crate) leading: watch::Receiver<bool>,
    /// Until when this replica may act as leader (see [`LeaseFence`]).
    pub(crate) fence: LeaseFence,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The operator's cached watches, one per kind, namespace and selector for all its
    /// controllers.
    pub(crate) watches: Arc<SharedWatches>,
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
    queue: Arc<WorkQueue>,
    leading: watch::Receiver<bool>,
    published: Mutex<HashMap<PublishedKey<R>, Instant>>,
    event_dedup_window: Duration,
    /// Until when reconciles wait for the caches of children to list: [`CACHES_BOUND`] after
    /// the first reconcile, which comes once the controller's own objects are listed (so a
    /// slow list of those does not eat into the children's time).
    caches_deadline: std::sync::OnceLock<Instant>,
}

impl<R: Reconciler> Shared<R> {
    /// Forgets a deleted object: its failure count, and whatever its reconciler keeps.
    fn deleted(&self, key: &ObjectRef<R::Resource>) {
        info!(object = %key, "the object was deleted; forgetting it");
        self.queue.remove(&queue_key(key));
        self.context.cache.forget_owner(&queue_key(key));
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
        let key = ObjectRef::from_obj(&*object);
        shared.queue.remove(&queue_key(&key));
        // A standby keeps its caches warm but leaves the cluster alone; it reconciles every
        // object once it becomes the leader (see `reconcile_all_on` above).
        if !*shared.leading.borrow() {
            return Ok(Action::await_change());
        }
        // The first reconciles after a start wait for the children's caches, which start
        // listing once the operator's own objects are in.
        let deadline = *shared
            .caches_deadline
            .get_or_init(|| Instant::now() + CACHES_BOUND);
        shared.context.cache.listed(deadline).await;
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
                // An object being deleted (a foreground deletion, or another controller's
                // finalizer, keeps it for a while) is left to the garbage collector: applying
                // its children again would bring back the ones it just deleted, and a
                // StatefulSet created anew under the old name drops the old one's owner
                // reference from its claims, which are then never deleted.
                None if object.meta().deletion_timestamp.is_some() => {
                    debug!(object = %key, "the object is being deleted; not reconciling it");
                    Ok(Action::await_change())
                }
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
    let key = ObjectRef::from_obj(&*object);
    let failures = shared.failures.record_failure(key.clone());
    match error.class() {
        ErrorClass::WaitForChange => Action::await_change(),
        ErrorClass::Transient => {
            let delay = shared.backoff.delay(failures);
            shared.queue.add(queue_key(&key), Instant::now() + delay);
            Action::requeue(delay)
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_watches_of_children_send_nothing_until_the_operators_own_objects_are_listed() {
        let polled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = polled.clone();
        let watch = move || {
            let counted = counted.clone();
            futures::stream::poll_fn(move |_| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::task::Poll::Ready(Some("listed"))
            })
            .take(1)
            .boxed()
        };
        let (open, gate) = watch::channel(false);
        let mut gated = start_after(gate, watch());
        assert!(futures::poll!(gated.next()).is_pending());
        assert_eq!(polled.load(std::sync::atomic::Ordering::SeqCst), 0);
        open.send_replace(true);
        assert_eq!(gated.next().await, Some("listed"));
        assert_eq!(polled.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A gate that never opens (a primary watch that cannot list) holds them for the bound.
        let (_closed, gate) = watch::channel(false);
        let started = tokio::time::Instant::now();
        assert_eq!(start_after(gate, watch()).next().await, Some("listed"));
        assert_eq!(started.elapsed(), CACHES_BOUND);
    }

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
