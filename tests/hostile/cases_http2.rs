//! Cases: HTTP/2 limits and floods, and HTTP/2-specific smuggling.

use super::*;

/// A GET to `open` on `stream`, in one HEADERS frame.
fn open_get(stream: u32, path: &str) -> Vec<u8> {
    whole_request(stream, &get_block(&open_host(), path))
}

/// A request to `open` with extra header `fields`.
fn open_block(method: &str, path: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    request_block(method, &open_host(), path, fields)
}

/// What follows a flood: exactly one GOAWAY, ENHANCE_YOUR_CALM, and the
/// connection closed. Returns the GOAWAY.
async fn assert_calmed(h2: &mut H2) -> H2Frame {
    let (frames, closed) = h2.drain(Duration::from_secs(3)).await;
    let goaway: Vec<&H2Frame> = frames.iter().filter(|f| f.kind == GOAWAY).collect();
    assert_eq!(goaway.len(), 1, "frames: {frames:?}");
    assert_eq!(goaway[0].error_code(), ENHANCE_YOUR_CALM, "{:?}", goaway[0]);
    assert!(closed, "the connection stayed open after GOAWAY");
    goaway[0].clone()
}

pub(crate) async fn h2_stream_limit_refuses_the_extra_stream(w: Arc<World>) {
    let mut h2 = H2::connect(&w, &denied_client()).await;
    assert!(
        h2.settings
            .contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_STREAMS)),
        "SETTINGS {:?}",
        h2.settings
    );
    let before = w.counters();
    // One more slow request than the limit, in one write.
    let n = H2_MAX_STREAMS + 1;
    let burst: Vec<u8> = (0..n)
        .flat_map(|i| open_get(2 * i + 1, "/slow?ms=700"))
        .collect();
    h2.send(&burst).await;
    let extra = 2 * (n - 1) + 1;
    let mut refused = Vec::new();
    let mut ok = Vec::new();
    while ok.len() < H2_MAX_STREAMS as usize {
        let f = h2
            .next(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e}; refused {refused:?}, ok {ok:?}"))
            .expect("closed");
        match f.kind {
            RST_STREAM => refused.push((f.stream, f.error_code())),
            HEADERS => {
                assert_eq!(f.status(), Some(200), "stream {}", f.stream);
                ok.push(f.stream);
            }
            GOAWAY => panic!("GOAWAY {:?}", f),
            _ => {}
        }
    }
    assert_eq!(refused, [(extra, REFUSED_STREAM)]);
    ok.sort_unstable();
    assert_eq!(ok, (0..n - 1).map(|i| 2 * i + 1).collect::<Vec<_>>());
    assert_eq!(before.backend_requests_since(&w), H2_MAX_STREAMS as usize);
    // The connection is still good: a stream opened now is served.
    h2.send(&open_get(extra + 2, "/after")).await;
    let f = h2
        .next_where(|f| f.kind == HEADERS && f.stream == extra + 2)
        .await;
    assert_eq!(f.status(), Some(200));
}

