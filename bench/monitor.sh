#!/usr/bin/env bash
# bench/monitor.sh: the monitoring center beside Prometheus 2.42 (Debian's `prometheus`) on
# the same machine, same samples (issue 16).
#
# One `strata server` (one node, defaults) and one Prometheus (`--web.enable-remote-write-
# receiver --web.enable-admin-api`, no scrape jobs). `strata-bench monitor-load` writes
# node-exporter-like series (HOSTS hosts x 200 series: CPU, network and disk counters,
# filesystem and memory gauges, load averages) at a 15 s interval with remote write, as a
# Prometheus sends it: 4 shards, 2000 samples per request. The data is written in ROUNDS
# rounds of an hour of samples each, the series continuing from round to round, alternating
# Strata and Prometheus within each round. Then:
#   ingest        samples per second of the server's CPU time (user+system from /proc), per
#                 round; the ratio is of the medians (higher is better for Strata)
#   memory        RSS after the last round per million active series (a whole Strata node:
#                 its other components' baseline is included)
#   disk          everything written out as blocks (Strata: POST /v1/monitor/flush;
#                 Prometheus: the admin API's TSDB snapshot, which writes its head as a block),
#                 then bytes on disk per sample (Strata: block files; Prometheus: the
#                 snapshot's chunks, index and metadata)
#   queries       dashboard-like range queries (`strata-bench monitor-query`: 8 queries,
#                 step 60 s over the whole range), alternating servers, p50/p99 per round
#
# The last line: RATIO bytes_per_sample=.. ingest_vs_prometheus=.. query_p99_vs_prometheus=..
# (issue 16 asks for bytes_per_sample <= 1.3). Options: --quick (50 hosts, 2 rounds),
# --hosts N, --no-build, --keep-data, --results F.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

hosts=100
own_option() {
    case "$1" in
    --hosts)
        hosts="${2:?--hosts needs a number}"
        option_args=2
        ;;
    *) return 1 ;;
    esac
}
options_help() {
    cat <<'EOF2'
Options:
  --quick       50 hosts (10,000 series), 2 rounds of an hour of samples
  --hosts N     simulated hosts, 200 series each (default 100: 20,000 series)
  --no-build    use the release binaries as they are
  --keep-data   keep data and logs in bench/.data
  --results F   write the JSON results to F
EOF2
}
parse_options 22 "$@"
rounds=3
steps=240
if ((quick)); then
    rounds=2
    hosts=50
fi
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
bench_setup monitor jq curl prometheus
build_release
describe_run --hosts "$hosts"
prom_version=$(prometheus --version 2>&1 | head -n 1)
our_exes+=("$(command -v prometheus)")

log "starting a strata node"
start_one_node

prom_port=$("$bench" free-ports --count 1)
printf 'global:\n  scrape_interval: 1h\n' >"$data/prometheus.yml"
log "starting $prom_version on 127.0.0.1:$prom_port"
prometheus --config.file="$data/prometheus.yml" --storage.tsdb.path="$data/prometheus" \
    --web.listen-address="127.0.0.1:$prom_port" --web.enable-remote-write-receiver \
    --web.enable-admin-api --storage.tsdb.retention.time=30d >"$data/prometheus.log" 2>&1 &
prom_pid=$!
track "$prom_pid"
wait_until 30 "Prometheus to be ready" curl -sf -o /dev/null "http://127.0.0.1:$prom_port/-/ready"

end_ms=$(($(date +%s) * 1000 / 15000 * 15000))
first_end=$((end_ms - (rounds - 1) * steps * 15000))
runs='[]'
for round in $(seq 1 "$rounds"); do
    round_end=$((first_end + (round - 1) * steps * 15000))
    first_step=$(((round - 1) * steps))
    for server in strata prometheus; do
        if [[ $server == strata ]]; then url="http://$api" pid=$node_pid; else url="http://127.0.0.1:$prom_port" pid=$prom_pid; fi
        out=$("$bench" monitor-load --url "$url" --hosts "$hosts" --steps "$steps" \
            --first-step "$first_step" --end-ms "$round_end" --pid "$pid")
        log "round $round $server: $(jq -r '"\(.samples) samples in \(.seconds * 10 | round / 10) s, \(.samples_per_cpu_second | floor) samples per CPU second, RSS \(.rss_bytes / 1048576 | floor) MiB"' <<<"$out")"
        runs=$(jq -c --arg server "$server" --argjson round "$round" --argjson out "$out" \
            '. + [$out + {server: $server, round: $round, kind: "load"}]' <<<"$runs")
    done
done

