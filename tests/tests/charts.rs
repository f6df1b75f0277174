//! Every Helm chart under `charts/`: lint-clean, its rendered objects accepted by the local
//! API server (server-side dry run, so schema, admission and RBAC escalation checks all run),
//! and the templates the charts share kept identical. Installing each chart and proving its
//! RBAC is done next to each operator (operators/*/tests/chart.rs), where its binary is built.

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use operator_kit::testing::TestNamespace;
use operator_kit::testing::tools::run;

const CHARTS: [&str; 2] = ["redis-operator", "app-operator"];

/// The files every chart has in common; what differs is `_rules.tpl` (the RBAC rules),
/// `NOTES.txt`, `Chart.yaml`, `values.yaml` and the CRDs.
const SHARED_TEMPLATES: [&str; 6] = [
    "_helpers.tpl",
    "deployment.yaml",
    "rbac.yaml",
    "service.yaml",
    "serviceaccount.yaml",
    "servicemonitor.yaml",
];

fn chart(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts")
        .join(name)
}

/// The value sets the tests render: defaults, and namespace-scoped with leader election and
/// the NetworkPolicy.
fn value_sets(watch_namespace: &str) -> [Vec<String>; 2] {
    [
        Vec::new(),
        vec![
            "--set".to_owned(),
            format!("watchNamespace={watch_namespace},replicaCount=2,networkPolicy.enabled=true"),
        ],
    ]
}

#[test]
fn charts_lint_clean_with_every_option() -> Result<()> {
    for name in CHARTS {
        let path = chart(name);
        let path = path.to_string_lossy();
        for values in value_sets("workloads") {
            let mut args = vec!["lint", "--strict", &path];
            args.extend(values.iter().map(String::as_str));
            let output = run("helm", &args, None)?;
            ensure!(
                output.contains("0 chart(s) failed") && !output.contains("[WARNING]"),
                "helm lint of {name} with {values:?}:\n{output}"
            );
        }
        let monitor = run(
            "helm",
            &[
                "template",
                "r",
                &path,
                "--set",
                "serviceMonitor.enabled=true",
            ],
            None,
        )?;
        ensure!(
            monitor.contains("kind: ServiceMonitor"),
            "{name}: no ServiceMonitor rendered"
        );
    }
    Ok(())
}

#[tokio::test]
async fn rendered_charts_pass_server_side_dry_run() -> Result<()> {
    let namespace = TestNamespace::create("chart-dry-run").await?;
    for name in CHARTS {
        let path = chart(name);
        let path = path.to_string_lossy();
        for values in value_sets(namespace.name()) {
            let mut args = vec![
                "template",
                "release",
                &path,
                "--namespace",
                namespace.name(),
                "--include-crds",
            ];
            args.extend(values.iter().map(String::as_str));
            let manifest = run("helm", &args, None)?;
            let applied = run(
                "kubectl",
                &[
                    "apply",
                    "--dry-run=server",
                    "--server-side",
                    // The CRDs may already be installed by other tests' field manager.
                    "--force-conflicts",
                    "-f",
                    "-",
                ],
                Some(manifest.as_bytes()),
            )?;
            for kind in [
                "deployment.apps",
                "serviceaccount",
                "service/",
                "customresourcedefinition",
            ] {
                ensure!(
                    applied.contains(kind),
                    "{name} with {values:?}: no {kind} in the dry run:\n{applied}"
                );
            }
            let role_kind = if values.is_empty() {
                "clusterrole.rbac"
            } else {
                "role.rbac"
            };
            ensure!(
                applied.contains(role_kind),
                "{name}: no {role_kind}:\n{applied}"
            );
            ensure!(
                values.is_empty() || !applied.contains("clusterrole"),
                "{name}: a namespace-scoped install renders a ClusterRole:\n{applied}"
            );
        }
    }
    namespace.delete().await?;
    Ok(())
}

