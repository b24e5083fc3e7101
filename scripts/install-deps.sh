#!/usr/bin/env bash
# Installs every Debian package that building, testing and `make run` need,
# skipping what is already present. Works as root; uses sudo otherwise.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config clang
  libevent-dev libhiredis-dev librdkafka-dev libssl-dev libjansson-dev
  libyaml-dev libcmocka-dev libhttp-parser-dev
  redis-server prometheus nginx wrk stunnel4 openssl docker-compose
  curl jq bc python3 nodejs npm ca-certificates
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# Node and npm may come from elsewhere than Debian; accept what is on PATH.
if command -v node >/dev/null && command -v npm >/dev/null; then
  tmp=()
  for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || tmp+=("$p"); done
  missing=("${tmp[@]+"${tmp[@]}"}")
fi
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packaged services are not needed running: tests start their own.
for svc in redis-server nginx prometheus; do
  if command -v systemctl >/dev/null && systemctl is-active -q "$svc" 2>/dev/null; then
    $SUDO systemctl stop "$svc" || true
  fi
done
