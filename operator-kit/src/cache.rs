//! [`ChildCache`]: what a controller's watches know about its children, so that
//! [`Children`](crate::Children) can tell a converged child without asking the API server.
//!
//! The runtime watches every owned kind ([`Controller::owns`](crate::Controller::owns)) and every
//! cached kind ([`Controller::caches`](crate::Controller::caches)) anyway, to trigger
//! reconciles; here it also keeps what those watches delivered: each object's metadata (without
//! `managedFields`) and, for owned kinds, its `status` — never its spec or data, so a cached
//! StatefulSet costs about a kilobyte. Next to it, the controller remembers for each child what
//! it last applied or checked: the hash of the desired object, and the UID, `generation` and
//! `resourceVersion` the API server returned.
//!
//! A child is taken as unchanged without a request when the cache shows that same object (UID)
//! at that same `generation` — or, for kinds without one (ConfigMaps, Services), that same
//! `resourceVersion` — with our labels, annotations and owner reference, and the desired hash
//! is the one applied. The generation moves with every change of the spec and not with the
//! status, so a StatefulSet whose pods come and go costs nothing, while a hand edit of its spec
//! sends the child down the full path: read, compare, apply (the edit is reverted). Anything
//! the cache cannot vouch for — a kind it does not watch, a watch still listing, a child not
//! seen since the operator started — takes that full path too.
//!
//! The controllers of one operator share these watches: a kind watched
//! the same way by two controllers is listed, watched and held once.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{ApiResource, DynamicObject, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use serde::Deserialize;

/// A kind as the cache names it: its `apiVersion` and `kind`.
type Kind = (String, String);

/// A child: `apiVersion/kind`, namespace and name.
pub(crate) type ChildKey = (String, Option<String>, String);

/// A kind's store, and the one namespace its watch covers (`None`: all).
type Watched = (Arc<KindStore>, Option<String>);

/// An object read through the cache, with the resource version it was read at.
type ReadObject = (String, Arc<dyn Any + Send + Sync>);

/// What the controller last applied to a child, or found converged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Applied {
    /// The hash of the desired object ([`crate::children::APPLIED_HASH_ANNOTATION`]).
    pub(crate) hash: String,
    /// The child's UID then.
    pub(crate) uid: Option<String>,
    /// Its `metadata.generation` then (`None` for kinds without one).
    pub(crate) generation: Option<i64>,
    /// Its `resourceVersion` then.
    pub(crate) resource_version: Option<String>,
}

impl Applied {
    /// Whether `live` (from the cache) is still the object this record describes, unchanged but
    /// for its status: the same UID, and the same generation, or for a kind without one the
    /// same resource version.
    pub(crate) fn describes(&self, live: &kube::api::ObjectMeta) -> bool {
        if self.uid.is_none() || self.uid != live.uid {
            return false;
        }
        match (self.generation, live.generation) {
            (Some(applied), Some(live)) if applied > 0 => applied == live,
            _ => self.resource_version.is_some() && self.resource_version == live.resource_version,
        }
    }
}

/// An [`Applied`] as the cache holds it, with the child it is about: the kind and namespace
/// shared with the other records ([`shared`]), the rest boxed.
#[derive(Debug)]
struct AppliedRecord {
    /// The child's `apiVersion/kind`, namespace and name.
    kind: Arc<str>,
    namespace: Option<Arc<str>>,
    name: Box<str>,
    hash: Box<str>,
    uid: Option<Box<str>>,
    generation: Option<i64>,
    resource_version: Option<Box<str>>,
}

impl AppliedRecord {
    fn of((kind, namespace, name): &ChildKey, applied: &Applied) -> Self {
        Self {
            kind: shared(kind),
            namespace: namespace.as_deref().map(shared),
            name: name.as_str().into(),
            hash: applied.hash.as_str().into(),
            uid: applied.uid.as_deref().map(Into::into),
            generation: applied.generation,
            resource_version: applied.resource_version.as_deref().map(Into::into),
        }
    }

    /// Whether the record is about `child`.
    fn is(&self, (kind, namespace, name): &ChildKey) -> bool {
        *self.name == **name
            && *self.kind == **kind
            && self.namespace.as_deref() == namespace.as_deref()
    }

    fn applied(&self) -> Applied {
        Applied {
            hash: self.hash.to_string(),
            uid: self.uid.as_deref().map(str::to_owned),
            generation: self.generation,
            resource_version: self.resource_version.as_deref().map(str::to_owned),
        }
    }
}

/// An object as a cached watch reads it off the wire: the metadata a controller compares (not
/// `managedFields`, which are skipped while parsing) and the status. Its spec and data are
/// skipped too, never held, so a watch of StatefulSets costs little more than one of their
/// metadata.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedObject {
    /// The metadata.
    #[serde(default, deserialize_with = "compared_metadata")]
    pub metadata: ObjectMeta,
    /// The status, if the object has one.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

