//! `build` for a `RedisSentinel`: pure functions from the spec to the desired objects.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, Container, EnvVar, EnvVarSource, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, Service, ServiceSpec,
    TopologySpreadConstraint,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::data_plane::{Node, Settings};
use super::scripts;
use crate::pod::{
    self, DATA_VOLUME, REDIS_PORT, config_volume, container_port, container_security,
    credentials_env, data_storage, env_value, exec, exporter_container, memory_volume, mount,
    pod_template, probe, service, service_port, short_hash,
};
use crate::v1beta1::{RedisSentinel, RedisSentinelSpec};

/// Sentinel's port, in the containers and on the sentinel Service.
pub const SENTINEL_PORT: i32 = 26379;
/// The pod label the operator sets to `master` or `replica`; the master Service selects
/// `master`.
pub const ROLE_LABEL: &str = "redis.operator-kit.io/role";

/// Defaults of the seed chart's probes: initial delay, period, timeout, failures.
/// The seed chart's probes, but for readiness's initial delay: 2 s, not 20. `<name>-master`
/// selects only a Ready pod, so a master whose container was restarted in place (kill -9,
/// OOM) took no write through it for the whole delay: 21.9 s measured on the real node
/// (`hack/bench.sh failover-pods`). Liveness keeps its 20 s for a Redis still loading.
const READINESS_DEFAULTS: (i32, i32, i32, i32) = (2, 5, 1, 5);
const LIVENESS_DEFAULTS: (i32, i32, i32, i32) = (20, 5, 5, 5);

/// The names of the objects of one `RedisSentinel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The StatefulSet (and PodDisruptionBudget): `<name>-node`.
    pub nodes: String,
    /// The headless Service that gives each pod its DNS name.
    pub headless: String,
    /// The client Service (Redis 6379, of the spec's type): `<name>`.
    pub client: String,
    /// The sentinel Service (26379, always ClusterIP): `<name>-sentinel`.
    pub sentinel: String,
    /// The Service that always selects the master: `<name>-master`.
    pub master: String,
    /// The ConfigMap with the configuration and scripts.
    pub config: String,
    /// The operator's Secret with the pods' passwords ([`super::passwords`]).
    pub credentials: String,
}

impl Names {
    /// The names for the resource called `name`.
    pub fn of(name: &str) -> Self {
        Self {
            nodes: format!("{name}-node"),
            headless: format!("{name}-headless"),
            client: name.to_owned(),
            sentinel: format!("{name}-sentinel"),
            master: format!("{name}-master"),
            config: format!("{name}-config"),
            credentials: crate::rotation::credentials_secret(name),
        }
    }
}

/// The Sentinel settings with their defaults applied.
pub fn settings(spec: &RedisSentinelSpec) -> Settings {
    let sentinel = spec.sentinel.clone().unwrap_or_default();
    let majority = spec.replicas / 2 + 1;
    Settings {
        master_set: sentinel.master_set.unwrap_or_else(|| "mymaster".to_owned()),
        quorum: u32::try_from(sentinel.quorum.unwrap_or(majority)).unwrap_or(2),
        down_after_milliseconds: u64::try_from(sentinel.down_after_milliseconds.unwrap_or(5000))
            .unwrap_or(5000),
        failover_timeout: u64::try_from(sentinel.failover_timeout.unwrap_or(10000))
            .unwrap_or(10000),
        parallel_syncs: u32::try_from(sentinel.parallel_syncs.unwrap_or(1)).unwrap_or(1),
    }
}

/// The pods as the data plane sees them: stable DNS names, never pod IPs.
pub fn nodes(resource: &RedisSentinel) -> Vec<Node> {
    let names = Names::of(&resource.name_any());
    let namespace = resource.namespace().unwrap_or_default();
    (0..resource.spec.replicas.max(0))
        .map(|ordinal| {
            let pod = format!("{}-{ordinal}", names.nodes);
            Node {
                host: format!("{pod}.{}.{namespace}.svc", names.headless),
                pod,
                redis_port: REDIS_PORT as u16,
                sentinel_port: SENTINEL_PORT as u16,
            }
        })
        .collect()
}

