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

    /// The CA certificate as PEM, for a file a server or client reads.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate (ECDSA P-256, client-auth use) for
    /// `common_name`, which servers that authenticate clients by
    /// certificate read as the user.
    pub fn client(&self, common_name: &str) -> Leaf {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, &KeyPair::generate().expect("client key"))
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
        self.sign(params, key)
    }

    /// `params` signed by this CA for `key`.
    fn sign(&self, mut params: CertificateParams, key: &KeyPair) -> Leaf {
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

/// Checks a server's certificate against one CA exactly as rustls's own
/// verifier does, and shows a test what rustls would not: every stapled
/// OCSP response is recorded, and [`CheckingVerifier::checking_as`] checks the
/// certificate for a fixed name whatever server name the client sent (for
/// cases that send odd SNIs on purpose and still want to know they reached
/// the real proxy).
#[derive(Debug)]
pub struct CheckingVerifier {
    inner: std::sync::Arc<rustls::client::WebPkiServerVerifier>,
    as_name: Option<rustls::pki_types::ServerName<'static>>,
    stapled: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl CheckingVerifier {
    /// Trusts `ca` (DER), with aws-lc-rs's algorithms.
    pub fn new(ca: CertificateDer<'static>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("test CA");
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .expect("verifier");
        Self {
            inner,
            as_name: None,
            stapled: std::sync::Mutex::default(),
        }
    }

    /// Checks every certificate for `name` instead of the server name sent.
    pub fn checking_as(mut self, name: &str) -> Self {
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("valid name");
        self.as_name = Some(name);
        self
    }

    /// The OCSP responses seen so far, one per handshake (empty when the
    /// server stapled none).
    pub fn stapled(&self) -> Vec<Vec<u8>> {
        self.stapled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl rustls::client::danger::ServerCertVerifier for CheckingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.stapled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(ocsp.to_vec());
        let name = self.as_name.as_ref().unwrap_or(server_name);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
