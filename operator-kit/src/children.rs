//! Child objects: applied with server-side apply, owned, labelled, pruned — and left alone
//! when they already match.
//!
//! A reconcile builds the objects it wants (pure code) and hands them to [`Children`], which
//! 1. sets the owner reference (`controller: true`, `blockOwnerDeletion: true`) and the
//!    standard `app.kubernetes.io/*` labels,
//! 2. in a controller, first asks its cache ([`crate::cache`]): a child the watch shows
//!    unchanged since this controller applied it (or last found it converged) from this very
//!    desired object costs no request at all, and a child the watch shows absent is created
//!    without being read first,
//! 3. otherwise reads the live object and refuses to touch it when it belongs to someone else —
//!    another object controls it, or it exists without our labels (a user's own ConfigMap that
//!    happens to have a child's name): [`ChildError::NameConflict`] names the object and its
//!    owner,
//! 4. sends nothing when the live object was applied from exactly this desired object (a hash
//!    of it is kept in the [`APPLIED_HASH_ANNOTATION`]) and every field we manage still has the
//!    desired value — a converged object costs no write per resync, and a field removed from
//!    the desired object changes the hash, so the removal reaches the child,
//! 5. otherwise applies it with server-side apply under the operator's field manager, which
//!    also reverts hand edits of the fields we manage (drift) and drops fields we no longer
//!    set,
//! 6. and, in [`Children::prune`], deletes children of the kinds the controller owns that carry
//!    our labels and owner reference but were not applied this time (a feature turned off),
//!    found in the cache (or listed, outside a controller);
//! 7. and, in [`Children::own_labelled`], makes the owner a second owner of the objects another
//!    controller created from its templates (a StatefulSet's volume claims), so that they go
//!    when the owner goes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api_error::{describe, is_refusal};
use crate::cache::{Applied, Cached, CachedObject, ChildCache, ChildKey};
use crate::reconciler::ErrorClass;
use crate::scope::{self, ObjectScope};

/// `app.kubernetes.io/name`: the application, such as `redis`.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the custom resource the child belongs to.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/component`: the child's role, such as `server` or `config`.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/managed-by`: the operator's field manager.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The annotation with a hash of the desired object a child was last applied from: a field
/// removed from the desired object changes it, which comparing the fields we still set cannot
/// see.
pub const APPLIED_HASH_ANNOTATION: &str = "operator-kit.io/applied-hash";

/// Errors of applying and pruning children.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The owner has no name, namespace or UID yet (it was never stored by the API server).
    #[error("failed to own children: the owner {kind} has no {missing}")]
    IncompleteOwner {
        /// The owner's kind.
        kind: String,
        /// The missing metadata field.
        missing: &'static str,
    },
    /// A desired child has no name.
    #[error("failed to apply a {kind}: it has no metadata.name")]
    UnnamedChild {
        /// The child's kind.
        kind: String,
    },
    /// Serializing a desired child failed.
    #[error("failed to serialize {kind} {name:?}: {source}")]
    Serialize {
        /// The child's kind.
        kind: String,
        /// The child's name.
        name: String,
        /// The serde error.
        source: serde_json::Error,
    },
    /// Listing the objects of a kind that carry the owner's labels failed.
    #[error("failed to list {kind} objects labelled {selector:?}: {}", describe(.source))]
    List {
        /// The kind listed.
        kind: String,
        /// The label selector.
        selector: String,
        /// The API error (boxed, as in [`ChildError::Api`]).
        source: Box<kube::Error>,
    },
    /// A child cannot be placed where it was asked to be: a namespaced owner's children are in
    /// its namespace and namespaced (owner references never cross namespaces, and the garbage
    /// collector deletes a cluster-scoped object with a namespaced owner); a cluster-scoped
    /// owner's namespaced children must name their namespace.
    #[error("failed to apply {kind} {name:?}: {reason}")]
    Placement {
        /// The child's kind.
        kind: String,
        /// The child's name.
        name: String,
        /// Why, in words.
        reason: String,
    },
    /// An object with a child's name exists and is not ours: another object controls it, or it
    /// was made by someone else. It is left untouched.
    #[error(
        "failed to apply {kind} {name:?}: {holder}; it is left untouched — delete or rename it, or rename this resource"
    )]
    NameConflict {
        /// The child's kind.
        kind: String,
        /// The child's name.
        name: String,
        /// Who holds it, in words: "it is controlled by Redis \"cache\"", say.
        holder: String,
    },
    /// An API request about one object failed.
    #[error("failed to {verb} {kind} {name:?}: {}", describe(.source))]
    Api {
        /// What was attempted: get, apply, delete, or patch the owner references of.
        verb: &'static str,
        /// The child's kind.
        kind: String,
        /// The child's name (empty for a list).
        name: String,
        /// The API error (boxed: it is large and errors travel through every `?`).
        source: Box<kube::Error>,
    },
}

