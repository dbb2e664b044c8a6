#!/usr/bin/env bash
# kill_primary.sh: kill -9 the primary while a write workload runs, CYCLES times.
#
# Starts a 3-node cluster (sidecar + key-value example per node) on loopback and a writer
# that records every acknowledged write. Each cycle: SIGKILL the primary's sidecar and
# application, wait for a backup to take over, restart the killed node (it rejoins as a
# backup). At the end checks that every acknowledged write is readable from the current
# primary and that all logs verify and agree on the committed prefix.
#
# Run: tests/scripts/kill_primary.sh [--cycles N] [--pipeline N] [--value-len BYTES]
#      (defaults 3 cycles, one write at a time, short values; `cargo test --test scripts`
#      runs 1 cycle, and 1 more with pipelines of 8 writes of 300 KB, which the key-value
#      server splits into several records queued at once). Needs: bash, coreutils; builds
#      target/release binaries if missing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

CYCLES=3
WRITER_FLAGS=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --cycles) CYCLES=$2; shift 2 ;;
    --pipeline | --value-len) WRITER_FLAGS+=("$1" "$2"); shift 2 ;;
    *) echo "usage: $0 [--cycles N] [--pipeline N] [--value-len BYTES]" >&2; exit 2 ;;
    esac
done

setup plain
start_cluster
start_writer 3600 "${WRITER_FLAGS[@]}"
sleep 1
for cycle in $(seq 1 "$CYCLES"); do
    old=$PRIMARY
    started=$(date +%s%N)
    kill_node "$old"
    PRIMARY=$(wait_primary 15s) || fail "no new primary after killing node $old"
    [[ $PRIMARY != "$old" ]] || fail "killed node $old is still reported primary"
    log "cycle $cycle/$CYCLES: killed primary $old, node $PRIMARY took over in $(ms_since "$started") ms"
    sleep 0.5
    start_node "$old"
    sleep 1
done
stop_writer
check_all
log "PASS kill_primary: $CYCLES cycles"
