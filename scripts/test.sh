#!/usr/bin/env bash
# The whole test suite: dependencies, formatting, lints, unit and property
# tests, and the integration tests that run the real sluice binary on veth
# pairs in network namespaces (these need root and CAP_NET_ADMIN).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the integration tests need root and CAP_NET_ADMIN: run scripts/test.sh as root" >&2
  exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build (release binary used by the integration tests)"
cargo build --release --bins
export SLUICE_BIN="$PWD/target/release/sluice"
echo "== loom models of the flow table (dataplane/src/flow_table/loom_tests.rs)"
# The `loom` feature swaps the flow table's atomics for loom's in this
# crate alone; the dependencies stay the release build's.
cargo test --release -p sluice-dataplane --features loom --lib loom
echo "== fuzz targets (dataplane/fuzz), 20 s each from the kept corpus"
scripts/fuzz.sh 20
echo "== tests"
# Integration tests each build their own uniquely named namespaces; two at a
# time keeps the 2-core CI machine responsive.
cargo test --workspace --release -- --test-threads=2
echo "== integration tests with --fast-path off (the default is xdp)"
# The data path without the XDP fast path, on the files that cover its
# forwarding methods, counters and hostile input.
for t in round_robin udp masquerade fullnat dr ipv6 malformed metrics ipvsadm_conns endpoint_removal; do
  SLUICE_FAST_PATH=off cargo test --release -p sluice-tests --test "$t" -- --test-threads=2
done
