//! `redis.operator-kit.io/v1beta1`: the `Redis` kind (a standalone Redis server) and the
//! `RedisSentinel` kind (Redis with Sentinel), and what their pods share (`RedisPodSpec`).
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
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must start with a lowercase letter and hold only lowercase letters, digits and '-': it names the Services, whose names cannot have a dot or start with a digit"),
    validation = Rule::new("has(self.spec.storage) == has(oldSelf.spec.storage)").message("spec.storage cannot be added or removed once the resource exists: a StatefulSet's claim templates cannot change; create a new resource and move the data"),
    validation = Rule::new("!has(self.spec.storage) || !has(oldSelf.spec.storage) || self.spec.storage.volumeClaimTemplate == oldSelf.spec.storage.volumeClaimTemplate").message("spec.storage.volumeClaimTemplate cannot change once the resource exists (a StatefulSet's claim templates are immutable); to grow a volume, resize each claim data-<pod> where its StorageClass allows expansion"),
    validation = Rule::new("self.metadata.name.size() <= 52").message("metadata.name must be at most 52 characters: the StatefulSet's pod names and revision labels add up to 11 more")
)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// How a change of the password Secret reaches the running pod (without restarting it;
    /// see `status.passwordRotation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_rotation: Option<PasswordRotationSettings>,
    /// How the pods run: image, resources, storage, exporter, configuration, scheduling.
    #[serde(flatten)]
    pub pod: RedisPodSpec,
}

/// What `Redis` and `RedisSentinel` share: how their pods run.
///
/// The larger settings most resources leave out are boxed: the controller keeps every resource
/// in memory, and an absent `PodSecurityContext` or `Affinity` then costs 8 bytes, not the
/// hundreds its fields take inline.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisPodSpec {
    /// How the Redis pods run: image, resources, Service type and password Secret.
    pub kubernetes_config: KubernetesConfig,
    /// Persistent storage for each pod's `/data`. Without it the data lives in an `emptyDir`
    /// and is lost when the pod is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Box<Storage>>,
    /// The Prometheus exporter sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_exporter: Option<Box<RedisExporter>>,
    /// Settings added to the generated `redis.conf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_config: Option<RedisConfig>,
    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Scheduling constraints of the pods. Default for a RedisSentinel: no two of its pods on
    /// one host (required) and its pods spread over `topology.kubernetes.io/zone`
    /// (preferred), so that losing a host or a zone cannot take the sentinel majority with
    /// it. Setting this field replaces both, e.g. `affinity: {}` on a one-node cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Box<Affinity>>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// The pods' security context. Default: run as user and group 1000 (`fsGroup` 1000) as non-root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Box<PodSecurityContext>>,
    /// The security context of the Redis (and Sentinel) containers. Default: no privilege
    /// escalation, all capabilities dropped, read-only root filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<Box<SecurityContext>>,
    /// The PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("priorityClassName must be a DNS subdomain name"))]
    pub priority_class_name: Option<String>,
    /// Overrides of the readiness probes' timing. Defaults: Redis 5/5/1/3 (initial delay,
    /// period, timeout, failures); RedisSentinel 2/5/1/5 (the seed chart's, but a 2 s
    /// initial delay: the master Service selects only Ready pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<ProbeSettings>,
    /// Overrides of the liveness probes' timing. Defaults: Redis 15/10/5/3; RedisSentinel
    /// 20/5/5/5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<ProbeSettings>,
    /// Who may connect to the pods, as a NetworkPolicy `<name>` (enforced by the cluster's
    /// network plugin, when it supports NetworkPolicies). Off by default: anyone in the
    /// cluster may connect, and the password is the only gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<Box<NetworkPolicySettings>>,
}

/// The NetworkPolicy of the pods: Redis (and Sentinel) only for client pods, the resource's
/// own pods and the operator; the exporter's port for anyone.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySettings {
    /// Create the NetworkPolicy.
    #[serde(default)]
    pub enabled: bool,
    /// The labels of client pods, all required. Default `<name>-client: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_pod_labels: Option<BTreeMap<String, String>>,
    /// The labels of the namespaces client pods may be in, all required. Default: the
    /// resource's own namespace only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_namespace_labels: Option<BTreeMap<String, String>>,
    /// The labels of the operator's pods, in any namespace. Default
    /// `app.kubernetes.io/name: redis-operator`, as its chart labels them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_pod_labels: Option<BTreeMap<String, String>>,
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
    #[schemars(schema_with = "operator_kit::crd::resources_schema")]
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
    #[schemars(schema_with = "operator_kit::crd::claim_spec_schema")]
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
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535 && self != 6379 && self != 26379").message("redisExporter.port must be between 1 and 65535 and not 6379 or 26379 (Redis and Sentinel)"))]
    pub port: Option<i32>,
    /// CPU and memory of the exporter container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "operator_kit::crd::resources_schema")]
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
    #[x_kube(validation = Rule::new("self.all(line, !line.matches('^\\\\s*[\\\"\\x27]'))").message("redisConfig.additionalConfig directives must not be quoted: Redis would unquote them, past the checks of this field"))]
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
    /// The last change of the password Secret and how far moving the server to it has come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_rotation: Option<PasswordRotation>,
}

