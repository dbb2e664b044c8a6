#!/usr/bin/env bash
# membership_kill.sh: remove a member while another is down, kill the primary the moment the
# removal is committed, under a write load, CYCLES times, on five nodes.
#
# Starts a 5-node cluster (sidecar + key-value example per node) on loopback and a writer
# that records every acknowledged write, with a reader checking each through every client
# port. Each cycle:
#   1. SIGKILL a backup D (down);
#   2. `members remove` another backup R, which keeps running; four voters are left, D one of
#      them, so every other live voter is needed;
#   3. SIGKILL the primary as soon as the command returns (the removal is committed), before
#      it may have told R; no majority is left until D comes back;
#   4. restart D, whose log still holds the configuration of five, then the old primary;
#      a primary is elected, and R must learn of its removal (its own `/members` no longer
#      lists it): from the primary that wrote it, or else from the next one;
#   5. stop R, empty its data dir, start it with `--initial-cluster-state existing` and
#      `members add` it back: a learner, then a voter by itself.
# At the end, every acknowledged write is readable and all logs verify and agree on the
# committed prefix (`lib.sh`, check_all).
#
# Run: tests/scripts/membership_kill.sh [--cycles N]   (default 4; `cargo test --test
#      scripts` runs 2). Needs: bash, coreutils; builds target/release binaries if missing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=members_lib.sh
source "$(dirname "$0")/members_lib.sh"

CYCLES=4
while [[ $# -gt 0 ]]; do
    case $1 in
    --cycles) CYCLES=$2; shift 2 ;;
    *) echo "usage: $0 [--cycles N]" >&2; exit 2 ;;
    esac
done

NODES=(1 2 3 4 5)
setup plain
start_cluster
start_writer 3600
sleep 1
all=$(list_of "${NODES[@]}")
for cycle in $(seq 1 "$CYCLES"); do
    PRIMARY=$(wait_primary 15s) || fail "no primary at the start of cycle $cycle"
    backups=()
    for id in "${NODES[@]}"; do [[ $id != "$PRIMARY" ]] && backups+=("$id"); done
    # A different pair each cycle.
    down=${backups[$((RANDOM % 4))]}
    while :; do
        gone=${backups[$((RANDOM % 4))]}
        [[ $gone != "$down" ]] && break
    done
    rest=()
    for id in "${NODES[@]}"; do [[ $id != "$gone" ]] && rest+=("$id"); done
    left=$(list_of "${rest[@]}")
    kill_node "$down"
    started=$(date +%s%N)
    answer=$("$UNDERSTUDY" members remove "$gone" --admin "127.0.0.1:${ADMIN_PORT[$PRIMARY]}" 2>&1) \
        || fail "members remove $gone with node $down down: $answer"
    kill_node "$PRIMARY"
    log "cycle $cycle/$CYCLES: node $down down, node $gone removed, primary $PRIMARY killed at once"
    start_node "$down"
    next=$(wait_primary 15s) || { dump_status; fail "no primary after node $down came back"; }
    start_node "$PRIMARY"
    wait_members "$gone" "voters $left learners " 20 \
        || { dump_status; fail "removed node $gone was not told of its removal (primary now $next): it has $(members_of "$gone")"; }
    for id in "${rest[@]}"; do
        wait_members "$id" "voters $left learners " 20 \
            || { dump_status; fail "node $id did not reach voters $left: it has $(members_of "$id")"; }
    done
    log "cycle $cycle/$CYCLES: node $next primary; removed node $gone knows, $(ms_since "$started") ms after the removal"
    kill_node "$gone"
    rm -rf "${DATA_DIR[$gone]}"
    NODE_ARGS=(--initial-cluster-state existing)
    start_node "$gone"
    NODE_ARGS=()
    answer=$(members_cmd add "$gone=127.0.0.1:${PEER_PORT[$gone]}") \
        || fail "members add $gone: $answer"
    for id in "${NODES[@]}"; do
        wait_members "$id" "voters $all learners " 30 \
            || { dump_status; fail "node $id did not reach voters $all after node $gone was added back: it has $(members_of "$id")"; }
    done
    "$CHAOS" settle --admin "$ADMINS" --timeout 30s --within 200 >/dev/null \
        || fail "the cluster did not settle after node $gone came back"
    log "cycle $cycle/$CYCLES: node $gone wiped, added back and a voter again"
done
stop_writer
check_all
log "PASS membership_kill: $CYCLES cycles"
