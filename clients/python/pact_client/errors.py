"""Errors, and how a gRPC status from a Pact server is read.

The exceptions say what the caller should do, as the Rust client's
`ClientError` does: retry later (`Unavailable`), start the transaction
over (`Aborted`), find out first (`OutcomeUnknown`), or fix the request
(`InvalidInput`).

Statuses are classified on their code and metadata only, never on the
message text (which is for people and may change):

* FAILED_PRECONDITION with a `pact-leader-id` / `pact-leader-addr`
  entry: not the leader; retry at the hinted node. Without the entry it is
  either "not leader, no leader known" or a conflict with recorded state;
  the code alone cannot tell them apart, and a client reaches a conflict
  only through a coordinator (which reports it as an aborted outcome), so
  it is read as "no leader known": retried elsewhere with backoff until
  the retry budget ends.
* UNAVAILABLE: nothing was done, or the connection failed. Retried.
* DEADLINE_EXCEEDED, UNKNOWN, CANCELLED: the request may have been
  applied.
* ABORTED: the transaction is aborted; nothing of it was applied.
* RESOURCE_EXHAUSTED: the server is overloaded (code OVERLOADED: refused
  at an admission limit, nothing done); retried at the same node after
  the RetryInfo delay, with backoff, and raised as `Overloaded` when the
  retry budget ends.
* INVALID_ARGUMENT, OUT_OF_RANGE, NOT_FOUND: a bad request.
* UNIMPLEMENTED: the node does not serve that service (a participant-only
  node asked for `Txn`); another node may.

When the server attaches google.rpc rich details (`grpc-status-details-bin`)
they are decoded with grpcio-status, if it is installed, and kept on the
exception (`error_info`, `retry_delay`); a status carrying them was
produced by the server's handler, not by the transport, which tells a
server's "unavailable, nothing done" from a connection cut mid-request.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

LEADER_ID_HEADER = "pact-leader-id"
LEADER_ADDR_HEADER = "pact-leader-addr"


@dataclass(frozen=True)
class ErrorInfo:
    """google.rpc.ErrorInfo from a status's rich details."""

    reason: str
    domain: str
    metadata: dict[str, str]


class PactError(Exception):
    """Base of every error the client raises.

    `code` is the gRPC status code of the server's answer (None for errors
    found before any request); `error_info` and `retry_delay` (seconds)
    come from the status's rich details when the server sent them."""

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        error_info: ErrorInfo | None = None,
        retry_delay: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.error_info = error_info
        self.retry_delay = retry_delay


class ConfigError(PactError):
    """The cluster config file cannot be read or is invalid."""


class Unavailable(PactError):
    """Nothing was done (no leader reachable within the retry budget);
    retry later."""


class WrongShard(Unavailable):
    """Routed by a stale map: the shard does not own the key (or is at
    another descriptor version). Nothing was done. The client refreshes its
    map from the shards and routes again before raising this."""


class Overloaded(PactError):
    """A server refused the request at its admission limit (too many
    transactions open or requests in flight, a full queue); nothing was
    done. The client retried with backoff until its retry budget ended;
    retry later, or send less."""


class Aborted(PactError):
    """The transaction was aborted (conflict, wounded by an older
    transaction, lock wait timeout, coordinator failover); nothing of it
    was applied. Start it over. `abort_kind` says why, as data, when the
    server said: wounded, lock_timeout, expired, leadership, unavailable,
    conflict or rollback."""

    @property
    def abort_kind(self) -> str | None:
        if self.error_info is None:
            return None
        return self.error_info.metadata.get("abort_kind")


class Conflict(PactError):
    """The request contradicts recorded state (for example a decision
    refused because the other outcome is already recorded)."""


class OutcomeUnknown(PactError):
    """A write or commit may or may not have been applied. `txn` is the
    transaction's id when known: ask `Client.txn_status` later."""

    def __init__(self, message: str, txn=None, **kw):
        super().__init__(message, **kw)
        self.txn = txn


class InvalidInput(PactError):
    """The request is malformed (empty or too long key, too large batch,
    unknown shard); retrying will not help."""


class ServerError(PactError):
    """A server reported an internal failure (for example a stopped
    replica), or answered something this client does not understand."""


# What to do with a failed call; see `classify`.
NOT_LEADER = "not_leader"
RETRY = "retry"
UNKNOWN = "unknown"
NEXT_NODE = "next_node"
OVERLOADED = "overloaded"
FAIL = "fail"


@dataclass
class Classified:
    kind: str
    # NOT_LEADER: the leader's id and client address, when the server knew.
    leader_id: int | None = None
    leader_addr: str | None = None
    # Built for FAIL; for the others, what to report if retries run out.
    error: PactError | None = None
    # The status came with rich details, so from the server's handler.
    from_server: bool = False


