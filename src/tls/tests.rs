//! Handshakes over loopback TCP between a rustls client and [`handshake()`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use super::testing::{CheckingVerifier, Leaf, TempDir, TestCa, der_sequence};
use super::*;

const TIMEOUT: Duration = Duration::from_secs(5);

/// What the server saw of one connection: SNI and h2, or the error kind.
type Outcome = Result<(Option<String>, bool), &'static str>;

struct Server {
    addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
}

impl Server {
    async fn start(leaves: &[&Leaf], settings: Settings) -> Self {
        let pems: Vec<_> = leaves.iter().map(|leaf| leaf.pems()).collect();
        let config = server_config_from_pems(&pems, &settings).expect("server config");
        Self::serve(config, settings.handshake_timeout).await
    }

    /// Runs [`handshake()`] with `config` on a loopback listener.
    async fn serve(config: Arc<ServerConfig>, timeout: Duration) -> Self {
        let acceptor = Acceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, outcomes) = mpsc::unbounded_channel();
        // Runs until the test's runtime shuts down.
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match handshake(&acceptor, tcp, timeout).await {
                        Ok(mut tls) => {
                            let seen = (sni_of(&tls).map(str::to_owned), alpn_is_h2(&tls));
                            let _ = tx.send(Ok(seen));
                            // Application data makes the client process any
                            // TLS 1.3 tickets that were sent after Finished.
                            let _ = tls.write_all(b"ok").await;
                            let _ = tls.shutdown().await;
                        }
                        Err(err) => {
                            let _ = tx.send(Err(err.kind()));
                        }
                    }
                });
            }
        });
        Self { addr, outcomes }
    }

    async fn next(&mut self) -> Outcome {
        tokio::time::timeout(TIMEOUT, self.outcomes.recv())
            .await
            .expect("server reports in time")
            .expect("server task alive")
    }
}

fn client(
    ca: &TestCa,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("client versions")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// What the client saw of a completed connection.
struct Seen {
    leaf: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
    kind: Option<HandshakeKind>,
    suite: Option<rustls::CipherSuite>,
}

async fn connect(addr: SocketAddr, config: &Arc<ClientConfig>, sni: &str) -> Seen {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    let mut tls = TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await
        .expect("client handshake");
    let mut body = Vec::new();
    tls.read_to_end(&mut body).await.expect("read");
    assert_eq!(body, b"ok");
    let conn = tls.get_ref().1;
    Seen {
        leaf: conn.peer_certificates().expect("server sent a chain")[0].clone(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
        kind: conn.handshake_kind(),
        suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
    }
}

const ALL: &[&SupportedProtocolVersion] = rustls::ALL_VERSIONS;
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[tokio::test]
async fn sni_picks_the_certificate() {
    let ca = TestCa::new();
    let default = ca.leaf(&["default.example.com"]);
    let wildcard = ca.leaf(&["*.es.example.com"]);
    let rsa = ca.leaf_for(&["abc123.es.example.com"], &rcgen::PKCS_RSA_SHA256);
    let mut server = Server::start(&[&default, &wildcard, &rsa], Settings::default()).await;
    let config = client(&ca, ALL, &[]);

    for (sni, want) in [
        ("xyz.es.example.com", &wildcard),
        ("ABC123.es.example.com", &rsa),
        ("default.example.com", &default),
    ] {
        let seen = connect(server.addr, &config, sni).await;
        assert_eq!(seen.leaf, want.der, "{sni}");
        let (server_sni, _) = server.next().await.expect("server handshake");
        assert_eq!(
            server_sni.as_deref(),
            Some(sni.to_ascii_lowercase().as_str())
        );
    }
}

#[tokio::test]
async fn unmatched_sni_gets_the_default_certificate() {
    let ca = TestCa::new();
    let default = ca.leaf(&["default.example.com", "other.example.net"]);
    let wildcard = ca.leaf(&["*.es.example.com"]);
    let mut server = Server::start(&[&default, &wildcard], Settings::default()).await;
    // The client checks the name, so ask for one only the default carries.
    let seen = connect(server.addr, &client(&ca, ALL, &[]), "other.example.net").await;
    assert_eq!(seen.leaf, default.der);
    assert!(server.next().await.is_ok());
}

#[tokio::test]
async fn alpn_prefers_h2_and_falls_back_to_http1() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["a.es.example.com"]);
    let mut server = Server::start(&[&leaf], Settings::default()).await;

    for (offer, want, h2) in [
        (&[b"http/1.1".as_slice(), b"h2"][..], Some(&b"h2"[..]), true),
        (&[b"http/1.1".as_slice()][..], Some(&b"http/1.1"[..]), false),
        (&[][..], None, false),
    ] {
        let seen = connect(server.addr, &client(&ca, ALL, offer), "a.es.example.com").await;
        assert_eq!(seen.alpn.as_deref(), want);
        let (_, server_h2) = server.next().await.expect("server handshake");
        assert_eq!(server_h2, h2);
    }
}

