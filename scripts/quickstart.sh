#!/usr/bin/env bash
# Quick start: builds the gateway, starts two demo backends (HTTP + WebSocket echo) on
# 127.0.0.1:3001 and :3002, and runs the gateway on conf/gateway.yaml in the foreground.
# Then: open http://localhost:8080/ , curl http://localhost:8080/api/hello ,
# curl http://127.0.0.1:9901/status . Ctrl-C stops everything.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
SKIP_NODE=1 "$root/scripts/deps.sh"
cargo build --release --bin gateway --example demo_backend
./target/release/examples/demo_backend --listen 127.0.0.1:3001 --name node-a &
node_a=$!
./target/release/examples/demo_backend --listen 127.0.0.1:3002 --name node-b &
node_b=$!
trap 'kill $node_a $node_b 2>/dev/null || true' EXIT INT TERM
sleep 0.5
if ! kill -0 "$node_a" 2>/dev/null || ! kill -0 "$node_b" 2>/dev/null; then
  echo "quickstart: the demo backends did not start (is something else on 127.0.0.1:3001 / :3002?)" >&2
  exit 1
fi
echo "node-a is pid $node_a, node-b is pid $node_b: 'kill $node_b' and watch /status mark it down"
echo "demo backends on 127.0.0.1:3001 and :3002; gateway on http://localhost:8080/ (admin: http://127.0.0.1:9901/status)"
./target/release/gateway -c conf/gateway.yaml
