#!/usr/bin/env bash
# membership_churn.sh: remove a member, leave it running, then wipe it and add it back, under
# a write load, CYCLES times; every other cycle the member removed is the primary.
#
# Starts a 3-node cluster (sidecar + key-value example per node) on loopback and a writer
# that records every acknowledged write, with a reader checking each through every client
# port. Each cycle, through `understudy members`:
#   1. remove a backup (odd cycles) or the primary (even cycles: it hands over first); the
#      removed node keeps running and must learn of its removal: its own `/members` no
#      longer lists it, and its log says it was removed;
#   2. the writes go on, on the two members left (both needed: a majority of two), until
#      6,000 more are committed;
#   3. stop the removed node, empty its data dir, start it again with
#      `--initial-cluster-state existing`, `members add` it: it joins as a learner, catches
#      up, and the primary makes it a voter by itself;
#   4. switch the primary role over to it (`understudy switchover --to`): from the third
#      cycle on, the node wiped next catches up from a primary that its log's older
#      configurations do not hold, and must still answer it.
# At the end, every acknowledged write is readable and all logs verify and agree on the
# committed prefix (`lib.sh`, check_all).
#
# Run: tests/scripts/membership_churn.sh [--cycles N]   (default 4; `cargo test --test
#      scripts` runs 3). Needs: bash, coreutils; builds target/release binaries if missing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=members_lib.sh
source "$(dirname "$0")/members_lib.sh"

CYCLES=4
GAP_RECORDS=6000
while [[ $# -gt 0 ]]; do
    case $1 in
    --cycles) CYCLES=$2; shift 2 ;;
    *) echo "usage: $0 [--cycles N]" >&2; exit 2 ;;
    esac
done

# commit_lsn: the primary's commit LSN, from its /status.
commit_lsn() {
    local via
    via=$(wait_primary 15s) || return 1
    admin_get "${ADMIN_PORT[$via]}" /status | tr -d ' \t\r\n' \
        | grep -o '"commit_lsn":[0-9]*' | head -n 1 | cut -d: -f2
}

setup plain
start_cluster
start_writer 3600
sleep 1
all=$(list_of "${NODES[@]}")
for cycle in $(seq 1 "$CYCLES"); do
    PRIMARY=$(wait_primary 15s) || fail "no primary at the start of cycle $cycle"
    if ((cycle % 2 == 0)); then
        gone=$PRIMARY
    else
        gone=$(other_than "$PRIMARY")
    fi
    rest=()
    for id in "${NODES[@]}"; do [[ $id != "$gone" ]] && rest+=("$id"); done
    left=$(list_of "${rest[@]}")
    started=$(date +%s%N)
    log_lines=$(wc -l <"$WORK/n$gone.log")
    answer=$(members_cmd remove "$gone") || fail "members remove $gone: $answer"
    for id in "${rest[@]}"; do
        wait_members "$id" "voters $left learners " \
            || fail "node $id did not reach voters $left: it has $(members_of "$id")"
    done
    # The removed node, still running, is told: its own configuration no longer holds it.
    wait_members "$gone" "voters $left learners " \
        || fail "removed node $gone was not told of its removal: it has $(members_of "$gone")"
    # (awk reads the whole file: `tail | grep -q` fails under pipefail when grep stops
    # reading early and tail gets SIGPIPE.)
    said_removed() {
        awk -v from="$log_lines" 'NR > from && /it was removed/ {found = 1} END {exit !found}' \
            "$WORK/n$gone.log"
    }
    for _ in $(seq 1 100); do
        said_removed && break
        sleep 0.1
    done
    said_removed || fail "removed node $gone did not say it was removed"
    log "cycle $cycle/$CYCLES: removed node $gone (primary $PRIMARY) in $(ms_since "$started") ms; it knows"
    # Writes while it is out: more records than a primary ships to a backup unacknowledged
    # (4,096), so that a node catching up through them later cannot be sent past them
    # without answering.
    from=$(commit_lsn) || fail "no commit lsn from the primary"
    for _ in $(seq 1 300); do
        [[ $(commit_lsn) -ge $((from + GAP_RECORDS)) ]] && break
        sleep 0.1
    done
    [[ $(commit_lsn) -ge $((from + GAP_RECORDS)) ]] \
        || fail "fewer than $GAP_RECORDS writes committed in 30 s while node $gone was out"
    # Wiped and added back: a learner until it has caught up, then a voter.
    kill_node "$gone"
    rm -rf "${DATA_DIR[$gone]}"
    NODE_ARGS=(--initial-cluster-state existing)
    start_node "$gone"
    NODE_ARGS=()
    started=$(date +%s%N)
    answer=$(members_cmd add "$gone=127.0.0.1:${PEER_PORT[$gone]}") \
        || fail "members add $gone: $answer"
    for id in "${NODES[@]}"; do
        wait_members "$id" "voters $all learners " 30 \
            || { dump_status; fail "node $id did not reach voters $all after node $gone was added back: it has $(members_of "$id")"; }
    done
    log "cycle $cycle/$CYCLES: node $gone wiped, added back and a voter again in $(ms_since "$started") ms"
    "$CHAOS" settle --admin "$ADMINS" --timeout 30s --within 200 >/dev/null \
        || fail "the cluster did not settle after node $gone came back"
    # The node just back takes over: a node wiped in a later cycle then catches up through
    # the records written while this one was not a member, from this one as primary.
    answer=$("$UNDERSTUDY" switchover --to "$gone" --admin "127.0.0.1:${ADMIN_PORT[$gone]}" 2>&1) \
        || fail "switchover to node $gone: $answer"
    [[ $(wait_primary 15s) == "$gone" ]] || fail "node $gone is not primary after the switchover"
done
stop_writer
check_all
log "PASS membership_churn: $CYCLES cycles"
