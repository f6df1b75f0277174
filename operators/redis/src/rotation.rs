//! The operator's side of the pods' passwords, for both Redis kinds: its Secret
//! `<name>-operator-credentials`, the rotation's steps ([`crate::passwords`] takes them on the
//! processes), and what the status and the events say about them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::events::EventType;
use operator_kit::api_error::describe;
use operator_kit::{Context, ErrorClass};

use crate::access::Resolver;
use crate::passwords::{self, Converged, PodPasswords, Step, Target};
use crate::v1beta1::{PasswordRotation, Redis, RedisSentinel};

/// How often a rotation under way is checked (its next step).
pub const ROTATION_RECHECK_INTERVAL: Duration = Duration::from_secs(3);

/// The name of the operator's Secret of the resource called `name`.
pub fn credentials_secret(name: &str) -> String {
    format!("{name}-operator-credentials")
}

/// A resource whose pods' passwords the operator keeps, and rotates when its Secret changes.
pub trait Rotating: kube::Resource<DynamicType = ()> {
    /// `status.passwordRotation`, as the last reconcile wrote it.
    fn password_rotation(&self) -> Option<&PasswordRotation>;
    /// `spec.passwordRotation.oldPasswordGraceSeconds`, default 0.
    fn old_password_grace_seconds(&self) -> i64;
}

/// Both kinds keep the same fields: `spec.passwordRotation` and `status.passwordRotation`.
macro_rules! rotating {
    ($($kind:ty),*) => {$(
        impl Rotating for $kind {
            fn password_rotation(&self) -> Option<&PasswordRotation> {
                self.status.as_ref()?.password_rotation.as_ref()
            }

            fn old_password_grace_seconds(&self) -> i64 {
                self.spec
                    .password_rotation
                    .as_ref()
                    .and_then(|rotation| rotation.old_password_grace_seconds)
                    .unwrap_or(0)
            }
        }
    )*};
}

rotating!(Redis, RedisSentinel);

/// Errors of keeping the pods' passwords.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The operator's Secret with the pods' passwords could not be read or written.
    #[error("failed to keep the pods' passwords in Secret {name:?}: {}", describe(.source))]
    Credentials {
        /// The Secret's name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// A Secret that is not this resource's has the name of the operator's Secret.
    #[error(
        "failed to keep the pods' passwords in Secret {name:?}: a Secret of that name exists and \
         does not belong to this resource; rename or delete it"
    )]
    CredentialsTaken {
        /// The Secret's name.
        name: String,
    },
    /// The system's random source failed.
    #[error("failed to generate the operator's password: {0}")]
    Random(getrandom::Error),
}

impl RotationError {
    /// Every one is retried with backoff: a Secret of that name may be removed by a person.
    pub fn class(&self) -> ErrorClass {
        ErrorClass::Transient
    }

    /// The condition and event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Credentials { .. } => "CredentialsFailed",
            Self::CredentialsTaken { .. } => "CredentialsSecretTaken",
            Self::Random(_) => "RandomFailed",
        }
    }
}

/// When a rotation wants its next check, if one runs: its next step soon, an overlap when
/// its grace is over (at most `longest` later): pure.
pub fn rotation_recheck(rotation: &Rotation, longest: Duration) -> Option<Duration> {
    match rotation.step {
        Step::Steady => None,
        Step::Overlap if rotation.converged.complete() => Some(
            rotation
                .old_password_remaining
                .unwrap_or(ROTATION_RECHECK_INTERVAL)
                .clamp(Duration::from_millis(100), longest),
        ),
        _ => Some(ROTATION_RECHECK_INTERVAL),
    }
}

/// One reconcile's work on the pods' passwords ([`crate::passwords`]).
pub struct Rotation {
    /// What the pods start with now (after this reconcile's step, if it completed).
    pub pods: PodPasswords,
    /// The step this reconcile took.
    pub step: Step,
    /// What the step did on each process.
    pub converged: Converged,
    /// How long the old password is still due to work, while it is.
    pub old_password_remaining: Option<Duration>,
}

