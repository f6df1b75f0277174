//! CRD tooling: one way for every operator to print its CustomResourceDefinitions, and a check
//! that the YAML committed under `crds/` matches the Rust types it is generated from.
//!
//! Printer columns, short names, categories and CEL rules are declared on the types with
//! `#[derive(CustomResource)]` and `#[x_kube(validation = ...)]`; this module only renders.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

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
        "{path:?} is stale: regenerate it with `UPDATE_CRDS=1 cargo test` (or the operator's `crds` command)"
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
