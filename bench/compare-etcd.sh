#!/usr/bin/env bash
# Pact next to etcd on this machine, with the same driver and parameters.
#
# Starts the Pact playground and runs YCSB-A, YCSB-C and the transfer
# workload against it, the transfer workload among HOT accounts
# (contention), a single-key update and a transfer with one client
# (latency without queueing), and YCSB-A open loop at 50% and 80% of its
# own closed-loop peak (p99 from the intended start times), plus (Pact
# only) transfers kept on one shard and spread across shards; stops it;
# then starts a 3-member etcd cluster on loopback and runs the same
# workloads against it; prints tables (Markdown) of throughput and latency.
# Only one of the two clusters runs at a time.
#
# Pact runs 3 processes, as etcd does: 3 `pact` nodes, each with a replica
# of all 3 shards (3 replicas each) and of the coordinator group, one store
# and one fsync stream per process (`txn playground`'s default layout).
#
# Usage: bash bench/compare-etcd.sh
# Settings (environment):
#   DURATION=20   seconds per measured run      RECORDS=10000  YCSB records
#   THREADS=16    concurrent client tasks        ACCOUNTS=1000  txn accounts
#   TXN_KEYS=2    accounts per transfer          SEED=42        RNG seed
#   HOT=10        accounts of the contention run
#   PACT_PORT=27001  first Pact port (uses +0..+2, metrics +10..+12, peers +20..+22)
#   ETCD_PORTS="2379 22379 32379"  client ports (peer port = client + 1)
#   RESULTS=DIR   keep the JSON reports in DIR   NO_BUILD=1  skip cargo build
#   KEEP_TMP=1    keep the temporary folder (data and logs)
#   ROUNDS=1      rounds, each a fresh Pact cluster and a fresh etcd cluster
#                 running everything; the stores alternate which goes first
#                 (Pact first in odd rounds), each cell is the median over
#                 the rounds and each ratio the median of the rounds'
#                 ratios, so a machine that drifts during the run moves
#                 both stores alike. With several rounds the headline
#                 ratios are also printed round by round, and RESULTS gets
#                 a folder per round (r1, r2, ...).
# Quick run: DURATION=5 RECORDS=2000 bash bench/compare-etcd.sh
#
# Needs: cargo, python3; etcd 3.x (installed with apt-get as etcd-server
# if missing, which needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

DURATION=${DURATION:-20}
RECORDS=${RECORDS:-10000}
THREADS=${THREADS:-16}
ACCOUNTS=${ACCOUNTS:-1000}
TXN_KEYS=${TXN_KEYS:-2}
HOT=${HOT:-10}
SEED=${SEED:-42}
ROUNDS=${ROUNDS:-1}
case "$ROUNDS" in
  '' | *[!0-9]* | 0) printf 'compare-etcd: ROUNDS=%s is not a positive number\n' "$ROUNDS" >&2; exit 2 ;;
esac
PACT_PORT=${PACT_PORT:-27001}
ETCD_PORTS=${ETCD_PORTS:-"2379 22379 32379"}
export DURATION RECORDS THREADS ACCOUNTS TXN_KEYS SEED HOT ROUNDS

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'compare-etcd: %s\n' "$*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"

command -v python3 >/dev/null || die "python3 is needed (to read the JSON reports)"
command -v cargo >/dev/null || [ "${NO_BUILD:-}" = 1 ] || die "cargo is needed"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pact-vs-etcd.XXXXXX")
pg_pid=""
pg_children=""
etcd_pids=""

