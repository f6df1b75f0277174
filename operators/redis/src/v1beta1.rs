//! `redis.operator-kit.io/v1beta1`: the `Redis` kind (a standalone Redis server).
//!
//! The field names follow the manifests users bring from other Redis operators
//! (`kubernetesConfig`, `storage.volumeClaimTemplate`, `redisExporter`), so such a manifest
//! works after changing its `apiVersion`. Every rule the API server can check is declared here
//! (enums, CEL rules with messages that name the field); what only the operator can check, such
//! as a missing Secret, is reported in the status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, PersistentVolumeClaimSpec, PodSecurityContext, ResourceRequirements, SecurityContext,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The default image of the Redis container.
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7.4";
/// The default image of the Prometheus exporter sidecar.
pub const DEFAULT_EXPORTER_IMAGE: &str = "oliver006/redis_exporter:v1.62.0";
/// The default port of the exporter's metrics endpoint.
pub const DEFAULT_EXPORTER_PORT: i32 = 9121;

/// A standalone Redis server: one pod of a StatefulSet, its configuration, its Services and
/// its storage.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "redis.operator-kit.io",
    version = "v1beta1",
    kind = "Redis",
    namespaced,
    status = "RedisStatus",
    shortname = "rds",
    category = "redis",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 52").message("metadata.name must be at most 52 characters: the StatefulSet's pod names and revision labels add up to 11 more")
)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// How the Redis pod runs: image, resources, Service type and password Secret.
    pub kubernetes_config: KubernetesConfig,
    /// Persistent storage for `/data`. Without it the data lives in an `emptyDir` and is lost
    /// when the pod is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// The Prometheus exporter sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_exporter: Option<RedisExporter>,
    /// Settings added to the generated `redis.conf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_config: Option<RedisConfig>,
    /// Node labels the pod must be scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Scheduling constraints of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Taints the pod tolerates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// The pod's security context. Default: run as user and group 1000 (`fsGroup` 1000) as non-root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// The security context of the Redis container. Default: no privilege escalation, all
    /// capabilities dropped, read-only root filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<SecurityContext>,
    /// The PriorityClass of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("priorityClassName must be a DNS subdomain name"))]
    pub priority_class_name: Option<String>,
    /// Overrides of the readiness probe's timing (the check itself is `redis-cli ping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<ProbeSettings>,
    /// Overrides of the liveness probe's timing (the check itself is `redis-cli ping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<ProbeSettings>,
}

/// How the Redis pod runs.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesConfig {
    /// The Redis image (Redis 6.2 or newer).
    #[serde(default = "default_redis_image")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("self.size() > 0 && !self.contains(' ')").message("kubernetesConfig.image must be a non-empty image reference without spaces"))]
    pub image: String,
    /// When the kubelet pulls the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// CPU and memory requests and limits of the Redis container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The type of the client Service `<name>`.
    #[serde(default)]
    pub service_type: ServiceType,
    /// The Secret key holding the password clients must give (`requirepass`). Without it the
    /// server accepts clients without a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_secret: Option<SecretKeyReference>,
    /// Secrets with credentials for pulling the images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
}

fn default_redis_image() -> String {
    DEFAULT_REDIS_IMAGE.to_owned()
}

/// When the kubelet pulls an image.
#[derive(JsonSchema, Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum ImagePullPolicy {
    /// On every pod start.
    Always,
    /// Only when the node lacks the image.
    #[default]
    IfNotPresent,
    /// Never; the image must be on the node.
    Never,
}

impl ImagePullPolicy {
    /// The value in a container spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// How the client Service is exposed.
#[derive(JsonSchema, Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through the cloud's load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The value in a Service spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// A key of a Secret in the resource's namespace.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct SecretKeyReference {
    /// The Secret's name.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.size() > 0").message("kubernetesConfig.redisSecret.name must not be empty"))]
    pub name: String,
    /// The key in the Secret's data.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("kubernetesConfig.redisSecret.key must be a valid Secret key"))]
    pub key: String,
}

/// The name of an object in the same namespace.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct LocalObjectReference {
    /// The object's name.
    pub name: String,
}

/// Persistent storage.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// The claim each pod gets for `/data`.
    pub volume_claim_template: VolumeClaimTemplate,
    /// Keep the claims (and the data) when the resource is deleted. Default: delete them.
    #[serde(default)]
    pub keep_after_delete: bool,
}

/// The template of the data volume's claim.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct VolumeClaimTemplate {
    /// The claim's spec: access modes, size, storage class.
    #[x_kube(validation = Rule::new("has(self.resources) && has(self.resources.requests) && 'storage' in self.resources.requests").message("storage.volumeClaimTemplate.spec.resources.requests.storage is required"))]
    pub spec: PersistentVolumeClaimSpec,
}

/// The Prometheus exporter sidecar.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisExporter {
    /// Run the exporter next to Redis.
    #[serde(default)]
    pub enabled: bool,
    /// The exporter image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new("self.size() > 0 && !self.contains(' ')").message("redisExporter.image must be a non-empty image reference without spaces"))]
    pub image: Option<String>,
    /// The port of the metrics endpoint. Default 9121.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535 && self != 6379").message("redisExporter.port must be between 1 and 65535 and not 6379"))]
    pub port: Option<i32>,
    /// CPU and memory of the exporter container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Settings added to `redis.conf`.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisConfig {
    /// Extra `redis.conf` lines, such as `maxmemory 100mb`; at most 100 lines of 1024
    /// characters. A change rolls the pod.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(line, !line.matches('^\\\\s*(?i)(requirepass|masterauth|include|port|dir|bind)\\\\b'))").message("redisConfig.additionalConfig must not set requirepass, masterauth, include, port, dir or bind: the operator manages them (use kubernetesConfig.redisSecret for the password)"))]
    #[x_kube(validation = Rule::new("self.all(line, !line.contains('\\n'))").message("redisConfig.additionalConfig entries must be single lines"))]
    pub additional_config: Vec<String>,
}

/// Timing of a probe; every field is optional and defaults to the operator's choice.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSettings {
    /// Seconds after the container starts before the first probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("probe initialDelaySeconds must not be negative"))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("probe periodSeconds must be at least 1"))]
    pub period_seconds: Option<i32>,
    /// Seconds after which a probe times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("probe timeoutSeconds must be at least 1"))]
    pub timeout_seconds: Option<i32>,
    /// Failures in a row that count as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("probe failureThreshold must be at least 1"))]
    pub failure_threshold: Option<i32>,
}

/// The phase of a Redis resource.
#[derive(JsonSchema, Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Phase {
    /// The operator has not finished creating the objects, or the pod is starting.
    #[default]
    Pending,
    /// The server runs and is ready.
    Ready,
    /// The operator cannot proceed until the resource or what it refers to changes.
    Failed,
}

/// What the operator observed.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    /// Pending, Ready or Failed.
    pub phase: Phase,
    /// `Ready`: whether clients can use the server; its reason says why not.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where clients connect: `<service>.<namespace>.svc:6379`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}
