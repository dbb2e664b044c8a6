#!/usr/bin/env bash
# follow_bulk.sh: a bulk load through follow mode, and what it costs the primary's sidecar.
#
# Starts the 3-node follow-mode cluster of tests/scripts/follow_redis.sh (an `understudy
# run` sidecar per node, the system's redis-server under --app-cmd on the primary, its
# appendonlydir followed; release binaries), then pipes SETS SETs of 64 KiB values
# (`redis-cli --pipe`, distinct keys, about SETS x 64 KiB in all) into the primary's client
# port, where each reply waits for its change to commit. Samples the primary's sidecar's
# RssAnon every 50 ms. One line per run:
#
#   run 1: load 2743 ms, 149 MB/s; primary sidecar peak RssAnon 65 MB; backups' longest
#          heartbeat gap 35 / 41 ms; stepped down: no
#
# With --rewrite, each run then makes Redis rewrite its append-only file (`CONFIG SET
# rdbcompression no`, so that the base file is about as large as the data; `BGREWRITEAOF`)
# and waits for the backups to hold the new files: the line adds how long that took, the
# new base file's size and the primary sidecar's peak RssAnon during it (a base file renamed
# into the followed directory is shipped whole):
#
#          rewrite 5120 ms, base file 420 MB, peak RssAnon 70 MB
#
# "Stepped down" is any primary change during the load (the sidecar's warning, such as a
# lapsed lease, is printed): nothing is killed, so every one is false. Ends with a summary
# over the runs. A run whose load fails (its client connection cut by a step-down) is
# counted, not fatal.
#
# Run: benches/follow_bulk.sh [--runs N] [--sets N] [--timeout-ms MS] [--heartbeat-ms MS] [--rewrite]
#      (defaults 6, 6400, 100, a tenth of the timeout: the recommended setting). A run takes
#      5-10 s; the load file (SETS x 64 KiB) is written once under $TMPDIR and removed at the
#      end, as is each run's directory. Needs redis-server and redis-cli (Debian's
#      redis-server and redis-tools).
set -euo pipefail

RUNS=6
SETS=6400
TIMEOUT_MS=100
HEARTBEAT_MS=
ONE_RUN=
REWRITE=
while [[ $# -gt 0 ]]; do
    case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --sets) SETS=$2; shift 2 ;;
    --timeout-ms) TIMEOUT_MS=$2; shift 2 ;;
    --heartbeat-ms) HEARTBEAT_MS=$2; shift 2 ;;
    --rewrite) REWRITE=1; shift ;;
    --one-run) ONE_RUN=$2; shift 2 ;; # internal: one run, its load file given
    *) echo "usage: $0 [--runs N] [--sets N] [--timeout-ms MS] [--heartbeat-ms MS] [--rewrite]" >&2; exit 2 ;;
    esac
done
HEARTBEAT_MS=${HEARTBEAT_MS:-$((TIMEOUT_MS / 10))}
for tool in redis-server redis-cli; do
    command -v "$tool" >/dev/null \
        || { echo "$tool is not on the PATH: install Debian's redis-server and redis-tools" >&2; exit 1; }
done

if [[ -z $ONE_RUN ]]; then
    # The load file, once: SETS commands of a 64 KiB value each, in RESP.
    LOAD=$(mktemp "${TMPDIR:-/tmp}/understudy-bulk.XXXXXX")
    trap 'rm -f "$LOAD"' EXIT
    python3 "$(dirname "$0")/set_load.py" "$SETS" 65536 >"$LOAD"
    echo "follow-mode bulk load: $RUNS run(s) of $SETS SETs of 64 KiB ($(($(stat -c %s "$LOAD") / 1000000)) MB)," \
        "--failover-timeout ${TIMEOUT_MS}ms, --heartbeat-interval ${HEARTBEAT_MS}ms; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    results=()
    for run in $(seq 1 "$RUNS"); do
        line=$("$0" --one-run "$LOAD" --sets "$SETS" --timeout-ms "$TIMEOUT_MS" --heartbeat-ms "$HEARTBEAT_MS" ${REWRITE:+--rewrite} 2>/dev/null | tail -n 1) || true
        [[ $line == result* ]] || line="result 0 0 0 0 - - - failed-to-start"
        read -r _ ms peak gap_a gap_b rw_ms rw_base rw_peak stepped why <<<"$line"
        if [[ $ms -gt 0 ]]; then
            took="load ${ms} ms, $((SETS * 65536 / 1000 / ms)) MB/s"
        else
            took="load did not finish"
        fi
        rewrite=""
        if [[ $rw_ms != - ]]; then
            rewrite="; rewrite $rw_ms ms, base file $((rw_base / 1000000)) MB, peak RssAnon $((rw_peak / 1024)) MB"
        fi
        echo "run $run: $took; primary sidecar peak RssAnon $((peak / 1024)) MB;" \
            "backups' longest heartbeat gap $gap_a / $gap_b ms; stepped down: $stepped${why:+ ($why)}$rewrite"
        results+=("$ms $peak $stepped ${rw_peak/-/0}")
    done
    printf '%s\n' "${results[@]}" | awk '
        { n++; if ($2 > p) p = $2; if ($4 > r) r = $4 }
        $3 == "yes" { s++ }
        $3 == "failed" { f++ }
        $3 == "no" { k++; if (lo == "" || $1 < lo) lo = $1; if ($1 > hi) hi = $1 }
        END {
            printf "summary: %d run(s), %d stepped down, %d failed otherwise; load of the others %s-%s ms; peak RssAnon up to %d MB",
                n, s, f, (k ? lo : "none"), (k ? hi : "none"), p / 1024
            if (r > 0) printf "; during the rewrites up to %d MB", r / 1024
            printf "\n"
        }'
    exit 0
