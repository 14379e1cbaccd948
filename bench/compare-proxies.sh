#!/usr/bin/env bash
# bench/compare-proxies.sh: Strata's gateway against nginx 1.22 and HAProxy 2.6 (Debian), side
# by side in one run on this machine.
#
# Each proxy runs pinned to CPU 0 in single-worker mode: nginx `worker_processes 1` (one
# process, `master_process off`) with upstream keep-alive, HAProxy `nbthread 1` with
# `http-reuse always`, and `strata dev` with one tokio worker (TOKIO_WORKER_THREADS=1). The
# backend (an nginx answering from memory) and the load generator (wrk, one thread) run on
# CPU 1. The direct path (wrk to the backend) is the harness floor.
#
# Workloads (closed loop, wrk): a 12-byte response over keep-alive; a 16 KiB response; a new
# connection per request (`Connection: close`). Rounds are interleaved (direct, nginx, haproxy,
# strata, then again) and medians reported. Per proxy: requests/s, p50 and p99 (wrk --latency),
# CPU microseconds per request (utime+stime from /proc over the run) and peak RSS (VmHWM).
#
# The realistic case: a second Strata (`strata server`, same pinning) with 1,000 routes (host and
# path prefix each, a header set on the way in and one on the way out) and the access log on,
# against the bare one in the same rounds.
#
# Not yet measured: TLS 1.3 with HTTP/2, open-loop latency at a fixed rate (wrk2/oha are not
# in Debian).
#
# The last line: RATIO rps_vs_nginx=.. rps_vs_haproxy=.. cpu_us_per_req=.. p99_overhead_vs_nginx=..
# (12-byte keep-alive case; p99 overhead is the proxy's p99 minus the direct p99, as a ratio of
# Strata's to nginx's).
# shellcheck disable=SC2016 # jq programs are single-quoted on purpose
set -euo pipefail
source "$(dirname "$0")/lib.sh"

options_help() {
    cat <<'EOF'
Options:
  --quick       2 rounds of 3 s per workload instead of 3 rounds of 8 s
  --no-build    use the release binaries as they are
  --keep-data   keep configs and logs in bench/.data
  --results F   write the JSON results to F
EOF
}
parse_options 22 "$@"
rounds=3
seconds=8
connections=64
if ((quick)); then
    rounds=2
    seconds=3
fi
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# Installs what is missing (Debian packages), as the test script does.
for pkg in nginx:nginx haproxy:haproxy wrk:wrk; do
    tool=${pkg%%:*}
    if ! command -v "$tool" >/dev/null 2>&1 && ! [[ -x /usr/sbin/$tool ]]; then
        echo "installing ${pkg#*:} (apt-get)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkg#*:}" >/dev/null
    fi
done
PATH="$PATH:/usr/sbin"
bench_setup compare-proxies jq curl wrk nginx haproxy taskset
build_release
our_exes+=("$(command -v nginx)" "$(command -v haproxy)")
describe_run "$@"

