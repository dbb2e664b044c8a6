#!/usr/bin/env bash
# redis_compare.sh: understudy's figures beside Redis's, from one run. Three comparisons, one
# after the other by default; --kv-only, --e2e-only or --follow-only runs one alone.
#
# 1. The key-value comparison (--kv-only): the key-value example (examples/kv) used as a
#   Redis user would use Redis, against Redis run as its users run it; every figure is a
#   pair, understudy's beside Redis's with the ratio understudy / Redis and the 1-minute
#   load average read after each of the two runs. Both setups run on loopback at once; one
#   is measured while the other idles, then the other.
#   - understudy: three `understudy run` nodes started by tests/scripts/lib.sh, --fsync
#     always, heartbeat 50 ms, failover timeout 500 ms, --app-timeout 5s (see kv_cluster),
#     the key-value example beside each attached with --app-socket; clients connect to the
#     primary's client port, which hands each connection to the server (no proxy). A SET is answered once its record is fsynced
#     on the primary and on one backup and applied; a GET once the server has applied the
#     LSN its sidecar names for a lease read (linearizable, writing nothing). The server
#     makes one record of a connection's consecutive pipelined writes.
#   - Redis: a primary with `appendonly yes --appendfsync always` and two replicas with the
#     same settings (asynchronous replication), `repl-diskless-sync-delay 0`, no Sentinel.
#     A SET is answered once fsynced on the primary alone (Redis too fsyncs once per pass of
#     its event loop, for every write of that pass); a GET from memory.
#   Pairs, each run against understudy then Redis in odd rounds and the other way round in
#   even ones (so that a drift in the machine's load weighs on both):
#   a. `redis-benchmark -t set -d 128 -P 16 -c 50 -n KV_REQUESTS --csv` (one key, as
#      redis-benchmark sends without -r): requests/s, p50, p99;
#   b. the same unpipelined, at -c 50 and at -c 500 (-n KV_REQUESTS_UNPIPELINED);
#   c. `-t get -d 128 -P 16 -c 50 -n KV_REQUESTS`, and unpipelined at -c 50: the key the
#      SET runs wrote;
#   d. writes acknowledged by a replica at equal pipelining, 16 and 50 connections, batches
#      of 16 SETs of 128-byte values to random keys below 100000 (`redis_load load`,
#      benches/redis_load.rs, KV_REQUESTS SETs): to Redis each batch followed by one
#      `WAIT 1 0` (acknowledged once a replica has *received* the batch, not fsynced it),
#      to the client port the batch alone (each reply is already a commit on two disks);
#      ops/s, p50 and p99, a SET's latency from its batch's write to the reply that
#      acknowledges it;
#   e. CPU per committed write in a and b: the user + system time of every process of the
#      setup (3 sidecars and 3 key-value servers; 3 redis-servers, their reaped children,
#      such as AOF rewrites, included) from /proc/PID/stat, the load generator's excluded,
#      read with every replica caught up before and after the run, divided by the SETs
#      (Redis appends one record to its file per SET); for understudy also by the log
#      records committed (the primary's last LSN, every node settled, before and after).
#   What makes it unfair: understudy's writes wait for fsyncs on two disks and a replication
#   round trip, Redis's in a-b for one fsync (and in d for a replica's receipt, no fsync);
#   understudy's reads ask the sidecar, Redis's read memory; understudy's clients pass
#   through a proxy, and three sidecars and three servers share the 2 cores with the load
#   generator, where Redis is three processes. In understudy's favour: a pipelined batch of
#   SETs is one record in its log, so it commits fewer, larger records.
#   Sizes (environment): KV_REQUESTS (default 300000), KV_REQUESTS_UNPIPELINED (50000),
#   KV_ROUNDS (3); each figure is the median over the rounds, CPU the sum over them divided
#   by the sum of the writes. The defaults take 3 minutes on 2 cores, after the builds.
#   Binaries: built from this checkout (`cargo build --release --bin understudy --bin
#   understudy-chaos --example kv`, `cargo bench --bench redis_load --no-run`), except those
#   given as UNDERSTUDY_BIN, CHAOS_BIN, KV_BIN or LOAD_BIN (paths).
#
# The other two use Redis on loopback from Debian's packages: a primary and two replicas (each with
# `appendonly yes`, `appendfsync always`) and three Sentinels (quorum 2, failover-timeout
# 2 s) with `down-after-milliseconds` set by --down-after-ms. Its default, 750 ms, is the
# tightest at which Sentinel never failed the primary over on its own on the machine of
# benches/README.md (2 cores) while it was quiet (load average under 1.5), found by trying:
# the SET + WAIT 1 load below, then series of 6-10 kills, each value. Under the load alone
# nothing happened even at 100 ms. Right after a failover, though, the Sentinels can mark
# the just-promoted primary down about down-after after switching to it, and fail it over
# again with no fault (as in redis/redis#8607): at 100-300 ms in every series, at 500 ms
# (understudy's failover timeout) in 3 of 4, at 600 ms in 1 of 4, at 750 ms in none of 5.
# On the same machine busy with other work (load average 4-6) or with two CPU-bound
# processes added, 750 ms did in all 3 series and 1000 ms in 2 of 3; 1500 ms (2 series,
# with the two processes) did not. Such moves of the primary without a kill are counted and
# reported ("primary moves without a kill"), not failed on; each kill comes down-after +
# 5.5 s after the previous kill or move at the earliest (a Sentinel will not start a
# failover within twice its failover-timeout of the last one it started or voted for, and
# that wait would be counted as failover time).
#
# 2. The end-to-end comparison (--e2e-only), understudy's own log against Redis:
#   - commit latency and throughput: `SET` then `WAIT 1 0` per operation (acknowledged once
#     one replica has received it), through `cargo bench --bench e2e -- --redis-master`,
#     for the same in-flight counts and sizes as understudy's run;
#     (Sentinel's down-after is raised to 60 s meanwhile, so no failover disturbs it);
#   - Sentinel failover time: `kill -9` of the primary until a `SET` on the primary that
#     Sentinel names succeeds and `WAIT 1` confirms a replica has it (5 times; polled with
#     redis-cli every ~10 ms, so each figure carries ~10-20 ms of polling);
#   then `cargo bench --bench e2e` for understudy (3 nodes, --fsync always, 500 ms failover
#   timeout), and both side by side with the ratio understudy / Redis.
#
# 3. The follow-mode comparison (--follow-only): the same unmodified redis-server under
#   understudy's follow mode (3 `understudy run` nodes from target/release, failover timeout
#   500 ms, Redis with `appendonly yes --appendfsync no`, its append-only directory as
#   --follow-dir, Redis running on the primary only; every reply held by the client port
#   until the changes before it are committed on a majority) against Redis alone and
#   Redis + Sentinel:
#   - throughput and latency at equal client concurrency, 50 connections x 16 requests in
#     flight, random keys below 100000, 3-byte values: `redis-benchmark -t set -P 16 -c 50
#     -r 100000 -n REQUESTS --csv` through the follow-mode primary's client port, then a
#     backup's (forwarded to the primary: two proxy hops), and straight at a lone
#     redis-server with `appendfsync always`. Redis + Sentinel: `SET` + `WAIT 1 0` pairs
#     (acknowledged once a replica has the write) from benches/redis_load.rs, pipelined the
#     same way (50 connections, batches of 16 pairs, a pair's latency from its batch's write
#     to its `WAIT` reply, as redis-benchmark -P times each request), to the primary Sentinel
#     names, with Sentinel's down-after at --down-after-ms: the run stops if Sentinel fails
#     over during it. (`cargo bench --bench e2e -- --redis-master` cannot do this: it runs
#     one SET + WAIT at a time per connection, one connection per operation in flight.) A
#     calibration line compares redis_load with SET alone against redis-benchmark on the
#     lone Redis;
#   - failover seen by a client, FAILOVERS times each: follow mode, `kill -9` of the primary
#     node's sidecar and its Redis until a `SET` through a surviving node's client port gets
#     `+OK` (then the killed node is restarted and waits until its copy has caught up with
#     the commit); Sentinel, `kill -9` of the primary until a `SET` on the primary Sentinel
#     names gets `+OK` and `WAIT 1 100` confirms a replica has it (the killed one restarted
#     as a replica). Both timed by `redis_load probe`, which tries every 2 ms. Before the
#     kills, `BGREWRITEAOF` compacts Redis's append-only file, so the new primary's Redis
#     loads the 100000-key data set from its base file; the size of the directory at each
#     kill is logged (Redis's load time grows with it, and until it has loaded, Redis
#     answers -LOADING);
#   - acknowledged writes lost: during the follow-mode kills a checking writer (`redis_load
#     writer`) sends `SET chk:<n> <n>` one at a time through the client ports and records
#     every n that got `+OK`; afterwards every recorded key is read back through the serving
#     primary's client port. The script fails if any is missing;
#   then a table: figure | follow mode | Redis alone | Redis + Sentinel | follow/alone |
#   follow/Sentinel.
#
# Run: benches/redis_compare.sh [--quick] [--kv-only | --e2e-only | --follow-only]
#        [--failovers N] [--down-after-ms MS] [--requests N] [--keep]
#   --quick          shorter e2e runs; 200000 requests per throughput run and 3 follow-mode
#                    and Sentinel kills in the third comparison
#   --failovers N    kills per failover measurement (default: 5 in the second comparison,
#                    10 in the third)
#   --down-after-ms  Sentinel's down-after-milliseconds (default 750, see above)
#   --requests N     requests per throughput run (default 1000000)
#   --keep           keep the temporary directory (data and logs) and say where it is
# The follow-mode comparison alone takes about 2.5 minutes on 2 cores (--quick: under a
# minute), the default run of both about 5 minutes, after the builds (`cargo build
# --release --bin understudy`, `cargo bench --bench redis_load --no-run`). Root installs
# redis-server, redis-sentinel, redis-tools, curl and jq if missing. Everything runs under
# one temporary directory, removed at the end (a failed run keeps its logs, and says
# where); every process it starts is killed by PID on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