impl ChildError {
    /// Whether retrying can help: not when the API server refused our own desired object as
    /// invalid, or when the child cannot even be built — those fail the same way until the
    /// owner's spec changes, and retrying them would only repeat the event. Everything else
    /// (a 5xx, a timeout, a conflict, a missing permission) is transient.
    ///
    /// A name conflict is transient: it ends when the other object goes, which the operator is
    /// not told about, so it is retried with backoff (and its event published once).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Api { source, .. } if is_refusal(source) => ErrorClass::WaitForChange,
            Self::Api { .. } | Self::List { .. } | Self::NameConflict { .. } => {
                ErrorClass::Transient
            }
            Self::IncompleteOwner { .. }
            | Self::UnnamedChild { .. }
            | Self::Serialize { .. }
            | Self::Placement { .. } => ErrorClass::WaitForChange,
        }
    }

    /// The condition reason for this error: `NameConflict`, or `ApplyFailed`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NameConflict { .. } => "NameConflict",
            _ => "ApplyFailed",
        }
    }
}

/// What [`Children::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The live object already matched; nothing was sent.
    Unchanged,
    /// The object was created or changed with server-side apply.
    Applied,
}

/// The children of one owner during one reconcile.
pub struct Children {
    client: Client,
    field_manager: String,
    /// The owner's namespace; `None` for a cluster-scoped owner.
    namespace: Option<String>,
    owner_reference: OwnerReference,
    selector_labels: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    owned_kinds: Vec<ApiResource>,
    /// The children applied so far: apiVersion/kind, namespace and name.
    applied: BTreeSet<ChildKey>,
    writes: usize,
    /// What the controller's watches know of the children, when it runs in a controller.
    cache: Option<Arc<ChildCache>>,
    /// The owner as the cache files what was applied for it: `namespace/name`.
    owner_key: String,
}

