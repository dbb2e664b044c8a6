# shellcheck shell=bash
# Shared by the crash-and-restart scripts in this folder; sourced, not run.
#
# It starts a cluster of real processes on loopback, the nodes of $NODES (3 unless a script
# sets it before `setup`): for each node an `understudy run` sidecar and the key-value
# example (`examples/kv`) beside it, optionally with the fault proxy (`understudy-chaos
# proxy`) on every peer link. It runs a write workload that records every acknowledged
# write, and checks at the end that every acknowledged write is readable from the current
# primary and that all logs agree on the committed prefix (`understudy wal verify` and
# `understudy wal dump`).
#
# Binaries: $UNDERSTUDY_BIN, $CHAOS_BIN and $KV_BIN, or else target/release/{understudy,
# understudy-chaos,examples/kv}, built if missing. Everything lives in one temporary
# directory ($WORK), removed on success; it is kept, and its path printed, on failure or
# when UNDERSTUDY_KEEP_TEMP=1. Every process started here is killed by PID on exit.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HEARTBEAT=${HEARTBEAT:-20ms}
FAILOVER_TIMEOUT_MS=${FAILOVER_TIMEOUT_MS:-300}
NODES=(1 2 3)
# Extra flags for every `understudy run` (a script sets them before start_cluster).
NODE_ARGS=()
# 1: the sidecar runs the key-value server itself (--app-cmd).
SUPERVISED=${SUPERVISED:-0}
# 1: every sidecar and every key-value server starts in a time namespace of its own
# (`unshare --time`, root), its CLOCK_BOOTTIME and CLOCK_MONOTONIC moved by offsets drawn
# at each start (see clock_offset): nodes whose clocks disagree by up to a year, a node
# whose clocks read as if its machine had just booted, a sidecar and its application that
# disagree with each other, and a restarted node whose clocks jump back or forward, as a
# rebooted machine's do. Nothing may compare one process's reading with another's.
CLOCK_SKEW=${CLOCK_SKEW:-0}
# Logged by every node unless RUST_LOG says otherwise: each run of records its sidecar hands
# the application as committed, for `check_deliveries`.
DELIVERIES_LOG=understudy::node::app_api::delivered=debug

# Global (-g) even when this file is sourced inside a function: the EXIT trap's cleanup reads
# them after that function has returned.
declare -gA NODE_PID KV_PID PEER_PORT ADMIN_PORT CLIENT_PORT APP_PORT PROXY_PORT DATA_DIR
PROXY_PID=""
WRITER_PID=""
EXTRA_PIDS=()
PROXY_CONTROL=""
FAILED=1

log() { printf '%s %s\n' "$(date +%H:%M:%S.%3N)" "$*"; }
fail() {
    log "FAIL: $*"
    exit 1
}

binaries() {
    UNDERSTUDY=${UNDERSTUDY_BIN:-$ROOT/target/release/understudy}
    CHAOS=${CHAOS_BIN:-$ROOT/target/release/understudy-chaos}
    KV=${KV_BIN:-$ROOT/target/release/examples/kv}
    if [[ ! -x $UNDERSTUDY || ! -x $CHAOS || ! -x $KV ]]; then
        log "building the sidecar, the chaos tool and the kv example (release)"
        (cd "$ROOT" && cargo build --release --bin understudy --bin understudy-chaos --example kv)
    fi
}

