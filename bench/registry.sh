#!/usr/bin/env bash
# bench/registry.sh: measures the service registry on a 3-node loopback cluster.
#
#   1. registrations/s and p50/p99: `strata-bench registry-register` with 64 and with 128
#      clients, persistent instances spread over 100 services, runs interleaved 64,128,64,...,
#      medians reported; on a fresh cluster ("throughput") that holds nothing else;
#   2. RSS per node holding 100,000 instances: a second fresh cluster ("hold"); register
#      90,000 persistent and 10,000 ephemeral instances (TTL 15 s), then keep the ephemeral ones
#      alive with `strata-bench registry-heartbeat` (each every 5 s, in the background for the
#      rest of the run) and read VmRSS of every node after 30 s of that, and the CPU each node
#      used over those 30 s;
#   3. change-to-subscriber latency: `strata-bench registry-watch`, 1,000 SSE subscribers on
#      one service spread over the 3 nodes, 200 registrations into it (one every 20 ms), latency
#      from just before each write to each subscriber's receipt of its put event (so it
#      includes the write's commit; the fan-out spread without it is reported too); on the
#      hold cluster, with its 100,000 instances and heartbeats running;
#   4. DNS queries/s: `strata-bench dns-query`, UDP, 16 clients against node 1, for a service
#      with 20 healthy instances (A, then SRV); also on the hold cluster.
#
# Prints a summary and a last line `RESULT registrations_per_s=... register_p99_ms=...
# rss_mib=[a,b,c] watch_p50_ms=... watch_p99_ms=... dns_qps=... ...` (registrations: the
# client count with the higher median throughput; RSS: the hold cluster's nodes after the
# 30 s of heartbeats; DNS: A queries), and writes every raw
# number, the machine, the commit and the settings to bench/results/registry-<UTC stamp>.json
# (registry-<stamp>-quick.json with --quick).
#
# Usage: bash bench/registry.sh [--quick] [--no-build] [--keep-data] [--results FILE]
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
  --quick         smoke run: 1 round of 3,000 registrations per client count, 9,000 + 1,000
                  instances held for 10 s, 100 subscribers x 20 changes, 3 s of DNS per type
  --no-build      use the release binaries already in target/release
  --keep-data     keep bench/.data/registry-<stamp> (node logs, data dirs) after a clean run
  --results FILE  write the JSON results here instead of bench/results/
EOF
}
# The common options (lib.sh): sets quick, build, keep_data and results_file.
parse_options 30 "$@"

if ((quick)); then
    register_rounds=1
    register_requests=3000
    register_max_seconds=15
    hold_persistent=9000
    hold_ephemeral=1000
    hold_seconds=10
    heartbeat_clients=8
    watch_subscribers=100
    watch_changes=20
    dns_seconds=3
else
    register_rounds=3
    register_requests=30000
    register_max_seconds=60
    hold_persistent=90000
    hold_ephemeral=10000
    hold_seconds=30
    heartbeat_clients=16
    watch_subscribers=1000
    watch_changes=200
    dns_seconds=10
fi
register_client_counts=(64 128)
register_services=100
hold_clients=128
hold_services=100
hold_register_max_seconds=300
ephemeral_ttl=15s
heartbeat_interval=5s
# The heartbeat load runs from the end of the ephemeral registrations until it is stopped
# after the DNS runs; this caps it in case the script dies without stopping it.
heartbeat_cap=600s
watch_change_interval=20ms
watch_delivery_timeout=10
dns_instances=20
dns_clients=16
node_count=3

# cd to the repository; names the data dir and results file; checks for these tools (lib.sh).
bench_setup registry jq curl flock cargo awk timeout

# 1,000 SSE subscribers are 1,000 sockets in strata-bench (and ~333 in each node).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= 4096)) || log "warning: open-file limit $(ulimit -n) may be too low for $watch_subscribers subscribers"

# --- build ----------------------------------------------------------------------------------
build_release
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# --- cluster helpers (bench/cluster.sh; every node also serves DNS) ---------------------------
cluster_node_flags=(--dns-addr 127.0.0.1:0)
# shellcheck source=bench/cluster.sh
source "$repo/bench/cluster.sh"

