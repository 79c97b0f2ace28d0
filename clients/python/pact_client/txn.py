"""Interactive transactions, and the values of one-shot `execute`.

A transaction lives at the coordinator leader that began it: every later
request goes there, because only it knows the transaction. If that leader
refuses it (it lost its leadership) or cannot be reached, the transaction
is reported aborted, never silently restarted elsewhere; the coordinator
frees its locks when its lease runs out.

While a transaction is open a daemon thread renews its lease every third
of the cluster's `transactions.lease_ms`, so that a client that dies (or
forgets a transaction without rolling it back) frees its locks within the
lease, and a live one keeps them however long it thinks.

Writes are sent as they are made (one `Write` each), so a refused key or
a lock conflict shows at the call that caused it. A commit whose answer is
lost (timeout, connection cut) is followed by `TxnStatus` queries until
the outcome is decided or the retry budget ends.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc

from . import errors
from .client import Client, TxnId, outcome_of, pb, to_bytes
from .errors import Aborted, InvalidInput, OutcomeUnknown

# A participant's longest lock wait, added to a commit's timeout: the
# commit may wait for locks of the writes it carries.
COMMIT_LOCK_ALLOWANCE = 5.0


class Transaction:
    """An open transaction. Use it as a context manager to roll it back on
    an exception (or when the block ends without a commit)."""

    def __init__(self, client: Client, txn: TxnId, priority: int, leader: str):
        self._client = client
        self.id = txn
        # Its age for wound-wait: its own start, or the first attempt's.
        self.priority = priority
        self.leader = leader
        self.done = False
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"pact-keepalive-{txn}", daemon=True)
        self._beat.start()

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, *exc) -> None:
        self.rollback()

    def __repr__(self) -> str:
        return f"Transaction({self.id}, leader={self.leader}, done={self.done})"

    def _finish(self) -> None:
        self.done = True
        self._stop.set()

    def _heartbeat(self) -> None:
        every = self._client.lease / 3
        req = pb.TxnRequest(txn=self.id.to_pb())
        while not self._stop.wait(every):
            try:
                self._client._conn(self.leader).txn.Keepalive(req, timeout=every)
            except grpc.RpcError as e:
                # Finished, expired, or the coordinator lost its leadership:
                # nothing left to keep alive. A missed beat is otherwise
                # fine: the lease covers three of them.
                if e.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION):
                    return
            except (InvalidInput, ValueError):
                # The client was closed (grpcio raises ValueError for a
                # call on a closed channel).
                return

    def _call(self, method: str, req, timeout: float | None = None):
        if self.done:
            raise InvalidInput(f"transaction {self.id} is already finished")
        stub = self._client._conn(self.leader).txn
        try:
            return getattr(stub, method)(req, timeout=timeout or self._client.request_timeout)
        except grpc.RpcError as err:
            c = errors.classify(err)
            if c.kind in (errors.NOT_LEADER, errors.RETRY, errors.NEXT_NODE):
                # Only this leader knew the transaction.
                self._finish()
                raise Aborted(
                    f"coordinator {self.leader} lost the transaction: {c.error.message}",
                    code=c.error.code,
                    error_info=c.error.error_info,
                ) from None
            if isinstance(c.error, Aborted):
                self._finish()
            if isinstance(c.error, OutcomeUnknown):
                c.error.txn = self.id
            raise c.error from None

    def get(self, key) -> bytes | None:
        return self._read(key, False)

    def get_for_update(self, key) -> bytes | None:
        """Read with an exclusive lock, for a read-modify-write."""
        return self._read(key, True)

    def _read(self, key, for_update: bool) -> bytes | None:
        req = pb.TxnGetRequest(txn=self.id.to_pb(), key=to_bytes(key, "key"), for_update=for_update)
        r = self._call("Get", req)
        return r.value if r.found else None

    def put(self, key, value) -> None:
        k = to_bytes(key, "key")
        self._write(pb.WriteOp(key=k, put=to_bytes(value, "value")))

    def delete(self, key) -> None:
        k = to_bytes(key, "key")
        self._write(pb.WriteOp(key=k, delete=True))

    def _write(self, op) -> None:
        self._call("Write", pb.TxnWriteRequest(txn=self.id.to_pb(), ops=[op]))

    def commit(self) -> None:
        """Returns when committed. Raises Aborted if it did not and never
        will, OutcomeUnknown (with `.txn`) if that could not be found out."""
        if self.done:
            raise InvalidInput(f"transaction {self.id} is already finished")
        # Whatever happens next, the transaction is no longer the caller's
        # to use; and without heartbeats a commit that never arrived lets
        # the lease expire, which aborts it.
        self._finish()
        req = pb.TxnRequest(txn=self.id.to_pb())
        timeout = self._client.request_timeout + COMMIT_LOCK_ALLOWANCE
        try:
            r = self._client._conn(self.leader).txn.Commit(req, timeout=timeout)
        except grpc.RpcError as err:
            c = errors.classify(err)
            if c.kind in (errors.NOT_LEADER, errors.NEXT_NODE) or (c.kind == errors.RETRY and c.from_server):
                # Refused before anything was done, by the only node that
                # knew the transaction.
                raise Aborted(
                    f"coordinator {self.leader} lost the transaction: {c.error.message}",
                    code=c.error.code,
                    error_info=c.error.error_info,
                ) from None
            if c.kind in (errors.RETRY, errors.UNKNOWN):
                # The commit may have been carried out: ask.
                return self._settle(c.error.message)
            raise c.error from None
        st = outcome_of(r)
        if st.outcome == "committed":
            return None
        if st.outcome == "aborted":
            raise Aborted(st.reason)
        return self._settle(st.reason)

    def _settle(self, why: str) -> None:
        """Ask the coordinator for the outcome until it is decided."""
        deadline = time.monotonic() + self._client.retry_for
        delay = 0.05
        while True:
            try:
                st = self._client.txn_status(self.id)
            except errors.Unavailable as e:
                why = e.message
            else:
                if st.outcome == "committed":
                    return None
                if st.outcome == "aborted":
                    raise Aborted(st.reason)
                why = st.reason or st.outcome
            if time.monotonic() >= deadline:
                raise OutcomeUnknown(f"transaction {self.id}: {why}", txn=self.id)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def rollback(self) -> None:
        """Abort and release the locks now. Never raises: what it cannot
        reach expires with the lease."""
        if self.done:
            return
        try:
            self._call("Rollback", pb.TxnRequest(txn=self.id.to_pb()))
        except errors.PactError:
            pass
        self._finish()


@dataclass(frozen=True)
class Guard:
    """A condition of `Client.execute`: build with `exists`, `missing` or
    `equals`."""

    key: bytes
    kind: int
    value: bytes = b""

    @staticmethod
    def exists(key) -> "Guard":
        return Guard(to_bytes(key, "key"), pb.Guard.EXISTS)

    @staticmethod
    def missing(key) -> "Guard":
        return Guard(to_bytes(key, "key"), pb.Guard.MISSING)

    @staticmethod
    def equals(key, value) -> "Guard":
        return Guard(to_bytes(key, "key"), pb.Guard.EQUALS, to_bytes(value, "value"))

    def to_pb(self):
        return pb.Guard(key=self.key, kind=self.kind, value=self.value)


@dataclass(frozen=True)
class Op:
    """An operation of `Client.execute`: build with `put`, `delete` or
    `get`."""

    key: bytes
    kind: str
    value: bytes = b""

    @staticmethod
    def put(key, value) -> "Op":
        return Op(to_bytes(key, "key"), "put", to_bytes(value, "value"))

    @staticmethod
    def delete(key) -> "Op":
        return Op(to_bytes(key, "key"), "delete")

    @staticmethod
    def get(key) -> "Op":
        return Op(to_bytes(key, "key"), "get")

    def to_pb(self):
        if self.kind == "put":
            return pb.Op(key=self.key, put=self.value)
        if self.kind == "delete":
            return pb.Op(key=self.key, delete=True)
        return pb.Op(key=self.key, get=True)


@dataclass(frozen=True)
class Executed:
    """What a one-shot transaction did: whether the guards held (so `then`
    ran), and the branch's gets in order as (key, value or None)."""

    txn: TxnId | None
    succeeded: bool
    results: list[tuple[bytes, bytes | None]]
