#!/usr/bin/env bash
# The project's test command: format and lint gates, then every test.
# Process-level tests (and the Python client's tests) start real server
# binaries (pact, participant, coordinator), so build them first;
# they run one at a time so 3-process clusters do not starve each other of
# the machine's 2 cores (elections are timing-sensitive).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
# The Python client (clients/python) against real clusters of those binaries.
bash clients/python/run-tests.sh
cargo test --workspace --exclude pact-tests
cargo test -p pact-tests -- --test-threads=1
