//! One client connection, in the order the server sees it: TCP connect, the
//! PROXY header, the TLS handshake (SNI, ALPN), the HTTP/1.1 or HTTP/2
//! handshake; then requests on it. Every stage has a timeout and every
//! failure comes back as a [`Failure`] to be counted, never a panic.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::proxy_header::{self, ClientIdentity};

/// Why a connection or request did not produce a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// TCP connect refused or failed.
    Connect,
    /// Writing the PROXY header failed (peer closed or reset).
    ProxyHeader,
    /// TLS handshake failed (includes a peer closing on a bad PROXY header).
    Tls,
    /// HTTP/2 was asked for and the server did not negotiate it.
    Alpn,
    /// HTTP connection set-up failed.
    HttpHandshake,
    /// Sending the request or reading the response head failed.
    Request,
    /// The response body broke off.
    Body,
    /// A stage took longer than `--timeout`.
    Timeout,
    /// The connection was already closed when a request was due.
    Closed,
    /// Open loop: the request was scheduled but never sent before the run
    /// ended (the server fell behind the rate).
    NotSent,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::ProxyHeader => "proxy_header",
            Self::Tls => "tls",
            Self::Alpn => "alpn",
            Self::HttpHandshake => "http_handshake",
            Self::Request => "request",
            Self::Body => "body",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::NotSent => "not_sent",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    V2,
    V1,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpVersion {
    H1,
    H2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersion {
    Any,
    #[value(name = "1.2")]
    Tls12,
    #[value(name = "1.3")]
    Tls13,
}

/// Key exchange groups offered. `default` is rustls's own preference
/// (X25519MLKEM768 first); `x25519` matches what OpenSSL 3.0 servers pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyExchange {
    Default,
    X25519,
    P256,
    X25519mlkem768,
}

/// Bulk cipher offered (TLS 1.3 and 1.2 suites alike). `default` offers
/// rustls's list, AES-256-GCM first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cipher {
    Default,
    Aes128gcm,
    Aes256gcm,
    Chacha20,
}

impl Cipher {
    fn matches(self, suite: rustls::CipherSuite) -> bool {
        let name = format!("{suite:?}");
        match self {
            Self::Default => true,
            Self::Aes128gcm => name.contains("AES_128_GCM"),
            Self::Aes256gcm => name.contains("AES_256_GCM"),
            Self::Chacha20 => name.contains("CHACHA20"),
        }
    }
}

pub struct TlsOptions<'a> {
    pub ca: Option<&'a Path>,
    pub insecure: bool,
    pub version: TlsVersion,
    pub kx: KeyExchange,
    pub cipher: Cipher,
    pub resume: bool,
    pub http: HttpVersion,
}

