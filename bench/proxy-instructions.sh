#!/usr/bin/env bash
# bench/proxy-instructions.sh: user-space instructions a proxy spends per proxied request,
# Strata's gateway against nginx, counted by valgrind's callgrind (repeatable, unlike seconds
# on a shared machine; kernel time is not counted).
#
# One nginx (Debian's, `worker_processes 1`) serves a 12-byte answer as the backend. Each proxy
# runs under callgrind with instrumentation off, forwards to it over keep-alive (nginx:
# `worker_processes 1`, an upstream with `keepalive 64`; Strata: `strata dev` with one worker
# thread and one route to the backend, every other setting its default, so spans and metrics
# are on); after 1,000 warm-up requests instrumentation is switched on, h2load sends REQUESTS
# HTTP/1.1 requests over 16 keep-alive connections, and the dump's total is divided by
# REQUESTS (one dump file per thread, summed). Prints instructions per request for both and
# their ratio, Strata's tokio worker thread's share alone (its busiest thread; steadier from
# build to build: background threads such as the span store follow the clock, which callgrind
# slows down), then the worker's functions above 3% inclusive (`callgrind_annotate
# --inclusive=yes`) per request.
#
# Usage: bash bench/proxy-instructions.sh [STRATA_BINARY] [REQUESTS]
#        (default target/release/strata and 5000; needs valgrind, nginx, h2load, jq, curl)
# Environment: ANCHOR=haproxy measures HAProxy (`nbthread 1`, `http-reuse always`) in nginx's
# place; CACHE_SIM=1 turns on callgrind's cache and branch simulation (its default 32 KiB L1
# caches; the kernel is not simulated) and also prints, per request and for each proxy, L1
# instruction misses, L1 data read and write misses, and indirect branches and their
# mispredictions: where the time goes when the instruction counts are close. REALISTIC=1
# measures Strata's realistic case of compare-proxies.sh instead of its bare one (`strata
# server` with the access log on and bench/realistic-routes.sh's 1,000 routes, a request to
# the middle one); the anchor's run is unchanged.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
strata=${1:-${CARGO_TARGET_DIR:-$repo/target}/release/strata}
requests=${2:-5000}
anchor=${ANCHOR:-nginx}
[[ $anchor == nginx || $anchor == haproxy ]] || { echo "ANCHOR is nginx or haproxy" >&2; exit 1; }
# One dump file per thread, so that the tokio worker can be told from background threads.
callgrind=(valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes)
[[ ${CACHE_SIM:-0} == 1 ]] && callgrind+=(--cache-sim=yes --branch-sim=yes)
[[ $anchor == nginx ]] || command -v haproxy >/dev/null ||
    { echo "ANCHOR=haproxy needs haproxy (Debian: apt-get install haproxy)" >&2; exit 1; }
[[ -x $strata ]] || { echo "missing $strata: cargo build --release -p strata" >&2; exit 1; }
for tool in valgrind callgrind_control callgrind_annotate nginx h2load jq curl python3; do
    command -v "$tool" >/dev/null || {
        echo "needs $tool (Debian: apt-get install valgrind nginx nghttp2-client jq curl)" >&2
        exit 1
    }
done
dir=$(mktemp -d)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Polls "$@" every 200 ms for up to $1 seconds.
poll() {
    local tries=$(($1 * 5))
    shift
    until "$@" >/dev/null 2>&1; do
        ((--tries > 0)) || return 1
        sleep 0.2
    done
}

nginx_conf() { # DIR BODY: a single-process nginx config
    mkdir -p "$1"
    cat >"$1/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $1/nginx.pid; error_log $1/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; $2 }
EOF
}
backend_port=$(free_port)
nginx_conf "$dir/backend" "server { listen 127.0.0.1:$backend_port; location = /12 { default_type text/plain; return 200 \"hello world\\n\"; } }"
nginx -c "$dir/backend/nginx.conf" -p "$dir/backend" &
pids+=($!)
poll 10 curl -sf "http://127.0.0.1:$backend_port/12"

# dump_ir FILE: the instructions one thread's dump file counts.
dump_ir() { grep -m1 '^summary:\|^totals:' "$1" | awk '{print $2}'; }
# busiest NAME: the dump file of NAME's thread that ran the most instructions.
busiest() {
    local file best=0 chosen=
    for file in "$dir/$1".out.*; do
        if (($(dump_ir "$file") > best)); then best=$(dump_ir "$file") chosen=$file; fi
    done
    echo "$chosen"
}

# measure NAME PID URL [H2LOAD_ARGS...]: warms up, counts REQUESTS requests, prints
# instructions per request (all threads).
measure() {
    local name=$1 pid=$2 url=$3 total
    shift 3
    h2load --h1 -n 1000 -c 16 "$@" "$url" >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    h2load --h1 -n "$requests" -c 16 "$@" "$url" | grep -q "$requests succeeded" ||
        { echo "$name: not every request succeeded" >&2; exit 1; }
    callgrind_control -d "$pid" >/dev/null 2>&1
    poll 10 compgen -G "$dir/$name.out.*"
    total=0
    for file in "$dir/$name".out.*; do total=$((total + $(dump_ir "$file"))); done
    echo $((total / requests))
}

