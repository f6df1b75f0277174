//! What the pods of both Redis kinds share: the Redis port, probes, the password in the
//! environment, the data volume and its claims, the exporter sidecar, security contexts, the
//! NetworkPolicy, and the hash that rolls the pods when their configuration changes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, LocalObjectReference, PersistentVolumeClaim, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, SecretKeySelector, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use operator_kit::{ChildError, Children};
use sha2::{Digest, Sha256};

use crate::v1beta1::{
    DEFAULT_EXPORTER_IMAGE, DEFAULT_EXPORTER_PORT, ProbeSettings, RedisExporter, RedisPodSpec,
    SecretKeyReference,
};

/// The Redis port, in the container and on both Services.
pub const REDIS_PORT: i32 = 6379;
/// The pod template annotation that changes whenever the configuration does.
pub const CONFIG_HASH_ANNOTATION: &str = "redis.operator-kit.io/config-hash";

/// A short hash of `parts`, for [`CONFIG_HASH_ANNOTATION`]: the first 8 bytes of their SHA-256,
/// in hex. Each kind hashes what its pods read at start; a different choice of parts would
/// change the annotation of every existing pod template, and so restart every pod on upgrade.
pub fn short_hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// An exec probe running `command` with the spec's timing, or `defaults` (initial delay,
/// period, timeout, failure threshold).
pub(crate) fn probe(
    command: &str,
    settings: Option<&ProbeSettings>,
    defaults: (i32, i32, i32, i32),
) -> Probe {
    let settings = settings.cloned().unwrap_or_default();
    Probe {
        // REDISCLI_AUTH carries the password, so it never shows in the probe's arguments.
        exec: Some(exec(&["sh", "-c", command])),
        initial_delay_seconds: Some(settings.initial_delay_seconds.unwrap_or(defaults.0)),
        period_seconds: Some(settings.period_seconds.unwrap_or(defaults.1)),
        timeout_seconds: Some(settings.timeout_seconds.unwrap_or(defaults.2)),
        failure_threshold: Some(settings.failure_threshold.unwrap_or(defaults.3)),
        ..Probe::default()
    }
}

/// A command run in the container.
pub(crate) fn exec(command: &[&str]) -> ExecAction {
    ExecAction {
        command: Some(command.iter().map(|part| (*part).to_owned()).collect()),
    }
}

/// An environment variable with a value.
pub(crate) fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// Environment variables `names`, each read from the password Secret's key.
pub(crate) fn password_env(secret: Option<&SecretKeyReference>, names: &[&str]) -> Vec<EnvVar> {
    let Some(secret) = secret else {
        return Vec::new();
    };
    names
        .iter()
        .map(|name| secret_env(name, &secret.name, &secret.key, None))
        .collect()
}

/// The environment variable `name` read from key `key` of Secret `secret`.
pub(crate) fn secret_env(name: &str, secret: &str, key: &str, optional: Option<bool>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A named container port.
pub(crate) fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        ..ContainerPort::default()
    }
}

/// A volume mounted at `path`.
pub(crate) fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    }
}