/// The rustls client configuration for the run.
pub fn tls_config(opts: &TlsOptions<'_>) -> Result<Arc<ClientConfig>, String> {
    let mut provider = aws_lc_rs::default_provider();
    let groups: Vec<&'static dyn SupportedKxGroup> = match opts.kx {
        KeyExchange::Default => provider.kx_groups.clone(),
        KeyExchange::X25519 => vec![aws_lc_rs::kx_group::X25519],
        KeyExchange::P256 => vec![aws_lc_rs::kx_group::SECP256R1],
        KeyExchange::X25519mlkem768 => vec![aws_lc_rs::kx_group::X25519MLKEM768],
    };
    provider.kx_groups = groups;
    provider
        .cipher_suites
        .retain(|s| opts.cipher.matches(s.suite()));
    let provider = Arc::new(provider);
    let versions: &[&'static rustls::SupportedProtocolVersion] = match opts.version {
        TlsVersion::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls12 => &[&rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS settings: {e}"))?;
    let mut config = match (opts.ca, opts.insecure) {
        (Some(ca), _) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs =
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate found", ca.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (None, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
        (None, false) => {
            return Err("TLS needs --ca FILE (trust this certificate) or --insecure".into());
        }
    };
    config.alpn_protocols = match opts.http {
        HttpVersion::H1 => vec![b"http/1.1".to_vec()],
        HttpVersion::H2 => vec![b"h2".to_vec()],
    };
    if !opts.resume {
        // Every connection pays a full handshake, as a new client would.
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// `--insecure`: any certificate is accepted, but handshake signatures are
/// still checked, so the server does the same work as with a real client.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

/// The `ServerCertVerifier` method `$check` (TLS 1.2's or 1.3's handshake
/// signature) as rustls's own function of that name does it, with the
/// provider's algorithms: the two differ only in that name.
macro_rules! verify_signature_as_rustls {
    ($check:ident) => {
        fn $check(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::$check(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
    };
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    verify_signature_as_rustls!(verify_tls12_signature);
    verify_signature_as_rustls!(verify_tls13_signature);

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The request every connection sends, prepared once.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    method: Method,
    /// Path and query, for HTTP/1.1 (with a `Host` header).
    path: Uri,
    /// Absolute, for HTTP/2 (`:authority` and `:scheme`).
    absolute: Uri,
    host: HeaderValue,
    headers: HeaderMap,
}

impl RequestTemplate {
    pub fn new(
        method: &str,
        host: &str,
        path: &str,
        headers: &[String],
        tls: bool,
    ) -> Result<Self, String> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| format!("method: {e}"))?;
        let path: Uri = path.parse().map_err(|e| format!("--path {path:?}: {e}"))?;
        let scheme = if tls { "https" } else { "http" };
        let absolute: Uri = format!("{scheme}://{host}{path}")
            .parse()
            .map_err(|e| format!("--host {host:?}: {e}"))?;
        let host = HeaderValue::from_str(host).map_err(|e| format!("--host {host:?}: {e}"))?;
        let mut map = HeaderMap::new();
        for h in headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("--header {h:?}: expected \"Name: value\""))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| format!("--header {h:?}: {e}"))?;
            let value =
                HeaderValue::from_str(value.trim()).map_err(|e| format!("--header {h:?}: {e}"))?;
            map.append(name, value);
        }
        Ok(Self {
            method,
            path,
            absolute,
            host,
            headers: map,
        })
    }

    fn build(&self, h2: bool, last: bool) -> Result<Request<Empty<Bytes>>, Failure> {
        let uri = if h2 { &self.absolute } else { &self.path };
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(uri.clone())
            .body(Empty::new())
            .map_err(|_| Failure::Request)?;
        let headers = req.headers_mut();
        if !h2 {
            headers.insert(http::header::HOST, self.host.clone());
            if last {
                // The server closes first, so TIME_WAIT stays on its side
                // and the client's ephemeral ports are not exhausted.
                headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        Ok(req)
    }
}

/// Everything needed to open a connection.
pub struct Settings {
    pub target: SocketAddr,
    pub proxy: ProxyMode,
    /// `None`: plaintext.
    pub tls: Option<Arc<ClientConfig>>,
    pub server_name: ServerName<'static>,
    pub http: HttpVersion,
    pub timeout: Duration,
    pub request: RequestTemplate,
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// An open connection; the HTTP driver runs in its own task until the
/// connection closes or this is dropped.
pub struct Conn {
    sender: Sender,
    driver: JoinHandle<()>,
    pub requests: u64,
    /// Negotiated TLS version, cipher suite and key exchange group.
    pub negotiated: Option<String>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A clone of an HTTP/2 connection's sender, to multiplex streams on it.
#[derive(Clone)]
pub struct H2Handle(http2::SendRequest<Empty<Bytes>>);

/// The response to one request.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    pub status: u16,
    pub body_bytes: u64,
}

impl Conn {
    /// True once the server (or an error) has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
            || match &self.sender {
                Sender::H1(s) => s.is_closed(),
                Sender::H2(s) => s.is_closed(),
            }
    }

    pub fn h2_handle(&self) -> Option<H2Handle> {
        match &self.sender {
            Sender::H2(s) => Some(H2Handle(s.clone())),
            Sender::H1(_) => None,
        }
    }

    /// Sends one request and reads the whole response. `last` asks an
    /// HTTP/1.1 server to close after it.
    pub async fn request(&mut self, settings: &Settings, last: bool) -> Result<Response, Failure> {
        self.requests += 1;
        match &mut self.sender {
            Sender::H1(s) => {
                timeout(settings.timeout, s.ready())
                    .await
                    .map_err(|_| Failure::Timeout)?
                    .map_err(|_| Failure::Closed)?;
                let req = settings.request.build(false, last)?;
                exchange(settings.timeout, s.send_request(req)).await
            }
            Sender::H2(s) => {
                let req = settings.request.build(true, last)?;
                H2Handle(s.clone()).send(settings, req).await
            }
        }
    }
}

impl H2Handle {
    pub async fn request(&self, settings: &Settings) -> Result<Response, Failure> {
        let req = settings.request.build(true, false)?;
        self.send(settings, req).await
    }

    async fn send(
        &self,
        settings: &Settings,
        req: Request<Empty<Bytes>>,
    ) -> Result<Response, Failure> {
        let mut s = self.0.clone();
        timeout(settings.timeout, s.ready())
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|_| Failure::Closed)?;
        exchange(settings.timeout, s.send_request(req)).await
    }
}

/// Awaits the response head, then drains the body; all within `limit`.
async fn exchange<F>(limit: Duration, send: F) -> Result<Response, Failure>
where
    F: Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let resp = tokio::time::timeout_at(deadline, send)
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|_| Failure::Request)?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut body_bytes = 0u64;
    // Ends with the body; a body that never ends is cut by the deadline.
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| Failure::Timeout)?;
        match frame {
            None => break,
            Some(Err(_)) => return Err(Failure::Body),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
        }
    }
    Ok(Response { status, body_bytes })
}

