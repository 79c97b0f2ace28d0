#!/usr/bin/env python3
"""Where a latency tail comes from: stalls of a running Pact cluster, window by window.

Samples every node's /metrics and the disk's /proc/diskstats every STEP
seconds for SECONDS, and prints each window in which something was slow
on some node: proposals whose commit took over 25 ms (c), applies over
10 ms (a), fsyncs over 10 ms (f), storage writes over 10 ms (w), lock
waits over 10 ms (l), with the megabytes the disk wrote in that window
and the snapshots built. Windows where the disk wrote BURST_MB or more
are printed too, slow or not, so bursts without stalls show as well.
At the end: bytes written by each kind of thread of the `pact` processes
(from /proc/PID/task/TID/io, counted when pages are dirtied: the storage
writer's journal, fjall's flush and compaction workers), in total and
per operation if OPS is given.

Run it beside a load, e.g. the open loop of bench/compare-etcd.sh:
  python3 bench/stalls.py --metrics 127.0.0.1:27011,127.0.0.1:27012,127.0.0.1:27013 \
      --seconds 16 & bench run --workload a --target 1800 ...
Settings: --step 0.1  --burst-mb 8  --disk vda  --ops N (operations of the run)
Linux only; needs read access to the pact processes' /proc entries.
"""
import argparse
import collections
import os
import re
import sys
import time
import urllib.request

SLOW = [  # (label, metric, bucket bound in seconds, label filter)
    ("c", "pact_raft_proposal_seconds", "0.025", 'stage="commit"'),
    ("a", "pact_raft_proposal_seconds", "0.01", 'stage="apply"'),
    ("f", "pact_storage_fsync_seconds", "0.01", ""),
    ("w", "pact_storage_write_seconds", "0.01", ""),
    ("l", "pact_lock_wait_seconds", "0.01", ""),
]
LINE = re.compile(r"(\S+?)(\{[^}]*\})? (\S+)$")


def scrape(url):
    out = {}
    try:
        with urllib.request.urlopen(f"http://{url}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError as e:
        sys.exit(f"stalls: cannot read http://{url}/metrics: {e}")
    for line in text.splitlines():
        m = LINE.match(line)
        if m and not line.startswith("#"):
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def over(m, name, le, only):
    """Observations of histogram NAME above bound LE (count minus that bucket)."""
    total = sum(v for (n, l), v in m.items() if n == name + "_count" and only in l)
    under = sum(
        v for (n, l), v in m.items()
        if n == name + "_bucket" and f'le="{le}"' in l and only in l
    )
    return total - under


SNAPSHOTS = "pact_raft_snapshots_built_total"


def total(ms, name):
    """Counter NAME summed over its labels and over the nodes' scrapes MS."""
    return sum(v for m in ms for (n, _), v in m.items() if n == name)


def disk_mb(dev):
    with open("/proc/diskstats") as f:
        for line in f:
            x = line.split()
            if len(x) > 9 and x[2] == dev:
                return int(x[9]) * 512 / 1e6
    sys.exit(f"stalls: no disk {dev!r} in /proc/diskstats (see --disk)")


def thread_bytes():
    out = collections.Counter()
    for pid in os.popen("pgrep -x pact").read().split():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    comm = f.read().strip()
                with open(f"/proc/{pid}/task/{tid}/io") as f:
                    io = dict(l.split(": ") for l in f.read().splitlines())
            except OSError:
                continue
            out[(pid, tid, comm)] = int(io["write_bytes"])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--metrics", required=True, help="host:port of each node's metrics, comma-separated")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--step", type=float, default=0.1)
    p.add_argument("--burst-mb", type=float, default=8.0)
    p.add_argument("--disk", default="vda")
    p.add_argument("--ops", type=int, default=0)
    a = p.parse_args()
    urls = [u for u in a.metrics.split(",") if u]
    if not urls or a.seconds <= 0 or a.step <= 0:
        sys.exit("stalls: give --metrics and positive --seconds and --step")
    threads0 = thread_bytes()
    prev, d_prev, t0 = [scrape(u) for u in urls], disk_mb(a.disk), time.time()
    slow_windows = burst_windows = both = 0
    while time.time() - t0 < a.seconds:
        time.sleep(a.step)
        cur, d = [scrape(u) for u in urls], disk_mb(a.disk)
        cells, slow = [], False
        for i, (m0, m1) in enumerate(zip(prev, cur)):
            n = [int(over(m1, *s[1:]) - over(m0, *s[1:])) for s in SLOW]
            slow = slow or any(n)
            cells.append(f"n{i + 1} " + " ".join(f"{s[0]}{v}" for s, v in zip(SLOW, n)))
        snaps = total(cur, SNAPSHOTS) - total(prev, SNAPSHOTS)
        burst = d - d_prev >= a.burst_mb
        slow_windows += slow
        burst_windows += burst
        both += slow and burst
        if slow or burst or snaps:
            print(f"{time.time() - t0:6.2f}s  {' | '.join(cells)} | disk {d - d_prev:5.1f} MB"
                  f"{'  snapshots %d' % snaps if snaps else ''}", flush=True)
        prev, d_prev = cur, d
    print(f"windows of {a.step:g} s: {slow_windows} with something slow, {burst_windows} with the "
          f"disk writing >= {a.burst_mb:g} MB, {both} both")
    per = collections.Counter()
    for k, v in thread_bytes().items():
        per[k[2]] += v - threads0.get(k, 0)
    for comm, v in per.most_common():
        if v:
            extra = f"  {v / a.ops / 1e3:7.2f} KB/op" if a.ops else ""
            print(f"written by {comm:18s} {v / 1e6:9.1f} MB{extra}")


if __name__ == "__main__":
    main()