mapfile -t ports < <("$bench" free-ports --count 5)
((${#ports[@]} == 5)) || die "strata-bench free-ports gave ${#ports[@]} ports"
backend_port=${ports[0]} nginx_port=${ports[1]} haproxy_port=${ports[2]} gateway_port=${ports[3]}
real_port=${ports[4]}

# --- backend: nginx on CPU 1, answering from memory -----------------------------------------
mkdir -p "$data/backend" "$data/nginx" "$data/haproxy" "$data/strata" "$data/strata-real"
head -c 16384 /dev/zero | tr '\0' 'x' >"$data/backend/16k"
cat >"$data/backend/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log $data/backend/error.log warn;
pid $data/backend/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$backend_port;
        location = /12 { default_type text/plain; return 200 "hello world\n"; }
        location = /16k { root $data/backend; try_files /16k =404; }
    }
}
EOF
taskset -c 1 nginx -c "$data/backend/nginx.conf" -p "$data/backend" &
track $!
wait_until 10 "the backend" curl -sf -o /dev/null "http://127.0.0.1:$backend_port/12"

# --- the three proxies on CPU 0 -------------------------------------------------------------
cat >"$data/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log $data/nginx/error.log warn;
pid $data/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream backend { server 127.0.0.1:$backend_port; keepalive 128; }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
taskset -c 0 nginx -c "$data/nginx/nginx.conf" -p "$data/nginx" &
nginx_pid=$!
track "$nginx_pid"

cat >"$data/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8192
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend fe
    bind 127.0.0.1:$haproxy_port
    default_backend be
backend be
    server b1 127.0.0.1:$backend_port
EOF
taskset -c 0 haproxy -db -f "$data/haproxy/haproxy.cfg" >"$data/haproxy/log" 2>&1 &
haproxy_pid=$!
track "$haproxy_pid"

TOKIO_WORKER_THREADS=1 STRATA_LOG=warn taskset -c 0 "$strata" dev --data-dir "$data/strata/data" \
    --api-addr 127.0.0.1:0 --raft-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
    --consul-addr 127.0.0.1:0 --dns-addr 127.0.0.1:0 --nacos-addr 127.0.0.1:0 \
    --gateway-addr "127.0.0.1:$gateway_port" --addrs-file "$data/strata/addrs.json" \
    >"$data/strata/log" 2>&1 &
strata_pid=$!
track "$strata_pid"
await_addrs "$strata_pid" "$data/strata/addrs.json" "strata dev" "$data/strata/log"
api=$(jq -r .api "$data/strata/addrs.json")
wait_until 30 "strata dev to be ready" ready "$api"
cat >"$data/strata/routes.toml" <<EOF
[[routes]]
name = "all"
upstream = "backend"
[[upstreams]]
name = "backend"
addresses = ["127.0.0.1:$backend_port"]
EOF
"$strata" --endpoints "http://$api" gateway routes apply "$data/strata/routes.toml" >/dev/null ||
    die "strata gateway routes apply failed; see $data/strata/log"
# The realistic Strata: 1,000 routes, header edits, access log on.
printf '[gateway]\naccess_log = "%s"\n' "$data/strata-real/access.log" >"$data/strata-real/node.toml"
TOKIO_WORKER_THREADS=1 STRATA_LOG=warn taskset -c 0 "$strata" server --id 1 \
    --data-dir "$data/strata-real/data" --api-addr 127.0.0.1:0 --raft-addr 127.0.0.1:0 \
    --initial-cluster 1=127.0.0.1:0 --config "$data/strata-real/node.toml" \
    --listen "gateway=127.0.0.1:$real_port" --addrs-file "$data/strata-real/addrs.json" \
    >"$data/strata-real/log" 2>&1 &
real_pid=$!
track "$real_pid"
await_addrs "$real_pid" "$data/strata-real/addrs.json" "strata server" "$data/strata-real/log"
real_api=$(jq -r .api "$data/strata-real/addrs.json")
wait_until 30 "the realistic strata to be ready" ready "$real_api"
{
    for i in $(seq 0 999); do
        printf '[[routes]]\nname = "r%d"\nhosts = ["svc%d.example.com"]\npath = { prefix = "/api/v%d/" }\n' "$i" "$i" "$i"
        printf 'strip_prefix = true\nupstream = "backend"\n'
        printf 'request_headers = { set = { "x-route" = "r%d" } }\n' "$i"
        printf 'response_headers = { set = { "x-gateway" = "strata" } }\n'
    done
    printf '[[upstreams]]\nname = "backend"\naddresses = ["127.0.0.1:%d"]\n' "$backend_port"
} >"$data/strata-real/routes.toml"
"$strata" --endpoints "http://$real_api" gateway routes apply "$data/strata-real/routes.toml" >/dev/null ||
    die "strata gateway routes apply (1,000 routes) failed; see $data/strata-real/log"
real_path=/api/v500/12
real_host=svc500.example.com
wait_until 10 "the realistic route" curl -sf -o /dev/null -H "Host: $real_host" "http://127.0.0.1:$real_port$real_path"
for port in "$nginx_port" "$haproxy_port" "$gateway_port"; do
    wait_until 10 "the proxy on $port" curl -sf -o /dev/null "http://127.0.0.1:$port/12"
done
log "backend :$backend_port, nginx :$nginx_port, haproxy :$haproxy_port, strata :$gateway_port"

# --- measurements ---------------------------------------------------------------------------
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
ms() { # wrk latency ("812.00us", "1.20ms", "2.00s") in ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.4f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.4f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.4f", v * 1000 }
        else printf "%.4f", v }'
}

declare -A port_of=([direct]=$backend_port [nginx]=$nginx_port [haproxy]=$haproxy_port [strata]=$gateway_port [strata_realistic]=$real_port)
declare -A pid_of=([nginx]=$nginx_pid [haproxy]=$haproxy_pid [strata]=$strata_pid [strata_realistic]=$real_pid)
# name|path|close|systems
workloads=("keepalive_12b|/12||direct nginx haproxy strata" "keepalive_16k|/16k||direct nginx haproxy strata"
    "new_connection_12b|/12|close|direct nginx haproxy strata" "realistic_12b|/12||strata strata_realistic")
