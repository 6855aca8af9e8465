#!/usr/bin/env bash
# The end-to-end load bench: one command.
#
#   scripts/loadbench.sh                     # full run (~10 s per shape, 1,000,000-delivery backlog)
#   LOADBENCH_QUICK=1 scripts/loadbench.sh   # smoke run (2 s per shape, 20,000-delivery backlog)
#
# Builds the relay and the bench (examples/loadbench: load generator, bare hyper
# baseline, fake partners) in release mode, runs the bare hyper baseline and then the
# relay under the same load generator, and prints one Markdown table. Only 127.0.0.1
# is ever contacted. Everything it starts is stopped on exit and its scratch
# directory (on a real disk, not tmpfs: durability is the point) is removed.
# See benches/README.md for the method and what each shape means.
#
# Settings (environment):
#   LOADBENCH_QUICK=1           short smoke run
#   LOADBENCH_DURATION=10       measured seconds per shape (quick: 2)
#   LOADBENCH_WARMUP=2          warm-up seconds before each measured window (quick: 0.5)
#   LOADBENCH_CONNECTIONS=64    load-generator connections
#   LOADBENCH_BACKLOG=1000000   deliveries queued for the drain shape (quick: 20000)
#   LOADBENCH_SHAPES=abcdefghijklmno which relay shapes to run (the baselines always run;
#                               g-j: one and two relays on one Redis; k-n: partners
#                               at internet distance, rule defaults; o: the drain
#                               of f with batches)
#   LOADBENCH_PARTNER_DELAY_MS=100  how long the distant partners (k-n) take to answer
#   LOADBENCH_DISTANCE_EVENTS=200000 events of shape (k) (quick: 20000)
#   LOADBENCH_REDIS_SERVER=PATH redis-server for shapes g-j (default: the one on PATH;
#                               the bench runs its own on a free port, AOF everysec)
#   LOADBENCH_REDIS_CONFIG="NAME=VALUE ..."  settings for that redis-server, after the
#                               bench's own (e.g. hash-max-listpack-value=1024)
#   LOADBENCH_POOL_MB=1024      memory for one pool of pre-signed requests
#   LOADBENCH_DRAIN_TIMEOUT=420 seconds allowed to fill, and to drain, the backlog
#   LOADBENCH_TIMEOUT=1500      hard limit for the whole bench, in seconds
#   LOADBENCH_OUT=FILE          also write the table to FILE
#   LOADBENCH_TMPDIR=/var/tmp   where the scratch directory goes
#   LOADBENCH_NO_BUILD=1        use the binaries already built
#   LOADBENCH_RELAY_LOG=info    RUST_LOG of the relay under test
#   LOADBENCH_KEEP=1            keep the logs (data dirs are always removed)
#   CARGO_TARGET_DIR            as for cargo (default ./target)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [[ "${LOADBENCH_QUICK:-0}" == 1 ]]; then
  duration=${LOADBENCH_DURATION:-2}
  warmup=${LOADBENCH_WARMUP:-0.5}
  backlog=${LOADBENCH_BACKLOG:-20000}
  drain_timeout=${LOADBENCH_DRAIN_TIMEOUT:-120}
  distance_events=${LOADBENCH_DISTANCE_EVENTS:-20000}
else
  distance_events=${LOADBENCH_DISTANCE_EVENTS:-200000}
  duration=${LOADBENCH_DURATION:-10}
  warmup=${LOADBENCH_WARMUP:-2}
  backlog=${LOADBENCH_BACKLOG:-1000000}
  drain_timeout=${LOADBENCH_DRAIN_TIMEOUT:-420}
fi
connections=${LOADBENCH_CONNECTIONS:-64}
shapes=${LOADBENCH_SHAPES:-abcdefghijklmno}
redis_server=${LOADBENCH_REDIS_SERVER:-$(command -v redis-server || true)}
pool_mb=${LOADBENCH_POOL_MB:-1024}
limit=${LOADBENCH_TIMEOUT:-1500}
target_dir=${CARGO_TARGET_DIR:-$root/target}

if [[ "${LOADBENCH_NO_BUILD:-0}" != 1 ]]; then
  echo "loadbench: building the relay and the bench (release)" >&2
  # Two invocations: the relay exactly as `cargo build --release` makes it (the
  # bench's dev-dependencies must not change its features).
  cargo build --release --quiet --bin postback-relay
  cargo build --release --quiet --example loadbench
fi
relay_bin="$target_dir/release/postback-relay"
bench_bin="$target_dir/release/examples/loadbench"
for b in "$relay_bin" "$bench_bin"; do
  [[ -x "$b" ]] || { echo "loadbench: missing $b (build failed?)" >&2; exit 1; }
done

tmp_base=${LOADBENCH_TMPDIR:-/var/tmp}
work=$(mktemp -d "$tmp_base/loadbench.XXXXXX")
if [[ "$(stat -f -c %T "$work")" == tmpfs ]]; then
  echo "loadbench: warning: $work is on tmpfs; durable writes are not measured (set LOADBENCH_TMPDIR)" >&2
fi
bench_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$bench_pid" ]] && kill -0 "$bench_pid" 2>/dev/null; then
    kill -TERM "$bench_pid" 2>/dev/null || true
  fi
  # Every process the bench started wrote its pid here; stop those still running.
  if [[ -f "$work/pids" ]]; then
    while read -r pid; do
      [[ "$pid" =~ ^[0-9]+$ ]] && kill -KILL "$pid" 2>/dev/null || true
    done < "$work/pids"
  fi
  if [[ -n "$bench_pid" ]]; then wait "$bench_pid" 2>/dev/null || true; fi
  if [[ "${LOADBENCH_KEEP:-0}" == 1 ]]; then
    rm -rf "$work"/shape-*
    echo "loadbench: logs kept in $work/logs" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

args=(run --relay "$relay_bin" --work "$work" --duration "$duration" --warmup "$warmup"
      --connections "$connections" --backlog "$backlog" --shapes "$shapes"
      --pool-mb "$pool_mb" --drain-timeout "$drain_timeout"
      --partner-delay-ms "${LOADBENCH_PARTNER_DELAY_MS:-100}" --distance-events "$distance_events")
if [[ -n "${LOADBENCH_OUT:-}" ]]; then args+=(--out "$LOADBENCH_OUT"); fi
if [[ -n "$redis_server" ]]; then args+=(--redis-server "$redis_server"); fi
for setting in ${LOADBENCH_REDIS_CONFIG:-}; do args+=(--redis-config "$setting"); done

# Bounded in time: the bench is killed after $limit seconds whatever happens.
timeout --kill-after=10 "$limit" "$bench_bin" "${args[@]}" &
bench_pid=$!
wait "$bench_pid"
