//! A cluster-scoped custom resource reconciled by operator-kit, against the local cluster: it
//! owns a namespaced child (in the namespace its spec names) and a cluster-scoped one; a hand
//! edit of either is reverted, a child no longer wanted is pruned, and both go with the owner.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use operator_kit::admin::ReconcileResult;
use operator_kit::conditions::{ConditionUpdate, READY, is_true, set_condition};
use operator_kit::schemars::JsonSchema;
use operator_kit::testing::{self, RunningOperator, TestNamespace};
use operator_kit::{Action, ChildError, Context, Controller, Operator, OperatorArgs, Reconciler};
use serde::{Deserialize, Serialize};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
/// How long the reconcile count must hold still to count as settled.
const SETTLE: Duration = Duration::from_millis(500);

/// A team's space: a ConfigMap in the team's namespace and, when asked, a ClusterRole.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "tests.operator-kit.io",
    version = "v1",
    kind = "TeamSpace",
    status = "TeamSpaceStatus",
    crates(schemars = "operator_kit::schemars")
)]
#[schemars(crate = "operator_kit::schemars")]
#[serde(rename_all = "camelCase")]
struct TeamSpaceSpec {
    /// The namespace of the team's ConfigMap.
    namespace: String,
    /// Whether the team gets a ClusterRole that reads ConfigMaps.
    reader_role: bool,
}

/// The observed state of a TeamSpace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[schemars(crate = "operator_kit::schemars")]
struct TeamSpaceStatus {
    /// Ready when both children are applied.
    #[serde(default)]
    conditions: Vec<Condition>,
}

#[derive(Debug, thiserror::Error)]
enum TeamSpaceError {
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error("failed to write the status: {0}")]
    Status(kube::Error),
}

impl operator_kit::ReconcileError for TeamSpaceError {
    fn class(&self) -> operator_kit::ErrorClass {
        match self {
            Self::Child(error) => error.class(),
            Self::Status(_) => operator_kit::ErrorClass::Transient,
        }
    }
}

struct TeamSpaceReconciler;

impl Reconciler for TeamSpaceReconciler {
    type Resource = TeamSpace;
    type Error = TeamSpaceError;

    async fn reconcile(
        &self,
        space: Arc<TeamSpace>,
        context: &Context,
    ) -> Result<Action, TeamSpaceError> {
        let name = space.name_any();
        let mut children = context.children(&*space)?;
        children
            .apply(ConfigMap {
                metadata: ObjectMeta {
                    name: Some("team".to_owned()),
                    namespace: Some(space.spec.namespace.clone()),
                    ..ObjectMeta::default()
                },
                data: Some([("team".to_owned(), name.clone())].into()),
                ..ConfigMap::default()
            })
            .await?;
        if space.spec.reader_role {
            children
                .apply(ClusterRole {
                    metadata: ObjectMeta {
                        name: Some(format!("{name}-reader")),
                        ..ObjectMeta::default()
                    },
                    rules: Some(vec![PolicyRule {
                        api_groups: Some(vec![String::new()]),
                        resources: Some(vec!["configmaps".to_owned()]),
                        verbs: vec!["get".to_owned()],
                        ..PolicyRule::default()
                    }]),
                    ..ClusterRole::default()
                })
                .await?;
        }
        children.prune().await?;
        let mut status = space.status.clone().unwrap_or_default();
        set_condition(
            &mut status.conditions,
            ConditionUpdate::holds(READY, "Applied", "the children are applied".to_owned())
                .observed(space.metadata.generation),
        );
        context
            .patch_status(&*space, &status)
            .await
            .map_err(TeamSpaceError::Status)?;
        Ok(Action::await_change())
    }
}

#[tokio::test]
async fn a_cluster_scoped_resource_owns_namespaced_and_cluster_scoped_children() -> Result<()> {
    let namespace = TestNamespace::create("kit-cluster-scoped").await?;
    let client = namespace.client().clone();
    testing::install_crd(&client, &TeamSpace::crd(), TIMEOUT).await?;
    let operator = RunningOperator::spawn(
        Operator::new(
            "test-operator",
            client.clone(),
            OperatorArgs {
                // The ConfigMaps are watched in this namespace; the TeamSpaces and
                // ClusterRoles, being cluster-scoped, across the cluster.
                watch_namespace: Some(namespace.name().to_owned()),
                ..OperatorArgs::for_tests()
            },
        )
        .with_controller(
            Controller::new("teamspace", TeamSpaceReconciler)
                .owns::<ConfigMap>()
                .owns::<ClusterRole>(),
        ),
    );
    // The test namespace's name is unique, so the cluster-wide names made from it are too.
    let name = namespace.name().to_owned();
    let spaces = Api::<TeamSpace>::all(client.clone());
    let space = TeamSpace::new(
        &name,
        TeamSpaceSpec {
            namespace: name.clone(),
            reader_role: true,
        },
    );
    let uid = spaces
        .create(&PostParams::default(), &space)
        .await?
        .uid()
        .context("no uid")?;
    namespace
        .wait_for(&spaces, &name, "Ready", TIMEOUT, |space: &TeamSpace| {
            space
                .status
                .as_ref()
                .is_some_and(|status| is_true(&status.conditions, READY))
        })
        .await?;
    let config_maps = namespace.api::<ConfigMap>();
    let roles = Api::<ClusterRole>::all(client.clone());
    let role_name = format!("{name}-reader");
    for owners in [
        config_maps.get("team").await?.owner_references().to_vec(),
        roles.get(&role_name).await?.owner_references().to_vec(),
    ] {
        ensure!(
            owners.len() == 1 && owners[0].uid == uid && owners[0].controller == Some(true),
            "{owners:?}"
        );
    }

    // Hand edits of either child are reverted: their watches find the cluster-scoped owner.
    // First let the reconciles that the status write causes end, so that only the edit's
    // watch event can start the next.
    let reconciles = || {
        operator
            .metrics()
            .reconcile_count("teamspace", ReconcileResult::Success)
    };
    testing::wait_until_settled("the reconciles to end", TIMEOUT, SETTLE, reconciles).await?;
    let edit = json!({ "data": { "team": "someone else" } });
    config_maps
        .patch("team", &PatchParams::default(), &Patch::Merge(&edit))
        .await?;
    namespace
        .wait_for(
            &config_maps,
            "team",
            "reverted",
            TIMEOUT,
            |map: &ConfigMap| map.data.as_ref().and_then(|data| data.get("team")) == Some(&name),
        )
        .await?;
    let edit = json!({ "rules": [] });
    roles
        .patch(&role_name, &PatchParams::default(), &Patch::Merge(&edit))
        .await?;
    namespace
        .wait_for(
            &roles,
            &role_name,
            "reverted",
            TIMEOUT,
            |role: &ClusterRole| role.rules.as_ref().is_some_and(|rules| rules.len() == 1),
        )
        .await?;

    // A child no longer wanted is pruned.
    let patch = json!({ "spec": { "readerRole": false } });
    spaces
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    namespace
        .wait_for_deletion(&roles, &role_name, TIMEOUT)
        .await?;

    // Both go with the owner, through the garbage collector.
    spaces.delete(&name, &DeleteParams::default()).await?;
    namespace
        .wait_for_deletion(&config_maps, "team", TIMEOUT)
        .await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}
