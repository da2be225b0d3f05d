//! The deployment files (deploy/), the shipped configs (config/) and the
//! operator docs (docs/, README.md), checked against the real code rather
//! than against regexes over its sources:
//!
//! - metric names, labels and label values in the Grafana dashboard, the
//!   alert rules and the docs, against the real registry that every
//!   module registered into;
//! - config keys, against the field lists of the real config types;
//!   every shipped TOML through `Config::from_toml`;
//! - the Kubernetes manifests, the Dockerfile and the systemd unit, against
//!   the config each of them carries (ports, paths, `shutdown_grace`);
//! - every shipped snapshot through `portcullis check`;
//! - the real binary started with each shipped config: ready, the
//!   Dockerfile's HEALTHCHECK passes, `PUT /snapshot` without the token is
//!   refused, SIGTERM drains and exits 0;
//! - the docs' ```console transcripts, re-run by trycmd;
//! - relative links in docs/, deploy/ and README.md.
//!
//! What needs other tools stays in `.ci/validate-deploy`: the manifests
//! against the Kubernetes schemas (kubernetes-validate) and
//! `systemd-analyze verify`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use portcullis::Config;
use portcullis::config::ConfigError;
use portcullis::forward::ForwardError;
use portcullis::forward::client::BackendError;
use portcullis::policy::{PolicyOptions, Product, Reason, Verdict};
use portcullis::proxy_protocol::{ParseError, ReadError};
use portcullis::reload::{Origin, Reloader, SnapshotMetrics, Source, StateDir, Store};
use portcullis::server::Server;
use portcullis::tls::HandshakeError;
use portcullis_test_kit::harness::*;
use prometheus::proto::MetricType;
use regex::Regex;
use serde::Deserialize as _;
use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserializer, IntoDeserializer, Visitor};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

// ---------------------------------------------------------------- files

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: impl AsRef<Path>) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Files under `dir` (relative to the repository) whose name ends in
/// `.{ext}`, recursively, sorted, as paths relative to the repository.
fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, ext, out);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path.strip_prefix(root()).unwrap_or(&path).to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), ext, &mut out);
    out.sort();
    out
}

/// docs/*.md and README.md: the operator docs.
fn operator_docs() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| PathBuf::from("docs").join(e.file_name()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    docs.push("README.md".into());
    docs
}

/// Facts checked one by one; a test reports every one that failed.
#[derive(Default)]
struct Checks {
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl fmt::Display) -> bool {
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(what.to_string());
        }
        ok
    }

    /// `listed`, the config keys `what` shows, are the loader's `keys`:
    /// none missing, none the loader does not have.
    fn same_keys(&mut self, what: &str, listed: &BTreeSet<String>, keys: &BTreeSet<String>) {
        let missing: Vec<_> = keys.difference(listed).collect();
        self.check(missing.is_empty(), format!("{what} lacks {missing:?}"));
        let unknown: Vec<_> = listed.difference(keys).collect();
        self.check(
            unknown.is_empty(),
            format!("{what} shows keys the loader does not have: {unknown:?}"),
        );
    }

    fn done(self, what: &str) {
        assert!(
            self.failed.is_empty(),
            "{what}: {} of {} checks failed:\n- {}",
            self.failed.len(),
            self.failed.len() + self.passed,
            self.failed.join("\n- ")
        );
    }
}

// ---------------------------------------------------------------- config keys

/// Every key of the real config types, as `section.key` or
/// `section.list[].key`. Found by deserializing [`Config`] from a probe:
/// a `Deserializer` that follows one path of field names and, at its end,
/// records the field list serde's derive hands to `deserialize_struct`
/// (every field the struct accepts), or that the value is a leaf.
fn config_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut paths = vec![Vec::new()];
    while let Some(path) = paths.pop() {
        let out = RefCell::new(Probed::default());
        // The probe always stops the deserializer with an error once it has
        // seen the end of the path.
        let _ = Config::deserialize(Probe {
            path: &path,
            out: &out,
        });
        let probed = out.into_inner();
        match probed.fields {
            Some(fields) => paths.extend(fields.iter().map(|f| [&path[..], &[*f]].concat())),
            None => {
                keys.insert(probed.shown);
            }
        }
    }
    keys
}

#[derive(Default)]
struct Probed {
    /// The path so far, as the docs write it.
    shown: String,
    /// A sequence was entered since the last field: its elements' fields
    /// are written `list[].field`.
    in_seq: bool,
    /// The fields of the struct at the end of the path; `None`: a leaf.
    fields: Option<&'static [&'static str]>,
}

#[derive(Clone, Copy)]
struct Probe<'a> {
    path: &'a [&'static str],
    out: &'a RefCell<Probed>,
}

#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe stopped")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let Some((&field, rest)) = self.path.split_first() else {
            self.out.borrow_mut().fields = Some(fields);
            return Err(Stop);
        };
        {
            let mut out = self.out.borrow_mut();
            if std::mem::take(&mut out.in_seq) {
                out.shown.push_str("[]");
            }
            if !out.shown.is_empty() {
                out.shown.push('.');
            }
            out.shown.push_str(field);
        }
        // A map of one entry: the next field of the path.
        let next = Probe {
            path: rest,
            out: self.out,
        };
        visitor.visit_map(MapDeserializer::new(std::iter::once((field, next))))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        self.out.borrow_mut().in_seq = true;
        // A sequence of one element, probed further.
        visitor.visit_seq(SeqDeserializer::new(std::iter::once(self)))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Lets serde's one-entry map and one-element sequence hand the probe on
/// as their value.
impl<'de> IntoDeserializer<'de, Stop> for Probe<'_> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// The keys of a TOML table, written like [`config_keys`].
fn toml_keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        match value {
            toml::Value::Table(t) => toml_keys(t, &format!("{prefix}{key}."), out),
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
            {
                for item in items.iter().filter_map(toml::Value::as_table) {
                    toml_keys(item, &format!("{prefix}{key}[]."), out);
                }
            }
            _ => {
                out.insert(format!("{prefix}{key}"));
            }
        }
    }
}

