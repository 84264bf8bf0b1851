#!/usr/bin/env bash
# Profile-guided release build of the gateway: what to deploy when CPU per request matters.
#
#   scripts/build-pgo.sh          -> target/pgo/use/release/gateway
#                                    (and examples/bare_proxy, the benchmark's bare Pingora)
#   scripts/build-pgo.sh --check  the training alone, briefly, on the debug build and without
#                                 a profile: what scripts/test.sh runs to keep this script
#                                 working (~20 s)
#
# Three steps, ~20-25 minutes on 2 cores from a cold cache (two release builds, plus the plain
# release build of the training's backend and client when missing):
#   1. an instrumented release build (-Cprofile-generate) of the gateway and bare_proxy;
#   2. training: each one proxies keep-alive GETs, new connections and WebSocket echo to
#      examples/demo_backend on 127.0.0.1 (the gateway on bench/gateway-config.sh's
#      features-on config, plus HTTPS on a second listener; then briefly on a second config
#      off the first one's paths), then stops gracefully so the profile is written;
#   3. the release build again with the merged profile (-Cprofile-use).
# The profile is made from this checkout's code on every run, so it never goes stale, and it
# stays out of the repository (it is tied to the compiler's LLVM version).
# Needs llvm-profdata from the toolchain's llvm-tools (installed with rustup when missing), wrk,
# openssl, curl and python3. Separate target directories keep the plain build's cache intact.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CHECK=0
case "${1:-}" in
  --check) CHECK=1 ;;
  "") ;;
  *) echo "usage: scripts/build-pgo.sh [--check]" >&2; exit 2 ;;
esac
OUT=${PGO_TARGET_DIR:-$ROOT/target/pgo}
DATA=$OUT/profiles
log() { echo "[build-pgo $(date +%H:%M:%S)] $*" >&2; }

for c in wrk openssl curl python3; do
  command -v $c >/dev/null || { echo "build-pgo: $c is not installed (apt-get install $c)" >&2; exit 1; }
done
if [ $CHECK = 1 ]; then
  cargo build --bin gateway --example bare_proxy --example demo_backend --example wsbench
  GEN=$ROOT/target/debug
  REL=$ROOT/target/debug
  SECS=1
