#!/usr/bin/env bash
# The standard viche-load runs of docs/benchmarks.md ("viche-load"), each
# against a fresh release `viche` pinned to core 0, the generator pinned to
# core 1. Writes OUT/NAME.json, OUT/NAME.svg and OUT/NAME.txt per run.
#
#   cargo build --release -p viche-gateway -p viche-load
#   loadtest/scripts/standard.sh OUT [fanout|sweep|connections|churn ...]
#
# The sweep raises the per-sender rate (the server's per-session send limit
# raised with it) until p99 passes 100 ms or anything is lost.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: standard.sh OUT [runs...]}
shift
runs=("$@")
if [ ${#runs[@]} -eq 0 ]; then runs=(fanout sweep connections churn); fi
mkdir -p "$out"
ulimit -n 20000
secret=benchsecret-0123456789
url=http://127.0.0.1:18181

server() { loadtest/scripts/server.sh "$@"; }
# Share of the machine's CPU time idle over 3 s, in percent.
idle_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 3; b=($(head -1 /proc/stat))
  local total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  echo $(( 100 * (b[4] - a[4]) / (total > 0 ? total : 1) ))
}
# Other work on the machine skews every figure: wait (at most
# QUIET_WAIT_S, default 600) until it is at least QUIET_PCT (default 90) % idle.
wait_quiet() {
  local deadline=$((SECONDS + ${QUIET_WAIT_S:-600})) idle
  while :; do
    idle=$(idle_pct)
    if [ "$idle" -ge "${QUIET_PCT:-90}" ] || [ $SECONDS -ge $deadline ]; then
      echo "machine ${idle}% idle before the run"
      return
    fi
  done
}
load() {
  local name=$1
  shift
  local quiet
  quiet=$(wait_quiet)
  echo "== $name: $(date -u '+%F %T UTC'), $quiet, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$out/$name.txt"
  taskset -c 1 target/release/viche-load "$@" --url "$url" --no-progress \
    --json "$out/$name.json" --plot "$out/$name.svg" 2>&1 | tee -a "$out/$name.txt"
}
p99_of() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["latency"]["latency"]["p99_ms"], r["loss"]["lost"] + r["loss"]["gaps"])' "$1"; }

for run in "${runs[@]}"; do
  case $run in
    fanout)
      pid=$(server)
      load fanout fanout --jwt-secret "$secret" --rooms 20 --members 100 --senders 5 --rate 2 --body-bytes 100 \
        --duration 30 --warmup 5
      kill "$pid"; wait "$pid" 2>/dev/null || true
      ;;
    sweep)
      pid=$(server --send-per-second 1000 --send-burst 1000)
      for rate in 2 4 6 8 12 16 24; do
        load "sweep-$rate" fanout --jwt-secret "$secret" --rooms 20 --members 100 --senders 5 --rate "$rate" \
          --body-bytes 100 --duration 15 --warmup 3
        read -r p99 lost < <(p99_of "$out/sweep-$rate.json")
        echo "rate $rate: p99 $p99 ms, lost+gaps $lost" | tee -a "$out/sweep.txt"
        if python3 -c "import sys; sys.exit(0 if float('$p99') > 100 or int('$lost') > 0 else 1)"; then break; fi
      done
      kill "$pid"; wait "$pid" 2>/dev/null || true
      ;;
    connections)
      pid=$(server)
      load connections connections --jwt-secret "$secret" --sessions 10000 --rooms 100 --duration 10 --warmup 5
      kill "$pid"; wait "$pid" 2>/dev/null || true
      ;;
    churn)
      pid=$(server)
      load churn churn --jwt-secret "$secret" --clients 5000 --rooms 100 --senders 1 --rate 2 --storm-every 5 \
        --storm-fraction 1 --backoff-ms 100 --backoff-max-ms 5000 --duration 30 --warmup 2 --drain 30
      kill "$pid"; wait "$pid" 2>/dev/null || true
      ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
done
