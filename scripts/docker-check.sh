#!/usr/bin/env bash
# Builds the container image and checks that it answers /readyz. Skips (exit 0, with
# the reason printed) when Docker is not installed, its daemon is not reachable, or
# the base images cannot be pulled (no registry access). Called from .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
skip() { echo "docker-check: SKIPPED: $*"; exit 0; }
command -v docker >/dev/null 2>&1 || skip "docker is not installed"
timeout 20 docker info >/dev/null 2>&1 || skip "the Docker daemon is not reachable"
for image in rust:1-slim-bookworm debian:bookworm-slim; do
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    timeout 120 docker pull -q "$image" >/dev/null 2>&1 \
      || skip "cannot pull the base image $image (no registry access)"
  fi
done
tag="postback-relay:check-$$"
docker build -t "$tag" .
# The production config the image carries needs a secret of its own.
secret="whsec_$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
cid=$(docker run -d -p 127.0.0.1::8080 -e POSTBACK_RELAY_SECRET="$secret" "$tag")
cleanup() { docker rm -f "$cid" >/dev/null 2>&1 || true; docker rmi "$tag" >/dev/null 2>&1 || true; }
trap cleanup EXIT
port=$(docker port "$cid" 8080/tcp | head -n1 | sed 's/.*://')
for _ in $(seq 1 60); do
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
    echo "docker-check: the image answers /readyz"
    exit 0
  fi
  sleep 1
done
docker logs "$cid" | tail -n 50
echo "docker-check: the image did not answer /readyz within 60s" >&2
exit 1
