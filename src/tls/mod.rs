//! TLS termination for hosted Elasticsearch endpoints.
//!
//! This stage turns configured PEM files into one immutable
//! [`rustls::ServerConfig`] and runs the server side of each handshake.
//!
//! What it guarantees:
//! - **Fail at start, not per connection.** Every certificate chain and key is
//!   parsed, and every key is checked against its certificate, before a
//!   config exists. Errors name the offending file(s).
//! - **Protocol floor.** TLS 1.2 and 1.3 only, the crypto provider's default
//!   cipher suites (AES-128-GCM preferred, see [`CipherPreference`]), ALPN
//!   `h2` then `http/1.1`, no client authentication and
//!   no 0-RTT (early data is replayable and the proxy forwards writes).
//! - **Certificate choice** by SNI: exact name, then a one-label wildcard,
//!   then the first configured certificate (see [`SniResolver`]). Lookup is a
//!   hash probe that does not allocate.
//! - **Bounded handshakes.** [`handshake()`] enforces a deadline and reports
//!   failures as a [`HandshakeError`] whose [`kind`](HandshakeError::kind) is
//!   a fixed, low-cardinality metric label.
//! - **Resumption** through a bounded in-memory session cache (TLS 1.2
//!   session ids, TLS 1.3 stateful tickets) and, when enabled, stateless
//!   tickets encrypted under keys that rotate automatically.
//! - **OCSP stapling** when a certificate has an `ocsp` file: its bytes are
//!   sent, in TLS 1.3 and 1.2, in every full handshake whose client asks
//!   (`status_request`); resumed handshakes carry no certificate, so no staple.
//!   The file is read with the certificate (at start) and only sanity
//!   checked; see [`CertificateFiles::ocsp`] for what is and is not checked.
//!
//! The proxy never fetches OCSP responses itself. Doing so would give the
//! data plane outbound connections to every CA's responder, with their
//! outages, retries and caching to handle, and would need a full OCSP parser
//! and signature check to decide whether a response is good enough to serve.
//! Operators' certificate tooling already fetches and verifies responses
//! (e.g. `openssl ocsp -issuer … -cert … -url … -respout`), so it owns that
//! decision and refreshes the file; the proxy serves exactly those bytes.

mod certs;
mod handshake;
mod resolver;
mod stream;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_load;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache};

pub use certs::{
    LoadedCertificate, MAX_OCSP_RESPONSE_BYTES, SelfSigned, load_certified_key, self_signed,
};
pub use handshake::{Acceptor, HandshakeError, alpn_is_h2, handshake, sni_of};
pub use resolver::SniResolver;
pub use stream::TlsStream;

/// How long a client may take to complete the handshake. Long enough for a
/// slow mobile link, short enough that idle sockets do not pile up.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sessions kept for stateful resumption. Each entry is a few hundred
/// bytes, so the default bounds the cache to a handful of megabytes.
pub const DEFAULT_SESSION_CACHE_SIZE: usize = 20_000;

/// ALPN protocols in server preference order: HTTP/2 first, because
/// multiplexing saves the upstream connections the proxy would otherwise
/// open per concurrent request.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A certificate chain and its private key, as files
/// (`[[tls.certificates]]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1
    /// (`RSA PRIVATE KEY`).
    pub key: PathBuf,
    /// DER-encoded OCSPResponse for the leaf (as `openssl ocsp -respout`
    /// writes it), stapled for clients that ask. Checked only for being one
    /// complete DER SEQUENCE of a size TLS can carry: not parsed, so neither
    /// its status, its validity period nor that it is about this leaf is
    /// checked. Keeping it fresh and matching is the operator's tooling's job.
    #[serde(default)]
    pub ocsp: Option<PathBuf>,
}

/// TLS settings for the listener (`[tls]`; the defaults are
/// [`Settings::default`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Certificates to serve. The first one is the default, served to clients
    /// that send no SNI or an SNI no certificate names.
    pub certificates: Vec<CertificateFiles>,
    /// Deadline for a client to complete the handshake.
    #[serde(deserialize_with = "crate::config::duration::deserialize")]
    pub handshake_timeout: Duration,
    /// Number of sessions kept for stateful resumption; 0 disables the cache.
    pub session_cache_size: usize,
    /// Issue stateless session tickets (RFC 5077 / TLS 1.3 tickets).
    pub session_tickets: bool,
    /// Whose cipher suite order decides.
    pub cipher_preference: CipherPreference,
}

/// Which side's cipher suite order picks the suite.
///
/// `Server` (the default) picks AES-128-GCM whenever the client offers it,
/// which every TLS 1.3 client must. Most clients list AES-256-GCM first,
/// which costs a SHA-384 key schedule and more AES rounds for no practical
/// gain in security: measured with benches/compare.sh's handshake load,
/// about 10% less proxy CPU per new connection (275 → 247 µs). `Client`
/// honours the client's order, for fleets whose clients lack AES hardware
/// and put ChaCha20 first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CipherPreference {
    #[default]
    Server,
    Client,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            certificates: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            session_cache_size: DEFAULT_SESSION_CACHE_SIZE,
            session_tickets: true,
            cipher_preference: CipherPreference::default(),
        }
    }
}

