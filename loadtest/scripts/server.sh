#!/usr/bin/env bash
# Starts a release `viche` for the standard viche-load runs
# (docs/benchmarks.md, "viche-load"): pinned to core 0, a fresh data dir
# on disk (durable: an fsync per commit), port 18181, the bench secret.
# Extra flags pass through (e.g. --send-per-second for saturation sweeps).
# The generator is one host, so the per-address connection cap is lifted.
# VICHE_BIN runs another build (default target/release/viche), for A/B runs.
# Prints the server's PID; stop it with `kill PID`.
#
#   cargo build --release -p viche-gateway -p viche-load
#   loadtest/scripts/server.sh [viche flags...]
set -euo pipefail
cd "$(dirname "$0")/../.."
data=$(mktemp -d /tmp/viche-load-data-XXXXXX)
ulimit -n 20000
RUST_LOG=warn taskset -c 0 "${VICHE_BIN:-target/release/viche}" --data-dir "$data" --listen 127.0.0.1:18181 \
  --jwt-secret benchsecret-0123456789 --max-connections-per-ip 1000000 "$@" >"$data.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:18181/healthz >/dev/null && break
  sleep 0.1
done
curl -sf http://127.0.0.1:18181/healthz >/dev/null || { cat "$data.log"; exit 1; }
echo "$pid"