raw="$data/raw.jsonl"
: >"$raw"
tick_us=$((1000000 / $(getconf CLK_TCK)))
for round in $(seq 1 "$rounds"); do
    for workload in "${workloads[@]}"; do
        IFS='|' read -r name path close systems <<<"$workload"
        for system in $systems; do
            headers=()
            target=$path
            [[ -n $close ]] && headers=(-H "Connection: close")
            if [[ $system == strata_realistic ]]; then
                headers+=(-H "Host: $real_host")
                target=$real_path
            fi
            pid=${pid_of[$system]:-}
            before=0
            [[ -n $pid ]] && before=$(cpu_ticks "$pid")
            out=$(taskset -c 1 wrk -t1 -c"$connections" -d"${seconds}s" --latency "${headers[@]}" \
                "http://127.0.0.1:${port_of[$system]}$target" 2>&1) || die "wrk against $system failed: $out"
            cpu_us=null
            rss=null
            requests=$(awk '/requests in/ { print $1 }' <<<"$out")
            errors=$(awk '/Non-2xx|Socket errors/ { n++ } END { print n + 0 }' <<<"$out")
            if [[ -n $pid ]]; then
                cpu_us=$(awk -v t="$(( $(cpu_ticks "$pid") - before ))" -v n="$requests" -v u="$tick_us" \
                    'BEGIN { printf "%.2f", t * u / n }')
                rss=$(peak_rss_mib "$pid")
            fi
            rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
            p50=$(ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
            p99=$(ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
            jq -nc --arg w "$name" --arg s "$system" --argjson r "$round" --argjson rps "$rps" \
                --argjson p50 "$p50" --argjson p99 "$p99" --argjson cpu "$cpu_us" \
                --argjson rss "$rss" --argjson err "$errors" --argjson n "$requests" \
                '{workload: $w, system: $s, round: $r, requests: $n, rps: $rps, p50_ms: $p50,
                  p99_ms: $p99, cpu_us_per_req: $cpu, peak_rss_mib: $rss, error_lines: $err}' >>"$raw"
            log "round $round $name $system: $rps req/s, p99 ${p99} ms, cpu/req ${cpu_us} us"
        done
    done
done

jq -s --argjson run_info "$run_info" --argjson rounds "$rounds" --argjson seconds "$seconds" \
    --argjson connections "$connections" '
    def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                       else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    . as $raw
    | ([$raw[] | {key: "\(.workload)/\(.system)", value: .}] | group_by(.key)
       | map({key: .[0].key, value: {
              rps: (map(.value.rps) | median), p50_ms: (map(.value.p50_ms) | median),
              p99_ms: (map(.value.p99_ms) | median),
              cpu_us_per_req: (if .[0].value.cpu_us_per_req == null then null
                               else (map(.value.cpu_us_per_req) | median * 100 | round / 100) end),
              peak_rss_mib: (map(.value.peak_rss_mib) | max),
              error_lines: (map(.value.error_lines) | add)}})
       | from_entries) as $summary
    | {benchmark: "compare-proxies"} + $run_info + {
        config: {rounds: $rounds, seconds_per_run: $seconds, connections: $connections,
                 load: "wrk -t1 on CPU 1", proxies: "each pinned to CPU 0, one worker",
                 backend: "nginx on CPU 1 (return 200 / 16 KiB file)"},
        summary: $summary, raw: $raw}' "$raw" >"$results_file"

jq -r '
    .summary as $s
    | ($s["keepalive_12b/direct"].p99_ms) as $floor
    | "workload             system   req/s      p50 ms  p99 ms  cpu us/req  peak RSS MiB",
      ($s | to_entries[] | "\(.key | split("/")[0] | .[0:20] | . + " " * (20 - length)) \(.key | split("/")[1] | . + " " * (8 - length)) \(.value.rps | floor | tostring | . + " " * (10 - length)) \(.value.p50_ms | tostring | .[0:6] | . + " " * (7 - length)) \(.value.p99_ms | tostring | .[0:6] | . + " " * (7 - length)) \(.value.cpu_us_per_req // "-" | tostring | . + " " * (11 - length)) \(.value.peak_rss_mib // "-")"),
      "RATIO rps_vs_nginx=\($s["keepalive_12b/strata"].rps / $s["keepalive_12b/nginx"].rps * 100 | round / 100) rps_vs_haproxy=\($s["keepalive_12b/strata"].rps / $s["keepalive_12b/haproxy"].rps * 100 | round / 100) cpu_us_per_req=\($s["keepalive_12b/strata"].cpu_us_per_req) p99_overhead_vs_nginx=\((($s["keepalive_12b/strata"].p99_ms - $floor) / ([($s["keepalive_12b/nginx"].p99_ms - $floor), 0.001] | max)) * 100 | round / 100) realistic_vs_bare=\($s["realistic_12b/strata_realistic"].rps / $s["realistic_12b/strata"].rps * 100 | round / 100)"
' "$results_file"
log "results in $results_file"
