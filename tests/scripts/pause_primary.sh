#!/usr/bin/env bash
# pause_primary.sh: SIGSTOP the primary for longer than the failover timeout, then SIGCONT.
#
# Starts a 3-node cluster (sidecar + key-value example per node) on loopback and a writer
# that records every acknowledged write, and watches every node's /status for two primaries
# in one epoch. Each cycle stops the primary's sidecar and application (a stalled host) for
# PAUSE_MS (default 3 x the failover timeout); a backup must take over meanwhile. On waking,
# the old primary must not serve: its /primary must stop answering 200 at once (within one
# heartbeat-ish bound, 100 ms), and writes sent straight to its client port right after the
# wake-up are recorded too, so a write it wrongly acknowledged would show up as lost. At the
# end checks every acknowledged write and that all logs agree on the committed prefix.
#
# Run: tests/scripts/pause_primary.sh [--cycles N] [--pause-ms MS]   (default 3 cycles;
#      `cargo test --test scripts` runs 1).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

CYCLES=3
PAUSE_MS=$((3 * FAILOVER_TIMEOUT_MS))
while [[ $# -gt 0 ]]; do
    case $1 in
    --cycles) CYCLES=$2; shift 2 ;;
    --pause-ms) PAUSE_MS=$2; shift 2 ;;
    *) echo "usage: $0 [--cycles N] [--pause-ms MS]" >&2; exit 2 ;;
    esac
done
[[ $PAUSE_MS -gt $FAILOVER_TIMEOUT_MS ]] || fail "--pause-ms must exceed the failover timeout ($FAILOVER_TIMEOUT_MS ms)"

setup plain
start_cluster
start_watch
start_writer 3600
sleep 1
for cycle in $(seq 1 "$CYCLES"); do
    old=$PRIMARY
    others=$(admins_except "$old")
    started=$(date +%s%N)
    pause_node "$old" STOP
    PRIMARY=$("$CHAOS" primary --admin "$others" --timeout 10s) \
        || fail "cycle $cycle: no backup took over from paused node $old"
    took=$(ms_since "$started")
    remaining=$((PAUSE_MS - took))
    [[ $remaining -gt 0 ]] && sleep_ms "$remaining"
    pause_node "$old" CONT
    demoted_ms=$("$CHAOS" demoted --admin "127.0.0.1:${ADMIN_PORT[$old]}" --within 100ms) \
        || fail "cycle $cycle: node $old served as primary after waking"
    # Writes straight to the woken node's client port: anything it acknowledges must last.
    "$CHAOS" write --client "127.0.0.1:${CLIENT_PORT[$old]}" --out "$WORK/acked" \
        --duration 1s --prefix "woken$cycle-" >"$WORK/woken.out" 2>&1
    log "cycle $cycle/$CYCLES: paused primary $old for ${PAUSE_MS} ms; node $PRIMARY took over after $took ms; woken node stopped serving after ${demoted_ms} ms; writes to it: $(cat "$WORK/woken.out")"
    sleep 1
done
stop_writer
stop_watch
check_all
log "PASS pause_primary: $CYCLES cycles"
