#!/usr/bin/env bash
# How fast does echo-bench drive a fast server compared with the simplest honest client?
#
# Server: uring-echo --runtime epoll (release), pinned to CPU 0 with taskset, one worker thread.
# Clients, pinned to CPU 1, alternating (and swapping which goes first every run):
#   - bench/ref-client: one blocking thread per connection, closed loop, checks every byte,
#     records nothing;
#   - echo-bench: closed loop, pipeline 1, verifies every byte, records every latency.
# Same connections, message size, warmup and duration. Prints every sample, the medians and
# the median of the per-run ratios (echo-bench / ref-client), and each client's own CPU time per
# message (less sensitive than the rate to other load on the machine).
#
# Usage: bench-client/scripts/client_overhead.sh [RUNS] [CONNECTIONS] [SIZE_BYTES] [DURATION_MS]
# (defaults 7 50 128 3000). Needs taskset, python3 and at least 2 CPUs.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${1:-7}
CONNS=${2:-50}
SIZE=${3:-128}
DUR_MS=${4:-3000}
WARMUP_MS=500

cargo build --release -q -p uring-echo -p echo-bench -p ref-client

tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

taskset -c 0 target/release/uring-echo --runtime epoll --listen 127.0.0.1:0 --threads 1 \
  >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!
for _ in $(seq 100); do
  grep -q '^listening on ' "$tmp/server.out" 2>/dev/null && break
  sleep 0.05
done
addr=$(sed -n 's/^listening on //p' "$tmp/server.out")
[ -n "$addr" ] || { echo "server did not start: $(cat "$tmp/server.err")" >&2; exit 1; }
echo "server: uring-echo --runtime epoll --threads 1 on CPU 0 at $addr; clients on CPU 1"
echo "kernel: $(uname -r); $CONNS connections x $SIZE B, ${DUR_MS} ms measured after ${WARMUP_MS} ms warmup, $RUNS runs"

run_ref() {
  taskset -c 1 target/release/ref-client "$addr" "$CONNS" "$SIZE" "$DUR_MS" "$WARMUP_MS" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["msgs_per_s"], d["client_cpu_ns_per_msg"])'
}
run_bench() {
  taskset -c 1 target/release/echo-bench -q -c "$CONNS" -s "$SIZE" -d "${DUR_MS}ms" \
    --warmup "${WARMUP_MS}ms" --json "$tmp/b.json" --force "$addr" >/dev/null
  python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["targets"][0]; print(t["msgs_per_s"], t["client_cpu_ns_per_msg"])' "$tmp/b.json"
}

: >"$tmp/samples"
for i in $(seq "$RUNS"); do
  if [ $((i % 2)) -eq 1 ]; then r=$(run_ref); b=$(run_bench); else b=$(run_bench); r=$(run_ref); fi
  read -r r_rate r_cpu <<<"$r"
  read -r b_rate b_cpu <<<"$b"
  printf 'run %d: ref-client %.1f msgs/s (%.0f ns CPU/msg), echo-bench %.1f msgs/s (%.0f ns CPU/msg)\n' \
    "$i" "$r_rate" "$r_cpu" "$b_rate" "$b_cpu"
  echo "$r_rate $b_rate $r_cpu $b_cpu" >>"$tmp/samples"
done
python3 - "$tmp/samples" <<'PY'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
ref = [r[0] for r in rows]
bench = [r[1] for r in rows]
ratios = [r[1] / r[0] for r in rows]
ref_cpu = [r[2] for r in rows]
bench_cpu = [r[3] for r in rows]
print(f"median ref-client  {statistics.median(ref):.1f} msgs/s (min {min(ref):.1f}, max {max(ref):.1f})")
print(f"median echo-bench  {statistics.median(bench):.1f} msgs/s (min {min(bench):.1f}, max {max(bench):.1f})")
print(f"ratio echo-bench / ref-client: median of per-run ratios {statistics.median(ratios):.3f} "
      f"(min {min(ratios):.3f}, max {max(ratios):.3f}); ratio of medians "
      f"{statistics.median(bench) / statistics.median(ref):.3f}")
print(f"client CPU per message: ref-client median {statistics.median(ref_cpu):.0f} ns, "
      f"echo-bench median {statistics.median(bench_cpu):.0f} ns "
      f"(echo-bench verifies every byte and records every latency)")
PY
