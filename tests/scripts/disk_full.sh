#!/usr/bin/env bash
# disk_full.sh: fill the primary's data disk, then free it again.
#
# Gives each node its own small tmpfs as its data disk (needs root and the right to mount;
# exits 77 and says so without them). Starts a 3-node cluster (sidecar + key-value example per node) on
# loopback and a writer that records every acknowledged write, then fills the primary's
# disk with a file until ENOSPC. The primary must stop acknowledging (its WAL write fails,
# the failure latches, and the sidecar stops) without corrupting its log: `wal verify`
# must pass on it (a torn tail is allowed); a backup takes over. Then the filler is removed
# and the node restarted: it must recover and rejoin. At the end checks every acknowledged
# write and that all logs agree on the committed prefix.
#
# Run (as root): tests/scripts/disk_full.sh [--disk-mb N]   (default 64 MiB per node).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

DISK_MB=64
while [[ $# -gt 0 ]]; do
    case $1 in
    --disk-mb) DISK_MB=$2; shift 2 ;;
    *) echo "usage: $0 [--disk-mb N]" >&2; exit 2 ;;
    esac
done
if [[ $(id -u) -ne 0 ]]; then
    echo "SKIP disk_full: mounting a tmpfs as each node's data disk needs root"
    exit 77
fi

MOUNTS=()
script_cleanup() {
    local mount
    for mount in "${MOUNTS[@]}"; do umount "$mount" 2>/dev/null || umount -l "$mount"; done
}

setup plain
for id in "${NODES[@]}"; do
    mkdir -p -m 700 "${DATA_DIR[$id]}"
    if ! mount -t tmpfs -o "size=${DISK_MB}m,mode=700" "understudy-disk-$id" "${DATA_DIR[$id]}"; then
        # Root without the capability to mount (a container): a privilege this run lacks.
        echo "SKIP disk_full: could not mount a tmpfs on ${DATA_DIR[$id]} (no mount privilege here?)"
        FAILED=0
        exit 77
    fi
    MOUNTS+=("${DATA_DIR[$id]}")
done
start_cluster
start_writer 3600
sleep 1
victim=$PRIMARY
started=$(date +%s%N)
# Fill the disk; dd stops at ENOSPC, which is the point.
dd if=/dev/zero of="${DATA_DIR[$victim]}/filler" bs=1M status=none 2>/dev/null || true
log "filled node $victim's disk: $(df -h "${DATA_DIR[$victim]}" | awk 'NR == 2 {print $3 " used, " $4 " free"}')"
# The next append fails; the sidecar latches the failure and stops.
wait_exited "$victim" || fail "node $victim still runs 10 s after its disk filled"
grep -q "disk failed" "$WORK/n$victim.log" || fail "node $victim stopped without saying its disk failed"
PRIMARY=$(wait_primary 15s) || fail "no backup took over from node $victim"
log "node $victim stopped after $(ms_since "$started") ms: $(grep -m1 -o 'disk failed.*' "$WORK/n$victim.log" | cut -c1-160)"
log "node $PRIMARY is primary"
kill_node "$victim"
"$UNDERSTUDY" wal verify "${DATA_DIR[$victim]}" >"$WORK/verify.full" 2>&1 \
    || fail "the full disk corrupted node $victim's log: $(cat "$WORK/verify.full")"
log "node $victim's log verifies: $(tail -n 1 "$WORK/verify.full")"
sleep 1
rm -f "${DATA_DIR[$victim]}/filler"
start_node "$victim"
log "freed the disk and restarted node $victim"
sleep 2
stop_writer
check_all
log "PASS disk_full"