# cleanup: kills everything this script started, by PID; keeps $WORK on failure.
cleanup() {
    local status=$?
    set +e
    [[ -n $WRITER_PID ]] && kill -9 "$WRITER_PID" 2>/dev/null
    for id in "${NODES[@]}"; do
        [[ -n ${NODE_PID[$id]:-} ]] && kill -CONT "${NODE_PID[$id]}" 2>/dev/null
        [[ -n ${NODE_PID[$id]:-} ]] && kill -9 "${NODE_PID[$id]}" 2>/dev/null
        [[ -n ${KV_PID[$id]:-} ]] && kill -CONT "${KV_PID[$id]}" 2>/dev/null
        [[ -n ${KV_PID[$id]:-} ]] && kill -9 "${KV_PID[$id]}" 2>/dev/null
    done
    [[ -n $PROXY_PID ]] && kill -9 "$PROXY_PID" 2>/dev/null
    for pid in "${EXTRA_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
    wait 2>/dev/null
    if declare -F script_cleanup >/dev/null; then script_cleanup; fi
    if [[ -n ${WORK:-} && -d $WORK ]]; then
        if [[ ($status -ne 0 && $status -ne 77) || $FAILED -ne 0 || -n ${UNDERSTUDY_KEEP_TEMP:-} ]]; then
            for id in "${NODES[@]}"; do
                echo "---- node $id: last lines of $WORK/n$id.log ----"
                tail -n 15 "$WORK/n$id.log" 2>/dev/null
            done
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}

# setup plain|proxy: ports, directories and the secret; with "proxy", the fault proxy on
# every peer link too.
setup() {
    binaries
    if [[ $CLOCK_SKEW == 1 ]] && ! unshare --time --boottime 1 true 2>/dev/null; then
        echo "CLOCK_SKEW=1 needs time namespaces (Linux 5.6 or later, as root): unshare --time failed"
        exit 77
    fi
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/understudy-script.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    head -c 32 /dev/urandom | base64 >"$WORK/secret"
    chmod 600 "$WORK/secret"
    # Four ports per node, the proxy's control port, and one per directed link.
    local ports n=${#NODES[@]}
    read -r -a ports <<<"$("$CHAOS" ports $((n * 4 + 1 + n * (n - 1))))"
    local i=0
    for id in "${NODES[@]}"; do
        PEER_PORT[$id]=${ports[i++]}
        ADMIN_PORT[$id]=${ports[i++]}
        CLIENT_PORT[$id]=${ports[i++]}
        APP_PORT[$id]=${ports[i++]}
        DATA_DIR[$id]=${DATA_DIR[$id]:-$WORK/n$id}
    done
    PROXY_CONTROL=127.0.0.1:${ports[i++]}
    addresses
    if [[ $1 == proxy ]]; then
        # Link "A-B" carries what node A sends to node B (A dials B through it).
        local links=() port
        for from in "${NODES[@]}"; do
            for to in "${NODES[@]}"; do
                [[ $from == "$to" ]] && continue
                port=${ports[i++]}
                PROXY_PORT[$from-$to]=$port
                links+=(--link "$from-$to=127.0.0.1:$port,127.0.0.1:${PEER_PORT[$to]}")
            done
        done
        "$CHAOS" proxy --control "$PROXY_CONTROL" --exit-after 1h "${links[@]}" \
            2>>"$WORK/proxy.log" &
        PROXY_PID=$!
    fi
    log "work dir $WORK"
}

# addresses: $ADMINS and $CLIENTS, the admin and client addresses of the nodes in $NODES.
addresses() {
    ADMINS=$(for id in "${NODES[@]}"; do printf '127.0.0.1:%s,' "${ADMIN_PORT[$id]}"; done)
    CLIENTS=$(for id in "${NODES[@]}"; do printf '127.0.0.1:%s,' "${CLIENT_PORT[$id]}"; done)
}

# peers_of ID: the --peers list node ID uses: its own address, and the others' through the
# proxy when there is one.
peers_of() {
    local id=$1 list="" peer addr
    for peer in "${NODES[@]}"; do
        addr=127.0.0.1:${PEER_PORT[$peer]}
        if [[ -n $PROXY_PID && $peer != "$id" ]]; then
            addr=127.0.0.1:${PROXY_PORT[$id-$peer]}
        fi
        list+="$peer=$addr,"
    done
    echo "${list%,}"
}

# clock_offset: seconds to move a clock by in a new time namespace, drawn from $RANDOM:
# back to 30 s after boot, none, a year ahead, or up to 11 days ahead.
clock_offset() {
    local up
    up=$(cut -d. -f1 /proc/uptime)
    case $((RANDOM % 4)) in
    0) echo $((up > 60 ? 30 - up : 0)) ;;
    1) echo 0 ;;
    2) echo $((365 * 86400)) ;;
    *) echo $((RANDOM * 29)) ;;
    esac
}

