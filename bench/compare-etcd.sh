#!/usr/bin/env bash
# bench/compare-etcd.sh: Strata vs etcd 3.4 through the etcd v3 gRPC API (issue 3), on loopback.
#
#   1. installs the Debian packages etcd-server and etcd-client if missing, builds release;
#   2. starts a 3-node etcd 3.4 cluster (/usr/bin/etcd, default durability: fsync on commit)
#      and a 3-node Strata cluster (`strata server --grpc-addr`, fsync on commit), both with
#      their data on the real disk under bench/.data/, ports picked at run time;
#   3. drives both with one load generator (`strata-bench etcd-*`, the same client code for
#      both), runs interleaved etcd, strata, etcd, strata, ... for each workload, 3 rounds:
#        put of 256-byte values at 1, 16 and 128 clients; linearizable get and serializable
#        get at 128 clients; watch fan-out (1,000 watchers on one prefix, delivery latency of
#        a put); put at 16 clients on the two followers for 6 s, the leader frozen with SIGSTOP
#        from the first second on (then SIGCONT, and the cluster must be healthy again);
#   4. records VmRSS of every server after each run and the CPU time (user + system) all three
#      servers used during it, and reports medians of throughput, p50, p99, RSS per node and
#      server CPU per operation as a markdown table.
#
# Writes every raw number, the machine, the commit and the settings to
# bench/results/compare-etcd-<UTC timestamp>.json (-quick.json with --quick). The last line of
# output is exactly
#   RATIO put=<x> get_linearizable=<x> get_serializable=<x> put_p99=<x>
# each figure Strata divided by etcd at 128 clients (throughputs: higher is better for Strata;
# put_p99: lower is better for Strata), 2 decimals.
#
# Usage: bash bench/compare-etcd.sh [--quick] [--rounds N] [--connections-per-member N]
#                                   [--workloads ID,...] [--auth] [--tls] [--no-build]
#                                   [--keep-data] [--results FILE]
#
# Every process this script starts is tracked by PID and stopped on exit (SIGTERM, then
# SIGKILL after 15 s); it never signals processes it did not start.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

# --help prints lines 2-29 above, then this.
options_help() {
    cat <<'EOF'

Options:
  --quick         smoke run: 1 round, small request counts, watch with 100 watchers
                  (well under 3 minutes after the build)
  --rounds N      rounds of every workload on each system (default 3; 1 with --quick)
  --connections-per-member N
                  HTTP/2 connections the load generator opens to each member, shared by
                  all its clients (default 1, as an etcd client library holds them; never
                  more connections than clients)
  --workloads ID,...
                  run only these workloads (put_1, put_16, put_128, get_linearizable,
                  get_serializable, watch, paused_leader_put_16)
  --auth          access control on in both systems, set up the same way through etcdctl:
                  root, a role with readwrite on the prefix bench/, a user with that role;
                  the load generator logs in as that user (--user) and sends its token
  --tls           TLS on both systems with one CA made by `strata cert`: client listeners
                  require a client certificate (etcd --client-cert-auth, Strata
                  --tls-client-auth require) and peers speak mutual TLS; every client
                  (etcdctl, strata, the load generator) presents one
  --no-build      use the release binaries already in target/release
  --keep-data     keep bench/.data/compare-etcd-<stamp> (logs, data dirs) after a clean run
  --results FILE  write the JSON results here instead of bench/results/
EOF
}

# --rounds N and --auth, next to the options every benchmark takes (parse_options in lib.sh).
rounds=""
auth=0
tls=0
per_member=1
only_workloads=""
own_option() {
    case "$1" in
    --workloads)
        only_workloads="${2:?--workloads needs a comma-separated list of workload ids}"
        option_args=2
        ;;
    --rounds)
        rounds="${2:?--rounds needs a number}"
        option_args=2
        ;;
    --connections-per-member)
        per_member="${2:?--connections-per-member needs a number}"
        option_args=2
        ;;
    --auth)
        auth=1
        option_args=1
        ;;
    --tls)
        tls=1
        option_args=1
        ;;
    *) return 1 ;;
    esac
}
# The common options (lib.sh): sets quick, build, keep_data and results_file.
parse_options 29 "$@"

# --- settings -------------------------------------------------------------------------------
if ((quick)); then
    default_rounds=1
    puts_1=300
    puts_16=3000
    puts_128=8000
    gets=10000
    watchers=100
    watch_puts=5
    max_seconds=15
