#!/bin/bash
# usage: bench/profile-index.sh N OUTNAME [perf]
# The S5 shape at any size: N synthetic source blocks, N/2 of them on the destination,
# keep-rsync --dry-run -replications 1. Prints wall/CPU/RSS from /usr/bin/time; with
# `perf`, records keep-rsync with perf record -e cpu-clock into OUTNAME.data. Then:
#   perf report -i OUTNAME.data --no-children --sort comm,symbol --stdio
# Build first: cargo build --profile profiling -p keep-rsync -p keep-testcluster
set -e
R=${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/profiling
N=$1; OUT=$2
. "$(dirname "$0")/lib.sh"
cluster s srcpp --keepstores 1 --synthetic-blocks $N --synthetic-seed 1
cluster d dstpp --keepstores 1 --synthetic-blocks $((N/2)) --synthetic-seed 1
wait_ready s d
PERF=()
[ "$3" = perf ] && PERF=(perf record -q -e cpu-clock -F 999 -o "$OUT.data" --)
/usr/bin/time -f "wall %e s, user %U s, sys %S s, maxrss %M KB" "${PERF[@]}" \
  $R/keep-rsync -src $D/s/cluster.conf -dst $D/d/cluster.conf -q --dry-run -replications 1 2>&1 | tail -1
