//! A real etcd cluster on loopback, for the etcd source and `portcullis
//! publish`: one to three `etcd` processes (Debian's `etcd-server`, see
//! `.ci/setup`), each with its own data directory, on ports picked for
//! this cluster alone. Never 2379/2380, and nothing shared with an etcd
//! the machine may run as a service.
//!
//! etcd must be told its client and peer URLs up front, so a port can be
//! taken by someone else between picking it and etcd binding it: a start
//! whose member exits is retried whole with fresh ports, a bounded
//! number of times. Every wait is bounded; a timeout panics with the
//! members' own logs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Certificate, Client, CompactionOptions, ConnectOptions, GetOptions, Identity, TlsOptions,
};
use tokio::process::{Child, Command};

/// Environment variable naming the etcd binary to use.
pub const ETCD_ENV: &str = "PORTCULLIS_ETCD";
/// How long a cluster may take to elect a leader and accept a write. Long
/// enough for a loaded two-core CI machine; a healthy start takes ~1 s.
pub const ETCD_WAIT: Duration = Duration::from_secs(30);
/// Starts retried with fresh ports when a member could not bind.
const START_ATTEMPTS: usize = 4;
/// One etcd request, inside the waits above.
const REQUEST: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(50);
/// Written once at start, read to check a restarted cluster: outside any
/// prefix a test uses.
const HEALTH_KEY: &str = "portcullis-test/started";

/// etcd members on `127.0.0.1`; every process is killed on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
    /// `--initial-cluster`, the same for every member.
    initial_cluster: String,
    token: String,
    binary: PathBuf,
    /// Holds each member's data directory (`m{i}`) and log (`m{i}.log`),
    /// and with TLS the certificates (`tls/`).
    root: tempfile::TempDir,
    tls: Option<EtcdTls>,
}

/// TLS on the members' client URLs (`https://`): a certificate for
/// `127.0.0.1` signed by a test CA, and only clients with a certificate
/// the same CA signed are accepted (`--client-cert-auth`). The files are
/// what a proxy's `[snapshot.etcd]` names.
pub struct EtcdTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl EtcdTls {
    /// A CA, a server certificate and a client certificate for
    /// `client_name`, written under `dir`.
    fn write(dir: &Path, client_name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create the TLS dir");
        let ca = crate::pki::TestCa::named("portcullis test etcd CA");
        let server = ca.leaf(&["127.0.0.1"]);
        let client = ca.client(client_name);
        let file = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents).expect("write a TLS file");
            path
        };
        Self {
            ca_file: file("ca.pem", &ca.pem()),
            cert_file: file("client.pem", &client.cert_pem),
            key_file: file("client.key", &client.key_pem),
            server_cert: file("server.pem", &server.cert_pem),
            server_key: file("server.key", &server.key_pem),
        }
    }

    fn client_options(&self) -> TlsOptions {
        let read = |p: &Path| std::fs::read(p).expect("read a TLS file");
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca_file)))
            .identity(Identity::from_pem(
                read(&self.cert_file),
                read(&self.key_file),
            ))
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Its client URL is `https://`.
    tls: bool,
    process: Option<Child>,
}

