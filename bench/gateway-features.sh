#!/usr/bin/env bash
# bench/gateway-features.sh: what each of the gateway's protections costs per request (issue 14).
#
# Seven standalone gateways (`strata gateway --config FILE`, no cluster), one per variant, each
# with one tokio worker (TOKIO_WORKER_THREADS=1) pinned to CPU 0:
#   bare         one route, one upstream with one backend
#   routes_1000  1,000 routes (an exact host and a path prefix each, stripped), the request
#                matching the last one tried
#   jwt_es256    bare + `auth = { methods = ["jwt"] }` against a provider with one ES256
#                `public_key_pem` (and issuer and audience checks)
#   rate_limit   bare + `rate_limits = [{ requests = 100000000, per = "1s",
#                key = "header:x-api-key" }]` (never refuses: only its cost is measured)
#   p2c_outlier  bare, but the upstream has three backends, `balance = "least_request"` (power
#                of two choices) and `outlier_detection = {}`
#   access_log   bare + `[server] access_log` to a file (every field)
#   realistic    all of the above together
# The backends: one nginx (one worker) with three listen ports answering 12 bytes from memory
# on every path, pinned to CPU 1 with the load generator. The key pair (P-256) is made by openssl
# for the run and the token by `strata-bench jwt-sign`. Every variant gets the same request
# (Host, path, Authorization and x-api-key headers), so the differences are the gateway's work
# only. Each variant is checked to answer 200 with the 12-byte body before the runs.
#
# Load: wrk -t1 -c64 --latency on CPU 1, 8 s per run (3 s with --quick), after a 1 s warm-up per
# variant; 3 rounds (2 with --quick), each round every variant in turn, so only one gateway is
# loaded at a time. Medians over rounds of req/s, p50, p99 and the gateway's CPU microseconds per
# request (utime+stime from /proc/PID/stat over the run, divided by the requests). A variant's
# extra CPU per request is the median over rounds of its CPU per request minus bare's in the same
# round; its req/s against bare likewise. A run with any non-2xx answer stops the script.
#
# The last line: RATIO realistic_vs_bare=.. jwt_us=.. rate_limit_us=.. routes_1000_us=..
# p2c_outlier_us=.. access_log_us=.. (realistic_vs_bare: req/s as a fraction of bare's, issue
# 14 asks for at least 0.7; the *_us fields: extra CPU microseconds per request over bare).
# shellcheck disable=SC2016 # jq programs are single-quoted on purpose
set -euo pipefail
source "$(dirname "$0")/lib.sh"

options_help() {
    cat <<'EOF'
Options:
  --quick       2 rounds of 3 s per variant instead of 3 rounds of 8 s
  --no-build    use the release binaries as they are
  --keep-data   keep configs, keys and logs in bench/.data
  --results F   write the JSON results to F
EOF
}
parse_options 32 "$@"
rounds=3
seconds=8
warmup_seconds=1
connections=64
if ((quick)); then
    rounds=2
    seconds=3
fi
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# Installs what is missing (Debian packages); the package lists are refreshed only when the
# install fails without them.
missing=()
for pkg in nginx:nginx wrk:wrk openssl:openssl; do
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
bench_setup gateway-features jq curl wrk openssl nginx taskset
build_release
our_exes+=("$(command -v nginx)")
# The command line holds only the common options, which describe_run records itself.
describe_run

variants=(bare routes_1000 jwt_es256 rate_limit p2c_outlier access_log realistic)
# The features of each variant: routes, jwt, rate, p2c, log.
declare -A features_of=([bare]="" [routes_1000]="routes" [jwt_es256]="jwt" [rate_limit]="rate"
    [p2c_outlier]="p2c" [access_log]="log" [realistic]="routes jwt rate p2c log")

