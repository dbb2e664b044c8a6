#!/usr/bin/env bash
# kv_bulk.sh: a bulk load through the key-value example, against Redis, on one machine.
#
# Each run starts the 3-node cluster of tests/scripts/lib.sh (an `understudy run` sidecar and
# the key-value example per node, fsync always; release binaries) and pipes SETS SETs of
# VALUE bytes (`redis-cli --pipe`, distinct keys, one connection) first into the primary's
# client port, then straight into the primary's key-value server; every reply waits for its
# write to commit on the primary and a backup. The cluster is then stopped, and the same
# load goes into a Redis primary with `appendonly yes`, `appendfsync always` and two
# replicas (asynchronous, as Redis's are), started fresh in the run's directory. One line
# per run:
#
#   run 1: client port 1215 ms 172 MB/s; server 1099 ms 190 MB/s; redis 734 ms 285 MB/s;
#          stepped down: no
#
# With --connections N, N `redis-cli --pipe` send the same load at once (N times the bytes),
# and the line adds the primary key-value server's peak RssAnon during the client-port
# load (sampled every 50 ms): each connection that keeps its socket full is read ahead up to
# 8 MiB, but at most 16 connections at a time.
#
# "Stepped down" is any primary change during the loads (nothing is killed, so every one is
# false; the sidecar's warning is printed). Ends with the medians over the runs.
#
# Run: benches/kv_bulk.sh [--runs N] [--sets N] [--value-bytes N] [--timeout-ms MS]
#      [--heartbeat-ms MS] [--connections N] [--no-redis]
#      (defaults 3, 3200, 65536, 300, a tenth of the timeout, 1). A run takes 10-20 s; the load
#      file is written once under $TMPDIR and removed at the end, as is each run's
#      directory. Needs redis-server and redis-cli (Debian's redis-server and redis-tools).
set -euo pipefail

RUNS=3
SETS=3200
VALUE_BYTES=65536
TIMEOUT_MS=300
HEARTBEAT_MS=
REDIS=1
CONNECTIONS=1
ONE_RUN=
while [[ $# -gt 0 ]]; do
    case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --sets) SETS=$2; shift 2 ;;
    --value-bytes) VALUE_BYTES=$2; shift 2 ;;
    --timeout-ms) TIMEOUT_MS=$2; shift 2 ;;
    --heartbeat-ms) HEARTBEAT_MS=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --no-redis) REDIS=0; shift ;;
    --one-run) ONE_RUN=$2; shift 2 ;; # internal: one run, its load file given
    *)
        echo "usage: $0 [--runs N] [--sets N] [--value-bytes N] [--timeout-ms MS] [--heartbeat-ms MS] [--connections N] [--no-redis]" >&2
        exit 2
        ;;
    esac
done
HEARTBEAT_MS=${HEARTBEAT_MS:-$((TIMEOUT_MS / 10))}
for tool in redis-server redis-cli; do
    command -v "$tool" >/dev/null \
        || { echo "$tool is not on the PATH: install Debian's redis-server and redis-tools" >&2; exit 1; }
done

if [[ -z $ONE_RUN ]]; then
    LOAD=$(mktemp "${TMPDIR:-/tmp}/understudy-kv-bulk.XXXXXX")
    trap 'rm -f "$LOAD"' EXIT
    python3 "$(dirname "$0")/set_load.py" "$SETS" "$VALUE_BYTES" >"$LOAD"
    BYTES=$(($(stat -c %s "$LOAD") * CONNECTIONS))
    echo "key-value example bulk load: $RUNS run(s) of $SETS SETs of $VALUE_BYTES bytes on each of $CONNECTIONS connection(s) ($((BYTES / 1000000)) MB on the wire)," \
        "--failover-timeout ${TIMEOUT_MS}ms, --heartbeat-interval ${HEARTBEAT_MS}ms; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    # rate MS: "MS ms, R MB/s, S SET/s", or "failed" for 0.
    rate() {
        if [[ $1 -gt 0 ]]; then
            echo "$1 ms $((BYTES / 1000 / $1)) MB/s $((SETS * CONNECTIONS * 1000 / $1)) SET/s"
        else
            echo "failed"
        fi
    }
    results=()
    for run in $(seq 1 "$RUNS"); do
        args=(--one-run "$LOAD" --sets "$SETS" --timeout-ms "$TIMEOUT_MS" --heartbeat-ms "$HEARTBEAT_MS" --connections "$CONNECTIONS")
        [[ $REDIS == 1 ]] || args+=(--no-redis)
        line=$("$0" "${args[@]}" 2>/dev/null | tail -n 1) || true
        [[ $line == result* ]] || line="result 0 0 0 0 failed-to-start"
        read -r _ client server redis peak stepped why <<<"$line"
        out="run $run: client port $(rate "$client"); server $(rate "$server")"
        [[ $CONNECTIONS == 1 ]] || out+=" (the primary's server's peak RssAnon $((peak / 1024)) MB)"
        [[ $REDIS == 1 ]] && out+="; redis $(rate "$redis")"
        echo "$out; stepped down: $stepped${why:+ ($why)}"
        results+=("$client $server $redis $stepped")
    done
    printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [line.split() for line in sys.stdin]