impl Children {
    /// Starts managing the children of `owner`, an object stored in the cluster: namespaced,
    /// or cluster-scoped.
    ///
    /// `selector` holds the labels that, with the owner's instance label, tell its children
    /// apart: they go into every child and into the selectors of its workloads, so they must
    /// never change (see [`Children::selector_labels`]). The field manager becomes the
    /// `managed-by` label, unless `selector` fixes that label itself. `owned_kinds` are the kinds
    /// that [`Children::prune`] looks at (the controller's `owns` list).
    pub fn new<K>(
        client: Client,
        field_manager: &str,
        selector: &BTreeMap<String, String>,
        owner: &K,
        owned_kinds: Vec<ApiResource>,
    ) -> Result<Self, ChildError>
    where
        K: Resource<DynamicType = (), Scope: ObjectScope>,
    {
        let kind = K::kind(&()).into_owned();
        let missing = |missing| ChildError::IncompleteOwner {
            kind: kind.clone(),
            missing,
        };
        let namespace = owner.meta().namespace.clone();
        if namespace.is_none() && scope::is_namespaced::<K>() {
            return Err(missing("namespace"));
        }
        let name = owner.meta().name.clone().ok_or_else(|| missing("name"))?;
        let uid = owner.meta().uid.clone().ok_or_else(|| missing("uid"))?;
        let owner_reference = OwnerReference {
            api_version: K::api_version(&()).into_owned(),
            kind: kind.clone(),
            name: name.clone(),
            uid,
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let owner_key = crate::queue::key(namespace.as_deref(), &name);
        let mut selector_labels = selector.clone();
        selector_labels.insert(INSTANCE_LABEL.to_owned(), name);
        let mut labels = selector_labels.clone();
        labels
            .entry(MANAGED_BY_LABEL.to_owned())
            .or_insert_with(|| field_manager.to_owned());
        Ok(Self {
            client,
            field_manager: field_manager.to_owned(),
            namespace,
            owner_reference,
            selector_labels,
            labels,
            owned_kinds,
            applied: BTreeSet::new(),
            writes: 0,
            cache: None,
            owner_key,
        })
    }

    /// Reads what it can from `cache` instead of the API server (see [`crate::cache`]).
    pub(crate) fn with_cache(mut self, cache: Arc<ChildCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Remembers that the child `key`, built from the desired object with hash `hash`, is `live`.
    fn remember(&self, key: &ChildKey, hash: &str, live: &ObjectMeta) {
        if let Some(cache) = &self.cache {
            let applied = Applied {
                hash: hash.to_owned(),
                uid: live.uid.clone(),
                generation: live.generation,
                resource_version: live.resource_version.clone(),
            };
            cache.record(&self.owner_key, key, &applied);
        }
    }

    /// The metadata of the objects of `resource` that carry this owner's selector labels (in its
    /// namespace, when it has one): from the cache when it can vouch for the list, else listed.
    async fn labelled(&self, resource: &ApiResource) -> Result<Vec<ObjectMeta>, ChildError> {
        let selector = self.label_selector();
        if let Some(cached) = self.cache.as_ref().and_then(|cache| {
            cache.labelled(resource, self.namespace.as_deref(), &self.selector_labels)
        }) {
            return Ok(cached);
        }
        // A namespaced owner's children are in its namespace; a cluster-scoped owner's are
        // anywhere (the list asks every namespace, or none for a cluster-scoped kind).
        let api = match &self.namespace {
            Some(namespace) => {
                Api::<DynamicObject>::namespaced_with(self.client.clone(), namespace, resource)
            }
            None => Api::<DynamicObject>::all_with(self.client.clone(), resource),
        };
        let list = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| ChildError::List {
                kind: resource.kind.clone(),
                selector: selector.clone(),
                source: Box::new(source),
            })?;
        Ok(list
            .items
            .into_iter()
            .map(|object| object.metadata)
            .collect())
    }

    /// The labels that tell this owner's children apart and never change: the controller's
    /// application name (`app.kubernetes.io/name`, see [`crate::Controller::selector_labels`])
    /// and the owner's name (`app.kubernetes.io/instance`). Use them for the selectors of
    /// workloads and for their pod templates: selectors are immutable, and a pod template label
    /// that changes rolls every pod. Renaming the operator changes neither.
    pub fn selector_labels(&self) -> &BTreeMap<String, String> {
        &self.selector_labels
    }

    /// The labels every child gets: the [`Children::selector_labels`] and
    /// `app.kubernetes.io/managed-by`, the operator's name — which changes when the operator is
    /// renamed, so it belongs in no selector.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The namespace of the owner, and of its namespaced children; `None` when the owner is
    /// cluster-scoped (its namespaced children then name their namespace).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// Adds a kind for [`Children::prune`] to look at, besides the controller's owned kinds — for
    /// kinds that exist only on some clusters (an OpenShift Route) and so cannot be watched.
    pub fn also_prune(&mut self, resource: ApiResource) {
        if !self.owned_kinds.contains(&resource) {
            self.owned_kinds.push(resource);
        }
    }

    /// The number of mutating requests (applies and deletes) sent so far.
    pub fn writes(&self) -> usize {
        self.writes
    }

    /// Applies one desired child (see the module documentation) and returns the live object:
    /// as the API server returned it, or, when the cache showed it unchanged, the desired
    /// object with the live metadata and status.
    pub async fn apply<C>(&mut self, mut desired: C) -> Result<(C, ApplyOutcome), ChildError>
    where
        C: Resource<DynamicType = (), Scope: ObjectScope>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        let kind = C::kind(&()).into_owned();
        let name = desired
            .meta()
            .name
            .clone()
            .ok_or(ChildError::UnnamedChild { kind: kind.clone() })?;
        let namespace = child_namespace(
            scope::is_namespaced::<C>(),
            self.namespace.as_deref(),
            desired.meta().namespace.as_deref(),
        )
        .map_err(|reason| ChildError::Placement {
            kind: kind.clone(),
            name: name.clone(),
            reason,
        })?;
        let meta = desired.meta_mut();
        meta.namespace = namespace.clone();
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        for (key, value) in &self.labels {
            labels.entry(key.clone()).or_insert_with(|| value.clone());
        }
        meta.owner_references = Some(vec![self.owner_reference.clone()]);
        let key = (api_version_kind::<C>(), namespace.clone(), name.clone());
        self.applied.insert(key.clone());

        let mut desired_value =
            serde_json::to_value(&desired).map_err(|source| ChildError::Serialize {
                kind: kind.clone(),
                name: name.clone(),
                source,
            })?;
        if let Value::Object(fields) = &mut desired_value {
            fields.remove("status");
            fields.insert(
                "apiVersion".to_owned(),
                Value::String(C::api_version(&()).into_owned()),
            );
            fields.insert("kind".to_owned(), Value::String(kind.clone()));
        }
        let hash = applied_hash(&desired_value);
        if let Some(metadata) = desired_value
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
            if let Some(annotations) = annotations.as_object_mut() {
                annotations.insert(
                    APPLIED_HASH_ANNOTATION.to_owned(),
                    Value::String(hash.clone()),
                );
            }
        }
        let cached = match &self.cache {
            Some(cache) => cache.lookup(&ApiResource::erase::<C>(&()), namespace.as_deref(), &name),
            None => Cached::Unknown,
        };
        let record = self
            .cache
            .as_ref()
            .and_then(|cache| cache.applied(&self.owner_key, &key));
        // Unchanged since we applied or checked it, as the watch shows: nothing to send or read.
        if let (Cached::Present(live), Some(record)) = (&cached, &record)
            && record.hash == hash
            && let live_meta = live.meta()
            && record.describes(&live_meta)
            && metadata_matches(&desired_value, &live_meta)
        {
            let live =
                from_cache(&desired_value, live).map_err(|source| ChildError::Serialize {
                    kind: kind.clone(),
                    name: name.clone(),
                    source,
                })?;
            return Ok((live, ApplyOutcome::Unchanged));
        }
        let api = scope::api::<C>(self.client.clone(), namespace.as_deref());
        let api_error = |verb, source| ChildError::Api {
            verb,
            kind: kind.clone(),
            name: name.clone(),
            source: Box::new(source),
        };
        let live = match (&cached, &record) {
            // Not there as of the watch, and not applied by us since the operator started:
            // created without reading it first. (As with a read, an object someone makes in
            // the instant before the apply would be taken over.)
            (Cached::Absent, None) => None,
            _ => api
                .get_opt(&name)
                .await
                .map_err(|source| api_error("get", source))?,
        };
        let mut previous_managers = Vec::new();
        if let Some(live) = &live {
            if let Some(holder) = self.holder_other_than_us(live.meta()) {
                return Err(ChildError::NameConflict { kind, name, holder });
            }
            previous_managers = previous_field_managers(live.meta(), &self.field_manager);
            // The desired object carries its hash as an annotation, so this comparison also
            // tells a child applied from another desired object (a field since removed).
            let live_value = serde_json::to_value(live).unwrap_or(Value::Null);
            if previous_managers.is_empty() && is_subset(&desired_value, &live_value) {
                self.remember(&key, &hash, live.meta());
                return Ok((live.clone(), ApplyOutcome::Unchanged));
            }
            // The apply must land on the object just judged ours: if it was deleted and made
            // again by someone else meanwhile, the UID differs and the API server refuses the
            // apply. (Not the resourceVersion: a StatefulSet's status moves on during every
            // rollout, and each move would fail the apply with a conflict.)
            if let Some(metadata) = desired_value
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
            {
                metadata.insert("uid".to_owned(), json!(live.meta().uid));
            }
        }
        let params = PatchParams::apply(&self.field_manager).force();
        let mut applied = api
            .patch(&name, &params, &Patch::Apply(&desired_value))
            .await
            .map_err(|source| api_error("apply", source))?;
        self.writes += 1;
        // The operator was renamed: what its earlier name applied is ours now (the apply above
        // took every field we still set), and an empty apply under the earlier name gives up
        // the rest, so that a field neither name sets any more is removed, as it would have
        // been without the rename.
        for manager in previous_managers {
            let release = json!({
                "apiVersion": C::api_version(&()),
                "kind": kind,
                "metadata": { "name": name, "namespace": namespace, "uid": applied.meta().uid },
            });
            applied = api
                .patch(
                    &name,
                    &PatchParams::apply(&manager),
                    &Patch::Apply(&release),
                )
                .await
                .map_err(|source| api_error("release the fields of an earlier name of", source))?;
            self.writes += 1;
        }
        self.remember(&key, &hash, applied.meta());
        Ok((applied, ApplyOutcome::Applied))
    }

    /// Who holds an existing object with a child's name, when it is not this owner: the object
    /// that controls it, or "someone else" when nothing controls it and it lacks our labels.
    /// An object with our labels and no controller (orphaned by `kubectl delete
    /// --cascade=orphan`, say) is adopted, as Kubernetes' own controllers adopt orphans.
    fn holder_other_than_us(&self, live: &ObjectMeta) -> Option<String> {
        let controller = live
            .owner_references
            .iter()
            .flatten()
            .find(|owner| owner.controller == Some(true));
        if let Some(controller) = controller {
            if controller.uid == self.owner_reference.uid {
                return None;
            }
            let same = controller.kind == self.owner_reference.kind
                && controller.name == self.owner_reference.name;
            return Some(if same {
                format!(
                    "it is controlled by an earlier {} {:?} of the same name (uid {:?}), which the garbage collector has yet to remove",
                    controller.kind, controller.name, controller.uid
                )
            } else {
                format!(
                    "it is controlled by {} {:?}",
                    controller.kind, controller.name
                )
            });
        }
        let labels = live.labels.as_ref();
        let ours = self
            .selector_labels
            .iter()
            .all(|(key, value)| labels.and_then(|labels| labels.get(key)) == Some(value));
        if ours {
            None
        } else {
            Some(format!(
                "it already exists and was not made by {:?} for {} {:?}",
                self.field_manager, self.owner_reference.kind, self.owner_reference.name
            ))
        }
    }

    /// The [`Children::selector_labels`] as a label selector.
    fn label_selector(&self) -> String {
        label_selector(&self.selector_labels)
    }

    /// Deletes the children of the owned kinds that carry this owner's labels and owner
    /// reference but were not applied during this reconcile. Returns how many were deleted.
    pub async fn prune(&mut self) -> Result<usize, ChildError> {
        let mut deleted = 0;
        for resource in self.owned_kinds.clone() {
            for object in self.labelled(&resource).await? {
                let name = object.name.clone().unwrap_or_default();
                let owned = object
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|owner| owner.uid == self.owner_reference.uid);
                let key = (
                    format!("{}/{}", resource.api_version, resource.kind),
                    object.namespace.clone(),
                    name.clone(),
                );
                if !owned || self.applied.contains(&key) || object.deletion_timestamp.is_some() {
                    continue;
                }
                let api = match object.namespace.as_deref() {
                    Some(namespace) => Api::<DynamicObject>::namespaced_with(
                        self.client.clone(),
                        namespace,
                        &resource,
                    ),
                    None => Api::<DynamicObject>::all_with(self.client.clone(), &resource),
                };
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => deleted += 1,
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(source) => {
                        return Err(ChildError::Api {
                            verb: "delete",
                            kind: resource.kind.clone(),
                            name,
                            source: Box::new(source),
                        });
                    }
                }
                if let Some(cache) = &self.cache {
                    cache.forget_child(&self.owner_key, &key);
                }
                self.writes += 1;
            }
        }
        Ok(deleted)
    }

    /// Makes the owner an additional owner of every object of kind `C` (in its namespace, when it
    /// has one) that
    /// carries all of [`Children::selector_labels`] and whose name `belongs` accepts when `owned` is
    /// true, and takes that reference away when it is false. Returns how many objects were
    /// changed; converged objects cost one list.
    ///
    /// Labels alone are not enough: two owners of different kinds with the same name carry the
    /// same instance label, so `belongs` tells this owner's objects by name (for claims:
    /// `<template>-<statefulset>-<ordinal>`; see [`is_claim_of`]).
    ///
    /// This is for objects another controller creates from a template the operator wrote, such
    /// as the claims a StatefulSet creates from its `volumeClaimTemplates`: with the custom
    /// resource among their owners, the garbage collector deletes them when it is deleted. The
    /// StatefulSet's `persistentVolumeClaimRetentionPolicy` alone is not enough: its controller
    /// adds its owner reference to a claim after creating it, and when that update fails (a
    /// conflict with the volume binder) and the StatefulSet is deleted before the retry, the
    /// claim is never deleted (kubernetes/kubernetes#142130).
    ///
    /// The reference is not a controller reference and does not block the owner's deletion. The
    /// JSON patch appends or removes just that reference, so it never undoes another
    /// controller's concurrent change to the list.
    pub async fn own_labelled<C>(
        &mut self,
        owned: bool,
        belongs: impl Fn(&str) -> bool,
    ) -> Result<usize, ChildError>
    where
        C: Resource<DynamicType = (), Scope: ObjectScope> + Clone + Debug + DeserializeOwned,
    {
        let kind = C::kind(&()).into_owned();
        let labelled = self.labelled(&ApiResource::erase::<C>(&())).await?;
        let reference = OwnerReference {
            controller: Some(false),
            block_owner_deletion: Some(false),
            ..self.owner_reference.clone()
        };
        let mut changed = 0;
        for mut meta in labelled {
            let name = meta.name.clone().unwrap_or_default();
            if !belongs(&name) {
                continue;
            }
            let api = scope::api::<C>(self.client.clone(), meta.namespace.as_deref());
            // A `test` fails (422) only when the list changed between our read and the patch,
            // such as the StatefulSet controller adding its own reference at that moment: read
            // the object again and recompute, a few times, rather than fail the reconcile.
            for attempt in 1..=OWNERSHIP_ATTEMPTS {
                let Some(patch) = ownership_patch(&meta, &reference, owned) else {
                    break;
                };
                let patch: json_patch::Patch =
                    serde_json::from_value(patch).map_err(|source| ChildError::Serialize {
                        kind: kind.clone(),
                        name: name.clone(),
                        source,
                    })?;
                self.writes += 1;
                let error = match api
                    .patch_metadata(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
                    .await
                {
                    Ok(_) => {
                        changed += 1;
                        break;
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => break,
                    Err(kube::Error::Api(status))
                        if status.code == 422 && attempt < OWNERSHIP_ATTEMPTS =>
                    {
                        match api.get_metadata_opt(&name).await {
                            Ok(Some(fresh)) => {
                                meta = fresh.metadata;
                                continue;
                            }
                            Ok(None) => break,
                            Err(error) => error,
                        }
                    }
                    Err(error) => error,
                };
                return Err(ChildError::Api {
                    verb: "patch the owner references of",
                    kind,
                    name,
                    source: Box::new(error),
                });
            }
        }
        Ok(changed)
    }
}

/// `labels` as a label selector that matches objects carrying every one of them: `a=x,b=y`.
pub fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `name` is a claim the StatefulSet `stateful_set` made from its claim template
/// `template`: `<template>-<stateful_set>-<ordinal>`.
pub fn is_claim_of(name: &str, template: &str, stateful_set: &str) -> bool {
    name.strip_prefix(template)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_prefix(stateful_set))
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|ordinal| !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()))
}

