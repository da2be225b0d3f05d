//! Loading certificates and keys, and the shape of the built config.

use std::path::{Path, PathBuf};

use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256};

use super::testing::{TempDir, TestCa, der_sequence, unwrap_pkcs8};
use super::*;

fn files(cert: &Path, key: &Path) -> Settings {
    Settings {
        certificates: vec![CertificateFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            ocsp: None,
        }],
        ..Settings::default()
    }
}

/// The error from building a config out of `cert` and `key` file contents.
fn file_error(cert: &str, key: &str) -> (TlsError, String, String) {
    let dir = TempDir::new();
    let cert_path = dir.write("cert.pem", cert);
    let key_path = dir.write("key.pem", key);
    let err = server_config(&files(&cert_path, &key_path)).expect_err("config must fail");
    let show = |p: &Path| p.display().to_string();
    (err, show(&cert_path), show(&key_path))
}

#[test]
fn loads_every_supported_key_type() {
    let ca = TestCa::new();
    for alg in [
        &PKCS_ECDSA_P256_SHA256,
        &PKCS_ECDSA_P384_SHA384,
        &PKCS_ED25519,
        &PKCS_RSA_SHA256,
    ] {
        let leaf = ca.leaf_for(&["x.es.example.com"], alg);
        let loaded = leaf.load();
        assert_eq!(loaded.dns_names, ["x.es.example.com"], "{alg:?}");
        assert_eq!(loaded.certified_key.cert[0], leaf.der);
    }
}

#[test]
fn loads_sec1_and_pkcs1_keys() {
    let ca = TestCa::new();
    let ec = ca.leaf_for(&["ec.example.com"], &PKCS_ECDSA_P256_SHA256);
    let rsa = ca.leaf_for(&["rsa.example.com"], &PKCS_RSA_SHA256);
    for (leaf, label) in [(&ec, "EC PRIVATE KEY"), (&rsa, "RSA PRIVATE KEY")] {
        let key = unwrap_pkcs8(&leaf.key_pem, label);
        assert!(key.contains(label));
        load_certified_key(leaf.cert_pem.as_bytes(), key.as_bytes(), label)
            .unwrap_or_else(|e| panic!("{label}: {e:?}"));
    }
}

#[test]
fn loads_chain_leaf_first_and_skips_other_blocks() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["a.example.com"]);
    let ca_pem = ca.leaf(&["ca-stand-in.example.com"]).cert_pem;
    // A combined file: leaf, intermediate, and the key itself.
    let bundle = format!("{}{}{}", leaf.cert_pem, ca_pem, leaf.key_pem);
    let loaded =
        load_certified_key(bundle.as_bytes(), leaf.key_pem.as_bytes(), "bundle").expect("loads");
    assert_eq!(loaded.certified_key.cert.len(), 2);
    assert_eq!(loaded.certified_key.cert[0], leaf.der);
}

#[test]
fn missing_files_are_named() {
    let dir = TempDir::new();
    let leaf = TestCa::new().leaf(&["a.example.com"]);
    let key = dir.write("key.pem", &leaf.key_pem);
    let cert = dir.write("cert.pem", &leaf.cert_pem);
    let missing = dir.path("absent.pem");

    for settings in [files(&missing, &key), files(&cert, &missing)] {
        let err = server_config(&settings).expect_err("missing file");
        assert!(matches!(err, TlsError::Read { ref path, .. } if *path == missing));
        assert!(err.to_string().contains("absent.pem"), "{err}");
    }
}

#[test]
fn file_without_certificate_is_named() {
    let leaf = TestCa::new().leaf(&["a.example.com"]);
    let (err, cert, _) = file_error(&leaf.key_pem, &leaf.key_pem);
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("no CERTIFICATE found in {cert}"));
}

#[test]
fn file_without_key_is_named() {
    let leaf = TestCa::new().leaf(&["a.example.com"]);
    let (err, _, key) = file_error(&leaf.cert_pem, &leaf.cert_pem);
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    assert!(
        err.to_string().ends_with(&format!("found in {key}")),
        "{err}"
    );
}

