//! Choosing the certificate for a connection from its SNI.
//!
//! Guarantees:
//! - Matching is ASCII case-insensitive and ignores one trailing dot.
//! - An exact name beats a wildcard; a wildcard `*.rest` stands for exactly
//!   one left-most label (`a.rest`, never `b.a.rest` or `rest` itself),
//!   as RFC 6125 §6.4.3 has clients check it.
//! - When several certificates list the same name, the first one configured
//!   serves it (and the shadowing is logged at start).
//! - Anything else, including no SNI at all, gets the first certificate, so
//!   a handshake never fails for want of a certificate.
//! - A lookup is at most two hash probes on a stack copy of the name: no
//!   allocation, no scan over certificates.
//!
//! The resolver is also where a connection learns its SNI. rustls 0.23's
//! unbuffered server connection (see `stream.rs`) has no `server_name()`,
//! but rustls hands every ClientHello to the resolver, with the name as it
//! normalised it, from inside the connection's own `process_tls_records`
//! call on the connection's own thread. So the resolver leaves the name in
//! a thread-local slot, and the connection takes it as that call returns:
//! no other handshake can run on the thread in between.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::Arc;

use foldhash::fast::RandomState;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{LoadedCertificate, TlsError};

/// RFC 1035 limit on a DNS name in text form (without the trailing dot).
/// Nothing longer can equal, or be one label below, an indexed name.
const MAX_DNS_NAME_LEN: usize = 253;

/// Lowercased name bytes → certificate. Keys are bytes rather than `str` so
/// a lookup needs no UTF-8 re-validation of the lowercased copy. Hash
/// flooding is no concern: only configured names are ever inserted.
type NameIndex = HashMap<Box<[u8]>, Indexed, RandomState>;

struct Indexed {
    key: Arc<CertifiedKey>,
    /// Position in the configuration, to tell shadowing from repetition.
    position: usize,
}

/// A [`ResolvesServerCert`] that picks a certificate by SNI; see the module
/// documentation for the rules.
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    /// Full names, e.g. `abc123.es.example.com`.
    exact: NameIndex,
    /// Wildcards by the part after `*.`: `*.es.example.com` is stored as
    /// `es.example.com`.
    wildcard: NameIndex,
}

impl SniResolver {
    /// Indexes `certificates` by their DNS names; the first is the default.
    ///
    /// # Errors
    ///
    /// [`TlsError::NoCertificates`] if `certificates` is empty.
    pub fn new(certificates: &[LoadedCertificate]) -> Result<Self, TlsError> {
        let default = match certificates.first() {
            Some(first) => Arc::clone(&first.certified_key),
            None => return Err(TlsError::NoCertificates),
        };
        let mut resolver = Self {
            default,
            exact: NameIndex::default(),
            wildcard: NameIndex::default(),
        };
        for (position, certificate) in certificates.iter().enumerate() {
            for name in &certificate.dns_names {
                let shadowed_by = resolver.insert(name, position, certificate);
                if let Some(kept) = shadowed_by.and_then(|kept| certificates.get(kept)) {
                    tracing::warn!(
                        name,
                        kept = %kept.origin,
                        ignored = %certificate.origin,
                        "two certificates claim the same name; the first configured one serves it"
                    );
                }
            }
        }
        Ok(resolver)
    }

    /// Indexes `name` for the certificate at `position` unless an earlier
    /// certificate has it; returns that earlier certificate's position.
    fn insert(
        &mut self,
        name: &str,
        position: usize,
        certificate: &LoadedCertificate,
    ) -> Option<usize> {
        // `LoadedCertificate`'s fields are public, so normalise again rather
        // than trust that the names came from `load_certified_key`.
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name.is_empty() || name.len() > MAX_DNS_NAME_LEN {
            return None;
        }
        let (index, key) = match name.strip_prefix("*.") {
            Some(rest) => (&mut self.wildcard, rest),
            None => (&mut self.exact, name.as_str()),
        };
        match index.entry(key.as_bytes().into()) {
            Entry::Vacant(slot) => {
                slot.insert(Indexed {
                    key: Arc::clone(&certificate.certified_key),
                    position,
                });
                None
            }
            // A name repeated within one certificate is not shadowing.
            Entry::Occupied(kept) => Some(kept.get().position).filter(|&kept| kept != position),
        }
    }

    /// The certificate for `server_name` (the client's SNI, if any).
    #[must_use]
    pub fn resolve_name(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        server_name
            .and_then(|name| self.lookup(name))
            .unwrap_or(&self.default)
    }

    fn lookup(&self, server_name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = server_name.strip_suffix('.').unwrap_or(server_name);
        let mut buf = [0u8; MAX_DNS_NAME_LEN];
        // A longer name is not a hostname and cannot match; serve the default.
        let name = buf.get_mut(..name.len()).map(|lowered| {
            lowered.copy_from_slice(name.as_bytes());
            lowered.make_ascii_lowercase();
            &*lowered
        })?;

        if let Some(entry) = self.exact.get(name) {
            return Some(&entry.key);
        }
        // Strip exactly one non-empty left-most label; the wildcard index
        // holds the parents `*` may sit under.
        let mut labels = name.splitn(2, |&b| b == b'.');
        match (labels.next(), labels.next()) {
            (Some(first), Some(parent)) if !first.is_empty() => {
                self.wildcard.get(parent).map(|entry| &entry.key)
            }
            _ => None,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello.server_name();
        SEEN_NAME.with(|seen| *seen.borrow_mut() = name.map(Box::from));
        Some(Arc::clone(self.resolve_name(name)))
    }
}

thread_local! {
    /// The SNI of the ClientHello this thread's resolver saw last; see the
    /// module documentation.
    static SEEN_NAME: RefCell<Option<Box<str>>> = const { RefCell::new(None) };
}

/// Clears the slot before a connection hands rustls its input, so a name
/// left by another configuration's handshake is never taken for its own.
pub(super) fn forget_seen_name() {
    SEEN_NAME.with(|seen| seen.borrow_mut().take());
}

/// The SNI the resolver saw since [`forget_seen_name`], if any.
pub(super) fn take_seen_name() -> Option<Box<str>> {
    SEEN_NAME.with(|seen| seen.borrow_mut().take())
}

impl fmt::Debug for SniResolver {
    // Names only: the derived form would dump every certificate's DER.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |index: &NameIndex, prefix: &'static str| {
            let mut names: Vec<String> = index
                .keys()
                .map(|k| format!("{prefix}{}", String::from_utf8_lossy(k)))
                .collect();
            names.sort_unstable();
            names
        };
        f.debug_struct("SniResolver")
            .field("exact", &names(&self.exact, ""))
            .field("wildcard", &names(&self.wildcard, "*."))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::self_signed;