# Total instances of the services starting with $2, as node $1's view has them.
instances_seen() {
    curl -sf --max-time 10 "http://${node_api[$1]}/v1/registry/services" |
        jq --arg prefix "$2" '[.services[] | select(.name | startswith($prefix)) | .instances] | add // 0'
}

# --- 1. registration throughput (cluster "throughput") --------------------------------------
start_cluster throughput
register_results="$data/register.jsonl"
: >"$register_results"
for round in $(seq 1 "$register_rounds"); do
    for clients in "${register_client_counts[@]}"; do
        line=$(run_bench $((register_max_seconds + 60)) registry-register \
            --endpoints "$(endpoints)" --clients "$clients" --requests "$register_requests" \
            --max-seconds "$register_max_seconds" --services "$register_services" \
            --service-prefix "tp-" --id-prefix "r${round}c${clients}-") ||
            die "strata-bench registry-register (round $round, $clients clients) failed"
        jq -c --argjson round "$round" '. + {round: $round}' <<<"$line" >>"$register_results"
        log "register round $round, $clients clients: $line"
    done
done
check_nodes "the registration runs"
rss_throughput=$(rss_json)
log "RSS after the registration runs (MiB): $rss_throughput"
# Counted before shutdown: stopping the nodes one by one logs unreachable peers.
throughput_logs=$(log_counts)
stop_cluster
throughput_exits=$cluster_exits

# --- 2. RSS holding 100,000 instances (cluster "hold") --------------------------------------
start_cluster hold
sleep 2
rss_idle=$(rss_json)
log "idle RSS (MiB): $rss_idle"

log "registering $hold_persistent persistent instances"
hold_persistent_line=$(run_bench $((hold_register_max_seconds + 60)) registry-register \
    --endpoints "$(endpoints)" --clients "$hold_clients" --requests "$hold_persistent" \
    --max-seconds "$hold_register_max_seconds" --services "$hold_services" \
    --service-prefix "hold-" --id-prefix "p-") ||
    die "registering the persistent instances failed"
log "persistent: $hold_persistent_line"

ids_file="$data/ephemeral-ids.txt"
log "registering $hold_ephemeral ephemeral instances (ttl $ephemeral_ttl)"
hold_ephemeral_line=$(run_bench $((hold_register_max_seconds + 60)) registry-register \
    --endpoints "$(endpoints)" --clients "$hold_clients" --requests "$hold_ephemeral" \
    --max-seconds "$hold_register_max_seconds" --services "$hold_services" \
    --service-prefix "hold-" --id-prefix "e-" --ephemeral-every 1 \
    --ephemeral-ttl "$ephemeral_ttl" --ids-out "$ids_file") ||
    die "registering the ephemeral instances failed"
log "ephemeral: $hold_ephemeral_line"

heartbeat_out="$data/heartbeat.json"
heartbeat_err="$data/heartbeat.stderr"
"$bench" registry-heartbeat --endpoints "$(endpoints)" --ids-from "$ids_file" \
    --clients "$heartbeat_clients" --interval "$heartbeat_interval" \
    --duration "$heartbeat_cap" >"$heartbeat_out" 2>"$heartbeat_err" &
heartbeat_pid=$!
track "$heartbeat_pid"
log "heartbeating $(wc -l <"$ids_file") ephemeral instances every $heartbeat_interval (pid $heartbeat_pid); holding for ${hold_seconds}s"
cpu_before=$(for id in $(seq 1 "$node_count"); do cpu_ticks "${node_pid[$id]}"; done)
sleep "$hold_seconds"
alive "$heartbeat_pid" || die "registry-heartbeat exited early; see $heartbeat_err"
check_nodes "the hold"
# Each node's CPU over the hold (heartbeats running, nothing else), as % of one core.
cpu_hold=$(paste <(echo "$cpu_before") <(for id in $(seq 1 "$node_count"); do
    cpu_ticks "${node_pid[$id]}"
done) | awk -v hz="$clk_tck" -v s="$hold_seconds" '{ printf "%.1f\n", ($2 - $1) * 100 / hz / s }' | jq -sc .)
rss_hold=$(rss_json)
instances_json=$(for id in $(seq 1 "$node_count"); do
    instances_seen "$id" "hold-" || echo null
done | jq -sc .)
log "RSS holding the instances (MiB): $rss_hold; CPU per node over the hold (% of a core): $cpu_hold; instances per node's view: $instances_json"