#[test]
fn every_config_key_is_in_the_example_config_and_the_reference_table() {
    let keys = config_keys();
    // The probe reached every section (a broken probe finds nothing).
    assert!(keys.len() > 30, "only {} keys found: {keys:?}", keys.len());
    assert!(keys.contains("tls.certificates[].ocsp"), "{keys:?}");
    let mut c = Checks::default();

    let operating = read("docs/operating.md");
    let row = Regex::new(r"(?m)^\| `([^`]+)` \|").expect("regex");
    let reference = operating
        .split_once("\n| key | default |")
        .map(|(_, rest)| rest.split("\n\n").next().unwrap_or_default())
        .expect("docs/operating.md: the configuration table");
    let table: BTreeSet<String> = row
        .captures_iter(reference)
        .map(|m| m[1].to_owned())
        .collect();
    c.same_keys("docs/operating.md's configuration table", &table, &keys);

    // config/portcullis.toml lists every key, the optional ones commented
    // out (`# key = value`, or `# table.key = value` for a table within the
    // section) under their section.
    let example = read("config/portcullis.toml");
    let commented = Regex::new(r"(?m)^# ?([a-z0-9_.]+ *=.*)$").expect("regex");
    let uncommented: toml::Table = toml::from_str(&commented.replace_all(&example, "$1"))
        .unwrap_or_else(|e| panic!("config/portcullis.toml, comments removed: {e}"));
    let mut shown = BTreeSet::new();
    toml_keys(&uncommented, "", &mut shown);
    c.same_keys(
        "config/portcullis.toml (keys and `# key = value` comments)",
        &shown,
        &keys,
    );

    // As shipped it loads; and each commented key, uncommented alone, is a
    // key with a value of the right type (a cross-field refusal, such as
    // `url` beside `path`, is fine).
    if let Err(e) = Config::from_toml(&example) {
        c.check(false, format!("config/portcullis.toml: {e}"));
    }
    for line in commented.find_iter(&example) {
        let text = example.replacen(line.as_str(), &line.as_str()[1..], 1);
        let result = Config::from_toml(&text);
        c.check(
            matches!(result, Ok(_) | Err(ConfigError::Invalid(_))),
            format!(
                "config/portcullis.toml: `{}` uncommented does not load: {}",
                line.as_str(),
                result.err().map(|e| e.to_string()).unwrap_or_default()
            ),
        );
    }
    c.done("config keys");
}

#[test]
fn every_shipped_config_loads_through_the_real_loader() {
    let tomls = [files("config", "toml"), files("deploy", "toml")].concat();
    assert!(tomls.len() >= 3, "{tomls:?}");
    let mut c = Checks::default();
    for path in &tomls {
        if let Err(e) = Config::from_toml(&read(path)) {
            c.check(false, format!("{}: {e}", path.display()));
        }
    }
    for (name, text) in configmap_files("portcullis-config", ".toml") {
        if let Err(e) = Config::from_toml(&text) {
            c.check(false, format!("ConfigMap portcullis-config {name}: {e}"));
        }
    }
    c.done("shipped configs");
}

// ---------------------------------------------------------------- kubernetes

/// The documents of a YAML file, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

const K8S: &str = "deploy/kubernetes";

/// The kustomization's resources.
fn k8s_resources() -> Vec<String> {
    let kust = yaml_docs(&Path::new(K8S).join("kustomization.yaml"));
    kust[0]["resources"]
        .as_array()
        .expect("kustomization.yaml: resources")
        .iter()
        .map(|r| r.as_str().expect("a resource is a file name").to_owned())
        .collect()
}

/// Every object the kustomization lists.
fn k8s_objects() -> Vec<Value> {
    k8s_resources()
        .iter()
        .map(|r| Path::new(K8S).join(r))
        .filter(|p| root().join(p).is_file())
        .flat_map(|p| yaml_docs(&p))
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: Option<&str>) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && name.is_none_or(|n| o["metadata"]["name"] == n))
        .unwrap_or_else(|| panic!("{K8S}: no {kind} {}", name.unwrap_or_default()))
}

