#!/usr/bin/env bash
# bench/scale.sh: Strata vs etcd 3.4 holding a million keys, through the etcd v3 gRPC API.
#
#   1. installs the Debian packages etcd-server and etcd-client if missing, builds release;
#   2. starts a 3-member etcd 3.4 cluster (/usr/bin/etcd, default durability, with
#      --quota-backend-bytes 8 GiB so phase B fits) and a 3-node Strata cluster (node 1 founds
#      with --initial-cluster 1=127.0.0.1:0, 2 and 3 join by `strata cluster add-member`),
#      side by side, data on the real disk under bench/.data/, ports picked at run time;
#   3. load A: `strata-bench etcd-put`, 128 clients, 1,000,000 keys of 256 bytes under
#      scale/a/ (endpoints followers first, leader last; each load after a `sync`, so neither
#      runs beside the writeback of the other's): throughput, p50/p99/max, and the per-second
#      p99s (median = steady, worst = a stall, and the second it came), with when each Strata
#      member built a snapshot (from its log) and which of them overlap the worst second, and
#      the slow steps (log commits, apply batches, runtime timers of 50 ms or more) members
#      logged, with those that ended in the worst second or the one after;
#      then VmRSS and `du -sb` per member;
#   4. reads: every key of scale/a/ paged (`etcd-range-all`, pages of 1,000) and its history
#      replayed by a watch (`etcd-watch-replay`) over the last 99,000 revisions (Strata keeps
#      100,000 by default, so revision 1 is not readable on both), through one follower each;
#   5. compaction at the current revision (`etcdctl compact --physical`) on both; etcd then
#      needs `etcdctl defrag` on every member to give disk back (disk reported after each);
#      Strata gets no defrag: its data dirs are sampled every second for up to 60 s until they
#      stop shrinking, and what was seen is written down as a note; RSS after;
#   6. restart: kill -9 one follower of each, restart it with the same flags and data dir and
#      time until it serves a linearizable read through its own endpoint and has caught up;
#   7. join: a 4th, empty member is added to each (after a `sync`, so each starts on a disk
#      with nothing left to write back), timed until a serializable count of scale/a/ through
#      its own endpoint equals the cluster's; then it is removed and stopped;
#   8. load B: 100,000 keys of 16 KiB under scale/b/ (skipped with --skip-b or when less than
#      12 GiB is free on the data disk), same figures as load A, RSS and disk after;
#   9. registry (Strata only), last, so that every footprint compared with etcd is taken with
#      the same data in both: `strata-bench registry-register`, 64 clients, 50,000
#      registrations in five runs of 10,000 on a registry holding no instances; then 100,000
#      persistent instances over 100 services; then the same five runs again (full / empty
#      ratio of the median runs: one run that meets a member's snapshot does not decide it);
#      each measured run starts once the data dirs have held still for 3 s (at most 60 s), so
#      that neither is measured beside the snapshots the load before it set off; RSS and disk
#      after. Twice: first on the loaded cluster (its store holds loads A and B, ~2 GB, whose
#      snapshots land in whichever run reaches the node's next snapshot index), reported as
#      `registry_loaded`; then, with both clusters stopped and their data deleted (its page
#      cache would otherwise fill memory), on five fresh 3-node Strata
#      clusters in turn (one with --quick) whose stores hold nothing else (after an untimed
#      warm-up of as many KV puts as a measured run has registrations), `registry_fresh_N`:
#      the median of their ratios is the one the target is about (registrations with 100,000
#      instances stored against an empty store).
#
# Writes every raw number, the machine, the commit and the settings to
# bench/results/scale-<UTC timestamp>.json (-quick.json with --quick), prints a markdown table
# per phase, and as the last line exactly
#   RESULT put_ratio=<x> worst_window_p99_over_steady=<x> rss_ratio=<x> restart_s=<s>/<e>
#          join_s=<s>/<e> register_full_over_empty=<x> register_loaded=<x>
# (one line): Strata / etcd put throughput in load A; Strata's worst over median per-second
# p99 in load A; Strata / etcd median RSS after load A; restart and join seconds of Strata and
# etcd; Strata's registrations/s on the full registry over the empty one (fresh cluster), and
# the same ratio on the loaded cluster.
#
# Usage: bash bench/scale.sh [--quick] [--skip-b] [--data-root DIR] [--no-build] [--keep-data]
#                            [--results FILE]
#
# Every process this script starts is tracked by PID and stopped on exit (SIGTERM, then
# SIGKILL after 15 s); it never signals processes it did not start. Every load run is bounded
# in requests and in time.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

# --help prints lines 2-44 above, then this.
options_help() {
    cat <<'EOF'

Options:
  --quick         everything about 20x smaller: 50,000 keys in load A, 5,000 in load B,
                  5,000 registry instances, 1,000 registrations per measurement (a few
                  minutes after the build)
  --skip-b        leave out load B (the 16 KiB values)
  --data-root DIR put both clusters' data dirs and logs under DIR instead of bench/.data
                  (e.g. /dev/shm, a tmpfs: takes the disk's fsync latency out of every
                  figure, for telling the software's stalls from the device's; not the
                  setting results are compared at)
  --no-build      use the release binaries already in target/release
  --keep-data     keep bench/.data/scale-<stamp> (logs, data dirs) after a clean run
  --results FILE  write the JSON results here instead of bench/results/
EOF
}

skip_b=0
own_option() {
    case "$1" in
    --skip-b)
        skip_b=1
        option_args=1
        ;;
    --data-root)
        data_root=$(cd "${2:?--data-root needs a directory}" && pwd)
        option_args=2
        ;;
    *) return 1 ;;
    esac
}
# The common options (lib.sh): sets quick, build, keep_data and results_file.
parse_options 44 "$@"

# --- settings -------------------------------------------------------------------------------
if ((quick)); then
    keys_a=50000
    keys_b=5000
    fill_instances=5000
    register_requests=1000
    register_rounds=1
    fresh_clusters=1
    load_max_seconds=120
    fill_max_seconds=120
    register_max_seconds=60
    restart_timeout=120
    join_timeout=300
    min_free_b_gib=1
else
    keys_a=1000000
    keys_b=100000
    fill_instances=100000
    register_requests=50000
    register_rounds=5
    load_max_seconds=600
    fresh_clusters=5
    fill_max_seconds=600
    register_max_seconds=120
    restart_timeout=600
    join_timeout=1800
    min_free_b_gib=12
fi
value_a=256
value_b=16384
load_clients=128
register_clients=64
fill_clients=128
services=100
page=1000
# Revisions the watch replay covers (see step 4); below Strata's default retention of 100,000.
replay_window=$((keys_a < 99000 ? keys_a : 99000))
settle_max_s=60
settle_quiet_s=10
node_count=3
etcd_quota=8589934592
prefix_a=scale/a/
prefix_b=scale/b/
# A key load A writes (strata-bench names keys <prefix><sequence:010>).
probe_key="${prefix_a}0000000001"

tools=(jq curl awk timeout du df)
((build)) && tools+=(cargo flock)
# cd to the repository; names the data dir and results file; checks for these tools (lib.sh).
bench_setup scale "${tools[@]}"
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
etcd=/usr/bin/etcd
our_exes+=("$etcd")

# --- small helpers --------------------------------------------------------------------------
# etcdctl (v3 API) against the comma-separated HOST:PORT list $1, bounded in time; its
# warnings go to a file in $data.
ctl() {
    local endpoints=$1
    shift
    ETCDCTL_API=3 timeout 10 etcdctl --endpoints "$endpoints" --dial-timeout 2s \
        --command-timeout 5s "$@" 2>>"$data/etcdctl.stderr"
}
# The same for commands that may take long (compact, defrag, member add): $1 seconds.
ctl_slow() {
    local seconds=$1 endpoints=$2
    shift 2
    ETCDCTL_API=3 timeout $((seconds + 10)) etcdctl --endpoints "$endpoints" --dial-timeout 2s \
        --command-timeout "${seconds}s" "$@" 2>>"$data/etcdctl.stderr"
}

# Polls "$@" every $2 seconds until it succeeds; returns 1 once $1 seconds have passed (the
# caller decides whether that is fatal). Used where a check costs a process start, which on a
# small machine takes CPU from the servers being timed, so it polls more slowly than
# wait_until.
poll_until() {
    local timeout_s=$1 interval=$2
    shift 2
    local deadline=$((${EPOCHREALTIME/./} + timeout_s * 1000000))
    until "$@" >/dev/null 2>&1; do
        ((${EPOCHREALTIME/./} < deadline)) || return 1
        sleep "$interval"
    done
}

now_us() { echo "${EPOCHREALTIME/./}"; }
# Seconds between two stamps of now_us, 3 decimals.
elapsed_s() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1000000 }'; }

# Apparent size in bytes of the tree at $1 (`du -sb`); files vanishing while du runs (log
# segments being purged) are not an error.
dir_bytes() { { du -sb "$1" 2>/dev/null || true; } | awk '{ n = $1 } END { printf "%.0f\n", n }'; }
# Bytes of disk blocks the tree at $1 really holds (`du -sB1`): smaller than its apparent size
# when it holds sparse files, as Strata's log journal is (a 64 MiB file, mostly holes).
dir_alloc_bytes() { { du -sB1 "$1" 2>/dev/null || true; } | awk '{ n = $1 } END { printf "%.0f\n", n }'; }
# Bytes as MiB, one decimal.
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# Free bytes on the file system holding $data.
free_bytes() { df -B1 --output=avail "$data" | awk 'NR == 2 { print $1 }'; }

