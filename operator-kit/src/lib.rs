//! # operator-kit
//!
//! Write Kubernetes operators the way Kubernetes writes its own controllers: a level-triggered
//! reconcile over kube-runtime that builds the desired objects with pure code, and a runtime
//! that does the rest — server-side apply with owner references and standard labels, pruning,
//! zero writes when nothing changed, finalizers, status conditions, Warning events,
//! per-object backoff, bounded concurrency, leader election, `/healthz` `/readyz` `/metrics`,
//! CRD generation and a test harness against a real API server.
//!
//! ## Tutorial: a Website operator in four steps
//!
//! The complete code is the `website-operator` crate in the repository's `examples/`; this is
//! its outline.
//!
//! **1. Types.** A custom resource is a Rust struct. Every field's doc comment becomes
//! `kubectl explain` text; short names, categories, printer columns and validation live on the
//! type.
//!
//! ```ignore
//! #[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
//! #[kube(group = "examples.operator-kit.io", version = "v1alpha1", kind = "Website", namespaced)]
//! #[kube(status = "WebsiteStatus", shortname = "web", category = "examples")]
//! pub struct WebsiteSpec {
//!     /// The HTML page to serve.
//!     pub html: String,
//!     /// How many pods serve the page.
//!     #[schemars(range(min = 0, max = 10))]
//!     pub replicas: i32,
//! }
//! ```
//!
//! **2. Build.** A pure function from the resource to the children you want. No API calls, so
//! it is unit-tested like any function.
//!
//! ```ignore
//! pub fn build(site: &Website, labels: &BTreeMap<String, String>) -> (ConfigMap, Deployment) { ... }
//! ```
//!
//! **3. Reconcile.** Implement [`Reconciler`]: hand the built objects to [`Children`] (which
//! applies only what differs and prunes what is no longer wanted), then write the status with
//! [`conditions`] and [`Context::patch_status`] (which writes only when it changed). Classify
//! errors with [`ReconcileError`]: an invalid spec waits for a change, anything else is retried
//! with backoff, and each failure becomes a Warning event.
//!
//! ```ignore
//! impl Reconciler for WebsiteReconciler {
//!     type Resource = Website;
//!     type Error = Error;
//!
//!     async fn reconcile(&self, site: Arc<Website>, context: &Context) -> Result<Action, Error> {
//!         let mut children = context.children(&*site)?;
//!         let (page, deployment) = build(&site, children.labels());
//!         children.apply(page).await?;
//!         let (deployment, _) = children.apply(deployment).await?;
//!         children.prune().await?;
//!         let mut status = site.status.clone().unwrap_or_default();
//!         set_condition(&mut status.conditions, ConditionUpdate::holds(READY, "Available", "serving"));
//!         context.patch_status(&*site, &status).await.map_err(Error::Status)?;
//!         Ok(Action::await_change())
//!     }
//! }
//! ```
//!
//! **4. Run.** A thin `main`: one [`Controller`] per kind with the child kinds it owns, handed
//! to [`runtime::run_main`], which parses the flags of [`OperatorArgs`] (each with an environment
//! variable), prints the CRDs on `--print-crds`, and runs an [`Operator`].
//!
//! ```ignore
//! #[tokio::main]
//! async fn main() -> Result<(), operator_kit::runtime::MainError> {
//!     let controller = Controller::new("website", WebsiteReconciler).owns::<ConfigMap>().owns::<Deployment>();
//!     // `--print-crds`, `--help`, every flag of OperatorArgs, logging, client, run until SIGTERM.
//!     operator_kit::runtime::run_main("website-operator", &[Website::crd()], |operator| {
//!         operator.with_controller(controller)
//!     })
//!     .await
//! }
//! ```
//!
//! **Test** against a real API server with the `testing` feature: `testing::TestNamespace`
//! gives each test its own namespace, `install_crd` waits for `Established`, and waits fail
//! with the object's last status and the namespace's recent events. The repository's
//! `hack/cluster.sh up` starts a local cluster (no Docker needed); any `KUBECONFIG` works too.
//!
//! ## What the runtime guarantees
//! - One reconcile per object at a time, at most `--concurrency` (default 4) at once.
//! - Failed reconciles retry after 250 ms, 0.5 s, 1 s, … up to 5 min, per object; a success
//!   resets the delay ([`backoff`]).
//! - A converged object costs no mutating request: children and status are compared with what
//!   is live before anything is sent.
//! - With `--leader-election`, only the Lease holder reconciles; standbys keep warm caches and
//!   are ready; a released Lease is taken over at once ([`leader`]).
//! - SIGTERM drains running reconciles within `--shutdown-grace-seconds`.
//! - Watches recover on their own, after an API server restart too: a failed watch retries
//!   within 5 s, and one whose resource version expired starts over from a consistent list, so
//!   nothing created meanwhile is missed ([`watch`]). `/readyz` reports not ready, naming the
//!   watch, while one keeps failing for more than 15 s.
//! - `/metrics` uses controller-runtime's metric names ([`admin`]), plus
//!   `operator_kit_watch_failures_total` and `operator_kit_watch_restarts_total`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod api_error;
pub mod backoff;
pub mod children;
pub mod client;
pub mod conditions;
pub mod config;
pub mod crd;
pub mod leader;
pub mod runtime;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watch;

pub use children::{ApplyOutcome, ChildError, Children};
pub use config::OperatorArgs;
pub use kube::runtime::controller::Action;
pub use runtime::{
    Context, Controller, ErrorClass, Operator, OperatorError, ReconcileError, Reconciler,
    ShutdownHandle,
};
