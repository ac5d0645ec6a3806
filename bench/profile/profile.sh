#!/usr/bin/env bash
# Profiles one echo server under echo-bench load: where its CPU goes (perf record, grouped by
# categorize.py) and its syscalls per message (perf stat). The server runs on one CPU, the
# client on another; the server is started here and stopped by PID.
#
# Usage: bash bench/profile/profile.sh NAME OUTDIR -- SERVER_CMD...
#   SERVER_CMD must take a listen address of 127.0.0.1:0 and print "listening on IP:PORT".
# Environment: CONNS (50), SIZE (128), SECS (4: the profiled window), SERVER_CPU (0),
#   CLIENT_CPU (1), FREQ (1999 Hz).
# Writes OUTDIR/NAME.data (perf record), NAME.report (top symbols), NAME.stat (perf stat),
# NAME.json (echo-bench report) and prints one summary line.
set -euo pipefail
[ $# -ge 4 ] && [ "$3" = "--" ] || { echo "usage: profile.sh NAME OUTDIR -- SERVER_CMD..." >&2; exit 2; }
name=$1 out=$2; shift 3
conns=${CONNS:-50} size=${SIZE:-128} secs=${SECS:-4}
scpu=${SERVER_CPU:-0} ccpu=${CLIENT_CPU:-1} freq=${FREQ:-1999}
root=$(cd "$(dirname "$0")/../.." && pwd)
bench="$root/target/release/echo-bench"
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/$name.server.log"

taskset -c "$scpu" "$@" >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
addr=""
for _ in $(seq 200); do
    addr=$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$addr" ] && break
    kill -0 "$server" 2>/dev/null || { echo "$name: server exited: $(tail -n 3 "$log")" >&2; exit 1; }
    sleep 0.05 # poll for the listening line, bounded: 10 s
done
[ -n "$addr" ] || { echo "$name: no 'listening on' line in 10 s" >&2; exit 1; }

run_load() { # $1: seconds of measured load; the client runs with a 1 s warm-up
    "$bench" -q -c "$conns" -s "$size" -d "${1}s" --warmup 1s --client-cpus "$ccpu" \
        --json "$2" --force "$addr" >/dev/null
}

# CPU profile: perf records the server while one echo-bench run (warm-up included) lasts.
perf record -q -F "$freq" -g -o "$out/$name.data" -p "$server" -- \
    "$bench" -q -c "$conns" -s "$size" -d "${secs}s" --warmup 1s --client-cpus "$ccpu" \
    --json "$out/$name.json" --force "$addr" >/dev/null 2>&1
# Syscalls per message: a second run under perf stat (server CPU time and syscall counts).
perf stat -x, -o "$out/$name.stat" -e 'task-clock,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto' \
    -p "$server" -- "$bench" -q -c "$conns" -s "$size" -d "${secs}s" --warmup 1s \
    --client-cpus "$ccpu" --json "$out/$name.stat.json" --force "$addr" >/dev/null 2>&1 || true

perf report -i "$out/$name.data" --stdio --no-children --sort dso,sym -g none 2>/dev/null \
    | grep -E '^\s+[0-9.]+%' | head -n 60 >"$out/$name.report" || true # head closes the pipe
(cd "$out" && python3 "$root/bench/profile/categorize.py" "$name")
msgs=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); t=j["targets"][0]; print(t["messages"] + t["warmup_messages"])' "$out/$name.stat.json" 2>/dev/null || echo 0)
echo "$name: messages in the perf-stat run (warm-up included): $msgs; $(awk -F, -v m="$msgs" '$1 ~ /^[0-9.]+$/ && m > 0 { if ($2 == "msec") printf "server CPU %.2f us/msg", $1 * 1000 / m; else { sub(/^.*sys_enter_?/, "", $3); printf ", %s %.3f/msg", ($3 == "" ? "syscalls" : $3), $1 / m } }' "$out/$name.stat")"
