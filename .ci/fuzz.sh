#!/usr/bin/env bash
# Every fuzz target for a short, bounded time, so a regression in a parser's
# properties fails CI; the long runs are fuzz/README.md's. The build is most of
# it: cargo-fuzz's default (one codegen unit per crate, opt-level 3,
# AddressSanitizer) took 851 s here, this one (16 units, opt-level 1, no
# sanitizer: our only unsafe code is the allocator's calls into mimalloc)
# 442 s. Then 11 targets x 10 s, two at a time: without the sanitizer 10 s runs
# about as many inputs as 20 s did with it, or more (20 s: path 651k against
# 333k, config 25k against 2k).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debug info (fuzz/Cargo.toml keeps it for the long runs' stack traces) is
# link time CI's short runs do without: a failure there is replayed locally.
export FUZZ_CODEGEN_UNITS=16 FUZZ_SANITIZER=none CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0
JOBS=2 bash fuzz/run.sh "${FUZZ_SECONDS:-10}"