/// The parts of `ObjectMeta` the cache keeps; serde skips the others without allocating.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ComparedMetadata {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    deletion_timestamp: Option<Time>,
}

fn compared_metadata<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<ObjectMeta, D::Error> {
    let wire = <ComparedMetadata as serde::Deserialize>::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: wire.name,
        namespace: wire.namespace,
        uid: wire.uid,
        resource_version: wire.resource_version,
        generation: wire.generation,
        labels: wire.labels,
        annotations: wire.annotations,
        owner_references: wire.owner_references,
        deletion_timestamp: wire.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

impl kube::Resource for WatchedObject {
    type DynamicType = ApiResource;
    type Scope = kube::core::DynamicResourceScope;

    fn group(resource: &ApiResource) -> std::borrow::Cow<'_, str> {
        resource.group.as_str().into()
    }

    fn version(resource: &ApiResource) -> std::borrow::Cow<'_, str> {
        resource.version.as_str().into()
    }

    fn kind(resource: &ApiResource) -> std::borrow::Cow<'_, str> {
        resource.kind.as_str().into()
    }

    fn api_version(resource: &ApiResource) -> std::borrow::Cow<'_, str> {
        resource.api_version.as_str().into()
    }

    fn plural(resource: &ApiResource) -> std::borrow::Cow<'_, str> {
        resource.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What the cache says about one child.
#[derive(Debug)]
pub(crate) enum Cached {
    /// The kind is not watched, or its watch has not listed yet: ask the API server.
    Unknown,
    /// The watch has listed and the object is not there.
    Absent,
    /// The object's metadata, and its status for an owned kind.
    Present(Arc<CachedObject>),
}

/// What the cache keeps of one object: the metadata a controller compares, and the status of
/// an owned kind as JSON text — about a tenth of the object as kube's types hold it. What many
/// objects share (namespaces, label keys and values, annotation keys, owners) is held once
/// ([`shared`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CachedObject {
    name: Box<str>,
    namespace: Option<Arc<str>>,
    uid: Option<Box<str>>,
    pub(crate) resource_version: Option<Box<str>>,
    generation: Option<i64>,
    labels: Box<[(Arc<str>, Arc<str>)]>,
    annotations: Box<[(Arc<str>, Arc<str>)]>,
    owner_references: Box<[Owner]>,
    deletion_timestamp: Option<Time>,
    status: Option<Box<str>>,
}

/// An owner reference as the cache keeps it: its strings shared with the other children of
/// the same owner.
#[derive(Debug, Clone, PartialEq)]
struct Owner {
    api_version: Arc<str>,
    kind: Arc<str>,
    name: Arc<str>,
    uid: Arc<str>,
    controller: Option<bool>,
    block_owner_deletion: Option<bool>,
}

impl Owner {
    fn of(owner: &OwnerReference) -> Self {
        Self {
            api_version: shared(&owner.api_version),
            kind: shared(&owner.kind),
            name: shared(&owner.name),
            uid: shared(&owner.uid),
            controller: owner.controller,
            block_owner_deletion: owner.block_owner_deletion,
        }
    }

    fn reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.api_version.to_string(),
            kind: self.kind.to_string(),
            name: self.name.to_string(),
            uid: self.uid.to_string(),
            controller: self.controller,
            block_owner_deletion: self.block_owner_deletion,
        }
    }
}

/// The strings cached objects share, each held once for the whole process.
static SHARED: LazyLock<Mutex<SharedStrings>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct SharedStrings {
    strings: HashSet<Arc<str>>,
    /// Strings added since the last sweep of those no object holds any more.
    added: usize,
    /// How many strings that sweep kept.
    kept: usize,
}

/// `text` as a string shared by every cached object that holds the same: a label such as
/// `app.kubernetes.io/managed-by=redis-operator` is on every child, an owner on several.
/// Strings no object holds any more are swept once as many have been added as the last sweep
/// kept (and at least 1,024), so the set stays within about twice what is in use.
fn shared(text: &str) -> Arc<str> {
    let Ok(mut shared) = SHARED.lock() else {
        return text.into();
    };
    if let Some(held) = shared.strings.get(text) {
        return held.clone();
    }
    if shared.added >= shared.kept.max(1024) {
        shared.strings.retain(|held| Arc::strong_count(held) > 1);
        shared.added = 0;
        shared.kept = shared.strings.len();
    }
    let held: Arc<str> = text.into();
    shared.strings.insert(held.clone());
    shared.added += 1;
    held
}

/// Each key and value shared ([`shared`]), but the values of `unique_values` (a hash that
/// differs on every object would only grow the shared set).
fn pairs(
    map: Option<&BTreeMap<String, String>>,
    unique_values: Option<&str>,
) -> Box<[(Arc<str>, Arc<str>)]> {
    map.into_iter()
        .flatten()
        .map(|(key, value)| {
            let value = if unique_values == Some(key.as_str()) {
                value.as_str().into()
            } else {
                shared(value)
            };
            (shared(key), value)
        })
        .collect()
}

