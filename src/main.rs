//! The `portcullis` command: CLI parsing, logging, signals. The work lives
//! in the library; this file only wires it to the process.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use portcullis::access_log::Format as LineFormat;
use portcullis::endpoint::{PrivateEndpoint, VpceId};
use portcullis::explain;
use portcullis::policy::{
    Counterparts, PolicyOptions, PolicySet, Snapshot, SnapshotErrors, UnassociatedPrivateTraffic,
    parse_snapshot, parse_snapshot_over,
};
use portcullis::publish::{self, Counts};
use portcullis::reload::etcd::{self, EtcdSettings};
use portcullis::route::Router;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Ingress filter for hosted Elasticsearch deployments"
)]
struct Cli {
    /// Log format for operational and access logs (default: the config's
    /// `log.format`, else text)
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve, as configured.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run out of the box on loopback: self-signed certificate, sample
    /// snapshot and backend, and curl lines to try.
    Demo {
        #[arg(long, default_value_t = 9243)]
        port: u16,
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
    /// Validate a snapshot: print a summary, or every error (exit 1).
    Check {
        #[arg(long)]
        snapshot: PathBuf,
    },
    /// Decide a described request against a snapshot and say why.
    Explain(Box<ExplainArgs>),
    /// Write a snapshot to an etcd prefix, one key per entry, writing only
    /// what differs (validated whole first; exit 1 and nothing written
    /// when invalid).
    Publish(Box<PublishArgs>),
}

#[derive(clap::Args)]
struct PublishArgs {
    /// The snapshot file, validated whole before anything is written
    #[arg(long)]
    snapshot: PathBuf,
    /// etcd endpoints, comma-separated: http://host:port or https://host:port
    #[arg(long = "etcd", required = true, value_delimiter = ',', value_parser = parse_endpoint)]
    endpoints: Vec<String>,
    /// Every key is written under this prefix
    #[arg(long, default_value = etcd::client::DEFAULT_PREFIX, value_parser = parse_prefix)]
    prefix: String,
    /// Print what would change; write nothing
    #[arg(long)]
    dry_run: bool,
    /// PEM CA bundle for https:// endpoints (the system store is trusted too)
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for clusters that require one
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM)
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// etcd user; the password is read from --password-file
    #[arg(long, requires = "password_file")]
    user: Option<String>,
    /// A file holding --user's password (one line)
    #[arg(long, requires = "user")]
    password_file: Option<PathBuf>,
    /// Bound on each etcd request (default 10s)
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
}

impl PublishArgs {
    fn settings(&self) -> EtcdSettings {
        let mut s = EtcdSettings::new(self.endpoints.clone(), &self.prefix);
        s.ca_file.clone_from(&self.ca_file);
        s.cert_file.clone_from(&self.cert_file);
        s.key_file.clone_from(&self.key_file);
        s.user.clone_from(&self.user);
        s.password_file.clone_from(&self.password_file);
        if let Some(t) = self.timeout {
            s.request_timeout = t;
        }
        s
    }
}

