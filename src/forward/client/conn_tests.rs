//! Tests of the backend connection against a fake backend on loopback:
//! the backend task keeps the bytes the client sent, so the wire format is
//! asserted exactly, and writes scripted responses, well-formed or not.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body::Frame;
use http_body_util::{Empty, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::*;

/// The bound on every network wait.
const LIMIT: Duration = Duration::from_secs(10);

/// A response with an empty body, that keeps the connection open.
const OK_EMPTY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

/// `assert!(matches!(value, pattern))` that shows the value on failure.
macro_rules! assert_matches {
    ($value:expr, $pattern:pat) => {{
        let value = &$value;
        assert!(matches!(value, $pattern), "{value:?}");
    }};
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("timed out")
}

/// Bytes as text, for readable assertion failures.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `len` bytes of a pattern that never forms an HTTP delimiter.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// --- The fake backend ---

/// A fake backend that accepts one connection and runs `script` on it,
/// and the client's connection to it.
async fn connect_scripted<F, Fut, T>(script: F) -> (Conn, JoinHandle<T>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let (tcp, _) = within(listener.accept()).await.expect("accept");
        script(tcp).await
    });
    let tcp = within(TcpStream::connect(addr)).await.expect("connect");
    (Conn::new(tcp), task)
}

/// A connection to a backend that answers each request it reads with the
/// next of `responses`, then keeps the connection open until the client
/// closes it, asserting the client sent nothing more. The backend returns
/// the requests as received.
async fn connect_serving(responses: &[&[u8]]) -> (Conn, JoinHandle<Vec<Vec<u8>>>) {
    let responses: Vec<Vec<u8>> = responses.iter().map(|r| r.to_vec()).collect();
    connect_scripted(|mut tcp| async move {
        let mut requests = Vec::new();
        for response in responses {
            requests.push(read_request(&mut tcp).await);
            // A client that hung up fails the test on its own side.
            let _ = within(tcp.write_all(&response)).await;
        }
        let extra = read_to_close(&mut tcp).await;
        assert!(extra.is_empty(), "unexpected bytes: {:?}", text(&extra));
        requests
    })
    .await
}

/// A connection to a backend that reads one request, writes `response`
/// and closes. The backend returns the request.
async fn connect_closing_after(response: &[u8]) -> (Conn, JoinHandle<Vec<u8>>) {
    let response = response.to_vec();
    connect_scripted(|mut tcp| async move {
        let request = read_request(&mut tcp).await;
        let _ = within(tcp.write_all(&response)).await;
        request
    })
    .await
}

/// A connection to a backend that only reads, until the client closes.
/// The backend returns what it read.
async fn connect_reading() -> (Conn, JoinHandle<Vec<u8>>) {
    connect_scripted(|mut tcp| async move { read_to_close(&mut tcp).await }).await
}

/// A connection whose backend has already closed it, unused.
async fn connect_closed() -> Conn {
    let (closed_tx, closed_rx) = oneshot::channel();
    let (conn, _backend) = connect_scripted(|tcp| async move {
        drop(tcp);
        closed_tx.send(()).unwrap();
    })
    .await;
    within(closed_rx).await.unwrap();
    conn
}

/// Closes the client's side, then waits for what the backend returns.
async fn hang_up<T>(conn: Conn, backend: JoinHandle<T>) -> T {
    drop(conn);
    within(backend).await.expect("backend")
}

/// Closes the client's side, then returns the requests a
/// [`connect_serving`] backend received, as text.
async fn requests_received(conn: Conn, backend: JoinHandle<Vec<Vec<u8>>>) -> Vec<String> {
    let requests = hang_up(conn, backend).await;
    requests.iter().map(|r| text(r)).collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads into `buf` until it holds `needle`; false at the end of the
/// stream first.
async fn read_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> bool {
    while find(buf, needle).is_none() {
        if within(tcp.read_buf(buf)).await.expect("backend read") == 0 {
            return false;
        }
    }
    true
}

/// Reads up to the end of a request head (and whatever came with it).
async fn read_head(tcp: &mut TcpStream) -> Vec<u8> {
    let mut request = Vec::new();
    read_until(tcp, &mut request, b"\r\n\r\n").await;
    request
}

/// Reads one whole request as this client frames it (lowercase header
/// names): its head, then `content-length` bytes or chunks up to the last.
async fn read_request(tcp: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    assert!(
        read_until(tcp, &mut buf, b"\r\n\r\n").await,
        "closed before a request head: {:?}",
        text(&buf)
    );
    let head_end = find(&buf, b"\r\n\r\n").expect("head") + 4;
    let head = text(&buf[..head_end]);
    if head.contains("\r\ntransfer-encoding: chunked\r\n") {
        while !(buf[head_end..] == *b"0\r\n\r\n" || buf.ends_with(b"\r\n0\r\n\r\n")) {
            assert_ne!(within(tcp.read_buf(&mut buf)).await.expect("read"), 0);
        }
    } else if let Some(at) = head.find("\r\ncontent-length: ") {
        let digits = &head[at + 18..];
        let len: usize = digits[..digits.find('\r').expect("CRLF")]
            .parse()
            .expect("length");
        while buf.len() < head_end + len {
            assert_ne!(within(tcp.read_buf(&mut buf)).await.expect("read"), 0);
        }
    }
    buf
}

/// Everything until the client closes (or resets) the connection.
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    while let Ok(n) = within(tcp.read_buf(&mut buf)).await
        && n > 0
    {}
    buf
}

