#!/usr/bin/env bash
# bench/config.sh: measures the config center on a 3-node loopback cluster.
#
#   1. publishes/s and p50/p99: `strata-bench config-publish` with 64 and with 128 clients,
#      each publish a new version (256 bytes, its own md5) of one of 1,000 configs, spread
#      over the 3 nodes, runs interleaved 64,128,64,..., medians reported;
#   2. reads/s and p50/p99: `strata-bench config-get` with 32, 64 and 128 clients reading
#      those 1,000 configs from all 3 nodes (each node answers from its own view), one raw
#      HTTP/1.1 keep-alive connection per client; runs interleaved, medians reported. Each
#      round also runs 128 clients through `strata_client::Client` (reqwest) for comparison.
#      The CPU seconds of every node and of strata-bench itself are recorded for each run;
#   3. notification latency: `strata-bench config-listen`, 10,000 long-polls (one connection
#      each) on one follower, all holding the config's md5; once the node's
#      `strata_configcenter_listeners` gauge shows them all held, one publish through that node;
#      latency from just before the publish to each long-poll's answer;
#   4. RSS per node: VmRSS of every node just before the long-polls are opened ("idle"), while
#      they are all held, and after they have been answered.
#
# Prints a summary and a last line `RESULT publishes_per_s=... publish_p99_ms=...
# reads_per_s=... read_p99_ms=... notify_p50_ms=... notify_p99_ms=... listeners=...
# rss_mib=[a,b,c] rss_idle_mib=[a,b,c] ...` (publishes and reads: the client count with the
# higher median throughput; rss_mib: while the long-polls are held), and writes every raw
# number, the machine, the commit and the settings to bench/results/config-<UTC stamp>.json
# (config-<stamp>-quick.json with --quick).
#
# Usage: bash bench/config.sh [--quick] [--no-build] [--keep-data] [--results FILE]
#
# Every process this script starts is tracked by PID and stopped on exit (SIGTERM, then
# SIGKILL after 15 s); it never signals processes it did not start.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

# --help prints lines 2-30 above, then this.
options_help() {
    cat <<'EOF'

Options:
  --quick         smoke run: 1 round of 3,000 publishes per client count, 3 s of reads per
                  client count, 1,000 long-polls
  --no-build      use the release binaries already in target/release
  --keep-data     keep bench/.data/config-<stamp> (node logs, data dirs) after a clean run
  --results FILE  write the JSON results here instead of bench/results/
EOF
}
# The common options (lib.sh): sets quick, build, keep_data and results_file.
parse_options 29 "$@"

if ((quick)); then
    publish_rounds=1
    publish_requests=3000
    publish_max_seconds=15
    get_rounds=1
    get_seconds=3
    listeners=1000
else
    publish_rounds=3
    publish_requests=30000
    publish_max_seconds=60
    get_rounds=3
    get_seconds=10
    listeners=10000
fi
publish_client_counts=(64 128)
get_client_counts=(32 64 128)
# The reqwest-based client is run at this client count too, for comparison.
get_compare_clients=128
configs=1000
value_size=256
listen_data_id=bench-listen
# Every long-poll asks to be held this long (the server's maximum); the run needs far less.
listen_poll_timeout=120s
listen_open_timeout=60s
# Long-polls on their way at once (below the node's accept backlog of 128).
listen_open_window=100
# Time the long-polls stay held before the publish; RSS is read 2 s into it.
listen_hold_seconds=5
listen_delivery_timeout=10s
node_count=3

# cd to the repository; names the data dir and results file; checks for these tools (lib.sh).
bench_setup config jq curl flock cargo awk timeout getconf

# 10,000 long-polls are 10,000 sockets in strata-bench and in the node holding them.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= listeners + 1024)) ||
    die "open-file limit $(ulimit -n) is too low for $listeners long-polls (need $((listeners + 1024)); raise the hard limit)"

# --- build ----------------------------------------------------------------------------------
build_release
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# --- cluster helpers (bench/cluster.sh) --------------------------------------------------------
cluster_node_flags=()
# shellcheck source=bench/cluster.sh
source "$repo/bench/cluster.sh"

