#!/bin/bash
# A/B of the issue-10 refactor: pre (c3c8f85) vs post (24aa5b6) vs HEAD, interleaved rounds.
set -u
EB=/work/main/target/release/echo-bench
OUT=/work/ab/out; mkdir -p $OUT
for e in uring-multishot epoll uring; do
  for c in 50 500; do
    $EB --rounds 9 -d 1s -c $c -s 128 --server-cpus 0 --client-cpus 1 -q \
      --spawn "/work/ab-pre/target/release/uring-echo --runtime $e --listen 127.0.0.1:0" \
      --spawn "/work/ab-post/target/release/uring-echo --runtime $e --listen 127.0.0.1:0" \
      --spawn "/work/main/target/release/uring-echo --runtime $e --listen 127.0.0.1:0" \
      --name pre-c3c8f85 --name post-24aa5b6 --name head \
      --json $OUT/$e-$c.json --force > $OUT/$e-$c.txt 2>&1
    echo "$e $c rc=$?"
  done
done
