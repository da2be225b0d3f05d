//! A throwaway certificate authority and the server certificates it signs,
//! for tests and benches that speak real TLS to the proxy or to a node.
//!
//! portcullis's own unit tests compile this file too (`src/tls/testing.rs`
//! includes it by path: they cannot depend on the kit, which links a second
//! copy of portcullis), so it uses nothing but rcgen and rustls's types.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A self-signed CA. Key generation failing is a broken test machine, so
/// these functions panic rather than return errors.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM and DER.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub key_der: PrivateKeyDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        Self::named("portcullis test CA")
    }

    /// A CA called `common_name` (handshake failures show it, so name it
    /// after what uses it).
    pub fn named(common_name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        Self { issuer }
    }

    /// The CA certificate, for a client's root store.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// An ECDSA P-256 server certificate for `names` (DNS names, wildcards
    /// allowed).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with_key(names, &KeyPair::generate().expect("leaf key"))
    }

    /// A server certificate for `names` with a key of `alg` (RSA: 2048
    /// bits).
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
            .signed_by(key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
