#!/usr/bin/env bash
# Start a local 3-node Pact cluster on the embedded defaults (3 shards x 3
# replicas on 127.0.0.1:7001-7003, data under ${PACT_DATA:-./pact-data}),
# run a few operations with the `txn` CLI, print the Raft status, and stop.
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

for n in 1 2 3; do
  mkdir -p "$data"
  "$bin/participant" --node-id "$n" --data-dir "$data/node-$n" 2>>"$data/node-$n.log" &
  pids+=($!)
done
echo "participants started: 127.0.0.1:7001-7003 (logs in $data/node-*.log)"

# Wait until every shard has a leader.
for _ in $(seq 1 100); do
  if [ "$("$bin/txn" status --json 2>/dev/null | grep -o '"role":"leader"' | wc -l)" -ge 3 ]; then break; fi
  sleep 0.2
done

set -x
"$bin/txn" put greeting "hello, pact"
"$bin/txn" get greeting
"$bin/txn" put alice 100
"$bin/txn" put bob 50
"$bin/txn" scan
"$bin/txn" del bob
"$bin/txn" scan --json
"$bin/txn" status
set +x

if [ "$keep" = 1 ]; then
  echo "cluster running; Ctrl-C to stop (data stays in $data and is reused on the next start)"
  wait
fi
