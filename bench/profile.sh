#!/bin/bash
# usage: bench/profile.sh N SIZE OUTNAME [extra keep-rsync args]
# Profiles keep-rsync copying N blocks of SIZE bytes between two fresh local clusters:
# perf record -e cpu-clock (this VM has no hardware counters), wall/CPU/RSS from
# /usr/bin/time. Then: perf report -i OUTNAME.data --no-children --sort symbol --stdio
# Build first with symbols: cargo build --profile profiling -p keep-rsync -p keep-testcluster
# (release binaries are stripped).
set -e
R=${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/profiling
N=$1; SIZE=$2; OUT=$3; shift 3
D=$(mktemp -d /tmp/keep-prof-XXXX)
trap 'kill $SP $DP 2>/dev/null; wait 2>/dev/null; rm -rf $D' EXIT
$R/keep-testcluster run --dir $D/s --cluster-id srcpp --memory --keepstores 3 --replication 1 --no-blob-signing --seed-blocks $N --seed-block-size $SIZE > $D/s.out 2>$D/s.err & SP=$!
$R/keep-testcluster run --dir $D/d --cluster-id dstpp --memory --keepstores 3 --replication 2 > $D/d.out 2>$D/d.err & DP=$!
until grep -q ready $D/s.out 2>/dev/null && grep -q ready $D/d.out 2>/dev/null; do sleep 0.2; done
/usr/bin/time -f "wall %e s, user %U s, sys %S s, maxrss %M KB" perf record -q -e cpu-clock -F 999 -o $OUT.data -- $R/keep-rsync -src $D/s/cluster.conf -dst $D/d/cluster.conf -q "$@" 2>&1 | tail -3
