#!/usr/bin/env bash
# Long reliability run (issue 5): every #[ignore]d test in tests/stress_*.rs, release build,
# one test at a time, with the figures collected in one file.
#
#   bench/stress.sh [OUT_DIR]        (default: target/stress/<UTC time>)
#
# Covers uring, epoll and uring-multishot with --threads 1 and 2: 10,000 connections, 60 s
# closed-loop + 60 s open-loop soak (STRESS_SOAK_SECS), hostile clients incl. a 100,000
# connection storm and 200 MiB never-reading writers, exhaustion, SIGTERM under load,
# multi-host through network namespaces (root + iproute2, else skipped with a message), and
# STRESS_FUZZ_CASES (20,000) proptest cases per parser. About 20 minutes on 2 vCPUs; the whole
# run is capped at 50 minutes; any failure makes the script exit non-zero.
#
# Needs: a Rust toolchain, iproute2 (`ip`) for the namespace tests; run as root for those.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/stress/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
figures="$out/figures.txt"
log="$out/log.txt"

{
  echo "# uring-echo reliability run"
  echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "kernel:  $(uname -srm)"
  echo "cpu:     $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs available"
  echo "memory:  $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "limits:  nofile soft $(ulimit -Sn) hard $(ulimit -Hn), memlock $(ulimit -l) KiB, somaxconn $(cat /proc/sys/net/core/somaxconn)"
  echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "rustc:   $(rustc -V)"
  echo
} > "$figures"

tests=(stress_scale stress_hostile stress_exhaustion stress_signals stress_netns stress_soak stress_fuzz)
targets=()
for t in "${tests[@]}"; do targets+=(--test "$t"); done

echo "== building (release)"
cargo build --release --workspace
cargo test --release -p uring-echo "${targets[@]}" --no-run

echo "== long run; figures -> $figures, log -> $log"
started=$(date +%s)
status=0
STRESS_REPORT="$figures" timeout 3000 \
  cargo test --release --no-fail-fast -p uring-echo "${targets[@]}" -- \
  --ignored --test-threads 1 --nocapture 2>&1 | tee "$log" || status=$?
echo "long run: exit $status after $(( $(date +%s) - started )) s" | tee -a "$figures"

exit "$status"