/// Redis with Sentinel: an odd number of pods, each running Redis and a Sentinel, with one
/// master, automatic failover, and an operator that checks and heals the replication topology.
///
/// It is not in the `redis` category: that name is also `Redis`'s singular, and a category
/// spanning two kinds would make `kubectl get redis <name>` ambiguous.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "redis.operator-kit.io",
    version = "v1beta1",
    kind = "RedisSentinel",
    namespaced,
    status = "RedisSentinelStatus",
    shortname = "rdss",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Master","type":"string","jsonPath":".status.master"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Last failover","type":"date","jsonPath":".status.lastFailover.startedAt","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must start with a lowercase letter and hold only lowercase letters, digits and '-': it names the Services, whose names cannot have a dot or start with a digit"),
    validation = Rule::new("has(self.spec.storage) == has(oldSelf.spec.storage)").message("spec.storage cannot be added or removed once the resource exists: a StatefulSet's claim templates cannot change; create a new resource and move the data"),
    validation = Rule::new("!has(self.spec.storage) || !has(oldSelf.spec.storage) || self.spec.storage.volumeClaimTemplate == oldSelf.spec.storage.volumeClaimTemplate").message("spec.storage.volumeClaimTemplate cannot change once the resource exists (a StatefulSet's claim templates are immutable); to grow a volume, resize each claim data-<pod> where its StorageClass allows expansion"),
    validation = Rule::new("self.metadata.name.size() <= 47").message("metadata.name must be at most 47 characters: the StatefulSet `<name>-node`, its pod names and revision labels add up to 16 more"),
    validation = Rule::new("!has(self.spec.sentinel) || !has(self.spec.sentinel.quorum) || self.spec.sentinel.quorum <= self.spec.replicas").message("spec.sentinel.quorum must not exceed spec.replicas"),
    validation = Rule::new("!has(self.spec.minReplicasToWrite) || self.spec.minReplicasToWrite < self.spec.replicas").message("spec.minReplicasToWrite must be less than spec.replicas"),
    validation = Rule::new("!has(self.spec.minReplicasMaxLag) || self.spec.minReplicasMaxLag * 1000 < (has(self.spec.sentinel) && has(self.spec.sentinel.downAfterMilliseconds) ? self.spec.sentinel.downAfterMilliseconds : 5000)").message("spec.minReplicasMaxLag must be shorter than spec.sentinel.downAfterMilliseconds (default 5000): a master cut off from its replicas must refuse writes before the sentinels elect another master, or the writes it acknowledges meanwhile are lost"),
    validation = Rule::new("!has(self.spec.redisConfig) || self.spec.redisConfig.additionalConfig.all(line, !line.matches('^\\\\s*(?i)(replicaof|slaveof|min-replicas-to-write|min-slaves-to-write|min-replicas-max-lag|min-slaves-max-lag|replica-announce-ip|slave-announce-ip|replica-announce-port|slave-announce-port)(\\\\s|$)'))").message("spec.redisConfig.additionalConfig must not set replicaof, slaveof, min-replicas-to-write, min-replicas-max-lag or replica-announce-*: Sentinel and the operator manage replication (use spec.minReplicasToWrite and spec.minReplicasMaxLag)"),
    validation = Rule::new("!has(self.spec.redisConfig) || self.spec.redisConfig.additionalConfig.all(line, !line.matches('^\\\\s*(?i)rename-command\\\\s+[\\\"\\x27]?(replicaof|slaveof|info|ping|config|client|role|multi|exec|script|shutdown|publish|subscribe|psubscribe|failover|auth|hello|command)[\\\"\\x27]?(\\\\s|$)'))").message("spec.redisConfig.additionalConfig must not rename a command Sentinel or the operator sends (REPLICAOF, INFO, PING, CONFIG, CLIENT, ROLE, MULTI, EXEC, SCRIPT, SHUTDOWN, PUBLISH, SUBSCRIBE, FAILOVER, AUTH, HELLO, COMMAND)")
)]
#[serde(rename_all = "camelCase")]
pub struct RedisSentinelSpec {
    /// Pods, each with a Redis and a Sentinel: odd, at least 3, so that a majority of
    /// sentinels always exists. Default 3.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 3 && self <= 99 && self % 2 == 1").message("replicas must be an odd number between 3 and 99"))]
    pub replicas: i32,
    /// Sentinel's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelSettings>,
    /// `min-replicas-to-write`: the master refuses writes unless this many replicas are
    /// connected, so a master cut off from the others cannot accept writes a failover would
    /// discard. Default 1; 0 turns the protection off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("minReplicasToWrite must not be negative"))]
    pub min_replicas_to_write: Option<i32>,
    /// `min-replicas-max-lag`: seconds after which a silent replica no longer counts for
    /// `minReplicasToWrite`. It must be shorter than `sentinel.downAfterMilliseconds`: a
    /// master cut off from its replicas then refuses writes before the sentinels can elect
    /// another, so no write it acknowledges is discarded by that failover. Default: 2 s less
    /// than `downAfterMilliseconds`, at least 1 (3 with the default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("minReplicasMaxLag must be at least 1"))]
    pub min_replicas_max_lag: Option<i32>,
    /// How a change of the password Secret reaches the running pods (without restarting
    /// them; see `status.passwordRotation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_rotation: Option<PasswordRotationSettings>,
    /// How the pods run: image, resources, storage, exporter, configuration, scheduling.
    #[serde(flatten)]
    pub pod: RedisPodSpec,
}

