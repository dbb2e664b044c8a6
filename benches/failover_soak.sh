#!/usr/bin/env bash
# failover_soak.sh: false failovers at a given --failover-timeout on a machine kept busy.
#
# Starts the 3-node cluster of tests/scripts/lib.sh (sidecar + key-value example per node,
# release binaries) with --failover-timeout MS, a write workload through the client ports,
# and HOGS CPU-bound processes beside it (default: one per core, so the machine is at full
# load), for SECONDS. Nothing is killed: every election after the first is a false
# failover. Prints the timeout, the duration, the load average seen, the primary changes
# the role watcher saw, the elections each node counted (understudy_elections_total), and
# ends with the usual checks (every acknowledged write readable, logs identical).
#
# Run: benches/failover_soak.sh [--timeout-ms MS] [--seconds S] [--hogs N]
#      (defaults 500, 600, nproc). Every process it starts stops by itself (the hogs under
#      `timeout`) and is killed by PID on exit.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../tests/scripts/lib.sh
source "$(dirname "$0")/../tests/scripts/lib.sh"

FAILOVER_TIMEOUT_MS=500
SECONDS_RUN=600
HOGS=$(nproc)
while [[ $# -gt 0 ]]; do
    case $1 in
    --timeout-ms) FAILOVER_TIMEOUT_MS=$2; shift 2 ;;
    --seconds) SECONDS_RUN=$2; shift 2 ;;
    --hogs) HOGS=$2; shift 2 ;;
    *) echo "usage: $0 [--timeout-ms MS] [--seconds S] [--hogs N]" >&2; exit 2 ;;
    esac
done
# The heartbeat a tenth of the timeout, as the defaults (50 ms of 500 ms).
HEARTBEAT="$((FAILOVER_TIMEOUT_MS / 10))ms"

elections() {
    local id total=0 n
    for id in "${NODES[@]}"; do
        n=$(admin_get "${ADMIN_PORT[$id]}" /metrics | awk '$1 == "understudy_elections_total" {print $2}')
        total=$((total + ${n:-0}))
    done
    echo "$total"
}

setup plain
start_cluster
start_writer $((SECONDS_RUN + 60))
sleep 2
start_watch
before=$(elections)
log "soak: --failover-timeout ${FAILOVER_TIMEOUT_MS}ms, heartbeat $HEARTBEAT, $HOGS CPU hogs, ${SECONDS_RUN} s; elections so far $before"
HOG_PIDS=()
for _ in $(seq 1 "$HOGS"); do
    timeout "$((SECONDS_RUN + 5))" sh -c 'while :; do :; done' &
    HOG_PIDS+=("$!")
    EXTRA_PIDS+=("$!")
done
loads=()
for _ in $(seq 1 $((SECONDS_RUN / 60))); do
    sleep 60
    loads+=("$(cut -d' ' -f1 /proc/loadavg)")
done
sleep $((SECONDS_RUN % 60))
after=$(elections)
for pid in "${HOG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
stop_watch
stop_writer
moves=$(wc -l <"$WORK/roles")
log "soak result: --failover-timeout ${FAILOVER_TIMEOUT_MS}ms, ${SECONDS_RUN} s, $HOGS hogs, load average each minute: ${loads[*]}"
log "soak result: elections during the soak: $((after - before)) (counted by the nodes: before $before, after $after); role watcher lines: $moves"
check_all
