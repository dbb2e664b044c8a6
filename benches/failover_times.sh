#!/usr/bin/env bash
# failover_times.sh: the failover time a client sees, at a given --failover-timeout, for a
# killed primary and for a primary cut off from both backups.
#
# Starts the 3-node cluster of tests/scripts/lib.sh (sidecar + key-value example per node,
# release binaries, the fault proxy on every peer link) with --failover-timeout MS and the
# heartbeat a tenth of it, and the scripts' writer: one SET at a time through the client
# ports, moving to the next client port when one fails, every acknowledged write recorded.
# Then, KILLS times, `kill -9` of the primary's sidecar and application; and PARTITIONS
# times, the primary's links to and from both backups made to drop everything. A trial's
# figure is the time from the fault (the kill, or the partition command answered) to the
# first write acknowledged after it, as the writer saw it: the client's view, including
# the writer's 20 ms wait before it tries the next client port. After each trial the
# killed node is restarted (or the partition healed) and the cluster settles before the
# next. Ends with the usual checks: every acknowledged write readable, the logs identical.
#
# Run: benches/failover_times.sh [--timeout-ms MS] [--kills N] [--partitions N]
#      (defaults 100, 20, 20). Prints each trial and min / median / p90 / max per kind.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../tests/scripts/lib.sh
source "$(dirname "$0")/../tests/scripts/lib.sh"

FAILOVER_TIMEOUT_MS=100
KILLS=20
PARTITIONS=20
while [[ $# -gt 0 ]]; do
    case $1 in
    --timeout-ms) FAILOVER_TIMEOUT_MS=$2; shift 2 ;;
    --kills) KILLS=$2; shift 2 ;;
    --partitions) PARTITIONS=$2; shift 2 ;;
    *) echo "usage: $0 [--timeout-ms MS] [--kills N] [--partitions N]" >&2; exit 2 ;;
    esac
done
HEARTBEAT="$((FAILOVER_TIMEOUT_MS / 10))ms"

now_ms() { date +%s%3N; }

# first_ack_after T: the unix ms of the first acknowledgement after T that ended a pause
# (the writer logs every pause of 20 ms or more with the time it ended); waits up to 10 s.
first_ack_after() {
    local t=$1 end _
    for _ in $(seq 1 500); do
        end=$(awk -v t="$t" '$1 > t {print $1; exit}' "$WORK/pauses" 2>/dev/null || true)
        if [[ -n $end ]]; then
            echo "$end"
            return 0
        fi
        sleep 0.02
    done
    return 1
}

# summary NAME FILE: min / median / p90 / max of the numbers in FILE.
summary() {
    sort -n "$2" | awk -v name="$1" '{v[NR] = $1} END {
        if (NR == 0) { print name ": no trials"; exit }
        p90 = int((NR * 9 + 9) / 10); if (p90 > NR) p90 = NR
        printf "%s: n=%d min %d ms, median %d ms, p90 %d ms, max %d ms\n", name, NR, v[1], v[int((NR + 1) / 2)], v[p90], v[NR]
    }'
}

settle() {
    "$CHAOS" settle --admin "$ADMINS" --timeout 30s --within 1000 >/dev/null ||
        fail "the cluster did not settle"
}

setup proxy
start_cluster
touch "$WORK/pauses"
start_writer 3600 --pauses "$WORK/pauses"
sleep 1
log "failover timeout ${FAILOVER_TIMEOUT_MS} ms, heartbeat $HEARTBEAT, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"

: >"$WORK/kills"
for trial in $(seq 1 "$KILLS"); do
    old=$PRIMARY
    t0=$(now_ms)
    kill_node "$old"
    end=$(first_ack_after "$t0") || fail "kill $trial: no write acknowledged within 10 s"
    PRIMARY=$("$CHAOS" primary --admin "$(admins_except "$old")" --timeout 10s) ||
        fail "kill $trial: no new primary"
    echo $((end - t0)) >>"$WORK/kills"
    log "kill $trial/$KILLS: node $old killed; node $PRIMARY primary; first write acknowledged after $((end - t0)) ms (load $(cut -d' ' -f1 /proc/loadavg))"
    start_node "$old"
    settle
    sleep 0.5
done

: >"$WORK/partitions"
for trial in $(seq 1 "$PARTITIONS"); do
    old=$PRIMARY
    t0=$(now_ms)
    for id in "${NODES[@]}"; do
        if [[ $id != "$old" ]]; then
            proxy partition "$old-$id"
            proxy partition "$id-$old"
        fi
    done
    end=$(first_ack_after "$t0") || fail "partition $trial: no write acknowledged within 10 s"
    PRIMARY=$("$CHAOS" primary --admin "$(admins_except "$old")" --timeout 10s) ||
        fail "partition $trial: no new primary"
    echo $((end - t0)) >>"$WORK/partitions"
    log "partition $trial/$PARTITIONS: node $old cut off; node $PRIMARY primary; first write acknowledged after $((end - t0)) ms (load $(cut -d' ' -f1 /proc/loadavg))"
    proxy heal all
    settle
    sleep 0.5
done

stop_writer
summary "killed primary" "$WORK/kills"
summary "partitioned primary" "$WORK/partitions"
check_all