fn map(pairs: &[(Arc<str>, Arc<str>)]) -> Option<BTreeMap<String, String>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    })
}

impl CachedObject {
    /// What the cache keeps of `object`: its status too when `keep_status`.
    pub(crate) fn of(object: &WatchedObject, keep_status: bool) -> Self {
        let meta = &object.metadata;
        let status = object
            .status
            .as_ref()
            .filter(|status| keep_status && !status.is_null())
            .map(|status| status.to_string().into_boxed_str());
        Self {
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: meta.namespace.as_deref().map(shared),
            uid: meta.uid.as_deref().map(Into::into),
            resource_version: meta.resource_version.as_deref().map(Into::into),
            generation: meta.generation,
            labels: pairs(meta.labels.as_ref(), None),
            annotations: pairs(
                meta.annotations.as_ref(),
                Some(crate::children::APPLIED_HASH_ANNOTATION),
            ),
            owner_references: meta
                .owner_references
                .iter()
                .flatten()
                .map(Owner::of)
                .collect(),
            deletion_timestamp: meta.deletion_timestamp.clone(),
            status,
        }
    }

    /// The metadata the cache kept, as `ObjectMeta`.
    pub(crate) fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.to_string()),
            namespace: self.namespace.as_deref().map(str::to_owned),
            uid: self.uid.as_deref().map(str::to_owned),
            resource_version: self.resource_version.as_deref().map(str::to_owned),
            generation: self.generation,
            labels: map(&self.labels),
            annotations: map(&self.annotations),
            owner_references: (!self.owner_references.is_empty())
                .then(|| self.owner_references.iter().map(Owner::reference).collect()),
            deletion_timestamp: self.deletion_timestamp.clone(),
            ..ObjectMeta::default()
        }
    }

    /// Its namespace and `app.kubernetes.io/instance` label, if it has one.
    fn instance(&self) -> Option<Instance> {
        self.labels
            .iter()
            .find(|(key, _)| &**key == crate::children::INSTANCE_LABEL)
            .map(|(_, value)| (self.namespace.clone(), value.clone()))
    }

    /// Whether the object carries every one of `labels`.
    fn has_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.iter().all(|(key, value)| {
            self.labels
                .iter()
                .any(|(held_key, held_value)| **held_key == **key && **held_value == **value)
        })
    }

    /// The status the cache kept, if any.
    pub(crate) fn status(&self) -> Option<serde_json::Value> {
        self.status
            .as_deref()
            .and_then(|status| serde_json::from_str(status).ok())
    }
}

/// The objects of one kind a watch delivered, by `namespace/name`.
#[derive(Debug, Default)]
pub(crate) struct KindStore {
    state: RwLock<KindState>,
    /// Whether the store keeps each object's status.
    keep_status: bool,
    /// Whether a first list is in; [`ChildCache::listed`] waits on it. (Set while the state is
    /// still locked, so a reader that sees it true sees the list.)
    listed: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct KindState {
    objects: HashMap<String, Arc<CachedObject>>,
    /// The objects by namespace and `app.kubernetes.io/instance` label: the children of one
    /// owner, found without scanning every object of the kind.
    by_instance: HashMap<Instance, Vec<Arc<CachedObject>>>,
    /// A list in progress: it replaces `objects` whole when done, as a re-list must (what it
    /// lacks was deleted meanwhile).
    listing: Option<HashMap<String, Arc<CachedObject>>>,
}

/// A namespace (`None` for cluster-scoped objects) and an `app.kubernetes.io/instance` value.
type Instance = (Option<Arc<str>>, Arc<str>);

impl KindState {
    fn insert(&mut self, key: String, object: Arc<CachedObject>) {
        self.index(&object);
        if let Some(replaced) = self.objects.insert(key, object) {
            self.unindex(&replaced);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(removed) = self.objects.remove(key) {
            self.unindex(&removed);
        }
    }

    fn index(&mut self, object: &Arc<CachedObject>) {
        if let Some(instance) = object.instance() {
            self.by_instance
                .entry(instance)
                .or_default()
                .push(object.clone());
        }
    }

    fn unindex(&mut self, object: &Arc<CachedObject>) {
        let Some(instance) = object.instance() else {
            return;
        };
        if let Some(objects) = self.by_instance.get_mut(&instance) {
            objects.retain(|indexed| !Arc::ptr_eq(indexed, object));
            if objects.is_empty() {
                self.by_instance.remove(&instance);
            }
        }
    }

    /// Takes the objects of a finished list as the whole state.
    fn replace(&mut self, objects: HashMap<String, Arc<CachedObject>>) {
        self.by_instance.clear();
        for object in objects.values() {
            self.index(object);
        }
        self.objects = objects;
    }
}

impl KindStore {
    /// A store that keeps statuses when `keep_status`.
    pub(crate) fn new(keep_status: bool) -> Self {
        Self {
            keep_status,
            ..Self::default()
        }
    }

