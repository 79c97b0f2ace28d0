"""A minimal Python client for Pact, built only on the gRPC API.

It exists to show that `proto/proto/pact/v1/pact.proto` is enough to use
Pact from another language: the stubs are generated from that file by
grpcio-tools (`generate.py`), and nothing here links the Rust client.

What a client in any language has to do, and where it is done here:

* route a key to its shard exactly as the servers do (routing.py: the
  xxh3 hash ring or the range table of the cluster config, config.py);
* send each request to the leader of its shard or coordinator group,
  following the `pact-leader-id` / `pact-leader-addr` hints of a
  FAILED_PRECONDITION refusal and retrying UNAVAILABLE elsewhere with
  backoff (client.py);
* read errors from gRPC codes and metadata only (errors.py);
* keep an open transaction alive with Keepalive, and find out the outcome
  of a commit whose answer was lost (txn.py).

Example::

    from pact_client import Client

    with Client("cluster.toml") as c:
        c.put(b"alice", b"100")
        c.transaction(lambda t: t.put("bob", t.get("alice") or b"0"))
"""

from .client import Client, TxnId, TxnStatus
from .config import ClusterConfig
from .errors import (
    Aborted,
    ConfigError,
    Conflict,
    ErrorInfo,
    InvalidInput,
    OutcomeUnknown,
    Overloaded,
    PactError,
    ServerError,
    Unavailable,
    WrongShard,
)
from .routing import ShardMap
from .txn import Executed, Guard, Op, Transaction

__all__ = [
    "Aborted",
    "Client",
    "ClusterConfig",
    "ConfigError",
    "Conflict",
    "ErrorInfo",
    "Executed",
    "Guard",
    "InvalidInput",
    "Op",
    "OutcomeUnknown",
    "Overloaded",
    "PactError",
    "ServerError",
    "ShardMap",
    "Transaction",
    "TxnId",
    "TxnStatus",
    "Unavailable",
    "WrongShard",
]
