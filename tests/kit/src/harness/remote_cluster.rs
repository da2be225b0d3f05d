//! Remote cluster (TLS pass-through).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::pki::TestCa;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;

/// The remote-cluster node's own PKI, separate from [`pki`] (the proxy's):
/// a client that trusts only this CA and completes a handshake proves the
/// proxy did not terminate TLS.
pub struct NodePki {
    pub ca: CertificateDer<'static>,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn node_pki() -> &'static NodePki {
    static NODE: OnceLock<NodePki> = OnceLock::new();
    NODE.get_or_init(|| {
        let ca = TestCa::named("remote-cluster node test CA");
        let leaf = ca.leaf(&["*.es.test", "es.test"]);
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der], leaf.key_der)
        .expect("node certificate");
        NodePki {
            ca: ca.der(),
            server: Arc::new(server),
        }
    })
}

/// A TLS server standing for a deployment's remote-cluster port, on
/// `127.0.0.1:0`: after the handshake it writes `sni=<name>\n` (the SNI it
/// received), echoes every byte, and on the client's EOF writes `bye\n`
/// and closes.
pub struct TlsNode {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsNode {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind node");
        let addr = listener.local_addr().expect("node address");
        let connections = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(node_pki().server.clone());
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().unwrap_or_default().to_owned();
                    if tls
                        .write_all(format!("sni={sni}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tls.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = tls.write_all(b"bye\n").await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS client trusting only the node CA.
pub fn node_client_tls(send_sni: bool) -> Arc<rustls::ClientConfig> {
    let mut tls = tls_trusting(&node_pki().ca);
    tls.enable_sni = send_sni;
    Arc::new(tls)
}

/// A client connection through the pass-through listener to a [`TlsNode`].
pub struct RcConn {
    pub tls: tokio_rustls::client::TlsStream<TcpStream>,
    /// What the node reported as the SNI it received.
    pub sni_seen: String,
}

impl RcConn {
    /// PROXY `preamble`, then TLS for `name` (sent as SNI when `send_sni`),
    /// then the node's `sni=` line. `Err` when the proxy closes the
    /// connection instead.
    pub async fn connect(
        addr: SocketAddr,
        preamble: &[u8],
        name: &str,
        send_sni: bool,
    ) -> Result<Self, String> {
        let attempt = async {
            let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            tcp.write_all(preamble).await.map_err(|e| e.to_string())?;
            let server_name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
            let mut tls = tokio_rustls::TlsConnector::from(node_client_tls(send_sni))
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let line = read_line(&mut tls).await?;
            let sni_seen = line
                .strip_prefix("sni=")
                .ok_or_else(|| format!("unexpected first line {line:?}"))?
                .to_owned();
            Ok(Self { tls, sni_seen })
        };
        within("pass-through connect", attempt).await
    }

    /// Writes `bytes` and reads the same number back (the node echoes).
    pub async fn echo(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tls.write_all(bytes).await?;
        let mut back = vec![0u8; bytes.len()];
        self.tls.read_exact(&mut back).await?;
        if back != bytes {
            return Err(io::Error::other("echo differs"));
        }
        Ok(())
    }

    /// Reads to EOF (or an error); panics if still open after `limit`.
    pub async fn read_to_end_within(&mut self, limit: Duration) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let r = tokio::time::timeout(limit, self.tls.read_to_end(&mut out))
            .await
            .unwrap_or_else(|_| panic!("pass-through connection still open after {limit:?}"));
        r.map(|_| out).map_err(|e| e.to_string())
    }
}

async fn read_line<S: AsyncRead + Unpin>(io: &mut S) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match io.read(&mut byte).await {
            Ok(0) => return Err(format!("closed after {line:?}")),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    String::from_utf8(line).map_err(|e| e.to_string())
}

/// `[remote_cluster]` for [`ProxyOptions::extra_toml`]: one listener on
/// loopback, `filter` as given, and `more` lines.
pub fn remote_cluster_toml(filter: bool, more: &str) -> String {
    format!("[remote_cluster]\nlisten = [\"127.0.0.1:0\"]\nfilter = {filter}\n{more}\n")
}

impl TestProxy {
    /// The first remote-cluster listener.
    pub fn rc_addr(&self) -> SocketAddr {
        *self
            .remote_cluster
            .first()
            .expect("the test configured [remote_cluster] listen")
    }

    /// The proxy's metrics now.
    pub fn metrics(&self) -> Metrics {
        let text = String::from_utf8(portcullis::metrics::render(&self.registry))
            .expect("metrics are UTF-8");
        Metrics::parse(&text)
    }

    /// Starts draining, as SIGTERM does.
    pub fn drain(&self) {
        self.trigger.drain();
    }

    /// The remote-cluster access-log lines (`"message":"connection"`), once
    /// there are `count`.
    pub async fn connection_lines(&self, count: usize) -> Vec<Value> {
        let connection = |l: &str| l.contains("\"message\":\"connection\"");
        super::test_proxy::logged_lines(
            &self.access_log,
            count,
            "remote-cluster log lines",
            connection,
        )
        .await
    }
}
