//! The worked example of operator-kit: a `Website` is a page of HTML served by nginx.
//!
//! The operator turns each `Website` into a ConfigMap holding the page, a Deployment serving
//! it and, when `expose` is set, a Service. The pipeline is validate → build → apply → status:
//! `build` is a pure function of the spec, so it is unit-tested without a cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, PodSpec, PodTemplateSpec, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta};
use kube::{CustomResource, ResourceExt};
use operator_kit::api_error::describe;
use operator_kit::conditions::{ConditionUpdate, READY, set_condition};
use operator_kit::{Action, Context, ErrorClass, ReconcileError, Reconciler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The desired state of a Website.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "examples.operator-kit.io",
    version = "v1alpha1",
    kind = "Website",
    namespaced
)]
#[kube(status = "WebsiteStatus", shortname = "web", category = "examples")]
// Its name names the Service and the Deployment: refused at admission, not at the first apply.
#[kube(
    validation = kube::core::Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && self.metadata.name.size() <= 63").message("metadata.name must be at most 63 characters, start with a lowercase letter and hold only lowercase letters, digits and '-': it names the Service")
)]
#[kube(
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[kube(printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteSpec {
    /// The HTML page to serve.
    pub html: String,
    /// How many nginx pods serve the page.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 10))]
    pub replicas: i32,
    /// Whether to create a Service in front of the pods.
    #[serde(default)]
    pub expose: bool,
}

fn one() -> i32 {
    1
}

/// What the operator observed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteStatus {
    /// Pods that serve the page.
    pub ready_replicas: i32,
    /// `Ready` is true once every replica serves the page.
    pub conditions: Vec<Condition>,
}

/// Errors of the Website controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Applying a child object failed.
    #[error(transparent)]
    Child(#[from] operator_kit::ChildError),
    /// Writing the status failed.
    #[error("failed to patch status: {}", describe(.0))]
    Status(#[source] kube::Error),
}

impl ReconcileError for Error {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Child(error) => error.class(),
            Self::Status(_) => ErrorClass::Transient,
        }
    }
}

/// The desired children of a Website: pure, no API calls, built from typed structs so that a
/// misspelled field does not compile instead of being dropped.
pub fn build(
    site: &Website,
    labels: &BTreeMap<String, String>,
) -> (ConfigMap, Deployment, Option<Service>) {
    let name = site.name_any();
    let page_name = format!("{name}-html");
    let named = |name: &str| ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    };
    let page = ConfigMap {
        metadata: named(&page_name),
        data: Some(BTreeMap::from([(
            "index.html".to_owned(),
            site.spec.html.clone(),
        )])),
        ..ConfigMap::default()
    };
    let nginx = Container {
        name: "nginx".to_owned(),
        image: Some("nginx:1.27".to_owned()),
        ports: Some(vec![ContainerPort {
            container_port: 80,
            ..ContainerPort::default()
        }]),
        volume_mounts: Some(vec![VolumeMount {
            name: "html".to_owned(),
            mount_path: "/usr/share/nginx/html".to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: named(&name),
        spec: DeploymentSpec {
            replicas: Some(site.spec.replicas),
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
                    containers: vec![nginx],
                    volumes: Some(vec![Volume {
                        name: "html".to_owned(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: page_name,
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
    let service = site.spec.expose.then(|| Service {
        metadata: named(&name),
        spec: Some(ServiceSpec {
            selector: Some(labels.clone()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    });
    (page, deployment, service)
}

/// The Website reconciler.
pub struct WebsiteReconciler;

impl Reconciler for WebsiteReconciler {
    type Resource = Website;
    type Error = Error;

    async fn reconcile(&self, site: Arc<Website>, context: &Context) -> Result<Action, Error> {
        let mut children = context.children(&*site)?;
        let (page, deployment, service) = build(&site, children.selector_labels());
        children.apply(page).await?;
        let (deployment, _) = children.apply(deployment).await?;
        if let Some(service) = service {
            children.apply(service).await?;
        }
        children.prune().await?;

        let ready_replicas = deployment
            .status
            .and_then(|status| status.ready_replicas)
            .unwrap_or(0);
        let mut status = site.status.clone().unwrap_or_default();
        status.ready_replicas = ready_replicas;
        let ready = ready_replicas == site.spec.replicas;
        let message = format!("{ready_replicas} of {} replicas ready", site.spec.replicas);
        let update = if ready {
            ConditionUpdate::holds(READY, "Available", message)
        } else {
            ConditionUpdate::fails(READY, "Progressing", message)
        };
        set_condition(
            &mut status.conditions,
            update.observed(site.metadata.generation),
        );
        context
            .patch_status(&*site, &status)
            .await
            .map_err(Error::Status)?;
        Ok(Action::await_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn site(replicas: i32, expose: bool) -> Website {
        let mut site = Website::new(
            "blog",
            WebsiteSpec {
                html: "<p>hi</p>".to_owned(),
                replicas,
                expose,
            },
        );
        site.metadata.namespace = Some("web".to_owned());
        site
    }

    #[test]
    fn build_serves_the_page_from_a_config_map() {
        let labels = BTreeMap::from([("app.kubernetes.io/instance".to_owned(), "blog".to_owned())]);
        let (page, deployment, service) = build(&site(3, false), &labels);
        assert_eq!(page.metadata.name.as_deref(), Some("blog-html"));
        assert_eq!(page.data.unwrap()["index.html"], "<p>hi</p>");
        assert_eq!(deployment.spec.replicas, Some(3));
        let pod = deployment.spec.template.spec.unwrap();
        assert_eq!(
            pod.volumes.unwrap()[0].config_map.as_ref().unwrap().name,
            "blog-html"
        );
        assert_eq!(deployment.spec.selector.match_labels, Some(labels));
        assert!(service.is_none());
    }

    #[test]
    fn expose_adds_a_service_selecting_the_pods() {
        let labels = BTreeMap::from([("app.kubernetes.io/instance".to_owned(), "blog".to_owned())]);
        let (_, _, service) = build(&site(1, true), &labels);
        let service = service.expect("a service when exposed");
        assert_eq!(service.spec.unwrap().selector, Some(labels));
    }

    #[test]
    fn committed_crd_matches_the_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../crds/website-operator.yaml");
        operator_kit::crd::check_file(&path, &[Website::crd()]).unwrap();
    }
}