/// Opens a connection as `client`: TCP, PROXY header, TLS, HTTP handshake.
pub async fn connect(settings: &Settings, client: &ClientIdentity) -> Result<Conn, Failure> {
    let limit = settings.timeout;
    let mut tcp = timeout(limit, TcpStream::connect(settings.target))
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|_| Failure::Connect)?;
    let _ = tcp.set_nodelay(true);
    let header = match settings.proxy {
        ProxyMode::V2 => Some(proxy_header::v2(client, settings.target)),
        ProxyMode::V1 => Some(proxy_header::v1(client, settings.target)),
        ProxyMode::Off => None,
    };
    if let Some(header) = header {
        timeout(limit, tcp.write_all(&header))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|_| Failure::ProxyHeader)?;
    }
    match &settings.tls {
        None => http_handshake(tcp, settings.http).await,
        Some(config) => {
            let tls = timeout(
                limit,
                TlsConnector::from(config.clone()).connect(settings.server_name.clone(), tcp),
            )
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|_| Failure::Tls)?;
            let session = tls.get_ref().1;
            if settings.http == HttpVersion::H2 && session.alpn_protocol() != Some(b"h2") {
                return Err(Failure::Alpn);
            }
            let negotiated = format!(
                "{:?} {:?} {:?}",
                session
                    .protocol_version()
                    .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
                session
                    .negotiated_cipher_suite()
                    .map(|s| s.suite())
                    .unwrap_or(rustls::CipherSuite::Unknown(0)),
                session
                    .negotiated_key_exchange_group()
                    .map(|g| g.name())
                    .unwrap_or(rustls::NamedGroup::Unknown(0)),
            );
            let mut conn = http_handshake(tls, settings.http).await?;
            conn.negotiated = Some(negotiated);
            Ok(conn)
        }
    }
}

async fn http_handshake<I>(io: I, http: HttpVersion) -> Result<Conn, Failure>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let (sender, driver) = match http {
        HttpVersion::H1 => {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(|_| Failure::HttpHandshake)?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::H1(sender), driver)
        }
        HttpVersion::H2 => {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|_| Failure::HttpHandshake)?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::H2(sender), driver)
        }
    };
    Ok(Conn {
        sender,
        driver,
        requests: 0,
        negotiated: None,
    })
}
