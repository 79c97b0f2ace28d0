#!/usr/bin/env bash
# Pact with more data than memory: YCSB-B and YCSB-C read throughput when
# the data does not fit in RAM, next to the same data when it does.
#
# 1. Starts the playground (3 processes; by default each a replica of
#    all 3 shards, so every record is stored 3 times; REPLICAS=1 puts
#    shard i on node i alone, one copy) with fjall's block cache
#    at CACHE_MB per node, inside a cgroup-v1 memory cgroup limited to
#    MEM_LIMIT_MB for the three servers together. A v1 memory cgroup
#    charges the page cache its processes fill, so file data they read or
#    write counts against the limit as well as their heaps: past it the
#    kernel drops their clean cache pages, and reads go to the disk.
# 2. Loads RECORDS records of VALUE_SIZE bytes (`bench load`, one field
#    per record, LOAD_BATCH records per operation: one atomic write per
#    shard they fall on) through the limited servers.
# 3. Runs YCSB-B (95% reads, 5% updates) and YCSB-C (reads only), both
#    zipfian as YCSB defines them, and YCSB-C with uniform keys (the hot
#    set is then the whole data set), DURATION seconds each: "limited".
# 4. Lifts the limit on the same running servers and data, reads every
#    data file once to put it in the page cache, and runs the same three:
#    "in memory".
# 5. Prints one Markdown table: throughput and READ latency per run and
#    case, with the cgroup's peak usage and how often it hit the limit.
#
# Why this comparison: the two cases differ in one thing only, whether
# the data can stay in memory. Same servers, same data, same LSM layout
# (files, levels, compaction state), same fjall cache; a smaller data set
# that fits would also change the tree's depth and the key space the
# zipfian draws from. It needs RAM for the data in the second case: the
# script warns when the data on disk is more than the machine's
# available memory (the "in memory" case is then partly on disk too).
#
# Defaults (the full run): 4,000,000 records x 1 KiB = ~3.8 GiB of
# values, ~11.5 GiB on disk for the 3 replicas plus journals and Raft
# logs, against a 1 GiB limit for all three servers: ~4x the limit per
# replica, ~11x in all. Needs ~17 GiB free disk (checked first). The load
# takes several minutes with release binaries.
#
# Usage (as root: it makes a cgroup): bash bench/larger-than-memory.sh
# Settings (environment):
#   RECORDS=4000000   records to load        VALUE_SIZE=1024  bytes per record
#   REPLICAS=3        copies of each shard   LOAD_BATCH=100   records per load operation
#   MEM_LIMIT_MB=1024 cgroup limit (servers'  CACHE_MB=16     fjall block cache
#                     memory + page cache)                    per node
#   DURATION=60       seconds per measured run
#   THREADS=32        client tasks per run   LOAD_THREADS=64  client tasks of the load
#   SEED=42           RNG seed               PACT_PORT=27101  first port (+0..2, +10..12, +20..22)
#   BIN_DIR=DIR       binaries (txn, pact, bench) to use; default target/release, built first
#   NO_BUILD=1        skip cargo build       KEEP_TMP=1       keep the data folder
#   RESULTS=DIR       keep the JSON reports  TMPDIR=DIR       where the data goes
# Tiny check run (seconds, not a measurement):
#   RECORDS=100000 MEM_LIMIT_MB=64 DURATION=10 bash bench/larger-than-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

RECORDS=${RECORDS:-4000000}
REPLICAS=${REPLICAS:-3}
LOAD_BATCH=${LOAD_BATCH:-100}
VALUE_SIZE=${VALUE_SIZE:-1024}
MEM_LIMIT_MB=${MEM_LIMIT_MB:-1024}
CACHE_MB=${CACHE_MB:-16}
DURATION=${DURATION:-60}
THREADS=${THREADS:-32}
LOAD_THREADS=${LOAD_THREADS:-64}
SEED=${SEED:-42}
PACT_PORT=${PACT_PORT:-27101}
export RECORDS REPLICAS LOAD_BATCH VALUE_SIZE MEM_LIMIT_MB CACHE_MB DURATION THREADS LOAD_THREADS SEED

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'larger-than-memory: %s\n' "$*" >&2; exit 1; }

