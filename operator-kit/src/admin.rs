//! The admin server: `/healthz` (and `/livez`), `/readyz` and `/metrics`, on hyper's HTTP/1.1
//! server.
//!
//! `/readyz` answers 503 with the reason while [`Health`] says not ready. `/metrics` serves
//! [`Metrics`] in the Prometheus text format, or in OpenMetrics to a scraper whose `Accept`
//! asks for `application/openmetrics-text`.
//!
//! Hyper is already in every operator's tree (kube's client is built on it), so serving three
//! fixed paths with it directly adds no crate; a web framework would add a router for them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

pub use crate::health::{Health, WATCH_FAILURE_BOUND};
pub use crate::metrics::{Metrics, ReconcileResult};

/// How long a client may take to send a request's head: a probe or a scrape sends it at once.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics text.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Errors of the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The listening socket could not be bound.
    #[error("failed to bind the admin server to {address:?}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A bound admin server, ready to serve.
pub struct AdminServer {
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl AdminServer {
    /// Binds the admin server (port 0 picks a free port; see [`AdminServer::local_address`]).
    pub async fn bind(
        address: SocketAddr,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, AdminError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| AdminError::Bind { address, source })?;
        Ok(Self {
            listener,
            metrics,
            health,
        })
    }

    /// The address the server listens on.
    pub fn local_address(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` becomes true.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let (metrics, health) = (self.metrics.clone(), self.health.clone());
                        let service = hyper::service::service_fn(move |request| {
                            let response = respond(&request, &metrics, &health);
                            async move { Ok::<_, Infallible>(response) }
                        });
                        let connection = http.serve_connection(TokioIo::new(stream), service);
                        tokio::spawn(async move {
                            if let Err(error) = connection.await {
                                debug!(%error, "admin connection failed");
                            }
                        });
                    }
                    Err(error) => warn!(%error, "failed to accept an admin connection"),
                },
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}

/// The answer to one request.
fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    health: &Health,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| (status, "text/plain", body);
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz" | "/livez") => text(StatusCode::OK, "ok\n".to_owned()),
        (&Method::GET, "/readyz") => match health.not_ready_reason() {
            None => text(StatusCode::OK, "ok\n".to_owned()),
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
        (&Method::GET, "/metrics") => {
            let openmetrics = request
                .headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .any(|value| value.contains("application/openmetrics-text"));
            if openmetrics {
                (
                    StatusCode::OK,
                    OPENMETRICS_TEXT,
                    metrics.render_openmetrics(),
                )
            } else {
                (StatusCode::OK, PROMETHEUS_TEXT, metrics.render())
            }
        }
        (&Method::GET, _) => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    #[tokio::test]
    async fn serves_probes_and_metrics() {
        let metrics = Arc::new(Metrics::default());
        metrics.register("redis", 1);
        let health = Arc::new(Health::default());
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), metrics, health.clone())
            .await
            .unwrap();
        let address = server.local_address().unwrap();
        let (stop, stopped) = watch::channel(false);
        let serving = tokio::spawn(server.serve(stopped));
        let get_with = |path: &'static str, accept: &'static str| async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream
                .write_all(
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        let get = |path: &'static str| get_with(path, "*/*");
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        health.set_ready();
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(
            get("/metrics")
                .await
                .contains("# TYPE controller_runtime_reconcile_total counter")
        );
        let openmetrics = get_with("/metrics", "application/openmetrics-text;version=1.0.0").await;
        assert!(
            openmetrics.contains("# TYPE controller_runtime_reconcile counter")
                && openmetrics.contains("application/openmetrics-text")
                && openmetrics.trim_end().ends_with("# EOF"),
            "{openmetrics}"
        );
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        // A client that never finishes its request head is dropped, not waited for forever.
        let mut idle = TcpStream::connect(address).await.unwrap();
        idle.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(HEADER_READ_TIMEOUT * 2, idle.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        stop.send_replace(true);
        serving.await.unwrap();
    }
}