    fn state(&self) -> std::sync::RwLockWriteGuard<'_, KindState> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn key(object: &WatchedObject) -> String {
        crate::queue::key(
            object.metadata.namespace.as_deref(),
            object.metadata.name.as_deref().unwrap_or_default(),
        )
    }

    /// Takes one watch event.
    pub(crate) fn apply(&self, event: &watcher::Event<WatchedObject>) {
        let mut state = self.state();
        match event {
            watcher::Event::Apply(object) => {
                let cached = Arc::new(CachedObject::of(object, self.keep_status));
                state.insert(Self::key(object), cached);
            }
            watcher::Event::Delete(object) => {
                state.remove(&Self::key(object));
            }
            watcher::Event::Init => state.listing = Some(HashMap::new()),
            watcher::Event::InitApply(object) => {
                let cached = Arc::new(CachedObject::of(object, self.keep_status));
                if let Some(listing) = &mut state.listing {
                    listing.insert(Self::key(object), cached);
                }
            }
            watcher::Event::InitDone => {
                if let Some(listing) = state.listing.take() {
                    state.replace(listing);
                }
                self.listed.send_replace(true);
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KindState> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The watched children of one controller, and what it applied to them. Cheap to share.
#[derive(Debug, Default)]
pub struct ChildCache {
    /// Each kind's store, and the one namespace its watch covers (`None`: all).
    kinds: RwLock<HashMap<Kind, Watched>>,
    /// By owner (`namespace/name`), then by child: forgotten with the owner. A list per owner,
    /// not a map: an owner has a handful of children, and a map of four held 2.4 KB (24 MB
    /// of the 100 MB heap at 10,000 Redis, measured with heaptrack).
    applied: Mutex<HashMap<Box<str>, Vec<AppliedRecord>>>,
    /// Objects read by name through the cache ([`crate::Context::get`]), with the resource
    /// version they were read at.
    reads: Mutex<HashMap<ChildKey, ReadObject>>,
    /// Whether [`ChildCache::listed`] reached its deadline once (it says so once).
    gave_up_waiting: std::sync::atomic::AtomicBool,
}

impl ChildCache {
    /// Adds a store for a watch of `resource` to fill (in `namespace` only when it is `Some`),
    /// keeping statuses when `keep_status`.
    #[cfg(test)]
    pub(crate) fn register(
        &self,
        resource: &ApiResource,
        namespace: Option<String>,
        keep_status: bool,
    ) -> Arc<KindStore> {
        let store = Arc::new(KindStore::new(keep_status));
        self.adopt(resource, namespace, store.clone());
        store
    }

    /// Reads `resource` (in `namespace` only when it is `Some`) from `store`, which a watch
    /// fills — possibly one another controller of the operator started ([`SharedWatches`]).
    pub(crate) fn adopt(
        &self,
        resource: &ApiResource,
        namespace: Option<String>,
        store: Arc<KindStore>,
    ) {
        self.kinds
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(
                (resource.api_version.clone(), resource.kind.clone()),
                (store, namespace),
            );
    }

    /// Resolves once every kind's watch has listed, or at `deadline`: until then a reconcile
    /// would read and list from the API server what the watches are about to deliver (each
    /// watch starts once the operator's own objects are listed, see [`crate::controller`]).
    /// The deadline keeps a watch that cannot list (no permission, say) from holding every
    /// reconcile: past it they go on without that cache, as before it listed, and report its
    /// errors.
    pub(crate) async fn listed(&self, deadline: std::time::Instant) {
        let signals: Vec<_> = self
            .kinds
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .map(|(store, _)| store.listed.subscribe())
            .collect();
        let all = futures::future::join_all(signals.into_iter().map(|mut signal| async move {
            // The sender lives in the store, which the cache holds: this cannot fail.
            let _ = signal.wait_for(|listed| *listed).await;
        }));
        if tokio::time::timeout_at(deadline.into(), all).await.is_err()
            && !self
                .gave_up_waiting
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "a watch of the children has not listed yet; reconciling without its cache"
            );
        }
    }

    /// The store of a kind whose watch covers `namespace` (`None`: every namespace), once it
    /// has listed.
    fn ready_store(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
    ) -> Option<Arc<KindStore>> {
        let (store, watched) = self
            .kinds
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&(resource.api_version.clone(), resource.kind.clone()))
            .cloned()?;
        // A watch of one namespace cannot vouch for another, nor for all of them.
        if watched.is_some() && watched.as_deref() != namespace {
            return None;
        }
        // Ready for good once the first list is in: a re-list swaps the whole state at once.
        let listed = *store.listed.borrow();
        listed.then_some(store)
    }

    /// What the cache knows of one object.
    pub(crate) fn lookup(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Cached {
        let Some(store) = self.ready_store(resource, namespace) else {
            return Cached::Unknown;
        };
        let key = crate::queue::key(namespace, name);
        let state = store.read();
        state
            .objects
            .get(&key)
            .cloned()
            .map_or(Cached::Absent, Cached::Present)
    }

    /// The metadata of the cached objects of a kind in `namespace` (`None`: in all) that carry
    /// every one of `labels`, or `None` when the cache cannot vouch for that list. Labels are
    /// compared on the compact records, and only the matches are turned into `ObjectMeta`: a
    /// reconcile that prunes asks for its owner's children of each owned kind: scanning every
    /// object (10,000 StatefulSets for 10,000 Redis) made that quadratic in CPU, so an owner's
    /// children are found through their `app.kubernetes.io/instance` label in one step.
    pub(crate) fn labelled(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Option<Vec<ObjectMeta>> {
        let store = self.ready_store(resource, namespace)?;
        let state = store.read();
        let wanted = |object: &&Arc<CachedObject>| {
            (namespace.is_none() || object.namespace.as_deref() == namespace)
                && object.has_labels(labels)
        };
        let matching = match (namespace, labels.get(crate::children::INSTANCE_LABEL)) {
            (Some(namespace), Some(instance)) => state
                .by_instance
                .get(&(Some(namespace.into()), instance.as_str().into()))
                .map_or_else(Vec::new, |objects| {
                    objects
                        .iter()
                        .filter(wanted)
                        .map(|object| object.meta())
                        .collect()
                }),
            _ => state
                .objects
                .values()
                .filter(wanted)
                .map(|object| object.meta())
                .collect(),
        };
        Some(matching)
    }

    fn applied_records(&self) -> MutexGuard<'_, HashMap<Box<str>, Vec<AppliedRecord>>> {
        self.applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What was last applied to `child` of `owner`.
    pub(crate) fn applied(&self, owner: &str, child: &ChildKey) -> Option<Applied> {
        self.applied_records()
            .get(owner)?
            .iter()
            .find(|record| record.is(child))
            .map(AppliedRecord::applied)
    }

    /// Records what was applied to `child` of `owner`, or that it was found converged.
    pub(crate) fn record(&self, owner: &str, child: &ChildKey, applied: &Applied) {
        let mut records = self.applied_records();
        let children = match records.get_mut(owner) {
            Some(children) => children,
            None => records.entry(owner.into()).or_default(),
        };
        let record = AppliedRecord::of(child, applied);
        match children.iter_mut().find(|held| held.is(child)) {
            Some(held) => *held = record,
            None => children.push(record),
        }
    }

    /// Forgets a child (deleted by a prune).
    pub(crate) fn forget_child(&self, owner: &str, child: &ChildKey) {
        if let Some(children) = self.applied_records().get_mut(owner) {
            children.retain(|record| !record.is(child));
        }
    }

    /// Forgets everything recorded for a deleted owner.
    pub(crate) fn forget_owner(&self, owner: &str) {
        self.applied_records().remove(owner);
    }

    /// The object read last as `key`, if it was read at `resource_version`.
    pub(crate) fn read<K: Clone + 'static>(
        &self,
        key: &ChildKey,
        resource_version: Option<&str>,
    ) -> Option<K> {
        let reads = self
            .reads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (read_at, object) = reads.get(key)?;
        if Some(read_at.as_str()) != resource_version {
            return None;
        }
        object.downcast_ref::<K>().cloned()
    }

    /// Keeps `object`, read as `key` at `resource_version`; forgets it when `None`.
    pub(crate) fn keep_read<K: Send + Sync + 'static>(
        &self,
        key: ChildKey,
        read: Option<(String, K)>,
    ) {
        let mut reads = self
            .reads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match read {
            Some((resource_version, object)) => {
                reads.insert(key, (resource_version, Arc::new(object)));
            }
            None => {
                reads.remove(&key);
            }
        }
    }
}

/// The cached watches of one operator, shared by its controllers, as controller-runtime's
/// manager shares one informer per kind: the `Redis` and `RedisSentinel` controllers both own
/// StatefulSets, Services and ConfigMaps in the same namespace, and with a watch each, every
/// child was held twice and sent twice. Two controllers share a watch when it is of the same
/// kind, namespace and label selector, and keeps the same parts of each object.
#[derive(Debug, Default)]
pub(crate) struct SharedWatches {
    watches: Mutex<HashMap<WatchKey, Arc<SharedWatch>>>,
}

/// What makes two watches the same one: the kind, the namespace (`None`: all), the label
/// selector (`None`: every object), and whether statuses are kept.
pub(crate) type WatchKey = (Kind, Option<String>, Option<String>, bool);

/// A watch several controllers read: its store, and the streams of the controllers that
/// follow it (every one but the first, whose own stream drives the watch).
#[derive(Debug)]
pub(crate) struct SharedWatch {
    pub(crate) store: Arc<KindStore>,
    followers: Mutex<Vec<futures::channel::mpsc::UnboundedSender<WatchedObject>>>,
}

/// A controller's part in a shared watch.
pub(crate) enum Joined {
    /// The first to ask: the controller starts the watch, fills the store and hands each
    /// object on ([`SharedWatch::hand_on`]).
    Lead(Arc<SharedWatch>),
    /// The watch exists: the controller reads its store and gets each object it delivers.
    Follow(
        Arc<KindStore>,
        futures::channel::mpsc::UnboundedReceiver<WatchedObject>,
    ),
}

impl SharedWatches {
    /// Joins the watch `key` names, or becomes the one to start it.
    pub(crate) fn join(&self, key: WatchKey) -> Joined {
        let mut watches = self
            .watches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(watch) = watches.get(&key) {
            let (sender, receiver) = futures::channel::mpsc::unbounded();
            watch
                .followers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(sender);
            return Joined::Follow(watch.store.clone(), receiver);
        }
        let watch = Arc::new(SharedWatch {
            store: Arc::new(KindStore::new(key.3)),
            followers: Mutex::default(),
        });
        watches.insert(key, watch.clone());
        Joined::Lead(watch)
    }
}

impl SharedWatch {
    /// Hands an object the watch delivered to every follower still listening.
    pub(crate) fn hand_on(&self, object: &WatchedObject) {
        self.followers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|follower| follower.unbounded_send(object.clone()).is_ok());
    }
}

/// A metadata-only watch event as the cache reads it: an object without status.
pub(crate) fn metadata_event(
    event: watcher::Event<PartialObjectMeta<DynamicObject>>,
) -> watcher::Event<WatchedObject> {
    let object = |meta: PartialObjectMeta<DynamicObject>| WatchedObject {
        metadata: ObjectMeta {
            managed_fields: None,
            ..meta.metadata
        },
        status: None,
    };
    match event {
        watcher::Event::Apply(meta) => watcher::Event::Apply(object(meta)),
        watcher::Event::Delete(meta) => watcher::Event::Delete(object(meta)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(meta) => watcher::Event::InitApply(object(meta)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;
    use serde_json::json;

    use super::*;

    fn meta(uid: &str, generation: Option<i64>, resource_version: &str) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.to_owned()),
            generation,
            resource_version: Some(resource_version.to_owned()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn an_owners_children_are_found_by_their_instance_label_through_changes_and_relists() {
        use crate::children::INSTANCE_LABEL;
        let resource = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        let cache = ChildCache::default();
        let store = cache.register(&resource, Some("shop".to_owned()), false);
        let child = |name: &str, instance: &str| -> WatchedObject {
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": name, "namespace": "shop",
                              "labels": { INSTANCE_LABEL: instance, "app": "redis" } },
            }))
            .unwrap()
        };
        let children_of = |instance: &str| -> Vec<String> {
            let labels = BTreeMap::from([
                (INSTANCE_LABEL.to_owned(), instance.to_owned()),
                ("app".to_owned(), "redis".to_owned()),
            ]);
            let mut names: Vec<String> = cache
                .labelled(&resource, Some("shop"), &labels)
                .unwrap()
                .into_iter()
                .filter_map(|meta| meta.name)
                .collect();
            names.sort();
            names
        };
        store.apply(&watcher::Event::Init);
        store.apply(&watcher::Event::InitApply(child("a-config", "a")));
        store.apply(&watcher::Event::InitApply(child("a-extra", "a")));
        store.apply(&watcher::Event::InitApply(child("b-config", "b")));
        store.apply(&watcher::Event::InitDone);
        assert_eq!(children_of("a"), ["a-config", "a-extra"]);
        assert_eq!(children_of("b"), ["b-config"]);
        // A child relabelled to another owner moves; an update keeps one entry.
        store.apply(&watcher::Event::Apply(child("a-extra", "b")));
        store.apply(&watcher::Event::Apply(child("a-config", "a")));
        assert_eq!(children_of("a"), ["a-config"]);
        assert_eq!(children_of("b"), ["a-extra", "b-config"]);
        store.apply(&watcher::Event::Delete(child("b-config", "b")));
        assert_eq!(children_of("b"), ["a-extra"]);
        // A re-list rebuilds the index from what it found.
        store.apply(&watcher::Event::Init);
        store.apply(&watcher::Event::InitApply(child("c-config", "c")));
        store.apply(&watcher::Event::InitDone);
        assert!(children_of("a").is_empty());
        assert!(children_of("b").is_empty());
        assert_eq!(children_of("c"), ["c-config"]);
    }