#[tokio::test]
async fn tls12_only_client_is_served() {
    let ca = TestCa::new();
    let ecdsa = ca.leaf(&["a.es.example.com"]);
    let rsa = ca.leaf_for(&["b.es.example.com"], &rcgen::PKCS_RSA_SHA256);
    let mut server = Server::start(&[&ecdsa, &rsa], Settings::default()).await;
    let config = client(&ca, TLS12, &[b"h2"]);
    for (sni, want) in [("a.es.example.com", &ecdsa), ("b.es.example.com", &rsa)] {
        let seen = connect(server.addr, &config, sni).await;
        assert_eq!(seen.version, Some(ProtocolVersion::TLSv1_2));
        assert_eq!(seen.leaf, want.der);
        assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
        assert!(server.next().await.is_ok());
    }
}

#[tokio::test]
async fn second_connection_resumes() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["a.es.example.com"]);
    let tickets = Settings::default();
    let cache_only = Settings {
        session_tickets: false,
        ..Settings::default()
    };
    for (settings, versions) in [
        (&tickets, ALL),
        (&tickets, TLS12),
        (&cache_only, ALL),
        (&cache_only, TLS12),
    ] {
        let mut server = Server::start(&[&leaf], settings.clone()).await;
        let config = client(&ca, versions, &[]);
        let case = format!("tickets={} {versions:?}", settings.session_tickets);

        let first = connect(server.addr, &config, "a.es.example.com").await;
        assert_eq!(first.kind, Some(HandshakeKind::Full), "{case}");
        let second = connect(server.addr, &config, "a.es.example.com").await;
        assert_eq!(second.kind, Some(HandshakeKind::Resumed), "{case}");
        assert!(server.next().await.is_ok() && server.next().await.is_ok());
    }
}

#[tokio::test]
async fn server_preference_picks_aes_128_and_client_preference_the_clients_first() {
    use rustls::CipherSuite::*;
    let ca = TestCa::new();
    let leaf = ca.leaf(&["a.es.example.com"]);
    // rustls clients, like most, list AES-256-GCM first.
    for (preference, tls13, tls12) in [
        (
            CipherPreference::Server,
            TLS13_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            CipherPreference::Client,
            TLS13_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
    ] {
        let settings = Settings {
            cipher_preference: preference,
            ..Settings::default()
        };
        let server = Server::start(&[&leaf], settings).await;
        for (versions, want) in [(ALL, tls13), (TLS12, tls12)] {
            let config = client(&ca, versions, &[]);
            let seen = connect(server.addr, &config, "a.es.example.com").await;
            assert_eq!(seen.suite, Some(want), "{preference:?} {versions:?}");
        }
    }
}

#[tokio::test]
async fn resumption_can_be_disabled_entirely() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["a.es.example.com"]);
    let off = Settings {
        session_tickets: false,
        session_cache_size: 0,
        ..Settings::default()
    };
    let server = Server::start(&[&leaf], off).await;
    for versions in [ALL, TLS12] {
        let config = client(&ca, versions, &[]);
        connect(server.addr, &config, "a.es.example.com").await;
        let again = connect(server.addr, &config, "a.es.example.com").await;
        assert_eq!(again.kind, Some(HandshakeKind::Full), "{versions:?}");
    }
}

