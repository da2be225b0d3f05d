//! Routing: which deployment resource a request is for (SPEC §2).
//!
//! Pure functions over the request's host, the TLS SNI and the
//! `X-Found-Cluster` header. Host forms, for a configured zone `Z`:
//! `{alias}.{product}.{Z}`, `{cluster_id}.{product}.{Z}`, `{cluster_id}.{Z}`
//! (product `es`). Matching is case-insensitive, ignores a port and a
//! trailing dot, and never allocates: names are lowercased into a stack
//! buffer and looked up in the snapshot's name map.
//!
//! The remote-cluster listener (SPEC §2.1) routes by SNI alone, with its
//! own forms: `{cluster_id}.{Z}` or `{alias}.{Z}`
//! ([`Router::remote_cluster_deployment`]). Its resource,
//! [`Product::RemoteCluster`], is never a host label, so HTTP routing cannot
//! reach it.

use crate::endpoint::ClientIdentity;
use crate::policy::{
    Decision, DeploymentIndex, PolicySet, Product, Reason, RequestFacts, Target, decide,
};

/// Longest DNS name (RFC 1035); anything longer names no deployment.
pub const MAX_HOST_LEN: usize = 253;

/// Why a request could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No deployment, or the deployment lacks the resource: 404.
    #[error("unknown deployment or resource")]
    Unknown,
    /// SNI names one deployment and the request another: 421.
    #[error("TLS server name and request name different deployments")]
    Misdirected,
}

impl RouteError {
    pub fn reason(self) -> Reason {
        match self {
            Self::Unknown => Reason::UnknownDeployment,
            Self::Misdirected => Reason::Misdirected,
        }
    }
}

/// The routing inputs of one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteInput<'a> {
    /// HTTP/1.1 `Host` or HTTP/2 `:authority`, possibly with a port.
    pub host: Option<&'a str>,
    /// `X-Found-Cluster`: `<cluster_id>`, `<cluster_id>.<product>` or
    /// `<alias>.<product>`; used when the host is not a deployment name.
    pub found_cluster: Option<&'a str>,
    /// The TLS server name the client sent.
    pub sni: Option<&'a str>,
}

/// Host-name routing for a set of zones.
#[derive(Debug, Clone)]
pub struct Router {
    /// Lowercase, without leading or trailing dots, longest first so that
    /// `es.example.com` is tried before `example.com`. Empty: any zone
    /// (used by `explain` when no zone is given).
    zones: Box<[Box<str>]>,
}

impl Router {
    pub fn new<S: AsRef<str>>(zones: &[S]) -> Self {
        let mut zones: Vec<Box<str>> = zones
            .iter()
            .map(|z| {
                z.as_ref()
                    .trim_matches('.')
                    .to_ascii_lowercase()
                    .into_boxed_str()
            })
            .filter(|z| !z.is_empty())
            .collect();
        zones.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        zones.dedup();
        Self {
            zones: zones.into_boxed_slice(),
        }
    }

    /// A router that accepts a deployment name under any zone: the first
    /// label is the cluster id or alias, a second label naming a product
    /// selects it. For offline tools, where no zone is configured.
    pub fn any_zone() -> Self {
        Self {
            zones: Box::new([]),
        }
    }

    /// Routes one request and decides it: the data plane's whole
    /// decision, used alike by serving and by `explain`.
    pub fn evaluate(
        &self,
        set: &PolicySet,
        input: &RouteInput<'_>,
        client: ClientIdentity,
    ) -> Decision {
        match self.route(set, input) {
            Ok(target) => decide(set, &RequestFacts { target, client }),
            Err(e) => Decision::unrouted(e.reason()),
        }
    }

    /// Routes one request.
    pub fn route(&self, set: &PolicySet, input: &RouteInput<'_>) -> Result<Target, RouteError> {
        let (deployment, product) = input
            .host
            .and_then(|h| self.host_target(set, h))
            .or_else(|| input.found_cluster.and_then(|v| header_target(set, v)))
            .ok_or(RouteError::Unknown)?;
        // The usual client names the same host in SNI and `Host`: the same
        // text routes the same way, so it is not routed twice.
        let sni = input
            .sni
            .filter(|s| !input.host.is_some_and(|h| h.eq_ignore_ascii_case(s)));
        if let Some((sni_deployment, _)) = sni.and_then(|s| self.host_target(set, s))
            && sni_deployment != deployment
        {
            return Err(RouteError::Misdirected);
        }
        if !set.has_resource(deployment, product) {
            return Err(RouteError::Unknown);
        }
        Ok(Target {
            deployment,
            product,
        })
    }