    #[test]
    fn controllers_asking_for_the_same_watch_share_its_store_and_its_objects() {
        let watches = SharedWatches::default();
        let kind = || ("v1".to_owned(), "ConfigMap".to_owned());
        let key = |namespace: &str, labels: Option<&str>, keep_status| {
            (
                kind(),
                Some(namespace.to_owned()),
                labels.map(str::to_owned),
                keep_status,
            )
        };
        let Joined::Lead(lead) = watches.join(key("shop", None, true)) else {
            panic!("the first to ask did not lead the watch");
        };
        let Joined::Follow(store, mut first) = watches.join(key("shop", None, true)) else {
            panic!("the same watch was opened twice");
        };
        assert!(Arc::ptr_eq(&store, &lead.store));
        let Joined::Follow(_, second) = watches.join(key("shop", None, true)) else {
            panic!("the same watch was opened a third time");
        };
        // Another namespace, another selector, or statuses kept or not: another watch.
        for other in [
            key("cart", None, true),
            key("shop", Some("app=shop"), true),
            key("shop", None, false),
        ] {
            let Joined::Lead(other_watch) = watches.join(other.clone()) else {
                panic!("{other:?} shares a watch it does not ask for");
            };
            assert!(!Arc::ptr_eq(&other_watch.store, &lead.store));
        }
        // What the watch delivers reaches every follower; one that stopped listening is
        // dropped, not waited for.
        drop(second);
        lead.hand_on(&config_map("site", "shop"));
        let handed = first.try_recv().expect("an object handed on");
        assert_eq!(handed.metadata.name.as_deref(), Some("site"));
        assert_eq!(lead.followers.lock().expect("followers").len(), 1);
    }

