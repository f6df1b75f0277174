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

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use futures::FutureExt;
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

/// A kind as the cache names it: its `apiVersion` and `kind`.
type Kind = (String, String);

/// A child: `apiVersion/kind`, namespace and name.
pub(crate) type ChildKey = (String, Option<String>, String);

/// A kind's store, and the one namespace its watch covers (`None`: all).
type Watched = (Store<DynamicObject>, Option<String>);

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

/// What the cache says about one child.
#[derive(Debug)]
pub(crate) enum Cached {
    /// The kind is not watched, or its watch has not listed yet: ask the API server.
    Unknown,
    /// The watch has listed and the object is not there.
    Absent,
    /// The object's metadata, and its status for an owned kind.
    Present(Arc<DynamicObject>),
}

/// The watched children of one controller, and what it applied to them. Cheap to share.
#[derive(Debug, Default)]
pub struct ChildCache {
    /// Each kind's store, and the one namespace its watch covers (`None`: all).
    kinds: RwLock<HashMap<Kind, Watched>>,
    /// By owner (`namespace/name`), then by child: forgotten with the owner.
    applied: Mutex<HashMap<String, HashMap<ChildKey, Applied>>>,
    /// Objects read by name through the cache ([`crate::Context::get`]), with the resource
    /// version they were read at.
    reads: Mutex<HashMap<ChildKey, ReadObject>>,
}

impl ChildCache {
    /// Adds the store a watch of `resource` fills, in `namespace` only when it is `Some`.
    pub(crate) fn register(
        &self,
        resource: &ApiResource,
        store: Store<DynamicObject>,
        namespace: Option<String>,
    ) {
        self.kinds
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(
                (resource.api_version.clone(), resource.kind.clone()),
                (store, namespace),
            );
    }

    /// The store of a kind whose watch covers `namespace` (`None`: every namespace), once it
    /// has listed.
    fn ready_store(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
    ) -> Option<Store<DynamicObject>> {
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
        matches!(store.wait_until_ready().now_or_never(), Some(Ok(()))).then_some(store)
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
        let mut key = ObjectRef::new_with(name, resource.clone());
        if let Some(namespace) = namespace {
            key = key.within(namespace);
        }
        store.get(&key).map_or(Cached::Absent, Cached::Present)
    }

    /// Every cached object of a kind in `namespace` (`None`: in all), or `None` when the cache
    /// cannot vouch for that list.
    pub(crate) fn list(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
    ) -> Option<Vec<Arc<DynamicObject>>> {
        let objects = self.ready_store(resource, namespace)?.state();
        Some(match namespace {
            Some(namespace) => objects
                .into_iter()
                .filter(|object| object.metadata.namespace.as_deref() == Some(namespace))
                .collect(),
            None => objects,
        })
    }

    fn applied_records(&self) -> MutexGuard<'_, HashMap<String, HashMap<ChildKey, Applied>>> {
        self.applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What was last applied to `child` of `owner`.
    pub(crate) fn applied(&self, owner: &str, child: &ChildKey) -> Option<Applied> {
        self.applied_records()
            .get(owner)
            .and_then(|children| children.get(child))
            .cloned()
    }

    /// Records what was applied to `child` of `owner`, or that it was found converged.
    pub(crate) fn record(&self, owner: &str, child: ChildKey, applied: Applied) {
        self.applied_records()
            .entry(owner.to_owned())
            .or_default()
            .insert(child, applied);
    }

    /// Forgets a child (deleted by a prune).
    pub(crate) fn forget_child(&self, owner: &str, child: &ChildKey) {
        if let Some(children) = self.applied_records().get_mut(owner) {
            children.remove(child);
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

    /// How many children have a record (for tests and benchmarks).
    pub fn recorded(&self) -> usize {
        self.applied_records().values().map(HashMap::len).sum()
    }
}

/// A metadata-only watch event as the cache keeps it: an object with no data.
pub(crate) fn metadata_event(
    event: watcher::Event<PartialObjectMeta<DynamicObject>>,
) -> watcher::Event<DynamicObject> {
    let object = |meta: PartialObjectMeta<DynamicObject>| DynamicObject {
        types: meta.types,
        metadata: meta.metadata,
        data: serde_json::Value::Object(serde_json::Map::new()),
    };
    match event {
        watcher::Event::Apply(meta) => watcher::Event::Apply(object(meta)),
        watcher::Event::Delete(meta) => watcher::Event::Delete(object(meta)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(meta) => watcher::Event::InitApply(object(meta)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Drops from a watched object what the cache does not keep: `managedFields`, and everything
/// but the status (`keep_status`) or everything (`!keep_status`) besides the metadata.
pub(crate) fn slim(object: &mut DynamicObject, keep_status: bool) {
    object.metadata.managed_fields = None;
    if let Some(annotations) = &mut object.metadata.annotations {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    match object.data.as_object_mut() {
        Some(fields) if keep_status => fields.retain(|key, _| key == "status"),
        Some(fields) => fields.clear(),
        None => {}
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

    #[test]
    fn the_cache_vouches_only_for_what_its_watch_covers_once_listed() {
        let resource = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        let cache = ChildCache::default();
        let mut writer = kube::runtime::reflector::store::Writer::new(resource.clone());
        cache.register(&resource, writer.as_reader(), Some("shop".to_owned()));
        // Not listed yet.
        assert!(matches!(
            cache.lookup(&resource, Some("shop"), "a"),
            Cached::Unknown
        ));
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "a", "namespace": "shop" },
        }))
        .unwrap();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
        writer.apply_watcher_event(&watcher::Event::InitDone);
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
        assert!(cache.list(&resource, None).is_none());
        assert_eq!(
            cache.list(&resource, Some("shop")).map(|list| list.len()),
            Some(1)
        );
        // A kind nobody watches.
        let secrets = ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&());
        assert!(matches!(
            cache.lookup(&secrets, Some("shop"), "a"),
            Cached::Unknown
        ));
    }

    #[test]
    fn a_slim_object_keeps_its_metadata_and_status_only() {
        let mut object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {
                "name": "cache",
                "managedFields": [{ "manager": "redis-operator" }],
                "annotations": { "a": "b", "kubectl.kubernetes.io/last-applied-configuration": "{}" },
            },
            "spec": { "replicas": 1 },
            "status": { "readyReplicas": 1 },
        }))
        .unwrap();
        slim(&mut object, true);
        assert_eq!(object.metadata.managed_fields, None);
        assert_eq!(
            object.metadata.annotations,
            Some([("a".to_owned(), "b".to_owned())].into())
        );
        assert_eq!(object.data, json!({ "status": { "readyReplicas": 1 } }));
        slim(&mut object, false);
        assert_eq!(object.data, json!({}));
    }
}
