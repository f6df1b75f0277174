//! Child objects: applied with server-side apply, owned, labelled, pruned — and left alone
//! when they already match.
//!
//! A reconcile builds the objects it wants (pure code) and hands them to [`Children`], which
//! 1. sets the owner reference (`controller: true`, `blockOwnerDeletion: true`) and the
//!    standard `app.kubernetes.io/*` labels,
//! 2. reads the live object and sends nothing when every field we manage already has the
//!    desired value — a converged object costs no write per resync,
//! 3. otherwise applies it with server-side apply under the operator's field manager, which
//!    also reverts hand edits of the fields we manage (drift),
//! 4. and, in [`Children::prune`], deletes children of the kinds the controller owns that carry
//!    our labels and owner reference but were not applied this time (a feature turned off);
//! 5. and, in [`Children::own_labelled`], makes the owner a second owner of the objects another
//!    controller created from its templates (a StatefulSet's volume claims), so that they go
//!    when the owner goes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api_error::{describe, is_refusal};
use crate::runtime::ErrorClass;

/// `app.kubernetes.io/name`: the application, such as `redis`.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the custom resource the child belongs to.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/component`: the child's role, such as `server` or `config`.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/managed-by`: the operator's field manager.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

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
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Api { source, .. } if is_refusal(source) => ErrorClass::WaitForChange,
            Self::Api { .. } | Self::List { .. } => ErrorClass::Transient,
            Self::IncompleteOwner { .. } | Self::UnnamedChild { .. } | Self::Serialize { .. } => {
                ErrorClass::WaitForChange
            }
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
    namespace: String,
    owner_reference: OwnerReference,
    labels: BTreeMap<String, String>,
    owned_kinds: Vec<ApiResource>,
    applied: BTreeSet<(String, String)>,
    writes: usize,
}

impl Children {
    /// Starts managing the children of `owner`, a namespaced object stored in the cluster.
    ///
    /// `application` becomes `app.kubernetes.io/name`; `owned_kinds` are the kinds that
    /// [`Children::prune`] looks at (the controller's `owns` list).
    pub fn new<K>(
        client: Client,
        field_manager: &str,
        application: &str,
        owner: &K,
        owned_kinds: Vec<ApiResource>,
    ) -> Result<Self, ChildError>
    where
        K: Resource<DynamicType = ()>,
    {
        let kind = K::kind(&()).into_owned();
        let missing = |missing| ChildError::IncompleteOwner {
            kind: kind.clone(),
            missing,
        };
        let namespace = owner
            .meta()
            .namespace
            .clone()
            .ok_or_else(|| missing("namespace"))?;
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
        let labels = BTreeMap::from([
            (NAME_LABEL.to_owned(), application.to_owned()),
            (INSTANCE_LABEL.to_owned(), name),
            (MANAGED_BY_LABEL.to_owned(), field_manager.to_owned()),
        ]);
        Ok(Self {
            client,
            field_manager: field_manager.to_owned(),
            namespace,
            owner_reference,
            labels,
            owned_kinds,
            applied: BTreeSet::new(),
            writes: 0,
        })
    }

    /// The labels every child gets; selectors of the owner's workloads can use them.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The namespace of the owner and its children.
    pub fn namespace(&self) -> &str {
        &self.namespace
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

    /// Applies one desired child (see the module documentation) and returns the live object.
    pub async fn apply<C>(&mut self, mut desired: C) -> Result<(C, ApplyOutcome), ChildError>
    where
        C: Resource<DynamicType = (), Scope = NamespaceResourceScope>
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
        let meta = desired.meta_mut();
        meta.namespace = Some(self.namespace.clone());
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        for (key, value) in &self.labels {
            labels.entry(key.clone()).or_insert_with(|| value.clone());
        }
        meta.owner_references = Some(vec![self.owner_reference.clone()]);
        self.applied.insert((api_version_kind::<C>(), name.clone()));

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
        let api = Api::<C>::namespaced(self.client.clone(), &self.namespace);
        let api_error = |verb, source| ChildError::Api {
            verb,
            kind: kind.clone(),
            name: name.clone(),
            source: Box::new(source),
        };
        let live = api
            .get_opt(&name)
            .await
            .map_err(|source| api_error("get", source))?;
        if let Some(live) = live {
            let live_value = serde_json::to_value(&live).unwrap_or(Value::Null);
            if is_subset(&desired_value, &live_value) {
                return Ok((live, ApplyOutcome::Unchanged));
            }
        }
        let params = PatchParams::apply(&self.field_manager).force();
        let applied = api
            .patch(&name, &params, &Patch::Apply(&desired_value))
            .await
            .map_err(|source| api_error("apply", source))?;
        self.writes += 1;
        Ok((applied, ApplyOutcome::Applied))
    }

    /// Deletes the children of the owned kinds that carry this owner's labels and owner
    /// reference but were not applied during this reconcile. Returns how many were deleted.
    pub async fn prune(&mut self) -> Result<usize, ChildError> {
        let selector = format!(
            "{MANAGED_BY_LABEL}={},{INSTANCE_LABEL}={}",
            self.field_manager, self.owner_reference.name
        );
        let mut deleted = 0;
        for resource in self.owned_kinds.clone() {
            let api = Api::<DynamicObject>::namespaced_with(
                self.client.clone(),
                &self.namespace,
                &resource,
            );
            let list_error = |source| ChildError::List {
                kind: resource.kind.clone(),
                selector: selector.clone(),
                source: Box::new(source),
            };
            let list = api
                .list_metadata(&ListParams::default().labels(&selector))
                .await
                .map_err(list_error)?;
            for object in list.items {
                let name = object.name_any();
                let owned = object
                    .owner_references()
                    .iter()
                    .any(|owner| owner.uid == self.owner_reference.uid);
                let key = (
                    format!("{}/{}", resource.api_version, resource.kind),
                    name.clone(),
                );
                if !owned
                    || self.applied.contains(&key)
                    || object.metadata.deletion_timestamp.is_some()
                {
                    continue;
                }
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
                self.writes += 1;
            }
        }
        Ok(deleted)
    }

    /// Makes the owner an additional owner of every object of kind `C` in its namespace that
    /// carries all of [`Children::labels`] when `owned` is true, and takes that reference away
    /// when it is false. Returns how many objects were changed; converged objects cost one list.
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
    pub async fn own_labelled<C>(&mut self, owned: bool) -> Result<usize, ChildError>
    where
        C: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        let kind = C::kind(&()).into_owned();
        let selector = self
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(",");
        let api = Api::<C>::namespaced(self.client.clone(), &self.namespace);
        let list = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| ChildError::List {
                kind: kind.clone(),
                selector: selector.clone(),
                source: Box::new(source),
            })?;
        let reference = OwnerReference {
            controller: Some(false),
            block_owner_deletion: Some(false),
            ..self.owner_reference.clone()
        };
        let mut changed = 0;
        for object in list.items {
            let name = object.name_any();
            let mut meta = object.metadata;
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
        (Value::Null, _) => true,
        (desired, Value::Null) => is_empty(desired),
        (desired, live) => desired == live,
    }
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
    use super::*;

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