/// The status of a rotation after one reconcile, as of `now`: pure. Nothing while no
/// rotation ever ran; the phase the step reached, or, when a process could not be moved,
/// which one and why.
pub fn rotation_status(
    previous: Option<&PasswordRotation>,
    secret_resource_version: &str,
    rotation: &Rotation,
    grace_seconds: i64,
    now: &str,
) -> Option<PasswordRotation> {
    let (phase, message) = match (&rotation.step, rotation.converged.complete()) {
        (Step::Steady, _) => {
            previous?;
            (
                "Done",
                "only the password in the Secret is accepted".to_owned(),
            )
        }
        (Step::AddNew { .. } | Step::Overlap, true) => (
            "NewPasswordAccepted",
            format!(
                "every pod accepts the new password, and the old one for {grace_seconds}s from \
                 lastTransitionTime (spec.passwordRotation.oldPasswordGraceSeconds), for clients \
                 to move"
            ),
        ),
        (Step::RemoveOld { .. }, true) => {
            ("Done", "every pod accepts only the new password".to_owned())
        }
        (step, false) => (
            step.phase(),
            format!(
                "cannot move {}; the old password keeps working meanwhile, and the operator \
                 retries",
                rotation.converged.failed.join("; ")
            ),
        ),
    };
    let last_transition_time = match previous {
        Some(previous) if previous.phase == phase => previous.last_transition_time.clone(),
        _ => now.to_owned(),
    };
    Some(PasswordRotation {
        secret_resource_version: secret_resource_version.to_owned(),
        phase: phase.to_owned(),
        message,
        last_transition_time,
    })
}

/// How long the old password is still due to work, from the status the previous reconcile
/// wrote: pure. `None` once it is to be removed: its grace has passed since every process
/// accepted the new one, or its removal has begun. The grace starts when the status first
/// says `NewPasswordAccepted`, so an operator restart neither shortens nor restarts it.
pub fn old_password_remaining(
    previous: Option<&PasswordRotation>,
    grace_seconds: i64,
    now: SystemTime,
) -> Option<Duration> {
    let grace = Duration::from_secs(u64::try_from(grace_seconds).unwrap_or(0));
    match previous {
        Some(rotation) if rotation.phase == "RemovingOldPassword" => None,
        Some(rotation) if rotation.phase == "NewPasswordAccepted" => {
            let since = rotation
                .last_transition_time
                .parse::<Timestamp>()
                .map_or(now, SystemTime::from);
            let elapsed = now.duration_since(since).unwrap_or_default();
            grace.checked_sub(elapsed).filter(|left| !left.is_zero())
        }
        // Not recorded yet: the grace starts with this reconcile's status.
        _ => Some(grace.max(Duration::from_millis(1))),
    }
}

/// The Event a rotation's status change deserves, if any: pure. Each phase reached is told
/// once; a step that cannot complete is told once as a Warning, not on every retry.
pub fn rotation_event(
    previous: Option<&PasswordRotation>,
    next: Option<&PasswordRotation>,
) -> Option<(EventType, &'static str, String)> {
    let next = next?;
    let blocked = |rotation: &PasswordRotation| rotation.message.starts_with("cannot move");
    if blocked(next) {
        let already =
            previous.is_some_and(|previous| previous.phase == next.phase && blocked(previous));
        return (!already).then(|| {
            (
                EventType::Warning,
                "PasswordRotationBlocked",
                next.message.clone(),
            )
        });
    }
    if previous.is_some_and(|previous| previous.phase == next.phase && !blocked(previous)) {
        return None;
    }
    let reason = match next.phase.as_str() {
        "Done" => "PasswordRotated",
        _ => "PasswordRotating",
    };
    Some((EventType::Normal, reason, next.message.clone()))
}

