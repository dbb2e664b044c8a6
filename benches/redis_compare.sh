#!/usr/bin/env bash
# redis_compare.sh: understudy's end-to-end figures beside Redis's, from one run.
#
# Sets up Redis on loopback from Debian's packages: a primary and two replicas (each with
# `appendonly yes`, `appendfsync always`) and three Sentinels (quorum 2) with
# `down-after-milliseconds` set by --down-after-ms (default 500, understudy's default failover
# timeout, so that both detect a dead primary after the same time). Measures:
#   - commit latency and throughput: `SET` then `WAIT 1 0` per operation (acknowledged once
#     one replica has received it), through `cargo bench --bench e2e -- --redis-master`,
#     for the same in-flight counts and sizes as understudy's run;
#     (Sentinel's down-after is raised to 60 s meanwhile, so no failover disturbs it);
#   - Sentinel failover time: `kill -9` of the primary until a `SET` on the primary that
#     Sentinel names succeeds and `WAIT 1` confirms a replica has it (FAILOVERS times;
#     polled with redis-cli every ~10 ms, so each figure carries ~10-20 ms of polling);
# then runs `cargo bench --bench e2e` for understudy (3 nodes, --fsync always, 500 ms
# failover timeout) and prints both side by side with the ratio understudy / Redis.
#
# Run: benches/redis_compare.sh [--quick] [--failovers N] [--down-after-ms MS]
#      (root installs redis-server, redis-sentinel and redis-tools if missing). Everything
#      runs under one temporary directory, removed at the end; every process it starts is
#      killed by PID on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

QUICK=()
FAILOVERS=5
DOWN_AFTER_MS=500
while [[ $# -gt 0 ]]; do
    case $1 in
    --quick) QUICK=(--quick); shift ;;
    --failovers) FAILOVERS=$2; shift 2 ;;
    --down-after-ms) DOWN_AFTER_MS=$2; shift 2 ;;
    *) echo "usage: $0 [--quick] [--failovers N] [--down-after-ms MS]" >&2; exit 2 ;;
    esac
done

