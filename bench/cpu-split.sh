#!/bin/bash
# usage: bench/cpu-split.sh N SIZE [keep-rsync args]
# One copy of N blocks of SIZE bytes between two fresh local clusters (the S1-S3 set-up),
# and where the CPU went: keep-rsync's user+system seconds (/usr/bin/time) and each
# test cluster's, read from /proc before and after. On a machine where the clusters
# share the client's cores, their CPU bounds how fast any client can be.
# Build first: cargo build --release -p keep-rsync -p keep-testcluster
set -e
R=${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/release
N=$1; SIZE=$2; shift 2
. "$(dirname "$0")/lib.sh"
cluster s srccs --keepstores 3 --replication 1 --no-blob-signing --seed-blocks $N --seed-block-size $SIZE
cluster d dstcs --keepstores 3 --replication 2
wait_ready s d
SP=${PIDS[s]}; DP=${PIDS[d]}
TCK=$(getconf CLK_TCK)
cpu() { awk -v t="$TCK" '{printf "%.2f", ($14 + $15) / t}' /proc/$1/stat; }
s0=$(cpu $SP); d0=$(cpu $DP)
/usr/bin/time -f "keep-rsync: wall %e s, CPU %U s user + %S s system" \
  $R/keep-rsync -src $D/s/cluster.conf -dst $D/d/cluster.conf -q "$@" 2>&1 | tail -1
s1=$(cpu $SP); d1=$(cpu $DP)
awk -v a="$s0" -v b="$s1" -v c="$d0" -v d="$d1" \
  'BEGIN { printf "source cluster: CPU %.2f s; destination cluster: CPU %.2f s\n", b - a, d - c }'
