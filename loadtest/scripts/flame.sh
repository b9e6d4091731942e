#!/usr/bin/env bash
# A flame graph of a running server, and its top entries as text: what
# docs/benchmarks.md records ("Where the time goes"). Needs `perf` and
# inferno (`cargo install inferno`).
#
#   loadtest/scripts/flame.sh PID SECONDS OUT_PREFIX
#   e.g. loadtest/scripts/flame.sh "$(pgrep -f 'listen 127.0.0.1:18181')" 8 /tmp/flame-before
#
# Writes OUT_PREFIX.svg (the flame graph), OUT_PREFIX.folded (the stacks)
# and prints the share of samples under each of the top frames: the
# innermost frame of the server's own code (viche, redb, tokio ...) that
# each sample went through, so a syscall is charged to its caller.
set -euo pipefail
pid=${1:?usage: flame.sh PID SECONDS OUT_PREFIX}
seconds=${2:?SECONDS}
out=${3:?OUT_PREFIX}
perf record -F 999 -g --call-graph dwarf,16384 -p "$pid" -o "$out.perf" -- sleep "$seconds" >/dev/null 2>&1
perf script -i "$out.perf" 2>/dev/null | inferno-collapse-perf >"$out.folded"
inferno-flamegraph <"$out.folded" >"$out.svg"
python3 - "$out.folded" <<'PY'
import collections, re, sys
own = re.compile(r"viche|redb|fastwebsockets|hyper::|rmp_serde|metrics|tokio::")
by_frame, total = collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip().rpartition(" ")
    count = int(count)
    total += count
    frames = stack.split(";")
    inner = next((f for f in reversed(frames) if own.search(f)), frames[-1])
    by_frame[re.sub(r"::h[0-9a-f]{16}", "", inner)[:110]] += count
print(f"{total} in all (perf weight: CPU ns)")
for frame, count in by_frame.most_common(15):
    print(f"{100 * count / total:5.1f}%  {frame}")
PY
