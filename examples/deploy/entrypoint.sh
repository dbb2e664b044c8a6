#!/bin/sh
# Runs `understudy run` with its node id taken from the pod's name when UNDERSTUDY_NODE_ID
# is not set: a StatefulSet's pod `NAME-0` is node 1, `NAME-1` node 2, and so on (node ids
# start at 1). Every other flag comes from UNDERSTUDY_* variables or the arguments.
set -eu
if [ -z "${UNDERSTUDY_NODE_ID:-}" ]; then
    host=${HOSTNAME:-}
    ordinal=${host##*-}
    case $ordinal in
        ''|*[!0-9]*)
            echo "understudy-entrypoint: cannot take a node id from the host name "$host"; set UNDERSTUDY_NODE_ID" >&2
            exit 1 ;;
    esac
    UNDERSTUDY_NODE_ID=$((ordinal + 1))
    export UNDERSTUDY_NODE_ID
fi
exec "${UNDERSTUDY_BIN:-/usr/local/bin/understudy}" run "$@"
