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
# REQUESTS. Prints instructions per request for both and their ratio, Strata's tokio worker
# thread's share alone (steadier from build to build: background threads such as the span
# store follow the clock, which callgrind slows down), then Strata's functions above 3%
# inclusive (`callgrind_annotate --inclusive=yes`) per request.
#
# Usage: bash bench/proxy-instructions.sh [STRATA_BINARY] [REQUESTS]
#        (default target/release/strata and 5000; needs valgrind, nginx, h2load, jq, curl)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
strata=${1:-${CARGO_TARGET_DIR:-$repo/target}/release/strata}
requests=${2:-5000}
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

# measure NAME PID URL: warms up, counts REQUESTS requests, prints instructions per request.
measure() {
    local name=$1 pid=$2 url=$3 total
    h2load --h1 -n 1000 -c 16 "$url" >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    h2load --h1 -n "$requests" -c 16 "$url" | grep -q "$requests succeeded" ||
        { echo "$name: not every request succeeded" >&2; exit 1; }
    callgrind_control -d "$pid" >/dev/null 2>&1
    poll 10 compgen -G "$dir/$name.out.*"
    total=$(grep -h '^summary:\|^totals:' "$dir/$name".out.* | head -1 | awk '{print $2}')
    echo $((total / requests))
}

proxy_port=$(free_port)
nginx_conf "$dir/nginx" "upstream b { server 127.0.0.1:$backend_port; keepalive 64; } server { listen 127.0.0.1:$proxy_port; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/nginx.out" \
    nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx" >"$dir/nginx.log" 2>&1 &
pids+=($!)
poll 60 curl -sf "http://127.0.0.1:$proxy_port/12"
nginx_ir=$(measure nginx "${pids[-1]}" "http://127.0.0.1:$proxy_port/12")

ports=()
for listener in api raft grpc consul dns nacos nacos-grpc gateway gateway-tls xds; do
    ports+=("--$listener-addr" 127.0.0.1:0)
done
TOKIO_WORKER_THREADS=1 STRATA_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$dir/strata.out" "$strata" dev --data-dir "$dir/data" \
    --addrs-file "$dir/addrs.json" "${ports[@]}" >"$dir/strata.log" 2>&1 &
pids+=($!)
strata_pid=${pids[-1]}
poll 120 test -s "$dir/addrs.json"
api=$(jq -r .api "$dir/addrs.json")
gateway=$(jq -r .gateway "$dir/addrs.json")
poll 120 curl -sf "http://$api/readyz"
printf '[[routes]]\nname = "all"\nupstream = "backend"\n[[upstreams]]\nname = "backend"\naddresses = ["127.0.0.1:%s"]\n' \
    "$backend_port" >"$dir/routes.toml"
"$strata" --endpoints "http://$api" gateway routes apply "$dir/routes.toml" >/dev/null
poll 60 curl -sf "http://$gateway/12"
strata_ir=$(measure strata "$strata_pid" "http://$gateway/12")

echo "instructions per proxied request: nginx $nginx_ir, strata $strata_ir, ratio $(awk -v s="$strata_ir" -v n="$nginx_ir" 'BEGIN { printf "%.2f", s / n }')"
# The tokio worker's share (its scheduler loop, inclusive): the rest is background threads,
# mostly the span store, whose work follows the clock (at most 100 new traces a second) and
# so weighs tens of times more under callgrind's slowdown than at full speed. The steadier
# number for comparing two builds.
worker_ir=$(callgrind_annotate --inclusive=yes --threshold=100 "$dir"/strata.out.* 2>/dev/null |
    awk -v n="$requests" '/ \* |=>/ { next }
        /scheduler::multi_thread::worker::Context::run \[/ { c = $1; gsub(",", "", c); print int(c / n); exit }')
echo "strata, its tokio worker thread alone: ${worker_ir:-?} per request"
echo "strata, inclusive instructions per request (functions above 3%):"
callgrind_annotate --inclusive=yes --threshold=100 "$dir"/strata.out.* 2>/dev/null |
    awk -v n="$requests" '/^ *[0-9,]+ \( *[0-9.]+%\) / {
        count = $1; gsub(",", "", count); share = $2; gsub("[(%)]", "", share)
        if (share + 0 < 3 || share + 0 >= 99.9) next
        name = $0; sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, "", name); sub(/ \[.*$/, "", name)
        if (name ~ /x\)$/ || name ~ /^events/) next
        sub(/^.*\.rs:/, "", name)
        if (!seen[name]++) printf "  %7d  %s\n", count / n, substr(name, 1, 110)
    }' | head -40
