"""Config, routing and status classification, without a cluster."""

from __future__ import annotations

import collections
import sys
import unittest
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pact_client import ClusterConfig, ConfigError, ShardMap  # noqa: E402
from pact_client import errors  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


class ConfigTest(unittest.TestCase):
    def test_example_files_load(self) -> None:
        h = ClusterConfig.load(REPO / "common" / "examples" / "cluster-hash.toml")
        self.assertEqual(h.partitioning, "hash")
        self.assertEqual([n.addr for n in h.nodes], ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"])
        self.assertEqual([s.replicas for s in h.shards], [(1, 2, 3), (2, 3, 1), (3, 1, 2)])
        r = ClusterConfig.load(REPO / "common" / "examples" / "cluster-range.toml")
        self.assertEqual(r.partitioning, "range")
        self.assertTrue(all(s.start is not None for s in r.shards))

    def test_embedded_default_is_the_playground_layout(self) -> None:
        c = ClusterConfig.embedded_default()
        self.assertEqual(c.coordinators, {4: (1, 2, 3)})
        self.assertEqual(c.lease_ms, 1500)
        self.assertEqual(c.node_addr(3), "127.0.0.1:7003")

    def test_errors_name_the_field(self) -> None:
        base = 'partitioning = "hash"\n[[nodes]]\nid = 1\naddr = "h:1"\npeer_addr = "h:2"\n'
        cases = {
            "": "partitioning",
            'partitioning = "hash"\n': "no nodes",
            base: "no shards",
            base + "[[shards]]\nid = 1\nreplicas = [2]\n": "unknown node 2",
            base + '[[shards]]\nid = 1\nreplicas = [1]\nstart = "a"\n': "only allowed with range",
            base + "[[shards]]\nid = 1\nreplicas = [1]\n[transactions]\nlease_ms = 10\n": "lease_ms",
            base + "[[shards]]\nid = true\nreplicas = [1]\n": "shards[0].id",
            "partitioning = [": "cannot parse",
        }
        for text, want in cases.items():
            with self.assertRaises(ConfigError, msg=text) as cm:
                ClusterConfig.from_toml(text)
            self.assertIn(want, str(cm.exception))

    def test_tls_paths_are_relative_to_the_file(self) -> None:
        text = (
            'partitioning = "hash"\n[[nodes]]\nid = 1\naddr = "h:1"\npeer_addr = "h:2"\n'
            "[[shards]]\nid = 1\nreplicas = [1]\n"
            '[tls]\nca = "certs/ca.pem"\ncert = "c"\nkey = "k"\nclient_cert = "/abs/client.pem"\nclient_key = "ck"\n'
        )
        c = ClusterConfig.from_toml(text, base_dir="/etc/pact")
        self.assertEqual(c.tls.ca, "/etc/pact/certs/ca.pem")
        self.assertEqual(c.tls.client_cert, "/abs/client.pem")
        self.assertEqual(c.tls.client_key, "/etc/pact/ck")


class ShardMapTest(unittest.TestCase):
    def test_ring_is_roughly_uniform(self) -> None:
        m = ShardMap.hash([1, 2, 3], 128)
        n = 30_000
        counts = collections.Counter(m.shard_for_key(f"key{i}".encode()) for i in range(n))
        self.assertEqual(set(counts), {1, 2, 3})
        for shard, c in counts.items():
            self.assertTrue(0.25 <= c / n <= 0.42, (shard, counts))

    def test_ring_ignores_order_and_duplicates(self) -> None:
        a = ShardMap.hash([1, 2, 3], 128)
        b = ShardMap.hash([3, 1, 2, 2], 128)
        for i in range(2000):
            k = f"k{i}".encode()
            self.assertEqual(a.shard_for_key(k), b.shard_for_key(k))

    def test_adding_a_shard_only_moves_keys_to_it(self) -> None:
        before = ShardMap.hash([1, 2, 3], 128)
        after = ShardMap.hash([1, 2, 3, 4], 128)
        moved = 0
        for i in range(20_000):
            k = f"key{i}".encode()
            old, new = before.shard_for_key(k), after.shard_for_key(k)
            if old != new:
                self.assertEqual(new, 4)
                moved += 1
        self.assertTrue(0.15 <= moved / 20_000 <= 0.35, moved)

    def test_a_refresh_follows_the_shards_split_off(self) -> None:
        # Shard 1 owns [, m) after a split and names shard 7, which owns
        # [m, ); the client knew shard 1 only, and learns shard 7 from the
        # descriptor, with the parent's voters as its replicas.
        from pact_client import Client
        from pact_client.client import pb

        c = Client(ClusterConfig.load(REPO / "common" / "examples" / "cluster-range.toml"))
        try:
            first = sorted(s.id for s in c.config.shards)
            answers = {
                first[0]: pb.ShardDescriptor(
                    shard_id=first[0], version=2, range=pb.KeyRange(start=b"", end=b"m"), successors=[7], voters=[1, 2]
                ),
                7: pb.ShardDescriptor(shard_id=7, version=2, range=pb.KeyRange(start=b"m")),
            }
            asked = []

            def call(shard, invoke, *, idempotent):
                asked.append(shard)
                return answers[shard], None

            c._shard_call = call
            c._map = ShardMap.range([(b"", first[0])])
            c._refresh_map(c._map)
            self.assertIn(7, asked)
            self.assertEqual(c.shard_for_key(b"n"), 7)
            self.assertEqual(c.shard_for_key(b"a"), first[0])
            self.assertEqual(c._shard_replicas[7], [c._addr_of[1], c._addr_of[2]])
        finally:
            c.close()

    def test_a_refresh_reads_again_while_a_merge_lands(self) -> None:
        # Shard 7 merged into shard 1: the first round finds shard 7
        # emptied but shard 1 still on its old range (a gap from m on);
        # the refresh reads again rather than failing, and routes the
        # merged keys to shard 1 once its leader has applied.
        from pact_client import Client
        from pact_client.client import pb

        c = Client(ClusterConfig.load(REPO / "common" / "examples" / "cluster-range.toml"))
        try:
            first = sorted(s.id for s in c.config.shards)[0]
            rounds = {first: 0}
            old = pb.ShardDescriptor(shard_id=first, version=2, range=pb.KeyRange(start=b"", end=b"m"))
            new = pb.ShardDescriptor(shard_id=first, version=3, range=pb.KeyRange(start=b""))
            gone = pb.ShardDescriptor(shard_id=7, version=3, range=pb.KeyRange(start=b"m", end=b"m"), successors=[first])

            def call(shard, invoke, *, idempotent):
                if shard == 7:
                    return gone, None
                rounds[first] += 1
                return (old if rounds[first] == 1 else new), None

            c._shard_call = call
            c._map = ShardMap.range([(b"", first), (b"m", 7)])
            c._refresh_map(c._map)
            self.assertEqual(rounds[first], 2)
            self.assertEqual(c.shard_for_key(b"n"), first)
        finally:
            c.close()

    def test_descriptors_rebuild_the_map_they_describe(self) -> None:
        from pact_client.client import pb

        ring = ShardMap.hash([1, 2, 3], 64)
        points = ring._ring
        arcs: dict[int, list[tuple[int, int]]] = {1: [], 2: [], 3: []}
        lo = 0
        for p, s in points:
            if lo <= p:
                arcs[s].append((lo, p))
            lo = p + 1
        if lo <= 2**64 - 1:
            arcs[points[0][1]].append((lo, 2**64 - 1))
        ds = [
            pb.ShardDescriptor(
                shard_id=s, version=1, ring=pb.RingArcs(lo=[a for a, _ in v], hi=[b for _, b in v])
            )
            for s, v in arcs.items()
        ]
        back = ShardMap.from_descriptors(ds)
        for i in range(5000):
            k = f"key{i}".encode()
            self.assertEqual(back.shard_for_key(k), ring.shard_for_key(k))
        self.assertEqual(back.shards(), [1, 2, 3])
        del ds[1].ring.hi[-1]
        with self.assertRaises(ValueError):
            ShardMap.from_descriptors(ds)
        rng = [
            pb.ShardDescriptor(shard_id=1, version=1, range=pb.KeyRange(start=b"")),
            pb.ShardDescriptor(shard_id=2, version=3, range=pb.KeyRange(start=b"m")),
        ]
        rng[0].range.end = b"m"
        m = ShardMap.from_descriptors(rng)
        self.assertEqual((m.shard_for_key(b"a"), m.shard_for_key(b"zz")), (1, 2))
        self.assertEqual((m.version(1), m.version(2)), (1, 3))
        rng[0].range.end = b"g"
        with self.assertRaises(ValueError):
            ShardMap.from_descriptors(rng)
        # Shard 2 merged into shard 1: its span is empty, and it routes nothing.
        rng[0].range.ClearField("end")
        rng[0].version = 4
        rng[1].range.end = b"m"
        merged = ShardMap.from_descriptors(rng)
        self.assertEqual(merged.shards(), [1])
        self.assertEqual(merged.shard_for_key(b"zz"), 1)

    def test_one_shard_owns_everything(self) -> None:
        m = ShardMap.hash([5], 1)
        self.assertEqual(m.shard_for_key(b""), 5)
        self.assertEqual(m.shard_for_key(b"anything"), 5)
        self.assertEqual(ShardMap.hash([], 128).shard_for_key(b"k"), 0)

    def test_range_boundaries(self) -> None:
        m = ShardMap.range([(b"p", 30), (b"", 10), (b"g", 20)])
        for key, shard in [
            (b"", 10),
            (b"a", 10),
            (b"f\xff\xff", 10),
            (b"g", 20),
            (b"g\x00", 20),
            (b"o\xff", 20),
            (b"p", 30),
            (b"\xff\xff", 30),
        ]:
            self.assertEqual(m.shard_for_key(key), shard, key)

    def test_range_without_empty_start_still_covers_everything(self) -> None:
        m = ShardMap.range([(b"m", 2), (b"c", 1)])
        self.assertEqual(m.shard_for_key(b"a"), 1)
        self.assertEqual(m.shard_for_key(b"m"), 2)

    def test_range_config(self) -> None:
        c = ClusterConfig.load(REPO / "common" / "examples" / "cluster-range.toml")
        m = ShardMap.of_config(c)
        for s in c.shards:
            self.assertEqual(m.shard_for_key(s.start), s.id)


class FakeError(grpc.RpcError):
    """What grpcio raises for a failed unary call, reduced to the parts
    the classifier reads."""

    def __init__(self, code, details="", trailers=()):
        self._code, self._details, self._trailers = code, details, tuple(trailers)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


class ClassifyTest(unittest.TestCase):
    def test_leader_hint_comes_from_metadata(self) -> None:
        c = errors.classify(
            FakeError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "whatever the text says",
                [("pact-leader-id", "2"), ("pact-leader-addr", "127.0.0.1:7002")],
            )
        )
        self.assertEqual((c.kind, c.leader_id, c.leader_addr), (errors.NOT_LEADER, 2, "127.0.0.1:7002"))
        c = errors.classify(FakeError(grpc.StatusCode.FAILED_PRECONDITION, "not leader"))
        self.assertEqual((c.kind, c.leader_id, c.leader_addr), (errors.NOT_LEADER, None, None))

    def test_codes_decide_not_messages(self) -> None:
        # Messages that would mislead a text matcher.
        want = {
            grpc.StatusCode.UNAVAILABLE: (errors.RETRY, errors.Unavailable),
            grpc.StatusCode.DEADLINE_EXCEEDED: (errors.UNKNOWN, errors.OutcomeUnknown),
            grpc.StatusCode.ABORTED: (errors.FAIL, errors.Aborted),
            grpc.StatusCode.RESOURCE_EXHAUSTED: (errors.OVERLOADED, errors.Overloaded),
            grpc.StatusCode.INVALID_ARGUMENT: (errors.FAIL, errors.InvalidInput),
            grpc.StatusCode.NOT_FOUND: (errors.FAIL, errors.InvalidInput),
            grpc.StatusCode.UNIMPLEMENTED: (errors.NEXT_NODE, errors.ServerError),
            grpc.StatusCode.INTERNAL: (errors.FAIL, errors.ServerError),
        }
        for code, (kind, cls) in want.items():
            c = errors.classify(FakeError(code, "not leader; aborted: unavailable"))
            self.assertEqual(c.kind, kind, code)
            self.assertIsInstance(c.error, cls, code)
            self.assertEqual(c.error.code, code)
            self.assertFalse(c.from_server)

    def test_rich_details_are_decoded_when_present(self) -> None:
        try:
            from google.protobuf import any_pb2
            from google.rpc import error_details_pb2, status_pb2
            import grpc_status  # noqa: F401
        except ImportError:
            self.skipTest("grpcio-status is not installed")
        info = error_details_pb2.ErrorInfo(reason="LEADER_RECOVERING", domain="pact", metadata={"shard": "2"})
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(250)
        st = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message="busy")
        for d in (info, retry):
            a = any_pb2.Any()
            a.Pack(d)
            st.details.append(a)
        err = FakeError(
            grpc.StatusCode.UNAVAILABLE, "busy", [("grpc-status-details-bin", st.SerializeToString())]
        )
        c = errors.classify(err)
        self.assertEqual(c.kind, errors.RETRY)
        self.assertTrue(c.from_server)
        self.assertEqual(c.error.error_info, errors.ErrorInfo("LEADER_RECOVERING", "pact", {"shard": "2"}))
        self.assertAlmostEqual(c.error.retry_delay, 0.25)
        # Details that contradict the status are ignored, not trusted.
        st.code = grpc.StatusCode.INTERNAL.value[0]
        bad = FakeError(grpc.StatusCode.UNAVAILABLE, "busy", [("grpc-status-details-bin", st.SerializeToString())])
        c = errors.classify(bad)
        self.assertIsNone(c.error.error_info)
        self.assertFalse(c.from_server)

    def _pact_error(self, code, reason, metadata, message="whatever the text"):
        try:
            from google.protobuf import any_pb2
            from google.rpc import error_details_pb2, status_pb2
            import grpc_status  # noqa: F401
        except ImportError:
            self.skipTest("grpcio-status is not installed")
        info = error_details_pb2.ErrorInfo(reason=reason, domain="pact.v1", metadata=metadata)
        st = status_pb2.Status(code=code.value[0], message=message)
        a = any_pb2.Any()
        a.Pack(info)
        st.details.append(a)
        return FakeError(code, message, [("grpc-status-details-bin", st.SerializeToString())])

    def test_pact_codes_decide_when_present(self) -> None:
        c = errors.classify(self._pact_error(grpc.StatusCode.FAILED_PRECONDITION, "CONFLICT", {}))
        self.assertEqual(c.kind, errors.FAIL)
        self.assertIsInstance(c.error, errors.Conflict)
        c = errors.classify(
            self._pact_error(grpc.StatusCode.FAILED_PRECONDITION, "NOT_LEADER", {"leader_id": "3", "leader_addr": "h:1"})
        )
        self.assertEqual((c.kind, c.leader_id, c.leader_addr), (errors.NOT_LEADER, 3, "h:1"))
        c = errors.classify(self._pact_error(grpc.StatusCode.ABORTED, "ABORTED", {"abort_kind": "wounded"}))
        self.assertIsInstance(c.error, errors.Aborted)
        self.assertEqual(c.error.abort_kind, "wounded")
        # An unknown code falls back on the gRPC code.
        c = errors.classify(self._pact_error(grpc.StatusCode.UNAVAILABLE, "SOMETHING_NEW", {}))
        self.assertEqual(c.kind, errors.RETRY)
        # Refused at an admission limit: retryable, whatever the gRPC code.
        c = errors.classify(self._pact_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", {}))
        self.assertEqual(c.kind, errors.OVERLOADED)
        self.assertIsInstance(c.error, errors.Overloaded)
        self.assertTrue(c.from_server)
        # Routed by a stale map: nothing done, not retried by this client.
        c = errors.classify(
            self._pact_error(grpc.StatusCode.FAILED_PRECONDITION, "WRONG_SHARD", {"shard_version": "2"})
        )
        self.assertEqual(c.kind, errors.FAIL)
        self.assertIsInstance(c.error, errors.Unavailable)


if __name__ == "__main__":
    unittest.main()
