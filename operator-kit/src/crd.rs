//! CRD tooling: one way for every operator to print its CustomResourceDefinitions, and a check
//! that the YAML committed under `crds/` matches the Rust types it is generated from.
//!
//! Printer columns, short names, categories and CEL rules are declared on the types with
//! `#[derive(CustomResource)]` and `#[x_kube(validation = ...)]`; this module only renders.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, ResourceRequirements};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The most resources one `requests` or `limits` map may name in [`resources_schema`].
pub const MAX_RESOURCES: u32 = 32;
/// The longest quantity [`resources_schema`] accepts, in characters.
pub const MAX_QUANTITY_LENGTH: u32 = 64;

/// The schema of a container's `resources` (k8s-openapi's `ResourceRequirements`) with a CEL
/// rule that every request and limit is a quantity (`100m`, `2`, `128Mi`), so that `cpu: lots`
/// is refused at admission instead of failing later on the child's apply. The maps are bounded
/// ([`MAX_RESOURCES`], [`MAX_QUANTITY_LENGTH`]): without bounds the API server estimates the
/// rule's cost over a 3 MiB object and refuses the CRD ("estimated rule cost exceeds budget by
/// factor of more than 100x"). Use it on the field:
/// `#[schemars(schema_with = "operator_kit::crd::resources_schema")]` (on an `Option` field:
/// the schema is nullable, as kube renders an `Option`).
pub fn resources_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<ResourceRequirements>();
    for map in ["requests", "limits"] {
        bound_quantities(&mut schema, &["properties", map]);
    }
    add_rule(
        &mut schema,
        "(!has(self.requests) || self.requests.all(k, isQuantity(string(self.requests[k])))) && \
         (!has(self.limits) || self.limits.all(k, isQuantity(string(self.limits[k]))))",
        "requests and limits must be quantities such as 100m, 2 or 128Mi",
    );
    // The field is optional: as kube renders an `Option`, an explicit null is accepted too.
    schema.insert("nullable".to_owned(), true.into());
    schema
}

/// The schema of a claim's spec (k8s-openapi's `PersistentVolumeClaimSpec`) that requires
/// `resources.requests.storage` and checks that it is a quantity (`1Gi`), with the bounds of
/// [`resources_schema`].
pub fn claim_spec_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<PersistentVolumeClaimSpec>();
    for map in ["requests", "limits"] {
        bound_quantities(&mut schema, &["properties", "resources", "properties", map]);
    }
    add_rule(
        &mut schema,
        "has(self.resources) && has(self.resources.requests) && 'storage' in self.resources.requests",
        "resources.requests.storage is required",
    );
    add_rule(
        &mut schema,
        "!has(self.resources) || !has(self.resources.requests) || \
         !('storage' in self.resources.requests) || \
         isQuantity(string(self.resources.requests['storage']))",
        "resources.requests.storage must be a quantity such as 1Gi",
    );
    schema
}

/// Bounds the quantity map at `path` in `schema`: at most [`MAX_RESOURCES`] entries of at most
/// [`MAX_QUANTITY_LENGTH`] characters.
fn bound_quantities(schema: &mut schemars::Schema, path: &[&str]) {
    let pointer = format!("/{}", path.join("/"));
    if let Some(map) = schema
        .pointer_mut(&pointer)
        .and_then(serde_json::Value::as_object_mut)
    {
        map.insert("maxProperties".to_owned(), MAX_RESOURCES.into());
        if let Some(values) = map
            .get_mut("additionalProperties")
            .and_then(serde_json::Value::as_object_mut)
        {
            values.insert("maxLength".to_owned(), MAX_QUANTITY_LENGTH.into());
        }
    }
}

/// Appends a CEL rule to `schema`'s `x-kubernetes-validations`.
fn add_rule(schema: &mut schemars::Schema, rule: &str, message: &str) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let rules = object
        .entry("x-kubernetes-validations")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let Some(rules) = rules.as_array_mut() {
        rules.push(serde_json::json!({ "rule": rule, "message": message }));
    }
}

/// Set this environment variable to make [`check_file`] rewrite a stale file instead of failing.
pub const UPDATE_VARIABLE: &str = "UPDATE_CRDS";

/// Errors of rendering and checking CRDs.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// A CRD could not be rendered as YAML.
    #[error("failed to render CRD {name:?} as YAML: {source}")]
    Render {
        /// The CRD's name.
        name: String,
        /// The serializer's error.
        source: serde_yaml::Error,
    },
    /// Reading or writing the committed file failed.
    #[error("failed to access {path:?}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The committed file differs from the types.
    #[error(
        "{path:?} is stale: regenerate it with `UPDATE_CRDS=1 cargo test` (or the operator's `--print-crds`)"
    )]
    Stale {
        /// The file.
        path: PathBuf,
    },
}

/// The CRDs as one YAML stream, one document each, with a header saying it is generated.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> Result<String, CrdError> {
    let mut text = String::from("# Generated from the Rust types by operator-kit; do not edit.\n");
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let document =
            serde_yaml::to_string(crd).map_err(|source| CrdError::Render { name, source })?;
        text.push_str("---\n");
        text.push_str(&document);
    }
    Ok(text)
}

/// Fails with [`CrdError::Stale`] when `path` does not hold exactly [`to_yaml`] of `crds`;
/// rewrites the file instead when `UPDATE_CRDS` is set.
pub fn check_file(path: &Path, crds: &[CustomResourceDefinition]) -> Result<(), CrdError> {
    let expected = to_yaml(crds)?;
    let io_error = |source| CrdError::Io {
        path: path.to_owned(),
        source,
    };
    if std::env::var_os(UPDATE_VARIABLE).is_some() {
        return std::fs::write(path, expected).map_err(io_error);
    }
    let committed = std::fs::read_to_string(path).map_err(io_error)?;
    if committed == expected {
        Ok(())
    } else {
        Err(CrdError::Stale {
            path: path.to_owned(),
        })
    }
}
