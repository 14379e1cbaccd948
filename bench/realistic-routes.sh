#!/usr/bin/env bash
# bench/realistic-routes.sh BACKEND_PORT: prints the realistic route table of the proxy
# benchmarks (compare-proxies.sh, proxy-instructions.sh with REALISTIC=1) as TOML: 1,000
# routes, each on a host of its own (`svcN.example.com`) and a path prefix (`/api/vN/`,
# stripped), each setting a request header and a response header, all to one upstream group
# `backend` at 127.0.0.1:BACKEND_PORT. A request to the middle one: Host svc500.example.com,
# path /api/v500/12.
set -euo pipefail
backend_port=${1:?usage: bash bench/realistic-routes.sh BACKEND_PORT}
for i in $(seq 0 999); do
    printf '[[routes]]\nname = "r%d"\nhosts = ["svc%d.example.com"]\npath = { prefix = "/api/v%d/" }\n' "$i" "$i" "$i"
    printf 'strip_prefix = true\nupstream = "backend"\n'
    printf 'request_headers = { set = { "x-route" = "r%d" } }\n' "$i"
    printf 'response_headers = { set = { "x-gateway" = "strata" } }\n'
done
printf '[[upstreams]]\nname = "backend"\naddresses = ["127.0.0.1:%d"]\n' "$backend_port"
