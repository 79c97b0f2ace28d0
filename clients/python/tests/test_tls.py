"""The Python client against a playground with mutual TLS on every port."""

from __future__ import annotations

import dataclasses
import sys
import unittest
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pact_client import Client, ClusterConfig, Guard, Op, Unavailable  # noqa: E402

from playground import Playground  # noqa: E402

CLUSTER: Playground | None = None


def setUpModule() -> None:
    global CLUSTER
    CLUSTER = Playground(tls=True)
    CLUSTER.start()


def tearDownModule() -> None:
    if CLUSTER is not None:
        CLUSTER.stop()


class TlsTest(unittest.TestCase):
    def test_config_certificates_are_used(self) -> None:
        # The playground's [tls] names a client certificate; paths in it
        # are relative to the file.
        config = ClusterConfig.load(CLUSTER.config_path)
        self.assertIsNotNone(config.tls.client_cert)
        k = f"tls-{uuid.uuid4().hex[:8]}"
        with Client(config) as c:
            c.transaction(lambda t: t.get(k))  # warm-up: every group serves
            c.put(k, b"secret")
            self.assertEqual(c.get(k), b"secret")
            self.assertEqual(c.transaction(lambda t: t.get(k)), b"secret")
            r = c.execute([Guard.equals(k, "secret")], [Op.delete(k)])
            self.assertTrue(r.succeeded)
            self.assertIsNone(c.get(k))

    def test_plain_connection_is_refused(self) -> None:
        config = dataclasses.replace(ClusterConfig.load(CLUSTER.config_path), tls=None)
        with Client(config, retry_for=1.0) as c:
            with self.assertRaises(Unavailable):
                c.get(b"k")
            with self.assertRaises(Unavailable):
                c.put(b"k", b"v")


if __name__ == "__main__":
    unittest.main()
