#!/usr/bin/env bash
# bench/console.sh: how fast the web console's pages load against a full store (issue 17:
# within 200 ms per page load with 10,000 keys, 1,000 services and 1,000 configs).
#
# One `strata server` (one node, every component, defaults), seeded through the HTTP API by
# strata-bench: KEYS keys (`put`, 256-byte values under console/), SERVICES services with one
# instance each (`registry-register`, spread round-robin) and CONFIGS configs (`config-publish`,
# one version each). Then bench/console_pageload.py loads each page in headless Chromium
# (Debian's chromium and chromium-driver, Python's selenium: scripts/test.sh installs them),
# RUNS times with the browser cache cleared ("cold") and RUNS times with it kept ("warm",
# files revalidated), alternating. A load is timed inside the page, from the navigation's
# start to the first frame after the page's marker element (its data drawn) is in the
# document; see console_pageload.py for each page's marker.
#
# The last line: RATIO worst_p99_ms=.. target_ms=200 pages_within_target=N/M (cold loads'
# p99; a page is within the target when its cold p99 is at most 200 ms). Options: --quick
# (1,000 keys, 100 services, 100 configs, 5 runs), --pages LIST, --runs N, --no-build,
# --keep-data, --results F.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

pages="cluster,kv,services,configs,gateway,monitor"
runs=""
own_option() {
    case "$1" in
    --pages)
        pages="${2:?--pages needs a comma-separated list}"
        option_args=2
        ;;
    --runs)
        runs="${2:?--runs needs a number}"
        option_args=2
        ;;
    *) return 1 ;;
    esac
}
options_help() {
    cat <<'EOF2'
Options:
  --quick        1,000 keys, 100 services, 100 configs, 5 cold and 5 warm loads per page
  --pages LIST   pages to load (default cluster,kv,services,configs,gateway,monitor)
  --runs N       cold and warm loads per page (default 30)
  --no-build     use the release binaries as they are
  --keep-data    keep data and logs in bench/.data
  --results F    write the JSON results to F
EOF2
}
parse_options 18 "$@"
keys=10000
services=1000
configs=1000
target_ms=200
seed_clients=16
if ((quick)); then
    keys=1000
    services=100
    configs=100
    runs=${runs:-5}
fi
runs=${runs:-30}
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
bench_setup console jq curl python3 chromium chromedriver
python3 -c "import selenium" 2>/dev/null || die "needs Python's selenium (python3 -m pip install selenium)"
build_release
describe_run --pages "$pages" --runs "$runs"
chromium_version=$(chromium --version 2>/dev/null | head -n 1)

log "starting a strata node"
start_one_node

# Seeds through the HTTP API; each step must have no errors.
seed() { # seed WHAT COMMAND...
    local what=$1 out
    shift
    out=$("$@" --endpoints "http://$api" --clients "$seed_clients" --max-seconds 600)
    [[ $(jq .errors <<<"$out") == 0 ]] || die "seeding $what had errors: $out"
    log "seeded $what in $(jq -r '.seconds * 10 | round / 10' <<<"$out") s"
}
seed "$keys keys" "$bench" put --requests "$keys" --key-prefix console/
seed "$services services" "$bench" registry-register --requests "$services" \
    --services "$services" --service-prefix console-svc-
seed "$configs configs" "$bench" config-publish --requests "$configs" --configs "$configs" \
    --data-id-prefix console-
# What the store holds now, read back through the API the pages use (`put` also writes one
# warm-up key per client).
stored_keys=$(curl -sf -X POST "http://$api/v1/kv/range" -H 'content-type: application/json' \
    -d '{"key":"console/","prefix":true,"count_only":true}' | jq ".count - $seed_clients")
stored_services=$(curl -sf "http://$api/v1/registry/services" |
    jq '[.services[] | select(.name | startswith("console-svc-")) | select(.instances == 1)] | length')
stored_configs=$(curl -sf "http://$api/v1/config/list?prefix=console-" | jq length)
[[ $stored_keys == "$keys" && $stored_services == "$services" && $stored_configs == "$configs" ]] ||
    die "the store holds $stored_keys keys, $stored_services services, $stored_configs configs"

log "loading $pages in $chromium_version, $runs cold and $runs warm loads each"
loads=$(python3 bench/console_pageload.py --url "http://$api" --pages "$pages" --runs "$runs")

jq -n --argjson run_info "$run_info" --argjson loads "$loads" --argjson keys "$keys" \
    --argjson services "$services" --argjson configs "$configs" --argjson runs "$runs" \
    --argjson target "$target_ms" --arg chromium "$chromium_version" '
    def pct($p): sort | .[((length * $p / 100) | ceil) - 1];
    def stats: {p50_ms: pct(50), p99_ms: pct(99), max_ms: max};
    {benchmark: "console"} + $run_info + {
        config: {keys: $keys, services: $services, instances_per_service: 1, configs: $configs,
                 runs_per_page: $runs, chromium: $chromium, markers: $loads.markers,
                 target_ms: $target},
        pages: ($loads.pages | map_values({cold: (.cold.ms | stats), warm: (.warm.ms | stats),
                                           cold_dom: (.cold.dom_ms | stats), raw: .}))
    } | .summary = {
        worst_p99_ms: ([.pages[].cold.p99_ms] | max),
        pages: (.pages | length),
        pages_within_target: ([.pages[] | select(.cold.p99_ms <= $target)] | length)
    }' >"$results_file"
log "results in $results_file"
jq -r '
    (.pages | to_entries[] |
        "\(.key | . + "          " | .[:10]) cold p50 \(.value.cold.p50_ms) ms p99 \(.value.cold.p99_ms) ms   warm p50 \(.value.warm.p50_ms) ms p99 \(.value.warm.p99_ms) ms"),
    "RATIO worst_p99_ms=\(.summary.worst_p99_ms) target_ms=\(.config.target_ms) pages_within_target=\(.summary.pages_within_target)/\(.summary.pages)"' \
    "$results_file"
