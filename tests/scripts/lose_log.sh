#!/usr/bin/env bash
# lose_log.sh: a node's log loses records while its `meta` survives, and the cluster must
# wait rather than elect a node that lacks an acknowledged write.
#
# Starts a 3-node cluster (sidecar + key-value example per node) on loopback with the fault
# proxy on every peer link. Node C is cut off from the primary A (both directions), so only
# A and B hold the writes acknowledged next. Then A and B are killed, B's log is damaged in
# one of three ways (MODE), the cut is healed and B is restarted beside C, A still down:
#   wipe      B's `wal/` directory removed;
#   truncate  B's newest segment cut to half its length;
#   segment   B's newest segment removed (the log rolls every 1 MiB for this);
#   tail      A and B killed while the writes go on, and B's newest segment loses its
#             last 8 KiB: the records B acknowledged last, within milliseconds of the kill;
#   floor     B's `wal/` directory and its log floor removed together.
# `meta` says B is a voter; only the log floor (`<data-dir>/log-floor`) tells it that its
# log lost committed records, or, when the floor is gone too, `meta`'s record that the data
# dir keeps one. Checks: B starts as a learner and says why; no primary is
# elected while A is down (B's vote would elect C, which lacks the writes); once A is back a
# primary is elected, B is promoted back to a voter, every acknowledged write is readable
# and all logs agree on the committed prefix.
#
# Run: tests/scripts/lose_log.sh [--mode wipe|truncate|segment|tail|floor]   (default wipe; `cargo test
#      --test scripts` runs each).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

MODE=wipe
while [[ $# -gt 0 ]]; do
    case $1 in
    --mode) MODE=$2; shift 2 ;;
    *) echo "usage: $0 [--mode wipe|truncate|segment|tail|floor]" >&2; exit 2 ;;
    esac
done
case $MODE in
wipe | truncate | tail | floor) ;;
segment) NODE_ARGS=(--wal-segment-bytes 1MiB --snapshot-interval 1h) ;;
*) echo "usage: $0 [--mode wipe|truncate|segment|tail|floor]" >&2; exit 2 ;;
esac

setup proxy
start_cluster
# Every node a voter before the cut: a node cut off before it caught up stays a learner
# (an empty data dir in a cluster that has a log), and with the damaged one that would
# leave a single voter, and no primary even once the old one is back.
# (The status is read whole before grep: `admin_get | grep -q` fails under pipefail when
# grep stops reading early and the writer gets SIGPIPE.)
is_voter() {
    local status
    status=$(admin_get "${ADMIN_PORT[$1]}" /status 2>/dev/null) || return 1
    grep -q '"standing": *"voter"' <<<"$status"
}
for id in "${NODES[@]}"; do
    for _ in $(seq 1 100); do
        is_voter "$id" && break
        sleep 0.1
    done
    is_voter "$id" || fail "node $id is not a voter 10 s after the start"
done
a=$PRIMARY
b=$(other_than "$a")
c=""
for id in "${NODES[@]}"; do
    if [[ $id != "$a" && $id != "$b" ]]; then c=$id; fi
done
proxy partition "$a-$c"
proxy partition "$c-$a"
log "node $c cut off from primary $a"
value_len=128
[[ $MODE == segment ]] && value_len=4096
start_writer 3600 --value-len "$value_len"
for _ in $(seq 1 200); do
    segments=$(find "${DATA_DIR[$b]}/wal" -name '*.wal' | wc -l)
    if [[ $MODE != segment || $segments -ge 2 ]] && [[ $(wc -l <"$WORK/acked") -ge 500 ]]; then
        break
    fi
    sleep 0.1
done
floor_file="${DATA_DIR[$b]}/log-floor"
if [[ $MODE == tail ]]; then
    # Killed under the writes: the last records B acknowledged are milliseconds old.
    kill_node "$a"
    kill_node "$b"
    stop_writer
else
    stop_writer
    sleep 0.5
    kill_node "$a"
    kill_node "$b"
fi
[[ -s $floor_file ]] || fail "node $b keeps no log floor"
newest=$(find "${DATA_DIR[$b]}/wal" -name '*.wal' | sort | tail -n 1)
case $MODE in
tail) truncate -s $(($(stat -c %s "$newest") - 8192)) "$newest" ;;
wipe) rm -rf "${DATA_DIR[$b]}/wal" ;;
floor)
    floor_was=$(cat "$floor_file")
    rm -rf "${DATA_DIR[$b]}/wal" "$floor_file"
    ;;
truncate) truncate -s $(($(stat -c %s "$newest") / 2)) "$newest" ;;
segment)
    [[ $(find "${DATA_DIR[$b]}/wal" -name '*.wal' | wc -l) -ge 2 ]] \
        || fail "node $b's log did not roll to a second segment"
    rm -f "$newest"
    ;;
esac
log "killed $a and $b; $MODE of node $b's log (floor ${floor_was:-$(cat "$floor_file")}); meta kept"
proxy heal all
start_node "$b"
wait_log "$b" "starting as a learner" || true
if [[ $MODE == floor ]]; then
    grep "starting as a learner" "$WORK/n$b.log" | grep -q "log-floor is missing although its meta records that it keeps one" \
        || fail "node $b did not start as a learner without its log floor: $(grep -m1 'log recovered' "$WORK/n$b.log")"
    log "node $b: starts as a learner, its log floor missing"
else
    grep "starting as a learner" "$WORK/n$b.log" | grep -q "below lsn" \
        || fail "node $b did not start as a learner below its log floor: $(grep -m1 'log recovered' "$WORK/n$b.log")"
    log "node $b: $(grep -m1 -o 'reason=its log ends at lsn [0-9]*, below lsn [0-9]*' "$WORK/n$b.log")"
fi
if elected=$("$CHAOS" primary --admin "127.0.0.1:${ADMIN_PORT[$b]},127.0.0.1:${ADMIN_PORT[$c]}" \
    --timeout "$((4 * FAILOVER_TIMEOUT_MS))ms" 2>/dev/null); then
    fail "node $elected was elected while the only other holder of the writes was down"
fi
log "no primary while node $a is down (waited $((4 * FAILOVER_TIMEOUT_MS)) ms)"
start_node "$a"
PRIMARY=$(wait_primary 15s) || fail "no primary once node $a was back"
wait_log "$b" "learner promoted" || fail "node $b was never promoted back to a voter"
log "node $PRIMARY is primary; node $b caught up and votes again"
check_all
log "PASS lose_log --mode $MODE"
