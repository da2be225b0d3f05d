//! Fetches the policy snapshot from the control plane over HTTP/1.1 or HTTPS.
//!
//! Guarantees:
//! - Every [`Fetcher::fetch`] is bounded by [`FetchSettings::timeout`]: DNS, connect, TLS,
//!   response head and body all share one deadline, and on expiry the socket is closed
//!   (the connection is driven inside the fetch future, never by a detached task).
//! - At most [`FetchSettings::max_bytes`] of body are ever buffered: a larger
//!   `Content-Length` is refused before any body byte is read, and a body without one is
//!   refused as soon as the running total would exceed the limit.
//! - One request per connection (`Connection: close`): polls are seconds apart, so a pool
//!   would only hold idle sockets and stale DNS answers.
//! - Conditional polls: the ETag of the last complete `200` is sent as `If-None-Match`;
//!   `304` yields [`Fetched::NotModified`]. Redirects and every other status are errors.
//! - HTTPS trusts the system CA store plus an optional private CA bundle; the TLS
//!   configuration is built once, in [`Fetcher::new`], so a bad CA file fails at startup.
//! - No panics on network input or configuration.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, ETAG, HOST, IF_NONE_MATCH, USER_AGENT};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

const USER_AGENT_VALUE: HeaderValue =
    HeaderValue::from_static(concat!("portcullis/", env!("CARGO_PKG_VERSION")));

/// How to reach the control plane.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Deadline for the whole request: resolve, connect, TLS, response head and body.
    pub timeout: Duration,
    /// Largest body accepted; larger ones fail with [`FetchError::TooLarge`].
    pub max_bytes: usize,
    /// Extra PEM CA bundle to trust (a private control-plane CA), on top of the system store.
    pub ca_file: Option<PathBuf>,
}

/// Outcome of a successful poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// `304`: the snapshot is unchanged since the last body.
    NotModified,
    /// `200`: the full body, at most `max_bytes` long.
    Body(Bytes),
}

/// Why a fetch (or building a [`Fetcher`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid control-plane URL: {0}")]
    InvalidUrl(String),
    #[error("CA file {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: CaFileError,
    },
    #[error("no trusted CA certificates: the system store is empty and no CA file is set")]
    NoTrustRoots,
    #[error("resolving {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// TLS setup or handshake failed (untrusted certificate, name mismatch, ...).
    #[error("TLS: {0}")]
    Tls(#[source] io::Error),
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
    #[error("unexpected HTTP status {0}")]
    Status(StatusCode),
    #[error("response body exceeds the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
}

impl FetchError {
    /// A short, fixed label for metrics and structured logs (bounded cardinality).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidUrl(_) => "invalid_url",
            Self::CaFile { .. } => "ca_file",
            Self::NoTrustRoots => "no_trust_roots",
            Self::Resolve { .. } => "resolve",
            Self::Connect { .. } => "connect",
            Self::Tls(_) => "tls",
            Self::Http(_) => "http",
            Self::Status(_) => "status",
            Self::TooLarge { .. } => "too_large",
            Self::Timeout(_) => "timeout",
        }
    }
}

