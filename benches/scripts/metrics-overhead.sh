#!/usr/bin/env bash
# The cost of metrics on the fan-out path (docs/benchmarks.md, "Cost of
# metrics"): runs the fan-out bench against a release `viche` with metrics
# and with --no-metrics, alternately, and prints the server's CPU time per
# delivery for each run (utime + stime from /proc/PID/stat, read when the
# bench starts sending and when it ends), and the bench's own CPU time (if
# it is near its wall time, the bench, not the server, is the bottleneck).
#
#   cargo build --release -p viche-gateway -p viche-benches
#   benches/scripts/metrics-overhead.sh [RUNS] [fanout flags...]
#
# Server pinned to core 0, bench to core 1, as in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-3}"
shift || true
fanout_args=("$@")
if [ ${#fanout_args[@]} -eq 0 ]; then
  fanout_args=(--rooms 20 --members 100 --senders 5 --rate 2 --duration-s 30 --warmup-s 5)
fi
secret=benchsecret-0123456789
port=18191
tck=$(getconf CLK_TCK)
ulimit -n 20000 || true

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

one_run() {
  local mode=$1 data out pid bench ticks0 ticks1 delivered sends
  data=$(mktemp -d /tmp/viche-overhead-XXXXXX)
  out=$(mktemp /tmp/viche-overhead-bench-XXXXXX)
  local extra=()
  if [ "$mode" = off ]; then extra=(--no-metrics); fi
  RUST_LOG=warn taskset -c 0 target/release/viche --data-dir "$data" --listen "127.0.0.1:$port" \
    --jwt-secret "$secret" "${extra[@]}" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.1
  done
  taskset -c 1 /usr/bin/time -f 'bench cpu: %U s user, %S s sys, %e s wall' target/release/fanout --url "ws://127.0.0.1:$port/ws" --secret "$secret" "${fanout_args[@]}" >"$out" 2>&1 &
  bench=$!
  until grep -q 'connected and joined' "$out"; do
    kill -0 "$bench" 2>/dev/null || { cat "$out"; exit 1; }
    sleep 0.05
  done
  ticks0=$(cpu_ticks "$pid")
  wait "$bench"
  ticks1=$(cpu_ticks "$pid")
  kill -TERM "$pid"; wait "$pid" || true
  delivered=$(sed -n 's/^deliveries: \([0-9]*\) of.*/\1/p' "$out")
  sends=$(sed -n 's/^sends: \([0-9]*\) total.*/\1/p' "$out")
  awk -v m="$mode" -v t0="$ticks0" -v t1="$ticks1" -v hz="$tck" -v d="$delivered" -v s="$sends" \
    'BEGIN { cpu = (t1 - t0) / hz; printf "%-4s sends %7d  deliveries %9d  server cpu %6.2f s  %6.3f us/delivery\n", m, s, d, cpu, cpu / d * 1e6 }'
  grep -E '^(deliveries|gaps|send→deliver|bench cpu)' "$out" | sed 's/^/     /'
  rm -rf "$data" "$out"
}

echo "$(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg)  fanout ${fanout_args[*]}"
for i in $(seq "$runs"); do
  one_run on
  one_run off
done
echo "$(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg)"
