#!/usr/bin/env bash
# Fuzzes the admin API from its own /openapi.json: no 5xx, no answer that breaks
# the schema. Runs a gateway on a temporary copy of routes.toml, loopback only,
# bounded in examples and time, and stops it by pid. Schemathesis keeps its
# cache in .schemathesis/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."

st=$(command -v st || true)
if [ -z "$st" ]; then
  python3 -m pip install --quiet --disable-pip-version-check schemathesis
  st="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/st"
fi

cargo build --quiet
bin="${CARGO_TARGET_DIR:-target}/debug/fngate"
work=$(mktemp -d)
cp routes.toml "$work/routes.toml"
# The certificates and JWKS the shipped config names relative to itself; the
# HTTPS listener on a free port.
cp -r certs "$work/"
sed -i 's/127.0.0.1:8443/127.0.0.1:0/' "$work/routes.toml"
FNGATE_ADMIN_TOKEN=schemathesis-token "$bin" --config "$work/routes.toml" \
  --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"$work/log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

admin=""
for _ in $(seq 1 100); do
  admin=$(grep -o 'admin_addr=[0-9.:]*' "$work/log" | cut -d= -f2 || true)
  [ -n "$admin" ] && break
  sleep 0.1
done
[ -n "$admin" ] || { cat "$work/log"; echo "fngate did not start"; exit 1; }

# Semantic refusals (422 for an invalid config, 412 for a stale If-Match) are the
# API working, so the data-acceptance checks do not apply; these checks do.
"$st" run "http://$admin/openapi.json" \
  --header "Authorization: Bearer schemathesis-token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples 25 --max-time 60 --seed 1 --workers 1
