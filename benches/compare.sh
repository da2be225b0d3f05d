#!/usr/bin/env bash
# portcullis vs nginx vs HAProxy, doing the same job on this machine:
# PROXY v2 in, TLS 1.3 (one ECDSA P-256 certificate), a 10 000-CIDR allow
# list checked against the PROXY source address, the same 403 body for
# denied clients, and allowed requests forwarded over keep-alive HTTP/1.1 to
# one fast static backend (nginx `return 200` with a ~600-byte Elasticsearch
# search response).
#
# Each proxy runs alone on core 0 (one worker / thread); the load generator
# (benches/loadgen) and the backend share core 1. Loopback only.
#
# Per proxy: requests/s and CPU µs per request over keep-alive connections
# (closed loop), CPU µs per new TLS connection (one request per connection),
# resident memory per idle TLS connection, and p50/p99/p99.9 at a fixed
# request rate (open loop, latency from the intended send time). Then, for
# portcullis, the same fixed-rate load with a 1M-rule snapshot re-applied
# every second through `PUT /snapshot`, against a quiet run.
#
# Results: a markdown table on stdout and in target/compare/results.md; all
# numbers in target/compare/results.json.
#
#   benches/compare.sh                  # 10 s per phase
#   benches/compare.sh --quick          # 3 s per phase, 1000 idle connections, medium snapshot
#   benches/compare.sh --duration 15 --repeat 2
#   benches/compare.sh --smoke          # the CI smoke run (.ci/loadgen-smoke), ~2 s
#
# Options: --duration S (per phase), --repeat N (best of N per CPU and
# memory metric; each repetition a fresh process), --open-repeat N
# (interleaved open-loop runs per proxy, latencies are the median; default 3),
# --connections N (keep-alive and open loop), --idle N (idle connections),
# --rate R (open-loop rate; default: a quarter of the slowest proxy's
# keep-alive rate), --denied-share PCT (clients from a denied range, default 10),
# --proxies "nginx haproxy portcullis", --reload-scale small|medium|large,
# --no-reload, --no-install, --no-build (use the release binaries as they
# are), --report-only (rebuild the tables from the last run's raw files),
# --port-base P (backend P, nginx P+1, HAProxy
# P+2, portcullis P+3, its admin API P+4; default 24400).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

DURATION=10
REPEAT=1
OPEN_REPEAT=3
CONNS=64
NEWCONN_CONNS=32
IDLE_CONNS=5000
IDLE_HOLD=5
RATE=auto
DENIED_SHARE=10
PROXIES="nginx haproxy portcullis"
RELOAD=1
RELOAD_SCALE=large
INSTALL=1
BUILD=1
REPORT_ONLY=0
PORT_BASE=24400

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --smoke) exec "$ROOT/.ci/loadgen-smoke" ;;
        --quick) DURATION=3 IDLE_CONNS=1000 IDLE_HOLD=2 RELOAD_SCALE=medium OPEN_REPEAT=1; shift ;;
        --duration) DURATION="$2"; shift 2 ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        --open-repeat) OPEN_REPEAT="$2"; shift 2 ;;
        --connections) CONNS="$2"; shift 2 ;;
        --idle) IDLE_CONNS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --denied-share) DENIED_SHARE="$2"; shift 2 ;;
        --proxies) PROXIES="$2"; shift 2 ;;
        --reload-scale) RELOAD_SCALE="$2"; shift 2 ;;
        --no-reload) RELOAD=0; shift ;;
        --no-install) INSTALL=0; shift ;;
        --no-build) BUILD=0; shift ;;
        --report-only) REPORT_ONLY=1; shift ;;
        --port-base) PORT_BASE="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

