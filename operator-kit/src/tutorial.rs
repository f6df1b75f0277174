//! # Tutorial: a Greeting operator, from an empty crate to a running operator
//!
//! A `Greeting` holds a message; the operator serves it with a Deployment and reports `Ready`
//! once every replica is available. The code below is the repository's
//! `templates/greeting-operator`, included here as it is: CI copies that directory out of this
//! workspace, builds it against this checkout and runs its tests, so this page cannot drift
//! from code that compiles.
//!
//! ## 1. Create the crate
//!
//! ```sh
//! cargo new --lib greeting-operator && cd greeting-operator
//! ```
//!
//! `Cargo.toml` (a `[[bin]]` for `src/main.rs`, and the dependencies; nothing else is needed):
//!
//! ```toml
#![doc = include_str!("../../templates/greeting-operator/Cargo.toml")]
//! ```
//!
//! ## 2. Types, build, reconcile: `src/lib.rs`
//!
//! - **Types.** The custom resource is a struct with `#[derive(CustomResource)]`; its doc
//!   comments become `kubectl explain` text. `crates(...)` points the derive at the crates
//!   operator-kit re-exports. The status holds the `conditions`.
//! - **Errors.** One enum; [`ReconcileError`](crate::ReconcileError) says which errors are
//!   worth a retry ([`ChildError::class`](crate::ChildError::class) knows for children) and
//!   gives each Warning event its reason.
//! - **Build.** A pure function from the resource to its children, from typed k8s-openapi
//!   structs. The Deployment selects its pods by
//!   [`Children::selector_labels`](crate::Children::selector_labels): the controller's name and
//!   the Greeting's, never the operator's name, so renaming the operator rolls nothing.
//! - **Reconcile.** [`Children::apply`](crate::Children::apply) sends only what differs,
//!   refuses to take over objects it did not make, and reverts hand edits;
//!   [`Children::prune`](crate::Children::prune) deletes children no longer wanted;
//!   [`Context::patch_status`](crate::Context::patch_status) writes the status only when it
//!   changed. A converged Greeting costs no write.
//!
//! ```rust,ignore
#![doc = include_str!("../../templates/greeting-operator/src/lib.rs")]
//! ```
//!
//! ## 3. `main`: `src/main.rs`
//!
//! One [`Controller`](crate::Controller) per kind, with the kinds it owns (their changes
//! trigger a reconcile of the owner), handed to [`run_main`](crate::run_main): it parses the
//! flags of [`OperatorArgs`](crate::OperatorArgs) (each also an environment variable; `--help`
//! lists them), prints the CRDs on `--print-crds`, sets up logging, connects to the cluster of
//! the kubeconfig or the pod's service account, and runs until SIGTERM.
//!
//! ```rust,ignore
#![doc = include_str!("../../templates/greeting-operator/src/main.rs")]
//! ```
//!
//! ## 4. Run it
//!
//! ```sh
//! cargo run -- --print-crds | kubectl apply --server-side -f -
//! cargo run -- --print-rbac # the ClusterRole it needs (from what the controller declares)
//! cargo run                 # against the cluster of the kubeconfig
//! kubectl apply -f - <<'YAML'
//! apiVersion: greetings.example.com/v1alpha1
//! kind: Greeting
//! metadata: {name: hello}
//! spec: {message: "hello, world", replicas: 2}
//! YAML
//! kubectl get greetings     # READY turns True once both replicas are available
//! ```
//!
//! ## 5. Test it
//!
//! `build` is unit-tested without a cluster (see the tests at the end of `src/lib.rs`). For the
//! rest, enable operator-kit's `testing` feature in `[dev-dependencies]`:
//! `operator_kit::testing::TestNamespace` gives each test its own namespace on the cluster
//! of `KUBECONFIG` (kind, or the repository's `hack/cluster.sh up`), installs the CRD, runs the
//! operator on the test's runtime and waits on conditions with diagnostics. The repository's
//! `tests/tests/operator_kit.rs` tests the `website-operator` example that way.