# clocks_of WHAT: sets CLOCKS to the command prefix that starts a process in a time
# namespace of its own with offsets from clock_offset (logged with WHAT), or to nothing
# without CLOCK_SKEW=1.
clocks_of() {
    CLOCKS=()
    [[ $CLOCK_SKEW == 1 ]] || return 0
    local boot mono
    boot=$(clock_offset)
    mono=$(clock_offset)
    CLOCKS=(unshare --time --boottime "$boot" --monotonic "$mono" --)
    log "$1: CLOCK_BOOTTIME moved by ${boot} s, CLOCK_MONOTONIC by ${mono} s"
}

# start_node ID: the sidecar and its key-value server, logs appended to $WORK/nID.log.
# With SUPERVISED=1 the sidecar runs the key-value server itself (--app-cmd).
start_node() {
    local id=$1 app=() CLOCKS
    mkdir -p -m 700 "${DATA_DIR[$id]}"
    if [[ $SUPERVISED == 1 ]]; then
        app=(--app-cmd "exec $(kv_command "$id")")
    fi
    clocks_of "node $id's sidecar"
    RUST_LOG=${RUST_LOG:-info,$DELIVERIES_LOG} "${CLOCKS[@]}" "$UNDERSTUDY" run --node-id "$id" --data-dir "${DATA_DIR[$id]}" \
        --peer-listen "127.0.0.1:${PEER_PORT[$id]}" --peers "$(peers_of "$id")" \
        --cluster-secret-file "$WORK/secret" --app-socket "$WORK/n$id.sock" \
        --admin-listen "127.0.0.1:${ADMIN_PORT[$id]}" \
        --client-listen "127.0.0.1:${CLIENT_PORT[$id]}" --app-addr "127.0.0.1:${APP_PORT[$id]}" \
        --heartbeat-interval "$HEARTBEAT" --failover-timeout "${FAILOVER_TIMEOUT_MS}ms" \
        "${app[@]}" "${NODE_ARGS[@]}" >>"$WORK/n$id.log" 2>&1 &
    NODE_PID[$id]=$!
    if [[ $SUPERVISED != 1 ]]; then start_app "$id"; fi
}

# kv_command ID: the command line of node ID's key-value server.
kv_command() {
    echo "$KV --app-socket $WORK/n$1.sock --listen 127.0.0.1:${APP_PORT[$1]}"
}

# start_app ID: node ID's key-value server alone (not supervised), log appended to
# $WORK/nID.kv.log.
start_app() {
    local id=$1 CLOCKS
    clocks_of "node $id's key-value server"
    # shellcheck disable=SC2046
    "${CLOCKS[@]}" $(kv_command "$id") >>"$WORK/n$id.kv.log" 2>&1 &
    KV_PID[$id]=$!
}

# app_pid ID: the process id of node ID's key-value server, found by its command line
# (a supervised one is started by the sidecar).
app_pid() {
    local want p line
    want="$(kv_command "$1")"
    for p in /proc/[0-9]*; do
        line=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
        if [[ $line == "$want " ]]; then
            echo "${p#/proc/}"
            return 0
        fi
    done
    return 1
}

start_cluster() {
    for id in "${NODES[@]}"; do start_node "$id"; done
    PRIMARY=$(wait_primary 15s)
    log "cluster up: node $PRIMARY is primary"
}

# kill_node ID: SIGKILL the sidecar and its application (a crashed machine), then reap.
kill_node() {
    local id=$1
    kill -9 "${NODE_PID[$id]}" "${KV_PID[$id]:-}" 2>/dev/null || true
    wait "${NODE_PID[$id]}" "${KV_PID[$id]:-}" 2>/dev/null || true
    NODE_PID[$id]=""
    KV_PID[$id]=""
}

# wait_exited ID: waits up to 10 s for node ID's sidecar to exit by itself; fails (status
# 1) if it still runs.
wait_exited() {
    local _
    for _ in $(seq 1 200); do
        kill -0 "${NODE_PID[$1]}" 2>/dev/null || return 0
        sleep 0.05
    done
    return 1
}

