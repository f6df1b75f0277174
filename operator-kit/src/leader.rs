//! Leader election on a `coordination.k8s.io/v1` Lease, with controller-runtime's timing.
//!
//! Every replica runs its watches (warm caches, ready for `/readyz`), but only the holder of
//! the Lease reconciles. The holder renews every `retry_period`; if it cannot renew within
//! `renew_deadline` it stops leading (the operator then shuts down, like controller-runtime,
//! so that a restarted process starts clean). A standby takes the Lease once it has not been
//! renewed for `lease_duration`. On a clean shutdown the holder releases the Lease, so a
//! successor takes over at its next retry instead of waiting for expiry.
//!
//! Expiry is judged by the standby's own clock from when it *observed* the last change of the
//! Lease, not from the `renewTime` written by another machine, so clock skew does not matter.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

/// Timing and identity of leader election.
#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    /// Name of the Lease object.
    pub lease_name: String,
    /// Namespace of the Lease object.
    pub lease_namespace: String,
    /// This replica's identity, written as the Lease holder (usually the pod name).
    pub identity: String,
    /// How long a Lease is valid after its last renewal (controller-runtime: 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up (controller-runtime: 10 s).
    pub renew_deadline: Duration,
    /// How often the Lease is renewed or its acquisition retried (controller-runtime: 2 s).
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    /// controller-runtime's defaults for the given Lease and identity.
    pub fn new(lease_name: &str, lease_namespace: &str, identity: &str) -> Self {
        Self {
            lease_name: lease_name.to_owned(),
            lease_namespace: lease_namespace.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The leader could not renew its Lease within the renew deadline.
    #[error("failed to renew lease {lease:?} within {deadline:?}; leadership lost")]
    LeadershipLost {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The renew deadline that passed.
        deadline: Duration,
    },
}

/// Why one attempt to acquire or renew the Lease failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// The API request failed.
    #[error("{}", crate::api_error::describe(.0))]
    Api(#[from] kube::Error),
    /// No answer within the time left.
    #[error("no answer from the API server within {0:?}")]
    TimedOut(Duration),
}

/// Until when this replica may still act as the leader, by its own monotonic clock.
///
/// The API server fences a stale leader's writes only where they carry the resource version
/// they read, and nothing fences a command sent elsewhere (to a database, say). A leader that was frozen for a minute (a VM
/// stall, a long pause) wakes up believing it leads until its elector notices, while the
/// standby may have taken the Lease long ago. So every renewal records the instant its request
/// was *sent* plus the renew deadline: the standby only takes over a lease duration (longer)
/// after it saw that renewal, which came after the request was sent. [`LeaseFence::holds`]
/// turns false once that instant is past, even before the elector runs again; the monotonic
/// clock keeps counting while a process is frozen.
#[derive(Clone, Debug)]
pub struct LeaseFence {
    valid_until: Arc<Mutex<Option<Instant>>>,
    unbounded: bool,
}

impl LeaseFence {
    /// A fence that always holds: the operator runs without leader election.
    pub fn unbounded() -> Self {
        Self {
            valid_until: Arc::default(),
            unbounded: true,
        }
    }

    /// A fence that holds only while leader election says so.
    pub fn elected() -> Self {
        Self {
            valid_until: Arc::default(),
            unbounded: false,
        }
    }

    /// Whether this replica still holds the Lease by its own clock; check it right before a
    /// command only the leader may send.
    pub fn holds(&self) -> bool {
        self.unbounded
            || self
                .valid_until
                .lock()
                .ok()
                .and_then(|until| *until)
                .is_some_and(|until| Instant::now() < until)
    }

    fn set(&self, until: Option<Instant>) {
        if let Ok(mut valid_until) = self.valid_until.lock() {
            *valid_until = until;
        }
    }
}

/// What the elector last saw of the Lease, to judge expiry on the local clock.
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    at: Instant,
}

