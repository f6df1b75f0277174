//! A `Greeting` operator: each `Greeting` becomes a ConfigMap holding its message and a
//! Deployment serving it, and reports `Ready` once every replica is available.
//!
//! It reads as operator-kit's pipeline: **types** (the custom resource and its status) →
//! **build** (a pure function from the resource to its children, unit-tested without a
//! cluster) → **reconcile** (apply the children, prune what is no longer wanted, write the
//! status) → **main** (`src/main.rs`: one controller, handed to `run_main`).

use std::collections::BTreeMap;
use std::sync::Arc;

use operator_kit::api_error::describe;
use operator_kit::conditions::{ConditionUpdate, READY, set_condition};
use operator_kit::k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use operator_kit::k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, PodSpec, PodTemplateSpec, Volume,
    VolumeMount,
};
use operator_kit::k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, ObjectMeta,
};
use operator_kit::kube::{CustomResource, ResourceExt};
use operator_kit::schemars::JsonSchema;
use operator_kit::{Action, Context, ErrorClass, ReconcileError, Reconciler};
use serde::{Deserialize, Serialize};

// 1. Types. Every field's doc comment becomes `kubectl explain` text. `crates(...)` tells the
// derive to find kube, k8s-openapi, schemars and serde_json inside operator-kit.

/// A greeting served over HTTP.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "greetings.example.com",
    version = "v1alpha1",
    kind = "Greeting",
    namespaced,
    status = "GreetingStatus",
    shortname = "greet",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    crates(
        kube_core = "operator_kit::kube::core",
        k8s_openapi = "operator_kit::k8s_openapi",
        schemars = "operator_kit::schemars",
        serde_json = "operator_kit::serde_json"
    )
)]
#[schemars(crate = "operator_kit::schemars")]
#[serde(rename_all = "camelCase")]
pub struct GreetingSpec {
    /// The text to serve.
    pub message: String,
    /// How many pods serve it. Default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 10))]
    pub replicas: i32,
}

fn one() -> i32 {
    1
}

/// What the operator observed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[schemars(crate = "operator_kit::schemars")]
#[serde(rename_all = "camelCase")]
pub struct GreetingStatus {
    /// Pods that serve the greeting.
    pub ready_replicas: i32,
    /// `Ready` is true once every replica serves the greeting.
    pub conditions: Vec<Condition>,
}

/// Errors of the Greeting controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Applying or pruning a child failed.
    #[error(transparent)]
    Child(#[from] operator_kit::ChildError),
    /// Writing the status failed.
    #[error("failed to patch the status: {}", describe(.0))]
    Status(#[source] operator_kit::kube::Error),
}

impl ReconcileError for Error {
    /// A child the API server refuses as invalid waits for a change of the spec; the rest is
    /// retried with backoff.
    fn class(&self) -> ErrorClass {
        match self {
            Self::Child(error) => error.class(),
            Self::Status(_) => ErrorClass::Transient,
        }
    }

    /// The reason of the Warning event.
    fn reason(&self) -> &str {
        match self {
            Self::Child(error) => error.reason(),
            Self::Status(_) => "StatusFailed",
        }
    }
}

// 2. Build: pure, typed structs, no API calls.

/// The ConfigMap with the message and the Deployment serving it with `image` (an HTTP server
/// that serves `/usr/share/nginx/html`). `labels` are the children's selector labels
/// (`Children::selector_labels`: they never change, not even when the operator is renamed); the
/// Deployment selects its pods by them.
pub fn build(
    greeting: &Greeting,
    image: &str,
    labels: &BTreeMap<String, String>,
) -> (ConfigMap, Deployment) {
    let name = greeting.name_any();
    let page = format!("{name}-page");
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(page.clone()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "index.html".to_owned(),
            greeting.spec.message.clone(),
        )])),
        ..ConfigMap::default()
    };
    let container = Container {
        name: "http".to_owned(),
        image: Some(image.to_owned()),
        ports: Some(vec![ContainerPort {
            container_port: 80,
            ..ContainerPort::default()
        }]),
        volume_mounts: Some(vec![VolumeMount {
            name: "page".to_owned(),
            mount_path: "/usr/share/nginx/html".to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: ObjectMeta {
            name: Some(name),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(greeting.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "page".to_owned(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: page,
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    };
    (config_map, deployment)
}

// 3. Reconcile: apply (only what differs), prune, then the status (only when it changed).

/// The Greeting reconciler.
pub struct GreetingReconciler {
    /// The image of the pods (the operator's `--image` flag).
    pub image: String,
}

impl Reconciler for GreetingReconciler {
    type Resource = Greeting;
    type Error = Error;

    async fn reconcile(&self, greeting: Arc<Greeting>, context: &Context) -> Result<Action, Error> {
        let mut children = context.children(&*greeting)?;
        let (config_map, deployment) = build(&greeting, &self.image, children.selector_labels());
        children.apply(config_map).await?;
        let (deployment, _) = children.apply(deployment).await?;
        children.prune().await?;

        let ready_replicas = deployment
            .status
            .and_then(|status| status.available_replicas)
            .unwrap_or(0);
        let wanted = greeting.spec.replicas;
        let message = format!("{ready_replicas} of {wanted} replicas available");
        let update = if ready_replicas >= wanted {
            ConditionUpdate::holds(READY, "Available", message)
        } else {
            ConditionUpdate::fails(READY, "Progressing", message)
        };
        let mut status = greeting.status.clone().unwrap_or_default();
        status.ready_replicas = ready_replicas;
        set_condition(
            &mut status.conditions,
            update.observed(greeting.metadata.generation),
        );
        context
            .patch_status(&*greeting, &status)
            .await
            .map_err(Error::Status)?;
        Ok(Action::await_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use operator_kit::kube::CustomResourceExt;

    fn greeting(replicas: i32) -> Greeting {
        Greeting::new(
            "hello",
            GreetingSpec {
                message: "hello, world".to_owned(),
                replicas,
            },
        )
    }

    #[test]
    fn the_deployment_serves_the_message_from_the_config_map() {
        let labels =
            BTreeMap::from([("app.kubernetes.io/instance".to_owned(), "hello".to_owned())]);
        let (config_map, deployment) = build(&greeting(2), "nginx:1.27", &labels);
        assert_eq!(config_map.metadata.name.as_deref(), Some("hello-page"));
        assert_eq!(config_map.data.unwrap()["index.html"], "hello, world");
        let spec = deployment.spec;
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(spec.selector.match_labels, Some(labels));
        let volumes = spec.template.spec.unwrap().volumes.unwrap();
        assert_eq!(volumes[0].config_map.as_ref().unwrap().name, "hello-page");
    }

    #[test]
    fn the_crd_has_the_group_kind_and_explain_text() {
        let crd = Greeting::crd();
        assert_eq!(crd.spec.group, "greetings.example.com");
        assert_eq!(crd.spec.names.kind, "Greeting");
        let yaml = operator_kit::crd::to_yaml(&[crd]).unwrap();
        assert!(yaml.contains("The text to serve."), "{yaml}");
    }
}