async fn write(tcp: &mut TcpStream, bytes: &[u8]) {
    within(tcp.write_all(bytes)).await.expect("backend write");
}

/// Writes `pieces` apart in time, so the client reads them apart.
async fn write_slowly(tcp: &mut TcpStream, pieces: &[&[u8]]) {
    for piece in pieces {
        write(tcp, piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- The client's side ---

/// The response body, read to its end or its first error.
async fn read_body(reading: &mut Reading, conn: &mut Conn) -> Result<Vec<u8>, BackendError> {
    let mut body = Vec::new();
    while let Some(piece) = within(poll_fn(|cx| reading.poll_data(conn, cx))).await {
        body.extend_from_slice(&piece?);
    }
    Ok(body)
}

/// Sends `req` and reads its whole response: head, body, and whether the
/// connection can carry another request.
async fn exchange<B>(conn: &mut Conn, req: &mut Request<B>) -> (ResponseHead, Vec<u8>, bool)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let head = within(conn.send(req)).await.expect("response head");
    let mut reading = Reading::new(&head);
    let body = read_body(&mut reading, conn).await.expect("response body");
    let reusable = reading.reusable(conn);
    (head, body, reusable)
}

/// Waits (bounded) for `is_closed` to notice: socket readiness reaches
/// the connection asynchronously, through the runtime's reactor.
async fn wait_closed(conn: &Conn) {
    for _ in 0..100 {
        if conn.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("is_closed never noticed");
}

fn get(target: &str) -> Request<Empty<Bytes>> {
    Request::get(target)
        .header("host", "es.example")
        .body(Empty::new())
        .expect("request")
}

type Item = Result<Frame<Bytes>, io::Error>;

/// A request body fed through a channel: frames arrive when the test
/// sends them; its length is known only when `length` says so.
struct ChannelBody {
    rx: mpsc::Receiver<Item>,
    length: Option<u64>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.rx.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        self.length
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

fn channel(length: Option<u64>) -> (mpsc::Sender<Item>, ChannelBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChannelBody { rx, length })
}

fn data(bytes: &'static str) -> Item {
    Ok(Frame::data(Bytes::from_static(bytes.as_bytes())))
}

fn post<B>(target: &str, body: B) -> Request<B> {
    Request::post(target)
        .header("host", "es.example")
        .body(body)
        .expect("request")
}

// --- Requests without a body, responses delimited every way ---

#[tokio::test]
async fn a_get_goes_out_exactly_and_its_connection_carries_the_next_request() {
    let (mut conn, backend) = connect_serving(&[
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    ])
    .await;

    let mut req = Request::get("/path?q")
        .header("host", "es.example")
        .header("x-opaque-id", "abc")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (head, body, reusable) = exchange(&mut conn, &mut req).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.version, Version::HTTP_11);
    assert_eq!(head.length, BodyLength::Exact(5));
    assert!(head.keep_alive);
    assert_eq!(head.headers["content-type"], "application/json");
    assert_eq!(head.headers.len(), 2);
    assert_eq!(text(&body), "hello");
    assert!(reusable);
    // The request's map was moved out, to be reused for a response.
    assert!(req.headers().is_empty());

    let (head, body, reusable) = exchange(&mut conn, &mut get("/second")).await;
    assert_eq!(head.status, StatusCode::CREATED);
    assert_eq!(text(&body), "ok");
    assert!(reusable);
    assert!(!conn.is_closed());

    assert_eq!(
        requests_received(conn, backend).await,
        [
            "GET /path?q HTTP/1.1\r\nhost: es.example\r\nx-opaque-id: abc\r\n\r\n",
            "GET /second HTTP/1.1\r\nhost: es.example\r\n\r\n",
        ]
    );
}

#[tokio::test]
async fn an_absolute_uri_goes_out_in_origin_form() {
    let (mut conn, backend) = connect_serving(&[OK_EMPTY]).await;
    let mut req = get("http://es.example:9200/_search?q=a%20b");
    let (head, body, reusable) = exchange(&mut conn, &mut req).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(body.is_empty());
    assert!(reusable);
    assert_eq!(
        requests_received(conn, backend).await,
        ["GET /_search?q=a%20b HTTP/1.1\r\nhost: es.example\r\n\r\n"]
    );
}

#[tokio::test]
async fn a_chunked_response_with_extensions_and_trailers_is_read_whole_and_reusable() {
    // Written in pieces, so the body is decoded across reads.
    let (mut conn, backend) = connect_scripted(|mut tcp| async move {
        let request = read_request(&mut tcp).await;
        write_slowly(
            &mut tcp,
            &[
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhel",
                b"lo\r\n6 ; ext;other=\"q\"\r\n wor",
                b"ld\r\n0\r\nx-trailer: t\r\n",
                b"x-other: u\r\n\r\n",
            ],
        )
        .await;
        let second = read_request(&mut tcp).await;
        write(
            &mut tcp,
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext",
        )
        .await;
        assert!(read_to_close(&mut tcp).await.is_empty());
        (request, second)
    })
    .await;

    let (head, body, reusable) = exchange(&mut conn, &mut get("/chunked")).await;
    assert_eq!(head.length, BodyLength::Chunked);
    assert!(head.keep_alive);
    assert_eq!(text(&body), "hello world");
    assert!(reusable);

    let (_, body, reusable) = exchange(&mut conn, &mut get("/after")).await;
    assert_eq!(text(&body), "next");
    assert!(reusable);

    let (first, second) = hang_up(conn, backend).await;
    assert!(text(&first).starts_with("GET /chunked "));
    assert!(text(&second).starts_with("GET /after "));
}

#[tokio::test]
async fn a_response_without_length_is_read_until_close_and_not_reusable() {
    let (mut conn, backend) =
        connect_closing_after(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")
            .await;
    let (head, body, reusable) = exchange(&mut conn, &mut get("/")).await;
    assert_eq!(head.length, BodyLength::UntilClose);
    assert!(!head.keep_alive);
    assert_eq!(text(&body), "until the end");
    assert!(!reusable);
    within(backend).await.unwrap();
}

#[tokio::test]
async fn a_connection_close_response_is_read_but_not_reusable() {
    let (mut conn, _backend) =
        connect_serving(&[b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye"])
            .await;
    let (head, body, reusable) = exchange(&mut conn, &mut get("/")).await;
    assert_eq!(head.length, BodyLength::Exact(3));
    assert!(!head.keep_alive);
    assert_eq!(text(&body), "bye");
    assert!(!reusable);
}

#[tokio::test]
async fn an_http_1_0_response_is_reusable_only_with_keep_alive() {
    let (mut conn, _backend) =
        connect_serving(&[b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nold"]).await;
    let (head, body, reusable) = exchange(&mut conn, &mut get("/")).await;
    assert_eq!(head.version, Version::HTTP_10);
    assert_eq!(text(&body), "old");
    assert!(!reusable);

    let (mut conn, _backend) = connect_serving(&[
        b"HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 3\r\n\r\nold",
        b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 5\r\n\r\nagain",
    ])
    .await;
    let (_, body, reusable) = exchange(&mut conn, &mut get("/")).await;
    assert_eq!(text(&body), "old");
    assert!(reusable);
    let (_, body, reusable) = exchange(&mut conn, &mut get("/")).await;
    assert_eq!(text(&body), "again");
    assert!(reusable);
}

#[tokio::test]
async fn head_204_and_304_responses_have_no_body_whatever_their_length_says() {
    let (mut conn, backend) = connect_serving(&[
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\netag: \"x\"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlast",
    ])
    .await;

    let mut head_req = Request::head("/idx")
        .header("host", "es.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (head, body, reusable) = exchange(&mut conn, &mut head_req).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.length, BodyLength::Empty);
    assert_eq!(head.headers["content-length"], "100");
    assert!(body.is_empty());
    assert!(reusable);

    for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
        let (head, body, reusable) = exchange(&mut conn, &mut get("/")).await;
        assert_eq!(head.status, status);
        assert_eq!(head.length, BodyLength::Empty);
        assert!(body.is_empty());
        assert!(reusable);
    }

    // Nothing of the empty bodies was taken from the next response.
    let (_, body, reusable) = exchange(&mut conn, &mut get("/")).await;
    assert_eq!(text(&body), "last");
    assert!(reusable);

    assert_eq!(
        requests_received(conn, backend).await[0],
        "HEAD /idx HTTP/1.1\r\nhost: es.example\r\n\r\n"
    );
}

#[tokio::test]
async fn interim_responses_are_passed_over_for_the_final_one() {
    // The interim responses arrive split, and apart from the final one.
    let (mut conn, _backend) = connect_scripted(|mut tcp| async move {
        read_request(&mut tcp).await;
        write_slowly(
            &mut tcp,
            &[
                b"HTTP/1.1 100 Cont",
                b"inue\r\n\r\n",
                b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
            ],
        )
        .await;
        read_to_close(&mut tcp).await
    })
    .await;
    let (head, body, reusable) = exchange(&mut conn, &mut get("/")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(!head.headers.contains_key("link"));
    assert_eq!(text(&body), "final");
    assert!(reusable);
}

#[tokio::test]
async fn a_100_continue_during_the_upload_is_passed_over() {
    let (continued_tx, continued_rx) = oneshot::channel();
    let (mut conn, backend) = connect_scripted(|mut tcp| async move {
        let mut request = Vec::new();
        read_until(&mut tcp, &mut request, b"3\r\nabc\r\n").await;
        write(&mut tcp, b"HTTP/1.1 100 Continue\r\n\r\n").await;
        continued_tx.send(()).unwrap();
        read_until(&mut tcp, &mut request, b"\r\n0\r\n\r\n").await;
        write(
            &mut tcp,
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone",
        )
        .await;
        read_to_close(&mut tcp).await;
        request
    })
    .await;
    let (tx, body) = channel(None);
    tx.send(data("abc")).await.unwrap();
    tokio::spawn(async move {
        within(continued_rx).await.unwrap();
        // Time for the client to read and skip the interim response.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(data("def")).await.unwrap();
    });
    let (head, body, reusable) = exchange(&mut conn, &mut post("/_bulk", body)).await;
    assert_eq!(head.status, StatusCode::OK);
    // The whole request was read: the final response was not early.
    assert!(head.keep_alive);
    assert_eq!(text(&body), "done");
    assert!(reusable);
    assert_eq!(
        text(&hang_up(conn, backend).await),
        "POST /_bulk HTTP/1.1\r\nhost: es.example\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
    );
}

#[tokio::test]
async fn a_101_response_is_returned_for_the_caller_to_refuse() {
    let (mut conn, _backend) =
        connect_serving(&[b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"]).await;
    let head = within(conn.send(&mut get("/"))).await.unwrap();
    assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(head.length, BodyLength::Empty);
}

// --- Request bodies ---

#[tokio::test]
async fn a_body_of_known_length_goes_out_with_its_head_in_one_write() {
    let (mut conn, backend) = connect_scripted(|mut tcp| async move {
        // One write on loopback arrives whole: the first read gets all.
        let mut first = vec![0; 64 * 1024];
        let n = within(tcp.read(&mut first)).await.unwrap();
        first.truncate(n);
        write(
            &mut tcp,
            b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert!(read_to_close(&mut tcp).await.is_empty());
        first
    })
    .await;
    let mut req = Request::post("/i/_doc")
        .header("host", "es.example")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
        .unwrap();
    let (head, body, reusable) = exchange(&mut conn, &mut req).await;
    assert_eq!(head.status, StatusCode::CREATED);
    assert!(head.keep_alive);
    assert!(body.is_empty());
    assert!(reusable);
    assert_eq!(
        text(&hang_up(conn, backend).await),
        "POST /i/_doc HTTP/1.1\r\nhost: es.example\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
    );
}

#[tokio::test]
async fn a_content_length_header_that_disagrees_is_replaced_by_the_bodys_length() {
    let (mut conn, backend) = connect_serving(&[OK_EMPTY; 3]).await;
    let mut req = Request::put("/i/_doc/1")
        .header("host", "es.example")
        .header("content-length", "99")
        .header("transfer-encoding", "chunked")
        .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
        .unwrap();
    assert!(exchange(&mut conn, &mut req).await.2);
    // No body, and the client said 5: it is told 0, not left waiting.
    let mut req = Request::post("/x")
        .header("host", "es.example")
        .header("content-length", "5")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert!(exchange(&mut conn, &mut req).await.2);
    // No body and no length header: no length on the wire either.
    assert!(
        exchange(&mut conn, &mut post("/y", Empty::<Bytes>::new()))
            .await
            .2
    );
    assert_eq!(
        requests_received(conn, backend).await,
        [
            "PUT /i/_doc/1 HTTP/1.1\r\nhost: es.example\r\ncontent-length: 7\r\n\r\n{\"a\":1}",
            "POST /x HTTP/1.1\r\nhost: es.example\r\ncontent-length: 0\r\n\r\n",
            "POST /y HTTP/1.1\r\nhost: es.example\r\n\r\n",
        ]
    );
}

#[tokio::test]
async fn a_body_of_unknown_length_goes_out_chunked() {
    let (mut conn, backend) =
        connect_serving(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
    let (tx, body) = channel(None);
    for item in [
        data("abc"),
        // Empty data and trailers are not sent: no premature last chunk.
        data(""),
        data("0123456789abcdefX"),
        Ok(Frame::trailers(http::HeaderMap::new())),
    ] {
        tx.send(item).await.unwrap();
    }
    drop(tx);
    let mut req = Request::post("/_bulk")
        .header("host", "es.example")
        .header("content-length", "3")
        .body(body)
        .unwrap();
    let (head, body, reusable) = exchange(&mut conn, &mut req).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.keep_alive);
    assert_eq!(text(&body), "ok");
    assert!(reusable);
    assert_eq!(
        requests_received(conn, backend).await,
        [
            "POST /_bulk HTTP/1.1\r\nhost: es.example\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n11\r\n0123456789abcdefX\r\n0\r\n\r\n"
        ]
    );
}

#[tokio::test]
async fn an_unknown_length_body_that_ends_at_once_is_a_lone_last_chunk() {
    let (mut conn, backend) = connect_serving(&[OK_EMPTY]).await;
    let (tx, body) = channel(None);
    drop(tx);
    assert!(exchange(&mut conn, &mut post("/", body)).await.2);
    assert_eq!(
        requests_received(conn, backend).await,
        ["POST / HTTP/1.1\r\nhost: es.example\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"]
    );
}

#[tokio::test]
async fn a_slow_upload_of_known_length_streams_its_frames_unframed() {
    let (mut conn, backend) = connect_serving(&[OK_EMPTY]).await;
    let (tx, body) = channel(Some(12));
    tokio::spawn(async move {
        // The body ends with its last frame (as hyper's does for a body
        // of known length): a response after the last byte but before the
        // end would be taken for an early one.
        for piece in ["abcd", "efgh", "ijkl"] {
            tokio::time::sleep(Duration::from_millis(30)).await;
            tx.send(data(piece)).await.unwrap();
        }
    });
    let (head, _, reusable) = exchange(&mut conn, &mut post("/slow", body)).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.keep_alive);
    assert!(reusable);
    assert_eq!(
        requests_received(conn, backend).await,
        ["POST /slow HTTP/1.1\r\nhost: es.example\r\ncontent-length: 12\r\n\r\nabcdefghijkl"]
    );
}

#[tokio::test]
async fn a_body_failing_on_its_first_frame_sends_nothing() {
    let (mut conn, backend) = connect_reading().await;
    let (tx, body) = channel(None);
    tx.send(Err(io::Error::other("client went away")))
        .await
        .unwrap();
    let mut req = post("/_bulk", body);
    let err = within(conn.send(&mut req)).await.unwrap_err();
    let SendError::RequestBody(e) = err else {
        panic!("{err:?}");
    };
    assert_eq!(e.to_string(), "client went away");
    let received = hang_up(conn, backend).await;
    assert!(
        received.is_empty(),
        "backend received {:?}",
        text(&received)
    );
}

#[tokio::test]
async fn a_body_failing_midway_is_a_request_body_error() {
    let (mut conn, backend) = connect_reading().await;
    let (tx, body) = channel(Some(10));
    tx.send(data("abcd")).await.unwrap();
    tx.send(Err(io::Error::other("reset"))).await.unwrap();
    let err = within(conn.send(&mut post("/", body))).await.unwrap_err();
    assert_matches!(err, SendError::RequestBody(_));
    // The backend got a request it can see is incomplete.
    assert_eq!(
        text(&hang_up(conn, backend).await),
        "POST / HTTP/1.1\r\nhost: es.example\r\ncontent-length: 10\r\n\r\nabcd"
    );
}

/// An early answer to an upload, without a body.
const EARLY_413: &[u8] = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n";

/// Sends `req`, whose upload the backend answers before its end with a
/// 413: the connection cannot carry another request.
async fn send_answered_early(conn: &mut Conn, req: &mut Request<ChannelBody>) -> ResponseHead {
    let head = within(conn.send(req)).await.expect("the 413");
    assert_eq!(head.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!head.keep_alive);
    head
}

#[tokio::test]
async fn an_early_response_ends_a_pending_upload_and_the_connection() {
    let (mut conn, backend) = connect_scripted(|mut tcp| async move {
        let mut request = read_head(&mut tcp).await;
        write(
            &mut tcp,
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!",
        )
        .await;
        request.extend(read_to_close(&mut tcp).await);
        request
    })
    .await;
    // The first frame carries the head out; the rest never comes.
    let (tx, body) = channel(Some(1000));
    tx.send(data("first")).await.unwrap();
    let mut req = post("/_bulk", body);
    let head = send_answered_early(&mut conn, &mut req).await;
    let mut reading = Reading::new(&head);
    assert_eq!(
        text(&read_body(&mut reading, &mut conn).await.unwrap()),
        "big!"
    );
    assert!(!reading.reusable(&conn));
    drop(tx);
    assert_eq!(
        text(&hang_up(conn, backend).await),
        "POST /_bulk HTTP/1.1\r\nhost: es.example\r\ncontent-length: 1000\r\n\r\nfirst"
    );
}

#[tokio::test]
async fn an_early_response_ends_a_slow_upload() {
    let (mut conn, _backend) = connect_scripted(|mut tcp| async move {
        read_head(&mut tcp).await;
        write(&mut tcp, EARLY_413).await;
        read_to_close(&mut tcp).await;
    })
    .await;
    let (tx, body) = channel(None);
    let finished = Arc::new(AtomicBool::new(false));
    let feeder = tokio::spawn({
        let finished = finished.clone();
        async move {
            for _ in 0..100 {
                if tx.send(data("slow")).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            finished.store(true, Ordering::SeqCst);
        }
    });
    let mut req = post("/_bulk", body);
    send_answered_early(&mut conn, &mut req).await;
    assert!(
        !finished.load(Ordering::SeqCst),
        "the upload was not cut short"
    );
    drop(req);
    within(feeder).await.unwrap();
}

#[tokio::test]
async fn an_early_response_is_seen_while_the_backend_no_longer_reads_the_upload() {
    // The backend stops reading and answers while the client's writes are
    // blocked (the socket buffers are full): the read runs beside the
    // write, so the 413 is heard rather than waited out to a timeout.
    let (mut conn, _backend) = connect_scripted(|mut tcp| async move {
        read_head(&mut tcp).await;
        // Stops reading; answers once the client is stuck writing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        write(&mut tcp, EARLY_413).await;
        // Holds the connection open (until the runtime ends).
        std::future::pending::<()>().await;
    })
    .await;
    const FRAMES: u64 = 256;
    let block = Bytes::from(vec![b'x'; 1 << 20]);
    let (tx, body) = channel(Some(FRAMES * block.len() as u64));
    tokio::spawn(async move {
        for _ in 0..FRAMES {
            if tx.send(Ok(Frame::data(block.clone()))).await.is_err() {
                return;
            }
        }
    });
    send_answered_early(&mut conn, &mut post("/_bulk", body)).await;
}

// --- Closed connections ---

#[tokio::test]
async fn a_request_without_body_to_a_closed_backend_fails_as_backend_closed() {
    let mut conn = connect_closed().await;
    wait_closed(&conn).await;
    let mut req = get("/");
    let err = within(conn.send(&mut req)).await.unwrap_err();
    // Not `Unsent`: the head fits the socket's send buffer, so its write
    // succeeds although the peer is gone (the reset that the bytes
    // provoke comes back later). Only the read that follows finds the
    // backend's FIN, and by then the client cannot tell whether the
    // request was delivered.
    assert_matches!(err, SendError::Backend(BackendError::Closed));
}

#[tokio::test]
async fn a_request_with_a_body_to_a_closed_backend_is_unsent() {
    let mut conn = connect_closed().await;
    // The body has no frame ready: the head waits for it, and meanwhile
    // the read side sees the backend's FIN.
    let (tx, body) = channel(None);
    let mut req = post("/_bulk", body);
    let err = within(conn.send(&mut req)).await.unwrap_err();
    assert_matches!(err, SendError::Unsent(BackendError::Closed));
    // The body is still whole, for another connection.
    tx.send(data("later")).await.unwrap();
    drop(tx);
    let frame = within(req.body_mut().frame()).await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "later");
}

#[tokio::test]
async fn an_unsent_request_with_a_body_keeps_its_headers_for_another_connection() {
    // An unsent request goes to another connection as it was: its header
    // map is kept for the response only once some of the request went out.
    let mut conn = connect_closed().await;
    let (tx, body) = channel(None);
    let mut req = Request::post("/_bulk")
        .header("host", "es.example")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .unwrap();
    let err = within(conn.send(&mut req)).await.unwrap_err();
    assert_matches!(err, SendError::Unsent(_));
    assert_eq!(req.headers().len(), 2, "headers lost: {:?}", req.headers());

    // Sent elsewhere, the request must be the same request.
    let (mut conn, backend) = connect_serving(&[OK_EMPTY]).await;
    tx.send(data("{}\n")).await.unwrap();
    drop(tx);
    exchange(&mut conn, &mut req).await;
    assert_eq!(
        requests_received(conn, backend).await,
        [
            "POST /_bulk HTTP/1.1\r\nhost: es.example\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{}\n\r\n0\r\n\r\n"
        ]
    );
}

#[tokio::test]
async fn is_closed_is_false_while_idle_and_true_once_the_backend_closes() {
    let (close_tx, close_rx) = oneshot::channel::<()>();
    let (mut conn, backend) = connect_scripted(|mut tcp| async move {
        let request = read_request(&mut tcp).await;
        write(&mut tcp, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        within(close_rx).await.unwrap();
        request
    })
    .await;
    assert!(!conn.is_closed());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!conn.is_closed());

    let (_, body, reusable) = exchange(&mut conn, &mut get("/")).await;
    assert_eq!(text(&body), "ok");
    assert!(reusable);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!conn.is_closed());

    close_tx.send(()).unwrap();
    within(backend).await.unwrap();
    wait_closed(&conn).await;
    assert!(conn.is_closed());
}

#[tokio::test]
async fn is_closed_is_true_when_the_backend_speaks_unasked() {
    let (conn, _backend) = connect_scripted(|mut tcp| async move {
        write(
            &mut tcp,
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        read_to_close(&mut tcp).await;
    })
    .await;
    wait_closed(&conn).await;
}

// --- Malformed responses ---

/// The error `send` gets for `response`.
async fn send_error(response: &[u8]) -> SendError {
    let (mut conn, _backend) = connect_serving(&[response]).await;
    within(conn.send(&mut get("/"))).await.unwrap_err()
}

/// The response head for `response`, then its body as read.
async fn body_outcome(response: &[u8]) -> (Result<Vec<u8>, BackendError>, Reading, Conn) {
    let (mut conn, _backend) = connect_closing_after(response).await;
    let head = within(conn.send(&mut get("/"))).await.unwrap();
    let mut reading = Reading::new(&head);
    let body = read_body(&mut reading, &mut conn).await;
    (body, reading, conn)
}

#[tokio::test]
async fn two_different_content_lengths_are_refused() {
    let err =
        send_error(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!")
            .await;
    assert_matches!(
        err,
        SendError::Backend(BackendError::Head(HeadError::InvalidContentLength))
    );
}

#[tokio::test]
async fn a_garbage_status_line_is_refused() {
    let err = send_error(b"garbage\r\n\r\n").await;
    assert_matches!(
        err,
        SendError::Backend(BackendError::Head(HeadError::Syntax(_)))
    );
    let err = send_error(b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n").await;
    assert_matches!(err, SendError::Backend(BackendError::Head(_)));
}

#[tokio::test]
async fn too_many_header_fields_are_refused() {
    let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
    for _ in 0..=head::MAX_HEADERS {
        response.extend_from_slice(b"x: y\r\n");
    }
    response.extend_from_slice(b"content-length: 0\r\n\r\n");
    let err = send_error(&response).await;
    assert_matches!(
        err,
        SendError::Backend(BackendError::Head(HeadError::Syntax(_)))
    );
}

#[tokio::test]
async fn a_response_head_over_the_limit_is_refused() {
    // A head that never ends, on a connection that stays open: refused
    // once the limit is read, not buffered further.
    let mut response = b"HTTP/1.1 200 OK\r\n".to_vec();
    while response.len() < head::MAX_HEAD_BYTES + 8 * 1024 {
        response.extend_from_slice(format!("x-filler: {}\r\n", "y".repeat(1000)).as_bytes());
    }
    let err = send_error(&response).await;
    assert_matches!(
        err,
        SendError::Backend(BackendError::Head(HeadError::TooLong))
    );
}

#[tokio::test]
async fn eof_in_the_middle_of_the_head_is_backend_closed() {
    let (mut conn, _backend) = connect_closing_after(b"HTTP/1.1 200 OK\r\ncontent-len").await;
    let err = within(conn.send(&mut get("/"))).await.unwrap_err();
    assert_matches!(err, SendError::Backend(BackendError::Closed));
}

#[tokio::test]
async fn a_bad_chunk_size_fails_the_body_and_the_connection() {
    let (body, mut reading, mut conn) =
        body_outcome(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
            .await;
    assert_matches!(body, Err(BackendError::Chunked(ChunkedError::InvalidSize)));
    assert!(!reading.reusable(&conn));
    // The body is over: no more pieces, and no panic.
    assert!(reading.is_end_stream());
    assert!(
        within(poll_fn(|cx| reading.poll_data(&mut conn, cx)))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_chunk_longer_than_its_size_fails_the_body() {
    let (body, reading, conn) = body_outcome(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_matches!(body, Err(BackendError::Chunked(ChunkedError::MissingCrlf)));
    assert!(!reading.reusable(&conn));
}

#[tokio::test]
async fn eof_in_the_middle_of_a_content_length_body_is_backend_closed() {
    let (mut conn, _backend) =
        connect_closing_after(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello").await;
    let head = within(conn.send(&mut get("/"))).await.unwrap();
    let mut reading = Reading::new(&head);
    let first = within(poll_fn(|cx| reading.poll_data(&mut conn, cx))).await;
    assert_eq!(&first.unwrap().unwrap()[..], b"hello");
    assert_eq!(reading.size_hint().exact(), Some(5));
    let second = within(poll_fn(|cx| reading.poll_data(&mut conn, cx))).await;
    assert_matches!(second, Some(Err(BackendError::Closed)));
    assert!(!reading.reusable(&conn));
    assert!(
        within(poll_fn(|cx| reading.poll_data(&mut conn, cx)))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn eof_in_the_middle_of_a_chunked_body_is_backend_closed() {
    let (body, reading, conn) =
        body_outcome(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\nhello").await;
    assert_matches!(body, Err(BackendError::Closed));
    assert!(!reading.reusable(&conn));
}

#[tokio::test]
async fn bytes_after_a_content_length_body_make_the_connection_unusable() {
    let (mut conn, _backend) =
        connect_serving(&[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloEXTRA"]).await;
    let (head, body, reusable) = exchange(&mut conn, &mut get("/")).await;
    assert!(head.keep_alive);
    assert_eq!(text(&body), "hello");
    assert!(!reusable);
    assert!(conn.is_closed());
}

#[tokio::test]
async fn bytes_after_a_chunked_body_make_the_connection_unusable() {
    let (mut conn, _backend) = connect_serving(&[
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n",
    ])
    .await;
    let (_, body, reusable) = exchange(&mut conn, &mut get("/")).await;
    assert_eq!(text(&body), "ok");
    assert!(!reusable);
}

// --- Large bodies ---

#[tokio::test]
async fn a_large_content_length_response_streams_through_intact() {
    let expected = pattern(1 << 20);
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
        expected.len()
    )
    .into_bytes();
    response.extend_from_slice(&expected);
    let (mut conn, _backend) = connect_serving(&[&response]).await;
    let (head, body, reusable) = exchange(&mut conn, &mut get("/")).await;
    assert_eq!(head.length, BodyLength::Exact(1 << 20));
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "body differs");
    assert!(reusable);
}

#[tokio::test]
async fn a_large_chunked_response_streams_through_intact() {
    let expected = pattern(1 << 20);
    let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in expected.chunks(16 * 1024) {
        response.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        response.extend_from_slice(chunk);
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"0\r\n\r\n");
    let (mut conn, _backend) = connect_serving(&[&response]).await;
    let (_, body, reusable) = exchange(&mut conn, &mut get("/")).await;
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "body differs");
    assert!(reusable);
}

#[tokio::test]
async fn a_large_upload_streams_through_intact() {
    let payload = Bytes::from(pattern(1 << 20));
    let (mut conn, backend) = connect_serving(&[OK_EMPTY; 2]).await;
    assert!(
        exchange(&mut conn, &mut post("/full", Full::new(payload.clone())))
            .await
            .2
    );

    let (tx, body) = channel(None);
    let feeder = tokio::spawn({
        let payload = payload.clone();
        async move {
            for at in (0..payload.len()).step_by(16 * 1024) {
                tx.send(Ok(Frame::data(payload.slice(at..at + 16 * 1024))))
                    .await
                    .unwrap();
            }
        }
    });
    assert!(exchange(&mut conn, &mut post("/chunked", body)).await.2);
    within(feeder).await.unwrap();

    let requests = hang_up(conn, backend).await;
    let mut full =
        b"POST /full HTTP/1.1\r\nhost: es.example\r\ncontent-length: 1048576\r\n\r\n".to_vec();
    full.extend_from_slice(&payload);
    assert!(requests[0] == full, "the content-length upload differs");
    let mut chunked =
        b"POST /chunked HTTP/1.1\r\nhost: es.example\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for piece in payload.chunks(16 * 1024) {
        chunked.extend_from_slice(b"4000\r\n");
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert!(requests[1] == chunked, "the chunked upload differs");
}
