//! PROXY protocol on the data plane, end to end (SPEC §1.4-1.6, §4): who
//! the proxy believes the client is, through real v1/v2 headers, cloud
//! vendor TLVs, CRC32C, trust and timeouts, as a client sees it (served,
//! 403, or a closed connection) and as the backend sees it
//! (`X-Forwarded-For`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use http::{Method, StatusCode};
use portcullis_test_kit::harness::*;

use super::data_plane::fixture_with;

const UNTRUSTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A private VPC address: what a load balancer reports for private-link
/// clients.
const VPC_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 literal")
}

/// `reply` was forwarded with `X-Forwarded-For: forwarded`, or, when
/// `forwarded` is `None`, was the exact 403; `case` names the request.
fn assert_forwarded_or_denied(reply: &Reply, forwarded: Option<&str>, case: &dyn fmt::Debug) {
    match forwarded {
        Some(client) => assert_eq!(reply.echo().forwarded_for(), [client], "{case:?}"),
        None => {
            assert_eq!(reply.status, StatusCode::FORBIDDEN, "{case:?}");
            reply.assert_local(StatusCode::FORBIDDEN, Some(FORBIDDEN_BODY));
        }
    }
}

/// The connection is closed before any response, and nothing reaches a
/// backend.
async fn assert_refused(f: &Fixture, client: ClientBuilder, name: &str) {
    let before = f.backend_requests();
    if let Ok(mut conn) = client.try_connect().await {
        let req = conn.request(Method::GET, name, "/").body(empty()).unwrap();
        if let Ok(reply) = conn.send(req).await {
            panic!("served {}: {}", reply.status, reply.text());
        }
    }
    assert_eq!(f.backend_requests(), before, "a backend was reached");
}

/// The raw connection is closed without a byte sent back; returns when.
async fn assert_closed_silently(f: &Fixture, bind: Option<IpAddr>, bytes: &[u8]) -> Duration {
    let mut raw = Raw::connect(f.proxy.addr, bind).await;
    raw.write(bytes).await;
    let closed = raw.closed_within(Duration::from_secs(5)).await;
    assert_eq!(closed.bytes_received, 0, "the proxy answered");
    closed.after
}

