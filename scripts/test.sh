#!/usr/bin/env bash
# Runs every test: Rust unit + integration tests (real gateway binary, real backends on
# 127.0.0.1), the examples, the vendored Pingora crates' quick unit tests, the training of the
# profile-guided build (scripts/build-pgo.sh --check), and the Socket.IO real-client suite when
# present.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
"$root/scripts/deps.sh"
export RUST_BACKTRACE=1
cargo build --all-targets
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets --no-fail-fast --test-threads 4
  cargo test --doc
else
  cargo test --all-targets --no-fail-fast
fi
"$root/scripts/test-vendor.sh"
"$root/scripts/check-deploy.sh"
"$root/scripts/build-pgo.sh" --check
if [ -f "$root/tests/socketio/package.json" ]; then
  cargo build --bin gateway
  (cd "$root/tests/socketio" && GATEWAY_BIN="$root/target/debug/gateway" node --test --test-concurrency=1)
fi
