#!/usr/bin/env bash
# follow_redis.sh: follow mode with the system's unmodified redis-server; kill -9 of a
# random node (its sidecar and its Redis), CYCLES times, under load.
#
# Starts 3 nodes on loopback, each an `understudy run` sidecar in follow mode: the sidecar
# runs redis-server (--app-cmd, `appendonly yes`, `appendfsync no`: with everysec Redis may postpone its write past its reply) only while it is
# the primary and replicates Redis's append-only directory ($WORK/redisN/appendonlydir,
# --follow-dir). Two loads go through the client ports the whole time:
#
#   - redis-benchmark (SET, -P 16 -c 20 -r 100000), started again on the next node's
#     client port whenever it exits (a failover cuts its connections). Load only.
#   - a checking writer (bash, RESP over /dev/tcp): `SET chk:<n> <n>` one at a time with
#     increasing n, moving to the next node's client port when a connection fails, and
#     recording n (and the time) only when the reply is `+OK`.
#
# Each cycle strikes one node: the primary in cycle 1, a backup in cycle 2, then a random
# node, with a fault drawn from --faults (default "kill"):
#
#   - kill: SIGKILL of the node's sidecar and its Redis (the pid from `app.pid` in its
#     /status, and any redis-server still on its port), a crashed machine;
#   - partition: the fault proxy (on every peer link) cuts the node off from both others,
#     both directions; its sidecar and Redis keep running, and clients still reach its
#     client port;
#   - stop: SIGSTOP of the sidecar and its Redis together for 1-4 x the failover timeout (a
#     machine that froze), then SIGCONT;
#   - term: SIGTERM of the sidecar (a primary hands over first): it must exit within 10 s
#     and leave no Redis running;
#   - delay: every link out of the node delayed by 1 ms to 2 x the failover timeout (its
#     heartbeats, records and answers arrive late, in order);
#   - appkill: SIGKILL of the node's Redis alone, its sidecar left running (on a backup,
#     where no Redis runs, nothing happens): the primary starts Redis again in place, on
#     a directory its capture checked for cuts (a torn tail Redis drops as it loads makes
#     the primary rebuild the directory from the log first), or hands over.
#   - rewrite: on a node whose Redis runs, BGREWRITEAOF (with `rdbcompression no`), then a
#     kill as above 0-400 ms later: while Redis rewrites, renames its new base file into the
#     directory or writes the new manifest, or while the sidecar ships the base file (longer
#     than one 4 MiB piece of the capture: with this fault the run first loads 160 values of
#     64 KiB through the client port) or commits it. On a backup, a kill. From cycle 3 on,
#     this fault strikes the primary.
#
# It waits until exactly one node is primary with `follow.state` "serving" (the failover
# time; a struck primary must have been replaced), holds the fault a random 0-400 ms
# more, undoes it (restarts the killed node, heals the links, continues the stopped
# processes) and waits until every node but the primary (the struck one included) is a
# backup in `follow.state` "standby" whose `applied_lsn` has reached the primary's
# `commit_lsn` as read just before (under load the commit moves on; the exact match is
# checked at the end, once quiet). A role watcher fails the run on two primaries in one
# epoch. With CLOCK_SKEW=1 every sidecar (and so its Redis) has clocks of its own (lib.sh).
#
# At the end, with the loads stopped: every acknowledged key is read back through the
# serving primary's client port (one redis-cli) and must hold its value; once every backup
# reports `applied_lsn` equal to the primary's `commit_lsn`, each backup's appendonlydir
# holds the same files as the primary's, byte for byte (`cmp`); then the sidecars are
# stopped and all logs verify and agree on the committed prefix. Prints, per cycle, the
# node killed, the failover time, the new primary's Redis start time, the checking writer's
# pause and the rejoin time, then a summary.
#
# Run: tests/scripts/follow_redis.sh [--cycles N] [--seed S] [--faults kill,partition,stop,term,delay,appkill,rewrite]
#      (default 5 cycles of kill; the seed is printed so a failing order can be replayed;
#      `cargo test --test scripts` runs 2 kills, and 4 cycles of partition, stop and term
#      with CLOCK_SKEW=1). Needs redis-server, redis-cli and redis-benchmark on the PATH (Debian's
#      redis-server and redis-tools).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=follow_lib.sh
source "$(dirname "$0")/follow_lib.sh"