/// `min-replicas-max-lag` in seconds. An isolated master keeps counting its silent replicas
/// for this long; the sentinels elect another master after `down-after` plus an election
/// (about a second). Writes the old master acknowledges in between are discarded by the
/// failover, so the lag must end first: 2 s below `down-after` (3 s with the default 5 s),
/// never below Redis's minimum of 1 s. Review finding 1 measured the old default, 10 s.
pub fn min_replicas_max_lag(spec: &RedisSentinelSpec) -> i64 {
    spec.min_replicas_max_lag.map_or_else(
        || {
            (i64::try_from(settings(spec).down_after_milliseconds).unwrap_or(5000) / 1000 - 2)
                .max(1)
        },
        i64::from,
    )
}

/// The generated `redis.conf` (the start script adds the per-pod lines).
pub fn redis_conf(spec: &RedisSentinelSpec) -> String {
    let mut conf = format!(
        "# Generated by redis-operator; edit spec.redisConfig.additionalConfig instead.\n\
         bind 0.0.0.0\n\
         protected-mode no\n\
         appendonly yes\n\
         save 900 1\n\
         save 300 10\n\
         # A master cut off from its replicas stops taking writes a failover would discard.\n\
         min-replicas-to-write {}\n\
         min-replicas-max-lag {}\n",
        spec.min_replicas_to_write.unwrap_or(1),
        min_replicas_max_lag(spec),
    );
    for line in spec
        .pod
        .redis_config
        .iter()
        .flat_map(|config| &config.additional_config)
    {
        conf.push_str(line.trim());
        conf.push('\n');
    }
    conf
}

/// The ConfigMap: `redis.conf` and the scripts.
pub fn config_map(names: &Names, conf: &str) -> ConfigMap {
    let mut data = BTreeMap::from([("redis.conf".to_owned(), conf.to_owned())]);
    for (key, script) in scripts::ALL {
        data.insert(key.to_owned(), script.to_owned());
    }
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(names.config.clone()),
            ..Default::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// A short hash of the ConfigMap's content, for the pod template annotation.
pub fn config_hash(config: &ConfigMap) -> String {
    short_hash(
        config
            .data
            .iter()
            .flatten()
            .flat_map(|(key, value)| [key.as_str(), value.as_str()]),
    )
}

/// The environment both containers share.
fn environment(resource: &RedisSentinel, names: &Names) -> Vec<EnvVar> {
    let settings = settings(&resource.spec);
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let mut env = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        env_value("HEADLESS_SERVICE", names.headless.clone()),
        env_value(
            "SENTINEL_HOSTS",
            format!("{}:{SENTINEL_PORT}", names.sentinel),
        ),
        env_value("MASTER_SET", settings.master_set),
        env_value(
            "DOWN_AFTER_MILLISECONDS",
            settings.down_after_milliseconds.to_string(),
        ),
        env_value("FAILOVER_TIMEOUT", settings.failover_timeout.to_string()),
        env_value("PARALLEL_SYNCS", settings.parallel_syncs.to_string()),
    ];
    // The pods' passwords come from the operator's Secret, which moves only once every node
    // accepts what it says (see `passwords`); the probes and scripts use the operator's user.
    if resource.spec.pod.kubernetes_config.redis_secret.is_some() {
        env.extend(credentials_env(&names.credentials));
    }
    env
}

/// A preStop hook running one of the ConfigMap's scripts.
fn pre_stop(script: &str) -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(exec(&["sh", &format!("/etc/redis/{script}")])),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

