#!/usr/bin/env bash
# bench/spine.sh: measures the Raft + KV spine (issue 2) on loopback.
#
#   1. `strata dev` time to ready (spawn until /readyz answers 200), fresh data dir per run;
#   2. a 3-node `strata server` cluster (founded by node 1, nodes 2-3 joined through
#      `strata cluster add-member`), data on the real disk under bench/.data/, default durability;
#   3. idle RSS per node, after a few writes and 5 s of idle;
#   4. put throughput and p50/p99 latency with 1 and 64 clients (256-byte values, strata-bench),
#      runs interleaved 1,64,1,64,..., medians reported;
#   5. RSS per node after the load;
#   6. leader failover: kill -9 the leader, time until a put through a survivor succeeds,
#      restart the killed node on its ports and data dir, wait until it has rejoined; repeat.
#
# Prints a summary and writes every raw number, the machine, the commit and the settings to
# bench/results/spine-<UTC timestamp>.json (spine-<stamp>-quick.json with --quick).
#
# Usage: bash bench/spine.sh [--quick] [--no-build] [--keep-data] [--results FILE]
#
# Every process this script starts is tracked by PID and stopped on exit (SIGTERM, then
# SIGKILL after 15 s); it never signals processes it did not start.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

# --help prints lines 2-20 above, then this.
options_help() {
    cat <<'EOF'

Options:
  --quick         smoke run: 2 dev runs, 1 load run per client count, small request
                  counts, 2 failover runs (well under 2 minutes after the build)
  --no-build      use the release binaries already in target/release
  --keep-data     keep bench/.data/spine-<stamp> (node logs, data dirs) after a clean run
  --results FILE  write the JSON results here instead of bench/results/
EOF
}
# The common options (lib.sh): sets quick, build, keep_data and results_file.
parse_options 20 "$@"

if ((quick)); then
    dev_runs=2
    load_rounds=1
    puts_one_client=300
    puts_many_clients=3000
    load_max_seconds=15
    failover_runs=2
else
    dev_runs=5
    load_rounds=3
    puts_one_client=5000
    puts_many_clients=50000
    load_max_seconds=60
    failover_runs=10
fi
many_clients=64
value_size=256
idle_seconds=5
node_count=3

# cd to the repository; names the data dir and results file; checks for these tools (lib.sh).
bench_setup spine jq curl flock cargo awk

