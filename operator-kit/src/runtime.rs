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
//!
//! The parts live in their own modules: [`crate::reconciler`] (what an author implements),
//! [`crate::context`], [`crate::controller`], [`crate::operator`] and [`crate::cli`]; this
//! module gathers them under one name.

pub use crate::cli::{MainError, NoFlags, OperatorCommand, run_main, run_main_with};
pub use crate::context::Context;
pub use crate::controller::Controller;
pub use crate::operator::{Operator, OperatorError, ShutdownHandle};
pub use crate::reconciler::{ErrorClass, ReconcileError, Reconciler, RuntimeError};