QUICK=()
FAILOVERS=
DOWN_AFTER_MS=
REQUESTS=
KEEP=0
ONLY=
usage="usage: $0 [--quick] [--kv-only | --e2e-only | --follow-only] [--failovers N] [--down-after-ms MS] [--requests N] [--keep]"
while [[ $# -gt 0 ]]; do
    case $1 in
    --quick) QUICK=(--quick); shift ;;
    --kv-only | --e2e-only | --follow-only)
        [[ -z $ONLY || $ONLY == "$1" ]] || { echo "$ONLY and $1 exclude each other" >&2; exit 2; }
        ONLY=$1
        shift
        ;;
    --failovers) FAILOVERS=$2; shift 2 ;;
    --down-after-ms) DOWN_AFTER_MS=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
    esac
done
KEYVALUE=1
E2E=1
FOLLOW=1
case $ONLY in
--kv-only) E2E=0 FOLLOW=0 ;;
--e2e-only) KEYVALUE=0 FOLLOW=0 ;;
--follow-only) KEYVALUE=0 E2E=0 ;;
esac
# The key-value comparison's sizes (see the header).
KV_REQUESTS=${KV_REQUESTS:-300000}
KV_REQUESTS_UNPIPELINED=${KV_REQUESTS_UNPIPELINED:-50000}
KV_ROUNDS=${KV_ROUNDS:-3}
for value in "$FAILOVERS" "$DOWN_AFTER_MS" "$REQUESTS" "$KV_REQUESTS" "$KV_REQUESTS_UNPIPELINED" "$KV_ROUNDS"; do
    [[ -z $value || $value =~ ^[1-9][0-9]*$ ]] || { echo "$usage" >&2; exit 2; }
