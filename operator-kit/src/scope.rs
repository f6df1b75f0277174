//! Namespaced and cluster-scoped kinds, handled alike: a controller may reconcile either, and
//! [`crate::Children`] may apply either (within what owner references allow).

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, ResourceScope};
use kube::{Api, Client, Resource};

/// The scope of a kind with a Rust type: [`NamespaceResourceScope`] or
/// [`ClusterResourceScope`]: the `Scope` of every k8s-openapi type, and of a
/// `#[derive(CustomResource)]` (namespaced with `#[kube(namespaced)]`, cluster-scoped without).
pub trait ObjectScope: ResourceScope {
    /// Whether objects of this scope live in a namespace.
    const NAMESPACED: bool;

    /// An API handle for objects of `K`: in `namespace` when the kind is namespaced and one is
    /// given, across the cluster otherwise.
    fn api<K>(client: Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = Self>,
        K::DynamicType: Default;
}

impl ObjectScope for NamespaceResourceScope {
    const NAMESPACED: bool = true;

    fn api<K>(client: Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = Self>,
        K::DynamicType: Default,
    {
        match namespace {
            Some(namespace) => Api::namespaced(client, namespace),
            None => Api::all(client),
        }
    }
}

impl ObjectScope for ClusterResourceScope {
    const NAMESPACED: bool = false;

    fn api<K>(client: Client, _namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = Self>,
        K::DynamicType: Default,
    {
        Api::all(client)
    }
}

/// Whether `K` is a namespaced kind.
pub fn is_namespaced<K>() -> bool
where
    K: Resource,
    K::Scope: ObjectScope,
{
    <K::Scope as ObjectScope>::NAMESPACED
}

/// An API handle for `K` (see [`ObjectScope::api`]).
pub fn api<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource,
    K::Scope: ObjectScope,
    K::DynamicType: Default,
{
    <K::Scope as ObjectScope>::api::<K>(client, namespace)
}
