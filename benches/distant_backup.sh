#!/usr/bin/env bash
# distant_backup.sh: how fast a backup far away keeps up, by --replication-window.
#
# Each run starts the 3-node cluster of tests/scripts/lib.sh with the fault proxy on every
# peer link (release binaries, fsync always), and delays both directions of the links
# between the primary and one backup (the far one) by DELAY ms: a round trip of twice that
# plus loopback's. The other backup is near, so writes commit at loopback speed. Then one
# `redis-cli --pipe` of SETS SETs of VALUE bytes goes into the primary's client port, and
# the run waits until every node holds and has committed every record (`understudy-chaos
# settle`): the far backup's tail. One line per run and window:
#
#   window 2MiB: load 1391 ms 151 MB/s; far backup done 2817 ms after the load, 4208 ms
#                in all (50 MB/s)
#
# A backup a round trip R away can receive at most one window per R, so with the default
# window (2MiB) at a 40 ms round trip it trails a load faster than about 50 MB/s.
#
# Run: benches/distant_backup.sh [--runs N] [--sets N] [--value-bytes N] [--delay-ms MS]
#      [--windows "2MiB 32MiB"]
#      (defaults 2, 3200, 65536, 20, "2MiB 32MiB"). A run takes 10-20 s; the load file is
#      written once under $TMPDIR and removed at the end, as is each run's directory. Needs
#      redis-cli (Debian's redis-tools).
set -euo pipefail

RUNS=2
SETS=3200
VALUE_BYTES=65536
DELAY_MS=20
WINDOWS="2MiB 32MiB"
ONE_RUN=
WINDOW=
while [[ $# -gt 0 ]]; do
    case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --sets) SETS=$2; shift 2 ;;
    --value-bytes) VALUE_BYTES=$2; shift 2 ;;
    --delay-ms) DELAY_MS=$2; shift 2 ;;
    --windows) WINDOWS=$2; shift 2 ;;
    --one-run) ONE_RUN=$2; WINDOW=$3; shift 3 ;; # internal: one run, its load file and window
    *)
        echo "usage: $0 [--runs N] [--sets N] [--value-bytes N] [--delay-ms MS] [--windows \"2MiB 32MiB\"]" >&2
        exit 2
        ;;
    esac
done
command -v redis-cli >/dev/null \
    || { echo "redis-cli is not on the PATH: install Debian's redis-tools" >&2; exit 1; }

if [[ -z $ONE_RUN ]]; then
    LOAD=$(mktemp "${TMPDIR:-/tmp}/understudy-distant.XXXXXX")
    trap 'rm -f "$LOAD"' EXIT
    python3 "$(dirname "$0")/set_load.py" "$SETS" "$VALUE_BYTES" far >"$LOAD"
    BYTES=$(stat -c %s "$LOAD")
    echo "a backup ${DELAY_MS} ms away each way: $RUNS run(s) per window of $SETS SETs of $VALUE_BYTES bytes ($((BYTES / 1000000)) MB);" \
        "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    for run in $(seq 1 "$RUNS"); do
        for window in $WINDOWS; do
            line=$("$0" --one-run "$LOAD" "$window" --delay-ms "$DELAY_MS" --sets "$SETS" 2>/dev/null | tail -n 1) || true
            if [[ $line != result* ]]; then
                echo "window $window: failed"
                continue
            fi
            read -r _ load_ms tail_ms <<<"$line"
            if [[ $load_ms -le 0 || $tail_ms -lt 0 ]]; then
                echo "window $window: failed (load $load_ms ms, tail $tail_ms ms)"
                continue
            fi
            all=$((load_ms + tail_ms))
            echo "window $window: load $load_ms ms $((BYTES / 1000 / load_ms)) MB/s; far backup done $tail_ms ms after the load, $all ms in all ($((BYTES / 1000 / all)) MB/s)"
        done
    done
    exit 0
fi

# One run: its own cluster and directory.
# shellcheck source-path=SCRIPTDIR source=../tests/scripts/lib.sh
source "$(dirname "$0")/../tests/scripts/lib.sh"
FAILOVER_TIMEOUT_MS=500
HEARTBEAT=50ms
NODE_ARGS+=(--replication-window "$WINDOW")
now_ms() { echo $(($(date +%s%N) / 1000000)); }

setup proxy
start_cluster
FAR=
for id in "${NODES[@]}"; do
    if [[ $id != "$PRIMARY" ]]; then FAR=$id; fi
done
proxy delay "$PRIMARY-$FAR" "$DELAY_MS"
proxy delay "$FAR-$PRIMARY" "$DELAY_MS"
"$CHAOS" settle --admin "$ADMINS" --timeout 30s >/dev/null || fail "the cluster did not settle before the load"
started=$(now_ms)
redis-cli -p "${CLIENT_PORT[$PRIMARY]}" --pipe --pipe-timeout 120 <"$ONE_RUN" >"$WORK/pipe.out" 2>&1 || true
loaded=$(now_ms)
grep -q "errors: 0, replies: $SETS" "$WORK/pipe.out" || fail "the load failed: $(tail -n 1 "$WORK/pipe.out")"
"$CHAOS" settle --admin "$ADMINS" --timeout 120s >/dev/null || fail "the far backup did not catch up within 120 s"
settled=$(now_ms)
[[ $(wait_primary 2s 2>/dev/null || echo none) == "$PRIMARY" ]] || fail "the primary changed during the run"
FAILED=0
echo "result $((loaded - started)) $((settled - loaded))"