/// How often [`Children::own_labelled`] recomputes a patch whose `test` failed.
const OWNERSHIP_ATTEMPTS: usize = 3;

/// The JSON patch (RFC 6902) that adds `reference` to `meta`'s owner references when `owned`,
/// or removes it when not; `None` when they already agree, or when the object is going away.
///
/// Each applies to the latest stored object, without a resource version, so unrelated changes
/// (the volume binder's annotations) never make it fail: an append (`/-`); a removal guarded by
/// a `test` of the UID at that index; a first owner reference guarded by a `test` that the list
/// is still absent (a missing member tests equal to `null`).
fn ownership_patch(meta: &ObjectMeta, reference: &OwnerReference, owned: bool) -> Option<Value> {
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let references = meta.owner_references.as_deref().unwrap_or_default();
    let position = references
        .iter()
        .position(|existing| existing.uid == reference.uid);
    match (owned, position) {
        (true, None) if references.is_empty() => Some(json!([
            { "op": "test", "path": "/metadata/ownerReferences", "value": null },
            { "op": "add", "path": "/metadata/ownerReferences", "value": [reference] },
        ])),
        (true, None) => Some(json!([
            { "op": "add", "path": "/metadata/ownerReferences/-", "value": reference },
        ])),
        (false, Some(index)) => Some(json!([
            { "op": "test", "path": format!("/metadata/ownerReferences/{index}/uid"), "value": reference.uid },
            { "op": "remove", "path": format!("/metadata/ownerReferences/{index}") },
        ])),
        _ => None,
    }
}

