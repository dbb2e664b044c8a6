#!/usr/bin/env bash
# follow_damage.sh: follow mode with the system's redis-server; the backups' copies of
# Redis's append-only directory damaged, then the primary killed.
#
# Starts 3 nodes on loopback in follow mode (follow_lib.sh), writes KEYS keys through the
# primary's client port (`SET dmg:<n> <n>`, every `OK` recorded), waits until both backups
# have applied the primary's commit LSN, then damages both backups' appendonlydir (so that
# whichever is elected next holds the damage), behind their sidecars' backs:
#
#   --mode wipe      every file removed;
#   --mode truncate  the incremental AOF file cut to half its length;
#   --mode flip      16 bytes inverted in the middle of the incremental AOF file;
#   --mode drop      the manifest removed.
#
# With --restart the backups' sidecars are killed first and started again on the damaged
# directory (a node restarted after its disk was tampered with); without it they keep
# running (and, but for a flip, which keeps the file's length, must find the damage within
# seconds with nothing written, and rebuild). With --snapshot (flip mode only, not with
# --restart: a damage that changes a name or a length is found first by the backup's own
# check of names and lengths, at its next catch-up or idle check, and rebuilt before any
# snapshot reads it) the nodes take a snapshot every 500 ms while the log moves, and more keys are written after the damage: each damaged backup must
# refuse to snapshot its copy (a snapshot stands for the log before it, which would then be
# truncated behind it) and say so in its log. Then the primary is killed (sidecar and Redis): a backup is promoted and must
# serve every acknowledged key, which it can only do if it noticed that its copy is not the
# log's and rebuilt it from the log before starting Redis. Finally the old primary is
# started again (and, in flip mode without --restart, the backup that was not promoted
# restarted: a changed byte is found when a copy is read whole, at start, promotion or
# before a snapshot; a removed or cut file at its next catch-up), every copy must match the
# new primary's byte for byte, and all logs verify and agree on the committed prefix.
#
# With --on-primary (truncate mode only) the primary's own directory is damaged instead,
# with Redis running and serving: its incremental AOF cut to half behind its back. The
# primary must refuse to ship the cut (what was cut away is acknowledged), stop Redis,
# rebuild the directory from the committed log and start Redis on it again, in the same
# epoch; more keys are written after that, then the primary is killed and the new one must
# serve every acknowledged key, old and new.
#
# Run: tests/scripts/follow_damage.sh --mode wipe|truncate|flip|drop [--restart | --snapshot]
#      [--keys N]   or   tests/scripts/follow_damage.sh --mode truncate --on-primary
#      (`cargo test --test scripts` runs every mode, with and without --restart). Needs
#      redis-server and redis-cli on the PATH.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=follow_lib.sh
source "$(dirname "$0")/follow_lib.sh"

MODE=""
RESTART=0
SNAPSHOT=0
ON_PRIMARY=0
KEYS=2000
while [[ $# -gt 0 ]]; do
    case $1 in
    --mode) MODE=$2; shift 2 ;;
    --restart) RESTART=1; shift ;;
    --snapshot) SNAPSHOT=1; shift ;;
    --on-primary) ON_PRIMARY=1; shift ;;
    --keys) KEYS=$2; shift 2 ;;
    *) echo "usage: $0 --mode wipe|truncate|flip|drop [--restart | --snapshot] [--keys N]" >&2; exit 2 ;;
    esac
done
case $MODE in
wipe | truncate | flip | drop) ;;
*) echo "usage: $0 --mode wipe|truncate|flip|drop [--restart | --snapshot] [--keys N]" >&2; exit 2 ;;
esac
if [[ $ON_PRIMARY == 1 ]]; then
    [[ $MODE == truncate && $RESTART == 0 && $SNAPSHOT == 0 ]] \
        || { echo "--on-primary goes only with --mode truncate, alone" >&2; exit 2; }
fi
if [[ $SNAPSHOT == 1 ]]; then
    [[ $RESTART == 0 ]] || { echo "--snapshot and --restart do not go together" >&2; exit 2; }
    [[ $MODE == flip ]] || { echo "--snapshot goes only with --mode flip (the backup's check of names and lengths finds the other damages before a snapshot reads them)" >&2; exit 2; }
    NODE_ARGS=(--snapshot-interval 500ms)
fi
for tool in redis-server redis-cli; do
    command -v "$tool" >/dev/null \
        || fail "$tool is not on the PATH: install Debian's redis-server and redis-tools"
done