samples_total=$(jq '[.[] | select(.server == "strata") | .samples] | add' <<<"$runs")
log "writing everything out as blocks"
strata_disk=$(curl -sf -X POST "http://$api/v1/monitor/flush")
strata_bytes=$(jq .data.block_bytes <<<"$strata_disk")
strata_block_samples=$(jq .data.block_samples <<<"$strata_disk")
snapshot=$(curl -sf -X POST "http://127.0.0.1:$prom_port/api/v1/admin/tsdb/snapshot" | jq -r .data.name)
prom_bytes=$(du -sb "$data/prometheus/snapshots/$snapshot" | cut -f1)
log "strata: $strata_bytes bytes for $strata_block_samples samples; prometheus snapshot: $prom_bytes bytes for $samples_total samples"

query_start=$((first_end - (steps - 1) * 15000))
for round in $(seq 1 "$rounds"); do
    for server in strata prometheus; do
        if [[ $server == strata ]]; then url="http://$api"; else url="http://127.0.0.1:$prom_port"; fi
        out=$("$bench" monitor-query --url "$url" --start-ms "$query_start" --end-ms "$end_ms" --step 60 --repeat 3)
        log "queries round $round $server: $(jq -r '"p50 \(.p50_ms) ms p99 \(.p99_ms) ms, \(.points) points"' <<<"$out")"
        runs=$(jq -c --arg server "$server" --argjson round "$round" --argjson out "$out" \
            '. + [$out + {server: $server, round: $round, kind: "query"}]' <<<"$runs")
    done
done

jq -n --argjson run_info "$run_info" --argjson runs "$runs" --argjson hosts "$hosts" \
    --argjson rounds "$rounds" --argjson steps "$steps" --arg prom "$prom_version" \
    --argjson strata_bytes "$strata_bytes" --argjson strata_samples "$strata_block_samples" \
    --argjson prom_bytes "$prom_bytes" --argjson samples "$samples_total" "$jq_run_defs"'
    def of($s; $k; $f): [$runs[] | select(.server == $s and .kind == $k) | .[$f]] | median;
    def last($s; $f): [$runs[] | select(.server == $s and .kind == "load")] | max_by(.round) | .[$f];
    {benchmark: "monitor"} + $run_info + {
        config: {hosts: $hosts, series: ($hosts * 200), rounds: $rounds, steps_per_round: $steps,
                 interval: "15s", shards: 4, samples_per_request: 2000, prometheus: $prom},
        runs: $runs,
        summary: {
            strata: {samples_per_cpu_second: of("strata"; "load"; "samples_per_cpu_second"),
                     rss_bytes_per_million_series: last("strata"; "rss_bytes_per_million_series"),
                     bytes_per_sample: ($strata_bytes / $strata_samples * 1000 | round / 1000),
                     query_p50_ms: of("strata"; "query"; "p50_ms"), query_p99_ms: of("strata"; "query"; "p99_ms")},
            prometheus: {samples_per_cpu_second: of("prometheus"; "load"; "samples_per_cpu_second"),
                     rss_bytes_per_million_series: last("prometheus"; "rss_bytes_per_million_series"),
                     bytes_per_sample: ($prom_bytes / $samples * 1000 | round / 1000),
                     query_p50_ms: of("prometheus"; "query"; "p50_ms"), query_p99_ms: of("prometheus"; "query"; "p99_ms")}
        }
    } | .summary += {
        ingest_vs_prometheus: ((.summary.strata.samples_per_cpu_second / .summary.prometheus.samples_per_cpu_second) * 100 | round / 100),
        query_p99_vs_prometheus: ((.summary.strata.query_p99_ms / .summary.prometheus.query_p99_ms) * 100 | round / 100),
        rss_vs_prometheus: ((.summary.strata.rss_bytes_per_million_series / .summary.prometheus.rss_bytes_per_million_series) * 100 | round / 100)
    }' >"$results_file"
log "results in $results_file"
jq -r '.summary |
    "strata      \(.strata.samples_per_cpu_second | floor) samples/CPU-s, \(.strata.rss_bytes_per_million_series / 1048576 | floor) MiB RSS per million series, \(.strata.bytes_per_sample) bytes/sample, query p50 \(.strata.query_p50_ms) ms p99 \(.strata.query_p99_ms) ms",
    "prometheus  \(.prometheus.samples_per_cpu_second | floor) samples/CPU-s, \(.prometheus.rss_bytes_per_million_series / 1048576 | floor) MiB RSS per million series, \(.prometheus.bytes_per_sample) bytes/sample, query p50 \(.prometheus.query_p50_ms) ms p99 \(.prometheus.query_p99_ms) ms",
    "RATIO bytes_per_sample=\(.strata.bytes_per_sample) ingest_vs_prometheus=\(.ingest_vs_prometheus) query_p99_vs_prometheus=\(.query_p99_vs_prometheus)"' "$results_file"
