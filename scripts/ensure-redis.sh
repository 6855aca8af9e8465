#!/usr/bin/env bash
# Makes sure the Redis tests have a Redis: uses the one answering on 127.0.0.1:6379,
# otherwise installs redis-server (Debian/Ubuntu, as root) when it is missing and
# starts one there without persistence (tests use their own key prefixes). Also makes
# sure `redis-server` is on PATH: some tests start their own on a free port.
#
# Prints the PID of a server it started on stdout's last line as `started PID` (so
# the caller can stop it), or `running` when one was already there.
set -euo pipefail

answers() {
  # PING over bash's /dev/tcp: no redis-cli needed.
  { exec 3<>/dev/tcp/127.0.0.1/6379; } 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  local line=""
  IFS= read -r -t 2 line <&3 || true
  exec 3<&- 3>&-
  [[ "$line" == "+PONG"* ]]
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "ensure-redis: installing redis-server" >&2
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-redis: redis-server is missing and cannot be installed here (needs root and apt-get)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi

if answers; then
  echo "ensure-redis: using the Redis on 127.0.0.1:6379" >&2
  echo running
  exit 0
fi

dir=$(mktemp -d)
redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
for _ in $(seq 1 100); do
  if answers; then
    echo "ensure-redis: started redis-server on 127.0.0.1:6379 ($dir)" >&2
    echo "started $(cat "$dir/redis.pid")"
    exit 0
  fi
  sleep 0.1
done
echo "ensure-redis: redis-server did not answer on 127.0.0.1:6379; its log:" >&2
cat "$dir/redis.log" >&2 || true
exit 1