/// Why the CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error(transparent)]
    Read(#[from] rustls::pki_types::pem::Error),
    #[error("contains no PEM certificates")]
    Empty,
    #[error("certificate rejected: {0}")]
    Rejected(#[source] rustls::Error),
}

/// Polls one control-plane URL. Cheap to keep; holds no connection between polls.
#[derive(Debug)]
pub struct Fetcher {
    url: String,
    /// Origin-form request target (`/path?query`).
    target: Uri,
    /// Bare host for DNS and error messages (IPv6 without brackets).
    host: String,
    port: u16,
    host_header: HeaderValue,
    /// `Some` iff the scheme is https.
    tls: Option<Tls>,
    settings: FetchSettings,
    etag: Option<HeaderValue>,
}

struct Tls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

// `ClientConfig`'s own Debug dumps every root and cipher suite; the name is what matters.
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Validates `url` (http or https, a host, no userinfo) and, for https, builds the TLS
    /// configuration from the system store and `settings.ca_file`.
    pub fn new(url: &str, settings: FetchSettings) -> Result<Self, FetchError> {
        // Never echo a URL that may carry credentials into an error (and thus a log).
        let shown = if url.contains('@') { "<redacted>" } else { url };
        let invalid = |why: &str| FetchError::InvalidUrl(format!("{shown:?}: {why}"));
        let uri: Uri = url.parse().map_err(|e| invalid(&format!("{e}")))?;
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            Some(_) => return Err(invalid("scheme must be http or https")),
            None => return Err(invalid("missing scheme (http:// or https://)")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
        // Credentials in the URL would end up in logs and metrics labels; refuse them.
        if authority.as_str().contains('@') {
            return Err(invalid("credentials in the URL are not supported"));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        // `Uri` silently drops an out-of-range port (`:99999` reads as "no port"), so
        // parse what follows the host ourselves.
        let port = match authority.as_str().strip_prefix(host) {
            None | Some("" | ":") => None,
            Some(rest) => match rest.strip_prefix(':').map(str::parse::<u16>) {
                Some(Ok(port)) if port != 0 => Some(port),
                _ => return Err(invalid("port must be 1-65535")),
            },
        };
        let default_port = if https { 443 } else { 80 };
        let host_header = match port {
            Some(p) if p != default_port => format!("{host}:{p}"),
            _ => host.to_owned(),
        };
        let host_header = HeaderValue::try_from(host_header)
            .map_err(|_| invalid("host is not a valid header"))?;
        let bare_host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let target = Uri::from(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );

        let tls = if https {
            // An IP literal becomes an IP server name (no SNI is sent, the certificate
            // must carry an IP SAN); anything else must be a valid DNS name.
            let server_name = ServerName::try_from(bare_host.clone())
                .map_err(|_| invalid("host is neither a DNS name nor an IP address"))?;
            let config = client_config(settings.ca_file.as_deref())?;
            Some(Tls {
                config,
                server_name,
            })
        } else {
            if let Some(path) = &settings.ca_file {
                tracing::warn!(url, ca_file = %path.display(), "CA file ignored for a plain-http control-plane URL");
            }
            None
        };

        Ok(Self {
            url: url.to_owned(),
            target,
            host: bare_host,
            port: port.unwrap_or(default_port),
            host_header,
            tls,
            settings,
            etag: None,
        })
    }

    /// The URL as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// GET the URL with `If-None-Match: <last etag>` when one is known.
    ///
    /// The ETag is remembered only after a `200` body was read completely, so a failed or
    /// oversized transfer never turns the next poll into a `304` for a body we never had.
    pub async fn fetch(&mut self) -> Result<Fetched, FetchError> {
        let limit = self.settings.timeout;
        let (fetched, etag) = tokio::time::timeout(limit, self.fetch_once())
            .await
            .map_err(|_| FetchError::Timeout(limit))??;
        if let Some(etag) = etag {
            self.etag = Some(etag);
        }
        Ok(fetched)
    }

    /// Forget the ETag (after the caller refused a body, so the next poll gets the body
    /// again rather than 304).
    pub fn forget_etag(&mut self) {
        self.etag = None;
    }

    async fn fetch_once(&self) -> Result<(Fetched, Option<HeaderValue>), FetchError> {
        let tcp = self.connect().await?;
        match &self.tls {
            None => self.exchange(tcp).await,
            Some(tls) => {
                let tls_stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(FetchError::Tls)?;
                self.exchange(tls_stream).await
            }
        }
    }

    /// Tries each resolved address in order. There is no per-address deadline: the
    /// control plane is expected to answer on its first address, and the overall
    /// timeout still bounds a black-holed one.
    async fn connect(&self) -> Result<TcpStream, FetchError> {
        let resolve_err = |source| FetchError::Resolve {
            host: self.host.clone(),
            source,
        };
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(resolve_err)?;
        let mut last_err = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(source) => {
                    tracing::debug!(%addr, error = %source, "control-plane address refused connection");
                    last_err = Some(FetchError::Connect { addr, source });
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            resolve_err(io::Error::new(
                io::ErrorKind::NotFound,
                "no addresses found",
            ))
        }))
    }

    async fn exchange<IO>(&self, io: IO) -> Result<(Fetched, Option<HeaderValue>), FetchError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(FetchError::Http)?;
        let request = self.request();
        let mut response = pin!(async move {
            let response = sender.send_request(request).await;
            self.read_response(response.map_err(FetchError::Http)?)
                .await
        });
        // Poll the connection here rather than `tokio::spawn`ing it, so dropping the fetch
        // (timeout, cancellation) closes the socket instead of leaving a detached task
        // waiting on a silent server.
        tokio::select! {
            biased;
            result = &mut response => result,
            result = conn => {
                // A clean close (`Connection: close`) can end the connection before the
                // reader has drained what it was handed, and a connection error also
                // reaches the reader, so let the reader finish and report either way.
                if let Err(err) = result {
                    tracing::debug!(error = %err, "control-plane connection failed");
                }
                response.await
            }
        }
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.target.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host_header.clone());
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, USER_AGENT_VALUE);
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        if let Some(etag) = &self.etag {
            headers.insert(IF_NONE_MATCH, etag.clone());
        }
        request
    }

    async fn read_response(
        &self,
        response: Response<Incoming>,
    ) -> Result<(Fetched, Option<HeaderValue>), FetchError> {
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_MODIFIED => return Ok((Fetched::NotModified, None)),
            // Dropping the response closes the connection without reading an error body
            // that may be arbitrarily large.
            status => return Err(FetchError::Status(status)),
        }
        let etag = response.headers().get(ETAG).cloned();
        let body = read_limited(response.into_body(), self.settings.max_bytes).await?;
        Ok((Fetched::Body(body), etag))
    }
}

