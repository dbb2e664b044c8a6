# shellcheck shell=bash
# Helpers of the membership scripts (membership_churn.sh, membership_kill.sh), on top of
# lib.sh; sourced, not run.

# members_of ID: node ID's own latest configuration as "voters V learners L" (comma lists),
# from its `/members`; nothing if it does not answer.
members_of() {
    local body
    body=$(admin_get "${ADMIN_PORT[$1]}" /members 2>/dev/null | tr -d ' \t\r\n') || return 0
    local voters learners
    voters=$(grep -o '"voters":\[[0-9,]*\]' <<<"$body" | head -n 1 | tr -dc '0-9,')
    learners=$(grep -o '"learners":\[[0-9,]*\]' <<<"$body" | head -n 1 | tr -dc '0-9,')
    echo "voters $voters learners $learners"
}

# wait_members ID WANT [SECONDS]: waits until members_of ID prints WANT.
wait_members() {
    local _
    for _ in $(seq 1 $((${3:-15} * 10))); do
        [[ $(members_of "$1") == "$2" ]] && return 0
        sleep 0.1
    done
    return 1
}

# members_cmd ARGS...: `understudy members ARGS` through the primary's admin port, asked
# again while it fails (a restarted node not heard yet, a hand-over under way: as the
# command's answer says, the operator looks and asks again), for up to 20 s; an answer that
# the change is already made ("not a member" to a removal, "already a member" to an add)
# counts as done. Prints the last answer; status 1 if it never succeeded.
members_cmd() {
    local _ answer via
    for _ in $(seq 1 40); do
        via=$(wait_primary 15s) || return 1
        if answer=$("$UNDERSTUDY" members "$@" --admin "127.0.0.1:${ADMIN_PORT[$via]}" 2>&1) \
            || grep -q -e "is not a member" -e "already a member" <<<"$answer"; then
            echo "$answer"
            return 0
        fi
        sleep 0.5
    done
    echo "$answer"
    return 1
}

# dump_status: every node's /status into $WORK/status.ID, for a failure's post-mortem.
dump_status() {
    local id
    for id in "${NODES[@]}"; do
        admin_get "${ADMIN_PORT[$id]}" /status >"$WORK/status.$id" 2>&1 || true
    done
}

# list_of ID...: the ids in ascending order, comma-separated.
list_of() {
    printf '%s\n' "$@" | sort -n | paste -sd, -
}