done
E2E_FAILOVERS=${FAILOVERS:-5}
DOWN_AFTER_MS=${DOWN_AFTER_MS:-750}
if [[ ${#QUICK[@]} -gt 0 ]]; then
    FOLLOW_FAILOVERS=${FAILOVERS:-3}
    REQUESTS=${REQUESTS:-200000}
else
    FOLLOW_FAILOVERS=${FAILOVERS:-10}
    REQUESTS=${REQUESTS:-1000000}
fi

log() { printf '%s %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2; }
die() {
    echo "redis_compare.sh: $*" >&2
    exit 1
}

missing=()
for tool in redis-server redis-cli redis-benchmark; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ $E2E -eq 1 || $FOLLOW -eq 1 ]]; then
    command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
fi
if [[ $FOLLOW -eq 1 ]]; then
    for tool in curl jq; do command -v "$tool" >/dev/null || missing+=("$tool"); done
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq redis-server redis-sentinel redis-tools curl jq >/dev/null
    else
        echo "missing: ${missing[*]} (apt-get install redis-server redis-sentinel redis-tools curl jq)" >&2
        exit 1
    fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/redis-compare.XXXXXX")
declare -A PID
# Redis processes the follow-mode nodes started (their pids from /status), with the port
# each serves: killed on exit too if still running, after a check that the pid is still
# that Redis.
declare -A APP_PORT
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local status=$? name pid kept
    for name in "${!PID[@]}"; do kill -9 "${PID[$name]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for pid in "${!APP_PORT[@]}"; do
        if [[ -r /proc/$pid/cmdline ]] \
            && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "redis-server 127.0.0.1:${APP_PORT[$pid]}"; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    if [[ $KEEP -eq 1 ]]; then
        echo "kept: $WORK" >&2
    else
        if [[ $status -ne 0 ]]; then
            kept=$(mktemp -d "${TMPDIR:-/tmp}/redis-compare-failed.XXXXXX")
            find "$WORK" -maxdepth 1 -type f \( -name '*.log' -o -name '*.out' -o -name '*.err' -o -name '*.conf' -o -name acked \) \
                -exec cp {} "$kept/" \; 2>/dev/null || true
            echo "the run failed; its logs are in $kept" >&2
        fi
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports: from a PID-derived start in 20000..32000, each one that nothing listens on.
declare -A PORT
next_port=$((20000 + ($$ * 7) % 11000))
names=()
[[ $KEYVALUE -eq 1 ]] && names+=(kv0 kv1 kv2)
[[ $E2E -eq 1 || $FOLLOW -eq 1 ]] && names+=(r0 r1 r2 s0 s1 s2)
[[ $FOLLOW -eq 1 ]] && names+=(alone peer1 peer2 peer3 admin1 admin2 admin3 client1 client2 client3 app1 app2 app3)
for name in "${names[@]}"; do
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
    local name=$1 master_port=$2 down_after=$3
    cat >"$WORK/$name.conf" <<EOF
port ${PORT[$name]}
bind 127.0.0.1
protected-mode no
dir $WORK
sentinel monitor bench 127.0.0.1 $master_port 2
sentinel down-after-milliseconds bench $down_after
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

master_port() {
    redis-cli -p "${PORT[s0]}" SENTINEL get-master-addr-by-name bench 2>/dev/null | sed -n 2p
}

name_of_port() {
    local name
    for name in r0 r1 r2; do
        [[ ${PORT[$name]} == "$1" ]] && echo "$name"
    done
    return 0
}

# sentinel_down_after MS: the failure-detection time, on every Sentinel.
sentinel_down_after() {
    local name
    for name in s0 s1 s2; do
        redis-cli -p "${PORT[$name]}" SENTINEL SET bench down-after-milliseconds "$1" >/dev/null
    done
}

# healthy_replicas: how many replicas in `SENTINEL replicas` (redis-cli's raw output, a
# field per line) have the flags `slave` and nothing else (no s_down, no disconnected).
healthy_replicas() {
    awk 'previous == "flags" && $0 == "slave" { n++ } { previous = $0 } END { print n + 0 }'
}

# wait_replicas PORT: until both replicas of the primary at PORT have acknowledged its
# writes and every Sentinel names it and knows both replicas as healthy. If the Sentinels
# move the primary meanwhile (no kill did that), the move is counted in SENTINEL_MOVES, its
# time kept in LAST_MOVE_NS, and the wait goes on for the new primary.
SENTINEL_MOVES=0
LAST_MOVE_NS=0
wait_replicas() {
    local port=$1 tries=0 name agreed acked named
    while [[ $tries -lt 600 ]]; do
        tries=$((tries + 1))
        acked=$(redis-cli -p "$port" WAIT 2 100 2>/dev/null || true)
        if [[ $acked =~ ^[0-9]+$ && $acked -ge 2 ]]; then
            agreed=1
            for name in s0 s1 s2; do
                named=$(redis-cli -p "${PORT[$name]}" SENTINEL get-master-addr-by-name bench 2>/dev/null | sed -n 2p)
                [[ $named == "$port" ]] || agreed=0
                # Sentinel learns of replicas from the primary's INFO (every 10 s): one
                # that knows none has nothing to promote.
                [[ $(redis-cli -p "${PORT[$name]}" SENTINEL replicas bench 2>/dev/null | healthy_replicas) -ge 2 ]] || agreed=0
            done
            [[ $agreed -eq 1 ]] && return 0
        fi
        named=$(master_port)
        if [[ -n $named && $named != "$port" ]]; then
            SENTINEL_MOVES=$((SENTINEL_MOVES + 1))
            LAST_MOVE_NS=$(date +%s%N)
            log "Sentinel moved the primary from :$port to :$named with no kill (move $SENTINEL_MOVES)"
            [[ $SENTINEL_MOVES -le 20 ]] || die "Sentinel keeps moving the primary on its own: down-after ${DOWN_AFTER_MS} ms is too tight for this machine now"
            port=$named
            tries=0
        fi
        sleep 0.1
    done
    die "the replicas of :$port did not catch up, or the Sentinels do not all name it, within 60 s"
}

# sentinel_spacing KILLED_AT_NS: sleeps until a Sentinel may start another failover
# (down-after, up to 1 s of election desync, then twice the failover-timeout, and 0.5 s to
# spare) after the kill at KILLED_AT_NS, or after the last move of the primary without a
# kill if that came later.
sentinel_spacing() {
    local since=$1 until_ms now_ms
    [[ $LAST_MOVE_NS -gt $since ]] && since=$LAST_MOVE_NS
    until_ms=$((since / 1000000 + DOWN_AFTER_MS + 5500))
    now_ms=$(($(date +%s%N) / 1000000))
    if [[ $now_ms -lt $until_ms ]]; then
        sleep "$(awk -v ms=$((until_ms - now_ms)) 'BEGIN { printf "%.3f", ms / 1000 }')"
    fi
}

# start_redis_trio P: P0 the primary, P1 and P2 its replicas, each answering.
start_redis_trio() {
    start_redis "${1}0"
    wait_port "${PORT[${1}0]}"
    start_redis "${1}1" --replicaof 127.0.0.1 "${PORT[${1}0]}"
    start_redis "${1}2" --replicaof 127.0.0.1 "${PORT[${1}0]}"
    wait_port "${PORT[${1}1]}"
    wait_port "${PORT[${1}2]}"
}

# start_redis_sentinel: r0-r2 and the Sentinels s0-s2, for the second and third comparisons.
start_redis_sentinel() {
    local name
    start_redis_trio r
    for name in s0 s1 s2; do start_sentinel "$name" "${PORT[r0]}" "$DOWN_AFTER_MS"; done
    for name in s0 s1 s2; do wait_port "${PORT[$name]}"; done
    # Both replicas in sync and every Sentinel agreeing on the primary before anything is
    # measured.
    wait_replicas "${PORT[r0]}"
    log "redis: primary :${PORT[r0]}, replicas :${PORT[r1]} :${PORT[r2]}, sentinels :${PORT[s0]} :${PORT[s1]} :${PORT[s2]}"
}

machine_line() {
    echo "machine: $(nproc) cores, $(uname -sr), loopback; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# cargo_build ARGS...: `cargo ARGS...` in $ROOT; its messages (JSON) kept for `built`.
cargo_build() {
    if ! (cd "$ROOT" && cargo "$@" --message-format=json) >"$WORK/build.out" 2>"$WORK/build.err"; then
        tail -n 30 "$WORK/build.err" >&2
        die "cargo $* failed"
    fi
}

# built NAME: the executable NAME (a sed pattern for its file name) of the last cargo_build.
built() {
    local path
    path=$(sed -n "s/.*\"executable\":\"\([^\"]*\/$1\)\".*/\1/p" "$WORK/build.out" | tail -n 1)
    [[ -n $path && -x $path ]] || die "no executable $1 after the build"
    echo "$path"
}

# csv_line FILE: requests/s, p50 and p99 (ms) from redis-benchmark's (or redis_load's) --csv
# output in FILE, its first SET or GET line.
csv_line() {
    tr -d '"\r' <"$1" | awk -F, '$1 ~ /^(SET|GET)/ { printf "%.0f %s %s\n", $2, $5, $7; exit }'
}

# ratio A B: A / B to two places, or - when either is missing or B is 0.
ratio() {
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a != "" && b != "" && b + 0 > 0) printf "%.2f", a / b; else print "-" }'
}

# ---- 1. the key-value comparison --------------------------------------------------------

# build_kv_tools: the release sidecar, the chaos tool (for tests/scripts/lib.sh), the
# key-value example and redis_load, each unless already given as UNDERSTUDY_BIN, CHAOS_BIN,
# KV_BIN or LOAD_BIN.
build_kv_tools() {
    local targets=() bin
    [[ -n ${UNDERSTUDY_BIN:-} ]] || targets+=(--bin understudy)
    [[ -n ${CHAOS_BIN:-} ]] || targets+=(--bin understudy-chaos)
    [[ -n ${KV_BIN:-} ]] || targets+=(--example kv)
    if [[ ${#targets[@]} -gt 0 ]]; then
        log "building: cargo build --release ${targets[*]}"
        cargo_build build --release "${targets[@]}"
        [[ -n ${UNDERSTUDY_BIN:-} ]] || UNDERSTUDY_BIN=$(built understudy)
        [[ -n ${CHAOS_BIN:-} ]] || CHAOS_BIN=$(built understudy-chaos)
        [[ -n ${KV_BIN:-} ]] || KV_BIN=$(built kv)
    fi
    if [[ -z ${LOAD_BIN:-} ]]; then
        log "building: cargo bench --bench redis_load --no-run"
        cargo_build bench --bench redis_load --no-run
        LOAD_BIN=$(built 'redis_load-[^"]*')
    fi
    for bin in "$UNDERSTUDY_BIN" "$CHAOS_BIN" "$KV_BIN" "$LOAD_BIN"; do
        [[ -x $bin ]] || die "not an executable: $bin"
    done
}

# cpu_ticks PID...: the user and system CPU time of the processes PID..., with that of
# their reaped children (Redis's AOF rewrites), in clock ticks: fields 14-17 of
# /proc/PID/stat.
cpu_ticks() {
    local pid stat fields total=0
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat") || die "process $pid is gone"
        # The fields after the name (which may hold spaces), from the third on.
        read -r -a fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12] + fields[13] + fields[14]))
    done
    echo "$total"
}

# kv_redis_settle: until both replicas of kv0 have everything it has (up to 30 s).
kv_redis_settle() {
    local acked
    acked=$(redis-cli -p "${PORT[kv0]}" WAIT 2 30000 2>/dev/null || true)
    [[ $acked =~ ^[0-9]+$ && $acked -ge 2 ]] || die "the replicas of :${PORT[kv0]} did not catch up within 30 s"
}

# kv_load PAIR SIDE PORT: pair PAIR's load at PORT, SIDE's (us or redis); --csv lines out.
kv_load() {
    local pair=$1 side=$2 port=$3
    local bench=(redis-benchmark -h 127.0.0.1 -p "$port" -d 128 --csv)
    local acked=("$LOAD_BIN" load --addr "127.0.0.1:$port" --pipeline 16 --value-len 128 --requests "$KV_REQUESTS")
    # Redis: each batch of SETs acknowledged by one WAIT 1 0; the client port: by the replies.
    [[ $side == us ]] || acked+=(--wait 1 --wait-per batch)
    case $pair in
    set_p16) "${bench[@]}" -t set -P 16 -c 50 -n "$KV_REQUESTS" ;;
    set_c50) "${bench[@]}" -t set -c 50 -n "$KV_REQUESTS_UNPIPELINED" ;;
    set_c500) "${bench[@]}" -t set -c 500 -n "$KV_REQUESTS_UNPIPELINED" ;;
    get_p16) "${bench[@]}" -t get -P 16 -c 50 -n "$KV_REQUESTS" ;;
    get_c50) "${bench[@]}" -t get -c 50 -n "$KV_REQUESTS_UNPIPELINED" ;;
    ack_c16) "${acked[@]}" --connections 16 ;;
    ack_c50) "${acked[@]}" --connections 50 ;;
    esac
}