/// The pods' passwords from the operator's Secret; created from the clients' `password` when
/// missing.
async fn pod_passwords<K: Rotating>(
    context: &Context,
    resource: &K,
    labels: &BTreeMap<String, String>,
    password: &str,
) -> Result<PodPasswords, RotationError> {
    let name = credentials_secret(&resource.name_any());
    // Through the controller's watch of Secrets: no request while the Secret is unchanged.
    let existing = context
        .get::<Secret>(resource.namespace().as_deref(), &name)
        .await
        .map_err(|source| RotationError::Credentials {
            name: name.clone(),
            source: Box::new(source),
        })?;
    if let Some(secret) = existing {
        let owned = resource.uid().is_some_and(|uid| {
            secret
                .owner_references()
                .iter()
                .any(|owner| owner.uid == uid)
        });
        // Labelled as this resource's but not owned by it: restored from a backup before the
        // resource (a new uid), or prepared by hand. Its passwords are the running pods', so
        // it is adopted, not replaced.
        let labelled = labels
            .iter()
            .all(|(key, value)| secret.labels().get(key) == Some(value));
        if !owned && !labelled {
            return Err(RotationError::CredentialsTaken { name });
        }
        if let Some(pods) = PodPasswords::from_secret(&secret) {
            if !owned {
                write_pod_passwords(context, resource, labels, &pods).await?;
            }
            return Ok(pods);
        }
    }
    // First time (a new resource, or one from before the operator kept the pods' passwords):
    // the pods run with the clients' password from the spec's Secret.
    let pods = PodPasswords::generate(password).map_err(RotationError::Random)?;
    write_pod_passwords(context, resource, labels, &pods).await?;
    Ok(pods)
}

