#!/usr/bin/env bash
# benches/etcd.sh: the etcd source at one scale, against a real etcd (one
# member, on loopback) and the release binaries.
#
#   benches/etcd.sh            (settings from the environment:)
#
#   SCALE=small|medium|large (large)  CHANGES=N (10)  FOLLOWERS=N (200)
#   RATE=requests/s (1000)  PORT_BASE=P (24500)  BUILD=0 (use the release
#   binaries as they are)  KEEP=1 (leave the work directory: the proxies'
#   logs, with each swap's took_ms)
#
# Measures, in order:
#   1. `portcullis publish` of the synthetic snapshot into an empty prefix;
#   2. start to ready, and RSS once ready, with the file source, then with
#      the etcd source (the same snapshot);
#   3. one policy change from the etcd put to the swap in force (N times);
#   4. N watchers in one process: one change, until every watcher has it;
#   5. open-loop latency at RATE to the bench deployment, quiet and then
#      while 10 changes a second arrive.
# Ports: etcd client P, peer P+1, portcullis P+2, admin P+3, the backend
# (nginx) P+4 (default 24500).
# Installs what it needs and is missing: etcd (Debian's etcd-server),
# nginx, openssl, curl and bc.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"

: "${SCALE:=large}" "${CHANGES:=10}" "${FOLLOWERS:=200}" "${RATE:=1000}"
: "${PORT_BASE:=24500}" "${BUILD:=1}" "${KEEP:=0}"
settings_from_env "$@"

ETCD_PORT=$PORT_BASE
PEER_PORT=$((PORT_BASE + 1))
DATA_PORT=$((PORT_BASE + 2))
ADMIN_PORT=$((PORT_BASE + 3))
BACKEND_PORT=$((PORT_BASE + 4))
# The deployment the load goes to (compare.sh's), led into the snapshot by
# portcullis-gen-snapshot with an allow list of the load's sources.
DEPLOYMENT=c0ffee00000000000000000000000001
HOST=bench.es.bench.test
SOURCES=198.18.0.0/15
ETCD_URL="http://127.0.0.1:$ETCD_PORT"
BIN="$ROOT/target/release"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if ((KEEP)); then echo "kept: $WORK (logs, configs, snapshot)" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

install_missing etcd=etcd-server nginx=nginx openssl=openssl curl=curl bc=bc
# Debian's nginx starts a service; ours runs on a port of its own.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop nginx 2>/dev/null || true
fi
PATH="$PATH:/usr/sbin:/sbin"
if ((BUILD)); then
    cargo build --release --bin portcullis >&2
    cargo build --release -p portcullis-loadgen >&2
fi
for p in "$ETCD_PORT" "$PEER_PORT" "$DATA_PORT" "$ADMIN_PORT" "$BACKEND_PORT"; do
    port_free "$p" || { echo "port $p is in use (--port-base)" >&2; exit 1; }
done

# etcd: large values and a large prefix (the large scale is ~75 MB).
etcd --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "bench=http://127.0.0.1:$PEER_PORT" \
    --max-request-bytes 33554432 --quota-backend-bytes 8589934592 \
    --log-level error >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
wait_port "$ETCD_PORT" 20 || { cat "$WORK/etcd.log" >&2; exit 1; }

echo "== scale $SCALE"
echo "$SOURCES" >"$WORK/allow.lst"
"$BIN/portcullis-gen-snapshot" --scale "$SCALE" --seed 1 --allow-list "$WORK/allow.lst" \
    --allow-list-deployment "$DEPLOYMENT" --allow-list-backend "127.0.0.1:$BACKEND_PORT" \
    --out "$WORK/snapshot.json"
echo "snapshot: $(stat -c %s "$WORK/snapshot.json") bytes"
start=$(date +%s.%N)
"$BIN/portcullis" publish --snapshot "$WORK/snapshot.json" --etcd "$ETCD_URL" >"$WORK/publish.out"
echo "publish into an empty prefix: $(echo "$(date +%s.%N) - $start" | bc) s; $(tail -1 "$WORK/publish.out")"

# config SOURCE-TOML: a config for this bench, one source.
config() {
    portcullis_front_toml 127.0.0.0/8 "$WORK/tls.crt" "$WORK/tls.key"
    printf '[server]\nlisten = ["127.0.0.1:%s"]\nzones = ["es.bench.test"]\n\n' "$DATA_PORT"
    printf '[admin]\nlisten = "127.0.0.1:%s"\n\n[log]\naccess = false\n\n%s\n' "$ADMIN_PORT" "$1"
}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" -days 1 -subj /CN=es.bench.test \
    -addext "subjectAltName=DNS:*.es.bench.test" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" 2>/dev/null

# measure NAME SOURCE-TOML: start, wait for /readyz, print the time and RSS.
measure() {
    config "$2" >"$WORK/$1.toml"
    local start pid
    start=$(date +%s.%N)
    "$BIN/portcullis" run --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_until 60 curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" || { tail "$WORK/$1.log" >&2; exit 1; }
    local ready rss
    ready=$(echo "$(date +%s.%N) - $start" | bc)
    sleep 2 # let the allocator settle after the load
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    echo "$1 source: ready in $ready s, RSS $((rss / 1024)) MiB"
    LAST_PID=$pid
}

measure file "[snapshot]
path = \"$WORK/snapshot.json\""
kill "$LAST_PID"; wait "$LAST_PID" 2>/dev/null || true
wait_gone() { for _ in $(seq 100); do port_free "$ADMIN_PORT" && return; sleep 0.1; done; }
wait_gone

measure etcd "[snapshot.etcd]
endpoints = [\"$ETCD_URL\"]
prefix = \"/portcullis/\""

"$BIN/portcullis-etcd-bench" --etcd "$ETCD_URL" latency \
    --admin "127.0.0.1:$ADMIN_PORT" --changes "$CHANGES"
"$BIN/portcullis-etcd-bench" --etcd "$ETCD_URL" followers --followers "$FOLLOWERS"

# The backend: a static answer, as compare.sh's.
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / { default_type application/json; return 200 '{"took":1,"hits":{"total":{"value":0},"hits":[]}}'; }
    }
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$BACKEND_PORT" 10 || { echo "nginx did not start" >&2; exit 1; }

# open LABEL: one open-loop run; its latency line.
open() {
    "$BIN/portcullis-loadgen" --target "127.0.0.1:$DATA_PORT" --host "$HOST" \
        --ca "$WORK/tls.crt" --source "$SOURCES" --mode open --rate "$RATE" \
        --connections 32 --duration 10s >"$WORK/open-$1.txt"
    echo "open loop at $RATE/s, $1: $(grep -m1 p99 "$WORK/open-$1.txt" | sed 's/^ *//')"
}
open quiet
"$BIN/portcullis-etcd-bench" --etcd "$ETCD_URL" churn --rate 10 --duration 12s >/dev/null &
churn=$!
sleep 1
open churn
wait "$churn"
