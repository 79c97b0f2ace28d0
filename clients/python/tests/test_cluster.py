"""The Python client against a real 3-node cluster (`txn playground`)."""

from __future__ import annotations

import dataclasses
import random
import sys
import threading
import time
import unittest
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pact_client import (  # noqa: E402
    Aborted,
    Client,
    ClusterConfig,
    Guard,
    InvalidInput,
    Op,
    PactError,
)
from pact_client import errors  # noqa: E402
from pact_client.client import pb  # noqa: E402

from playground import Playground  # noqa: E402

CLUSTER: Playground | None = None
CONFIG: ClusterConfig | None = None


def setUpModule() -> None:
    global CLUSTER, CONFIG
    CLUSTER = Playground()
    CLUSTER.start()
    try:
        CONFIG = ClusterConfig.load(CLUSTER.config_path)
        with Client(CONFIG) as c:
            # "ready" means every group has a leader; a new leader still
            # rebuilds its transactions before it serves. Reads retry
            # until it does; writes would not (their outcome is unknown).
            for shard in sorted(s.id for s in CONFIG.shards):
                c.get(key_in_shard(c, shard, "warmup"))
            c.begin().rollback()
    except BaseException:
        CLUSTER.stop()
        raise


def tearDownModule() -> None:
    if CLUSTER is not None:
        CLUSTER.stop()


def key_in_shard(c: Client, shard: int, prefix: str) -> bytes:
    for i in range(100_000):
        k = f"{prefix}-{i}".encode()
        if c.shard_for_key(k) == shard:
            return k
    raise AssertionError(f"no key of shard {shard}")


