//! Test fixtures: a throwaway CA, leaf certificates it signs, key format
//! conversions and a self-cleaning temporary directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use super::{LoadedCertificate, load_certified_key};

pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM encoded.
pub(crate) struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

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
    pub fn new() -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "portcullis test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        Self { issuer }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.issuer.der().clone())
            .expect("CA is a trust anchor");
        roots
    }

    /// An ECDSA P-256 leaf for `names`.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with_key(names, &KeyPair::generate().expect("leaf key"))
    }

    pub fn leaf_for(&self, names: &[&str], alg: &'static SignatureAlgorithm) -> Leaf {
        let key = if alg == &rcgen::PKCS_RSA_SHA256 {
            KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048)
        } else {
            KeyPair::generate_for(alg)
        };
        self.leaf_with_key(names, &key.expect("leaf key"))
    }

    fn leaf_with_key(&self, names: &[&str], key: &KeyPair) -> Leaf {
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        let mut params = CertificateParams::new(names).expect("valid names");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
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

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("portcullis-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(Path::new(&self.0));
    }
}