/// The `data` entries of ConfigMap `name` whose key ends in `suffix`.
fn configmap_files(name: &str, suffix: &str) -> Vec<(String, String)> {
    let objects = k8s_objects();
    let data = find(&objects, "ConfigMap", Some(name))["data"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    data.into_iter()
        .filter(|(k, _)| k.ends_with(suffix))
        .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

fn docker_config() -> Config {
    Config::from_toml(&read("deploy/docker/portcullis.toml"))
        .expect("deploy/docker/portcullis.toml loads")
}

#[test]
fn kubernetes_manifests_agree_with_the_config_they_carry() {
    let mut c = Checks::default();
    let resources = k8s_resources();
    let listed: BTreeSet<&String> = resources.iter().collect();
    c.check(
        listed.len() == resources.len(),
        "kustomization.yaml lists each resource once",
    );
    let absent: Vec<_> = resources
        .iter()
        .filter(|r| !root().join(K8S).join(r).is_file())
        .collect();
    c.check(
        absent.is_empty(),
        format!("kustomization.yaml lists missing files: {absent:?}"),
    );
    let on_disk: Vec<String> = std::fs::read_dir(root().join(K8S))
        .expect(K8S)
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            (n.ends_with(".yaml") || n.ends_with(".yml")) && !n.starts_with("kustomization.")
        })
        .collect();
    let unlisted: Vec<_> = on_disk.iter().filter(|f| !resources.contains(f)).collect();
    c.check(
        unlisted.is_empty(),
        format!("kustomization.yaml does not list {unlisted:?}"),
    );

    let objects = k8s_objects();
    let docker_toml = read("deploy/docker/portcullis.toml");
    c.check(
        find(&objects, "ConfigMap", Some("portcullis-config"))["data"]["portcullis.toml"]
            == docker_toml.as_str(),
        "configmap-config.yaml carries deploy/docker/portcullis.toml unchanged",
    );
    let conf = docker_config();
    let data_port = u64::from(conf.server.listen[0].port());
    let admin_port = u64::from(conf.admin.listen.port());
    let grace = conf.server.shutdown_grace.as_secs_f64();

    let dep = find(&objects, "Deployment", None);
    let pod = &dep["spec"]["template"]["spec"];
    let ctr = &pod["containers"][0];
    let ports: BTreeMap<&str, u64> = ctr["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["name"].as_str()?, p["containerPort"].as_u64()?)))
        .collect();
    let port_of = |r: &Value| {
        r.as_str()
            .map_or(r.as_u64(), |name| ports.get(name).copied())
    };
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &ctr[probe]["httpGet"];
        c.check(
            port_of(&get["port"]) == Some(admin_port) && get["path"] == path,
            format!("{probe}: GET {path} on the admin port {admin_port}"),
        );
    }
    c.check(
        ctr["args"].as_array().is_some_and(|a| {
            a.len() >= 3 && a[..3] == ["run", "--config", "/etc/portcullis/portcullis.toml"]
        }),
        "the container runs `portcullis run --config /etc/portcullis/portcullis.toml`",
    );
    c.check(
        ports.get("https") == Some(&data_port),
        format!("container port https = server.listen port {data_port}"),
    );
    let pre = &ctr["lifecycle"]["preStop"];
    let cmd = pre["exec"]["command"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let pre_s = match cmd.first().and_then(Value::as_str) {
        Some(bin) if bin.ends_with("sleep") => cmd
            .last()
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0),
        _ => pre["sleep"]["seconds"].as_f64().unwrap_or(0.0),
    };
    let tgps = pod["terminationGracePeriodSeconds"]
        .as_f64()
        .unwrap_or(30.0);
    c.check(
        pre_s > 0.0,
        format!("preStop sleeps ({pre_s}s) while the NLB deregisters the pod"),
    );
    c.check(
        tgps > pre_s + grace,
        format!(
            "terminationGracePeriodSeconds {tgps} > preStop {pre_s} + server.shutdown_grace {grace}"
        ),
    );
    c.check(
        dep["spec"].get("replicas").is_none(),
        "the Deployment leaves replicas to the HPA",
    );

    let (sc, psc) = (&ctr["securityContext"], &pod["securityContext"]);
    c.check(
        psc["runAsNonRoot"] == true && psc["runAsUser"].as_u64().unwrap_or(0) > 0,
        "the pod runs as a non-root uid",
    );
    let seccomp = if sc["seccompProfile"].is_null() {
        &psc["seccompProfile"]
    } else {
        &sc["seccompProfile"]
    };
    c.check(
        sc["readOnlyRootFilesystem"] == true
            && sc["allowPrivilegeEscalation"] == false
            && sc["capabilities"]["drop"] == serde_json::json!(["ALL"])
            && seccomp["type"] == "RuntimeDefault",
        "container: read-only root, no privilege escalation, drop ALL, seccomp RuntimeDefault",
    );
    c.check(
        ["requests", "limits"].iter().all(|w| {
            ["cpu", "memory"]
                .iter()
                .all(|k| !ctr["resources"][w][k].is_null())
        }),
        "container: cpu and memory requests and limits",
    );

    // Which volume serves a path in the container, and from where in it.
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, v)))
        .collect();
    let mounts = ctr["volumeMounts"].as_array().cloned().unwrap_or_default();
    let mount_for = |path: &str| -> Option<(Value, String)> {
        mounts
            .iter()
            .filter_map(|m| {
                let mp = m["mountPath"].as_str()?.trim_end_matches('/');
                let inside = if path == mp {
                    ""
                } else {
                    path.strip_prefix(mp)?.strip_prefix('/')?
                };
                let sub = m["subPath"].as_str().unwrap_or(inside).to_owned();
                Some((mp.len(), (m.clone(), sub)))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, found)| found)
    };
    let from_volume = |path: &Path, kind: &str, subpath_ok: bool| {
        let Some((mount, key)) = mount_for(&path.to_string_lossy()) else {
            return false;
        };
        let Some(vol) = mount["name"].as_str().and_then(|n| volumes.get(n)) else {
            return false;
        };
        let src = if vol["configMap"].is_null() {
            &vol["secret"]
        } else {
            &vol["configMap"]
        };
        let has_key = src["items"]
            .as_array()
            .is_none_or(|items| items.iter().any(|i| i["path"] == key.as_str()));
        !vol[kind].is_null() && has_key && (subpath_ok || mount["subPath"].is_null())
    };
    c.check(
        from_volume(
            Path::new("/etc/portcullis/portcullis.toml"),
            "configMap",
            true,
        ),
        "/etc/portcullis/portcullis.toml comes from a ConfigMap",
    );
    let snap = conf
        .snapshot
        .path
        .clone()
        .expect("the image's config reads a snapshot file");
    c.check(
        from_volume(&snap, "configMap", false),
        format!("snapshot.path {} is in a ConfigMap directory mount, not a subPath (updates reach the pod)", snap.display()),
    );
    for cert in &conf.tls.certificates {
        for f in [&cert.cert, &cert.key] {
            c.check(
                from_volume(f, "secret", false),
                format!("{} comes from a Secret", f.display()),
            );
        }
    }
    if let Some(token) = &conf.admin.token_file {
        c.check(
            from_volume(token, "secret", false),
            format!("{} comes from a Secret", token.display()),
        );
    }
    let state = conf.snapshot.state_dir.clone().unwrap_or_default();
    let state_mount = mount_for(&state.to_string_lossy());
    c.check(
        state_mount.is_some_and(|(m, _)| {
            m["readOnly"] != true
                && m["name"]
                    .as_str()
                    .and_then(|n| volumes.get(n))
                    .is_some_and(|v| !v["emptyDir"].is_null())
        }),
        format!(
            "snapshot.state_dir {} is a writable emptyDir",
            state.display()
        ),
    );

    let svc = find(&objects, "Service", None);
    let ann = |key: &str| {
        svc["metadata"]["annotations"]
            [format!("service.beta.kubernetes.io/aws-load-balancer-{key}")]
        .as_str()
        .map(str::to_owned)
    };
    c.check(
        svc["spec"]["type"] == "LoadBalancer"
            && ann("type").as_deref() == Some("external")
            && ann("nlb-target-type").as_deref() == Some("ip"),
        "Service: NLB (AWS Load Balancer Controller) with IP targets",
    );
    c.check(
        ann("proxy-protocol").as_deref() == Some("*"),
        "Service: PROXY protocol v2 on",
    );
    let hc_port = ann("healthcheck-port").unwrap_or_else(|| "traffic-port".into());
    c.check(
        ann("healthcheck-protocol").is_some_and(|p| p.eq_ignore_ascii_case("tcp"))
            && (hc_port == "traffic-port" || hc_port == data_port.to_string()),
        "Service: NLB health check is TCP on the traffic port (health checks carry a PROXY header too)",
    );
    let tga: BTreeMap<String, String> = ann("target-group-attributes")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    c.check(
        tga.get("preserve_client_ip.enabled").map(String::as_str) == Some("false"),
        "Service: client IP preservation off (peers are the NLB, as trusted_sources expects)",
    );
    let dereg: f64 = tga
        .get("deregistration_delay.timeout_seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(300.0);
    c.check(
        dereg >= pre_s + grace,
        "Service: deregistration delay >= preStop + shutdown_grace",
    );
    c.check(
        svc["spec"]["ports"].as_array().is_some_and(|ps| {
            ps.iter()
                .all(|p| port_of(&p["targetPort"]) == Some(data_port))
        }),
        format!("Service exposes the data port {data_port} only"),
    );

    let np = find(&objects, "NetworkPolicy", None);
    let rules = np["spec"]["ingress"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rule_ports = |r: &Value| r["ports"].as_array().cloned().unwrap_or_default();
    let admin_rules: Vec<&Value> = rules
        .iter()
        .filter(|r| {
            rule_ports(r)
                .iter()
                .any(|p| p["port"] == admin_port || p["port"] == "admin")
        })
        .collect();
    c.check(
        np["spec"]["policyTypes"]
            .as_array()
            .is_some_and(|t| t.contains(&"Ingress".into()))
            && !admin_rules.is_empty()
            && admin_rules.iter().all(|r| {
                r["from"].as_array().is_some_and(|from| {
                    !from.is_empty() && from.iter().all(|f| f["ipBlock"].is_null())
                })
            }),
        format!("NetworkPolicy: admin port {admin_port} only from selected namespaces/pods"),
    );
    c.check(
        rules.iter().all(|r| !rule_ports(r).is_empty()),
        "NetworkPolicy: no rule opens every port",
    );
    c.check(
        rules
            .iter()
            .flat_map(rule_ports)
            .any(|p| p["port"] == data_port || p["port"] == "https"),
        format!("NetworkPolicy admits the data port {data_port}"),
    );
    let (hpa, pdb) = (
        find(&objects, "HorizontalPodAutoscaler", None),
        find(&objects, "PodDisruptionBudget", None),
    );
    c.check(
        hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"],
        "HPA scales the Deployment",
    );
    let sel = &dep["spec"]["selector"]["matchLabels"];
    c.check(
        pdb["spec"]["selector"]["matchLabels"] == *sel
            && svc["spec"]["selector"] == *sel
            && np["spec"]["podSelector"]["matchLabels"] == *sel,
        "Service, PDB and NetworkPolicy select the Deployment's pods",
    );
    c.done(K8S);
}

// ---------------------------------------------------------------- docker, systemd

/// The Dockerfile with its line continuations joined.
fn dockerfile() -> String {
    read("deploy/docker/Dockerfile").replace("\\\n", " ")
}

/// The Dockerfile's HEALTHCHECK command (exec form).
fn healthcheck() -> Option<Vec<String>> {
    let re = Regex::new(r"(?m)^HEALTHCHECK\s.*?CMD\s+(\[.*\])\s*$").expect("regex");
    serde_json::from_str(&re.captures(&dockerfile())?[1]).ok()
}

#[test]
fn dockerfile_and_systemd_unit_agree_with_their_configs() {
    let mut c = Checks::default();
    let df = dockerfile();
    let lines = |instr: &str| -> Vec<String> {
        df.lines()
            .filter_map(|l| l.strip_prefix(instr))
            .filter(|rest| rest.starts_with(char::is_whitespace))
            .map(|rest| rest.trim().to_owned())
            .collect()
    };
    let froms = lines("FROM");
    c.check(
        froms.len() >= 2,
        format!("Dockerfile: multi-stage build ({} stages)", froms.len()),
    );
    c.check(
        lines("USER")
            .last()
            .is_some_and(|u| !matches!(u.split(':').next(), Some("0" | "root"))),
        "Dockerfile: the runtime stage runs as a non-root user",
    );
    let conf = docker_config();
    let (data_port, admin_port) = (conf.server.listen[0].port(), conf.admin.listen.port());
    let exposed: BTreeSet<u16> = lines("EXPOSE")
        .iter()
        .flat_map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.split('/').next()?.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    c.check(
        exposed.contains(&data_port) && exposed.contains(&admin_port),
        format!("Dockerfile: EXPOSE {data_port} and {admin_port}"),
    );
    c.check(
        healthcheck().is_some_and(|cmd| cmd.join(" ").contains("/healthz")),
        "Dockerfile: HEALTHCHECK requests /healthz",
    );
    c.check(
        lines("COPY")
            .iter()
            .any(|l| l.ends_with("deploy/docker/portcullis.toml /etc/portcullis/portcullis.toml"))
            && df.contains("\"/etc/portcullis/portcullis.toml\""),
        "Dockerfile: the image carries deploy/docker/portcullis.toml and runs it",
    );
    let ignore = read("deploy/docker/Dockerfile.dockerignore");
    c.check(
        ignore
            .lines()
            .any(|l| l == "!deploy/docker/portcullis.toml")
            && ignore.lines().any(|l| l == "!src/"),
        "Dockerfile.dockerignore lets the sources and the config into the build context",
    );

    let unit = read("deploy/systemd/portcullis.service");
    let setting = |key: &str| {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let grace = Config::from_toml(&read("deploy/systemd/portcullis.toml"))
        .expect("deploy/systemd/portcullis.toml loads")
        .server
        .shutdown_grace;
    // TimeoutStopSec read with portcullis's own duration syntax, which
    // covers systemd's `45s` and `45`.
    let stop = setting("TimeoutStopSec")
        .first()
        .and_then(|s| portcullis::config::duration::parse(s).ok());
    c.check(
        setting("KillSignal") == ["SIGTERM"] && stop.is_some_and(|s| s > grace),
        format!("portcullis.service: KillSignal=SIGTERM, TimeoutStopSec ({stop:?}) > server.shutdown_grace ({grace:?})"),
    );
    c.check(
        setting("ExecReload") == ["/bin/kill -HUP $MAINPID"],
        "portcullis.service: ExecReload sends SIGHUP",
    );
    c.check(
        setting("ExecStart")
            .iter()
            .any(|s| s.contains("--config /etc/portcullis/portcullis.toml")),
        "portcullis.service: ExecStart runs /etc/portcullis/portcullis.toml",
    );
    c.done("Dockerfile and systemd unit");
}

// ---------------------------------------------------------------- snapshots

#[test]
fn every_shipped_snapshot_passes_portcullis_check() {
    let dir = TempDir::new();
    let mut snapshots: Vec<PathBuf> = [files("deploy", "json"), files("docs/examples", "json")]
        .concat()
        .into_iter()
        .filter(|p| !p.starts_with("deploy/grafana"))
        .map(|p| root().join(p))
        .collect();
    for (key, text) in configmap_files("portcullis-snapshot", ".json") {
        snapshots.push(dir.write(&format!("configmap-portcullis-snapshot-{key}"), text));
    }
    assert!(snapshots.len() >= 3, "{snapshots:?}");
    let paths = Regex::new(r"(?m)^  (?:deployments|policies|version)\S*: ").expect("regex");
    let mut c = Checks::default();
    for s in &snapshots {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check", "--snapshot"])
            .arg(s)
            .output()
            .expect("run portcullis check");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let name = s.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("invalid") {
            let errors = paths.find_iter(&stderr).count();
            c.check(
                out.status.code() == Some(1) && errors > 0,
                format!(
                    "{}: must be refused with exit 1 and errors with JSON paths:\n{stdout}{stderr}",
                    s.display()
                ),
            );
        } else {
            c.check(
                out.status.success() && stdout.contains("valid snapshot"),
                format!("{}: must be valid (exit 0):\n{stdout}{stderr}", s.display()),
            );
        }
    }
    c.done("portcullis check");
}

// ---------------------------------------------------------------- metrics

/// A metric family of the real registry.
#[derive(Debug, Default)]
struct Family {
    histogram: bool,
    /// Label name → the values the code emits for it.
    labels: BTreeMap<String, BTreeSet<String>>,
}

/// The real registry, as every module registers into it: the reloader's
/// `SnapshotMetrics`, and `Server::bind` with a `[remote_cluster]` listener (server, upstream, remote-cluster
/// and access-log metrics). Labelled families show in `gather()` only once
/// observed, so each is driven here: a snapshot read at boot from a missing
/// file and restored from the state directory, then applied, stale and
/// invalid ones; requests allowed, to a dead backend and to an unknown
/// host; a connection without a PROXY header, one without TLS, and one over
/// `server.max_connections`.
async fn real_registry() -> BTreeMap<String, Family> {
    let registry = portcullis::metrics::registry();
    let dir = TempDir::new();
    let backend = Backend::start("es").await;
    let dead = unused_port();
    let world = |version| {
        Bytes::from(
            serde_json::to_vec(&small_world(
                version,
                backend.addr,
                dead,
                &["203.0.113.0/24"],
            ))
            .expect("json"),
        )
    };

    let store = Arc::new(Store::new());
    let state = StateDir::new(dir.0.join("state"));
    state.save(&world(1)).expect("save state");
    let reloader = Reloader::new(
        store.clone(),
        PolicyOptions::default(),
        Some(state),
        1 << 20,
        SnapshotMetrics::register(&registry).expect("snapshot metrics"),
    );
    assert!(
        reloader
            .initial(&mut Source::file(dir.0.join("absent.json"), 1 << 20))
            .await
    );
    reloader
        .apply(world(2), Origin::Admin)
        .await
        .expect("applied");
    reloader
        .apply(world(2), Origin::Admin)
        .await
        .expect_err("stale");
    reloader
        .apply(Bytes::from_static(b"{}"), Origin::Admin)
        .await
        .expect_err("invalid");

    let config = ProxyConfig::new(&dir)
        .set("server.max_connections", 1)
        .set("snapshot.path", "unused.json")
        .set("log.access_flush_interval", "5ms")
        .set("remote_cluster.listen", vec!["127.0.0.1:0"])
        .settings();
    let sink = portcullis::access_log::MemorySink::default();
    let server = Server::bind(&config, store, &registry, Some(Box::new(sink))).expect("bind");
    let addr = server.local_addrs()[0];
    let (trigger, shutdown) = portcullis::shutdown::channel();
    let task = tokio::spawn(server.run(shutdown));

    let active = || {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == "portcullis_connections_active")
            .map(|f| f.get_metric()[0].get_gauge().get_value())
            .expect("portcullis_connections_active is registered")
    };
    let settle = || async {
        eventually(WAIT, "connections closed", || {
            let a = active();
            async move { a == 0.0 }
        })
        .await;
    };
    let mut connections = 0;
    for (id, status) in [
        (OPEN, StatusCode::OK),
        (DEAD, StatusCode::BAD_GATEWAY),
        ("nosuch", StatusCode::NOT_FOUND),
    ] {
        let host = host(id);
        let reply = ClientBuilder::new(addr, &host)
            .preamble(v1_from(ALLOWED_V4))
            .connect()
            .await
            .get(&host, "/")
            .await;
        assert_eq!(reply.status, status, "{host}");
        connections += 1;
        settle().await;
    }
    for bytes in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        [v1_from(ALLOWED_V4), b"GET / HTTP/1.1\r\n\r\n".to_vec()].concat(),
    ] {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(&bytes).await.expect("write");
        let _ = within("the proxy to close", tcp.read_to_end(&mut Vec::new())).await;
        connections += 1;
        settle().await;
    }
    let held = TcpStream::connect(addr).await.expect("connect");
    eventually(WAIT, "the held connection is counted", || {
        let a = active();
        async move { a == 1.0 }
    })
    .await;
    let mut over = TcpStream::connect(addr).await.expect("connect");
    let _ = within("the proxy to close", over.read_to_end(&mut Vec::new())).await;
    drop(held);
    connections += 2;
    settle().await;
    let ended = || {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "portcullis_connections_total")
            .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()))
            .sum::<f64>()
    };
    eventually(WAIT, "every connection counted as ended", || {
        let n = ended();
        async move { n == f64::from(connections) }
    })
    .await;
    trigger.drain();
    trigger.abort();
    task.abort();

    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for f in registry.gather() {
        let family = families.entry(f.name().to_owned()).or_default();
        family.histogram = f.get_field_type() == MetricType::HISTOGRAM;
        for m in f.get_metric() {
            for l in m.get_label() {
                family
                    .labels
                    .entry(l.name().to_owned())
                    .or_default()
                    .insert(l.value().to_owned());
            }
        }
    }
    // Label values that come from the code's enumerations and error kinds,
    // beyond the ones observed above.
    let mut add = |family: &str, label: &str, values: &[&str]| {
        families
            .get_mut(family)
            .and_then(|f| f.labels.get_mut(label))
            .unwrap_or_else(|| panic!("{family}{{{label}}} was not observed"))
            .extend(values.iter().map(|v| (*v).to_owned()));
    };
    let products = Product::ALL.map(Product::as_str);
    add(
        "portcullis_requests_total",
        "decision",
        &[Verdict::Allowed, Verdict::Denied, Verdict::WouldDeny].map(Verdict::as_str),
    );
    add(
        "portcullis_requests_total",
        "reason",
        &Reason::ALL.map(Reason::as_str),
    );
    add("portcullis_requests_total", "product", &products);
    add(
        "portcullis_upstream_request_duration_seconds",
        "product",
        &products,
    );
    add(
        "portcullis_proxy_protocol_errors_total",
        "kind",
        &proxy_protocol_kinds(),
    );
    add(
        "portcullis_tls_handshake_errors_total",
        "kind",
        &handshake_kinds(),
    );
    add(
        "portcullis_upstream_errors_total",
        "kind",
        &upstream_kinds(),
    );
    families
}