# KVF[PAIR,SIDE,FIGURE]: the key-value comparison's figures. rps, p50, p99 and load are
# space-separated lists, one entry per round; cpu (clock ticks), sets and records are sums
# over the rounds.
declare -A KVF

# kv_settle SIDE: until SIDE's replicas hold everything committed; for understudy, prints
# the primary's last LSN (the log records written so far).
kv_settle() {
    if [[ $1 == us ]]; then
        "$CHAOS" settle --admin "$ADMINS" --timeout 30s || die "the cluster did not settle"
    else
        kv_redis_settle
    fi
}

# kv_run PAIR SIDE SETS: one run of pair PAIR against SIDE, which commits SETS writes.
# The CPU time is read with the replicas settled before and after, so it holds all the
# work of replicating the run's writes.
kv_run() {
    local pair=$1 side=$2 sets=$3 out="$WORK/kv-$1-$2.out" port lsn_before lsn_after
    local cpu_before cpu_after sidecars_before sidecars_after split='' rps p50 p99 load
    local -a pids sidecars
    if [[ $side == us ]]; then
        port=${CLIENT_PORT[$PRIMARY]}
        sidecars=("${NODE_PID[@]}")
        pids=("${sidecars[@]}" "${KV_PID[@]}")
    else
        port=${PORT[kv0]}
        pids=("${PID[kv0]}" "${PID[kv1]}" "${PID[kv2]}")
    fi
    lsn_before=$(kv_settle "$side")
    cpu_before=$(cpu_ticks "${pids[@]}")
    [[ $side == us ]] && sidecars_before=$(cpu_ticks "${sidecars[@]}")
    if ! kv_load "$pair" "$side" "$port" >"$out" 2>&1 || grep -qi 'error' "$out"; then
        cat "$out" >&2
        local now
        if [[ $side == us ]] && now=$(wait_primary 5s) && [[ $now != "$PRIMARY" ]]; then
            die "$pair against :$port failed: the primary moved from node $PRIMARY to node $now during the run"
        fi
        die "$pair against :$port ($side) failed"
    fi
    lsn_after=$(kv_settle "$side")
    cpu_after=$(cpu_ticks "${pids[@]}")
    if [[ $side == us ]]; then
        sidecars_after=$(cpu_ticks "${sidecars[@]}")
        split=", of it the sidecars $(((sidecars_after - sidecars_before) * 1000 / CLK_TCK)) ms"
    fi
    load=$(cut -d' ' -f1 /proc/loadavg)
    read -r rps p50 p99 < <(csv_line "$out") || true
    [[ -n ${p99:-} ]] || { cat "$out" >&2; die "no figures in $out"; }
    KVF[$pair,$side,rps]+=" $rps"
    KVF[$pair,$side,p50]+=" $p50"
    KVF[$pair,$side,p99]+=" $p99"
    KVF[$pair,$side,load]+=" $load"
    KVF[$pair,$side,cpu]=$((${KVF[$pair,$side,cpu]:-0} + cpu_after - cpu_before))
    KVF[$pair,$side,sets]=$((${KVF[$pair,$side,sets]:-0} + sets))
    if [[ $side == us ]]; then
        KVF[$pair,$side,records]=$((${KVF[$pair,$side,records]:-0} + lsn_after - lsn_before))
    else
        KVF[$pair,$side,records]=${KVF[$pair,$side,sets]}
    fi
    log "$pair $side: $rps/s, p50 $p50 ms, p99 $p99 ms, CPU $(((cpu_after - cpu_before) * 1000 / CLK_TCK)) ms$split (load average $load)"
}