fn parse_endpoint(s: &str) -> Result<String, String> {
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(s.to_owned())
    } else {
        Err("expected http://host:port or https://host:port".to_owned())
    }
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty (it would claim the whole keyspace)".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("endpoint").multiple(false))]
struct ExplainArgs {
    #[arg(long)]
    snapshot: PathBuf,
    /// Request host (HTTP Host / :authority), e.g. my-alias.es.example.com
    #[arg(long)]
    host: String,
    /// Client source address (as the PROXY header would carry it)
    #[arg(long)]
    source: IpAddr,
    /// The request arrived through this AWS VPC endpoint
    #[arg(long, group = "endpoint", value_parser = parse_vpce)]
    aws_vpce: Option<VpceId>,
    /// The request arrived through this Azure private endpoint LinkID
    #[arg(long, group = "endpoint")]
    azure_link_id: Option<u32>,
    /// The request arrived through this GCP PSC connection id
    #[arg(long, group = "endpoint")]
    gcp_psc_id: Option<u64>,
    /// TLS server name, to check for misdirected requests
    #[arg(long)]
    sni: Option<String>,
    /// X-Found-Cluster header value
    #[arg(long)]
    found_cluster: Option<String>,
    /// Zone suffix (repeatable). Without one, any zone is accepted.
    #[arg(long = "zone")]
    zones: Vec<String>,
    /// The static `policy.unassociated_private_traffic` setting
    #[arg(long, value_enum, default_value_t = PrivateDefault::Allow)]
    unassociated_private_traffic: PrivateDefault,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

impl From<LogFormat> for LineFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => Self::Text,
            LogFormat::Json => Self::Json,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum PrivateDefault {
    Allow,
    Deny,
}

fn parse_vpce(s: &str) -> Result<VpceId, String> {
    VpceId::parse(s.as_bytes()).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // Before anything allocates much: see its comment.
    portcullis::memory::fix_allocator_thresholds();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors
            // to stderr (exit 2, SPEC §5).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Check { snapshot } => check(&snapshot),
        Command::Explain(args) => explain_cmd(&args),
        Command::Publish(args) => publish_cmd(&args),
        Command::Run { config } => {
            let mut config = match portcullis::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            if let Some(format) = cli.log_format {
                config.log.format = format.into();
            }
            let _logs = init_logging(config.log.format);
            serve_until_signalled(|shutdown| portcullis::run(config, shutdown))
        }
        Command::Demo { port, admin_port } => {
            let format = cli.log_format.map_or_else(LineFormat::default, Into::into);
            let _logs = init_logging(format);
            let ports = portcullis::demo::DemoPorts {
                proxy: port,
                admin: admin_port,
            };
            serve_until_signalled(|shutdown| portcullis::demo::run(ports, format, shutdown))
        }
    }
}

/// Logs go to stdout through a background writer; keep the returned guard
/// alive so buffered lines are flushed at exit.
fn init_logging(format: LineFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LineFormat::Text => builder.with_ansi(false).init(),
        LineFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    guard
}

/// Builds the runtime, runs `serve`, and turns SIGINT/SIGTERM into a drain
/// (the second one into an immediate stop).
fn serve_until_signalled<F, Fut>(serve: F) -> ExitCode
where
    F: FnOnce(portcullis::Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), portcullis::Error>>,
{
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::from(1);
    };
    runtime.block_on(async {
        let (trigger, shutdown) = portcullis::shutdown::channel();
        tokio::spawn(async move {
            for _ in 0..2 {
                if wait_for_signal().await.is_err() {
                    return;
                }
                if matches!(
                    trigger.subscribe().phase(),
                    portcullis::shutdown::Phase::Running
                ) {
                    tracing::info!("signal received: draining (send again to stop at once)");
                    trigger.drain();
                } else {
                    tracing::warn!("second signal: stopping now");
                    trigger.abort();
                }
            }
        });
        match serve(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let chain = portcullis::reload::error_chain(&e);
                tracing::error!("{chain}");
                eprintln!("error: {chain}");
                ExitCode::from(1)
            }
        }
    })
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Reads a snapshot file; on failure prints why and returns exit code 1.
fn read_file(path: &Path) -> Result<Vec<u8>, ExitCode> {
    std::fs::read(path)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(|e| {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        })
}

/// Prints a snapshot's errors and returns exit code 1.
fn invalid(path: &Path, errors: &SnapshotErrors) -> ExitCode {
    eprintln!("{}: {errors}", path.display());
    ExitCode::from(1)
}

/// Reads and validates a snapshot file into its model; on failure prints
/// why and returns exit code 1.
fn load(path: &Path) -> Result<Snapshot, ExitCode> {
    let bytes = read_file(path)?;
    parse_snapshot(&bytes).map_err(|errors| invalid(path, &errors))
}

/// Validates and compiles a snapshot file the way the proxy loads one
/// (`reload::prepare_over` over no set): each policy compiled as it is
/// read, the rules never all held as models. So the verdict is the
/// proxy's, and the large snapshot is checked in the time and memory of
/// a first load rather than those of a model read whole and then
/// compiled.
fn check(path: &Path) -> ExitCode {
    let bytes = match read_file(path) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let read = match parse_snapshot_over(&bytes, Counterparts::none()) {
        Ok(read) => read,
        Err(errors) => return invalid(path, &errors),
    };
    drop(bytes);
    // Read over no set, so `compile` has nothing to be read over and
    // always answers; `None` would be a bug, said as one.
    let Some(set) = read.compile(PolicyOptions::default(), None) else {
        eprintln!("error: internal: the snapshot was read over a set it was not compiled with");
        return ExitCode::from(1);
    };
    let s = set.stats();
    println!(
        "{}: valid snapshot version {}: {} deployments, {} policies ({} distinct policy sets), {} ip rules in {} ranges, {} private endpoint ids",
        path.display(),
        set.version(),
        s.deployments,
        s.policies,
        s.policy_sets,
        s.ip_rules,
        s.ip_ranges,
        s.endpoint_ids
    );
    ExitCode::SUCCESS
}

