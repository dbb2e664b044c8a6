# shellcheck shell=bash
# Follow mode with the system's redis-server, shared by follow_redis.sh and
# follow_damage.sh; sourced after lib.sh, not run. Each node is an `understudy run` sidecar
# in follow mode that runs redis-server (--app-cmd) only while it is the primary and
# replicates Redis's append-only directory ($WORK/redisN/appendonlydir, --follow-dir).

# How long a failover, a rejoin and the final quiet may take.
SERVE_TIMEOUT_S=30
REJOIN_TIMEOUT_S=60
QUIET_TIMEOUT_S=60

# now_ms: wall-clock milliseconds, without a fork.
now_ms() {
    local us=${EPOCHREALTIME//[!0-9]/}
    echo $((us / 1000))
}

# redis_command ID: node ID's Redis command line (run by its sidecar through sh).
redis_command() {
    echo "exec redis-server --port ${APP_PORT[$1]} --bind 127.0.0.1 --dir $WORK/redis$1" \
        "--appendonly yes --appendfsync no --save '' --protected-mode no" \
        "--daemonize no --loglevel warning"
}

# start_follow_node ID: node ID's sidecar in follow mode (with NODE_ARGS), log appended to
# $WORK/nID.log.
start_follow_node() {
    local id=$1 CLOCKS
    mkdir -p "${DATA_DIR[$id]}" "$WORK/redis$id"
    clocks_of "node $id's sidecar and Redis"
    RUST_LOG=${RUST_LOG:-info} "${CLOCKS[@]}" "$UNDERSTUDY" run --node-id "$id" --data-dir "${DATA_DIR[$id]}" \
        --peer-listen "127.0.0.1:${PEER_PORT[$id]}" --peers "$(peers_of "$id")" \
        --cluster-secret-file "$WORK/secret" \
        --admin-listen "127.0.0.1:${ADMIN_PORT[$id]}" \
        --client-listen "127.0.0.1:${CLIENT_PORT[$id]}" \
        --heartbeat-interval "$HEARTBEAT" --failover-timeout "${FAILOVER_TIMEOUT_MS}ms" \
        --app-addr "127.0.0.1:${APP_PORT[$id]}" --follow-dir "$WORK/redis$id/appendonlydir" \
        --app-cmd "$(redis_command "$id")" --app-stop-timeout 2s \
        --app-ready-cmd "redis-cli -p ${APP_PORT[$id]} ping | grep -q PONG" \
        "${NODE_ARGS[@]}" >>"$WORK/n$id.log" 2>&1 &
    NODE_PID[$id]=$!
}

# node_status ID: "role commit_lsn follow.state follow.applied_lsn app.pid
# follow.last_start_ms" of node ID (from its /status; "-" for a missing or
# null field); status 1 if it does not answer.
node_status() {
    admin_get "${ADMIN_PORT[$1]}" /status 2>/dev/null | awk '
        {
            line = $0
            sub(/^[ \t]+/, "", line)
            sub(/,$/, "", line)
            if (match(line, /^"[^"]*": /)) {
                key = substr(line, 2, RLENGTH - 4)
                value = substr(line, RLENGTH + 1)
                if (value == "{" || value == "[") {
                    stack[++depth] = key
                    next
                }
                path = ""
                for (i = 1; i <= depth; i++) if (stack[i] != "") path = path stack[i] "."
                gsub(/"/, "", value)
                field[path key] = value
            } else if (line == "{" || line == "[") {
                stack[++depth] = ""
            } else if (line == "}" || line == "]") {
                depth--
            }
        }
        END {
            if (!("role" in field)) exit 1
            n = split("role commit_lsn follow.state follow.applied_lsn app.pid follow.last_start_ms", want, " ")
            for (i = 1; i <= n; i++) {
                v = field[want[i]]
                if (v == "" || v == "null") v = "-"
                printf "%s%s", v, (i < n ? " " : "\n")
            }
        }'
}

# serving_primary: the id of the one node that is primary with follow.state
# "serving"; status 1 unless exactly one is.
serving_primary() {
    local id found=() role state _
    for id in "${NODES[@]}"; do
        [[ -n ${NODE_PID[$id]:-} ]] || continue
        read -r role _ state _ < <(node_status "$id" || echo "- - - - - -")
        if [[ $role == primary && $state == serving ]]; then found+=("$id"); fi
    done
    [[ ${#found[@]} -eq 1 ]] || return 1
    echo "${found[0]}"
}

# wait_serving TIMEOUT_S [NOT]: waits for serving_primary (other than node NOT, if given)
# and prints it; status 1 on timeout.
wait_serving() {
    local deadline=$(($(now_ms) + $1 * 1000)) found
    while [[ $(now_ms) -lt $deadline ]]; do
        if found=$(serving_primary) && [[ $found != "${2:-}" ]]; then
            echo "$found"
            return 0
        fi
        sleep 0.02
    done
    return 1
}

# redis_pids ID: the redis-server processes serving node ID's Redis port (Redis names
# itself "redis-server 127.0.0.1:PORT").
redis_pids() {
    local p comm line
    for p in /proc/[0-9]*; do
        { read -r comm <"$p/comm"; } 2>/dev/null || continue
        [[ $comm == redis-server ]] || continue
        line=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
        if [[ $line == *"127.0.0.1:${APP_PORT[$1]} "* || $line == *"--port ${APP_PORT[$1]} "* ]]; then
            echo "${p#/proc/}"
        fi
    done
}

# kill_follow_node ID: SIGKILL node ID's sidecar and its Redis together (a crashed
# machine); KILLED_REDIS is the Redis pid its status showed ("-" if none ran) and
# KILLED_ROLE "primary" if that same status showed the serving primary ("backup" if not),
# KILLED_MS the time of the kill. sweep_redis ID afterwards kills a Redis the sidecar was starting as
# it died.
kill_follow_node() {
    local id=$1 pids=() role state _
    read -r role _ state _ KILLED_REDIS _ < <(node_status "$id" || echo "- - - - - -")
    KILLED_ROLE=backup
    if [[ $role == primary && $state == serving ]]; then KILLED_ROLE=primary; fi
    if [[ $KILLED_REDIS != - ]]; then pids+=("$KILLED_REDIS"); fi
    mapfile -t -O "${#pids[@]}" pids < <(redis_pids "$id")
    KILLED_MS=$(now_ms)
    kill -9 "${NODE_PID[$id]}" "${pids[@]}" 2>/dev/null || true
    wait "${NODE_PID[$id]}" 2>/dev/null || true
    NODE_PID[$id]=""
}

sweep_redis() {
    local pids
    mapfile -t pids < <(redis_pids "$1")
    [[ ${#pids[@]} -eq 0 ]] || kill -9 "${pids[@]}" 2>/dev/null || true
}

# Called by lib.sh's cleanup after it killed the sidecars: redis-benchmark if one runs
# ($WORK/bench.pid), and the Redis servers (the sidecars' children, left running by a
# SIGKILL of their parent).
script_cleanup() {
    local id pid
    pid=$(cat "$WORK/bench.pid" 2>/dev/null) || true
    if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == redis-benchmark ]]; then
        kill -9 "$pid" 2>/dev/null
    fi
    for id in "${NODES[@]}"; do
        for pid in $(redis_pids "$id"); do kill -9 "$pid" 2>/dev/null; done
    done
}

# compare_dirs PRIMARY: every backup's appendonlydir holds the primary's files, byte for
# byte; prints a mismatch and returns 1 otherwise.
compare_dirs() {
    local primary=$1 id file mine theirs
    mine=$(cd "$WORK/redis$primary/appendonlydir" && ls -A | sort)
    for id in "${NODES[@]}"; do
        [[ $id == "$primary" ]] && continue
        theirs=$(cd "$WORK/redis$id/appendonlydir" && ls -A | sort)
        if [[ $mine != "$theirs" ]]; then
            echo "node $id's appendonlydir holds [$(echo "$theirs" | tr '\n' ' ')], the primary's (node $primary) [$(echo "$mine" | tr '\n' ' ')]"
            return 1
        fi
        for file in $mine; do
            if ! cmp "$WORK/redis$primary/appendonlydir/$file" "$WORK/redis$id/appendonlydir/$file"; then
                echo "node $id's $file differs from the primary's (node $primary)"
                return 1
            fi
        done
    done
}

# backups_caught_up PRIMARY: PRIMARY is a serving primary, and every other node a backup
# in standby whose applied_lsn has reached the commit_lsn PRIMARY reported first. With
# EXACT=1: equals it, and the primary's commit did not move meanwhile.
backups_caught_up() {
    local primary=$1 id role state applied p_role p_commit p_state again _
    read -r p_role p_commit p_state _ < <(node_status "$primary" || echo "- - - - - -")
    [[ $p_role == primary && $p_state == serving ]] || return 1
    for id in "${NODES[@]}"; do
        [[ $id == "$primary" ]] && continue
        read -r role _ state applied _ < <(node_status "$id" || echo "- - - - - -")
        [[ $role == backup && $state == standby && $applied != - ]] || return 1
        if [[ ${EXACT:-0} == 1 ]]; then
            [[ $applied == "$p_commit" ]] || return 1
        else
            [[ $applied -ge $p_commit ]] || return 1
        fi
    done
    if [[ ${EXACT:-0} == 1 ]]; then
        read -r _ again _ < <(node_status "$primary" || echo "- - - - - -")
        [[ $again == "$p_commit" ]] || return 1
    fi
}

# wait_quiet: waits until one node is a serving primary and every other node a backup in
# standby that applied exactly its commit LSN; sets PRIMARY and COMMIT.
wait_quiet() {
    local deadline=$(($(now_ms) + QUIET_TIMEOUT_S * 1000)) id
    while true; do
        if PRIMARY=$(serving_primary); then
            if EXACT=1 backups_caught_up "$PRIMARY"; then
                read -r _ COMMIT _ < <(node_status "$PRIMARY" || echo "- - - - - -")
                return 0
            fi
        fi
        [[ $(now_ms) -lt $deadline ]] \
            || fail "the backups did not reach the primary's commit lsn in ${QUIET_TIMEOUT_S} s: $(for id in "${NODES[@]}"; do echo "node $id: $(node_status "$id" || echo down);"; done)"
        sleep 0.1
    done
}