    /// Whether `host` names the proxy itself rather than a deployment: no
    /// host, an IP literal, or a zone apex (with or without a port). Load
    /// balancers' HTTPS health checks send these (SPEC §6 `/_health`).
    pub fn is_infrastructure_host(&self, host: Option<&str>) -> bool {
        let Some(host) = host else {
            return true;
        };
        let mut buf = [0u8; MAX_HOST_LEN];
        match normalise_host(host, &mut buf) {
            // Zones are stored lowercase, without dots at either end.
            Some(name) => self.zones.iter().any(|z| **z == *name),
            // Not a host name: an IP literal, or junk.
            None => is_ip_literal(host),
        }
    }

    /// The deployment a remote-cluster connection's SNI names (SPEC §2.1):
    /// `{cluster_id}.{Z}` or `{alias}.{Z}` for a configured zone `Z` (any
    /// first label in any-zone mode). Case, one trailing dot and a port are
    /// ignored as for host names. Whether the deployment has a
    /// `remote_cluster` resource is the caller's check.
    pub fn remote_cluster_deployment(&self, set: &PolicySet, sni: &str) -> Option<DeploymentIndex> {
        let mut buf = [0u8; MAX_HOST_LEN];
        let host = normalise_host(sni, &mut buf)?;
        let name = if self.zones.is_empty() {
            host.split('.').next().unwrap_or_default()
        } else {
            self.zones.iter().find_map(|z| {
                let rest = host.strip_suffix(&**z)?;
                rest.strip_suffix('.')
            })?
        };
        if name.is_empty() || name.contains('.') {
            return None;
        }
        set.find_deployment(name, true)
    }

    /// The deployment and product a host name denotes, if it is a
    /// deployment host name.
    pub fn host_target(&self, set: &PolicySet, host: &str) -> Option<(DeploymentIndex, Product)> {
        let mut buf = [0u8; MAX_HOST_LEN];
        let host = normalise_host(host, &mut buf)?;
        let prefix = if self.zones.is_empty() {
            any_zone_prefix(host)
        } else {
            self.zones.iter().find_map(|z| {
                let rest = host.strip_suffix(&**z)?;
                rest.strip_suffix('.')
            })?
        };
        name_target(set, prefix)
    }
}

/// `key` or `key.product` → deployment and product. The product-less form
/// takes only cluster ids (SPEC §2 has no `{alias}.{Z}` form).
fn name_target(set: &PolicySet, name: &str) -> Option<(DeploymentIndex, Product)> {
    match name.split_once('.') {
        None => Some((set.find_deployment(name, false)?, Product::Es)),
        Some((key, product)) => {
            let product = Product::parse(product)?;
            Some((set.find_deployment(key, true)?, product))
        }
    }
}

/// In any-zone mode: the first label, plus the second when it names a
/// product.
fn any_zone_prefix(host: &str) -> &str {
    let mut labels = host.splitn(3, '.');
    let first = labels.next().unwrap_or_default();
    match labels.next() {
        Some(second) if Product::parse(second).is_some() => &host[..first.len() + 1 + second.len()],
        _ => first,
    }
}

fn header_target(set: &PolicySet, value: &str) -> Option<(DeploymentIndex, Product)> {
    let mut buf = [0u8; MAX_HOST_LEN];
    let name = lowercase(value.trim(), &mut buf)?;
    name_target(set, name)
}

/// Lowercases `host` into `buf`, dropping a port and a trailing dot.
/// `None` for IP literals, empty or over-long names.
fn normalise_host<'b>(host: &str, buf: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b str> {
    if host.starts_with('[') {
        return None; // IPv6 literal
    }
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None, // bare IPv6 or junk
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // A ':' left over means a bare IPv6 literal; a dotted quad is IPv4.
    if host.is_empty() || host.contains(':') || host.parse::<std::net::Ipv4Addr>().is_ok() {
        return None;
    }
    lowercase(host, buf)
}

/// `10.0.0.7`, `10.0.0.7:9243`, `::1`, `[2001:db8::1]:9243`.
fn is_ip_literal(host: &str) -> bool {
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.parse::<std::net::Ipv4Addr>().is_ok()
}