OUT="$ROOT/target/compare"
WORK="$OUT/work"
RAW="$OUT/raw"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release"
BACKEND_PORT=$PORT_BASE
ADMIN_PORT=$((PORT_BASE + 4))
declare -A PORT=([nginx]=$((PORT_BASE + 1)) [haproxy]=$((PORT_BASE + 2)) [portcullis]=$((PORT_BASE + 3)))
declare -A LABEL=([nginx]=nginx [haproxy]=HAProxy [portcullis]=portcullis)
HOST=bench.es.bench.test
FORBIDDEN='{"ok":false,"message":"Forbidden due to traffic filtering. Please see the Elastic documentation on Traffic Filtering for more information."}'
# Allowed clients come from these ranges (all in the allow list); denied
# ones from 198.18.0.0/15, which no list entry covers.
ALLOWED_SOURCES=(203.0.113.0/24 192.0.2.0/24 100.64.0.0/16)
DENIED_SOURCE=198.18.0.0/15

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes
STARTED=()
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        # Bounded: SIGKILL after ~3 s.
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    STARTED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop PID: ends one process we started and forgets it.
stop() {
    local pid="$1" keep=() p
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${STARTED[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    STARTED=("${keep[@]}")
}

wait_port() { # port seconds
    local i
    for i in $(seq $(($2 * 10))); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ------------------------------------------------------------------- set-up
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_tools() {
    local need=()
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
    command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
    command -v openssl >/dev/null 2>&1 || need+=(openssl)
    command -v jq >/dev/null 2>&1 || need+=(jq)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    command -v taskset >/dev/null 2>&1 || need+=(util-linux)
    if ((${#need[@]})); then
        ((INSTALL)) || die "missing ${need[*]} (and --no-install given)"
        log "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        as_root apt-get update -qq
        as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    # The Debian packages start services; ours run on their own ports, but
    # keep the machine quiet.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl stop nginx haproxy 2>/dev/null || true
    fi
    PATH="$PATH:/usr/sbin:/sbin"
}

build() {
    log "building portcullis and the load generator (release)"
    cargo build --release --locked --bin portcullis --bin portcullis-loadgen \
        --bin portcullis-gen-snapshot >&2
}

make_certificate() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 30 -subj /CN=bench.test \
        -addext "subjectAltName=DNS:bench.test,DNS:*.bench.test,DNS:*.es.bench.test" \
        -addext "basicConstraints=critical,CA:FALSE" \
        -addext "keyUsage=critical,digitalSignature" \
        -addext "extendedKeyUsage=serverAuth" 2>/dev/null
    cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy.pem"
}

# 10 000 distinct CIDRs: the client ranges above plus seeded random /16-/32
# networks in public-looking space (never 198.18/15, 127/8 or 10/8).
make_allow_list() {
    awk -v n=10000 -v fixed="${ALLOWED_SOURCES[*]}" 'BEGIN {
        srand(42)
        split(fixed, f, " ")
        for (i in f) { seen[f[i]] = 1; print f[i]; count++ }
        split("13 34 52 63 81 91 104 151 185 212", firsts, " ")
        split("32 32 32 32 24 24 24 28 20 16", lens, " ")
        while (count < n) {
            a = firsts[int(rand() * 10) + 1]; len = lens[int(rand() * 10) + 1]
            ip = a * 16777216 + int(rand() * 16777216)
            block = 2 ^ (32 - len); ip = ip - ip % block
            cidr = sprintf("%d.%d.%d.%d/%d", int(ip / 16777216), int(ip / 65536) % 256,
                           int(ip / 256) % 256, ip % 256, len)
            if (!(cidr in seen)) { seen[cidr] = 1; print cidr; count++ }
        }
    }' >"$WORK/allow.lst"
    awk '{ print $1 " 1;" }' "$WORK/allow.lst" >"$WORK/allow.geo"
    printf '%s' "$FORBIDDEN" >"$WORK/403.json"
    # The same list as one portcullis IP policy.
    jq -R -s -c --arg backend "127.0.0.1:$BACKEND_PORT" '
        (split("\n") | map(select(length > 0)) | map({source: .})) as $rules
        | {deployments: [{id: "c0ffee00000000000000000000000001", alias: "bench",
                          region: "aws-us-east-1",
                          resources: {es: {backends: [$backend]}},
                          policies: ["bench-allow-list"]}],
           policies: [{id: "bench-allow-list", type: "ip", region: "aws-us-east-1",
                       rules: $rules}]}' "$WORK/allow.lst" >"$WORK/bench-parts.json"
    jq -c '. + {version: 1}' "$WORK/bench-parts.json" >"$WORK/snapshot.json"
}

# A ~600-byte Elasticsearch search response.
SEARCH_RESPONSE='{"took":3,"timed_out":false,"_shards":{"total":1,"successful":1,"skipped":0,"failed":0},"hits":{"total":{"value":2,"relation":"eq"},"max_score":1.3862942,"hits":[{"_index":"logs-2024.11.23","_id":"kxbP9ZMBa1DUwN2qYH3u","_score":1.3862942,"_source":{"@timestamp":"2024-11-23T18:47:12.384Z","message":"GET /api/v1/orders 200 12ms","service":{"name":"checkout"},"host":{"name":"web-07"}}},{"_index":"logs-2024.11.23","_id":"lBbP9ZMBa1DUwN2qYH3u","_score":1.3862942,"_source":{"@timestamp":"2024-11-23T18:47:13.019Z","message":"GET /api/v1/cart 200 8ms","service":{"name":"checkout"},"host":{"name":"web-02"}}}]}}'

write_configs() {
    mkdir -p "$WORK/backend" "$WORK/nginx"
    cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$BACKEND_PORT backlog=4096;
        location / {
            default_type application/json;
            return 200 '$SEARCH_RESPONSE';
        }
    }
}
EOF
    cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 30000; }
http {
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    geo \$allowed {
        default 0;
        include $WORK/allow.geo;
    }
    upstream es {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 256;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} ssl proxy_protocol backlog=4096;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.3;
        set_real_ip_from 127.0.0.0/8;
        real_ip_header proxy_protocol;
        location / {
            if (\$allowed = 0) {
                return 403 '$FORBIDDEN';
            }
            proxy_pass http://es;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Found-Cluster "";
        }
        default_type application/json;
    }
}
EOF
    cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    # Two descriptors per connection (client, server) within ulimit -n.
    maxconn $(( ($(ulimit -n) - 200) / 2 ))
defaults
    mode http
    option http-keep-alive
    timeout connect 3s
    timeout client 600s
    timeout server 600s
    timeout http-request 10s
    timeout http-keep-alive 600s
frontend fe
    bind 127.0.0.1:${PORT[haproxy]} accept-proxy ssl crt $WORK/haproxy.pem alpn http/1.1 ssl-min-ver TLSv1.3
    acl allowed src -f $WORK/allow.lst
    http-request return status 403 content-type application/json file $WORK/403.json if !allowed
    http-request set-header X-Forwarded-For %[src]
    http-request set-header X-Forwarded-Proto https
    http-request del-header X-Found-Cluster
    default_backend es
backend es
    http-reuse always
    server s1 127.0.0.1:$BACKEND_PORT
EOF
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/admin.token"
}

