//! `portcullis-loadgen`: load for portcullis (and, for comparison, nginx and
//! HAProxy) the way a cloud load balancer delivers it: TCP, a PROXY v2
//! header with a client address (and optionally a private endpoint TLV) per
//! connection, TLS with SNI, then HTTP/1.1 or HTTP/2.
//!
//! ```text
//! # Most requests per second 64 keep-alive connections can get, for 10 s:
//! portcullis-loadgen --target 127.0.0.1:9243 --host my-dep.es.example.com \
//!     --ca cert.pem --connections 64 --duration 10s
//! # 5000 requests/s, latency counted from the intended send time:
//! portcullis-loadgen ... --mode open --rate 5000 --connections 128
//! # A new TLS connection per request, 10% of clients from a denied range:
//! portcullis-loadgen ... --requests-per-connection 1 \
//!     --denied-source 198.18.0.0/15 --denied-share 10
//! # Hold 5000 idle connections for 10 s; report the server's RSS growth:
//! portcullis-loadgen ... --mode idle --connections 5000 --measure-pid 1234
//! ```
//!
//! Every mode stops by itself after `--duration` (plus at most a few
//! `--timeout`s for requests in flight). Failures are counted by kind and
//! reported, never fatal. `--json` prints one object instead of text.
//!
//! `portcullis-loadgen report run|rate|results` is benches/compare.sh's
//! bookkeeping over those JSON objects (see `report/compare.rs`).

#![forbid(unsafe_code)]

mod client;
mod proxy_header;
mod report;
mod run;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ipnet::IpNet;
use rustls::pki_types::ServerName;

use client::{
    Cipher, HttpVersion, KeyExchange, ProxyMode, RequestTemplate, Settings, TlsOptions, TlsVersion,
};
use proxy_header::{Endpoint, Sources};
use run::{Mode, Plan};

#[derive(Parser, Debug)]
#[command(
    name = "portcullis-loadgen",
    about = "PROXY v2 + TLS + HTTP load generator (closed loop, open loop, idle connections)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: Args,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// benches/compare.sh's bookkeeping over runs' --json output
    #[command(subcommand)]
    Report(report::compare::Command),
}

/// What to load, how, and what to report: the command line without a
/// subcommand.
#[derive(Parser, Debug)]
pub struct Args {
    /// Server address (loopback in benches)
    #[arg(long, default_value = "127.0.0.1:9243")]
    target: SocketAddr,
    /// Host header / :authority
    #[arg(long, default_value = "open-deployment.es.localhost")]
    host: String,
    /// TLS server name (default: --host without its port)
    #[arg(long)]
    sni: Option<String>,
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long, default_value = "GET")]
    method: String,
    /// Extra request header "Name: value" (repeatable)
    #[arg(long = "header")]
    headers: Vec<String>,

    /// closed: max throughput; open: fixed --rate; idle: hold connections
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Connections (closed/open: kept busy; idle: opened and held)
    #[arg(short, long, default_value_t = 16)]
    connections: usize,
    /// Open loop: requests per second
    #[arg(long)]
    rate: Option<f64>,
    /// How long to run (closed/open) or hold (idle): 10s, 500ms, 2m
    #[arg(short, long, default_value = "10s", value_parser = portcullis::config::duration::parse)]
    duration: Duration,
    /// Limit for each stage: connect, PROXY write, TLS, each request
    #[arg(long, default_value = "10s", value_parser = portcullis::config::duration::parse)]
    timeout: Duration,
    /// 0 keeps connections alive; 1 opens a new connection per request
    #[arg(long, default_value_t = 0)]
    requests_per_connection: u64,
    #[arg(long, value_enum, default_value_t = HttpVersion::H1)]
    http: HttpVersion,
    /// HTTP/2: concurrent streams per connection
    #[arg(long, default_value_t = 1)]
    h2_streams: usize,
    /// Connections opened at once while ramping up
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Idle mode: give up opening connections after this long
    #[arg(long, default_value = "120s", value_parser = portcullis::config::duration::parse)]
    ramp_timeout: Duration,
    /// Idle mode: write the number of open connections here once all are open
    #[arg(long)]
    ready_file: Option<PathBuf>,

    #[arg(long, value_enum, default_value_t = ProxyMode::V2)]
    proxy_protocol: ProxyMode,
    /// Client source range (repeatable); default TEST-NET-3
    #[arg(long = "source", default_value = "203.0.113.0/24")]
    sources: Vec<IpNet>,
    /// Source range for "denied" clients (repeatable)
    #[arg(long = "denied-source")]
    denied_sources: Vec<IpNet>,
    /// Percentage of connections from the denied ranges
    #[arg(long, default_value_t = 0.0)]
    denied_share: f64,
    /// Private endpoint TLV: aws:vpce-ID, azure:LINKID or gcp:PSCID (repeatable; cycled)
    #[arg(long = "endpoint", value_parser = proxy_header::parse_endpoint)]
    endpoints: Vec<Endpoint>,
    /// Percentage of connections carrying an endpoint TLV
    #[arg(long, default_value_t = 100.0)]
    endpoint_share: f64,

    /// Plain TCP instead of TLS
    #[arg(long, conflicts_with_all = ["ca", "insecure"])]
    plaintext: bool,
    /// PEM file of the certificate(s) to trust
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Accept any server certificate (signatures still checked)
    #[arg(long)]
    insecure: bool,
    #[arg(long, value_enum, default_value_t = TlsVersion::Any)]
    tls_version: TlsVersion,
    /// Key exchange offered (x25519 matches OpenSSL 3.0 servers)
    #[arg(long, value_enum, default_value_t = KeyExchange::Default)]
    kx: KeyExchange,
    /// Bulk cipher offered
    #[arg(long, value_enum, default_value_t = Cipher::Default)]
    cipher: Cipher,
    /// Resume TLS sessions (default: full handshake on every connection)
    #[arg(long)]
    tls_resume: bool,

    /// Server process whose CPU time and RSS to report (repeatable; summed)
    #[arg(long = "measure-pid")]
    measure_pids: Vec<u32>,
    /// Runtime worker threads (default: the CPUs this process may use)
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
    /// Exit 1 if any error was counted
    #[arg(long)]
    fail_on_errors: bool,
    /// Exit 1 unless this status was seen at least once (repeatable)
    #[arg(long = "expect-status")]
    expect_status: Vec<u16>,
}