stop_pid() { # PID [signal]: signal it, wait up to 10 s, then SIGKILL
  local pid=$1 sig=${2:-TERM}
  kill -0 "$pid" 2>/dev/null || return 0
  kill -"$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

stop_pact() {
  if [ -n "$pg_pid" ]; then
    stop_pid "$pg_pid" INT
    # The playground stops its nodes itself; make sure none is left.
    for c in $pg_children; do stop_pid "$c"; done
    pg_pid=""
    pg_children=""
  fi
}

stop_etcd() {
  for p in $etcd_pids; do stop_pid "$p"; done
  etcd_pids=""
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pact
  stop_etcd
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

# A port in use would make a cluster fail in confusing ways: check first.
# (SO_REUSEADDR: connections of an earlier run in TIME_WAIT do not count.)
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

# --- etcd -----------------------------------------------------------------
apt_install() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "etcd is not installed and this is not root; install etcd-server"
    sudo=sudo
  fi
  log "installing $* with apt-get"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >"$tmp/apt.log" 2>&1 ||
    { $sudo apt-get update -q >>"$tmp/apt.log" 2>&1 &&
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$tmp/apt.log" 2>&1; } ||
    { cat "$tmp/apt.log" >&2; die "could not install $*"; }
}
if ! command -v etcd >/dev/null; then
  apt_install etcd-server
  command -v etcd >/dev/null || die "etcd-server installed but no etcd on PATH"
fi
etcd_version=$(etcd --version 2>/dev/null | sed -n 's/^etcd Version: *//p' | head -1)
[ -n "$etcd_version" ] || etcd_version=unknown

# --- Pact binaries ----------------------------------------------------------
bin=${CARGO_TARGET_DIR:-$root/target}/release
if [ "${NO_BUILD:-}" != 1 ]; then
  log "building release binaries (first time: several minutes)"
  cargo build --release --quiet --bins \
    -p pact-cli -p pact-server -p pact-bench
fi
for b in txn pact bench; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing; run without NO_BUILD=1"
done

for p in $(seq "$PACT_PORT" $((PACT_PORT + 2))) $(seq $((PACT_PORT + 10)) $((PACT_PORT + 12))) \
  $(seq $((PACT_PORT + 20)) $((PACT_PORT + 22))); do
  port_free "$p" || die "port $p is in use; set PACT_PORT"
done
for p in $ETCD_PORTS; do
  port_free "$p" || die "port $p is in use; set ETCD_PORTS"
  port_free $((p + 1)) || die "port $((p + 1)) is in use; set ETCD_PORTS"
done

# The reports of the round being run: $tmp/results/r<round>.
res=""

# bench PREFIX ARGS...: run bench with ARGS plus the backend's flags, save
# the JSON report as $res/PREFIX.json.
backend_args=()
bench() {
  local name=$1
  shift
  log "$name: bench $*"
  # --allow-failures: failed operations are counted in the report (and
  # listed under the tables), not fatal; exit 1 or 2 still is.
  if ! "$bin/bench" "$@" "${backend_args[@]}" --threads "${T:-$THREADS}" --seed "$SEED" --json \
    --allow-failures >"$res/$name.json" 2>"$res/$name.err"; then
    cat "$res/$name.err" >&2
    die "bench $* failed"
  fi
  # Show the first failures.
  if [ -s "$res/$name.err" ]; then head -5 "$res/$name.err" >&2; fi
}

run_workloads() { # BACKEND
  local b=$1
  bench "$b-load-a" load --workload a --recordcount "$RECORDS"
  bench "$b-a" run --workload a --recordcount "$RECORDS" --duration "$DURATION"
  bench "$b-c" run --workload c --recordcount "$RECORDS" --duration "$DURATION"
  bench "$b-load-txn" load --workload txn --recordcount "$ACCOUNTS"
  bench "$b-txn" run --workload txn --recordcount "$ACCOUNTS" --txn-keys "$TXN_KEYS" \
    --duration "$DURATION"
  # Contention: every transfer among the first HOT accounts.
  bench "$b-hot" run --workload txn --recordcount "$HOT" --txn-keys "$TXN_KEYS" \
    --duration "$DURATION"
  # One client: latency without queueing.
  T=1 bench "$b-update1" run --workload a -p readproportion=0 -p updateproportion=1 \
    --recordcount "$RECORDS" --duration "$DURATION"
  local scope=()
  [ "$b" = pact ] && scope=(--txn-scope cross-shard)
  T=1 bench "$b-txn1" run --workload txn --recordcount "$ACCOUNTS" --txn-keys "$TXN_KEYS" \
    --duration "$DURATION" "${scope[@]}"
  # Open loop at half and 0.8 of this backend's closed-loop YCSB-A peak:
  # latencies from the intended start times (coordinated omission counted).
  local peak
  peak=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["throughput_ops_sec"])' "$res/$b-a.json")
  for f in 50 80; do
    bench "$b-a-open$f" run --workload a --recordcount "$RECORDS" --duration "$DURATION" \
      --target "$(python3 -c "print(max(1, int($peak * $f / 100)))")"
  done
}

# --- Pact -------------------------------------------------------------------
pact_round() { # ROUND
  local dir=$tmp/pact-r$1
  log "round $1: starting the Pact playground: 3 pact processes (ports $PACT_PORT-$((PACT_PORT + 22)))"
  mkdir -p "$dir"
  "$bin/txn" playground --dir "$dir" --port "$PACT_PORT" >"$dir/playground.out" 2>&1 &
  pg_pid=$!
  wait_playground "$dir/playground.out" "$pg_pid"
  pg_children=$(command -v pgrep >/dev/null && pgrep -P "$pg_pid" || true)

  backend_args=(--backend pact --config "$dir/cluster.toml")
  run_workloads pact
  bench pact-txn-single run --workload txn --recordcount "$ACCOUNTS" --txn-keys "$TXN_KEYS" \
    --duration "$DURATION" --txn-scope single-shard
  bench pact-txn-cross run --workload txn --recordcount "$ACCOUNTS" --txn-keys "$TXN_KEYS" \
    --duration "$DURATION" --txn-scope cross-shard
  log "round $1: stopping Pact"
  stop_pact
}

# --- etcd -------------------------------------------------------------------
cluster=""
endpoints=""
i=0
for p in $ETCD_PORTS; do
  i=$((i + 1))
  cluster="${cluster:+$cluster,}m$i=http://127.0.0.1:$((p + 1))"
  endpoints="${endpoints:+$endpoints,}http://127.0.0.1:$p"
done
healthy() {
  python3 - "$endpoints" <<'EOF'
import json, sys, urllib.request
for e in sys.argv[1].split(","):
    try:
        with urllib.request.urlopen(e + "/health", timeout=1) as r:
            if json.load(r).get("health") != "true":
                sys.exit(1)
    except Exception:
        sys.exit(1)
EOF
}
etcd_round() { # ROUND
  local dir=$tmp/etcd-r$1
  log "round $1: starting etcd $etcd_version (client ports $ETCD_PORTS)"
  mkdir -p "$dir"
  local i=0
  for p in $ETCD_PORTS; do
    i=$((i + 1))
    etcd --name "m$i" --data-dir "$dir/m$i" \
      --listen-client-urls "http://127.0.0.1:$p" --advertise-client-urls "http://127.0.0.1:$p" \
      --listen-peer-urls "http://127.0.0.1:$((p + 1))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((p + 1))" \
      --initial-cluster "$cluster" --initial-cluster-token "pact-bench-r$1" \
      --initial-cluster-state new --logger zap >"$dir/m$i.log" 2>&1 &
    etcd_pids="$etcd_pids $!"
  done
  local ok=0
  for _ in $(seq 1 150); do
    if healthy; then ok=1; break; fi
    for p in $etcd_pids; do
      kill -0 "$p" 2>/dev/null || { tail -20 "$dir"/m*.log >&2; die "an etcd member exited"; }
    done
    sleep 0.2
  done
  [ "$ok" = 1 ] || { tail -20 "$dir"/m*.log >&2; die "etcd did not get healthy in 30 s"; }

  backend_args=(--backend etcd --etcd-endpoints "$endpoints")
  run_workloads etcd
  log "round $1: stopping etcd"
  stop_etcd
}

# Both stores in every round; the one that goes first alternates, so a
# machine that speeds up or slows down during the run favours neither.
for round in $(seq 1 "$ROUNDS"); do
  res=$tmp/results/r$round
  mkdir -p "$res"
  if [ $((round % 2)) = 1 ]; then
    pact_round "$round"
    etcd_round "$round"
  else
    etcd_round "$round"
    pact_round "$round"
  fi
done

if [ -n "${RESULTS:-}" ]; then
  mkdir -p "$RESULTS"
  if [ "$ROUNDS" = 1 ]; then
    cp "$tmp/results/r1"/*.json "$RESULTS"/
  else
    cp -r "$tmp/results"/r* "$RESULTS"/
  fi
  log "JSON reports kept in $RESULTS"
fi

# --- Table ------------------------------------------------------------------
python3 - "$tmp/results" "$etcd_version" "$ROUNDS" <<'EOF'
import json, os, statistics, subprocess, sys

results, etcd_version, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
env = os.environ

# Every figure below is the median over the rounds (one report per round
# and workload); every ratio the median of the rounds' own ratios, each
# taken between the two stores measured in the same round.

def load(name):
    reports = []
    for r in range(1, rounds + 1):
        with open(os.path.join(results, f"r{r}", name + ".json")) as f:
            reports.append(json.load(f))
    return reports

def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

def op(report, kind):
    return report["ops"].get(kind) or {}

def tput1(report, kind=None):
    return report["throughput_ops_sec"] if kind is None else op(report, kind).get("throughput_ops_sec", 0.0)

def lat1(report, kind, q):
    l = op(report, kind).get("latency_us")
    return l[q] if l else None

def tput(reports, kind=None):
    return med([tput1(r, kind) for r in reports])

def lat(reports, kind, q):
    return med([lat1(r, kind, q) for r in reports])

def retries(reports, kind):
    return med([op(r, kind).get("retries", 0) for r in reports])

def ratios(p, e, f):
    out = []
    for a, b in zip(p, e):
        a, b = f(a), f(b)
        out.append(a / b if a and b else None)
    return out

def ratio(p, e, f):
    r = med(ratios(p, e, f))
    return "-" if r is None else f"{r:.2f}"

def ms(us):
    return "-" if us is None else f"{us / 1000:.2f} ms"

def num(x):
    return "-" if x is None else f"{x:,.0f}"

try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()
except Exception:
    rev = "unknown"
print()
print(f"Pact {rev} vs etcd {etcd_version}; {os.cpu_count()} cores; "
      f"threads {env.get('THREADS', '16')}, {env.get('DURATION', '20')} s per run, "
      f"{env.get('RECORDS', '10000')} records, {env.get('ACCOUNTS', '1000')} accounts, "
      f"{env.get('TXN_KEYS', '2')} accounts per transfer, seed {env.get('SEED', '42')}"
      + (f"; medians of {rounds} rounds" if rounds > 1 else ""))
print()
print("| workload | op | Pact ops/s | etcd ops/s | Pact/etcd | Pact p50 | etcd p50 | Pact p99 | etcd p99 |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
rows = [
    ("load (10 x 100 B records)", "load-a", ["INSERT"], False),
    ("YCSB-A (zipfian)", "a", ["READ", "UPDATE"], True),
    ("YCSB-C (zipfian)", "c", ["READ"], False),
    ("txn transfer (any shards)", "txn", ["TXN"], False),
    (f"txn transfer, {env.get('HOT', '10')} hot accounts", "hot", ["TXN"], False),
]
for title, name, kinds, total in rows:
    p, e = load("pact-" + name), load("etcd-" + name)
    if total:
        print(f"| {title} | all | {num(tput(p))} | {num(tput(e))} | {ratio(p, e, tput1)} "
              f"| | | | |")
    for k in kinds:
        print(f"| {title} | {k} | {num(tput(p, k))} | {num(tput(e, k))} "
              f"| {ratio(p, e, lambda r: tput1(r, k))} | {ms(lat(p, k, 'p50'))} | {ms(lat(e, k, 'p50'))} "
              f"| {ms(lat(p, k, 'p99'))} | {ms(lat(e, k, 'p99'))} |")
print()
ph, eh = load("pact-hot"), load("etcd-hot")
print(f"Hot-account retries (aborts / failed compares, started over): "
      f"Pact {num(retries(ph, 'TXN'))}, etcd {num(retries(eh, 'TXN'))}")
print()
print("One client (no queueing): p50 / p99")
print()
print("| op | Pact p50 | etcd p50 | Pact/etcd p50 | Pact p99 | etcd p99 |")
print("|---|---:|---:|---:|---:|---:|")
for title, name, kind in (
    ("single-key update", "update1", "UPDATE"),
    ("transfer (Pact: cross-shard)", "txn1", "TXN"),
):
    p, e = load("pact-" + name), load("etcd-" + name)
    print(f"| {title} | {ms(lat(p, kind, 'p50'))} | {ms(lat(e, kind, 'p50'))} "
          f"| {ratio(p, e, lambda r: lat1(r, kind, 'p50'))} "
          f"| {ms(lat(p, kind, 'p99'))} | {ms(lat(e, kind, 'p99'))} |")
print()
print("Open loop, YCSB-A at a fraction of each store's own closed-loop peak "
      "(latency from the intended start; UPDATE p99)")
print()
print("| load | Pact target ops/s | Pact achieved | Pact p99 | etcd target ops/s | etcd achieved | etcd p99 |")
print("|---|---:|---:|---:|---:|---:|---:|")
for f in (50, 80):
    p, e = load(f"pact-a-open{f}"), load(f"etcd-a-open{f}")
    target = lambda rs: med([r["params"].get("target_ops_sec") or 0 for r in rs])
    print(f"| {f}% | {num(target(p))} | {num(tput(p))} | {ms(lat(p, 'UPDATE', 'p99'))} "
          f"| {num(target(e))} | {num(tput(e))} | {ms(lat(e, 'UPDATE', 'p99'))} |")
print()
pt, et = load("pact-txn"), load("etcd-txn")
print(f"Transfer retries (aborts / failed compares, started over): "
      f"Pact {num(retries(pt, 'TXN'))}, etcd {num(retries(et, 'TXN'))}")
print()
single, cross = load("pact-txn-single"), load("pact-txn-cross")
print("| Pact transfer | txn/s | p50 | p99 | retries |")
print("|---|---:|---:|---:|---:|")
for title, r in (("single-shard (one-phase commit)", single), ("cross-shard (2PC)", cross)):
    print(f"| {title} | {num(tput(r, 'TXN'))} | {ms(lat(r, 'TXN', 'p50'))} "
          f"| {ms(lat(r, 'TXN', 'p99'))} | {num(retries(r, 'TXN'))} |")
print()
print(f"cross-shard commit p50 / single-shard p50 = "
      f"{ratio(cross, single, lambda r: lat1(r, 'TXN', 'p50'))}")
if rounds > 1:
    print()
    print("Pact/etcd round by round (throughput; one client: p50)")
    print()
    print("| workload | " + " | ".join(f"round {r}" for r in range(1, rounds + 1)) + " |")
    print("|---|" + "---:|" * rounds)
    for title, name, f in (
        ("load", "load-a", tput1),
        ("YCSB-A", "a", tput1),
        ("YCSB-C", "c", tput1),
        ("transfers", "txn", tput1),
        ("hot accounts", "hot", tput1),
        ("one client, update p50", "update1", lambda r: lat1(r, "UPDATE", "p50")),
        ("one client, transfer p50", "txn1", lambda r: lat1(r, "TXN", "p50")),
    ):
        rs = ratios(load("pact-" + name), load("etcd-" + name), f)
        print(f"| {title} | " + " | ".join("-" if x is None else f"{x:.2f}" for x in rs) + " |")
# Every run, since bench ran with --allow-failures.
failed = []
for r in range(1, rounds + 1):
    d = os.path.join(results, f"r{r}")
    for f in sorted(os.listdir(d)):
        if f.endswith(".json"):
            with open(os.path.join(d, f)) as fh:
                rep = json.load(fh)
            if rep["failed"]:
                where = f"round {r}: " if rounds > 1 else ""
                failed.append(f"{where}{f[:-len('.json')]}: {rep['failed']} failed")
if failed:
    print()
    print("failed operations: " + "; ".join(failed))
EOF
