#!/usr/bin/env bash
# Fuzzing: runs each cargo-fuzz target in fuzz/ (or those named) for PBR_FUZZ_SECS
# seconds (default 60), starting from its committed seed corpus (fuzz/corpus/TARGET,
# read only) and keeping what it finds in fuzz/work/TARGET (ignored by git). A crash
# stops the run and leaves its input in fuzz/artifacts/TARGET/: fix it, and add the
# input as a regression test beside the code it broke.
#
#   scripts/fuzz.sh                       # all five targets, 60 s each
#   PBR_FUZZ_SECS=600 scripts/fuzz.sh rule_file
#
# Needs: a nightly toolchain (rustup toolchain install nightly) and cargo-fuzz
# (cargo install cargo-fuzz --locked). The normal build and test run never build fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${PBR_FUZZ_SECS:-60}"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(signature_header event_parser rule_file template store_record)
fi
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t"
  echo "== fuzz $t for ${secs}s"
  cargo +nightly fuzz run "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