# --- 3. watch latency (hold cluster, heartbeats running) ------------------------------------
log "watch: $watch_subscribers subscribers, $watch_changes changes every $watch_change_interval"
watch_line=$(run_bench 300 registry-watch --endpoints "$(endpoints)" \
    --subscribers "$watch_subscribers" --changes "$watch_changes" \
    --change-interval "$watch_change_interval" --delivery-timeout "$watch_delivery_timeout" \
    --service "watched") || die "strata-bench registry-watch failed"
log "watch: $watch_line"

# --- 4. DNS queries/s (hold cluster, node 1) ------------------------------------------------
dns_reg_line=$(run_bench 120 registry-register --endpoints "$(endpoints)" --clients 4 \
    --requests "$dns_instances" --services 1 --service-prefix "dnsbench-" --id-prefix "d-") ||
    die "registering the DNS instances failed"
log "DNS instances: $dns_reg_line"
dns_results="$data/dns.jsonl"
: >"$dns_results"
dns_server=$(dns_addr 1)
[[ -n $dns_server ]] || die "node 1 wrote no dns address"
for qtype in A SRV; do
    line=$(run_bench $((dns_seconds + 60)) dns-query --server "$dns_server" \
        --name "dnsbench-0.service.strata" --type "$qtype" --clients "$dns_clients" \
        --duration "${dns_seconds}s") || die "strata-bench dns-query ($qtype) failed"
    echo "$line" >>"$dns_results"
    log "dns $qtype: $line"
done

# --- stop the heartbeats, final RSS, shut down ----------------------------------------------
check_nodes "the watch and DNS runs"
rss_end=$(rss_json)
stop_pid "$heartbeat_pid"
heartbeat_status=$stopped_status
heartbeat_line=$(tail -n 1 "$heartbeat_out")
[[ -n $heartbeat_line ]] || die "registry-heartbeat printed no report (exit $heartbeat_status); see $heartbeat_err"
log "heartbeat (exit $heartbeat_status): $heartbeat_line"
log "RSS at the end (MiB): $rss_end"
hold_logs=$(log_counts)
stop_cluster
hold_exits=$cluster_exits