/// `ReadError::kind` of every variant (a new variant breaks the match).
fn proxy_protocol_kinds() -> Vec<&'static str> {
    let parse = [
        ParseError::V1Malformed(""),
        ParseError::V1TooLong,
        ParseError::V2Version(0),
        ParseError::V2Command(0),
        ParseError::V2Family(0),
        ParseError::V2TooLong { len: 0, max: 0 },
        ParseError::V2TruncatedAddresses { len: 0, needed: 0 },
        ParseError::TlvOverrun,
        ParseError::TlvVendorMalformed { tlv: 0, reason: "" },
        ParseError::TlvDuplicate { tlv: 0 },
        ParseError::Crc32cMalformed { len: 0 },
        ParseError::Crc32cMismatch {
            expected: 0,
            computed: 0,
        },
    ];
    for e in &parse {
        match e {
            ParseError::V1Malformed(_)
            | ParseError::V1TooLong
            | ParseError::V2Version(_)
            | ParseError::V2Command(_)
            | ParseError::V2Family(_)
            | ParseError::V2TooLong { .. }
            | ParseError::V2TruncatedAddresses { .. }
            | ParseError::TlvOverrun
            | ParseError::TlvVendorMalformed { .. }
            | ParseError::TlvDuplicate { .. }
            | ParseError::Crc32cMalformed { .. }
            | ParseError::Crc32cMismatch { .. } => {}
        }
    }
    let read = [
        ReadError::Timeout,
        ReadError::Untrusted {
            peer: Ipv4Addr::LOCALHOST.into(),
        },
        ReadError::Missing,
        ReadError::Closed,
        ReadError::Io(std::io::Error::other("")),
    ];
    for e in &read {
        match e {
            ReadError::Timeout
            | ReadError::Untrusted { .. }
            | ReadError::Missing
            | ReadError::Closed
            | ReadError::Io(_)
            | ReadError::Parse(_) => {}
        }
    }
    read.iter()
        .map(ReadError::kind)
        .chain(parse.iter().map(ParseError::kind))
        .collect()
}

