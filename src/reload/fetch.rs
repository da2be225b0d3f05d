//! Fetches the policy snapshot from the control plane over HTTP/1.1 or HTTPS.
//!
//! hyper-util's client speaks HTTP and hyper-rustls does TLS; this module configures them
//! (trust roots, the dialer) and adds what a snapshot poll needs on top: one deadline, a
//! body cap and conditional requests.
//!
//! Guarantees:
//! - Every [`Fetcher::fetch`] is bounded by [`FetchSettings::timeout`]: DNS, connect, TLS,
//!   response head and body all share one deadline. On expiry the request and its body are
//!   dropped, and hyper closes the connection: nothing keeps waiting on a silent server.
//! - At most [`FetchSettings::max_bytes`] of body are ever buffered: a larger
//!   `Content-Length` is refused before any body byte is read, and a body without one is
//!   refused as soon as the running total would exceed the limit.
//! - One request per connection (`Connection: close`, no idle pool): polls are seconds
//!   apart, so a pool would only hold idle sockets and stale DNS answers.
//! - Conditional polls: the ETag of the last complete `200` is sent as `If-None-Match`;
//!   `304` yields [`Fetched::NotModified`]. Redirects and every other status are errors.
//! - HTTPS trusts the system CA store plus an optional private CA bundle; the TLS
//!   configuration is built once, in [`Fetcher::new`], so a bad CA file fails at startup.
//! - Errors name what failed: the host that did not resolve, the address that refused.
//! - No panics on network input or configuration.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, ETAG, IF_NONE_MATCH, USER_AGENT};
use http::uri::Scheme;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as _, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tower_service::Service;

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
        source: Arc<io::Error>,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: Arc<io::Error>,
    },
    /// TLS setup or handshake failed (untrusted certificate, name mismatch, ...).
    #[error("TLS: {0}")]
    Tls(#[source] Cause),
    #[error("HTTP: {0}")]
    Http(#[source] Cause),
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

/// A TLS or HTTP failure from hyper, shown from its cause: the client's own layer
/// ("client error (Connect)", "client error (SendRequest)") names none.
#[derive(Debug)]
pub struct Cause(Box<dyn StdError + Send + Sync>);

impl Cause {
    fn shown(&self) -> &(dyn StdError + 'static) {
        let outer: &(dyn StdError + 'static) = &*self.0;
        outer
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .and_then(StdError::source)
            .unwrap_or(outer)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.shown(), f)
    }
}

impl StdError for Cause {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.shown().source()
    }
}

/// Polls one control-plane URL. Cheap to keep; holds no connection between polls.
#[derive(Debug)]
pub struct Fetcher {
    url: String,
    uri: Uri,
    https: bool,
    client: Client<HttpsConnector<Dial>, Empty<Bytes>>,
    settings: FetchSettings,
    etag: Option<HeaderValue>,
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
        // `Uri` silently drops an out-of-range port (`:99999` reads as "no port", which
        // would then dial 80 or 443), so check what follows the host ourselves.
        match authority.as_str().strip_prefix(host) {
            None | Some("" | ":") => {}
            Some(rest) => match rest.strip_prefix(':').map(str::parse::<u16>) {
                Some(Ok(port)) if port != 0 => {}
                _ => return Err(invalid("port must be 1-65535")),
            },
        }

        let roots = if https {
            // hyper-rustls derives the same name from the URL; checking it here turns a
            // bad one into a startup error. An IP literal becomes an IP server name (no
            // SNI is sent, the certificate must carry an IP SAN).
            ServerName::try_from(host_port(&uri).0.to_owned())
                .map_err(|_| invalid("host is neither a DNS name nor an IP address"))?;
            trust_roots(settings.ca_file.as_deref())?
        } else {
            if let Some(path) = &settings.ca_file {
                tracing::warn!(url, ca_file = %path.display(), "CA file ignored for a plain-http control-plane URL");
            }
            // Never consulted: a plain-http URL never reaches the TLS step.
            RootCertStore::empty()
        };
        // From a ready config rather than hyper-rustls' builder, which refuses one that
        // already names ALPN `http/1.1`. https URLs get TLS, http ones go straight to `Dial`.
        let connector = HttpsConnector::from((Dial, client_config(roots)?));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);

        Ok(Self {
            url: url.to_owned(),
            uri,
            https,
            client,
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
        let response = self
            .client
            .request(self.request())
            .await
            .map_err(|e| self.client_error(e))?;
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

    /// The request; hyper-util adds `Host` and sends the path in origin form.
    fn request(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, USER_AGENT_VALUE);
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        if let Some(etag) = &self.etag {
            headers.insert(IF_NONE_MATCH, etag.clone());
        }
        request
    }

    /// Sorts a client error: [`Dial`]'s errors are taken back out of it (hyper only lends
    /// its cause, hence the `Arc`s); any other failure to connect an https URL is TLS.
    fn client_error(&self, e: hyper_util::client::legacy::Error) -> FetchError {
        let dialed = std::iter::successors(e.source(), |&s| s.source())
            .find_map(|s| s.downcast_ref::<FetchError>());
        match dialed {
            Some(FetchError::Resolve { host, source }) => FetchError::Resolve {
                host: host.clone(),
                source: Arc::clone(source),
            },
            Some(FetchError::Connect { addr, source }) => FetchError::Connect {
                addr: *addr,
                source: Arc::clone(source),
            },
            _ if e.is_connect() && self.https => FetchError::Tls(Cause(e.into())),
            _ => FetchError::Http(Cause(e.into())),
        }
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
        let Ok(data) = frame
            .map_err(|e| FetchError::Http(Cause(e.into())))?
            .into_data()
        else {
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

/// Resolves the URL's host and connects to each address in turn, failing with
/// [`FetchError::Resolve`] (naming the host) or [`FetchError::Connect`] (naming the
/// address). There is no per-address deadline: the control plane is expected to answer on
/// its first address, and the overall timeout still bounds a black-holed one.
#[derive(Debug, Clone, Copy)]
struct Dial;

impl Service<Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = FetchError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, FetchError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), FetchError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (host, port) = host_port(&uri);
        let host = host.to_owned();
        Box::pin(async move {
            let resolve_err = |source| FetchError::Resolve {
                host: host.clone(),
                source: Arc::new(source),
            };
            let addrs = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(resolve_err)?;
            let mut last_err = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(stream) => return Ok(TokioIo::new(stream)),
                    Err(source) => {
                        tracing::debug!(%addr, error = %source, "control-plane address refused connection");
                        last_err = Some(FetchError::Connect {
                            addr,
                            source: Arc::new(source),
                        });
                    }
                }
            }
            Err(last_err.unwrap_or_else(|| {
                resolve_err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no addresses found",
                ))
            }))
        })
    }
}

/// The host to resolve (IPv6 without brackets) and the port to dial (the scheme's default
/// when the URL has none).
fn host_port(uri: &Uri) -> (&str, u16) {
    let host = uri.host().unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let default_port = if uri.scheme() == Some(&Scheme::HTTPS) {
        443
    } else {
        80
    };
    (host, uri.port_u16().unwrap_or(default_port))
}

/// The system CA store plus `ca_file`.
fn trust_roots(ca_file: Option<&Path>) -> Result<RootCertStore, FetchError> {
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
    Ok(roots)
}

/// The client TLS configuration: the data plane's crypto provider, `roots`, ALPN `http/1.1`.
fn client_config(roots: RootCertStore) -> Result<ClientConfig, FetchError> {
    let mut config = ClientConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls(Cause(e.into())))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
#[path = "fetch_tests.rs"]
mod tests;
