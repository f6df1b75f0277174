//! app-operator: one `App` resource becomes a Deployment, a Service, an Ingress (or an
//! OpenShift Route where the cluster serves `route.openshift.io/v1`) and an autoscaler.
//!
//! validate → build → apply → status: the API server validates (CEL rules on the CRD), the
//! `build_*` functions are pure, `AppReconciler` applies and writes the status.
#![forbid(unsafe_code)]

pub mod v1beta1;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ApiResource;
use kube::api::ObjectMeta;
use kube::{Client, CustomResourceExt, ResourceExt};
use operator_kit::api_error::describe;
use operator_kit::children::{MANAGED_BY_LABEL, NAME_LABEL};
use operator_kit::conditions::{ConditionUpdate, DEGRADED, PROGRESSING, READY, set_condition};
use operator_kit::{
    Action, ChildError, Context, Controller, ErrorClass, ReconcileError, Reconciler,
};

use crate::v1beta1::{
    App, AppStatus, Route, RoutePort, RouteSecretReference, RouteSpec, RouteTarget, RouteTls,
};

/// The operator's name: its field manager, event reporter and Lease name.
pub const OPERATOR_NAME: &str = "app-operator";

/// The labels that, with the instance label, select the pods of a resource: fixed here, so that
/// renaming the operator changes no selector. They are what releases before
/// `Controller::selector_labels` derived from the operator's name; selectors are immutable, so
/// the workloads those releases made keep them, without a rollout.
pub const SELECTOR_LABELS: [(&str, &str); 2] = [
    (NAME_LABEL, "app-operator"),
    (MANAGED_BY_LABEL, "app-operator"),
];

/// The operator's CRDs, as committed in `crds/app-operator.yaml`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![App::crd()]
}

/// The App controller with the kinds it owns.
pub fn app_controller() -> Controller<AppReconciler> {
    Controller::new("app", AppReconciler)
        .selector_labels(SELECTOR_LABELS)
        .owns::<Deployment>()
        .owns::<Service>()
        .owns::<Ingress>()
        .owns::<HorizontalPodAutoscaler>()
        // On OpenShift: the Route is applied and pruned but not watched (the kind may not
        // exist), and a Route with a host needs routes/custom-host.
        .uses_resource(
            "route.openshift.io",
            "routes",
            &["get", "list", "create", "patch", "delete"],
        )
        .uses_resource("route.openshift.io", "routes/custom-host", &["create"])
}

/// The object metadata of a child: its name.
fn named(name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        ..ObjectMeta::default()
    }
}