/// `HandshakeError::kind` of every variant.
fn handshake_kinds() -> Vec<&'static str> {
    let tls = || rustls::Error::General(String::new());
    [
        HandshakeError::Timeout(Duration::ZERO),
        HandshakeError::NotTls(tls()),
        HandshakeError::Protocol(tls()),
        HandshakeError::Eof(std::io::Error::other("")),
        HandshakeError::Io(std::io::Error::other("")),
    ]
    .iter()
    .map(|e| match e {
        HandshakeError::Timeout(_)
        | HandshakeError::NotTls(_)
        | HandshakeError::Protocol(_)
        | HandshakeError::Eof(_)
        | HandshakeError::Io(_) => e.kind(),
    })
    .collect()
}

/// `ForwardError::kind` of every variant.
fn upstream_kinds() -> Vec<&'static str> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 1));
    [
        ForwardError::NoHealthyBackend,
        ForwardError::Connect(addr, std::io::Error::other("")),
        ForwardError::ConnectTimeout(addr),
        ForwardError::RequestBody("".into()),
        ForwardError::RequestBodyTimeout(Duration::ZERO),
        ForwardError::Backend(BackendError::Closed),
        ForwardError::ResponseTimeout(Duration::ZERO),
        ForwardError::UnexpectedUpgrade,
    ]
    .iter()
    .map(ForwardError::kind)
    .collect()
}