#[test]
fn harness_crc32c_is_castagnoli() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    let header = V2::from(ALLOWED_V4).aws_vpce(VPCE).crc(Crc::Good).build();
    let at = header.len() - 4;
    let mut zeroed = header.clone();
    zeroed[at..].fill(0);
    assert_eq!(
        portcullis::proxy_protocol::crc32c::crc32c(&[zeroed.as_slice()]).to_be_bytes(),
        header[at..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_source_is_the_client_for_ip_policies() {
    let f = Fixture::start().await;
    let echo = f.get(v1_from(ALLOWED_V4), &host(OFFICE), "/").await.echo();
    assert_eq!(echo.forwarded_for(), ["203.0.113.7"]);
    f.get(v1_from(DENIED_V4), &host(OFFICE), "/")
        .await
        .assert_local(StatusCode::FORBIDDEN, Some(FORBIDDEN_BODY));
    let echo = f
        .get(v1_from(v6("2001:db8::5")), &host(OFFICE), "/")
        .await
        .echo();
    assert_eq!(echo.forwarded_for(), ["2001:db8::5"]);
    assert_eq!(f.es.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_tcp4_and_tcp6_sources_are_the_client_for_ip_policies() {
    let f = Fixture::start().await;
    // The address the backend is told, or `None`: denied.
    for (source, forwarded) in [
        (IpAddr::from(ALLOWED_V4), Some("203.0.113.7")),
        (IpAddr::from(DENIED_V4), None),
        (v6("2001:db8::5").into(), Some("2001:db8::5")),
        (v6("2001:db9::5").into(), None),
        // IPv4-mapped IPv6 is matched (and forwarded) as IPv4.
        (v6("::ffff:203.0.113.7").into(), Some("203.0.113.7")),
    ] {
        let reply = f.get(V2::from(source).build(), &host(OFFICE), "/").await;
        assert_forwarded_or_denied(&reply, forwarded, &source);
    }
    assert_eq!(f.es.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_endpoint_tlvs_are_matched_by_private_connection_policies() {
    let f = Fixture::start().await;
    let from_vpc = || V2::from(VPC_CLIENT);
    let upper = VPCE.to_ascii_uppercase();
    for (header, deployment, allowed) in [
        (from_vpc().aws_vpce(VPCE), MIXED, true),
        (from_vpc().aws_vpce(&upper), MIXED, true),
        (from_vpc().aws_vpce(VPCE), AWS_OTHER, false),
        (from_vpc().azure_link_id(AZURE_LINK), AZURE, true),
        (from_vpc().azure_link_id(AZURE_LINK), AZURE_OTHER, false),
        (from_vpc().gcp_psc(GCP_PSC), GCP, true),
        (from_vpc().gcp_psc(GCP_PSC), GCP_OTHER, false),
        // No filtering policy: private-link traffic is allowed too.
        (from_vpc().aws_vpce(OTHER_VPCE), OPEN, true),
        // Unknown TLVs are skipped.
        (from_vpc().tlv(0xF5, *b"opaque").aws_vpce(VPCE), MIXED, true),
    ] {
        let reply = f.get(header.build(), &host(deployment), "/").await;
        let forwarded = allowed.then_some("10.1.2.3");
        assert_forwarded_or_denied(&reply, forwarded, &(deployment, &header));
    }
    assert_eq!(f.es.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_rules_never_admit_private_endpoint_traffic() {
    let f = Fixture::start().await;
    // The source is in office-ips, but the connection came through an
    // endpoint: only a private connection rule can admit it.
    let via_endpoint = V2::from(ALLOWED_V4).aws_vpce(OTHER_VPCE).build();
    f.get(via_endpoint, &host(MIXED), "/")
        .await
        .assert_local(StatusCode::FORBIDDEN, Some(FORBIDDEN_BODY));
    let via_listed = V2::from(ALLOWED_V4).aws_vpce(VPCE).build();
    f.get(via_listed, &host(OFFICE), "/")
        .await
        .assert_local(StatusCode::FORBIDDEN, Some(FORBIDDEN_BODY));
    // The same source without an endpoint is allowed.
    f.get(V2::from(ALLOWED_V4).build(), &host(MIXED), "/")
        .await
        .echo();
    assert_eq!(f.es.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crc32c_is_verified() {
    let f = Fixture::start().await;
    let good = V2::from(VPC_CLIENT).aws_vpce(VPCE).crc(Crc::Good);
    let echo = f.get(good.build(), &host(MIXED), "/").await.echo();
    assert_eq!(echo.forwarded_for(), ["10.1.2.3"]);

    let bad = V2::from(VPC_CLIENT).aws_vpce(VPCE).crc(Crc::Bad).build();
    assert_refused(
        &f,
        f.client(&host(MIXED)).preamble(bad.clone()),
        &host(MIXED),
    )
    .await;
    assert_closed_silently(&f, None, &bad).await;
    assert_eq!(f.es.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_vendor_tlvs_close_the_connection() {
    let f = Fixture::start().await;
    for header in [
        V2::from(VPC_CLIENT).tlv(TLV_AZURE, [0x01, 0x55, 0x00, 0x00]),
        V2::from(VPC_CLIENT).tlv(TLV_AWS, *b"\x02vpce-1"),
        V2::from(VPC_CLIENT).tlv(TLV_GCP, [0; 7]),
        // Two endpoints would make the client's identity ambiguous.
        V2::from(VPC_CLIENT).aws_vpce(VPCE).aws_vpce(OTHER_VPCE),
    ] {
        let client = f.client(&host(OPEN)).preamble(header.build());
        assert_refused(&f, client, &host(OPEN)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_or_unknown_header_makes_the_tcp_peer_the_client() {
    let f = Fixture::start().await;
    for header in [V2::local().build(), b"PROXY UNKNOWN\r\n".to_vec()] {
        let echo = f.get(header, &host(OPEN), "/").await.echo();
        assert_eq!(echo.forwarded_for(), ["127.0.0.1"]);
    }
    // The peer, not some address in the header, is what policies see.
    f.get(V2::local().build(), &host(OFFICE), "/")
        .await
        .assert_local(StatusCode::FORBIDDEN, Some(FORBIDDEN_BODY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_sender_is_refused() {
    let f = Fixture::start().await;
    let client = f
        .client(&host(OPEN))
        .bind(UNTRUSTED)
        .preamble(v1_from(ALLOWED_V4));
    assert_refused(&f, client, &host(OPEN)).await;
    assert_closed_silently(&f, Some(UNTRUSTED), &V2::from(ALLOWED_V4).build()).await;
    assert_eq!(f.es.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_mode_refuses_a_connection_without_a_header() {
    let f = Fixture::start().await;
    assert_refused(&f, f.client(&host(OPEN)), &host(OPEN)).await;
    let after = assert_closed_silently(&f, None, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        after < Duration::from_secs(2),
        "closed only after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_mode_uses_a_header_when_present() {
    let f = fixture_with(|o| o.mode = "lenient").await;
    let echo = f.get(Vec::new(), &host(OPEN), "/").await.echo();
    assert_eq!(echo.forwarded_for(), ["127.0.0.1"]);
    let echo = f.get(v1_from(ALLOWED_V4), &host(OFFICE), "/").await.echo();
    assert_eq!(echo.forwarded_for(), ["203.0.113.7"]);
    let echo = f
        .get(V2::from(ALLOWED_V4).build(), &host(OFFICE), "/")
        .await
        .echo();
    assert_eq!(echo.forwarded_for(), ["203.0.113.7"]);

    // An untrusted peer is served as itself, but may not send a header.
    let mut conn = f.client(&host(OPEN)).bind(UNTRUSTED).connect().await;
    let echo = conn.get(&host(OPEN), "/").await.echo();
    assert_eq!(echo.forwarded_for(), ["127.0.0.2"]);
    let client = f
        .client(&host(OPEN))
        .bind(UNTRUSTED)
        .preamble(v1_from(ALLOWED_V4));
    assert_refused(&f, client, &host(OPEN)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_is_dropped_after_the_read_timeout() {
    let f = fixture_with(|o| o.read_timeout = "300ms").await;
    let v2 = V2::from(ALLOWED_V4).build();
    let v1 = v1_from(ALLOWED_V4);
    for half in [&v2[..v2.len() / 2], &v1[..v1.len() / 2]] {
        let after = assert_closed_silently(&f, None, half).await;
        assert!(
            after >= Duration::from_millis(250),
            "closed after {after:?}, before the 300ms read timeout"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bytes_may_arrive_in_any_segments() {
    let f = Fixture::start().await;
    let v2 = V2::from(VPC_CLIENT).aws_vpce(VPCE).crc(Crc::Good).build();
    for delivery in [Delivery::Trickle, Delivery::WithClientHello] {
        for header in [v1_from(ALLOWED_V4), v2.clone()] {
            let expected = if header == v2 {
                "10.1.2.3"
            } else {
                "203.0.113.7"
            };
            let mut conn = f
                .client(&host(MIXED))
                .preamble(header)
                .delivery(delivery)
                .connect()
                .await;
            let echo = conn.get(&host(MIXED), "/").await.echo();
            assert_eq!(echo.forwarded_for(), [expected], "{delivery:?}");
        }
    }
}
