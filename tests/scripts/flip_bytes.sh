#!/usr/bin/env bash
# flip_bytes.sh: flip bytes inside a sealed WAL segment of a backup.
#
# Starts a 3-node cluster (sidecar + key-value example per node) on loopback and a writer of
# 4 KiB values that records every acknowledged write, until the log has rolled to a second
# segment (`--wal-segment-bytes 4MiB`, snapshots off for the run: `--snapshot-interval 1h`). Then it SIGKILLs a backup and inverts COUNT bytes in the
# middle of that backup's first, sealed segment. Checks: `understudy wal verify` fails and
# names the segment; the restarted node says why, cuts its log just before the damaged
# record (it never serves the damaged range) and starts as a learner, which catches up from
# the primary and is promoted back to a voter with no operator action; its log then
# verifies. At the end checks every acknowledged write and that all logs agree on the
# committed prefix. (A byte flipped while the node runs is repaired in place from a peer's
# copy instead: tests/replication.rs.)
#
# Run: tests/scripts/flip_bytes.sh [--count N]   (default 1 byte).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

COUNT=1
while [[ $# -gt 0 ]]; do
    case $1 in
    --count) COUNT=$2; shift 2 ;;
    *) echo "usage: $0 [--count N]" >&2; exit 2 ;;
    esac
done

NODE_ARGS=(--wal-segment-bytes 4MiB --snapshot-interval 1h)
setup plain
start_cluster
victim=$(other_than "$PRIMARY")
start_writer 300 --value-len 4096
for _ in $(seq 1 600); do
    segments=$(find "${DATA_DIR[$victim]}/wal" -name '*.wal' | wc -l)
    [[ $segments -ge 2 ]] && break
    sleep 0.5
done
[[ $segments -ge 2 ]] || fail "node $victim's log did not roll to a second segment"
sleep 0.5
stop_writer
kill_node "$victim"
sealed=$(find "${DATA_DIR[$victim]}/wal" -name '*.wal' | sort | head -n 1)
size=$(stat -c %s "$sealed")
offset=$((size / 2))
# Invert COUNT bytes at the middle of the sealed segment.
original=$(od -An -v -tx1 -j "$offset" -N "$COUNT" "$sealed" | tr -d ' \n')
for i in $(seq 0 $((COUNT - 1))); do
    byte=$((16#${original:$((2 * i)):2} ^ 0xff))
    # shellcheck disable=SC2059 # the format is an octal escape built here
    printf "\\$(printf '%03o' "$byte")" | dd of="$sealed" bs=1 seek=$((offset + i)) conv=notrunc status=none
done
log "inverted $COUNT byte(s) at offset $offset of $sealed ($size bytes)"
if "$UNDERSTUDY" wal verify "${DATA_DIR[$victim]}" >"$WORK/verify.flipped" 2>&1; then
    fail "wal verify did not notice the damage"
fi
grep -q "$(basename "$sealed")" "$WORK/verify.flipped" \
    || fail "wal verify did not name the damaged segment: $(cat "$WORK/verify.flipped")"
log "wal verify: $(grep -m1 -i "corrupt" "$WORK/verify.flipped")"
start_node "$victim"
wait_log "$victim" "starting as a learner" \
    || fail "node $victim did not start as a learner on a damaged log"
grep -i "starting as a learner" "$WORK/n$victim.log" | grep -q -i "corrupt" \
    || fail "node $victim did not say which damage made it a learner"
log "node $victim started as a learner: $(grep -m1 -o 'reason=.*' "$WORK/n$victim.log" | cut -c1-200)"
start_writer 2
wait_log "$victim" "learner promoted" 15 || fail "node $victim was never promoted back to a voter"
log "node $victim caught up and votes again"
sleep 1
stop_writer
"$UNDERSTUDY" wal verify "${DATA_DIR[$victim]}" >"$WORK/verify.after" 2>&1 \
    || fail "node $victim's log still fails verification: $(cat "$WORK/verify.after")"
check_all
log "PASS flip_bytes"
