#!/bin/sh
# --on-promote / --on-demote hook for Kubernetes: labels this pod `understudy-role=primary`
# or `understudy-role=backup` (from UNDERSTUDY_ROLE, which understudy sets), so that a
# Service selecting `understudy-role: primary` sends traffic to the primary's pod only.
# Uses the pod's service account (it needs `patch` on pods, see statefulset.yaml).
set -eu
sa=/var/run/secrets/kubernetes.io/serviceaccount
role=${UNDERSTUDY_ROLE:-backup}
[ "$role" = primary ] || role=backup
exec curl -sS --fail --max-time 5 \
    --cacert "$sa/ca.crt" -H "Authorization: Bearer $(cat "$sa/token")" \
    -H 'Content-Type: application/merge-patch+json' -X PATCH \
    --data "{\"metadata\":{\"labels\":{\"understudy-role\":\"$role\"}}}" \
    "https://kubernetes.default.svc/api/v1/namespaces/$(cat "$sa/namespace")/pods/$HOSTNAME" \
    -o /dev/null
