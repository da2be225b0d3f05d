//! Access-log cost on the request path (issue 10): formatting one line, and
//! formatting + handing it to the batching writer (which writes into
//! `io::sink()` on its own thread, as it writes to stdout in production).
//!
//! ```text
//! cargo bench --bench access_log
//! ```
//!
//! The whole-proxy figure (CPU per request with the log on vs off, same
//! binary) comes from `benches/compare.sh`; this isolates the worker's
//! share of it.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput};
use portcullis::access_log::{AccessLog, Format, Line, Origin, WriterSettings, format};
use portcullis::endpoint::{PrivateEndpoint, VpceId};

fn line() -> Line<'static> {
    Line {
        time: SystemTime::now(),
        duration: Duration::from_micros(1234),
        request_id: "008e36f27ab037441a12ee7f74e6cf41",
        origin: Origin {
            client_ip: "203.0.113.9".parse().expect("ip"),
            peer: "10.0.3.7:43316".parse().expect("addr"),
            endpoint: VpceId::parse(b"vpce-0a1b2c3d4e5f67890")
                .ok()
                .map(PrivateEndpoint::AwsVpce),
            sni: "my-deployment-d53192.es.us-east-1.aws.example.com",
        },
        formatted_origin: None,
        host: "my-deployment-d53192.es.us-east-1.aws.example.com",
        deployment: "d53192a1f0e54c0bb2c1b0c6a6f6e2f1",
        product: "es",
        method: "GET",
        path: "/logs-2024.11.23/_search",
        version: "HTTP/1.1",
        status: 200,
        bytes: 612,
        decision: "allowed",
        reason: "vpce",
        status_reason: "",
        policy: "prod-vpce",
    }
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let l = line();
    let mut g = c.benchmark_group("access_log");
    g.throughput(Throughput::Elements(1));
    for (name, f) in [("format_json", Format::Json), ("format_text", Format::Text)] {
        let mut out = Vec::with_capacity(1024);
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                format::write(f, black_box(&l), &mut out);
                black_box(out.len())
            })
        });
    }
    let settings = WriterSettings {
        batch_bytes: portcullis::access_log::DEFAULT_BATCH_BYTES,
        flush_interval: portcullis::access_log::DEFAULT_FLUSH_INTERVAL,
        max_buffered_bytes: portcullis::access_log::DEFAULT_MAX_BUFFERED_BYTES,
    };
    let registry = portcullis::metrics::registry();
    let (log, mut thread) =
        AccessLog::start(Format::Json, settings, Box::new(std::io::sink()), &registry)
            .expect("access log");
    g.bench_function("log_json_to_writer", |b| b.iter(|| log.log(black_box(&l))));
    // As the server writes a request's line: the connection's origin
    // formatted once, when it was accepted.
    let origin = log.format_origin(&l.origin);
    let per_connection = Line {
        formatted_origin: Some(&origin),
        ..l
    };
    g.bench_function("log_json_to_writer_origin_formatted", |b| {
        b.iter(|| log.log(black_box(&per_connection)))
    });
    g.finish();

    // The line's timestamp (the second cached per thread, only the
    // fractional digits written per line) against writing every digit by
    // hand: the hand-written one below is what the access log used before
    // humantime, kept as the yardstick.
    let mut g = c.benchmark_group("timestamp");
    let now = SystemTime::now();
    let mut out = Vec::with_capacity(64);
    g.bench_function("by_hand_micros", |b| {
        b.iter(|| {
            out.clear();
            by_hand_rfc3339_micros(black_box(now), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("cached_second_micros", |b| {
        b.iter(|| {
            out.clear();
            format::rfc3339(black_box(now), 6, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
    thread.close(Duration::from_secs(5));
    c.final_summary();
}

/// RFC 3339 with microseconds, digit by digit (Howard Hinnant's
/// `civil_from_days` for the date).
fn by_hand_rfc3339_micros(t: SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut pad = |n: u64, width: usize, sep: u8| {
        let mut digits = [b'0'; 8];
        let mut n = n;
        for d in digits[..width].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend_from_slice(&digits[..width]);
        out.push(sep);
    };
    pad(year, 4, b'-');
    pad(month, 2, b'-');
    pad(day, 2, b'T');
    pad(rem / 3600, 2, b':');
    pad(rem % 3600 / 60, 2, b':');
    pad(rem % 60, 2, b'.');
    pad(u64::from(d.subsec_micros()), 6, b'Z');
}
