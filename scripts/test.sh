#!/usr/bin/env bash
# The test command: installs what the tests need (the independent Standard Webhooks
# library used to sign requests in tests), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import standardwebhooks" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check standardwebhooks
fi
# No doc tests: the crate documents with prose, and the last line should count tests.
cargo test --lib --bins --tests "$@"
