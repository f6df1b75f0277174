//! A client that counts its requests by HTTP method.
//!
//! [`Operator::from_config`](crate::Operator::from_config) builds its client this way and
//! reports the counts as client-go's `rest_client_requests_total{method}`; tests use the same
//! counter to prove that a converged object costs no mutating request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kube::{Client, Config};

/// Counts the requests a client sends, by HTTP method, for the
/// `rest_client_requests_total` metric and for tests that prove an operator makes no writes.
#[derive(Clone, Debug, Default)]
pub struct RequestCounter {
    counts: Arc<Mutex<BTreeMap<String, usize>>>,
    /// Of those, the requests that open a port-forward to a pod (a `GET` of `…/portforward`):
    /// each is one connection an operator outside the cluster makes to a pod.
    port_forwards: Arc<std::sync::atomic::AtomicUsize>,
    /// Of those, the requests that open a watch (`?watch=true`), by path: one per watch the
    /// client starts or renews.
    watches: Arc<Mutex<BTreeMap<String, usize>>>,
    /// Every request in the order sent (`GET /api/v1/…?query`), when the counter was made
    /// with [`RequestCounter::recording`] (tests only: it grows with every request).
    sent: Option<Arc<Mutex<Vec<String>>>>,
}

impl RequestCounter {
    /// Requests sent so far with the given method (`GET`, `PATCH`, …).
    pub fn count(&self, method: &str) -> usize {
        self.counts
            .lock()
            .map(|counts| counts.get(method).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Requests that can change state: `POST`, `PUT`, `PATCH` and `DELETE`.
    pub fn mutating(&self) -> usize {
        ["POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .map(|method| self.count(method))
            .sum()
    }

    /// All requests sent so far.
    pub fn total(&self) -> usize {
        self.counts
            .lock()
            .map(|counts| counts.values().sum())
            .unwrap_or_default()
    }
}

impl<S> tower::Layer<S> for RequestCounter {
    type Service = CountedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountedService {
            inner,
            counter: self.clone(),
        }
    }
}

/// The service of a [`RequestCounter`] layer.
#[derive(Clone, Debug)]
pub struct CountedService<S> {
    inner: S,
    counter: RequestCounter,
}

impl<S, B> tower::Service<http::Request<B>> for CountedService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().ends_with("/portforward") {
            self.counter
                .port_forwards
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let query = request.uri().query().unwrap_or_default();
        if query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
            && let Ok(mut watches) = self.counter.watches.lock()
        {
            *watches.entry(request.uri().path().to_owned()).or_default() += 1;
        }
        if let Some(Ok(mut sent)) = self.counter.sent.as_ref().map(|sent| sent.lock()) {
            let uri = request.uri();
            sent.push(format!(
                "{} {}",
                request.method(),
                uri.path_and_query().map_or(uri.path(), |all| all.as_str())
            ));
        }
        if let Ok(mut counts) = self.counter.counts.lock() {
            *counts
                .entry(request.method().as_str().to_owned())
                .or_default() += 1;
        }
        self.inner.call(request)
    }
}

/// A client built from `config` whose every request is counted by the returned counter.
pub fn counted_client(config: Config) -> Result<(Client, RequestCounter), kube::Error> {
    let counter = RequestCounter::default();
    Ok((client_counted_by(config, &counter)?, counter))
}

/// A client built from `config` whose every request is counted by `counter` (one made with
/// [`RequestCounter::recording`] also keeps them in order).
pub fn client_counted_by(config: Config, counter: &RequestCounter) -> Result<Client, kube::Error> {
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(counter)
        .build())
}

impl RequestCounter {
    /// The requests that opened a port-forward to a pod (counted under `GET` too).
    pub fn port_forwards(&self) -> usize {
        self.port_forwards
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The watches opened (and renewed), by path: `/api/v1/namespaces/shop/configmaps`.
    pub fn watches(&self) -> BTreeMap<String, usize> {
        self.watches
            .lock()
            .map(|watches| watches.clone())
            .unwrap_or_default()
    }

    /// The counts by method, sorted by method.
    pub fn by_method(&self) -> BTreeMap<String, usize> {
        self.counts
            .lock()
            .map(|counts| counts.clone())
            .unwrap_or_default()
    }
    /// A counter that also keeps every request in the order sent ([`RequestCounter::sent`]).
    pub fn recording() -> Self {
        Self {
            sent: Some(Arc::default()),
            ..Self::default()
        }
    }

    /// Every request sent so far, in order, as `METHOD /path?query`; empty unless the counter
    /// is [`RequestCounter::recording`].
    pub fn sent(&self) -> Vec<String> {
        self.sent
            .as_ref()
            .and_then(|sent| sent.lock().ok().map(|sent| sent.clone()))
            .unwrap_or_default()
    }
}
