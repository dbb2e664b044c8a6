#!/usr/bin/env bash
# rolling_restart.sh: restart every node of a 3-node cluster in turn with SIGTERM, the
# primary last, under a write load through the client ports, ROUNDS times.
#
# Starts a 3-node cluster (sidecar + key-value example per node) on loopback and a writer
# that records every acknowledged write and every pause of 50 ms or more between two
# acknowledgements. Each round: SIGTERM each backup's sidecar (it exits at once), stop its
# application, start both again and wait until the cluster has settled; then the same for
# the primary, whose SIGTERM hands over to its most up-to-date backup before it exits.
# Checks: every sidecar exits 0 on SIGTERM, the primary's hand-over elects another node,
# every acknowledged write is readable at the end, and all logs verify and agree on the
# committed prefix. Prints the longest pause the writer saw after each kind of restart
# (min/median/max over the restarts).
#
# Run: tests/scripts/rolling_restart.sh [--rounds N]   (default 3; `cargo test --test
#      scripts` runs 1). Needs: bash, coreutils; builds target/release binaries if missing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

ROUNDS=3
while [[ $# -gt 0 ]]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N]" >&2; exit 2 ;;
    esac
done

# restart_gracefully ID: SIGTERM the sidecar, which must exit 0 (a primary hands over
# first), stop its application, start both again.
restart_gracefully() {
    local id=$1 status=0
    kill -TERM "${NODE_PID[$id]}"
    wait_exited "$id" || fail "node $id did not exit within 10 s of SIGTERM"
    wait "${NODE_PID[$id]}" || status=$?
    [[ $status -eq 0 ]] || fail "node $id exited $status on SIGTERM"
    kill -TERM "${KV_PID[$id]}" 2>/dev/null || true
    wait "${KV_PID[$id]}" 2>/dev/null || true
    start_node "$id"
}

setup plain
start_cluster
start_writer 3600 --pauses "$WORK/pauses"
sleep 1
for round in $(seq 1 "$ROUNDS"); do
    old=$PRIMARY
    order=()
    for id in "${NODES[@]}"; do
        [[ $id != "$old" ]] && order+=("$id")
    done
    order+=("$old")
    for id in "${order[@]}"; do
        started=$(date +%s%3N)
        restart_gracefully "$id"
        echo "$started $id" >>"$WORK/restarts"
        [[ $id == "$old" ]] && wc -l <"$WORK/restarts" >>"$WORK/primaries"
        if [[ $id == "$old" ]]; then
            PRIMARY=$(wait_primary 15s) || fail "no primary after the primary's restart"
            [[ $PRIMARY != "$old" ]] || fail "node $old was primary again straight after its SIGTERM"
            log "round $round/$ROUNDS: primary $old restarted with SIGTERM; node $PRIMARY took over"
        else
            log "round $round/$ROUNDS: backup $id restarted with SIGTERM"
        fi
        "$CHAOS" settle --admin "$ADMINS" --timeout 30s --within 200 >/dev/null \
            || fail "the cluster did not settle after node $id's restart"
        sleep 0.3
    done
done
stop_writer
# The longest pause the client saw after each restart (pauses under 20 ms are not
# recorded: they read as 0), as primary or backup, then min/median/max of each kind.
echo "$(date +%s%3N) end" >>"$WORK/restarts"
touch "$WORK/pauses"
awk 'NR == FNR {pause[NR] = $0; n = NR; next}
     {start[FNR] = $1; node[FNR] = $2; count = FNR}
     END {
         for (i = 1; i < count; i++) {
             worst = 0
             for (j = 1; j <= n; j++) {
                 split(pause[j], p, " ")
                 if (p[1] >= start[i] && p[1] < start[i + 1] && p[2] > worst) worst = p[2]
             }
             print node[i], worst
         }
     }' "$WORK/pauses" "$WORK/restarts" >"$WORK/pause-by-restart"
for kind in backup primary; do
    awk -v kind="$kind" -v primaries="$(awk '{print $0}' "$WORK/primaries" | tr '\n' ' ')" '
        BEGIN {split(primaries, list, " "); for (k in list) is_primary[list[k]] = 1}
        {restart++; if ((kind == "primary") == ((restart) in is_primary)) print $2}' \
        "$WORK/pause-by-restart" | sort -n >"$WORK/pauses.$kind"
    if [[ -s $WORK/pauses.$kind ]]; then
        count=$(wc -l <"$WORK/pauses.$kind")
        log "client pause after a $kind's SIGTERM restart, $count restarts: min $(head -n 1 "$WORK/pauses.$kind") ms, median $(sed -n "$(((count + 1) / 2))p" "$WORK/pauses.$kind") ms, max $(tail -n 1 "$WORK/pauses.$kind") ms"
    fi
done
check_all
log "PASS rolling_restart: $ROUNDS rounds"
