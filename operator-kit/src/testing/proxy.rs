//! A TCP proxy in front of the API server whose connection can go dead on purpose.
//!
//! A dead connection does not fail: requests on it hang. That is the case leader election must
//! survive, and the one a test cannot produce by stopping the API server (that fails fast). Point
//! one operator's client at [`StallingProxy::config`], then [`StallingProxy::stall`]: from then
//! on every byte either side sends is read and dropped, so requests in flight and new ones hang
//! with their connections open. [`StallingProxy::resume`] forwards again — new connections work,
//! while the ones that lost bytes stay broken, as after a real network partition.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::HarnessError;

/// A proxy on 127.0.0.1 to the API server of a client configuration.
pub struct StallingProxy {
    address: SocketAddr,
    stalled: Arc<AtomicBool>,
    config: kube::Config,
    task: JoinHandle<()>,
}

impl StallingProxy {
    /// Starts a proxy to the API server `config` talks to.
    pub async fn start(config: &kube::Config) -> Result<Self, HarnessError> {
        let tool_error = |detail: String| HarnessError::Tool {
            command: "stalling proxy".to_owned(),
            detail,
        };
        let upstream = format!(
            "{}:{}",
            config.cluster_url.host().unwrap_or("127.0.0.1"),
            config.cluster_url.port_u16().unwrap_or(443)
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|error| tool_error(format!("failed to listen: {error}")))?;
        let address = listener
            .local_addr()
            .map_err(|error| tool_error(format!("failed to read the address: {error}")))?;
        let mut proxied = config.clone();
        let url = format!(
            "{}://{address}",
            config.cluster_url.scheme_str().unwrap_or("https")
        );
        proxied.cluster_url = url
            .parse()
            .map_err(|error| tool_error(format!("failed to parse {url:?}: {error}")))?;
        // The server certificate names the API server's own host; keep checking against it.
        let host = config.cluster_url.host().unwrap_or_default();
        if proxied.tls_server_name.is_none() && host.parse::<std::net::IpAddr>().is_err() {
            proxied.tls_server_name = Some(host.to_owned());
        }
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, flag.clone()));
                tokio::spawn(forward(server_read, client_write, flag.clone()));
            }
        });
        Ok(Self {
            address,
            stalled,
            config: proxied,
            task,
        })
    }

    /// A client configuration that goes through the proxy.
    pub fn config(&self) -> &kube::Config {
        &self.config
    }

    /// Where the proxy listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// From now on every byte is dropped; connections stay open and requests hang.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Forwards again.
    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction of a connection, dropping what arrives while `stalled` is set.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if stalled.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
