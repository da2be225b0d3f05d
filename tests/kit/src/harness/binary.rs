//! The real binary: `portcullis run` as a child process.
//!
//! It listens on loopback port 0 (the configuration's listeners overridden
//! from the environment, as an operator would) and the harness reads the
//! ports it got from its own log (`"listening"` and `"admin API
//! listening"`, JSON lines): nothing to guess, no collision to retry.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::Value;
use tokio::process::{Child, Command};

use super::*;

/// `portcullis run`, ready; killed on drop.
pub struct RunningBinary {
    child: Child,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    /// Its stdout and stderr: JSON log lines, then any error.
    pub log: PathBuf,
}

impl RunningBinary {
    /// Runs `exe run --config config` in `cwd` and waits until `/readyz`
    /// answers 200. `exe` is the test's `env!("CARGO_BIN_EXE_portcullis")`.
    pub async fn start(exe: &Path, config: &Path, cwd: &Path) -> Self {
        let log = cwd.join("portcullis.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut child = Command::new(exe)
            .args(["run", "--log-format", "json", "--config"])
            .arg(config)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .env("PORTCULLIS__SERVER__LISTEN", "127.0.0.1:0")
            .env("PORTCULLIS__ADMIN__LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn portcullis");
        let deadline = Instant::now() + WAIT;
        let failed = |why: &str| -> ! {
            panic!(
                "portcullis run --config {}: {why}:\n{}",
                config.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        };
        let (data, admin) = loop {
            if let Some(ports) = ports_in(&log) {
                break ports;
            }
            if child.try_wait().ok().flatten().is_some() {
                failed("exited before listening");
            }
            if Instant::now() > deadline {
                failed("did not log its listeners");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        loop {
            if let Ok(r) = admin_request(admin, Method::GET, "/readyz", &[], None).await
                && r.status == StatusCode::OK
            {
                return Self {
                    child,
                    data,
                    admin,
                    log,
                };
            }
            if child.try_wait().ok().flatten().is_some() {
                failed("exited before turning ready");
            }
            if Instant::now() > deadline {
                failed("did not turn ready");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends signal `name` (`"TERM"`, `"INT"`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running child").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        within_for(limit, "portcullis to exit", self.child.wait())
            .await
            .expect("wait for portcullis")
            .code()
    }

    /// SIGTERM, then the exit code (within 20 s).
    pub async fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        self.exit_code(Duration::from_secs(20)).await
    }
}

/// The first data-plane address and the admin address the log names.
fn ports_in(log: &Path) -> Option<(SocketAddr, SocketAddr)> {
    let text = std::fs::read_to_string(log).ok()?;
    let addr_of = |message: &str| {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == message)
            .and_then(|v| v["addr"].as_str()?.parse().ok())
    };
    Some((addr_of("listening")?, addr_of("admin API listening")?))
}
