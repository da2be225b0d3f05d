//! `POST /explain`: the `explain` command over HTTP, against the snapshot in
//! force and the proxy's own zones.

use std::net::IpAddr;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;

use super::{Admin, error, reply};
use crate::endpoint::{PrivateEndpoint, VpceId};
use crate::explain;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainRequest {
    host: String,
    source: IpAddr,
    #[serde(default)]
    aws_vpce: Option<String>,
    #[serde(default)]
    azure_link_id: Option<u32>,
    /// A decimal string or a JSON integer.
    #[serde(default)]
    gcp_psc_id: Option<GcpId>,
    #[serde(default)]
    sni: Option<String>,
    #[serde(default)]
    found_cluster: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum GcpId {
    Number(u64),
    Text(String),
}

pub(super) fn explain(admin: &Admin, body: &Bytes) -> Response<Full<Bytes>> {
    let req: ExplainRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("bad explain request: {e} (expected {{\"host\": ..., \"source\": ...}})"),
            );
        }
    };
    let endpoint = match endpoint(&req) {
        Ok(e) => e,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let Some(snapshot) = admin.reloader.store().current() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no snapshot loaded");
    };
    let query = explain::Query {
        host: &req.host,
        sni: req.sni.as_deref(),
        found_cluster: req.found_cluster.as_deref(),
        client: explain::client(req.source, endpoint),
    };
    let decision = explain::explain(&snapshot.set, &admin.router, &query);
    match serde_json::to_value(explain::to_json(&snapshot.set, &decision)) {
        Ok(v) => reply(StatusCode::OK, v),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn endpoint(req: &ExplainRequest) -> Result<Option<PrivateEndpoint>, String> {
    let given = [
        req.aws_vpce.is_some(),
        req.azure_link_id.is_some(),
        req.gcp_psc_id.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() > 1 {
        return Err("give at most one of aws_vpce, azure_link_id, gcp_psc_id".to_owned());
    }
    if let Some(id) = &req.aws_vpce {
        return VpceId::parse(id.as_bytes())
            .map(|v| Some(PrivateEndpoint::AwsVpce(v)))
            .map_err(|e| format!("aws_vpce: {e}"));
    }
    if let Some(id) = req.azure_link_id {
        return Ok(Some(PrivateEndpoint::AzureLinkId(id)));
    }
    match &req.gcp_psc_id {
        None => Ok(None),
        Some(GcpId::Number(n)) => Ok(Some(PrivateEndpoint::GcpPscConnectionId(*n))),
        Some(GcpId::Text(s)) => s
            .parse::<u64>()
            .map(|n| Some(PrivateEndpoint::GcpPscConnectionId(n)))
            .map_err(|_| {
                format!(
                    "gcp_psc_id: \"{s}\" is not a decimal number up to {}",
                    u64::MAX
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn req(v: serde_json::Value) -> Result<ExplainRequest, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn endpoints_are_parsed_and_exclusive() {
        let r =
            req(json!({"host": "a", "source": "1.2.3.4", "gcp_psc_id": "18446744072646845332"}))
                .unwrap();
        assert_eq!(
            endpoint(&r),
            Ok(Some(PrivateEndpoint::GcpPscConnectionId(
                18446744072646845332
            )))
        );
        let r = req(
            json!({"host": "a", "source": "1.2.3.4", "aws_vpce": "VPCE-1", "azure_link_id": 1}),
        )
        .unwrap();
        assert!(endpoint(&r).is_err());
        let r = req(json!({"host": "a", "source": "1.2.3.4", "aws_vpce": "vpce 1"})).unwrap();
        assert!(endpoint(&r).unwrap_err().starts_with("aws_vpce"));
        assert!(req(json!({"host": "a", "source": "not-an-ip"})).is_err());
        assert!(req(json!({"host": "a", "source": "1.2.3.4", "extra": 1})).is_err());
    }
}
