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
# Access logs. With --logs both (the default) the keep-alive and the
# new-connection phases run twice per proxy, in a fresh process each: access
# log on and access log off. The idle-memory, open-loop and reload phases run
# once, with the access log on, as operators run the proxies. The targets
# compare portcullis's log-on figures with nginx's and HAProxy's log-on ones.
#   nginx       buffered JSON (log_format escape=json, the fields portcullis
#               writes), `access_log FILE json_log buffer=64k flush=1s`.
#   HAProxy     a JSON-shaped log-format with the same fields, sent as syslog
#               over UDP to 127.0.0.1 (`log 127.0.0.1:PORT len 4096 local0`),
#               received by `socat` on core 1 into a file: the usual
#               deployment (a local syslog daemon); HAProxy sends with
#               MSG_DONTWAIT and never blocks on it. (Not `log stdout` into a
#               file: HAProxy's manual says that blocks.)
#   portcullis  its shipped defaults ([log] access unset = on), stdout to a
#               file; `--log-format json` (JSON is what nginx writes here;
#               --portcullis-log-format text for the default text format).
#               Off: `[log] access = false`.
# After every logged run the script counts the lines the log received and
# the report prints them against the responses, so a log that silently
# writes nothing (or drops lines) shows.
#
# The log's cost, side by side. Runs of a proxy with its log on and off, one
# after the other, differ by ±2 µs per request on a shared host (the host's
# speed drifts between them), more than a good access log costs. So with
# --logs both each proxy also runs twice at once: log on and log off, both
# on core 0, each loaded by its own load generator (half the connections
# each) for the same seconds, --log-pairs times. Whatever slows the host
# slows both alike, and the difference of their CPU per request is the
# log's cost (the report gives the median and the range over the pairs; two
# processes with the log off measured this way differ by ≤ 0.3 µs).
#
# The keep-alive target, side by side. For the same reason portcullis also
# runs at once with each other proxy, --versus-pairs times: both with
# their logs as in the main mode, both on core 0, each under its own load
# generator with half the connections. The report gives portcullis's CPU
# per request over the other's, pair by pair (median and range): a ratio
# the host's drift cannot move, though measured with the core shared.
#
# Results: a markdown table on stdout and in target/compare/results.md; all
# numbers in target/compare/results.json. The script starts and stops
# processes; `portcullis-loadgen report` (benches/loadgen/report/) checks
# each run's JSON and builds the results, `portcullis-gen-snapshot` the
# snapshots.
#
#   benches/compare.sh                  # 10 s per phase
#   benches/compare.sh --quick          # 3 s per phase, 1000 idle connections, medium snapshot
#   benches/compare.sh --duration 15 --repeat 2
#   benches/compare.sh --logs off       # the old table: every access log off
#   benches/compare.sh --smoke          # the CI smoke run (.ci/loadgen-smoke), ~2 s
#
# Options: --duration S (per phase), --repeat N (best of N per CPU and
# memory metric; each repetition a fresh process), --open-repeat N
# (interleaved open-loop runs per proxy, latencies are the median; default 3),
# --connections N (keep-alive and open loop), --idle N (idle connections),
# --rate R (open-loop rate; default: a quarter of the slowest proxy's
# keep-alive rate), --denied-share PCT (clients from a denied range, default 10),
# --logs both|on|off (access logs; default both, see above),
# --portcullis-log-format json|text (default json),
# --log-pairs N (side-by-side log on/off runs per proxy, default 3; 0: none),
# --versus-pairs N (side-by-side runs of portcullis with each other proxy,
# default 3; 0: none),
# --proxies "nginx haproxy portcullis", --reload-scale small|medium|large,
# --no-reload, --no-install, --no-build (use the release binaries as they
# are), --report-only (rebuild the tables from the last run's raw files),
# --port-base P (backend P, nginx P+1, HAProxy
# P+2, portcullis P+3, its admin API P+4, HAProxy's syslog sink P+5 (UDP),
# the side-by-side log-off twin P+6 and a portcullis twin's admin API P+7;
# default 24400).
# Environment: PORTCULLIS_BIN, the portcullis binary to measure (default
# target/release/portcullis; e.g. one built with another allocator).
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"

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
LOGS=both
PORTCULLIS_LOG_FORMAT=json
LOG_PAIRS=3
VERSUS_PAIRS=3

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
        --logs) LOGS="$2"; shift 2 ;;
        --portcullis-log-format) PORTCULLIS_LOG_FORMAT="$2"; shift 2 ;;
        --log-pairs) LOG_PAIRS="$2"; shift 2 ;;
        --versus-pairs) VERSUS_PAIRS="$2"; shift 2 ;;
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
case "$LOGS" in
    both) MODES="on off" ;;
    on) MODES=on ;;
    off) MODES=off ;;
    *) echo "compare.sh: --logs is both, on or off" >&2; exit 2 ;;
