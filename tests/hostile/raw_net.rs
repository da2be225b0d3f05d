//! Raw TCP and TLS clients for the hostile suite: write any bytes after
//! any PROXY header, read until the proxy closes.

use portcullis_test_kit::pki::CheckingVerifier;
use rustls::pki_types::ServerName;

use super::*;

pub(crate) async fn tcp(w: &World, bind: Option<IpAddr>) -> TcpStream {
    let connect = async {
        match bind {
            None => TcpStream::connect(w.addr).await,
            Some(ip) => {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(w.addr).await
            }
        }
    };
    let tcp = within("TCP connect", connect).await.expect("TCP connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp
}

/// How a raw connection ended.
#[derive(Debug)]
pub(crate) struct Ended {
    /// Everything the proxy sent.
    pub(crate) received: Vec<u8>,
    /// From the first write to EOF or reset.
    pub(crate) after: Duration,
}

/// Writes `bytes` (and closes the write side when `half_close`), then reads
/// until the proxy closes; fails if it is still open after `limit`.
pub(crate) async fn send_raw(
    w: &World,
    bind: Option<IpAddr>,
    bytes: &[u8],
    half_close: bool,
    limit: Duration,
) -> Ended {
    let mut tcp = tcp(w, bind).await;
    let started = Instant::now();
    // The proxy may close before taking everything; that is its right.
    let _ = tcp.write_all(bytes).await;
    if half_close {
        let _ = tcp.shutdown().await;
    }
    let received = read_to_close(&mut tcp, limit)
        .await
        .unwrap_or_else(|got| panic!("still open after {limit:?}; got {got:?}"));
    Ended {
        received,
        after: started.elapsed(),
    }
}

/// Reads until EOF or a reset; `Err` with what was read if still open at
/// `limit`.
pub(crate) async fn read_to_close<S: AsyncRead + Unpin>(
    io: &mut S,
    limit: Duration,
) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Err(_) => return Err(got),
            Ok(Ok(0) | Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

// ================================================================ TLS

/// TLS client settings for one connection.
#[derive(Debug, Clone)]
pub(crate) struct TlsOpts {
    /// `None`: no SNI extension at all.
    pub(crate) sni: Option<String>,
    pub(crate) alpn: Vec<Vec<u8>>,
}

impl TlsOpts {
    pub(crate) fn h1() -> Self {
        Self {
            sni: Some(ZONE.to_owned()),
            alpn: vec![b"http/1.1".to_vec()],
        }
    }

    pub(crate) fn h2() -> Self {
        Self {
            sni: Some(ZONE.to_owned()),
            alpn: vec![b"h2".to_vec()],
        }
    }

    pub(crate) fn sni(mut self, sni: Option<&str>) -> Self {
        self.sni = sni.map(str::to_owned);
        self
    }

    pub(crate) fn alpn(mut self, alpn: &[&[u8]]) -> Self {
        self.alpn = alpn.iter().map(|a| a.to_vec()).collect();
        self
    }
}

/// TCP, `preamble`, TLS.
pub(crate) async fn tls_connect(
    w: &World,
    preamble: &[u8],
    opts: &TlsOpts,
) -> Result<TlsStream<TcpStream>, String> {
    let mut tcp = tcp(w, None).await;
    tcp.write_all(preamble)
        .await
        .map_err(|e| format!("write preamble: {e}"))?;
    tls_over(tcp, opts).await
}

/// A TLS client handshake on an already connected (and prefixed) stream.
pub(crate) async fn tls_over(
    tcp: TcpStream,
    opts: &TlsOpts,
) -> Result<TlsStream<TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // The cases here choose odd SNIs on purpose and still want to know
    // they reached the real proxy: check the certificate as `es.test`'s.
    let verifier = CheckingVerifier::new(pki().ca.clone()).checking_as("es.test");
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = opts.alpn.clone();
    config.enable_sni = opts.sni.is_some();
    let name = opts.sni.clone().unwrap_or_else(|| "es.test".to_owned());
    let name = ServerName::try_from(name).map_err(|e| format!("server name: {e}"))?;
    within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|e| format!("TLS handshake: {e}"))
}

/// The bytes a TLS-layer refusal sends back: nothing, or one TLS alert
/// record (`15 03 0x 00 02 <level> <description>`) and nothing after it.
/// Returns the alert description, if any.
pub(crate) fn alert_only(received: &[u8]) -> Option<u8> {
    match received {
        [] => None,
        [0x15, 0x03, 0x01..=0x03, 0x00, 0x02, 0x02, description] => Some(*description),
        other => panic!("expected nothing or one fatal TLS alert, got {other:02x?}"),
    }
}