fn main() -> ExitCode {
    let args = match Cli::try_parse() {
        Ok(Cli {
            command: Some(Command::Report(command)),
            ..
        }) => {
            return match report::compare::execute(command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis-loadgen report: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Ok(cli) => cli.load,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let (plan, settings, sources) = match prepare(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("portcullis-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        runtime.worker_threads(n.max(1));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis-loadgen: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let stats = match stats::Stats::new() {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("portcullis-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(run::execute(plan, settings, sources, stats.clone()));
    // Connection tasks still draining are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));

    let counts = stats.lock();
    let report = report::Report {
        args: &args,
        counts: &counts,
        outcome: &outcome,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    for w in &outcome.warnings {
        eprintln!("portcullis-loadgen: warning: {w}");
    }
    let problems = report.check(args.fail_on_errors, &args.expect_status);
    for p in &problems {
        eprintln!("portcullis-loadgen: check failed: {p}");
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn prepare(args: &Args) -> Result<(Plan, Settings, Sources), String> {
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let rate = match (args.mode, args.rate) {
        (Mode::Open, Some(r)) if r.is_finite() && r > 0.0 && r <= 10_000_000.0 => r,
        (Mode::Open, _) => return Err("open loop needs --rate R (requests/s, > 0)".into()),
        (_, Some(_)) => return Err("--rate is for --mode open".into()),
        (_, None) => 0.0,
    };
    if args.h2_streams == 0 || (args.h2_streams > 1 && args.http != HttpVersion::H2) {
        return Err("--h2-streams must be 1 for HTTP/1.1, and at least 1".into());
    }
    if args
        .endpoints
        .iter()
        .any(|_| args.proxy_protocol != ProxyMode::V2)
    {
        return Err("--endpoint TLVs need --proxy-protocol v2".into());
    }
    let sources = Sources::new(
        args.sources.clone(),
        args.denied_sources.clone(),
        args.denied_share,
        args.endpoints.clone(),
        args.endpoint_share,
    )?;
    let tls = if args.plaintext {
        None
    } else {
        Some(client::tls_config(&TlsOptions {
            ca: args.ca.as_deref(),
            insecure: args.insecure,
            version: args.tls_version,
            kx: args.kx,
            cipher: args.cipher,
            resume: args.tls_resume,
            http: args.http,
        })?)
    };
    let sni = args
        .sni
        .clone()
        .unwrap_or_else(|| host_without_port(&args.host));
    let server_name =
        ServerName::try_from(sni.clone()).map_err(|e| format!("--sni {sni:?}: {e}"))?;
    let request = RequestTemplate::new(
        &args.method,
        &args.host,
        &args.path,
        &args.headers,
        tls.is_some(),
    )?;
    let settings = Settings {
        target: args.target,
        proxy: args.proxy_protocol,
        tls,
        server_name,
        http: args.http,
        timeout: args.timeout,
        request,
    };
    let plan = Plan {
        mode: args.mode,
        connections: args.connections,
        streams: args.h2_streams,
        rate,
        duration: args.duration,
        requests_per_connection: args.requests_per_connection,
        seed: args.seed,
        measure_pids: args.measure_pids.clone(),
        connect_concurrency: args.connect_concurrency,
        ramp_timeout: args.ramp_timeout,
        ready_file: args.ready_file.clone(),
    };
    Ok((plan, settings, sources))
}

/// `host:port` → `host`; `[v6]:port` → `v6`.
fn host_without_port(host: &str) -> String {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_owned();
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_owned(),
        _ => host.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_without_port("a.es.localhost:9243"), "a.es.localhost");
        assert_eq!(host_without_port("a.es.localhost"), "a.es.localhost");
        assert_eq!(host_without_port("[::1]:9243"), "::1");
    }

    #[test]
    fn arguments_are_checked_before_running() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["portcullis-loadgen", "--insecure"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
                .map_err(|e| e.to_string())
                .and_then(|a| prepare(&a).map(|_| ()))
        };
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--mode", "open"]).is_err());
        assert!(parse(&["--mode", "open", "--rate", "100"]).is_ok());
        assert!(parse(&["--rate", "100"]).is_err());
        assert!(parse(&["--h2-streams", "4"]).is_err());
        assert!(parse(&["--http", "h2", "--h2-streams", "4"]).is_ok());
        assert!(parse(&["--endpoint", "aws:vpce-1", "--proxy-protocol", "v1"]).is_err());
        assert!(parse(&["--denied-share", "10"]).is_err());
        assert!(parse(&["--plaintext", "--ca", "x.pem"]).is_err());
        assert!(
            Args::try_parse_from(["portcullis-loadgen"])
                .map_err(|e| e.to_string())
                .and_then(|a| prepare(&a).map(|_| ()))
                .is_err(),
            "TLS without --ca or --insecure"
        );
    }
}
