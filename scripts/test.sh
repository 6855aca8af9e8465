#!/usr/bin/env bash
# The test command. Installs what the tests need into a virtual environment (.venv,
# ignored by git) so that it works with an externally managed Python (Debian's), then
# runs every test with that venv's python (PBR_TEST_PYTHON).
#
# Needs: Rust (cargo, see rust-version in Cargo.toml) and Python 3 with venv
# (Debian/Ubuntu: apt-get install python3-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv"; then
    echo "scripts/test.sh: cannot create a Python virtual environment; on Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 1
  fi
fi
if ! "$venv/bin/python" -c "import standardwebhooks" 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check standardwebhooks
fi
export PBR_TEST_PYTHON="$PWD/$venv/bin/python"
# Every skipped test (a component missing here: Redis, chromedriver, a tmpfs) prints
# SKIPPED and adds a line to this file; the summary at the end counts them. With
# CI=true a skip fails its test instead.
skips=$(mktemp)
export PBR_TEST_SKIPS="$skips"
summary() {
  local n
  n=$(wc -l <"$skips")
  if [ "$n" -gt 0 ]; then
    echo "scripts/test.sh: $n test(s) SKIPPED:"
    sort "$skips"
  else
    echo "scripts/test.sh: no test skipped"
  fi
  rm -f "$skips"
}
trap summary EXIT
# The crash checker again on the Redis backend (scripts/ensure-redis.sh, called by
# .ci/run, provides one); then every test. No doc tests: the crate documents with
# prose, and the last line should count tests.
if redis-cli -u "${PBR_TEST_REDIS_URL:-redis://127.0.0.1:6379}" ping >/dev/null 2>&1; then
  PBR_TEST_STORE=redis cargo test --test crash "$@"
elif [ "${CI:-}" = "true" ]; then
  echo "scripts/test.sh: no Redis at ${PBR_TEST_REDIS_URL:-redis://127.0.0.1:6379} (CI needs one)" >&2
  exit 1
else
  echo "scripts/test.sh: no Redis answering: the crash checker runs on the embedded store only"
fi
cargo test --lib --bins --tests "$@"