impl EtcdCluster {
    /// Starts `n` members (1 or 3) and waits until the cluster has a
    /// leader and accepts a write.
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, false).await
    }

    /// [`EtcdCluster::start`] with TLS on the client URLs and client
    /// certificates required ([`EtcdTls`]; the harness's own client
    /// presents the same one).
    pub async fn start_tls(n: usize) -> Self {
        Self::start_with(n, true).await
    }

    async fn start_with(n: usize, tls: bool) -> Self {
        assert!(n == 1 || n == 3, "EtcdCluster::start({n}): 1 or 3 members");
        let binary = etcd_binary();
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Self::spawn_new(&binary, n, tls);
            match cluster.wait_started().await {
                Started::Ready => return cluster,
                // A member could not bind a port picked for it: another
                // process got there first. Try again with new ports.
                Started::Exited(i) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "etcd member {i} exited at start (attempt {attempt}), retrying with new ports:\n{}",
                        cluster.log(i)
                    );
                }
                Started::Exited(i) => cluster.fail(&format!(
                    "member {i} exited at start, {START_ATTEMPTS} times"
                )),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// A cluster of `n` fresh members on new ports, processes started.
    fn spawn_new(binary: &Path, n: usize, tls: bool) -> Self {
        let root = tempfile::Builder::new()
            .prefix("portcullis-etcd-")
            .tempdir()
            .expect("create etcd temp dir");
        // A certificate for no etcd user: with authentication on, a client
        // must still sign in with a password (etcd would take a client
        // certificate's name as the user otherwise).
        let tls = tls.then(|| EtcdTls::write(&root.path().join("tls"), "portcullis-test-client"));
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                tls: tls.is_some(),
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            token: unique_token(),
            binary: binary.to_owned(),
            root,
            tls,
        };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster
    }

    /// `http://127.0.0.1:port` of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// `http://127.0.0.1:port` (`https://` with TLS) of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    /// The TLS files, for a cluster started with [`EtcdCluster::start_tls`].
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// A client of every member that signs in as `user` (once
    /// [`EtcdCluster::enable_auth`] made passwords count).
    pub async fn client_as(&self, user: &str, password: &str) -> Client {
        self.connect_with(&self.endpoints(), Some((user, password)))
            .await
    }

    /// Turns etcd's authentication on with a `root` user of `password`
    /// (etcd's rule: root first, with the root role). From then on a
    /// client must sign in, through [`EtcdCluster::client_as`];
    /// [`EtcdCluster::client`] and `put` no longer can.
    pub async fn enable_auth(&self, password: &str) {
        let mut client = self.client().await;
        bounded("user add", client.user_add("root", password, None))
            .await
            .expect("etcd user add root");
        // The root role may exist already; granting it is what counts.
        let _ = bounded("role add", client.role_add("root")).await;
        bounded("grant", client.user_grant_role("root", "root"))
            .await
            .expect("etcd user grant-role root root");
        bounded("auth enable", client.auth_enable())
            .await
            .expect("etcd auth enable");
    }

    /// A client balanced over every member (dead ones included: the
    /// client routes around them).
    pub async fn client(&self) -> Client {
        self.connect(&self.endpoints()).await
    }

    /// SIGKILLs member `i` and waits until it is gone.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(ETCD_WAIT, child.wait()).await;
        }
    }

    /// Starts member `i` again on its ports and data directory, and waits
    /// until it answers on its client port (it may have no leader yet:
    /// with a quorum of members down, none can be elected).
    pub async fn restart(&mut self, i: usize) {
        assert!(self.members[i].process.is_none(), "member {i} is running");
        self.spawn(i, "existing");
        let deadline = Instant::now() + ETCD_WAIT;
        while self.status(&self.endpoint(i)).await.is_none() {
            self.check_alive(i);
            self.check_deadline(deadline, &format!("restarted member {i} did not answer"));
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILLs every member.
    pub async fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i).await;
        }
    }

    /// Starts every member again and waits until the cluster has a leader
    /// and serves a linearizable read (no write: tests compare revisions).
    pub async fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            assert!(self.members[i].process.is_none(), "member {i} is running");
            self.spawn(i, "existing");
        }
        let deadline = Instant::now() + ETCD_WAIT;
        let client = self.connect(&self.endpoints()).await;
        loop {
            for i in 0..self.members.len() {
                self.check_alive(i);
            }
            let mut kv = client.kv_client();
            if let Ok(Ok(_)) = tokio::time::timeout(REQUEST, kv.get(HEALTH_KEY, None)).await {
                return;
            }
            self.check_deadline(deadline, "restarted cluster did not serve a read");
            tokio::time::sleep(POLL).await;
        }
    }

    /// The index of the member that is leader, waiting (bounded) for an
    /// election if there is none.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + ETCD_WAIT;
        loop {
            for i in self.live() {
                if let Some((me, leader)) = self.status(&self.endpoint(i)).await
                    && me == leader
                {
                    return i;
                }
            }
            self.check_deadline(deadline, "no member is leader");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Puts `key`, retrying while the cluster elects a leader; the
    /// revision of the write.
    pub async fn put(&self, key: &str, value: impl AsRef<[u8]>) -> i64 {
        let value = value.as_ref().to_vec();
        self.retry(&format!("put {key}"), |mut kv| {
            let (key, value) = (key.to_owned(), value.clone());
            async move { kv.put(key, value, None).await.map(|r| revision(r.header())) }
        })
        .await
    }

    /// Deletes `key`; the revision after.
    pub async fn delete(&self, key: &str) -> i64 {
        self.retry(&format!("delete {key}"), |mut kv| {
            let key = key.to_owned();
            async move { kv.delete(key, None).await.map(|r| revision(r.header())) }
        })
        .await
    }

    /// `key`'s value and mod revision, `None` when absent.
    pub async fn get(&self, key: &str) -> Option<(Vec<u8>, i64)> {
        self.retry(&format!("get {key}"), |mut kv| {
            let key = key.to_owned();
            async move {
                let r = kv.get(key, None).await?;
                Ok(r.kvs()
                    .first()
                    .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
            }
        })
        .await
    }

    /// Every key under `prefix` with its value and mod revision, in key order.
    pub async fn get_prefix(&self, prefix: &str) -> Vec<(String, Vec<u8>, i64)> {
        self.retry(&format!("get {prefix}*"), |mut kv| {
            let prefix = prefix.to_owned();
            async move {
                let r = kv
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await?;
                Ok(r.kvs()
                    .iter()
                    .map(|kv| {
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        (key, kv.value().to_vec(), kv.mod_revision())
                    })
                    .collect())
            }
        })
        .await
    }

    /// The cluster's current revision.
    pub async fn revision(&self) -> i64 {
        self.retry("read the revision", |mut kv| async move {
            kv.get(HEALTH_KEY, None).await.map(|r| revision(r.header()))
        })
        .await
    }

    /// Compacts the history up to `revision` (physically, so a watch from
    /// before it fails at once).
    pub async fn compact(&self, revision: i64) {
        self.retry(&format!("compact {revision}"), |mut kv| async move {
            let options = CompactionOptions::new().with_physical();
            kv.compact(revision, Some(options)).await.map(|_| ())
        })
        .await
    }

    /// Member `i`'s log (stdout and stderr, every run).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// Runs `call` on a client of the live members until it succeeds,
    /// for up to [`ETCD_WAIT`] (a leader election takes a second or two).
    async fn retry<T, F, Fut>(&self, what: &str, call: F) -> T
    where
        F: Fn(etcd_client::KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let live: Vec<String> = self.live().map(|i| self.endpoint(i)).collect();
        assert!(!live.is_empty(), "{what}: every etcd member is down");
        let client = self.connect(&live).await;
        let deadline = Instant::now() + ETCD_WAIT;
        loop {
            let error = match tokio::time::timeout(REQUEST, call(client.kv_client())).await {
                Ok(Ok(v)) => return v,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {REQUEST:?}"),
            };
            self.check_deadline(deadline, &format!("{what}: {error}"));
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the fresh cluster has a leader and accepts a write, or
    /// a member exits.
    async fn wait_started(&mut self) -> Started {
        let deadline = Instant::now() + ETCD_WAIT;
        let client = self.connect(&self.endpoints()).await;
        loop {
            for i in 0..self.members.len() {
                if self.exited(i) {
                    self.kill_all().await;
                    return Started::Exited(i);
                }
            }
            let mut kv = client.kv_client();
            let put = kv.put(HEALTH_KEY, "1", None);
            if let Ok(Ok(_)) = tokio::time::timeout(REQUEST, put).await {
                return Started::Ready;
            }
            self.check_deadline(deadline, "no leader, or a put was refused");
            tokio::time::sleep(POLL).await;
        }
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("etcd log file");
        let err = log.try_clone().expect("etcd log file");
        let m = &self.members[i];
        let mut command = Command::new(&self.binary);
        command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.root.path().join(&m.name))
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(["--log-level", "warn"]);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca_file)
                .arg("--client-cert-auth");
        }
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true);
        // ETCD_* variables would set flags we did not choose.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.members[i].process = Some(child);
    }

    /// A client of `endpoints`, with the cluster's TLS. Connecting is
    /// lazy, so this does not wait for them to answer.
    async fn connect(&self, endpoints: &[String]) -> Client {
        self.connect_with(endpoints, None).await
    }

    async fn connect_with(&self, endpoints: &[String], user: Option<(&str, &str)>) -> Client {
        let mut options = ConnectOptions::new().with_connect_timeout(REQUEST);
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.client_options());
        }
        if let Some((user, password)) = user {
            options = options.with_user(user, password);
        }
        Client::connect(endpoints, Some(options))
            .await
            .expect("etcd client")
    }

    /// `(its member id, the leader's member id)` from the member at
    /// `endpoint`, or `None` when it does not answer.
    async fn status(&self, endpoint: &str) -> Option<(u64, u64)> {
        status_of(self.connect(&[endpoint.to_owned()]).await).await
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.members.len()).filter(|&i| self.members[i].process.is_some())
    }

    /// Whether member `i` was started and has exited since.
    fn exited(&mut self, i: usize) -> bool {
        match &mut self.members[i].process {
            Some(child) => child.try_wait().ok().flatten().is_some(),
            None => false,
        }
    }

    fn check_alive(&mut self, i: usize) {
        if self.exited(i) {
            self.fail(&format!("member {i} exited"));
        }
    }

    fn check_deadline(&self, deadline: Instant, what: &str) {
        if Instant::now() > deadline {
            self.fail(&format!("{what} (waited {ETCD_WAIT:?})"));
        }
    }

    fn fail(&self, what: &str) -> ! {
        let logs: String = (0..self.members.len())
            .map(|i| format!("--- member {i} ({}) ---\n{}", self.endpoint(i), self.log(i)))
            .collect();
        panic!("etcd cluster: {what}\n{logs}")
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("m{i}.log"))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(child) = &mut m.process {
                let _ = child.start_kill();
            }
        }
    }
}

