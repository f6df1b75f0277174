//! The RBAC an operator needs, derived from what its controllers declare: the resource they
//! reconcile (read, status written, owner of children), the kinds they own (applied, pruned,
//! watched), the kinds they watch, what their reconcilers use besides ([`Controller::uses`]),
//! events, and the Lease of leader election. `--print-rbac` prints it as a ClusterRole and a
//! Role for the Lease, the rules a chart or a kustomization grants.
//!
//! [`Controller::uses`]: crate::Controller::uses

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kube::api::ObjectMeta;

/// Errors of rendering the RBAC.
#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    /// Serializing the roles failed.
    #[error("failed to render the roles as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// Verbs on resources: `(API group, resource)` → verbs. `""` is the core group; a subresource
/// is written `resource/subresource`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions(BTreeMap<(String, String), BTreeSet<String>>);

impl Permissions {
    /// Allows `verbs` on `resource` of `group`.
    pub fn allow(&mut self, group: &str, resource: &str, verbs: &[&str]) {
        self.0
            .entry((group.to_owned(), resource.to_owned()))
            .or_default()
            .extend(verbs.iter().map(|verb| (*verb).to_owned()));
    }

    /// Adds everything `other` allows.
    pub fn merge(&mut self, other: &Permissions) {
        for ((group, resource), verbs) in &other.0 {
            self.0
                .entry((group.clone(), resource.clone()))
                .or_default()
                .extend(verbs.iter().cloned());
        }
    }

    /// Every `(group, resource, verb)` allowed, to compare with other rules.
    pub fn triples(&self) -> BTreeSet<(String, String, String)> {
        self.0
            .iter()
            .flat_map(|((group, resource), verbs)| {
                verbs
                    .iter()
                    .map(move |verb| (group.clone(), resource.clone(), verb.clone()))
            })
            .collect()
    }

    /// Every `(group, resource, verb)` that `rules` allow (no wildcards, no resource names).
    pub fn triples_of(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
        let mut triples = BTreeSet::new();
        for rule in rules {
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        triples.insert((group.clone(), resource.clone(), verb.clone()));
                    }
                }
            }
        }
        triples
    }

    /// As RBAC rules: the resources of one group with the same verbs share a rule.
    pub fn rules(&self) -> Vec<PolicyRule> {
        let mut shared: BTreeMap<(String, Vec<String>), Vec<String>> = BTreeMap::new();
        for ((group, resource), verbs) in &self.0 {
            let verbs = sorted_verbs(verbs);
            shared
                .entry((group.clone(), verbs))
                .or_default()
                .push(resource.clone());
        }
        shared
            .into_iter()
            .map(|((group, verbs), resources)| PolicyRule {
                api_groups: Some(vec![group]),
                resources: Some(resources),
                verbs,
                ..PolicyRule::default()
            })
            .collect()
    }
}

/// Verbs in the order people write them (read, then write), not alphabetically.
fn sorted_verbs(verbs: &BTreeSet<String>) -> Vec<String> {
    const ORDER: [&str; 8] = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];
    let mut sorted: Vec<String> = verbs.iter().cloned().collect();
    sorted.sort_by_key(|verb| {
        ORDER
            .iter()
            .position(|known| known == verb)
            .unwrap_or(ORDER.len())
    });
    sorted
}

/// What leader election needs: its Lease, in the namespace of the Lease.
pub fn leader_election() -> Permissions {
    let mut permissions = Permissions::default();
    permissions.allow(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    );
    permissions
}

/// The ClusterRole `name` with `permissions`, and the Role `<name>-leader-election` for the
/// Lease, as one YAML stream.
pub fn to_yaml(name: &str, permissions: &Permissions) -> Result<String, RbacError> {
    let cluster_role = ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        rules: Some(permissions.rules()),
        ..ClusterRole::default()
    };
    let lease_role = Role {
        metadata: ObjectMeta {
            name: Some(format!("{name}-leader-election")),
            ..ObjectMeta::default()
        },
        rules: Some(leader_election().rules()),
    };
    Ok(format!(
        "# What {name} needs in the namespaces it watches (a Role there, or this ClusterRole).\n{}---\n# With --leader-election: its Lease, in the Lease's namespace.\n{}",
        serde_yaml::to_string(&cluster_role)?,
        serde_yaml::to_string(&lease_role)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_with_the_same_verbs_share_a_rule_and_verbs_read_first() {
        let mut permissions = Permissions::default();
        permissions.allow("", "services", &["patch", "get", "list"]);
        permissions.allow("", "configmaps", &["get", "list", "patch"]);
        permissions.allow("apps", "statefulsets", &["get"]);
        permissions.allow("apps", "statefulsets", &["delete"]);
        let rules = permissions.rules();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].api_groups, Some(vec![String::new()]));
        assert_eq!(
            rules[0].resources,
            Some(vec!["configmaps".to_owned(), "services".to_owned()])
        );
        assert_eq!(rules[0].verbs, ["get", "list", "patch"]);
        assert_eq!(rules[1].verbs, ["get", "delete"]);
        assert_eq!(Permissions::triples_of(&rules), permissions.triples());
        let yaml = to_yaml("my-operator", &permissions).unwrap();
        assert!(
            yaml.contains("kind: ClusterRole")
                && yaml.contains("name: my-operator-leader-election")
        );
    }
}