esac
[[ "$LOG_PAIRS" =~ ^[0-9]+$ ]] || { echo "compare.sh: --log-pairs is a number" >&2; exit 2; }
[[ "$VERSUS_PAIRS" =~ ^[0-9]+$ ]] || { echo "compare.sh: --versus-pairs is a number" >&2; exit 2; }
[ "$LOGS" = both ] || LOG_PAIRS=0
case "$PORTCULLIS_LOG_FORMAT" in
    json|text) ;;
    *) echo "compare.sh: --portcullis-log-format is json or text" >&2; exit 2 ;;
esac
# The access-log mode of the phases that run once (idle, open loop, reload).
MAIN_MODE=on
[ "$LOGS" = off ] && MAIN_MODE=off

OUT="$ROOT/target/compare"
WORK="$OUT/work"
RAW="$OUT/raw"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release"
PORTCULLIS_BIN="${PORTCULLIS_BIN:-$BIN/portcullis}"
BACKEND_PORT=$PORT_BASE
ADMIN_PORT=$((PORT_BASE + 4))
SYSLOG_PORT=$((PORT_BASE + 5))
# The log-off twin of a side-by-side run (any proxy), and its admin API
# (portcullis).
TWIN_PORT=$((PORT_BASE + 6))
TWIN_ADMIN_PORT=$((PORT_BASE + 7))
declare -A PORT=([nginx]=$((PORT_BASE + 1)) [haproxy]=$((PORT_BASE + 2)) [portcullis]=$((PORT_BASE + 3)))
HOST=bench.es.bench.test
DEPLOYMENT=c0ffee00000000000000000000000001
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

# ------------------------------------------------------------------- set-up
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_tools() {
    local tools=(nginx=nginx haproxy=haproxy openssl=openssl curl=curl taskset=util-linux)
    # HAProxy's syslog sink, when its access log is on.
    if [ "$LOGS" != off ] && [[ " $PROXIES " == *" haproxy "* ]]; then
        tools+=(socat=socat)
    fi
    local missing
    missing=$(missing_packages "${tools[@]}")
    if [ -n "$missing" ]; then
        ((INSTALL)) || die "missing $missing (and --no-install given)"
        log "installing $missing"
        install_missing "${tools[@]}"
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
    gen_snapshot none "$WORK/snapshot.json"
}

# gen_snapshot SCALE FILE [ARGS...]: the bench deployment and its allow list,
# then a synthetic snapshot of SCALE (none: nothing more).
gen_snapshot() {
    local scale="$1" file="$2"
    shift 2
    "$BIN/portcullis-gen-snapshot" --scale "$scale" --seed 1 --allow-list "$WORK/allow.lst" \
        --allow-list-deployment "$DEPLOYMENT" --allow-list-backend "127.0.0.1:$BACKEND_PORT" \
        --out "$file" "$@"
}

# A ~600-byte Elasticsearch search response.
SEARCH_RESPONSE='{"took":3,"timed_out":false,"_shards":{"total":1,"successful":1,"skipped":0,"failed":0},"hits":{"total":{"value":2,"relation":"eq"},"max_score":1.3862942,"hits":[{"_index":"logs-2024.11.23","_id":"kxbP9ZMBa1DUwN2qYH3u","_score":1.3862942,"_source":{"@timestamp":"2024-11-23T18:47:12.384Z","message":"GET /api/v1/orders 200 12ms","service":{"name":"checkout"},"host":{"name":"web-07"}}},{"_index":"logs-2024.11.23","_id":"lBbP9ZMBa1DUwN2qYH3u","_score":1.3862942,"_source":{"@timestamp":"2024-11-23T18:47:13.019Z","message":"GET /api/v1/cart 200 8ms","service":{"name":"checkout"},"host":{"name":"web-02"}}}]}}'

# nginx_main DIR WORKER-CONNECTIONS: the top of an nginx.conf, the same for
# the backend and the proxy: one worker process, its pid and error log in
# DIR. The caller's http block follows.
nginx_main() {
    cat <<EOF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections $2; }
EOF
}

