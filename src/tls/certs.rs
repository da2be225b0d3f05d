//! Certificate chains and private keys, from PEM to [`CertifiedKey`].
//!
//! A [`LoadedCertificate`] guarantees:
//! - a non-empty chain whose first (leaf) certificate parses as X.509;
//! - a private key the crypto provider can sign with;
//! - that key's public half equals the leaf's (checked, not assumed: an
//!   unverifiable pair is rejected too), so a mismatched pair fails at start
//!   rather than in every handshake;
//! - `dns_names` are the leaf's subjectAltName dNSName entries, ASCII
//!   lowercased, without a trailing dot;
//! - an OCSP response, when configured, is one complete DER SEQUENCE small
//!   enough to staple (see [`check_ocsp`]); it is not otherwise parsed.
//!
//! Chain order and validity dates are the operator's responsibility; clients
//! verify both.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{Error as RustlsError, InconsistentKeys};

use super::{CertificateFiles, OcspProblem, TlsError, crypto_provider};

/// Largest OCSP response that can be stapled. In TLS 1.3 it travels in the
/// leaf's `CertificateEntry` extensions, whose total length is a 16-bit
/// field: 65535 bytes less the extension header (type and length, 4 bytes)
/// and the `CertificateStatus` header (type and 24-bit length, 4 bytes).
/// rustls does not check this when it writes the handshake (a larger
/// response would corrupt every handshake with that certificate), so it is
/// checked at load. Real responses are a few kilobytes at most.
pub const MAX_OCSP_RESPONSE_BYTES: usize = 0xffff - 4 - 4;

/// A certificate chain with its signing key and the DNS names it serves.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    /// The chain (leaf first) and its verified signing key.
    pub certified_key: Arc<CertifiedKey>,
    /// Lowercased subjectAltName dNSNames, wildcards (`*.example.com`)
    /// included. Empty when the certificate has none.
    pub dns_names: Vec<String>,
    /// Where the certificate came from, for log messages.
    pub origin: String,
}

/// Parses a PEM certificate chain (leaf first) and a PEM private key
/// (PKCS#8, SEC1 or PKCS#1; ECDSA P-256/P-384, RSA or Ed25519) and checks
/// that they belong together. `origin` names the input in errors.
///
/// # Errors
///
/// A [`TlsError`] naming `origin` when the PEM is malformed, holds no
/// certificate or not exactly one key, the key type is unsupported, or the
/// key does not match the leaf certificate.
pub fn load_certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: &str,
) -> Result<LoadedCertificate, TlsError> {
    load_with_provider(cert_pem, key_pem, origin, &crypto_provider())
}

pub(super) fn load_with_provider(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: &str,
    provider: &CryptoProvider,
) -> Result<LoadedCertificate, TlsError> {
    load(cert_pem, origin, key_pem, origin, None, provider)
}

/// Reads and loads one configured pair and, if configured, its OCSP
/// response; errors name the file at fault.
pub(super) fn load_files(
    files: &CertificateFiles,
    provider: &CryptoProvider,
) -> Result<LoadedCertificate, TlsError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let ocsp = files.ocsp.as_deref().map(read_ocsp).transpose()?;
    load(
        &cert_pem,
        &files.cert.display().to_string(),
        &key_pem,
        &files.key.display().to_string(),
        ocsp,
        provider,
    )
}

/// Reads an OCSP response file and sanity-checks it (see [`check_ocsp`]).
fn read_ocsp(path: &Path) -> Result<Vec<u8>, TlsError> {
    let der = read(path)?;
    check_ocsp(&der).map_err(|problem| TlsError::Ocsp {
        path: path.to_owned(),
        problem,
    })?;
    Ok(der)
}

