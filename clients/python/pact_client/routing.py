"""Key-to-shard mapping, the same pure function the servers compute.

A Kv request names its shard, and a participant refuses a key that is not
its shard's (WRONG_SHARD), so the client routes exactly as
common/src/partition.rs does:

* hash: a consistent-hash ring of xxh3-64 points. Shard `s` puts
  `virtual_nodes` points on it, point `v` being xxh3_64 of the 16 bytes
  (s as little-endian u64, v as little-endian u64); points are sorted by
  (hash, shard). A key goes to the first point at or after xxh3_64(key),
  wrapping past the last point to the first.
* range: each shard owns [start, next start) in byte order.

xxh3 comes from the `xxhash` package (the reference C implementation), so
nothing here is hand-written hashing.

The config's map is where routing starts. What a shard owns is its own
descriptor (its key range, or the inclusive intervals of key hashes it
holds on the ring, and a version); after a WRONG_SHARD the client builds
its map from every shard's descriptor (`ShardMap.from_descriptors`).
"""

from __future__ import annotations

import bisect
import struct

import xxhash


def _point(shard: int, vnode: int) -> int:
    return xxhash.xxh3_64_intdigest(struct.pack("<QQ", shard, vnode))


class ShardMap:
    def __init__(
        self,
        ring: list[tuple[int, int]] | None,
        ranges: list[tuple[bytes, int]] | None,
        versions: dict[int, int] | None = None,
    ):
        self._versions = versions or {}
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
    def from_descriptors(descriptors) -> "ShardMap":
        """The map that shards' descriptors (`pb.ShardDescriptor`, one per
        shard) make; ValueError unless they cover every key exactly once."""
        versions: dict[int, int] = {}
        ranges: list[tuple[bytes, bytes | None, int]] = []
        arcs: list[tuple[int, int, int]] = []
        for d in descriptors:
            if d.shard_id in versions:
                raise ValueError(f"two descriptors of shard {d.shard_id}")
            versions[d.shard_id] = d.version
            kind = d.WhichOneof("span")
            if kind == "range":
                end = d.range.end if d.range.HasField("end") else None
                if end is not None and end == d.range.start:
                    # Merged into another shard: it owns nothing.
                    continue
                ranges.append((d.range.start, end, d.shard_id))
            elif kind == "ring":
                if not d.ring.lo and not d.ring.hi:
                    continue
                if len(d.ring.lo) != len(d.ring.hi):
                    raise ValueError(f"shard {d.shard_id}: arc starts and ends differ in number")
                arcs.extend((lo, hi, d.shard_id) for lo, hi in zip(d.ring.lo, d.ring.hi))
            else:
                raise ValueError(f"shard {d.shard_id}: descriptor without a span")
        if ranges and arcs:
            raise ValueError("some shards own ranges, others ring arcs")
        if ranges:
            ranges.sort()
            expect: bytes | None = b""
            for start, end, shard in ranges:
                if start != expect:
                    raise ValueError(f"shard {shard}'s range starts at {start!r}, expected {expect!r}")
                if end is not None and end <= start:
                    raise ValueError(f"shard {shard}'s range is empty")
                expect = end
            if expect is not None:
                raise ValueError("the ranges do not reach the end of the key space")
            return ShardMap(None, [(s, shard) for s, _, shard in ranges], versions)
        arcs.sort()
        nxt: int | None = 0
        for lo, hi, shard in arcs:
            if nxt != lo or hi < lo:
                raise ValueError(f"shard {shard}'s ring arc {lo}..={hi} leaves a gap or overlaps")
            nxt = hi + 1 if hi < 2**64 - 1 else None
        if not arcs or nxt is not None:
            raise ValueError("the ring arcs do not cover the whole ring")
        # An arc's last hash is a ring point: a key goes to the first point
        # at or past its hash, which is the arc holding it.
        return ShardMap([(hi, shard) for _, hi, shard in arcs], None, versions)

    def version(self, shard: int) -> int:
        """The shard's descriptor version as this map knows it (1, the
        first, unless a descriptor said otherwise)."""
        return self._versions.get(shard, 1)

    def shards(self) -> list[int]:
        if self._ring is not None:
            return sorted({s for _, s in self._ring})
        return sorted({s for _, s in self._ranges or []})

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