fi

# One run: its own cluster and directory.
# shellcheck source-path=SCRIPTDIR source=../tests/scripts/lib.sh
source "$(dirname "$0")/../tests/scripts/lib.sh"
# shellcheck source-path=SCRIPTDIR source=../tests/scripts/follow_lib.sh
source "$(dirname "$0")/../tests/scripts/follow_lib.sh"
FAILOVER_TIMEOUT_MS=$TIMEOUT_MS
HEARTBEAT="${HEARTBEAT_MS}ms"
setup plain
for id in "${NODES[@]}"; do start_follow_node "$id"; done
P=$(wait_serving "$SERVE_TIMEOUT_S") || fail "no serving primary within ${SERVE_TIMEOUT_S} s"
(
    peak=0
    rewrite_peak=0
    while kill -0 "${NODE_PID[$P]}" 2>/dev/null; do
        rss=$(awk '/^RssAnon/ {print $2}' "/proc/${NODE_PID[$P]}/status" 2>/dev/null) || break
        if [[ -e $WORK/rewriting ]]; then
            if [[ ${rss:-0} -gt $rewrite_peak ]]; then
                rewrite_peak=$rss
                echo "$rewrite_peak" >"$WORK/rewrite_peak"
            fi
        elif [[ ${rss:-0} -gt $peak ]]; then
            peak=$rss
            echo "$peak" >"$WORK/peak"
        fi
        sleep 0.05
    done
) &
EXTRA_PIDS+=($!)
started=$(now_ms)
loaded=yes
redis-cli -p "${CLIENT_PORT[$P]}" --pipe --pipe-timeout 120 <"$ONE_RUN" >"$WORK/pipe.out" 2>&1 || loaded=no
ms=$(($(now_ms) - started))
grep -q "errors: 0, replies: $SETS" "$WORK/pipe.out" || loaded=no
gaps=()
for id in "${NODES[@]}"; do
    [[ $id == "$P" ]] && continue
    gap=$(admin_get "${ADMIN_PORT[$id]}" /metrics 2>/dev/null \
        | awk '$1 == "understudy_heartbeat_gap_max_seconds" {printf "%d", $2 * 1000}') || true
    gaps+=("${gap:--}")
done
stepped=no
why=""
if grep -q "stepping down" "$WORK/n$P.log" || [[ $(serving_primary || echo none) != "$P" ]]; then
    stepped=yes
    why=$(grep -o "stepping down: [^(]*" "$WORK/n$P.log" | head -n 1 | sed 's/ *$//') || true
fi
if [[ $loaded == no && $stepped == no ]]; then
    stepped=failed
    why="the load failed: $(tail -n 1 "$WORK/pipe.out")"
fi
rewrite="- - -"
if [[ -n $REWRITE && $loaded == yes && $stepped == no ]]; then
    # The rewritten base file is renamed into the followed directory from Redis's --dir.
    redis-cli -p "${APP_PORT[$P]}" config set rdbcompression no >/dev/null
    touch "$WORK/rewriting"
    sleep 0.1
    started=$(now_ms)
    [[ $(redis-cli -p "${APP_PORT[$P]}" bgrewriteaof) == *started* ]] || fail "BGREWRITEAOF was refused"
    deadline=$((started + 120000))
    until redis-cli -p "${APP_PORT[$P]}" info persistence \
        | grep -q '^aof_rewrite_in_progress:0' \
        && redis-cli -p "${APP_PORT[$P]}" info persistence | grep -q '^aof_rewrite_scheduled:0' \
        && [[ -z $(find "$WORK/redis$P" -maxdepth 1 -name 'temp-rewriteaof-*') ]]; do
        [[ $(now_ms) -lt $deadline ]] || fail "the rewrite did not end within 120 s"
        sleep 0.05
    done
    # The new files are shipped once capture has read them: caught up is not enough.
    until wait_quiet && compare_dirs "$P" >/dev/null 2>&1; do
        [[ $(now_ms) -lt $deadline ]] || fail "the backups' copies differ 120 s after the rewrite began"
        sleep 0.05
    done
    rewrite_ms=$(($(now_ms) - started))
    sleep 0.1
    rm -f "$WORK/rewriting"
    base=$(find "$WORK/redis$P/appendonlydir" -name '*.base.*' -printf '%s\n' | head -n 1)
    rewrite="$rewrite_ms ${base:-0} $(cat "$WORK/rewrite_peak" 2>/dev/null || echo 0)"
fi
FAILED=0
echo "result $([[ $loaded == yes ]] && echo "$ms" || echo 0) $(cat "$WORK/peak" 2>/dev/null || echo 0) ${gaps[0]} ${gaps[1]} $rewrite $stepped $why"