def fresh(prefix: str) -> str:
    """A key prefix no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class ClusterTest(unittest.TestCase):
    def setUp(self) -> None:
        assert CONFIG is not None
        self.c = Client(CONFIG)
        self.shards = sorted(s.id for s in CONFIG.shards)

    def tearDown(self) -> None:
        self.c.close()

    def keys_across_shards(self, prefix: str) -> list[bytes]:
        p = fresh(prefix)
        return [key_in_shard(self.c, s, p) for s in self.shards]


class KvTest(ClusterTest):
    def test_put_get_delete_round_trip_on_every_shard(self) -> None:
        for k in self.keys_across_shards("kv"):
            self.assertIsNone(self.c.get(k))
            self.c.put(k, b"v1")
            self.assertEqual(self.c.get(k), b"v1")
            self.c.put(k, "v2")  # str is UTF-8
            self.assertEqual(self.c.get(k), b"v2")
            self.c.delete(k)
            self.assertIsNone(self.c.get(k))

    def test_binary_keys_and_values(self) -> None:
        k = b"\x00\xffbin-" + uuid.uuid4().bytes
        v = bytes(range(256))
        self.c.put(k, v)
        self.assertEqual(self.c.get(k), v)

    def test_routing_matches_the_servers(self) -> None:
        # A participant refuses a key that is not its shard's, so each of
        # these gets fails unless the client's ring equals the servers'.
        p = fresh("route")
        seen = set()
        for i in range(40):
            k = f"{p}-{i}".encode()
            seen.add(self.c.shard_for_key(k))
            self.assertIsNone(self.c.get(k))
        self.assertEqual(seen, set(self.shards))
        # ...and the refusal is real: the wrong shard is told off.
        k = key_in_shard(self.c, self.shards[0], p)
        self.c.get(key_in_shard(self.c, self.shards[1], p))
        leader = self.c._leader(("shard", self.shards[1]))
        stub = self.c._conn(leader).kv
        with self.assertRaises(grpc.RpcError) as cm:
            stub.Get(pb.GetRequest(shard_id=self.shards[1], key=k), timeout=5)
        # Routed by a wrong map: WRONG_SHARD (the shard does not own the
        # key); final for the call (the client's operations refresh).
        self.assertEqual(cm.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("does not own key", cm.exception.details())
        c = errors.classify(cm.exception)
        self.assertEqual(c.kind, errors.FAIL)
        self.assertIsInstance(c.error, errors.WrongShard)

    def test_a_stale_map_is_refreshed_from_the_shards(self) -> None:
        # A config whose ring differs from the one the shards recorded at
        # the cluster's first start: its requests are refused WRONG_SHARD,
        # and the client rebuilds its map from the shards' descriptors.
        stale_cfg = dataclasses.replace(CONFIG, virtual_nodes=max(1, CONFIG.virtual_nodes // 16))
        p = fresh("stale")
        with Client(stale_cfg) as stale:
            k = next(
                f"{p}-{i}".encode()
                for i in range(10_000)
                if stale.shard_for_key(f"{p}-{i}".encode()) != self.c.shard_for_key(f"{p}-{i}".encode())
            )
            stale.put(k, b"v")
            self.assertEqual(self.c.get(k), b"v")
            self.assertEqual(stale.shard_for_key(k), self.c.shard_for_key(k))
        with Client(stale_cfg) as stale:
            self.assertEqual(stale.get(k), b"v")

    def test_follower_refusal_carries_the_leader_hint(self) -> None:
        shard = self.shards[0]
        k = key_in_shard(self.c, shard, fresh("hint"))
        self.c.get(k)
        leader = self.c._leader(("shard", shard))
        follower = next(n.addr for n in CONFIG.nodes if n.addr != leader)
        stub = self.c._conn(follower).kv
        with self.assertRaises(grpc.RpcError) as cm:
            stub.Get(pb.GetRequest(shard_id=shard, key=k), timeout=5)
        c = errors.classify(cm.exception)
        self.assertEqual(c.kind, errors.NOT_LEADER)
        self.assertEqual(CONFIG.node_addr(c.leader_id), leader)
        self.assertEqual(c.leader_addr, leader)
        # A client that believes the follower leads follows the hint.
        self.c._set_leader(("shard", shard), follower)
        self.c.put(k, b"after-hint")
        self.assertEqual(self.c.get(k), b"after-hint")
        self.assertEqual(self.c._leader(("shard", shard)), leader)

    def test_dead_endpoint_is_skipped(self) -> None:
        # Endpoints only, the first of them dead: requests fail over to
        # live nodes (UNAVAILABLE is retried), and hints name addresses.
        dead = "127.0.0.1:1"
        eps = [dead] + [n.addr for n in CONFIG.nodes]
        with Client(endpoints=eps, shards=self.shards, retry_for=20) as c:
            p = fresh("ep")
            for shard in self.shards:
                k = key_in_shard(c, shard, p)
                c.put(k, b"x")
                self.assertEqual(c.get(k), b"x")
            # Transactions need no shard map: the coordinator routes.
            k = f"{p}-txn"
            c.transaction(lambda t: t.put(k, "t"))
            self.assertEqual(self.c.get(k), b"t")

    def test_no_shard_map_is_a_clean_error(self) -> None:
        with Client(endpoints=[n.addr for n in CONFIG.nodes]) as c:
            with self.assertRaises(InvalidInput):
                c.get(b"k")


class TxnTest(ClusterTest):
    def test_cross_shard_commit_is_visible(self) -> None:
        keys = self.keys_across_shards("xs")
        with self.c.begin() as t:
            for i, k in enumerate(keys):
                self.assertIsNone(t.get(k))
                t.put(k, f"v{i}")
            # A transaction reads its own writes.
            self.assertEqual(t.get(keys[0]), b"v0")
            t.commit()
        self.assertTrue(t.done)
        for i, k in enumerate(keys):
            self.assertEqual(self.c.get(k), f"v{i}".encode())
        self.assertEqual(self.c.txn_status(t.id).outcome, "committed")
        # Delete them all in one more transaction.
        self.c.transaction(lambda t: [t.delete(k) for k in keys])
        for k in keys:
            self.assertIsNone(self.c.get(k))

    def test_rollback_leaves_nothing(self) -> None:
        keys = self.keys_across_shards("rb")
        t = self.c.begin()
        for k in keys:
            t.put(k, b"never")
        t.rollback()
        for k in keys:
            self.assertIsNone(self.c.get(k))
        with self.assertRaises(InvalidInput):
            t.put(keys[0], b"too late")
        # Nothing records a rolled-back transaction (presumed abort): asked
        # plainly, its coordinator cannot say; resolving makes it final.
        self.assertIn(self.c.txn_status(t.id).outcome, ("unknown", "aborted"))
        self.assertEqual(self.c.txn_status(t.id, resolve=True).outcome, "aborted")

    def test_exception_in_transaction_rolls_back(self) -> None:
        keys = self.keys_across_shards("exc")

        def body(t):
            for k in keys:
                t.put(k, b"never")
            raise KeyError("the caller's own error")

        with self.assertRaises(KeyError):
            self.c.transaction(body)
        for k in keys:
            self.assertIsNone(self.c.get(k))

    def test_wounded_transaction_aborts_and_leaves_nothing(self) -> None:
        keys = self.keys_across_shards("wound")
        contested = keys[0]
        old = self.c.begin()
        young = self.c.begin()
        for k in keys:
            young.put(k, b"young")
        # The older transaction wants a lock the younger holds: wound-wait
        # aborts the younger one.
        old.put(contested, b"old")
        old.commit()
        with self.assertRaises(Aborted):
            young.commit()
        self.assertEqual(self.c.get(contested), b"old")
        for k in keys[1:]:
            self.assertIsNone(self.c.get(k))

    def test_transaction_outlives_the_lease(self) -> None:
        # Keepalives hold it open past `transactions.lease_ms`.
        k = f"{fresh('lease')}"
        t = self.c.begin()
        t.put(k, b"slow")
        time.sleep(self.c.lease * 1.7)
        t.commit()
        self.assertEqual(self.c.get(k), b"slow")

    def test_execute_guards(self) -> None:
        k = fresh("exec")
        r = self.c.execute([Guard.missing(k)], [Op.put(k, "1"), Op.get(k)], [Op.get(k)])
        self.assertTrue(r.succeeded)
        self.assertEqual(r.results, [(k.encode(), b"1")])
        r = self.c.execute([Guard.missing(k)], [Op.put(k, "2")], [Op.get(k)])
        self.assertFalse(r.succeeded)
        self.assertEqual(r.results, [(k.encode(), b"1")])
        r = self.c.execute([Guard.equals(k, "1")], [Op.delete(k)])
        self.assertTrue(r.succeeded)
        self.assertIsNone(self.c.get(k))
        self.assertEqual(self.c.txn_status(r.txn).outcome, "committed")

    def test_concurrent_transfers_keep_the_total(self) -> None:
        p = fresh("bank")
        accounts = [f"{p}-acct{i}" for i in range(6)]
        start = 100
        self.c.transaction(lambda t: [t.put(a, str(start)) for a in accounts])
        total = start * len(accounts)
        failures: list[BaseException] = []
        sums: list[int] = []

        def transfer(t, src: str, dst: str, amount: int) -> None:
            a = int(t.get_for_update(src))
            b = int(t.get_for_update(dst))
            if a >= amount:
                t.put(src, str(a - amount))
                t.put(dst, str(b + amount))

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            try:
                with Client(CONFIG) as c:
                    for _ in range(6):
                        src, dst = rng.sample(accounts, 2)
                        c.transaction(lambda t: transfer(t, src, dst, rng.randint(1, 40)))
            except BaseException as e:  # reported by the main thread
                failures.append(e)

        def auditor() -> None:
            try:
                with Client(CONFIG) as c:
                    for _ in range(3):
                        sums.append(c.transaction(lambda t: sum(int(t.get(a)) for a in accounts)))
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        threads.append(threading.Thread(target=auditor))
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
            self.assertFalse(th.is_alive(), "a transfer thread hung")
        self.assertEqual(failures, [])
        # Every snapshot a transaction saw, and the final state, hold the total.
        self.assertEqual(sums, [total] * len(sums))
        final = [int(self.c.get(a)) for a in accounts]
        self.assertEqual(sum(final), total, final)
        self.assertTrue(all(v >= 0 for v in final), final)


class BadInputTest(ClusterTest):
    def test_empty_key_is_invalid_input(self) -> None:
        for op in (lambda: self.c.put(b"", b"v"), lambda: self.c.get(""), lambda: self.c.delete(b"")):
            with self.assertRaises(InvalidInput) as cm:
                op()
            self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("key", str(cm.exception))

    def test_empty_key_in_a_transaction(self) -> None:
        k = fresh("after-bad")
        with self.c.begin() as t:
            with self.assertRaises(InvalidInput):
                t.put(b"", b"v")
            with self.assertRaises(InvalidInput):
                t.get(b"")
            # The refusal did not end the transaction.
            t.put(k, b"ok")
            t.commit()
        self.assertEqual(self.c.get(k), b"ok")
        with self.assertRaises(InvalidInput):
            self.c.execute([], [Op.put(b"", b"v")])

    def test_oversized_key_and_wrong_types(self) -> None:
        with self.assertRaises(InvalidInput) as cm:
            self.c.put(b"k" * 5000, b"v")
        self.assertEqual(cm.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        with self.assertRaises(InvalidInput) as cm:
            self.c.put(42, b"v")
        self.assertIsNone(cm.exception.code)  # refused before any request
        with self.assertRaises(PactError):
            self.c.execute(["not a guard"])


if __name__ == "__main__":
    unittest.main()