else
    default_rounds=3
    puts_1=3000
    puts_16=30000
    puts_128=60000
    gets=100000
    watchers=1000
    watch_puts=50
    max_seconds=60
fi
rounds=${rounds:-$default_rounds}
[[ $rounds =~ ^[1-9][0-9]?$ ]] || {
    echo "--rounds must be a number from 1 to 99" >&2
    exit 2
}
[[ $per_member =~ ^[1-9][0-9]?$ ]] || {
    echo "--connections-per-member must be a number from 1 to 99" >&2
    exit 2
}
value_size=256
many_clients=128
node_count=3

# cd to the repository; names the data dir and results file; checks for these tools (lib.sh).
bench_setup compare-etcd jq curl flock cargo awk
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
etcd=/usr/bin/etcd
our_exes+=("$etcd")

# etcdctl (v3 API) against the given comma-separated HOST:PORT list, bounded in time; as root
# once --auth has turned access control on.
ctl_user=()
ctl_tls=()
scheme=http
ctl() {
    local endpoints=$1
    shift
    ETCDCTL_API=3 timeout 10 etcdctl --endpoints "$endpoints" --dial-timeout 2s \
        --command-timeout 5s "${ctl_tls[@]}" "${ctl_user[@]}" "$@"
}

# --auth: the same users, role and grant in etcd and in Strata, through etcdctl.
root_password="bench-root-$RANDOM$RANDOM"
bench_password="bench-user-$RANDOM$RANDOM"
enable_auth() {
    local endpoints=$1
    ctl "$endpoints" user add "root:$root_password" >&3
    ctl "$endpoints" user grant-role root root >&3
    ctl "$endpoints" role add bench >&3
    ctl "$endpoints" role grant-permission bench --prefix=true readwrite bench/ >&3
    ctl "$endpoints" user add "bench:$bench_password" >&3
    ctl "$endpoints" user grant-role bench bench >&3
    ctl "$endpoints" auth enable >&3
}

# --- 1. packages and build ------------------------------------------------------------------
etcd_packages_and_build

mkdir -p "$data" "$(dirname "$results_file")"

# --tls: one CA, one certificate for every node (its address is 127.0.0.1) and one for the
# clients; both systems get the same files.
etcd_tls=()
strata_tls=()
if ((tls)); then
    pki="$data/pki"
    "$strata" cert init --dir "$pki" >&3
    "$strata" cert issue node --host 127.0.0.1,localhost --dir "$pki" >&3
    "$strata" cert issue client --dir "$pki" >&3
    scheme=https
    ctl_tls=(--cacert "$pki/ca.pem" --cert "$pki/client.pem" --key "$pki/client-key.pem")
    # One CA signs peers and clients, so both systems accept only the node certificate's name
    # from peers (etcd --peer-cert-allowed-cn, Strata --peer-tls-allowed-name).
    etcd_tls=(--cert-file "$pki/node.pem" --key-file "$pki/node-key.pem" --client-cert-auth
        --trusted-ca-file "$pki/ca.pem" --peer-cert-file "$pki/node.pem"
        --peer-key-file "$pki/node-key.pem" --peer-client-cert-auth
        --peer-trusted-ca-file "$pki/ca.pem" --peer-cert-allowed-cn node)
    strata_tls=(--tls-cert "$pki/node.pem" --tls-key "$pki/node-key.pem" --tls-ca "$pki/ca.pem"
        --tls-client-auth require --peer-tls-cert "$pki/node.pem"
        --peer-tls-key "$pki/node-key.pem" --peer-tls-ca "$pki/ca.pem"
        --peer-tls-allowed-name node)
    # The strata CLI and the load generator read these.
    export STRATA_CACERT="$pki/ca.pem" STRATA_CERT="$pki/client.pem" STRATA_KEY="$pki/client-key.pem"
    export STRATA_BENCH_CACERT="$pki/ca.pem" STRATA_BENCH_CERT="$pki/client.pem"
    export STRATA_BENCH_CERT_KEY="$pki/client-key.pem"
    log "TLS on in both: client certificates required, mutual TLS between peers"
fi
# A Strata node's API answers /readyz (over TLS with the client certificate under --tls).
node_ready() {
    if ((tls)); then
        curl -sf -o /dev/null --connect-timeout 0.5 --max-time 1 "${ctl_tls[@]}" "https://$1/readyz"
    else
        ready "$1"
    fi
}

