"""Key-to-shard mapping, the same pure function the servers compute.

A Kv request names its shard, and a participant refuses a key that is not
its shard's (INVALID_ARGUMENT), so the client must route exactly as
common/src/partition.rs does:

* hash: a consistent-hash ring of xxh3-64 points. Shard `s` puts
  `virtual_nodes` points on it, point `v` being xxh3_64 of the 16 bytes
  (s as little-endian u64, v as little-endian u64); points are sorted by
  (hash, shard). A key goes to the first point at or after xxh3_64(key),
  wrapping past the last point to the first.
* range: each shard owns [start, next start) in byte order.

xxh3 comes from the `xxhash` package (the reference C implementation), so
nothing here is hand-written hashing.
"""

from __future__ import annotations

import bisect
import struct

import xxhash


def _point(shard: int, vnode: int) -> int:
    return xxhash.xxh3_64_intdigest(struct.pack("<QQ", shard, vnode))


class ShardMap:
    def __init__(self, ring: list[tuple[int, int]] | None, ranges: list[tuple[bytes, int]] | None):
        self._ring = ring
        self._ring_keys = [p for p, _ in ring] if ring is not None else None
        self._ranges = ranges
        self._range_keys = [s for s, _ in ranges] if ranges is not None else None

    @staticmethod
    def hash(shards: list[int], virtual_nodes: int) -> "ShardMap":
        ids = sorted(set(shards))
        vnodes = max(virtual_nodes, 1)
        ring = sorted((_point(s, v), s) for s in ids for v in range(vnodes))
        return ShardMap(ring, None)

    @staticmethod
    def range(starts: list[tuple[bytes, int]]) -> "ShardMap":
        # Sorted by start; for equal starts the first listed wins (stable
        # sort, then keep the first of each run), as in Rust.
        ordered = sorted(starts, key=lambda p: p[0])
        ranges: list[tuple[bytes, int]] = []
        for s, shard in ordered:
            if not ranges or ranges[-1][0] != s:
                ranges.append((s, shard))
        if ranges:
            # The lowest start covers every key below it.
            ranges[0] = (b"", ranges[0][1])
        return ShardMap(None, ranges)

    @staticmethod
    def of_config(config) -> "ShardMap":
        if config.partitioning == "range":
            return ShardMap.range([(s.start, s.id) for s in config.shards if s.start is not None])
        return ShardMap.hash([s.id for s in config.shards], config.virtual_nodes)

    def shard_for_key(self, key: bytes) -> int:
        if self._ring is not None:
            if not self._ring:
                return 0
            h = xxhash.xxh3_64_intdigest(key)
            # First point >= h; ties on the hash go to the lower shard id
            # because the ring is sorted by (hash, shard).
            i = bisect.bisect_left(self._ring_keys, h)
            return self._ring[i % len(self._ring)][1]
        if not self._ranges:
            return 0
        # The last start <= key.
        i = bisect.bisect_right(self._range_keys, key) - 1
        return self._ranges[max(i, 0)][1]
