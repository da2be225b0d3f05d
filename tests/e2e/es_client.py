"""The official Elasticsearch Python client talking to portcullis through a
TCP load balancer (HAProxy with send-proxy-v2), driven by
tests/e2e_real_clients.rs.

Names resolve to the load balancer the way a cloud DNS record would: every
`*.<zone>` name is answered with the load balancer's loopback address, so the
client sends the real SNI and Host header.

Prints one JSON object with what each step observed; the Rust test asserts
on it. Exits non-zero only when the client library itself misbehaves.
"""

import json
import socket
import sys
import urllib.request

from elasticsearch import AuthorizationException, Elasticsearch

args = json.loads(sys.argv[1])
ZONE = args["zone"]
LB_HOST, LB_PORT = args["lb_host"], args["lb_port"]

_real_getaddrinfo = socket.getaddrinfo


def _zone_to_lb(host, *rest, **kw):
    if isinstance(host, str) and (host == ZONE or host.endswith("." + ZONE)):
        host = LB_HOST
    return _real_getaddrinfo(host, *rest, **kw)


socket.getaddrinfo = _zone_to_lb


def client(alias):
    return Elasticsearch(
        f"https://{alias}.es.{ZONE}:{LB_PORT}",
        ca_certs=args["ca"],
        request_timeout=10,
        retry_on_timeout=False,
        max_retries=0,
    )


def connections_opened(es):
    # urllib3 counts every connection its pool opened for this node.
    return sum(node.pool.num_connections for node in es.transport.node_pool.all())


def search(es):
    r = es.search(index="logs", query={"match_all": {}})
    return {"ok": True, "hits": r["hits"]["total"]["value"], "took": r["took"]}


def denied(es, call):
    try:
        call(es)
    except AuthorizationException as e:
        return {"ok": False, "error": type(e).__name__, "status": e.meta.status, "body": e.body}
    return {"ok": True}


def put_snapshot(path):
    with open(path, "rb") as f:
        body = f.read()
    req = urllib.request.Request(
        args["admin"] + "/snapshot",
        data=body,
        method="PUT",
        headers={"Authorization": "Bearer " + args["token"], "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


out = {}
office = client("office")
out["info"] = office.info()["cluster_name"]
out["allowed"] = [search(office) for _ in range(3)]
out["closed"] = denied(client("closed"), search)
# The policy change arrives while `office` keeps its connection open.
out["flip_status"] = put_snapshot(args["flip_snapshot"])
out["after_flip"] = denied(office, search)
out["office_connections"] = connections_opened(office)
print(json.dumps(out))