def _trailers(err: grpc.RpcError) -> dict[str, str | bytes]:
    try:
        md = err.trailing_metadata() or ()
    except Exception:  # not a grpc.Call: nothing to read
        md = ()
    return {k: v for k, v in md}


def _details(err: grpc.RpcError) -> tuple[ErrorInfo | None, float | None, bool]:
    """(ErrorInfo, RetryInfo delay in seconds, any details at all)."""
    try:
        from grpc_status import rpc_status
        from google.rpc import error_details_pb2
    except ImportError:
        return None, None, False
    try:
        st = rpc_status.from_call(err)
    except Exception:  # details that do not match the status: ignore them
        return None, None, False
    if st is None:
        return None, None, False
    info, delay = None, None
    for d in st.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            e = error_details_pb2.ErrorInfo()
            d.Unpack(e)
            info = ErrorInfo(e.reason, e.domain, dict(e.metadata))
        elif d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            r = error_details_pb2.RetryInfo()
            d.Unpack(r)
            delay = r.retry_delay.seconds + r.retry_delay.nanos / 1e9
    return info, delay, bool(st.details)


def _text(v: str | bytes) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


PACT_DOMAIN = "pact.v1"


def _by_pact_code(info: ErrorInfo, msg: str, kw: dict, from_server: bool) -> Classified | None:
    r, md = info.reason, info.metadata
    if r == "NOT_LEADER":
        leader_id = None
        try:
            leader_id = int(md["leader_id"]) if "leader_id" in md else None
        except ValueError:
            leader_id = None
        return Classified(
            NOT_LEADER,
            leader_id=leader_id,
            leader_addr=md.get("leader_addr") or None,
            error=Unavailable(msg, **kw),
            from_server=from_server,
        )
    if r == "UNAVAILABLE":
        return Classified(RETRY, error=Unavailable(msg, **kw), from_server=from_server)
    if r == "OUTCOME_UNKNOWN":
        return Classified(UNKNOWN, error=OutcomeUnknown(msg, **kw), from_server=from_server)
    if r == "ABORTED":
        return Classified(FAIL, error=Aborted(msg, **kw), from_server=from_server)
    if r == "CONFLICT":
        return Classified(FAIL, error=Conflict(msg, **kw), from_server=from_server)
    if r in ("INVALID_INPUT", "UNKNOWN_SHARD"):
        return Classified(FAIL, error=InvalidInput(msg, **kw), from_server=from_server)
    if r == "STOPPED":
        return Classified(FAIL, error=ServerError(msg, **kw), from_server=from_server)
    if r == "OVERLOADED":
        return Classified(OVERLOADED, error=Overloaded(msg, **kw), from_server=from_server)
    if r == "WRONG_SHARD":
        # Routed by a stale map (the config's key ranges were edited after
        # the cluster's first start, or shards split): nothing was done.
        # Final for this call; the client's operations refresh the map
        # from the shards' descriptors and route again.
        return Classified(FAIL, error=WrongShard(msg, **kw), from_server=from_server)
    return None  # a code newer than this client: the gRPC code decides


def classify(err: grpc.RpcError) -> Classified:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    msg = (err.details() if hasattr(err, "details") else None) or str(err)
    info, delay, from_server = _details(err)
    kw = {"code": code, "error_info": info, "retry_delay": delay}

    # A Pact server names the error in ErrorInfo (domain pact.v1, reason
    # one of the ErrorCode names in pact.proto): that decides.
    if info is not None and info.domain == PACT_DOMAIN:
        by_code = _by_pact_code(info, msg, kw, from_server)
        if by_code is not None:
            return by_code

    if code == grpc.StatusCode.FAILED_PRECONDITION:
        md = _trailers(err)
        leader_id = None
        raw_id = md.get(LEADER_ID_HEADER)
        if raw_id is not None:
            try:
                leader_id = int(_text(raw_id))
            except ValueError:
                leader_id = None
        addr = md.get(LEADER_ADDR_HEADER)
        return Classified(
            NOT_LEADER,
            leader_id=leader_id,
            leader_addr=_text(addr) if addr else None,
            error=Unavailable(msg, **kw),
            from_server=from_server,
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return Classified(RETRY, error=Unavailable(msg, **kw), from_server=from_server)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Classified(NEXT_NODE, error=ServerError(msg, **kw), from_server=from_server)
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED):
        return Classified(UNKNOWN, error=OutcomeUnknown(msg, **kw), from_server=from_server)
    if code == grpc.StatusCode.ABORTED:
        return Classified(FAIL, error=Aborted(msg, **kw), from_server=from_server)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # A quota (an oversized message is OUT_OF_RANGE): nothing done.
        return Classified(OVERLOADED, error=Overloaded(msg, **kw), from_server=from_server)
    if code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
    ):
        return Classified(FAIL, error=InvalidInput(msg, **kw), from_server=from_server)
    return Classified(FAIL, error=ServerError(f"{code.name}: {msg}", **kw), from_server=from_server)