/// The default probe: an HTTP GET of `/` on the application's port.
fn http_probe(port: i32, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/".to_owned()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

/// The Deployment. Without autoscaling it sets `replicas`; with it, the field is left to the
/// autoscaler (server-side apply then leaves it alone).
pub fn build_deployment(app: &App, labels: &BTreeMap<String, String>) -> Deployment {
    let spec = &app.spec;
    let container = Container {
        name: "app".to_owned(),
        image: Some(spec.image.clone()),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: spec.port,
            ..ContainerPort::default()
        }]),
        env: spec.env.clone(),
        env_from: spec.env_from.clone(),
        resources: spec.resources.clone(),
        readiness_probe: Some(
            spec.readiness_probe
                .clone()
                .unwrap_or_else(|| http_probe(spec.port, 0)),
        ),
        liveness_probe: Some(
            spec.liveness_probe
                .clone()
                .unwrap_or_else(|| http_probe(spec.port, 10)),
        ),
        ..Container::default()
    };
    Deployment {
        metadata: named(app.name_any()),
        spec: DeploymentSpec {
            replicas: spec
                .autoscaling
                .is_none()
                .then(|| spec.replicas.unwrap_or(1)),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".to_owned())),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    node_selector: spec.node_selector.clone(),
                    affinity: spec.affinity.clone(),
                    tolerations: spec.tolerations.clone(),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The Service, on the application's port (as `oc new-app` creates it).
pub fn build_service(app: &App, labels: &BTreeMap<String, String>) -> Service {
    Service {
        metadata: named(app.name_any()),
        spec: Some(ServiceSpec {
            selector: Some(labels.clone()),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: app.spec.port,
                target_port: Some(IntOrString::String("http".to_owned())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Ingress for `expose`, if set.
pub fn build_ingress(app: &App) -> Option<Ingress> {
    let expose = app.spec.expose.as_ref()?;
    let tls = expose.tls_secret.as_ref().map(|secret| {
        vec![IngressTLS {
            hosts: Some(vec![expose.host.clone()]),
            secret_name: Some(secret.clone()),
        }]
    });
    let path = HTTPIngressPath {
        path: Some(expose.path.as_deref().unwrap_or("/").to_owned()),
        path_type: "Prefix".to_owned(),
        backend: IngressBackend {
            service: Some(IngressServiceBackend {
                name: app.name_any(),
                port: Some(ServiceBackendPort {
                    name: Some("http".to_owned()),
                    number: None,
                }),
            }),
            ..IngressBackend::default()
        },
    };
    Some(Ingress {
        metadata: named(app.name_any()),
        spec: Some(IngressSpec {
            ingress_class_name: expose.ingress_class_name.clone(),
            tls,
            rules: Some(vec![IngressRule {
                host: Some(expose.host.clone()),
                http: Some(HTTPIngressRuleValue { paths: vec![path] }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

/// The OpenShift Route for `expose`, if set: what `oc expose service` creates.
pub fn build_route(app: &App) -> Option<Route> {
    let expose = app.spec.expose.as_ref()?;
    let tls = expose.tls_secret.as_ref().map(|secret| RouteTls {
        termination: "edge".to_owned(),
        insecure_edge_termination_policy: Some("Redirect".to_owned()),
        external_certificate: Some(RouteSecretReference {
            name: secret.clone(),
        }),
    });
    let mut route = Route::new(
        &app.name_any(),
        RouteSpec {
            host: Some(expose.host.clone()),
            path: expose.path.clone(),
            to: RouteTarget {
                kind: "Service".to_owned(),
                name: app.name_any(),
                weight: Some(100),
            },
            port: Some(RoutePort {
                target_port: "http".to_owned(),
            }),
            tls,
        },
    );
    route.metadata = named(app.name_any());
    Some(route)
}

/// The autoscaler for `autoscaling`, if set.
pub fn build_autoscaler(app: &App) -> Option<HorizontalPodAutoscaler> {
    let autoscaling = app.spec.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: named(app.name_any()),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: app.name_any(),
            },
            min_replicas: Some(autoscaling.min_replicas.unwrap_or(1)),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(
                            autoscaling.target_cpu_utilization_percentage.unwrap_or(80),
                        ),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        },
        ..HorizontalPodAutoscaler::default()
    })
}

/// Where the application answers.
pub fn url(app: &App) -> String {
    match &app.spec.expose {
        Some(expose) => {
            let scheme = if expose.tls_secret.is_some() {
                "https"
            } else {
                "http"
            };
            format!(
                "{scheme}://{}{}",
                expose.host,
                expose.path.as_deref().unwrap_or("/")
            )
        }
        None => format!(
            "http://{}.{}.svc:{}",
            app.name_any(),
            app.namespace().unwrap_or_default(),
            app.spec.port
        ),
    }
}

/// The status for a Deployment in the given state.
pub fn build_status(app: &App, deployment: &Deployment) -> AppStatus {
    let generation = app.metadata.generation;
    let mut status = app.status.clone().unwrap_or_default();
    let deployment_status = deployment.status.clone().unwrap_or_default();
    let desired = deployment.spec.replicas.unwrap_or(1);
    let ready = deployment_status.ready_replicas.unwrap_or(0);
    let updated = deployment_status.updated_replicas.unwrap_or(0);
    let available = deployment_status.available_replicas.unwrap_or(0);
    let observed = deployment_status.observed_generation >= deployment.metadata.generation;
    let stalled = deployment_status
        .conditions
        .iter()
        .flatten()
        .any(|condition| {
            condition.type_.as_deref() == Some("Progressing")
                && condition.status.as_deref() == Some("False")
                && condition.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
    let rolled_out = observed
        && updated >= desired
        && available >= desired
        && deployment_status.replicas.unwrap_or(0) == desired;
    let message = format!("{ready} of {desired} replicas ready, {updated} up to date");
    let progressing = if rolled_out {
        ConditionUpdate::fails(PROGRESSING, "RolloutComplete", message.clone())
    } else {
        ConditionUpdate::holds(PROGRESSING, "RollingOut", message.clone())
    };
    let degraded = if stalled {
        ConditionUpdate::holds(
            DEGRADED,
            "ProgressDeadlineExceeded",
            "the rollout stalled: see the Deployment's events",
        )
    } else {
        ConditionUpdate::fails(DEGRADED, "AsExpected", "no rollout stalled")
    };
    let readiness = if rolled_out && ready >= desired {
        ConditionUpdate::holds(READY, "Available", message)
    } else {
        ConditionUpdate::fails(
            READY,
            if stalled {
                "RolloutStalled"
            } else {
                "RollingOut"
            },
            message,
        )
    };
    for update in [readiness, progressing, degraded] {
        set_condition(&mut status.conditions, update.observed(generation));
    }
    status.ready_replicas = ready;
    status.url = Some(url(app));
    status.observed_generation = generation;
    status
}

/// Errors of the App controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Applying or pruning a child failed.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// Writing the status failed.
    #[error("failed to patch the status: {}", describe(.0))]
    Status(#[source] Box<kube::Error>),
}

impl ReconcileError for Error {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Child(error) => error.class(),
            Self::Status(_) => ErrorClass::Transient,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Self::Child(error) => error.reason(),
            Self::Status(_) => "StatusFailed",
        }
    }
}

/// Applies every child of `app` and prunes what is no longer wanted; returns the Deployment as
/// the API server has it.
async fn apply_children(app: &App, context: &Context) -> Result<Deployment, Error> {
    let mut children = context.children(app)?;
    let labels = children.selector_labels().clone();
    let (deployment, _) = children.apply(build_deployment(app, &labels)).await?;
    children.apply(build_service(app, &labels)).await?;
    // Asked even when not exposed, so that a Route left from an earlier `expose` is pruned.
    if routes_served(context.client()).await {
        children.also_prune(ApiResource::erase::<Route>(&()));
        if let Some(route) = build_route(app) {
            children.apply(route).await?;
        }
    } else if let Some(ingress) = build_ingress(app) {
        children.apply(ingress).await?;
    }
    if let Some(autoscaler) = build_autoscaler(app) {
        children.apply(autoscaler).await?;
    }
    children.prune().await?;
    Ok(deployment)
}

/// Whether the cluster serves OpenShift Routes (`route.openshift.io/v1` has `routes`), asked of
/// the API server's discovery on every reconcile — one read — so that installing or removing
/// the Route API takes effect at each App's next reconcile.
pub async fn routes_served(client: &Client) -> bool {
    client
        .list_api_group_resources("route.openshift.io/v1")
        .await
        .is_ok_and(|list| {
            list.resources
                .iter()
                .any(|resource| resource.name == "routes")
        })
}

/// The App reconciler.
#[derive(Debug, Default)]
pub struct AppReconciler;

impl Reconciler for AppReconciler {
    type Resource = App;
    type Error = Error;

    async fn reconcile(&self, app: Arc<App>, context: &Context) -> Result<Action, Error> {
        let exposed = app.spec.expose.is_some();
        // A child the API server refuses is reported in the status in the server's words; the
        // runtime adds one Warning event.
        let deployment = match apply_children(&app, context).await {
            Ok(deployment) => deployment,
            Err(error) => {
                let mut status = app.status.clone().unwrap_or_default();
                let update = ConditionUpdate::fails(READY, error.reason(), error.to_string());
                set_condition(
                    &mut status.conditions,
                    update.observed(app.metadata.generation),
                );
                status.observed_generation = app.metadata.generation;
                context
                    .patch_status(&*app, &status)
                    .await
                    .map_err(|source| Error::Status(Box::new(source)))?;
                return Err(error);
            }
        };
        let status = build_status(&app, &deployment);
        context
            .patch_status(&*app, &status)
            .await
            .map_err(|source| Error::Status(Box::new(source)))?;
        // Routes are not watched (the kind may not exist), so an exposed App is looked at again
        // every few minutes: that reverts drift on its Route and follows the Route API coming
        // or going.
        Ok(if exposed {
            Action::requeue(Duration::from_secs(300))
        } else {
            Action::await_change()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1beta1::{Autoscaling, Expose};
    use serde_json::{Value, json};

    fn adam_doc() -> App {
        let mut app: App = serde_yaml::from_str(include_str!("../../../examples/adam-doc.yaml"))
            .expect("example parses");
        app.metadata.namespace = Some("docs".to_owned());
        app.metadata.generation = Some(3);
        app
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([(
            "app.kubernetes.io/instance".to_owned(),
            "adam-doc".to_owned(),
        )])
    }

    #[test]
    fn the_deployment_runs_the_image_on_its_port_with_http_probes() {
        let deployment = build_deployment(&adam_doc(), &labels());
        assert_eq!(deployment.spec.replicas, Some(2));
        let pod = deployment.spec.template.spec.expect("pod spec");
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("registry.example.com/adam/adam-doc:1.0")
        );
        assert_eq!(
            container.ports.as_ref().expect("ports")[0].container_port,
            4000
        );
        let probe = container
            .readiness_probe
            .as_ref()
            .and_then(|probe| probe.http_get.as_ref())
            .expect("http probe");
        assert_eq!(probe.path.as_deref(), Some("/"));
        assert_eq!(
            deployment
                .spec
                .strategy
                .and_then(|strategy| strategy.type_)
                .as_deref(),
            Some("RollingUpdate")
        );
    }

    #[test]
    fn with_autoscaling_the_autoscaler_owns_the_replica_count() {
        let mut app = adam_doc();
        app.spec.autoscaling = Some(Autoscaling {
            min_replicas: Some(2),
            max_replicas: 5,
            target_cpu_utilization_percentage: None,
        });
        assert_eq!(build_deployment(&app, &labels()).spec.replicas, None);
        let autoscaler = build_autoscaler(&app).expect("an autoscaler").spec;
        assert_eq!(
            (autoscaler.min_replicas, autoscaler.max_replicas),
            (Some(2), 5)
        );
        assert_eq!(autoscaler.scale_target_ref.name, "adam-doc");
        assert!(build_autoscaler(&adam_doc()).is_none());
    }

    #[test]
    fn expose_builds_an_ingress_or_the_route_oc_expose_would() {
        let mut app = adam_doc();
        let ingress = build_ingress(&app).expect("an ingress").spec.expect("spec");
        let rule = &ingress.rules.expect("rules")[0];
        assert_eq!(rule.host.as_deref(), Some("adam-doc.apps.example.com"));
        assert!(ingress.tls.is_none());
        let route = build_route(&app).expect("a route").spec;
        assert_eq!(route.host.as_deref(), Some("adam-doc.apps.example.com"));
        assert_eq!(
            (route.to.kind.as_str(), route.to.name.as_str()),
            ("Service", "adam-doc")
        );
        assert_eq!(route.port.expect("port").target_port, "http");
        assert_eq!(url(&app), "http://adam-doc.apps.example.com/");

        app.spec.expose = Some(Expose {
            tls_secret: Some("adam-tls".to_owned()),
            ..app.spec.expose.clone().expect("expose")
        });
        assert_eq!(url(&app), "https://adam-doc.apps.example.com/");
        let tls = build_ingress(&app)
            .expect("ingress")
            .spec
            .expect("spec")
            .tls
            .expect("tls");
        assert_eq!(tls[0].secret_name.as_deref(), Some("adam-tls"));

        app.spec.expose = None;
        assert!(build_ingress(&app).is_none() && build_route(&app).is_none());
        assert_eq!(url(&app), "http://adam-doc.docs.svc:4000");
    }

    fn deployment_with(status: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": { "name": "adam-doc", "generation": 4 },
            "spec": { "replicas": 2, "selector": {}, "template": {} },
            "status": status,
        }))
        .expect("a deployment")
    }

    #[test]
    fn status_follows_the_rollout() {
        let app = adam_doc();
        let rolling = build_status(
            &app,
            &deployment_with(json!({
            "observedGeneration": 4, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2 })),
        );
        let find = |status: &AppStatus, type_: &str| {
            status
                .conditions
                .iter()
                .find(|condition| condition.type_ == type_)
                .map(|condition| condition.status.clone())
        };
        assert_eq!(find(&rolling, PROGRESSING).as_deref(), Some("True"));
        assert_eq!(find(&rolling, READY).as_deref(), Some("False"));
        let done = build_status(
            &app,
            &deployment_with(json!({
            "observedGeneration": 4, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2 })),
        );
        assert_eq!(find(&done, READY).as_deref(), Some("True"));
        assert_eq!(find(&done, PROGRESSING).as_deref(), Some("False"));
        assert_eq!(done.ready_replicas, 2);
        assert_eq!(done.observed_generation, Some(3));
        let stalled = build_status(
            &app,
            &deployment_with(json!({
            "observedGeneration": 4, "replicas": 3, "updatedReplicas": 1,
            "conditions": [{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded" }] })),
        );
        assert_eq!(find(&stalled, DEGRADED).as_deref(), Some("True"));
    }

    #[test]
    fn committed_crds_match_the_types() {
        // crds/ for kubectl users, and the Helm chart's crds/ folder, which Helm installs.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for path in [
            "crds/app-operator.yaml",
            "charts/app-operator/crds/app-operator.yaml",
        ] {
            operator_kit::crd::check_file(&root.join(path), &crds()).unwrap();
        }
    }

    /// The children, built from typed structs, are exactly what the json builders of earlier
    /// releases applied (`src/testdata`, with the spec each was built from).
    #[test]
    fn typed_children_are_what_the_json_builders_applied() {
        for (name, text) in [
            ("plain", include_str!("testdata/app-plain.json")),
            ("full", include_str!("testdata/app-full.json")),
            ("exposed", include_str!("testdata/app-exposed.json")),
        ] {
            let fixture: Value = serde_json::from_str(text).unwrap();
            let mut app = adam_doc();
            app.spec = serde_json::from_value(fixture["spec"].clone()).unwrap();
            let built = json!({
                "spec": fixture["spec"],
                "deployment": build_deployment(&app, &labels()),
                "service": build_service(&app, &labels()),
                "ingress": build_ingress(&app),
                "route": build_route(&app),
                "autoscaler": build_autoscaler(&app),
            });
            assert_eq!(built, fixture, "{name}");
        }
    }
}