# CPU time (user + system) every node has used so far, in clock ticks, as a JSON array.
cpu_ticks_json() {
    local id
    for id in $(seq 1 "$node_count"); do
        cpu_ticks "${node_pid[$id]}"
    done | jq -sc .
}

# strata_configcenter_listeners of every node, as a JSON array (null where it could not be read).
listeners_json() {
    local id
    for id in $(seq 1 "$node_count"); do
        { curl -sf --max-time 5 "http://${node_api[$id]}/metrics" || true; } |
            awk '$1 ~ /^strata_configcenter_listeners($|\{)/ { sum += $2; found = 1 } END { print found ? sum : "null" }'
    done | jq -sc .
}

# Runs strata-bench (cap $1 s, then its arguments) and prints its JSON line with the CPU
# seconds every node used meanwhile added as node_cpu_s.
run_bench_cpu() {
    local before after line
    before=$(cpu_ticks_json)
    line=$(run_bench "$@") || return 1
    after=$(cpu_ticks_json)
    jq -c --argjson b "$before" --argjson a "$after" --argjson hz "$clk_tck" \
        '. + {node_cpu_s: [range(0; $a | length) as $i | (($a[$i] - $b[$i]) / $hz * 100 | round / 100)]}' \
        <<<"$line"
}

start_cluster config
leader_start=$(leader_id) || die "no leader after start"
sleep 2
rss_fresh=$(rss_json)
log "leader: node $leader_start; fresh RSS (MiB): $rss_fresh"

# --- 1. publishes ---------------------------------------------------------------------------
publish_results="$data/publish.jsonl"
: >"$publish_results"
for round in $(seq 1 "$publish_rounds"); do
    for clients in "${publish_client_counts[@]}"; do
        line=$(run_bench_cpu $((publish_max_seconds + 60)) config-publish \
            --endpoints "$(endpoints)" --clients "$clients" --requests "$publish_requests" \
            --max-seconds "$publish_max_seconds" --configs "$configs" \
            --value-size "$value_size") ||
            die "strata-bench config-publish (round $round, $clients clients) failed"
        jq -c --argjson round "$round" '. + {round: $round}' <<<"$line" >>"$publish_results"
        log "publish round $round, $clients clients: $line"
    done
done
check_nodes "the publish runs"
rss_after_publish=$(rss_json)
log "RSS after the publish runs (MiB): $rss_after_publish"

