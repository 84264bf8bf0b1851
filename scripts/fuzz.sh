#!/usr/bin/env bash
# Runs the libFuzzer targets in fuzz/ (all of them, or those named) for FUZZ_SECONDS each
# (default 20), on nightly; installs cargo-fuzz when missing. The corpus grows in
# fuzz/corpus/<target>/ (git-ignored) and fuzz/regressions/<target>/ is replayed first; a
# crash is saved in fuzz/artifacts/<target>/ and the run stops with its reproduction command.
# Pin each crash input in fuzz/regressions/<target>/ and as a plain test at the end of
# tests/parsers_prop.rs (the same properties, on stable, in the normal suite).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
seconds="${FUZZ_SECONDS:-20}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzzing needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo +nightly install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config normalize router socketio cookie forwarded proxy_protocol)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "regressions/$t" ] && seeds+=("regressions/$t")
  [ "$t" = config ] && seeds+=("$root/conf")
  echo "== fuzz $t for ${seconds}s"
  cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10
done