fn lowercase<'b>(s: &str, buf: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b str> {
    let dst = buf.get_mut(..s.len())?;
    dst.copy_from_slice(s.as_bytes());
    dst.make_ascii_lowercase();
    // ASCII lowercasing keeps UTF-8 valid.
    std::str::from_utf8(dst).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_ports_dots_and_case() {
        let mut b = [0; MAX_HOST_LEN];
        assert_eq!(
            normalise_host("ABC.Es.Example.COM:9243", &mut b),
            Some("abc.es.example.com")
        );
        assert_eq!(
            normalise_host("abc.example.com.", &mut b),
            Some("abc.example.com")
        );
        assert_eq!(normalise_host("[::1]:9243", &mut b), None);
        assert_eq!(normalise_host("::1", &mut b), None);
        assert_eq!(normalise_host("127.0.0.1:9243", &mut b), None);
        assert_eq!(normalise_host("", &mut b), None);
        assert_eq!(normalise_host(&"a".repeat(254), &mut b), None);
        assert_eq!(normalise_host("abc:x", &mut b), None);
    }

    #[test]
    fn infrastructure_hosts_are_ips_and_zone_apexes() {
        let r = Router::new(&["es.example.com"]);
        for host in [
            None,
            Some("10.0.0.7"),
            Some("10.0.0.7:9243"),
            Some("[2001:db8::1]:9243"),
            Some("[::1]"),
            Some("::1"),
            Some("es.example.com"),
            Some("ES.Example.com.:443"),
        ] {
            assert!(r.is_infrastructure_host(host), "{host:?}");
        }
        for host in [
            "abc.es.example.com",
            "example.com",
            "es.example.com.evil",
            "localhost",
            "",
        ] {
            assert!(!r.is_infrastructure_host(Some(host)), "{host}");
        }
    }

    #[test]
    fn any_zone_takes_first_label_and_product() {
        assert_eq!(any_zone_prefix("abc.kb.example.com"), "abc.kb");
        assert_eq!(any_zone_prefix("abc.example.com"), "abc");
        assert_eq!(any_zone_prefix("abc"), "abc");
        assert_eq!(any_zone_prefix("abc.es"), "abc.es");
    }

    fn remote_cluster_world() -> PolicySet {
        let json = r#"{"version": 1, "deployments": [
            {"id": "abc123", "alias": "my-alias", "region": "aws-us-east-1",
             "resources": {"es": {"backends": ["127.0.0.1:9200"]},
                           "remote_cluster": {"backends": ["127.0.0.1:9400"]}}},
            {"id": "rconly", "region": "aws-us-east-1",
             "resources": {"remote_cluster": {"backends": ["127.0.0.1:9401"]}}}
        ], "policies": []}"#;
        let snapshot = crate::policy::parse_snapshot(json.as_bytes()).expect("valid");
        PolicySet::compile(&snapshot, crate::policy::PolicyOptions::default())
    }

    #[test]
    fn remote_cluster_sni_takes_cluster_id_or_alias_directly_under_a_zone() {
        let set = remote_cluster_world();
        let r = Router::new(&["es.example.com"]);
        let abc = set.find_deployment("abc123", false);
        assert!(abc.is_some());
        for sni in [
            "abc123.es.example.com",
            "my-alias.es.example.com",
            "ABC123.ES.example.com.",
            "my-alias.es.example.com:9400",
        ] {
            assert_eq!(r.remote_cluster_deployment(&set, sni), abc, "{sni}");
        }
        for sni in [
            "abc123.es.es.example.com",
            "my-alias.remote_cluster.es.example.com",
            "abc123.example.com",
            "es.example.com",
            ".es.example.com",
            "nope.es.example.com",
            "127.0.0.1",
            "",
        ] {
            assert_eq!(r.remote_cluster_deployment(&set, sni), None, "{sni}");
        }
    }

    #[test]
    fn https_routing_never_reaches_the_remote_cluster_resource() {
        let set = remote_cluster_world();
        let r = Router::new(&["es.example.com"]);
        for host in [
            "abc123.remote_cluster.es.example.com",
            "my-alias.remote_cluster.es.example.com",
            "rconly.es.example.com",
        ] {
            let input = RouteInput {
                host: Some(host),
                ..RouteInput::default()
            };
            assert_eq!(r.route(&set, &input), Err(RouteError::Unknown), "{host}");
        }
        for header in ["rconly", "abc123.remote_cluster", "my-alias.remote_cluster"] {
            let input = RouteInput {
                found_cluster: Some(header),
                ..RouteInput::default()
            };
            assert_eq!(r.route(&set, &input), Err(RouteError::Unknown), "{header}");
        }
        let ok = RouteInput {
            host: Some("abc123.es.example.com"),
            ..RouteInput::default()
        };
        assert_eq!(r.route(&set, &ok).map(|t| t.product), Ok(Product::Es));
    }
}
