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
# Closed-loop workloads, wrk (HTTP/1.1, -t1 -c64): a 12-byte response over keep-alive; a 16 KiB
# response; a new connection per request (`Connection: close`). And h2load (Debian's
# nghttp2-client, -t1 -c64 -m10: 64 connections with 10 streams in flight each, for the run's
# duration): the 12-byte response over TLS 1.3 and HTTP/2. Each proxy has a second, TLS listener
# (ALPN h2; nginx `ssl_protocols TLSv1.3`, HAProxy `ssl-min-ver TLSv1.3`, Strata's `gateway_tls`
# listener with the certificate in its route table's [[certificates]]) with one self-signed ECDSA
# P-256 certificate made by openssl for the run, proxying over HTTP/1.1 keep-alive to the same
# backend; its direct path is a TLS listener of the backend itself. h2load offers only
# TLS_AES_128_GCM_SHA256; a run that does not negotiate TLSv1.3, that suite and h2 fails the
# script. Rounds are interleaved (direct, nginx, haproxy, strata, then again) and medians
# reported. Per proxy: requests/s, p50 and p99 (wrk --latency; h2load gives only a mean), CPU
# microseconds per request (utime+stime from /proc over the run) and peak RSS (VmHWM).
#
# The realistic case: a second Strata (`strata server`, same pinning) with 1,000 routes (host and
# path prefix each, a header set on the way in and one on the way out) and the access log on,
# against the bare one in the same rounds.
#
# Open loop, after the closed-loop rounds: `strata-bench http-open-loop` (CPU 1, one tokio
# worker) sends the 12-byte request at a fixed rate, half the weakest proxy's maximum (the lowest
# median 12-byte keep-alive req/s of nginx, HAProxy and Strata above), over 64 keep-alive
# connections, with latency correction as in wrk2 and oha (a request due while its connection is
# still busy counts from its due time). Interleaved rounds (direct, nginx, haproxy, strata);
# medians of p50, p99 and p99.9, and each proxy's minus the direct path's (the harness floor at
# the same rate).
#
# The last line: RATIO rps_vs_nginx=.. rps_vs_haproxy=.. cpu_us_per_req=.. p99_overhead_vs_nginx=..
# realistic_vs_bare=.. tls_rps_vs_nginx=.. tls_rps_vs_haproxy=.. tls_cpu_us_per_req=..
# open_rate=.. open_p99_overhead_ms=.. open_p99_overhead_vs_nginx=.. open_p999_overhead_vs_nginx=..
# (the first four: 12-byte keep-alive case, p99 overhead is the proxy's p99 minus the direct p99,
# as a ratio of Strata's to nginx's; tls_*: the TLS 1.3 + h2 case; open_*: the open loop, Strata's
# overhead in ms and as a ratio to nginx's).
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
parse_options 41 "$@"
rounds=3
seconds=8
connections=64
# h2load: streams in flight per connection, and the one TLS 1.3 cipher suite it offers (so every
# proxy runs the same one: HAProxy would otherwise pick AES-256 by its own preference).
h2_streams=10
h2_cipher=TLS_AES_128_GCM_SHA256
if ((quick)); then
    rounds=2
    seconds=3