for v in RECORDS REPLICAS LOAD_BATCH VALUE_SIZE MEM_LIMIT_MB CACHE_MB DURATION THREADS LOAD_THREADS SEED PACT_PORT; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || die "$v must be a positive integer (got '${!v}')"
done
command -v python3 >/dev/null || die "python3 is needed (to edit the config and read the reports)"
[ "$(id -u)" = 0 ] || die "run as root: the script makes a memory cgroup"
cgroot=/sys/fs/cgroup/memory
[ -w "$cgroot" ] && [ -e "$cgroot/memory.limit_in_bytes" ] ||
  die "no writable cgroup-v1 memory hierarchy at $cgroot"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pact-ltm.XXXXXX")
cg="$cgroot/pact-ltm-$$"
pg_pid=""
bench_pid=""

[ "$REPLICAS" -le 3 ] || die "REPLICAS must be 1, 2 or 3 (got $REPLICAS)"

# Disk: values x replicas, plus half again for journals, Raft logs and
# compaction's temporary copies, plus 1 GiB.
need_mb=$(((RECORDS * (VALUE_SIZE + 40) * REPLICAS * 3 / 2) / 1048576 + 1024))
free_mb=$(df -Pm "$tmp" | awk 'NR == 2 { print $4 }')
if [ "$free_mb" -lt "$need_mb" ]; then
  rm -rf "$tmp"
  die "needs ~$need_mb MiB free under $tmp, has $free_mb; lower RECORDS or set TMPDIR"
fi

stop_pid() { # PID [signal]: signal it, wait up to 20 s, then SIGKILL
  local pid=$1 sig=${2:-TERM}
  kill -0 "$pid" 2>/dev/null || return 0
  kill -"$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

stop_pact() {
  if [ -n "$pg_pid" ]; then
    # The playground stops its nodes itself on SIGINT.
    stop_pid "$pg_pid" INT
    pg_pid=""
  fi
  # Whatever is left in the cgroup is ours: the playground's nodes.
  if [ -e "$cg/cgroup.procs" ]; then
    for p in $(cat "$cg/cgroup.procs"); do stop_pid "$p"; done
  fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -n "$bench_pid" ] && stop_pid "$bench_pid"
  stop_pact
  [ -d "$cg" ] && rmdir "$cg" 2>/dev/null || true
  if [ "${KEEP_TMP:-}" = 1 ]; then
    echo "kept $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() {
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}
for p in $(seq "$PACT_PORT" $((PACT_PORT + 2))) $(seq $((PACT_PORT + 10)) $((PACT_PORT + 12))) \
  $(seq $((PACT_PORT + 20)) $((PACT_PORT + 22))); do
  port_free "$p" || die "port $p is in use; set PACT_PORT"
done

# --- binaries -----------------------------------------------------------------
bin=${BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}
if [ -z "${BIN_DIR:-}" ] && [ "${NO_BUILD:-}" != 1 ]; then
  log "building release binaries (first time: several minutes)"
  cargo build --release --quiet --bins -p pact-cli -p pact-server -p pact-bench
fi
for b in txn pact bench; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing (build it, or set BIN_DIR)"
done

# --- the playground -------------------------------------------------------------
pg="$tmp/pact"
mkdir -p "$pg"

# start_playground [CGROUP]: start it (in CGROUP if given), wait for ready.
start_playground() {
  local in_cg=${1:-}
  : >"$pg/playground.out"
  if [ -n "$in_cg" ]; then
    # Join the cgroup first, so the nodes the playground starts are in it.
    sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' sh "$in_cg" \
      "$bin/txn" playground --dir "$pg" --port "$PACT_PORT" --replicas "$REPLICAS" \
      >"$pg/playground.out" 2>&1 &
  else
    "$bin/txn" playground --dir "$pg" --port "$PACT_PORT" --replicas "$REPLICAS" \
      >"$pg/playground.out" 2>&1 &
  fi
  pg_pid=$!
  for _ in $(seq 1 600); do
    grep -q '^ready' "$pg/playground.out" && return 0
    kill -0 "$pg_pid" 2>/dev/null || { cat "$pg/playground.out" >&2; die "the playground exited"; }
    sleep 0.2
  done
  cat "$pg/playground.out" >&2
  die "the playground did not get ready in 120 s"
}

# A first start writes the config; the block cache is then set in it.
log "creating the playground in $pg"
start_playground
stop_pact
python3 - "$pg/cluster.toml" "$CACHE_MB" <<'EOF'
import re, sys, tomllib
path, cache = sys.argv[1], int(sys.argv[2])
text = open(path).read()
if re.search(r"(?m)^\[storage\]", text):
    text, n = re.subn(r"(?m)^cache_mb\s*=.*$", f"cache_mb = {cache}", text)
    if n != 1:
        text = re.sub(r"(?m)^\[storage\]\s*$", f"[storage]\ncache_mb = {cache}", text, count=1)
