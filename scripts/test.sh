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
# No doc tests: the crate documents with prose, and the last line should count tests.
cargo test --lib --bins --tests "$@"
