//! # operator-kit
//!
//! Write Kubernetes operators the way Kubernetes writes its own controllers: level-triggered
//! reconciles over kube-runtime, children applied with server-side apply and owner references,
//! pruning, finalizers, status conditions, events, per-object backoff, leader election,
//! metrics and health endpoints, CRD generation, and a test harness against a real API server.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod backoff;
pub mod children;
pub mod conditions;
pub mod config;
pub mod crd;
pub mod leader;
pub mod runtime;
#[cfg(feature = "testing")]
pub mod testing;

pub use children::{ApplyOutcome, ChildError, Children};
pub use config::OperatorArgs;
pub use kube::runtime::controller::Action;
pub use runtime::{
    Context, Controller, ErrorClass, Operator, OperatorError, ReconcileError, Reconciler,
    ShutdownHandle,
};