else:
    text += f"\n[storage]\ncache_mb = {cache}\n"
open(path, "w").write(text)
assert tomllib.loads(text)["storage"]["cache_mb"] == cache
EOF

mkdir "$cg"
limit=$((MEM_LIMIT_MB * 1048576))
echo "$limit" >"$cg/memory.limit_in_bytes"
# Never swap the servers' memory instead of dropping page cache.
echo 0 >"$cg/memory.swappiness" 2>/dev/null || true
log "starting it in memory cgroup $cg (limit $MEM_LIMIT_MB MiB, fjall cache $CACHE_MB MiB per node)"
start_playground "$cg"
[ "$(wc -l <"$cg/cgroup.procs")" -ge 4 ] || die "the servers did not start inside the cgroup"
# Idle servers' own memory (heaps, binaries' pages): below about twice
# that, the limit starves the servers themselves (stalls past election
# timeouts, failed writes) rather than their data's page cache.
idle=$(cat "$cg/memory.usage_in_bytes")
if [ $((2 * idle)) -gt "$limit" ]; then
  log "WARNING: the idle servers already use $((idle / 1048576)) MiB of the $MEM_LIMIT_MB MiB limit;" \
    "expect them to thrash (raise MEM_LIMIT_MB, or use release binaries)"
fi

res=$tmp/results
mkdir -p "$res"

# cgroup_note NAME: record the cgroup's peak and limit hits since the last.
cgroup_note() {
  local name=$1
  {
    echo "max_usage_bytes $(cat "$cg/memory.max_usage_in_bytes")"
    echo "failcnt $(cat "$cg/memory.failcnt")"
    echo "limit_bytes $(cat "$cg/memory.limit_in_bytes")"
    grep -E '^(total_)?(cache|rss) ' "$cg/memory.stat"
    # Cumulative; where the kernel reports it.
    awk '/^oom_kill / { print "oom_kills", $2 }' "$cg/memory.oom_control"
  } >"$res/$name.cgroup"
  echo 0 >"$cg/memory.max_usage_in_bytes"
  echo 0 >"$cg/memory.failcnt"
}

bench() { # NAME ARGS...
  local name=$1
  shift
  log "$name: bench $*"
  # In the background, so a signal to the script stops it at once.
  "$bin/bench" "$@" --backend pact --config "$pg/cluster.toml" --seed "$SEED" --json \
    --allow-failures >"$res/$name.json" 2>"$res/$name.err" &
  bench_pid=$!
  if ! wait "$bench_pid"; then
    bench_pid=""
    cat "$res/$name.err" >&2
    die "bench $* failed"
  fi
  bench_pid=""
  if [ -s "$res/$name.err" ]; then head -5 "$res/$name.err" >&2; fi
  cgroup_note "$name"
  check_servers "$name"
}

# check_servers NAME: the three servers still run (the playground and
# its nodes are the cgroup's processes); a server killed at the limit
# would make every later number meaningless.
check_servers() {
  local n oom
  n=$(wc -l <"$cg/cgroup.procs")
  oom=$(awk '/^oom_kill / { print $2 }' "$cg/memory.oom_control")
  if [ "$n" -lt 4 ] || [ "${oom:-0}" -gt 0 ]; then
    die "after $1: $((n > 0 ? n - 1 : 0)) of 3 servers left, ${oom:-?} killed by the kernel at" \
      "the memory limit: the servers' own memory needs more than MEM_LIMIT_MB=$MEM_LIMIT_MB; raise it"
  fi
}

fields=(-p fieldcount=1 -p "fieldlength=$VALUE_SIZE")
runs() { # CASE
  local c=$1
  bench "$c-b" run --workload b --recordcount "$RECORDS" "${fields[@]}" \
    --threads "$THREADS" --duration "$DURATION"
  bench "$c-c" run --workload c --recordcount "$RECORDS" "${fields[@]}" \
    --threads "$THREADS" --duration "$DURATION"
  bench "$c-cu" run --workload c --requestdistribution uniform --recordcount "$RECORDS" \
    "${fields[@]}" --threads "$THREADS" --duration "$DURATION"
}

echo 0 >"$cg/memory.max_usage_in_bytes"
echo 0 >"$cg/memory.failcnt"
bench load load --workload b --recordcount "$RECORDS" "${fields[@]}" --threads "$LOAD_THREADS" \
  --batch "$LOAD_BATCH" --progress