/// The namespace of a child: `Ok(None)` for a cluster-scoped one. A namespaced owner's children
/// are in its namespace (a desired object may repeat it, not name another); a cluster-scoped
/// owner's namespaced children name theirs.
pub fn child_namespace(
    child_namespaced: bool,
    owner_namespace: Option<&str>,
    desired_namespace: Option<&str>,
) -> Result<Option<String>, String> {
    match (child_namespaced, owner_namespace, desired_namespace) {
        (true, Some(owner), None) => Ok(Some(owner.to_owned())),
        (true, Some(owner), Some(desired)) if desired == owner => Ok(Some(owner.to_owned())),
        (true, Some(owner), Some(desired)) => Err(format!(
            "it is in namespace {desired:?}, and an owner in namespace {owner:?} can own objects of its own namespace only"
        )),
        (true, None, Some(desired)) => Ok(Some(desired.to_owned())),
        (true, None, None) => Err(
            "it has no metadata.namespace, which a namespaced child of a cluster-scoped owner needs"
                .to_owned(),
        ),
        (false, None, _) => Ok(None),
        (false, Some(owner), _) => Err(format!(
            "it is cluster-scoped, and an owner in namespace {owner:?} cannot own it (the garbage collector would delete it)"
        )),
    }
}

/// The earlier names of this operator that applied the object: field managers, other than
/// `ours`, of server-side applies that set the [`APPLIED_HASH_ANNOTATION`] — only operator-kit
/// sets it, and only the object's controller, so they are this operator before a rename.
/// (Other appliers, such as `kubectl apply --server-side` adding a label, are not touched.)
pub fn previous_field_managers(live: &ObjectMeta, ours: &str) -> Vec<String> {
    let hash_field = format!("f:{APPLIED_HASH_ANNOTATION}");
    let mut managers: Vec<String> = live
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.operation.as_deref() == Some("Apply"))
        .filter(|entry| entry.subresource.as_deref().unwrap_or_default().is_empty())
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .and_then(|fields| fields.0.pointer("/f:metadata/f:annotations"))
                .and_then(|annotations| annotations.get(&hash_field))
                .is_some()
        })
        .filter_map(|entry| entry.manager.clone())
        .filter(|manager| manager != ours)
        .collect();
    managers.sort();
    managers.dedup();
    managers
}

