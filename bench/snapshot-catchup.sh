#!/usr/bin/env bash
# How long a new replica takes to catch up a shard of SIZE_GIB GiB, which it
# can only do from a streamed snapshot.
#
# Starts 3 `pact` processes on 127.0.0.1 with one shard on all three (and
# the coordinator group), with snapshots every SNAPSHOT_LOGS entries so the
# log behind the data is compacted; loads SIZE_GIB GiB as records of one
# VALUE_BYTES field (YCSB load, THREADS threads); then stops a follower of
# the shard, deletes its data directory, starts it again and waits until
# it has applied everything the leader had. Prints the catch-up time, the
# snapshot bytes it received, and the peak resident memory of the sender
# (the shard's leader, from the restart on) and of the receiver.
#
# Usage: bash bench/snapshot-catchup.sh SIZE_GIB      (e.g. 0.5, 5)
# Settings (environment):
#   VALUE_BYTES=262144  THREADS=8  SNAPSHOT_LOGS=500  KEEP_LOGS=100
#   PACT_PORT=27401  TIMEOUT=3600 (seconds for the catch-up)
#   PROFILE=release (or debug)  NO_BUILD=1 (skip cargo build)
#   KEEP=1 (keep the cluster's directory; its path is printed)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
die() { printf 'snapshot-catchup: %s\n' "$*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: bash bench/snapshot-catchup.sh SIZE_GIB"
SIZE_GIB=$1
python3 -c "import sys; assert float(sys.argv[1]) > 0" "$SIZE_GIB" 2>/dev/null ||
  die "SIZE_GIB must be a positive number, got '$SIZE_GIB'"
VALUE_BYTES=${VALUE_BYTES:-262144}
THREADS=${THREADS:-8}
SNAPSHOT_LOGS=${SNAPSHOT_LOGS:-500}
KEEP_LOGS=${KEEP_LOGS:-100}
PACT_PORT=${PACT_PORT:-27401}
TIMEOUT=${TIMEOUT:-3600}
PROFILE=${PROFILE:-release}

bin=${CARGO_TARGET_DIR:-$root/target}/$PROFILE
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
build_servers "$bin" "$PROFILE"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pact-catchup.XXXXXX")
declare -A pids=()
pg=""
trap stop_cluster EXIT

# The playground writes the cluster's config (3 combined nodes, 1 shard);
# the nodes are then run here, one process each, so one can be replaced.
"$bin/txn" playground --dir "$tmp" --port "$PACT_PORT" --shards 1 >"$tmp/playground.out" 2>&1 &
pg=$!
wait_playground "$tmp/playground.out" "$pg"
kill -INT "$pg"; wait "$pg" 2>/dev/null || true; pg=""
rm -rf "$tmp"/node-*
cfg=$tmp/cluster.toml
python3 - "$cfg" "$SNAPSHOT_LOGS" "$KEEP_LOGS" <<'PY'
import re, sys
path, snap, keep = sys.argv[1], sys.argv[2], sys.argv[3]
s = open(path).read()
s = re.sub(r"(?m)^snapshot_logs = \d+$", f"snapshot_logs = {snap}", s)
s = re.sub(r"(?m)^keep_logs = \d+$", f"keep_logs = {keep}", s)
open(path, "w").write(s)
PY
grep -q "^snapshot_logs = $SNAPSHOT_LOGS$" "$cfg" || die "could not set snapshot_logs in $cfg"

metrics_port() { echo $((PACT_PORT + 10 + $1 - 1)); }
start() { # NODE
  "$bin/pact" --config "$cfg" --node-id "$1" --data-dir "$tmp/node-$1" \
    --metrics-listen "127.0.0.1:$(metrics_port "$1")" >>"$tmp/node-$1.log" 2>&1 &
  pids[$1]=$!
}
scrape() { # NODE: the node's metrics page (empty if it does not answer)
  curl -s --max-time 2 "http://127.0.0.1:$(metrics_port "$1")/metrics" || true
}
metric() { # NODE NAME GROUP: one series' value (empty if absent)
  scrape "$1" | awk -v n="$2" -v g="$3" '$1 == n "{group=\"" g "\"}" { print $2 }'
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

for n in 1 2 3; do start "$n"; done
ready=""
for _ in $(seq 1 300); do
  if "$bin/txn" --config "$cfg" put __catchup_probe x >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
[ -n "$ready" ] || die "the cluster did not accept a write; logs in $tmp (KEEP=1 keeps them)"

records=$(python3 -c "import sys, math; print(max(1, math.ceil(float(sys.argv[1]) * (1 << 30) / int(sys.argv[2]))))" "$SIZE_GIB" "$VALUE_BYTES")
printf '== loading %s GiB: %s records of %s bytes\n' "$SIZE_GIB" "$records" "$VALUE_BYTES" >&2
t=$(date +%s.%N)
"$bin/bench" load --backend pact --config "$cfg" --workload a --recordcount "$records" \
  --fieldcount 1 --fieldlength "$VALUE_BYTES" --threads "$THREADS" >"$tmp/load.out" 2>"$tmp/load.err" ||
  { tail -5 "$tmp/load.err" >&2; die "load failed"; }
load_s=$(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$t")

# The shard's group: the one group whose id is not a coordinator group's.
coord=$(awk '/^\[\[coordinators\]\]/ { c = 1 } c && /^group = / { print $3; exit }' "$cfg")
shard_group=$(scrape 1 | awk -F'"' -v c="$coord" '/^pact_raft_applied_index\{group="/ && $2 != c { print $2; exit }')
[ -n "$shard_group" ] || die "no shard group in node 1's metrics"

leader=""; victim=""
for _ in $(seq 1 100); do
  for n in 1 2 3; do
    [ "$(metric "$n" pact_raft_is_leader "$shard_group")" = 1 ] && leader=$n
  done
  [ -n "$leader" ] && break
  sleep 0.2
done
[ -n "$leader" ] || die "the shard has no leader"
for n in 1 2 3; do [ "$n" != "$leader" ] && { victim=$n; break; }; done

# Everything loaded is applied everywhere (nothing is written from here on).
target=$(metric "$leader" pact_raft_applied_index "$shard_group")
for _ in $(seq 1 600); do
  a=$(metric "$victim" pact_raft_applied_index "$shard_group")
  [ -n "$a" ] && [ "$a" -ge "$target" ] && break
  sleep 0.2
done
before=$(du -sk "$tmp/node-$leader" | cut -f1)
built=$(metric "$leader" pact_raft_snapshots_built_total "$shard_group")
printf '== shard group %s: leader node %s (applied %s, %s snapshots built, %s MiB on disk); replacing node %s\n' \
  "$shard_group" "$leader" "$target" "${built:-0}" $((before / 1024)) "$victim" >&2

kill -TERM "${pids[$victim]}"
wait "${pids[$victim]}" 2>/dev/null || true
unset "pids[$victim]"
rm -rf "$tmp/node-$victim"
sender=${pids[$leader]}
# Peak RSS from here on: reset the sender's high-water mark (Linux 4.0+).
echo 5 >"/proc/$sender/clear_refs" 2>/dev/null || true
t0=$(date +%s.%N)
start "$victim"
receiver=${pids[$victim]}
peak_s=0; peak_r=0; done_at=""
while :; do
  r=$(rss_kib "$sender"); [ "$r" -gt "$peak_s" ] && peak_s=$r
  r=$(rss_kib "$receiver"); [ "$r" -gt "$peak_r" ] && peak_r=$r
  a=$(metric "$victim" pact_raft_applied_index "$shard_group")
  if [ -n "$a" ] && [ "$a" -ge "$target" ]; then done_at=$(date +%s.%N); break; fi
  kill -0 "$receiver" 2>/dev/null || { tail -20 "$tmp/node-$victim.log" >&2; die "node $victim exited"; }
  python3 -c "import sys, time; sys.exit(time.time() - float(sys.argv[1]) > float(sys.argv[2]))" "$t0" "$TIMEOUT" ||
    die "node $victim did not catch up within $TIMEOUT s (applied ${a:-none} of $target)"
  sleep 0.2
done
h=$(hwm_kib "$sender"); [ "$h" -gt "$peak_s" ] && peak_s=$h
h=$(hwm_kib "$receiver"); [ "$h" -gt "$peak_r" ] && peak_r=$h
secs=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$done_at")
got=$(metric "$victim" pact_raft_snapshot_bytes_received_total "$shard_group")
sent=$(metric "$leader" pact_raft_snapshot_bytes_sent_total "$shard_group")
installed=$(metric "$victim" pact_raft_snapshots_installed_total "$shard_group")
after=$(du -sk "$tmp/node-$victim" | cut -f1)
[ "${installed:-0}" -ge 1 ] || die "node $victim caught up without installing a snapshot (raise SIZE_GIB or lower SNAPSHOT_LOGS)"

mib() { python3 -c "import sys; print(f'{int(float(sys.argv[1])) / (1 << 20):,.0f}')" "${1:-0}"; }
echo
echo "Pact $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $PROFILE; $(nproc) cores; ${SIZE_GIB} GiB as ${records} values of ${VALUE_BYTES} bytes (loaded in ${load_s} s)"
echo
echo "| shard | catch-up | snapshot sent / received | snapshots installed | receiver data dir | peak RSS sender | peak RSS receiver |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
echo "| ${SIZE_GIB} GiB | ${secs} s | $(mib "$sent") / $(mib "$got") MiB | ${installed} | $((after / 1024)) MiB | $((peak_s / 1024)) MiB | $((peak_r / 1024)) MiB |"
