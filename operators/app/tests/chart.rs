//! The Helm chart, installed cluster-wide with two replicas, and its RBAC proven by running the
//! operator binary out of cluster with nothing but the chart's ServiceAccount token.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use app_operator::v1beta1::App;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use operator_kit::conditions::{READY, is_true};
use operator_kit::testing::TestNamespace;
use operator_kit::testing::tools::{
    HelmRelease, OperatorProcess, enforce_restricted_pod_security, is_forbidden,
    service_account_kubeconfig,
};

const TIMEOUT: Duration = Duration::from_secs(90);
const ADAM_DOC: &str = include_str!("../../../examples/adam-doc.yaml");

#[tokio::test]
async fn cluster_wide_chart_with_leader_election_runs_an_app_lifecycle() -> Result<()> {
    let operator_namespace = TestNamespace::create("app-chart-operator").await?;
    let workloads = TestNamespace::create("app-chart-workloads").await?;
    enforce_restricted_pod_security(&operator_namespace).await?;

    let _release = HelmRelease::install(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charts/app-operator"),
        "apps",
        operator_namespace.name(),
        &[("replicaCount", "2"), ("logFormat", "text")],
    )?;

    // Two replicas under the restricted profile, leader election switched on, a ClusterRole
    // (named after the release's namespace, so releases never collide) and a Lease Role.
    let deployment = operator_namespace
        .api::<Deployment>()
        .get("apps-app-operator")
        .await?;
    ensure!(
        deployment
            .status
            .as_ref()
            .and_then(|status| status.ready_replicas)
            == Some(2),
        "the operator's Deployment is not ready: {:?}",
        deployment.status
    );
    let pod = deployment.spec.template.spec.context("no pod spec")?;
    let variable = |name: &str| {
        pod.containers[0]
            .env
            .iter()
            .flatten()
            .find(|variable| variable.name == name)
            .and_then(|variable| variable.value.clone())
    };
    ensure!(variable("OPERATOR_LEADER_ELECTION").as_deref() == Some("true"));
    ensure!(variable("WATCH_NAMESPACE").is_none());
    let cluster_role_name = format!("{}-apps-app-operator", operator_namespace.name());
    Api::<ClusterRole>::all(workloads.client().clone())
        .get(&cluster_role_name)
        .await?;
    operator_namespace
        .api::<Role>()
        .get("apps-app-operator-leader-election")
        .await?;

    // What the ServiceAccount cannot do: read any Secret (app-operator never needs one), touch
    // Leases outside its own namespace, or delete namespaces.
    let (kubeconfig, account) =
        service_account_kubeconfig(operator_namespace.name(), "apps-app-operator").await?;
    let list = ListParams::default();
    ensure!(is_forbidden(
        &Api::<Secret>::all(account.clone()).list(&list).await
    ));
    ensure!(is_forbidden(
        &Api::<Secret>::namespaced(account.clone(), workloads.name())
            .list(&list)
            .await
    ));
    ensure!(is_forbidden(
        &Api::<Lease>::namespaced(account.clone(), workloads.name())
            .list(&list)
            .await
    ));
    ensure!(is_forbidden(
        &Api::<Namespace>::all(account.clone())
            .delete(workloads.name(), &DeleteParams::default())
            .await
    ));

    // What it can do: lead through the Lease, and run adam-doc from creation to deletion.
    let mut operator = OperatorProcess::spawn(
        PathBuf::from(env!("CARGO_BIN_EXE_app-operator")).as_path(),
        &kubeconfig,
        &[
            "--leader-election",
            "--lease-name",
            "apps-app-operator",
            "--lease-namespace",
            operator_namespace.name(),
            "--identity",
            "out-of-cluster",
            "--admin-address",
            "127.0.0.1:0",
        ],
    )?;
    let apps = workloads.api::<App>();
    let app: App = serde_yaml::from_str(ADAM_DOC)?;
    apps.create(&PostParams::default(), &app).await?;
    let ready = workloads
        .wait_for(&apps, "adam-doc", "Ready", TIMEOUT, |app: &App| {
            app.status
                .as_ref()
                .is_some_and(|status| is_true(&status.conditions, READY))
        })
        .await;
    operator.check_running()?;
    ready.with_context(|| format!("operator log:\n{}", operator.log()))?;
    workloads.api::<Ingress>().get("adam-doc").await?;
    let lease = operator_namespace
        .api::<Lease>()
        .get("apps-app-operator")
        .await?;
    ensure!(
        lease.spec.and_then(|spec| spec.holder_identity).as_deref() == Some("out-of-cluster"),
        "the operator does not hold the Lease"
    );

    apps.delete("adam-doc", &DeleteParams::foreground()).await?;
    workloads
        .wait_for_deletion(&apps, "adam-doc", TIMEOUT)
        .await?;
    workloads
        .wait_for_deletion(&workloads.api::<Deployment>(), "adam-doc", TIMEOUT)
        .await?;
    operator.check_running()?;
    let log = operator.log();
    ensure!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused a request:\n{log}"
    );
    Ok(())
}
