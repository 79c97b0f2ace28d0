# Pieces the bench scripts share. Source it after defining `die MESSAGE`
# (print and exit): `. "$root/bench/lib.sh"`.

# wait_playground OUT PID: wait (up to 60 s) until the `txn playground`
# whose output goes to OUT says it is ready; die, showing OUT, if it exits
# or does not get there.
wait_playground() {
  local out=$1 pid=$2
  for _ in $(seq 1 300); do
    grep -q '^ready' "$out" && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$out" >&2; die "the playground exited"; }
    sleep 0.2
  done
  cat "$out" >&2
  die "the playground did not get ready in 60 s"
}

# build_servers BIN_DIR PROFILE: build txn, pact and bench in PROFILE
# (release or debug) unless NO_BUILD=1, then check BIN_DIR holds them.
build_servers() {
  local dir=$1 profile=$2 b
  if [ "${NO_BUILD:-}" != 1 ]; then
    printf '== building %s binaries\n' "$profile" >&2
    local flag=()
    [ "$profile" = release ] && flag=(--release)
    cargo build "${flag[@]}" --quiet --bins -p pact-cli -p pact-server -p pact-bench
  fi
  for b in txn pact bench; do
    [ -x "$dir/$b" ] || die "$dir/$b is missing; run without NO_BUILD=1"
  done
}

# stop_cluster: the EXIT trap of scripts that run their own nodes. Stops
# the playground `$pg` (if set) and every node in the associative array
# `pids` (SIGTERM, then SIGKILL after 10 s), then deletes `$tmp` unless
# KEEP=1 (then it prints the path).
stop_cluster() {
  if [ -n "${pg:-}" ]; then kill -INT "$pg" 2>/dev/null || true; fi
  local n
  for n in "${!pids[@]}"; do kill -TERM "${pids[$n]}" 2>/dev/null || true; done
  for n in "${!pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "${pids[$n]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pids[$n]}" 2>/dev/null || true
  done
  if [ "${KEEP:-}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
