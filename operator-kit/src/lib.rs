//! # operator-kit
//!
//! Write Kubernetes operators the way Kubernetes writes its own controllers: a level-triggered
//! reconcile over kube-runtime that builds the desired objects with pure code, and a runtime
//! that does the rest — server-side apply with owner references and standard labels, pruning,
//! zero writes when nothing changed, finalizers, status conditions, Warning events,
//! per-object backoff, bounded concurrency, leader election, `/healthz` `/readyz` `/metrics`,
//! CRD generation and a test harness against a real API server.
//!
//! ## Start here
//!
//! The [`tutorial`] is a complete operator, compiled, linted, tested and run on a cluster
//! outside this workspace on every change: the repository's `templates/greeting-operator`, a
//! crate to copy. It shows its whole `Cargo.toml`: operator-kit with the Kubernetes version
//! feature (`v1_33` … `v1_37`), serde, thiserror, tokio, and clap for flags of your own.
//!
//! kube, k8s-openapi, schemars and serde_json come from operator-kit ([`kube`],
//! [`k8s_openapi`], [`schemars`], [`serde_json`]), at the versions it is built with: adding
//! them yourself can pull a second, incompatible copy when either side moves to a new major.
//!
//! ## What the runtime guarantees
//! - One reconcile per object at a time, at most `--concurrency` (default 4) at once.
//! - Failed reconciles retry after 250 ms, 0.5 s, 1 s, … up to 5 min, per object; a success
//!   resets the delay ([`backoff`]).
//! - A converged object costs no request at all: children are compared with what the
//!   controller's watches keep ([`cache`]) and status with the object, before anything is
//!   sent or read; a child edited by hand is read, compared and reverted. The controllers of
//!   one operator share those watches: one per kind, namespace and selector ([`cache`]).
//! - A start lists the controllers' own objects first: `/readyz` answers then (1.9 s on
//!   10,000 `Redis`, where listing their 60,000 children at the same time took 6.6 s); the
//!   watches of children list next, and reconciles wait for them rather than reading and
//!   listing each object's children themselves (up to 30 s: a watch that cannot list does not
//!   hold them longer).
//! - With `--leader-election`, only the Lease holder reconciles; standbys keep warm caches and
//!   are ready; a released Lease is taken over at once ([`leader`]).
//! - SIGTERM drains running reconciles within `--shutdown-grace-seconds`.
//! - Watches recover on their own, after an API server restart too: a failed watch retries
//!   within 5 s, and one whose resource version expired starts over from a consistent list, so
//!   nothing created meanwhile is missed ([`watch`]). `/readyz` reports not ready, naming the
//!   watch, while one keeps failing for more than 15 s.
//! - `/metrics` uses controller-runtime's metric names ([`metrics`], on `prometheus-client`),
//!   plus `operator_kit_watch_failures_total` and `operator_kit_watch_restarts_total`;
//!   `workqueue_depth` counts the objects waiting for a worker ([`queue`]).
//!
//! ## Where things are
//! What you implement: [`reconciler`] ([`Reconciler`], [`ReconcileError`]) and the [`Context`]
//! it gets; [`children`] and [`conditions`] for what it writes. What runs it: [`controller`]
//! (one kind, its watches, backoff and events), [`operator`] (controllers, leader election,
//! shutdown) and [`cli`] (the shared `main`). Around them: [`admin`] (the HTTP server),
//! [`metrics`], [`health`], [`watch`], [`leader`], [`events`], [`crd`] and [`rbac`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod api_error;
pub mod backoff;
pub mod cache;
pub mod children;
pub mod cli;
pub mod client;
pub mod conditions;
pub mod config;
pub mod context;
pub mod controller;
pub mod crd;
pub mod events;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod queue;
pub mod rbac;
pub mod reconciler;
pub mod runtime;
pub mod scope;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tutorial;
pub mod watch;

// The crates an operator's own code names, at the versions operator-kit is built with.
pub use k8s_openapi;
pub use kube;
pub use schemars;
pub use serde_json;

pub use children::{ApplyOutcome, ChildError, Children};
pub use config::OperatorArgs;
pub use kube::runtime::controller::Action;
pub use runtime::{
    Context, Controller, ErrorClass, MainError, Operator, OperatorError, ReconcileError,
    Reconciler, ShutdownHandle, run_main, run_main_with,
};
