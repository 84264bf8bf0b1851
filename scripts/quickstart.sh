#!/usr/bin/env bash
# Quick start: builds the gateway, starts two demo backends (HTTP + WebSocket echo) on
# 127.0.0.1:3001 and :3002 and, when Node.js is installed, two demo Socket.IO nodes
# (examples/demo-socketio/node.js) on 127.0.0.1:3101 and :3102, and runs the gateway on
# conf/gateway.yaml in the foreground.
# Then: open http://localhost:8080/ (the demo page: Socket.IO and a WebSocket through the
# gateway), curl http://localhost:8080/api/hello , curl http://127.0.0.1:9901/status .
# Ctrl-C stops everything.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
SKIP_NODE=1 "$root/scripts/deps.sh"
# The Socket.IO nodes need the `socket.io` package (tests/socketio/node_modules, `npm ci`).
sio=0
if command -v node >/dev/null 2>&1; then
  if "$root/scripts/deps.sh"; then
    sio=1
  else
    echo "quickstart: could not install the npm packages: starting without the Socket.IO demo nodes" >&2
  fi
else
  echo "quickstart: node is not installed: starting without the Socket.IO demo nodes (the page will say so)" >&2
fi
cargo build --release --bin gateway --example demo_backend
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
./target/release/examples/demo_backend --listen 127.0.0.1:3001 --name node-a &
node_a=$!
pids+=("$node_a")
./target/release/examples/demo_backend --listen 127.0.0.1:3002 --name node-b &
node_b=$!
pids+=("$node_b")
if [ "$sio" = 1 ]; then
  PORT=3101 NODE_NAME=sio-a node examples/demo-socketio/node.js &
  pids+=("$!")
  PORT=3102 NODE_NAME=sio-b node examples/demo-socketio/node.js &
  pids+=("$!")
fi
sleep 1
for pid in "${pids[@]}"; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "quickstart: a demo backend did not start (is something else on 127.0.0.1:3001, :3002, :3101 or :3102?)" >&2
    exit 1
  fi
done
echo "node-a is pid $node_a, node-b is pid $node_b: 'kill $node_b' and watch /status mark it down"
echo "demo backends on 127.0.0.1:3001 and :3002; gateway on http://localhost:8080/ (admin: http://127.0.0.1:9901/status)"
[ "$sio" = 1 ] && echo "Socket.IO nodes sio-a and sio-b on 127.0.0.1:3101 and :3102: open http://localhost:8080/ in a browser"
./target/release/gateway -c conf/gateway.yaml
