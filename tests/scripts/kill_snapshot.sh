#!/usr/bin/env bash
# kill_snapshot.sh: kill -9 during a snapshot, and during a snapshot transfer.
#
# Starts a 3-node cluster (sidecar + key-value example per node) on loopback with snapshots
# taken often and the log truncated close behind them (`--snapshot-interval 500ms`,
# `--snapshot-after-bytes 512KiB`, `--wal-retain-bytes 256KiB`, `--wal-segment-bytes
# 64KiB`), and a writer of 1 KiB values that records every acknowledged write.
#  1. CYCLES times: wait until a random node asks its application for a snapshot (its log
#     says so), SIGKILL that node at once, restart it.
#  2. CYCLES times: SIGKILL a backup, write on until the log it missed has been truncated,
#     restart it, wait until a snapshot is arriving (a partial file in its snapshot
#     directory), then SIGKILL the
#     receiver (odd cycles) or the sender, the primary (even cycles), and restart it.
# At the end checks that every acknowledged write is readable from the current primary and
# that all logs agree on the committed LSNs they all still hold.
#
# Run: tests/scripts/kill_snapshot.sh [--cycles N]   (default 4; `cargo test --test scripts`
#      runs 2).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

CYCLES=4
while [[ $# -gt 0 ]]; do
    case $1 in
    --cycles) CYCLES=$2; shift 2 ;;
    *) echo "usage: $0 [--cycles N]" >&2; exit 2 ;;
    esac
done

NODE_ARGS=(--snapshot-interval 500ms --snapshot-after-bytes 512KiB --wal-retain-bytes 256KiB
    --wal-segment-bytes 64KiB)
export RUST_LOG=info,understudy::node::snapshot=debug,understudy::node::app_api::delivered=debug

# wait_log_line ID PATTERN SKIP: waits up to 20 s for a line matching PATTERN in node ID's
# log beyond its first SKIP matching lines.
wait_log_line() {
    local _
    for _ in $(seq 1 2000); do
        [[ $(grep -c "$2" "$WORK/n$1.log" || true) -gt $3 ]] && return 0
        sleep 0.01
    done
    return 1
}

setup plain
start_cluster
start_writer 3600 --value-len 1024
sleep 1
asked='asking the application for a snapshot'
for cycle in $(seq 1 "$CYCLES"); do
    victim=${NODES[RANDOM % ${#NODES[@]}]}
    seen=$(grep -c "$asked" "$WORK/n$victim.log" || true)
    wait_log_line "$victim" "$asked" "$seen" || fail "node $victim took no snapshot within 20 s"
    kill_node "$victim"
    log "snapshot cycle $cycle/$CYCLES: killed node $victim as it asked for a snapshot"
    sleep 0.2
    start_node "$victim"
    PRIMARY=$(wait_primary 15s) || fail "no primary after killing node $victim"
    sleep 0.5
done
# wait_transfer ID: waits up to 20 s for a snapshot being received by node ID (a partial
# `*.snap.tmp` in its snapshot directory written since $WORK/restarted was touched).
wait_transfer() {
    local _
    for _ in $(seq 1 2000); do
        if [[ -n $(find "${DATA_DIR[$1]}/snapshots" -name '*.tmp' -newer "$WORK/restarted" 2>/dev/null) ]]; then
            return 0
        fi
        sleep 0.01
    done
    return 1
}

for cycle in $(seq 1 "$CYCLES"); do
    sender=$(wait_primary 15s) || fail "no primary"
    backup=$(other_than "$sender")
    kill_node "$backup"
    # More than --wal-retain-bytes and a snapshot: the backup's next record is gone.
    sleep 2
    touch "$WORK/restarted"
    start_node "$backup"
    wait_transfer "$backup" || fail "node $backup received no snapshot after it fell behind"
    if ((cycle % 2 == 1)); then
        victim=$backup
        role=receiver
    else
        victim=$sender
        role="sender (the primary)"
    fi
    kill_node "$victim"
    log "transfer cycle $cycle/$CYCLES: killed node $victim, the $role, as node $sender started sending node $backup a snapshot"
    sleep 0.2
    start_node "$victim"
    PRIMARY=$(wait_primary 15s) || fail "no primary after killing node $victim"
    sleep 1
done
sleep 1
stop_writer
log "snapshots: $(cat "$WORK"/n?.log | grep -c 'application snapshot stored') stored, $(cat "$WORK"/n?.log | grep -c 'installed a snapshot from the primary') installed from a primary, $(cat "$WORK"/n?.log | grep -c 'snapshot transfer broke off') transfers broken off"
check_all
log "PASS kill_snapshot: $CYCLES + $CYCLES cycles"
