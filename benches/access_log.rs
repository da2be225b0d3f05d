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
use portcullis::access_log::{AccessLog, Format, Line, WriterSettings, format};
use portcullis::endpoint::{PrivateEndpoint, VpceId};

fn line() -> Line<'static> {
    Line {
        time: SystemTime::now(),
        duration: Duration::from_micros(1234),
        request_id: "008e36f27ab037441a12ee7f74e6cf41",
        client_ip: "203.0.113.9".parse().expect("ip"),
        peer: "10.0.3.7:43316".parse().expect("addr"),
        endpoint: VpceId::parse(b"vpce-0a1b2c3d4e5f67890")
            .ok()
            .map(PrivateEndpoint::AwsVpce),
        sni: "my-deployment-d53192.es.us-east-1.aws.example.com",
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
    g.finish();
    thread.close(Duration::from_secs(5));
    c.final_summary();
}