pub(crate) async fn h2_rapid_reset_flood_gets_goaway(w: Arc<World>) {
    let mut h2 = H2::connect(&w, &denied_client()).await;
    let before = w.counters();
    // HEADERS + RST_STREAM(CANCEL) pairs, far more than the pending-reset
    // limit, in one write (CVE-2023-44487).
    let n = 4 * H2_MAX_PENDING_RESETS as u32;
    let mut burst = Vec::new();
    for i in 0..n {
        let id = 2 * i + 1;
        burst.extend(open_get(id, "/slow?ms=200"));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    h2.send(&burst).await;
    let goaway = assert_calmed(&mut h2).await;
    // The burst is one TLS record, read at once: the reset that goes one
    // over the limit is the last stream the proxy looked at, and none of
    // the streams was handed to the service.
    let over = 2 * H2_MAX_PENDING_RESETS as u32 + 1;
    assert_eq!(goaway.last_stream_id(), over, "{goaway:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    before.assert_backend_untouched(&w);
    // Other clients are served meanwhile.
    let mut other = ClientBuilder::new(w.addr, ZONE)
        .preamble(denied_client())
        .h2()
        .connect()
        .await;
    other.get(&open_host(), "/after-flood").await.echo();
    assert_eq!(before.backend_requests_since(&w), 1);
}

pub(crate) async fn h2_connection_specific_header_is_refused(w: Arc<World>) {
    // `transfer-encoding` has no meaning in HTTP/2 (RFC 9113 §8.2.2);
    // passed on to an HTTP/1.1 backend it would re-frame the body.
    let mut h2 = H2::connect(&w, &denied_client()).await;
    let before = w.counters();
    let block = open_block("POST", "/te", &[("transfer-encoding", "chunked")]);
    let mut bytes = frame(HEADERS, END_HEADERS, 1, &block);
    bytes.extend(frame(DATA, END_STREAM, 1, b"0\r\n\r\n"));
    h2.send(&bytes).await;
    let f = h2.next_where(|f| f.stream == 1 || f.kind == GOAWAY).await;
    assert_eq!(
        (f.kind, f.error_code()),
        (RST_STREAM, PROTOCOL_ERROR),
        "{f:?}"
    );
    before.assert_backend_untouched(&w);
}

pub(crate) async fn h2_data_beyond_content_length(w: Arc<World>) {
    // content-length 5, then 5 bytes and a whole HTTP/1.1 request: the
    // extra bytes must not reach the backend's connection as a request.
    let mut h2 = H2::connect(&w, &denied_client()).await;
    let before = w.counters();
    let block = open_block("POST", "/cl", &[("content-length", "5")]);
    let data = format!("hello{}", embedded_request());
    let mut bytes = frame(HEADERS, END_HEADERS, 1, &block);
    bytes.extend(frame(DATA, END_STREAM, 1, data.as_bytes()));
    h2.send(&bytes).await;
    let mut seen = Vec::new();
    let reset = loop {
        let f = h2.next_where(|f| f.stream == 1).await;
        seen.push((f.kind, f.flags));
        if f.kind == RST_STREAM {
            break f;
        }
    };
    // Reset before the stream was accepted: no response, and nothing
    // forwarded.
    assert_eq!(seen, [(RST_STREAM, 0)]);
    assert_eq!(reset.error_code(), PROTOCOL_ERROR);
    tokio::time::sleep(Duration::from_millis(200)).await;
    before.assert_backend_untouched(&w);
}

pub(crate) async fn h2_authority_and_host_disagree(w: Arc<World>) {
    let mut h2 = H2::connect(&w, &denied_client()).await;
    let before = w.counters();
    let block = open_block("GET", "/", &[("host", &office_host())]);
    h2.send(&whole_request(1, &block)).await;
    let f = h2.next_where(|f| f.stream == 1 && f.kind == HEADERS).await;
    assert_eq!(f.status(), Some(400), "{f:?}");
    before.assert_backend_untouched(&w);
}

/// RFC 9113 §8.3.1: `:path *` is for OPTIONS only; forwarded, it would
/// become `GET * HTTP/1.1` upstream.
pub(crate) async fn h2_get_with_asterisk_path(w: Arc<World>) {
    let mut h2 = H2::connect(&w, &denied_client()).await;
    let before = w.counters();
    h2.send(&whole_request(1, &open_block("GET", "*", &[])))
        .await;
    let f = h2.next_where(|f| f.stream == 1 && f.kind == HEADERS).await;
    assert_eq!(f.status(), Some(400), "{f:?}");
    before.assert_backend_untouched(&w);
}

/// A GET on `open` whose header block is split into `pieces` frames:
/// HEADERS, then CONTINUATIONs, the last with END_HEADERS when `end`.
pub(crate) fn split_block(stream: u32, block: &[u8], pieces: usize, end: bool) -> Vec<u8> {
    let size = block.len().div_ceil(pieces);
    let chunks: Vec<&[u8]> = block.chunks(size).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let flags = if last && end { END_HEADERS } else { 0 };
        if i == 0 {
            out.extend(frame(HEADERS, flags | END_STREAM, stream, chunk));
        } else {
            out.extend(frame(CONTINUATION, flags, stream, chunk));
        }
    }
    out
}

pub(crate) async fn h2_header_list_over_the_limit(w: Arc<World>) {
    // 70 KiB of headers against the 64 KiB `max_header_bytes`, in a
    // HEADERS and four CONTINUATION frames of under 16 KiB each.
    let mut h2 = H2::connect(&w, &denied_client()).await;
    let before = w.counters();
    let block = open_block("GET", "/big-headers", &[("x-big", &"a".repeat(70 * 1024))]);
    h2.send(&split_block(1, &block, 5, true)).await;
    // A 431 that ends the stream (the request had ended it too), nothing
    // more on it, and the connection carries on: stream 3 is served.
    h2.send(&open_get(3, "/after-431")).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|(stream, _, _, _)| *stream == 3) {
        let f = h2
            .next_where(|f| matches!(f.kind, HEADERS | RST_STREAM))
            .await;
        let detail = match f.kind {
            HEADERS => f.status().map(u32::from),
            _ => Some(f.error_code()),
        };
        seen.push((f.stream, f.kind, f.flags, detail));
    }
    assert_eq!(
        seen,
        [
            (1, HEADERS, END_HEADERS | END_STREAM, Some(431)),
            (3, HEADERS, END_HEADERS, Some(200)),
        ]
    );
    assert_eq!(before.backend_requests_since(&w), 1);
}

