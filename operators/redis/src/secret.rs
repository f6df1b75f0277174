//! The password Secret of both Redis kinds: read (in memory only), checked, and followed —
//! a changed Secret reconciles the resources that name it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use operator_kit::ErrorClass;
use operator_kit::api_error::describe;

use crate::v1beta1::{Redis, RedisSentinel, SecretKeyReference};

/// Errors of reading the password Secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The password Secret does not exist.
    #[error("failed to find Secret {name:?} named in kubernetesConfig.redisSecret")]
    SecretNotFound {
        /// The Secret's name.
        name: String,
    },
    /// The password Secret has no such key.
    #[error("failed to find key {key:?} in Secret {name:?} named in kubernetesConfig.redisSecret")]
    SecretKeyNotFound {
        /// The Secret's name.
        name: String,
        /// The missing key.
        key: String,
    },
    /// The password cannot work as it is (never shown: only what is wrong with it).
    #[error("failed to use the password in key {key:?} of Secret {name:?}: it {problem}")]
    PasswordUnusable {
        /// The Secret's name.
        name: String,
        /// The key.
        key: String,
        /// What is wrong, from [`password_problem`].
        problem: &'static str,
    },
    /// Reading the Secret failed.
    #[error("failed to read Secret {name:?}: {}", describe(.source))]
    ReadSecret {
        /// The Secret's name.
        name: String,
        /// The API error.
        source: Box<kube::Error>,
    },
}

impl SecretError {
    /// A missing or unusable Secret waits for a change (the Secret watch reconciles the
    /// resource again once the Secret changes); a failed read is retried.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::SecretNotFound { .. }
            | Self::SecretKeyNotFound { .. }
            | Self::PasswordUnusable { .. } => ErrorClass::WaitForChange,
            Self::ReadSecret { .. } => ErrorClass::Transient,
        }
    }

    /// The condition and event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SecretNotFound { .. } => "SecretNotFound",
            Self::SecretKeyNotFound { .. } => "SecretKeyNotFound",
            Self::PasswordUnusable { .. } => "PasswordUnusable",
            Self::ReadSecret { .. } => "SecretUnreadable",
        }
    }
}

/// A password read from its Secret.
pub struct SecretPassword {
    /// The password (kept in memory only).
    pub value: String,
    /// The Secret's `metadata.resourceVersion`, which a rotation reports.
    pub resource_version: String,
}

/// The password from the Secret key `reference` names, if any, with the Secret's resource
/// version; an error when the Secret or the key is missing. The value is kept in memory only,
/// never logged or written.
pub async fn read_password_secret(
    reference: Option<&SecretKeyReference>,
    namespace: &str,
    context: &operator_kit::Context,
) -> Result<Option<SecretPassword>, SecretError> {
    let Some(reference) = reference else {
        return Ok(None);
    };
    // Through the controller's watch of Secrets: no request while the Secret is unchanged.
    let secret = context
        .get::<Secret>(Some(namespace), &reference.name)
        .await
        .map_err(|source| SecretError::ReadSecret {
            name: reference.name.clone(),
            source: Box::new(source),
        })?;
    let Some(secret) = secret else {
        return Err(SecretError::SecretNotFound {
            name: reference.name.clone(),
        });
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(&reference.key))
        .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|data| data.get(&reference.key).cloned())
        });
    let resource_version = secret.metadata.resource_version.clone().unwrap_or_default();
    match value {
        Some(value) => match password_problem(&value) {
            None => Ok(Some(SecretPassword {
                value,
                resource_version,
            })),
            Some(problem) => Err(SecretError::PasswordUnusable {
                name: reference.name.clone(),
                key: reference.key.clone(),
                problem,
            }),
        },
        None => Err(SecretError::SecretKeyNotFound {
            name: reference.name.clone(),
            key: reference.key.clone(),
        }),
    }
}

/// What makes a password unusable, if anything. A line break cannot go into `redis.conf` (the
/// pod's start script refuses it, and the pod would only crash-loop); a trailing one is nearly
/// always `echo pw | base64` instead of `echo -n`. An empty one would turn authentication off.
pub fn password_problem(password: &str) -> Option<&'static str> {
    if password.is_empty() {
        Some("is empty, which would turn authentication off")
    } else if password.trim_end_matches(['\r', '\n']).len() < password.len()
        && !password
            .trim_end_matches(['\r', '\n'])
            .contains(['\r', '\n'])
    {
        Some("ends with a line break (encoded with `echo` without `-n`?)")
    } else if password.contains(['\r', '\n']) {
        Some("contains a line break, which redis.conf cannot hold")
    } else {
        None
    }
}

/// A resource whose pods read their password from a Secret key.
pub trait PasswordSecret: kube::Resource<DynamicType = ()> {
    /// The Secret key holding the password, if any.
    fn password_secret(&self) -> Option<&SecretKeyReference>;
}

impl PasswordSecret for Redis {
    fn password_secret(&self) -> Option<&SecretKeyReference> {
        self.spec.pod.kubernetes_config.redis_secret.as_ref()
    }
}

/// The resources that refer to a Secret, to reconcile them when it changes.
pub fn referring_to_secret<'a, K: PasswordSecret + 'a>(
    secret_namespace: Option<&'a str>,
    secret_name: &'a str,
    all: impl IntoIterator<Item = Arc<K>> + 'a,
) -> impl Iterator<Item = kube::runtime::reflector::ObjectRef<K>> + 'a {
    all.into_iter()
        .filter(move |resource| {
            resource.namespace().as_deref() == secret_namespace
                && resource
                    .password_secret()
                    .is_some_and(|secret| secret.name == secret_name)
        })
        .map(|resource| kube::runtime::reflector::ObjectRef::from_obj(&*resource))
}

impl PasswordSecret for RedisSentinel {
    fn password_secret(&self) -> Option<&SecretKeyReference> {
        self.spec.pod.kubernetes_config.redis_secret.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_that_cannot_work_are_told_without_being_shown() {
        assert_eq!(password_problem("hunter2"), None);
        assert_eq!(password_problem("with \"quotes\" and \\"), None);
        let trailing = password_problem("hunter2\n").unwrap();
        assert!(trailing.contains("ends with a line break"), "{trailing}");
        assert!(
            password_problem("hunter2\r\n")
                .unwrap()
                .contains("ends with")
        );
        assert!(
            password_problem("a\nb")
                .unwrap()
                .contains("contains a line break")
        );
        assert!(password_problem("").unwrap().contains("empty"));
        let error = SecretError::PasswordUnusable {
            name: "auth".to_owned(),
            key: "password".to_owned(),
            problem: trailing,
        };
        assert!(!error.to_string().contains("hunter2"));
        assert_eq!(error.class(), ErrorClass::WaitForChange);
        assert_eq!(error.reason(), "PasswordUnusable");
    }
}