proxy_port=$(free_port)
if [[ $anchor == nginx ]]; then
    nginx_conf "$dir/nginx" "upstream b { server 127.0.0.1:$backend_port; keepalive 64; } server { listen 127.0.0.1:$proxy_port; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
    "${callgrind[@]}" --callgrind-out-file="$dir/nginx.out" \
        nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx" >"$dir/nginx.log" 2>&1 &
else
    printf '%s\n' global '    nbthread 1' '    maxconn 8192' defaults '    mode http' \
        '    timeout connect 5s' '    timeout client 30s' '    timeout server 30s' \
        '    http-reuse always' frontend\ f "    bind 127.0.0.1:$proxy_port" \
        '    default_backend be' backend\ be "    server b1 127.0.0.1:$backend_port" >"$dir/haproxy.cfg"
    "${callgrind[@]}" --callgrind-out-file="$dir/nginx.out" \
        haproxy -db -f "$dir/haproxy.cfg" >"$dir/nginx.log" 2>&1 &
fi
pids+=($!)
poll 60 curl -sf "http://127.0.0.1:$proxy_port/12"
nginx_ir=$(measure nginx "${pids[-1]}" "http://127.0.0.1:$proxy_port/12")

if [[ ${REALISTIC:-0} == 1 ]]; then
    gateway=127.0.0.1:$(free_port)
    printf '[gateway]\naccess_log = "%s"\n' "$dir/access.log" >"$dir/node.toml"
    TOKIO_WORKER_THREADS=1 STRATA_LOG=warn "${callgrind[@]}" \
        --callgrind-out-file="$dir/strata.out" "$strata" server --id 1 --data-dir "$dir/data" \
        --api-addr 127.0.0.1:0 --raft-addr 127.0.0.1:0 --initial-cluster 1=127.0.0.1:0 \
        --config "$dir/node.toml" --listen "gateway=$gateway" --addrs-file "$dir/addrs.json" \
        >"$dir/strata.log" 2>&1 &
    bash "$repo/bench/realistic-routes.sh" "$backend_port" >"$dir/routes.toml"
    path=/api/v500/12 host=(-H ":authority: svc500.example.com")
else
    ports=()
    for listener in api raft grpc consul dns nacos nacos-grpc gateway gateway-tls xds; do
        ports+=("--$listener-addr" 127.0.0.1:0)
    done
    TOKIO_WORKER_THREADS=1 STRATA_LOG=warn "${callgrind[@]}" \
        --callgrind-out-file="$dir/strata.out" "$strata" dev --data-dir "$dir/data" \
        --addrs-file "$dir/addrs.json" "${ports[@]}" >"$dir/strata.log" 2>&1 &
    printf '[[routes]]\nname = "all"\nupstream = "backend"\n[[upstreams]]\nname = "backend"\naddresses = ["127.0.0.1:%s"]\n' \
        "$backend_port" >"$dir/routes.toml"
    path=/12 host=()
fi
pids+=($!)
strata_pid=${pids[-1]}
poll 120 test -s "$dir/addrs.json"
api=$(jq -r .api "$dir/addrs.json")
[[ ${REALISTIC:-0} == 1 ]] || gateway=$(jq -r .gateway "$dir/addrs.json")
poll 120 curl -sf "http://$api/readyz"
"$strata" --endpoints "http://$api" gateway routes apply "$dir/routes.toml" >/dev/null
poll 60 curl -sf "${host[@]/#:authority/Host}" "http://$gateway$path"
strata_ir=$(measure strata "$strata_pid" "http://$gateway$path" "${host[@]}")

echo "instructions per proxied request: $anchor $nginx_ir, strata $strata_ir, ratio $(awk -v s="$strata_ir" -v n="$nginx_ir" 'BEGIN { printf "%.2f", s / n }')"
if [[ ${CACHE_SIM:-0} == 1 ]]; then
    for who in "$anchor" strata; do
        file=$(busiest "$([[ $who == strata ]] && echo strata || echo nginx)")
        awk -v n="$requests" -v who="$who" '
            /^events:/ { for (i = 2; i <= NF; i++) at[$i] = i }
            /^summary:|^totals:/ && !done { done = 1
                printf "%s (busiest thread) per request: L1i misses %d, L1d read/write misses %d/%d, indirect branches %d (mispredicted %d)\n",
                    who, $at["I1mr"] / n, $at["D1mr"] / n, $at["D1mw"] / n, $at["Bi"] / n, $at["Bim"] / n }' "$file"
    done
fi
# The tokio worker's share (the busiest thread): the rest is background threads, mostly the
# span store, whose work follows the clock (at most 100 new traces a second) and so weighs tens
# of times more under callgrind's slowdown than at full speed. The steadier number for
# comparing two builds.
worker=$(busiest strata)
echo "strata, its tokio worker thread alone: $(($(dump_ir "$worker") / requests)) per request"
echo "strata's worker thread, inclusive instructions per request (functions above 3%):"
callgrind_annotate --inclusive=yes --threshold=100 "$worker" 2>/dev/null |
    awk -v n="$requests" '/^ *[0-9,]+ \( *[0-9.]+%\) / {
        count = $1; gsub(",", "", count); share = $2; gsub("[(%)]", "", share)
        if (share + 0 < 3 || share + 0 >= 99.9) next
        name = $0; sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, "", name); sub(/ \[.*$/, "", name)
        if (name ~ /x\)$/ || name ~ /^events/) next
        sub(/^.*\.rs:/, "", name)
        if (!seen[name]++) printf "  %7d  %s\n", count / n, substr(name, 1, 110)
    }' | head -40