# damage ID: MODE's damage to node ID's appendonlydir.
damage() {
    local dir=$WORK/redis$1/appendonlydir incr len
    incr=$(find "$dir" -maxdepth 1 -name '*.incr.aof' | sort | tail -n 1)
    case $MODE in
    wipe) find "$dir" -mindepth 1 -maxdepth 1 -delete ;;
    truncate)
        [[ -n $incr ]] || fail "node $1: no incremental AOF file in $dir"
        len=$(stat -c %s "$incr")
        truncate -s $((len / 2)) "$incr"
        ;;
    flip)
        [[ -n $incr ]] || fail "node $1: no incremental AOF file in $dir"
        len=$(stat -c %s "$incr")
        python3 - "$incr" $((len / 2)) <<'EOF'
import sys
path, at = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    f.seek(at)
    data = f.read(16)
    f.seek(at)
    f.write(bytes(b ^ 0xFF for b in data))
EOF
        ;;
    drop) rm -f "$dir"/*.manifest ;;
    esac
    log "node $1: $MODE of $dir ($(ls -A "$dir" | tr '\n' ' '))"
}

setup plain
log "mode $MODE, restart $RESTART, snapshot $SNAPSHOT, on primary $ON_PRIMARY; redis: $(redis-server --version | awk '{print $3}')"
for id in "${NODES[@]}"; do start_follow_node "$id"; done
PRIMARY=$(wait_serving "$SERVE_TIMEOUT_S") || fail "no primary serving Redis after start"
log "cluster up: node $PRIMARY is primary and its Redis serves"
start_watch

# The keys, through the primary's client port, one redis-cli; only an OK counts.
seq 1 "$KEYS" | awk '{print "SET dmg:" $1 " " $1}' >"$WORK/sets"
redis-cli -h 127.0.0.1 -p "${CLIENT_PORT[$PRIMARY]}" <"$WORK/sets" >"$WORK/set-replies" \
    || fail "writing the keys failed"
paste -d ' ' <(seq 1 "$KEYS") "$WORK/set-replies" | awk '$2 == "OK" {print $1}' >"$WORK/acked"
acked=$(wc -l <"$WORK/acked")
[[ $acked -eq $KEYS ]] || fail "only $acked of $KEYS SETs acknowledged"
wait_quiet
log "$acked keys acknowledged; both backups applied commit lsn $COMMIT"

# status_field ID FIELD: a top-level field of node ID's /status.
status_field() {
    admin_get "${ADMIN_PORT[$1]}" /status 2>/dev/null \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$2"
}

# on_primary: the primary's own incremental AOF cut while Redis serves; the primary must
# refuse to ship the cut, rebuild and serve again in the same epoch; then more keys.
on_primary() {
    local epoch started_again
    epoch=$(status_field "$PRIMARY" epoch)
    damage "$PRIMARY"
    for _ in $(seq 1 100); do
        grep -q "was cut back while the application served" "$WORK/n$PRIMARY.log" && break
        sleep 0.1
    done
    grep -q "was cut back while the application served" "$WORK/n$PRIMARY.log" \
        || fail "node $PRIMARY shipped or ignored the cut of its own AOF: no refusal in its log"
    started_again=$(wait_serving "$SERVE_TIMEOUT_S") || fail "no primary serving Redis after the cut"
    [[ $started_again == "$PRIMARY" && $(status_field "$PRIMARY" epoch) == "$epoch" ]] \
        || fail "node $started_again serves in epoch $(status_field "$started_again" epoch), not node $PRIMARY in epoch $epoch"
    log "node $PRIMARY refused the cut, rebuilt its directory and serves again in epoch $epoch"
    seq 1 500 | awk '{print "SET more:" $1 " " $1}' >"$WORK/more-sets"
    redis-cli -h 127.0.0.1 -p "${CLIENT_PORT[$PRIMARY]}" <"$WORK/more-sets" >"$WORK/more-replies" \
        || fail "writing more keys failed"
    paste -d ' ' <(seq 1 500) "$WORK/more-replies" | awk '$2 == "OK" {print $1}' >"$WORK/more-acked"
    [[ $(wc -l <"$WORK/more-acked") -eq 500 ]] || fail "only $(wc -l <"$WORK/more-acked") of 500 more SETs acknowledged"
    wait_quiet
}

declare -A REBUILDS_BEFORE=()
[[ $ON_PRIMARY == 1 ]] && on_primary
for id in "${NODES[@]}"; do
    [[ $ON_PRIMARY == 1 ]] && break
    [[ $id == "$PRIMARY" ]] && continue
    REBUILDS_BEFORE[$id]=$(grep -c "rebuilding the followed directory" "$WORK/n$id.log" || true)
    if [[ $RESTART == 1 ]]; then kill_follow_node "$id"; fi
    damage "$id"
    if [[ $RESTART == 1 ]]; then start_follow_node "$id"; fi
done
if [[ $RESTART == 0 && $SNAPSHOT == 0 && $MODE != flip && $ON_PRIMARY == 0 ]]; then
    # Nothing is written now: a running backup must still find a file removed or cut (its
    # idle check of names and lengths) and rebuild its copy, before any promotion.
    for id in "${NODES[@]}"; do
        [[ $id == "$PRIMARY" ]] && continue
        for _ in $(seq 1 100); do
            [[ $(grep -c "rebuilding the followed directory" "$WORK/n$id.log" || true) -gt ${REBUILDS_BEFORE[$id]} ]] && break
            sleep 0.1
        done
        [[ $(grep -c "rebuilding the followed directory" "$WORK/n$id.log" || true) -gt ${REBUILDS_BEFORE[$id]} ]] \
            || fail "node $id did not notice its damaged copy while the cluster was quiet"
    done
    log "both backups found their damaged copies while the cluster was quiet and rebuilt them"
fi
if [[ $SNAPSHOT == 1 ]]; then
    # More writes, so the log moves and the schedule asks for snapshots of the damaged copies.
    for round in 1 2 3; do
        seq 1 50 | awk -v r="$round" '{print "SET more:" r ":" $1 " " $1}' \
            | redis-cli -h 127.0.0.1 -p "${CLIENT_PORT[$PRIMARY]}" >/dev/null \
            || fail "writing more keys failed"
        sleep 0.7
    done
    for id in "${NODES[@]}"; do
        [[ $id == "$PRIMARY" ]] && continue
        grep -q "no snapshot of it" "$WORK/n$id.log" \
            || fail "node $id did not refuse to snapshot its damaged copy: $(grep -c 'snapshot of the directory stored' "$WORK/n$id.log") snapshots stored"
    done
    log "both damaged backups refused to snapshot their copies"
fi
if [[ $RESTART == 1 ]]; then
    deadline=$(($(now_ms) + REJOIN_TIMEOUT_S * 1000))
    until backups_caught_up "$PRIMARY"; do
        [[ $(now_ms) -lt $deadline ]] || fail "the restarted backups did not catch up"
        sleep 0.05
    done
    log "both backups restarted on their damaged copies and caught up"
fi

old=$PRIMARY
kill_follow_node "$old"
PRIMARY=$(wait_serving "$SERVE_TIMEOUT_S") \
    || fail "no primary serving Redis ${SERVE_TIMEOUT_S} s after killing node $old"
log "node $PRIMARY serves after the kill of node $old"

sed 's/^\(.*\)$/GET dmg:\1/' "$WORK/acked" >"$WORK/gets"
redis-cli -h 127.0.0.1 -p "${CLIENT_PORT[$PRIMARY]}" <"$WORK/gets" >"$WORK/values" \
    || fail "reading the keys back failed"
paste -d ' ' "$WORK/acked" "$WORK/values" | awk '$1 != $2 {print $1}' >"$WORK/lost"
if [[ -s $WORK/lost ]]; then
    fail "$(wc -l <"$WORK/lost") of $acked acknowledged keys missing or wrong on node $PRIMARY, e.g. dmg:$(head -n 1 "$WORK/lost")"
fi
log "all $acked acknowledged keys read back from node $PRIMARY"
if [[ $ON_PRIMARY == 1 ]]; then
    sed 's/^\(.*\)$/GET more:\1/' "$WORK/more-acked" >"$WORK/more-gets"
    redis-cli -h 127.0.0.1 -p "${CLIENT_PORT[$PRIMARY]}" <"$WORK/more-gets" >"$WORK/more-values" \
        || fail "reading the later keys back failed"
    paste -d ' ' "$WORK/more-acked" "$WORK/more-values" | awk '$1 != $2 {print $1}' >"$WORK/more-lost"
    [[ -s $WORK/more-lost ]] && fail "$(wc -l <"$WORK/more-lost") later keys missing or wrong on node $PRIMARY, e.g. more:$(head -n 1 "$WORK/more-lost")"
    log "the 500 keys written after the cut read back too"
fi

sweep_redis "$old"
start_follow_node "$old"
if [[ $MODE == flip && $RESTART == 0 ]]; then
    # A changed byte with the length unchanged is found when a copy is checked whole: at
    # start, at promotion, before a snapshot. The backup that was not promoted still holds
    # it: restarted, it must find it and rebuild.
    for id in "${NODES[@]}"; do
        [[ $id == "$PRIMARY" || $id == "$old" ]] && continue
        kill_follow_node "$id"
        start_follow_node "$id"
    done
fi
wait_quiet
if ! mismatch=$(compare_dirs "$PRIMARY" 2>&1); then fail "at commit lsn $COMMIT: $mismatch"; fi
log "every backup's appendonlydir matches the primary's at commit lsn $COMMIT"
stop_watch
for id in "${NODES[@]}"; do kill_follow_node "$id"; done
check_logs "$COMMIT"
FAILED=0
log "PASS follow_damage: mode $MODE, restart $RESTART, snapshot $SNAPSHOT, on primary $ON_PRIMARY"