load_failed=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["failed"])' "$res/load.json")
[ "$load_failed" = 0 ] || die "$load_failed records failed to load (see $res/load.err); the runs would read holes"
du -sb "$pg" | awk '{ print $1 }' >"$res/data_bytes"
log "data on disk: $(du -sh "$pg" | cut -f1)"

runs limited

log "lifting the limit; reading the data once into the page cache"
echo -1 >"$cg/memory.limit_in_bytes"
avail_kb=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
data_kb=$(($(cat "$res/data_bytes") / 1024))
if [ "$data_kb" -gt "$avail_kb" ]; then
  log "WARNING: the data ($((data_kb / 1024)) MiB) is more than the available memory" \
    "($((avail_kb / 1024)) MiB): the in-memory case will still read from disk"
fi
echo "$avail_kb" >"$res/mem_available_kb"
find "$pg" -type f -path '*/node-*' -exec cat {} + >/dev/null
cgroup_note warm
runs memory

stop_pact

if [ -n "${RESULTS:-}" ]; then
  mkdir -p "$RESULTS"
  cp "$res"/* "$RESULTS"/
  log "reports kept in $RESULTS"
fi

# --- table ------------------------------------------------------------------------
python3 - "$res" <<'EOF'
import json, os, subprocess, sys

res = sys.argv[1]
env = os.environ

def load(name):
    with open(os.path.join(res, name + ".json")) as f:
        return json.load(f)

def cgroup(name):
    out = {}
    with open(os.path.join(res, name + ".cgroup")) as f:
        for line in f:
            k, v = line.split()
            out[k] = int(v)
    return out

def op(r, kind):
    return r["ops"].get(kind) or {}

def lat(r, kind, q):
    l = op(r, kind).get("latency_us")
    return "-" if not l else f"{l[q] / 1000:.2f} ms"

def mib(b):
    return f"{b / 1048576:,.0f} MiB"

try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()
except Exception:
    rev = "unknown"
records, size = int(env["RECORDS"]), int(env["VALUE_SIZE"])
data = int(open(os.path.join(res, "data_bytes")).read())
limit = int(env["MEM_LIMIT_MB"]) * 1048576
load_r = load("load")
print()
print(f"Pact {rev}; {os.cpu_count()} cores; {records:,} records x {size} B "
      f"({mib(records * size)} of values, {mib(data)} on disk for {env['REPLICAS']} "
      f"replica(s) of each shard); "
      f"cgroup limit {mib(limit)} for the 3 servers (page cache included); "
      f"fjall cache {env['CACHE_MB']} MiB per node; {env['THREADS']} client tasks, "
      f"{env['DURATION']} s per run, seed {env['SEED']}")
loaded = load_r.get("records") or load_r["operations"]
print(f"load: {loaded / max(load_r['runtime_ms'], 1) * 1000:,.0f} records/s "
      f"({loaded:,} in {load_r['runtime_ms'] / 1000:.0f} s, {env['LOAD_BATCH']} per operation, "
      f"{load_r['failed']} failed operations); data / limit = {data / limit:.1f}x")
print()
print("| workload | case | ops/s | READ p50 | READ p99 | UPDATE p99 | cgroup peak | limit hits |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
rows = [("YCSB-B (zipfian)", "b"), ("YCSB-C (zipfian)", "c"), ("YCSB-C (uniform)", "cu")]
for title, w in rows:
    for case, label in (("limited", f"data > memory ({mib(limit)})"), ("memory", "in memory")):
        r, cg = load(f"{case}-{w}"), cgroup(f"{case}-{w}")
        print(f"| {title} | {label} | {r['throughput_ops_sec']:,.0f} | {lat(r, 'READ', 'p50')} "
              f"| {lat(r, 'READ', 'p99')} | {lat(r, 'UPDATE', 'p99')} "
              f"| {mib(cg['max_usage_bytes'])} | {cg['failcnt']:,} |")
print()
for title, w in rows:
    lim, mem = load(f"limited-{w}")["throughput_ops_sec"], load(f"memory-{w}")["throughput_ops_sec"]
    if mem:
        print(f"{title}: limited / in memory = {lim / mem:.2f}")
failed = [f"{f[:-5]}: {load(f[:-5])['failed']} failed" for f in sorted(os.listdir(res))
          if f.endswith(".json") and load(f[:-5])["failed"]]
if failed:
    print()
    print("failed operations: " + "; ".join(failed))
EOF