/// How a changed password reaches the running pods.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PasswordRotationSettings {
    /// Seconds the old password keeps working after every pod accepts the new one, for
    /// clients to move to the new one. Default 0: it is removed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 604800").message("passwordRotation.oldPasswordGraceSeconds must be between 0 and 604800 (a week)"))]
    pub old_password_grace_seconds: Option<i64>,
}

fn default_replicas() -> i32 {
    3
}

/// Sentinel's settings; every field has a default.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SentinelSettings {
    /// The name sentinels know the master by. Default `mymaster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9][-_.a-zA-Z0-9]*$')").message("sentinel.masterSet must be letters, digits, '-', '_' or '.'"))]
    pub master_set: Option<String>,
    /// Sentinels that must agree the master is down before a failover. Default: a majority
    /// of `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("sentinel.quorum must be at least 1"))]
    pub quorum: Option<i32>,
    /// Milliseconds without an answer before a node counts as down. Default 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 100").message("sentinel.downAfterMilliseconds must be at least 100"))]
    pub down_after_milliseconds: Option<i64>,
    /// Sentinel's failover timeout in milliseconds. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1000").message("sentinel.failoverTimeout must be at least 1000"))]
    pub failover_timeout: Option<i64>,
    /// Replicas resynchronised with a new master at the same time. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("sentinel.parallelSyncs must be at least 1"))]
    pub parallel_syncs: Option<i32>,
}

/// The last failover the operator saw.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// The pod that was master.
    pub from: String,
    /// The pod that became master.
    pub to: String,
    /// When the operator first heard that the master was failing: the sentinel it listens to
    /// saw the master down, or was asked to vote for a failover (RFC 3339). When it heard
    /// nothing before the switch, the time of the switch.
    pub started_at: String,
    /// Milliseconds from then to the new master being announced; absent when the start was
    /// not heard (the operator was not listening yet, or restarted meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
}

/// What the operator observed.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisSentinelStatus {
    /// Pending, Ready or Failed.
    pub phase: Phase,
    /// `Ready`: one master, every replica attached, every sentinel agreeing; its reason says
    /// what is wrong otherwise.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The pod that is master now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Where clients connect: the master Service `<name>-master.<namespace>.svc:6379`.
    /// Sentinel-aware clients in the cluster ask the sentinels at
    /// `<name>-sentinel.<namespace>.svc:26379` instead (with the same password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The last failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<Failover>,
    /// The last change of the password Secret and how far moving every node to it has come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_rotation: Option<PasswordRotation>,
}

/// How far the pods have come in taking the password the Secret now holds. The old password
/// keeps working until `phase` is `Done`; the new one works from `NewPasswordAccepted` on.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordRotation {
    /// The `metadata.resourceVersion` of the password Secret this rotation moves to.
    pub secret_resource_version: String,
    /// `AddingNewPassword` (every Redis and Sentinel is being given the new password next to
    /// the old one), `NewPasswordAccepted` (both work everywhere; pods that restart now start
    /// with both), `RemovingOldPassword`, or `Done` (only the new one works).
    pub phase: String,
    /// What is being done or, when a node cannot be moved, which one and why.
    pub message: String,
    /// When the phase last changed (RFC 3339).
    pub last_transition_time: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The controller keeps every resource in memory for as long as it exists, so a large field
    /// added inline costs its size at every resource, set or not (the pod spec's security
    /// contexts, affinity and storage took 1,576 of a Redis's 2,528 bytes before they were
    /// boxed). Box a large optional field rather than raise these bounds.
    #[test]
    fn a_resource_held_in_memory_stays_small() {
        assert!(
            std::mem::size_of::<Redis>() <= 1024,
            "{}",
            std::mem::size_of::<Redis>()
        );
        assert!(
            std::mem::size_of::<RedisSentinel>() <= 1280,
            "{}",
            std::mem::size_of::<RedisSentinel>()
        );
    }
}
