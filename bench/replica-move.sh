#!/usr/bin/env bash
# A shard's replica moved to a new node under load: how long the move of a
# SIZE_GIB GiB shard takes, and YCSB-A throughput before, during and after.
#
# Starts 3 `pact` processes on 127.0.0.1 holding one shard (and the
# coordinator group) and a fourth, spare node that the config lists but
# gives nothing; with snapshots every SNAPSHOT_LOGS entries and KEEP_LOGS
# entries kept behind them (the config's defaults), the new replica can
# only catch up from a streamed snapshot (and, under writes, may need a
# second one if the log moved past KEEP_LOGS while the first was sent).
# Loads RECORDS records and SIZE_GIB GiB more as records of one
# VALUE_BYTES field, then overwrites the first RECORDS with YCSB-sized
# records (10 fields of 100 bytes), and runs YCSB-A on those (THREADS
# threads, DURATION s). MOVE_AT s into the run it moves
# the shard's replica from node 3 to node 4 (`txn admin replica move 1 3
# 4`: node 4 hosts an empty replica, catches up as a learner, becomes a
# voter; node 3 leaves and deletes its copy). Prints the move's time, the
# snapshot bytes node 4 received, and the medians of the per-second
# throughput before, during and after the move.
#
# With ACTION=split it splits the shard instead (`txn admin shard split 1`:
# half its ring share, about half of SIZE_GIB, is copied into a new shard
# on the same nodes through the new shard's Raft log) and prints the
# split's time and the same throughput medians. With ACTION=merge it
# splits the shard before the run, then at MOVE_AT merges the new shard
# back into shard 1 (`txn admin shard merge NEW --into 1`: about half of
# SIZE_GIB copied back through shard 1's log while both serve), and
# prints the merge's time and the same medians.
#
# Usage: bash bench/replica-move.sh [SIZE_GIB]      (default 1)
# Settings (environment):
#   VALUE_BYTES=65536  LOAD_THREADS=4  RECORDS=10000  THREADS=16
#   DURATION=120  MOVE_AT=20  SNAPSHOT_LOGS=5000  KEEP_LOGS=1000 (the defaults)
#   SNAPSHOT_KIB=0 ([raft] snapshot_kib_per_sec: the transfer's pace; 0 none)
#   SPLIT_KIB=4096 ([raft] split_copy_kib_per_sec: the pace of a split's
#   first copy; 0 none)
#   ACTION=move (or split, or merge)
#   PACT_PORT=27501  PROFILE=release (or debug)  NO_BUILD=1 (skip cargo build)
#   KEEP=1 (keep the cluster's directory; its path is printed)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
die() { printf 'replica-move: %s\n' "$*" >&2; exit 1; }
[ $# -le 1 ] || die "usage: bash bench/replica-move.sh [SIZE_GIB]"
SIZE_GIB=${1:-1}
python3 -c "import sys; assert float(sys.argv[1]) > 0" "$SIZE_GIB" 2>/dev/null ||
  die "SIZE_GIB must be a positive number, got '$SIZE_GIB'"
VALUE_BYTES=${VALUE_BYTES:-65536}
LOAD_THREADS=${LOAD_THREADS:-4}
RECORDS=${RECORDS:-10000}
THREADS=${THREADS:-16}
DURATION=${DURATION:-120}
MOVE_AT=${MOVE_AT:-20}
SNAPSHOT_LOGS=${SNAPSHOT_LOGS:-5000}
KEEP_LOGS=${KEEP_LOGS:-1000}
SNAPSHOT_KIB=${SNAPSHOT_KIB:-0}
SPLIT_KIB=${SPLIT_KIB:-4096}
PACT_PORT=${PACT_PORT:-27501}
PROFILE=${PROFILE:-release}
ACTION=${ACTION:-move}
[[ $ACTION =~ ^(move|split|merge)$ ]] || die "ACTION must be move, split or merge, got '$ACTION'"
for v in RECORDS THREADS DURATION MOVE_AT SNAPSHOT_LOGS KEEP_LOGS SNAPSHOT_KIB SPLIT_KIB LOAD_THREADS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
[ "$MOVE_AT" -lt "$DURATION" ] || die "MOVE_AT ($MOVE_AT) must be before the end of the run (DURATION $DURATION)"

bin=${CARGO_TARGET_DIR:-$root/target}/$PROFILE
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
build_servers "$bin" "$PROFILE"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pact-move.XXXXXX")
declare -A pids=()
pg=""
trap stop_cluster EXIT

# The playground writes the config (3 combined nodes, 1 shard); the nodes
# are run here, with a fourth that the config lists and gives nothing.
"$bin/txn" playground --dir "$tmp" --port "$PACT_PORT" --shards 1 >"$tmp/playground.out" 2>&1 &
pg=$!
wait_playground "$tmp/playground.out" "$pg"
kill -INT "$pg"; wait "$pg" 2>/dev/null || true; pg=""
rm -rf "$tmp"/node-*
cfg=$tmp/cluster.toml
python3 - "$cfg" "$SNAPSHOT_LOGS" "$KEEP_LOGS" "$PACT_PORT" "$SNAPSHOT_KIB" "$SPLIT_KIB" <<'PY'
import re, sys
path, snap, keep, port, kib, split_kib = sys.argv[1:7]
port = int(port)
s = open(path).read()
s = re.sub(r"(?m)^snapshot_logs = \d+$", f"snapshot_logs = {snap}", s)
s = re.sub(r"(?m)^keep_logs = \d+$", f"keep_logs = {keep}", s)
s = re.sub(r"(?m)^snapshot_kib_per_sec = \d+$", f"snapshot_kib_per_sec = {kib}", s)
s = re.sub(r"(?m)^split_copy_kib_per_sec = \d+$", f"split_copy_kib_per_sec = {split_kib}", s)
spare = f'[[nodes]]\nid = 4\naddr = "127.0.0.1:{port + 3}"\npeer_addr = "127.0.0.1:{port + 23}"\n\n'
i = s.index("[[nodes]]")
s = s[:i] + spare + s[i:]
open(path, "w").write(s)
PY
grep -q "^snapshot_logs = $SNAPSHOT_LOGS$" "$cfg" || die "could not set snapshot_logs in $cfg"
grep -q "^snapshot_kib_per_sec = $SNAPSHOT_KIB$" "$cfg" || die "could not set snapshot_kib_per_sec in $cfg"
grep -q "^split_copy_kib_per_sec = $SPLIT_KIB$" "$cfg" || die "could not set split_copy_kib_per_sec in $cfg"

metrics_port() { echo $((PACT_PORT + 10 + $1 - 1)); }
start() { # NODE
  "$bin/pact" --config "$cfg" --node-id "$1" --data-dir "$tmp/node-$1" \
    --metrics-listen "127.0.0.1:$(metrics_port "$1")" >>"$tmp/node-$1.log" 2>&1 &
  pids[$1]=$!
}
metric() { # NODE NAME GROUP: one series' value (empty if absent)
  curl -s --max-time 2 "http://127.0.0.1:$(metrics_port "$1")/metrics" 2>/dev/null |
    awk -v n="$2" -v g="$3" '$1 == n "{group=\"" g "\"}" { print $2 }' || true
}

for n in 1 2 3 4; do start "$n"; done
ready=""
for _ in $(seq 1 300); do
  if "$bin/txn" --config "$cfg" put __move_probe x >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
[ -n "$ready" ] || die "the cluster did not accept a write; logs in $tmp (KEEP=1 keeps them)"

# The first RECORDS records are overwritten small below: the large ones
# past them make up SIZE_GIB.
records=$(python3 -c "import sys, math; print(int(sys.argv[3]) + max(1, math.ceil(float(sys.argv[1]) * (1 << 30) / int(sys.argv[2]))))" "$SIZE_GIB" "$VALUE_BYTES" "$RECORDS")
printf '== loading %s GiB: %s records of %s bytes\n' "$SIZE_GIB" "$records" "$VALUE_BYTES" >&2
t=$(date +%s.%N)
"$bin/bench" load --backend pact --config "$cfg" --workload a --recordcount "$records" \
  --fieldcount 1 --fieldlength "$VALUE_BYTES" --threads "$LOAD_THREADS" >"$tmp/load.out" 2>"$tmp/load.err" ||
  { tail -5 "$tmp/load.err" >&2; die "load failed"; }
load_s=$(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$t")
printf '== overwriting the first %s records with YCSB-sized ones\n' "$RECORDS" >&2
"$bin/bench" load --backend pact --config "$cfg" --workload a --recordcount "$RECORDS" \
  --threads "$THREADS" >"$tmp/load2.out" 2>"$tmp/load2.err" ||
  { tail -5 "$tmp/load2.err" >&2; die "second load failed"; }

shard_group=1
if [ "$ACTION" = merge ]; then
  printf '== splitting shard 1 before the run\n' >&2
  "$bin/txn" --config "$cfg" --json admin shard split 1 --wait 3600 >"$tmp/split.out" 2>"$tmp/split.err" ||
    { cat "$tmp/split.out" "$tmp/split.err" >&2; die "the split failed"; }
  new_shard=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['new_shard'])" "$tmp/split.out")
fi
printf '== YCSB-A for %s s, %s threads; %s of shard 1 at %s s\n' "$DURATION" "$THREADS" "$ACTION" "$MOVE_AT" >&2
t0=$(date +%s.%N)
"$bin/bench" run --backend pact --config "$cfg" --workload a --recordcount "$RECORDS" \
  --threads "$THREADS" --duration "$DURATION" --progress --allow-failures >"$tmp/run.out" 2>"$tmp/run.err" &
benchpid=$!
sleep "$MOVE_AT"
m0=$(date +%s.%N)
if [ "$ACTION" = split ]; then
  "$bin/txn" --config "$cfg" --json admin shard split 1 --wait 3600 >"$tmp/move.out" 2>"$tmp/move.err" ||
    { cat "$tmp/move.out" "$tmp/move.err" >&2; die "the split failed"; }
elif [ "$ACTION" = merge ]; then
  "$bin/txn" --config "$cfg" --json admin shard merge "$new_shard" --into 1 --wait 3600 >"$tmp/move.out" 2>"$tmp/move.err" ||
    { cat "$tmp/move.out" "$tmp/move.err" >&2; die "the merge failed"; }
else
  "$bin/txn" --config "$cfg" --json admin replica move 1 3 4 >"$tmp/move.out" 2>"$tmp/move.err" ||
    { cat "$tmp/move.out" "$tmp/move.err" >&2; die "the move failed"; }
fi
m1=$(date +%s.%N)
wait "$benchpid" || { tail -5 "$tmp/run.err" >&2; die "the run failed"; }
received=$(metric 4 pact_raft_snapshot_bytes_received_total "$shard_group")
installed=$(metric 4 pact_raft_snapshots_installed_total "$shard_group")
[ "$ACTION" != move ] || [ "${installed:-0}" -ge 1 ] ||
  die "node 4 caught up without installing a snapshot (raise SIZE_GIB or lower SNAPSHOT_LOGS)"
[ ! -e "$tmp/node-3" ] || du -sk "$tmp/node-3" >"$tmp/node3.du"

python3 - "$tmp/run.err" "$t0" "$m0" "$m1" "$tmp/move.out" "${received:-0}" "$SIZE_GIB" "$records" "$VALUE_BYTES" "$load_s" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$PROFILE" "$(nproc)" "$RECORDS" "$THREADS" "$ACTION" <<'PY'
import json, re, statistics, sys
(log, t0, m0, m1, move_out, received, size, records, vbytes, load_s,
 rev, profile, cores, ycsb_records, threads, action) = sys.argv[1:]
t0, m0, m1 = float(t0), float(m0), float(m1)
start, end = m0 - t0, m1 - t0
per_s = []
failed = 0
for line in open(log):
    m = re.search(r"run\s+(\d+) s: \d+ ops \((\d+) ops/s now, .*?(\d+) failed", line)
    if m:
        per_s.append((int(m.group(1)), int(m.group(2))))
        failed = int(m.group(3))
def med(lo, hi):
    v = [ops for (s, ops) in per_s if lo < s <= hi]
    return (statistics.median(v), len(v)) if v else (float("nan"), 0)
before = med(0, start)
during = med(start, end + 1)
after = med(end + 1, 10**9)
moved = json.load(open(move_out))
print()
print(f"Pact {rev}, {profile}; {cores} cores; one shard of {size} GiB ({records} values of {vbytes} bytes, loaded in {load_s} s), "
      f"YCSB-A on {ycsb_records} records, {threads} threads")
print()
if action == "split":
    share = moved.get("new_keys", {}).get("ring_share", 0)
    print("| split of the shard (new shard serves) | new shard | its share of key hashes | failed operations |")
    print("|---:|---:|---:|---:|")
    print(f"| {end - start:.1f} s | {moved.get('new_shard')} | {share * 100:.1f}% | {failed} |")
elif action == "merge":
    share = moved.get("keys", {}).get("ring_share", 0)
    print("| merge of the new shard back into shard 1 (shard 1 serves both) | shard 1's share of key hashes after | failed operations |")
    print("|---:|---:|---:|")
    print(f"| {end - start:.1f} s | {share * 100:.1f}% | {failed} |")
else:
    print("| move of the replica (3 -> 4) | snapshot received | voters after | failed operations |")
    print("|---:|---:|---|---:|")
    print(f"| {end - start:.1f} s | {int(float(received)) / (1 << 20):,.0f} MiB | {moved.get('voters')} | {failed} |")
print()
print(f"| YCSB-A ops/s (median of the seconds) | before | during the {action} | after |")
print("|---|---:|---:|---:|")
print(f"| throughput | {before[0]:,.0f} ({before[1]} s) | {during[0]:,.0f} ({during[1]} s) | {after[0]:,.0f} ({after[1]} s) |")
PY