    #[test]
    fn what_was_applied_is_found_replaced_and_forgotten_per_child() {
        let cache = ChildCache::default();
        let child =
            |kind: &str, name: &str| (kind.to_owned(), Some("shop".to_owned()), name.to_owned());
        let applied = |hash: &str, version: &str| Applied {
            hash: hash.to_owned(),
            uid: Some("uid-1".to_owned()),
            generation: Some(1),
            resource_version: Some(version.to_owned()),
        };
        let (set, service) = (
            child("apps/v1/StatefulSet", "cache"),
            child("v1/Service", "cache"),
        );
        cache.record("shop/cache", &set, &applied("a", "10"));
        cache.record("shop/cache", &service, &applied("b", "11"));
        cache.record("shop/cache", &set, &applied("c", "12"));
        assert_eq!(cache.applied("shop/cache", &set), Some(applied("c", "12")));
        assert_eq!(
            cache.applied("shop/cache", &service),
            Some(applied("b", "11"))
        );
        // Same name, another kind, namespace or owner: nothing recorded.
        assert_eq!(
            cache.applied("shop/cache", &child("v1/ConfigMap", "cache")),
            None
        );
        assert_eq!(cache.applied("shop/other", &set), None);
        let elsewhere = (
            "apps/v1/StatefulSet".to_owned(),
            Some("cart".to_owned()),
            "cache".to_owned(),
        );
        assert_eq!(cache.applied("shop/cache", &elsewhere), None);
        assert_eq!(cache.applied_records()["shop/cache"].len(), 2);
        cache.forget_child("shop/cache", &set);
        assert_eq!(cache.applied("shop/cache", &set), None);
        assert_eq!(
            cache.applied("shop/cache", &service),
            Some(applied("b", "11"))
        );
        cache.forget_owner("shop/cache");
        assert_eq!(cache.applied("shop/cache", &service), None);
    }

