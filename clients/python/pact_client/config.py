"""The cluster config file: the TOML that `txn --config` and every node read.

A client needs only part of it: the nodes' client addresses, which nodes
replicate which shard and coordinator group, how keys map to shards, the
transaction lease (open transactions heartbeat every third of it) and the
`[tls]` section. The servers validate the whole file when they start; this
module checks only what the client relies on, and names the field when
something is missing or of the wrong type, instead of failing later with a
misrouted key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

# Kept equal to the Rust defaults (common/src/config.rs): a file that leaves
# them out must route and time out exactly as the servers do.
DEFAULT_VIRTUAL_NODES = 128
DEFAULT_LEASE_MS = 1500


@dataclass(frozen=True)
class Node:
    id: int
    addr: str


@dataclass(frozen=True)
class Shard:
    id: int
    replicas: tuple[int, ...]
    # Range partitioning only: inclusive start key.
    start: bytes | None = None


@dataclass(frozen=True)
class Tls:
    """Paths of the PEM files a client uses (already made absolute)."""

    ca: str
    client_cert: str | None
    client_key: str | None


@dataclass(frozen=True)
class ClusterConfig:
    partitioning: str
    virtual_nodes: int
    nodes: tuple[Node, ...]
    shards: tuple[Shard, ...]
    coordinators: dict[int, tuple[int, ...]] = field(default_factory=dict)
    lease_ms: int = DEFAULT_LEASE_MS
    tls: Tls | None = None

    @staticmethod
    def load(path: str | os.PathLike[str]) -> "ClusterConfig":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {p}: {e}") from e
        return ClusterConfig.from_toml(text, base_dir=p.parent)

    @staticmethod
    def from_env() -> "ClusterConfig":
        """What `txn` uses: the file named by PACT_CONFIG, else the
        embedded default (the playground on ports 7001-7003)."""
        path = os.environ.get("PACT_CONFIG")
        if path:
            return ClusterConfig.load(path)
        return ClusterConfig.embedded_default()

    @staticmethod
    def from_toml(text: str, base_dir: str | os.PathLike[str] = ".") -> "ClusterConfig":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"cannot parse cluster config: {e}") from e
        return _from_dict(raw, Path(base_dir))

    @staticmethod
    def embedded_default() -> "ClusterConfig":
        """The layout of `ClusterConfig::embedded_default` in Rust: 3 nodes
        on 127.0.0.1:7001-7003, 3 shards with 3 replicas each, coordinator
        group 4 on all three nodes, hash partitioning."""
        return ClusterConfig.local(3, 3, 3, 7001, coordinator_group=4)

    @staticmethod
    def local(
        nodes: int,
        shards: int,
        replication: int,
        base_port: int,
        coordinator_group: int | None = None,
    ) -> "ClusterConfig":
        """The Rust `local_combined` layout: shard i on nodes i, i+1, ...
        (mod nodes); the coordinator group, if any, on the first
        `replication` nodes."""
        if nodes < 1 or shards < 1 or not 1 <= replication <= nodes:
            raise ConfigError("local layout needs nodes >= 1, shards >= 1, 1 <= replication <= nodes")
        node_list = tuple(Node(i + 1, f"127.0.0.1:{base_port + i}") for i in range(nodes))
        shard_list = tuple(
            Shard(i + 1, tuple((i + k) % nodes + 1 for k in range(replication)))
            for i in range(shards)
        )
        groups = {}
        if coordinator_group is not None:
            groups[coordinator_group] = tuple(range(1, replication + 1))
        return ClusterConfig("hash", DEFAULT_VIRTUAL_NODES, node_list, shard_list, groups)

    def node_addr(self, node_id: int) -> str | None:
        for n in self.nodes:
            if n.id == node_id:
                return n.addr
        return None


def _int(v: Any, what: str) -> int:
    # bool is an int subclass in Python; TOML `true` is not an id.
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ConfigError(f"invalid cluster config: {what} must be a non-negative integer, got {v!r}")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"invalid cluster config: {what} must be a string, got {v!r}")
    return v


def _table_list(raw: dict[str, Any], name: str) -> list[dict[str, Any]]:
    v = raw.get(name, [])
    if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
        raise ConfigError(f"invalid cluster config: {name} must be an array of tables ([[{name}]])")
    return v


def _from_dict(raw: dict[str, Any], base_dir: Path) -> ClusterConfig:
    partitioning = raw.get("partitioning")
    if partitioning not in ("hash", "range"):
        raise ConfigError(
            f'invalid cluster config: partitioning must be "hash" or "range", got {partitioning!r}'
        )
    vnodes = _int(raw.get("virtual_nodes", DEFAULT_VIRTUAL_NODES), "virtual_nodes")
    if not 1 <= vnodes <= 4096:
        raise ConfigError(f"invalid cluster config: virtual_nodes is {vnodes}, must be in 1..=4096")

    nodes = []
    for i, t in enumerate(_table_list(raw, "nodes")):
        if "id" not in t or "addr" not in t:
            raise ConfigError(f"invalid cluster config: nodes[{i}] needs id and addr")
        nodes.append(Node(_int(t["id"], f"nodes[{i}].id"), _str(t["addr"], f"nodes[{i}].addr")))
    if not nodes:
        raise ConfigError("invalid cluster config: no nodes: at least one [[nodes]] entry is required")
    known = {n.id for n in nodes}
    if len(known) != len(nodes):
        raise ConfigError("invalid cluster config: duplicate node id")

    def replicas(t: dict[str, Any], what: str) -> tuple[int, ...]:
        r = t.get("replicas")
        if not isinstance(r, list) or not r:
            raise ConfigError(f"invalid cluster config: {what}.replicas must be a non-empty array")
        ids = tuple(_int(x, f"{what}.replicas") for x in r)
        unknown = [x for x in ids if x not in known]
        if unknown:
            raise ConfigError(f"invalid cluster config: {what} names unknown node {unknown[0]}")
        return ids

    shards = []
    for i, t in enumerate(_table_list(raw, "shards")):
        if "id" not in t:
            raise ConfigError(f"invalid cluster config: shards[{i}] needs an id")
        sid = _int(t["id"], f"shards[{i}].id")
        start = t.get("start")
        if partitioning == "range":
            if start is None:
                raise ConfigError(
                    f"invalid cluster config: shard {sid} has no start key; "
                    "range partitioning needs one on every shard"
                )
            start = _str(start, f"shards[{i}].start").encode()
        elif start is not None:
            raise ConfigError(
                f"invalid cluster config: shard {sid} has a start key, "
                "but start is only allowed with range partitioning"
            )
        shards.append(Shard(sid, replicas(t, f"shard {sid}"), start))
    if not shards:
        raise ConfigError("invalid cluster config: no shards: at least one [[shards]] entry is required")
    if len({s.id for s in shards}) != len(shards):
        raise ConfigError("invalid cluster config: duplicate shard id")
    if partitioning == "range" and not any(s.start == b"" for s in shards):
        raise ConfigError('invalid cluster config: no shard has start "": one must start at the empty key')

    groups: dict[int, tuple[int, ...]] = {}
    for i, t in enumerate(_table_list(raw, "coordinators")):
        if "group" not in t:
            raise ConfigError(f"invalid cluster config: coordinators[{i}] needs a group")
        g = _int(t["group"], f"coordinators[{i}].group")
        if g == 0 or g in groups:
            raise ConfigError(f"invalid cluster config: coordinator group {g} is 0 or listed twice")
        groups[g] = replicas(t, f"coordinator group {g}")

    txn = raw.get("transactions", {})
    if not isinstance(txn, dict):
        raise ConfigError("invalid cluster config: [transactions] must be a table")
    lease_ms = _int(txn.get("lease_ms", DEFAULT_LEASE_MS), "transactions.lease_ms")
    if lease_ms < 300:
        raise ConfigError(f"invalid cluster config: transactions.lease_ms ({lease_ms}) must be at least 300")

    tls = None
    t = raw.get("tls")
    if t is not None:
        if not isinstance(t, dict) or "ca" not in t:
            raise ConfigError("invalid cluster config: [tls] needs ca")

        def path(v: Any, what: str) -> str:
            # Relative to the file's folder, as the servers read them.
            s = _str(v, what)
            return str(base_dir / s) if not os.path.isabs(s) else s

        cert, key = t.get("client_cert"), t.get("client_key")
        if (cert is None) != (key is None):
            raise ConfigError(
                "invalid cluster config: tls.client_cert and tls.client_key go together: give both or neither"
            )
        tls = Tls(
            path(t["ca"], "tls.ca"),
            path(cert, "tls.client_cert") if cert is not None else None,
            path(key, "tls.client_key") if key is not None else None,
        )

    return ClusterConfig(
        partitioning, vnodes, tuple(nodes), tuple(shards), groups, lease_ms, tls
    )