# --- build ----------------------------------------------------------------------------------
build_release
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# --- 1. strata dev time to ready ------------------------------------------------------------
dev_results="$data/dev.jsonl"
: >"$dev_results"
for run in $(seq 1 "$dev_runs"); do
    dir="$data/dev-$run"
    mkdir -p "$dir"
    t0=${EPOCHREALTIME/./}
    STRATA_LOG=info "$strata" dev --data-dir "$dir/data" --api-addr 127.0.0.1:0 \
        --raft-addr 127.0.0.1:0 --addrs-file "$dir/addrs.json" >"$dir/stdout" 2>"$dir/stderr" &
    pid=$!
    track "$pid"
    deadline=$((t0 + 20000000))
    api=""
    # No jq in this loop: it takes ~20 ms to start, which would swamp the measurement. The
    # file is written atomically (rename), so a non-empty file is complete.
    while true; do
        if [[ -s "$dir/addrs.json" ]]; then
            read -r -d '' addrs_text <"$dir/addrs.json" || true
            if [[ $addrs_text =~ \"api\"[[:space:]]*:[[:space:]]*\"([^\"]+)\" ]]; then
                api=${BASH_REMATCH[1]}
                break
            fi
        fi
        alive "$pid" || die "strata dev exited before listening; see $dir/stderr"
        ((${EPOCHREALTIME/./} < deadline)) || die "strata dev wrote no addresses within 20 s"
        sleep 0.01
    done
    until ready "$api"; do
        alive "$pid" || die "strata dev exited before ready; see $dir/stderr"
        ((${EPOCHREALTIME/./} < deadline)) || die "strata dev not ready within 20 s"
        sleep 0.01
    done
    t1=${EPOCHREALTIME/./}
    wall_ms=$(elapsed_ms "$t0" "$t1")
    # The line is printed right after readiness; give it a moment to land in the file.
    printed_ms=""
    for _ in $(seq 1 100); do
        printed_ms=$(sed -n 's/.*ready in \([0-9]*\) ms.*/\1/p' "$dir/stdout" | head -n 1)
        [[ -n $printed_ms ]] && break
        sleep 0.02
    done
    stop_pid "$pid"
    exit_status=$stopped_status
    log "dev run $run: ready after ${wall_ms} ms (printed: ${printed_ms:-?} ms), exit $exit_status"
    jq -nc --argjson run "$run" --argjson wall "$wall_ms" --arg printed "$printed_ms" \
        --argjson exit "$exit_status" \
        '{run: $run, wall_ms: $wall, printed_ms: ($printed | tonumber? // null), exit_status: $exit}' \
        >>"$dev_results"
done

# --- 2. three-node cluster (bench/cluster.sh: node 1 founds, 2 and 3 join) ------------------
cluster_node_flags=()
# shellcheck source=bench/cluster.sh
source "$repo/bench/cluster.sh"
start_cluster cluster

# --- 3. idle RSS ----------------------------------------------------------------------------
for i in $(seq 1 10); do
    curl -sf -o /dev/null --max-time 5 -X POST -H 'content-type: application/json' \
        -d "{\"key\":\"spine/idle/$i\",\"value\":\"v$i\"}" "http://${node_api[1]}/v1/kv/put" ||
        die "idle put $i failed"
done
log "idle for ${idle_seconds}s"
sleep "$idle_seconds"
declare -A rss_idle rss_loaded
for id in $(seq 1 "$node_count"); do
    rss_idle[$id]=$(rss_mib "${node_pid[$id]}")
done
log "idle RSS (MiB): $(for id in $(seq 1 "$node_count"); do printf 'n%s=%s ' "$id" "${rss_idle[$id]}"; done)"

# --- 4. put load, interleaved 1, 64, 1, 64, ... ---------------------------------------------
load_results="$data/load.jsonl"
: >"$load_results"
for round in $(seq 1 "$load_rounds"); do
    for clients in 1 "$many_clients"; do
        requests=$puts_one_client
        ((clients == 1)) || requests=$puts_many_clients
        line=$("$bench" put --endpoints "$(endpoints)" --clients "$clients" \
            --requests "$requests" --value-size "$value_size" \
            --max-seconds "$load_max_seconds" --key-prefix "spine/put/r$round-c$clients/") ||
            die "strata-bench put (round $round, $clients clients) failed"
        jq -c --argjson round "$round" '. + {round: $round}' <<<"$line" >>"$load_results"
        log "put round $round, $clients clients: $line"
    done
done

# --- 5. RSS after load ----------------------------------------------------------------------
for id in $(seq 1 "$node_count"); do
    rss_loaded[$id]=$(rss_mib "${node_pid[$id]}")
done
log "RSS after load (MiB): $(for id in $(seq 1 "$node_count"); do printf 'n%s=%s ' "$id" "${rss_loaded[$id]}"; done)"

# --- 6. leader failover ---------------------------------------------------------------------
# True when one put through any of the given API addresses succeeds.
put_via_any() {
    local body=$1 api
    shift
    for api in "$@"; do
        if curl -s -o /dev/null -w '%{http_code}' --connect-timeout 0.2 --max-time 1 \
            -X POST -H 'content-type: application/json' -d "$body" \
            "http://$api/v1/kv/put" 2>/dev/null | grep -qx 200; then
            return 0
        fi
    done
    return 1
}

# True when node $1 reports a leader, lists itself, and has applied at least index $2.
rejoined() {
    local status
    status=$(cluster_status "http://${node_api[$1]}") || return 1
    jq -e --argjson id "$1" --argjson index "$2" \
        '.leader != null and (any(.members[]; .id == $id and .role != "learner"))
         and .applied_index >= $index' <<<"$status" >/dev/null
}

failover_results="$data/failover.jsonl"
: >"$failover_results"
for run in $(seq 1 "$failover_runs"); do
    leader=""
    wait_until 30 "a leader before failover run $run" leader_id "$(endpoints)"
    leader=$(leader_id "$(endpoints)")
    survivor_ids=()
    survivors=()
    for id in $(seq 1 "$node_count"); do
        ((id == leader)) && continue
        survivor_ids+=("$id")
        survivors+=("${node_api[$id]}")
    done
    victim=${node_pid[$leader]}
    is_ours "$victim" || die "leader $leader (pid $victim) is not running"

    t0=${EPOCHREALTIME/./}
    kill -KILL "$victim"
    deadline=$((t0 + 30000000))
    # 2>/dev/null: bash reports the SIGKILLed job ("Killed") on stderr while this loop runs.
    until put_via_any "{\"key\":\"spine/failover\",\"value\":\"run-$run\"}" "${survivors[@]}"; do
        ((${EPOCHREALTIME/./} < deadline)) ||
            die "no put succeeded within 30 s of killing leader $leader"
        sleep 0.02
    done 2>/dev/null
    t1=${EPOCHREALTIME/./}
    failover_ms=$(elapsed_ms "$t0" "$t1")
    { wait "$victim" || true; } 2>/dev/null
    untrack "$victim"
    new_leader=$(leader_id "$(endpoints "${survivor_ids[@]}")" || true)

    # Bring the killed node back on the same ports and data dir, and wait until it is a
    # caught-up member again, so every run starts from a healthy 3-node cluster.
    t2=${EPOCHREALTIME/./}
    start_node "$leader"
    wait_until 30 "node $leader to be ready after restart" ready "${node_api[$leader]}"
    status=$(cluster_status "$(endpoints "${survivor_ids[@]}")") ||
        die "no cluster status from the survivors after failover run $run"
    commit_index=$(jq -r '.commit_index' <<<"$status")
    wait_until 30 "node $leader to rejoin and catch up" rejoined "$leader" "$commit_index"
    t3=${EPOCHREALTIME/./}
    rejoin_ms=$(elapsed_ms "$t2" "$t3")
    log "failover run $run: killed leader $leader, put succeeded after ${failover_ms} ms" \
        "(new leader ${new_leader:-?}); node $leader rejoined in ${rejoin_ms} ms"
    jq -nc --argjson run "$run" --argjson killed "$leader" --argjson failover "$failover_ms" \
        --argjson rejoin "$rejoin_ms" --arg new_leader "$new_leader" \
        '{run: $run, killed_leader: $killed, new_leader: ($new_leader | tonumber? // null),
          failover_ms: $failover, restart_to_rejoined_ms: $rejoin}' >>"$failover_results"
done

# --- shut the cluster down ------------------------------------------------------------------
declare -A node_exit
for id in $(seq 1 "$node_count"); do
    stop_pid "${node_pid[$id]}"
    node_exit[$id]=$stopped_status
done
node_logs=$(log_counts)

# --- results --------------------------------------------------------------------------------
nodes_json=$(for id in $(seq 1 "$node_count"); do
    jq -nc --argjson id "$id" --argjson idle "${rss_idle[$id]}" \
        --argjson loaded "${rss_loaded[$id]}" --argjson exit "${node_exit[$id]}" \
        --argjson starts "${node_starts[$id]}" \
        '{id: $id, rss_idle_mib: $idle, rss_after_load_mib: $loaded, starts: $starts,
          final_exit_status: $exit}'
done | jq -s .)

