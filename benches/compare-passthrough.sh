#!/usr/bin/env bash
# Remote-cluster TLS pass-through: portcullis vs HAProxy, doing the same
# job on this machine: PROXY v1 in (accept-proxy), TLS NOT terminated, the
# ClientHello's SNI picks the backend, bytes spliced both ways.
#
# - HAProxy: `mode tcp`, `tcp-request inspect-delay`, `req.ssl_sni`
#   routing, `accept-proxy` on the bind; one thread; default buffers and no
#   kernel splicing (add --haproxy-splice for a second HAProxy row with
#   `option splice-auto`).
# - portcullis: `[remote_cluster] listen`, filter = false (add --filter for
#   a row with filter = true: one policy decision per connection), one
#   tokio worker, its access log on (to /dev/null).
#
# Each proxy runs alone on core 0 (taskset); the TLS node and the client
# (benches/passthrough_load.py, Python `ssl`) share core 1. Loopback only.
#
# Per proxy and run: CPU seconds per GiB spliced (node → client, 4
# connections), and CPU µs per new pass-through connection (PROXY header,
# ClientHello, routing, backend connect, TLS handshake spliced, close),
# from the proxy's utime + stime in /proc/PID/stat before and after.
#
#   benches/compare-passthrough.sh                 # 2 runs, 2 GiB and 3000 connections per run
#   benches/compare-passthrough.sh --runs 3 --gib 4 --connections 5000
#   benches/compare-passthrough.sh --no-build      # use target/release/portcullis as it is
#
# Results: a markdown table on stdout and in target/compare-passthrough/results.md.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"

RUNS=2
GIB=2
CONNECTIONS=3000
BUILD=1
FILTER=0
HA_SPLICE=0
PORT_BASE=28740

while (($#)); do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --gib) GIB="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --filter) FILTER=1; shift ;;
        --haproxy-splice) HA_SPLICE=1; shift ;;
        --port-base) PORT_BASE="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

for tool in haproxy openssl python3 taskset; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
(($(nproc) >= 2)) || { echo "needs 2 cores (proxy on 0, node and client on 1)" >&2; exit 1; }

NODE_PORT=$PORT_BASE
HA_PORT=$((PORT_BASE + 1))
PC_HTTPS=$((PORT_BASE + 2))
PC_RC=$((PORT_BASE + 3))
PC_ADMIN=$((PORT_BASE + 4))
SNI=abc123.es.test
WORK="$ROOT/target/compare-passthrough"
LOAD="$ROOT/benches/passthrough_load.py"
BIN="$ROOT/target/release/portcullis"
CLK_TCK=$(getconf CLK_TCK)
mkdir -p "$WORK"

if ((BUILD)); then
    cargo build --release --quiet --bin portcullis