/// Runs leader election until `shutdown` fires, publishing whether this replica leads on
/// `leading` and until when on `fence`. Returns an error when leadership was lost; releases
/// the Lease on shutdown.
pub async fn run(
    client: Client,
    config: LeaderElectionConfig,
    leading: watch::Sender<bool>,
    fence: LeaseFence,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), LeaderError> {
    let api = Api::<Lease>::namespaced(client, &config.lease_namespace);
    let lease_key = format!("{}/{}", config.lease_namespace, config.lease_name);
    let mut observed: Option<Observed> = None;
    let mut last_renewal = Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let is_leader = *leading.borrow();
        // A leader may spend at most what is left of its renew deadline on this attempt; a
        // candidate at most one renew deadline.
        let budget = if is_leader {
            config.renew_deadline.saturating_sub(last_renewal.elapsed())
        } else {
            config.renew_deadline
        };
        let sent = Instant::now();
        let attempt =
            tokio::time::timeout(budget, try_acquire_or_renew(&api, &config, &mut observed))
                .await
                .unwrap_or(Err(AttemptError::TimedOut(budget)));
        match attempt {
            Ok(true) => {
                last_renewal = Instant::now();
                // The Lease records whole seconds: a standby may take over after
                // `lease_duration` truncated, which a misconfigured renew deadline could pass.
                let whole_duration = Duration::from_secs(config.lease_duration.as_secs());
                fence.set(Some(sent + config.renew_deadline.min(whole_duration)));
                if !is_leader {
                    info!(lease = %lease_key, identity = %config.identity, "became leader");
                    leading.send_replace(true);
                }
            }
            Ok(false) => {
                if is_leader {
                    // Someone else holds a valid lease: we were not able to renew in time.
                    fence.set(None);
                    leading.send_replace(false);
                    return Err(LeaderError::LeadershipLost {
                        lease: lease_key,
                        deadline: config.renew_deadline,
                    });
                }
            }
            Err(error) => {
                warn!(lease = %lease_key, %error, "failed to acquire or renew lease");
                if is_leader && last_renewal.elapsed() >= config.renew_deadline {
                    fence.set(None);
                    leading.send_replace(false);
                    return Err(LeaderError::LeadershipLost {
                        lease: lease_key,
                        deadline: config.renew_deadline,
                    });
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.retry_period) => {}
            _ = shutdown.changed() => {}
        }
    }
    if *leading.borrow() {
        fence.set(None);
        leading.send_replace(false);
        release(&api, &config).await;
    }
    Ok(())
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// One round: take the Lease if it is free or expired, renew it if ours. Returns whether this
/// replica holds the Lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaderElectionConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, AttemptError> {
    let duration_seconds = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.lease_name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error.into()),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec
        .holder_identity
        .clone()
        .filter(|holder| !holder.is_empty());
    let ours = holder.as_deref() == Some(config.identity.as_str());
    if !ours {
        let changed = observed
            .as_ref()
            .is_none_or(|seen| seen.holder != holder || seen.renew_time != spec.renew_time);
        if changed {
            *observed = Some(Observed {
                holder: holder.clone(),
                renew_time: spec.renew_time.clone(),
                at: Instant::now(),
            });
        }
        let valid_for = Duration::from_secs(
            spec.lease_duration_seconds
                .unwrap_or(duration_seconds)
                .max(0) as u64,
        );
        let expired = observed
            .as_ref()
            .is_some_and(|seen| seen.at.elapsed() >= valid_for);
        if holder.is_some() && !expired {
            return Ok(false);
        }
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(duration_seconds);
    spec.renew_time = Some(now());
    // `replace` carries the resourceVersion we read, so two standbys racing for an expired
    // Lease cannot both win: the second gets a conflict.
    let name = lease.name_any();
    match api.replace(&name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Gives the Lease up so that a standby takes over at its next retry. A few attempts, each
/// bounded: the first request after an API server restart can fail on a connection the
/// server closed, and a release that silently fails leaves the standby waiting for expiry.
async fn release(api: &Api<Lease>, config: &LeaderElectionConfig) {
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        let outcome =
            tokio::time::timeout(config.retry_period.max(Duration::from_secs(2)), async {
                release_once(api, config).await
            })
            .await;
        match outcome {
            Ok(Ok(true)) => {
                info!(lease = %config.lease_name, "released lease");
                return;
            }
            Ok(Ok(false)) => return,
            Ok(Err(error)) => {
                warn!(lease = %config.lease_name, attempt, %error, "failed to release lease")
            }
            Err(_) => warn!(lease = %config.lease_name, attempt, "timed out releasing lease"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One release attempt; `Ok(false)` when the Lease is gone or no longer ours.
async fn release_once(
    api: &Api<Lease>,
    config: &LeaderElectionConfig,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&config.lease_name).await? else {
        return Ok(false);
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(false);
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(false);
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    api.replace(&config.lease_name, &PostParams::default(), &lease)
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_holds_only_until_the_last_renewal_runs_out() {
        assert!(LeaseFence::unbounded().holds());
        let fence = LeaseFence::elected();
        assert!(!fence.holds(), "nothing renewed yet");
        fence.set(Some(Instant::now() + Duration::from_secs(60)));
        assert!(fence.holds());
        // A process frozen past its renewal's validity wakes up with the fence down, before
        // its elector has run again.
        let sent = Instant::now();
        fence.set(Some(sent));
        assert!(!fence.holds());
        fence.set(Some(Instant::now() + Duration::from_secs(60)));
        fence.set(None);
        assert!(!fence.holds(), "leadership given up");
    }
}
