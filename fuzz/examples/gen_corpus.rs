//! Writes the seed corpus under `fuzz/corpus/<target>/` and checks that every
//! PROXY seed parses as intended (so a seed cannot silently rot).
//!
//! Run from `fuzz/`: `cargo run --example gen_corpus`. Idempotent; the
//! output is deterministic, so re-running it leaves git clean.

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use portcullis::endpoint::PrivateEndpoint;
use portcullis::forward::client::chunked::{Chunked, Decoded};
use portcullis::passthrough::client_hello;
use portcullis::proxy_protocol::{Command, Limits, Parsed, parse};
use portcullis_test_kit::proxy::{Crc, FAMILY_UNIX, LOCAL, PROXY, V2};

/// The start of a TLS ClientHello, as it follows the header on the wire.
const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03";
const VPCE: &str = "vpce-0a1b2c3d4e5f67890";

/// 203.0.113.7:51234 -> 10.0.0.5:9243
fn tcp4() -> V2 {
    V2::proxy(
        (Ipv4Addr::new(203, 0, 113, 7), 51234).into(),
        (Ipv4Addr::new(10, 0, 0, 5), 9243).into(),
    )
}

/// [2001:db8::1]:443 -> [::ffff:10.0.0.5]:9243
fn tcp6() -> V2 {
    V2::proxy(
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 443).into(),
        (Ipv4Addr::new(10, 0, 0, 5).to_ipv6_mapped(), 9243).into(),
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
}

