//! How the operator reaches the pods' Redis (and Sentinel): by their DNS names when it runs in
//! the cluster, through the API server's port-forward when it runs outside (`cargo run`
//! against kind), or through any [`Resolver`] a test supplies.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

use crate::resp::{Connection, Credentials, RespError, Stream};

/// A connection being opened.
pub type Connecting<'a> =
    Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Stream>>> + Send + 'a>>;

/// Opens connections to announced addresses: directly in a cluster or in tests, through the
/// API server's port-forward when the operator runs outside the cluster.
pub trait Resolver: Send + Sync {
    /// A byte stream to `host:port`.
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> Connecting<'a>;
}

/// Connects with TCP to the announced host name.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectResolver;

impl Resolver for DirectResolver {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> Connecting<'a> {
        Box::pin(async move {
            let stream = tokio::time::timeout(
                crate::resp::COMMAND_TIMEOUT,
                tokio::net::TcpStream::connect((host, port)),
            )
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            Ok(Box::new(stream) as Box<dyn Stream>)
        })
    }
}

/// Opens an authenticated connection through `resolver`.
pub async fn connect(
    resolver: &dyn Resolver,
    host: &str,
    port: u16,
    credentials: &Credentials,
) -> Result<Connection, RespError> {
    let stream = resolver.connect(host, port).await?;
    Connection::open(stream, credentials).await
}

/// The way to the data plane.
#[derive(Clone)]
pub enum Access {
    /// In the cluster (`KUBERNETES_SERVICE_HOST` set): connect to the DNS names; otherwise
    /// port-forward through the API server.
    Automatic,
    /// Always connect directly.
    Direct,
    /// Always port-forward.
    PortForward,
    /// A resolver of one's own (tests point it at local processes).
    Custom(Arc<dyn Resolver>),
}

impl std::fmt::Debug for Access {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Automatic => "Automatic",
            Self::Direct => "Direct",
            Self::PortForward => "PortForward",
            Self::Custom(_) => "Custom",
        })
    }
}

impl Access {
    /// The resolver to use with this client.
    pub fn resolver(&self, client: &Client) -> Arc<dyn Resolver> {
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        match self {
            Self::Custom(resolver) => resolver.clone(),
            Self::Direct => Arc::new(DirectResolver),
            Self::Automatic if in_cluster => Arc::new(DirectResolver),
            Self::Automatic | Self::PortForward => Arc::new(PortForwardResolver {
                client: client.clone(),
            }),
        }
    }
}

/// Reaches `<pod>.<headless>.<namespace>.svc:<port>` through `pods/portforward`.
#[derive(Clone)]
pub struct PortForwardResolver {
    client: Client,
}

impl Resolver for PortForwardResolver {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> Connecting<'a> {
        Box::pin(async move {
            let mut labels = host.split('.');
            let (Some(pod), Some(_), Some(namespace)) =
                (labels.next(), labels.next(), labels.next())
            else {
                return Err(std::io::Error::other(format!(
                    "failed to find a pod in host name {host:?}"
                )));
            };
            let pods = Api::<Pod>::namespaced(self.client.clone(), namespace);
            let mut forwarder =
                tokio::time::timeout(crate::resp::COMMAND_TIMEOUT, pods.portforward(pod, &[port]))
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
                    .map_err(std::io::Error::other)?;
            let stream = forwarder.take_stream(port).ok_or_else(|| {
                std::io::Error::other(format!("failed to port-forward to {pod:?}:{port}"))
            })?;
            // The forwarder's task ends when the stream is dropped.
            Ok(Box::new(stream) as Box<dyn Stream>)
        })
    }
}