/// Reads until the server closes: keeps the socket open until the server
/// has decided.
async fn until_closed(tcp: &mut TcpStream) {
    let mut sink = Vec::new();
    let _ = tcp.read_to_end(&mut sink).await;
}

/// Connects, lets `client` act on the raw socket, and returns the server's
/// verdict.
async fn failure(settings: Settings, client: impl AsyncFnOnce(TcpStream)) -> &'static str {
    let leaf = TestCa::new().leaf(&["a.es.example.com"]);
    let mut server = Server::start(&[&leaf], settings).await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    client(tcp).await;
    server.next().await.expect_err("handshake must fail")
}

#[tokio::test]
async fn plain_http_is_not_tls() {
    let kind = failure(Settings::default(), async |mut tcp| {
        let request = b"GET / HTTP/1.1\r\nHost: a.es.example.com\r\n\r\n";
        tcp.write_all(request).await.expect("write");
        until_closed(&mut tcp).await;
    })
    .await;
    assert_eq!(kind, "not_tls");
}

#[tokio::test]
async fn silent_client_times_out() {
    let settings = Settings {
        handshake_timeout: Duration::from_millis(200),
        ..Settings::default()
    };
    let kind = failure(settings, async |mut tcp| until_closed(&mut tcp).await).await;
    assert_eq!(kind, "timeout");
}

#[tokio::test]
async fn client_hanging_up_is_eof() {
    let kind = failure(Settings::default(), async |tcp| drop(tcp)).await;
    assert_eq!(kind, "eof");
}

#[tokio::test]
async fn client_rejecting_the_certificate_is_protocol() {
    let stranger = TestCa::new();
    let kind = failure(Settings::default(), async |tcp| {
        let name = ServerName::try_from("a.es.example.com").expect("name");
        let result = TlsConnector::from(client(&stranger, ALL, &[]))
            .connect(name, tcp)
            .await;
        assert!(result.is_err(), "untrusted CA must be rejected");
    })
    .await;
    assert_eq!(kind, "protocol");
}

#[tokio::test]
async fn ocsp_response_is_stapled_only_for_the_certificate_that_has_one() {
    let ca = TestCa::new();
    let stapled = ca.leaf(&["stapled.es.example.com"]);
    let plain = ca.leaf(&["plain.es.example.com"]);
    let dir = TempDir::new();
    // Real responses are about this size; it needs the two-byte DER length.
    let response = der_sequence(1500);
    let settings = Settings {
        certificates: vec![
            CertificateFiles {
                cert: dir.write("stapled.pem", &stapled.cert_pem),
                key: dir.write("stapled.key", &stapled.key_pem),
                ocsp: Some(dir.write("stapled.ocsp.der", &response)),
            },
            CertificateFiles {
                cert: dir.write("plain.pem", &plain.cert_pem),
                key: dir.write("plain.key", &plain.key_pem),
                ocsp: None,
            },
        ],
        ..Settings::default()
    };
    let config = server_config(&settings).expect("server config");
    let mut server = Server::serve(config, settings.handshake_timeout).await;

    for (versions, version) in [
        (ALL, ProtocolVersion::TLSv1_3),
        (TLS12, ProtocolVersion::TLSv1_2),
    ] {
        for (sni, leaf, want) in [
            ("stapled.es.example.com", &stapled, &response[..]),
            ("plain.es.example.com", &plain, &[][..]),
        ] {
            // A fresh client each time: a resumed session sends no
            // certificate, hence no staple.
            let verifier = Arc::new(CheckingVerifier::new(ca.der()));
            let config = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_protocol_versions(versions)
            .expect("client versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
            let seen = connect(server.addr, &Arc::new(config), sni).await;
            assert_eq!(seen.version, Some(version), "{sni}");
            assert_eq!(seen.leaf, leaf.der, "{sni}");
            assert_eq!(verifier.stapled(), [want.to_vec()], "{sni} {version:?}");
            assert!(server.next().await.is_ok());
        }
    }
}
