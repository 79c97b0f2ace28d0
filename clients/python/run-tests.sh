#!/usr/bin/env bash
# The Python client's tests: a virtualenv with the pinned packages of
# requirements.txt (kept under target/ and rebuilt only when that file
# changes), stubs generated from proto/, then the unit tests and the tests
# against real playground clusters, which use the binaries of
# `cargo build --workspace --bins` (or those in PACT_BIN_DIR).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${PACT_PY_VENV:-$repo/target/pyclient-venv}
py="$venv/bin/python"

make_venv() {
  rm -rf "$venv"
  if python3 -m venv "$venv" >/dev/null 2>&1; then
    "$py" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"
  else
    # No ensurepip (Debian's python3 without python3-venv): make the venv
    # without pip and install into it with the system's pip.
    rm -rf "$venv"
    python3 -m venv --without-pip "$venv"
    python3 -m pip --python "$py" install -q --disable-pip-version-check -r "$here/requirements.txt"
  fi
}

if ! cmp -s "$here/requirements.txt" "$venv/.requirements" 2>/dev/null; then
  # pip retries a failed connection but not a truncated index page (seen
  # once in CI as a JSONDecodeError): try the whole install again.
  for attempt in 1 2 3; do
    if make_venv; then
      break
    fi
    if [ "$attempt" -eq 3 ]; then
      echo "run-tests: could not install $here/requirements.txt after 3 attempts" >&2
      exit 1
    fi
    echo "run-tests: installing the Python packages failed (attempt $attempt); retrying" >&2
    sleep 10
  done
  cp "$here/requirements.txt" "$venv/.requirements"
fi

"$py" "$here/generate.py"
# The clusters are bounded by the tests themselves (start, stop); this
# bounds a hang anywhere else. On SIGTERM the tests stop their clusters.
cd "$here/tests"
exec timeout --kill-after=30 300 "$py" -m unittest discover -s . -v