fn proxy_protocol(dir: &Path) {
    let limits = Limits::default();
    // (name, bytes, expected endpoint, expect crc verified); all must be
    // Complete, with trailing bytes left unconsumed.
    let complete: Vec<(&str, Vec<u8>, Option<PrivateEndpoint>, bool)> = vec![
        ("v1_tcp4", b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 9243\r\n".to_vec(), None, false),
        ("v1_tcp6", b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.5 443 9243\r\n".to_vec(), None, false),
        ("v1_unknown", b"PROXY UNKNOWN\r\n".to_vec(), None, false),
        (
            "v1_unknown_max",
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                .to_vec(),
            None,
            false,
        ),
        ("v2_local", V2::local().build(), None, false),
        // LOCAL ignores the family byte (health checks must not fail on it).
        ("v2_local_odd_family", V2::local().family(0x7f).build(), None, false),
        // An AWS NLB health check: LOCAL, UNSPEC, TLVs (CRC32C included)
        // right after the fixed part. The vendor TLV is not read for LOCAL.
        (
            "v2_local_aws_crc32c",
            V2::local().aws_vpce(VPCE).crc(Crc::Good).build(),
            None,
            true,
        ),
        // LOCAL from a sender that fills the address block: TLVs after it.
        ("v2_local_tcp4_crc32c", tcp4().command(LOCAL).crc(Crc::Good).build(), None, true),
        // Found by fuzzing: the shortest TCP6 line, and port 0.
        ("found_v1_tcp6_short", b"PROXY TCP6 :: :: 4 4\r\n".to_vec(), None, false),
        ("found_v1_port_zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 0 2\r\n".to_vec(), None, false),
        ("v2_unspec", V2::local().command(PROXY).build(), None, false),
        ("v2_tcp4", tcp4().build(), None, false),
        ("v2_tcp6", tcp6().build(), None, false),
        (
            "v2_unix",
            V2::local().command(PROXY).family(FAMILY_UNIX).addresses([0u8; 216]).build(),
            None,
            false,
        ),
        (
            "v2_tcp4_aws",
            tcp4().aws_vpce(VPCE).build(),
            Some(PrivateEndpoint::AwsVpce(
                portcullis::endpoint::VpceId::parse(VPCE.as_bytes()).unwrap(),
            )),
            false,
        ),
        (
            "v2_tcp6_azure",
            tcp6().azure_link_id(16777301).build(),
            Some(PrivateEndpoint::AzureLinkId(16777301)),
            false,
        ),
        (
            "v2_tcp4_gcp",
            tcp4().gcp_psc(18446744072646845332).build(),
            Some(PrivateEndpoint::GcpPscConnectionId(18446744072646845332)),
            false,
        ),
        ("v2_tcp4_crc32c", tcp4().crc(Crc::Good).build(), None, true),
        (
            "v2_tcp4_aws_crc32c",
            tcp4().aws_vpce(&VPCE.to_ascii_uppercase()).crc(Crc::Good).build(),
            Some(PrivateEndpoint::AwsVpce(
                portcullis::endpoint::VpceId::parse(VPCE.as_bytes()).unwrap(),
            )),
            true,
        ),
        (
            "v2_tcp6_other_tlvs_crc32c",
            // NOOP, ALPN, authority, unique id, then GCP.
            tcp6()
                .tlv(0x04, [0; 3])
                .tlv(0x01, *b"h2")
                .tlv(0x02, *b"abc123.es.example.com")
                .tlv(0x05, [0x42; 16])
                .gcp_psc(42)
                .crc(Crc::Good)
                .build(),
            Some(PrivateEndpoint::GcpPscConnectionId(42)),
            true,
        ),
    ];
    for (name, header, endpoint, crc) in complete {
        let mut stream = header.clone();
        stream.extend_from_slice(CLIENT_HELLO);
        match parse(&stream, &limits) {
            Ok(Parsed::Complete {
                header: h,
                consumed,
            }) => {
                assert_eq!(consumed, header.len(), "{name}");
                assert_eq!(h.endpoint, endpoint, "{name}");
                assert_eq!(h.crc32c_verified, crc, "{name}");
                if name.contains("local") {
                    assert_eq!(h.command, Command::Local, "{name}");
                }
            }
            other => panic!("{name}: {other:?}"),
        }
        write(dir, name, &stream);
    }

    // Refused or not PROXY at all: one of each interesting shape.
    let mut bad_crc = tcp4().aws_vpce("vpce-1").crc(Crc::Good).build();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    // A PROXY header with a CRC whose command nibble is flipped to LOCAL.
    let mut flipped = tcp4().aws_vpce("vpce-1").crc(Crc::Good).build();
    flipped[12] = 0x20;
    let mut bad_local_crc = V2::local().tlv(0x04, [0; 3]).crc(Crc::Good).build();
    let last = bad_local_crc.len() - 1;
    bad_local_crc[last] ^= 1;
    // An AWS TLV whose length (16) runs past the header's end.
    let mut overrun = tcp4().tlv(0xEA, [0x01]).build();
    let at = overrun.len() - 3;
    overrun[at..at + 2].copy_from_slice(&16u16.to_be_bytes());
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("bad_v2_crc32c_mismatch", bad_crc),
        ("bad_v2_local_crc32c_mismatch", bad_local_crc),
        ("bad_v2_proxy_crc32c_flipped_to_local", flipped),
        ("bad_v2_two_vendor_tlvs", tcp4().azure_link_id(1).gcp_psc(2).build()),
        ("bad_v2_tlv_overrun", overrun),
        ("bad_v1_lf_only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec()),
        ("bad_v1_port_leading_zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n".to_vec()),
        ("not_proxy_tls", CLIENT_HELLO.to_vec()),
        ("not_proxy_http", b"GET / HTTP/1.1\r\nHost: abc123.es.example.com\r\n\r\n".to_vec()),
        // One byte over the longest legal v1 line (see v1_unknown_max).
        (
            "bad_v1_too_long",
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 655350\r\n"
                .to_vec(),
        ),
        ("bad_v2_udp4", tcp4().family(0x12).build()),
        ("bad_v2_aws_empty_vpce", tcp4().aws_vpce("").build()),
        // Found by fuzzing (minimised): a keyword run on into a NUL, a lone
        // CR, a family refused at byte 13, a length over the cap refused
        // before any payload arrives.
        ("found_v1_unknown_nul", b"PROXY UNKNOWN\x00\r\n".to_vec()),
        ("found_v1_lone_cr", b"PROXY \r&\n".to_vec()),
        ("found_v2_family_02", b"\r\n\r\n\x00\r\nQUIT\n!\x02".to_vec()),
        ("found_v2_len_over_cap", b"\r\n\r\n\x00\r\nQUIT\n!\x00\rP".to_vec()),
    ];
    for (name, bytes) in refused {
        match parse(&bytes, &limits) {
            Ok(Parsed::Complete { .. }) => panic!("{name}: unexpectedly complete"),
            _ => write(dir, name, &bytes),
        }
    }
}

fn snapshot(dir: &Path, root: &Path) {
    let example = fs::read(root.join("config/snapshot.example.json")).expect("example snapshot");
    portcullis::policy::parse_snapshot(&example).expect("example snapshot is valid");
    write(dir, "example.json", &example);
    let valid: &[(&str, &str)] = &[
        (
            "minimal.json",
            r#"{"version":1,"deployments":[{"id":"a","region":"gcp-x","resources":{"es":{"backends":["[::1]:1"]}}}],"policies":[]}"#,
        ),
        (
            "dry_run_mapped.json",
            r#"{"version":2,"deployments":[
  {"id":"d0","alias":"x","region":"aws-eu-west-1","enforcement":"dry_run",
   "resources":{"es":{"backends":["10.0.0.1:9200","10.0.0.2:9200"]},"apm":{"backends":["10.0.0.3:8200"]}},
   "policies":["ips","more-ips","ips","empty-vpce"]},
  {"id":"d1","region":"aws-eu-west-1","resources":{"kb":{"backends":["10.0.0.4:5601"]}},"policies":["vpce"]},
  {"id":"d2","region":"azure-westeurope","resources":{"fleet":{"backends":["10.0.0.5:8220"]}},"policies":["az"]},
  {"id":"d3","region":"gcp-europe-west1","resources":{"ent":{"backends":["10.0.0.6:3002"]}},"policies":["psc"],"enforcement":null}
 ],"policies":[
  {"id":"ips","type":"ip","region":"aws-eu-west-1","name":"n","description":"d","rules":[
    {"source":"::ffff:10.0.0.0/104"},{"source":"0.0.0.0/0"},{"source":"2001:db8::/127"},{"source":"192.168.1.1"}]},
  {"id":"more-ips","type":"ip","region":"aws-eu-west-1","include_by_default":true,"rules":[{"source":"10.1.0.0/16","description":"x"}]},
  {"id":"empty-vpce","type":"vpce","region":"aws-eu-west-1","rules":[]},
  {"id":"vpce","type":"vpce","region":"aws-eu-west-1","rules":[{"source":"VPCE-ABC"},{"source":"vpce-0a1b2c3d4e5f67890"}]},
  {"id":"az","type":"azure_private_endpoint","region":"azure-westeurope","rules":[{"link_id":0},{"link_id":4294967295,"azure_endpoint_name":"pe"}]},
  {"id":"psc","type":"gcp_private_service_connect_endpoint","region":"gcp-europe-west1","rules":[{"source":"0"},{"source":18446744073709551615}]}
 ]}"#,
        ),
        // Structure byte mutation rarely builds (coverage showed it unmet):
        // deployments sharing one policy set (written in another order,
        // with a duplicate), a set of more than four policies, several
        // `ip` policies merged into one matcher, an endpoint id listed by
        // two policies, a deployment whose only policy filters nothing.
        (
            "shared_and_wide_sets.json",
            r#"{"version":9,"deployments":[
  {"id":"a1","region":"aws-us-east-1","resources":{"es":{"backends":["10.0.0.1:9200"]}},
   "policies":["ip-a","ip-b","ip-c","vpce-a","vpce-b","empty"]},
  {"id":"a2","alias":"two","region":"aws-us-east-1","resources":{"kb":{"backends":["10.0.0.2:5601"]}},
   "policies":["empty","vpce-b","vpce-a","ip-c","ip-b","ip-a","ip-a"]},
  {"id":"a3","region":"aws-us-east-1","enforcement":"dry_run","resources":{"apm":{"backends":["[2001:db8::1]:8200"]}},
   "policies":["ip-b","ip-a"]},
  {"id":"a4","region":"aws-us-east-1","resources":{"es":{"backends":["10.0.0.4:9200"]}},"policies":["ip-a","ip-b"]},
  {"id":"a5","region":"aws-us-east-1","resources":{"es":{"backends":["10.0.0.5:9200"]}},"policies":["empty"]},
  {"id":"a6","region":"aws-us-east-1","resources":{"es":{"backends":["10.0.0.6:9200"]}}}
 ],"policies":[
  {"id":"ip-a","type":"ip","region":"aws-us-east-1","rules":[{"source":"10.0.0.0/8"},{"source":"10.1.0.0/16"},{"source":"2001:db8::/32"}]},
  {"id":"ip-b","type":"ip","region":"aws-us-east-1","rules":[{"source":"10.1.2.0/24"},{"source":"9.255.255.255"},{"source":"11.0.0.0/8"},{"source":"::/0"}]},
  {"id":"ip-c","type":"ip","region":"aws-us-east-1","rules":[]},
  {"id":"vpce-a","type":"vpce","region":"aws-us-east-1","rules":[{"source":"vpce-0a1b2c3d4e5f67890"},{"source":"vpce-shared"}]},
  {"id":"vpce-b","type":"vpce","region":"aws-us-east-1","rules":[{"source":"VPCE-SHARED"},{"source":"vpce-b-only"}]},
  {"id":"empty","type":"vpce","region":"aws-us-east-1","rules":[]}
 ]}"#,
        ),
        // CIDR shapes at the edges of the range flattening: a single
        // address at the first or last address of an enclosing block,
        // adjacent and duplicate blocks, the whole space, in one policy and
        // merged across two.
        (
            "ip_edges.json",
            r#"{"version":5,"deployments":[
  {"id":"e1","region":"gcp-us-central1","resources":{"es":{"backends":["127.0.0.1:9200"]}},"policies":["edges","more-edges"]},
  {"id":"e2","region":"gcp-us-central1","resources":{"es":{"backends":["127.0.0.1:9201"]}},"policies":["edges"]}
 ],"policies":[
  {"id":"edges","type":"ip","region":"gcp-us-central1","rules":[
    {"source":"10.0.0.0/31"},{"source":"10.0.0.1"},{"source":"10.0.0.2/31"},{"source":"10.0.0.0/30"},
    {"source":"192.0.2.0/24"},{"source":"192.0.2.0"},{"source":"192.0.2.255/32"},{"source":"192.0.2.0/24"},
    {"source":"2001:db8::/127"},{"source":"2001:db8::1/128"},{"source":"::/0"},{"source":"255.255.255.255"}]},
  {"id":"more-edges","type":"ip","region":"gcp-us-central1","rules":[
    {"source":"10.0.0.3"},{"source":"10.0.0.0/30"},{"source":"0.0.0.0/0"},{"source":"192.0.2.128/25"}]}
 ]}"#,
        ),
    ];
    for (name, json) in valid {
        portcullis::policy::parse_snapshot(json.as_bytes())
            .unwrap_or_else(|e| panic!("{name} should be valid: {e}"));
        write(dir, name, json.as_bytes());
    }
    let invalid: &[(&str, &str)] = &[
        (
            "bad_duplicate_key.json",
            r#"{"version":1,"deployments":[],"policies":[],"policies":[]}"#,
        ),
        (
            "bad_many_errors.json",
            r#"{"version":0,"deployments":[{"id":"A","alias":"-x","region":"aws-","enforcement":"off","resources":{"es":{"backends":["1.2.3.4:0","x"]},"zz":{}},"policies":["nope","p"]}],
 "policies":[{"id":"p","type":"vpce","region":"gcp-x","rules":[{"source":"vpc-1"}]},{"id":"p","type":"ip","region":"aws-x","rules":[{"source":"10.0.0.1/8"},{"source":"1.2.3.4/33"}]},{"id":"q","type":"gcp_private_service_connect_endpoint","region":"gcp-x","rules":[{"source":"-1"},{"source":1.5}]}],"polices":[]}"#,
        ),
        ("bad_not_json.json", r#"{"version":1,"deployments":[{"#),
        // Empty lists, nulls and non-strings where strings belong.
        (
            "bad_empty_and_null.json",
            r#"{"version":3,"deployments":[
  {"id":"x","region":"aws-us-east-1","resources":{"es":{"backends":[]},"kb":{"backends":[null,9200,"10.0.0.1:9200","10.0.0.1:9200"]}},"policies":[null,"p","p"]},
  {"id":"y","alias":"x","region":"azure-eastus","resources":{},"policies":"p"}
 ],"policies":[{"id":"p","type":"ip","region":"aws-us-east-1","rules":[null,{"source":null},{"source":"::ffff:1.2.3.4/128"}]}]}"#,
        ),
    ];
    for (name, json) in invalid {
        assert!(
            portcullis::policy::parse_snapshot(json.as_bytes()).is_err(),
            "{name} should be refused"
        );
        write(dir, name, json.as_bytes());
    }
}

