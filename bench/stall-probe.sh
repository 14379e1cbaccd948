#!/usr/bin/env bash
# bench/stall-probe.sh: a short write load on a 3-member Strata cluster, for looking at what its
# slowest seconds waited on (issue 12's stall target), without the hour of bench/scale.sh.
#
# Starts three `strata server` members on loopback (ports chosen at run time; member 1 founds
# the cluster, 2 and 3 join through `strata cluster add-member`), sends PUTS puts of 256 bytes
# with `strata-bench etcd-put` (128 clients over one connection per member, as scale.sh's load
# A), then prints one JSON line (throughput, the per-second p99s, the worst over the median,
# the slowest put and when it completed) and every slow-step warning and snapshot the members
# logged, in seconds from the start of the timed load (see docs/ops/cluster.md, "Slow steps in
# the log"). STRATA_LOG is passed on: `STRATA_LOG=info,lsm_tree=debug,fjall=debug` adds the
# storage engine's flushes and compactions to the members' logs (kept with --keep-data).
#
# Usage: bash bench/stall-probe.sh [--keep-data] [PUTS]   (default 600,000; about a minute)
#        needs target/release/strata and strata-bench (cargo build --release -p strata
#        -p strata-bench), jq and curl.
set -euo pipefail
# lib.sh for its polling (`wait_until`, which names what it waited for when it gives up).
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
bench_name=stall-probe
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}/release
keep=0
if [[ ${1:-} == --keep-data ]]; then
    keep=1
    shift
fi
puts=${1:-600000}
for binary in strata strata-bench; do
    [[ -x $target/$binary ]] || { echo "missing $target/$binary: cargo build --release -p strata -p strata-bench" >&2; exit 1; }
done
out=$(mktemp -d "${TMPDIR:-/tmp}/stall-probe.XXXXXX")
pids=()
stop_members() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if ((keep)); then echo "data and logs kept in $out" >&2; else rm -rf "$out"; fi
}
trap stop_members EXIT
addr() { jq -r ".$2" "$out/n$1/addrs.json"; }
start() { # ID [FLAGS...]
    local id=$1
    shift
    mkdir -p "$out/n$id"
    "$target/strata" server --id "$id" --data-dir "$out/n$id/data" --api-addr 127.0.0.1:0 \
        --raft-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --addrs-file "$out/n$id/addrs.json" \
        "$@" >>"$out/n$id/log" 2>&1 &
    pids+=($!)
    wait_until 20 "member $id to start (see $out/n$id/log)" test -s "$out/n$id/addrs.json"
}
start 1 --initial-cluster 1=127.0.0.1:0
wait_until 30 "member 1 to be ready" curl -sf "http://$(addr 1 api)/readyz"
endpoints=http://$(addr 1 api)
for id in 2 3; do
    start "$id"
    timeout 90 "$target/strata" --endpoints "$endpoints" cluster add-member "$id" \
        --raft-addr "$(addr "$id" raft)" --api-addr "$(addr "$id" api)" >/dev/null
    endpoints+=,http://$(addr "$id" api)
done
for id in 1 2 3; do wait_until 30 "member $id to be ready" curl -sf "http://$(addr "$id" api)/readyz"; done
grpc=$(for id in 1 2 3; do addr "$id" grpc; done | paste -sd,)
"$target/strata-bench" etcd-put --endpoints "$grpc" --clients 128 --requests "$puts" \
    --value-size 256 --key-prefix probe/ --max-seconds 300 >"$out/bench.json" 2>"$out/bench.stderr"
# worst_over_median_after_ramp leaves out second 0, in which 128 clients' first puts meet empty
# memtables and caches (it was the worst second in two of six runs, at 24-33 ms).
jq -c '{throughput, p99_ms, window_p99_median_ms, window_p99_worst_ms, window_p99_worst_at_s,
        worst_over_median: ((.window_p99_worst_ms / .window_p99_median_ms) * 100 | round / 100),
        worst_over_median_after_ramp: (.window_p99s_ms[1:] as $w | ($w | sort) as $s
            | if ($w | length) == 0 then null
              else (($w | max) / $s[($s | length) / 2 | floor] * 100 | round / 100) end),
        max_ms, max_at_s: ((.max_at_ms // 0) / 100 | round / 10),
        window_p99s_ms: (.window_p99s_ms | map(. * 10 | round / 10))}' "$out/bench.json"
since_us=$(jq -r '.timed_start_unix_ms' "$out/bench.json")000
for id in 1 2 3; do
    grep -h -e 'slow step' -e 'built snapshot' "$out/n$id/log" | jq -Rr --argjson since "$since_us" --arg n "$id" '
        capture("^(?<s>[0-9T:-]+)(?<f>\\.[0-9]+)?Z +[A-Z]+ (?<rest>.*)")
        | ((.s + "Z" | fromdateiso8601) + ((.f // ".0") | tonumber) - $since / 1e6) as $t
        | "\($t * 100 | round / 100) s  member \($n)  \(.rest)"'
done | sort -n
