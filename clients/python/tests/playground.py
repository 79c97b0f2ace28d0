"""A real local cluster for the tests: `txn playground` on free ports.

The playground starts 3 `pact` processes and prints a line starting with
"ready:" once every shard and coordinator group has a leader (see
cli/src/playground.rs). It runs in its own process group so that stopping
it stops its nodes too, whatever state it is in.
"""

from __future__ import annotations

import atexit
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0


def bin_dir() -> Path:
    """PACT_BIN_DIR, else the workspace's debug build."""
    d = os.environ.get("PACT_BIN_DIR")
    return Path(d) if d else REPO / "target" / "debug"


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port() -> int:
    """A first port P such that the playground's ports are free: clients
    P..P+2, metrics P+10..P+12, peers P+20..P+22."""
    for _ in range(200):
        p = random.randrange(20000, 40000)
        if all(_free(p + d + i) for d in (0, 10, 20) for i in range(3)):
            return p
    raise RuntimeError("no free block of ports for the playground")


_LIVE: set["Playground"] = set()


def _stop_all(signum=None, frame=None) -> None:
    for p in list(_LIVE):
        p.stop()
    if signum is not None:
        # Killed (say, by run-tests.sh's timeout): the clusters run in
        # their own sessions and would outlive this process otherwise.
        os._exit(128 + signum)


atexit.register(_stop_all)
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _stop_all)


class Playground:
    def __init__(self, tls: bool = False):
        self.tls = tls
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    @property
    def config_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "cluster.toml"

    def start(self) -> None:
        """Start and wait until ready. Tried twice: the ports were free
        when chosen, but another process may bind one before the nodes do
        (then a node dies at startup)."""
        txn = bin_dir() / "txn"
        if not txn.exists():
            raise RuntimeError(f"{txn} not found: run `cargo build --workspace --bins` (or set PACT_BIN_DIR)")
        try:
            self._start(txn)
        except RuntimeError as e:
            print(f"playground did not start; trying again on other ports:\n{e}", file=sys.stderr)
            self._start(txn)

    def _start(self, txn: Path) -> None:
        self.lines = []
        self.dir = Path(tempfile.mkdtemp(prefix="pact-pyclient-"))
        cmd = [str(txn), "playground", "--dir", str(self.dir), "--port", str(free_base_port())]
        if self.tls:
            cmd.append("--tls")
        _LIVE.add(self)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        proc = self.proc

        def pump() -> None:
            # Drained to the end so the playground never blocks on a full pipe.
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if time.monotonic() >= deadline:
                self._fail(f"not ready within {START_TIMEOUT:g}s")
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                # The playground reports a dead node only after its own
                # 60 s wait; a panic in a node's log says so at once.
                if any("panicked at" in log.read_text(errors="replace") for log in self.dir.glob("node-*.log")):
                    self._fail("has a node that panicked")
                continue
            if line is None:
                self._fail(f"exited with {proc.wait()} before it was ready")
            self.lines.append(line)
            if line.startswith("ready:"):
                return
            if line.startswith("warning:"):
                self._fail(line)

    def _fail(self, why: str) -> None:
        out = "\n".join(self.lines)
        logs = ""
        if self.dir is not None:
            for log in sorted(self.dir.glob("node-*.log")):
                lines = log.read_text(errors="replace").splitlines()
                # A panic's message, not the backtrace under it.
                panic = [i for i, l in enumerate(lines) if "panicked at" in l]
                shown = lines[panic[0] : panic[0] + 3] if panic else lines[-10:]
                logs += f"\n--- {log.name}\n" + "\n".join(shown)
        self.stop()
        raise RuntimeError(f"playground {why}\n{out}{logs}")

    def stop(self) -> None:
        """SIGTERM to the playground (it stops its nodes cleanly), then
        SIGKILL to its whole process group if it is not done in time."""
        _LIVE.discard(self)
        p, self.proc = self.proc, None
        if p is not None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            try:
                # Its nodes share its process group, even if it died first.
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=STOP_TIMEOUT)
            # Every writer of the pipe is gone: the pump reaches its end.
            self._pump.join(timeout=STOP_TIMEOUT)
            if p.stdout is not None:
                p.stdout.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