write_configs() {
    mkdir -p "$WORK/backend" "$WORK/nginx" "$WORK/haproxy" "$WORK/portcullis"
    {
        nginx_main "$WORK/backend" 8192
        cat <<EOF
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
    } >"$WORK/backend/nginx.conf"
    # Access logs: the fields portcullis writes (src/server/service.rs
    # Record::emit). What nginx cannot know (deployment, decision, policy)
    # comes from constants and from the geo it filters with.
    cat >"$WORK/nginx/log-on.conf" <<'EOF'
map $allowed $log_decision { 1 allowed; default denied; }
map $allowed $log_reason { 1 ip; default unmatched; }
map $allowed $log_status_reason { 1 ""; default BLOCKED_BY_TRAFFIC_FILTER; }
map $allowed $log_policy { 1 bench-allow-list; default ""; }
log_format json_log escape=json '{"time":"$time_iso8601","request_id":"$request_id",'
    '"client_ip":"$proxy_protocol_addr","peer":"$realip_remote_addr:$realip_remote_port",'
    '"endpoint":"","sni":"$ssl_server_name","host":"$host",'
    '"deployment":"@DEPLOYMENT@","product":"es",'
    '"method":"$request_method","path":"$uri","version":"$server_protocol",'
    '"status":$status,"bytes":$body_bytes_sent,"duration_s":$request_time,'
    '"decision":"$log_decision","reason":"$log_reason",'
    '"status_reason":"$log_status_reason","policy":"$log_policy"}';
access_log @WORK@/nginx/access.log json_log buffer=64k flush=1s;
EOF
    sed -i "s|@WORK@|$WORK|; s|@DEPLOYMENT@|$DEPLOYMENT|" "$WORK/nginx/log-on.conf"
    echo 'access_log off;' >"$WORK/nginx/log-off.conf"
    local mode
    for mode in on off; do
        {
            nginx_main "$WORK/nginx" 30000
            cat <<EOF
http {
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    geo \$allowed {
        default 0;
        include $WORK/allow.geo;
    }
    include $WORK/nginx/log-$mode.conf;
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
        } >"$WORK/nginx/nginx-$mode.conf"
    done
    # HAProxy: syslog over UDP to a local sink (see the header). The same
    # fields as nginx's, JSON-shaped; %{+E}o escapes '"' and '\' in every
    # string. The decision fields come from one variable set past the deny
    # rule. %B counts headers too; the TCP peer before PROXY is not
    # available to a 2.6 log-format, so "peer" stays empty.
    local log_global="" log_defaults="" log_frontend="" log_allowed=""
    for mode in on off; do
        if [ "$mode" = on ]; then
            log_global="    log 127.0.0.1:$SYSLOG_PORT len 4096 local0 info"
            log_defaults="    log global"
            log_frontend='    capture request header Host len 128
    unique-id-format %{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    log-format '"'"'%{+E}o{"time":"%tr","request_id":"%ID","client_ip":"%ci","peer":"","endpoint":"","sni":"%[ssl_fc_sni]","host":"%[capture.req.hdr(0)]","deployment":"'"$DEPLOYMENT"'","product":"es","method":"%HM","path":"%HPO","version":"%HV","status":%ST,"bytes":%B,"duration_ms":%Ta,"decision":"%[var(txn.allowed,0),iif(allowed,denied)]","reason":"%[var(txn.allowed,0),iif(ip,unmatched)]","status_reason":"%[var(txn.allowed,0),iif(,BLOCKED_BY_TRAFFIC_FILTER)]","policy":"%[var(txn.allowed,0),iif(bench-allow-list,)]"}'"'"
            log_allowed="    http-request set-var(txn.allowed) bool(1)"
        else
            log_global="" log_defaults="" log_frontend="" log_allowed=""
        fi
        cat >"$WORK/haproxy-$mode.cfg" <<EOF
global
    nbthread 1
    # Two descriptors per connection (client, server) within ulimit -n.
    maxconn $(( ($(ulimit -n) - 200) / 2 ))
$log_global
defaults
    mode http
$log_defaults
    option http-keep-alive
    timeout connect 3s
    timeout client 600s
    timeout server 600s
    timeout http-request 10s
    timeout http-keep-alive 600s
frontend fe
    bind 127.0.0.1:${PORT[haproxy]} accept-proxy ssl crt $WORK/haproxy.pem alpn http/1.1 ssl-min-ver TLSv1.3
$log_frontend
    acl allowed src -f $WORK/allow.lst
    http-request return status 403 content-type application/json file $WORK/403.json if !allowed
$log_allowed
    http-request set-header X-Forwarded-For %[src]
    http-request set-header X-Forwarded-Proto https
    http-request del-header X-Found-Cluster
    default_backend es
backend es
    http-reuse always
    server s1 127.0.0.1:$BACKEND_PORT
EOF
    done
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/admin.token"
    # The log-off twins of the side-by-side runs: the same configurations
    # on their own ports (and nginx with its own pid file and error log).
    mkdir -p "$WORK/nginx-twin"
    sed "s|$WORK/nginx/nginx.pid|$WORK/nginx-twin/nginx.pid|; s|$WORK/nginx/error.log|$WORK/nginx-twin/error.log|; s|127.0.0.1:${PORT[nginx]} |127.0.0.1:$TWIN_PORT |" \
        "$WORK/nginx/nginx-off.conf" >"$WORK/nginx-twin/nginx.conf"
    sed "s|127.0.0.1:${PORT[haproxy]} |127.0.0.1:$TWIN_PORT |" "$WORK/haproxy-off.cfg" >"$WORK/haproxy-twin.cfg"
    local twin
    for twin in "$WORK/nginx-twin/nginx.conf" "$WORK/haproxy-twin.cfg"; do
        grep -q "127.0.0.1:$TWIN_PORT " "$twin" || die "$twin did not get its port"
    done
}

# portcullis_config SNAPSHOT-FILE: portcullis-on.toml (the shipped logging
# defaults: no [log] section) and portcullis-off.toml ([log] access = false).
portcullis_config() {
    local mode
    for mode in on off; do
        {
            portcullis_front_toml 127.0.0.0/8 "$WORK/cert.pem" "$WORK/key.pem"
            cat <<EOF
[server]
listen = ["127.0.0.1:${PORT[portcullis]}"]
zones = ["bench.test"]
idle_timeout = "600s"
max_connections = 60000

[snapshot]
path = "$1"
poll_interval = "3600s"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token_file = "$WORK/admin.token"
EOF
        } >"$WORK/portcullis-$mode.toml"
        if [ "$mode" = off ]; then
            printf '\n[log]\naccess = false\n' >>"$WORK/portcullis-$mode.toml"
        fi
    done
    sed "s|127.0.0.1:${PORT[portcullis]}\"|127.0.0.1:$TWIN_PORT\"|; s|127.0.0.1:$ADMIN_PORT\"|127.0.0.1:$TWIN_ADMIN_PORT\"|" \
        "$WORK/portcullis-off.toml" >"$WORK/portcullis-twin.toml"
}

# ---------------------------------------------------------------- servers
start_backend() {
    taskset -c 1 nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -g 'daemon off;' \
        >"$WORK/backend/stdout.log" 2>&1 &
    STARTED+=($!)
    wait_port "$BACKEND_PORT" 10 || die "backend did not start: $(tail -5 "$WORK/backend/error.log" 2>/dev/null)"
}

# HAProxy's syslog receiver: datagrams (one log line each, newline
# included) appended to a file, on core 1 with the load generator.
start_syslog_sink() {
    mkdir -p "$WORK/haproxy"
    taskset -c 1 socat -u "UDP-RECV:$SYSLOG_PORT,bind=127.0.0.1,rcvbuf=4194304" \
        "OPEN:$WORK/haproxy/syslog.log,creat,append" 2>>"$WORK/haproxy/socat.log" &
    SINK_PID=$!
    STARTED+=("$SINK_PID")
    local hex
    hex=$(printf ':%04X ' "$SYSLOG_PORT")
    for _ in $(seq 50); do
        grep -q "$hex" /proc/net/udp && return 0
        kill -0 "$SINK_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "the syslog sink did not start: $(tail -3 "$WORK/haproxy/socat.log")"
}

# start_proxy NAME MODE (on|off: access log; twin: log off, on the twin's
# ports): sets PROXY_PID and PIDS (all its processes).
start_proxy() {
    local name="$1" mode="$2" port admin="$ADMIN_PORT"
    port=${PORT[$name]}
    if [ "$mode" = twin ]; then port=$TWIN_PORT admin=$TWIN_ADMIN_PORT; fi
    case "$name:$mode" in
        nginx:twin)
            taskset -c 0 nginx -p "$WORK/nginx-twin" -c "$WORK/nginx-twin/nginx.conf" -g 'daemon off;' \
                >>"$WORK/nginx/stdout.log" 2>&1 &
            ;;
        nginx:*)
            taskset -c 0 nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx-$mode.conf" -g 'daemon off;' \
                >>"$WORK/nginx/stdout.log" 2>&1 &
            ;;
        haproxy:*)
            if [ "$mode" = on ]; then start_syslog_sink; fi
            taskset -c 0 haproxy -db -f "$WORK/haproxy-$mode.cfg" >>"$WORK/haproxy/stdout.log" 2>&1 &
            ;;
        portcullis:*)
            # O_APPEND (>>), so the file can be emptied between phases.
            env -u RUST_LOG TOKIO_WORKER_THREADS=1 taskset -c 0 "$PORTCULLIS_BIN" \
                --log-format "$PORTCULLIS_LOG_FORMAT" run --config "$WORK/portcullis-$mode.toml" \
                >>"$WORK/portcullis/stdout-$mode.log" 2>&1 &
            ;;
    esac
    PROXY_PID=$!
    STARTED+=("$PROXY_PID")
    local wait_s=10
    [ "$name" = portcullis ] && wait_s=180
    if [ "$name" = portcullis ]; then
        local ok=0
        for _ in $(seq $((wait_s * 10))); do
            if curl -sf -o /dev/null "http://127.0.0.1:$admin/readyz"; then ok=1; break; fi
            kill -0 "$PROXY_PID" 2>/dev/null || break
            sleep 0.1
        done
        ((ok)) || die "portcullis not ready: $(tail -5 "$WORK/portcullis/stdout-$mode.log")"
    else
        wait_port "$port" "$wait_s" || die "$name did not start: $(tail -5 "$WORK/$name/stdout.log")"
    fi
    sleep 0.3
    PIDS=("$PROXY_PID")
    if [ "$name" = nginx ]; then
        local child
        for child in $(pgrep -P "$PROXY_PID"); do PIDS+=("$child"); done
        ((${#PIDS[@]} >= 2)) || die "nginx has no worker process"
    fi
}

# stop_proxy NAME PID: the proxy, then HAProxy's syslog sink once the last
# datagrams are in.
stop_proxy() {
    stop "$2"
    if [ "$1" = haproxy ] && [ -n "${SINK_PID:-}" ]; then
        sleep 0.2
        stop "$SINK_PID"
        SINK_PID=
    fi
}

# ------------------------------------------------------------- access logs
access_log_file() {
    case "$1" in
        nginx) echo "$WORK/nginx/access.log" ;;
        haproxy) echo "$WORK/haproxy/syslog.log" ;;
        portcullis) echo "$WORK/portcullis/stdout-on.log" ;;
    esac
}