    #[test]
    fn shared_strings_are_held_once_and_swept_once_unused() {
        let first = shared("shared-test-label-value");
        assert!(Arc::ptr_eq(&first, &shared("shared-test-label-value")));
        for index in 0..10_000 {
            drop(shared(&format!("shared-test-unused-{index}")));
        }
        let held = SHARED.lock().unwrap().strings.len();
        assert!(held <= 4096, "{held} strings held after 10,000 unused ones");
        // Still held by `first`: never swept while in use.
        assert!(Arc::ptr_eq(&first, &shared("shared-test-label-value")));
    }

    #[test]
    fn a_record_describes_the_same_object_until_its_spec_or_identity_changes() {
        let with_generation = Applied {
            hash: "h".to_owned(),
            uid: Some("u1".to_owned()),
            generation: Some(2),
            resource_version: Some("10".to_owned()),
        };
        // The status moved on: a new resource version, the same generation.
        assert!(with_generation.describes(&meta("u1", Some(2), "17")));
        // The spec was edited.
        assert!(!with_generation.describes(&meta("u1", Some(3), "18")));
        // Deleted and made again.
        assert!(!with_generation.describes(&meta("u2", Some(2), "10")));
        // A kind without a generation: the resource version decides.
        let without = Applied {
            generation: None,
            ..with_generation
        };
        assert!(without.describes(&meta("u1", None, "10")));
        assert!(!without.describes(&meta("u1", None, "11")));
    }

