#!/usr/bin/env bash
# The whole test suite, on a machine with Rust and Go:
#   0. the gates: `cargo fmt --check` and clippy with -D warnings;
#   1. every crate's tests, the end-to-end suite on the embedded store, and
#      the MongoDB-specific tests, against FerretDB started here;
#   2. the end-to-end suite again, with every test server on MongoDB.
# FerretDB (a MongoDB-wire-compatible database on SQLite) is built from the
# Go module proxy into target/tools/ on first use; see tools/ferretdb/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Failpoints (engine/src/faults.rs) are compiled in for the tests, never
# into a normal build; every cargo command below uses the same features, so
# nothing is built twice.
features=(--features viche-gateway/failpoints)

# A clean clone gains nothing from incremental compilation, and its cache
# was 8.5 GB of a 22 GB target directory: off, unless the caller says.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== gates: formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings

ferretdb_bin=${VICHE_FERRETDB_BIN:-$root/target/tools/ferretdb}
if [ ! -x "$ferretdb_bin" ]; then
  echo "== building FerretDB 1.24.2 into $ferretdb_bin"
  (cd tools/ferretdb && go build -o "$ferretdb_bin" .)
fi

ferret_dir=$(mktemp -d)
ferret_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$ferretdb_bin" -listen-addr "127.0.0.1:$ferret_port" -sqlite-url "file:$ferret_dir/" 2>"$ferret_dir/ferretdb.log" &
ferret_pid=$!
cleanup() {
  kill "$ferret_pid" 2>/dev/null || true
  wait "$ferret_pid" 2>/dev/null || true
  rm -rf "$ferret_dir"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$ferret_port") 2>/dev/null && break
  sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$ferret_port") 2>/dev/null || { echo "FerretDB did not start:"; cat "$ferret_dir/ferretdb.log"; exit 1; }

export VICHE_TEST_MONGO_URI="mongodb://127.0.0.1:$ferret_port/"
export VICHE_FERRETDB_BIN="$ferretdb_bin"

echo "== pass 1: all tests (end-to-end on the embedded store; MongoDB-specific tests on FerretDB)"
cargo test --workspace --locked "${features[@]}"

echo "== pass 2: the end-to-end suite with every server on MongoDB (FerretDB)"
# Its test targets: every test binary of the gateway (gateway/tests/NAME.rs
# or gateway/tests/NAME/main.rs; today the one binary `e2e`) except the
# MongoDB-only, Prometheus and cluster tests, which ran in pass 1 (the
# cluster's servers are on MongoDB there already). Chosen with
# --workspace so that features resolve as in pass 1 and nothing is rebuilt.
e2e=()
for f in gateway/tests/*.rs gateway/tests/*/main.rs; do
  [ -e "$f" ] || continue
  case "$f" in
    */main.rs) name=$(basename "$(dirname "$f")") ;;
    *) name=$(basename "$f" .rs) ;;
  esac
  case "$name" in mongo | prometheus | cluster) ;; *) e2e+=(--test "$name") ;; esac
done
[ "${#e2e[@]}" -gt 0 ] || { echo "no end-to-end test target found under gateway/tests"; exit 1; }
VICHE_TEST_STORE=mongo cargo test --workspace --locked "${features[@]}" "${e2e[@]}"

echo "== pass 3: the web client (Vitest, committed dist up to date, browser end-to-end)"
(
  cd web
  npm ci --no-audit --no-fund
  npm test
  npm run check-dist
  npm run e2e
)