fi
[ -x "$BIN" ] || { echo "no $BIN (run without --no-build)" >&2; exit 1; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# listening PORT: waits up to 10 s for a process just started.
listening() {
    wait_port "$1" 10 || { echo "nothing listens on $1" >&2; return 1; }
}

# ---------------------------------------------------------------- files
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$SNI" -addext "subjectAltName=DNS:*.es.test,DNS:es.test" \
    -keyout "$WORK/node.key" -out "$WORK/node.pem" 2>/dev/null
# The proxy's own certificate (portcullis needs one for its HTTPS listener).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=es.test" -addext "subjectAltName=DNS:*.es.test" \
    -keyout "$WORK/proxy.key" -out "$WORK/proxy.pem" 2>/dev/null

cat >"$WORK/snapshot.json" <<EOF
{"version": 1,
 "deployments": [
   {"id": "abc123", "region": "aws-us-east-1",
    "resources": {"remote_cluster": {"backends": ["127.0.0.1:$NODE_PORT"]}},
    "policies": ["office-ips"]}],
 "policies": [
   {"id": "office-ips", "type": "ip", "region": "aws-us-east-1",
    "rules": [{"source": "203.0.113.0/24"}]}]}
EOF

portcullis_toml() {
    portcullis_front_toml 127.0.0.1/32 "$WORK/proxy.pem" "$WORK/proxy.key"
    cat <<EOF
[server]
listen = ["127.0.0.1:$PC_HTTPS"]
zones = ["es.test"]
[snapshot]
path = "$WORK/snapshot.json"
[admin]
listen = "127.0.0.1:$PC_ADMIN"
[remote_cluster]
listen = ["127.0.0.1:$PC_RC"]
filter = $1
EOF
}
portcullis_toml false >"$WORK/portcullis.toml"
portcullis_toml true >"$WORK/portcullis-filter.toml"

haproxy_cfg() {
    cat <<EOF
global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    timeout connect 3s
    timeout client 15m
    timeout server 15m
$1
frontend rc
    bind 127.0.0.1:$HA_PORT accept-proxy
    tcp-request inspect-delay 5s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend rc_abc123 if { req.ssl_sni -i $SNI }
backend rc_abc123
    server n1 127.0.0.1:$NODE_PORT
EOF
}
haproxy_cfg "" >"$WORK/haproxy.cfg"
haproxy_cfg "    option splice-auto" >"$WORK/haproxy-splice.cfg"

# ---------------------------------------------------------------- node
taskset -c 1 python3 "$LOAD" node --listen "127.0.0.1:$NODE_PORT" \
    --cert "$WORK/node.pem" --key "$WORK/node.key" >"$WORK/node.log" 2>&1 &
PIDS+=($!)
listening "$NODE_PORT"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# run NAME -> "cpu_s_per_gib gib_per_s us_per_conn conn_per_s"
measure() {
    local name=$1 pid port
    case "$name" in
        haproxy) taskset -c 0 haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 & pid=$!; port=$HA_PORT ;;
        haproxy-splice) taskset -c 0 haproxy -db -f "$WORK/haproxy-splice.cfg" >"$WORK/haproxy.log" 2>&1 & pid=$!; port=$HA_PORT ;;
        portcullis|portcullis-filter)
            local cfg="$WORK/portcullis.toml"
            [ "$name" = portcullis-filter ] && cfg="$WORK/portcullis-filter.toml"
            RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN" run --config "$cfg" \
                >/dev/null 2>"$WORK/portcullis.log" & pid=$!; port=$PC_RC ;;
    esac
    PIDS+=("$pid")
    listening "$port"
    sleep 0.5
    local target="127.0.0.1:$port" bytes=$((GIB * 1024 * 1024 * 1024 / 4))
    # Warm-up: one connection of each kind.
    taskset -c 1 python3 "$LOAD" bulk --target "$target" --sni "$SNI" --conns 1 --bytes $((64 << 20)) >/dev/null
    taskset -c 1 python3 "$LOAD" connect --target "$target" --sni "$SNI" --count 100 --conns 4 >/dev/null

    local c0 c1 out
    c0=$(cpu_ticks "$pid")
    out=$(taskset -c 1 python3 "$LOAD" bulk --target "$target" --sni "$SNI" --conns 4 --bytes "$bytes")
    c1=$(cpu_ticks "$pid")
    local bulk_s bulk_secs
    bulk_s=$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" 'BEGIN { print (b - a) / t }')
    bulk_secs=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['seconds'])" "$out")

    c0=$(cpu_ticks "$pid")
    out=$(taskset -c 1 python3 "$LOAD" connect --target "$target" --sni "$SNI" --count "$CONNECTIONS" --conns 8)
    c1=$(cpu_ticks "$pid")
    local conn_s conn_secs
    conn_s=$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" 'BEGIN { print (b - a) / t }')
    conn_secs=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['seconds'])" "$out")

    kill "$pid"
    wait "$pid" 2>/dev/null || true
    awk -v s="$bulk_s" -v g="$GIB" -v bt="$bulk_secs" -v c="$conn_s" -v n="$CONNECTIONS" -v ct="$conn_secs" \
        'BEGIN { printf "%.3f %.2f %.1f %.0f\n", s / g, g / bt, c * 1e6 / n, n / ct }'
}

proxies=(haproxy)
((HA_SPLICE)) && proxies+=(haproxy-splice)
proxies+=(portcullis)
((FILTER)) && proxies+=(portcullis-filter)

results="$WORK/results.md"
{
    echo "| proxy | run | CPU s / GiB spliced | GiB/s (client-bound) | CPU µs / new connection | connections/s (client-bound) |"
    echo "| --- | --- | ---: | ---: | ---: | ---: |"
} >"$results"
for run in $(seq "$RUNS"); do
    for p in "${proxies[@]}"; do
        read -r per_gib gibs per_conn conns < <(measure "$p")
        echo "| $p | $run | $per_gib | $gibs | $per_conn | $conns |" >>"$results"
        echo "$p run $run: $per_gib CPU-s/GiB ($gibs GiB/s), $per_conn CPU-µs/connection ($conns conn/s)" >&2
    done
done
echo
echo "$(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)); $(haproxy -v | head -1); proxy on core 0, node + client (Python ssl) on core 1; $GIB GiB and $CONNECTIONS connections per run."
echo
cat "$results"