/// The volume of the ConfigMap `config_map`, named `name`.
pub(crate) fn config_volume(name: &str, config_map: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A small memory volume for files written at start (the effective configuration).
pub(crate) fn memory_volume(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_owned()),
            size_limit: Some(Quantity("1Mi".to_owned())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The image pull Secrets of the spec, as the pod names them.
pub(crate) fn image_pull_secrets(
    secrets: Option<&Vec<crate::v1beta1::LocalObjectReference>>,
) -> Option<Vec<LocalObjectReference>> {
    secrets.map(|secrets| {
        secrets
            .iter()
            .map(|secret| LocalObjectReference {
                name: secret.name.clone(),
            })
            .collect()
    })
}

/// The `/data` volume: a claim template (and the claims' retention policy) with storage, or
/// an `emptyDir` added to `volumes` without.
pub(crate) fn data_storage(
    pod: &RedisPodSpec,
    labels: &BTreeMap<String, String>,
    volumes: &mut Vec<Volume>,
) -> (
    Vec<PersistentVolumeClaim>,
    StatefulSetPersistentVolumeClaimRetentionPolicy,
) {
    let keep = pod
        .storage
        .as_ref()
        .is_some_and(|storage| storage.keep_after_delete);
    let retention = StatefulSetPersistentVolumeClaimRetentionPolicy {
        when_deleted: Some(if keep { "Retain" } else { "Delete" }.to_owned()),
        when_scaled: Some("Retain".to_owned()),
    };
    let claim_templates = match &pod.storage {
        Some(storage) => vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(DATA_VOLUME.to_owned()),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(storage.volume_claim_template.spec.clone()),
            ..PersistentVolumeClaim::default()
        }],
        None => {
            volumes.push(Volume {
                name: DATA_VOLUME.to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            Vec::new()
        }
    };
    (claim_templates, retention)
}

/// The data volume, and the claim template its claims are named after.
pub(crate) const DATA_VOLUME: &str = "data";

/// Makes the resource an owner of its data claims unless `storage.keepAfterDelete` is set (and
/// no longer one when it is), so the garbage collector deletes them with the resource even
/// when the StatefulSet's retention policy lost its race (see [`Children::own_labelled`]).
pub(crate) async fn own_data_claims(
    children: &mut Children,
    pod: &RedisPodSpec,
    stateful_set: &str,
) -> Result<(), ChildError> {
    let Some(storage) = &pod.storage else {
        return Ok(());
    };
    children
        .own_labelled::<PersistentVolumeClaim>(!storage.keep_after_delete, |name| {
            operator_kit::children::is_claim_of(name, DATA_VOLUME, stateful_set)
        })
        .await
        .map(drop)
}

/// The exporter sidecar, when enabled: it logs in as `user` (else the default user) with the
/// password in `secret`.
pub(crate) fn exporter_container(
    exporter: Option<&RedisExporter>,
    pull_policy: &str,
    secret: Option<&SecretKeyReference>,
    user: Option<&str>,
) -> Option<Container> {
    let exporter = exporter.filter(|exporter| exporter.enabled)?;
    let port = exporter.port.unwrap_or(DEFAULT_EXPORTER_PORT);
    let mut env = vec![
        env_value("REDIS_ADDR", "redis://127.0.0.1:6379"),
        env_value("REDIS_EXPORTER_WEB_LISTEN_ADDRESS", format!(":{port}")),
    ];
    if let (Some(user), Some(_)) = (user, secret) {
        env.push(env_value("REDIS_USER", user));
    }
    env.extend(password_env(secret, &["REDIS_PASSWORD"]));
    Some(Container {
        name: "redis-exporter".to_owned(),
        image: Some(
            exporter
                .image
                .as_deref()
                .unwrap_or(DEFAULT_EXPORTER_IMAGE)
                .to_owned(),
        ),
        image_pull_policy: Some(pull_policy.to_owned()),
        env: Some(env),
        ports: Some(vec![container_port("metrics", port)]),
        resources: exporter.resources.clone(),
        security_context: Some(container_security(None)),
        ..Container::default()
    })
}

/// The containers' security context: the spec's, or no privilege escalation, no
/// capabilities and a read-only root filesystem.
pub(crate) fn container_security(context: Option<&SecurityContext>) -> SecurityContext {
    context.cloned().unwrap_or_else(|| SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    })
}

/// The pod's security context: the spec's, or non-root user, group and fsGroup 1000.
pub(crate) fn pod_security(context: Option<&PodSecurityContext>) -> PodSecurityContext {
    context.cloned().unwrap_or_else(|| PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(1000),
        run_as_group: Some(1000),
        fs_group: Some(1000),
        ..PodSecurityContext::default()
    })
}

/// The pod template both kinds share: the selector labels, the configuration hash that rolls
/// the pods when it changes, and the pod settings of the spec.
pub(crate) fn pod_template(
    pod: &RedisPodSpec,
    labels: &BTreeMap<String, String>,
    hash: &str,
    containers: Vec<Container>,
    volumes: Vec<Volume>,
) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.to_owned(),
                hash.to_owned(),
            )])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers,
            volumes: Some(volumes),
            security_context: Some(pod_security(pod.security_context.as_ref())),
            node_selector: pod.node_selector.clone(),
            affinity: pod.affinity.clone(),
            tolerations: pod.tolerations.clone(),
            priority_class_name: pod.priority_class_name.clone(),
            image_pull_secrets: image_pull_secrets(
                pod.kubernetes_config.image_pull_secrets.as_ref(),
            ),
            enable_service_links: Some(false),
            ..PodSpec::default()
        }),
    }
}