# median LIST FORMAT: the median of the space-separated numbers in LIST, in printf's FORMAT.
median() {
    tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk -v f="$2\n" \
        '{ v[NR] = $1 } END { if (NR % 2) printf f, v[(NR + 1) / 2]; else printf f, (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# kv_cpu_us PAIR SIDE PER: CPU microseconds per SET (PER = sets) or per log record (records).
kv_cpu_us() {
    awk -v t="${KVF[$1,$2,cpu]}" -v n="${KVF[$1,$2,$3]}" -v hz="$CLK_TCK" \
        'BEGIN { if (n > 0) printf "%.2f", t * 1e6 / hz / n; else print "-" }'
}

# kv_verdict CONDITION: "met" or "NOT met", CONDITION an awk expression.
kv_verdict() {
    if [[ $(awk "BEGIN { print ($1) ? 1 : 0 }") -eq 1 ]]; then echo met; else echo "NOT met"; fi
}

# kv_row LABEL US REDIS PAIR TARGET: one line of the table, with the ratio, the target and
# the 1-minute load average after each run of PAIR, understudy's then Redis's.
kv_row() {
    local load
    load="$(tr -s ' ' ',' <<<"${KVF[$4,us,load]# }") / $(tr -s ' ' ',' <<<"${KVF[$4,redis,load]# }")"
    printf '%-42s %10s %10s %6s  %-28s %s\n' "$1" "$2" "$3" "$(ratio "$2" "$3")" "$5" "$load"
}

kv_table() {
    local pair label us redis target n records=()
    echo
    echo "key-value example through the primary's client port (3 understudy nodes, --fsync always,"
    echo "heartbeat 50 ms) vs Redis (primary appendonly yes, appendfsync always, 2 asynchronous replicas),"
    echo "$(date -u +%F\ %H:%M) UTC, $KV_ROUNDS round(s), medians over the rounds; -d 128 (128-byte values)"
    machine_line
    echo "CPU: user + system of every process of the setup from /proc/PID/stat (3 sidecars + 3 kv servers;"
    echo "3 redis-servers), load generator excluded, replicas settled before and after each run"
    printf '%-42s %10s %10s %6s  %-28s %s\n' figure understudy Redis ratio target "load average (us / Redis)"
    for pair in set_p16 set_c50 set_c500 get_p16 get_c50 ack_c16 ack_c50; do
        case $pair in
        set_p16) label="SET -P 16 -c 50 (-n $KV_REQUESTS)" ;;
        set_c50) label="SET -c 50 (-n $KV_REQUESTS_UNPIPELINED)" ;;
        set_c500) label="SET -c 500 (-n $KV_REQUESTS_UNPIPELINED)" ;;
        get_p16) label="GET -P 16 -c 50 (-n $KV_REQUESTS)" ;;
        get_c50) label="GET -c 50 (-n $KV_REQUESTS_UNPIPELINED)" ;;
        ack_c16) label="acked SET x16, 16 conns (-n $KV_REQUESTS)" ;;
        ack_c50) label="acked SET x16, 50 conns (-n $KV_REQUESTS)" ;;
        esac
        us=$(median "${KVF[$pair,us,rps]}" %.0f)
        redis=$(median "${KVF[$pair,redis,rps]}" %.0f)
        case $pair in
        set_*) target="understudy >= 1.0x: $(kv_verdict "$us >= $redis")" ;;
        get_*) target="understudy >= 0.7x: $(kv_verdict "$us >= 0.7 * $redis")" ;;
        ack_*) target="understudy >= 1.5x: $(kv_verdict "$us >= 1.5 * $redis")" ;;
        esac
        kv_row "$label: ops/s" "$us" "$redis" "$pair" "$target"
        us=$(median "${KVF[$pair,us,p50]}" %.3f)
        redis=$(median "${KVF[$pair,redis,p50]}" %.3f)
        target=
        [[ $pair == set_c50 || $pair == set_c500 ]] && target="understudy < 1 ms: $(kv_verdict "$us < 1")"
        kv_row "  p50 ms" "$us" "$redis" "$pair" "$target"
        us=$(median "${KVF[$pair,us,p99]}" %.3f)
        redis=$(median "${KVF[$pair,redis,p99]}" %.3f)
        target=
        [[ $pair == ack_* ]] && target="understudy lower: $(kv_verdict "$us < $redis")"
        kv_row "  p99 ms" "$us" "$redis" "$pair" "$target"
        if [[ $pair == set_* ]]; then
            us=$(kv_cpu_us "$pair" us sets)
            redis=$(kv_cpu_us "$pair" redis sets)
            kv_row "  CPU us per SET" "$us" "$redis" "$pair" "understudy < 5 us: $(kv_verdict "$us < 5")"
            us=$(kv_cpu_us "$pair" us records)
            n=${KVF[$pair,us,records]}
            kv_row "  CPU us per record (log record / SET)" "$us" "$redis" "$pair" \
                "understudy < 5 us: $(kv_verdict "$us < 5")"
            records+=("$pair: $n log records for ${KVF[$pair,us,sets]} SETs")
        fi
    done
    echo "understudy's log records committed (a pipelined batch of writes is one record):"
    printf '  %s\n' "${records[@]}"
    if [[ $KV_ROUNDS -gt 1 ]]; then
        echo "ops/s of each round (understudy / Redis):"
        for pair in set_p16 set_c50 set_c500 get_p16 get_c50 ack_c16 ack_c50; do
            echo "  $pair:${KVF[$pair,us,rps]} /${KVF[$pair,redis,rps]}"
        done
    fi
}

# kv_measure: every pair, KV_ROUNDS times; in odd rounds understudy first, in even rounds
# Redis first, so that a drift in the machine's load weighs on both alike.
kv_measure() {
    local round pair sides side sets
    for round in $(seq 1 "$KV_ROUNDS"); do
        sides=(us redis)
        [[ $((round % 2)) -eq 1 ]] || sides=(redis us)
        for pair in set_p16 set_c50 set_c500 get_p16 get_c50 ack_c16 ack_c50; do
            case $pair in
            set_p16 | ack_*) sets=$KV_REQUESTS ;;
            set_c*) sets=$KV_REQUESTS_UNPIPELINED ;;
            get_*) sets=0 ;;
            esac
            for side in "${sides[@]}"; do kv_run "$pair" "$side" "$sets"; done
        done
    done
    kv_table
}

