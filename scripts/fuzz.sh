#!/usr/bin/env bash
# Runs each cargo-fuzz target of dataplane/fuzz for SECONDS (default 30)
# from its kept corpus (dataplane/fuzz/corpus/TARGET), which the run
# extends. A crash fails the script and leaves its input in
# dataplane/fuzz/artifacts/TARGET/; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -O TARGET artifacts/TARGET/crash-...
# cargo-fuzz needs nightly-only flags (-Z sanitizer); RUSTC_BOOTSTRAP=1 lets
# the machine's one stable toolchain accept them.
set -euo pipefail
secs="${1:-30}"
cd "$(dirname "$0")/../dataplane/fuzz"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
cargo fuzz build -O
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
  echo "== fuzz $target for ${secs}s"
  mkdir -p "corpus/$target"
  if ! cargo fuzz run -O "$target" "corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz.sh: $target failed; its input is in dataplane/fuzz/artifacts/$target" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added)|^Done ' "$log" || true
done