    fn config_map(name: &str, namespace: &str) -> WatchedObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": name, "namespace": namespace },
        }))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn reconciles_wait_until_every_watch_of_children_has_listed_or_the_deadline() {
        let cache = ChildCache::default();
        let config_maps = cache.register(
            &ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
            Some("shop".to_owned()),
            false,
        );
        let services = cache.register(
            &ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
            Some("shop".to_owned()),
            false,
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut waiting = std::pin::pin!(cache.listed(deadline));
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        config_maps.apply(&watcher::Event::Init);
        config_maps.apply(&watcher::Event::InitDone);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        services.apply(&watcher::Event::Init);
        services.apply(&watcher::Event::InitDone);
        assert!(futures::poll!(waiting.as_mut()).is_ready());

        // A kind whose watch never lists holds reconciles until the deadline, and not after.
        let secrets = cache.register(
            &ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
            Some("shop".to_owned()),
            false,
        );
        let started = tokio::time::Instant::now();
        cache.listed(deadline).await;
        let waited = started.elapsed().as_secs_f64();
        // (The timer's resolution is a millisecond.)
        assert!((30.0..30.1).contains(&waited), "{waited}");
        let started = tokio::time::Instant::now();
        cache.listed(deadline).await;
        assert!(started.elapsed() < std::time::Duration::from_millis(10));
        drop(secrets);
    }

    #[test]
    fn the_cache_vouches_only_for_what_its_watch_covers_once_listed() {
        let resource = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        let cache = ChildCache::default();
        let store = cache.register(&resource, Some("shop".to_owned()), false);
        // Not listed yet.
        assert!(matches!(
            cache.lookup(&resource, Some("shop"), "a"),
            Cached::Unknown
        ));
        store.apply(&watcher::Event::Init);
        store.apply(&watcher::Event::InitApply(config_map("a", "shop")));
        store.apply(&watcher::Event::InitDone);
        assert!(matches!(
            cache.lookup(&resource, Some("shop"), "a"),
            Cached::Present(_)
        ));
        assert!(matches!(
            cache.lookup(&resource, Some("shop"), "b"),
            Cached::Absent
        ));
        // Another namespace, or all of them: the watch of one cannot tell.
        assert!(matches!(
            cache.lookup(&resource, Some("other"), "a"),
            Cached::Unknown
        ));
        let none = BTreeMap::new();
        assert!(cache.labelled(&resource, None, &none).is_none());
        assert_eq!(
            cache
                .labelled(&resource, Some("shop"), &none)
                .map(|list| list.len()),
            Some(1)
        );
        // Only the objects carrying every label asked for.
        store.apply(&watcher::Event::Apply(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "labelled", "namespace": "shop",
                              "labels": { "app": "redis", "instance": "cache" } },
            }))
            .unwrap(),
        ));
        let wanted = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect()
        };
        let names = |labels: &BTreeMap<String, String>| -> Vec<String> {
            cache
                .labelled(&resource, Some("shop"), labels)
                .unwrap()
                .into_iter()
                .filter_map(|meta| meta.name)
                .collect()
        };
        assert_eq!(names(&wanted(&[("app", "redis")])), ["labelled"]);
        assert_eq!(
            names(&wanted(&[("app", "redis"), ("instance", "cache")])),
            ["labelled"]
        );
        assert!(names(&wanted(&[("app", "redis"), ("instance", "other")])).is_empty());
        assert_eq!(names(&none).len(), 2);
        store.apply(&watcher::Event::Delete(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "labelled", "namespace": "shop" },
            }))
            .unwrap(),
        ));
        // A re-list replaces the whole state: what it lacks was deleted meanwhile.
        store.apply(&watcher::Event::Init);
        store.apply(&watcher::Event::InitApply(config_map("b", "shop")));
        assert!(matches!(
            cache.lookup(&resource, Some("shop"), "a"),
            Cached::Present(_)
        ));
        store.apply(&watcher::Event::InitDone);
        assert!(matches!(
            cache.lookup(&resource, Some("shop"), "a"),
            Cached::Absent
        ));
        store.apply(&watcher::Event::Delete(config_map("b", "shop")));
        assert!(matches!(
            cache.lookup(&resource, Some("shop"), "b"),
            Cached::Absent
        ));
        // A kind nobody watches.
        let secrets = ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&());
        assert!(matches!(
            cache.lookup(&secrets, Some("shop"), "a"),
            Cached::Unknown
        ));
    }

    #[test]
    fn a_cached_object_keeps_what_is_compared_and_the_status_only() {
        let object: WatchedObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {
                "name": "cache",
                "namespace": "shop",
                "uid": "u1",
                "resourceVersion": "7",
                "generation": 2,
                "labels": { "app": "redis" },
                "managedFields": [{ "manager": "redis-operator" }],
                "annotations": { "a": "b" },
                "ownerReferences": [{ "apiVersion": "v1", "kind": "Redis", "name": "cache", "uid": "o1", "controller": true }],
            },
            "spec": { "replicas": 1 },
            "status": { "readyReplicas": 1 },
        }))
        .unwrap();
        // managedFields and the spec are never read off the wire.
        assert_eq!(object.metadata.managed_fields, None);
        let cached = CachedObject::of(&object, true);
        assert_eq!(cached.meta(), object.metadata);
        assert_eq!(cached.meta().labels.map(|labels| labels.len()), Some(1));
        assert_eq!(cached.status(), Some(json!({ "readyReplicas": 1 })));
        assert_eq!(CachedObject::of(&object, false).status(), None);
    }
}