/// Checks that `der` is exactly one DER SEQUENCE (the outer shape of an
/// OCSPResponse) of at most [`MAX_OCSP_RESPONSE_BYTES`]. That catches the
/// likely mistakes (an empty or truncated file from an interrupted refresh,
/// PEM or base64 text, a concatenation, the wrong file) without an OCSP
/// parser; what is inside the SEQUENCE is not looked at.
pub(super) fn check_ocsp(der: &[u8]) -> Result<(), OcspProblem> {
    let Some((&first_byte, rest)) = der.split_first() else {
        return Err(OcspProblem::Empty);
    };
    if first_byte != 0x30 {
        return Err(OcspProblem::NotSequence { first_byte });
    }
    if der.len() > MAX_OCSP_RESPONSE_BYTES {
        return Err(OcspProblem::TooLarge {
            len: der.len(),
            max: MAX_OCSP_RESPONSE_BYTES,
        });
    }
    // Definite length: short form, or long form with one or two length
    // bytes; anything longer could not fit under the size limit above.
    let (declared, content) = match rest {
        [n @ 0..=0x7f, content @ ..] => (usize::from(*n), content),
        [0x81, n, content @ ..] => (usize::from(*n), content),
        [0x82, hi, lo, content @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), content),
        _ => return Err(OcspProblem::BadLength),
    };
    match content.len().checked_sub(declared) {
        None => Err(OcspProblem::Truncated {
            declared,
            actual: content.len(),
        }),
        Some(0) => Ok(()),
        Some(extra) => Err(OcspProblem::TrailingData { extra }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn load(
    cert_pem: &[u8],
    cert_origin: &str,
    key_pem: &[u8],
    key_origin: &str,
    ocsp: Option<Vec<u8>>,
    provider: &CryptoProvider,
) -> Result<LoadedCertificate, TlsError> {
    let chain = parse_chain(cert_pem, cert_origin)?;
    // The chain is non-empty, so there is a leaf; parse it before the key so
    // a corrupt certificate is reported against the certificate file.
    let dns_names = match chain.first() {
        Some(leaf) => dns_names(leaf, cert_origin)?,
        None => return Err(no_certificate(cert_origin)),
    };

    let key_der = parse_key(key_pem, key_origin)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::UnsupportedKey {
            origin: key_origin.to_owned(),
            source,
        })?;

    let mut certified_key = CertifiedKey::new(chain, signing_key);
    // Unlike `CertifiedKey::from_der`, treat "could not compare" as an error:
    // every key type we accept can report its public key, so an unknown
    // result means something is wrong with the pair.
    match certified_key.keys_match() {
        Ok(()) => {}
        Err(RustlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_origin.to_owned(),
                key: key_origin.to_owned(),
            });
        }
        Err(source) => {
            return Err(TlsError::KeyCheck {
                cert: cert_origin.to_owned(),
                key: key_origin.to_owned(),
                source,
            });
        }
    }

    // rustls staples this for clients that send `status_request`.
    certified_key.ocsp = ocsp;

    Ok(LoadedCertificate {
        certified_key: Arc::new(certified_key),
        dns_names,
        origin: cert_origin.to_owned(),
    })
}

/// All `CERTIFICATE` blocks, in file order; other blocks (e.g. a key in a
/// combined file) are skipped.
fn parse_chain(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(origin, source))?;
    if chain.is_empty() {
        return Err(no_certificate(origin));
    }
    Ok(chain)
}

/// Exactly one private key. A second key makes the file ambiguous, and
/// silently picking one would hide a deployment mistake.
fn parse_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut keys = PrivateKeyDer::pem_slice_iter(pem);
    let key = match keys.next() {
        Some(Ok(key)) => key,
        Some(Err(source)) => return Err(pem_error(origin, source)),
        None => {
            return Err(TlsError::NoPrivateKey {
                origin: origin.to_owned(),
            });
        }
    };
    match keys.next() {
        None => Ok(key),
        Some(Ok(_)) => Err(TlsError::MultiplePrivateKeys {
            origin: origin.to_owned(),
        }),
        Some(Err(source)) => Err(pem_error(origin, source)),
    }
}

/// The leaf's subjectAltName DNS names, normalised for the SNI index.
/// webpki drops entries that are not syntactically valid DNS names or
/// wildcards, so the index only ever holds names a client could match.
fn dns_names(leaf: &CertificateDer<'_>, origin: &str) -> Result<Vec<String>, TlsError> {
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|source| TlsError::Certificate {
        origin: origin.to_owned(),
        source,
    })?;
    Ok(cert
        .valid_dns_names()
        .map(|name| name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase())
        .collect())
}

fn no_certificate(origin: &str) -> TlsError {
    TlsError::NoCertificate {
        origin: origin.to_owned(),
    }
}

fn pem_error(origin: &str, source: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        origin: origin.to_owned(),
        source,
    }
}

/// A freshly generated certificate and key, PEM encoded.
#[derive(Clone)]
pub struct SelfSigned {
    /// The self-signed certificate.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
}

impl fmt::Debug for SelfSigned {
    // The key is a secret; keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelfSigned")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Generates an ECDSA P-256 certificate for `names` (DNS names or IP
/// addresses), signed by its own key. For `portcullis demo` and tests only:
/// no client trusts it unless told to.
///
/// # Errors
///
/// [`TlsError::SelfSigned`] if a name is neither a DNS name nor an IP address.
pub fn self_signed(names: &[String]) -> Result<SelfSigned, TlsError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(TlsError::SelfSigned)?;
    let cert = rcgen::CertificateParams::new(names.to_vec())
        .and_then(|params| params.self_signed(&key))
        .map_err(TlsError::SelfSigned)?;
    Ok(SelfSigned {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
