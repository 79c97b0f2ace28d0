#!/usr/bin/env bash
# Paired rounds of the transfer workload on two (or more) builds, with the
# Raft leaders pinned, so that where the leaders sit is the same for every
# build.
#
# Which leaders share a node changes with every start of a playground
# (elections, then the leader balancer), and a transfer's cost depends on
# it (a coordinator reaches a shard leader on its own node in process), so
# A/Bs on fresh playgrounds swing by a third between starts. Here each
# playground starts from one config with the balancer off
# (`balance_leaders_ms = 0`), and `txn admin leader transfer` puts the
# leaders where PIN says before any load. For each round and each build
# folder in BUILDS (each holding release `txn`, `bench` and `pact`):
# transfers among ACCOUNTS accounts for DUR seconds, for each scope and
# client count in RUNS (by default 16 clients on any shards, then one
# client's cross-shard transfers); prints throughput,
# p50, p99 and the server CPU per transfer (the 3 `pact` processes, from
# /proc). Builds alternate within a round, so drift of the machine hits
# both alike; compare medians.
#
# Runs named `ycsb-a` are YCSB-A on RECORDS records instead (closed
# loop), `ycsb-a@OPS` the same open loop at OPS operations per second
# (latencies from the intended start times); they print throughput,
# the updates' p50, p99 and p99.9, and the server CPU per operation.
#
# Usage: BUILDS="/tmp/before /tmp/after" bash bench/ab-pinned.sh
# Settings: ROUNDS=3 DUR=10 ACCOUNTS=1000 RECORDS=10000 PORT=28001
#   PIN="coord 4 1,shard 1 1,shard 2 2,shard 3 3" (group kind, id, node)
#   RUNS="any:16 cross-shard:1" (transfer scope, or ycsb-a[@OPS], then
#   :clients; in order)
set -euo pipefail
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-10}
ACCOUNTS=${ACCOUNTS:-1000}
RECORDS=${RECORDS:-10000}
PORT=${PORT:-28001}
PIN=${PIN:-"coord 4 1,shard 1 1,shard 2 2,shard 3 3"}
RUNS=${RUNS:-"any:16 cross-shard:1"}
[ -n "${BUILDS:-}" ] || { echo "ab-pinned: set BUILDS to build folders" >&2; exit 2; }
command -v python3 >/dev/null || { echo "ab-pinned: python3 is needed" >&2; exit 2; }
hz=$(getconf CLK_TCK)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ab-pinned.XXXXXX")
pg=
trap '[ -n "$pg" ] && kill "$pg" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

cpu_ticks() { # PIDS...: user+system ticks of these processes
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}

start() { # BUILD DIR: a playground from DIR's config; sets pg
  mkdir -p "$2"
  "$1/txn" playground --dir "$2" --port "$PORT" >"$2/pg.out" 2>&1 &
  pg=$!
  for _ in $(seq 1 300); do grep -qs '^ready' "$2/pg.out" && return 0; sleep 0.2; done
  cat "$2/pg.out" >&2
  exit 1
}

stop() {
  kill "$pg"
  wait "$pg" 2>/dev/null || true
  pg=
}

# The config: the first build's playground writes it; the balancer goes off.
first=${BUILDS%% *}
start "$first" "$tmp/seed"
stop
sed -i 's/^balance_leaders_ms = .*/balance_leaders_ms = 0/' "$tmp/seed/cluster.toml"
grep -q '^balance_leaders_ms = 0$' "$tmp/seed/cluster.toml" \
  || { echo "ab-pinned: no balance_leaders_ms in the playground's config" >&2; exit 1; }

report() { # NAME JSON TICKS
  python3 - "$1" "$2" "$3" "$hz" <<'PY'
import json, sys
name, path, ticks, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = json.load(open(path))
if "TXN" not in r["ops"]:
    u = r["ops"]["UPDATE"]["latency_us"]
    n = sum(o["operations"] for o in r["ops"].values())
    print("%-34s %7.0f ops/s  UPDATE p50 %6.2f ms  p99 %6.2f ms  p99.9 %6.2f ms  server CPU %.3f ms per op"
          % (name, r["throughput_ops_sec"], u["p50"] / 1000, u["p99"] / 1000,
             u["p999"] / 1000, ticks * 1000 / hz / max(n, 1)))
    sys.exit(0)
o = r["ops"]["TXN"]
n = o["operations"]
print("%-34s %7.0f txn/s  p50 %6.2f ms  p99 %6.2f ms  server CPU %.3f ms per txn"
      % (name, o["throughput_ops_sec"], o["latency_us"]["p50"] / 1000,
         o["latency_us"]["p99"] / 1000, ticks * 1000 / hz / max(n, 1)))
PY
}

for r in $(seq 1 "$ROUNDS"); do
  for b in $BUILDS; do
    d="$tmp/r$r-$(basename "$b")"
    mkdir -p "$d"
    cp "$tmp/seed/cluster.toml" "$d/"
    echo "round $r: $(basename "$b")" >&2
    start "$b" "$d"
    IFS=',' read -ra pins <<<"$PIN"
    for p in "${pins[@]}"; do
      # shellcheck disable=SC2086
      "$b/txn" --config "$d/cluster.toml" admin leader transfer $p >/dev/null \
        || { echo "ab-pinned: leader transfer $p failed" >&2; exit 1; }
    done
    # shellcheck disable=SC2207
    pids=($(pgrep -P "$pg" -x pact))
    args=(--backend pact --config "$d/cluster.toml" --seed 42 --json)
    "$b/bench" load --workload txn --recordcount "$ACCOUNTS" --threads 16 "${args[@]}" >/dev/null
    case " $RUNS" in
    *" ycsb-"*)
      "$b/bench" load --workload a --recordcount "$RECORDS" --threads 16 "${args[@]}" >/dev/null
      ;;
    esac
    for run in $RUNS; do
      scope=${run%%:*}
      threads=${run##*:}
      c0=$(cpu_ticks "${pids[@]}")
      case $scope in
      ycsb-a)
        "$b/bench" run --workload a --recordcount "$RECORDS" --threads "$threads" \
          --duration "$DUR" "${args[@]}" >"$d/$scope.json"
        ;;
      ycsb-a@*)
        "$b/bench" run --workload a --recordcount "$RECORDS" --threads "$threads" \
          --target "${scope#ycsb-a@}" --duration "$DUR" "${args[@]}" >"$d/$scope.json"
        ;;
      *)
        "$b/bench" run --workload txn --recordcount "$ACCOUNTS" --txn-keys 2 --txn-scope "$scope" \
          --threads "$threads" --duration "$DUR" "${args[@]}" >"$d/$scope.json"
        ;;
      esac
      c1=$(cpu_ticks "${pids[@]}")
      report "round $r $(basename "$b") $scope x$threads" "$d/$scope.json" $((c1 - c0))
    done
    stop
  done
done
