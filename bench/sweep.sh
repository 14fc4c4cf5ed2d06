#!/bin/bash
# usage: bench/sweep.sh N SIZE LATENCY "c1 c2 ..."
# keep-rsync at several --concurrency values, N blocks of SIZE bytes, LATENCY ms added
# to every keepstore request of both clusters (a fresh destination per value).
set -e
R=${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/release
N=$1; SIZE=$2; LAT=$3; CS=$4
. "$(dirname "$0")/lib.sh"
cluster s srcpp --keepstores 3 --replication 1 --no-blob-signing --seed-blocks $N --seed-block-size $SIZE
wait_ready s
for k in 0 1 2; do $R/keep-testcluster fault --dir $D/s --service keepstore$k --latency-ms $LAT >/dev/null; done
for c in $CS; do
  cluster d$c d$(printf %04d $c) --keepstores 3 --replication 2
  wait_ready d$c
  for k in 0 1 2; do $R/keep-testcluster fault --dir $D/d$c --service keepstore$k --latency-ms $LAT >/dev/null; done
  /usr/bin/time -f "c=$c wall %e s user %U sys %S maxrss %M KB" $R/keep-rsync -src $D/s/cluster.conf -dst $D/d$c/cluster.conf -q --concurrency $c >/dev/null
done
