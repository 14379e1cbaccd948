#!/usr/bin/env bash
# bench/chaos.sh: long fault-injection runs with a linearizability check (issue 9).
#
# Runs the suite's chaos tests (crates/strata/tests/chaos.rs) for longer and with many seeds:
# 3 real `strata server` nodes on loopback, 5 clients (one per node, pinned) doing reads,
# writes and compare-and-set on 3 keys through the native API with a recorded history, a
# nemesis, then a Wing-Gong-Lowe linearizability check and a liveness check (every node
# accepts a put and a linearizable get within 5 s after the faults end).
#
# Scenarios (each for --secs, default 60, and --runs seeds each, default 10):
#   pause-leader   SIGSTOP the leader for 5 s, SIGCONT, every 10 s (the issue's scenario)
#   pause-random   the same on a random node
#   kill-leader    kill -9 the leader, restart it after 1-3 s
#   partition      cut a random node off (both ways) for 1-3 s
#   dead-follower  one follower killed for the whole run (counts ERROR log lines)
#
# Each run prints one CHAOS {...} JSON line; all of them go to
# bench/results/chaos-<UTC timestamp>.jsonl, and a summary per scenario is printed at the end.
# The nodes are the debug build the test suite uses (correctness and liveness are what is
# measured here, not speed).
#
# Usage: bash bench/chaos.sh [--secs N] [--runs N] [--only SCENARIO[,SCENARIO...]]
set -euo pipefail
cd "$(dirname "$0")/.."

secs=60
runs=10
only=""
while (($#)); do
    case "$1" in
    --secs) secs="${2:?--secs needs a number}"; shift ;;
    --runs) runs="${2:?--runs needs a number}"; shift ;;
    --only) only="${2:?--only needs scenario names}"; shift ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="bench/results/chaos-$stamp.jsonl"
echo "building the test binaries"
cargo nextest run -p strata --test chaos --no-run >/dev/null 2>&1 || cargo nextest run -p strata --test chaos --no-run

# name | test filter | environment
scenarios=(
    "pause-leader|t20_|STRATA_CHAOS_TARGET=leader STRATA_CHAOS_HOLD_MS=5000 STRATA_CHAOS_GAP_MS=5000"
    "pause-random|t20_|STRATA_CHAOS_TARGET=random STRATA_CHAOS_HOLD_MS=5000 STRATA_CHAOS_GAP_MS=5000"
    "kill-leader|t10_|STRATA_CHAOS_TARGET=leader"
    "partition|t30_|STRATA_CHAOS_TARGET=random"
    "dead-follower|t40_|"
)
failures=0
for entry in "${scenarios[@]}"; do
    IFS='|' read -r name filter env <<<"$entry"
    if [[ -n "$only" && ",$only," != *",$name,"* ]]; then
        continue
    fi
    for ((run = 1; run <= runs; run++)); do
        seed=$((RANDOM * 32768 + RANDOM))
        log=$(mktemp)
        echo "== $name run $run/$runs (seed $seed, ${secs}s)"
        # shellcheck disable=SC2086
        if env $env STRATA_CHAOS_SECS="$secs" STRATA_CHAOS_SEED="$seed" \
            cargo nextest run -p strata --test chaos --no-capture -E "test(/^$filter/)" >"$log" 2>&1; then
            status=pass
        else
            status=fail
            failures=$((failures + 1))
            echo "   FAILED; output kept in $log"
        fi
        line=$(grep -m1 '^CHAOS ' "$log" | sed 's/^CHAOS //' || true)
        [[ -z "$line" ]] && line='{}'
        echo "$line" | jq -c --arg scenario "$name" --arg status "$status" \
            '. + {scenario: $scenario, status: $status}' | tee -a "$out"
        [[ "$status" == pass ]] && rm -f "$log"
    done
done

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); commit $(git rev-parse --short HEAD)"
jq -rs 'group_by(.scenario)[] | "\(.[0].scenario): \(length) runs, \(map(select(.status=="pass"))|length) passed, linearizable \(map(select(.linearizable==true))|length), ops \(map(.ops // 0)|add), unknown \(map(.unknown // 0)|add), worst heal \(map(.heal_ms // 0)|max) ms, most ERROR lines \(map(.error_lines // 0)|max)"' "$out"
echo "results: $out"
exit $((failures > 0))
