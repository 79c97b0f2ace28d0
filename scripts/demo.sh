#!/usr/bin/env bash
# The main job on embedded defaults: start `txn playground` (3 nodes on
# 127.0.0.1:7001-7003, each one `pact` process with a replica of 3 shards
# and of the coordinator group; data under ${PACT_DATA:-./pact-data}), run
# transactions with the `txn` CLI, print the Raft status, and stop it.
# With --keep, leave the cluster running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0
[ "${1:-}" = "--keep" ] && keep=1
data=${PACT_DATA:-./pact-data}

cargo build --bins --quiet
bin=target/debug
mkdir -p "$data"
out="$data/playground.out"
"$bin/txn" playground --dir "$data" >"$out" 2>&1 &
pg=$!
trap 'kill -INT $pg 2>/dev/null || true; wait $pg 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 300); do
  grep -q '^ready' "$out" && break
  kill -0 $pg 2>/dev/null || { cat "$out"; exit 1; }
  sleep 0.2
done
cat "$out"
export PACT_CONFIG="$data/cluster.toml"

set -x
"$bin/txn" put greeting "hello, pact"
"$bin/txn" get greeting
# A cross-shard transaction: both accounts (on different shards) or neither.
"$bin/txn" exec put alice 100 put bob 50
# Compare-and-set: only if alice still has 100, move 30 to bob.
"$bin/txn" exec --guard equals:alice=100 put alice 70 put bob 80 else get alice
"$bin/txn" exec --guard equals:alice=100 put alice 40 put bob 110 else get alice
"$bin/txn" incr visits
"$bin/txn" incr visits 10
printf 'BEGIN\nGET alice\nPUT alice 60\nINCR bob 10\nCOMMIT\nSCAN\n' | "$bin/txn" shell
"$bin/txn" del greeting
"$bin/txn" scan --json
"$bin/txn" status
set +x

if [ "$keep" = 1 ]; then
  echo "cluster running; Ctrl-C to stop (data stays in $data and is reused on the next start)"
  wait $pg
fi
