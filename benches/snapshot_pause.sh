#!/usr/bin/env bash
# snapshot_pause.sh: what the application's snapshots cost the clients of a primary.
#
# Starts the 3-node cluster of tests/scripts/lib.sh (sidecar + key-value example per node,
# release binaries, --fsync always) with --snapshot-interval EVERY, loads KEYS keys of
# 128-byte values (pipelined SETs), then runs `redis-benchmark -t set -d 128 -c 50` (not
# pipelined) ROUNDS times through the primary's client port, over the same keys. Every
# node snapshots its application every EVERY meanwhile. Prints each round's redis-benchmark
# CSV line (requests/s, average, min, p50, p95, p99, max latency in ms) and, from the
# primary's application, how long each snapshot's capture held it (capture_ms) and how long
# its encoding took on a blocking thread (encode_ms), and for each node the log fsyncs made
# during the rounds and how many took over 1, 10 and 25 ms (its /metrics). Compare with
# --every 10m (no snapshot) for the cost; TMPDIR=/dev/shm keeps the disk out of it.
#
# Run: benches/snapshot_pause.sh [--keys N] [--every D] [--rounds N] [--requests N]
#      (defaults 300000, 4s, 2, 300000). KV_BIN=path runs another key-value server build.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../tests/scripts/lib.sh
source "$(dirname "$0")/../tests/scripts/lib.sh"

KEYS=300000
EVERY=4s
ROUNDS=2
REQUESTS=300000
while [[ $# -gt 0 ]]; do
    case $1 in
    --keys) KEYS=$2; shift 2 ;;
    --every) EVERY=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    *) echo "usage: $0 [--keys N] [--every D] [--rounds N] [--requests N]" >&2; exit 2 ;;
    esac
done
command -v redis-benchmark >/dev/null || { echo "redis-benchmark is not installed" >&2; exit 2; }

HEARTBEAT=50ms
FAILOVER_TIMEOUT_MS=500
NODE_ARGS=(--fsync always --app-timeout 5s --snapshot-interval "$EVERY")
export RUST_LOG="info,understudy::client::driver::snapshot=debug"
setup plain
start_cluster
port=${CLIENT_PORT[$PRIMARY]}
log "loading $KEYS keys through node $PRIMARY's client port"
redis-benchmark -h 127.0.0.1 -p "$port" -t set -d 128 -c 50 -P 16 -r "$KEYS" \
    -n $((KEYS * 3)) -q >/dev/null
# fsyncs ID: node ID's log fsyncs so far, then those over 1, 10 and 25 ms.
fsyncs() {
    curl -s "127.0.0.1:${ADMIN_PORT[$1]}/metrics" | awk '
        /^understudy_fsync_seconds_count / { n = $2 }
        /^understudy_fsync_seconds_bucket\{le="0.001"\}/ { a = $2 }
        /^understudy_fsync_seconds_bucket\{le="0.01"\}/ { b = $2 }
        /^understudy_fsync_seconds_bucket\{le="0.025"\}/ { c = $2 }
        END { print n, n - a, n - b, n - c }'
}
declare -A FSYNCS_BEFORE
for id in "${NODES[@]}"; do FSYNCS_BEFORE[$id]=$(fsyncs "$id"); done
echo "test,rps,avg_ms,min_ms,p50_ms,p95_ms,p99_ms,max_ms  (snapshot every $EVERY, $KEYS keys, load $(cut -d' ' -f1 /proc/loadavg))"
for _ in $(seq "$ROUNDS"); do
    redis-benchmark -h 127.0.0.1 -p "$port" -t set -d 128 -c 50 -r "$KEYS" -n "$REQUESTS" \
        --csv | tail -n 1
done
for id in "${NODES[@]}"; do
    read -r n a b c <<<"${FSYNCS_BEFORE[$id]}"
    read -r n2 a2 b2 c2 <<<"$(fsyncs "$id")"
    echo "node $id: $((n2 - n)) log fsyncs, over 1 ms $((a2 - a)), over 10 ms $((b2 - b)), over 25 ms $((c2 - c))"
done
grep "captured and encoded" "$WORK/n$PRIMARY.kv.log" | sed 's/.*snapshot: //' || true
commit=$("$CHAOS" settle --admin "$ADMINS" --timeout 30s) || fail "the cluster did not settle"
for id in "${NODES[@]}"; do kill_node "$id"; done
check_logs "$commit"
FAILED=0