# Lines the access log holds (portcullis's stdout also has operational
# lines: only the access ones count).
access_lines() {
    local file
    file=$(access_log_file "$1")
    [ -f "$file" ] || { echo 0; return; }
    case "$1" in
        portcullis) grep -c 'portcullis::access' "$file" || true ;;
        *) wc -l <"$file" ;;
    esac
}

# Long enough for nginx's `flush=1s`, portcullis's log writer thread and
# the sink to have written everything.
log_settle() { sleep 1.3; }

# log_reset NAME: empties the log after warm-up, before a measured run.
# All three write with O_APPEND, so truncating is safe.
log_reset() {
    log_settle
    : >"$(access_log_file "$1")"
}

# log_take NAME SAMPLE-FILE: the number of lines written since log_reset
# (a sample of them kept), then empties the log again.
log_take() {
    local file lines
    log_settle
    file=$(access_log_file "$1")
    lines=$(access_lines "$1")
    if [ "$1" = portcullis ]; then
        grep -m 2 'portcullis::access' "$file" >"$2" || true
    else
        head -n 2 "$file" >"$2"
    fi
    : >"$file"
    echo "$lines"
}

# --------------------------------------------------------------------- load
# loadgen NAME ARGS...: JSON on stdout. Loads PORT[NAME] (TARGET_PORT if
# set) and measures the processes in PIDS.
loadgen() {
    local name="$1"
    shift
    local measure=() sources=() p
    for p in "${PIDS[@]}"; do measure+=(--measure-pid "$p"); done
    for p in "${ALLOWED_SOURCES[@]}"; do sources+=(--source "$p"); done
    taskset -c 1 "$BIN/portcullis-loadgen" --target "127.0.0.1:${TARGET_PORT:-${PORT[$name]}}" --host "$HOST" \
        --ca "$WORK/cert.pem" --tls-version 1.3 --kx x25519 \
        "${sources[@]}" \
        --denied-source "$DENIED_SOURCE" --denied-share "$DENIED_SHARE" \
        --timeout 10s "${measure[@]}" --json "$@"
}