CYCLES=5
SEED=$$
FAULTS=kill
while [[ $# -gt 0 ]]; do
    case $1 in
    --cycles) CYCLES=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --faults) FAULTS=$2; shift 2 ;;
    *) echo "usage: $0 [--cycles N] [--seed S] [--faults kill,partition,stop,term,delay,appkill,rewrite]" >&2; exit 2 ;;
    esac
done
RANDOM=$SEED
IFS=, read -r -a FAULT_LIST <<<"$FAULTS"
for fault in "${FAULT_LIST[@]}"; do
    case $fault in
    kill | partition | stop | term | delay | appkill | rewrite) ;;
    *) echo "--faults: unknown fault '$fault' (kill, partition, stop, term, delay, appkill, rewrite)" >&2; exit 2 ;;
    esac
done
[[ ${#FAULT_LIST[@]} -gt 0 ]] || { echo "--faults: empty" >&2; exit 2; }
for tool in redis-server redis-cli redis-benchmark; do
    command -v "$tool" >/dev/null \
        || fail "$tool is not on the PATH: install Debian's redis-server and redis-tools"
done

BENCH_LOOP_PID=""
# The longest run of redis-benchmark before it is started again.
BENCH_RUN_MS=5000

# struck_status ID: node ID's status, read once as it is struck: STRUCK_REDIS is the Redis
# pid it showed ("-" if none ran), STRUCK_ROLE "primary" if it was the serving primary and
# "backup" if not. One read gives both, so a primary that stepped down a moment before (a
# late failover after the previous cycle) is not taken for a primary without a Redis.
struck_status() {
    local role state _
    read -r role _ state _ STRUCK_REDIS _ < <(node_status "$1" || echo "- - - - - -")
    STRUCK_ROLE=backup
    if [[ $role == primary && $state == serving ]]; then STRUCK_ROLE=primary; fi
}

# strike FAULT ID: applies FAULT (kill, partition, stop, term, delay, appkill, rewrite) to node ID;
# STRUCK_REDIS and STRUCK_ROLE are as struck_status read them, STRUCK_MS the time of the
# fault. A stop is held here for 1-4 x the failover timeout and undone before it returns.
strike() {
    local fault=$1 id=$2 other pids=()
    case $fault in
    kill | rewrite)
        if [[ $fault == rewrite ]]; then
            struck_status "$id"
            if [[ $STRUCK_REDIS != - ]]; then
                redis-cli -p "${APP_PORT[$id]}" config set rdbcompression no >/dev/null 2>&1 || true
                REWRITE=$(redis-cli -p "${APP_PORT[$id]}" bgrewriteaof 2>&1) || true
                log "node $id's Redis: $REWRITE"
                sleep_ms $((RANDOM % 400))
            fi
        fi
        kill_follow_node "$id"
        STRUCK_REDIS=$KILLED_REDIS
        STRUCK_ROLE=$KILLED_ROLE
        STRUCK_MS=$KILLED_MS
        ;;
    term)
        struck_status "$id"
        STRUCK_MS=$(now_ms)
        kill -TERM "${NODE_PID[$id]}"
        wait_exited "$id" || fail "node $id did not exit within 10 s of SIGTERM"
        wait "${NODE_PID[$id]}" 2>/dev/null || true
        NODE_PID[$id]=""
        [[ -z $(redis_pids "$id") ]] || fail "node $id exited on SIGTERM and left its Redis running"
        ;;
    delay)
        struck_status "$id"
        STRUCK_MS=$(now_ms)
        DELAY_MS=$((1 + RANDOM % (2 * FAILOVER_TIMEOUT_MS)))
        for other in "${NODES[@]}"; do
            [[ $other == "$id" ]] || proxy delay "$id-$other" "$DELAY_MS"
        done
        ;;
    partition)
        struck_status "$id"
        STRUCK_MS=$(now_ms)
        for other in "${NODES[@]}"; do
            [[ $other == "$id" ]] && continue
            proxy partition "$id-$other"
            proxy partition "$other-$id"
        done
        ;;
    appkill)
        struck_status "$id"
        mapfile -t pids < <(redis_pids "$id")
        STRUCK_MS=$(now_ms)
        [[ ${#pids[@]} -eq 0 ]] || kill -9 "${pids[@]}" 2>/dev/null || true
        ;;
    stop)
        struck_status "$id"
        mapfile -t pids < <(redis_pids "$id")
        STRUCK_MS=$(now_ms)
        kill -STOP "${NODE_PID[$id]}" "${pids[@]}"
        sleep_ms $((FAILOVER_TIMEOUT_MS + RANDOM % (3 * FAILOVER_TIMEOUT_MS)))
        kill -CONT "${NODE_PID[$id]}" "${pids[@]}" 2>/dev/null || true
        ;;
    esac
}

# undo FAULT ID: ends a kill or a SIGTERM (starts the node again), a partition (heals
# every link) or a delay.
undo() {
    case $1 in
    kill | term | rewrite)
        sweep_redis "$2"
        start_follow_node "$2"
        ;;
    partition) proxy heal all ;;
    delay) proxy delay all 0 ;;
    stop | appkill) ;;
    esac
}