# --- 2. reads -------------------------------------------------------------------------------
get_results="$data/get.jsonl"
: >"$get_results"
for round in $(seq 1 "$get_rounds"); do
    for clients in "${get_client_counts[@]}" "client:$get_compare_clients"; do
        http=hyper
        if [[ $clients == client:* ]]; then
            http=client
            clients=${clients#client:}
        fi
        line=$(run_bench_cpu $((get_seconds + 90)) config-get --endpoints "$(endpoints)" \
            --clients "$clients" --duration "${get_seconds}s" --configs "$configs" \
            --value-size "$value_size" --http "$http") ||
            die "strata-bench config-get (round $round, $clients clients, $http) failed"
        jq -c --argjson round "$round" '. + {round: $round}' <<<"$line" >>"$get_results"
        log "get round $round, $clients clients ($http): $line"
    done
done
check_nodes "the read runs"

# --- 3. + 4. long-polls on one follower, RSS before / while held / after --------------------
leader=$(leader_id) || die "no leader before the long-polls"
listen_node=""
for id in $(seq 1 "$node_count"); do
    if ((id != leader)); then
        listen_node=$id
        break
    fi
done
sleep 2
rss_idle=$(rss_json)
log "idle RSS before the long-polls (MiB): $rss_idle"
listen_out="$data/listen.json"
listen_err="$data/listen.stderr"
ready_file="$data/listen.ready"
rm -f "$ready_file"
log "config-listen: $listeners long-polls on node $listen_node (leader: node $leader)"
"$bench" config-listen --endpoint "http://${node_api[$listen_node]}" \
    --listeners "$listeners" --data-id "$listen_data_id" --value-size "$value_size" \
    --poll-timeout "$listen_poll_timeout" --open-timeout "$listen_open_timeout" \
    --open-window "$listen_open_window" --hold "${listen_hold_seconds}s" \
    --ready-file "$ready_file" --delivery-timeout "$listen_delivery_timeout" \
    >"$listen_out" 2>"$listen_err" &
listen_pid=$!
track "$listen_pid"
# The run is bounded inside (open, hold, delivery timeouts); this bounds it from outside.
listen_deadline=$((${EPOCHREALTIME/./} + 180000000))
until [[ -s $ready_file ]]; do
    is_ours "$listen_pid" || die "config-listen exited before holding its long-polls; see $listen_err"
    ((${EPOCHREALTIME/./} < listen_deadline)) || die "config-listen held nothing within 180 s"
    sleep 0.05
done
sleep 2
rss_held=$(rss_json)
gauges_held=$(listeners_json)
log "held: $(cat "$ready_file") long-polls; RSS (MiB): $rss_held; listener gauges: $gauges_held"
while is_ours "$listen_pid" && ((${EPOCHREALTIME/./} < listen_deadline)); do
    sleep 0.1
done
stop_pid "$listen_pid"
listen_status=$stopped_status
listen_line=$(tail -n 1 "$listen_out")
[[ -n $listen_line ]] || die "config-listen printed no report (exit $listen_status); see $listen_err"
((listen_status == 0)) || log "config-listen exited with $listen_status: $(cat "$listen_err")"
log "listen: $listen_line"
sleep 2
check_nodes "the long-polls"
rss_after=$(rss_json)
gauges_after=$(listeners_json)
log "RSS after the long-polls (MiB): $rss_after; listener gauges: $gauges_after"
leader_end=$(leader_id) || leader_end=null

# Counted before shutdown: stopping the nodes one by one logs unreachable peers.
node_logs=$(log_counts)
stop_cluster
node_exits=$cluster_exits

# --- results --------------------------------------------------------------------------------
# run_info: when, command, commit, machine; jq_run_defs: median, runs_summary (lib.sh).
describe_run
jq -n --argjson run_info "$run_info" \
    --argjson publish_rounds "$publish_rounds" --argjson publish_requests "$publish_requests" \
    --argjson publish_max_seconds "$publish_max_seconds" \
    --argjson publish_clients "$(printf '%s\n' "${publish_client_counts[@]}" | jq -sc .)" \
    --argjson get_rounds "$get_rounds" --argjson get_seconds "$get_seconds" \
    --argjson get_clients "$(printf '%s\n' "${get_client_counts[@]}" | jq -sc .)" \
    --argjson get_compare_clients "$get_compare_clients" \
    --argjson configs "$configs" --argjson value_size "$value_size" \
    --argjson listeners "$listeners" --arg listen_poll_timeout "$listen_poll_timeout" \
    --argjson listen_hold_seconds "$listen_hold_seconds" \
    --arg listen_delivery_timeout "$listen_delivery_timeout" \
    --argjson listen_node "$listen_node" --argjson leader_start "$leader_start" \
    --argjson leader "$leader" --argjson leader_end "$leader_end" \
    --slurpfile publish "$publish_results" --slurpfile get "$get_results" \
    --argjson listen "$listen_line" --argjson listen_exit "$listen_status" \
    --argjson rss_fresh "$rss_fresh" --argjson rss_after_publish "$rss_after_publish" \
    --argjson rss_idle "$rss_idle" --argjson rss_held "$rss_held" \
    --argjson rss_after "$rss_after" \
    --argjson gauges_held "$gauges_held" --argjson gauges_after "$gauges_after" \
    --argjson node_logs "$node_logs" --argjson node_exits "$node_exits" \
    "$jq_run_defs"'
    def summary($runs; $c): runs_summary($runs; $c) + {
        node_cpu_s_median: [range(0; 3) as $i | [$runs[].node_cpu_s[$i]] | median],
        client_cpu_s_median: ([$runs[].client_cpu_s] | median),
        seconds_median: ([$runs[].seconds] | median)
    };
    [$publish_clients[] as $c | summary([$publish[] | select(.clients == $c)]; $c)] as $pub |
    [$get_clients[] as $c | summary([$get[] | select(.clients == $c and .http == "hyper")]; $c)
        + {http: "hyper"}] as $gets |
    (summary([$get[] | select(.http == "client")]; $get_compare_clients) + {http: "client"})
        as $get_client |
    ($pub | max_by(.throughput_median)) as $best_pub |
    ($gets | max_by(.throughput_median)) as $best_get |
    {benchmark: "config"} + $run_info + {
        config: {
            nodes: 3, durability: "default (fsync per commit)",
            configs: $configs, value_size: $value_size,
            publish: {rounds: $publish_rounds, client_counts: $publish_clients,
                      requests_per_run: $publish_requests, max_seconds: $publish_max_seconds,
                      endpoints: "all 3 nodes, client i to node i mod 3",
                      http: "one raw hyper HTTP/1.1 keep-alive connection per client"},
            get: {rounds: $get_rounds, client_counts: $get_clients, seconds_per_run: $get_seconds,
                  endpoints: "all 3 nodes, client i to node i mod 3",
                  http: "hyper: one raw HTTP/1.1 keep-alive connection per client",
                  comparison: "client: strata_client::Client (reqwest) at \($get_compare_clients) clients"},
            listen: {listeners: $listeners, node: $listen_node, leader: $leader,
                     poll_timeout: $listen_poll_timeout, hold_seconds: $listen_hold_seconds,
                     delivery_timeout: $listen_delivery_timeout,
                     publish: "through the listening node",
                     latency: "just before the publish leaves to each long-poll answer"},
            cluster: "one fresh cluster: publishes, then reads, then long-polls"
        },
        summary: {
            publishes_per_s: $best_pub.throughput_median,
            publish_clients: $best_pub.clients,
            publish_p50_ms: $best_pub.p50_ms_median,
            publish_p99_ms: $best_pub.p99_ms_median,
            publish: $pub,
            reads_per_s: $best_get.throughput_median,
            read_clients: $best_get.clients,
            read_p50_ms: $best_get.p50_ms_median,
            read_p99_ms: $best_get.p99_ms_median,
            get: $gets,
            get_via_client: $get_client,
            notify_p50_ms: $listen.p50_ms,
            notify_p99_ms: $listen.p99_ms,
            notify_max_ms: $listen.max_ms,
            listeners: $listen.clients,
            listeners_held: $listen.held,
            listeners_notified: $listen.requests,
            listeners_timed_out: $listen.timed_out,
            listeners_unanswered: $listen.unanswered,
            listeners_early: $listen.early,
            listeners_failed: $listen.failed,
            listen_open_ms: $listen.open_ms,
            listen_publish_ms: $listen.publish_ms,
            listen_client_rss_mib: $listen.client_rss_mib,
            listen_exit_status: $listen_exit,
            listener_gauges_held: $gauges_held,
            listener_gauges_after: $gauges_after,
            rss_fresh_mib: $rss_fresh,
            rss_after_publish_mib: $rss_after_publish,
            rss_idle_mib: $rss_idle,
            rss_held_mib: $rss_held,
            rss_after_mib: $rss_after,
            leader: {at_start: $leader_start, before_listen: $leader, at_end: $leader_end},
            node_logs: $node_logs,
            node_exit_statuses: $node_exits
        },
        targets: {
            publishes_per_s: {target: ">= 5000", met: (($best_pub.throughput_median // 0) >= 5000)},
            reads_per_s: {target: ">= 50000", met: (($best_get.throughput_median // 0) >= 50000)},
            notify_p99_ms: {target: "< 1000", met: (($listen.p99_ms // 1e9) < 1000)},
            listeners_notified: {target: "all", met: ($listen.requests == $listen.clients)}
        },
        raw: {publish: $publish, get: $get, listen: $listen}
    }' >"$results_file"

# --- summary --------------------------------------------------------------------------------
print_summary '
    def cpu: "nodes \(.node_cpu_s_median | map(f) | join("+")) s, bench \(.client_cpu_s_median | f) s in \(.seconds_median | f) s";
    .summary as $s | .targets as $t |
    heading("Strata config center benchmark"),
    "",
    "| measure | value | target met |",
    "|---|---:|---|",
    ($s.publish[] | "| publish, \(.clients) clients: throughput (/s) / p50 / p99 (ms), median of \(.runs) | \(.throughput_median | f) / \(.p50_ms_median | f) / \(.p99_ms_median | f) | |"),
    "| publishes/s (best client count: \($s.publish_clients)) | \($s.publishes_per_s | f) | \($t.publishes_per_s.met | met) (>= 5,000) |",
    ($s.get[] | "| read, \(.clients) clients (hyper): throughput (/s) / p50 / p99 (ms), median of \(.runs) | \(.throughput_median | f) / \(.p50_ms_median | f) / \(.p99_ms_median | f) | |"),
    ($s.get_via_client | "| read, \(.clients) clients (strata_client/reqwest): throughput (/s) / p50 / p99 (ms), median of \(.runs) | \(.throughput_median | f) / \(.p50_ms_median | f) / \(.p99_ms_median | f) | |"),
    "| reads/s (best client count: \($s.read_clients)) | \($s.reads_per_s | f) | \($t.reads_per_s.met | met) (>= 50,000) |",
    "| notify \($s.listeners) long-polls: p50 / p99 / max (ms) | \($s.notify_p50_ms | f) / \($s.notify_p99_ms | f) / \($s.notify_max_ms | f) | \($t.notify_p99_ms.met | met) (p99 < 1,000) |",
    "| long-polls held / notified / timed out / unanswered / early / failed | \($s.listeners_held | f) / \($s.listeners_notified | f) / \($s.listeners_timed_out | f) / \($s.listeners_unanswered | f) / \($s.listeners_early | f) / \($s.listeners_failed | f) | \($t.listeners_notified.met | met) |",
    "| opening them (ms) / the publish (ms) / strata-bench RSS (MiB) | \($s.listen_open_ms | f) / \($s.listen_publish_ms | f) / \($s.listen_client_rss_mib | f) | |",
    "| RSS per node: fresh / after publishes / idle before long-polls (MiB) | \($s.rss_fresh_mib | map(tostring) | join(" / ")) ; \($s.rss_after_publish_mib | map(tostring) | join(" / ")) ; \($s.rss_idle_mib | map(tostring) | join(" / ")) | |",
    "| RSS per node holding \($s.listeners) long-polls on node \(.config.listen.node) (MiB) | \($s.rss_held_mib | map(tostring) | join(" / ")) | |",
    "| RSS per node after they were answered (MiB) | \($s.rss_after_mib | map(tostring) | join(" / ")) | |",
    "| node logs before shutdown: panics / ERROR / WARN | \($s.node_logs | "\(.panics) / \(.error_lines) / \(.warn_lines)") | |",
    "",
    "CPU (medians per run):",
    ($s.publish[] | "  publish \(.clients) clients: \(cpu)"),
    ($s.get[] | "  read \(.clients) clients (hyper): \(cpu)"),
    ($s.get_via_client | "  read \(.clients) clients (client): \(cpu)"),
    "",
    "errors: publish \([$s.publish[].errors_total] | map(tostring) | join(" / ")), read \([$s.get[].errors_total] | map(tostring) | join(" / ")), read via client \($s.get_via_client.errors_total | f)",
    "leader: node \($s.leader.at_start) at start, node \($s.leader.before_listen) before the long-polls, node \($s.leader.at_end | f) at the end"
'
jq -r '.summary as $s |
    "RESULT publishes_per_s=\($s.publishes_per_s) publish_p99_ms=\($s.publish_p99_ms)" +
    " reads_per_s=\($s.reads_per_s) read_p99_ms=\($s.read_p99_ms)" +
    " notify_p50_ms=\($s.notify_p50_ms) notify_p99_ms=\($s.notify_p99_ms)" +
    " listeners=\($s.listeners)" +
    " rss_mib=[\($s.rss_held_mib | map(tostring) | join(","))]" +
    " rss_idle_mib=[\($s.rss_idle_mib | map(tostring) | join(","))]" +
    " notified=\($s.listeners_notified) publish_clients=\($s.publish_clients) read_clients=\($s.read_clients)"' \
    "$results_file"
