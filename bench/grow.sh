#!/usr/bin/env bash
# Grow a running 3-node cluster to 4 under a transaction load: how long
# each step takes and whether any operation fails.
#
# Starts 3 `pact` processes on 127.0.0.1 from the playground's config (3
# shards, one coordinator group), runs `bench run --workload txn`
# (transfers, THREADS threads, DURATION s), and GROW_AT s into the run adds
# node 4, which the config does not list (`txn admin member add 4 ...`),
# starts it with only `--endpoints` of node 1, splits shard 1 in two
# (`txn admin shard split 1`: the new shard takes half of shard 1's ring
# share, on the same nodes), moves the new shard's replica from node 3 to
# node 4 (`txn admin replica move NEW 3 4`) and hands it the new shard's
# leadership (`txn admin leader transfer shard NEW 4`). Prints each step's
# time, the failed operations, and the medians of the per-second
# throughput before, during and after.
#
# With SHRINK_AT (seconds into the run, after the growing is done) it
# shrinks back under the same load: merges the new shard into shard 1
# (`txn admin shard merge NEW --into 1`, which first moves the new shard's
# replicas back onto shard 1's nodes), waits until the metadata group
# retires the merged shard by itself (the config's record retention is
# cut to 5 s and `retire_merged_secs` to 2 s so that this takes seconds,
# not the default 10 minutes), removes node 4 (`txn admin member remove
# 4`, refused while it still holds a replica) and stops it.
#
# Usage: bash bench/grow.sh
# Settings (environment):
#   THREADS=16  DURATION=60  GROW_AT=15  RECORDS=1000 (accounts, or records)
#   SHRINK_AT=0 (off; e.g. DURATION=90 SHRINK_AT=45)
#   WORKLOAD=txn (transfers; or a YCSB core workload: a, b, c, d, f)
#   PACT_PORT=27601  PROFILE=release (or debug)  NO_BUILD=1 (skip cargo build)
#   KEEP=1 (keep the cluster's directory; its path is printed)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
die() { printf 'grow: %s\n' "$*" >&2; exit 1; }
[ $# -eq 0 ] || die "usage: bash bench/grow.sh (settings in the environment)"
THREADS=${THREADS:-16}
DURATION=${DURATION:-60}
GROW_AT=${GROW_AT:-15}
SHRINK_AT=${SHRINK_AT:-0}
RECORDS=${RECORDS:-1000}
WORKLOAD=${WORKLOAD:-txn}
[[ $WORKLOAD =~ ^(txn|a|b|c|d|f)$ ]] || die "WORKLOAD must be txn, a, b, c, d or f, got '$WORKLOAD'"
PACT_PORT=${PACT_PORT:-27601}
PROFILE=${PROFILE:-release}
for v in THREADS DURATION GROW_AT SHRINK_AT RECORDS PACT_PORT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
[ "$GROW_AT" -lt "$DURATION" ] || die "GROW_AT ($GROW_AT) must be before the end of the run (DURATION $DURATION)"
if [ "$SHRINK_AT" -gt 0 ]; then
  [ "$SHRINK_AT" -gt "$GROW_AT" ] && [ "$SHRINK_AT" -lt "$DURATION" ] \
    || die "SHRINK_AT ($SHRINK_AT) must come after GROW_AT ($GROW_AT) and before the end of the run (DURATION $DURATION)"
fi

bin=${CARGO_TARGET_DIR:-$root/target}/$PROFILE
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
build_servers "$bin" "$PROFILE"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pact-grow.XXXXXX")
declare -A pids=()
pg=""
trap stop_cluster EXIT

# The playground writes the config (3 combined nodes); the nodes are run
# here so that a fourth can join.
"$bin/txn" playground --dir "$tmp" --port "$PACT_PORT" >"$tmp/playground.out" 2>&1 &
pg=$!
wait_playground "$tmp/playground.out" "$pg"
kill -INT "$pg"; wait "$pg" 2>/dev/null || true; pg=""
rm -rf "$tmp"/node-*
cfg=$tmp/cluster.toml
grep -q '^id = 4$' "$cfg" && die "the playground's config lists a node 4"
if [ "$SHRINK_AT" -gt 0 ]; then
  # Records expire in seconds, and the metadata group looks every 2 s,
  # so the merged shard retires within the run.
  python3 - "$cfg" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
for key, value in (("record_retention_s", 5), ("gc_interval_ms", 500), ("retire_merged_secs", 2)):
    pattern = re.compile(r"^%s = .*$" % key, re.M)
    if pattern.search(text):
        text = pattern.sub("%s = %d" % (key, value), text)
    else:
        section = "[raft]" if key == "retire_merged_secs" else "[transactions]"
        assert section in text, section
        text = text.replace(section, "%s\n%s = %d" % (section, key, value), 1)
open(path, "w").write(text)
PY
fi

start() { # NODE [ARGS...]: with the config file unless ARGS say otherwise
  local n=$1; shift
  [ $# -gt 0 ] || set -- --config "$cfg"
  "$bin/pact" "$@" --node-id "$n" --data-dir "$tmp/node-$n" >>"$tmp/node-$n.log" 2>&1 &
  pids[$n]=$!
}
for n in 1 2 3; do start "$n"; done
ready=""
for _ in $(seq 1 300); do
  if "$bin/txn" --config "$cfg" put __grow_probe x >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
[ -n "$ready" ] || die "the cluster did not accept a write; logs in $tmp (KEEP=1 keeps them)"

addr4=127.0.0.1:$((PACT_PORT + 3))
peer4=127.0.0.1:$((PACT_PORT + 33))
printf '== loading %s records (workload %s)\n' "$RECORDS" "$WORKLOAD" >&2
"$bin/bench" load --backend pact --config "$cfg" --workload "$WORKLOAD" --recordcount "$RECORDS" \
  --threads 4 >"$tmp/load.out" 2>"$tmp/load.err" || { tail -5 "$tmp/load.err" >&2; die "load failed"; }
printf '== %s for %s s, %s threads; node 4 joins at %s s\n' "$WORKLOAD" "$DURATION" "$THREADS" "$GROW_AT" >&2
t0=$(date +%s.%N)
"$bin/bench" run --backend pact --config "$cfg" --workload "$WORKLOAD" --recordcount "$RECORDS" \
  --threads "$THREADS" --duration "$DURATION" --progress --allow-failures >"$tmp/run.out" 2>"$tmp/run.err" &
benchpid=$!
sleep "$GROW_AT"
phase=grow
step() { # NAME CMD...: run, time it, die showing its output if it fails
  local name=$1 s e; shift
  s=$(date +%s.%N)
  "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" || { cat "$tmp/$name.out" "$tmp/$name.err" >&2; die "$name failed"; }
  e=$(date +%s.%N)
  printf '%s %s %s %s\n' "$name" "$s" "$e" "$phase" >>"$tmp/steps"
}
step member-add "$bin/txn" --config "$cfg" --json admin member add 4 "$addr4" "$peer4"
s=$(date +%s.%N)
# Node 4 gets no config file: it takes the cluster's from node 1.
start 4 --endpoints "127.0.0.1:$PACT_PORT"
up=""
for _ in $(seq 1 300); do
  if "$bin/txn" --endpoints "$addr4" --json admin member list >/dev/null 2>&1; then up=1; break; fi
  kill -0 "${pids[4]}" 2>/dev/null || { cat "$tmp/node-4.log" >&2; die "node 4 exited"; }
  sleep 0.1
done
[ -n "$up" ] || die "node 4 did not answer in 30 s"
printf 'node-4-start %s %s %s\n' "$s" "$(date +%s.%N)" "$phase" >>"$tmp/steps"
step shard-split "$bin/txn" --config "$cfg" --json admin shard split 1
child=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["new_shard"])' "$tmp/shard-split.out") \
  || die "no new shard in the split's answer: $(cat "$tmp/shard-split.out")"
step replica-move "$bin/txn" --config "$cfg" --json admin replica move "$child" 3 4
step leader-transfer "$bin/txn" --config "$cfg" --json admin leader transfer shard "$child" 4
if [ "$SHRINK_AT" -gt 0 ]; then
  now=$(python3 -c 'import sys, time; print(int(time.time() - float(sys.argv[1])))' "$t0")
  [ "$now" -lt "$SHRINK_AT" ] || die "growing took until $now s, past SHRINK_AT ($SHRINK_AT)"
  sleep $((SHRINK_AT - now))
  phase=shrink
  step shard-merge "$bin/txn" --config "$cfg" --json admin shard merge "$child" --into 1
  retired() { # whether the shard list shows the merged shard retired
    "$bin/txn" --config "$cfg" --json admin shard list 2>/dev/null | python3 -c '
import json, sys
rows = json.load(sys.stdin)
sys.exit(0 if any(r.get("shard") == int(sys.argv[1]) and r.get("keys", {}).get("retired") for r in rows) else 1)' "$child"
  }
  wait_retired() {
    for _ in $(seq 1 120); do retired && return 0; sleep 0.5; done
    echo "shard $child not retired within 60 s" >&2; return 1
  }
  step shard-retired wait_retired
  step member-remove "$bin/txn" --config "$cfg" --json admin member remove 4
  s=$(date +%s.%N)
  kill -TERM "${pids[4]}"; wait "${pids[4]}" 2>/dev/null || true; unset 'pids[4]'
  printf 'node-4-stop %s %s %s\n' "$s" "$(date +%s.%N)" "$phase" >>"$tmp/steps"
fi
"$bin/txn" --config "$cfg" admin member list >"$tmp/members.out" 2>&1 || true
"$bin/txn" --config "$cfg" admin shard list >>"$tmp/members.out" 2>&1 || true
wait "$benchpid" || { tail -5 "$tmp/run.err" >&2; die "the run failed"; }

python3 - "$tmp/run.err" "$t0" "$tmp/steps" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$PROFILE" "$(nproc)" "$RECORDS" "$THREADS" "$WORKLOAD" <<'PY'
import re, statistics, sys
log, t0, steps, rev, profile, cores, records, threads, workload = sys.argv[1:]
what = "transfers among {} accounts".format(records) if workload == "txn" else "YCSB-{} over {} records".format(workload.upper(), records)
unit = "transfers/s" if workload == "txn" else "ops/s"
t0 = float(t0)
rows = [l.split() for l in open(steps)]
spans = [(name, float(s) - t0, float(e) - t0, phase) for name, s, e, phase in rows]
per_s, failed = [], 0
for line in open(log):
    m = re.search(r"run\s+(\d+) s: \d+ ops \((\d+) ops/s now, .*?(\d+) failed", line)
    if m:
        per_s.append((int(m.group(1)), int(m.group(2))))
        failed = int(m.group(3))
def med(lo, hi):
    v = [ops for (s, ops) in per_s if lo < s <= hi]
    return (statistics.median(v), len(v)) if v else (float("nan"), 0)
phases = []
for p in ("grow", "shrink"):
    ss = [x for x in spans if x[3] == p]
    if ss:
        phases.append((p, ss[0][1], ss[-1][2]))
cols, lo = [], 0
labels = {"grow": "while growing", "shrink": "while shrinking"}
for i, (p, start, end) in enumerate(phases):
    cols.append(("before" if i == 0 else "between", med(lo, start)))
    cols.append((labels[p], med(start, end + 1)))
    lo = end + 1
cols.append(("after", med(lo, 10**9)))
shrunk = " and shrunk back (merged, retired, node 4 removed)" if len(phases) > 1 else ""
print()
print(f"Pact {rev}, {profile}; {cores} cores; 3 nodes + node 4 added, shard 1 split, the new shard moved to node 4{shrunk}; {what}, {threads} threads")
print()
print("| step | took | at (s into the run) |")
print("|---|---:|---:|")
for name, s, e, _ in spans:
    print(f"| {name} | {e - s:.2f} s | {s:.1f} |")
print()
print(f"failed operations: {failed}")
print()
print(f"| {unit} (median of the seconds) | " + " | ".join(c for c, _ in cols) + " |")
print("|---|" + "---:|" * len(cols))
print("| throughput | " + " | ".join(f"{m:,.0f} ({n} s)" for _, (m, n) in cols) + " |")
PY
echo
cat "$tmp/members.out"
