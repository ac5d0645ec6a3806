#!/usr/bin/env bash
# One command for the benchmark suite on a fresh checkout:
#   bash bench/run-suite.sh                    # targets mode (~35-45 min): the figures the README quotes, ablation included
#   bash bench/run-suite.sh --mode quick       # ~4 min, every server and ablation variant once, indicative only
#   bash bench/run-suite.sh --mode ablation    # ~6-14 min: the uring-multishot feature ablation alone
#   bash bench/run-suite.sh --mode full        # the whole matrix (hours)
# Installs perf (syscall counts) if it is missing and we are root, builds the workspace in
# release mode and the peer servers (bench/peers/build.sh: a peer that does not build is
# reported and skipped, never fatal), then runs echo-suite, which writes
# bench/results/<date>-<host>-<mode>/. Other flags go to echo-suite (target/release/echo-suite --help).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v perf >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run-suite: installing linux-perf for the syscall counts" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
  else
    echo "run-suite: perf not found; syscalls per message will be reported as not measured" >&2
  fi
fi
for tool in taskset prlimit; do
  command -v "$tool" >/dev/null 2>&1 || { echo "run-suite: $tool (util-linux) is required" >&2; exit 1; }
done

cargo build --release --workspace
# The ablation-only mode runs no peer; every other mode compares them.
case " $* " in
  *" --mode ablation "* | *" --mode=ablation "*) ;;
  *)
    bash bench/peers/build.sh ||
      echo "run-suite: no peer server built; the suite runs without peers (see above)" >&2
    ;;
esac
exec target/release/echo-suite "$@"
