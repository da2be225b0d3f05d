//! `portcullis-gen-snapshot`: writes a seeded synthetic snapshot (see
//! `portcullis_test_kit::synth`) for benches and load tests.
//!
//! ```text
//! portcullis-gen-snapshot --scale large --seed 1 --out /tmp/large.json
//! ```

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use portcullis_test_kit::synth::{Scale, generate};

#[derive(Parser)]
#[command(about = "Write a seeded synthetic portcullis snapshot")]
struct Args {
    /// small (100 deployments, 1k rules), medium (10k, 100k), large (100k, 1M)
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
    /// Output file (default: stdout)
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut scale = Scale::named(&args.scale)
        .with_context(|| format!("unknown scale {:?} (small, medium, large)", args.scale))?;
    scale.deployments = args.deployments.unwrap_or(scale.deployments);
    scale.ip_rules = args.ip_rules.unwrap_or(scale.ip_rules);
    scale.endpoint_ids = args.endpoint_ids.unwrap_or(scale.endpoint_ids);
    let mut snapshot = generate(scale, args.seed);
    snapshot.version = args.version;
    let json = serde_json::to_vec(&snapshot)?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().lock().write_all(&json)?,
    }
    Ok(())
}