/// Collects `body`, failing as soon as it is known to exceed `max_bytes`.
async fn read_limited(mut body: Incoming, max_bytes: usize) -> Result<Bytes, FetchError> {
    let too_large = FetchError::TooLarge { limit: max_bytes };
    // With a Content-Length, hyper reports it as the exact size hint: refuse up front.
    let declared = body.size_hint().lower();
    if declared > u64::try_from(max_bytes).unwrap_or(u64::MAX) {
        return Err(too_large);
    }
    // `declared <= max_bytes` here, so the conversion cannot fail and the reservation is
    // within what we are willing to hold anyway.
    let mut buf = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(FetchError::Http)?.into_data() else {
            continue; // trailers carry nothing we use
        };
        let needed = buf.len().saturating_add(data.len());
        if needed > max_bytes {
            return Err(too_large);
        }
        if needed > buf.capacity() {
            // Grow geometrically but never past the limit, so a snapshot near
            // `max_bytes` does not transiently reserve twice that.
            let target = needed.max(buf.capacity().saturating_mul(2)).min(max_bytes);
            buf.reserve_exact(target - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    Ok(Bytes::from(buf))
}

/// Builds the client TLS configuration: system roots plus `ca_file`, ALPN `http/1.1`.
fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, FetchError> {
    let mut roots = RootCertStore::empty();

    // A broken system store is not fatal when the control plane uses a private CA.
    let native = rustls_native_certs::load_native_certs();
    if let Some(first) = native.errors.first() {
        tracing::warn!(
            errors = native.errors.len(),
            first = %first,
            "could not load (all of) the system CA store; continuing with what loaded",
        );
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "loaded system CA certificates");

    if let Some(path) = ca_file {
        let ca_err = |source| FetchError::CaFile {
            path: path.to_owned(),
            source,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| ca_err(CaFileError::Read(e)))?;
        if certs.is_empty() {
            return Err(ca_err(CaFileError::Empty));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ca_err(CaFileError::Rejected(e)))?;
        }
    }
    if roots.is_empty() {
        return Err(FetchError::NoTrustRoots);
    }

    // Honour a process-wide provider if the binary installed one; otherwise use aws-lc-rs
    // explicitly rather than `ClientConfig::builder()`, which panics when the provider
    // is ambiguous.
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls(io::Error::other(e)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use std::time::Instant;

    use http_body_util::Full;
    use http_body_util::combinators::BoxBody;
    use hyper::body::Frame;
    use hyper::service::service_fn;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::PrivateKeyDer;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    type TestBody = BoxBody<Bytes, Infallible>;
    type Seen = Arc<Mutex<Vec<Request<Incoming>>>>;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn settings(max_bytes: usize) -> FetchSettings {
        FetchSettings {
            timeout: TIMEOUT,
            max_bytes,
            ca_file: None,
        }
    }

    fn full(body: &'static str) -> TestBody {
        BoxBody::new(Full::new(Bytes::from_static(body.as_bytes())))
    }

    /// An always-ready body that counts what the server actually produced.
    struct Endless(Arc<AtomicUsize>);

    static CHUNK: [u8; 16 * 1024] = [b'x'; 16 * 1024];

    impl hyper::body::Body for Endless {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.fetch_add(CHUNK.len(), Ordering::Relaxed);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
        }
    }

    /// Serves HTTP/1.1 (over TLS when `tls` is set) on 127.0.0.1, recording each
    /// request's head, until the test's runtime shuts down.
    async fn serve<F>(tls: Option<TlsAcceptor>, handler: F) -> (SocketAddr, Seen)
    where
        F: Fn(&Request<Incoming>) -> Response<TestBody> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen::default();
        let (handler, log) = (Arc::new(handler), Arc::clone(&seen));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (handler, log, tls) = (Arc::clone(&handler), Arc::clone(&log), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let response = handler(&req);
                        log.lock().unwrap().push(req);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    // Errors here are the client hanging up mid-body, which tests provoke.
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(tcp), service).await,
                        Some(tls) => match tls.accept(tcp).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        (addr, seen)
    }

    fn if_none_match(seen: &Seen) -> Vec<Option<String>> {
        let seen = seen.lock().unwrap();
        let header = |r: &Request<Incoming>| {
            r.headers()
                .get(IF_NONE_MATCH)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        seen.iter().map(header).collect()
    }

    fn etag_server(req: &Request<Incoming>) -> Response<TestBody> {
        if req
            .headers()
            .get(IF_NONE_MATCH)
            .is_some_and(|v| v == "\"v1\"")
        {
            let mut response = Response::new(full(""));
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            return response;
        }
        let mut response = Response::new(full("{\"policies\":[]}"));
        response
            .headers_mut()
            .insert(ETAG, HeaderValue::from_static("\"v1\""));
        response
    }

    #[tokio::test]
    async fn etag_round_trip_yields_not_modified() {
        let (addr, seen) = serve(None, etag_server).await;
        let mut fetcher =
            Fetcher::new(&format!("http://{addr}/snapshot?v=2"), settings(1024)).unwrap();

        let body = Bytes::from_static(b"{\"policies\":[]}");
        assert_eq!(fetcher.fetch().await.unwrap(), Fetched::Body(body));
        assert_eq!(fetcher.fetch().await.unwrap(), Fetched::NotModified);
        assert_eq!(if_none_match(&seen), [None, Some("\"v1\"".to_owned())]);

        let seen = seen.lock().unwrap();
        let first = &seen[0];
        assert_eq!(first.uri(), "/snapshot?v=2");
        let h = first.headers();
        assert_eq!(h[HOST], addr.to_string());
        assert_eq!(h[ACCEPT], "application/json");
        assert_eq!(h[CONNECTION], "close");
        assert!(h[USER_AGENT].to_str().unwrap().starts_with("portcullis/"));
    }

    #[tokio::test]
    async fn forget_etag_drops_if_none_match() {
        let (addr, seen) = serve(None, etag_server).await;
        let mut fetcher = Fetcher::new(&format!("http://{addr}/"), settings(1024)).unwrap();
        assert!(matches!(fetcher.fetch().await.unwrap(), Fetched::Body(_)));
        fetcher.forget_etag();
        assert!(matches!(fetcher.fetch().await.unwrap(), Fetched::Body(_)));
        assert_eq!(if_none_match(&seen), [None, None]);
    }

    #[tokio::test]
    async fn content_length_over_limit_is_refused_up_front() {
        let produced = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&produced);
        let (addr, _) = serve(None, move |_| {
            let mut response = Response::new(BoxBody::new(Endless(Arc::clone(&counter))));
            let length = HeaderValue::from(1u64 << 30);
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, length);
            response
        })
        .await;
        let mut fetcher = Fetcher::new(&format!("http://{addr}/"), settings(64 * 1024)).unwrap();
        let err = fetcher.fetch().await.unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { limit: 65536 }),
            "{err}"
        );
        // The server stalls on full socket buffers long before the declared 1 GiB.
        assert!(produced.load(Ordering::Relaxed) < 64 << 20);
    }

    #[tokio::test]
    async fn chunked_body_over_limit_is_refused_while_streaming() {
        let (addr, seen) = serve(None, |_| {
            let mut response = Response::new(BoxBody::new(Endless(Arc::default())));
            response
                .headers_mut()
                .insert(ETAG, HeaderValue::from_static("\"big\""));
            response
        })
        .await;
        let mut fetcher = Fetcher::new(&format!("http://{addr}/"), settings(100_000)).unwrap();
        let err = fetcher.fetch().await.unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { limit: 100_000 }),
            "{err}"
        );
        assert_eq!(err.kind(), "too_large");
        // The refused body's ETag must not be remembered.
        let _ = fetcher.fetch().await;
        assert_eq!(if_none_match(&seen), [None, None]);
    }

    #[tokio::test]
    async fn error_status_is_reported() {
        let (addr, _) = serve(None, |_| {
            let mut response = Response::new(full("boom"));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        })
        .await;
        let mut fetcher = Fetcher::new(&format!("http://{addr}/"), settings(1024)).unwrap();
        let err = fetcher.fetch().await.unwrap_err();
        assert!(
            matches!(err, FetchError::Status(StatusCode::INTERNAL_SERVER_ERROR)),
            "{err}"
        );
        assert_eq!(err.kind(), "status");
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (_held_open, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let timeout = Duration::from_millis(300);
        let mut fetcher = Fetcher::new(
            &format!("http://{addr}/"),
            FetchSettings {
                timeout,
                ..settings(1024)
            },
        )
        .unwrap();
        let start = Instant::now();
        let err = fetcher.fetch().await.unwrap_err();
        let elapsed = start.elapsed();
        assert!(
            matches!(err, FetchError::Timeout(t) if t == timeout),
            "{err}"
        );
        assert!(elapsed >= timeout && elapsed < timeout * 5, "{elapsed:?}");
    }

    #[tokio::test]
    async fn closed_port_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut fetcher = Fetcher::new(&format!("http://{addr}/"), settings(1024)).unwrap();
        let err = fetcher.fetch().await.unwrap_err();
        assert!(
            matches!(&err, FetchError::Connect { addr: a, .. } if *a == addr),
            "{err}"
        );
        assert_eq!(err.kind(), "connect");
    }

    #[test]
    fn invalid_urls_are_rejected() {
        for url in [
            "ftp://example.com/snapshot",
            "http:///snapshot",
            "http://:8080/",
            "https://user:secret@example.com/",
            "http://token@example.com/",
            "garbage",
            "example.com:80",
            "",
            "http://exa mple.com/",
            "http://example.com:99999/",
            "http://example.com:0/",
            "https://empty..label/",
        ] {
            match Fetcher::new(url, settings(1)) {
                Err(FetchError::InvalidUrl(msg)) => assert!(!msg.contains("secret"), "{msg}"),
                other => panic!("{url:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn url_parts_are_derived() {
        let f = Fetcher::new("http://[::1]:8080", settings(1)).unwrap();
        assert_eq!(
            (f.host.as_str(), f.port, f.target.to_string()),
            ("::1", 8080, "/".to_owned())
        );
        assert_eq!(f.host_header, "[::1]:8080");
        assert_eq!(f.url(), "http://[::1]:8080");
        let f = Fetcher::new("http://cp.example:80/a?b", settings(1)).unwrap();
        assert_eq!(f.host_header, "cp.example");
        assert_eq!(f.target, "/a?b");
    }

    /// A PEM file in the temp dir, removed on drop.
    struct TempPem(PathBuf);

    impl TempPem {
        fn new(name: &str, contents: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "portcullis-fetch-{}-{name}.pem",
                std::process::id()
            ));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }
    }

    impl Drop for TempPem {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn unusable_ca_files_are_named() {
        let missing = PathBuf::from("/nonexistent/portcullis-ca.pem");
        let empty = TempPem::new("empty", "no certificates here\n");
        for path in [missing, empty.0.clone()] {
            let settings = FetchSettings {
                ca_file: Some(path.clone()),
                ..settings(1)
            };
            let err = Fetcher::new("https://cp.example/", settings).unwrap_err();
            assert!(
                matches!(&err, FetchError::CaFile { path: p, .. } if *p == path),
                "{err}"
            );
            assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        }
    }

    fn new_ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// A TLS acceptor whose certificate (localhost, 127.0.0.1) is issued by `ca`.
    fn acceptor(ca: &CertifiedIssuer<'static, KeyPair>) -> TlsAcceptor {
        let key = KeyPair::generate().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, ca)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    #[tokio::test]
    async fn https_with_private_ca_file() {
        let ca = new_ca();
        let ca_pem = TempPem::new("trusted", &ca.pem());
        let (addr, _) = serve(Some(acceptor(&ca)), |_| Response::new(full("{}"))).await;
        let port = addr.port();
        for url in [
            format!("https://127.0.0.1:{port}/"),
            format!("https://localhost:{port}/"),
        ] {
            let settings = FetchSettings {
                ca_file: Some(ca_pem.0.clone()),
                ..settings(1024)
            };
            let mut fetcher = Fetcher::new(&url, settings).unwrap();
            assert_eq!(
                fetcher.fetch().await.unwrap(),
                Fetched::Body(Bytes::from_static(b"{}"))
            );
        }
    }

    #[tokio::test]
    async fn https_with_untrusted_certificate_fails() {
        let (server_ca, other_ca) = (new_ca(), new_ca());
        let other_pem = TempPem::new("untrusted", &other_ca.pem());
        let (addr, seen) = serve(Some(acceptor(&server_ca)), |_| Response::new(full("{}"))).await;
        let settings = FetchSettings {
            ca_file: Some(other_pem.0.clone()),
            ..settings(1024)
        };
        let mut fetcher = Fetcher::new(&format!("https://{addr}/"), settings).unwrap();
        let err = fetcher.fetch().await.unwrap_err();
        assert!(matches!(err, FetchError::Tls(_)), "{err}");
        assert_eq!(err.kind(), "tls");
        assert!(seen.lock().unwrap().is_empty());
    }
}
