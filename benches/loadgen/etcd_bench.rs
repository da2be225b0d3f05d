//! `portcullis-etcd-bench`: what a change costs a fleet that follows etcd
//! (benches/etcd.sh runs it against a real etcd and a real proxy).
//!
//! ```text
//! # put→swap: change one policy, then poll the proxy's GET /snapshot (every
//! # 2 ms, one keep-alive connection) until the put's revision is in force;
//! # repeated, each timed on its own, with etcd's share (the put's round
//! # trip, its fsync included) reported apart.
//! portcullis-etcd-bench latency --etcd http://127.0.0.1:23790 --admin 127.0.0.1:9901 --changes 10
//! # changes at a steady rate for a while (a load runs beside it).
//! portcullis-etcd-bench churn --etcd http://127.0.0.1:23790 --rate 10 --duration 10s
//! # fan-out: N watchers (own connections) in this process, one change;
//! # how long until every watcher has it.
//! portcullis-etcd-bench followers --etcd http://127.0.0.1:23790 --followers 200
//! ```
//!
//! The change is always the same kind: the first `ip` policy under the
//! prefix gets its description rewritten (a new value, one key), which a
//! proxy validates and compiles like any other policy change.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use etcd_client::{Client, GetOptions, WatchOptions};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "What an etcd change costs portcullis followers")]
struct Cli {
    /// An etcd member
    #[arg(long, global = true, default_value = "http://127.0.0.1:2379")]
    etcd: String,
    /// The prefix the proxies follow
    #[arg(long, global = true, default_value = "/portcullis/")]
    prefix: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// put→swap latency, one change at a time
    Latency {
        /// The proxy's admin API
        #[arg(long)]
        admin: SocketAddr,
        #[arg(long, default_value_t = 10)]
        changes: usize,
    },
    /// Changes at a steady rate
    Churn {
        #[arg(long, default_value_t = 10)]
        rate: u32,
        #[arg(long, value_parser = portcullis::config::duration::parse, default_value = "10s")]
        duration: Duration,
    },
    /// Watchers in this process, one change: the time until all have it
    Followers {
        #[arg(long, default_value_t = 200)]
        followers: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = Client::connect([cli.etcd.as_str()], None)
        .await
        .context("connect to etcd")?;
    let mut change = Changer::find(&mut client, &cli.prefix).await?;
    match cli.command {
        Command::Latency { admin, changes } => {
            let mut took = Vec::with_capacity(changes);
            let mut acked = Vec::with_capacity(changes);
            let mut admin = Admin::new(admin);
            for _ in 0..changes {
                let started = Instant::now();
                let revision = change.next(&mut client).await?;
                acked.push(started.elapsed());
                admin.wait_for(revision).await?;
                took.push(started.elapsed());
                // Changes apart, so each is timed alone.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            report("put → swap in force", &mut took);
            report("  of which etcd's put, to its acknowledgement", &mut acked);
        }
        Command::Churn { rate, duration } => {
            let every = Duration::from_secs(1) / rate.max(1);
            let mut tick = tokio::time::interval(every);
            let end = Instant::now() + duration;
            let mut n = 0;
            while Instant::now() < end {
                tick.tick().await;
                change.next(&mut client).await?;
                n += 1;
            }
            println!("{n} changes in {duration:?}");
        }
        Command::Followers { followers } => {
            // One client (one connection) per watcher, as separate proxies
            // have; kept until the end.
            let mut clients = Vec::with_capacity(followers);
            let mut streams = Vec::with_capacity(followers);
            for _ in 0..followers {
                let mut c = Client::connect([cli.etcd.as_str()], None).await?;
                let options = WatchOptions::new().with_prefix();
                streams.push(c.watch(cli.prefix.clone(), Some(options)).await?);
                clients.push(c);
            }
            let started = Instant::now();
            let revision = change.next(&mut client).await?;
            let mut seen = Vec::with_capacity(followers);
            for mut s in streams {
                seen.push(tokio::spawn(async move {
                    while let Ok(Some(r)) = s.message().await {
                        if r.events()
                            .iter()
                            .any(|e| e.kv().is_some_and(|kv| kv.mod_revision() >= revision))
                        {
                            return Some(started.elapsed());
                        }
                    }
                    None
                }));
            }
            let mut took = Vec::with_capacity(followers);
            for task in seen {
                match tokio::time::timeout(Duration::from_secs(30), task).await {
                    Ok(Ok(Some(t))) => took.push(t),
                    _ => bail!("a watcher did not see the change within 30 s"),
                }
            }
            report(
                &format!("put → seen by each of {followers} watchers"),
                &mut took,
            );
            drop(clients);
        }
    }
    Ok(())
}

/// Rewrites one `ip` policy's description, a new value each time.
struct Changer {
    key: Vec<u8>,
    policy: Value,
    n: u64,
}

impl Changer {
    async fn find(client: &mut Client, prefix: &str) -> anyhow::Result<Self> {
        let options = GetOptions::new().with_prefix().with_limit(1000);
        let page = client
            .get(format!("{prefix}policies/"), Some(options))
            .await?;
        for kv in page.kvs() {
            let policy: Value = serde_json::from_slice(kv.value())?;
            if policy["type"] == "ip" {
                return Ok(Self {
                    key: kv.key().to_vec(),
                    policy,
                    n: 0,
                });
            }
        }
        bail!("no ip policy in the first 1000 under {prefix}policies/: publish a snapshot first")
    }

    /// Puts the next version; returns its revision.
    async fn next(&mut self, client: &mut Client) -> anyhow::Result<i64> {
        self.n += 1;
        self.policy["description"] = Value::from(format!("bench change {}", self.n));
        let value = serde_json::to_vec(&self.policy)?;
        let put = client.put(self.key.clone(), value, None).await?;
        put.header()
            .map(|h| h.revision())
            .context("etcd answered without a header")
    }
}

/// The proxy's admin API, asked for the revision in force over one
/// keep-alive connection: a poll costs the proxy a small request, not a
/// connection, so polling does not take CPU from the change it times
/// (the proxy compiles at idle priority; every poll comes first).
struct Admin {
    addr: SocketAddr,
    conn: Option<hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>>,
}

/// Between polls: the resolution of the put → swap figure.
const POLL_EVERY: Duration = Duration::from_millis(2);

impl Admin {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// Polls `GET /snapshot` until `revision` (or a later one) is in force.
    async fn wait_for(&mut self, revision: i64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let version = match self.snapshot_version().await {
                Ok(v) => v,
                Err(_) => {
                    // A new connection next time.
                    self.conn = None;
                    0
                }
            };
            if version >= revision {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("revision {revision} not in force after 60 s (at {version})");
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    async fn snapshot_version(&mut self) -> anyhow::Result<i64> {
        let send = match &mut self.conn {
            Some(send) if !send.is_closed() => send,
            _ => {
                let tcp = tokio::net::TcpStream::connect(self.addr).await?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                self.conn.insert(send)
            }
        };
        send.ready().await?;
        let req = http::Request::get("/snapshot")
            .header(http::header::HOST, self.addr.to_string())
            .body(Empty::<bytes::Bytes>::new())?;
        let body = send
            .send_request(req)
            .await?
            .into_body()
            .collect()
            .await?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body)?;
        v["snapshot"]["version"]
            .as_i64()
            .context("no snapshot version")
    }
}

fn report(what: &str, took: &mut [Duration]) {
    took.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let p = |q: f64| took.get(((took.len() as f64 - 1.0) * q).round() as usize);
    println!(
        "{what}: median {:.1} ms, p90 {:.1} ms, max {:.1} ms (min {:.1} ms, {} samples)",
        ms(p(0.5)),
        ms(p(0.9)),
        ms(took.last()),
        ms(took.first()),
        took.len()
    );
}
