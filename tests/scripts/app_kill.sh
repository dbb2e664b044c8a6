#!/usr/bin/env bash
# app_kill.sh: the primary's application dies or hangs (its sidecar keeps running) while a
# write load goes through a backup's client port, TRIALS times.
#
# Starts a 3-node cluster (sidecar + key-value example per node) on loopback. Each trial
# starts a writer that sends its writes to one backup's client port only, then, on the
# primary's node:
#
#   --mode kill        SIGKILL the key-value server. The primary finds its application
#                      gone and, after --app-timeout, hands over to a backup whose
#                      application is live. The dead server is then started again.
#   --mode stop        SIGSTOP the key-value server (a hung application: it stops answering
#                      the sidecar's pings); the same hand-over; then SIGCONT.
#   --mode supervised  every sidecar runs its key-value server itself (--app-cmd, with
#                      --app-timeout 5s): SIGKILL the server; the sidecar starts it again
#                      in place and the same node stays primary, no failover.
#   --mode supervised-stop  the same, but SIGSTOP: the sidecar finds the server hung (no
#                      answer to its pings for half the app timeout), kills it and starts
#                      it again in place (after 2.5 s); no failover.
#
# Checks per trial: writes resume within --app-timeout + 1 s (the longest pause between two
# acknowledged writes), on another node for kill and stop and on the same node, in the
# same epoch, for supervised and supervised-stop. At the end: every acknowledged write is readable and all logs
# verify and agree on the committed prefix. Prints the client's pause per trial and its
# min/median/max.
#
# Run: tests/scripts/app_kill.sh [--mode kill|stop|supervised|supervised-stop] [--trials N]   (default
#      kill, 3 trials, at most 5 in the supervised modes; `cargo test --test scripts` runs
#      one trial of each mode). Needs:
#      bash, coreutils; builds target/release binaries if missing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

MODE=kill
TRIALS=3
while [[ $# -gt 0 ]]; do
    case $1 in
    --mode) MODE=$2; shift 2 ;;
    --trials) TRIALS=$2; shift 2 ;;
    *) echo "usage: $0 [--mode kill|stop|supervised|supervised-stop] [--trials N]" >&2; exit 2 ;;
    esac
done
case $MODE in
kill | stop) APP_TIMEOUT_MS=$FAILOVER_TIMEOUT_MS ;;
supervised | supervised-stop)
    SUPERVISED=1
    APP_TIMEOUT_MS=5000
    NODE_ARGS+=(--app-timeout "${APP_TIMEOUT_MS}ms")
    ;;
*) fail "unknown mode $MODE" ;;
esac
PAUSE_MAX_MS=$((APP_TIMEOUT_MS + 1000))
# The supervisor's restart pause doubles from 100 ms with every restart that follows a run
# shorter than 30 s (src/node/supervise.rs), and trials come about 5 s apart: the sixth
# hang's pause (3.2 s) plus the 2.5 s it takes to find the application hung outlasts
# --app-timeout, and the primary rightly hands over an application that fails that often.
if [[ $MODE == supervised* && $TRIALS -gt 5 ]]; then
    echo "--trials $TRIALS: in the supervised modes at most 5 (restarts this close together back off past --app-timeout)" >&2
    exit 2
fi

# epoch_of ID: node ID's epoch, from its /status (the first "epoch" field).
epoch_of() {
    admin_get "${ADMIN_PORT[$1]}" /status \
        | awk -F: '/"epoch":/ && !found {gsub(/[ ,]/, "", $2); print $2; found = 1}'
}

setup plain
start_cluster
for trial in $(seq 1 "$TRIALS"); do
    old=$PRIMARY
    backup=$(other_than "$old")
    old_epoch=$(epoch_of "$old")
    rm -f "$WORK/writer.out" "$WORK/stop-writer"
    "$CHAOS" write --client "127.0.0.1:${CLIENT_PORT[$backup]}" --out "$WORK/acked" \
        --duration 3600s --stop-file "$WORK/stop-writer" --prefix "t$trial-" \
        >"$WORK/writer.out" 2>&1 &
    WRITER_PID=$!
    sleep 1
    pid=$(app_pid "$old") || fail "node $old's application is not running"
    started=$(date +%s%N)
    case $MODE in
    kill | supervised) kill -9 "$pid" ;;
    stop | supervised-stop) kill -STOP "$pid" ;;
    esac
    if [[ $MODE == supervised* ]]; then
        # The application comes back in place: a new process, the same primary.
        for _ in $(seq 1 200); do
            now_pid=$(app_pid "$old") && [[ $now_pid != "$pid" ]] && break
            sleep 0.05
        done
        [[ ${now_pid:-} != "$pid" ]] || fail "node $old's application was not started again"
    else
        PRIMARY=$(wait_primary 15s) || fail "no primary after node $old's application died"
        for _ in $(seq 1 100); do
            [[ $PRIMARY != "$old" ]] && break
            sleep 0.05
            PRIMARY=$(wait_primary 15s) || fail "no primary after node $old's application died"
        done
        [[ $PRIMARY != "$old" ]] || fail "node $old is still primary without its application"
    fi
    took=$(ms_since "$started")
    sleep 1
    touch "$WORK/stop-writer"
    wait "$WRITER_PID" || fail "the writer failed: $(cat "$WORK/writer.out")"
    WRITER_PID=""
    read -r acked pause < <(awk '{for (i = 1; i < NF; i++) {
        if ($i == "acked") a = $(i + 1); if ($i == "max_pause_ms") p = $(i + 1)}}
        END {print a, p}' "$WORK/writer.out")
    [[ -n $pause && ${acked:-0} -gt 0 ]] \
        || fail "trial $trial: no write was acknowledged: $(cat "$WORK/writer.out")"
    echo "$pause" >>"$WORK/app-pauses"
    case $MODE in
    kill)
        start_app "$old"
        log "trial $trial/$TRIALS: node $old's application killed; node $PRIMARY took over after $took ms; the client paused $pause ms"
        ;;
    stop)
        kill -CONT "$pid"
        log "trial $trial/$TRIALS: node $old's application stopped; node $PRIMARY took over after $took ms; the client paused $pause ms"
        ;;
    supervised | supervised-stop)
        PRIMARY=$(wait_primary 15s) || fail "no primary after the restart in place"
        [[ $PRIMARY == "$old" ]] || fail "node $PRIMARY took over: the restart in place failed over"
        [[ $(epoch_of "$old") == "$old_epoch" ]] || fail "node $old's epoch moved: a failover happened"
        log "trial $trial/$TRIALS: node $old's application ($MODE) killed and started again in place after $took ms; the client paused $pause ms; still primary in epoch $old_epoch"
        ;;
    esac
    [[ $pause -le $PAUSE_MAX_MS ]] || fail "the client paused $pause ms, more than --app-timeout + 1 s ($PAUSE_MAX_MS ms)"
    "$CHAOS" settle --admin "$ADMINS" --timeout 30s >/dev/null \
        || fail "the cluster did not settle after trial $trial"
done
sort -n "$WORK/app-pauses" >"$WORK/app-pauses.sorted"
count=$(wc -l <"$WORK/app-pauses.sorted")
log "client pause, $MODE, $count trials: min $(head -n 1 "$WORK/app-pauses.sorted") ms, median $(sed -n "$(((count + 1) / 2))p" "$WORK/app-pauses.sorted") ms, max $(tail -n 1 "$WORK/app-pauses.sorted") ms"
check_all
log "PASS app_kill --mode $MODE: $TRIALS trials"
