#!/usr/bin/env bash
# Installs what building and testing the gateway needs, when missing: cmake (Pingora's
# zlib-ng build), a C compiler, Chromium and Redis (browser and cross-node tests), wrk and curl
# (the check of scripts/build-pgo.sh's training), and the npm packages of the Socket.IO suite.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The browser tests (dashboard, end-to-end page) and the cross-node rooms example.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: installing ${need_apt[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: cargo is missing: install Rust (https://rustup.rs)" >&2
  exit 1
fi
if [ -f "$root/tests/socketio/package.json" ] && [ "${SKIP_NODE:-0}" != 1 ]; then
  if ! command -v node >/dev/null 2>&1; then
    echo "deps: node is missing: install Node.js 20" >&2
    exit 1
  fi
  if [ ! -d "$root/tests/socketio/node_modules" ] || [ "$root/tests/socketio/package-lock.json" -nt "$root/tests/socketio/node_modules" ]; then
    echo "deps: npm ci in tests/socketio" >&2
    (cd "$root/tests/socketio" && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