portcullis_config() { # snapshot-file
    cat >"$WORK/portcullis.toml" <<EOF
[server]
listen = ["127.0.0.1:${PORT[portcullis]}"]
zones = ["bench.test"]
idle_timeout = "600s"
max_connections = 60000

[proxy_protocol]
mode = "required"
trusted_sources = ["127.0.0.0/8"]

[[tls.certificates]]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"

[snapshot]
path = "$1"
poll_interval = "3600s"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token_file = "$WORK/admin.token"

[log]
access = false
EOF
}

# ---------------------------------------------------------------- servers
start_backend() {
    taskset -c 1 nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -g 'daemon off;' \
        >"$WORK/backend/stdout.log" 2>&1 &
    STARTED+=($!)
    BACKEND_PID=$!
    wait_port "$BACKEND_PORT" 10 || die "backend did not start: $(tail -5 "$WORK/backend/error.log" 2>/dev/null)"
}

# start_proxy NAME: sets PROXY_PID and PIDS (all its processes).
start_proxy() {
    local name="$1"
    case "$name" in
        nginx)
            taskset -c 0 nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' \
                >"$WORK/nginx/stdout.log" 2>&1 &
            ;;
        haproxy)
            taskset -c 0 haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
            ;;
        portcullis)
            TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN/portcullis" run --config "$WORK/portcullis.toml" \
                >"$WORK/portcullis.log" 2>&1 &
            ;;
    esac
    PROXY_PID=$!
    STARTED+=("$PROXY_PID")
    local wait_s=10
    [ "$name" = portcullis ] && wait_s=180
    if [ "$name" = portcullis ]; then
        local ok=0
        for _ in $(seq $((wait_s * 10))); do
            if curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz"; then ok=1; break; fi
            kill -0 "$PROXY_PID" 2>/dev/null || break
            sleep 0.1
        done
        ((ok)) || die "portcullis not ready: $(tail -5 "$WORK/portcullis.log")"
    else
        wait_port "${PORT[$name]}" "$wait_s" || die "$name did not start"
    fi
    sleep 0.3
    PIDS=("$PROXY_PID")
    if [ "$name" = nginx ]; then
        local child
        for child in $(pgrep -P "$PROXY_PID"); do PIDS+=("$child"); done
        ((${#PIDS[@]} >= 2)) || die "nginx has no worker process"
    fi
}

# --------------------------------------------------------------------- load
# loadgen NAME ARGS...: JSON on stdout.
loadgen() {
    local name="$1"
    shift
    local measure=() p
    for p in "${PIDS[@]}"; do measure+=(--measure-pid "$p"); done
    taskset -c 1 "$BIN/portcullis-loadgen" --target "127.0.0.1:${PORT[$name]}" --host "$HOST" \
        --ca "$WORK/cert.pem" --tls-version 1.3 --kx x25519 \
        $(printf -- '--source %s ' "${ALLOWED_SOURCES[@]}") \
        --denied-source "$DENIED_SOURCE" --denied-share "$DENIED_SHARE" \
        --timeout 10s "${measure[@]}" --json "$@"
}

# core 0 busy jiffies and total jiffies.
core0() { awk '/^cpu0 / { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat; }

# phase NAME PHASE RUN ARGS...: runs the load generator once, saves its JSON
# with how busy core 0 was (to spot other load on the proxy's core).
phase() {
    local name="$1" kind="$2" r="$3"
    shift 3
    local file="$RAW/$name-$kind-$r.json" before after b0 t0 b1 t1
    before=$(core0)
    loadgen "$name" "$@" >"$file.tmp" 2>"$RAW/$name-$kind-$r.stderr" || true
    after=$(core0)
    if ! jq -e . "$file.tmp" >/dev/null 2>&1; then
        die "$name $kind: load generator failed: $(tail -3 "$RAW/$name-$kind-$r.stderr")"
    fi
    read -r b0 t0 <<<"$before"
    read -r b1 t1 <<<"$after"
    jq --arg phase "$kind" \
        --argjson busy "$(awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" 'BEGIN { printf "%.3f", (t > 0 ? b / t : 0) }')" \
        '. + {phase: $phase, core0_busy: $busy}' "$file.tmp" >"$file"
    rm -f "$file.tmp"
    log "$(jq -r --arg n "$name" --arg k "$kind" '"\($n) \($k): \(.rps) req/s, \(.server.cpu_us_per_request // "-") µs/req, \(.server.cpu_us_per_connection // "-") µs/conn, p99 \(.latency_us.p99 // "-") µs, errors \(.errors), 200/403/other \(.status."200")/\(.status."403")/\(.status.other), idle B/conn \(.idle.rss_bytes_per_connection // "-"), core0 busy \(.core0_busy)"' "$file")"
}

# One fresh process per repetition: the idle-memory baseline must not
# include memory the allocator kept from an earlier run.
measure_proxy() {
    local name="$1" r
    for r in $(seq "$REPEAT"); do
        log "== $name ($r/$REPEAT)"
        start_proxy "$name"
        # Warm-up: caches, upstream keep-alive pools, lazily allocated state.
        loadgen "$name" --connections 16 --duration 1s >/dev/null 2>&1 || true
        phase "$name" idle "$r" --mode idle --connections "$IDLE_CONNS" \
            --duration "${IDLE_HOLD}s" --connect-concurrency 32
        phase "$name" keepalive "$r" --connections "$CONNS" --duration "${DURATION}s"
        phase "$name" newconn "$r" --connections "$NEWCONN_CONNS" --requests-per-connection 1 \
            --duration "${DURATION}s"
        stop "$PROXY_PID"
    done
}

# All proxies run at once (an idle proxy costs nothing) and the open-loop
# runs take turns, so a burst of load from elsewhere on the machine hits
# every proxy alike rather than one of them.
measure_open() {
    local n r
    declare -A main all
    for n in $PROXIES; do
        start_proxy "$n"
        main[$n]=$PROXY_PID
        all[$n]="${PIDS[*]}"
        loadgen "$n" --connections 16 --duration 1s >/dev/null 2>&1 || true
    done
    for r in $(seq "$OPEN_REPEAT"); do
        for n in $PROXIES; do
            read -r -a PIDS <<<"${all[$n]}"
            phase "$n" open "$r" --mode open --rate "$RATE" --connections "$CONNS" \
                --duration "${DURATION}s"
        done
    done
    for n in $PROXIES; do stop "${main[$n]}"; done
}

reload_under_load() {
    local large="$OUT/cache/snapshot-$RELOAD_SCALE.json"
    mkdir -p "$OUT/cache"
    if [ ! -s "$large" ]; then
        log "generating the $RELOAD_SCALE snapshot"
        "$BIN/portcullis-gen-snapshot" --scale "$RELOAD_SCALE" --seed 1 --out "$large.tmp"
        mv "$large.tmp" "$large"
    fi
    # The bench deployment and its allow list, plus everything generated.
    # "version" goes last so each reload body is this prefix plus a suffix.
    log "merging the bench deployment into the $RELOAD_SCALE snapshot"
    jq -c --slurpfile b "$WORK/bench-parts.json" \
        '{deployments: ($b[0].deployments + .deployments), policies: ($b[0].policies + .policies)}' \
        "$large" | head -c -2 >"$WORK/reload-prefix.json"
    { cat "$WORK/reload-prefix.json"; printf ',"version":1}'; } >"$WORK/snapshot-large.json"
    RELOAD_BYTES=$(stat -c %s "$WORK/snapshot-large.json")
    RELOAD_RULES=$(jq '[.policies[] | select(.type == "ip") | .rules | length] | add' "$WORK/snapshot-large.json")
    portcullis_config "$WORK/snapshot-large.json"
    log "== portcullis reload under load ($RELOAD_RULES IP rules, $((RELOAD_BYTES / 1048576)) MiB per PUT)"
    start_proxy portcullis
    loadgen portcullis --connections 16 --duration 1s >/dev/null 2>&1 || true
    phase portcullis reload-quiet 1 --mode open --rate "$RATE" --connections "$CONNS" --duration "${DURATION}s"

    local token
    token=$(cat "$WORK/admin.token")
    : >"$WORK/reloads.log"
    (
        # Bounded: stops after DURATION seconds (+ the last PUT).
        end=$(($(date +%s%N) + DURATION * 1000000000))
        v=2
        while (($(date +%s%N) < end)); do
            t0=$(date +%s%N)
            { cat "$WORK/reload-prefix.json"; printf ',"version":%d}' "$v"; } |
                taskset -c 1 curl -s -o /dev/null -w "%{http_code} %{time_total}\n" --max-time 60 \
                    -X PUT -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
                    --data-binary @- "http://127.0.0.1:$ADMIN_PORT/snapshot" >>"$WORK/reloads.log" || true
            v=$((v + 1))
            left=$(((t0 + 1000000000 - $(date +%s%N)) / 1000000))
            if ((left > 0)); then sleep "$(printf '0.%03d' "$left")"; fi
        done
    ) &
    local reloader=$!
    STARTED+=("$reloader")
    # Give the first PUT a head start so reloads overlap the whole run.
    sleep 0.2
    phase portcullis reload-busy 1 --mode open --rate "$RATE" --connections "$CONNS" --duration "${DURATION}s"
    for _ in $(seq 600); do kill -0 "$reloader" 2>/dev/null || break; sleep 0.1; done
    stop "$reloader"
    RELOADS_OK=$(awk '$1 == 200' "$WORK/reloads.log" | wc -l)
    RELOADS_ALL=$(wc -l <"$WORK/reloads.log")
    RELOAD_PUT_S=$(awk '$1 == 200 { s += $2; n++ } END { printf "%.2f", n ? s / n : 0 }' "$WORK/reloads.log")
    RELOAD_VERSION=$(curl -s "http://127.0.0.1:$ADMIN_PORT/snapshot" | jq -r '.snapshot.version // .version // "?"')
    log "reloads: $RELOADS_OK of $RELOADS_ALL PUTs applied (mean PUT ${RELOAD_PUT_S}s), version now $RELOAD_VERSION"
    stop "$PROXY_PID"
}

# ------------------------------------------------------------------ results
# best PHASE-FILES-GLOB JQ-EXPR min|max: the best value over repeats.
best() {
    local name="$1" kind="$2" expr="$3" how="$4"
    [ "$how" = median ] && how='sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end'

    jq -s "map($expr) | map(select(. != null)) | if length == 0 then null else $how end" \
        "$RAW/$name-$kind-"*.json 2>/dev/null || echo null
}

results() {
    local n json="{}"
    for n in $PROXIES; do
        json=$(jq --arg n "$n" \
            --argjson ka_rps "$(best "$n" keepalive .rps max)" \
            --argjson ka_cpu "$(best "$n" keepalive .server.cpu_us_per_request min)" \
            --argjson ka_user "$(best "$n" keepalive .server.user_us_per_request min)" \
            --argjson nc_user "$(best "$n" newconn .server.user_us_per_connection min)" \
            --argjson ka_share "$(best "$n" keepalive .server.cpu_share max)" \
            --argjson ka_p99 "$(best "$n" keepalive .latency_us.p99 min)" \
            --argjson nc_cps "$(best "$n" newconn .connections_per_s max)" \
            --argjson nc_cpu "$(best "$n" newconn .server.cpu_us_per_connection min)" \
            --argjson idle_b "$(best "$n" idle .idle.rss_bytes_per_connection min)" \
            --argjson idle_n "$(best "$n" idle .idle.held_at_end max)" \
            --argjson p50 "$(best "$n" open .latency_us.p50 median)" \
            --argjson p99 "$(best "$n" open .latency_us.p99 median)" \
            --argjson p999 "$(best "$n" open .latency_us.p99_9 median)" \
            --argjson omax "$(best "$n" open .latency_us.max median)" \
            --argjson errors "$(jq -s 'map(.errors) | add' "$RAW/$n"-{idle,keepalive,newconn,open}-*.json)" \
            --argjson status "$(jq -s 'map(.status) | {"200": (map(."200") | add), "403": (map(."403") | add), other: (map(.other) | add)}' "$RAW/$n"-{keepalive,newconn,open}-*.json)" \
            --argjson runs "$(jq -s 'group_by(.phase)' "$RAW/$n"-{idle,keepalive,newconn,open}-*.json)" \
            '.[$n] = {keepalive_rps: $ka_rps, keepalive_cpu_us_per_request: $ka_cpu,
                      keepalive_user_us_per_request: $ka_user, newconn_user_us_per_connection: $nc_user,
                      keepalive_cpu_share: $ka_share, keepalive_p99_us: $ka_p99,
                      newconn_per_s: $nc_cps, newconn_cpu_us_per_connection: $nc_cpu,
                      idle_rss_bytes_per_connection: $idle_b, idle_connections_held: $idle_n,
                      open_p50_us: $p50, open_p99_us: $p99, open_p99_9_us: $p999, open_max_us: $omax,
                      errors: $errors, status: $status, runs: $runs}' <<<"$json")
    done
    if ((RELOAD)) && [ -n "${RELOADS_ALL:-}" ]; then
        json=$(jq --argjson quiet "$(jq -s '.' "$RAW"/portcullis-reload-quiet-*.json)" \
            --argjson busy "$(jq -s '.' "$RAW"/portcullis-reload-busy-*.json)" \
            --arg scale "$RELOAD_SCALE" --argjson rules "$RELOAD_RULES" --argjson bytes "$RELOAD_BYTES" \
            --argjson ok "$RELOADS_OK" --argjson all "$RELOADS_ALL" --argjson put_s "$RELOAD_PUT_S" \
            '.reload = {scale: $scale, ip_rules: $rules, snapshot_bytes: $bytes, puts: $all,
                        applied: $ok, mean_put_seconds: $put_s, quiet: $quiet, reloading: $busy}' <<<"$json")
    fi
    json=$(jq --arg date "$(date -u +%FT%TZ)" --arg kernel "$(uname -r)" \
        --arg cpu "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
        --argjson cores "$(nproc)" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
        --arg nginx "$(nginx -v 2>&1 | sed 's/.*nginx\///')" \
        --arg haproxy "$(haproxy -v | awk 'NR == 1 { print $3 }')" \
        --arg openssl "$(openssl version | awk '{ print $2 }')" \
        --arg portcullis "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        --argjson duration "$DURATION" --argjson repeat "$REPEAT" --argjson open_repeat "$OPEN_REPEAT" --argjson conns "$CONNS" \
        --argjson newconns "$NEWCONN_CONNS" --argjson idle "$IDLE_CONNS" --argjson rate "$RATE" \
        --argjson denied "$DENIED_SHARE" \
        '{machine: {date: $date, kernel: $kernel, cpu: $cpu, cores: $cores, loadavg_at_end: $load,
                    nginx: $nginx, haproxy: $haproxy, openssl: $openssl, portcullis: $portcullis},
          settings: {duration_s: $duration, repeat: $repeat, open_repeat: $open_repeat, keepalive_connections: $conns,
                     newconn_connections: $newconns, idle_connections: $idle, open_rate: $rate,
                     denied_share_percent: $denied, allow_list_cidrs: 10000,
                     tls: "TLS 1.3, ECDSA P-256, X25519, no resumption"}} + .' <<<"$json")
    printf '%s\n' "$json" >"$OUT/results.json"
    markdown "$OUT/results.json" | tee "$OUT/results.md"
}

markdown() {
    jq -r --arg proxies "$PROXIES" '
        def num: if . == null then "–" elif (. | type) == "number" then
            (if . >= 100 then (. | round | tostring) else ((. * 10 | round) / 10 | tostring | if test("\\.") then . else . + ".0" end) end) else tostring end;
        def ratio(a; b): if a == null or b == null or b == 0 then "–" else ((a / b * 100 | round) / 100 | tostring) + "×" end;
        . as $r
        | ($proxies | split(" ")) as $ps
        | ($ps | map(select(. != "portcullis"))) as $others
        | def bestof(f; how): [$others[] | $r[.] | f | select(. != null)] | if length == 0 then null else how end;
          def row(lbl; f; target):
            "| \(lbl) | " + ([$ps[] | $r[.] | f | num] | join(" | "))
            + (if ($ps | index("portcullis")) and target != null then " | \(target) |" else " | |" end);
          "## portcullis vs nginx vs HAProxy\n",
          "\($r.machine.cores) cores (\($r.machine.cpu)), kernel \($r.machine.kernel); nginx \($r.machine.nginx), HAProxy \($r.machine.haproxy), OpenSSL \($r.machine.openssl); portcullis \($r.machine.portcullis). Each proxy pinned to core 0 (one worker) and the only one under load; load generator and backend (nginx `return 200`, ~600 B) on core 1. TLS 1.3, ECDSA P-256, X25519, full handshakes. 10 000-CIDR allow list, \($r.settings.denied_share_percent)% of clients from a denied range (403). \($r.settings.duration_s) s per phase; CPU and memory: best of \($r.settings.repeat) runs (fresh process each); open-loop latency: median of \($r.settings.open_repeat) interleaved runs.\n",
          "| metric | " + ($ps | map(if . == "haproxy" then "HAProxy" else . end) | join(" | ")) + " | portcullis vs target |",
          "|---|" + ($ps | map("---:") | join("|")) + "|---|",
          row("keep-alive req/s (closed loop, \($r.settings.keepalive_connections) conns)"; .keepalive_rps; null),
          row("proxy CPU share during it (1.0 = core saturated)"; .keepalive_cpu_share; null),
          row("**CPU µs per keep-alive request**"; .keepalive_cpu_us_per_request;
              "\(ratio($r.portcullis.keepalive_cpu_us_per_request; bestof(.keepalive_cpu_us_per_request; min))) of best (≤ 0.75×)"),
          row("… of which user space (utime; the rest is kernel TCP)"; .keepalive_user_us_per_request;
              "\(ratio($r.portcullis.keepalive_user_us_per_request; bestof(.keepalive_user_us_per_request; min))) of best"),
          row("new TLS connections/s (1 request each, \($r.settings.newconn_connections) conns)"; .newconn_per_s; null),
          row("**CPU µs per new TLS connection**"; .newconn_cpu_us_per_connection;
              "\(ratio($r.portcullis.newconn_cpu_us_per_connection; bestof(.newconn_cpu_us_per_connection; min))) of best (≤ 0.6×)"),
          row("… of which user space"; .newconn_user_us_per_connection;
              "\(ratio($r.portcullis.newconn_user_us_per_connection; bestof(.newconn_user_us_per_connection; min))) of best"),
          row("**RSS bytes per idle TLS connection** (\($r.settings.idle_connections) held)"; .idle_rss_bytes_per_connection;
              "\(ratio($r.portcullis.idle_rss_bytes_per_connection; $r.nginx.idle_rss_bytes_per_connection)) of nginx (≤ 0.5×)"),
          row("idle connections still open after the hold"; (.idle_connections_held | tostring); null),
          row("open loop \($r.settings.open_rate)/s: p50 µs"; .open_p50_us; null),
          row("open loop \($r.settings.open_rate)/s: **p99 µs**"; .open_p99_us;
              "\(ratio($r.portcullis.open_p99_us; $r.nginx.open_p99_us)) of nginx (≤ 1×)"),
          row("open loop \($r.settings.open_rate)/s: p99.9 µs"; .open_p99_9_us; null),
          row("open loop \($r.settings.open_rate)/s: max µs"; .open_max_us; null),
          row("errors (all phases)"; (.errors | tostring); null),
          row("responses 200 / 403 / other"; (.status | "\(."200") / \(."403") / \(.other)"); null),
          (if $r.reload then
            "\n### portcullis: reload under load\n",
            "\($r.reload.ip_rules) IP rules (\($r.reload.scale) synthetic snapshot + the bench list), \($r.reload.snapshot_bytes / 1048576 | floor) MiB, `PUT /snapshot` with a new version every second (or back-to-back when a PUT takes longer): \($r.reload.applied) of \($r.reload.puts) applied, mean PUT \($r.reload.mean_put_seconds) s. Open loop at \($r.settings.open_rate)/s.\n",
            "| run | req/s | p50 µs | p99 µs | p99.9 µs | max µs | errors |",
            "|---|---:|---:|---:|---:|---:|---:|",
            ($r.reload.quiet[] | "| quiet | \(.rps) | \(.latency_us.p50) | \(.latency_us.p99) | \(.latency_us.p99_9) | \(.latency_us.max) | \(.errors) |"),
            ($r.reload.reloading[] | "| reloading every 1 s | \(.rps) | \(.latency_us.p50) | \(.latency_us.p99) | \(.latency_us.p99_9) | \(.latency_us.max) | \(.errors) |")
          else empty end),
          "\nOther load on the proxy core (share of core 0 busy with anything but the proxy, per run; high values mean a noisy run): " + ([($ps[] as $p | $r[$p].runs[][] | select(.phase != "idle") | "\($p) \(.phase) \(((.core0_busy - (.server.cpu_share // 0)) * 100 | round) / 100)"), ($r.reload // {} | (.quiet // [])[], (.reloading // [])[] | "portcullis \(.phase) \(((.core0_busy - (.server.cpu_share // 0)) * 100 | round) / 100)")] | join(", ")) + "."
    ' "$1"
}

# --------------------------------------------------------------------- main
# Variables the report needs, saved so --report-only can rebuild it.
save_state() {
    declare -p DURATION REPEAT OPEN_REPEAT CONNS NEWCONN_CONNS IDLE_CONNS RATE DENIED_SHARE PROXIES RELOAD \
        RELOAD_SCALE >"$RAW/state.env"
    if [ -n "${RELOADS_ALL:-}" ]; then
        declare -p RELOADS_ALL RELOADS_OK RELOAD_PUT_S RELOAD_BYTES RELOAD_RULES >>"$RAW/state.env"
    fi
}

main() {
    if ((REPORT_ONLY)); then
        # shellcheck disable=SC1091
        source "$RAW/state.env"
        results
        return
    fi
    install_tools
    for p in $BACKEND_PORT $ADMIN_PORT "${PORT[@]}"; do
        port_free "$p" || die "port $p is in use"
    done
    rm -rf "$WORK" "$RAW"
    mkdir -p "$WORK" "$RAW"
    if ((BUILD)); then build; fi
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    ((IDLE_CONNS + 1000 < $(ulimit -n))) || die "ulimit -n $(ulimit -n) is too low for $IDLE_CONNS idle connections"
    make_certificate
    make_allow_list
    write_configs
    portcullis_config "$WORK/snapshot.json"
    start_backend
    log "duration ${DURATION}s per phase, repeat $REPEAT, $IDLE_CONNS idle connections, proxies: $PROXIES"

    local n
    for n in $PROXIES; do measure_proxy "$n"; done
    if [ "$RATE" = auto ]; then
        local slowest
        slowest=$(for n in $PROXIES; do best "$n" keepalive .rps max; done | sort -n | head -1)
        RATE=$(awk -v r="$slowest" 'BEGIN { x = int(r / 4 / 500) * 500; print (x < 500 ? 500 : x) }')
        log "open-loop rate: $RATE/s (a quarter of the slowest keep-alive rate, $slowest/s)"
    fi
    measure_open
    if ((RELOAD)) && [[ " $PROXIES " == *" portcullis "* ]]; then
        reload_under_load
    fi
    save_state
    results
    log "written: $OUT/results.md, $OUT/results.json (raw runs in $RAW)"
}

main
