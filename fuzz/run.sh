#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each, one after another.
#
#   fuzz/run.sh 30                 # each target 30 s (CI runs this with a short time)
#   fuzz/run.sh 600 path config    # two targets, 10 minutes each
#   JOBS=2 fuzz/run.sh 600         # two targets at a time
#
# Seeds come from fuzz/corpus/TARGET (committed); what the fuzzer finds goes to
# fuzz/target/corpus/TARGET (not committed; `cargo fuzz cmin` it into the seeds
# when it adds coverage). A failing input lands in fuzz/artifacts/TARGET: copy
# it into fuzz/regressions/TARGET so `cargo test` replays it for ever.
# Needs a nightly toolchain (or RUSTC_BOOTSTRAP=1) and cargo-fuzz; installs cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^fngate-fuzz$')
fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
if rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
else
    # No nightly here: stable with its unstable flags unlocked builds the same.
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
# Build and run take the same flags, or the run rebuilds. By default every crate
# is one codegen unit with AddressSanitizer, for the fastest, most careful long
# runs; CI's short runs set FUZZ_CODEGEN_UNITS and FUZZ_SANITIZER=none, which
# build in about half the time (.ci/fuzz.sh).
build=(-O)
[ -z "${FUZZ_CODEGEN_UNITS:-}" ] || build+=(--codegen-units "$FUZZ_CODEGEN_UNITS")
[ -z "${FUZZ_SANITIZER:-}" ] || build+=(--sanitizer "$FUZZ_SANITIZER")
started=$SECONDS
"${fuzz[@]}" build "${build[@]}"
echo "fuzz targets built in $((SECONDS - started)) s"

run_one() {
    local t=$1
    mkdir -p "target/corpus/$t" "artifacts/$t"
    local log="target/fuzz-$t.log" started=$SECONDS execs ok=0
    "${fuzz[@]}" run "${build[@]}" "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || ok=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [ "$ok" -eq 0 ]; then
        echo "$t: $((SECONDS - started))s, ${execs:-?} executions, no failure"
    else
        echo "$t: FAILED after $((SECONDS - started))s and ${execs:-?} executions; see fuzz/$log and fuzz/artifacts/$t/"
        grep -m1 -A3 "panicked at" "$log" || tail -40 "$log"
        return 1
    fi
}

status=0
jobs=${JOBS:-1}
running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || status=1
        running=$((running - 1))
    fi
done
while [ "$running" -gt 0 ]; do
    wait -n || status=1
    running=$((running - 1))
done
exit $status