/// A short hash of the desired object (serialized with its keys sorted), for the
/// [`APPLIED_HASH_ANNOTATION`].
fn applied_hash(desired: &Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(canonical(desired).to_string().as_bytes());
    digest
        .iter()
        .take(12)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `value` with every object's keys in sorted order, whatever map serde_json was built with.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(fields) => {
            let sorted: BTreeMap<&String, Value> = fields
                .iter()
                .map(|(key, value)| (key, canonical(value)))
                .collect();
            json!(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Whether the metadata we set on a child (labels, annotations with the applied hash, owner
/// reference) is all in `live`.
fn metadata_matches(desired: &Value, live: &ObjectMeta) -> bool {
    let live = serde_json::to_value(live).unwrap_or(Value::Null);
    desired
        .get("metadata")
        .is_some_and(|metadata| is_subset(metadata, &live))
}

/// The child as the cache knows it: the desired object (which it matches) with the live
/// metadata and status.
fn from_cache<C: DeserializeOwned>(
    desired: &Value,
    live: &CachedObject,
) -> Result<C, serde_json::Error> {
    let mut value = desired.clone();
    if let Value::Object(fields) = &mut value {
        fields.insert("metadata".to_owned(), serde_json::to_value(live.meta())?);
        if let Some(status) = live.status() {
            fields.insert("status".to_owned(), status);
        }
    }
    serde_json::from_value(value)
}

fn api_version_kind<C: Resource<DynamicType = ()>>() -> String {
    format!("{}/{}", C::api_version(&()), C::kind(&()))
}

/// Whether every field set in `desired` has the same value in `live`.
///
/// Fields the API server added (defaults, status, other managers' fields) are ignored; a
/// `null`, zero, `false`, empty string, empty object or empty list in `desired` matches a
/// missing field, because the API server drops those. Lists must have the same length and match element by element, since
/// server-side apply would replace a list we own as a whole.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(desired), Value::Object(live)) => {
            desired.iter().all(|(key, value)| match live.get(key) {
                Some(live_value) => is_subset(value, live_value),
                None => is_empty(value),
            })
        }
        (Value::Array(desired), Value::Array(live)) => {
            desired.len() == live.len()
                && desired
                    .iter()
                    .zip(live)
                    .all(|(desired, live)| is_subset(desired, live))
        }
        (Value::Number(desired), Value::Number(live)) => desired.as_f64() == live.as_f64(),
        // The API server writes quantities in canonical form: `1024Mi` comes back as `1Gi`,
        // `0.5` as `500m`. The same amount is no drift.
        (Value::String(desired), Value::String(live)) if desired != live => {
            match (quantity(desired), quantity(live)) {
                (Some(desired), Some(live)) => {
                    (desired - live).abs() <= f64::EPSILON * desired.abs().max(live.abs())
                }
                _ => false,
            }
        }
        (Value::Null, _) => true,
        (desired, Value::Null) => is_empty(desired),
        (desired, live) => desired == live,
    }
}

/// The amount a Kubernetes quantity (`1Gi`, `500m`, `1.5`, `2e3`) stands for, or `None` when
/// `text` is not one.
fn quantity(text: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 15] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let text = text.trim();
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| text.strip_suffix(suffix).map(|number| (number, *factor)))
        .unwrap_or((text, 1.0));
    let plain = number
        .strip_prefix(['+', '-'])
        .unwrap_or(number)
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    if number.is_empty()
        || !plain
        || !number.starts_with(|c: char| c.is_ascii_digit() || "+-.".contains(c))
    {
        return None;
    }
    number.parse::<f64>().ok().map(|amount| amount * factor)
}

