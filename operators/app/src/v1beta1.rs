//! `app.operator-kit.io/v1beta1`: the `App` kind, a web application deployed from an image the
//! way `oc new-app <image>` and `oc expose service` deploy one, kept true by the operator.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, Probe, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A web application: a Deployment of `image` listening on `port`, a Service in front of it,
/// an Ingress (or an OpenShift Route) when exposed, and an autoscaler when asked for.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "app.operator-kit.io",
    version = "v1beta1",
    kind = "App",
    namespaced,
    status = "AppStatus",
    shortname = "oapp",
    category = "operator-kit",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name must be at most 63 characters: it names the Service"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must start with a lowercase letter and hold only lowercase letters, digits and '-': it names the Service, whose name cannot have a dot or start with a digit")
)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// The container image of the application.
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("self.size() > 0 && !self.contains(' ')").message("image must be a non-empty image reference without spaces"))]
    pub image: String,
    /// The port the application listens on (HTTP). The Service exposes the same port.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: i32,
    /// How many pods run. Ignored while `autoscaling` is set. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("replicas must not be negative"))]
    pub replicas: Option<i32>,
    /// Environment variables of the application container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// ConfigMaps and Secrets whose keys become environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<EnvFromSource>>,
    /// CPU and memory requests and limits. Autoscaling on CPU needs a CPU request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "operator_kit::crd::resources_schema")]
    pub resources: Option<ResourceRequirements>,
    /// The readiness probe. Default: HTTP GET `/` on the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// The liveness probe. Default: HTTP GET `/` on the port, after 10 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Publish the application outside the cluster on a host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<Expose>,
    /// Scale between a minimum and a maximum on CPU use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Scheduling constraints of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
}

/// How the application is published: an Ingress, or a Route on OpenShift.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Expose {
    /// The host name, such as `docs.example.com`.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("expose.host must be a lowercase DNS name such as docs.example.com"))]
    pub host: String,
    /// The path prefix. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("expose.path must start with /"))]
    pub path: Option<String>,
    /// A Secret of type kubernetes.io/tls with the host's certificate; HTTPS when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub tls_secret: Option<String>,
    /// The IngressClass to use (the cluster's default class when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub ingress_class_name: Option<String>,
}

/// CPU-based horizontal autoscaling.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
pub struct Autoscaling {
    /// The fewest pods. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("autoscaling.minReplicas must be at least 1"))]
    pub min_replicas: Option<i32>,
    /// The most pods.
    #[x_kube(validation = Rule::new("self >= 1").message("autoscaling.maxReplicas must be at least 1"))]
    pub max_replicas: i32,
    /// The average CPU use, in percent of the request, to keep. Default 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("autoscaling.targetCPUUtilizationPercentage must be between 1 and 100"))]
    #[serde(rename = "targetCPUUtilizationPercentage")]
    pub target_cpu_utilization_percentage: Option<i32>,
}

/// What the operator observed.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    /// Pods that pass their readiness probe.
    pub ready_replicas: i32,
    /// Where the application answers: the exposed host, else the in-cluster Service address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `Ready`, `Progressing` (a rollout is under way) and `Degraded` (a rollout stalled).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// An OpenShift Route (`route.openshift.io/v1`), the fields `oc expose service` sets. Only the
/// operator's view of the type: on OpenShift the cluster defines it.
#[derive(
    CustomResource, KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq,
)]
#[kube(
    group = "route.openshift.io",
    version = "v1",
    kind = "Route",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// The host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The Service the Route sends traffic to.
    pub to: RouteTarget,
    /// The Service port to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<RoutePort>,
    /// TLS termination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
}

/// The target of a Route.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct RouteTarget {
    /// Always `Service`.
    pub kind: String,
    /// The Service's name.
    pub name: String,
    /// The share of traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// The Service port of a Route.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RoutePort {
    /// The port's name on the Service.
    pub target_port: String,
}

/// TLS of a Route.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteTls {
    /// `edge`: the router terminates TLS.
    pub termination: String,
    /// What happens to plain HTTP: `Redirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_edge_termination_policy: Option<String>,
    /// The Secret with the certificate (OpenShift 4.16+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_certificate: Option<RouteSecretReference>,
}

/// A Secret named by a Route.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct RouteSecretReference {
    /// The Secret's name.
    pub name: String,
}
