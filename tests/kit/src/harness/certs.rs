//! Certificates.

use std::sync::OnceLock;

use crate::pki::TestCa;
use rustls::pki_types::CertificateDer;

/// A throwaway CA and one ECDSA P-256 leaf it signed, shared by every test
/// in the process.
pub struct Pki {
    pub ca: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = TestCa::named("portcullis e2e test CA");
        // One-label wildcards: `{id}.es.test` and `{alias}.{product}.es.test`.
        let leaf = ca.leaf(&[
            "es.test",
            "*.es.test",
            "*.es.es.test",
            "*.kb.es.test",
            "*.apm.es.test",
            "*.kb.test",
            "*.test",
        ]);
        Pki {
            ca: ca.der(),
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        }
    })
}

/// A temporary directory (`tempfile`'s), `.0` its path.
pub use crate::TempDir;