#[test]
fn mismatched_key_names_both_files() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["a.example.com"]);
    let other = ca.leaf(&["a.example.com"]);
    let (err, cert, key) = file_error(&leaf.cert_pem, &other.key_pem);
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("private key in {key} does not match the certificate in {cert}")
    );
}

#[test]
fn ambiguous_and_malformed_pem_are_rejected() {
    let leaf = TestCa::new().leaf(&["a.example.com"]);

    let two_keys = format!("{}{}", leaf.key_pem, leaf.key_pem);
    let (err, _, key) = file_error(&leaf.cert_pem, &two_keys);
    assert!(
        matches!(err, TlsError::MultiplePrivateKeys { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&key));

    let truncated = &leaf.cert_pem[..leaf.cert_pem.len() / 2];
    let (err, cert, _) = file_error(truncated, &leaf.key_pem);
    assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
    assert!(err.to_string().contains(&cert));

    let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let (err, cert, _) = file_error(garbage, &leaf.key_pem);
    assert!(matches!(err, TlsError::Certificate { .. }), "{err:?}");
    assert!(err.to_string().contains(&cert));
}

#[test]
fn no_certificates_configured_is_an_error() {
    let err = server_config(&Settings::default()).expect_err("empty");
    assert!(matches!(err, TlsError::NoCertificates));
}

#[test]
fn self_signed_pair_loads_and_hides_its_key_from_debug() {
    let names = vec!["demo.es.example.com".to_owned(), "127.0.0.1".to_owned()];
    let pair = self_signed(&names).expect("generates");
    let loaded = load_certified_key(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes(), "demo")
        .expect("loads");
    assert_eq!(loaded.dns_names, ["demo.es.example.com"]);
    assert!(!format!("{pair:?}").contains("PRIVATE KEY"));
}

#[test]
fn config_has_the_promised_shape() {
    let leaf = TestCa::new().leaf(&["a.example.com"]);
    let pems = [leaf.pems()];

    let config = server_config_from_pems(&pems, &Settings::default()).expect("config");
    assert_eq!(
        config.alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    // Server order by default: AES-128-GCM first (see `CipherPreference`).
    assert!(config.ignore_client_order);
    assert_eq!(config.max_fragment_size, None);
    assert_eq!(config.max_early_data_size, 0);
    assert!(config.ticketer.enabled());
    assert!(config.session_storage.can_cache());

    let stateless_off = Settings {
        session_tickets: false,
        session_cache_size: 0,
        ..Settings::default()
    };
    let config = server_config_from_pems(&pems, &stateless_off).expect("config");
    assert!(!config.ticketer.enabled());
    assert!(!config.session_storage.can_cache());
    assert_eq!(config.send_tls13_tickets, 0);
}

#[test]
fn in_memory_pairs_are_named_by_index() {
    let ca = TestCa::new();
    let good = ca.leaf(&["a.example.com"]).pems();
    let bad = (
        ca.leaf(&["b.example.com"]).cert_pem.into_bytes(),
        Vec::new(),
    );
    let err = server_config_from_pems(&[good, bad], &Settings::default()).expect_err("no key");
    assert_eq!(
        err.to_string(),
        "no private key (PKCS#8, SEC1 or PKCS#1) found in pems[1]"
    );
}

/// Settings for one certificate with an OCSP response file holding `ocsp`
/// (or naming a file that does not exist, for `None`); returns the OCSP path.
fn with_ocsp(dir: &TempDir, ocsp: Option<&[u8]>) -> (Settings, PathBuf) {
    let leaf = TestCa::new().leaf(&["a.example.com"]);
    let mut settings = files(
        &dir.write("cert.pem", &leaf.cert_pem),
        &dir.write("key.pem", &leaf.key_pem),
    );
    let path = match ocsp {
        Some(contents) => dir.write("a.ocsp.der", contents),
        None => dir.path("absent.ocsp.der"),
    };
    settings.certificates[0].ocsp = Some(path.clone());
    (settings, path)
}

#[test]
fn ocsp_file_is_attached_to_its_certificate_as_is() {
    let dir = TempDir::new();
    let response = der_sequence(1500);
    let (mut settings, _) = with_ocsp(&dir, Some(&response));
    let provider = crypto_provider();

    let loaded = certs::load_files(&settings.certificates[0], &provider).expect("loads");
    assert_eq!(loaded.certified_key.ocsp.as_deref(), Some(&response[..]));
    server_config(&settings).expect("config with OCSP");

    settings.certificates[0].ocsp = None;
    let loaded = certs::load_files(&settings.certificates[0], &provider).expect("loads");
    assert_eq!(loaded.certified_key.ocsp, None);
}

#[test]
fn missing_ocsp_file_is_named() {
    let dir = TempDir::new();
    let (settings, missing) = with_ocsp(&dir, None);
    let err = server_config(&settings).expect_err("missing OCSP file");
    assert!(
        matches!(err, TlsError::Read { ref path, .. } if *path == missing),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("cannot read {}", missing.display())
    );
}

#[test]
fn unusable_ocsp_files_are_named_with_the_problem() {
    let mut truncated = der_sequence(1500);
    truncated.truncate(1000);
    let two = [der_sequence(10), der_sequence(10)].concat();
    let cases: [(&[u8], OcspProblem); 7] = [
        (b"", OcspProblem::Empty),
        (
            b"MIIBvQoBAKCCAbYw",
            OcspProblem::NotSequence { first_byte: b'M' },
        ),
        (
            &truncated,
            OcspProblem::Truncated {
                declared: 1500,
                actual: 996,
            },
        ),
        (&two, OcspProblem::TrailingData { extra: 12 }),
        (&[0x30], OcspProblem::BadLength),
        // Indefinite length is BER, not DER.
        (&[0x30, 0x80, 0x00, 0x00], OcspProblem::BadLength),
        (
            &der_sequence(MAX_OCSP_RESPONSE_BYTES),
            OcspProblem::TooLarge {
                len: MAX_OCSP_RESPONSE_BYTES + 4,
                max: MAX_OCSP_RESPONSE_BYTES,
            },
        ),
    ];
    for (contents, want) in cases {
        let dir = TempDir::new();
        let (settings, file) = with_ocsp(&dir, Some(contents));
        let err = server_config(&settings).expect_err("bad OCSP file");
        assert!(
            matches!(err, TlsError::Ocsp { ref path, problem } if *path == file && problem == want),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("OCSP response file {} is unusable: {want}", file.display())
        );
    }
}

#[test]
fn ocsp_problems_say_what_is_wrong() {
    let show = |p: OcspProblem| p.to_string();
    assert_eq!(show(OcspProblem::Empty), "it is empty");
    assert!(
        show(OcspProblem::NotSequence { first_byte: b'-' }).starts_with(
            "it starts with byte 0x2d, not 0x30: a DER-encoded OCSPResponse is an ASN.1 SEQUENCE"
        )
    );
    assert_eq!(
        show(OcspProblem::Truncated {
            declared: 9,
            actual: 2
        }),
        "it is truncated: its DER SEQUENCE declares 9 bytes of content but only 2 follow"
    );
}

#[test]
fn ocsp_size_limit_is_what_tls_13_can_carry() {
    // 4 header bytes (0x30 0x82 and two length bytes) plus the content.
    let largest = der_sequence(MAX_OCSP_RESPONSE_BYTES - 4);
    assert_eq!(largest.len(), MAX_OCSP_RESPONSE_BYTES);
    assert_eq!(certs::check_ocsp(&largest), Ok(()));
    assert!(matches!(
        certs::check_ocsp(&der_sequence(MAX_OCSP_RESPONSE_BYTES - 3)),
        Err(OcspProblem::TooLarge { .. })
    ));
    // Every length form is accepted when it matches.
    for len in [0, 5, 0x7f, 0x80, 0xff, 0x100, 1500] {
        assert_eq!(certs::check_ocsp(&der_sequence(len)), Ok(()), "{len}");
    }
}