# kv_cluster: in a subshell of its own, the three nodes of tests/scripts/lib.sh, then
# every measurement.
kv_cluster() {
    HEARTBEAT=50ms
    FAILOVER_TIMEOUT_MS=500
    # shellcheck source-path=SCRIPTDIR source=../tests/scripts/lib.sh
    source "$ROOT/tests/scripts/lib.sh"
    # Progress on standard error, as in the rest of this script.
    log() { printf '%s %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2; }
    # A primary whose application misses the app API's pings for --app-timeout hands over.
    # At the default (the failover timeout, 500 ms) the saturated key-value server on this
    # busy 2-core machine once missed them that long and the primary handed over mid-run;
    # Redis here has no failover at all, so neither side may move its primary while measured.
    NODE_ARGS=(--fsync always --app-timeout 5s)
    # Not the crash scripts' debug line per run of records delivered: work not measured.
    export RUST_LOG=${RUST_LOG:-info}
    [[ $KEEP -eq 0 ]] || UNDERSTUDY_KEEP_TEMP=1
    setup plain
    start_cluster
    [[ $(redis-cli -p "${CLIENT_PORT[$PRIMARY]}" SET kv:probe 1) == OK ]] \
        || die "no SET through node $PRIMARY's client port"
    log "understudy: node $PRIMARY primary, client port :${CLIENT_PORT[$PRIMARY]}"
    kv_measure
    FAILED=0
}

kv_comparison() {
    CLK_TCK=$(getconf CLK_TCK)
    build_kv_tools
    start_redis_trio kv
    kv_redis_settle
    log "redis: primary :${PORT[kv0]} (appendfsync always), replicas :${PORT[kv1]} :${PORT[kv2]}"
    # The cluster lives in a subshell: tests/scripts/lib.sh starts it and kills it by PID on
    # the subshell's exit (its EXIT trap), and its names (log, start_node, cleanup, WORK)
    # stay in there.
    (kv_cluster)
    local name
    for name in kv0 kv1 kv2; do
        kill -9 "${PID[$name]}" 2>/dev/null || true
        wait "${PID[$name]}" 2>/dev/null || true
        unset "PID[$name]"
    done
}

# ---- 2. the end-to-end comparison -------------------------------------------------------

e2e_comparison() {
    local -A REDIS US
    # run_e2e NAME ARGS...: `cargo bench --bench e2e` with ARGS; its output is shown, and its
    # `summary KEY VALUE` lines are kept in $WORK/NAME.out for reading into REDIS or US.
    run_e2e() {
        local name=$1
        shift
        if ! (cd "$ROOT" && cargo bench --bench e2e -- --summary "${QUICK[@]}" "$@") \
            >"$WORK/$name.out" 2>"$WORK/$name.err"; then
            grep -v '^summary ' "$WORK/$name.out" >&2
            tail -n 20 "$WORK/$name.err" >&2
            die "cargo bench --bench e2e ($name) failed"
        fi
        grep -v '^summary ' "$WORK/$name.out" >&2
        grep 'connections failed' "$WORK/$name.err" >&2 || true
    }

    # No failover while commits are measured: under load a primary fsyncing every write can
    # stall past a short down-after and be failed over mid-run.
    sentinel_down_after 60000
    log "redis: SET + WAIT 1 through cargo bench --bench e2e -- --redis-master"
    run_e2e redis --redis-master "127.0.0.1:${PORT[r0]}"
    while read -r _ key value; do REDIS[$key]=$value; done < <(grep '^summary ' "$WORK/redis.out")
    if [[ $(master_port) != "${PORT[r0]}" ]]; then
        die "Sentinel failed the primary over during the measurement; the figures are not comparable"
    fi

    sentinel_down_after "$DOWN_AFTER_MS"
    local times=() cycle old_port old started port took sorted
    SENTINEL_MOVES=0
    for cycle in $(seq 1 "$E2E_FAILOVERS"); do
        old_port=$(master_port)
        old=$(name_of_port "$old_port")
        [[ -n $old ]] || die "Sentinel names no primary we started (:$old_port)"
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
                die "no Sentinel failover within 60 s"
            fi
            sleep 0.01
        done
        took=$((($(date +%s%N) - started) / 1000000))
        times+=("$took")
        log "redis failover $cycle/$E2E_FAILOVERS: :$old_port killed, :$port took writes after $took ms"
        # The killed primary comes back as a replica of the new one (Sentinel would convert it).
        start_redis "$old" --replicaof 127.0.0.1 "$port"
        wait_port "${PORT[$old]}"
        wait_replicas "$port"
        sentinel_spacing "$started"
    done
    local moves=$SENTINEL_MOVES
    mapfile -t sorted < <(printf '%s\n' "${times[@]}" | sort -n)
    REDIS[failover_min_ms]=${sorted[0]}
    REDIS[failover_median_ms]=${sorted[$((${#sorted[@]} / 2))]}
    REDIS[failover_max_ms]=${sorted[-1]}

    log "understudy: cargo bench --bench e2e"
    run_e2e understudy --failovers "$E2E_FAILOVERS"
    while read -r _ key value; do US[$key]=$value; done < <(grep '^summary ' "$WORK/understudy.out")

    echo
    echo "understudy (3 nodes, --fsync always, failover timeout 500 ms) vs Redis (primary + 2"
    echo "replicas, appendfsync always, SET + WAIT 1; Sentinel down-after ${DOWN_AFTER_MS} ms), $(date -u +%F\ %H:%M) UTC"
    machine_line
    printf '%-30s %14s %14s %10s\n' figure understudy redis ratio
    local key ratio
    for key in $(printf '%s\n' "${!REDIS[@]}" | sort -V); do
        [[ -n ${US[$key]:-} ]] || continue
        ratio=$(awk -v a="${US[$key]}" -v b="${REDIS[$key]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
        printf '%-30s %14s %14s %10s\n' "$key" "${US[$key]}" "${REDIS[$key]}" "$ratio"
    done
    echo "Sentinel moved the primary with no kill $moves times during its $E2E_FAILOVERS failovers"
}

# ---- 3. the follow-mode comparison ------------------------------------------------------

declare -A FIG    # FIG[figure,column]: the follow-mode table
NOTES=()

# build_follow_tools: the release sidecar and the redis_load bench program.
build_follow_tools() {
    log "building: cargo build --release --bin understudy; cargo bench --bench redis_load --no-run"
    cargo_build build --release --bin understudy
    US_BIN=$(built understudy)
    cargo_build bench --bench redis_load --no-run
    LOAD_BIN=$(built 'redis_load-[^"]*')
}

# csv_figures NAME FILE: requests/s, p50 and p99 from redis-benchmark's (or redis_load's)
# --csv output into FIG[rps,NAME], FIG[p50,NAME], FIG[p99,NAME].
csv_figures() {
    local name=$1 file=$2 rps p50 p99
    read -r rps p50 p99 < <(csv_line "$file") || true
    [[ -n ${p99:-} ]] || { cat "$file" >&2; die "no SET figures in $file"; }
    FIG[rps,$name]=$rps
    FIG[p50,$name]=$p50
    FIG[p99,$name]=$p99
}

# benchmark NAME PORT: redis-benchmark's SET run at PORT.
benchmark() {
    local name=$1 port=$2
    if ! redis-benchmark -h 127.0.0.1 -p "$port" -t set -P 16 -c 50 -r 100000 -n "$REQUESTS" --csv \
        >"$WORK/bench-$name.out" 2>&1 || grep -qi 'error' "$WORK/bench-$name.out"; then
        cat "$WORK/bench-$name.out" >&2
        die "redis-benchmark against :$port ($name) failed"
    fi
    csv_figures "$name" "$WORK/bench-$name.out"
    log "$name: ${FIG[rps,$name]} SET/s, p50 ${FIG[p50,$name]} ms, p99 ${FIG[p99,$name]} ms (load average $(cut -d' ' -f1 /proc/loadavg))"
}

# summarize NAME TIMES...: min, median and max into FIG[failover_*,NAME].
summarize() {
    local name=$1 sorted
    shift
    mapfile -t sorted < <(printf '%s\n' "$@" | sort -n)
    FIG[failover_min,$name]=${sorted[0]}
    FIG[failover_median,$name]=${sorted[$((${#sorted[@]} / 2))]}
    FIG[failover_max,$name]=${sorted[-1]}
    NOTES+=("$name failovers, ms in order: $*")
}

redis_alone() {
    mkdir -p "$WORK/alone"
    redis-server --port "${PORT[alone]}" --bind 127.0.0.1 --dir "$WORK/alone" --save '' \
        --appendonly yes --appendfsync always --protected-mode no --daemonize no \
        >>"$WORK/alone.log" 2>&1 &
    PID[alone]=$!
    wait_port "${PORT[alone]}"
    log "redis alone (appendfsync always) :${PORT[alone]}: redis-benchmark"
    benchmark alone "${PORT[alone]}"
    # The load generator's own cost: SET alone through redis_load against redis-benchmark.
    "$LOAD_BIN" load --addr "127.0.0.1:${PORT[alone]}" --requests "$REQUESTS" >"$WORK/calibrate.out" \
        || die "redis_load load against Redis alone failed"
    csv_figures calibrate "$WORK/calibrate.out"
    NOTES+=("calibration, SET alone at Redis alone (appendfsync always) through redis_load: ${FIG[rps,calibrate]} SET/s, p50 ${FIG[p50,calibrate]} ms, p99 ${FIG[p99,calibrate]} ms (redis-benchmark, just before: ${FIG[rps,alone]} SET/s, p50 ${FIG[p50,alone]}, p99 ${FIG[p99,alone]})")
    kill -9 "${PID[alone]}"
    wait "${PID[alone]}" 2>/dev/null || true
    unset 'PID[alone]'
}

# sentinel_events PATTERN: how many lines of the Sentinels' logs match.
sentinel_events() {
    cat "$WORK"/s[012].log | grep -c -- "$1" || true
}

redis_sentinel() {
    local master sdown_before switch_before sdown switches
    sentinel_down_after "$DOWN_AFTER_MS"
    master=$(master_port)
    wait_replicas "$master"
    sdown_before=$(sentinel_events '+sdown')
    switch_before=$(sentinel_events '+switch-master')
    log "redis + sentinel: SET + WAIT 1 0 pairs, 50 x 16 in flight, through redis_load at :$master (down-after $DOWN_AFTER_MS ms)"
    if ! "$LOAD_BIN" load --addr "127.0.0.1:$master" --requests "$REQUESTS" --wait 1 \
        >"$WORK/bench-sentinel.out" 2>&1; then
        cat "$WORK/bench-sentinel.out" >&2
        die "redis_load (SET + WAIT 1) against :$master failed"
    fi
    # A failover Sentinel had started during the run shows only afterwards.
    sleep 1
    sdown=$(($(sentinel_events '+sdown') - sdown_before))
    switches=$(($(sentinel_events '+switch-master') - switch_before))
    if [[ $switches -gt 0 || $(master_port) != "$master" ]]; then
        die "Sentinel failed the primary over under the WAIT 1 load with down-after $DOWN_AFTER_MS ms: too tight for this machine now; raise --down-after-ms"
    fi
    csv_figures sentinel "$WORK/bench-sentinel.out"
    log "sentinel: ${FIG[rps,sentinel]} pairs/s, p50 ${FIG[p50,sentinel]} ms, p99 ${FIG[p99,sentinel]} ms; +sdown events meanwhile: $sdown"
    NOTES+=("Sentinel under the WAIT 1 load, down-after $DOWN_AFTER_MS ms: no failover; subjective-down events (a Sentinel missing replies for down-after, no quorum): $sdown")

    local times=() cycle old_port old started took port
    SENTINEL_MOVES=0
    for cycle in $(seq 1 "$FOLLOW_FAILOVERS"); do
        old_port=$(master_port)
        old=$(name_of_port "$old_port")
        [[ -n $old ]] || die "Sentinel names no primary we started (:$old_port)"
        started=$(date +%s%N)
        kill -9 "${PID[$old]}"
        if ! took=$("$LOAD_BIN" probe --since-ns "$started" --sentinel "127.0.0.1:${PORT[s0]}" --not "$old_port" 2>>"$WORK/probe.err"); then
            die "no Sentinel failover within 60 s of killing :$old_port"
        fi
        wait "${PID[$old]}" 2>/dev/null || true
        port=$(master_port)
        times+=("$took")
        log "sentinel failover $cycle/$FOLLOW_FAILOVERS: :$old_port killed, :$port took writes after $took ms"
        start_redis "$old" --replicaof 127.0.0.1 "$port"
        wait_port "${PORT[$old]}"
        wait_replicas "$port"
        sentinel_spacing "$started"
    done
    summarize sentinel "${times[@]}"
    FIG[moves,sentinel]=$SENTINEL_MOVES
    if grep -q -- '-failover-abort' "$WORK"/s[012].log; then
        NOTES+=("warning: a Sentinel aborted a failover attempt (-failover-abort in its log): a figure may include the retry")
    fi
}

# ---- follow-mode nodes

FOLLOW_PEERS="1=127.0.0.1:${PORT[peer1]:-0},2=127.0.0.1:${PORT[peer2]:-0},3=127.0.0.1:${PORT[peer3]:-0}"

start_node() {
    local id=$1
    mkdir -p "$WORK/redis$id"
    "$US_BIN" run --node-id "$id" --data-dir "$WORK/node$id" \
        --peer-listen "127.0.0.1:${PORT[peer$id]}" --peers "$FOLLOW_PEERS" \
        --cluster-secret-file "$WORK/secret" --admin-listen "127.0.0.1:${PORT[admin$id]}" \
        --client-listen "127.0.0.1:${PORT[client$id]}" --failover-timeout 500ms \
        --app-addr "127.0.0.1:${PORT[app$id]}" --follow-dir "$WORK/redis$id/appendonlydir" \
        --app-cmd "exec redis-server --port ${PORT[app$id]} --bind 127.0.0.1 --dir $WORK/redis$id --appendonly yes --appendfsync no --save '' --protected-mode no --daemonize no --loglevel warning" \
        --app-ready-cmd "redis-cli -p ${PORT[app$id]} ping | grep -q PONG" \
        </dev/null >>"$WORK/node$id.log" 2>&1 &
    PID[node$id]=$!
}

node_status() {
    curl -sf --max-time 2 "http://127.0.0.1:${PORT[admin$1]}/status"
}

# wait_serving IDS...: until exactly one node among IDS is primary with Redis serving; its
# id in SERVING, its Redis's pid in SERVING_PID (and in APP_PORT, for the exit).
wait_serving() {
    local _ id found pid
    for _ in $(seq 1 300); do
        found=()
        for id in "$@"; do
            [[ $(node_status "$id" | jq -r 'select(.role == "primary" and .follow.state == "serving") | .node_id' 2>/dev/null) == "$id" ]] \
                && found+=("$id")
        done
        if [[ ${#found[@]} -eq 1 ]]; then
            pid=$(node_status "${found[0]}" | jq -r '.app.pid // empty' 2>/dev/null || true)
            if [[ $pid =~ ^[0-9]+$ ]]; then
                SERVING=${found[0]}
                SERVING_PID=$pid
                APP_PORT[$pid]=${PORT[app$SERVING]}
                return 0
            fi
        fi
        sleep 0.1
    done
    node_logs_tail
    die "no node among $* is primary with Redis serving after 30 s"
}

node_logs_tail() {
    local id
    for id in 1 2 3; do
        echo "---- node $id ----" >&2
        tail -n 15 "$WORK/node$id.log" >&2 || true
    done
}

# wait_caught_up ID PRIMARY: until node ID is a backup whose copy of the directory has
# reached the primary's commit LSN as it was when the wait began.
wait_caught_up() {
    local id=$1 primary=$2 commit _
    commit=$(node_status "$primary" | jq -r '.commit_lsn')
    [[ $commit =~ ^[0-9]+$ ]] || die "no commit LSN from node $primary"
    for _ in $(seq 1 600); do
        if node_status "$id" | jq -e --argjson c "$commit" \
            '.role == "backup" and .follow.state == "standby" and .follow.applied_lsn >= $c' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    node_logs_tail
    die "node $id did not catch up to LSN $commit within 60 s"
}

# wait_aof_rewrite PORT: until no AOF rewrite is in progress or scheduled on the Redis
# behind PORT.
wait_aof_rewrite() {
    local _
    for _ in $(seq 1 600); do
        if ! redis-cli -p "$1" INFO persistence 2>/dev/null | tr -d '\r' \
            | grep -Eq '^aof_rewrite_(in_progress|scheduled):1'; then
            return 0
        fi
        sleep 0.1
    done
    die "the AOF rewrite behind :$1 did not end within 60 s"
}

follow_mode() {
    local primary backup id others
    head -c 32 /dev/urandom | base64 >"$WORK/secret"
    chmod 600 "$WORK/secret"
    for id in 1 2 3; do start_node "$id"; done
    wait_serving 1 2 3
    primary=$SERVING
    for id in 1 2 3; do [[ $id == "$primary" ]] || wait_caught_up "$id" "$primary"; done
    backup=$((primary % 3 + 1))
    log "follow mode: node $primary primary, Redis serving; redis-benchmark through its client port :${PORT[client$primary]}"
    benchmark follow "${PORT[client$primary]}"
    wait_caught_up "$backup" "$primary"
    log "follow mode: redis-benchmark through node $backup's (a backup's) client port :${PORT[client$backup]}"
    benchmark follow_backup "${PORT[client$backup]}"
    for id in 1 2 3; do [[ $id == "$primary" ]] || wait_caught_up "$id" "$primary"; done

    # A compact append-only file before the kills: the data set, not the benchmark's history.
    [[ $(redis-cli -p "${PORT[client$primary]}" BGREWRITEAOF) == *rewriting* ]] \
        || die "BGREWRITEAOF through the client port was refused"
    sleep 0.2
    wait_aof_rewrite "${PORT[client$primary]}"
    for id in 1 2 3; do [[ $id == "$primary" ]] || wait_caught_up "$id" "$primary"; done
    NOTES+=("follow mode: data set before the kills: $(redis-cli -p "${PORT[client$primary]}" DBSIZE) keys, append-only directory $(du -sh "$WORK/redis$primary/appendonlydir" | cut -f1) after BGREWRITEAOF")

    log "follow mode: $FOLLOW_FAILOVERS kills of the primary (sidecar and Redis) under the checking writer"
    "$LOAD_BIN" writer --acked "$WORK/acked" \
        --ports "127.0.0.1:${PORT[client1]},127.0.0.1:${PORT[client2]},127.0.0.1:${PORT[client3]}" \
        >"$WORK/writer.out" 2>&1 &
    PID[writer]=$!
    sleep 1
    local times=() cycle redis_pid started took new ports aof
    : >"$WORK/probe.err"
    for cycle in $(seq 1 "$FOLLOW_FAILOVERS"); do
        wait_serving 1 2 3
        primary=$SERVING
        redis_pid=$SERVING_PID
        others=()
        ports=()
        for id in 1 2 3; do
            [[ $id == "$primary" ]] && continue
            others+=("$id")
            ports+=("127.0.0.1:${PORT[client$id]}")
        done
        aof=$(du -sh "$WORK/redis$primary/appendonlydir" | cut -f1)
        started=$(date +%s%N)
        kill -9 "${PID[node$primary]}" "$redis_pid"
        if ! took=$("$LOAD_BIN" probe --since-ns "$started" --ports "$(IFS=,; echo "${ports[*]}")" 2>>"$WORK/probe.err"); then
            node_logs_tail
            die "no SET succeeded through nodes ${others[*]} within 60 s of killing node $primary"
        fi
        wait "${PID[node$primary]}" 2>/dev/null || true
        unset "PID[node$primary]"
        wait_serving "${others[@]}"
        new=$SERVING
        times+=("$took")
        log "follow failover $cycle/$FOLLOW_FAILOVERS: node $primary killed (append-only dir $aof), a SET through a client port succeeded after $took ms; node $new primary ($(tail -n 1 "$WORK/probe.err" 2>/dev/null | grep '^probe' || echo 'no failed attempts'))"
        : >"$WORK/probe.err"
        start_node "$primary"
        wait_caught_up "$primary" "$new"
        sleep 1
    done
    kill -TERM "${PID[writer]}"
    wait "${PID[writer]}" || die "the checking writer failed: $(cat "$WORK/writer.out")"
    unset 'PID[writer]'
    summarize follow "${times[@]}"
    # Every election won, the first one and one per kill expected.
    local elected
    elected=$(cat "$WORK"/node[123].log | grep -c 'role changed role="primary"' || true)
    FIG[moves,follow]=$((elected - 1 - FOLLOW_FAILOVERS))
    while read -r line; do NOTES+=("follow mode, checking $line"); done <"$WORK/writer.out"

    wait_serving 1 2 3
    primary=$SERVING
    local checked
    checked=$("$LOAD_BIN" check --addr "127.0.0.1:${PORT[client$primary]}" --acked "$WORK/acked" 2>&1) || true
    log "read back through node $primary's client port: $checked"
    LOST=$(sed -n 's/^acknowledged writes checked: [0-9]*, lost: \([0-9]*\)$/\1/p' <<<"$checked")
    [[ -n $LOST ]] || die "the read-back failed: $checked"
    FIG[lost,follow]=$LOST
    NOTES+=("follow mode: $checked")
    if [[ $LOST -ne 0 ]]; then
        KEEP=1
    fi
    if grep -q ' ERROR ' "$WORK"/node[123].log; then
        NOTES+=("warning: ERROR lines in the node logs: $(grep -c ' ERROR ' "$WORK"/node[123].log | tr '\n' ' ')")
    fi
}

follow_table() {
    echo
    echo "follow mode (3 understudy nodes, failover timeout 500 ms, Redis appendfsync no behind the"
    echo "client port's reply barrier) vs Redis alone (appendonly yes, appendfsync always) vs Redis +"
    echo "Sentinel (primary + 2 replicas, appendfsync always, SET + WAIT 1 0; down-after ${DOWN_AFTER_MS} ms), $(date -u +%F\ %H:%M) UTC"
    machine_line
    echo "load: 50 connections x 16 in flight, SET of random keys below 100000, 3-byte values, $REQUESTS requests a run"
    echo "(redis-benchmark -t set -P 16 -c 50 -r 100000; Sentinel's SET + WAIT 1 pairs from redis_load);"
    echo "failover: kill -9 of the primary to the first acknowledged SET, $FOLLOW_FAILOVERS kills each"
    printf '%-32s %12s %12s %15s %13s %16s\n' figure "follow mode" "Redis alone" "Redis+Sentinel" follow/alone follow/Sentinel
    local row key column label value f a s
    for row in \
        "rps,follow|SET/s, primary's client port" \
        "p50,follow|  p50 ms" \
        "p99,follow|  p99 ms" \
        "rps,follow_backup|SET/s, a backup's client port" \
        "p50,follow_backup|  p50 ms" \
        "p99,follow_backup|  p99 ms" \
        "failover_min,follow|failover min ms" \
        "failover_median,follow|failover median ms" \
        "failover_max,follow|failover max ms" \
        "moves,follow|primary moves without a kill" \
        "lost,follow|acknowledged writes lost"; do
        key=${row%%|*}
        label=${row#*|}
        column=${key%%,*}
        f=${FIG[$key]:-}
        a=${FIG[$column,alone]:-}
        s=${FIG[$column,sentinel]:-}
        if [[ $column == moves || $column == lost ]]; then
            printf '%-32s %12s %12s %15s %13s %16s\n' "$label" "${f:--}" "${a:--}" "${s:--}" - -
        else
            printf '%-32s %12s %12s %15s %13s %16s\n' "$label" "${f:--}" "${a:--}" "${s:--}" "$(ratio "$f" "$a")" "$(ratio "$f" "$s")"
        fi
    done
    local note
    for note in "${NOTES[@]}"; do echo "- $note"; done
    local verdict=met
    [[ $(awk -v f="${FIG[failover_median,follow]}" 'BEGIN { print (f < 1000) }') -eq 1 ]] || verdict="not met"
    echo "target, follow-mode failover median under 1 s: $verdict (${FIG[failover_median,follow]} ms)"
    verdict=met
    [[ $(awk -v f="${FIG[rps,follow]}" -v a="${FIG[rps,alone]}" 'BEGIN { print (f >= 0.5 * a) }') -eq 1 ]] || verdict="not met"
    echo "target, follow-mode throughput at least 0.5x Redis alone (appendfsync always): $verdict ($(ratio "${FIG[rps,follow]}" "${FIG[rps,alone]}")x)"
    echo "acknowledged writes lost: ${FIG[lost,follow]}"
}

follow_comparison() {
    build_follow_tools
    redis_alone
    redis_sentinel
    # Redis + Sentinel is done: its processes stop, so they take nothing from follow mode.
    local name
    for name in r0 r1 r2 s0 s1 s2; do
        kill -9 "${PID[$name]}" 2>/dev/null || true
        wait "${PID[$name]}" 2>/dev/null || true
        unset "PID[$name]"
    done
    follow_mode
    follow_table
    if [[ ${FIG[lost,follow]} -ne 0 ]]; then
        die "acknowledged writes lost: ${FIG[lost,follow]} (the work directory is kept: $WORK)"
    fi
}

if [[ $KEYVALUE -eq 1 ]]; then kv_comparison; fi
if [[ $E2E -eq 1 || $FOLLOW -eq 1 ]]; then start_redis_sentinel; fi
if [[ $E2E -eq 1 ]]; then e2e_comparison; fi
if [[ $FOLLOW -eq 1 ]]; then follow_comparison; fi
exit 0