fn explain_cmd(args: &ExplainArgs) -> ExitCode {
    let snapshot = match load(&args.snapshot) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let options = PolicyOptions {
        unassociated_private_traffic: match args.unassociated_private_traffic {
            PrivateDefault::Allow => UnassociatedPrivateTraffic::Allow,
            PrivateDefault::Deny => UnassociatedPrivateTraffic::Deny,
        },
    };
    let set = PolicySet::compile(&snapshot, options);
    let router = if args.zones.is_empty() {
        Router::any_zone()
    } else {
        Router::new(&args.zones)
    };
    let endpoint = args
        .aws_vpce
        .map(PrivateEndpoint::AwsVpce)
        .or(args.azure_link_id.map(PrivateEndpoint::AzureLinkId))
        .or(args.gcp_psc_id.map(PrivateEndpoint::GcpPscConnectionId));
    let query = explain::Query {
        host: &args.host,
        sni: args.sni.as_deref(),
        found_cluster: args.found_cluster.as_deref(),
        client: explain::client(args.source, endpoint),
    };
    let decision = explain::explain(&set, &router, &query);
    match args.format {
        Format::Text => print!(
            "{}",
            explain::to_text(&set, Some(&snapshot), &query, &decision)
        ),
        Format::Json => match serde_json::to_string(&explain::to_json(&set, &decision)) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        },
    }
    ExitCode::SUCCESS
}

/// Every this many transactions, a progress line on stderr.
const PROGRESS_EVERY: usize = 10;

fn publish_cmd(args: &PublishArgs) -> ExitCode {
    let snapshot = match load(&args.snapshot) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let settings = args.settings();
    let problems = settings.problems();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("error: {p}");
        }
        return ExitCode::from(2);
    }
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::from(1);
    };
    match runtime.block_on(publish_to(&settings, &snapshot, args.dry_run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Plans, prints and (unless `dry_run`) writes; each entry's line is
/// printed once the transaction holding it is committed.
async fn publish_to(
    settings: &EtcdSettings,
    snapshot: &Snapshot,
    dry_run: bool,
) -> anyhow::Result<()> {
    let mut client = etcd::connect(settings, &settings.endpoints)
        .await
        .context("connecting to etcd")?;
    let plan = publish::prepare(&mut client, settings, snapshot).await?;
    for i in &plan.ignored {
        eprintln!("note: {}: not an entry ({}); left alone", i.key, i.reason);
    }
    let counts = plan.counts();
    if dry_run {
        plan.steps.iter().for_each(|s| println!("{s}"));
        println!(
            "dry run, nothing written to {}: {}, {} unchanged (etcd revision {})",
            settings.prefix,
            describe(counts, "to add", "to change", "to remove"),
            plan.unchanged,
            plan.revision
        );
        return Ok(());
    }
    let revision = publish::write(&mut client, settings, &plan, |c| {
        c.steps.iter().for_each(|s| println!("{s}"));
        if c.of > PROGRESS_EVERY && (c.transaction % PROGRESS_EVERY == 0 || c.transaction == c.of) {
            eprintln!(
                "publish: {} of {} transactions written (etcd revision {})",
                c.transaction, c.of, c.revision
            );
        }
    })
    .await?;
    println!(
        "published to {}: {}, {} unchanged; etcd revision {revision}",
        settings.prefix,
        describe(counts, "added", "changed", "removed"),
        plan.unchanged
    );
    Ok(())
}

fn describe(c: Counts, added: &str, changed: &str, removed: &str) -> String {
    format!(
        "{} {added}, {} {changed}, {} {removed}",
        c.added, c.changed, c.removed
    )
}

/// Builds a runtime from `builder`, or says why it could not.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}
