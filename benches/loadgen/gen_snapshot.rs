//! `portcullis-gen-snapshot`: writes a seeded synthetic snapshot (see
//! `portcullis_test_kit::synth`) for benches and load tests, optionally
//! led by the deployment benches/compare.sh measures: one allow-list
//! policy of the CIDRs in a file.
//!
//! ```text
//! portcullis-gen-snapshot --scale large --seed 1 --out /tmp/large.json
//! portcullis-gen-snapshot --scale none --allow-list allow.lst \
//!     --allow-list-deployment c0ffee… --allow-list-backend 127.0.0.1:24400 --out bench.json
//! ```
//!
//! "version" is written last, so a document is a prefix plus
//! `,"version":N}`; `--prefix-out` writes that prefix alone, from which a
//! reload storm makes each `PUT /snapshot` body without re-serialising.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Parser;
use ipnet::IpNet;
use portcullis::policy::{
    Deployment, Enforcement, IpRule, Policy, Product, Region, Resource, Rules, Snapshot,
};
use portcullis_test_kit::synth::{Scale, generate};

/// The allow-list deployment's alias and policy id: compare.sh's host name
/// (`bench.es.bench.test`) and the access-log field nginx and HAProxy copy.
const BENCH_ALIAS: &str = "bench";
const BENCH_POLICY: &str = "bench-allow-list";
const BENCH_REGION: &str = "aws-us-east-1";