pub(crate) async fn h2_continuation_flood(w: Arc<World>) {
    // A header block that never ends: CONTINUATION after CONTINUATION
    // without END_HEADERS (CVE-2024-27316 and friends). h2 allows as many
    // as a full header list needs, plus a quarter.
    let mut h2 = H2::connect(&w, &denied_client()).await;
    let before = w.counters();
    let mut block = get_block(&open_host(), "/");
    for i in 0..200 {
        block.extend(hpack(&[("x-more", &i.to_string())]));
    }
    h2.send(&split_block(1, &block, 200, false)).await;
    assert_calmed(&mut h2).await;
    before.assert_backend_untouched(&w);
}

/// A request the proxy must reset itself: `transfer-encoding` is
/// malformed in HTTP/2.
fn malformed(stream: u32) -> Vec<u8> {
    whole_request(
        stream,
        &open_block("GET", "/", &[("transfer-encoding", "chunked")]),
    )
}

pub(crate) async fn h2_server_reset_flood_gets_goaway(w: Arc<World>) {
    // "MadeYouReset" (CVE-2025-8671): streams the client makes the proxy
    // reset. Up to `http2_max_local_error_reset_streams` the proxy resets
    // each and serves on; one more and the connection is closed.
    let mut h2 = H2::connect(&w, &denied_client()).await;
    let before = w.counters();
    let limit = H2_MAX_LOCAL_RESETS as u32;
    let good = 2 * limit + 1;
    let mut burst: Vec<u8> = (0..limit).flat_map(|i| malformed(2 * i + 1)).collect();
    burst.extend(open_get(good, "/still-fine"));
    h2.send(&burst).await;
    let mut resets = Vec::new();
    loop {
        let f = h2.next(WAIT).await.expect("a frame").expect("open");
        assert_ne!(f.kind, GOAWAY, "after {} resets: {f:?}", resets.len());
        match f.kind {
            RST_STREAM => resets.push((f.stream, f.error_code())),
            HEADERS if f.stream == good => {
                assert_eq!(f.status(), Some(200));
                break;
            }
            _ => {}
        }
    }
    let expected: Vec<(u32, u32)> = (0..limit).map(|i| (2 * i + 1, PROTOCOL_ERROR)).collect();
    assert_eq!(resets, expected);
    // One more.
    h2.send(&malformed(good + 2)).await;
    assert_calmed(&mut h2).await;
    assert_eq!(before.backend_requests_since(&w), 1);
}