/// Why a TLS configuration could not be built.
///
/// `origin` fields name the file (or, for in-memory PEM, the caller's label)
/// the problem was found in.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed PEM in {origin}")]
    Pem {
        origin: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no CERTIFICATE found in {origin}")]
    NoCertificate { origin: String },
    #[error("leaf certificate in {origin} is not a valid X.509 certificate")]
    Certificate {
        origin: String,
        #[source]
        source: webpki::Error,
    },
    #[error("no private key (PKCS#8, SEC1 or PKCS#1) found in {origin}")]
    NoPrivateKey { origin: String },
    #[error("more than one private key in {origin}; expected exactly one")]
    MultiplePrivateKeys { origin: String },
    #[error("private key in {origin} is not a supported ECDSA P-256/P-384, RSA or Ed25519 key")]
    UnsupportedKey {
        origin: String,
        #[source]
        source: rustls::Error,
    },
    #[error("private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("cannot check that the private key in {key} matches the certificate in {cert}")]
    KeyCheck {
        cert: String,
        key: String,
        #[source]
        source: rustls::Error,
    },
    #[error("no certificates configured")]
    NoCertificates,
    #[error("cannot build the TLS server configuration")]
    Config(#[source] rustls::Error),
    #[error("cannot generate a self-signed certificate")]
    SelfSigned(#[source] rcgen::Error),
    #[error("OCSP response file {} is unusable: {problem}", path.display())]
    Ocsp { path: PathBuf, problem: OcspProblem },
}

/// What is wrong with an OCSP response file; see [`TlsError::Ocsp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OcspProblem {
    #[error("it is empty")]
    Empty,
    #[error(
        "it starts with byte {first_byte:#04x}, not 0x30: a DER-encoded OCSPResponse is an ASN.1 SEQUENCE (is it PEM or base64 text? `openssl ocsp -respout` writes DER)"
    )]
    NotSequence { first_byte: u8 },
    #[error(
        "it is {len} bytes; a stapled response must fit in {max} bytes (TLS 1.3 extension limit)"
    )]
    TooLarge { len: usize, max: usize },
    #[error("its DER SEQUENCE length is malformed")]
    BadLength,
    #[error(
        "it is truncated: its DER SEQUENCE declares {declared} bytes of content but only {actual} follow"
    )]
    Truncated { declared: usize, actual: usize },
    #[error("it has {extra} bytes after its DER SEQUENCE; expected exactly one OCSPResponse")]
    TrailingData { extra: usize },
}

/// Reads every configured certificate and key, then builds the server config.
///
/// # Errors
///
/// Any [`TlsError`] from reading or checking the files (naming them), or
/// [`TlsError::NoCertificates`] if none are configured.
pub fn server_config(settings: &Settings) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let certificates = settings
        .certificates
        .iter()
        .map(|files| certs::load_files(files, &provider))
        .collect::<Result<Vec<_>, _>>()?;
    build(&certificates, settings, provider)
}

/// Builds the server config from in-memory `(certificate chain, key)` PEM
/// pairs, in priority order; `settings.certificates` is ignored. Errors name
/// the pair by its index (`pems[0]`, ...).
///
/// # Errors
///
/// As [`server_config`], with `pems[i]` in place of file names.
pub fn server_config_from_pems(
    pairs: &[(Vec<u8>, Vec<u8>)],
    settings: &Settings,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let certificates = pairs
        .iter()
        .enumerate()
        .map(|(i, (cert, key))| {
            certs::load_with_provider(cert, key, &format!("pems[{i}]"), &provider)
        })
        .collect::<Result<Vec<_>, _>>()?;
    build(&certificates, settings, provider)
}

fn build(
    certificates: &[LoadedCertificate],
    settings: &Settings,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = SniResolver::new(certificates)?;
    let provider = match settings.cipher_preference {
        CipherPreference::Client => provider,
        CipherPreference::Server => {
            // The provider's suites, AES-128-GCM first (TLS 1.3 and 1.2),
            // otherwise in the provider's order.
            let mut p = (*provider).clone();
            p.cipher_suites.sort_by_key(|s| {
                !matches!(
                    s.suite(),
                    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                )
            });
            Arc::new(p)
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));

    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    config.ignore_client_order = settings.cipher_preference == CipherPreference::Server;

    config.session_storage = if settings.session_cache_size == 0 {
        Arc::new(NoServerSessionStorage {})
    } else {
        ServerSessionMemoryCache::new(settings.session_cache_size)
    };
    if settings.session_tickets {
        // The ticketer rotates its key every 6 hours and accepts the previous
        // one, so tickets live up to 12 hours and a leaked key has a bounded
        // window.
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Config)?;
    } else if settings.session_cache_size == 0 {
        // Without a ticketer, TLS 1.3 tickets are stateful cache keys; with no
        // cache either, they could never be redeemed, so don't send them.
        config.send_tls13_tickets = 0;
    }

    Ok(Arc::new(config))
}

/// The process-wide provider if the binary installed one (e.g. a FIPS
/// build), otherwise aws-lc-rs. Passing it explicitly, rather than relying on
/// rustls' implicit default, means config construction cannot panic when
/// more than one provider is compiled in.
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}