# --- 2a. three-node etcd cluster ------------------------------------------------------------
declare -A etcd_pid etcd_client
etcd_initial=()
declare -A etcd_peer
# Ports picked by binding 127.0.0.1:0 (six at once, so they differ) and releasing them; etcd
# binds them right after.
mapfile -t ports < <("$bench" free-ports --count $((2 * node_count)))
((${#ports[@]} == 2 * node_count)) || die "strata-bench free-ports gave ${#ports[@]} ports"
for id in $(seq 1 "$node_count"); do
    etcd_client[$id]="127.0.0.1:${ports[$((2 * id - 2))]}"
    etcd_peer[$id]="127.0.0.1:${ports[$((2 * id - 1))]}"
    etcd_initial+=("etcd-$id=$scheme://${etcd_peer[$id]}")
done
initial_cluster=$(IFS=,; echo "${etcd_initial[*]}")
log "starting a $node_count-member etcd $etcd_version cluster in $data"
for id in $(seq 1 "$node_count"); do
    dir="$data/etcd-$id"
    mkdir -p "$dir"
    # Everything not given here is etcd's default: fsync of the WAL on every commit,
    # heartbeat 100 ms, election timeout 1 s, snapshot every 100,000 entries.
    "$etcd" --name "etcd-$id" --data-dir "$dir/data" \
        --listen-client-urls "$scheme://${etcd_client[$id]}" \
        --advertise-client-urls "$scheme://${etcd_client[$id]}" \
        --listen-peer-urls "$scheme://${etcd_peer[$id]}" \
        --initial-advertise-peer-urls "$scheme://${etcd_peer[$id]}" "${etcd_tls[@]}" \
        --initial-cluster "$initial_cluster" --initial-cluster-state new \
        --initial-cluster-token "compare-etcd-$stamp" \
        --logger zap --log-outputs stderr --log-level warn >"$dir/log" 2>&1 &
    etcd_pid[$id]=$!
    track "${etcd_pid[$id]}"
done
etcd_endpoints=$(for id in $(seq 1 "$node_count"); do echo "${etcd_client[$id]}"; done | paste -sd,)
etcd_healthy() {
    local id
    for id in $(seq 1 "$node_count"); do
        alive "${etcd_pid[$id]}" || die "etcd-$id exited while starting; see $data/etcd-$id/log"
    done
    ctl "$etcd_endpoints" endpoint health
}
wait_until 60 "the etcd cluster to be healthy" etcd_healthy
log "etcd up: $etcd_endpoints"

# --- 2b. three-node Strata cluster ----------------------------------------------------------
declare -A node_pid node_api node_raft node_grpc node_extra

# Starts Strata node $1 and waits for its addresses.
start_node() {
    local id=$1 dir="$data/strata-$1" addrs pid
    mkdir -p "$dir"
    addrs="$dir/addrs.json"
    rm -f "$addrs"
    # shellcheck disable=SC2086 # node_extra holds flags meant to split
    "$strata" server --id "$id" --data-dir "$dir/data" \
        --api-addr 127.0.0.1:0 --raft-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
        --addrs-file "$addrs" "${strata_tls[@]}" ${node_extra[$id]:-} >"$dir/log" 2>&1 &
    pid=$!
    track "$pid"
    node_pid[$id]=$pid
    await_addrs "$pid" "$addrs" "strata node $id" "$dir/log"
    node_api[$id]=$(jq -r .api "$addrs")
    node_raft[$id]=$(jq -r .raft "$addrs")
    node_grpc[$id]=$(jq -r '.grpc // empty' "$addrs")
    [[ -n ${node_grpc[$id]} ]] || die "strata node $id has no gRPC address in $addrs"
}

strata_api_endpoints() {
    local ids=("$@") id out=()
    for id in "${ids[@]}"; do
        out+=("$scheme://${node_api[$id]}")
    done
    (IFS=,; echo "${out[*]}")
}


voters_with_api() {
    local status count
    status=$(timeout 5 "$strata" --endpoints "$(strata_api_endpoints $(seq 1 "$node_count"))" \
        --output json cluster status 2>/dev/null) || return 1
    count=$(jq '[.members[] | select(.role != "learner" and .api_addr != "")] | length' \
        <<<"$status")
    ((count == node_count))
}

log "starting a $node_count-node Strata cluster in $data"
node_extra[1]="--initial-cluster 1=127.0.0.1:0"
start_node 1
wait_until 30 "strata node 1 to be ready" node_ready "${node_api[1]}"
for id in $(seq 2 "$node_count"); do
    start_node "$id"
    timeout 90 "$strata" --endpoints "$(strata_api_endpoints $(seq 1 $((id - 1))))" \
        cluster add-member "$id" --raft-addr "${node_raft[$id]}" \
        --api-addr "${node_api[$id]}" >/dev/null || die "strata cluster add-member $id failed"
done
wait_until 60 "$node_count Strata voters with API addresses" voters_with_api
for id in $(seq 1 "$node_count"); do
    wait_until 30 "strata node $id to be ready" node_ready "${node_api[$id]}"
done
strata_endpoints=$(for id in $(seq 1 "$node_count"); do echo "${node_grpc[$id]}"; done | paste -sd,)
wait_until 30 "Strata's etcd API to be healthy" ctl "$strata_endpoints" endpoint health
log "strata up: gRPC $strata_endpoints"
if ((auth)); then
    enable_auth "$etcd_endpoints"
    enable_auth "$strata_endpoints"
    ctl_user=(--user "root:$root_password")
    export STRATA_BENCH_USER="bench:$bench_password"
    log "access control on in both: the load generator logs in as bench (readwrite on bench/)"
fi

# --- leaders and endpoint order -------------------------------------------------------------
# The endpoint (HOST:PORT) whose member reports itself as the leader, via the etcd API.
leader_endpoint() {
    ctl "$1" endpoint status -w json |
        jq -r '.[] | select(.Status.leader == .Status.header.member_id) | .Endpoint' |
        awk 'NR == 1'
}

# Prints the system's endpoints with the followers first and the leader last. Clients and
# connections are assigned round-robin from the first endpoint, so the 1-client runs of both
# systems go through a follower (which forwards to the leader), and every other run spreads
# evenly over all members whatever the order.
ordered_endpoints() {
    local endpoints=$1 leader ep followers=()
    leader=$(leader_endpoint "$endpoints") || return 1
    [[ -n $leader ]] || return 1
    leader=${leader#http://}
    leader=${leader#https://}
    for ep in ${endpoints//,/ }; do
        [[ $ep == "$leader" ]] || followers+=("$ep")
    done
    ((${#followers[@]} == node_count - 1)) || return 1
    (IFS=,; echo "${followers[*]},$leader")
}

# --- 3. workloads ---------------------------------------------------------------------------
# id|strata-bench arguments (the endpoints are added per system).
workloads=(
    "put_1|etcd-put --clients 1 --requests $puts_1 --value-size $value_size"
    "put_16|etcd-put --clients 16 --requests $puts_16 --value-size $value_size"
    "put_$many_clients|etcd-put --clients $many_clients --requests $puts_128 --value-size $value_size"
    "get_linearizable|etcd-get --clients $many_clients --requests $gets --value-size $value_size"
    "get_serializable|etcd-get --clients $many_clients --requests $gets --value-size $value_size --serializable"
    "watch|etcd-watch --watchers $watchers --puts $watch_puts --value-size $value_size"
    # 16 clients on the two followers for 6 s; the leader is frozen (SIGSTOP) after the first
    # second (the clients warm up through it first) until the run ends.
    "paused_leader_put_16|etcd-put --clients 16 --requests 1000000 --value-size $value_size --max-seconds 6"
)
if [[ -n $only_workloads ]]; then
    chosen=()
    for workload in "${workloads[@]}"; do
        [[ ,$only_workloads, == *",${workload%%|*},"* ]] && chosen+=("$workload")
    done
    ((${#chosen[@]})) || die "--workloads $only_workloads names none of: $(printf '%s ' "${workloads[@]%%|*}")"
    workloads=("${chosen[@]}")
fi

# The pid of the member of $1 (etcd or strata) serving client endpoint $2.
pid_of_endpoint() {
    local system=$1 endpoint=$2 node
    for node in $(seq 1 "$node_count"); do
        case $system in
        etcd) [[ ${etcd_client[$node]} == "$endpoint" ]] && echo "${etcd_pid[$node]}" ;;
        strata) [[ ${node_grpc[$node]} == "$endpoint" ]] && echo "${node_pid[$node]}" ;;
        esac
    done
    return 0
}

# The connections of a run: --connections-per-member on each member, but not more than the
# run has clients (or watchers), as etcd's benchmark tool never opens more than it uses. The
# paused-leader run uses the followers only.
connections_for() {
    local clients=1 members=$node_count
    while (($#)); do
        case $1 in
        --clients | --watchers) clients=$2 ;;
        --max-seconds) ;;
        esac
        shift
    done
    [[ $id == paused_leader_* ]] && members=$((node_count - 1))
    local total=$((per_member * members))
    ((total < clients)) || total=$clients
    echo "$total"
}

runs_file="$data/runs.jsonl"
: >"$runs_file"
declare -A order
for round in $(seq 1 "$rounds"); do
    order[etcd]=$(ordered_endpoints "$etcd_endpoints") || die "no etcd leader found"
    order[strata]=$(ordered_endpoints "$strata_endpoints") || die "no Strata leader found"
    log "round $round/$rounds: etcd leader ${order[etcd]##*,}, strata leader ${order[strata]##*,}"
    for workload in "${workloads[@]}"; do
        id=${workload%%|*}
        read -r -a args <<<"${workload#*|}"
        for system in etcd strata; do
            pids=()
            for node in $(seq 1 "$node_count"); do
                case $system in
                etcd) pids+=("${etcd_pid[$node]}") ;;
                strata) pids+=("${node_pid[$node]}") ;;
                esac
            done
            extra=(--key-prefix "bench/r$round/$id/" --connections "$(connections_for "${args[@]}")")
            [[ $id == watch ]] && extra=(--prefix "bench/r$round/watch/" --connections "$(connections_for "${args[@]}")")
            [[ $id == get_* ]] && extra=(--key "bench/get/key" --connections "$(connections_for "${args[@]}")")
            [[ $id == watch || $id == paused_leader_* ]] || extra+=(--max-seconds "$max_seconds")
            frozen=""
            cpu_before=$(cpu_ticks_sum "${pids[@]}")
            if [[ $id == paused_leader_* ]]; then
                # The clients use the followers only; the leader is frozen one second in.
                frozen=$(pid_of_endpoint "$system" "${order[$system]##*,}")
                [[ -n $frozen ]] || die "no pid for the $system leader ${order[$system]##*,}"
                timeout $((max_seconds + 120)) "$bench" "${args[@]}" "${extra[@]}" \
                    --endpoints "${order[$system]%,*}" >"$data/paused.out" 2>>"$data/bench.stderr" &
                bench_pid=$!
                sleep 1
                kill -STOP "$frozen"
                wait "$bench_pid" ||
                    die "strata-bench $id against $system (round $round) failed; see $data/bench.stderr"
                line=$(cat "$data/paused.out")
            else
                line=$(timeout $((max_seconds + 120)) "$bench" "${args[@]}" "${extra[@]}" \
                    --endpoints "${order[$system]}" 2>>"$data/bench.stderr") ||
                    die "strata-bench $id against $system (round $round) failed; see $data/bench.stderr"
            fi
            if [[ -n $frozen ]]; then
                kill -CONT "$frozen"
                case $system in
                etcd) wait_until 60 "etcd to be healthy after the pause" ctl "$etcd_endpoints" endpoint health ;;
                strata) wait_until 60 "Strata to be healthy after the pause" ctl "$strata_endpoints" endpoint health ;;
                esac
            fi
            rss=()
            for pid in "${pids[@]}"; do
                alive "$pid" || die "a $system server (pid $pid) died during $id"
                rss+=("$(rss_mib "$pid")")
            done
            cpu_ms=$((($(cpu_ticks_sum "${pids[@]}") - cpu_before) * 1000 / clk_tck))
            rss_json=$(printf '%s\n' "${rss[@]}" | jq -sc .)
            line=$(jq -c --arg system "$system" --arg id "$id" --argjson round "$round" \
                --argjson rss "$rss_json" --arg leader "${order[$system]##*,}" \
                --argjson cpu_ms "$cpu_ms" \
                '{system: $system, id: $id, round: $round, leader_endpoint: $leader,
                  rss_mib: $rss, server_cpu_ms: $cpu_ms,
                  server_cpu_us_per_op: (if .requests > 0
                    then ($cpu_ms * 1000 / .requests * 10 | round / 10) else null end)} + .' <<<"$line")
            echo "$line" >>"$runs_file"
            log "$(printf '%-16s %-6s r%s: %9s ops/s  p50 %7s ms  p99 %7s ms  errors %s  RSS %s MiB  CPU %s us/op' \
                "$id" "$system" "$round" "$(jq -r .throughput <<<"$line")" \
                "$(jq -r .p50_ms <<<"$line")" "$(jq -r .p99_ms <<<"$line")" \
                "$(jq -r .errors <<<"$line")" "${rss[*]}" "$(jq -r .server_cpu_us_per_op <<<"$line")")"
        done
    done
done

# --- shut both clusters down ----------------------------------------------------------------
# Strata log lines are counted before the shutdown: a leader logs an ERROR for each peer that
# stops before it does, which says nothing about the run.
strata_log_lines() { cat "$data"/strata-*/log | grep -c "$1" || true; }
panics=$(strata_log_lines 'panicked')
error_lines=$(strata_log_lines ' ERROR ')
# The first few distinct ERROR messages (timestamps cut), to tell noise from trouble.
error_samples=$({ cat "$data"/strata-*/log | grep -e ' ERROR ' -e 'panicked' || true; } |
    cut -d' ' -f2- | cut -c1-300 | sort | uniq -c | sort -rn | awk 'NR <= 5' |
    jq -Rsc 'split("\n") | map(select(length > 0))')
for id in $(seq 1 "$node_count"); do
    stop_pid "${node_pid[$id]}"
    stop_pid "${etcd_pid[$id]}"
done

# --- results --------------------------------------------------------------------------------
recorded_options=()
[[ $rounds == "$default_rounds" ]] || recorded_options=(--rounds "$rounds")
((per_member == 1)) || recorded_options+=(--connections-per-member "$per_member")
[[ -z $only_workloads ]] || recorded_options+=(--workloads "$only_workloads")
((auth == 0)) || recorded_options+=(--auth)
((tls == 0)) || recorded_options+=(--tls)
# run_info: when, command, commit, machine (lib.sh).
describe_run "${recorded_options[@]}"
workload_ids=$(for workload in "${workloads[@]}"; do echo "${workload%%|*}"; done | jq -Rsc 'split("\n") | map(select(length > 0))')

jq -n --argjson run_info "$run_info" --arg etcd_version "$etcd_version" \
    --argjson rounds "$rounds" --argjson value_size "$value_size" \
    --argjson puts_1 "$puts_1" --argjson puts_16 "$puts_16" --argjson puts_128 "$puts_128" \
    --argjson gets "$gets" --argjson watchers "$watchers" --argjson watch_puts "$watch_puts" \
    --argjson max_seconds "$max_seconds" --argjson many "$many_clients" \
    --argjson ids "$workload_ids" --slurpfile runs "$runs_file" \
    --argjson panics "$panics" --argjson errors "$error_lines" \
    --argjson error_samples "$error_samples" --argjson auth "$auth" --argjson tls "$tls" \
    --argjson per_member "$per_member" '
    def median: map(select(. != null)) | sort |
        if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end | if . == null then null
        else . * 1000 | round / 1000 end;
    def summary($id; $system): [$runs[] | select(.id == $id and .system == $system)] as $r | {
        runs: ($r | length),
        throughput: ([$r[].throughput] | median),
        p50_ms: ([$r[].p50_ms] | median),
        p99_ms: ([$r[].p99_ms] | median),
        max_ms: ([$r[].max_ms] | median),
        worst_ms: ([$r[].max_ms] | map(select(. != null)) | max),
        rss_mib: [range(0; ($r[0].rss_mib | length)) as $i | [$r[].rss_mib[$i]] | median],
        server_cpu_us_per_op: ([$r[].server_cpu_us_per_op] | median),
        errors: ([$r[].errors] | add)
    };
    def ratio($a; $b): if $a == null or $b == null or $b == 0 then null
        else ($a / $b * 100 | round / 100) end;
    ([$ids[] as $id | {key: $id, value: {etcd: summary($id; "etcd"),
                                         strata: summary($id; "strata")}}] | from_entries)
        as $summary |
    {benchmark: "compare-etcd"} + $run_info + {
        config: {
            nodes_per_cluster: 3, etcd_version: $etcd_version,
            durability: "both default: fsync on every commit",
            rounds: $rounds, order: "per workload: etcd then strata, every round",
            value_size: $value_size, requests_per_run: {put_1: $puts_1, put_16: $puts_16,
                ("put_" + ($many | tostring)): $puts_128, get: $gets},
            get_clients: $many, watchers: $watchers, watch_puts: $watch_puts,
            max_seconds_per_run: $max_seconds,
            tls: (if $tls == 1 then "on in both: client certificates required (etcd --client-cert-auth, Strata --tls-client-auth require), mutual TLS between peers, one CA" else "off" end),
            access_control: (if $auth == 1 then "on in both: user bench, role with readwrite on prefix bench/, token sent on every call" else "off" end),
            connections_per_member: $per_member,
            connections: "\($per_member) HTTP/2 connection(s) per member (never more than clients), clients round-robin over them; endpoints listed followers first"
        },
        summary: $summary,
        ratio: {
            put: ratio($summary["put_\($many)"].strata.throughput; $summary["put_\($many)"].etcd.throughput),
            get_linearizable: ratio($summary.get_linearizable.strata.throughput; $summary.get_linearizable.etcd.throughput),
            get_serializable: ratio($summary.get_serializable.strata.throughput; $summary.get_serializable.etcd.throughput),
            put_p99: ratio($summary["put_\($many)"].strata.p99_ms; $summary["put_\($many)"].etcd.p99_ms),
            worst_put: ratio([$summary | to_entries[] | select(.key | startswith("put_")) | .value.strata.worst_ms] | max;
                             [$summary | to_entries[] | select(.key | startswith("put_")) | .value.etcd.worst_ms] | max)
        },
        strata_logs: {panics: $panics, error_lines: $errors, error_samples: $error_samples},
        raw: $runs
    }' >"$results_file"

# --- summary --------------------------------------------------------------------------------
print_summary '
    def pretty: {put_1: "put, 1 client", put_16: "put, 16 clients", put_128: "put, 128 clients",
                get_linearizable: "get linearizable, 128 clients",
                get_serializable: "get serializable, 128 clients",
                watch: "watch fan-out, delivery latency",
                paused_leader_put_16: "put, 16 clients on the followers, leader frozen"}[.] // .;
    heading("Strata vs etcd \(.config.etcd_version) over the etcd v3 API"),
    "medians of \(.config.rounds) interleaved run(s) per cell; watch: \(.config.watchers) watchers, \(.config.watch_puts) puts, throughput = deliveries/s",
    "",
    "| workload | system | throughput (ops/s) | p50 (ms) | p99 (ms) | worst (ms) | RSS per node after (MiB) | server CPU per op (µs, all nodes) | errors |",
    "|---|---|---:|---:|---:|---:|---|---:|---:|",
    (.summary | to_entries[] | .key as $id | .value | to_entries[] |
        "| \($id | pretty) | \(.key) | \(.value.throughput | f) | \(.value.p50_ms | f) | \(.value.p99_ms | f) | \(.value.worst_ms | f) | \(.value.rss_mib | map(f) | join(" / ")) | \(.value.server_cpu_us_per_op | f) | \(.value.errors | f) |"),
    "",
    ([.summary | to_entries[] | select(.key | startswith("put_"))] as $puts |
        "worst single put over every put run: strata \([$puts[].value.strata.worst_ms] | max | f) ms, etcd \([$puts[].value.etcd.worst_ms] | max | f) ms (ratio \(.ratio.worst_put | f))"),
    "",
    "| workload | strata / etcd throughput | strata / etcd p50 | strata / etcd p99 |",
    "|---|---:|---:|---:|",
    (.summary | to_entries[] | .key as $id | .value as $v |
        def r($a; $b): if $a == null or $b == null or $b == 0 then "-"
            else ($a / $b * 100 | round / 100 | tostring) end;
        "| \($id | pretty) | \(r($v.strata.throughput; $v.etcd.throughput)) | \(r($v.strata.p50_ms; $v.etcd.p50_ms)) | \(r($v.strata.p99_ms; $v.etcd.p99_ms)) |"),
    "",
    "strata logs: \(.strata_logs.panics) panics, \(.strata_logs.error_lines) ERROR lines"
'
jq -r '
    def x: if . == null then "nan" else . end;
    .ratio | "\(.put | x) \(.get_linearizable | x) \(.get_serializable | x) \(.put_p99 | x)"
' "$results_file" | {
    read -r put get_lin get_ser put_p99
    printf 'RATIO put=%.2f get_linearizable=%.2f get_serializable=%.2f put_p99=%.2f\n' \
        "$put" "$get_lin" "$get_ser" "$put_p99"
}
