#!/usr/bin/env bash
# Instructions per proxied keep-alive request, counted by callgrind: deterministic to ~0.2 %,
# where CPU time on this VM drifts by 20 % between runs. For A/B checks of small engine
# changes; bench/run.sh stays the reference for time and memory.
#
#   bench/instructions.sh [GATEWAY_BIN [BARE_BIN]]   (defaults: target/release/{gateway,examples/bare_proxy})
#
# Each proxy runs under `valgrind --tool=callgrind` in front of examples/demo_backend, once
# with 1,000 and once with 5,000 GETs on /health over 4 keep-alive connections (a Python
# client); the difference of the two totals divided by 4,000 is the per-request count, so
# start-up, the health checker and shutdown cancel out. The gateway uses the features-on
# config of bench/run.sh (bench/gateway-config.sh). Needs valgrind (apt-get install
# valgrind) and python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GW=${1:-$ROOT/target/release/gateway}
BARE=${2:-$ROOT/target/release/examples/bare_proxy}
BACKEND=$ROOT/target/release/examples/demo_backend
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_BACKEND=$(port); P_PROXY=$(port); P_ADMIN=$(port)
cat >"$WORK/client.py" <<'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
req = b"GET /health HTTP/1.1\r\nHost: x\r\nUser-Agent: instructions\r\n\r\n"
for i in range(n):
    s = conns[i % 4]
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            sys.exit("connection closed")
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    cl = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
    while len(body) < cl:
        body += s.recv(65536)
PY
. "$ROOT/bench/gateway-config.sh"
features_config "$WORK" "$P_PROXY" "$P_ADMIN" "$P_BACKEND" >"$WORK/gw.yaml"
"$BACKEND" --listen "127.0.0.1:$P_BACKEND" --name b1 >/dev/null 2>&1 &
# total instructions of one proxy process serving $2 requests; $1.. the proxy command
count() {
  local n=$1; shift
  rm -f "$WORK"/cg.*
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" "$@" >"$WORK/vg.log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$P_PROXY/health" && break; sleep 0.3; done
  python3 "$WORK/client.py" "$P_PROXY" "$n"
  kill -INT $pid; wait $pid 2>/dev/null || true
  grep -h '^totals:' "$WORK"/cg.* | awk '{s += $2} END {print s}'
}
per_request() {
  local a b
  a=$(count 1000 "$@"); b=$(count 5000 "$@")
  echo $(( (b - a) / 4000 ))
}
g=$(per_request "$GW" -c "$WORK/gw.yaml")
b=$(per_request "$BARE" --listen "127.0.0.1:$P_PROXY" --upstream "127.0.0.1:$P_BACKEND" --threads 1 --work-stealing false)
echo "instructions per keep-alive request: gateway $g, bare Pingora $b (gateway/bare $(python3 -c "print(f'{$g/$b:.3f}')"))"