/// `helm upgrade` never runs two active operators: without leader election the Deployment is
/// recreated (the old pod stops first); with it (more than one replica) it rolls, and the new
/// pods wait for the Lease.
#[test]
fn an_upgrade_never_runs_two_active_operators() -> Result<()> {
    for name in CHARTS {
        let path = chart(name);
        let path = path.to_string_lossy();
        for (values, strategy, election) in [
            ("replicaCount=1", "Recreate", "false"),
            ("leaderElection.enabled=true", "RollingUpdate", "true"),
            ("replicaCount=2", "RollingUpdate", "true"),
        ] {
            let rendered = run(
                "helm",
                &[
                    "template",
                    "r",
                    &path,
                    "--set",
                    values,
                    "--show-only",
                    "templates/deployment.yaml",
                ],
                None,
            )?;
            let deployment: k8s_openapi::api::apps::v1::Deployment =
                serde_yaml::from_str(&rendered)?;
            let spec = deployment.spec;
            let kind = spec.strategy.and_then(|strategy| strategy.type_);
            ensure!(
                kind.as_deref() == Some(strategy),
                "{name} with {values}: strategy {kind:?}"
            );
            let elected = spec
                .template
                .spec
                .unwrap_or_default()
                .containers
                .iter()
                .flat_map(|container| container.env.iter().flatten())
                .find(|variable| variable.name.ends_with("LEADER_ELECTION"))
                .and_then(|variable| variable.value.clone());
            ensure!(
                elected.as_deref() == Some(election),
                "{name} with {values}: leader election {elected:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn shared_templates_are_identical_in_every_chart() -> Result<()> {
    for file in SHARED_TEMPLATES {
        let first = std::fs::read_to_string(chart(CHARTS[0]).join("templates").join(file))?;
        for other in &CHARTS[1..] {
            let text = std::fs::read_to_string(chart(other).join("templates").join(file))?;
            ensure!(
                text == first,
                "charts/{other}/templates/{file} differs from charts/{}/templates/{file}; \
                 change both",
                CHARTS[0]
            );
        }
    }
    Ok(())
}

/// `--print-rbac` and the charts grant the same: what the controllers declare (owned and
/// watched kinds, what their reconcilers use, events, the Lease) is exactly what each chart's
/// ClusterRole and leader-election Role allow — no rule missing, none left over.
#[tokio::test]
async fn the_charts_grant_what_print_rbac_derives() -> Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
    use operator_kit::rbac::{self, Permissions};
    use operator_kit::{Operator, OperatorArgs};

    let offline = kube::Client::try_from(kube::Config::new(http::Uri::from_static(
        "https://127.0.0.1:9",
    )))?;
    let operators = [
        (
            "redis-operator",
            Operator::new("redis-operator", offline.clone(), OperatorArgs::for_tests())
                .with_controller(redis_operator::redis_controller())
                .with_controller(redis_operator::redis_sentinel_controller()),
        ),
        (
            "app-operator",
            Operator::new("app-operator", offline, OperatorArgs::for_tests())
                .with_controller(app_operator::app_controller()),
        ),
    ];
    for (name, operator) in operators {
        let path = chart(name);
        let manifest = run(
            "helm",
            &[
                "template",
                "r",
                &path.to_string_lossy(),
                "--set",
                "leaderElection.enabled=true",
            ],
            None,
        )?;
        let mut granted = Permissions::default();
        let mut lease = Permissions::default();
        for document in manifest.split("\n---\n") {
            let value: serde_yaml::Value = serde_yaml::from_str(document)?;
            match value.get("kind").and_then(serde_yaml::Value::as_str) {
                Some("ClusterRole") => {
                    let role: ClusterRole = serde_yaml::from_value(value)?;
                    for (group, resource, verb) in
                        Permissions::triples_of(&role.rules.unwrap_or_default())
                    {
                        granted.allow(&group, &resource, &[&verb]);
                    }
                }
                Some("Role") => {
                    let role: Role = serde_yaml::from_value(value)?;
                    for (group, resource, verb) in
                        Permissions::triples_of(&role.rules.unwrap_or_default())
                    {
                        lease.allow(&group, &resource, &[&verb]);
                    }
                }
                _ => {}
            }
        }
        let derived = operator.permissions().triples();
        let chart_rules = granted.triples();
        let missing: Vec<_> = derived.difference(&chart_rules).collect();
        let extra: Vec<_> = chart_rules.difference(&derived).collect();
        ensure!(
            missing.is_empty() && extra.is_empty(),
            "{name}: the chart lacks {missing:?} and grants beyond --print-rbac {extra:?}"
        );
        ensure!(
            lease == rbac::leader_election(),
            "{name}: the chart's leader-election Role grants {:?}",
            lease.triples()
        );
        eprintln!(
            "{name}: the chart grants exactly the {} (group, resource, verb) --print-rbac derives",
            derived.len()
        );
    }
    Ok(())
}