fi
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# Installs what is missing (Debian packages), as the test script does; the package lists are
# refreshed only when the install fails without them.
missing=()
for pkg in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client openssl:openssl; do
    tool=${pkg%%:*}
    if ! command -v "$tool" >/dev/null 2>&1 && ! [[ -x /usr/sbin/$tool ]]; then
        missing+=("${pkg#*:}")
    fi
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]} (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 600 apt-get install -y "${missing[@]}" >/dev/null; then
        timeout 600 apt-get update >/dev/null && timeout 600 apt-get install -y "${missing[@]}" >/dev/null ||
            { echo "apt-get install ${missing[*]} failed" >&2; exit 2; }
    fi
fi
PATH="$PATH:/usr/sbin"
bench_setup compare-proxies jq curl wrk h2load openssl nginx haproxy taskset
build_release
our_exes+=("$(command -v nginx)" "$(command -v haproxy)")
describe_run "$@"

mapfile -t ports < <("$bench" free-ports --count 8)
((${#ports[@]} == 8)) || die "strata-bench free-ports gave ${#ports[@]} ports"
backend_port=${ports[0]} nginx_port=${ports[1]} haproxy_port=${ports[2]} gateway_port=${ports[3]}
real_port=${ports[4]} backend_tls_port=${ports[5]} nginx_tls_port=${ports[6]}
haproxy_tls_port=${ports[7]}

# --- one self-signed certificate (ECDSA P-256) for every TLS listener of the run --------------
tls="$data/tls"
mkdir -p "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$tls/key.pem" -out "$tls/cert.pem" 2>"$tls/openssl.log" ||
    die "openssl could not make the certificate: $(cat "$tls/openssl.log")"
cat "$tls/cert.pem" "$tls/key.pem" >"$tls/haproxy.pem" # HAProxy wants both in one file

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
        listen 127.0.0.1:$backend_tls_port ssl http2;
        ssl_certificate $tls/cert.pem;
        ssl_certificate_key $tls/key.pem;
        ssl_protocols TLSv1.3;
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
    # Idle upstream connections kept: more than h2load's 640 streams in flight, so no run
    # closes and reopens backend connections because the cache is too small.
    upstream backend { server 127.0.0.1:$backend_port; keepalive 1024; }
    server {
        listen 127.0.0.1:$nginx_port;
        listen 127.0.0.1:$nginx_tls_port ssl http2;
        ssl_certificate $tls/cert.pem;
        ssl_certificate_key $tls/key.pem;
        ssl_protocols TLSv1.3;
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
frontend fe_tls
    bind 127.0.0.1:$haproxy_tls_port ssl crt $tls/haproxy.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3
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
    --gateway-addr "127.0.0.1:$gateway_port" --gateway-tls-addr 127.0.0.1:0 \
    --addrs-file "$data/strata/addrs.json" \
    >"$data/strata/log" 2>&1 &
strata_pid=$!
track "$strata_pid"
await_addrs "$strata_pid" "$data/strata/addrs.json" "strata dev" "$data/strata/log"
api=$(jq -r .api "$data/strata/addrs.json")
strata_tls=$(jq -r '.gateway_tls // empty' "$data/strata/addrs.json")
[[ -n $strata_tls ]] || die "strata dev wrote no gateway_tls address to $data/strata/addrs.json"
wait_until 30 "strata dev to be ready" ready "$api"
cat >"$data/strata/routes.toml" <<EOF
[[routes]]
name = "all"
upstream = "backend"
[[upstreams]]
name = "backend"
addresses = ["127.0.0.1:$backend_port"]
[[certificates]]
hosts = ["localhost"]
cert_file = "$tls/cert.pem"
key_file = "$tls/key.pem"
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
bash bench/realistic-routes.sh "$backend_port" >"$data/strata-real/routes.toml"
"$strata" --endpoints "http://$real_api" gateway routes apply "$data/strata-real/routes.toml" >/dev/null ||
    die "strata gateway routes apply (1,000 routes) failed; see $data/strata-real/log"
real_path=/api/v500/12
real_host=svc500.example.com
wait_until 10 "the realistic route" curl -sf -o /dev/null -H "Host: $real_host" "http://127.0.0.1:$real_port$real_path"
for port in "$nginx_port" "$haproxy_port" "$gateway_port"; do
    wait_until 10 "the proxy on $port" curl -sf -o /dev/null "http://127.0.0.1:$port/12"
done
for addr in "127.0.0.1:$backend_tls_port" "127.0.0.1:$nginx_tls_port" "127.0.0.1:$haproxy_tls_port" "$strata_tls"; do
    wait_until 10 "the TLS listener $addr" curl -skf -o /dev/null "https://$addr/12"
done
log "backend :$backend_port, nginx :$nginx_port, haproxy :$haproxy_port, strata :$gateway_port;" \
    "TLS: backend :$backend_tls_port, nginx :$nginx_tls_port, haproxy :$haproxy_tls_port, strata $strata_tls"

# --- measurements ---------------------------------------------------------------------------
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
# Retransmission timeouts the kernel has taken since boot (TcpExt TCPTimeouts, all sockets). A
# connection whose segment was lost waits at least 200 ms (the minimum RTO) for it, so a count
# above zero explains a blown tail. (Tail loss probes are not counted: they are sent early and
# stall nothing; loaded loopback sends many, above all under h2load over TLS.)
tcp_timeouts() {
    awk '$1 == "TcpExt:" { if (!names) { for (i = 2; i <= NF; i++) if ($i == "TCPTimeouts") col = i; names = 1 }
        else if (col) print $col }' /proc/net/netstat
}
ms() { # wrk and h2load latency ("812.00us", "1.20ms", "2.00s") in ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.4f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.4f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.4f", v * 1000 }
        else printf "%.4f", v }'
}
# The median of a jq array (4 decimals when it averages two), null when it holds no number
# (h2load rows have no percentiles).
jq_median='def median: map(select(. != null)) | sort
    | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
      else (.[length / 2 - 1] + .[length / 2]) / 2 * 10000 | round / 10000 end;'

declare -A port_of=([direct]=$backend_port [nginx]=$nginx_port [haproxy]=$haproxy_port [strata]=$gateway_port [strata_realistic]=$real_port)
declare -A tls_addr_of=([direct]=127.0.0.1:$backend_tls_port [nginx]=127.0.0.1:$nginx_tls_port [haproxy]=127.0.0.1:$haproxy_tls_port [strata]=$strata_tls)
declare -A pid_of=([nginx]=$nginx_pid [haproxy]=$haproxy_pid [strata]=$strata_pid [strata_realistic]=$real_pid)
# name|path|mode|systems; mode: empty (wrk, keep-alive), close (wrk, Connection: close), h2
# (h2load over TLS), open (strata-bench http-open-loop)
workloads=("keepalive_12b|/12||direct nginx haproxy strata" "keepalive_16k|/16k||direct nginx haproxy strata"
    "new_connection_12b|/12|close|direct nginx haproxy strata" "realistic_12b|/12||strata strata_realistic"
    "tls13_h2_12b|/12|h2|direct nginx haproxy strata")
raw="$data/raw.jsonl"
: >"$raw"
tick_us=$((1000000 / clk_tck))
open_rate=0

# Each load tool's run sets requests (successful), rps, p50 and p99 (ms, or null), extra (a JSON
# object of the tool's own fields) and note (latency for the progress line).

run_wrk() { # SYSTEM PATH MODE
    local system=$1 target=$2 headers=() out errors
    [[ $3 == close ]] && headers=(-H "Connection: close")
    if [[ $system == strata_realistic ]]; then
        headers+=(-H "Host: $real_host")
        target=$real_path
    fi
    out=$(taskset -c 1 wrk -t1 -c"$connections" -d"${seconds}s" --latency "${headers[@]}" \
        "http://127.0.0.1:${port_of[$system]}$target" 2>&1) || die "wrk against $system failed: $out"
    requests=$(awk '/requests in/ { print $1 }' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ { n++ } END { print n + 0 }' <<<"$out")
    rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
    p50=$(ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    p99=$(ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    extra=$(jq -nc --argjson e "$errors" '{error_lines: $e}')
    note="p99 $p99 ms"
}

run_h2load() { # SYSTEM PATH
    local system=$1 out protocol cipher key_exchange alpn errors mean
    out=$(taskset -c 1 h2load -t1 -c"$connections" -m"$h2_streams" -D "$seconds" \
        --tls13-ciphers="$h2_cipher" "https://${tls_addr_of[$system]}$2" 2>&1) ||
        die "h2load against $system failed: $out"
    protocol=$(awk '/^TLS Protocol:/ { print $3 }' <<<"$out")
    cipher=$(awk '/^Cipher:/ { print $2 }' <<<"$out")
    key_exchange=$(awk '/^Server Temp Key:/ { print $4 }' <<<"$out")
    alpn=$(awk '/^Application protocol:/ { print $3 }' <<<"$out")
    [[ $protocol == TLSv1.3 && $alpn == h2 && $cipher == "$h2_cipher" ]] ||
        die "h2load against $system negotiated '$protocol', '$cipher' and '$alpn', not TLSv1.3, $h2_cipher and h2: $out"
    # "finished in 3.00s, 41234.50 req/s, 1.97MB/s"
    rps=$(awk '/^finished in/ { print $4 }' <<<"$out")
    # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout" and
    # "status codes: N 2xx, N 3xx, N 4xx, N 5xx"
    requests=$(awk '/^status codes:/ { print $3 }' <<<"$out")
    errors=$(awk '/^requests:/ { n += $10 + $12 + $14 } /^status codes:/ { n += $5 + $7 + $9 }
        END { print n + 0 }' <<<"$out")
    # "time for request:  min  max  mean  sd  +/- sd"
    mean=$(ms "$(awk '/^time for request:/ { print $6 }' <<<"$out")")
    [[ $rps =~ ^[0-9.]+$ && $requests =~ ^[0-9]+$ ]] || die "unexpected h2load output: $out"
    p50=null
    p99=null
    extra=$(jq -nc --argjson e "$errors" --argjson mean "$mean" --arg p "$protocol" --arg c "$cipher" \
        --arg k "$key_exchange" --arg a "$alpn" \
        '{errors: $e, mean_ms: $mean, tls_protocol: $p, cipher: $c, key_exchange: $k, alpn: $a}')
    note="mean $mean ms"
}

run_open_loop() { # SYSTEM PATH
    local system=$1 out
    out=$(TOKIO_WORKER_THREADS=1 taskset -c 1 "$bench" http-open-loop \
        --url "http://127.0.0.1:${port_of[$system]}$2" --rate "$open_rate" \
        --duration "${seconds}s" --connections "$connections" 2>"$data/open-loop.err") ||
        die "strata-bench http-open-loop against $system failed: $(cat "$data/open-loop.err")"
    [[ -s $data/open-loop.err ]] && log "http-open-loop against $system: $(cat "$data/open-loop.err")"
    requests=$(jq .requests <<<"$out")
    rps=$(jq .achieved_rate <<<"$out")
    p50=$(jq .p50_ms <<<"$out")
    p99=$(jq .p99_ms <<<"$out")
    extra=$(jq -c '{p999_ms, max_ms, errors, late, sent, scheduled, client_cpu_s}' <<<"$out")
    note="p99 $p99 ms, p99.9 $(jq .p999_ms <<<"$out") ms, $(jq .errors <<<"$out") errors"
}

# One run: ROUND WORKLOAD PATH MODE SYSTEM; appends its row to $raw.
measure() {
    local round=$1 name=$2 path=$3 mode=$4 system=$5
    local pid=${pid_of[$system]:-} before=0 cpu_us=null rss=null timeouts
    [[ -n $pid ]] && before=$(cpu_ticks "$pid")
    timeouts=$(tcp_timeouts)
    case $mode in
    h2) run_h2load "$system" "$path" ;;
    open) run_open_loop "$system" "$path" ;;
    *) run_wrk "$system" "$path" "$mode" ;;
    esac
    ((requests > 0)) || die "no request succeeded: $name against $system"
    timeouts=$(($(tcp_timeouts) - timeouts))
    if [[ -n $pid ]]; then
        cpu_us=$(awk -v t="$(($(cpu_ticks "$pid") - before))" -v n="$requests" -v u="$tick_us" \
            'BEGIN { printf "%.2f", t * u / n }')
        rss=$(peak_rss_mib "$pid")
    fi
    jq -nc --arg w "$name" --arg s "$system" --argjson r "$round" --argjson rps "$rps" \
        --argjson p50 "$p50" --argjson p99 "$p99" --argjson cpu "$cpu_us" \
        --argjson rss "$rss" --argjson n "$requests" --argjson extra "$extra" \
        --argjson timeouts "$timeouts" \
        '{workload: $w, system: $s, round: $r, requests: $n, rps: $rps, p50_ms: $p50,
          p99_ms: $p99, cpu_us_per_req: $cpu, peak_rss_mib: $rss, tcp_timeouts: $timeouts}
          + $extra' >>"$raw"
    log "round $round $name $system: $rps req/s, $note, cpu/req ${cpu_us} us, $timeouts TCP timeouts"
}

for round in $(seq 1 "$rounds"); do
    for workload in "${workloads[@]}"; do
        IFS='|' read -r name path mode systems <<<"$workload"
        for system in $systems; do
            measure "$round" "$name" "$path" "$mode" "$system"
        done
    done
done

# Open loop at half the weakest proxy's 12-byte keep-alive maximum.
open_rate=$(jq -s "$jq_median"'
    [.[] | select(.workload == "keepalive_12b" and (.system | IN("nginx", "haproxy", "strata")))]
    | group_by(.system) | map(map(.rps) | median) | min * 0.5 | floor' "$raw")
[[ $open_rate =~ ^[0-9]+$ ]] && ((open_rate >= 100)) ||
    die "open-loop rate '$open_rate' (half the lowest proxy keep-alive req/s) is too low"
log "open loop at $open_rate req/s (half the lowest proxy keep-alive req/s), $connections connections"
for round in $(seq 1 "$rounds"); do
    for system in direct nginx haproxy strata; do
        measure "$round" open_loop_12b /12 open "$system"
    done
done

jq -s --argjson run_info "$run_info" --argjson rounds "$rounds" --argjson seconds "$seconds" \
    --argjson connections "$connections" --argjson streams "$h2_streams" --arg cipher "$h2_cipher" \
    --argjson open_rate "$open_rate" "$jq_median"'
    def r3: if . == null then null else . * 1000 | round / 1000 end;
    . as $raw
    | ([$raw[] | {key: "\(.workload)/\(.system)", value: .}] | group_by(.key)
       | map(.[0].value.workload as $w | {key: .[0].key, value: ({
              rps: (map(.value.rps) | median), p50_ms: (map(.value.p50_ms) | median),
              p99_ms: (map(.value.p99_ms) | median),
              cpu_us_per_req: (map(.value.cpu_us_per_req) | median
                               | if . == null then null else . * 100 | round / 100 end),
              peak_rss_mib: (map(.value.peak_rss_mib) | max)}
            + if $w == "tls13_h2_12b" then {
                  mean_ms: (map(.value.mean_ms) | median), errors: (map(.value.errors) | add),
                  tls_protocol: .[0].value.tls_protocol, cipher: .[0].value.cipher,
                  key_exchange: .[0].value.key_exchange, alpn: .[0].value.alpn}
              elif $w == "open_loop_12b" then {
                  p999_ms: (map(.value.p999_ms) | median), max_ms: (map(.value.max_ms) | max),
                  errors: (map(.value.errors) | add), late: (map(.value.late) | add)}
              else {error_lines: (map(.value.error_lines) | add)} end)})
       | from_entries) as $summary
    | $summary["open_loop_12b/direct"] as $floor
    | {benchmark: "compare-proxies"} + $run_info + {
        config: {rounds: $rounds, seconds_per_run: $seconds, connections: $connections,
                 load: "wrk -t1 on CPU 1", proxies: "each pinned to CPU 0, one worker",
                 backend: "nginx on CPU 1 (return 200 / 16 KiB file; TLS 1.3 + h2 listener for the direct TLS row)",
                 tls: {load: "h2load -t1 -c\($connections) -m\($streams) -D \($seconds) --tls13-ciphers=\($cipher) on CPU 1",
                       certificate: "self-signed ECDSA P-256 (openssl), one per run",
                       listeners: "TLS 1.3, ALPN h2; nginx ssl_protocols TLSv1.3, HAProxy ssl-min-ver TLSv1.3, Strata gateway_tls (rustls); each run checked to negotiate TLSv1.3, \($cipher) and h2",
                       upstream: "HTTP/1.1 keep-alive to the same backend"},
                 open_loop: {load: "strata-bench http-open-loop on CPU 1 (one tokio worker), latency-corrected",
                             rate: $open_rate,
                             rate_basis: "half the lowest median keepalive_12b req/s of nginx, haproxy, strata",
                             connections: $connections}},
        summary: $summary,
        open_loop: {rate: $open_rate, connections: $connections,
                    floor: ($floor | {p50_ms: (.p50_ms | r3), p99_ms: (.p99_ms | r3),
                                      p999_ms: (.p999_ms | r3)}),
                    overhead_ms: ([["nginx", "haproxy", "strata"][] as $p
                        | $summary["open_loop_12b/\($p)"] as $s
                        | {key: $p, value: {p50_ms: ($s.p50_ms - $floor.p50_ms | r3),
                                            p99_ms: ($s.p99_ms - $floor.p99_ms | r3),
                                            p999_ms: ($s.p999_ms - $floor.p999_ms | r3)}}]
                        | from_entries)},
        raw: $raw}' "$raw" >"$results_file"

jq -r '
    def col($n): tostring | .[0:$n - 1] | . + " " * ($n - length);
    def r2: . * 100 | round / 100;
    def per_nginx($a; $b): ($a / ([$b, 0.001] | max)) | r2;
    .summary as $s | .open_loop as $o
    | ($s["keepalive_12b/direct"].p99_ms) as $floor
    | "workload             system   req/s      p50 ms  p99 ms  cpu us/req  peak RSS MiB",
      ($s | to_entries[] | "\(.key | split("/")[0] | .[0:20] | . + " " * (20 - length)) \(.key | split("/")[1] | . + " " * (8 - length)) \(.value.rps | floor | tostring | . + " " * (10 - length)) \(.value.p50_ms // "-" | tostring | .[0:6] | . + " " * (7 - length)) \(.value.p99_ms // "-" | tostring | .[0:6] | . + " " * (7 - length)) \(.value.cpu_us_per_req // "-" | tostring | . + " " * (11 - length)) \(.value.peak_rss_mib // "-")"),
      "",
      "open loop at \($o.rate) req/s over \($o.connections) connections (half the slowest proxy'"'"'s 12-byte keep-alive req/s), latency-corrected",
      "system   p50 ms  p99 ms  p99.9 ms",
      "direct   \($o.floor.p50_ms | col(8))\($o.floor.p99_ms | col(8))\($o.floor.p999_ms | col(9)) (the floor)",
      ($o.overhead_ms | to_entries[] | "\(.key | col(9))\(.value.p50_ms | col(8))\(.value.p99_ms | col(8))\(.value.p999_ms | col(9)) (minus the floor)"),
      "",
      "RATIO rps_vs_nginx=\($s["keepalive_12b/strata"].rps / $s["keepalive_12b/nginx"].rps * 100 | round / 100) rps_vs_haproxy=\($s["keepalive_12b/strata"].rps / $s["keepalive_12b/haproxy"].rps * 100 | round / 100) cpu_us_per_req=\($s["keepalive_12b/strata"].cpu_us_per_req) p99_overhead_vs_nginx=\((($s["keepalive_12b/strata"].p99_ms - $floor) / ([($s["keepalive_12b/nginx"].p99_ms - $floor), 0.001] | max)) * 100 | round / 100) realistic_vs_bare=\($s["realistic_12b/strata_realistic"].rps / $s["realistic_12b/strata"].rps * 100 | round / 100) tls_rps_vs_nginx=\($s["tls13_h2_12b/strata"].rps / $s["tls13_h2_12b/nginx"].rps | r2) tls_rps_vs_haproxy=\($s["tls13_h2_12b/strata"].rps / $s["tls13_h2_12b/haproxy"].rps | r2) tls_cpu_us_per_req=\($s["tls13_h2_12b/strata"].cpu_us_per_req) open_rate=\($o.rate) open_p99_overhead_ms=\($o.overhead_ms.strata.p99_ms) open_p99_overhead_vs_nginx=\(per_nginx($o.overhead_ms.strata.p99_ms; $o.overhead_ms.nginx.p99_ms)) open_p999_overhead_vs_nginx=\(per_nginx($o.overhead_ms.strata.p999_ms; $o.overhead_ms.nginx.p999_ms))"
' "$results_file"
log "results in $results_file"