/// The StatefulSet `<name>-node`: each pod runs Redis and Sentinel (and the exporter).
pub fn stateful_set(
    resource: &RedisSentinel,
    names: &Names,
    labels: &BTreeMap<String, String>,
    hash: &str,
) -> StatefulSet {
    let spec = &resource.spec;
    let kubernetes = &spec.pod.kubernetes_config;
    let pull_policy = kubernetes.image_pull_policy.unwrap_or_default().as_str();
    let env = environment(resource, names);
    let security = container_security(spec.pod.container_security_context.as_deref());
    let script = |name: &str, arguments: &str| format!("sh /etc/redis/{name} {arguments}");
    let container = |name: &str, port: i32, probe_script: &str, liveness: &str| Container {
        name: name.to_owned(),
        image: Some(kubernetes.image.clone()),
        image_pull_policy: Some(pull_policy.to_owned()),
        command: Some(vec!["sh".to_owned(), format!("/etc/redis/start-{name}.sh")]),
        env: Some(env.clone()),
        ports: Some(vec![container_port(name, port)]),
        resources: kubernetes.resources.clone(),
        readiness_probe: Some(probe(
            &script(probe_script, "1"),
            spec.pod.readiness_probe.as_ref(),
            READINESS_DEFAULTS,
        )),
        liveness_probe: Some(probe(
            &script(probe_script, liveness),
            spec.pod.liveness_probe.as_ref(),
            LIVENESS_DEFAULTS,
        )),
        lifecycle: Some(pre_stop(&format!("prestop-{name}.sh"))),
        security_context: Some(security.clone()),
        ..Container::default()
    };
    let mut containers = vec![
        Container {
            volume_mounts: Some(vec![
                mount(DATA_VOLUME, "/data"),
                mount("config", "/etc/redis"),
                mount("run", "/run/redis"),
            ]),
            ..container("redis", REDIS_PORT, "ping-redis.sh", "5 liveness")
        },
        Container {
            volume_mounts: Some(vec![
                mount("config", "/etc/redis"),
                mount("sentinel", "/run/sentinel"),
            ]),
            ..container("sentinel", SENTINEL_PORT, "ping-sentinel.sh", "5")
        },
    ];
    containers.extend(exporter_container(
        spec.pod.redis_exporter.as_deref(),
        pull_policy,
        kubernetes
            .redis_secret
            .as_ref()
            .map(|_| names.credentials.as_str()),
    ));
    let mut volumes = vec![
        config_volume("config", &names.config),
        memory_volume("run"),
        memory_volume("sentinel"),
    ];
    let (claim_templates, retention) = data_storage(&spec.pod, labels, &mut volumes);
    let selector = LabelSelector {
        match_labels: Some(labels.clone()),
        ..LabelSelector::default()
    };
    // Placement (review finding 6): two pods on one host, or in one zone, lose the sentinel
    // majority together with that host or zone, and then nothing fails over. So by default no
    // two pods share a host (required: a pod stays Pending rather than double up) and pods
    // spread over zones (preferred: a cluster whose nodes carry no zone label still
    // schedules). A spec.affinity of its own replaces both, e.g. `affinity: {}` on a
    // one-node kind cluster.
    let (affinity, spread) = match spec.pod.affinity.as_deref() {
        Some(affinity) => (affinity.clone(), None),
        None => (
            Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![
                        PodAffinityTerm {
                            topology_key: "kubernetes.io/hostname".to_owned(),
                            label_selector: Some(selector.clone()),
                            ..PodAffinityTerm::default()
                        },
                    ]),
                    ..PodAntiAffinity::default()
                }),
                ..Affinity::default()
            },
            Some(vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "topology.kubernetes.io/zone".to_owned(),
                when_unsatisfiable: "ScheduleAnyway".to_owned(),
                label_selector: Some(selector.clone()),
                ..TopologySpreadConstraint::default()
            }]),
        ),
    };
    let mut template = pod_template(&spec.pod, labels, hash, containers, volumes);
    if let Some(pod) = template.spec.as_mut() {
        pod.affinity = Some(affinity);
        pod.topology_spread_constraints = spread;
        pod.termination_grace_period_seconds =
            Some(i64::try_from(settings(spec).failover_timeout / 1000 + 20).unwrap_or(i64::MAX));
    }
    StatefulSet {
        metadata: ObjectMeta {
            name: Some(names.nodes.clone()),
            ..ObjectMeta::default()
        },
        spec: StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names.headless.clone()),
            // Pods start together: each asks the sentinels before choosing its role, and the
            // operator settles a cold start, so ordered start-up would only slow recovery.
            pod_management_policy: Some("Parallel".to_owned()),
            selector,
            persistent_volume_claim_retention_policy: Some(retention),
            template,
            volume_claim_templates: Some(claim_templates),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