else
  HOST=$(rustc -vV | sed -n 's/^host: //p')
  PROFDATA=$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata
  if [ ! -x "$PROFDATA" ]; then
    log "installing llvm-tools (llvm-profdata) with rustup"
    rustup component add llvm-tools >&2
  fi
  log "1/3 instrumented build"
  rm -rf "$DATA"
  mkdir -p "$DATA"
  CARGO_TARGET_DIR=$OUT/gen RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$DATA" \
    cargo build --release --bin gateway --example bare_proxy
  cargo build --release --example demo_backend --example wsbench
  GEN=$OUT/gen/release
  REL=$ROOT/target/release
  SECS=3
  # Build scripts and proc macros were instrumented too and wrote profiles while they ran:
  # only the training's are wanted.
  rm -f "$DATA"/*.profraw
  export LLVM_PROFILE_FILE=$DATA/%p-%m.profraw
fi

log "2/3 training"
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 100); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "build-pgo: $1 did not answer" >&2
  exit 1
}
# launch NAME PORT CMD...: CMD in the background (output in $WORK/NAME.log) until
# http://127.0.0.1:PORT/health answers; its pid in $LAUNCHED.
launch() {
  local name=$1 port=$2
  shift 2
  "$@" >"$WORK/$name.log" 2>&1 &
  LAUNCHED=$!
  PIDS+=($LAUNCHED)
  wait_http "http://127.0.0.1:$port/health"
}
P_BACKEND=$(port)
launch backend "$P_BACKEND" "$REL/examples/demo_backend" --listen "127.0.0.1:$P_BACKEND" --name b1

# wrk_ok FILE: wrk ran, connected, got answers and every one was a 2xx (a profile of error
# pages or refused connections trains the wrong path).
wrk_ok() {
  if ! grep -q "Requests/sec" "$1" || grep -qE "Non-2xx|Socket errors: connect [1-9]|^Requests/sec: +0\.00" "$1"; then
    echo "build-pgo: training failed: $1" >&2
    cat "$1" >&2
    exit 1
  fi
}
# train NAME PORT: the workloads bench/run.sh measures, a few seconds each.
train() {
  local url="http://127.0.0.1:$2/health"
  wrk -t1 -c64 -d$((2 * SECS))s "$url" >"$WORK/$1-ka.txt"
  wrk_ok "$WORK/$1-ka.txt"
  wrk -t1 -c16 -d${SECS}s -H "Connection: close" "$url" >"$WORK/$1-close.txt"
  wrk_ok "$WORK/$1-close.txt"
  "$REL/examples/wsbench" echo --addr "127.0.0.1:$2" --conns 16 --duration ${SECS}s --size 32 >"$WORK/$1-ws.txt"
  grep -q '"errors":0' "$WORK/$1-ws.txt" || { echo "build-pgo: WebSocket training failed: $(cat "$WORK/$1-ws.txt")" >&2; exit 1; }
}
# stop PID: SIGINT (graceful) and wait, so the instrumented process writes its profile.
stop() {
  kill -INT "$1"
  for _ in $(seq 100); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "build-pgo: process $1 did not stop" >&2
  exit 1
}

# shellcheck source=../bench/gateway-config.sh
. "$ROOT/bench/gateway-config.sh"
P_GW=$(port)
P_TLS=$(port)
# The features-on config, plus a TLS listener (an ECDSA P-256 certificate made here) so the
# handshake and the encrypted path are trained too.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$WORK/site.key" \
  -out "$WORK/site.pem" -days 1 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 2>/dev/null
features_config "$WORK" "$P_GW" "$(port)" "$P_BACKEND" \
  "{ address: \"127.0.0.1:$P_TLS\", tls: { certificates: [ { cert: $WORK/site.pem, key: $WORK/site.key } ] } }" \
  >"$WORK/gateway.yaml"
launch gateway "$P_GW" "$GEN/gateway" -c "$WORK/gateway.yaml"
G=$LAUNCHED
train gateway "$P_GW"
wrk -t1 -c32 -d${SECS}s "https://127.0.0.1:$P_TLS/health" >"$WORK/gateway-tls-ka.txt"
wrk_ok "$WORK/gateway-tls-ka.txt"
wrk -t1 -c16 -d${SECS}s -H "Connection: close" "https://127.0.0.1:$P_TLS/health" >"$WORK/gateway-tls-close.txt"
wrk_ok "$WORK/gateway-tls-close.txt"
stop "$G"

# A second, smaller config off the first one's paths, so that its branches are not laid out
# as never taken: metrics off, no health check and no affinity, header rules on the route (the
# forwarded headers then go through the header map), the RFC 7239 header. Keep-alive only, for
# a third of the first one's time: the first config stays what the profile favours.
P_GW2=$(port)
cat >"$WORK/gateway2.yaml" <<EOF
server: { threads: 1, pid_file: $WORK/gw2.pid, upgrade_sock: $WORK/gw2.sock }
listeners: [ { address: "127.0.0.1:$P_GW2" } ]
admin: { address: "127.0.0.1:$(port)", metrics: false }
forwarded: { rfc7239: true }
upstreams:
  app: { servers: [ { address: "127.0.0.1:$P_BACKEND" } ] }
routes:
  - upstream: app
    request_headers: { set: { X-Gateway: pgo } }
    response_headers: { set: { Cache-Control: no-store } }
EOF
launch gateway2 "$P_GW2" "$GEN/gateway" -c "$WORK/gateway2.yaml"
G2=$LAUNCHED
wrk -t1 -c64 -d$(((2 * SECS + 2) / 3))s "http://127.0.0.1:$P_GW2/health" >"$WORK/gateway2-ka.txt"
wrk_ok "$WORK/gateway2-ka.txt"
stop "$G2"

P_BARE=$(port)
launch bare "$P_BARE" "$GEN/examples/bare_proxy" --listen "127.0.0.1:$P_BARE" \
  --upstream "127.0.0.1:$P_BACKEND" --threads 1
B=$LAUNCHED
train bare "$P_BARE"
stop "$B"

if [ $CHECK = 1 ]; then
  log "check: the training ran"
  exit 0
fi
"$PROFDATA" merge -o "$DATA/merged.profdata" "$DATA"/*.profraw
log "profile: $(du -h "$DATA/merged.profdata" | cut -f1) from $(ls "$DATA"/*.profraw | wc -l) runs"

log "3/3 optimised build"
# From scratch: cargo does not rebuild a registry crate when only the profile's contents changed.
rm -rf "$OUT/use"
CARGO_TARGET_DIR=$OUT/use RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$DATA/merged.profdata" \
  cargo build --release --bin gateway --example bare_proxy
log "done: $OUT/use/release/gateway"
