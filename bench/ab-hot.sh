#!/usr/bin/env bash
# Paired rounds of the contention workload on two (or more) builds.
#
# For each round and each build folder in BUILDS (each holding release
# `txn`, `bench` and `pact` binaries): a fresh `txn playground`, HOT
# accounts loaded, transfers among them with THREADS clients for DUR
# seconds; prints throughput, latency, restarts, the server CPU per
# transfer (the 3 `pact` processes, from /proc) and the nodes' lock
# counters. Builds alternate within a round, so drift of the machine hits
# both alike; compare medians.
#
# Usage: BUILDS="/tmp/before /tmp/after" bash bench/ab-hot.sh
# A build may carry config settings, KEY=VALUE after @, comma-separated
# (one build, two settings: BUILDS="/tmp/b@wound_grace_ms=0 /tmp/b"); each
# KEY must be on exactly one line of the config the playground writes.
# Settings: ROUNDS=3 DUR=15 HOT=10 THREADS=16 PORT=28001
set -euo pipefail
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-15}
HOT=${HOT:-10}
THREADS=${THREADS:-16}
PORT=${PORT:-28001}
[ -n "${BUILDS:-}" ] || { echo "ab-hot: set BUILDS to build folders" >&2; exit 2; }
command -v python3 >/dev/null || { echo "ab-hot: python3 is needed" >&2; exit 2; }
hz=$(getconf CLK_TCK)

cpu_ticks() { # PIDS...: user+system ticks of these processes
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}

wait_ready() { # DIR PID
  for _ in $(seq 1 300); do grep -q '^ready' "$1/pg.out" && break; sleep 0.2; done
  grep -q '^ready' "$1/pg.out" || { cat "$1/pg.out" >&2; kill "$2"; exit 1; }
}

for r in $(seq 1 "$ROUNDS"); do
  for entry in $BUILDS; do
    b=${entry%%@*}
    d=$(mktemp -d "${TMPDIR:-/tmp}/ab-hot.XXXXXX")
    if [ "$entry" != "$b" ]; then
      # The playground's own config first, then the settings on it.
      "$b/txn" playground --dir "$d" --port "$PORT" >"$d/pg.out" 2>&1 &
      pg=$!
      wait_ready "$d" "$pg"
      kill -INT "$pg"
      wait "$pg" 2>/dev/null || true
      find "$d" -mindepth 1 -maxdepth 1 ! -name cluster.toml -exec rm -rf {} +
      python3 - "$d/cluster.toml" "${entry#*@}" <<'PY' || exit 2
import sys
path, sets = sys.argv[1], sys.argv[2]
lines = open(path).read().split("\n")
for kv in filter(None, sets.split(",")):
    k, _, v = kv.partition("=")
    at = [i for i, l in enumerate(lines) if l.startswith(k + " = ")]
    if len(at) != 1:
        sys.exit(f"ab-hot: {k} is on {len(at)} lines of the playground's config, not 1")
    lines[at[0]] = f"{k} = {v}"
open(path, "w").write("\n".join(lines))
PY
    fi
    "$b/txn" playground --dir "$d" --port "$PORT" >"$d/pg.out" 2>&1 &
    pg=$!
    wait_ready "$d" "$pg"
    # shellcheck disable=SC2207
    pids=($(pgrep -P "$pg" -x pact))
    args=(--backend pact --config "$d/cluster.toml" --seed 42 --json)
    "$b/bench" load --workload txn --recordcount "$HOT" "${args[@]}" >/dev/null
    c0=$(cpu_ticks "${pids[@]}")
    "$b/bench" run --workload txn --recordcount "$HOT" --txn-keys 2 --duration "$DUR" \
      --threads "$THREADS" "${args[@]}" >"$d/hot.json"
    c1=$(cpu_ticks "${pids[@]}")
    locks=$(for i in 10 11 12; do curl -s "127.0.0.1:$((PORT + i))/metrics" || true; done |
      awk '/^pact_lock_waits_total/ {w += $2} /^pact_lock_wakeups_total/ {k += $2}
           END {printf "lock waits %d, wake-ups %d", w, k}')
    python3 - "$d/hot.json" "$r" "$entry" "$((c1 - c0))" "$hz" "$locks" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
op = d["ops"]["TXN"]
n = d["operations"]
cpu_ms = int(sys.argv[4]) * 1000 / int(sys.argv[5]) / max(n, 1)
print(f"round {sys.argv[2]} {sys.argv[3]}: {d['throughput_ops_sec']:.0f} txn/s, "
      f"p50 {op['latency_us']['p50'] / 1000:.1f} ms, p99 {op['latency_us']['p99'] / 1000:.1f} ms, "
      f"restarts {op.get('retries', 0)}, failed {d['failed']}, "
      f"server CPU {cpu_ms:.2f} ms/txn, {sys.argv[6]}")
PY
    kill -INT "$pg"
    wait "$pg" 2>/dev/null || true
    rm -rf "$d"
  done
done