# pause_node ID STOP|CONT: SIGSTOP or SIGCONT the sidecar and its application (with
# SUPERVISED=1, the one its sidecar started).
pause_node() {
    local app=${KV_PID[$1]:-}
    if [[ -z $app && $SUPERVISED == 1 ]]; then app=$(app_pid "$1" || true); fi
    kill -"$2" "${NODE_PID[$1]}" ${app:+"$app"}
}

# wait_primary [TIMEOUT]: prints the id of the single primary (holding its lease).
wait_primary() {
    "$CHAOS" primary --admin "$ADMINS" --timeout "${1:-15s}"
}

# start_writer SECONDS [FLAGS...]: the write workload in the background, acked writes
# appended to $WORK/acked; it stops after SECONDS or once $WORK/stop-writer exists. Beside
# it, a reader through every node's client port reads the last acknowledged write over and
# over: a stale read (a write acknowledged before the read began and not seen) fails the
# writer, and so stop_writer.
start_writer() {
    local seconds=$1
    shift
    rm -f "$WORK/stop-writer"
    "$CHAOS" write --client "$CLIENTS" --out "$WORK/acked" --duration "${seconds}s" \
        --stop-file "$WORK/stop-writer" --read-through "$CLIENTS" "$@" >"$WORK/writer.out" 2>&1 &
    WRITER_PID=$!
}

stop_writer() {
    touch "$WORK/stop-writer"
    wait "$WRITER_PID" || fail "the writer failed: $(cat "$WORK/writer.out")"
    WRITER_PID=""
    log "writer: $(cat "$WORK/writer.out")"
}

proxy() {
    "$CHAOS" ctl "$PROXY_CONTROL" "$@" >/dev/null
}

# check_all: the end-of-run checks. Every node running, the cluster settled (one primary,
# every node durable and committed through its last LSN), every acknowledged write
# readable through a client port, then every log verified and identical through the
# committed LSN, and every record handed to an application as committed in its node's log.
check_all() {
    local commit acked
    acked=$(wc -l <"$WORK/acked")
    [[ $acked -gt 0 ]] || fail "no write was acknowledged"
    commit=$("$CHAOS" settle --admin "$ADMINS" --timeout 30s) || fail "the cluster did not settle"
    log "settled at commit lsn $commit"
    "$CHAOS" check --client "127.0.0.1:${CLIENT_PORT[$(wait_primary 15s)]}" --acked "$WORK/acked" \
        || fail "acknowledged writes were lost"
    log "all $acked acknowledged writes are readable from the primary"
    for id in "${NODES[@]}"; do kill_node "$id"; done
    check_logs "$commit"
    check_deliveries
    FAILED=0
}

# check_logs COMMIT: `wal verify` passes on every data dir, and `wal dump` shows the same
# records on every node for the committed LSNs they all still hold (a log truncated behind
# a snapshot starts later): from the highest first LSN to COMMIT.
check_logs() {
    local commit=$1 id first="" low=1 node_first
    for id in "${NODES[@]}"; do
        "$UNDERSTUDY" wal verify "${DATA_DIR[$id]}" >"$WORK/verify.$id" 2>&1 \
            || fail "wal verify failed on node $id: $(cat "$WORK/verify.$id")"
        "$UNDERSTUDY" wal dump "${DATA_DIR[$id]}" 2>/dev/null \
            | awk 'NR > 1 && $1 ~ /^[0-9]+$/' >"$WORK/dump-all.$id"
        node_first=$(awk 'NR == 1 {print $1}' "$WORK/dump-all.$id")
        [[ -n $node_first ]] || fail "node $id holds no log"
        [[ $node_first -gt $low ]] && low=$node_first
    done
    [[ $low -le $commit ]] || fail "some node's log starts after the commit lsn $commit"
    for id in "${NODES[@]}"; do
        awk -v low="$low" -v commit="$commit" '$1 >= low && $1 <= commit' \
            "$WORK/dump-all.$id" >"$WORK/dump.$id"
        [[ $(wc -l <"$WORK/dump.$id") -eq $((commit - low + 1)) ]] \
            || fail "node $id holds $(wc -l <"$WORK/dump.$id") of the committed records $low..$commit"
        if [[ -z $first ]]; then
            first=$id
        elif ! cmp -s "$WORK/dump.$first" "$WORK/dump.$id"; then
            fail "logs of nodes $first and $id differ within the committed prefix: $(diff "$WORK/dump.$first" "$WORK/dump.$id" | head -n 4)"
        fi
    done
    log "logs of nodes ${NODES[*]} verify and agree on lsn $low..$commit"
}