# core 0 busy jiffies and total jiffies.
core0() { awk '/^cpu0 / { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat; }

# phase NAME PHASE MODE RUN ARGS...: runs the load generator once, saves its
# JSON with how busy core 0 was (to spot other load on the proxy's core)
# and, with the access log on (MODE), how many lines the log received.
# `report run` refuses a run that did not report, and warns about a log
# that received fewer lines than there were responses (a log that drops
# lines makes a proxy look cheap; the results show the counts too).
phase() {
    local name="$1" kind="$2" mode="$3" r="$4"
    shift 4
    local base="$RAW/$name-$kind-$mode-$r" before
    before=$(core0)
    loadgen "$name" "$@" >"$base.tmp" 2>"$base.stderr" || true
    record "$name" "$kind" "$mode" "$base" "$before" "$(core0)"
}

# record NAME PHASE MODE BASE CORE0-BEFORE CORE0-AFTER [ARGS...]: checks and
# saves the run in BASE.tmp as BASE.json (ARGS go to `report run`).
record() {
    local name="$1" kind="$2" mode="$3" base="$4" b0 t0 b1 t1 lines=() summary line
    read -r b0 t0 <<<"$5"
    read -r b1 t1 <<<"$6"
    shift 6
    if [ "$mode" = on ]; then lines=(--access-log-lines "$(log_take "$name" "$base.log-sample")"); fi
    if ! summary=$("$BIN/portcullis-loadgen" report run "$base.tmp" --out "$base.json" --proxy "$name" \
        --phase "$kind" --access-log "$mode" "${lines[@]}" "$@" \
        --core0-busy "$(awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" 'BEGIN { printf "%.3f", (t > 0 ? b / t : 0) }')"); then
        die "$name $kind: load generator failed: $(tail -3 "$base.stderr")"
    fi
    rm -f "$base.tmp"
    while IFS= read -r line; do log "$line"; done <<<"$summary"
}

# warm_up NAME MODE: caches, upstream keep-alive pools, lazily allocated
# state; then an empty access log.
warm_up() {
    loadgen "$1" --connections 16 --duration 1s >/dev/null 2>&1 || true
    if [ "$2" = on ]; then log_reset "$1"; fi
}

# One fresh process per repetition and access-log mode: the idle-memory
# baseline must not include memory the allocator kept from an earlier run.
# The idle phase runs in the MAIN_MODE process only.
measure_proxy() {
    local name="$1" r mode modes
    for r in $(seq "$REPEAT"); do
        read -r -a modes <<<"$MODES"
        # Alternate which mode goes first.
        if ((r % 2 == 0 && ${#modes[@]} == 2)); then modes=("${modes[1]}" "${modes[0]}"); fi
        for mode in "${modes[@]}"; do
            log "== $name, access log $mode ($r/$REPEAT)"
            start_proxy "$name" "$mode"
            warm_up "$name" "$mode"
            if [ "$mode" = "$MAIN_MODE" ]; then
                phase "$name" idle "$mode" "$r" --mode idle --connections "$IDLE_CONNS" \
                    --duration "${IDLE_HOLD}s" --connect-concurrency 32
            fi
            phase "$name" keepalive "$mode" "$r" --connections "$CONNS" --duration "${DURATION}s"
            phase "$name" newconn "$mode" "$r" --connections "$NEWCONN_CONNS" --requests-per-connection 1 \
                --duration "${DURATION}s"
            stop_proxy "$name" "$PROXY_PID"
        done
    done
}

# load_at_once NAME-A PORT-A BASE-A NAME-B PORT-B BASE-B: two keep-alive
# loads for DURATION, each with half the connections, at the same time: A's
# measuring the processes in PIDS_A, B's those in PIDS_B, their JSON in
# BASE.tmp. Sets CORE0_BEFORE and CORE0_AFTER around them, for `record`.
load_at_once() {
    local half=$(((CONNS + 1) / 2)) a b
    CORE0_BEFORE=$(core0)
    (PIDS=("${PIDS_A[@]}"); TARGET_PORT=$2 loadgen "$1" --connections "$half" \
        --duration "${DURATION}s" >"$3.tmp" 2>"$3.stderr") &
    a=$!
    (PIDS=("${PIDS_B[@]}"); TARGET_PORT=$5 loadgen "$4" --connections "$half" \
        --duration "${DURATION}s" >"$6.tmp" 2>"$6.stderr") &
    b=$!
    wait "$a" "$b" || true
    CORE0_AFTER=$(core0)
}

# measure_log_pairs NAME: the proxy with its log on and its twin with the
# log off run at once, both on core 0, each under its own load generator
# with half the keep-alive connections, LOG_PAIRS times (see the header).
measure_log_pairs() {
    local name="$1" r on_pid off_pid
    local -a PIDS_A PIDS_B
    log "== $name, access log on and off side by side ($LOG_PAIRS runs)"
    start_proxy "$name" on
    on_pid=$PROXY_PID
    PIDS_A=("${PIDS[@]}")
    start_proxy "$name" twin
    off_pid=$PROXY_PID
    PIDS_B=("${PIDS[@]}")
    PIDS=("${PIDS_A[@]}")
    warm_up "$name" on
    PIDS=("${PIDS_B[@]}")
    TARGET_PORT=$TWIN_PORT warm_up "$name" off
    for r in $(seq "$LOG_PAIRS"); do
        local on_base="$RAW/$name-logpair-on-$r" off_base="$RAW/$name-logpair-off-$r"
        load_at_once "$name" "${PORT[$name]}" "$on_base" "$name" "$TWIN_PORT" "$off_base"
        record "$name" logpair on "$on_base" "$CORE0_BEFORE" "$CORE0_AFTER" --pair "$r"
        record "$name" logpair off "$off_base" "$CORE0_BEFORE" "$CORE0_AFTER" --pair "$r"
    done
    stop_proxy "$name" "$on_pid"
    stop "$off_pid"
}

# measure_versus OTHER: portcullis and OTHER at once, both on core 0 with
# their logs as in MAIN_MODE, each under its own load generator with half
# the keep-alive connections, VERSUS_PAIRS times (see the header).
measure_versus() {
    local other="$1" r p_pid o_pid
    local -a PIDS_A PIDS_B
    log "== portcullis and $other side by side, access logs $MAIN_MODE ($VERSUS_PAIRS runs)"
    start_proxy portcullis "$MAIN_MODE"
    p_pid=$PROXY_PID
    PIDS_A=("${PIDS[@]}")
    start_proxy "$other" "$MAIN_MODE"
    o_pid=$PROXY_PID
    PIDS_B=("${PIDS[@]}")
    PIDS=("${PIDS_A[@]}")
    warm_up portcullis "$MAIN_MODE"
    PIDS=("${PIDS_B[@]}")
    warm_up "$other" "$MAIN_MODE"
    for r in $(seq "$VERSUS_PAIRS"); do
        local p_base="$RAW/portcullis-versus-$other-$MAIN_MODE-$r" o_base="$RAW/$other-versus-$MAIN_MODE-$r"
        load_at_once portcullis "${PORT[portcullis]}" "$p_base" "$other" "${PORT[$other]}" "$o_base"
        record portcullis versus "$MAIN_MODE" "$p_base" "$CORE0_BEFORE" "$CORE0_AFTER" --pair "$r" --against "$other"
        record "$other" versus "$MAIN_MODE" "$o_base" "$CORE0_BEFORE" "$CORE0_AFTER" --pair "$r" --against portcullis
    done
    stop_proxy portcullis "$p_pid"
    stop_proxy "$other" "$o_pid"
}

# All proxies run at once (an idle proxy costs nothing) and the open-loop
# runs take turns, so a burst of load from elsewhere on the machine hits
# every proxy alike rather than one of them. Access logs as in MAIN_MODE.
measure_open() {
    local n r
    declare -A main all
    for n in $PROXIES; do
        start_proxy "$n" "$MAIN_MODE"
        main[$n]=$PROXY_PID
        all[$n]="${PIDS[*]}"
    done
    for n in $PROXIES; do warm_up "$n" "$MAIN_MODE"; done
    for r in $(seq "$OPEN_REPEAT"); do
        for n in $PROXIES; do
            read -r -a PIDS <<<"${all[$n]}"
            phase "$n" open "$MAIN_MODE" "$r" --mode open --rate "$RATE" --connections "$CONNS" \
                --duration "${DURATION}s"
        done
    done
    for n in $PROXIES; do stop_proxy "$n" "${main[$n]}"; done
}

reload_under_load() {
    # The bench deployment and its allow list, plus everything generated.
    # "version" goes last, so each reload body is the prefix plus a suffix.
    log "generating the $RELOAD_SCALE snapshot"
    gen_snapshot "$RELOAD_SCALE" "$WORK/snapshot-large.json" --prefix-out "$WORK/reload-prefix.json"
    local bytes
    bytes=$(stat -c %s "$WORK/snapshot-large.json")
    portcullis_config "$WORK/snapshot-large.json"
    log "== portcullis reload under load ($((bytes / 1048576)) MiB per PUT)"
    start_proxy portcullis "$MAIN_MODE"
    warm_up portcullis "$MAIN_MODE"
    phase portcullis reload-quiet "$MAIN_MODE" 1 --mode open --rate "$RATE" --connections "$CONNS" --duration "${DURATION}s"

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
    phase portcullis reload-busy "$MAIN_MODE" 1 --mode open --rate "$RATE" --connections "$CONNS" --duration "${DURATION}s"
    for _ in $(seq 600); do kill -0 "$reloader" 2>/dev/null || break; sleep 0.1; done
    stop "$reloader"
    RELOADS_OK=$(awk '$1 == 200' "$WORK/reloads.log" | wc -l)
    RELOADS_ALL=$(wc -l <"$WORK/reloads.log")
    RELOAD_PUT_S=$(awk '$1 == 200 { s += $2; n++ } END { printf "%.2f", n ? s / n : 0 }' "$WORK/reloads.log")
    local version
    version=$(curl -s "http://127.0.0.1:$ADMIN_PORT/snapshot" | grep -o '"version":[0-9]*' | head -n 1 | cut -d: -f2 || true)
    log "reloads: $RELOADS_OK of $RELOADS_ALL PUTs applied (mean PUT ${RELOAD_PUT_S}s), version now ${version:-?}"
    stop_proxy portcullis "$PROXY_PID"
}

# ------------------------------------------------------------------ results
# results.json and results.md from the raw runs (best of the repeats for
# CPU and memory, the median for open-loop latency, per access-log mode);
# the table also goes to stdout.
results() {
    local reload=()
    if ((RELOAD)) && [ -n "${RELOADS_ALL:-}" ]; then
        reload=(--reload-scale "$RELOAD_SCALE" --reload-snapshot "$WORK/snapshot-large.json"
            --reload-puts "$RELOADS_ALL" --reload-applied "$RELOADS_OK" --reload-mean-put-seconds "$RELOAD_PUT_S")
    fi
    "$BIN/portcullis-loadgen" report results --raw "$RAW" --out "$OUT" --proxies "$PROXIES" \
        --modes "$MODES" --main-mode "$MAIN_MODE" --duration "$DURATION" --repeat "$REPEAT" \
        --open-repeat "$OPEN_REPEAT" --log-pairs "${LOG_PAIRS:-0}" --versus-pairs "${VERSUS_PAIRS:-0}" --connections "$CONNS" --newconn-connections "$NEWCONN_CONNS" \
        --idle-connections "$IDLE_CONNS" --rate "$RATE" --denied-share "$DENIED_SHARE" \
        --portcullis-log-format "$PORTCULLIS_LOG_FORMAT" --date "$(date -u +%FT%TZ)" \
        --nginx-version "$(nginx -v 2>&1 | sed 's/.*nginx\///')" \
        --haproxy-version "$(haproxy -v | awk 'NR == 1 { print $3 }')" \
        --openssl-version "$(openssl version | awk '{ print $2 }')" \
        --portcullis-version "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "${reload[@]}"
}

# --------------------------------------------------------------------- main
# Variables the report needs, saved so --report-only can rebuild it.
save_state() {
    declare -p DURATION REPEAT OPEN_REPEAT CONNS NEWCONN_CONNS IDLE_CONNS RATE DENIED_SHARE PROXIES RELOAD \
        RELOAD_SCALE LOGS MODES MAIN_MODE PORTCULLIS_LOG_FORMAT LOG_PAIRS VERSUS_PAIRS >"$RAW/state.env"
    if [ -n "${RELOADS_ALL:-}" ]; then
        declare -p RELOADS_ALL RELOADS_OK RELOAD_PUT_S >>"$RAW/state.env"
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
    for p in $BACKEND_PORT $ADMIN_PORT "${PORT[@]}" $TWIN_PORT $TWIN_ADMIN_PORT; do
        port_free "$p" || die "port $p is in use"
    done
    ! grep -q "$(printf ':%04X ' "$SYSLOG_PORT")" /proc/net/udp || die "UDP port $SYSLOG_PORT is in use"
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
    log "duration ${DURATION}s per phase, repeat $REPEAT, $IDLE_CONNS idle connections, proxies: $PROXIES, access logs: $LOGS"

    local n
    for n in $PROXIES; do measure_proxy "$n"; done
    if ((LOG_PAIRS)); then
        for n in $PROXIES; do measure_log_pairs "$n"; done
    fi
    if ((VERSUS_PAIRS)) && [[ " $PROXIES " == *" portcullis "* ]]; then
        for n in $PROXIES; do
            if [ "$n" != portcullis ]; then measure_versus "$n"; fi
        done
    fi
    if [ "$RATE" = auto ]; then
        local rate slowest
        rate=$("$BIN/portcullis-loadgen" report rate --raw "$RAW" --proxies "$PROXIES" --access-log "$MAIN_MODE") ||
            die "no keep-alive rate to take the open-loop rate from"
        read -r RATE slowest <<<"$rate"
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