# run_info: when, command, commit, machine; jq_run_defs: median, runs_summary (lib.sh).
describe_run
jq -n --argjson run_info "$run_info" \
    --argjson dev_runs "$dev_runs" --argjson load_rounds "$load_rounds" \
    --argjson puts_one "$puts_one_client" --argjson puts_many "$puts_many_clients" \
    --argjson many "$many_clients" --argjson value_size "$value_size" \
    --argjson max_seconds "$load_max_seconds" --argjson failover_runs "$failover_runs" \
    --argjson idle_seconds "$idle_seconds" \
    --slurpfile dev "$dev_results" --slurpfile load "$load_results" \
    --slurpfile failover "$failover_results" --argjson nodes "$nodes_json" \
    --argjson node_logs "$node_logs" \
    "$jq_run_defs"'
    def load_summary($c): runs_summary([$load[] | select(.clients == $c)]; $c);
    {benchmark: "spine"} + $run_info + {
        config: {
            nodes: 3, durability: "default (fsync per commit)",
            raft: "defaults: heartbeat 100ms, election timeout 500-1000ms",
            dev_runs: $dev_runs, load_rounds: $load_rounds, value_size: $value_size,
            puts_per_run: {"1": $puts_one, ($many | tostring): $puts_many},
            load_max_seconds: $max_seconds, failover_runs: $failover_runs,
            idle_seconds: $idle_seconds
        },
        summary: {
            dev_ready_ms: {median: ([$dev[].wall_ms] | median), max: ([$dev[].wall_ms] | max),
                           printed_median: ([$dev[].printed_ms | numbers] | median)},
            rss_idle_mib: [$nodes[].rss_idle_mib],
            rss_after_load_mib: [$nodes[].rss_after_load_mib],
            put: [load_summary(1), load_summary($many)],
            failover_ms: {median: ([$failover[].failover_ms] | median),
                          worst: ([$failover[].failover_ms] | max)},
            restart_to_rejoined_ms: {median: ([$failover[].restart_to_rejoined_ms] | median),
                                     worst: ([$failover[].restart_to_rejoined_ms] | max)},
            node_logs: $node_logs
        },
        raw: {dev: $dev, nodes: $nodes, put: $load, failover: $failover}
    }' >"$results_file"

# --- summary --------------------------------------------------------------------------------
print_summary '
    .summary as $s |
    heading("Strata spine benchmark"),
    "",
    "| measure | value |",
    "|---|---:|",
    "| `strata dev` ready, median / max (ms, wall, \(.config.dev_runs) runs) | \($s.dev_ready_ms.median | f) / \($s.dev_ready_ms.max | f) |",
    "| `strata dev` ready as printed, median (ms) | \($s.dev_ready_ms.printed_median | f) |",
    "| idle RSS per node (MiB) | \($s.rss_idle_mib | map(tostring) | join(" / ")) |",
    ($s.put[] | "| put, \(.clients) client(s): throughput (ops/s) / p50 / p99 (ms), median of \(.runs) | \(.throughput_median | f) / \(.p50_ms_median | f) / \(.p99_ms_median | f) |"),
    "| RSS per node after load (MiB) | \($s.rss_after_load_mib | map(tostring) | join(" / ")) |",
    "| leader failover, median / worst (ms, \(.config.failover_runs) runs) | \($s.failover_ms.median | f) / \($s.failover_ms.worst | f) |",
    "| killed node restart to rejoined, median / worst (ms) | \($s.restart_to_rejoined_ms.median | f) / \($s.restart_to_rejoined_ms.worst | f) |",
    "| node logs: panics / ERROR / WARN lines | \($s.node_logs.panics) / \($s.node_logs.error_lines) / \($s.node_logs.warn_lines) |",
    "",
    "put errors: \([$s.put[].errors_total] | map(tostring) | join(" / "))"
'