# checking_writer: SET chk:<n> <n> one at a time through the client ports, over RESP on
# /dev/tcp; appends "n ms" to $WORK/acked-keys for every +OK; stops once
# $WORK/stop-checker exists and writes its counts to $WORK/checker.out.
checking_writer() {
    local n=0 turn=0 fd="" port key reply acked=0 errors=0 cut=0 out
    # A write to a connection the client port closed fails (EPIPE) instead of killing.
    trap '' PIPE
    exec {out}>>"$WORK/acked-keys"
    while [[ ! -e $WORK/stop-checker ]]; do
        if [[ -z $fd ]]; then
            port=${CLIENT_PORT[${NODES[turn % ${#NODES[@]}]}]}
            turn=$((turn + 1))
            if ! exec {fd}<>"/dev/tcp/127.0.0.1/$port"; then
                fd=""
                sleep 0.02
                continue
            fi 2>/dev/null
            echo "$(now_ms) connected to $port at chk:$n" >>"$WORK/checker.log"
        fi
        key=chk:$n
        if printf '*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n' \
            "${#key}" "$key" "${#n}" "$n" >&"$fd" 2>/dev/null \
            && read -r -t 5 -u "$fd" reply 2>/dev/null; then
            if [[ ${reply%$'\r'} == "+OK" ]]; then
                echo "$n $(now_ms)" >&"$out"
                acked=$((acked + 1))
            else
                errors=$((errors + 1))
                echo "$(now_ms) chk:$n on $port: ${reply%$'\r'}" >>"$WORK/checker.log"
                sleep 0.02
            fi
        else
            # No reply (the connection was cut, or 5 s passed): not acknowledged.
            cut=$((cut + 1))
            echo "$(now_ms) no reply to chk:$n on $port" >>"$WORK/checker.log"
            exec {fd}>&-
            fd=""
        fi
        n=$((n + 1))
    done
    echo "sent $n acked $acked error_replies $errors no_reply $cut" >"$WORK/checker.out"
}

# bench_loop: redis-benchmark through the client ports until $WORK/stop-bench exists. A
# run goes to the next node's client port that answers PING, and is started again when it
# exits (a failover cuts its connections) or after BENCH_RUN_MS (a run whose connections
# hang makes no load). Counts its runs in $WORK/bench.runs.
bench_loop() {
    local turn=0 port runs=0 pid started
    while [[ ! -e $WORK/stop-bench ]]; do
        port=${CLIENT_PORT[${NODES[turn % ${#NODES[@]}]}]}
        turn=$((turn + 1))
        if [[ $(redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null) != PONG ]]; then
            sleep 0.1
            continue
        fi
        redis-benchmark -h 127.0.0.1 -p "$port" -t set -P 16 -c 20 -r 100000 -n 1000000000 \
            -q >"$WORK/bench.out" 2>&1 &
        pid=$!
        echo "$pid" >"$WORK/bench.pid"
        started=$(now_ms)
        while kill -0 "$pid" 2>/dev/null; do
            if [[ -e $WORK/stop-bench || $(($(now_ms) - started)) -gt $BENCH_RUN_MS ]]; then
                kill -9 "$pid" 2>/dev/null || true
            fi
            sleep 0.1
        done
        wait "$pid" || true
        runs=$((runs + 1))
        echo "$runs" >"$WORK/bench.runs"
    done
}

stop_bench() {
    local pid
    touch "$WORK/stop-bench"
    pid=$(cat "$WORK/bench.pid" 2>/dev/null) || true
    if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == redis-benchmark ]]; then
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$BENCH_LOOP_PID" 2>/dev/null || true
    BENCH_LOOP_PID=""
}

# serving_text BEFORE PRIMARY SERVING_MS START_MS: what a cycle's fault did to the primary
# (BEFORE: the primary when it struck).
serving_text() {
    if [[ $1 != "$2" ]]; then
        echo "node $2 serving after $3 ms (its Redis started in $4 ms)"
    else
        echo "node $2 still serving ($3 ms after the fault)"
    fi
}

if [[ ,$FAULTS, == *,partition,* || ,$FAULTS, == *,delay,* ]]; then setup proxy; else setup plain; fi
log "seed $SEED; faults $FAULTS; redis: $(redis-server --version | awk '{print $3}')"
for id in "${NODES[@]}"; do start_follow_node "$id"; done
PRIMARY=$(wait_serving "$SERVE_TIMEOUT_S") || fail "no primary serving Redis after start"
log "cluster up: node $PRIMARY is primary and its Redis serves"
started_ms=$(now_ms)
start_watch

: >"$WORK/acked-keys"
rm -f "$WORK/stop-checker" "$WORK/stop-bench"
checking_writer &
WRITER_PID=$!
bench_loop 2>>"$WORK/bench.err" &
BENCH_LOOP_PID=$!
EXTRA_PIDS+=("$BENCH_LOOP_PID")
for _ in $(seq 1 200); do
    [[ -s $WORK/acked-keys ]] && break
    sleep 0.1
done
[[ -s $WORK/acked-keys ]] || fail "the checking writer got no acknowledgement in 20 s"
if [[ ,$FAULTS, == *,rewrite,* ]]; then
    # Enough data that a rewritten base file is several pieces of the capture: 160 values
    # of 64 KiB (10 MB), acknowledged through the client port like any write.
    python3 -c '
import os, sys
out = sys.stdout.buffer
for i in range(160):
    key, value = b"big:%d" % i, os.urandom(32768).hex().encode()
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
' >"$WORK/big.resp"
    redis-cli -h 127.0.0.1 -p "${CLIENT_PORT[$PRIMARY]}" --pipe <"$WORK/big.resp" >"$WORK/big.out" 2>&1 \
        && grep -q "errors: 0, replies: 160" "$WORK/big.out" \
        || fail "loading the large values failed: $(tail -n 1 "$WORK/big.out")"
    log "160 values of 64 KiB loaded through node $PRIMARY's client port"
fi
sleep 1

kills_of_primary=0
: >"$WORK/cycles"
for cycle in $(seq 1 "$CYCLES"); do
    # The primary now: messages a delay held back can bring a failover after a cycle ended.
    PRIMARY=$(wait_serving "$SERVE_TIMEOUT_S") \
        || fail "cycle $cycle: no primary serving Redis before the fault"
    case $cycle in
    1) victim=$PRIMARY ;;
    2) victim=$(other_than "$PRIMARY") ;;
    *) victim=${NODES[RANDOM % ${#NODES[@]}]} ;;
    esac
    fault=${FAULT_LIST[RANDOM % ${#FAULT_LIST[@]}]}
    # A rewrite happens where Redis runs: after cycle 2, always the primary's.
    if [[ $fault == rewrite && $cycle -gt 2 ]]; then victim=$PRIMARY; fi
    strike "$fault" "$victim"
    killed_ms=$STRUCK_MS
    # The role is the one the struck node's status showed as it was struck, which a failover
    # since the line above may have changed.
    role=$STRUCK_ROLE
    before=$PRIMARY
    if [[ $role == primary ]]; then
        before=$victim
        kills_of_primary=$((kills_of_primary + 1))
        [[ $STRUCK_REDIS != - ]] || fail "cycle $cycle: the primary (node $victim) showed no app.pid"
    elif [[ $victim == "$PRIMARY" ]]; then
        log "cycle $cycle: node $victim was no longer the serving primary when struck"
    fi
    # A node cut off cannot stay the primary; a stopped one, continued, or a slow one
    # may still be.
    not=""
    if [[ $role == primary && $fault == partition ]]; then not=$victim; fi
    PRIMARY=$(wait_serving "$SERVE_TIMEOUT_S" "$not") \
        || fail "cycle $cycle: no primary serving Redis ${SERVE_TIMEOUT_S} s after the $fault of node $victim"
    if [[ $fault == appkill && $role == primary ]]; then
        # Served again only by another Redis: the one started in place, or another node's.
        deadline=$((killed_ms + SERVE_TIMEOUT_S * 1000))
        while :; do
            if PRIMARY=$(serving_primary); then
                read -r _ _ _ _ pid _ < <(node_status "$PRIMARY" || echo "- - - - - -")
                [[ $pid != - && $pid != "$STRUCK_REDIS" ]] && break
            fi
            [[ $(now_ms) -lt $deadline ]] \
                || fail "cycle $cycle: no Redis but the killed one served ${SERVE_TIMEOUT_S} s after the appkill of node $victim"
            sleep 0.02
        done
    fi
    serving_ms=$(($(now_ms) - killed_ms))
    read -r _ _ _ _ _ redis_start < <(node_status "$PRIMARY" || echo "- - - - - -")
    sleep "0.$((RANDOM % 5))"
    restarted_ms=$(now_ms)
    undo "$fault" "$victim"
    deadline=$((restarted_ms + REJOIN_TIMEOUT_S * 1000))
    until backups_caught_up "$PRIMARY"; do
        [[ $(now_ms) -lt $deadline ]] \
            || fail "cycle $cycle: node $victim did not catch up as a backup in ${REJOIN_TIMEOUT_S} s: $(for id in "${NODES[@]}"; do echo "node $id: $(node_status "$id" || echo down);"; done)"
        sleep 0.05
        # A failover meanwhile (the load is heavy): follow the new primary.
        PRIMARY=$(serving_primary) || true
        [[ -n $PRIMARY ]] || PRIMARY=$(wait_serving "$SERVE_TIMEOUT_S") \
            || fail "cycle $cycle: no primary serving Redis while node $victim rejoined"
    done
    caught_up_ms=$(now_ms)
    rejoin_ms=$((caught_up_ms - restarted_ms))
    echo "$cycle $victim $role $fault $before $PRIMARY $killed_ms $serving_ms $redis_start $rejoin_ms $caught_up_ms" >>"$WORK/cycles"
    log "cycle $cycle/$CYCLES: $fault of node $victim ($role, redis pid $STRUCK_REDIS); $(serving_text "$before" "$PRIMARY" "$serving_ms" "$redis_start"); node $victim caught up as a backup $rejoin_ms ms after the fault was undone"
    sleep 1
done

stop_bench
touch "$WORK/stop-checker"
wait "$WRITER_PID" || fail "the checking writer failed"
WRITER_PID=""
ran_ms=$(($(now_ms) - started_ms))
acked=$(wc -l <"$WORK/acked-keys")
log "checking writer: $(cat "$WORK/checker.out"); redis-benchmark runs: $(cat "$WORK/bench.runs" 2>/dev/null || echo 0)"
if grep -q ': -' "$WORK/checker.log" 2>/dev/null; then
    log "checking writer's error replies: $(sed -n 's/^.*: -//p' "$WORK/checker.log" | sort | uniq -c \
        | awk '{n = $1; $1 = ""; printf "%s%s x %d", (NR > 1 ? "; " : ""), substr($0, 2), n}')"
fi
[[ $acked -gt 0 ]] || fail "no write was acknowledged"

wait_quiet
log "quiet: node $PRIMARY is primary at commit lsn $COMMIT; both backups applied it"

# A Redis started again in place (appkill) answers -LOADING until it has read its files.
deadline=$(($(now_ms) + SERVE_TIMEOUT_S * 1000))
until [[ $(redis-cli -h 127.0.0.1 -p "${CLIENT_PORT[$PRIMARY]}" ping 2>/dev/null) == PONG ]]; do
    [[ $(now_ms) -lt $deadline ]] || fail "node $PRIMARY's Redis did not answer PING within ${SERVE_TIMEOUT_S} s"
    sleep 0.05
done

# Every acknowledged key, read back through the primary's client port.
awk '{print "GET chk:" $1}' "$WORK/acked-keys" >"$WORK/gets"
redis-cli -h 127.0.0.1 -p "${CLIENT_PORT[$PRIMARY]}" <"$WORK/gets" >"$WORK/values" 2>"$WORK/values.err" \
    || fail "reading the acknowledged keys back failed: $(head -n 3 "$WORK/values.err")"
[[ $(wc -l <"$WORK/values") -eq $acked ]] \
    || fail "read back $(wc -l <"$WORK/values") values for $acked keys: $(head -n 3 "$WORK/values.err")"
paste -d ' ' "$WORK/acked-keys" "$WORK/values" | awk '$1 != $3 {print $1}' >"$WORK/lost"
if [[ -s $WORK/lost ]]; then
    fail "$(wc -l <"$WORK/lost") of $acked acknowledged keys missing or wrong on node $PRIMARY, e.g. chk:$(head -n 1 "$WORK/lost") (all in $WORK/lost)"
fi
log "all $acked acknowledged keys read back from node $PRIMARY's Redis"

# The backups' copies of the directory, byte for byte. Redis may have started an
# append-only file rewrite meanwhile: a mismatch counts only if the commit did not move.
for attempt in 1 2 3 4 5; do
    if mismatch=$(compare_dirs "$PRIMARY" 2>&1); then break; fi
    read -r _ commit_after _ < <(node_status "$PRIMARY" || echo "- - - - - -")
    [[ $commit_after != "$COMMIT" ]] || fail "at commit lsn $COMMIT: $mismatch"
    [[ $attempt -lt 5 ]] || fail "the directories never compared at rest: $mismatch"
    log "the primary's commit moved ($COMMIT -> $commit_after) during the comparison; again"
    sleep 1
    wait_quiet
done
files=$(cd "$WORK/redis$PRIMARY/appendonlydir" && ls -A | tr '\n' ' ')
bytes=$(cat "$WORK/redis$PRIMARY/appendonlydir"/* | wc -c)
log "both backups' appendonlydir match the primary's byte for byte: $files($bytes bytes)"

stop_watch
for id in "${NODES[@]}"; do kill_follow_node "$id"; done
check_logs "$COMMIT"
FAILED=0

# Summary: per cycle, with the checking writer's pause: the longest time between two
# acknowledgements from the last one before the kill until the killed node caught up.
log "summary: $CYCLES cycles ($kills_of_primary struck the primary), $acked acknowledged writes, all present; ran $((ran_ms / 1000)) s under load"
while read -r cycle victim role fault before primary killed serving start rejoin caught; do
    pause=$(awk -v k="$killed" -v e="$caught" '
        $2 < k {before = $2; next}
        {if ($2 - before > max) max = $2 - before; before = $2}
        $2 > e {exit}
        END {if (max) print max}' "$WORK/acked-keys")
    log "  cycle $cycle: $fault of node $victim ($role); $(serving_text "$before" "$primary" "$serving" "$start"); writer paused ${pause:-?} ms; rejoined in $rejoin ms"
done <"$WORK/cycles"
log "PASS follow_redis: $CYCLES cycles, seed $SEED"
