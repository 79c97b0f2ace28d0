#!/usr/bin/env bash
# Start a local Pact cluster on the embedded defaults (3 participant nodes
# holding 3 shards x 3 replicas on 127.0.0.1:7001-7003, and a coordinator
# group of 3 on 7004-7006; data under ${PACT_DATA:-./pact-data}), run
# transactions with the `txn` CLI, print the Raft status, and stop.
# With --keep, leave the cluster running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0
[ "${1:-}" = "--keep" ] && keep=1
data=${PACT_DATA:-./pact-data}

cargo build --bins --quiet
bin=target/debug
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

mkdir -p "$data"
for n in 1 2 3; do
  "$bin/participant" --node-id "$n" --data-dir "$data/node-$n" 2>>"$data/node-$n.log" &
  pids+=($!)
done
for n in 4 5 6; do
  "$bin/coordinator" --node-id "$n" --data-dir "$data/node-$n" 2>>"$data/node-$n.log" &
  pids+=($!)
done
echo "participants on 127.0.0.1:7001-7003, coordinators on 7004-7006 (logs in $data/node-*.log)"

# Wait until every shard and the coordinator group have a leader.
for _ in $(seq 1 150); do
  if [ "$("$bin/txn" status --json 2>/dev/null | grep -o '"role":"[a-z-]*leader"' | wc -l)" -ge 4 ]; then break; fi
  sleep 0.2
done

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
"$bin/txn" scan
"$bin/txn" del greeting
"$bin/txn" scan --json
"$bin/txn" status
set +x

if [ "$keep" = 1 ]; then
  echo "cluster running; Ctrl-C to stop (data stays in $data and is reused on the next start)"
  wait
fi