/// The registered family a query's series name belongs to, and the labels
/// a query may use on it (Prometheus adds `job` and `instance`; histogram
/// buckets have `le`).
fn series<'a>(
    families: &'a BTreeMap<String, Family>,
    name: &str,
) -> Option<(&'a Family, BTreeSet<String>)> {
    let (family, extra) = if let Some(f) = families.get(name) {
        (f, None)
    } else {
        let (base, suffix) = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| Some((name.strip_suffix(s)?, *s)))?;
        let f = families.get(base).filter(|f| f.histogram)?;
        (f, (suffix == "_bucket").then_some("le"))
    };
    let mut labels: BTreeSet<String> = family.labels.keys().cloned().collect();
    labels.extend(
        ["job", "instance"]
            .into_iter()
            .chain(extra)
            .map(str::to_owned),
    );
    Some((family, labels))
}

/// Problems of one PromQL expression: series that are not registered,
/// labels they do not have, label values the code never emits.
fn check_promql(families: &BTreeMap<String, Family>, whence: &str, expr: &str) -> Vec<String> {
    let name = Regex::new(r"\bportcullis_[a-z0-9_]+").expect("regex");
    let grouping = Regex::new(r"\b(?:by|without)\s*\(([^)]*)\)").expect("regex");
    let selector = Regex::new(r"\{([^}]*)\}").expect("regex");
    let matcher = Regex::new(r#"(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)""#).expect("regex");
    let ident = Regex::new(r"^[a-z0-9_]+$").expect("regex");
    let names: BTreeSet<&str> = name.find_iter(expr).map(|m| m.as_str()).collect();
    if names.is_empty() {
        return Vec::new();
    }
    let mut problems = Vec::new();
    let mut allowed = BTreeSet::new();
    let mut found = Vec::new();
    for n in &names {
        match series(families, n) {
            Some((family, labels)) => {
                allowed.extend(labels);
                found.push(family);
            }
            None => problems.push(format!("{n} is not registered")),
        }
    }
    let mut used: Vec<(String, Option<(String, String)>)> = Vec::new();
    for g in grouping.captures_iter(expr) {
        used.extend(
            g[1].split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| (l.to_owned(), None)),
        );
    }
    for s in selector.captures_iter(expr) {
        for m in matcher.captures_iter(&s[1]) {
            used.push((m[1].to_owned(), Some((m[2].to_owned(), m[3].to_owned()))));
        }
    }
    for (label, matched) in used {
        if !allowed.contains(&label) {
            problems.push(format!("label {label:?} is not a label of {names:?}"));
            continue;
        }
        let Some((op, value)) = matched else { continue };
        if label == "job" || label == "instance" || value.contains('$') {
            continue;
        }
        let emitted: BTreeSet<&String> = found
            .iter()
            .filter_map(|f| f.labels.get(&label))
            .flatten()
            .collect();
        let alternatives: Vec<&str> = if op.contains('~') {
            value.split('|').collect()
        } else {
            vec![&value]
        };
        for v in alternatives {
            if ident.is_match(v) && !emitted.iter().any(|e| e.as_str() == v) {
                problems.push(format!(
                    "{label}=\"{v}\": the code never emits this value (it emits {emitted:?})"
                ));
            } else if let Some(prefix) = v.strip_suffix(".*").filter(|p| ident.is_match(p))
                && !emitted.iter().any(|e| e.starts_with(prefix))
            {
                problems.push(format!(
                    "{label}=~\"{v}\": no value the code emits starts so"
                ));
            }
        }
    }
    problems
        .into_iter()
        .map(|p| format!("{whence}: {p}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_alerts_and_docs_use_registered_metrics_labels_and_values() {
    let families = real_registry().await;
    let mut c = Checks::default();

    let dash: Value = serde_json::from_str(&read("deploy/grafana/portcullis.json"))
        .expect("deploy/grafana/portcullis.json parses");
    let mut panels = Vec::new();
    let mut stack: Vec<&Value> = dash["panels"].as_array().into_iter().flatten().collect();
    while let Some(p) = stack.pop() {
        panels.push(p);
        stack.extend(p["panels"].as_array().into_iter().flatten());
    }
    let ids: BTreeSet<String> = panels.iter().map(|p| p["id"].to_string()).collect();
    c.check(
        ids.len() == panels.len(),
        format!("dashboard: {} panels with unique ids", panels.len()),
    );
    let vars = dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    c.check(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "dashboard: a Prometheus data source variable",
    );
    let mut exprs: Vec<(String, String)> = Vec::new();
    for p in &panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str().filter(|e| !e.is_empty()) {
                exprs.push((
                    format!("panel {:?}", p["title"].as_str().unwrap_or("?")),
                    e.to_owned(),
                ));
            }
        }
    }
    for v in &vars {
        if let Some(d) = v["definition"].as_str().filter(|d| !d.is_empty()) {
            exprs.push((format!("variable {}", v["name"]), d.to_owned()));
        }
    }
    let name = Regex::new(r"\bportcullis_[a-z0-9_]+").expect("regex");
    let used: BTreeSet<&str> = exprs
        .iter()
        .flat_map(|(_, e)| name.find_iter(e).map(|m| m.as_str()))
        .collect();
    let problems: Vec<String> = exprs
        .iter()
        .flat_map(|(w, e)| check_promql(&families, &format!("dashboard {w}"), e))
        .collect();
    c.check(
        !used.is_empty() && problems.is_empty(),
        format!(
            "dashboard: {} queries use {} metrics: {}",
            exprs.len(),
            used.len(),
            problems.join("; ")
        ),
    );
    let wanted = [
        "portcullis_requests_total",
        "portcullis_upstream_request_duration_seconds_bucket",
        "portcullis_upstream_errors_total",
        "portcullis_snapshot_reloads_total",
        "portcullis_snapshot_version",
        "portcullis_connections_active",
    ];
    let lacking: Vec<_> = wanted.iter().filter(|w| !used.contains(*w)).collect();
    c.check(
        lacking.is_empty(),
        format!("dashboard: panels for decisions, latency, upstream errors, reloads, snapshot version, connections; none for {lacking:?}"),
    );

    let yaml_block = Regex::new(r"(?ms)^```yaml\n(.*?)^```").expect("regex");
    let mut alerts = 0;
    for md in operator_docs() {
        let text = read(&md);
        let names: BTreeSet<&str> = name.find_iter(&text).map(|m| m.as_str()).collect();
        for n in names {
            c.check(
                series(&families, n).is_some(),
                format!("{}: {n} is not registered", md.display()),
            );
        }
        for block in yaml_block.captures_iter(&text) {
            let doc: Value = serde_norway::from_str(&block[1])
                .unwrap_or_else(|e| panic!("{}: yaml block: {e}", md.display()));
            for group in doc["groups"].as_array().into_iter().flatten() {
                for rule in group["rules"].as_array().into_iter().flatten() {
                    let id = rule["alert"]
                        .as_str()
                        .or(rule["record"].as_str())
                        .unwrap_or("?");
                    let problems = check_promql(
                        &families,
                        &format!("{} alert {id}", md.display()),
                        rule["expr"].as_str().unwrap_or(""),
                    );
                    alerts += 1;
                    c.check(problems.is_empty(), problems.join("; "));
                }
            }
        }
    }
    c.check(alerts > 0, "docs: the alert rules are found");
    c.done("metrics in the dashboard and the docs");
}

