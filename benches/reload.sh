#!/usr/bin/env bash
# benches/reload.sh: whole-document reloads through `PUT /snapshot`, one
# after another, on an idle proxy: how long each takes, how much memory it
# peaks at, and whether memory comes back down afterwards.
#
#   benches/reload.sh          (settings from the environment:)
#
#   SCALE=small|medium|large (large)  RELOADS=N (10)  PORT_BASE=P (24600)
#   BUILD=0 (use the release binaries as they are)
#   PORTCULLIS_BIN=path (the portcullis binary to measure, for an A/B of
#   two builds; default the release build's)
#
# Prints, for the first load (the file source, at start) and for each
# reload: the time (start to ready; curl's total for a PUT, and the
# proxy's own took_ms from the document received to the swap), the peak RSS
# while it ran (VmHWM, reset before each PUT through /proc/PID/clear_refs,
# so run it as the proxy's owner) and the RSS 2 s after it. Ports:
# portcullis P, admin P+1.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "$0")/lib.sh"

: "${SCALE:=large}" "${RELOADS:=10}" "${PORT_BASE:=24600}" "${BUILD:=1}"
settings_from_env "$@"

DATA_PORT=$PORT_BASE
ADMIN_PORT=$((PORT_BASE + 1))
BIN="$ROOT/target/release"
PORTCULLIS_BIN="${PORTCULLIS_BIN:-$BIN/portcullis}"
WORK="$(mktemp -d)"
PID=
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if ((BUILD)); then
    cargo build --release --bin portcullis >&2
    cargo build --release -p portcullis-loadgen >&2
fi
for p in "$DATA_PORT" "$ADMIN_PORT"; do
    port_free "$p" || { echo "port $p is in use (PORT_BASE)" >&2; exit 1; }
done

"$BIN/portcullis-gen-snapshot" --scale "$SCALE" --seed 1 --out "$WORK/snapshot.json"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" -days 1 -subj /CN=es.bench.test \
    -addext "subjectAltName=DNS:*.es.bench.test" 2>/dev/null
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/admin.token"
{
    portcullis_front_toml 127.0.0.0/8 "$WORK/tls.crt" "$WORK/tls.key"
    printf '[server]\nlisten = ["127.0.0.1:%s"]\nzones = ["es.bench.test"]\n\n' "$DATA_PORT"
    printf '[admin]\nlisten = "127.0.0.1:%s"\ntoken_file = "%s"\n\n' "$ADMIN_PORT" "$WORK/admin.token"
    printf '[log]\naccess = false\n\n'
    printf '[snapshot]\npath = "%s"\n' "$WORK/snapshot.json"
} >"$WORK/portcullis.toml"

kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$PID/status"; }
mib() { echo "$(($1 / 1024)) MiB"; }
# The proxy's own phases of the last document it prepared (hash, parse,
# compile), from its debug line.
last_phases() {
    grep 'snapshot prepared' "$WORK/portcullis.log" | tail -1 | grep -o '[a-z_]*_ms=[0-9]*' | tr '\n' ' '
}

echo "== scale $SCALE: $(stat -c %s "$WORK/snapshot.json") bytes, $RELOADS reloads"
start=$(date +%s.%N)
RUST_LOG="${RUST_LOG:-info,portcullis::reload::store=debug}" \
    "$PORTCULLIS_BIN" run --config "$WORK/portcullis.toml" >"$WORK/portcullis.log" 2>&1 &
PID=$!
wait_until 120 curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" || { tail "$WORK/portcullis.log" >&2; exit 1; }
ready=$(echo "$(date +%s.%N) - $start" | bc)
sleep 2
first=$(kib VmRSS)
phases=$(last_phases)
echo "start: ready in $ready s (${phases% }), peak $(mib "$(kib VmHWM)"), settled $(mib "$first")"

for v in $(seq 2 $((RELOADS + 1))); do
    # The same seed: only the version changes.
    "$BIN/portcullis-gen-snapshot" --scale "$SCALE" --seed 1 --version "$v" \
        --out "$WORK/next.json" 2>/dev/null
    echo 5 >"/proc/$PID/clear_refs" # VmHWM := VmRSS
    took=$(curl -sf -o /dev/null -w '%{time_total}' -X PUT --data-binary @"$WORK/next.json" \
        -H "Authorization: Bearer $(cat "$WORK/admin.token")" -H 'Content-Type: application/json' \
        "http://127.0.0.1:$ADMIN_PORT/snapshot") ||
        { echo "PUT of version $v failed" >&2; tail "$WORK/portcullis.log" >&2; exit 1; }
    peak=$(kib VmHWM)
    sleep 2
    settled=$(kib VmRSS)
    # The proxy's own figure: parse, validate, compile and swap, without
    # the upload.
    applied=$(grep -o 'took_ms=[0-9]*' "$WORK/portcullis.log" | tail -1)
    phases=$(last_phases)
    echo "reload $((v - 1)): PUT $took s ($applied: ${phases% }), peak $(mib "$peak"), settled $(mib "$settled")"
done
last=$(kib VmRSS)
echo "settled RSS after $RELOADS reloads: $(mib "$last") vs $(mib "$first") after the first load ($(echo "scale=2; $last / $first" | bc)x)"
