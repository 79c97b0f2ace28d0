#!/usr/bin/env bash
# Overload: does Pact shed load with OVERLOADED instead of growing memory
# and latency without bound?
#
# Starts the Pact playground (3 `pact` processes, default [limits]), loads
# RECORDS YCSB records, measures the closed-loop YCSB-A peak (THREADS
# client tasks, PEAK_DURATION seconds), then offers FACTOR times that peak
# open loop for DURATION seconds: every operation starts at its scheduled
# time whatever the earlier ones do (bench --max-in-flight), spread over
# CLIENTS independent clients (bench --clients), so the servers see the
# whole offered load. Operations refused with OVERLOADED (by default at
# the first refusal, OVERLOAD_RETRY_MS=0; otherwise after the client's
# retries) are counted apart from failures. Prints the peak, then for the overload run: the achieved
# (admitted) throughput, the refused count and rate, failures, admitted
# p50/p99/max from the scheduled start times, and each server's start and
# peak RSS.
#
# Usage: bash bench/overload.sh
# Settings (environment):
#   FACTOR=3  PEAK_DURATION=15  DURATION=30  RECORDS=10000  THREADS=16
#   MAX_IN_FLIGHT=20000  CLIENTS=16  RETRY_FOR=1  OVERLOAD_RETRY_MS=0
#   SEED=42  PACT_PORT=27201
#   NO_BUILD=1 (skip cargo build)  KEEP_TMP=1 (keep data, logs, reports)
#   BIN_DIR=DIR (binaries from DIR instead of target/release, with NO_BUILD=1)
#   LIMITS="max_in_flight_requests=128 max_open_txns=512" (config settings
#     of [limits] or [storage] to use instead of the defaults: the
#     playground is started once, stopped, its cluster.toml edited, and
#     started again)
# Quick check: PEAK_DURATION=3 DURATION=5 RECORDS=2000 bash bench/overload.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
FACTOR=${FACTOR:-3}
PEAK_DURATION=${PEAK_DURATION:-15}
DURATION=${DURATION:-30}
RECORDS=${RECORDS:-10000}
THREADS=${THREADS:-16}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-20000}
# One connection carries at most 256 requests at once: many clients, so
# that the servers see the load rather than one connection's queue.
CLIENTS=${CLIENTS:-16}
# 0: an operation refused with OVERLOADED counts as refused at once (no
# client-side retry), so the admitted latencies are the servers' own.
OVERLOAD_RETRY_MS=${OVERLOAD_RETRY_MS:-0}
RETRY_FOR=${RETRY_FOR:-1}
SEED=${SEED:-42}
PACT_PORT=${PACT_PORT:-27201}

die() { printf 'overload: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
log() { printf '== %s\n' "$*" >&2; }
command -v python3 >/dev/null || die "python3 is needed (to read the JSON reports)"
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}
if [ "${NO_BUILD:-}" != 1 ]; then
  log "building release binaries"
  cargo build --release --quiet --bins -p pact-cli -p pact-server -p pact-bench
fi
for b in txn pact bench; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing; run without NO_BUILD=1"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pact-overload.XXXXXX")
pg=""
stop() {
  if [ -n "$pg" ]; then
    kill -INT "$pg" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pg" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pg" 2>/dev/null || true
    wait "$pg" 2>/dev/null || true
    pg=""
  fi
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop
  if [ "${KEEP_TMP:-}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() {
  "$bin/txn" playground --dir "$tmp/pg" --port "$PACT_PORT" >"$tmp/playground.out" 2>&1 &
  pg=$!
  wait_playground "$tmp/playground.out" "$pg"
}
log "starting the Pact playground (ports from $PACT_PORT)"
start
if [ -n "${LIMITS:-}" ]; then
  # The config names every setting (defaults included), one per line.
  stop
  for kv in $LIMITS; do
    k=${kv%%=*}
    v=${kv#*=}
    grep -q "^$k = " "$tmp/pg/cluster.toml" || die "LIMITS: no setting $k in the config"
    sed -i "s/^$k = .*/$k = $v/" "$tmp/pg/cluster.toml"
  done
  log "restarting with $LIMITS"
  start
fi

args=(--backend pact --config "$tmp/pg/cluster.toml" --seed "$SEED")
log "loading $RECORDS records"
"$bin/bench" load --workload a --recordcount "$RECORDS" --threads "$THREADS" "${args[@]}" \
  >/dev/null 2>"$tmp/load.err" || { tail -5 "$tmp/load.err" >&2; die "load failed"; }

log "closed-loop peak: YCSB-A, $THREADS threads, $PEAK_DURATION s"
"$bin/bench" run --workload a --recordcount "$RECORDS" --threads "$THREADS" \
  --duration "$PEAK_DURATION" --json --allow-failures "${args[@]}" \
  >"$tmp/peak.json" 2>"$tmp/peak.err" || { cat "$tmp/peak.err" >&2; die "peak run failed"; }
peak=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["throughput_ops_sec"])' "$tmp/peak.json")
target=$(python3 -c "print(max(1, int($peak * $FACTOR)))")

log "open loop at ${FACTOR}x the peak: $target ops/s for $DURATION s (at most $MAX_IN_FLIGHT in flight)"
"$bin/bench" run --workload a --recordcount "$RECORDS" --duration "$DURATION" \
  --target "$target" --max-in-flight "$MAX_IN_FLIGHT" --clients "$CLIENTS" --retry-for "$RETRY_FOR" \
  --overload-retry-ms "$OVERLOAD_RETRY_MS" \
  --watch-rss pact --json --allow-failures "${args[@]}" \
  >"$tmp/overload.json" 2>"$tmp/overload.err" || { cat "$tmp/overload.err" >&2; die "overload run failed"; }

python3 - "$tmp/peak.json" "$tmp/overload.json" "$FACTOR" <<'PY'
import json, sys
peak, run, factor = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
a = run.get("admitted_latency_us") or {}
ms = lambda us: f"{us / 1000:.1f} ms" if us is not None else "-"
mib = lambda b: f"{b / 2**20:.0f} MiB" if b is not None else "-"
print()
print(f"closed-loop peak (YCSB-A, {peak['threads']} threads): {peak['throughput_ops_sec']:,.0f} ops/s, "
      f"{peak['failed']} failed")
print(f"open loop at {factor}x: target {run['params']['target_ops_sec']:,.0f} ops/s, "
      f"{run['runtime_ms'] / 1000:.1f} s")
print()
print("| admitted ops/s | overloaded | overloaded rate | not started (bench cap) | failed | admitted p50 | admitted p99 | admitted max |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
print(f"| {run['throughput_ops_sec']:,.0f} | {run['overloaded']} | {100 * run['overloaded_rate']:.1f}% | "
      f"{run['not_started']} | {run['failed']} | {ms(a.get('p50'))} | {ms(a.get('p99'))} | {ms(a.get('max'))} |")
print()
print("| server | node | start RSS | peak RSS | end RSS |")
print("|---|---:|---:|---:|---:|")
for p in run.get("memory") or []:
    print(f"| {p['name']} (pid {p['pid']}) | {p.get('node') or '-'} | {mib(p['start_rss_bytes'])} | "
          f"{mib(p['peak_rss_bytes'])} | {mib(p['end_rss_bytes'])} |")
PY
if [ "${KEEP_TMP:-}" = 1 ]; then log "reports in $tmp (peak.json, overload.json)"; fi
