//! [`Context`]: what a reconcile can use besides its object.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use kube::api::{ApiResource, ObjectMeta, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::warn;

use crate::cache::{Cached, ChildCache};
use crate::children::{ChildError, Children};
use crate::events::{EventNote, EventPublisher};
use crate::leader::LeaseFence;
use crate::metrics::Metrics;
use crate::scope::{self, ObjectScope};

/// What a reconcile can use besides its object: one per controller, shared by all reconciles.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) field_manager: String,
    pub(crate) selector_labels: BTreeMap<String, String>,
    pub(crate) owned_kinds: Vec<ApiResource>,
    pub(crate) events: EventPublisher,
    /// What the watches know of the children (see [`crate::cache`]).
    pub(crate) cache: Arc<ChildCache>,
    /// Until when this replica may act as leader.
    pub(crate) fence: LeaseFence,
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

    /// Whether this replica still holds its Lease by its own clock (always, without leader
    /// election). Reconciles run only on the leader, but a leader frozen mid-reconcile wakes
    /// up still inside it, possibly after the standby took over. Only writes that carry the
    /// resource version they read are then refused by the API server; a merge patch, a
    /// forced server-side apply or a command sent elsewhere (a database's failover, say) is
    /// not. Check this right before such a write or command: it turns false once the last
    /// renewal's validity is past, before the elector notices (see [`LeaseFence`]).
    pub fn lease_held(&self) -> bool {
        self.fence.holds()
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
        Ok(Children::new(
            self.client.clone(),
            &self.field_manager,
            &self.selector_labels,
            owner,
            self.owned_kinds.clone(),
        )?
        .with_cache(self.cache.clone()))
    }

    /// Reads one object of kind `K` by name. When a watch of the controller keeps `K` (an owned
    /// kind, a [`Controller::caches`](crate::Controller::caches) kind or one it
    /// [watches by metadata](crate::Controller::watches_metadata)), the object read last is
    /// kept in memory and returned again without a request for as long as the watch shows it at
    /// the resource version it was read at; otherwise it is read from the API server. For the
    /// few objects a reconcile reads by name on every pass, such as a password Secret.
    pub async fn get<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<K>, kube::Error>
    where
        K: Resource<DynamicType = (), Scope: ObjectScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let resource = ApiResource::erase::<K>(&());
        let key = (
            format!("{}/{}", resource.api_version, resource.kind),
            namespace.map(str::to_owned),
            name.to_owned(),
        );
        let cached = self.cache.lookup(&resource, namespace, name);
        if let Cached::Present(live) = &cached
            && let Some(object) = self.cache.read::<K>(&key, live.resource_version.as_deref())
        {
            return Ok(Some(object));
        }
        let object = scope::api::<K>(self.client.clone(), namespace)
            .get_opt(name)
            .await?;
        let keep = match (&cached, &object) {
            (Cached::Unknown, _) | (_, None) => None,
            (_, Some(object)) => object
                .meta()
                .resource_version
                .clone()
                .map(|version| (version, object.clone())),
        };
        self.cache.keep_read(key, keep);
        Ok(object)
    }

    /// Forgets the object of kind `K` that [`Context::get`] read last under this name: call it
    /// after writing that object, so that a read before the watch shows the write goes to
    /// the API server rather than returning what was read before it.
    pub fn forget<K>(&self, namespace: Option<&str>, name: &str)
    where
        K: Resource<DynamicType = ()> + Send + Sync + 'static,
    {
        let resource = ApiResource::erase::<K>(&());
        let key = (
            format!("{}/{}", resource.api_version, resource.kind),
            namespace.map(str::to_owned),
            name.to_owned(),
        );
        self.cache.keep_read::<K>(key, None);
    }

    /// The metadata of the objects of kind `K` that the controller's watches keep, in
    /// `namespace` (or all) and carrying every one of `labels`; `None` when no watch keeps `K`
    /// or it has not listed yet (then ask the API server).
    pub fn cached_metadata<K>(
        &self,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Option<Vec<ObjectMeta>>
    where
        K: Resource<DynamicType = ()>,
    {
        self.cache
            .labelled(&ApiResource::erase::<K>(&()), namespace, labels)
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
        let event = EventNote {
            event_type,
            reason,
            action,
            note: &note,
        };
        if let Err(error) = self.events.publish(event, &object.object_ref(&())).await {
            warn!(%error, reason, "failed to publish event");
        }
    }
}
