//! The one place tests write a proxy configuration.
//!
//! [`ProxyConfig::new`] is the test baseline (loopback port 0 everywhere,
//! the zone [`ZONE`], PROXY headers required from 127.0.0.1, the test
//! certificate, short grace and connect timeouts); a test then sets the
//! keys it is about by their dotted TOML path. The result is either typed
//! [`portcullis::Settings`] through the real loader, for the proxy in
//! process, or a file, for the real binary.

use std::path::PathBuf;

use toml::{Table, Value};

use super::*;

/// A proxy configuration under construction.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    doc: Table,
}

impl ProxyConfig {
    /// The baseline, its certificate and key written into `files`. The
    /// snapshot source is the test's to set ([`ProxyConfig::snapshot`],
    /// `snapshot.path` or `snapshot.url`).
    pub fn new(files: &TempDir) -> Self {
        let pki = pki();
        let cert = files.write("cert.pem", &pki.cert_pem);
        let key = files.write("key.pem", &pki.key_pem);
        let mut certificate = Table::new();
        certificate.insert("cert".into(), path_value(cert));
        certificate.insert("key".into(), path_value(key));
        Self { doc: Table::new() }
            .set("server.listen", vec!["127.0.0.1:0"])
            .set("server.zones", vec![ZONE])
            .set("server.shutdown_grace", "1s")
            .set("proxy_protocol.mode", "required")
            .set("proxy_protocol.trusted_sources", vec!["127.0.0.1/32"])
            .set("tls.certificates", Value::Array(vec![certificate.into()]))
            .set("upstream.connect_timeout", "2s")
            .set("admin.listen", "127.0.0.1:0")
    }

    /// Sets `key` (a dotted path: `"server.idle_timeout"`), creating its
    /// tables.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let (table, last) = self.table_for(key);
        table.insert(last.to_owned(), value.into());
        self
    }

    /// Removes `key`, so the proxy's own default applies.
    pub fn unset(mut self, key: &str) -> Self {
        let (table, last) = self.table_for(key);
        table.remove(last);
        self
    }

    /// `snapshot.path`: `snapshot` written into `files`.
    pub fn snapshot(self, files: &TempDir, snapshot: &serde_json::Value) -> Self {
        let path = files.write("snapshot.json", snapshot.to_string());
        self.set("snapshot.path", path_value(path))
    }

    /// `admin.token_file`: [`ADMIN_TOKEN`] written into `files`.
    pub fn admin_token(self, files: &TempDir) -> Self {
        let path = files.write("admin.token", format!("{ADMIN_TOKEN}\n"));
        self.set("admin.token_file", path_value(path))
    }

    /// Every key of a TOML fragment, set over this configuration.
    pub fn merge(mut self, fragment: &str) -> Self {
        let extra: Table = fragment
            .parse()
            .unwrap_or_else(|e| panic!("test TOML fragment: {e}\n{fragment}"));
        merge(&mut self.doc, extra);
        self
    }

    /// The configuration as TOML.
    pub fn toml(&self) -> String {
        toml::to_string(&self.doc).unwrap_or_else(|e| panic!("test config as TOML: {e}"))
    }

    /// Through the real loader into typed settings.
    pub fn settings(&self) -> portcullis::Settings {
        let text = self.toml();
        portcullis::Config::from_toml(&text)
            .and_then(|c| c.settings())
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{text}"))
    }

    /// Written to `files` as `portcullis.toml`, for the real binary.
    pub fn write(&self, files: &TempDir) -> PathBuf {
        files.write("portcullis.toml", self.toml())
    }

    fn table_for<'k>(&mut self, key: &'k str) -> (&mut Table, &'k str) {
        let (parents, last) = key.rsplit_once('.').unwrap_or(("", key));
        let mut table = &mut self.doc;
        for part in parents.split('.').filter(|p| !p.is_empty()) {
            let entry = table
                .entry(part.to_owned())
                .or_insert_with(|| Value::Table(Table::new()));
            table = match entry {
                Value::Table(t) => t,
                other => panic!("{key}: {part} is {other}, not a table"),
            };
        }
        (table, last)
    }
}

fn path_value(path: PathBuf) -> Value {
    Value::String(path.display().to_string())
}

fn merge(into: &mut Table, from: Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(inner)), Value::Table(more)) => merge(inner, more),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_loads_once_it_has_a_snapshot_source() {
        let files = TempDir::new();
        let settings = ProxyConfig::new(&files)
            .set("snapshot.path", "s.json")
            .set("server.idle_timeout", "7s")
            .merge("[remote_cluster]\nlisten = [\"127.0.0.1:0\"]\n[server]\nmax_connections = 3\n")
            .settings();
        assert_eq!(settings.server.http.timeouts.idle, Duration::from_secs(7));
        assert_eq!(settings.server.max_connections, 3);
        assert_eq!(settings.server.zones, [ZONE]);
        assert_eq!(settings.listen.remote_cluster.len(), 1);
    }
}