mapfile -t ports < <("$bench" free-ports --count $((3 + ${#variants[@]})))
((${#ports[@]} == 3 + ${#variants[@]})) || die "strata-bench free-ports gave ${#ports[@]} ports"
backend_ports=("${ports[@]:0:3}")
declare -A port_of=()
for i in "${!variants[@]}"; do
    port_of[${variants[$i]}]=${ports[$((3 + i))]}
done

# --- the key pair and the token -------------------------------------------------------------
keys="$data/keys"
mkdir -p "$keys"
{
    openssl ecparam -name prime256v1 -genkey -noout -out "$keys/ec.pem" &&
        openssl pkcs8 -topk8 -nocrypt -in "$keys/ec.pem" -out "$keys/private.pem" &&
        openssl ec -in "$keys/ec.pem" -pubout -out "$keys/public.pem"
} 2>"$keys/openssl.log" || die "openssl could not make the key pair: $(cat "$keys/openssl.log")"
jwt_issuer=strata-bench
jwt_audience=gateway
token=$("$bench" jwt-sign --key-pem "$keys/private.pem" --alg ES256 \
    --claims "{\"sub\":\"bench\",\"iss\":\"$jwt_issuer\",\"aud\":\"$jwt_audience\"}") ||
    die "strata-bench jwt-sign failed"

# --- backends: one nginx on CPU 1, three ports, 12 bytes from memory ------------------------
mkdir -p "$data/backend"
{
    printf 'daemon off;\nmaster_process off;\nworker_processes 1;\n'
    printf 'error_log %s warn;\npid %s;\n' "$data/backend/error.log" "$data/backend/nginx.pid"
    printf 'events { worker_connections 4096; }\nhttp {\n    access_log off;\n'
    printf '    keepalive_requests 1000000;\n    server {\n'
    for port in "${backend_ports[@]}"; do
        printf '        listen 127.0.0.1:%d;\n' "$port"
    done
    printf '        location / { default_type text/plain; return 200 "hello world\\n"; }\n'
    printf '    }\n}\n'
} >"$data/backend/nginx.conf"
taskset -c 1 nginx -c "$data/backend/nginx.conf" -p "$data/backend" &
track $!
for port in "${backend_ports[@]}"; do
    wait_until 10 "the backend on :$port" curl -sf -o /dev/null "http://127.0.0.1:$port/12"
done

# --- the gateways on CPU 0, one per variant ---------------------------------------------------
# What every run sends: the route the 1,000-route tables try last (equal-length prefixes keep
# table order), a valid token and an API key for the rate limit.
last_route=999
request_host=$(printf 'svc%03d.example.com' "$last_route")
request_path=$(printf '/api/v%03d/12' "$last_route")
request_headers=(-H "Host: $request_host" -H "Authorization: Bearer $token" -H "x-api-key: k1")

# Writes the config of VARIANT to $data/VARIANT/gateway.toml.
write_config() {
    local variant=$1 features=" ${features_of[$1]} " dir="$data/$1" i route_extra="" addresses
    has() { [[ $features == *" $1 "* ]]; }
    has jwt && route_extra+='auth = { methods = ["jwt"], jwt_provider = "p" }'$'\n'
    has rate && route_extra+='rate_limits = [{ requests = 100000000, per = "1s", key = "header:x-api-key" }]'$'\n'
    {
        printf '[server]\nlisten = "127.0.0.1:%d"\nadmin = "127.0.0.1:0"\n' "${port_of[$variant]}"
        has log && printf 'access_log = "%s"\n' "$dir/access.log"
        printf '\n'
        if has routes; then
            for i in $(seq 0 999); do
                printf '[[routes]]\nname = "r%03d"\nhosts = ["svc%03d.example.com"]\n' "$i" "$i"
                printf 'path = { prefix = "/api/v%03d/" }\nstrip_prefix = true\nupstream = "backend"\n' "$i"
                printf '%s\n' "$route_extra"
            done
        else
            printf '[[routes]]\nname = "all"\nupstream = "backend"\n%s\n' "$route_extra"
        fi
        printf '[[upstreams]]\nname = "backend"\n'
        if has p2c; then
            addresses=$(printf '"127.0.0.1:%d", ' "${backend_ports[@]}")
            printf 'addresses = [%s]\nbalance = "least_request"\noutlier_detection = {}\n' "${addresses%, }"
        else
            printf 'addresses = ["127.0.0.1:%d"]\n' "${backend_ports[0]}"
        fi
        if has jwt; then
            printf '\n[[jwt_providers]]\nname = "p"\nissuer = "%s"\naudiences = ["%s"]\n' "$jwt_issuer" "$jwt_audience"
            printf 'algorithms = ["ES256"]\npublic_key_pem = """\n%s\n"""\n' "$(cat "$keys/public.pem")"
        fi
    } >"$dir/gateway.toml"
}

declare -A pid_of=() admin_of=()
for variant in "${variants[@]}"; do
    mkdir -p "$data/$variant"
    write_config "$variant"
    TOKIO_WORKER_THREADS=1 STRATA_LOG=warn taskset -c 0 "$strata" gateway \
        --config "$data/$variant/gateway.toml" --addrs-file "$data/$variant/addrs.json" \
        >"$data/$variant/log" 2>&1 &
    pid_of[$variant]=$!
    track $!
done
for variant in "${variants[@]}"; do
    await_addrs "${pid_of[$variant]}" "$data/$variant/addrs.json" "gateway $variant" "$data/$variant/log"
    admin_of[$variant]=$(jq -r .admin "$data/$variant/addrs.json")
    [[ $(jq -r .gateway "$data/$variant/addrs.json") == "127.0.0.1:${port_of[$variant]}" ]] ||
        die "gateway $variant does not listen on :${port_of[$variant]}; see $data/$variant/addrs.json"
done

# Every variant must answer the run's request with 200 and the backend's 12 bytes.
for variant in "${variants[@]}"; do
    url="http://127.0.0.1:${port_of[$variant]}$request_path"
    wait_until 10 "gateway $variant to answer" curl -s -o /dev/null "$url"
    status=$(curl -s -o "$data/$variant/check.body" -w '%{http_code}' "${request_headers[@]}" "$url") ||
        die "curl against gateway $variant failed"
    [[ $status == 200 && $(cat "$data/$variant/check.body") == "hello world" &&
        $(wc -c <"$data/$variant/check.body") -eq 12 ]] ||
        die "gateway $variant answered $status, not 200 with the 12-byte body: $(head -c 300 "$data/$variant/check.body"); see $data/$variant/log"
done
log "backends :${backend_ports[*]}; gateways $(for v in "${variants[@]}"; do printf '%s :%s ' "$v" "${port_of[$v]}"; done)"

# --- measurements -----------------------------------------------------------------------------
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
ms() { # a wrk latency ("812.00us", "1.20ms", "2.00s") in ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.4f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.4f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.4f", v * 1000 }
        else printf "%.4f", v }'
}
tick_us=$((1000000 / $(getconf CLK_TCK)))
raw="$data/raw.jsonl"
: >"$raw"

# wrk against VARIANT for SECONDS; sets out (its output) and dies on any non-2xx answer.
wrk_run() {
    local variant=$1 duration=$2 non_2xx
    alive "${pid_of[$variant]}" || die "gateway $variant exited; see $data/$variant/log"
    out=$(taskset -c 1 wrk -t1 -c"$connections" -d"${duration}s" --latency "${request_headers[@]}" \
        "http://127.0.0.1:${port_of[$variant]}$request_path" 2>&1) || die "wrk against $variant failed: $out"
    non_2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
    [[ -z $non_2xx ]] || die "gateway $variant answered $non_2xx requests with a non-2xx status; see $data/$variant/log; wrk: $out"
}

# One run: ROUND VARIANT; appends its row to $raw.
measure() {
    local round=$1 variant=$2 pid=${pid_of[$2]} before requests rps p50 p99 socket_errors cpu_us
    before=$(cpu_ticks "$pid")
    wrk_run "$variant" "$seconds"
    cpu_us=$(($(cpu_ticks "$pid") - before))
    requests=$(awk '/requests in/ { print $1 }' <<<"$out")
    rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
    p50=$(ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    p99=$(ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    # "Socket errors: connect 0, read 0, write 0, timeout 0"
    socket_errors=$(awk '/Socket errors:/ { gsub(",", ""); n = $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")
    [[ $requests =~ ^[0-9]+$ && $rps =~ ^[0-9.]+$ ]] && ((requests > 0)) ||
        die "unexpected wrk output against $variant: $out"
    ((socket_errors == 0)) || log "WARNING: $socket_errors socket errors against $variant in round $round"
    cpu_us=$(awk -v t="$cpu_us" -v n="$requests" -v u="$tick_us" 'BEGIN { printf "%.2f", t * u / n }')
    jq -nc --arg v "$variant" --argjson r "$round" --argjson n "$requests" --argjson rps "$rps" \
        --argjson p50 "$p50" --argjson p99 "$p99" --argjson cpu "$cpu_us" \
        --argjson se "$socket_errors" --argjson rss "$(peak_rss_mib "$pid")" \
        '{variant: $v, round: $r, requests: $n, rps: $rps, p50_ms: $p50, p99_ms: $p99,
          cpu_us_per_req: $cpu, socket_errors: $se, peak_rss_mib: $rss}' >>"$raw"
    log "round $round $variant: $rps req/s, p99 $p99 ms, cpu/req $cpu_us us"
}

# The machine is shared: the load average before and after the runs goes in the results.
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "warm-up: ${warmup_seconds} s per variant"
for variant in "${variants[@]}"; do
    wrk_run "$variant" "$warmup_seconds"
done
for round in $(seq 1 "$rounds"); do
    for variant in "${variants[@]}"; do
        measure "$round" "$variant"
    done
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- checks after the runs: the balancer spread, the access log wrote ------------------------
checks="$data/checks.jsonl"
: >"$checks"
for variant in "${variants[@]}"; do
    admin=${admin_of[$variant]}
    members=$(curl -sf "http://$admin/v1/gateway/upstreams" |
        jq -c '[.upstreams[] | select(.name == "backend") | .members[]
                | {address, requests, failures, ejections}]') ||
        die "cannot read gateway $variant's upstreams from http://$admin"
    dropped=$(curl -sf "http://$admin/metrics" |
        awk '$1 == "strata_gateway_access_log_dropped_total" { print $2 + 0 }') ||
        die "cannot read gateway $variant's metrics from http://$admin"
    lines=0
    [[ -f $data/$variant/access.log ]] && lines=$(wc -l <"$data/$variant/access.log")
    jq -nc --arg v "$variant" --argjson m "$members" --argjson d "${dropped:-0}" --argjson l "$lines" \
        '{variant: $v, members: $m, access_log_lines: $l, access_log_dropped: $d}' >>"$checks"
    if [[ " ${features_of[$variant]} " == *" p2c "* ]]; then
        jq -e 'length == 3 and all(.[]; .requests > 0 and .ejections == 0)' <<<"$members" >/dev/null ||
            log "WARNING: $variant did not spread over three members without ejections: $members"
    fi
    if [[ " ${features_of[$variant]} " == *" log "* ]]; then
        ((lines > 0)) || die "gateway $variant wrote no access log lines to $data/$variant/access.log"
        [[ ${dropped:-0} == 0 ]] ||
            log "WARNING: $variant dropped $dropped access log lines (its cost is underestimated)"
    fi
done

# --- results ----------------------------------------------------------------------------------
jq -n --slurpfile raw "$raw" --slurpfile checks "$checks" --argjson run_info "$run_info" \
    --argjson rounds "$rounds" --argjson seconds "$seconds" --argjson warmup "$warmup_seconds" \
    --argjson connections "$connections" --arg host "$request_host" --arg path "$request_path" \
    --arg load_before "$load_before" --arg load_after "$load_after" \
    --argjson variants "$(printf '%s\n' "${variants[@]}" | jq -R . | jq -sc .)" '
    def median: map(select(. != null)) | sort
        | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
          else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def r2: if . == null then null else . * 100 | round / 100 end;
    def r4: if . == null then null else . * 10000 | round / 10000 end;
    ($raw | map({key: "\(.variant)/\(.round)", value: .}) | from_entries) as $by
    | [range(1; $rounds + 1)] as $rs
    | ($variants | map({key: ., value: (. as $v | [$raw[] | select(.variant == $v)] | {
          rps: (map(.rps) | median | r2),
          p50_ms: (map(.p50_ms) | median | r4),
          p99_ms: (map(.p99_ms) | median | r4),
          cpu_us_per_req: (map(.cpu_us_per_req) | median | r2),
          extra_cpu_us_per_req: ([$rs[] | $by["\($v)/\(.)"].cpu_us_per_req - $by["bare/\(.)"].cpu_us_per_req]
                                 | median | r2),
          rps_vs_bare: ([$rs[] | $by["\($v)/\(.)"].rps / $by["bare/\(.)"].rps] | median | r2),
          peak_rss_mib: (map(.peak_rss_mib) | max),
          requests_total: (map(.requests) | add),
          socket_errors: (map(.socket_errors) | add)})}) | from_entries) as $summary
    | {benchmark: "gateway-features"} + $run_info + {
        config: {rounds: $rounds, seconds_per_run: $seconds, warmup_seconds_per_variant: $warmup,
                 connections: $connections, load: "wrk -t1 -c\($connections) --latency on CPU 1",
                 gateway: "strata gateway --config FILE (standalone), TOKIO_WORKER_THREADS=1, pinned to CPU 0, one process per variant, one loaded at a time",
                 backends: "one nginx (one worker) with three listen ports on CPU 1, 12 bytes from memory",
                 request: {host: $host, path: $path,
                           headers: ["Authorization: Bearer <ES256 token>", "x-api-key: k1"]},
                 variants: $variants,
                 extra: "median over rounds of (variant - bare in the same round)",
                 load_average: {before: $load_before, after: $load_after}},
        summary: $summary,
        extra_cpu_us_per_req: ($summary | with_entries(select(.key != "bare"))
                               | map_values(.extra_cpu_us_per_req)),
        sum_of_single_features_us: ([$summary | to_entries[]
                                     | select(.key != "bare" and .key != "realistic")
                                     | .value.extra_cpu_us_per_req] | add | r2),
        checks: $checks,
        raw: $raw}' >"$results_file"

print_summary '
    def col($n): tostring | .[0:$n - 1] | . + " " * ($n - length);
    def d2: if type == "number" then (. * 100 | round) as $c | ($c | fabs) as $a
        | "\(if $c < 0 then "-" else "" end)\($a / 100 | floor).\($a % 100 | tostring
        | if length == 1 then "0" + . else . end)" else f end;
    .summary as $s
    | heading("Gateway features, CPU per request (issue 14)"),
      "",
      "variant      req/s     vs bare  p50 ms  p99 ms  cpu us/req  extra us/req  peak RSS MiB",
      ($s | to_entries[] | "\(.key | col(13))\(.value.rps | floor | col(10))\(.value.rps_vs_bare | d2 | col(9))\(.value.p50_ms | f | col(8))\(.value.p99_ms | f | col(8))\(.value.cpu_us_per_req | d2 | col(12))\(if .key == "bare" then "-" else .value.extra_cpu_us_per_req | d2 end | col(14))\(.value.peak_rss_mib | f)"),
      "",
      "sum of the five single features extra: \(.sum_of_single_features_us) us/req; realistic extra: \($s.realistic.extra_cpu_us_per_req) us/req",
      "load average (1, 5, 15 min) before the runs \(.config.load_average.before), after \(.config.load_average.after)",
      "realistic keeps \($s.realistic.rps_vs_bare) of bare req/s (issue 14: at least 0.7): \($s.realistic.rps_vs_bare >= 0.7 | met)"'
echo "RATIO realistic_vs_bare=$(jq '.summary.realistic.rps_vs_bare' "$results_file") $(jq -r '.extra_cpu_us_per_req
    | "jwt_us=\(.jwt_es256) rate_limit_us=\(.rate_limit) routes_1000_us=\(.routes_1000) p2c_outlier_us=\(.p2c_outlier) access_log_us=\(.access_log)"' "$results_file")"