/// The Service port of the exporter's metrics, when enabled.
pub(crate) fn exporter_service_port(exporter: Option<&RedisExporter>) -> Option<ServicePort> {
    let exporter = exporter.filter(|exporter| exporter.enabled)?;
    Some(service_port(
        "metrics",
        exporter.port.unwrap_or(DEFAULT_EXPORTER_PORT),
    ))
}

/// A Service port `name` on `port`, to the container port of the same name.
pub fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        ..ServicePort::default()
    }
}

/// The headless Service `name`: stable DNS names for the pods `labels` select, ready or not (a
/// starting pod must be resolvable before it is ready), on `ports`.
pub(crate) fn headless_service(
    name: &str,
    labels: &BTreeMap<String, String>,
    ports: Vec<ServicePort>,
) -> Service {
    service(
        name,
        ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(labels.clone()),
            ports: Some(ports),
            ..ServiceSpec::default()
        },
    )
}

/// The client Service `name`: Redis on 6379 of the pods `labels` select, of the spec's type,
/// plus the exporter's port when enabled.
pub(crate) fn client_service(
    name: &str,
    pod: &RedisPodSpec,
    labels: &BTreeMap<String, String>,
) -> Service {
    let mut ports = vec![service_port("redis", REDIS_PORT)];
    ports.extend(exporter_service_port(pod.redis_exporter.as_ref()));
    service(
        name,
        ServiceSpec {
            type_: Some(pod.kubernetes_config.service_type.as_str().to_owned()),
            selector: Some(labels.clone()),
            ports: Some(ports),
            ..ServiceSpec::default()
        },
    )
}

/// The Service `name` with `spec`.
pub fn service(name: &str, spec: ServiceSpec) -> Service {
    Service {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(spec),
        ..Service::default()
    }
}

/// The labels of the chart's operator pods: the NetworkPolicy's default for who the operator is.
const OPERATOR_POD_LABELS: [(&str, &str); 1] = [("app.kubernetes.io/name", crate::OPERATOR_NAME)];

/// The NetworkPolicy `name` of the pods `labels` select, when the spec asks for one: `ports`
/// (Redis, and Sentinel for a RedisSentinel) only for client pods, the resource's own pods (a
/// replica, a sentinel) and the operator's pods; the exporter's port, if any, for anyone (a
/// Prometheus wherever it runs). Egress is left alone: the pods resolve and reach each other.
pub(crate) fn network_policy(
    name: &str,
    pod: &RedisPodSpec,
    labels: &BTreeMap<String, String>,
    ports: &[i32],
) -> Option<NetworkPolicy> {
    let settings = pod
        .network_policy
        .as_ref()
        .filter(|settings| settings.enabled)?;
    let selector = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    };
    let owned = |labels: &[(&str, &str)]| {
        labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    let clients = NetworkPolicyPeer {
        pod_selector: Some(selector(
            settings
                .client_pod_labels
                .clone()
                .unwrap_or_else(|| owned(&[(&format!("{name}-client"), "true")])),
        )),
        namespace_selector: settings.client_namespace_labels.clone().map(selector),
        ..NetworkPolicyPeer::default()
    };
    let own_pods = NetworkPolicyPeer {
        pod_selector: Some(selector(labels.clone())),
        ..NetworkPolicyPeer::default()
    };
    let operator = NetworkPolicyPeer {
        pod_selector: Some(selector(
            settings
                .operator_pod_labels
                .clone()
                .unwrap_or_else(|| owned(&OPERATOR_POD_LABELS)),
        )),
        // In any namespace: the operator's is not known here.
        namespace_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    };
    let tcp = |port: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![clients, own_pods, operator]),
        ports: Some(ports.iter().copied().map(tcp).collect()),
    }];
    if let Some(exporter) = pod
        .redis_exporter
        .as_ref()
        .filter(|exporter| exporter.enabled)
    {
        ingress.push(NetworkPolicyIngressRule {
            from: None,
            ports: Some(vec![tcp(exporter.port.unwrap_or(DEFAULT_EXPORTER_PORT))]),
        });
    }
    Some(NetworkPolicy {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(labels.clone())),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_hash_is_sha256_of_the_parts_in_a_row() {
        // Pinned: changing it would restart every pod of every resource on upgrade.
        assert_eq!(short_hash(["abc"]), "ba7816bf8f01cfea");
        assert_eq!(short_hash(["a", "bc"]), short_hash(["ab", "c"]));
    }
}
