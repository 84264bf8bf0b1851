#!/usr/bin/env bash
# The vendored crates' own unit tests, with the tests of our patches in them (each
# PATCHED.md names its tests). They are not workspace members, so each builds on its own, in
# target/vendor-tests.
#
#   scripts/test-vendor.sh          http, pingora-http and pingora-timeout (quick; run by scripts/test.sh)
#   scripts/test-vendor.sh --all    also pingora-core and pingora-proxy (a few minutes to build)
#
# Skipped: pingora-core tests that need the Internet (they connect to public hosts).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="$root/target/vendor-tests"
crates=(http pingora-http pingora-timeout)
[ "${1:-}" = "--all" ] && crates+=(pingora-core pingora-proxy)
for c in "${crates[@]}"; do
  echo "== vendor/$c"
  skip=()
  if [ "$c" = pingora-core ]; then
    skip=(--skip connectors::http::v1::tests::test_connect
          --skip connectors::http::v1::tests::test_reuse_rejects_fd_mismatch
          --skip connectors::l4::tests::test_conn_error_addr_not_avail
          --skip connectors::l4::tests::test_conn_timeout)
  fi
  # The other vendored crates replace their crates.io versions here too, as in the workspace.
  patches=()
  for v in "$root"/vendor/*/; do
    v=$(basename "$v")
    [ "$v" = "$c" ] || patches+=(--config "patch.crates-io.$v.path=\"$root/vendor/$v\"")
  done
  # Start from the workspace's lock file: the same dependency versions as the gateway's build.
  cp "$root/Cargo.lock" "$root/vendor/$c/Cargo.lock"
  (cd "$root/vendor/$c" && cargo test "${patches[@]}" --lib -q -- "${skip[@]}")
done
