# bench/cluster.sh: a 3-node (node_count) loopback cluster of `strata server` nodes, sourced
# by spine.sh, registry.sh and config.sh after lib.sh. Expects $strata, $bench, $data and
# $node_count; every node gets the flags in cluster_node_flags (e.g. --dns-addr 127.0.0.1:0).
# shellcheck shell=bash
cluster=""
declare -A node_pid node_api node_raft node_starts node_extra

# Starts node $1 of the cluster in $cluster (on its previous ports and data dir when it ran
# before) and waits for its addresses.
start_node() {
    local id=$1 dir="$cluster/n$1" addrs pid
    mkdir -p "$dir"
    addrs="$dir/addrs.json"
    rm -f "$addrs"
    node_starts[$id]=$((${node_starts[$id]:-0} + 1))
    # shellcheck disable=SC2086 # node_extra holds flags meant to split
    STRATA_LOG=info,openraft=warn "$strata" server --id "$id" --data-dir "$dir/data" \
        --api-addr "${node_api[$id]:-127.0.0.1:0}" --raft-addr "${node_raft[$id]:-127.0.0.1:0}" \
        "${cluster_node_flags[@]}" \
        --addrs-file "$addrs" ${node_extra[$id]:-} >"$dir/log.${node_starts[$id]}" 2>&1 &
    pid=$!
    track "$pid"
    node_pid[$id]=$pid
    await_addrs "$pid" "$addrs" "node $id" "$dir/log.${node_starts[$id]}"
    node_api[$id]=$(jq -r .api "$addrs")
    node_raft[$id]=$(jq -r .raft "$addrs")
}

# The DNS address node $1 wrote at its start (empty when it serves no DNS). Read on demand,
# not in start_node, so that restarts timed by spine.sh pay for no extra jq.
dns_addr() { jq -r '.dns // empty' "$cluster/n$1/addrs.json"; }

# Comma-separated API URLs of the given node ids (default: every node).
endpoints() {
    local ids=("$@") id out=()
    ((${#ids[@]})) || ids=($(seq 1 "$node_count"))
    for id in "${ids[@]}"; do
        out+=("http://${node_api[$id]}")
    done
    local IFS=,
    echo "${out[*]}"
}

# `strata cluster status` as JSON from the given endpoints, bounded in time.
cluster_status() {
    timeout 5 "$strata" --endpoints "$1" --output json cluster status 2>/dev/null
}

# Prints the leader id as seen through the given endpoints (default: every node); fails when
# none is known.
leader_id() {
    local status leader
    status=$(cluster_status "${1:-$(endpoints)}") || return 1
    leader=$(jq -r '.leader // empty' <<<"$status")
    [[ -n $leader ]] || return 1
    echo "$leader"
}

voters_with_api() {
    local status count
    status=$(cluster_status "$(endpoints)") || return 1
    count=$(jq '[.members[] | select(.role != "learner" and .api_addr != "")] | length' \
        <<<"$status")
    ((count == node_count))
}

# Starts a fresh 3-node cluster in $data/$1: node 1 founds, 2 and 3 join.
start_cluster() {
    cluster="$data/$1"
    node_pid=() node_api=() node_raft=() node_starts=() node_extra=()
    log "starting a $node_count-node cluster in $cluster"
    node_extra[1]="--initial-cluster 1=127.0.0.1:0"
    start_node 1
    wait_until 30 "node 1 to be ready" ready "${node_api[1]}"
    local id
    for id in $(seq 2 "$node_count"); do
        start_node "$id"
        timeout 90 "$strata" --endpoints "$(endpoints $(seq 1 $((id - 1))))" cluster add-member \
            "$id" --raft-addr "${node_raft[$id]}" --api-addr "${node_api[$id]}" >/dev/null ||
            die "strata cluster add-member $id failed"
    done
    wait_until 60 "$node_count voters with API addresses" voters_with_api
    for id in $(seq 1 "$node_count"); do
        wait_until 30 "node $id to be ready" ready "${node_api[$id]}"
    done
    log "cluster up: $(endpoints)"
}

# Stops every node of the current cluster; sets cluster_exits to their exit statuses.
cluster_exits=""
stop_cluster() {
    local id exits=()
    for id in $(seq 1 "$node_count"); do
        is_ours "${node_pid[$id]}" || log "node $id (pid ${node_pid[$id]}) is not running at shutdown"
        stop_pid "${node_pid[$id]}"
        exits+=("$stopped_status")
    done
    cluster_exits=$(printf '%s\n' "${exits[@]}" | jq -sc .)
}

# Fails unless every node of the current cluster is still running.
check_nodes() {
    local id
    for id in $(seq 1 "$node_count"); do
        is_ours "${node_pid[$id]}" ||
            die "node $id exited during $1; see $cluster/n$id/log.${node_starts[$id]}"
    done
}

# VmRSS of every node of the current cluster, as a JSON array of MiB.
rss_json() {
    local id
    for id in $(seq 1 "$node_count"); do
        rss_mib "${node_pid[$id]}"
        echo
    done | jq -sc .
}

# panicked / ERROR / WARN line counts of the current cluster's logs so far, as JSON.
log_counts() {
    local panics errors warns
    panics=$(cat "$cluster"/n*/log.* | grep -c 'panicked' || true)
    errors=$(cat "$cluster"/n*/log.* | grep -c ' ERROR ' || true)
    warns=$(cat "$cluster"/n*/log.* | grep -c ' WARN ' || true)
    jq -nc --argjson p "$panics" --argjson e "$errors" --argjson w "$warns" \
        '{panics: $p, error_lines: $e, warn_lines: $w}'
}

# Runs strata-bench with a time cap of $1 seconds; its JSON line goes to stdout.
run_bench() {
    local cap=$1
    shift
    timeout --kill-after=10 "$cap" "$bench" "$@"
}
