#!/bin/bash
# usage: bench/sweep.sh N SIZE LATENCY "c1 c2 ..."
# keep-rsync at several --concurrency values, N blocks of SIZE bytes, LATENCY ms added
# to every keepstore request of both clusters (a fresh destination per value).
set -e
R=${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/release
N=$1; SIZE=$2; LAT=$3; CS=$4
D=$(mktemp -d /tmp/keep-sweep-XXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf $D' EXIT
$R/keep-testcluster run --dir $D/s --cluster-id srcpp --memory --keepstores 3 --replication 1 --no-blob-signing --seed-blocks $N --seed-block-size $SIZE > $D/s.out 2>$D/s.err &
until grep -q ready $D/s.out 2>/dev/null; do sleep 0.2; done
for k in 0 1 2; do $R/keep-testcluster fault --dir $D/s --service keepstore$k --latency-ms $LAT >/dev/null; done
for c in $CS; do
  $R/keep-testcluster run --dir $D/d$c --cluster-id d$(printf %04d $c) --memory --keepstores 3 --replication 2 > $D/d$c.out 2>$D/d$c.err &
  until grep -q ready $D/d$c.out 2>/dev/null; do sleep 0.2; done
  for k in 0 1 2; do $R/keep-testcluster fault --dir $D/d$c --service keepstore$k --latency-ms $LAT >/dev/null; done
  /usr/bin/time -f "c=$c wall %e s user %U sys %S maxrss %M KB" $R/keep-rsync -src $D/s/cluster.conf -dst $D/d$c/cluster.conf -q --concurrency $c >/dev/null
done
