"""The client: channels, leader routing, retries, and plain Kv operations.

Every Kv request names a shard and must reach that shard's Raft leader;
every transaction request must reach the leader of a coordinator group.
The client computes the shard from the key (routing.py), starts at the
leader it last saw for that shard (or the first replica), follows the
leader hints of refusals, and moves on to the next replica with jittered
exponential backoff when one is down or knows no leader, until the retry
budget (`retry_for`) runs out.

What is retried mirrors the Rust client: reads and other requests that
change nothing are retried freely. A write (Kv put/delete, one-shot
`execute`) is retried only when it certainly did not take effect: refused
by a non-leader, not sent because the node cannot be reached, or answered
UNAVAILABLE by a server that attached rich status details (its handler,
so "nothing done"). grpcio reports a refused connection and a connection
cut after the request left with the same UNAVAILABLE, so before sending a
write on a channel that has not had a server's answer in the last second
the client asks that node the route's Status (which changes nothing) and
skips the node if no answer comes. An UNAVAILABLE without details after
that, or a timeout, may come after the write applied: it raises
`OutcomeUnknown` rather than apply the write twice. (The Rust client tells
a server's UNAVAILABLE from a transport one by its message text, which
this client does not read.)

Routing starts from the config's map. A shard that does not own a key as
routed (its descriptor, recorded at the cluster's first start, says
otherwise) refuses with WRONG_SHARD, having done nothing; the client then
rebuilds its map from every shard's `Describe` and routes again.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import grpc

from . import errors
from .config import DEFAULT_LEASE_MS, DEFAULT_VIRTUAL_NODES, ClusterConfig
from .errors import (
    Aborted,
    InvalidInput,
    OutcomeUnknown,
    Overloaded,
    PactError,
    ServerError,
    Unavailable,
    WrongShard,
)
from .routing import ShardMap

# How many times one operation rebuilds the map and routes again.
REROUTES = 3

# How long a map refresh reads the descriptors again while they do not
# fit together (a merge or split landing at one shard before another)
# before raising Unavailable.
REFRESH_SETTLES_WITHIN_S = 2.0

try:
    from ._proto import pact_pb2 as pb
    from ._proto import pact_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - only without generated stubs
    raise ImportError(
        "pact_client's gRPC stubs are not generated: run `python clients/python/generate.py` "
        "(needs grpcio-tools) first"
    ) from e

# The message size limit of the Rust client and the servers.
MAX_MESSAGE_BYTES = 8 << 20
# Longest a participant waits for a lock (pact_common::LOCK_WAIT): a request
# timeout above it lets a lock wait end as the abort it is, not a timeout.
LOCK_WAIT = 5.0

T = TypeVar("T")

# How recent a server's answer on a channel must be for a write to be sent
# without first checking that the channel reaches the server.
PROBE_AFTER = 1.0
# Codes that do not prove a server answered (grpcio reports a failed
# connection as UNAVAILABLE, a missed deadline as DEADLINE_EXCEEDED).
_NO_ANSWER = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
)


def to_bytes(v, what: str) -> bytes:
    """Keys and values are bytes; `str` is taken as UTF-8."""
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise InvalidInput(f"{what} must be bytes or str, not {type(v).__name__}")


@dataclass(frozen=True)
class TxnId:
    group: int
    node: int
    ts: int

    def __str__(self) -> str:
        return f"{self.group}-{self.node}-{self.ts}"

    def to_pb(self):
        return pb.TxnId(group=self.group, node=self.node, ts=self.ts)

    @staticmethod
    def from_pb(t) -> "TxnId":
        return TxnId(t.group, t.node, t.ts)


@dataclass(frozen=True)
class TxnStatus:
    """A transaction's outcome as its coordinator group reports it:
    "committed", "aborted", "unknown" (not decided, or not known yet),
    "open" (not decided and alive) or "expired" (older than the cluster's
    record retention: its outcome is no longer known)."""

    outcome: str
    reason: str


_OUTCOMES = {
    pb.OUTCOME_COMMITTED: "committed",
    pb.OUTCOME_ABORTED: "aborted",
    pb.OUTCOME_UNKNOWN: "unknown",
    pb.OUTCOME_OPEN: "open",
    pb.OUTCOME_EXPIRED: "expired",
}


def outcome_of(resp) -> TxnStatus:
    return TxnStatus(_OUTCOMES.get(resp.outcome, "unknown"), resp.reason)


class _Conn:
    """One channel to a node, with its stubs."""

    def __init__(self, addr: str, creds: grpc.ChannelCredentials | None):
        opts = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if creds is None:
            self.channel = grpc.insecure_channel(addr, options=opts)
        else:
            self.channel = grpc.secure_channel(addr, creds, options=opts)
        self.kv = pb_grpc.KvStub(self.channel)
        # monotonic() of the last answer a server gave on this channel.
        self.last_answer = float("-inf")
        self.txn = pb_grpc.TxnStub(self.channel)


class Client:
    """A Pact client. Thread-safe: share one between threads (a
    `Transaction` belongs to one thread).

    Give it the cluster config (a `ClusterConfig`, or the path of the TOML
    file `txn --config` takes), or a list of `endpoints` (client addresses
    of any nodes). With endpoints only, the client knows neither node ids
    nor which node holds what: it tries the endpoints in turn and follows
    the `pact-leader-addr` hints, and plain Kv operations also need the
    cluster's `shards` (their ids; hash partitioning with `virtual_nodes`
    ring points each) to compute a key's shard. Transactions need neither:
    the coordinator routes their keys.

    With neither, the config comes from PACT_CONFIG, else the embedded
    default (the playground's 127.0.0.1:7001-7003), as for `txn`.
    """

    def __init__(
        self,
        config: ClusterConfig | str | os.PathLike[str] | None = None,
        *,
        endpoints: Sequence[str] | None = None,
        shards: Sequence[int] | None = None,
        virtual_nodes: int = DEFAULT_VIRTUAL_NODES,
        lease_ms: int = DEFAULT_LEASE_MS,
        request_timeout: float = LOCK_WAIT + 3.0,
        retry_for: float = 15.0,
        connect_timeout: float = 1.0,
        tls: tuple[str, str, str] | None = None,
    ):
        """`tls`: (CA, client certificate, client key) PEM paths; by
        default the config's [tls] section, if it names a client
        certificate."""
        if endpoints is not None and config is not None:
            raise InvalidInput("give either a cluster config or endpoints, not both")
        if endpoints is None:
            if config is None:
                config = ClusterConfig.from_env()
            elif not isinstance(config, ClusterConfig):
                config = ClusterConfig.load(config)
        self.config = config
        self.request_timeout = request_timeout
        self.retry_for = retry_for
        self.connect_timeout = connect_timeout

        if config is not None:
            self._map: ShardMap | None = ShardMap.of_config(config)
            addr = {n.id: n.addr for n in config.nodes}
            self._addr_of = addr
            self._shard_replicas = {s.id: [addr[r] for r in s.replicas] for s in config.shards}
            self._group_replicas = {g: [addr[r] for r in reps] for g, reps in config.coordinators.items()}
            self._endpoints = list(addr.values())
            self.lease = config.lease_ms / 1000.0
            if tls is None and config.tls is not None:
                if config.tls.client_cert is None:
                    raise InvalidInput(
                        "the cluster uses TLS and its config names no client certificate: "
                        "give tls=(ca, cert, key)"
                    )
                tls = (config.tls.ca, config.tls.client_cert, config.tls.client_key)
        else:
            if isinstance(endpoints, str):
                raise InvalidInput("endpoints is a list of host:port strings, not one string")
            eps = [e.strip() for e in endpoints if isinstance(e, str) and e.strip()]
            if not eps:
                raise InvalidInput("endpoints is empty: give at least one host:port")
            shards = list(shards or [])
            if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63 for x in shards):
                raise InvalidInput("shards must be shard ids (non-negative integers)")
            self._map = ShardMap.hash(list(shards), virtual_nodes) if shards else None
            self._addr_of = {}
            # Any node may hold any shard or group: try all of them.
            self._shard_replicas = {s: eps for s in shards} if shards else {}
            self._group_replicas = {}
            self._endpoints = eps
            self.lease = lease_ms / 1000.0

        self._creds = None
        if tls is not None:
            ca, cert, key = tls
            try:
                with open(ca, "rb") as f:
                    ca_pem = f.read()
                with open(cert, "rb") as f:
                    cert_pem = f.read()
                with open(key, "rb") as f:
                    key_pem = f.read()
            except OSError as e:
                raise InvalidInput(f"cannot read TLS material: {e}") from e
            self._creds = grpc.ssl_channel_credentials(ca_pem, key_pem, cert_pem)

        self._lock = threading.Lock()
        # One map refresh at a time (see `_refresh_map`).
        self._refreshing = threading.Lock()
        # When the last refresh gave up, and why: threads that queued
        # behind it are told the same at once.
        self._refresh_failed: tuple[float, str] | None = None
        self._conns: dict[str, _Conn] = {}
        self._leaders: dict[tuple, str] = {}
        self._next_group = 0
        self._closed = False

    # -- lifecycle -------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
            self._closed = True
        for c in conns:
            c.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- routing ---------------------------------------------------------

    def shard_for_key(self, key) -> int:
        if self._map is None:
            raise InvalidInput(
                "plain Kv operations need the shard map: give the cluster config, "
                "or shards=[...] with endpoints (transactions work without it)"
            )
        return self._map.shard_for_key(to_bytes(key, "key"))

    def _conn(self, addr: str) -> _Conn:
        with self._lock:
            if self._closed:
                raise InvalidInput("the client is closed")
            c = self._conns.get(addr)
            if c is None:
                c = _Conn(addr, self._creds)
                self._conns[addr] = c
            return c

    def _leader(self, route: tuple) -> str | None:
        with self._lock:
            return self._leaders.get(route)

    def _set_leader(self, route: tuple, addr: str) -> None:
        with self._lock:
            self._leaders[route] = addr

    def _hint_addr(self, c: errors.Classified) -> str | None:
        if c.leader_id is not None and c.leader_id in self._addr_of:
            return self._addr_of[c.leader_id]
        return c.leader_addr

    def _reachable(self, route: tuple, conn: _Conn) -> bool:
        """Whether a write sent on `conn` now would reach the server, so
        that a failure to connect is told apart from a failure after the
        request left. A channel that got a server's answer within the last
        second is taken as connected; otherwise a request that changes
        nothing (the route's Status) finds out. Any answer from the server,
        even a refusal, proves the connection."""
        if time.monotonic() - conn.last_answer < PROBE_AFTER:
            return True
        req = pb.StatusRequest(shard_id=route[1] if route[0] == "shard" else 0)
        try:
            if route[0] == "shard":
                conn.kv.Status(req, timeout=self.connect_timeout)
            else:
                conn.txn.GroupStatus(req, timeout=self.connect_timeout)
        except grpc.RpcError as err:
            if err.code() in _NO_ANSWER:
                return False
        conn.last_answer = time.monotonic()
        return True

    def _call(
        self,
        route: tuple,
        replicas: list[str],
        invoke: Callable[[_Conn, float], T],
        *,
        idempotent: bool,
    ) -> tuple[T, str]:
        """Run `invoke(conn, timeout)` at `route`'s leader; returns the
        answer and the address that gave it."""
        if not replicas:
            raise InvalidInput(f"{_route_name(route)} has no replicas")
        deadline = time.monotonic() + self.retry_for
        target = self._leader(route) or replicas[0]
        backoff = 0.02
        hops = 0
        last: PactError | None = None

        def next_of(addr: str) -> str:
            i = replicas.index(addr) if addr in replicas else -1
            return replicas[(i + 1) % len(replicas)]

        while True:
            conn = self._conn(target)
            sleep = True
            if not idempotent and not self._reachable(route, conn):
                # Nothing was sent: safe to try elsewhere.
                last = Unavailable(f"cannot connect to {target}")
                target = next_of(target)
            else:
                try:
                    resp = invoke(conn, self.request_timeout)
                    conn.last_answer = time.monotonic()
                    self._set_leader(route, target)
                    return resp, target
                except grpc.RpcError as err:
                    c = errors.classify(err)
                    if c.kind not in (errors.RETRY, errors.UNKNOWN) or c.from_server:
                        conn.last_answer = time.monotonic()
                    last = c.error
                    if c.kind == errors.NOT_LEADER:
                        hint = self._hint_addr(c)
                        if hint and hint != target:
                            target = hint
                            # Straight there, unless hints keep bouncing
                            # (stale ones during an election).
                            hops += 1
                            sleep = hops % 3 == 0
                        else:
                            target = next_of(target)
                    elif c.kind == errors.NEXT_NODE:
                        target = next_of(target)
                    elif c.kind == errors.OVERLOADED:
                        # Nothing was done; the node leads but is busy:
                        # stay, and back off further than for a miss.
                        backoff = max(backoff, 0.1)
                    elif c.kind == errors.RETRY:
                        if not idempotent and not c.from_server:
                            raise OutcomeUnknown(
                                f"{target}: {c.error.message} (the write may have been applied)",
                                code=c.error.code,
                                error_info=c.error.error_info,
                            ) from None
                        target = next_of(target)
                    elif c.kind == errors.UNKNOWN:
                        if not idempotent:
                            raise c.error from None
                        target = next_of(target)
                    else:
                        raise c.error from None
            if time.monotonic() >= deadline and isinstance(last, Overloaded):
                raise Overloaded(
                    f"{_route_name(route)}: still refused after {self.retry_for:g}s: {last.message}",
                    code=last.code,
                    error_info=last.error_info,
                    retry_delay=last.retry_delay,
                )
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"{_route_name(route)}: gave up after {self.retry_for:g}s: {last.message if last else ''}",
                    code=last.code if last else None,
                    error_info=last.error_info if last else None,
                )
            if sleep:
                delay = random.uniform(backoff, 2 * backoff)
                if last is not None and last.retry_delay:
                    delay = max(delay, last.retry_delay)
                # A last try at the deadline rather than none.
                time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
                backoff = min(backoff * 2, 2.0 if isinstance(last, Overloaded) else 0.5)

    def _shard_call(self, shard: int, invoke, *, idempotent: bool):
        replicas = self._shard_replicas.get(shard)
        if replicas is None:
            raise InvalidInput(f"unknown shard {shard}")
        return self._call(("shard", shard), replicas, invoke, idempotent=idempotent)

    def _pick_group(self) -> tuple[tuple, list[str]]:
        """A coordinator group for new work, round-robin; with endpoints
        only, whichever group answers."""
        if not self._group_replicas:
            if self.config is not None:
                raise InvalidInput("the cluster config has no coordinator groups")
            return ("begin",), self._endpoints
        groups = sorted(self._group_replicas)
        with self._lock:
            g = groups[self._next_group % len(groups)]
            self._next_group += 1
        return ("group", g), self._group_replicas[g]

    def _group_call(self, group: int, invoke, *, idempotent: bool):
        replicas = self._group_replicas.get(group)
        if replicas is None:
            if self.config is not None:
                raise InvalidInput(f"no coordinator group {group} in the config")
            replicas = self._endpoints
        return self._call(("group", group), replicas, invoke, idempotent=idempotent)

    # -- plain key-value operations --------------------------------------

    def get(self, key) -> bytes | None:
        """Linearizable read of one key; None if absent."""
        k = to_bytes(key, "key")

        def once(m: ShardMap):
            shard = m.shard_for_key(k)
            req = pb.GetRequest(shard_id=shard, key=k, shard_version=m.version(shard))
            r, _ = self._shard_call(shard, lambda c, t: c.kv.Get(req, timeout=t), idempotent=True)
            return r

        r = self._rerouted(once)
        return r.value if r.found else None

    def put(self, key, value) -> None:
        k, v = to_bytes(key, "key"), to_bytes(value, "value")
        self._write(k, pb.WriteOp(key=k, put=v))

    def delete(self, key) -> None:
        k = to_bytes(key, "key")
        self._write(k, pb.WriteOp(key=k, delete=True))

    def _write(self, key: bytes, op) -> None:
        def once(m: ShardMap):
            shard = m.shard_for_key(key)
            req = pb.WriteRequest(shard_id=shard, ops=[op], shard_version=m.version(shard))
            # Not idempotent, but a WRONG_SHARD refusal did nothing:
            # routing it again is safe.
            self._shard_call(shard, lambda c, t: c.kv.Write(req, timeout=t), idempotent=False)

        self._rerouted(once)

    def _rerouted(self, once: Callable[[ShardMap], T]) -> T:
        """`once(map)` with the map requests are routed by now; when a
        shard says that map is stale (WRONG_SHARD, nothing done), rebuild
        it from every shard's descriptor and run `once` again, a few times
        at most."""
        self.shard_for_key(b"")  # a client without a map says why here
        for attempt in range(REROUTES + 1):
            m = self._map
            try:
                return once(m)
            except WrongShard:
                if attempt == REROUTES:
                    raise
                self._refresh_map(m)
        raise AssertionError("unreachable")

    def _refresh_map(self, stale: ShardMap) -> None:
        """Replace `stale` by the map the shards' own descriptors make (each
        shard's leader asked); a no-op if another thread did already."""
        asked = time.monotonic()
        with self._refreshing:
            if self._map is not stale:
                return
            if self._refresh_failed is not None and self._refresh_failed[0] >= asked:
                raise Unavailable(self._refresh_failed[1])
            # Each leader answers at its own moment: across a merge one
            # may answer from before its side applied and another from
            # after (a gap or an overlap). Read again shortly before
            # giving up.
            pause, give_up = 0.02, time.monotonic() + REFRESH_SETTLES_WITHIN_S
            while True:
                try:
                    fresh = ShardMap.from_descriptors(self._describe_all(stale))
                    break
                except ValueError as e:
                    if time.monotonic() + pause > give_up:
                        why = f"the shards' descriptors do not make a map: {e}"
                        self._refresh_failed = (time.monotonic(), why)
                        raise Unavailable(why) from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.32)
            self._refresh_failed = None
            self._map = fresh

    def _describe_all(self, stale: ShardMap) -> list:
        """Every shard's descriptor, from its leader: the shards of `stale`,
        then those split off them (each descriptor names its successors),
        until none is new."""
        descriptors = []
        todo = list(stale.shards())
        asked: set[int] = set()
        while todo:
            shard = todo.pop(0)
            if shard in asked:
                continue
            asked.add(shard)
            req = pb.DescribeRequest(shard_id=shard)
            d, _ = self._shard_call(shard, lambda c, t: c.kv.Describe(req, timeout=t), idempotent=True)
            if d.shard_id != shard:
                raise ServerError(f"asked for shard {shard}'s descriptor, got shard {d.shard_id}'s")
            descriptors.append(d)
            voters = [self._addr_of[v] for v in d.voters if v in self._addr_of]
            # A shard a split created has no list in the config: its
            # own leader's voters are where it is now (it moves).
            if shard >= 2**63 and voters:
                self._shard_replicas[shard] = voters
            # A new shard starts on its parent's voters.
            for succ in d.successors:
                if succ not in asked:
                    self._shard_replicas.setdefault(
                        succ, voters or list(self._shard_replicas.get(shard, self._endpoints))
                    )
                    todo.append(succ)
        return descriptors

    # -- transactions ----------------------------------------------------

    def begin(self, priority: int = 0):
        """Open a transaction at a coordinator group's leader. `priority`:
        the age of an earlier attempt of the same work (see `transaction`)."""
        from .txn import Transaction

        route, replicas = self._pick_group()
        req = pb.BeginRequest(priority=priority)
        r, leader = self._call(route, replicas, lambda c, t: c.txn.Begin(req, timeout=t), idempotent=True)
        if not r.HasField("txn"):
            raise ServerError("coordinator returned no transaction id")
        txn = TxnId.from_pb(r.txn)
        self._set_leader(("group", txn.group), leader)
        return Transaction(self, txn, r.priority or txn.ts, leader)

    def transaction(self, fn: Callable, max_attempts: int = 30):
        """Run `fn(txn)` in a transaction and commit it; start over with a
        new transaction when it aborts, up to `max_attempts` times, each
        retry keeping the first attempt's age so that it cannot starve
        under wound-wait. Returns what `fn` returned. Other errors are
        raised at once; an unknown commit outcome raises OutcomeUnknown
        (never retried: the transaction may have committed)."""
        if max_attempts < 1:
            raise InvalidInput("max_attempts must be at least 1")
        backoff = 0.005
        priority = 0
        last = ""
        for _ in range(max_attempts):
            try:
                txn = self.begin(priority)
            except (Aborted, Unavailable) as e:
                last = e.message
            else:
                priority = priority or txn.priority
                try:
                    result = fn(txn)
                    txn.commit()
                    return result
                except Aborted as e:
                    last = e.message
                    txn.rollback()
                except BaseException:
                    txn.rollback()
                    raise
            time.sleep(random.uniform(backoff, 2 * backoff))
            backoff = min(backoff * 2, 0.5)
        raise Aborted(f"gave up after {max_attempts} attempts; last: {last}")

    def txn_status(self, txn: TxnId, resolve: bool = False) -> TxnStatus:
        """The outcome of a transaction, from its coordinator group.
        `resolve=False` changes nothing. `resolve=True` is final: with no
        decision anywhere, the shards fence the transaction and the
        coordinator records the presumed abort."""
        req = pb.TxnRequest(txn=txn.to_pb(), resolve=resolve)
        r, _ = self._group_call(txn.group, lambda c, t: c.txn.TxnStatus(req, timeout=t), idempotent=True)
        return outcome_of(r)

    def execute(self, guards=(), then=(), otherwise=()):
        """One-shot transaction, as etcd's txn: if every guard holds, run
        `then`, else `otherwise`, in one transaction that the coordinator
        retries on conflict. Build guards with `Guard` and ops with `Op`."""
        from .txn import Executed, Guard, Op

        for g in guards:
            if not isinstance(g, Guard):
                raise InvalidInput(f"guards must be Guard values, not {type(g).__name__}")
        for o in (*then, *otherwise):
            if not isinstance(o, Op):
                raise InvalidInput(f"ops must be Op values, not {type(o).__name__}")
        req = pb.ExecuteRequest(
            guards=[g.to_pb() for g in guards],
            then=[o.to_pb() for o in then],
            otherwise=[o.to_pb() for o in otherwise],
        )
        route, replicas = self._pick_group()
        r, _ = self._call(route, replicas, lambda c, t: c.txn.Execute(req, timeout=t), idempotent=False)
        txn = TxnId.from_pb(r.txn) if r.HasField("txn") else None
        if r.outcome == pb.OUTCOME_COMMITTED:
            return Executed(
                txn,
                r.succeeded,
                [(x.key, x.value if x.found else None) for x in r.results],
            )
        if r.outcome == pb.OUTCOME_ABORTED:
            raise Aborted(r.reason)
        raise OutcomeUnknown(f"transaction {txn}: {r.reason}", txn=txn)


def _route_name(route: tuple) -> str:
    if route[0] == "shard":
        return f"shard {route[1]}"
    if route[0] == "group":
        return f"coordinator group {route[1]}"
    return "coordinator"
