//! What an operator author implements: a [`Reconciler`] for one kind, and how its errors are
//! treated ([`ReconcileError`], [`ErrorClass`]).

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::finalizer;
use kube::runtime::reflector::ObjectRef;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::scope::ObjectScope;

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
    /// children changes, and when the returned [`Action`] asks for it. `object` is as the
    /// controller's watch shows it, without its `managedFields` and without the
    /// `kubectl.kubernetes.io/last-applied-configuration` annotation. Never called for an object
    /// being deleted: its children are the garbage collector's to delete, and
    /// [`cleanup`](Self::cleanup) runs instead when the controller has a finalizer.
    fn reconcile(
        &self,
        object: Arc<Self::Resource>,
        context: &Context,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send;

    /// Cleans up what owner references cannot (state outside the cluster) before the object
    /// is deleted. Only called for controllers built with [`Controller::finalizer`](crate::Controller::finalizer).
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

    pub(crate) fn class(&self) -> ErrorClass {
        self.inner()
            .map_or(ErrorClass::Transient, ReconcileError::class)
    }

    pub(crate) fn reason(&self) -> &str {
        self.inner()
            .map_or("FinalizerFailed", ReconcileError::reason)
    }
}
