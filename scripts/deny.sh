#!/usr/bin/env bash
# Supply chain: `cargo deny check` (licenses, bans, sources, advisories) against the
# RustSec advisory database snapshot in ../shared/advisory-db, offline.
#
# The machines reach only package registries, so the database is never fetched: the
# snapshot (its SNAPSHOT.txt names the upstream commit) is copied into a scratch
# directory as the git repository cargo-deny opens, committed with the snapshot's
# date, and cargo-deny runs with --offline. Override the snapshot with
# PBR_ADVISORY_DB=DIR.
#
# Needs: cargo-deny (`cargo install cargo-deny --locked`; this script installs it
# when missing, about 3-5 minutes on 2 cores) and git.
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot="${PBR_ADVISORY_DB:-../shared/advisory-db}"
if [ ! -f "$snapshot/SNAPSHOT.txt" ]; then
  echo "scripts/deny.sh: no advisory database snapshot at $snapshot (expected SNAPSHOT.txt there)" >&2
  exit 1
fi
if ! cargo deny --version >/dev/null 2>&1; then
  echo "scripts/deny.sh: installing cargo-deny (cargo install cargo-deny --locked)" >&2
  cargo install cargo-deny --locked --quiet
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# cargo-deny keeps the database for https://github.com/rustsec/advisory-db (deny.toml's
# db-urls) in <db-path>/advisory-db-3157b0e258782691.
db="$scratch/advisory-dbs/advisory-db-3157b0e258782691"
mkdir -p "$(dirname "$db")"
cp -R "$snapshot" "$db"
chmod -R u+w "$db"
rm -rf "$db/.git"
when="$(git -C "$db" log -1 --format=%cI 2>/dev/null || true)"
when="${when:-$(sed -n 's/.*(\([0-9-]*\)).*/\1T00:00:00Z/p' "$db/SNAPSHOT.txt")}"
(
  cd "$db"
  git init -q
  git add -A
  GIT_AUTHOR_DATE="$when" GIT_COMMITTER_DATE="$when" \
    git -c user.name=snapshot -c user.email=snapshot@localhost commit -q -m "$(head -1 SNAPSHOT.txt)"
)
echo "cargo deny: advisory database $(head -1 "$snapshot/SNAPSHOT.txt")"
# --offline keeps cargo-deny off the network; the crates it reads metadata of (those
# for every platform) come from the registry first, which the machines do reach.
cargo fetch --quiet
PBR_ADVISORY_DB_ROOT="$scratch/advisory-dbs" cargo deny --offline check "$@"