enum Started {
    Ready,
    Exited(usize),
}

impl Member {
    fn client_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// `PORTCULLIS_ETCD`, else `etcd` on `PATH`, else `/usr/bin/etcd`.
fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(ETCD_ENV) {
        return path.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    });
    let path = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    assert!(
        path.is_file(),
        "no etcd binary: install Debian's etcd-server (.ci/setup) or set {ETCD_ENV}"
    );
    path
}

/// `n` distinct loopback ports that were free a moment ago: all bound at
/// once (so they differ), then released for etcd to bind.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// A cluster token no other cluster started by any test shares, so a
/// member can never join a stranger's cluster on a reused port.
fn unique_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("portcullis-test-{}-{n}-{nanos}", std::process::id())
}

/// `(its member id, the leader's member id)` from the member at
/// `endpoint`, or `None` when it does not answer.
async fn status_of(client: Client) -> Option<(u64, u64)> {
    let mut maintenance = client.maintenance_client();
    let status = tokio::time::timeout(REQUEST, maintenance.status())
        .await
        .ok()?
        .ok()?;
    Some((status.header()?.member_id(), status.leader()))
}

/// One etcd call, bounded by [`REQUEST`]: a timeout panics.
async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    tokio::time::timeout(REQUEST, call)
        .await
        .unwrap_or_else(|_| panic!("etcd {what}: timed out after {REQUEST:?}"))
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}
