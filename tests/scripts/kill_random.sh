#!/usr/bin/env bash
# kill_random.sh: kill -9 a random node, CYCLES times, while a write workload runs.
#
# Starts a 3-node cluster (sidecar + key-value example per node) on loopback and a writer
# that records every acknowledged write. Each cycle picks a node at random (primary or
# backup), SIGKILLs its sidecar and application, waits until some node is primary again,
# pauses a random 0-500 ms and restarts the killed node. At the end checks that every
# acknowledged write is readable from the current primary and that all logs verify and
# agree on the committed prefix.
#
# Run: tests/scripts/kill_random.sh [--cycles N] [--seed S]   (default 20 cycles; the long
#      soak is --cycles 200; `cargo test --test scripts` runs 3). The seed is printed so a
#      failing order can be replayed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

CYCLES=20
SEED=$$
while [[ $# -gt 0 ]]; do
    case $1 in
    --cycles) CYCLES=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    *) echo "usage: $0 [--cycles N] [--seed S]" >&2; exit 2 ;;
    esac
done
RANDOM=$SEED

setup plain
log "seed $SEED"
start_cluster
start_writer 36000
sleep 1
kills_of_primary=0
for cycle in $(seq 1 "$CYCLES"); do
    victim=${NODES[RANDOM % ${#NODES[@]}]}
    role=backup
    if [[ $victim == "$PRIMARY" ]]; then
        role=primary
        kills_of_primary=$((kills_of_primary + 1))
    fi
    kill_node "$victim"
    PRIMARY=$(wait_primary 15s) || fail "cycle $cycle: no primary after killing node $victim"
    log "cycle $cycle/$CYCLES: killed node $victim ($role); node $PRIMARY is primary"
    sleep "0.$((RANDOM % 5))"
    start_node "$victim"
    sleep 0.3
done
# Let the last restarted node catch up before the writer stops.
sleep 1
stop_writer
check_all
log "PASS kill_random: $CYCLES cycles ($kills_of_primary of the primary), seed $SEED"
