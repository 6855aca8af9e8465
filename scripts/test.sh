#!/usr/bin/env bash
# The test command: installs what the tests need (the independent Standard Webhooks
# library used to sign requests in tests), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import standardwebhooks" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check standardwebhooks
fi
cargo test "$@"