/// Route seeds: the first byte's low bits pick the fields (see the target).
fn route(dir: &Path) {
    let seeds: &[(&str, &[u8])] = &[
        ("host_id", b"1abc123.es.example.com"),
        ("host_alias_product_port", b"1MY-ALIAS.kb.Example.com:9243"),
        ("host_id_only_zone", b"1kb.example.com."),
        (
            "host_sni_misdirected",
            b"5abc123.example.com\n\nkb.example.com",
        ),
        (
            "found_cluster",
            b"3127.0.0.1:9243\n  0a1b2c3d4e5f40718293a4b5c6d7e8f9.fleet ",
        ),
        ("found_cluster_alias", b"2\nexample.apm"),
        (
            "aws_zone",
            b"7found.kb.eu-west-1.aws.found.io\nes\nes.kb.eu-west-1.aws.found.io",
        ),
        ("any_zone", b"9es.kb.anything.example.org"),
        ("any_zone_ipv6", b"?[::1]:443\nabc123\nabc123.kb.x"),
        // Found by fuzzing: U+0085 (Unicode whitespace, which `trim` strips)
        // and a non-ASCII letter (which ASCII case folding leaves alone).
        ("found_cluster_nel", b":\n\xc2\x85"),
        ("found_cluster_non_ascii", b"2\n\xce\x9c"),
    ];
    for (name, bytes) in seeds {
        write(dir, name, bytes);
    }
}

