//! Test fixtures: a throwaway CA, leaf certificates it signs, key format
//! conversions and a self-cleaning temporary directory.

use std::path::PathBuf;

use rustls::RootCertStore;

use super::{LoadedCertificate, load_certified_key};

// The test kit's CA, compiled from the kit's own source: unit tests
// cannot depend on the kit (it links a second copy of this crate), and one
// copy of the code is enough.
#[allow(dead_code, reason = "unit tests use part of the kit's API")]
#[path = "../../tests/kit/src/pki.rs"]
mod pki;

pub(crate) use pki::{CheckingVerifier, Leaf, TestCa};

impl Leaf {
    pub fn pems(&self) -> (Vec<u8>, Vec<u8>) {
        (self.cert_pem.clone().into(), self.key_pem.clone().into())
    }

    pub fn load(&self) -> LoadedCertificate {
        load_certified_key(self.cert_pem.as_bytes(), self.key_pem.as_bytes(), "leaf")
            .expect("test leaf loads")
    }
}

impl TestCa {
    /// A root store trusting this CA alone.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der()).expect("CA is a trust anchor");
        roots
    }
}

/// Re-encodes a PKCS#8 PEM key as the key it wraps: PKCS#1
/// (`RSA PRIVATE KEY`) for RSA, SEC1 (`EC PRIVATE KEY`) for ECDSA.
pub(crate) fn unwrap_pkcs8(pkcs8_pem: &str, label: &str) -> String {
    let pkcs8 = pem::parse(pkcs8_pem).expect("PEM key");
    // PrivateKeyInfo ::= SEQUENCE { version, algorithm, privateKey OCTET STRING, ... }
    let (_, info, _) = tlv(pkcs8.contents());
    let (_, _, rest) = tlv(info);
    let (_, _, rest) = tlv(rest);
    let (tag, inner, _) = tlv(rest);
    assert_eq!(tag, 0x04, "privateKey is an OCTET STRING");
    pem::encode(&pem::Pem::new(label, inner.to_vec()))
}

/// One DER tag-length-value: (tag, value, rest). Test inputs only.
fn tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let (len, header) = match der[1] {
        n if n < 0x80 => (usize::from(n), 2),
        0x81 => (usize::from(der[2]), 3),
        0x82 => (usize::from(u16::from_be_bytes([der[2], der[3]])), 4),
        other => panic!("unsupported DER length byte {other:#x}"),
    };
    let (value, rest) = der[header..].split_at(len);
    (der[0], value, rest)
}

/// One DER SEQUENCE with `content_len` bytes of filler: the outer shape of
/// an OCSPResponse, which is all the loader checks and all rustls needs to
/// staple it (rustls' client hands it to the verifier unparsed).
pub(crate) fn der_sequence(content_len: usize) -> Vec<u8> {
    let mut der = vec![0x30];
    match u8::try_from(content_len) {
        Ok(n) if n < 0x80 => der.push(n),
        Ok(n) => der.extend([0x81, n]),
        Err(_) => {
            let n = u16::try_from(content_len).expect("test sequences fit in 64 KiB");
            der.push(0x82);
            der.extend(n.to_be_bytes());
        }
    }
    der.extend((0..content_len).map(|i| (i % 251) as u8));
    der
}

/// A fresh directory under the system temp dir, removed on drop
/// (`tempfile`'s). Unit tests cannot use the test kit's (it links a second
/// copy of this crate), hence this thin one.
pub(crate) struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-tls-")
            .tempdir()
            .expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}