# Raw facts for the results file, one JSON line each: record PATH JSON sets PATH (dotted) of
# the results' "phases" object to JSON.
facts="" # set once $data exists
record() {
    jq -nc --arg path "$1" --argjson value "$2" '{path: ($path | split(".")), value: $value}' \
        >>"$facts"
}

# Runs strata-bench with a time cap of $1 seconds; its JSON line goes to stdout, its stderr
# to a file in $data.
run_bench() {
    local cap=$1
    shift
    timeout --kill-after=10 "$cap" "$bench" "$@" 2>>"$data/bench.stderr"
}

# --- 1. packages and build ------------------------------------------------------------------
etcd_packages_and_build
mkdir -p "$data" "$(dirname "$results_file")"
facts="$data/facts.jsonl"
: >"$facts"
: >"$data/bench.stderr"
: >"$data/etcdctl.stderr"

# --- members of both systems ----------------------------------------------------------------
# etcd member N: client and peer address, the --initial-cluster and --initial-cluster-state
# it was first started with (a restart repeats them, as etcd ignores them once it has data).
declare -A etcd_pid etcd_client etcd_peer etcd_cluster etcd_state
etcd_token="scale-$stamp"

start_etcd() {
    local id=$1 dir="$data/etcd-$1"
    mkdir -p "$dir"
    echo "--- start $(date -u +%H:%M:%S.%N)" >>"$dir/log"
    # Everything not given here is etcd's default: WAL fsync on every commit, heartbeat
    # 100 ms, election timeout 1 s, snapshot every 100,000 entries, no auto-compaction.
    "$etcd" --name "etcd-$id" --data-dir "$dir/data" \
        --listen-client-urls "http://${etcd_client[$id]}" \
        --advertise-client-urls "http://${etcd_client[$id]}" \
        --listen-peer-urls "http://${etcd_peer[$id]}" \
        --initial-advertise-peer-urls "http://${etcd_peer[$id]}" \
        --initial-cluster "${etcd_cluster[$id]}" --initial-cluster-state "${etcd_state[$id]}" \
        --initial-cluster-token "$etcd_token" --quota-backend-bytes "$etcd_quota" \
        --logger zap --log-outputs stderr --log-level warn >>"$dir/log" 2>&1 &
    etcd_pid[$id]=$!
    track "${etcd_pid[$id]}"
}

# Strata node N: its API, raft and gRPC addresses (127.0.0.1:0 at its first start, the bound
# ones from then on, so a restart comes back where its peers expect it) and extra flags.
declare -A node_pid node_api node_raft node_grpc node_extra

start_strata() {
    local id=$1 dir="$data/strata-$1" addrs="$data/strata-$1/addrs.json" pid
    mkdir -p "$dir"
    rm -f "$addrs"
    echo "--- start $(date -u +%H:%M:%S.%N)" >>"$dir/log"
    # shellcheck disable=SC2086 # node_extra holds flags meant to split
    "$strata" server --id "$id" --data-dir "$dir/data" \
        --api-addr "${node_api[$id]:-127.0.0.1:0}" --raft-addr "${node_raft[$id]:-127.0.0.1:0}" \
        --grpc-addr "${node_grpc[$id]:-127.0.0.1:0}" \
        --addrs-file "$addrs" ${node_extra[$id]:-} >>"$dir/log" 2>&1 &
    pid=$!
    track "$pid"
    node_pid[$id]=$pid
    await_addrs "$pid" "$addrs" "strata node $id" "$dir/log"
    node_api[$id]=$(jq -r .api "$addrs")
    node_raft[$id]=$(jq -r .raft "$addrs")
    node_grpc[$id]=$(jq -r '.grpc // empty' "$addrs")
    [[ -n ${node_grpc[$id]} ]] || die "strata node $id has no gRPC address in $addrs"
}

# The members currently in each cluster (4 during the join phase).
etcd_ids=()
strata_ids=()

# Comma-separated client endpoints of system $1 (etcd: HOST:PORT; strata: gRPC HOST:PORT,
# or with $2 = api the API URLs).
endpoints_of() {
    local system=$1 kind=${2:-grpc} id out=()
    case $system in
    etcd) for id in "${etcd_ids[@]}"; do out+=("${etcd_client[$id]}"); done ;;
    strata)
        for id in "${strata_ids[@]}"; do
            if [[ $kind == api ]]; then
                out+=("http://${node_api[$id]}")
            else
                out+=("${node_grpc[$id]}")
            fi
        done
        ;;
    esac
    (IFS=,; echo "${out[*]}")
}

pid_of() {
    case $1 in
    etcd) echo "${etcd_pid[$2]}" ;;
    strata) echo "${node_pid[$2]}" ;;
    esac
}
data_dir_of() {
    case $1 in
    etcd) echo "$data/etcd-$2/data" ;;
    strata) echo "$data/strata-$2/data" ;;
    esac
}
log_of() {
    case $1 in
    etcd) echo "$data/etcd-$2/log" ;;
    strata) echo "$data/strata-$2/log" ;;
    esac
}
# The member id of system $1 serving client endpoint $2 (HOST:PORT).
id_of_endpoint() {
    local id
    for id in 1 2 3 4; do
        case $1 in
        etcd) [[ ${etcd_client[$id]:-} == "$2" ]] && echo "$id" && return 0 ;;
        strata) [[ ${node_grpc[$id]:-} == "$2" ]] && echo "$id" && return 0 ;;
        esac
    done
    return 1
}

# Dies unless every member of system $1 is running.
check_members() {
    local system=$1 id
    local -n ids="${system}_ids"
    for id in "${ids[@]}"; do
        is_ours "$(pid_of "$system" "$id")" ||
            die "$system member $id exited during $2; see $(log_of "$system" "$id")"
    done
}

# RSS and data-dir size of every member of system $1, as JSON in member order:
# {rss_mib, disk_bytes, disk_mib (apparent size, du -sb), disk_alloc_bytes, disk_alloc_mib
# (blocks held, du -sB1)}.
footprint() {
    local system=$1 id pid dir rss=() disk=() alloc=()
    local -n ids="${system}_ids"
    for id in "${ids[@]}"; do
        pid=$(pid_of "$system" "$id")
        is_ours "$pid" || die "$system member $id is not running; see $(log_of "$system" "$id")"
        dir=$(data_dir_of "$system" "$id")
        rss+=("$(rss_mib "$pid")")
        disk+=("$(dir_bytes "$dir")")
        alloc+=("$(dir_alloc_bytes "$dir")")
    done
    jq -nc --argjson rss "$(printf '%s\n' "${rss[@]}" | jq -sc .)" \
        --argjson disk "$(printf '%s\n' "${disk[@]}" | jq -sc .)" \
        --argjson alloc "$(printf '%s\n' "${alloc[@]}" | jq -sc .)" \
        '{rss_mib: $rss, disk_bytes: $disk,
          disk_mib: ($disk | map(. / 1048576 * 10 | round / 10)),
          disk_alloc_bytes: $alloc,
          disk_alloc_mib: ($alloc | map(. / 1048576 * 10 | round / 10))}'
}
# Records system $2's footprint as phases.$1.$2.footprint and logs it.
record_footprint() {
    local phase=$1 system=$2 fp
    fp=$(footprint "$system")
    record "$phase.$system.footprint" "$fp"
    log "$(printf '%-6s %-17s RSS %s MiB, disk %s MiB (allocated %s)' "$system" "$phase" \
        "$(jq -r '.rss_mib | join(" / ")' <<<"$fp")" "$(jq -r '.disk_mib | join(" / ")' <<<"$fp")" \
        "$(jq -r '.disk_alloc_mib | join(" / ")' <<<"$fp")")"
}

# The endpoint (HOST:PORT) whose member reports itself as the leader, via the etcd API.
leader_endpoint() {
    ctl "$1" endpoint status -w json |
        jq -r '.[] | select(.Status.leader == .Status.header.member_id) | .Endpoint' |
        awk 'NR == 1 { sub("^https?://", ""); print }'
}

