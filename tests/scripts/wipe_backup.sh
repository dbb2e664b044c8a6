#!/usr/bin/env bash
# wipe_backup.sh: a backup loses its whole data directory and is restarted empty.
#
# The operator's repair after a damaged or lost disk (see flip_bytes.sh): stop the node,
# move its data directory aside, start it empty; it must catch up from the primary. Starts
# a 3-node cluster (sidecar + key-value example per node) on loopback and a writer that
# records every acknowledged write; SIGKILLs a backup, removes its data directory, restarts
# it, writes more, and checks that it catches up, that every acknowledged write is readable
# and that all logs agree on the committed prefix.
#
# Run: tests/scripts/wipe_backup.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

setup plain
start_cluster
victim=$(other_than "$PRIMARY")
start_writer 3600
sleep 2
kill_node "$victim"
rm -rf "${DATA_DIR[$victim]}"
start_node "$victim"
log "wiped node $victim's data directory and restarted it empty"
sleep 2
stop_writer
check_all
log "PASS wipe_backup"
