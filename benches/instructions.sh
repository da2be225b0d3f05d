#!/usr/bin/env bash
# benches/instructions.sh: user-space instructions per keep-alive request,
# counted by valgrind's callgrind: the same figure for the same binary and
# load whatever else the machine is doing, so two builds (or the access log
# on and off) can be told apart by a few percent on a shared, noisy host
# where CPU time per request moves by ±10 % from run to run.
#
#   benches/instructions.sh [BIN...]     (default: target/release/portcullis)
#
# For each binary and each access-log mode (on, off): starts the proxy under
# callgrind with counting off, warms up for 2 s, counts while
# portcullis-loadgen sends keep-alive requests for DURATION seconds over 8
# connections (the compare.sh mix: PROXY v2, TLS 1.3, 10 % denied), and
# prints the instructions counted on all the proxy's threads divided by the
# requests answered. Kernel work (TCP, syscalls) is not counted: the
# figure is the proxy's own code and its libraries.
#
# Uses the configuration, certificate, snapshot and backend of
# benches/compare.sh (run it once first: `benches/compare.sh --quick
# --proxies portcullis --no-reload` is enough, 30 s) and the release
# binaries as they are. Settings from the
# environment: DURATION (6), PORT_BASE (compare.sh's, 24400).
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"

case "${1:-}" in -h | --help) usage; exit 0 ;; esac
DURATION="${DURATION:-6}"
PORT_BASE="${PORT_BASE:-24400}"
WORK="$ROOT/target/compare/work"
BIN="$ROOT/target/release"
BINS=("$@")
((${#BINS[@]})) || BINS=("$BIN/portcullis")

command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
[ -f "$WORK/portcullis-on.toml" ] || { echo "no $WORK: run benches/compare.sh --quick --proxies portcullis --no-reload first" >&2; exit 1; }
[ -x "$BIN/portcullis-loadgen" ] || { echo "build the load generator: cargo build --release" >&2; exit 1; }

BACKEND_PORT=$PORT_BASE
DATA_PORT=$((PORT_BASE + 3))
ADMIN_PORT=$((PORT_BASE + 4))
OUT="$ROOT/target/instructions"
mkdir -p "$OUT"
STARTED=()
cleanup() { for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

if port_free "$BACKEND_PORT"; then
    nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -g 'daemon off;' >"$OUT/backend.log" 2>&1 &
    STARTED+=($!)
    wait_port "$BACKEND_PORT" 10 || { echo "the backend did not start" >&2; exit 1; }
fi

loadgen() {
    "$BIN/portcullis-loadgen" --target "127.0.0.1:$DATA_PORT" --host bench.es.bench.test \
        --ca "$WORK/cert.pem" --tls-version 1.3 --kx x25519 \
        --source 203.0.113.0/24 --source 192.0.2.0/24 --source 100.64.0.0/16 \
        --denied-source 198.18.0.0/15 --denied-share 10 --timeout 30s \
        --json --mode closed --connections 8 "$@"
}

printf '| binary | access log | requests | instructions | per request |\n|---|---|---:|---:|---:|\n'
for bin in "${BINS[@]}"; do
    for mode in on off; do
        port_free "$DATA_PORT" || { echo "port $DATA_PORT is in use" >&2; exit 1; }
        out="$OUT/callgrind.$(basename "$bin").$mode"
        rm -f "$out"*
        env -u RUST_LOG TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no \
            --callgrind-out-file="$out.cg" "$bin" --log-format json run \
            --config "$WORK/portcullis-$mode.toml" >"$out.stdout" 2>"$out.stderr" &
        pid=$!
        STARTED+=("$pid")
        wait_until 120 curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" ||
            { echo "portcullis did not get ready: $(tail -3 "$out.stderr")" >&2; exit 1; }
        loadgen --duration 2s >/dev/null 2>&1
        callgrind_control -i on "$pid" >/dev/null 2>&1
        loadgen --duration "${DURATION}s" >"$out.load.json"
        callgrind_control -i off "$pid" >/dev/null 2>&1
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        requests=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['requests'])" "$out.load.json")
        total=$(callgrind_annotate "$out.cg"* 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
        ((requests > 0)) && [ -n "$total" ] || { echo "no requests answered, or no count" >&2; exit 1; }
        printf '| %s | %s | %s | %s | %s |\n' "$bin" "$mode" "$requests" "$total" "$((total / requests))"
    done
done