#[derive(Parser)]
#[command(about = "Write a seeded synthetic portcullis snapshot")]
struct Args {
    /// none (only what --allow-list adds), small (100 deployments, 1k
    /// rules), medium (10k, 100k), large (100k, 1M)
    #[arg(long, default_value = "small")]
    scale: String,
    /// Override the scale's deployment count
    #[arg(long)]
    deployments: Option<usize>,
    /// Override the scale's IP rule count
    #[arg(long)]
    ip_rules: Option<usize>,
    /// Override the scale's private endpoint id count
    #[arg(long)]
    endpoint_ids: Option<usize>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Snapshot version to write
    #[arg(long, default_value_t = 1)]
    version: u64,
    /// A file of CIDRs, one per line: put first a deployment (alias
    /// `bench`) whose one IP policy (`bench-allow-list`) lists them
    #[arg(long, requires_all = ["allow_list_deployment", "allow_list_backend"])]
    allow_list: Option<PathBuf>,
    /// The allow-list deployment's id
    #[arg(long)]
    allow_list_deployment: Option<String>,
    /// The allow-list deployment's Elasticsearch backend
    #[arg(long)]
    allow_list_backend: Option<SocketAddr>,
    /// Output file (default: stdout)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the document without its closing `,"version":N}` here
    #[arg(long)]
    prefix_out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut scale = match args.scale.as_str() {
        "none" => Scale {
            deployments: 0,
            ip_rules: 0,
            endpoint_ids: 0,
        },
        name => Scale::named(name)
            .with_context(|| format!("unknown scale {name:?} (none, small, medium, large)"))?,
    };
    scale.deployments = args.deployments.unwrap_or(scale.deployments);
    scale.ip_rules = args.ip_rules.unwrap_or(scale.ip_rules);
    scale.endpoint_ids = args.endpoint_ids.unwrap_or(scale.endpoint_ids);
    let mut snapshot = generate(scale, args.seed);
    if let (Some(list), Some(id), Some(backend)) = (
        &args.allow_list,
        &args.allow_list_deployment,
        args.allow_list_backend,
    ) {
        let (deployment, policy) = allow_list(list, id, backend)?;
        snapshot.deployments.insert(0, deployment);
        snapshot.policies.insert(0, policy);
    }
    let prefix = prefix(&snapshot)?;
    let json = [prefix.as_slice(), version_suffix(args.version).as_bytes()].concat();
    if let Some(path) = &args.prefix_out {
        write(path, &prefix)?;
    }
    match &args.out {
        Some(path) => {
            write(path, &json)?;
            eprintln!(
                "portcullis-gen-snapshot: {} deployments, {} IP rules, {:.1} MiB → {}",
                snapshot.deployments.len(),
                ip_rules(&snapshot),
                json.len() as f64 / 1_048_576.0,
                path.display()
            );
        }
        None => std::io::stdout().lock().write_all(&json)?,
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The snapshot as a JSON object with "version" left out and its closing
/// brace not yet written.
fn prefix(snapshot: &Snapshot) -> serde_json::Result<Vec<u8>> {
    let mut out = b"{\"deployments\":".to_vec();
    serde_json::to_writer(&mut out, &snapshot.deployments)?;
    out.extend_from_slice(b",\"policies\":");
    serde_json::to_writer(&mut out, &snapshot.policies)?;
    Ok(out)
}

fn version_suffix(version: u64) -> String {
    format!(",\"version\":{version}}}")
}

fn ip_rules(snapshot: &Snapshot) -> usize {
    snapshot
        .policies
        .iter()
        .filter_map(|p| match &p.rules {
            Rules::Ip(rules) => Some(rules.len()),
            _ => None,
        })
        .sum()
}

/// The deployment and its allow-list policy, from a file of CIDRs.
fn allow_list(path: &Path, id: &str, backend: SocketAddr) -> anyhow::Result<(Deployment, Policy)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rules = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let source: IpNet = line
                .trim()
                .parse()
                .with_context(|| format!("{}:{}: not a CIDR", path.display(), i + 1))?;
            Ok(IpRule {
                source,
                description: None,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if rules.is_empty() {
        bail!("{}: no CIDRs", path.display());
    }
    let region = Region::parse(BENCH_REGION).context("bench region")?;
    let deployment = Deployment {
        id: id.to_owned(),
        alias: Some(BENCH_ALIAS.to_owned()),
        region: region.clone(),
        enforcement: Enforcement::Enforce,
        resources: BTreeMap::from([(
            Product::Es,
            Resource {
                backends: vec![backend],
            },
        )]),
        policies: vec![BENCH_POLICY.to_owned()],
    };
    let policy = Policy {
        id: BENCH_POLICY.to_owned(),
        name: None,
        description: None,
        region,
        include_by_default: None,
        rules: Rules::Ip(rules),
    };
    Ok((deployment, policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_deployment_leads_a_valid_snapshot_with_version_last() {
        let dir = portcullis_test_kit::TempDir::new();
        let list = dir.write("allow.lst", "203.0.113.0/24\n\n192.0.2.7/32\n");
        let (deployment, policy) =
            allow_list(&list, "c0ffee01", "127.0.0.1:9200".parse().unwrap()).unwrap();
        let mut snapshot = generate(Scale::SMALL, 3);
        snapshot.deployments.insert(0, deployment);
        snapshot.policies.insert(0, policy);

        let prefix = prefix(&snapshot).unwrap();
        let json = [prefix.as_slice(), version_suffix(7).as_bytes()].concat();
        let parsed = portcullis::policy::parse_snapshot(&json).unwrap();
        assert_eq!(parsed.version, 7);
        assert_eq!(parsed.deployments[0].alias.as_deref(), Some(BENCH_ALIAS));
        assert_eq!(parsed.deployments[0].policies, [BENCH_POLICY]);
        assert_eq!(parsed.policies[0].rules.len(), 2);
        assert_eq!(ip_rules(&snapshot), Scale::SMALL.ip_rules + 2);
        assert!(json.ends_with(b",\"version\":7}"));
    }

    #[test]
    fn a_bad_allow_list_line_is_named() {
        let dir = portcullis_test_kit::TempDir::new();
        let list = dir.write("allow.lst", "203.0.113.0/24\nnot-a-cidr\n");
        let e = allow_list(&list, "x", "127.0.0.1:1".parse().unwrap()).unwrap_err();
        assert!(e.to_string().ends_with("allow.lst:2: not a CIDR"), "{e}");
    }
}