/// The headless Service: stable DNS names for the pods, ready or not (a starting pod must be
/// resolvable before it is ready).
pub fn headless_service(names: &Names, labels: &BTreeMap<String, String>) -> Service {
    pod::headless_service(
        &names.headless,
        labels,
        vec![
            service_port("redis", REDIS_PORT),
            service_port("sentinel", SENTINEL_PORT),
        ],
    )
}

/// The client Service `<name>`: Redis on 6379 (any node), of the spec's type, plus the
/// exporter's port when enabled. Not Sentinel's port: whoever reaches a sentinel can name the
/// master clients are sent to, so 26379 is never exposed by `serviceType` (see
/// [`sentinel_service`]).
pub fn client_service(
    spec: &RedisSentinelSpec,
    names: &Names,
    labels: &BTreeMap<String, String>,
) -> Service {
    pod::client_service(&names.client, &spec.pod, labels)
}

/// The sentinel Service `<name>-sentinel`: Sentinel on 26379, inside the cluster only
/// (ClusterIP, whatever the spec's `serviceType`), for Sentinel-aware clients and the pods'
/// own scripts.
pub fn sentinel_service(names: &Names, labels: &BTreeMap<String, String>) -> Service {
    service(
        &names.sentinel,
        ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(labels.clone()),
            ports: Some(vec![service_port("sentinel", SENTINEL_PORT)]),
            ..ServiceSpec::default()
        },
    )
}

/// The master Service `<name>-master`: selects the pod the operator labelled master, so plain
/// clients and `kubectl port-forward svc/<name>-master` always reach the master.
pub fn master_service(names: &Names, labels: &BTreeMap<String, String>) -> Service {
    let mut selector = labels.clone();
    selector.insert(ROLE_LABEL.to_owned(), "master".to_owned());
    service(
        &names.master,
        ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![service_port("redis", REDIS_PORT)]),
            ..ServiceSpec::default()
        },
    )
}

