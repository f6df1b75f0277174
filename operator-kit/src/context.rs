//! [`Context`]: what a reconcile can use besides its object.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use kube::api::{ApiResource, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::warn;

use crate::children::{ChildError, Children};
use crate::metrics::Metrics;
use crate::scope::{self, ObjectScope};

/// What a reconcile can use besides its object: one per controller, shared by all reconciles.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) field_manager: String,
    pub(crate) selector_labels: BTreeMap<String, String>,
    pub(crate) owned_kinds: Vec<ApiResource>,
    pub(crate) recorder: Recorder,
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
