#!/usr/bin/env bash
# A/B: one viche-load run against two builds of viche, alternately, in one
# invocation (so both meet the same machine), each against a fresh server
# from loadtest/scripts/server.sh (core 0; the generator on core 1). Writes
# OUT/{a,b}-N.json and prints the key figures of every run side by side.
#
#   loadtest/scripts/ab.sh OUT A_VICHE B_VICHE ROUNDS viche-load-args...
#   e.g. loadtest/scripts/ab.sh /tmp/ab /tmp/base/viche target/release/viche 2 \
#          fanout --jwt-secret benchsecret-0123456789 --rooms 20 --members 100 \
#          --senders 5 --rate 2 --body-bytes 100 --duration 30 --warmup 5
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: ab.sh OUT A_VICHE B_VICHE ROUNDS viche-load-args...}
a_bin=${2:?A_VICHE}
b_bin=${3:?B_VICHE}
rounds=${4:?ROUNDS}
shift 4
mkdir -p "$out"
ulimit -n 20000
for round in $(seq 1 "$rounds"); do
  for side in a b; do
    bin=$a_bin; [ "$side" = b ] && bin=$b_bin
    pid=$(VICHE_BIN="$bin" loadtest/scripts/server.sh)
    echo "== $side round $round: $bin, $(date -u '+%F %T UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    taskset -c 1 target/release/viche-load "$@" --url http://127.0.0.1:18181 --no-progress \
      --json "$out/$side-$round.json" >"$out/$side-$round.txt" 2>&1 || echo "(viche-load exited non-zero; see $out/$side-$round.txt)"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    sleep 1
  done
done
python3 - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "[ab]-*.json"))):
    r = json.load(open(path))
    lat = r["latency"].get("latency", {})
    s = r["server"]
    rows.append((os.path.basename(path)[:-5], r["rates"]["deliveries_per_s"], lat.get("p50_ms"), lat.get("p99_ms"),
                 lat.get("p999_ms"), s.get("cpu_us_per_delivery"), s.get("rss_per_session_bytes"),
                 r["loss"]["lost"] + r["loss"]["gaps"] + r["loss"]["duplicates"], len(r["problems"])))
def f(v, d=2):
    return "n/a" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
print("| run | deliveries/s | p50 ms | p99 ms | p99.9 ms | server µs/delivery | RSS B/session | lost+gaps+dups | problems |")
print("|---|---|---|---|---|---|---|---|---|")
for row in rows:
    print("| " + " | ".join([row[0], f(row[1], 0), f(row[2]), f(row[3]), f(row[4]), f(row[5]), f(row[6], 0), f(row[7]), f(row[8])]) + " |")
PY
