//! Status conditions the way Kubernetes' own controllers keep them.
//!
//! A custom resource's status holds a list of [`Condition`]s. [`set_condition`] replaces the
//! condition of one type and keeps its `lastTransitionTime` unless the status flipped, so the
//! time tells users when the object last became Ready, not when it was last reconciled — and
//! an unchanged status serializes to the same bytes, which lets the runtime skip the write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The object does what its spec asks.
pub const READY: &str = "Ready";
/// The operator is moving the object towards its spec (a rollout is under way).
pub const PROGRESSING: &str = "Progressing";
/// The object works below what its spec asks, or the operator cannot make progress.
pub const DEGRADED: &str = "Degraded";

/// The parts of a condition an operator decides; the time is filled in by [`set_condition`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionUpdate<'a> {
    /// The condition type, such as [`READY`].
    pub type_: &'a str,
    /// Whether the condition holds.
    pub status: bool,
    /// A CamelCase reason, for machines and `kubectl` columns.
    pub reason: &'a str,
    /// A sentence for humans.
    pub message: String,
    /// The `metadata.generation` of the object this condition was computed from.
    pub observed_generation: Option<i64>,
}

impl<'a> ConditionUpdate<'a> {
    /// A condition that holds (`status: "True"`).
    pub fn holds(type_: &'a str, reason: &'a str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason,
            message: message.into(),
            observed_generation: None,
        }
    }

    /// A condition that does not hold (`status: "False"`).
    pub fn fails(type_: &'a str, reason: &'a str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason,
            message: message.into(),
            observed_generation: None,
        }
    }

    /// Sets the generation the condition was computed from.
    pub fn observed(mut self, generation: Option<i64>) -> Self {
        self.observed_generation = generation;
        self
    }
}

/// Sets a condition in `conditions`, now. Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, update: ConditionUpdate<'_>) -> bool {
    set_condition_at(conditions, update, Timestamp::now())
}

/// Sets a condition in `conditions` as of `now`; `lastTransitionTime` becomes `now` only when
/// the condition is new or its status flipped. Returns whether anything changed.
pub fn set_condition_at(
    conditions: &mut Vec<Condition>,
    update: ConditionUpdate<'_>,
    now: Timestamp,
) -> bool {
    let status = if update.status { "True" } else { "False" };
    let existing = conditions
        .iter_mut()
        .find(|condition| condition.type_ == update.type_);
    let Some(condition) = existing else {
        conditions.push(Condition {
            type_: update.type_.to_owned(),
            status: status.to_owned(),
            reason: update.reason.to_owned(),
            message: update.message,
            observed_generation: update.observed_generation,
            // The API server stores seconds; a sub-second time would differ after a round trip.
            last_transition_time: Time(truncate_to_seconds(now)),
        });
        return true;
    };
    let before = condition.clone();
    if condition.status != status {
        condition.status = status.to_owned();
        condition.last_transition_time = Time(truncate_to_seconds(now));
    }
    condition.reason = update.reason.to_owned();
    condition.message = update.message;
    condition.observed_generation = update.observed_generation;
    *condition != before
}

/// The condition of the given type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|condition| condition.type_ == type_)
}

/// Whether the condition of the given type is present with status `"True"`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|condition| condition.status == "True")
}

fn truncate_to_seconds(time: Timestamp) -> Timestamp {
    Timestamp::from_second(time.as_second()).unwrap_or(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut conditions = Vec::new();
        let ready = |status, reason| ConditionUpdate {
            type_: READY,
            status,
            reason,
            message: format!("{reason} message"),
            observed_generation: Some(1),
        };
        assert!(set_condition_at(
            &mut conditions,
            ready(false, "Creating"),
            at(100)
        ));
        assert!(set_condition_at(
            &mut conditions,
            ready(false, "Waiting"),
            at(200)
        ));
        assert_eq!(conditions[0].last_transition_time, Time(at(100)));
        assert_eq!(conditions[0].reason, "Waiting");
        assert!(set_condition_at(
            &mut conditions,
            ready(true, "Available"),
            at(300)
        ));
        assert_eq!(conditions[0].last_transition_time, Time(at(300)));
        assert!(!set_condition_at(
            &mut conditions,
            ready(true, "Available"),
            at(400)
        ));
        assert_eq!(conditions[0].last_transition_time, Time(at(300)));
        assert_eq!(conditions.len(), 1);
        assert!(is_true(&conditions, READY));
    }

    #[test]
    fn conditions_of_other_types_are_kept() {
        let mut conditions = Vec::new();
        set_condition_at(
            &mut conditions,
            ConditionUpdate::holds(READY, "Available", "up"),
            at(1),
        );
        set_condition_at(
            &mut conditions,
            ConditionUpdate::fails(DEGRADED, "AsExpected", "fine"),
            at(2),
        );
        let generation =
            ConditionUpdate::holds(PROGRESSING, "RollingOut", "new pods").observed(Some(7));
        set_condition_at(&mut conditions, generation, at(3));
        assert_eq!(conditions.len(), 3);
        assert!(is_true(&conditions, READY));
        assert!(!is_true(&conditions, DEGRADED));
        assert_eq!(
            find_condition(&conditions, PROGRESSING)
                .unwrap()
                .observed_generation,
            Some(7)
        );
    }

    #[test]
    fn sub_second_times_are_truncated_like_the_api_server_does() {
        let mut conditions = Vec::new();
        let now = Timestamp::from_millisecond(1_500).unwrap();
        set_condition_at(
            &mut conditions,
            ConditionUpdate::holds(READY, "Available", "up"),
            now,
        );
        assert_eq!(conditions[0].last_transition_time, Time(at(1)));
    }
}