/// Writes the operator's Secret (server-side apply: a key no longer written is removed).
async fn write_pod_passwords<K: Rotating>(
    context: &Context,
    resource: &K,
    labels: &BTreeMap<String, String>,
    pods: &PodPasswords,
) -> Result<(), RotationError> {
    let namespace = resource.namespace().unwrap_or_default();
    let name = credentials_secret(&resource.name_any());
    let secret = pods.to_secret(
        &name,
        ObjectMeta {
            namespace: Some(namespace.clone()),
            labels: Some(labels.clone()),
            owner_references: resource.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
    );
    Api::<Secret>::namespaced(context.client().clone(), &namespace)
        .patch(
            &name,
            &PatchParams::apply(context.field_manager()).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(|source| RotationError::Credentials {
            name: name.clone(),
            source: Box::new(source),
        })?;
    // The next read must not be the one from before this write (see `pod_passwords`).
    context.forget::<Secret>(Some(&namespace), &name);
    Ok(())
}

/// Gives every process of `targets` the operator's user and the next step of a rotation
/// toward `wanted`; records the step in the operator's Secret once every process took it.
/// Between rotations the processes are checked only when `check_steady` (see the callers).
pub async fn rotate<K: Rotating>(
    context: &Context,
    resource: &K,
    labels: &BTreeMap<String, String>,
    plane: (&[Target], &dyn Resolver, &str),
    wanted: &str,
    check_steady: bool,
) -> Result<Rotation, RotationError> {
    let (targets, resolver, master_set) = plane;
    let mut pods = pod_passwords(context, resource, labels, wanted).await?;
    let remaining = old_password_remaining(
        resource.password_rotation(),
        resource.old_password_grace_seconds(),
        SystemTime::now(),
    );
    let step = passwords::step(&pods, wanted, remaining.is_none());
    let converged = if step == Step::Steady && !check_steady {
        Converged::default()
    } else {
        passwords::converge(targets, resolver, &pods, &step, master_set).await
    };
    if !converged.changed.is_empty() {
        tracing::info!(changed = ?converged.changed, phase = step.phase(), "passwords");
    }
    if let Step::AddNew { next } | Step::RemoveOld { next } = &step
        && converged.complete()
    {
        write_pod_passwords(context, resource, labels, next).await?;
        pods = next.clone();
    }
    Ok(Rotation {
        pods,
        step,
        converged,
        old_password_remaining: remaining,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(step: Step, failed: &[&str]) -> Rotation {
        Rotation {
            pods: PodPasswords {
                operator: "operator".to_owned(),
                current: "old".to_owned(),
                previous: None,
            },
            step,
            converged: Converged {
                changed: Vec::new(),
                failed: failed.iter().map(|failure| (*failure).to_owned()).collect(),
                unreachable: 0,
            },
            old_password_remaining: None,
        }
    }

    #[test]
    fn the_old_password_keeps_working_for_its_grace_from_the_recorded_acceptance() {
        let at = |phase: &str, time: &str| PasswordRotation {
            secret_resource_version: "8".to_owned(),
            phase: phase.to_owned(),
            message: String::new(),
            last_transition_time: time.to_owned(),
        };
        let now = SystemTime::from("2026-11-27T10:00:00Z".parse::<Timestamp>().unwrap());
        // Not recorded yet: the whole grace is ahead (and a zero grace still waits for the
        // acceptance to be recorded first).
        assert_eq!(
            old_password_remaining(None, 60, now),
            Some(Duration::from_secs(60))
        );
        assert!(old_password_remaining(None, 0, now).is_some());
        let accepted = at("NewPasswordAccepted", "2026-11-27T09:59:30Z");
        assert_eq!(
            old_password_remaining(Some(&accepted), 60, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(old_password_remaining(Some(&accepted), 30, now), None);
        assert_eq!(old_password_remaining(Some(&accepted), 0, now), None);
        // A removal under way is finished, whatever the grace says now.
        assert_eq!(
            old_password_remaining(Some(&at("RemovingOldPassword", "")), 600, now),
            None
        );
        // Done (the previous rotation) and a Secret changed again: the new grace starts.
        assert_eq!(
            old_password_remaining(Some(&at("Done", "2026-11-27T09:00:00Z")), 60, now),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn a_rotation_is_reported_step_by_step_and_a_blocked_one_once() {
        let pods = |current: &str, previous: Option<&str>| PodPasswords {
            operator: "operator".to_owned(),
            current: current.to_owned(),
            previous: previous.map(str::to_owned),
        };
        // No rotation ever: nothing to report.
        assert_eq!(
            rotation_status(None, "7", &rotation(Step::Steady, &[]), 0, "t0"),
            None
        );
        // The Secret changed and every process took the new password.
        let add = Step::AddNew {
            next: pods("new", Some("old")),
        };
        let accepted = rotation_status(None, "8", &rotation(add.clone(), &[]), 0, "t1").unwrap();
        assert_eq!(
            (
                accepted.phase.as_str(),
                accepted.secret_resource_version.as_str()
            ),
            ("NewPasswordAccepted", "8")
        );
        let event = rotation_event(None, Some(&accepted)).unwrap();
        assert_eq!((event.0, event.1), (EventType::Normal, "PasswordRotating"));
        // One pod cannot be moved: said in status with the pod, and as one Warning.
        let remove = Step::RemoveOld {
            next: pods("new", None),
        };
        let blocked = rotation_status(
            Some(&accepted),
            "8",
            &rotation(remove.clone(), &["cache-node-2 redis: connection refused"]),
            0,
            "t2",
        )
        .unwrap();
        assert_eq!(blocked.phase, "RemovingOldPassword");
        assert!(
            blocked.message.contains("cache-node-2 redis"),
            "{blocked:?}"
        );
        assert_eq!(blocked.last_transition_time, "t2");
        let warning = rotation_event(Some(&accepted), Some(&blocked)).unwrap();
        assert_eq!(
            (warning.0, warning.1),
            (EventType::Warning, "PasswordRotationBlocked")
        );
        let still = rotation_status(
            Some(&blocked),
            "8",
            &rotation(remove.clone(), &["cache-node-2 redis: timed out"]),
            0,
            "t3",
        )
        .unwrap();
        assert_eq!(still.last_transition_time, "t2");
        assert_eq!(rotation_event(Some(&blocked), Some(&still)), None);
        // Done, told once.
        let done = rotation_status(Some(&still), "8", &rotation(remove, &[]), 0, "t4").unwrap();
        assert_eq!(done.phase, "Done");
        let event = rotation_event(Some(&still), Some(&done)).unwrap();
        assert_eq!((event.0, event.1), (EventType::Normal, "PasswordRotated"));
        let steady =
            rotation_status(Some(&done), "8", &rotation(Step::Steady, &[]), 0, "t5").unwrap();
        assert_eq!(steady.last_transition_time, "t4");
        assert_eq!(rotation_event(Some(&done), Some(&steady)), None);
        // Nothing in status or events holds a password.
        for rotation in [&accepted, &blocked, &done] {
            let text = serde_json::to_string(rotation).unwrap();
            assert!(
                !text.contains("\"old\"") && !text.contains("\"new\""),
                "{text}"
            );
        }
    }
}
