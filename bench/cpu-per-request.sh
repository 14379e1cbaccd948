#!/usr/bin/env bash
# bench/cpu-per-request.sh: instructions a node spends per etcd request, for two strata
# binaries, counted by valgrind's callgrind (repeatable, unlike seconds on a shared machine).
#
# Each binary runs `strata dev` (one node, every listener on port 0) under callgrind with
# instrumentation off; after 200 warm-up requests it is switched on, `strata-bench` sends
# REQUESTS requests from 16 clients, and the dump's total is divided by REQUESTS. Modes:
# `ser` (serializable get), `lin` (linearizable get), `put` (256-byte put). Startup and the
# load generator are not counted; waiting for fsync costs no instructions.
#
# Usage: bash bench/cpu-per-request.sh BEFORE_BINARY AFTER_BINARY [REQUESTS] [MODES...]
# e.g.   bash bench/cpu-per-request.sh /work/baseline-target/release/strata \
#            target/release/strata 2000 ser lin put
set -euo pipefail
before=${1:?usage: cpu-per-request.sh BEFORE_BINARY AFTER_BINARY [REQUESTS] [MODES...]}
after=${2:?usage: cpu-per-request.sh BEFORE_BINARY AFTER_BINARY [REQUESTS] [MODES...]}
requests=${3:-2000}
shift $(($# < 3 ? $# : 3))
modes=("$@")
((${#modes[@]})) || modes=(ser lin put)
repo=$(cd "$(dirname "$0")/.." && pwd)
bench="${CARGO_TARGET_DIR:-$repo/target}/release/strata-bench"
[[ -x $bench ]] || { echo "missing $bench: cargo build --release -p strata-bench" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
ports=(--api-addr 127.0.0.1:0 --raft-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0
    --consul-addr 127.0.0.1:0 --dns-addr 127.0.0.1:0 --nacos-addr 127.0.0.1:0 --gateway-addr 127.0.0.1:0)

# run BINARY NAME MODE: prints "NAME MODE instructions/request".
run() {
    local bin=$1 name=$2 mode=$3 dir pid grpc workload=etcd-get flags=() total
    dir=$(mktemp -d)
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/cg.out" \
        "$bin" dev --data-dir "$dir/data" --addrs-file "$dir/addrs.json" "${ports[@]}" \
        >"$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do [[ -s $dir/addrs.json ]] && break; sleep 0.2; done
    [[ -s $dir/addrs.json ]] || { echo "$name did not start under valgrind; see $dir/log" >&2; kill "$pid"; exit 1; }
    grpc=$(jq -r .grpc "$dir/addrs.json")
    case $mode in
        ser) flags=(--serializable) ;;
        lin) ;;
        put) workload=etcd-put ;;
        *) echo "unknown mode $mode (ser, lin or put)" >&2; kill "$pid"; exit 1 ;;
    esac
    "$bench" "$workload" --endpoints "$grpc" --clients 16 --requests 200 "${flags[@]}" >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    "$bench" "$workload" --endpoints "$grpc" --clients 16 --requests "$requests" "${flags[@]}" >/dev/null
    callgrind_control -d "$pid" >/dev/null 2>&1
    for _ in $(seq 100); do compgen -G "$dir/cg.out.*" >/dev/null && break; sleep 0.1; done
    total=$(grep -h '^summary:\|^totals:' "$dir"/cg.out.* | head -1 | awk '{print $2}')
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
    echo "$name $mode $((total / requests))"
}

echo "binary mode instructions/request"
for mode in "${modes[@]}"; do
    run "$before" before "$mode"
    run "$after" after "$mode"
done
