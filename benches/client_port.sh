#!/usr/bin/env bash
# The client port's cost and the failover time a client sees, on a three-node cluster on
# loopback started by `understudy demo` (heartbeat 50 ms, failover timeout 500 ms).
#
#   benches/client_port.sh              # both parts
#   benches/client_port.sh proxy        # redis-benchmark only
#   benches/client_port.sh failover     # the failover trials only
#
# proxy: `redis-benchmark -t set,get -d 128 -P 16 -c 50 -n $REQUESTS` against the
#   primary's key-value server directly, through the primary's client port (which hands
#   each connection to the server, which takes them: no proxy; `kv --no-take-clients`
#   would make it one proxy hop) and through a backup's client port (also one hop: on one host the backup's proxy
#   connects straight to the primary's server), $ROUNDS rounds in turn so that drift in
#   the machine's load hits all three alike; and PING (`-t ping_mbulk`, 5 x $REQUESTS),
#   which commits nothing, for the proxy's raw cost. After each redis-benchmark run, the
#   CPU seconds it cost the primary's and the backup's sidecars and the primary's server
#   (from /proc/PID/stat): a figure that other work on the machine disturbs far less than
#   throughput.
# failover: `understudy demo --trials $TRIALS`: kill -9 of the primary, time to the first
#   acknowledged write through a backup's client port, min/median/max.
#
# Needs redis-benchmark (Debian: apt-get install -y redis-tools). Results: benches/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
REQUESTS=${REQUESTS:-200000}
ROUNDS=${ROUNDS:-3}
TRIALS=${TRIALS:-10}

cargo build --release --quiet
bin=target/release/understudy

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg)"

if [[ $what == all || $what == proxy ]]; then
    if ! command -v redis-benchmark >/dev/null; then
        echo "redis-benchmark is missing: apt-get install -y redis-tools" >&2
        exit 1
    fi
    work=$(mktemp -d)
    "$bin" demo --keep --plain --phase 1s --dir "$work/demo" >"$work/demo.out" 2>&1 &
    demo=$!
    trap 'kill -INT $demo 2>/dev/null; wait $demo 2>/dev/null; rm -rf "$work"' EXIT
    for _ in $(seq 120); do
        grep -q "keeps running" "$work/demo.out" && break
        kill -0 $demo 2>/dev/null || { cat "$work/demo.out"; exit 1; }
        sleep 0.5
    done
    grep -q "keeps running" "$work/demo.out" || { cat "$work/demo.out"; exit 1; }
    # "  node N: redis-cli -p CLIENT    (client port; the server itself: 127.0.0.1:APP, ..."
    declare -A client app
    while read -r id port addr; do
        client[$id]=$port
        app[$id]=${addr##*:}
    done < <(sed -n 's/^  node \([0-9]\): redis-cli -p \([0-9]*\) .*the server itself: \([0-9.:]*\),.*/\1 \2 \3/p' "$work/demo.out")
    primary=$(redis-cli -p "${client[1]}" info replication | tr -d '\r' | sed -n 's/^primary_node://p')
    backup=1
    [[ $primary == 1 ]] && backup=2
    echo "primary: node $primary; backup port: node $backup's"
    # The processes listening on a port, and their CPU time in clock ticks (utime + stime).
    pid_on() { ss -ltnpH "sport = :$1" | sed -n 's/.*pid=\([0-9]*\),.*/\1/p' | head -1; }
    ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
    hz=$(getconf CLK_TCK)
    watched=("$(pid_on "${client[$primary]}")" "$(pid_on "${client[$backup]}")" "$(pid_on "${app[$primary]}")")
    # Runs redis-benchmark with the given arguments; prints its result lines and the CPU
    # seconds the primary's sidecar, the backup's sidecar and the primary's server used.
    bench() {
        local before=() after=() i
        for i in 0 1 2; do before[i]=$(ticks "${watched[i]}"); done
        redis-benchmark -h 127.0.0.1 "$@" -q 2>&1 | tr '\r' '\n' | grep -E '^[A-Z_]+: .*requests per second'
        for i in 0 1 2; do after[i]=$(ticks "${watched[i]}"); done
        awk -v hz="$hz" -v p="$((after[0] - before[0]))" -v b="$((after[1] - before[1]))" \
            -v s="$((after[2] - before[2]))" 'BEGIN { printf "cpu s: primary sidecar %.2f, backup sidecar %.2f, primary server %.2f\n", p / hz, b / hz, s / hz }'
    }
    declare -A label=(
        [direct]="the primary's server directly (port ${app[$primary]})"
        [primary]="the primary's client port (${client[$primary]})"
        [backup]="a backup's client port (${client[$backup]})"
    )
    declare -A port=([direct]=${app[$primary]} [primary]=${client[$primary]} [backup]=${client[$backup]})
    for round in $(seq "$ROUNDS"); do
        for target in direct primary backup; do
            echo "-- round $round: ${label[$target]}, load $(cut -d' ' -f1 /proc/loadavg)"
            bench -p "${port[$target]}" -t set,get -d 128 -P 16 -c 50 -n "$REQUESTS"
            # PING commits nothing: the proxy's own cost, with nothing else to hide it.
            bench -p "${port[$target]}" -t ping_mbulk -P 16 -c 50 -n "$((REQUESTS * 5))"
        done
    done
    kill -INT $demo
    wait $demo || true
    trap - EXIT
    rm -rf "$work"
fi

if [[ $what == all || $what == failover ]]; then
    "$bin" demo --plain --trials "$TRIALS" --phase 1s \
        --heartbeat-interval 50ms --failover-timeout 500ms |
        grep -E 'trials|kill -9 to|writes paused \(|each, ms|new primary|all [0-9]+ acknowledged'
fi
