//! Publishing Events (`events.k8s.io/v1`), with repeats folded into a series as
//! `kubectl describe` shows them ("x3 over 2m").
//!
//! This does what kube-runtime's `Recorder` does, with a smaller memory: the `Recorder` keeps,
//! for six minutes, every Event it published (the whole object and a key of cloned
//! references), in a map whose entries are stored inline. Creating 1,000 Redis, one Event each,
//! measured 2.95 MB for that map alone, plus the strings; 10,000 would keep ten times that. A
//! repeat needs only the Event's name and how often it was seen, so that is all kept here:
//! about 150 bytes an Event.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use serde_json::json;

/// How long a published Event is remembered, so that a repeat within it counts in its series
/// rather than making a new Event (as client-go and kube-runtime do).
const REMEMBERED_FOR: Duration = Duration::from_secs(6 * 60);

/// One Event to publish about an object.
#[derive(Debug, Clone, Copy)]
pub struct EventNote<'a> {
    /// Normal or Warning.
    pub event_type: EventType,
    /// A short CamelCase reason, such as `Ready` or `InvalidSpec`.
    pub reason: &'a str,
    /// What the operator was doing, such as `Reconcile`.
    pub action: &'a str,
    /// What happened, in words a person can read.
    pub note: &'a str,
}

/// Publishes Events as one controller (`reportingController`) and one operator instance
/// (`reportingInstance`).
pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<Recent>,
}

/// The Events published within [`REMEMBERED_FOR`], by what makes a repeat: the object, the
/// type, the reason, the action and the note.
#[derive(Default)]
struct Recent {
    events: HashMap<Box<str>, Published>,
    forgotten_at: Option<Instant>,
}

/// What is kept of one published Event.
struct Published {
    namespace: Box<str>,
    name: Box<str>,
    count: i32,
    last: Instant,
}

impl EventPublisher {
    /// A publisher for `controller` (the operator's name) running as `instance` (the pod).
    pub fn new(client: Client, controller: &str, instance: Option<&str>) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or(controller).to_owned(),
            recent: Mutex::new(Recent::default()),
        }
    }

    /// Publishes `event` about the object `regarding`: a new Event, or one more in the series
    /// of the same Event published within the last six minutes. Cluster-scoped objects get
    /// their Events in `default`, as kubectl looks for them there.
    pub async fn publish(
        &self,
        event: EventNote<'_>,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = repeat_key(&event, regarding);
        let now = Instant::now();
        let repeat = self.remember(&key, now);
        if let Some((namespace, name, count)) = repeat {
            let patch = json!({ "series": EventSeries {
                count,
                last_observed_time: MicroTime(Timestamp::now()),
            } });
            let patched = Api::<Event>::namespaced(self.client.clone(), &namespace)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            match patched {
                // The Event expired on the server meanwhile: publish it anew.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                other => return other.map(drop),
            }
        }
        let created = self.create(&event, regarding).await;
        if let Ok(object) = &created
            && let Ok(mut recent) = self.recent.lock()
        {
            recent.events.insert(
                key,
                Published {
                    namespace: object.metadata.namespace.clone().unwrap_or_default().into(),
                    name: object.metadata.name.clone().unwrap_or_default().into(),
                    count: 1,
                    last: now,
                },
            );
        }
        created.map(drop)
    }

    /// Forgets what is older than [`REMEMBERED_FOR`] (at most every ten seconds); counts a
    /// repeat of `key` and returns where its Event is and its new count.
    fn remember(&self, key: &str, now: Instant) -> Option<(Box<str>, Box<str>, i32)> {
        let mut recent = self.recent.lock().ok()?;
        if recent
            .forgotten_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10))
        {
            recent
                .events
                .retain(|_, published| now.duration_since(published.last) < REMEMBERED_FOR);
            recent.forgotten_at = Some(now);
        }
        let published = recent.events.get_mut(key)?;
        if now.duration_since(published.last) >= REMEMBERED_FOR {
            return None;
        }
        published.count = published.count.saturating_add(1);
        published.last = now;
        Some((
            published.namespace.clone(),
            published.name.clone(),
            published.count,
        ))
    }

    async fn create(
        &self,
        event: &EventNote<'_>,
        regarding: &ObjectReference,
    ) -> Result<Event, kube::Error> {
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let now = Timestamp::now();
        let object = Event {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            action: Some(event.action.to_owned()),
            reason: Some(event.reason.to_owned()),
            note: Some(event.note.to_owned()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(type_name(event.event_type).to_owned()),
            ..Event::default()
        };
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &object)
            .await
    }

    /// How many published Events are remembered now (for tests).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.recent.lock().map_or(0, |recent| recent.events.len())
    }
}

fn type_name(event_type: EventType) -> &'static str {
    match event_type {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// What makes two Events one series: the same object (by uid, else by kind, namespace and
/// name), type, reason, action and note.
fn repeat_key(event: &EventNote<'_>, regarding: &ObjectReference) -> Box<str> {
    let object = match &regarding.uid {
        Some(uid) => uid.clone(),
        None => format!(
            "{}/{}/{}",
            regarding.kind.as_deref().unwrap_or_default(),
            regarding.namespace.as_deref().unwrap_or_default(),
            regarding.name.as_deref().unwrap_or_default()
        ),
    };
    format!(
        "{object}\0{}\0{}\0{}\0{}",
        type_name(event.event_type),
        event.reason,
        event.action,
        event.note
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(uid: Option<&str>) -> ObjectReference {
        ObjectReference {
            kind: Some("Redis".to_owned()),
            namespace: Some("ns".to_owned()),
            name: Some("cache".to_owned()),
            uid: uid.map(str::to_owned),
            ..ObjectReference::default()
        }
    }

    const READY: EventNote<'static> = EventNote {
        event_type: EventType::Normal,
        reason: "Ready",
        action: "Reconcile",
        note: "all replicas ready",
    };

    #[test]
    fn a_repeat_is_the_same_object_type_reason_action_and_note() {
        let same = repeat_key(&READY, &reference(Some("u1")));
        assert_eq!(same, repeat_key(&READY, &reference(Some("u1"))));
        // Another object with the same name (deleted and made again) is another series.
        assert_ne!(same, repeat_key(&READY, &reference(Some("u2"))));
        let warning = EventNote {
            event_type: EventType::Warning,
            ..READY
        };
        assert_ne!(same, repeat_key(&warning, &reference(Some("u1"))));
        let other_note = EventNote {
            note: "1 replica ready",
            ..READY
        };
        assert_ne!(same, repeat_key(&other_note, &reference(Some("u1"))));
        assert!(repeat_key(&READY, &reference(None)).starts_with("Redis/ns/cache\0"));
    }

    #[tokio::test]
    async fn repeats_count_and_old_events_are_forgotten() {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let publisher =
            EventPublisher::new(Client::try_from(config).unwrap(), "redis-operator", None);
        let start = Instant::now();
        publisher.recent.lock().unwrap().events.insert(
            "k".into(),
            Published {
                namespace: "ns".into(),
                name: "cache.1".into(),
                count: 1,
                last: start,
            },
        );
        assert_eq!(
            publisher.remember("k", start + Duration::from_secs(1)),
            Some(("ns".into(), "cache.1".into(), 2))
        );
        assert_eq!(publisher.remember("other", start), None);
        // Six minutes after its last repeat, an Event is forgotten: the next is a new one.
        assert_eq!(
            publisher.remember("k", start + Duration::from_secs(1) + REMEMBERED_FOR),
            None
        );
        assert_eq!(publisher.remembered(), 0);
    }
}