/// `bytes` behind their length as a big-endian integer of `width` bytes,
/// as TLS nests every vector of a ClientHello: 3 bytes for the handshake
/// message, 2 for the record, the extensions and the names in them.
fn length_prefixed(width: usize, bytes: &[u8]) -> Vec<u8> {
    let len = u32::try_from(bytes.len()).unwrap().to_be_bytes();
    assert!(
        len[..4 - width].iter().all(|&b| b == 0),
        "too long for {width} bytes"
    );
    [&len[4 - width..], bytes].concat()
}

/// A ClientHello record with `extensions`, built by hand: TLS 1.2
/// version, fixed random, one cipher suite, null compression.
fn client_hello_record(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let exts: Vec<u8> = extensions
        .iter()
        .flat_map(|(kind, data)| [&kind.to_be_bytes()[..], &length_prefixed(2, data)].concat())
        .collect();
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x5a; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&length_prefixed(2, &exts));
    let handshake = [&[1][..], &length_prefixed(3, &body)].concat();
    [&[0x16, 3, 1][..], &length_prefixed(2, &handshake)].concat()
}

/// `server_name` extension data with one `host_name`.
fn server_name(host: &[u8]) -> Vec<u8> {
    let list = [&[0][..], &length_prefixed(2, host)].concat();
    length_prefixed(2, &list)
}

