#!/usr/bin/env bash
# fngate in ../shared/bench/peer-bench.sh, the independent side-by-side harness
# (direct, nginx, haproxy and fngate; its own hyper backend; README there).
#   bench/peer.sh                          # 1 worker each, c=1/64/256, h2c pass
#   PROXY_WORKERS=2 bench/peer.sh          # 2 workers each (fngate workers = 2)
#   DURATION=3 REPEATS=1 CONCS=64 bench/peer.sh   # a quick look
# Installs what the harness needs when missing (wrk, nginx, haproxy, h2load; as root),
# builds its backend under $TMPDIR, writes its results there (never into the shared
# folder), and uses target/release/fngate as built (cargo build --release).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HARNESS=${HARNESS:-$ROOT/../shared/bench}
TMP=${TMPDIR:-/tmp}
missing=()
for tool in wrk:wrk nginx:nginx-light haproxy:haproxy h2load:nghttp2-client; do
  command -v "${tool%%:*}" >/dev/null || [[ -x /usr/sbin/${tool%%:*} ]] || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  # The packages start their services; the harness starts its own on its ports.
  systemctl stop nginx haproxy 2>/dev/null || true
fi
export BACKEND_BIN=${BACKEND_BIN:-$TMP/peer-bench-target/release/bench-backend}
[[ -x $BACKEND_BIN ]] ||
  CARGO_TARGET_DIR=$TMP/peer-bench-target cargo build --release --quiet --manifest-path "$HARNESS/Cargo.toml"
export RESULTS_DIR=${RESULTS_DIR:-$TMP/fngate-peer-bench/$(date +%Y%m%d-%H%M%S)}
export PROXY_WORKERS=${PROXY_WORKERS:-1}
export H2=${H2:-1}
export TARGETS=${TARGETS:-direct nginx haproxy fngate}
export GATEWAY_NAME=fngate
export GATEWAY_URL=http://127.0.0.1:18090
export GATEWAY_H2_URL=http://127.0.0.1:18090
# peer-bench runs this with $BENCH_UPSTREAM1/2 and $BENCH_TMPDIR set.
export GATEWAY_CMD="printf '[server]\nlisten = \"127.0.0.1:18090\"\nworkers = $PROXY_WORKERS\nwatch = false\n[admin]\nlisten = \"127.0.0.1:18091\"\n[backends.fn]\nurls = [\"http://%s\", \"http://%s\"]\n[[routes]]\nname = \"fn\"\npath = \"/{*rest}\"\nbackend = \"fn\"\n' \$BENCH_UPSTREAM1 \$BENCH_UPSTREAM2 > \$BENCH_TMPDIR/routes.toml && RUST_LOG=warn exec $ROOT/target/release/fngate --config \$BENCH_TMPDIR/routes.toml"
exec "$HARNESS/peer-bench.sh"
