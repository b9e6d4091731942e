#!/usr/bin/env bash
# The cost of metrics on the fan-out path (docs/benchmarks.md, "Cost of
# metrics"): runs `viche-load fanout` against a fresh release `viche` with
# metrics and with --no-metrics, alternately, and prints for each run the
# server's CPU time per delivery over the measured window, and the
# generator's own CPU time (if it is near the window's length, the
# generator, not the server, is the bottleneck).
#
# Server CPU is what viche-load reads from /proc/PID/stat at the start and
# the end of the window. It is divided here by the deliveries the generator
# received in the window, not by the server's viche_deliveries_total: with
# --no-metrics there is no /metrics to read, and both runs of a pair must
# be divided by the same count.
#
#   cargo build --release -p viche-gateway -p viche-load
#   benches/scripts/metrics-overhead.sh [RUNS] [viche-load fanout flags...]
#
# Default flags: 20 rooms × 100 members, 5 senders per room at 2 msg/s
# (200 sends/s, 20,000 deliveries/s), 100-byte bodies, 30 s after 5 s.
# Server pinned to core 0, generator to core 1, as in docs/benchmarks.md.
# Binaries come from $CARGO_TARGET_DIR/release (default: target/release).
# Needs taskset, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${CARGO_TARGET_DIR:-target}/release"
runs="${1:-3}"
shift || true
fanout_args=("$@")
if [ ${#fanout_args[@]} -eq 0 ]; then
  fanout_args=(--rooms 20 --members 100 --senders 5 --rate 2 --body-bytes 100 --duration 30 --warmup 5)
fi
for b in viche viche-load; do
  [ -x "$bin/$b" ] || { echo "no $bin/$b: cargo build --release -p viche-gateway -p viche-load" >&2; exit 1; }
done
secret=benchsecret-0123456789
port=18191
ulimit -n 20000 || true

one_run() {
  local mode=$1 data pid
  data=$(mktemp -d /tmp/viche-overhead-XXXXXX)
  local extra=()
  if [ "$mode" = off ]; then extra=(--no-metrics); fi
  RUST_LOG=warn taskset -c 0 "$bin/viche" --data-dir "$data/db" --listen "127.0.0.1:$port" \
    --jwt-secret "$secret" "${extra[@]}" >"$data/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.1
  done
  if ! curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; then
    cat "$data/server.log" >&2
    kill -TERM "$pid" 2>/dev/null || true
    exit 1
  fi
  if ! taskset -c 1 "$bin/viche-load" fanout --url "http://127.0.0.1:$port" --jwt-secret "$secret" \
    --server-pid "$pid" --no-progress --json "$data/run.json" "${fanout_args[@]}" >"$data/load.txt" 2>&1; then
    cat "$data/load.txt" >&2
    kill -TERM "$pid"; wait "$pid" || true
    exit 1
  fi
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$mode" "$data/run.json" <<'EOF'
import json, sys
mode, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
c, s, loss = r["counters"], r["server"], r["loss"]
delivered = c.get("deliveries_in_window", 0)
cpu = s.get("cpu_seconds")
per = f"{cpu / delivered * 1e6:6.3f} us/delivery" if cpu is not None and delivered else "n/a (no server CPU)"
print(f"{mode:<4} sends {c.get('sends_in_window', 0):7d}  deliveries {delivered:9d}  "
      f"server cpu {cpu if cpu is not None else float('nan'):6.2f} s  {per}  ({s.get('source')})")
lat = r["latency"].get("latency", {})
print(f"     window {r['window_s']:.1f} s, {r['rates']['deliveries_per_s']:.0f} deliveries/s; "
      f"lost {loss['lost']}, gaps {loss['gaps']}, duplicates {loss['duplicates']}; "
      f"send→deliver p50 {lat.get('p50_ms', float('nan')):.2f} ms, p99 {lat.get('p99_ms', float('nan')):.2f} ms; "
      f"generator cpu {c.get('generator_cpu_us_in_window', 0) / 1e6:.2f} s")
if r["problems"]:
    print("     problems: " + "; ".join(r["problems"]))
EOF
  rm -rf "$data"
}

echo "$(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg)  viche-load fanout ${fanout_args[*]}"
for _ in $(seq "$runs"); do
  one_run on
  one_run off
done
echo "$(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg)"
