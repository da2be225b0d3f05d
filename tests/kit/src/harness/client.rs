//! Client.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

/// How the PROXY bytes go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One write, flushed before the TLS handshake starts.
    Whole,
    /// In the same write as the TLS ClientHello.
    WithClientHello,
    /// One byte per write, a few milliseconds apart.
    Trickle,
}

pub struct ClientBuilder {
    addr: SocketAddr,
    sni: String,
    bind: Option<IpAddr>,
    preamble: Vec<u8>,
    delivery: Delivery,
    proto: Proto,
}

impl ClientBuilder {
    pub fn new(addr: SocketAddr, sni: &str) -> Self {
        Self {
            addr,
            sni: sni.to_owned(),
            bind: None,
            preamble: Vec::new(),
            delivery: Delivery::Whole,
            proto: Proto::H1,
        }
    }

    /// Connect from this local address (e.g. 127.0.0.2, untrusted).
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.bind = Some(ip);
        self
    }

    /// Raw bytes written before TLS (a PROXY header, or nothing).
    pub fn preamble(mut self, bytes: Vec<u8>) -> Self {
        self.preamble = bytes;
        self
    }

    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    pub fn h2(mut self) -> Self {
        self.proto = Proto::H2;
        self
    }

    pub async fn connect(self) -> Conn {
        let what = format!("connect to {} (sni {})", self.addr, self.sni);
        self.try_connect()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// TCP, PROXY bytes, TLS, HTTP handshake; any failure as text.
    pub async fn try_connect(self) -> Result<Conn, String> {
        let mut tcp = within("TCP connect", tcp_connect(self.addr, self.bind))
            .await
            .map_err(|e| format!("TCP connect: {e}"))?;
        let mut pending = Vec::new();
        match self.delivery {
            Delivery::Whole => {
                tcp.write_all(&self.preamble)
                    .await
                    .map_err(|e| format!("write PROXY header: {e}"))?;
            }
            Delivery::Trickle => {
                for byte in &self.preamble {
                    tcp.write_all(std::slice::from_ref(byte))
                        .await
                        .map_err(|e| format!("write PROXY byte: {e}"))?;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Delivery::WithClientHello => pending = self.preamble.clone(),
        }
        let io = FirstWrite {
            inner: tcp,
            pending,
            merged: false,
            claimed: 0,
        };
        let tls = client_tls(match self.proto {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
        });
        let name = ServerName::try_from(self.sni.clone()).expect("valid SNI");
        let stream = within(
            "TLS handshake",
            tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, io),
        )
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(stream);
        let (sender, driver) = match self.proto {
            Proto::H1 => {
                let (tx, conn) = within("HTTP/1.1 handshake", http1::handshake(io))
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
                let driver = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (Sender::H1(tx), driver)
            }
            Proto::H2 => {
                if alpn.as_deref() != Some(b"h2") {
                    return Err(format!("ALPN chose {alpn:?}, not h2"));
                }
                let (tx, conn) = within(
                    "HTTP/2 handshake",
                    http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .handshake(io),
                )
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
                let driver = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (Sender::H2(tx), driver)
            }
        };
        Ok(Conn {
            proto: self.proto,
            sender,
            driver,
            wait: WAIT,
        })
    }
}

pub(super) async fn tcp_connect(addr: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let tcp = match bind {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Passes I/O through, but puts `pending` in front of the first write so
/// that it shares a segment with the TLS ClientHello.
struct FirstWrite {
    inner: TcpStream,
    pending: Vec<u8>,
    merged: bool,
    claimed: usize,
}

impl AsyncRead for FirstWrite {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FirstWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_empty() && !this.merged {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if !this.merged {
            this.pending.extend_from_slice(buf);
            this.claimed = buf.len();
            this.merged = true;
        }
        while !this.pending.is_empty() {
            match Pin::new(&mut this.inner).poll_write(cx, &this.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => drop(this.pending.drain(..n)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if this.claimed > 0 {
            let claimed = std::mem::take(&mut this.claimed);
            return Poll::Ready(Ok(claimed));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

enum Sender {
    H1(http1::SendRequest<BoxedBody>),
    H2(http2::SendRequest<BoxedBody>),
}

/// A TLS client trusting the test CA, offering one ALPN protocol.
pub fn client_tls(alpn: &[u8]) -> rustls::ClientConfig {
    let mut tls = tls_trusting(&pki().ca);
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls
}

/// A TLS client (aws-lc-rs, as the proxy) whose only root is `ca`.
pub fn tls_trusting(ca: &rustls::pki_types::CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("test CA");
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// One client connection; requests on it reuse it (keep-alive / streams).
pub struct Conn {
    proto: Proto,
    sender: Sender,
    driver: JoinHandle<()>,
    /// Bound on each response wait (head, then body).
    wait: Duration,
}

impl Conn {
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Waits up to `wait` for each response (large transfers).
    pub fn patient(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// A request for `host` + `path`: origin form and `Host` for HTTP/1.1,
    /// an absolute URI (`:authority`) for HTTP/2.
    pub fn request(&self, method: Method, host: &str, path: &str) -> http::request::Builder {
        match self.proto {
            Proto::H1 => Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, host),
            Proto::H2 => Request::builder()
                .method(method)
                .uri(format!("https://{host}{path}"))
                .version(http::Version::HTTP_2),
        }
    }

    /// Sends and reads the whole response.
    pub async fn send(&mut self, req: Request<BoxedBody>) -> Result<Reply, hyper::Error> {
        let resp = self.send_streaming(req).await?;
        let (parts, body) = resp.into_parts();
        let body = within_for(self.wait, "response body", body.collect())
            .await?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends; returns once the response head is in.
    pub async fn send_streaming(
        &mut self,
        req: Request<BoxedBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match &mut self.sender {
            Sender::H1(tx) => {
                within("connection ready", tx.ready()).await?;
                within_for(self.wait, "response head", tx.send_request(req)).await
            }
            Sender::H2(tx) => {
                within("connection ready", tx.ready()).await?;
                within_for(self.wait, "response head", tx.send_request(req)).await
            }
        }
    }

    /// `GET host path`; panics if the connection fails.
    pub async fn get(&mut self, host: &str, path: &str) -> Reply {
        let req = self
            .request(Method::GET, host, path)
            .body(empty())
            .expect("request");
        self.send(req)
            .await
            .unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
    }

    /// A handle for concurrent HTTP/2 streams.
    pub fn h2_sender(&self) -> http2::SendRequest<BoxedBody> {
        match &self.sender {
            Sender::H2(tx) => tx.clone(),
            Sender::H1(_) => panic!("not an HTTP/2 connection"),
        }
    }

    /// The connection task has ended (the proxy closed the connection).
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn content_type(&self) -> Option<&str> {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    }

    /// A response portcullis made itself: `status`, JSON `{"ok": false,
    /// "message": <non-empty>}`, and, when given, exactly `body`.
    pub fn assert_local(&self, status: StatusCode, body: Option<&str>) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.content_type(), Some("application/json"));
        let v = self.json();
        assert_eq!(v["ok"], false, "{v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {v}"
        );
        if let Some(body) = body {
            assert_eq!(self.text(), body);
        }
    }

    /// A backend echo, after checking the status is 200.
    pub fn echo(&self) -> Echo {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.text());
        let v = self.json();
        assert!(v["backend"].is_string(), "not a backend echo: {v}");
        Echo(v)
    }
}

/// What the backend saw.
#[derive(Debug)]
pub struct Echo(pub Value);

impl Echo {
    pub fn backend(&self) -> &str {
        self.0["backend"].as_str().unwrap_or_default()
    }

    /// Every value of header `name` (lowercase) as the backend received it.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.0["headers"][name]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn forwarded_for(&self) -> Vec<String> {
        self.header("x-forwarded-for")
    }
}
