# Sourced by the bench/*.sh helpers (set R, the directory of the binaries, first):
# a temp dir $D, removed on exit together with every cluster started here, and local
# keep-testcluster clusters (memory volumes, loopback only).

D=$(mktemp -d /tmp/keep-bench-XXXX)
declare -A PIDS
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT

# cluster NAME ID [keep-testcluster run flags]: starts a cluster in $D/NAME (its
# settings: $D/NAME/cluster.conf) in the background; its pid goes to PIDS[NAME].
cluster() {
  local name=$1 id=$2
  shift 2
  "$R/keep-testcluster" run --dir "$D/$name" --cluster-id "$id" --memory "$@" \
    > "$D/$name.out" 2> "$D/$name.err" &
  PIDS[$name]=$!
}

# wait_ready NAME...: waits up to 120 s for each named cluster to say it is ready.
wait_ready() {
  local n
  for _ in $(seq 600); do
    local all=1
    for n in "$@"; do grep -q ready "$D/$n.out" 2>/dev/null || all=0; done
    [ $all = 1 ] && return 0
    sleep 0.2
  done
  echo "clusters $* did not start; their logs: $D/*.err" >&2
  return 1
}
