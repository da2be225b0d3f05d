//! Tests of the snapshot URL client against real HTTP and HTTPS servers on 127.0.0.1.

use super::*;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use http::Response;
use http::header::HOST;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::body::Frame;
use hyper::service::service_fn;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::PrivateKeyDer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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
                        Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
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
    let mut fetcher = Fetcher::new(&format!("http://{addr}/snapshot?v=2"), settings(1024)).unwrap();

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

/// A fetcher of `http://{addr}/` that gives up after `timeout`.
fn fetcher_with_timeout(addr: std::net::SocketAddr, timeout: Duration) -> Fetcher {
    Fetcher::new(
        &format!("http://{addr}/"),
        FetchSettings {
            timeout,
            ..settings(1024)
        },
    )
    .unwrap()
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
    let mut fetcher = fetcher_with_timeout(addr, timeout);
    let start = Instant::now();
    let err = fetcher.fetch().await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(err, FetchError::Timeout(t) if t == timeout),
        "{err}"
    );
    assert!(elapsed >= timeout && elapsed < timeout * 5, "{elapsed:?}");
}

/// A server that stalls before the response head, or in the middle of the body: the
/// fetch gives up at the deadline and the connection is closed then, not left open.
#[tokio::test]
async fn timeout_closes_the_connection() {
    for partial in [
        None,
        Some("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"pol"),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await.unwrap();
            if let Some(partial) = partial {
                tcp.write_all(partial.as_bytes()).await.unwrap();
            }
            let since = Instant::now();
            // Until the client closes (EOF) or resets.
            while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            since.elapsed()
        });
        let timeout = Duration::from_millis(300);
        let mut fetcher = fetcher_with_timeout(addr, timeout);
        let err = fetcher.fetch().await.unwrap_err();
        assert!(matches!(err, FetchError::Timeout(_)), "{err}");
        let held = tokio::time::timeout(Duration::from_secs(2), held)
            .await
            .expect("the connection is closed after the timeout")
            .unwrap();
        assert!(held < timeout * 3, "{partial:?}: held {held:?}");
    }
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
    assert_eq!(host_port(&f.uri), ("::1", 8080));
    assert_eq!(f.url(), "http://[::1]:8080");
    let f = Fetcher::new("http://cp.example/a?b", settings(1)).unwrap();
    assert_eq!(host_port(&f.uri), ("cp.example", 80));
    let https: Uri = "https://cp.example/".parse().unwrap();
    assert_eq!(host_port(&https), ("cp.example", 443));
}

/// A PEM file in a temp dir of its own, removed on drop.
struct TempPem {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TempPem {
    fn new(name: &str, contents: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&path, contents).unwrap();
        Self { path, _dir: dir }
    }
}

#[test]
fn unusable_ca_files_are_named() {
    let missing = PathBuf::from("/nonexistent/portcullis-ca.pem");
    let empty = TempPem::new("empty", "no certificates here\n");
    for path in [missing, empty.path.clone()] {
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
            ca_file: Some(ca_pem.path.clone()),
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
        ca_file: Some(other_pem.path.clone()),
        ..settings(1024)
    };
    let mut fetcher = Fetcher::new(&format!("https://{addr}/"), settings).unwrap();
    let err = fetcher.fetch().await.unwrap_err();
    assert!(matches!(err, FetchError::Tls(_)), "{err}");
    assert_eq!(err.kind(), "tls");
    assert!(seen.lock().unwrap().is_empty());
}
