# shellcheck shell=bash
# What benches/compare.sh and benches/compare-passthrough.sh share. Sourced
# (after `set -euo pipefail`), not run: it moves to the repository root and
# sets ROOT.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit

# usage: the calling script's header comment (line 2 up to `set -euo`) is
# its --help, so the two cannot drift apart.
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# settings_from_env "$@": for the benches whose settings all come from the
# environment: --help prints the usage, any other argument is refused.
settings_from_env() {
    case "${1:-}" in
        -h | --help) usage; exit 0 ;;
        "") ;;
        *) echo "no arguments: settings come from the environment (see --help)" >&2; exit 2 ;;
    esac
}

# missing_packages COMMAND=PACKAGE...: the Debian packages of the commands
# that are neither on PATH nor in /usr/sbin (where nginx and haproxy live),
# space-separated; empty when all are there.
missing_packages() {
    local pair need=()
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%=*}" ] ||
            need+=("${pair#*=}")
    done
    echo "${need[*]}"
}

# install_missing COMMAND=PACKAGE...: installs those packages with apt
# (through sudo when not root); what is there is left alone. A bench needs
# its peers installed the way .ci/setup installs the tests' own.
install_missing() {
    local -a need sudo=()
    read -r -a need <<<"$(missing_packages "$@")"
    ((${#need[@]})) || return 0
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    echo "installing ${need[*]}" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# port_free PORT: nothing accepts TCP connections on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until SECONDS COMMAND...: until COMMAND succeeds (1 if it never did),
# trying every 0.1 s; its output is discarded.
wait_until() {
    local tries=$(($1 * 10))
    shift
    for _ in $(seq "$tries"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    return 1
}

# port_taken PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_taken() { ! port_free "$1"; }

# wait_port PORT SECONDS: until something accepts them (1 if nothing did).
wait_port() { wait_until "$2" port_taken "$1"; }

# portcullis_front_toml TRUSTED-CIDR CERT KEY: how both benches' clients
# reach portcullis, a PROXY header from TRUSTED-CIDR first and then TLS with
# the bench's certificate. Each bench writes these sections first and its
# own after them (TOML does not care about the order of sections).
portcullis_front_toml() {
    cat <<EOF
[proxy_protocol]
mode = "required"
trusted_sources = ["$1"]

[[tls.certificates]]
cert = "$2"
key = "$3"

EOF
}
