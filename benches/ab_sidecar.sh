#!/usr/bin/env bash
# ab_sidecar.sh: two sidecar builds side by side, for a before-and-after of a change that
# claims (or might cost) speed.
#
# ROUNDS times, for build A then build B, a fresh 3-node cluster of tests/scripts/lib.sh
# (sidecar + key-value example per node, --fsync always, data dirs under $TMPDIR or /tmp)
# with that sidecar binary; after a warm-up (20,000 unpipelined SETs), two runs of
# redis-benchmark through the primary's client port: `-t set -d 128 -c 50 -n 50000` and
# `-t set -d 128 -c 50 -P 16 -n 300000`, then `-t get -d 128 -c 50 -n 50000` (the key the
# SETs wrote; each GET a lease read). Prints the rate and p50 of each run, then the medians
# per build. Alternating the builds spreads the machine's drift over both. With KV_A and
# KV_B set, each side runs its own key-value example binary too (a change to the example);
# otherwise both run $KV_BIN or target/release/examples/kv.
#
# Run: benches/ab_sidecar.sh BINARY_A BINARY_B [ROUNDS]   (default 3 rounds; about 30 s per
#      cluster). Build the "before" side from another checkout, e.g.
#      git worktree add /tmp/before HEAD~1 &&
#      (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release --bin understudy)
#      benches/ab_sidecar.sh /tmp/before-target/release/understudy target/release/understudy
#      KV_A=/tmp/before-target/release/examples/kv KV_B=target/release/examples/kv \
#        benches/ab_sidecar.sh /tmp/before-target/release/understudy target/release/understudy
# Needs redis-benchmark on the PATH (Debian's redis-tools).
set -euo pipefail

[[ $# -ge 2 ]] || { echo "usage: $0 BINARY_A BINARY_B [ROUNDS]" >&2; exit 2; }
A=$1
B=$2
ROUNDS=${3:-3}
for bin in "$A" "$B" ${KV_A:+"$KV_A"} ${KV_B:+"$KV_B"}; do
    [[ -x $bin ]] || { echo "$bin is not an executable" >&2; exit 2; }
done
command -v redis-benchmark >/dev/null || { echo "redis-benchmark is not on the PATH" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive number" >&2; exit 2; }
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT

# one_cluster SIDE BINARY [KV]: a fresh cluster with BINARY as its sidecar (and KV as its
# key-value example, if given), the three runs, one line "SIDE c50_rps c50_p50 p16_rps
# p16_p50 get_rps get_p50" appended to $RESULTS. In a subshell: lib.sh's cleanup stops the
# cluster when it ends.
one_cluster() (
    local side=$1
    export UNDERSTUDY_BIN=$2
    if [[ -n ${3:-} ]]; then
        export KV_BIN=$3
    fi
    HEARTBEAT=50ms
    FAILOVER_TIMEOUT_MS=500
    # shellcheck source-path=SCRIPTDIR source=../tests/scripts/lib.sh
    source "$BENCH_DIR/../tests/scripts/lib.sh"
    log() { printf '%s %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2; }
    NODE_ARGS=(--fsync always --app-timeout 5s)
    export RUST_LOG=info
    setup plain >&2
    start_cluster >&2
    local port=${CLIENT_PORT[$PRIMARY]} c50 p16 get
    redis-benchmark -h 127.0.0.1 -p "$port" -t set -d 128 -c 50 -n 20000 -q >/dev/null
    c50=$(redis-benchmark -h 127.0.0.1 -p "$port" -t set -d 128 -c 50 -n 50000 --csv \
        | tail -n 1 | cut -d, -f2,5 | tr -d '"' | tr , ' ')
    p16=$(redis-benchmark -h 127.0.0.1 -p "$port" -t set -d 128 -c 50 -P 16 -n 300000 --csv \
        | tail -n 1 | cut -d, -f2,5 | tr -d '"' | tr , ' ')
    get=$(redis-benchmark -h 127.0.0.1 -p "$port" -t get -d 128 -c 50 -n 50000 --csv \
        | tail -n 1 | cut -d, -f2,5 | tr -d '"' | tr , ' ')
    echo "$side $c50 $p16 $get" >>"$RESULTS"
    echo "$(date -u +%H:%M:%S) $side: -c 50 ${c50% *} SET/s (p50 ${c50#* } ms), -P 16 ${p16% *} SET/s (p50 ${p16#* } ms), GET -c 50 ${get% *}/s (p50 ${get#* } ms), load $(cut -d' ' -f1 /proc/loadavg)"
    FAILED=0
)

echo "A = $A"
echo "B = $B"
for _ in $(seq 1 "$ROUNDS"); do
    one_cluster A "$A" "${KV_A:-}"
    one_cluster B "$B" "${KV_B:-}"
done
for side in A B; do
    awk -v side="$side" '
        BEGIN { n = 0 }
        $1 == side { c50[n] = $2; p16[n] = $4; get[n] = $6; n++ }
        function median(v, n,    i, j, t) {
            for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            return n % 2 ? v[int(n / 2)] : (v[n / 2 - 1] + v[n / 2]) / 2
        }
        END { printf "%s: median -c 50 %.0f SET/s, median -P 16 %.0f SET/s, median GET -c 50 %.0f/s (%d clusters)\n", side, median(c50, n), median(p16, n), median(get, n), n }
    ' "$RESULTS"
done