# --- results --------------------------------------------------------------------------------
# run_info: when, command, commit, machine; jq_run_defs: median, runs_summary (lib.sh).
describe_run
jq -n --argjson run_info "$run_info" \
    --argjson register_rounds "$register_rounds" --argjson register_requests "$register_requests" \
    --argjson register_max_seconds "$register_max_seconds" \
    --argjson register_services "$register_services" \
    --argjson client_counts "$(printf '%s\n' "${register_client_counts[@]}" | jq -sc .)" \
    --argjson hold_persistent "$hold_persistent" --argjson hold_ephemeral "$hold_ephemeral" \
    --argjson hold_services "$hold_services" --argjson hold_seconds "$hold_seconds" \
    --arg ephemeral_ttl "$ephemeral_ttl" --arg heartbeat_interval "$heartbeat_interval" \
    --argjson heartbeat_clients "$heartbeat_clients" \
    --argjson watch_subscribers "$watch_subscribers" --argjson watch_changes "$watch_changes" \
    --arg watch_change_interval "$watch_change_interval" \
    --argjson dns_instances "$dns_instances" --argjson dns_clients "$dns_clients" \
    --argjson dns_seconds "$dns_seconds" \
    --slurpfile register "$register_results" --slurpfile dns "$dns_results" \
    --argjson hold_persistent_run "$hold_persistent_line" \
    --argjson hold_ephemeral_run "$hold_ephemeral_line" \
    --argjson heartbeat "$heartbeat_line" --argjson heartbeat_exit "$heartbeat_status" \
    --argjson watch "$watch_line" --argjson dns_registration "$dns_reg_line" \
    --argjson rss_throughput "$rss_throughput" --argjson rss_idle "$rss_idle" \
    --argjson rss_hold "$rss_hold" --argjson rss_end "$rss_end" --argjson cpu_hold "$cpu_hold" \
    --argjson instances_seen "$instances_json" \
    --argjson throughput_logs "$throughput_logs" --argjson hold_logs "$hold_logs" \
    --argjson throughput_exits "$throughput_exits" --argjson hold_exits "$hold_exits" \
    "$jq_run_defs"'
    [$client_counts[] as $c | runs_summary([$register[] | select(.clients == $c)]; $c)] as $reg |
    ($reg | max_by(.throughput_median)) as $best |
    ($dns | map(select(.record_type == "A")) | first) as $dns_a |
    {benchmark: "registry"} + $run_info + {
        config: {
            nodes: 3, durability: "default (fsync per commit)",
            register: {rounds: $register_rounds, client_counts: $client_counts,
                       requests_per_run: $register_requests, max_seconds: $register_max_seconds,
                       services: $register_services, kind: "persistent",
                       cluster: "fresh, used only for these runs"},
            hold: {persistent: $hold_persistent, ephemeral: $hold_ephemeral,
                   services: $hold_services, ephemeral_ttl: $ephemeral_ttl,
                   heartbeat_interval: $heartbeat_interval,
                   heartbeat_clients: $heartbeat_clients, seconds_before_rss: $hold_seconds,
                   cluster: "a second fresh cluster"},
            watch: {subscribers: $watch_subscribers, changes: $watch_changes,
                    change_interval: $watch_change_interval,
                    during: "hold cluster, heartbeats running"},
            dns: {instances: $dns_instances, clients: $dns_clients, seconds: $dns_seconds,
                  server: "node 1", transport: "udp"}
        },
        summary: {
            registrations_per_s: $best.throughput_median,
            register_clients: $best.clients,
            register_p50_ms: $best.p50_ms_median,
            register_p99_ms: $best.p99_ms_median,
            register: $reg,
            rss_idle_mib: $rss_idle,
            rss_hold_mib: $rss_hold,
            cpu_hold_pct: $cpu_hold,
            rss_end_mib: $rss_end,
            rss_after_register_runs_mib: $rss_throughput,
            instances_seen_per_node: $instances_seen,
            heartbeat: {sent: $heartbeat.requests, errors: $heartbeat.errors,
                        p99_ms: $heartbeat.p99_ms, late: $heartbeat.late,
                        max_lag_ms: $heartbeat.max_lag_ms, exit_status: $heartbeat_exit},
            watch_p50_ms: $watch.p50_ms,
            watch_p99_ms: $watch.p99_ms,
            watch_max_ms: $watch.max_ms,
            watch_spread_p50_ms: $watch.spread_p50_ms,
            watch_spread_p99_ms: $watch.spread_p99_ms,
            watch_write_p50_ms: $watch.write_p50_ms,
            watch_write_p99_ms: $watch.write_p99_ms,
            watch_missed: $watch.missed,
            watch_resyncs: $watch.resyncs,
            dns_qps: $dns_a.throughput,
            dns_p99_ms: $dns_a.p99_ms,
            dns: [$dns[] | {record_type, qps: .throughput, p50_ms, p99_ms, errors, answers}],
            node_logs: {throughput_cluster: $throughput_logs, hold_cluster: $hold_logs},
            node_exit_statuses: {throughput_cluster: $throughput_exits, hold_cluster: $hold_exits}
        },
        targets: {
            registrations_per_s: {target: ">= 10000", met: (($best.throughput_median // 0) >= 10000)},
            rss_mib_per_node: {target: "<= 300", met: ($rss_hold | all(. <= 300))},
            watch_p99_ms: {target: "<= 100", met: (($watch.p99_ms // 1e9) <= 100)},
            watch_missed: {target: "0", met: ($watch.missed == 0)}
        },
        raw: {register: $register, hold_persistent: $hold_persistent_run,
              hold_ephemeral: $hold_ephemeral_run, heartbeat: $heartbeat, watch: $watch,
              dns_registration: $dns_registration, dns: $dns}
    }' >"$results_file"

# --- summary --------------------------------------------------------------------------------
print_summary '
    .summary as $s | .targets as $t |
    heading("Strata registry benchmark"),
    "",
    "| measure | value | target met |",
    "|---|---:|---|",
    ($s.register[] | "| register, \(.clients) clients: throughput (/s) / p50 / p99 (ms), median of \(.runs) | \(.throughput_median | f) / \(.p50_ms_median | f) / \(.p99_ms_median | f) | |"),
    "| registrations/s (best client count: \($s.register_clients)) | \($s.registrations_per_s | f) | \($t.registrations_per_s.met | met) (>= 10,000) |",
    "| idle RSS per node (MiB) | \($s.rss_idle_mib | map(tostring) | join(" / ")) | |",
    "| RSS per node holding \(.config.hold.persistent + .config.hold.ephemeral) instances (MiB) | \($s.rss_hold_mib | map(tostring) | join(" / ")) | \($t.rss_mib_per_node.met | met) (<= 300) |",
    "| CPU per node while holding them, heartbeats running (% of a core) | \($s.cpu_hold_pct | map(tostring) | join(" / ")) | |",
    "| instances in each node'"'"'s view | \($s.instances_seen_per_node | map(tostring) | join(" / ")) | |",
    "| heartbeats sent / errors / p99 (ms) / late | \($s.heartbeat.sent | f) / \($s.heartbeat.errors | f) / \($s.heartbeat.p99_ms | f) / \($s.heartbeat.late | f) | |",
    "| watch, \(.config.watch.subscribers) subscribers x \(.config.watch.changes) changes: p50 / p99 / max (ms) | \($s.watch_p50_ms | f) / \($s.watch_p99_ms | f) / \($s.watch_max_ms | f) | \($t.watch_p99_ms.met | met) (p99 <= 100) |",
    "| watch fan-out spread (receipt minus first receipt): p50 / p99 (ms) | \($s.watch_spread_p50_ms | f) / \($s.watch_spread_p99_ms | f) | |",
    "| watch writes: p50 / p99 (ms) | \($s.watch_write_p50_ms | f) / \($s.watch_write_p99_ms | f) | |",
    "| watch deliveries missed / resyncs | \($s.watch_missed | f) / \($s.watch_resyncs | f) | \($t.watch_missed.met | met) |",
    ($s.dns[] | "| DNS \(.record_type), \(.answers) answers: queries/s / p50 / p99 (ms) / errors | \(.qps | f) / \(.p50_ms | f) / \(.p99_ms | f) / \(.errors) | |"),
    "| RSS per node at the end (MiB) | \($s.rss_end_mib | map(tostring) | join(" / ")) | |",
    "| node logs before shutdown, throughput cluster: panics / ERROR / WARN | \($s.node_logs.throughput_cluster | "\(.panics) / \(.error_lines) / \(.warn_lines)") | |",
    "| node logs before shutdown, hold cluster: panics / ERROR / WARN | \($s.node_logs.hold_cluster | "\(.panics) / \(.error_lines) / \(.warn_lines)") | |",
    "",
    "register errors: \([$s.register[].errors_total] | map(tostring) | join(" / "))"
'
jq -r '.summary as $s |
    "RESULT registrations_per_s=\($s.registrations_per_s) register_p99_ms=\($s.register_p99_ms)" +
    " rss_mib=[\($s.rss_hold_mib | map(tostring) | join(","))]" +
    " watch_p50_ms=\($s.watch_p50_ms) watch_p99_ms=\($s.watch_p99_ms)" +
    " dns_qps=\($s.dns_qps) watch_missed=\($s.watch_missed) register_clients=\($s.register_clients)"' \
    "$results_file"
