#!/usr/bin/env bash
# Every fuzz target for a short, bounded time, so a regression in a parser's
# properties fails CI; the long runs are fuzz/README.md's. About 6 minutes:
# 5 to build with sanitizers, then 10 targets x 20 s, two at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=2 bash fuzz/run.sh "${FUZZ_SECONDS:-20}"