/// ClientHello seeds, each checked against the outcome its name promises.
fn client_hello(dir: &Path) {
    let sni = |h: &[u8]| (0u16, server_name(h));
    let alpn = (16u16, b"\x00\x0c\x02h2\x08http/1.1".to_vec());
    let groups = (10u16, vec![0, 4, 0, 29, 0, 23]);
    let mut split = client_hello_record(&[sni(b"abc123.es.example.com")]);
    split.truncate(60);
    let seeds: Vec<(&str, Vec<u8>, Result<Option<&str>, ()>)> = vec![
        (
            "sni",
            client_hello_record(&[groups.clone(), sni(b"abc123.es.example.com"), alpn.clone()]),
            Ok(Some("abc123.es.example.com")),
        ),
        ("no_sni", client_hello_record(&[groups, alpn]), Ok(None)),
        ("no_extensions", client_hello_record(&[]), Ok(None)),
        (
            "bad_sni_twice",
            client_hello_record(&[sni(b"a.es.test"), sni(b"b.es.test")]),
            Err(()),
        ),
        ("bad_not_tls", b"GET / HTTP/1.1\r\n\r\n".to_vec(), Err(())),
    ];
    for (name, bytes, want) in &seeds {
        let got = match client_hello::parse(bytes) {
            Ok(client_hello::Parsed::Complete { sni }) => Ok(sni),
            Ok(client_hello::Parsed::Incomplete { .. }) => panic!("seed {name} is incomplete"),
            Err(_) => Err(()),
        };
        assert_eq!(&got, want, "seed {name}");
        write(dir, name, bytes);
    }
    // A truncated one: every prefix of a ClientHello is incomplete.
    assert!(matches!(
        client_hello::parse(&split),
        Ok(client_hello::Parsed::Incomplete { .. })
    ));
    write(dir, "truncated", &split);
}

