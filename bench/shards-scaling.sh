#!/usr/bin/env bash
# Per-shard overhead: the same total load on 1, 3 and 6 shards.
#
# For each shard count, starts the Pact playground (3 `pact` processes,
# every shard on all three), measures its idle CPU for IDLE seconds (Raft
# heartbeats, timers), loads RECORDS YCSB records, runs YCSB-A open loop
# at TARGET ops/s for DURATION seconds, and reads the server processes'
# CPU time from /proc before and after. Prints a Markdown table: idle CPU
# (% of all cores), achieved ops/s, failed operations, p50/p99 (from the
# intended start times) and server CPU per operation. With the load fixed, a per-shard
# cost shows as idle CPU and CPU per operation growing with the shards.
#
# Usage: bash bench/shards-scaling.sh
# Settings (environment):
#   SHARDS="1 3 6"  TARGET=800  DURATION=15  IDLE=10  RECORDS=10000
#   THREADS=16  SEED=42  PACT_PORT=27101  NO_BUILD=1 (skip cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
SHARDS=${SHARDS:-"1 3 6"}
TARGET=${TARGET:-800}
DURATION=${DURATION:-15}
IDLE=${IDLE:-10}
RECORDS=${RECORDS:-10000}
THREADS=${THREADS:-16}
SEED=${SEED:-42}
PACT_PORT=${PACT_PORT:-27101}

die() { printf 'shards-scaling: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
bin=${CARGO_TARGET_DIR:-$root/target}/release
if [ "${NO_BUILD:-}" != 1 ]; then
  printf '== building release binaries\n' >&2
  cargo build --release --quiet --bins -p pact-cli -p pact-server -p pact-bench
fi
for b in txn pact bench; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing; run without NO_BUILD=1"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pact-shards.XXXXXX")
pg=""
stop() {
  if [ -n "$pg" ]; then
    kill -INT "$pg" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pg" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pg" 2>/dev/null || true
    pg=""
  fi
}
trap 'stop; rm -rf "$tmp"' EXIT

ticks() { # PIDS...: utime + stime of all, in clock ticks
  local t=0 p f
  for p in "$@"; do
    f=$(sed 's/.*) //' "/proc/$p/stat") || continue
    set -- $f
    t=$((t + ${12} + ${13}))
  done
  echo "$t"
}
hz=$(getconf CLK_TCK)
cores=$(nproc)

rows=()
for n in $SHARDS; do
  dir=$tmp/s$n
  mkdir -p "$dir"
  "$bin/txn" playground --dir "$dir" --port "$PACT_PORT" --shards "$n" >"$dir/out" 2>&1 &
  pg=$!
  wait_playground "$dir/out" "$pg"
  pids=$(pgrep -P "$pg" | tr '\n' ' ')
  [ -n "$pids" ] || die "no server processes found"
  # shellcheck disable=SC2086
  t0=$(ticks $pids); sleep "$IDLE"; t1=$(ticks $pids)
  idle=$(python3 -c "print(f'{($t1 - $t0) / $hz / $IDLE / $cores * 100:.1f}')")
  args=(--backend pact --config "$dir/cluster.toml" --threads "$THREADS" --seed "$SEED")
  # A record that failed to load would make reads of it fail: stop here.
  "$bin/bench" load --workload a --recordcount "$RECORDS" "${args[@]}" >/dev/null 2>"$dir/load.err" ||
    { tail -5 "$dir/load.err" >&2; die "load failed on $n shards"; }
  # shellcheck disable=SC2086
  t0=$(ticks $pids)
  # Failed operations (exit 3) are counted in the table, not fatal.
  "$bin/bench" run --workload a --recordcount "$RECORDS" --duration "$DURATION" \
    --target "$TARGET" --json --allow-failures "${args[@]}" >"$dir/run.json" 2>"$dir/run.err" ||
    { cat "$dir/run.err" >&2; die "run failed on $n shards"; }
  # shellcheck disable=SC2086
  t1=$(ticks $pids)
  rows+=("$(python3 - "$dir/run.json" "$n" "$idle" "$((t1 - t0))" "$hz" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n, idle, ticks, hz = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ops = r["operations"]
def lat(q):
    xs = [o["latency_us"][q] for o in r["ops"].values() if o.get("latency_us")]
    return max(xs) / 1000 if xs else 0.0
cpu = ticks / hz * 1000 / ops if ops else 0.0
print(f"| {n} | {idle}% | {r['throughput_ops_sec']:,.0f} | {r['failed']} | {lat('p50'):.2f} ms | {lat('p99'):.2f} ms | {cpu:.2f} ms |")
PY
)")
  stop
done

echo
echo "Pact $(git rev-parse --short HEAD 2>/dev/null || echo unknown); ${cores} cores; YCSB-A open loop at ${TARGET} ops/s, ${DURATION} s, ${RECORDS} records, ${THREADS} threads; idle over ${IDLE} s"
echo
echo "| shards | idle CPU (% of all cores) | achieved ops/s | failed ops | p50 (worst op) | p99 (worst op) | server CPU per op |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
