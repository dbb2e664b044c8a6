#!/usr/bin/env bash
# flapping_link.sh: a peer link between the primary and one backup that goes down and up.
#
# Starts a 3-node cluster (sidecar + key-value example per node) on loopback with the fault
# proxy on every peer link, a writer that records every acknowledged write, and a watcher of
# every node's /status. FLAPS times it cuts both directions of the link between the
# (initial) primary and one backup for a random 100 ms to 2 x failover timeout, then heals
# it for a random 100-600 ms. Checks: never two primaries in one epoch (split brain), the
# number of elections is bounded (at most one per flap; the backup that still hears the
# primary refuses to pre-vote, so usually none), every acknowledged write is readable and
# all logs agree on the committed prefix.
#
# Run: tests/scripts/flapping_link.sh [--flaps N] [--seed S]   (default 20; `cargo test
#      --test scripts` runs 6).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

FLAPS=20
SEED=$$
while [[ $# -gt 0 ]]; do
    case $1 in
    --flaps) FLAPS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    *) echo "usage: $0 [--flaps N] [--seed S]" >&2; exit 2 ;;
    esac
done
RANDOM=$SEED

setup proxy
log "seed $SEED"
start_cluster
start_watch
start_writer 3600
sleep 1
a=$PRIMARY
b=$(other_than "$a")
for flap in $(seq 1 "$FLAPS"); do
    down_ms=$((100 + RANDOM % (2 * FAILOVER_TIMEOUT_MS - 100)))
    up_ms=$((100 + RANDOM % 500))
    proxy partition "$a-$b"
    proxy partition "$b-$a"
    sleep_ms "$down_ms"
    proxy heal all
    sleep_ms "$up_ms"
    log "flap $flap/$FLAPS: link $a<->$b down ${down_ms} ms, up ${up_ms} ms"
done
sleep 1
stop_writer
stop_watch
read -r _ epochs _ _ <"$WORK/watch.out"
elections=$((epochs - 1))
[[ $elections -le $FLAPS ]] || fail "$elections elections for $FLAPS flaps"
check_all
log "PASS flapping_link: $FLAPS flaps, $elections elections, seed $SEED"
