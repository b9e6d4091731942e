#!/usr/bin/env bash
# Starts a loopback cluster for viche-load runs (docs/benchmarks.md,
# "A cluster on one machine"): a nats-server, FerretDB (the MongoDB stand-in;
# built by scripts/test.sh into target/tools/, or VICHE_FERRETDB_BIN) on a
# fresh data dir, and N release `viche` nodes on ports 18181, 18182, …
# sharing one database. Everything is pinned to core 0, so that the
# generator (taskset -c 1) has core 1. With N=1 the one node runs alone
# (no --cluster-nats) on the same FerretDB: the baseline.
# Extra flags pass through to every node. VICHE_BIN runs another build.
#
#   loadtest/scripts/cluster.sh N [viche flags...]
#
# Prints two lines: the --url list for viche-load, then the PIDs to stop
# (`kill` them): NATS, FerretDB, then the nodes.
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:?usage: cluster.sh N [viche flags...]}
shift
[ "$n" -ge 1 ] && [ "$n" -le 8 ] || { echo "N is 1 to 8" >&2; exit 1; }
bin=${VICHE_BIN:-target/release/viche}
ferretdb=${VICHE_FERRETDB_BIN:-target/tools/ferretdb}
nats=$(command -v nats-server || echo /usr/sbin/nats-server)
dir=$(mktemp -d /tmp/viche-cluster-XXXXXX)
ulimit -n 20000

wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1; see $dir" >&2
  exit 1
}

taskset -c 0 "$nats" -a 127.0.0.1 -p 14222 >"$dir/nats.log" 2>&1 &
pids=($!)
mkdir -p "$dir/ferret"
taskset -c 0 "$ferretdb" -listen-addr 127.0.0.1:27217 -sqlite-url "file:$dir/ferret/" >"$dir/ferret.log" 2>&1 &
pids+=($!)
wait_port 14222
wait_port 27217

urls=()
for i in $(seq 0 $((n - 1))); do
  port=$((18181 + i))
  cluster=()
  if [ "$n" -gt 1 ]; then
    cluster=(--cluster-nats nats://127.0.0.1:14222 --node-id "n$i" --cluster-prefix bench)
  fi
  RUST_LOG=warn taskset -c 0 "$bin" --listen "127.0.0.1:$port" --data-dir "$dir/node$i" \
    --mongo-uri mongodb://127.0.0.1:27217/ --mongo-db bench \
    --jwt-secret benchsecret-0123456789 --max-connections-per-ip 1000000 \
    "${cluster[@]}" "$@" >"$dir/node$i.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.05
  done
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$dir/node$i.log" >&2; exit 1; }
  urls+=("http://127.0.0.1:$port")
done
(IFS=,; echo "${urls[*]}")
echo "${pids[*]}"