/// Whether the API server would drop `value`: Kubernetes' Go types omit empty and zero values
/// (`omitempty`), so a desired `0`, `false` or `""` matches a missing live field.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(flag) => !flag,
        Value::Number(number) => number.as_f64() == Some(0.0),
        Value::String(text) => text.is_empty(),
        Value::Object(fields) => fields.values().all(is_empty),
        Value::Array(items) => items.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    use super::*;

    fn managed(
        manager: &str,
        operation: &str,
        subresource: &str,
        fields: Value,
    ) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.to_owned()),
            operation: Some(operation.to_owned()),
            subresource: (!subresource.is_empty()).then(|| subresource.to_owned()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    fn children_of_cache(selector: &[(&str, &str)]) -> Children {
        // Never connects: only the labels are looked at.
        let offline = kube::Config::new(http::Uri::from_static("https://127.0.0.1:9"));
        let owner = ConfigMap {
            metadata: ObjectMeta {
                name: Some("cache".to_owned()),
                namespace: Some("shop".to_owned()),
                uid: Some("uid-1".to_owned()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let selector = selector
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        Children::new(
            Client::try_from(offline).expect("offline client"),
            "renamed-operator",
            &selector,
            &owner,
            Vec::new(),
        )
        .expect("children")
    }

    #[tokio::test]
    async fn selector_labels_never_carry_the_operators_name() {
        let children = children_of_cache(&[(NAME_LABEL, "redis")]);
        let selector = BTreeMap::from([
            (NAME_LABEL.to_owned(), "redis".to_owned()),
            (INSTANCE_LABEL.to_owned(), "cache".to_owned()),
        ]);
        assert_eq!(children.selector_labels(), &selector);
        let mut labels = selector;
        labels.insert(MANAGED_BY_LABEL.to_owned(), "renamed-operator".to_owned());
        assert_eq!(children.labels(), &labels);

        // Selectors fixed in code as an earlier release derived them (ours: name and
        // managed-by set to "redis-operator") stay exactly so under any operator name, and
        // the managed-by label with them.
        let pinned = [
            (NAME_LABEL, "redis-operator"),
            (MANAGED_BY_LABEL, "redis-operator"),
        ];
        let children = children_of_cache(&pinned);
        let earlier = BTreeMap::from([
            (NAME_LABEL.to_owned(), "redis-operator".to_owned()),
            (INSTANCE_LABEL.to_owned(), "cache".to_owned()),
            (MANAGED_BY_LABEL.to_owned(), "redis-operator".to_owned()),
        ]);
        assert_eq!(children.selector_labels(), &earlier);
        assert_eq!(children.labels(), &earlier);
    }

    #[test]
    fn children_are_placed_where_owner_references_allow() {
        let place = child_namespace;
        assert_eq!(place(true, Some("shop"), None), Ok(Some("shop".to_owned())));
        assert_eq!(
            place(true, Some("shop"), Some("shop")),
            Ok(Some("shop".to_owned()))
        );
        assert_eq!(
            place(true, None, Some("team-a")),
            Ok(Some("team-a".to_owned()))
        );
        assert_eq!(place(false, None, None), Ok(None));
        let error = place(true, Some("shop"), Some("other")).unwrap_err();
        assert!(
            error.contains("\"other\"") && error.contains("\"shop\""),
            "{error}"
        );
        let error = place(true, None, None).unwrap_err();
        assert!(error.contains("metadata.namespace"), "{error}");
        let error = place(false, Some("shop"), None).unwrap_err();
        assert!(error.contains("cluster-scoped"), "{error}");
    }

    #[test]
    fn only_earlier_names_of_the_operator_are_previous_field_managers() {
        let hash =
            json!({ "f:metadata": { "f:annotations": { "f:operator-kit.io/applied-hash": {} } } });
        let label = json!({ "f:metadata": { "f:labels": { "f:team": {} } } });
        let live = ObjectMeta {
            managed_fields: Some(vec![
                managed("new-name", "Apply", "", hash.clone()),
                managed("old-name", "Apply", "", hash.clone()),
                // A person's `kubectl apply --server-side` of a label of their own.
                managed("kubectl", "Apply", "", label),
                // Status writes and updates are not applies of the object.
                managed("older-name", "Apply", "status", hash.clone()),
                managed("kube-controller-manager", "Update", "", hash),
            ]),
            ..ObjectMeta::default()
        };
        assert_eq!(previous_field_managers(&live, "new-name"), ["old-name"]);
        assert!(previous_field_managers(&ObjectMeta::default(), "new-name").is_empty());
    }

    fn claim_owner(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".to_owned(),
            kind: "StatefulSet".to_owned(),
            name: "cache".to_owned(),
            uid: uid.to_owned(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn ours() -> OwnerReference {
        OwnerReference {
            api_version: "redis.operator-kit.io/v1beta1".to_owned(),
            kind: "Redis".to_owned(),
            name: "cache".to_owned(),
            uid: "redis-uid".to_owned(),
            controller: Some(false),
            block_owner_deletion: Some(false),
        }
    }

    #[test]
    fn ownership_patches_append_or_remove_only_our_reference() {
        let mut meta = ObjectMeta::default();
        // A first reference replaces the absent list: guarded by a test that it is still absent.
        let first = ownership_patch(&meta, &ours(), true).expect("a patch");
        assert_eq!(first[0]["op"], "test");
        assert_eq!(first[0]["path"], "/metadata/ownerReferences");
        assert_eq!(first[0]["value"], Value::Null);
        assert_eq!(first[1]["path"], "/metadata/ownerReferences");
        assert_eq!(first[1]["value"][0]["uid"], "redis-uid");
        assert_eq!(first[1]["value"][0]["controller"], false);
        assert_eq!(ownership_patch(&meta, &ours(), false), None);

        // Next to the StatefulSet's reference: appended, the other one untouched.
        meta.owner_references = Some(vec![claim_owner("set-uid")]);
        let append = ownership_patch(&meta, &ours(), true).expect("a patch");
        assert_eq!(append.as_array().map(Vec::len), Some(1));
        assert_eq!(append[0]["op"], "add");
        assert_eq!(append[0]["path"], "/metadata/ownerReferences/-");

        // Already there: nothing to send; not wanted: removed at its index, checked by UID.
        meta.owner_references = Some(vec![claim_owner("set-uid"), ours()]);
        assert_eq!(ownership_patch(&meta, &ours(), true), None);
        let remove = ownership_patch(&meta, &ours(), false).expect("a patch");
        assert_eq!(remove[0]["op"], "test");
        assert_eq!(remove[0]["path"], "/metadata/ownerReferences/1/uid");
        assert_eq!(remove[0]["value"], "redis-uid");
        assert_eq!(remove[1]["op"], "remove");
        assert_eq!(remove[1]["path"], "/metadata/ownerReferences/1");

        // An object being deleted is left alone.
        meta.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(ownership_patch(&meta, &ours(), false), None);
    }

    #[test]
    fn claims_are_told_by_their_statefulset_name() {
        assert!(is_claim_of("data-cache-0", "data", "cache"));
        assert!(is_claim_of("data-cache-12", "data", "cache"));
        assert!(!is_claim_of("data-cache-node-0", "data", "cache"));
        assert!(is_claim_of("data-cache-node-0", "data", "cache-node"));
        assert!(!is_claim_of("data-cache-", "data", "cache"));
        assert!(!is_claim_of("logs-cache-0", "data", "cache"));
    }

    #[test]
    fn fields_added_by_the_server_do_not_count_as_drift() {
        let desired =
            json!({"spec": {"replicas": 1, "template": {"metadata": {}}, "paused": null}});
        let live = json!({"spec": {"replicas": 1, "revisionHistoryLimit": 10, "template": {"spec": {}}},
                          "status": {"readyReplicas": 1}});
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn a_changed_value_or_list_is_drift() {
        let desired = json!({"spec": {"replicas": 1, "ports": [{"port": 80}]}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 1, "ports": [{"port": 80}, {"port": 81}]}})
        ));
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 1}})));
        assert!(!is_subset(
            &json!({"data": {"a": "1"}}),
            &json!({"data": {"a": "2"}})
        ));
    }

    #[test]
    fn quantities_compare_by_amount_and_other_strings_exactly() {
        assert!(is_subset(
            &json!({"memory": "1024Mi"}),
            &json!({"memory": "1Gi"})
        ));
        assert!(is_subset(&json!({"cpu": "0.5"}), &json!({"cpu": "500m"})));
        assert!(is_subset(&json!({"cpu": "2000m"}), &json!({"cpu": "2"})));
        assert!(is_subset(
            &json!({"storage": "1e3"}),
            &json!({"storage": "1k"})
        ));
        assert!(!is_subset(
            &json!({"memory": "1Gi"}),
            &json!({"memory": "1G"})
        ));
        assert!(!is_subset(
            &json!({"memory": "512Mi"}),
            &json!({"memory": "1Gi"})
        ));
        assert!(!is_subset(
            &json!({"image": "redis:7"}),
            &json!({"image": "redis:8"})
        ));
        assert_eq!(quantity("lots"), None);
        assert_eq!(quantity("Mi"), None);
        assert_eq!(quantity("e5"), None);
        assert_eq!(quantity("1.5Gi"), Some(1.5 * 1_073_741_824.0));
    }

    #[test]
    fn the_applied_hash_changes_when_a_field_is_removed_and_not_when_keys_move() {
        let with = json!({"spec": {"nodeSelector": {"disk": "ssd"}, "replicas": 1}});
        let without = json!({"spec": {"replicas": 1}});
        let reordered: Value =
            serde_json::from_str(r#"{"spec": {"replicas": 1, "nodeSelector": {"disk": "ssd"}}}"#)
                .unwrap();
        assert_ne!(applied_hash(&with), applied_hash(&without));
        assert_eq!(applied_hash(&with), applied_hash(&reordered));
        // The removal is invisible to the field comparison alone: that is why the hash exists.
        assert!(is_subset(&without, &with));
    }

    #[test]
    fn numbers_compare_by_value_and_empty_values_match_missing_fields() {
        assert!(is_subset(&json!({"a": 1}), &json!({"a": 1.0})));
        assert!(is_subset(&json!({"a": [], "b": {"c": null}}), &json!({})));
        assert!(!is_subset(&json!({"a": [1]}), &json!({})));
        // Go's omitempty drops zero values: `initialDelaySeconds: 0` comes back missing.
        let probe =
            json!({"initialDelaySeconds": 0, "periodSeconds": 10, "path": "", "tls": false});
        assert!(is_subset(&probe, &json!({"periodSeconds": 10})));
        assert!(!is_subset(&json!({"periodSeconds": 10}), &json!({})));
    }
}