# System $1's endpoints with the followers first and the leader last (so one-endpoint reads
# go through a follower on both systems).
ordered_endpoints() {
    local system=$1 all leader ep followers=()
    all=$(endpoints_of "$system")
    leader=$(leader_endpoint "$all") || return 1
    [[ -n $leader ]] || return 1
    for ep in ${all//,/ }; do
        [[ $ep == "$leader" ]] || followers+=("$ep")
    done
    ((${#followers[@]} == $(tr ',' '\n' <<<"$all" | wc -l) - 1)) || return 1
    (IFS=,; echo "${followers[*]},$leader")
}
# Sets order[etcd] and order[strata] (dies when a cluster has no leader).
declare -A order
find_leaders() {
    local system
    for system in etcd strata; do
        poll_until 30 0.2 ordered_endpoints "$system" || die "no $system leader found"
        order[$system]=$(ordered_endpoints "$system") || die "no $system leader found"
    done
}

# `strata cluster status` as JSON through the API URLs $1, bounded in time.
strata_status() { timeout 5 "$strata" --endpoints "$1" --output json cluster status 2>/dev/null; }

# True when the Strata cluster has exactly the members strata_ids, all voters with an API.
strata_members_are() {
    local status
    status=$(strata_status "$(endpoints_of strata api)") || return 1
    jq -e --argjson n "${#strata_ids[@]}" \
        '(.members | length) == $n and
         ([.members[] | select(.role != "learner" and .api_addr != "")] | length) == $n' \
        <<<"$status" >/dev/null
}

# True when etcd has exactly the members etcd_ids and every one of them is healthy.
etcd_members_are() {
    local id
    for id in "${etcd_ids[@]}"; do
        is_ours "${etcd_pid[$id]}" || die "etcd-$id exited; see $data/etcd-$id/log"
    done
    (($(ctl "$(endpoints_of etcd)" member list | grep -c .) == ${#etcd_ids[@]})) || return 1
    ctl "$(endpoints_of etcd)" endpoint health
}

# Keys under $2 as member endpoint $1 counts them (serializable with $3 = s), via the etcd API:
# a range with limit 1 still reports the total in .count.
count_at() {
    ctl "$1" get --prefix "$2" --limit 1 --keys-only --consistency="${3:-l}" -w json |
        jq -e '.count // 0'
}

# The current revision as the member at endpoint $1 reports it.
revision_at() { ctl "$1" endpoint status -w json | jq -e '.[0].Status.header.revision'; }

# --- 2a. three-member etcd cluster ----------------------------------------------------------
mapfile -t ports < <("$bench" free-ports --count $((2 * node_count)))
((${#ports[@]} == 2 * node_count)) || die "strata-bench free-ports gave ${#ports[@]} ports"
initial=()
for id in $(seq 1 "$node_count"); do
    etcd_client[$id]="127.0.0.1:${ports[$((2 * id - 2))]}"
    etcd_peer[$id]="127.0.0.1:${ports[$((2 * id - 1))]}"
    initial+=("etcd-$id=http://${etcd_peer[$id]}")
    etcd_ids+=("$id")
done
etcd_initial_cluster=$(IFS=,; echo "${initial[*]}")
log "starting a $node_count-member etcd $etcd_version cluster in $data"
for id in "${etcd_ids[@]}"; do
    etcd_cluster[$id]=$etcd_initial_cluster
    etcd_state[$id]=new
    start_etcd "$id"
done
wait_until 60 "the etcd cluster to be healthy" etcd_members_are
log "etcd up: $(endpoints_of etcd)"

# --- 2b. three-node Strata cluster ----------------------------------------------------------
# Starts a Strata cluster of the nodes whose ids are given (the first bootstraps it, the others
# join through add-member) and waits until all are voters and ready; strata_ids becomes them.
start_strata_cluster() {
    local first=$1 id
    strata_ids=()
    node_extra[$first]="--initial-cluster $first=127.0.0.1:0"
    start_strata "$first"
    strata_ids+=("$first")
    wait_until 30 "strata node $first to be ready" ready "${node_api[$first]}"
    for id in "${@:2}"; do
        start_strata "$id"
        timeout 90 "$strata" --endpoints "$(endpoints_of strata api)" cluster add-member "$id" \
            --raft-addr "${node_raft[$id]}" --api-addr "${node_api[$id]}" >/dev/null ||
            die "strata cluster add-member $id failed"
        strata_ids+=("$id")
    done
    wait_until 60 "$# Strata voters with API addresses" strata_members_are
    for id in "${strata_ids[@]}"; do
        wait_until 30 "strata node $id to be ready" ready "${node_api[$id]}"
    done
}
log "starting a $node_count-node Strata cluster in $data"
start_strata_cluster $(seq 1 "$node_count")
wait_until 30 "Strata's etcd API to be healthy" ctl "$(endpoints_of strata)" endpoint health
log "strata up: gRPC $(endpoints_of strata)"
record_footprint start etcd
record_footprint start strata

# The kernel's counters of memory reclaim and compaction that stall a process, as JSON.
reclaim_counters() {
    awk '$1 ~ /^allocstall_/ { stalls += $2 } $1 == "pgscan_direct" { scanned = $2 }
        $1 == "compact_stall" { compact = $2 }
        END { printf "{\"allocstall\": %d, \"pgscan_direct\": %d, \"compact_stall\": %d}\n", stalls, scanned, compact }' /proc/vmstat
}
# How much each of those counters grew since $1 (an earlier reclaim_counters), as JSON.
reclaim_since() {
    jq -nc --argjson before "$1" --argjson after "$(reclaim_counters)" \
        '$after | with_entries(.value -= $before[.key])'
}
# Whether this user may empty the page cache (root): loads then start with it empty.
drop_caches=false
[[ -w /proc/sys/vm/drop_caches ]] && drop_caches=true

# --- 3. load A: 1,000,000 keys of 256 bytes -------------------------------------------------
# Puts $2 keys of $3 bytes under $1 with 128 clients into each system (etcd first), records
# the run, checks the count of keys, and records RSS and disk after.
# The snapshots Strata node $2 finished at or after epoch microsecond $1, as JSON objects
# {node, start_s, end_s, mb} with the seconds counted from $1 (a snapshot's start is its end
# minus the write_ms it logs: serialising and writing, apply going on).
snapshots_since() {
    local since_us=$1 id=$2
    grep -e 'built snapshot' "$data/strata-$id/log" | jq -Rc --argjson since "$since_us" \
        --argjson node "$id" '
        capture("^(?<s>[0-9T:-]+)(?<f>\\.[0-9]+)?Z .*bytes=(?<b>[0-9]+) .*write_ms=(?<w>[0-9]+)")
        | ((.s + "Z" | fromdateiso8601) + ((.f // ".0") | tonumber)) as $done
        | ($done - $since / 1000000) as $end_s
        | select($end_s >= 0)
        | {node: $node, start_s: (($end_s - (.w | tonumber) / 1000) * 10 | round / 10),
           end_s: ($end_s * 10 | round / 10), mb: ((.b | tonumber) / 1048576 | round)}'
}

# The slow steps Strata node $2 warned of at or after epoch microsecond $1 (a log commit, an
# apply batch or the async runtime's timers over 50 ms; see strata_raft::SlowSteps), as JSON
# objects {node, at_s, step, took_ms, untold} with the seconds counted from $1.
slow_steps_since() {
    local since_us=$1 id=$2
    grep -e 'slow step' "$data/strata-$id/log" | jq -Rc --argjson since "$since_us" \
        --argjson node "$id" '
        capture("^(?<s>[0-9T:-]+)(?<f>\\.[0-9]+)?Z .*step=\"?(?<step>[a-z_]+)\"? .*took_ms=(?<t>[0-9.]+) .*untold_since_last_warning=(?<u>[0-9]+)")
        | ((.s + "Z" | fromdateiso8601) + ((.f // ".0") | tonumber)) as $at
        | ($at - $since / 1000000) as $at_s
        | select($at_s >= 0)
        | {node: $node, at_s: ($at_s * 10 | round / 10), step: .step,
           took_ms: (.t | tonumber), untold: (.u | tonumber)}'
}

# Each Strata member's counters, as JSON keyed by member id: its peer streams (opened, late
# replies dropped), whether a load's slow moments cost reconnects or only late answers; watches
# that fell behind and re-read history (the registry's own view is one); and its
# durable log commits (written and fsynced), with how many took over 50 and 100 ms, whether
# they were the disk's. Every series carries a node_id label, so a line is the name then `{`.
strata_member_counters() {
    local id
    for id in "${strata_ids[@]}"; do
        { curl -sf --max-time 5 "http://${node_api[$id]}/metrics" || true; } | jq -Rsc --arg id "$id" '
            split("\n") as $lines
            | def metric($name): [$lines[] | select(startswith($name + " ") or startswith($name + "{"))
                | split(" ")[1] | tonumber][0] // 0;
              def bucket($le): [$lines[]
                | select(startswith("strata_raft_log_commit_duration_seconds_bucket{")
                    and contains("le=\"" + $le + "\""))
                | split(" ")[1] | tonumber][0] // 0;
              metric("strata_raft_log_commit_duration_seconds_count") as $commits
            | {($id): {streams_opened: metric("strata_raft_append_streams_opened_total"),
                       late_replies: metric("strata_raft_stream_late_replies_total"),
                       watch_resyncs: metric("strata_kv_watch_resyncs_total"),
                       log_commits: $commits,
                       log_commits_over_50ms: ($commits - bucket("0.05")),
                       log_commits_over_100ms: ($commits - bucket("0.1"))}}'
    done | jq -sc 'add // {}'
}

# The growth of each member's counters since $1 (a strata_member_counters answer).
strata_counters_since() {
    jq -nc --argjson before "$1" --argjson after "$(strata_member_counters)" '
        $after | with_entries(.key as $k | .value |= with_entries(
            .value -= ($before[$k][.key] // 0)))'
}

load_phase() {
    local phase=$1 prefix=$2 requests=$3 value_size=$4 system line count expected started id reclaim_before
    local counters_before
    find_leaders
    for system in etcd strata; do
        # Each load starts on a disk with nothing left to write back (`sync`, untimed): the
        # second system's load would otherwise run beside the writeback of the first's. And,
        # where this user may (root), with the page cache emptied, so that neither load runs in
        # memory the other's cache took. (What it does not remove: by load B the two clusters
        # hold most of the machine's memory, and the second load, Strata's, still meets the
        # kernel's direct reclaim and compaction: see docs/benchmarks.md, runs 25 and 26.)
        sync
        if $drop_caches; then
            echo 1 >/proc/sys/vm/drop_caches
        fi
        log "$phase: $system, $requests puts of $value_size bytes, $load_clients clients, endpoints ${order[$system]}"
        started=$(now_us)
        reclaim_before=$(reclaim_counters)
        if [[ $system == strata ]]; then counters_before=$(strata_member_counters); fi
        line=$(run_bench $((load_max_seconds + 120)) etcd-put --endpoints "${order[$system]}" \
            --clients "$load_clients" --requests "$requests" --value-size "$value_size" \
            --key-prefix "$prefix" --max-seconds "$load_max_seconds") ||
            die "strata-bench etcd-put ($phase) against $system failed; see $data/bench.stderr"
        check_members "$system" "$phase"
        # The kernel's direct reclaim and compaction stalls during the load: a process that
        # faults in memory while the kernel must free or compact some waits with it.
        record "$phase.$system.put" "$(jq -c --arg leader "${order[$system]##*,}" \
            --argjson vmstat "$(reclaim_since "$reclaim_before")" \
            '. + {leader_endpoint: $leader, vmstat: $vmstat}' <<<"$line")"
        log "$system $phase: kernel stalls meanwhile $(jq -s -c '.[-1].value.vmstat' "$facts")"
        if [[ $system == strata ]]; then
            # When each member built a snapshot during the load, in the seconds of strata-bench's
            # windows (from the end of its warm-up; from its start if it did not say), so a slow
            # window can be laid beside them.
            started=$(jq -r --arg fallback "$started" \
                'if .timed_start_unix_ms then "\(.timed_start_unix_ms)000" else $fallback end' <<<"$line")
            record "$phase.strata.snapshots" "$(for id in $(seq 1 "$node_count"); do
                snapshots_since "$started" "$id"
            done | jq -sc --argjson leader "$(id_of_endpoint strata "${order[strata]##*,}")" \
                'map(. + {leader: (.node == $leader)}) | sort_by(.start_s)')"
            log "strata snapshots during $phase: $(jq -s -r '.[-1].value | map("node \(.node)\(if .leader then " (leader)" else "" end) \(.start_s)-\(.end_s) s \(.mb) MiB") | join(", ")' "$facts")"
            # The steps writes waited on that each member warned were slow, to lay beside the
            # worst window.
            record "$phase.strata.slow_steps" "$(for id in $(seq 1 "$node_count"); do
                slow_steps_since "$started" "$id"
            done | jq -sc 'sort_by(.at_s)')"
            log "strata slow steps during $phase: $(jq -s -r '.[-1].value | map("node \(.node) \(.at_s) s \(.step) \(.took_ms) ms (+\(.untold))") | join(", ")' "$facts")"
            record "$phase.strata.members" "$(strata_counters_since "$counters_before")"
            log "strata members during $phase (peer streams, log commits): $(jq -s -c '.[-1].value' "$facts")"
        fi
        log "$(jq -r --arg s "$system" '"\($s) \(.workload): \(.throughput) ops/s, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, max \(.max_ms) ms, window p99 median \(.window_p99_median_ms) / worst \(.window_p99_worst_ms) ms (second \(.window_p99_worst_at_s)) over \(.windows) whole windows, last \(.window_tail_seconds) s p99 \(.window_p99_tail_ms) ms, slowest at \(.max_at_ms) ms, errors \(.errors)"' <<<"$line")"
        # Every successful put wrote one new key, and every client one warm-up key.
        count=$(count_at "${order[$system]##*,}" "$prefix") || die "counting $prefix in $system failed"
        expected=$(jq '.requests + .clients' <<<"$line")
        record "$phase.$system.keys" "$(jq -nc --argjson c "$count" --argjson e "$expected" \
            '{counted: $c, successful_puts_plus_warmups: $e}')"
        if ((count != expected)); then
            if (($(jq .errors <<<"$line") == 0)); then
                die "$system holds $count keys under $prefix after $expected successful puts (no errors)"
            fi
            log "$system holds $count keys under $prefix; $expected puts succeeded (some failed, and a failed put may still have been applied)"
        fi
        record_footprint "$phase" "$system"
    done
}
load_phase load_a "$prefix_a" "$keys_a" "$value_a"
declare -A keys_in_a
keys_in_a[etcd]=$(jq -s '[.[] | select(.path == ["load_a", "etcd", "keys"])][0].value.counted' "$facts")
keys_in_a[strata]=$(jq -s '[.[] | select(.path == ["load_a", "strata", "keys"])][0].value.counted' "$facts")

# --- 4. full range read and watch replay ----------------------------------------------------
find_leaders
for workload in etcd-range-all etcd-watch-replay; do
    for system in etcd strata; do
        endpoint=${order[$system]%%,*}
        args=(--endpoints "$endpoint" --prefix "$prefix_a")
        if [[ $workload == etcd-range-all ]]; then
            args+=(--page "$page" --expect "${keys_in_a[$system]}")
        else
            # Both replay the same window: the last $replay_window revisions, which are all
            # load A's puts (nothing else writes meanwhile). Not from revision 1: Strata keeps
            # 100,000 revisions by default ([kv] auto_compaction_retention) and etcd keeps
            # everything, so revision 1 is not readable on both at default settings.
            current=$(ctl "$endpoint" get x -w json | jq -r '.header.revision')
            from=$((current - replay_window + 1))
            ((from >= 1)) || from=1
            args+=(--from-revision "$from" --expect $((current - from + 1)))
        fi
        log "$workload: $system through $endpoint (a follower), expecting ${keys_in_a[$system]}"
        line=$(run_bench $((load_max_seconds + 120)) "$workload" "${args[@]}") ||
            die "strata-bench $workload against $system failed; see $data/bench.stderr"
        check_members "$system" "$workload"
        record "reads.$system.${workload#etcd-}" "$(jq -c --arg ep "$endpoint" \
            '. + {endpoint: $ep}' <<<"$line")"
        log "$system $workload: $line"
    done
done

# --- 5. compaction --------------------------------------------------------------------------
# Total bytes of every Strata member's data dir: apparent (du -sb), then allocated (du -sB1).
strata_disk_total() {
    local id dir total=0 held=0
    for id in "${strata_ids[@]}"; do
        dir=$(data_dir_of strata "$id")
        total=$((total + $(dir_bytes "$dir")))
        held=$((held + $(dir_alloc_bytes "$dir")))
    done
    echo "$total $held"
}

find_leaders
for system in etcd strata; do
    leader=${order[$system]##*,}
    revision=$(revision_at "$leader") || die "no revision from the $system leader"
    record_footprint compaction_before "$system"
    t0=$(now_us)
    ctl_slow 600 "$(endpoints_of "$system")" compact --physical "$revision" >/dev/null ||
        die "etcdctl compact $revision against $system failed; see $data/etcdctl.stderr"
    t1=$(now_us)
    record "compaction.$system.revision" "$revision"
    record "compaction.$system.compact_s" "$(elapsed_s "$t0" "$t1")"
    log "$system: compacted at revision $revision in $(elapsed_s "$t0" "$t1") s"
    if [[ $system == etcd ]]; then
        record_footprint compaction_after etcd
        defrag=()
        for id in "${etcd_ids[@]}"; do
            t0=$(now_us)
            ctl_slow 600 "${etcd_client[$id]}" defrag >/dev/null ||
                die "etcdctl defrag of etcd-$id failed; see $data/etcdctl.stderr"
            defrag+=("$(elapsed_s "$t0" "$(now_us)")")
        done
        record compaction.etcd.defrag_s "$(printf '%s\n' "${defrag[@]}" | jq -sc .)"
        log "etcd: defragmented every member (seconds: ${defrag[*]})"
        record_footprint compaction_defrag etcd
    else
        # No defrag for Strata: sample the data dirs every second until they have shrunk and
        # then held still for settle_quiet_s, or settle_max_s have passed.
        t_start=$(now_us)
        deadline=$((t_start + settle_max_s * 1000000))
        read -r previous held < <(strata_disk_total)
        first=$previous
        first_alloc=$held
        samples=("0 $previous $held")
        shrank=0
        last_change=$t_start
        last_shrink=""
        while (($(now_us) < deadline)); do
            sleep 1
            read -r total held < <(strata_disk_total)
            now=$(now_us)
            samples+=("$(elapsed_s "$t_start" "$now") $total $held")
            if ((total < previous)); then
                shrank=1
                last_change=$now
                last_shrink=$(elapsed_s "$t_start" "$now")
            elif ((total != previous)); then
                last_change=$now
            fi
            previous=$total
            if ((shrank && now - last_change >= settle_quiet_s * 1000000)); then
                break
            fi
        done
        waited=$(elapsed_s "$t_start" "$(now_us)")
        before_total=$(jq -s '[.[] | select(.path == ["compaction_before", "strata", "footprint"])][0].value.disk_bytes | add' "$facts")
        before_alloc=$(jq -s '[.[] | select(.path == ["compaction_before", "strata", "footprint"])][0].value.disk_alloc_bytes | add' "$facts")
        sizes="$(mib "$before_total") MiB before compaction (allocated $(mib "$before_alloc")), $(mib "$first") MiB when compact returned (allocated $(mib "$first_alloc")), $(mib "$previous") MiB at the end (allocated $(mib "$held"))"
        if ((shrank)); then
            note="data dirs (sum of $node_count, du -sb) shrank without defrag: $sizes, ${waited} s after compact returned (last decrease at ${last_shrink} s, then unchanged for ${settle_quiet_s} s)"
        else
            note="data dirs (sum of $node_count, du -sb) did not shrink within ${waited} s of compact returning: $sizes (Strata writes its state to disk only in snapshots, built every 10,000 log entries by default, and nothing was written while it was sampled)"
        fi
        record compaction.strata.settle "$(printf '%s\n' "${samples[@]}" | jq -Rsc --arg note "$note" \
            --argjson waited "$waited" --argjson shrank "$shrank" \
            'split("\n") | map(select(length > 0) | split(" ") | map(tonumber)) |
             {samples_s_bytes_allocated: ., waited_s: $waited, shrank: ($shrank == 1), note: $note}')"
        log "strata: $note"
        record_footprint compaction_after strata
    fi
done

# --- 6. restart of a follower ---------------------------------------------------------------
# True when etcd member $1 answers a linearizable read through its own endpoint at revision
# $2 or later (nothing is written meanwhile, so that is the leader's revision).
etcd_caught_up() {
    local rev
    is_ours "${etcd_pid[$1]}" || die "etcd-$1 exited after its restart; see $data/etcd-$1/log"
    rev=$(ctl "${etcd_client[$1]}" get --consistency=l "$probe_key" -w json |
        jq -e '.header.revision') || return 1
    ((rev >= $2))
}
# True when Strata node $1's own status shows applied_index >= $2 (the leader's commit index
# before the kill) and a linearizable read through its own gRPC endpoint succeeds.
strata_caught_up() {
    local status
    is_ours "${node_pid[$1]}" || die "strata node $1 exited after its restart; see $data/strata-$1/log"
    status=$(strata_status "http://${node_api[$1]}") || return 1
    jq -e --argjson index "$2" '.applied_index >= $index' <<<"$status" >/dev/null || return 1
    ctl "${node_grpc[$1]}" get --consistency=l "$probe_key" -w json >/dev/null
}
# Kills (SIGKILL) member $2 of system $1, one of ours, and reaps it.
kill_member() {
    local pid
    pid=$(pid_of "$1" "$2")
    is_ours "$pid" || die "$1 member $2 (pid $pid) is not running"
    kill -KILL "$pid"
    { wait "$pid" || true; } 2>/dev/null
    untrack "$pid"
}

find_leaders
for system in etcd strata; do
    victim=$(id_of_endpoint "$system" "${order[$system]%%,*}") || die "no $system follower id"
    leader=${order[$system]##*,}
    if [[ $system == etcd ]]; then
        target=$(revision_at "$leader") || die "no revision from the etcd leader"
    else
        leader_id=$(id_of_endpoint strata "$leader") || die "no Strata leader id"
        target=$(strata_status "http://${node_api[$leader_id]}" | jq -e .commit_index) ||
            die "no commit index from the Strata leader"
    fi
    log "restart: kill -9 $system member $victim (a follower), then start it again"
    kill_member "$system" "$victim"
    t0=$(now_us)
    if [[ $system == etcd ]]; then
        start_etcd "$victim"
        poll_until "$restart_timeout" 0.2 etcd_caught_up "$victim" "$target" ||
            die "etcd-$victim did not catch up within ${restart_timeout} s of its restart"
    else
        start_strata "$victim"
        poll_until "$restart_timeout" 0.2 strata_caught_up "$victim" "$target" ||
            die "strata node $victim did not catch up within ${restart_timeout} s of its restart"
    fi
    seconds=$(elapsed_s "$t0" "$(now_us)")
    record "restart.$system" "$(jq -nc --argjson member "$victim" --argjson s "$seconds" \
        --argjson target "$target" --arg what "$([[ $system == etcd ]] &&
            echo "linearizable get through its endpoint at the leader's revision" ||
            echo "applied_index >= leader commit index and a linearizable get through its endpoint")" \
        '{member: $member, seconds: $s, caught_up_to: $target, check: $what}')"
    log "restart: $system member $victim serving and caught up ${seconds} s after its restart"
done
wait_until 60 "etcd to be healthy after the restart" etcd_members_are
wait_until 60 "Strata to have its voters after the restart" strata_members_are
record_footprint after_restart etcd
record_footprint after_restart strata

# --- 7. join of an empty 4th member ---------------------------------------------------------
joined() {
    local n
    is_ours "$(pid_of "$1" 4)" || die "$1 member 4 exited while joining; see $(log_of "$1" 4)"
    n=$(count_at "$2" "$prefix_a" s) || return 1
    ((n == $3))
}

mapfile -t ports < <("$bench" free-ports --count 2)
((${#ports[@]} == 2)) || die "strata-bench free-ports gave ${#ports[@]} ports"
etcd_client[4]="127.0.0.1:${ports[0]}"
etcd_peer[4]="127.0.0.1:${ports[1]}"

# etcd: member add, then start it with the full member list and state "existing". etcd
# refuses a member add ("unhealthy cluster") until every member has been connected for 5 s
# (--strict-reconfig-check), which a member restarted just before has not: the add is retried
# for up to 60 s, and the time counts from the start of the attempt that succeeded.
etcd_member_add() {
    join_t0=$(now_us)
    ctl_slow 60 "$(endpoints_of etcd)" member add etcd-4 --peer-urls="http://${etcd_peer[4]}"
}
# Each join starts on a disk with nothing left to write back (`sync`, untimed): the one that
# went second otherwise ran beside the kernel writing back the first one's data (etcd's new
# member writes its whole ~790 MB database).
sync
log "join: etcd-4 (member add, then start it empty)"
join_t0=""
attempts_t0=$(now_us)
poll_until 60 1 etcd_member_add ||
    die "etcdctl member add etcd-4 failed for 60 s; see $data/etcdctl.stderr"
t0=$join_t0
log "join: etcd accepted the member add $(elapsed_s "$attempts_t0" "$t0") s after the first attempt"
etcd_cluster[4]="$etcd_initial_cluster,etcd-4=http://${etcd_peer[4]}"
etcd_state[4]=existing
start_etcd 4
etcd_ids+=(4)
poll_until "$join_timeout" 0.2 joined etcd "${etcd_client[4]}" "${keys_in_a[etcd]}" ||
    die "etcd-4 did not catch up within ${join_timeout} s"
etcd_join_s=$(elapsed_s "$t0" "$(now_us)")
log "join: etcd-4 counts ${keys_in_a[etcd]} keys ${etcd_join_s} s after member add"
record join.etcd "$(jq -nc --argjson s "$etcd_join_s" --argjson keys "${keys_in_a[etcd]}" \
    --argjson refused "$(elapsed_s "$attempts_t0" "$t0")" \
    '{seconds: $s, keys: $keys, member_add_refused_for_s: $refused,
      timed: "from the etcdctl member add that was accepted, through starting it, to a serializable count through its own endpoint equal to the cluster'"'"'s"}')"
record_footprint join etcd

# Strata: start it empty, then cluster add-member (a learner, promoted once caught up).
sync
log "join: strata node 4 (start it empty, then cluster add-member)"
t0=$(now_us)
start_strata 4
# add-member waits kv.request_timeout (10 s) for the learner to catch up; a million keys take
# longer (a snapshot of ~300 MB), so it is run again, as its error says, until it promotes.
add_member_4() {
    timeout 60 "$strata" --endpoints "$(endpoints_of strata api)" cluster add-member 4 \
        --raft-addr "${node_raft[4]}" --api-addr "${node_api[4]}" >/dev/null 2>>"$data/add-member.stderr"
}
poll_until "$join_timeout" 1 add_member_4 || die "strata cluster add-member 4 failed; see $data/add-member.stderr"
add_member_s=$(elapsed_s "$t0" "$(now_us)")
strata_ids+=(4)
poll_until "$join_timeout" 0.2 joined strata "${node_grpc[4]}" "${keys_in_a[strata]}" ||
    die "strata node 4 did not catch up within ${join_timeout} s"
strata_join_s=$(elapsed_s "$t0" "$(now_us)")
log "join: strata node 4 counts ${keys_in_a[strata]} keys ${strata_join_s} s after its start (add-member returned after ${add_member_s} s)"
record join.strata "$(jq -nc --argjson s "$strata_join_s" --argjson keys "${keys_in_a[strata]}" \
    --argjson add "$add_member_s" \
    '{seconds: $s, keys: $keys, add_member_returned_s: $add,
      timed: "from starting it, through strata cluster add-member, to a serializable count through its own endpoint equal to the cluster'"'"'s"}')"
record_footprint join strata

# Remove the 4th members again and stop them, so load B and the registry run on 3 nodes; their
# data dirs go (disk for load B), their logs stay.
etcd4_hex=$(ctl "$(endpoints_of etcd)" member list | awk -F', ' '$3 == "etcd-4" { print $1 }')
[[ -n $etcd4_hex ]] || die "etcd-4 is not in the member list"
etcd_ids=("${etcd_ids[@]:0:$node_count}")
ctl_slow 60 "$(endpoints_of etcd)" member remove "$etcd4_hex" >/dev/null ||
    die "etcdctl member remove etcd-4 failed; see $data/etcdctl.stderr"
stop_pid "${etcd_pid[4]}"
strata_ids=("${strata_ids[@]:0:$node_count}")
timeout 60 "$strata" --endpoints "$(endpoints_of strata api)" cluster remove-member 4 >/dev/null ||
    die "strata cluster remove-member 4 failed"
stop_pid "${node_pid[4]}"
rm -rf "$data/etcd-4/data" "$data/strata-4/data"
wait_until 60 "etcd to have 3 healthy members again" etcd_members_are
wait_until 60 "Strata to have 3 voters again" strata_members_are
log "join: the 4th members are removed and stopped"

# --- 8. load B: 100,000 keys of 16 KiB ------------------------------------------------------
free_before_b=$(free_bytes)
record load_b.free_bytes_before "$free_before_b"
if ((skip_b)); then
    skip_reason="--skip-b"
elif ((free_before_b < min_free_b_gib * 1073741824)); then
    skip_reason="only $(mib "$free_before_b") MiB free on the data disk, less than ${min_free_b_gib} GiB"
else
    skip_reason=""
fi
if [[ -n $skip_reason ]]; then
    log "load B skipped: $skip_reason"
    record load_b.skipped "$(jq -nc --arg r "$skip_reason" '$r')"
else
    load_phase load_b "$prefix_b" "$keys_b" "$value_b"
fi

# --- 9. registry: empty, 100,000 instances, full (Strata only) ------------------------------
# Last, so that every footprint compared with etcd (after load A, compaction, restart, join,
# load B) is taken with the same data in both systems. Strata keeps the instances in its KV
# under /strata/registry/, outside scale/a/ and scale/b/, so no key count above sees them.

# One registry-register run of $2 instances with $3 clients, ids <$1>NNNNNNNN, over the same
# services; its JSON line goes to stdout.
register() {
    local id_prefix=$1 requests=$2 clients=$3 max_seconds=$4
    run_bench $((max_seconds + 120)) registry-register --endpoints "$(endpoints_of strata api)" \
        --clients "$clients" --requests "$requests" --max-seconds "$max_seconds" \
        --services "$services" --service-prefix "scale-svc-" --id-prefix "$id_prefix"
}
# Instances of the scale-svc-* services in the view of Strata node $1.
instances_seen() {
    curl -sf --max-time 10 "http://${node_api[$1]}/v1/registry/services" |
        jq -e '[.services[] | select(.name | startswith("scale-svc-")) | .instances] | add // 0'
}
all_nodes_see() {
    local id n
    for id in "${strata_ids[@]}"; do
        n=$(instances_seen "$id") || return 1
        ((n == $1)) || return 1
    done
}

# Waits until the Strata data dirs have held still for 3 s (no snapshot or memtable flush
# being written), at most 60 s; prints the seconds waited.
disk_quiet() {
    local t_start previous total held unchanged=0
    t_start=$(now_us)
    read -r previous held < <(strata_disk_total)
    while (($(now_us) - t_start < 60000000 && unchanged < 3)); do
        sleep 1
        read -r total held < <(strata_disk_total)
        if ((total == previous)); then
            unchanged=$((unchanged + 1))
        else
            unchanged=0
        fi
        previous=$total
    done
    elapsed_s "$t_start" "$(now_us)"
}

# The registry phases on the current Strata cluster (strata_ids), recorded under $1.
# One measured registry phase: $register_rounds runs of $register_requests / $register_rounds
# registrations each, recorded as $1.$2 with every run under .runs, the median run's
# throughput as .throughput (a snapshot that lands in one short run moves that run, not the
# median: its cost per write is the same at any store size, since a snapshot comes once the
# log since the last one is half the store), the whole phase's as .whole_throughput, and the
# snapshots the members built meanwhile as .snapshots.
measure_registry() {
    local key=$1 phase=$2 started round line runs=() per_round=$((register_requests / register_rounds)) id reclaim_before
    local counters_before
    started=$(now_us)
    reclaim_before=$(reclaim_counters)
    counters_before=$(strata_member_counters)
    for round in $(seq 1 "$register_rounds"); do
        line=$(register "$key-$phase-$round-" "$per_round" "$register_clients" "$register_max_seconds") ||
            die "registry-register ($key, $phase, run $round) failed; see $data/bench.stderr"
        runs+=("$line")
    done
    record "$key.$phase" "$(printf '%s\n' "${runs[@]}" | jq -sc \
        --argjson vmstat "$(reclaim_since "$reclaim_before")" \
        --argjson members "$(strata_counters_since "$counters_before")" --argjson snapshots "$(
        for id in "${strata_ids[@]}"; do snapshots_since "$started" "$id"; done | jq -sc 'sort_by(.start_s)'
    )" '
        def median: sort | if length % 2 == 1 then .[length / 2 | floor]
            else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        {requests: (map(.requests) | add), errors: (map(.errors) | add),
         seconds: (map(.seconds) | add), throughput: (map(.throughput) | median),
         whole_throughput: ((map(.requests) | add) / (map(.seconds) | add) * 10 | round / 10),
         p50_ms: (map(.p50_ms) | median), p99_ms: (map(.p99_ms) | median),
         max_ms: (map(.max_ms) | max), runs: ., snapshots: $snapshots,
         vmstat: $vmstat, members: $members, first_error: (map(.first_error // empty) | first)}')"
    log "$key $phase: $(jq -s -r '.[-1].value | "runs of \(.runs | map(.throughput) | map(tostring) | join(", ")) registrations/s (median \(.throughput), whole phase \(.whole_throughput)); reclaim stalls \(.vmstat.allocstall), compaction stalls \(.vmstat.compact_stall); snapshots meanwhile: \(.snapshots | map("node \(.node) \(.start_s)-\(.end_s) s \(.mb) MiB") | join(", "))\(if .first_error then "; \(.errors) failed, first: \(.first_error)" else "" end)"' "$facts")"
}
registry_phases() {
    local key=$1 line registered seen seen_ok
    log "$key: data dirs quiet after $(disk_quiet) s"
    log "$key: $register_requests registrations in $register_rounds runs, $register_clients clients, on an empty registry"
    measure_registry "$key" empty
    log "$key: filling with $fill_instances persistent instances over $services services"
    line=$(register "$key-fill-" "$fill_instances" "$fill_clients" "$fill_max_seconds") ||
        die "registry-register ($key, fill) failed; see $data/bench.stderr"
    record "$key.fill" "$line"
    log "$key fill: $line"
    log "$key: data dirs quiet after $(disk_quiet) s"
    log "$key: $register_requests registrations in $register_rounds runs, $register_clients clients, on the full registry"
    measure_registry "$key" full
    registered=$(jq -s --arg k "$key" '[.[] | select(.path[0] == $k and (.path[1] | IN("empty", "fill", "full"))) | .value.requests] | add' "$facts")
    if poll_until 30 0.5 all_nodes_see "$registered"; then
        seen_ok=true
    else
        seen_ok=false
        log "WARNING: not every Strata node sees the $registered instances registered ($key)"
    fi
    seen=$(for id in "${strata_ids[@]}"; do instances_seen "$id" || echo null; done | jq -sc .)
    record "$key.instances" "$(jq -nc --argjson registered "$registered" --argjson seen "$seen" \
        --argjson ok "$seen_ok" '{registered: $registered, seen_per_node: $seen, all_match: $ok}')"
}
registry_phases registry_loaded
record_footprint after_registry etcd
record_footprint after_registry strata

# --- shut both clusters down ----------------------------------------------------------------
# Strata log lines are counted before the shutdown (a node logs errors for peers that stop
# before it does); the restart and the removal of node 4 account for some of them.
# Lines matching $1 in the logs of the Strata nodes whose ids follow.
strata_log_lines() {
    local pattern=$1 id
    shift
    for id in "$@"; do cat "$data/strata-$id/log"; done | grep -c -e "$pattern" || true
}
# The Strata log lines an ERROR or a panic left, most frequent first (at most 8 kinds).
strata_error_kinds() {
    local id
    for id in "$@"; do cat "$data/strata-$id/log"; done | { grep -e ' ERROR ' -e 'panicked' || true; } |
        cut -d' ' -f2- | cut -c1-300 | sort | uniq -c | sort -rn | awk 'NR <= 8'
}
loaded_ids=()
for dir in "$data"/strata-*/; do loaded_ids+=("$(basename "$dir" | cut -d- -f2)"); done
panics=$(strata_log_lines 'panicked' "${loaded_ids[@]}")
snapshots_built=$(strata_log_lines 'built snapshot' "${loaded_ids[@]}")
error_lines=$(strata_log_lines ' ERROR ' "${loaded_ids[@]}")
error_kinds=$(strata_error_kinds "${loaded_ids[@]}")
for id in $(seq 1 "$node_count"); do
    stop_pid "${node_pid[$id]}"
    stop_pid "${etcd_pid[$id]}"
done
# Nothing reads the stopped clusters' data again (their logs stay). Deleted, its ~20 GB leave
# the page cache with it: kept, they filled memory, and the fresh clusters' processes met
# direct reclaim as their stores grew (recorded per phase: `vmstat`).
for id in $(seq 1 "$node_count"); do
    rm -rf "$data/etcd-$id/data" "$data/strata-$id/data"
done

# --- 10. registry on fresh Strata clusters -------------------------------------------------
# One pair of measurements moves by 10-25% between clusters on this machine (the target is
# 10%; the nine pairs of runs 17 to 19 gave 0.77 to 1.07), so it is taken on $fresh_clusters
# fresh clusters in turn and the summary is the median of their full / empty ratios. Ids after the loaded cluster's (and its joiner's), so data
# dirs and logs stay apart: 11-13, then 21-23, ...
fresh_registry() {
    local run=$1 n id line fresh_ids=()
    for n in $(seq 1 "$node_count"); do fresh_ids+=($((10 * run + n))); done
    log "registry: starting fresh $node_count-node Strata cluster $run of $fresh_clusters (ids ${fresh_ids[*]})"
    start_strata_cluster "${fresh_ids[@]}"
    # A cluster that has just formed is slower for its first seconds of writes than later,
    # which would favour the full registry over the empty one; so first an untimed warm-up of
    # KV puts (not registry instances: the registry stays empty).
    line=$(run_bench $((register_max_seconds + 120)) etcd-put --endpoints "$(endpoints_of strata)" \
        --clients "$register_clients" --requests "$register_requests" --key-prefix "warm-up/" \
        --max-seconds "$register_max_seconds") ||
        die "the warm-up of fresh cluster $run failed; see $data/bench.stderr"
    record "registry_fresh_$run.warm_up" "$line"
    registry_phases "registry_fresh_$run"
    record_footprint "after_registry_fresh_$run" strata
    # Its logs are counted before it stops, as the loaded cluster's were.
    panics=$((panics + $(strata_log_lines 'panicked' "${strata_ids[@]}")))
    snapshots_built=$((snapshots_built + $(strata_log_lines 'built snapshot' "${strata_ids[@]}")))
    error_lines=$((error_lines + $(strata_log_lines ' ERROR ' "${strata_ids[@]}")))
    error_kinds=$(printf '%s\n%s\n' "$error_kinds" "$(strata_error_kinds "${strata_ids[@]}")")
    for id in "${strata_ids[@]}"; do
        stop_pid "${node_pid[$id]}"
    done
}
for run in $(seq 1 "$fresh_clusters"); do
    fresh_registry "$run"
done
error_samples=$(jq -Rsc 'split("\n") | map(select(length > 0))' <<<"$error_kinds")

# --- results --------------------------------------------------------------------------------
recorded_options=()
((skip_b == 0)) || recorded_options+=(--skip-b)
[[ -z ${data_root:-} ]] || recorded_options+=(--data-root "$data_root")
# run_info: when, command, commit, machine (lib.sh).
describe_run "${recorded_options[@]}"
jq -s 'reduce .[] as $f ({}; setpath($f.path; $f.value))' "$facts" >"$data/phases.json"

jq -n --argjson run_info "$run_info" --arg etcd_version "$etcd_version" \
    --slurpfile phases "$data/phases.json" --arg data_fs "$(df --output=fstype "$data" | tail -1)" \
    --argjson keys_a "$keys_a" --argjson keys_b "$keys_b" --argjson value_a "$value_a" \
    --argjson value_b "$value_b" --argjson load_clients "$load_clients" \
    --argjson load_max_seconds "$load_max_seconds" --argjson register_requests "$register_requests" --argjson register_rounds "$register_rounds" --argjson fresh_clusters "$fresh_clusters" \
    --argjson register_clients "$register_clients" --argjson fill_instances "$fill_instances" \
    --argjson fill_clients "$fill_clients" --argjson services "$services" --argjson page "$page" \
    --argjson quota "$etcd_quota" --argjson settle_max "$settle_max_s" --argjson drop_caches "$drop_caches" \
    --argjson settle_quiet "$settle_quiet_s" --argjson min_free "$min_free_b_gib" \
    --argjson panics "$panics" --argjson errors "$error_lines" \
    --argjson snapshots "$snapshots_built" --argjson error_samples "$error_samples" '
    def median: map(select(. != null)) | sort |
        if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def ratio($a; $b): if $a == null or $b == null or $b == 0 then null
        else ($a / $b * 1000 | round / 1000) end;
    $phases[0] as $p |
    {benchmark: "scale"} + $run_info + {
        config: {
            nodes_per_cluster: 3, etcd_version: $etcd_version, data_fs: $data_fs,
            etcd_flags: "defaults (WAL fsync on every commit, snapshot every 100,000 entries, no auto-compaction) plus --quota-backend-bytes \($quota) (8 GiB; the default 2 GiB would not hold load B)",
            strata_flags: "defaults (fsync on every commit, snapshot every 10,000 entries); no storage quota",
            load_a: {keys: $keys_a, value_size: $value_a, clients: $load_clients,
                     max_seconds: $load_max_seconds, key_prefix: "scale/a/"},
            load_b: {keys: $keys_b, value_size: $value_b, clients: $load_clients,
                     max_seconds: $load_max_seconds, key_prefix: "scale/b/",
                     skipped_below_free_gib: $min_free},
            connections: "strata-bench default: one HTTP/2 connection per endpoint; endpoints listed followers first, leader last",
            reads: {page: $page, through: "one follower of each system"},
            registry: {measure_requests: $register_requests, measure_clients: $register_clients,
                       measure_runs: $register_rounds,
                       throughput: "of a measured phase: the median of its runs (whole_throughput: all its registrations over all its seconds)",
                       fill_instances: $fill_instances, fill_clients: $fill_clients,
                       services: $services, kind: "persistent", fresh_clusters: $fresh_clusters,
                       order: "at the end, after the join and load B: measure (empty), fill, measure (full); so no footprint compared with etcd includes the registry instances. First registry_loaded on the loaded cluster, then registry_fresh_N on fresh_clusters fresh 3-node Strata clusters (ids 11-13, 21-23, ...) started one after another once both loaded clusters stopped and their data dirs were deleted, each store holding only the registry (and the keys of an untimed warm-up of as many KV puts as one measured run has registrations); the summary ratio is the median of the fresh ones",
                       quiet: "each measured run starts once the Strata data dirs held still for 3 s (at most 60 s)"},
            compaction: "etcdctl compact --physical <current revision> on both; etcdctl defrag on every etcd member afterwards; none on Strata, whose data dirs are sampled every 1 s for up to \($settle_max) s (until they have shrunk and then held still for \($settle_quiet) s); load A writes every key once, so the compaction leaves every scale/a/ key its one version: there is little history to free in either system",
            restart: "kill -9 of one follower per system, restarted with the same flags, ports and data dir",
            join: "an empty 4th member per system, removed and stopped again afterwards",
            disk: "du -sb of each member data dir (apparent bytes), MiB; allocated: du -sB1 (blocks held; Strata preallocates a sparse 64 MiB log journal that du -sb counts whole)",
            page_cache: (if $drop_caches then "emptied (sync; echo 1 > /proc/sys/vm/drop_caches) before the load of each system" else "not emptied (no write access to /proc/sys/vm/drop_caches); sync before the load of each system" end)
        },
        phases: $p,
        summary: {
            put_ratio: ratio($p.load_a.strata.put.throughput; $p.load_a.etcd.put.throughput),
            worst_window_p99_over_steady: ratio($p.load_a.strata.put.window_p99_worst_ms;
                                                $p.load_a.strata.put.window_p99_median_ms),
            worst_window_snapshots: ($p.load_a.strata.put.window_p99_worst_at_s as $w
                | if $w == null then null else ($p.load_a.strata.snapshots // [])
                  | map(select(.start_s < $w + 1 and .end_s >= $w)) end),
            # The slow steps members warned of that ended in the worst window or the second
            # after it (a step is logged when it ends).
            worst_window_slow_steps: ($p.load_a.strata.put.window_p99_worst_at_s as $w
                | if $w == null then null else ($p.load_a.strata.slow_steps // [])
                  | map(select(.at_s >= $w and .at_s < $w + 2)) end),
            etcd_worst_window_p99_over_steady: ratio($p.load_a.etcd.put.window_p99_worst_ms;
                                                     $p.load_a.etcd.put.window_p99_median_ms),
            tail_window_p99_over_steady: {strata: ratio($p.load_a.strata.put.window_p99_tail_ms;
                                                        $p.load_a.strata.put.window_p99_median_ms),
                                          etcd: ratio($p.load_a.etcd.put.window_p99_tail_ms;
                                                      $p.load_a.etcd.put.window_p99_median_ms),
                                          seconds: {strata: $p.load_a.strata.put.window_tail_seconds,
                                                    etcd: $p.load_a.etcd.put.window_tail_seconds}},
            slowest_put_snapshots: ($p.load_a.strata.put.max_at_ms as $m
                | if $m == null then null else ($p.load_a.strata.snapshots // [])
                  | map(select(.start_s * 1000 <= $m + 100 and .end_s * 1000 >= $m - 100)) end),
            rss_median_after_a_mib: {etcd: ($p.load_a.etcd.footprint.rss_mib | median),
                                     strata: ($p.load_a.strata.footprint.rss_mib | median)},
            rss_ratio: ratio($p.load_a.strata.footprint.rss_mib | median;
                             $p.load_a.etcd.footprint.rss_mib | median),
            restart_s: {strata: $p.restart.strata.seconds, etcd: $p.restart.etcd.seconds},
            join_s: {strata: $p.join.strata.seconds, etcd: $p.join.etcd.seconds},
            register_fresh_ratios: [range(1; $fresh_clusters + 1) as $i | $p["registry_fresh_\($i)"] |
                                    ratio(.full.throughput; .empty.throughput)],
            register_fresh_whole_ratios: [range(1; $fresh_clusters + 1) as $i | $p["registry_fresh_\($i)"] |
                                          ratio(.full.whole_throughput; .empty.whole_throughput)],
            register_full_over_empty: ([range(1; $fresh_clusters + 1) as $i | $p["registry_fresh_\($i)"] |
                                        ratio(.full.throughput; .empty.throughput)] | median),
            register_target_met: ([range(1; $fresh_clusters + 1) as $i | $p["registry_fresh_\($i)"] |
                                   ratio(.full.throughput; .empty.throughput)] | median
                                  | if . == null then null else . >= 0.9 end),
            register_loaded_full_over_empty: ratio($p.registry_loaded.full.throughput;
                                                   $p.registry_loaded.empty.throughput)
        },
        strata_logs: {panics: $panics, error_lines: $errors, snapshots_built: $snapshots,
                      error_samples: $error_samples}
    }' >"$results_file"

# --- summary --------------------------------------------------------------------------------
# shellcheck disable=SC2016 # a jq program: its $names are jq variables
print_summary '
    def mibs: if . == null then "-" else map(tostring) | join(" / ") end;
    def disk: if . == null then "-" else "\(.disk_mib | mibs) (allocated \(.disk_alloc_mib | mibs))" end;
    def put_row($sys; $x): "| \($sys) | \($x.put.throughput | f) | \($x.put.p50_ms | f) | \($x.put.p99_ms | f) | \($x.put.max_ms | f) | \($x.put.window_p99_median_ms | f) | \($x.put.window_p99_worst_ms | f) | \($x.put.windows | f) | \($x.put.errors | f) | \($x.footprint.rss_mib | mibs) | \($x.footprint | disk) |";
    def put_table($title; $ph):
        "", "### \($title)", "",
        "| system | throughput (puts/s) | p50 (ms) | p99 (ms) | max (ms) | steady window p99 (ms) | worst window p99 (ms) | windows | errors | RSS per member after (MiB) | disk per member after (MiB, du -sb) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        put_row("etcd"; $ph.etcd), put_row("strata"; $ph.strata);
    .phases as $p | .config as $c |
    heading("Strata vs etcd \($c.etcd_version) at scale over the etcd v3 API"),
    "etcd: \($c.etcd_flags)",
    put_table("Load A: \($c.load_a.keys) keys of \($c.load_a.value_size) bytes, \($c.load_a.clients) clients"; $p.load_a),
    "",
    "strata snapshots during load A (seconds from the load start): \($p.load_a.strata.snapshots // [] | map("node \(.node)\(if .leader then " (leader)" else "" end) \(.start_s)-\(.end_s) s, \(.mb) MiB") | join("; ")); worst window at second \($p.load_a.strata.put.window_p99_worst_at_s | f), overlapping \(.summary.worst_window_snapshots // [] | if length == 0 then "no snapshot" else map("node \(.node)") | join(", ") end), with slow steps \(.summary.worst_window_slow_steps // [] | if length == 0 then "none" else map("node \(.node) \(.step) \(.took_ms) ms at \(.at_s) s") | join(", ") end); the last \($p.load_a.strata.put.window_tail_seconds | f) s of the run (not a whole window) had a p99 of \($p.load_a.strata.put.window_p99_tail_ms | f) ms; the slowest put completed at \($p.load_a.strata.put.max_at_ms | f) ms, beside \(.summary.slowest_put_snapshots // [] | if length == 0 then "no snapshot" else map("node \(.node)") | join(", ") end)",
    "",
    "### Reads of scale/a/ through a follower",
    "",
    "| system | keys | range-all (s) | keys/s | slowest page (ms) | watch replay (s) | events/s | slowest gap (ms) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
    ($p.reads | to_entries[] | "| \(.key) | \(.value["range-all"].items | f) | \(.value["range-all"].seconds | f) | \(.value["range-all"].throughput | f) | \(.value["range-all"].slowest_ms | f) | \(.value["watch-replay"].seconds | f) | \(.value["watch-replay"].throughput | f) | \(.value["watch-replay"].slowest_ms | f) |"),
    "",
    "### Compaction at the current revision",
    "",
    "| system | revision | compact (s) | disk before (MiB, du -sb) | disk after compaction (MiB) | disk after defrag (MiB) | defrag (s) | RSS after (MiB) |",
    "|---|---:|---:|---|---|---|---|---|",
    "| etcd | \($p.compaction.etcd.revision | f) | \($p.compaction.etcd.compact_s | f) | \($p.compaction_before.etcd.footprint | disk) | \($p.compaction_after.etcd.footprint | disk) | \($p.compaction_defrag.etcd.footprint | disk) | \($p.compaction.etcd.defrag_s | mibs) | \($p.compaction_defrag.etcd.footprint.rss_mib | mibs) |",
    "| strata | \($p.compaction.strata.revision | f) | \($p.compaction.strata.compact_s | f) | \($p.compaction_before.strata.footprint | disk) | \($p.compaction_after.strata.footprint | disk) | (no defrag) | - | \($p.compaction_after.strata.footprint.rss_mib | mibs) |",
    "",
    "strata: \($p.compaction.strata.settle.note)",
    "",
    "### Restart of a follower (kill -9) and join of an empty 4th member",
    "",
    "| system | restarted member | restart to serving and caught up (s) | join to caught up (s) | RSS per member after join (MiB) | disk per member after join (MiB, du -sb) |",
    "|---|---:|---:|---:|---|---|",
    (("etcd", "strata") as $s |
        "| \($s) | \($p.restart[$s].member | f) | \($p.restart[$s].seconds | f) | \($p.join[$s].seconds | f)\(if $s == "strata" then " (add-member returned at \($p.join.strata.add_member_returned_s | f))" else "" end) | \($p.join[$s].footprint.rss_mib | mibs) | \($p.join[$s].footprint | disk) |"),
    (if $p.load_b.skipped then "", "### Load B: skipped (\($p.load_b.skipped))"
     else put_table("Load B: \($c.load_b.keys) keys of \($c.load_b.value_size) bytes, \($c.load_b.clients) clients, on top of load A"; $p.load_b) end),
    "",
    "### Registry (Strata only, run last): \($c.registry.measure_requests) registrations in \($c.registry.measure_runs) runs, \($c.registry.measure_clients) clients",
    "",
    "| cluster | registry holds | median run (/s) | whole phase (/s) | p50 (ms) | p99 (ms) | errors | snapshots during |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
    (([range(1; $c.registry.fresh_clusters + 1) as $i | ["fresh \($i) (store holds only the registry and the warm-up keys)", $p["registry_fresh_\($i)"]]] + [["loaded (on top of load A\(if $p.load_b.skipped then "" else " and load B" end))", $p.registry_loaded]]) | .[] as [$name, $r] |
        "| \($name) | no instances | \($r.empty.throughput | f) | \($r.empty.whole_throughput | f) | \($r.empty.p50_ms | f) | \($r.empty.p99_ms | f) | \($r.empty.errors | f) | \($r.empty.snapshots | length) |",
        "| \($name) | \($r.empty.requests + $r.fill.requests) instances (after a fill of \($r.fill.requests) at \($r.fill.throughput | f)/s) | \($r.full.throughput | f) | \($r.full.whole_throughput | f) | \($r.full.p50_ms | f) | \($r.full.p99_ms | f) | \($r.full.errors | f) | \($r.full.snapshots | length) |"),
    "",
    "full / empty on fresh clusters (median runs): \(.summary.register_fresh_ratios | map(f) | join(", ")) (whole phases: \(.summary.register_fresh_whole_ratios | map(f) | join(", "))), median \(.summary.register_full_over_empty | f) (target >= 0.9: \(.summary.register_target_met | met)); on the loaded cluster: \(.summary.register_loaded_full_over_empty | f); instances seen per node: \($p.registry_fresh_1.instances.seen_per_node | mibs) of \($p.registry_fresh_1.instances.registered) (fresh 1), \($p.registry_loaded.instances.seen_per_node | mibs) of \($p.registry_loaded.instances.registered) (loaded)",
    "",
    "at the end (after the registry phase of the loaded cluster: the replicated store of Strata holds the registry instances too, etcd does not): RSS per member etcd \($p.after_registry.etcd.footprint.rss_mib | mibs), strata \($p.after_registry.strata.footprint.rss_mib | mibs) MiB; disk etcd \($p.after_registry.etcd.footprint | disk), strata \($p.after_registry.strata.footprint | disk) MiB",
    "",
    "strata logs: \(.strata_logs.panics) panics, \(.strata_logs.error_lines) ERROR lines (a kill -9 and a member removal happened), \(.strata_logs.snapshots_built) snapshots built"
'
jq -r '.summary |
    def x: if . == null then "nan" else . end;
    "\(.put_ratio | x) \(.worst_window_p99_over_steady | x) \(.rss_ratio | x) \(.restart_s.strata | x) \(.restart_s.etcd | x) \(.join_s.strata | x) \(.join_s.etcd | x) \(.register_full_over_empty | x) \(.register_loaded_full_over_empty | x)"' \
    "$results_file" | {
    read -r put worst rss rs_s rs_e js_s js_e reg reg_loaded
    printf 'RESULT put_ratio=%.2f worst_window_p99_over_steady=%.2f rss_ratio=%.2f restart_s=%.2f/%.2f join_s=%.2f/%.2f register_full_over_empty=%.2f register_loaded=%.2f\n' \
        "$put" "$worst" "$rss" "$rs_s" "$rs_e" "$js_s" "$js_e" "$reg" "$reg_loaded"
}
