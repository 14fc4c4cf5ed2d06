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
. "$(dirname "$0")/lib.sh"
cluster s srcpp --keepstores 3 --replication 1 --no-blob-signing --seed-blocks $N --seed-block-size $SIZE
cluster d dstpp --keepstores 3 --replication 2
wait_ready s d
/usr/bin/time -f "wall %e s, user %U s, sys %S s, maxrss %M KB" perf record -q -e cpu-clock -F 999 -o $OUT.data -- $R/keep-rsync -src $D/s/cluster.conf -dst $D/d/cluster.conf -q "$@" 2>&1 | tail -3
