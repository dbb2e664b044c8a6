#!/usr/bin/env bash
# partition_primary.sh: cut the primary off from both backups with the fault proxy.
#
# Starts a 3-node cluster (sidecar + key-value example per node) on loopback with the fault
# proxy (`understudy-chaos proxy`) on every peer link, and a writer that records every
# acknowledged write. Each cycle partitions the primary (its links to and from both backups
# drop everything), then checks that the minority side stops serving within its lease (its
# /primary stops answering 200 within the failover timeout) and that the majority side
# elects a new primary; writes sent to the cut-off node meanwhile are recorded too. Then it
# heals the partition; the old primary must rejoin as a backup. At the end checks every
# acknowledged write and that all logs agree on the committed prefix.
#
# Run: tests/scripts/partition_primary.sh [--cycles N]   (default 3; `cargo test --test
#      scripts` runs 1).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

CYCLES=3
while [[ $# -gt 0 ]]; do
    case $1 in
    --cycles) CYCLES=$2; shift 2 ;;
    *) echo "usage: $0 [--cycles N]" >&2; exit 2 ;;
    esac
done

setup proxy
start_cluster
start_writer 3600
sleep 1
for cycle in $(seq 1 "$CYCLES"); do
    old=$PRIMARY
    for id in "${NODES[@]}"; do
        if [[ $id != "$old" ]]; then
            proxy partition "$old-$id"
            proxy partition "$id-$old"
        fi
    done
    others=$(admins_except "$old")
    started=$(date +%s%N)
    demoted_ms=$("$CHAOS" demoted --admin "127.0.0.1:${ADMIN_PORT[$old]}" --within "${FAILOVER_TIMEOUT_MS}ms") \
        || fail "cycle $cycle: the cut-off primary $old kept serving past its lease"
    PRIMARY=$("$CHAOS" primary --admin "$others" --timeout 10s) \
        || fail "cycle $cycle: the majority side elected no primary"
    elected_ms=$(ms_since "$started")
    "$CHAOS" write --client "127.0.0.1:${CLIENT_PORT[$old]}" --out "$WORK/acked" \
        --duration 1s --prefix "minority$cycle-" >"$WORK/minority.out" 2>&1
    log "cycle $cycle/$CYCLES: cut off primary $old; it stopped serving after $demoted_ms ms; node $PRIMARY elected after $elected_ms ms; writes to the minority: $(cat "$WORK/minority.out")"
    proxy heal all
    sleep 1
done
stop_writer
check_all
log "PASS partition_primary: $CYCLES cycles"