// ---------------------------------------------------------------- the real binary

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portcullis"))
}

/// A shipped config, its absolute paths moved under a temporary directory
/// and filled with what the deployment mounts there: the ConfigMap's
/// snapshot, throwaway certificates, a token.
fn install(shipped: &str, dir: &TempDir) -> (PathBuf, Config) {
    let prefix = dir.0.display().to_string();
    let absolute = Regex::new(r#""(/(?:etc|var|run)/[^"]*)""#).expect("regex");
    let moved = absolute
        .replace_all(&read(shipped), format!("\"{prefix}$1\""))
        .into_owned();
    let config = Config::from_toml(&moved).unwrap_or_else(|e| panic!("{shipped}: {e}"));
    let write = |path: &Path, contents: &str| {
        std::fs::create_dir_all(path.parent().expect("a file in a directory")).expect("mkdir");
        std::fs::write(path, contents).expect("write");
    };
    let (_, snapshot) = configmap_files("portcullis-snapshot", ".json")
        .pop()
        .expect("the ConfigMap's snapshot");
    write(
        config.snapshot.path.as_deref().expect("snapshot.path"),
        &snapshot,
    );
    for cert in &config.tls.certificates {
        write(&cert.cert, &pki().cert_pem);
        write(&cert.key, &pki().key_pem);
    }
    if let Some(token) = &config.admin.token_file {
        write(token, "deploy-files-test-token\n");
    }
    if let Some(state) = &config.snapshot.state_dir {
        std::fs::create_dir_all(state).expect("state dir");
    }
    (dir.write("portcullis.toml", moved), config)
}

/// The shipped config starts, turns ready, refuses `PUT /snapshot`
/// without its token, and drains and exits 0 on SIGTERM; `while_running`
/// checks more against its admin address.
async fn starts_and_drains(shipped: &str, while_running: impl AsyncFnOnce(SocketAddr)) {
    let dir = TempDir::new();
    let (config_path, config) = install(shipped, &dir);
    let p = RunningBinary::start(exe(), &config_path, &dir.0).await;
    if config.admin.token_file.is_some() {
        let put = admin_request(
            p.admin,
            Method::PUT,
            "/snapshot",
            &[],
            Some(Bytes::from_static(b"{}")),
        )
        .await;
        assert_eq!(
            put.map(|r| r.status).ok(),
            Some(StatusCode::UNAUTHORIZED),
            "{shipped}: PUT /snapshot without the token"
        );
    }
    while_running(p.admin).await;
    let log = p.log.clone();
    let code = p.stop().await;
    assert_eq!(
        code,
        Some(0),
        "{shipped}: exit on SIGTERM:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_config_starts_passes_the_healthcheck_and_drains() {
    let cmd = healthcheck().expect("the Dockerfile's HEALTHCHECK command");
    let port = docker_config().admin.listen.port();
    let run = |admin: u16| {
        let args: Vec<String> = cmd
            .iter()
            .map(|a| {
                a.replace(
                    &format!("/127.0.0.1/{port}"),
                    &format!("/127.0.0.1/{admin}"),
                )
            })
            .collect();
        async move {
            let out = within(
                "HEALTHCHECK",
                Command::new(&args[0]).args(&args[1..]).output(),
            )
            .await
            .expect("run HEALTHCHECK");
            out.status.success()
        }
    };
    starts_and_drains("deploy/docker/portcullis.toml", async |admin| {
        assert!(
            run(admin.port()).await,
            "the Dockerfile's HEALTHCHECK command passes against the proxy"
        );
        assert!(
            !run(unused_port().port()).await,
            "...and fails when nothing listens"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_config_starts_and_drains() {
    starts_and_drains("deploy/systemd/portcullis.toml", async |_| {}).await;
}

// ---------------------------------------------------------------- doc transcripts

/// The ```console blocks of docs/*.md, re-run by trycmd from the
/// repository root: `$ portcullis ...` (continued on `> ` lines) must print
/// exactly the lines below it and exit 0, or with the code a `? N` line
/// gives; `$ curl ...` goes to the admin API of a proxy serving
/// docs/examples/policies.snapshot.json with `server.zones =
/// ["example.com"]` (through `http_proxy`, so the docs keep their
/// 127.0.0.1:9901).
#[test]
fn doc_transcripts_print_what_the_docs_show() {
    // trycmd skips, silently, a command whose program it cannot find:
    // every command must be one this test runs.
    let block = Regex::new(r"(?ms)^```console\n(.*?)^```").expect("regex");
    let mut portcullis = 0;
    // Only files with transcripts: trycmd would also run bare ``` blocks.
    let mut transcripts = Vec::new();
    for md in operator_docs() {
        let text = read(&md);
        if block.is_match(&text) {
            transcripts.push(md.clone());
        }
        for b in block.captures_iter(&text) {
            for cmd in b[1].lines().filter_map(|l| l.strip_prefix("$ ")) {
                match cmd.split_whitespace().next() {
                    Some("portcullis") => portcullis += 1,
                    Some("curl") => {}
                    _ => panic!(
                        "{}: `$ {cmd}`: only portcullis and curl are run",
                        md.display()
                    ),
                }
            }
        }
    }
    assert!(
        portcullis > 20,
        "only {portcullis} `$ portcullis` transcripts in the docs"
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = TempDir::new();
    let config = ProxyConfig::new(&dir)
        .set("server.zones", vec!["example.com"])
        .set("proxy_protocol.trusted_sources", vec!["127.0.0.0/8"])
        .set(
            "snapshot.path",
            root()
                .join("docs/examples/policies.snapshot.json")
                .display()
                .to_string(),
        )
        .write(&dir);
    let proxy = rt.block_on(RunningBinary::start(exe(), &config, &dir.0));

    let cases = trycmd::TestCases::new();
    cases
        .register_bin("portcullis", Path::new(env!("CARGO_BIN_EXE_portcullis")))
        .env("http_proxy", format!("http://{}", proxy.admin))
        .env("no_proxy", "")
        .env("NO_PROXY", "");
    match std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("curl"))
        .find(|p| p.is_file())
    {
        Some(curl) => {
            cases.register_bin("curl", curl);
        }
        None => {
            eprintln!("curl is not installed: the curl transcripts are not run");
            cases.register_bin("curl", trycmd::schema::Bin::Ignore);
        }
    }
    for md in &transcripts {
        cases.case(md);
    }
    cases.run();
    assert_eq!(
        rt.block_on(proxy.stop()),
        Some(0),
        "the proxy for the curl transcripts exits 0"
    );
}

// ---------------------------------------------------------------- links

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    let keep = Regex::new(r"[^\w\- ]").expect("regex");
    keep.replace_all(&heading.trim().to_lowercase(), "")
        .replace(' ', "-")
}

#[test]
fn relative_links_in_the_docs_resolve() {
    let link = Regex::new(r"\]\(([^)\s]+)\)").expect("regex");
    let heading = Regex::new(r"(?m)^#+ (.*)$").expect("regex");
    let scheme = Regex::new(r"^[a-z]+:").expect("regex");
    let mut docs = operator_docs();
    docs.extend(files("deploy", "md"));
    let mut c = Checks::default();
    for md in &docs {
        for target in link.captures_iter(&read(md)) {
            let target = &target[1];
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            if scheme.is_match(path) {
                continue;
            }
            let dest = if path.is_empty() {
                root().join(md)
            } else {
                root().join(md).parent().expect("dir").join(path)
            };
            if !c.check(
                dest.exists(),
                format!("{}: {target}: no such file", md.display()),
            ) {
                continue;
            }
            if !anchor.is_empty() && dest.extension().is_some_and(|e| e == "md") {
                let text = std::fs::read_to_string(&dest).expect("read");
                let slugs: BTreeSet<String> =
                    heading.captures_iter(&text).map(|h| slug(&h[1])).collect();
                c.check(
                    slugs.contains(anchor),
                    format!("{}: {target}: no such heading", md.display()),
                );
            }
        }
    }
    c.done("relative links");
}