    fn cert(names: &[&str]) -> LoadedCertificate {
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        let pair = self_signed(&names).expect("self-signed");
        crate::tls::load_certified_key(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes(), "test")
            .expect("loads")
    }

    /// Resolves `sni` and returns the index of the certificate chosen.
    fn pick(resolver: &SniResolver, certs: &[LoadedCertificate], sni: Option<&str>) -> usize {
        let chosen = resolver.resolve_name(sni);
        certs
            .iter()
            .position(|c| Arc::ptr_eq(&c.certified_key, chosen))
            .expect("resolver returns a configured certificate")
    }

    fn fixture() -> (SniResolver, Vec<LoadedCertificate>) {
        let certs = vec![
            cert(&["default.example.com"]),
            cert(&["*.es.example.com"]),
            cert(&["abc123.es.example.com", "Mixed.Example.COM"]),
        ];
        (SniResolver::new(&certs).expect("resolver"), certs)
    }

    /// Which certificate of the fixture (0: default, 1: `*.es.example.com`,
    /// 2: `abc123.es.example.com` and `Mixed.Example.COM`) each server
    /// name picks, and why.
    #[test]
    fn picks_a_certificate_by_server_name() {
        let cases: &[(&str, Option<&str>, usize)] = &[
            ("exact beats wildcard", Some("abc123.es.example.com"), 2),
            ("exact", Some("default.example.com"), 0),
            ("wildcard: one label", Some("a.es.example.com"), 1),
            ("wildcard: not two labels", Some("b.a.es.example.com"), 0),
            ("wildcard: not zero labels", Some("es.example.com"), 0),
            ("wildcard: not an empty label", Some(".es.example.com"), 0),
            ("no server name: the first", None, 0),
            ("unknown name: the first", Some("elsewhere.example.org"), 0),
            ("empty name: the first", Some(""), 0),
            ("case is ignored", Some("ABC123.ES.Example.com"), 2),
            (
                "one trailing dot is ignored",
                Some("abc123.es.example.com."),
                2,
            ),
            ("case and dot, wildcard", Some("XYZ.Es.Example.Com."), 1),
            ("names are lowercased at load", Some("mixed.example.com"), 2),
        ];
        let (r, c) = fixture();
        for &(why, sni, want) in cases {
            assert_eq!(pick(&r, &c, sni), want, "{why}: {sni:?}");
        }
    }

    #[test]
    fn names_are_lowercased_at_load() {
        let (_, c) = fixture();
        assert_eq!(
            c[2].dns_names,
            ["abc123.es.example.com", "mixed.example.com"]
        );
        assert_eq!(c[1].dns_names, ["*.es.example.com"]);
    }

    #[test]
    fn overlong_names_get_the_default_without_panicking() {
        let (r, c) = fixture();
        let long = format!("{}.es.example.com", "a".repeat(300));
        assert_eq!(pick(&r, &c, Some(&long)), 0);
        let exactly_max = format!("{}.es.example.com", "a".repeat(MAX_DNS_NAME_LEN - 15));
        assert_eq!(exactly_max.len(), MAX_DNS_NAME_LEN);
        assert_eq!(pick(&r, &c, Some(&exactly_max)), 1);
    }

    #[test]
    fn first_certificate_wins_a_shared_name() {
        let certs = vec![
            cert(&["other.example.com"]),
            cert(&["shared.example.com", "*.w.example.com"]),
            cert(&["SHARED.example.com", "*.W.example.com"]),
        ];
        let r = SniResolver::new(&certs).expect("resolver");
        assert_eq!(pick(&r, &certs, Some("shared.example.com")), 1);
        assert_eq!(pick(&r, &certs, Some("x.w.example.com")), 1);
    }

    #[test]
    fn certificate_without_dns_names_serves_as_default() {
        let certs = vec![cert(&["192.0.2.1"]), cert(&["named.example.com"])];
        assert!(certs[0].dns_names.is_empty());
        let r = SniResolver::new(&certs).expect("resolver");
        assert_eq!(pick(&r, &certs, Some("named.example.com")), 1);
        assert_eq!(pick(&r, &certs, Some("192.0.2.1")), 0);
        assert_eq!(pick(&r, &certs, None), 0);
    }

    #[test]
    fn no_certificates_is_an_error() {
        assert!(matches!(
            SniResolver::new(&[]),
            Err(TlsError::NoCertificates)
        ));
    }

    #[test]
    fn debug_lists_names_not_key_material() {
        let (r, _) = fixture();
        let debug = format!("{r:?}");
        assert!(debug.contains("\"*.es.example.com\""), "{debug}");
        assert!(debug.contains("\"abc123.es.example.com\""), "{debug}");
    }
}