/// At most one pod down by choice (drain, upgrade), so a sentinel majority always remains.
pub fn pod_disruption_budget(
    names: &Names,
    labels: &BTreeMap<String, String>,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: kube::api::ObjectMeta {
            name: Some(names.nodes.clone()),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1beta1::SentinelSettings;
    use serde_json::{Value, json};

    fn resource(spec: serde_json::Value) -> RedisSentinel {
        let mut resource: RedisSentinel = serde_json::from_value(json!({
            "apiVersion": "redis.operator-kit.io/v1beta1",
            "kind": "RedisSentinel",
            "metadata": { "name": "cache", "namespace": "shop" },
            "spec": spec,
        }))
        .unwrap();
        resource.metadata.generation = Some(1);
        resource
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([("app.kubernetes.io/instance".to_owned(), "cache".to_owned())])
    }

    #[test]
    fn an_isolated_master_stops_counting_its_replicas_before_a_failover_can_start() {
        // Review finding 1: with a lag above down-after, an isolated master acknowledged
        // writes for seconds after the sentinels had elected another master.
        for (down_after, lag) in [(5000, 3), (10000, 8), (3500, 1), (100, 1)] {
            let resource = resource(
                json!({ "kubernetesConfig": {}, "sentinel": { "downAfterMilliseconds": down_after } }),
            );
            assert_eq!(min_replicas_max_lag(&resource.spec), lag, "{down_after}");
            assert!(redis_conf(&resource.spec).contains(&format!("min-replicas-max-lag {lag}\n")));
        }
        let chosen = resource(json!({ "kubernetesConfig": {}, "minReplicasMaxLag": 2 }));
        assert_eq!(min_replicas_max_lag(&chosen.spec), 2);
    }

    #[test]
    fn defaults_follow_the_issue_and_the_seed_chart() {
        let resource = resource(json!({ "kubernetesConfig": {} }));
        assert_eq!(resource.spec.replicas, 3);
        let settings = settings(&resource.spec);
        assert_eq!(
            (
                settings.master_set.as_str(),
                settings.quorum,
                settings.down_after_milliseconds
            ),
            ("mymaster", 2, 5000)
        );
        assert_eq!(
            (settings.failover_timeout, settings.parallel_syncs),
            (10000, 1)
        );
        let conf = redis_conf(&resource.spec);
        assert!(
            conf.contains("min-replicas-to-write 1\n") && conf.contains("min-replicas-max-lag 3\n")
        );

        let names = Names::of("cache");
        let set = stateful_set(&resource, &names, &labels(), "hash");
        let spec = set.spec;
        assert_eq!(set.metadata.name.as_deref(), Some("cache-node"));
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("cache-headless"));
        let pod = spec.template.spec.unwrap();
        let containers: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(containers, ["redis", "sentinel"]);
        for container in &pod.containers {
            let readiness = container.readiness_probe.clone().unwrap();
            let liveness = container.liveness_probe.clone().unwrap();
            assert_eq!(
                (
                    readiness.initial_delay_seconds,
                    readiness.period_seconds,
                    readiness.timeout_seconds,
                    readiness.failure_threshold
                ),
                (Some(2), Some(5), Some(1), Some(5))
            );
            assert_eq!(
                (liveness.timeout_seconds, liveness.failure_threshold),
                (Some(5), Some(5))
            );
        }
        let sentinel_probe = pod.containers[1]
            .readiness_probe
            .clone()
            .unwrap()
            .exec
            .unwrap()
            .command
            .unwrap();
        assert!(
            sentinel_probe[2].contains("ping-sentinel.sh"),
            "{sentinel_probe:?}"
        );
        let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
        let term = &anti
            .required_during_scheduling_ignored_during_execution
            .unwrap()[0];
        assert_eq!(term.topology_key, "kubernetes.io/hostname");
        let spread = &pod.topology_spread_constraints.unwrap()[0];
        assert_eq!(
            (spread.topology_key.as_str(), spread.max_skew),
            ("topology.kubernetes.io/zone", 1)
        );
        // Both containers hand over before they stop: Redis asks for the failover, and its
        // pod's sentinel stays up until the handover is done.
        for (container, script) in [(0, "prestop-redis.sh"), (1, "prestop-sentinel.sh")] {
            let hook = pod.containers[container]
                .lifecycle
                .as_ref()
                .unwrap()
                .pre_stop
                .as_ref()
                .unwrap();
            let command = hook.exec.as_ref().unwrap().command.clone().unwrap();
            assert_eq!(command, ["sh", &format!("/etc/redis/{script}")]);
        }
    }

    #[test]
    fn nodes_are_known_by_stable_dns_names() {
        let resource = resource(json!({ "kubernetesConfig": {}, "replicas": 5 }));
        let nodes = nodes(&resource);
        assert_eq!(nodes.len(), 5);
        assert_eq!(nodes[4].pod, "cache-node-4");
        assert_eq!(nodes[4].host, "cache-node-4.cache-headless.shop.svc");
        assert_eq!((nodes[0].redis_port, nodes[0].sentinel_port), (6379, 26379));
    }

    /// What the json-built objects of earlier releases applied, for the typed builders to
    /// match exactly (so upgrading applies nothing new).
    fn as_applied<K: serde::de::DeserializeOwned + serde::Serialize>(value: Value) -> Value {
        serde_json::to_value(serde_json::from_value::<K>(value).unwrap()).unwrap()
    }

    #[test]
    fn typed_services_and_budget_are_what_the_json_ones_applied() {
        let names = Names::of("cache");
        let labels = labels();
        let resource =
            resource(json!({ "kubernetesConfig": {}, "redisExporter": { "enabled": true } }));
        let mut master_selector = labels.clone();
        master_selector.insert(ROLE_LABEL.to_owned(), "master".to_owned());
        let cases = [
            (
                serde_json::to_value(headless_service(&names, &labels)).unwrap(),
                as_applied::<Service>(json!({
                    "metadata": { "name": "cache-headless" },
                    "spec": { "clusterIP": "None", "publishNotReadyAddresses": true, "selector": labels,
                              "ports": [{ "name": "redis", "port": 6379, "targetPort": "redis" },
                                        { "name": "sentinel", "port": 26379, "targetPort": "sentinel" }] },
                })),
            ),
            (
                serde_json::to_value(client_service(&resource.spec, &names, &labels)).unwrap(),
                as_applied::<Service>(json!({
                    "metadata": { "name": "cache" },
                    "spec": { "type": "ClusterIP", "selector": labels,
                              "ports": [{ "name": "redis", "port": 6379, "targetPort": "redis" },
                                        { "name": "metrics", "port": 9121, "targetPort": "metrics" }] },
                })),
            ),
            (
                serde_json::to_value(master_service(&names, &labels)).unwrap(),
                as_applied::<Service>(json!({
                    "metadata": { "name": "cache-master" },
                    "spec": { "selector": master_selector,
                              "ports": [{ "name": "redis", "port": 6379, "targetPort": "redis" }] },
                })),
            ),
            (
                serde_json::to_value(pod_disruption_budget(&names, &labels)).unwrap(),
                as_applied::<PodDisruptionBudget>(json!({
                    "metadata": { "name": "cache-node" },
                    "spec": { "maxUnavailable": 1, "selector": { "matchLabels": labels } },
                })),
            ),
        ];
        for (typed, json) in cases {
            assert_eq!(typed, json);
        }
    }

    #[test]
    fn services_and_budget() {
        let names = Names::of("cache");
        let master = master_service(&names, &labels());
        let selector = master.spec.unwrap().selector.unwrap();
        assert_eq!(selector.get(ROLE_LABEL).map(String::as_str), Some("master"));
        // A NodePort client Service exposes Redis (which asks for the password), never a
        // sentinel: that one is ClusterIP whatever the spec says.
        let resource = resource(json!({ "kubernetesConfig": { "serviceType": "NodePort" } }));
        let client = client_service(&resource.spec, &names, &labels())
            .spec
            .unwrap();
        let ports: Vec<_> = client.ports.unwrap().iter().map(|port| port.port).collect();
        assert_eq!(
            (client.type_.as_deref(), ports),
            (Some("NodePort"), vec![6379])
        );
        let sentinel = sentinel_service(&names, &labels()).spec.unwrap();
        let ports: Vec<_> = sentinel
            .ports
            .unwrap()
            .iter()
            .map(|port| port.port)
            .collect();
        assert_eq!(
            (sentinel.type_.as_deref(), ports),
            (Some("ClusterIP"), vec![26379])
        );
        assert_eq!(names.sentinel, "cache-sentinel");
        let headless = headless_service(&names, &labels()).spec.unwrap();
        assert_eq!(headless.publish_not_ready_addresses, Some(true));
        let budget = pod_disruption_budget(&names, &labels()).spec.unwrap();
        assert_eq!(
            budget.max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
        );
    }

    #[test]
    fn the_example_builds_with_its_settings() {
        let text = include_str!("../../../../examples/redis-sentinel.yaml");
        let document = text.split("\n---\n").nth(1).unwrap();
        let resource: RedisSentinel = serde_yaml::from_str(document).unwrap();
        let settings = settings(&resource.spec);
        assert_eq!(
            (settings.quorum, settings.down_after_milliseconds),
            (2, 5000)
        );
        let set = stateful_set(&resource, &Names::of("redis-ha"), &labels(), "h");
        assert_eq!(
            set.spec.volume_claim_templates.map(|claims| claims.len()),
            Some(1)
        );
    }

    #[test]
    fn the_password_is_only_referenced() {
        let resource = resource(json!({
            "kubernetesConfig": { "redisSecret": { "name": "auth", "key": "password" } },
            "sentinel": SentinelSettings { quorum: Some(3), ..Default::default() },
        }));
        let names = Names::of("cache");
        let config = config_map(&names, &redis_conf(&resource.spec));
        let text = serde_json::to_string(&config).unwrap();
        assert!(
            !text.contains("requirepass \""),
            "no password line in the ConfigMap"
        );
        let set = serde_json::to_string(&stateful_set(&resource, &names, &labels(), "h")).unwrap();
        // The pods start from the operator's Secret, which moves only once every node accepts
        // what it says; never from the spec's Secret, which a person may change at any time.
        assert!(
            set.contains(
                r#""secretKeyRef":{"key":"password","name":"cache-operator-credentials"}"#
            ),
            "{set}"
        );
        assert!(!set.contains(r#""name":"auth""#), "{set}");
        assert_eq!(settings(&resource.spec).quorum, 3);
    }
}