/// Chunked response bodies (the first byte seeds the target's read sizes),
/// each checked to decode to the data its name promises, or to fail.
fn chunked(dir: &Path) {
    let seeds: &[(&str, &[u8], Option<&[u8]>)] = &[
        ("simple", b"\x075\r\nhello\r\n0\r\n\r\n" as &[u8], Some(b"hello" as &[u8])),
        ("two_chunks", b"\x01a\r\n0123456789\r\n5\r\nabcde\r\n0\r\n\r\n", Some(b"0123456789abcde")),
        ("extensions", b"\x02A;name=value;q=\"a;b\"\r\n0123456789\r\n0;last\r\n\r\n", Some(b"0123456789")),
        ("trailers", b"\x033\r\nabc\r\n0\r\nx-trailer: 1\r\ny: 2\r\n\r\nHTTP/1.1 200 OK\r\n", Some(b"abc")),
        ("leading_zeros", b"\x04000003 \r\nabc\r\n00\r\n\r\n", Some(b"abc")),
        ("bad_bare_lf", b"\x053\nabc\r\n0\r\n\r\n", None),
        ("bad_overflow", b"\x0610000000000000000\r\n", None),
        ("bad_no_crlf_after_data", b"\x073\r\nabcX\r\n0\r\n\r\n", None),
    ];
    for (name, bytes, want) in seeds {
        let mut decoder = Chunked::new();
        let mut buf = Default::default();
        Extend::extend(&mut buf, bytes[1..].iter().copied());
        let mut data = Vec::new();
        let ended = loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Decoded::Data(d))) => data.extend_from_slice(&d),
                Ok(Some(Decoded::End)) => break true,
                Ok(None) | Err(_) => break false,
            }
        };
        assert_eq!(ended.then_some(data.as_slice()), *want, "seed {name}");
        write(dir, name, bytes);
    }
}

/// Backend responses (the first byte picks GET, even, or HEAD, odd), each
/// checked to parse the way its name says.
fn backend_response(dir: &Path) {
    use portcullis::forward::client::head::{BodyLength, parse_response};
    let seeds: &[(&str, &[u8], Option<BodyLength>)] = &[
        ("length", b"\x00HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}", Some(BodyLength::Exact(2))),
        ("chunked", b"\x00HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nt: 1\r\n\r\n", Some(BodyLength::Chunked)),
        ("until_close", b"\x00HTTP/1.0 200 OK\r\n\r\nall of it", Some(BodyLength::UntilClose)),
        ("head", b"\x01HTTP/1.1 200 OK\r\ncontent-length: 600\r\n\r\n", Some(BodyLength::Empty)),
        ("interim", b"\x00HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", Some(BodyLength::Empty)),
        ("te_and_length", b"\x00HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", Some(BodyLength::Chunked)),
        ("bad_two_lengths", b"\x00HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd", None),
    ];
    for (name, bytes, want) in seeds {
        let method = if bytes[0] & 1 == 0 { http::Method::GET } else { http::Method::HEAD };
        let mut buf = bytes::BytesMut::from(&bytes[1..]);
        let parsed = parse_response(&mut buf, &method, &mut Default::default(), &mut Vec::new());
        let got = parsed.ok().flatten().map(|head| head.length);
        assert_eq!(got, *want, "seed {name}");
        write(dir, name, bytes);
    }
}

fn main() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = fuzz.parent().expect("fuzz/ has a parent");
    for target in [
        "proxy_protocol",
        "snapshot",
        "route",
        "client_hello",
        "chunked",
        "backend_response",
    ] {
        let dir = fuzz.join("corpus").join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        match target {
            "proxy_protocol" => proxy_protocol(&dir),
            "snapshot" => snapshot(&dir, root),
            "client_hello" => client_hello(&dir),
            "chunked" => chunked(&dir),
            "backend_response" => backend_response(&dir),
            _ => route(&dir),
        }
        println!("wrote {}", dir.display());
    }
}