# check_deliveries: every run of records a node's sidecar handed its application as
# committed (the debug lines of $DELIVERIES_LOG in its log, across its restarts) ends with
# the record its log holds at that LSN, epoch for epoch. A committed record never changes,
# so a mismatch is an uncommitted record applied as committed. Needs check_logs' dumps.
check_deliveries() {
    local id found total=0 bad
    for id in "${NODES[@]}"; do
        found=$(grep -c 'records delivered' "$WORK/n$id.log" || true)
        total=$((total + found))
        bad=$(awk '
            FNR == NR { epoch[$1] = $2; next }
            /records delivered/ {
                last = ""; ep = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^last=/) last = substr($i, 6)
                    if ($i ~ /^epoch=/) ep = substr($i, 7)
                }
                if ((last in epoch) && epoch[last] != ep) {
                    print "lsn " last " of epoch " ep ", where its log holds epoch " epoch[last]
                    exit
                }
            }' "$WORK/dump-all.$id" "$WORK/n$id.log")
        [[ -z $bad ]] || fail "node $id handed its application a record as committed that was not: $bad"
    done
    if [[ $total -eq 0 && -z ${RUST_LOG:-} ]]; then
        fail "no node logged the records it delivered: check_deliveries checked nothing"
    fi
    log "$total runs of records delivered to the applications match the logs"
}

# start_watch: the role watcher in the background (two primaries in one epoch, elections);
# stop_watch fails the run if it saw two primaries in one epoch.
start_watch() {
    "$CHAOS" watch --admin "$ADMINS" --duration 1h --stop-file "$WORK/stop-watch" \
        --out "$WORK/roles" >"$WORK/watch.out" 2>&1 &
    WATCH_PID=$!
    EXTRA_PIDS+=("$WATCH_PID")
}

stop_watch() {
    touch "$WORK/stop-watch"
    wait "$WATCH_PID" || fail "two primaries in one epoch: $(cat "$WORK/watch.out")"
    log "roles: $(tr -s ' ' <"$WORK/roles" | tr '\n' ';')"
}

# admins_except ID: the admin addresses of every node but ID.
admins_except() {
    local id
    for id in "${NODES[@]}"; do
        if [[ $id != "$1" ]]; then
            printf '127.0.0.1:%s,' "${ADMIN_PORT[$id]}"
        fi
    done
}

# other_than ID: a node id other than ID (the lowest).
other_than() {
    local id
    for id in "${NODES[@]}"; do
        if [[ $id != "$1" ]]; then
            echo "$id"
            return
        fi
    done
}

# ms_since START_NS: milliseconds since a `date +%s%N` reading.
ms_since() {
    echo $((($(date +%s%N) - $1) / 1000000))
}

# wait_log ID TEXT [SECONDS]: waits up to SECONDS (default 10) for TEXT in node ID's log;
# status 1 if it never comes.
wait_log() {
    local _
    for _ in $(seq 1 $((${3:-10} * 10))); do
        grep -q "$2" "$WORK/n$1.log" && return 0
        sleep 0.1
    done
    return 1
}

# sleep_ms MS
sleep_ms() {
    sleep "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"
}

# admin_get PORT PATH: the body of `GET PATH` from the admin port on 127.0.0.1:PORT, with
# bash's /dev/tcp (no HTTP client needed); status non-zero if it does not answer within 5 s.
admin_get() {
    timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
        printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$1" >&3
        sed "1,/^\r\$/d" <&3' "$1" "$2"
}