log() { printf '%s %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2; }

if ! command -v redis-server >/dev/null || ! command -v redis-sentinel >/dev/null \
    || ! command -v redis-cli >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq redis-server redis-sentinel redis-tools >/dev/null
    else
        echo "needs redis-server, redis-sentinel and redis-cli (apt-get install redis-server redis-sentinel redis-tools)" >&2
        exit 1
    fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/redis-compare.XXXXXX")
declare -A PID
cleanup() {
    local name
    for name in "${!PID[@]}"; do kill -9 "${PID[$name]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports: from a PID-derived start in 20000..32000, each one that nothing listens on.
declare -A PORT
next_port=$((20000 + ($$ * 7) % 11000))
for name in r0 r1 r2 s0 s1 s2; do
    while (exec 3<>"/dev/tcp/127.0.0.1/$next_port") 2>/dev/null; do
        next_port=$((next_port + 1))
    done
    PORT[$name]=$next_port
    next_port=$((next_port + 1))
done

# start_redis NAME [--replicaof ...]: a data node, durable on every write.
start_redis() {
    local name=$1
    shift
    mkdir -p "$WORK/$name"
    redis-server --port "${PORT[$name]}" --bind 127.0.0.1 --dir "$WORK/$name" --save '' \
        --appendonly yes --appendfsync always --repl-diskless-sync-delay 0 \
        --protected-mode no --daemonize no "$@" \
        >>"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
}

start_sentinel() {
    local name=$1 master_port=$2
    cat >"$WORK/$name.conf" <<EOF
port ${PORT[$name]}
bind 127.0.0.1
protected-mode no
dir $WORK
sentinel monitor bench 127.0.0.1 $master_port 2
sentinel down-after-milliseconds bench $DOWN_AFTER_MS
sentinel failover-timeout bench 2000
sentinel parallel-syncs bench 2
EOF
    redis-sentinel "$WORK/$name.conf" >>"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
}

wait_port() {
    local _
    for _ in $(seq 1 200); do
        redis-cli -p "$1" PING >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "nothing answers on port $1" >&2
    return 1
}

start_redis r0
wait_port "${PORT[r0]}"
start_redis r1 --replicaof 127.0.0.1 "${PORT[r0]}"
start_redis r2 --replicaof 127.0.0.1 "${PORT[r0]}"
wait_port "${PORT[r1]}"
wait_port "${PORT[r2]}"
for name in s0 s1 s2; do start_sentinel "$name" "${PORT[r0]}"; done
for name in s0 s1 s2; do wait_port "${PORT[$name]}"; done
# Both replicas in sync and every
# Sentinel agreeing on the primary before anything is measured.
synced=0
for _ in $(seq 1 300); do
    if [[ $(redis-cli -p "${PORT[r0]}" WAIT 2 100) -ge 2 ]]; then
        synced=1
        break
    fi
    sleep 0.1
done
[[ $synced -eq 1 ]] || { echo "the replicas did not sync within 60 s" >&2; exit 1; }
master_port() {
    redis-cli -p "${PORT[s0]}" SENTINEL get-master-addr-by-name bench 2>/dev/null | sed -n 2p
}
for _ in $(seq 1 100); do
    [[ $(master_port) == "${PORT[r0]}" ]] && break
    sleep 0.1
done
log "redis: primary :${PORT[r0]}, replicas :${PORT[r1]} :${PORT[r2]}, sentinels :${PORT[s0]} :${PORT[s1]} :${PORT[s2]}, down-after ${DOWN_AFTER_MS} ms"

declare -A REDIS US
# run_e2e NAME ARGS...: `cargo bench --bench e2e` with ARGS; its output is shown, and its
# `summary KEY VALUE` lines are kept in $WORK/NAME.out for reading into REDIS or US.
run_e2e() {
    local name=$1
    shift
    if ! (cd "$ROOT" && cargo bench --bench e2e -- --summary "${QUICK[@]}" "$@") \
        >"$WORK/$name.out" 2>"$WORK/$name.err"; then
        grep -v '^summary ' "$WORK/$name.out" >&2
        tail -n 20 "$WORK/$name.err" >&2
        echo "cargo bench --bench e2e ($name) failed" >&2
        exit 1
    fi
    grep -v '^summary ' "$WORK/$name.out" >&2
    grep 'connections failed' "$WORK/$name.err" >&2 || true
}

# sentinel_down_after MS: the failure-detection time, on every Sentinel.
sentinel_down_after() {
    local name
    for name in s0 s1 s2; do
        redis-cli -p "${PORT[$name]}" SENTINEL SET bench down-after-milliseconds "$1" >/dev/null
    done
}

# No failover while commits are measured: under load a primary fsyncing every write can
# stall past a short down-after and be failed over mid-run.
sentinel_down_after 60000
log "redis: SET + WAIT 1 through cargo bench --bench e2e -- --redis-master"
run_e2e redis --redis-master "127.0.0.1:${PORT[r0]}"
while read -r _ key value; do REDIS[$key]=$value; done < <(grep '^summary ' "$WORK/redis.out")
if [[ $(master_port) != "${PORT[r0]}" ]]; then
    echo "Sentinel failed the primary over during the measurement; the figures are not comparable" >&2
    exit 1
fi

name_of_port() {
    local name
    for name in r0 r1 r2; do
        [[ ${PORT[$name]} == "$1" ]] && echo "$name"
    done
    return 0
}

sentinel_down_after "$DOWN_AFTER_MS"
times=()
for cycle in $(seq 1 "$FAILOVERS"); do
    old_port=$(master_port)
    old=$(name_of_port "$old_port")
    [[ -n $old ]] || { echo "Sentinel names no primary we started (:$old_port)" >&2; exit 1; }
    started=$(date +%s%N)
    kill -9 "${PID[$old]}"
    wait "${PID[$old]}" 2>/dev/null || true
    while :; do
        port=$(master_port)
        if [[ -n $port && $port != "$old_port" ]] \
            && [[ $(redis-cli -p "$port" SET failover:probe "$cycle" 2>/dev/null) == OK ]] \
            && [[ $(redis-cli -p "$port" WAIT 1 100 2>/dev/null) -ge 1 ]]; then
            break
        fi
        if [[ $((($(date +%s%N) - started) / 1000000)) -gt 60000 ]]; then
            echo "no Sentinel failover within 60 s" >&2
            exit 1
        fi
        sleep 0.01
    done
    took=$((($(date +%s%N) - started) / 1000000))
    times+=("$took")
    log "redis failover $cycle/$FAILOVERS: :$old_port killed, :$port took writes after $took ms"
    # The killed primary comes back as a replica of the new one (Sentinel would convert it).
    start_redis "$old" --replicaof 127.0.0.1 "$port"
    wait_port "${PORT[$old]}"
    sleep 2
done
mapfile -t sorted < <(printf '%s\n' "${times[@]}" | sort -n)
REDIS[failover_min_ms]=${sorted[0]}
REDIS[failover_median_ms]=${sorted[$((${#sorted[@]} / 2))]}
REDIS[failover_max_ms]=${sorted[-1]}

log "understudy: cargo bench --bench e2e"
run_e2e understudy --failovers "$FAILOVERS"
while read -r _ key value; do US[$key]=$value; done < <(grep '^summary ' "$WORK/understudy.out")

echo
echo "understudy (3 nodes, --fsync always, failover timeout 500 ms) vs Redis (primary + 2"
echo "replicas, appendfsync always, SET + WAIT 1; Sentinel down-after ${DOWN_AFTER_MS} ms), $(date -u +%F\ %H:%M) UTC"
echo "machine: $(nproc) cores, $(uname -sr), loopback; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-30s %14s %14s %10s\n' figure understudy redis ratio
for key in $(printf '%s\n' "${!REDIS[@]}" | sort -V); do
    [[ -n ${US[$key]:-} ]] || continue
    ratio=$(awk -v a="${US[$key]}" -v b="${REDIS[$key]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    printf '%-30s %14s %14s %10s\n' "$key" "${US[$key]}" "${REDIS[$key]}" "$ratio"
done