def median(i):
    done = [int(r[i]) for r in rows if int(r[i]) > 0]
    return statistics.median(done) if done else 0
stepped = sum(r[3] != "no" for r in rows)
nbytes, sets, redis = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
parts = []
for name, i in [("client port", 0), ("server", 1)] + ([("redis", 2)] if redis else []):
    ms = median(i)
    parts.append(f"{name} {nbytes / 1000 / ms:.0f} MB/s" if ms else f"{name} failed")
ratio = ""
if redis and median(0) and median(2):
    ratio = f"; client port / redis {median(2) / median(0):.2f}x"
print(f"medians over {len(rows)} run(s): " + ", ".join(parts) + ratio + f"; stepped down or failed: {stepped}")
' "$BYTES" "$SETS" "$REDIS"
    exit 0
fi

# One run: its own cluster, Redis trio and directory.
# shellcheck source-path=SCRIPTDIR source=../tests/scripts/lib.sh
source "$(dirname "$0")/../tests/scripts/lib.sh"
FAILOVER_TIMEOUT_MS=$TIMEOUT_MS
HEARTBEAT="${HEARTBEAT_MS}ms"
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# load PORT: pipes the load file into PORT on each of CONNECTIONS connections at once;
# prints the milliseconds until the last is done, 0 if not every reply was a success (the
# last lines of a failed connection's output are left in $WORK/pipe.out).
load() {
    local started ms c pids=() ok=1
    started=$(now_ms)
    for c in $(seq 1 "$CONNECTIONS"); do
        redis-cli -p "$1" --pipe --pipe-timeout 120 <"$ONE_RUN" >"$WORK/pipe$c.out" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}" || true
    ms=$(($(now_ms) - started))
    for c in $(seq 1 "$CONNECTIONS"); do
        if ! grep -q "errors: 0, replies: $SETS" "$WORK/pipe$c.out"; then
            ok=0
            cp "$WORK/pipe$c.out" "$WORK/pipe.out"
        fi
    done
    if [[ $ok == 1 ]]; then echo "$ms"; else echo 0; fi
}

setup plain
start_cluster
KV_PRIMARY=$(app_pid "$PRIMARY") || fail "node $PRIMARY's key-value server is not running"
(
    peak=0
    while kill -0 "$KV_PRIMARY" 2>/dev/null && [[ ! -e $WORK/loaded ]]; do
        rss=$(awk '/^RssAnon/ {print $2}' "/proc/$KV_PRIMARY/status" 2>/dev/null) || break
        if [[ ${rss:-0} -gt $peak ]]; then
            peak=$rss
            echo "$peak" >"$WORK/peak"
        fi
        sleep 0.05
    done
) &
EXTRA_PIDS+=($!)
client_ms=$(load "${CLIENT_PORT[$PRIMARY]}")
touch "$WORK/loaded"
why=$([[ $client_ms -gt 0 ]] || tail -n 1 "$WORK/pipe.out")
server_ms=$(load "${APP_PORT[$PRIMARY]}")
[[ $server_ms -gt 0 || -n $why ]] || why=$(tail -n 1 "$WORK/pipe.out")
stepped=no
if grep -q "stepping down" "$WORK"/n*.log || [[ $(wait_primary 2s 2>/dev/null || echo none) != "$PRIMARY" ]]; then
    stepped=yes
    why=$(grep -ho "stepping down: [^(]*" "$WORK"/n*.log | head -n 1 | sed 's/ *$//') || true
fi
for id in "${NODES[@]}"; do kill_node "$id"; done

redis_ms=0
if [[ $REDIS == 1 ]]; then
    read -r -a rports <<<"$("$CHAOS" ports 3)"
    for i in 0 1 2; do
        mkdir -p "$WORK/redis$i"
        replica=()
        [[ $i == 0 ]] || replica=(--replicaof 127.0.0.1 "${rports[0]}")
        redis-server --port "${rports[i]}" --bind 127.0.0.1 --dir "$WORK/redis$i" --save '' \
            --appendonly yes --appendfsync always --repl-diskless-sync-delay 0 "${replica[@]}" \
            >"$WORK/redis$i.log" 2>&1 &
        EXTRA_PIDS+=($!)
    done
    for _ in $(seq 1 100); do
        [[ $(redis-cli -p "${rports[0]}" INFO replication 2>/dev/null | tr -d '\r' | awk -F: '$1 == "connected_slaves" {print $2}') == 2 ]] && break
        sleep 0.1
    done
    redis_ms=$(load "${rports[0]}")
fi
FAILED=0
echo "result $client_ms $server_ms $redis_ms $(cat "$WORK/peak" 2>/dev/null || echo 0) $stepped $why"
