# Shared helpers of the bench/ load benchmarks (spine.sh, config.sh, registry.sh,
# compare-etcd.sh): command line, run set-up, logging, process tracking and cleanup, polling,
# and the parts of the results and summary every one of them writes.
#
# A script sources it first thing (that only defines functions and opens fd 3), then:
#   options_help() { ... }        prints its Options section (for --help)
#   own_option() { ... }          only if it takes options beyond the common ones (parse_options)
#   parse_options LAST "$@"       sets quick, build, keep_data, results_file
#   ...its settings, from $quick...
#   bench_setup NAME TOOLS...     cds to the repo, names the run's files; cleanup from here on
# shellcheck shell=bash

# Progress goes to fd 3 (the original stderr), so loops can silence bash's own job
# notifications ("Killed") with 2>/dev/null without hiding our messages.
exec 3>&2
log() { printf '[%s %s] %s\n' "$bench_name" "$(date +%H:%M:%S)" "$*" >&3; }
die() {
    log "FAILED: $*"
    exit 1
}

# --- command line ---------------------------------------------------------------------------
# Parses the options every load benchmark takes into quick, build, keep_data and results_file:
#   --quick, --no-build, --keep-data, --results FILE, -h | --help
# --help prints lines 2 to $1 of the script (its header comment), then what the script's
# options_help prints, and exits 0. An argument that is none of these goes, with the ones after
# it, to the script's own_option if it defines one: own_option returns 1 when $1 is not its
# option, else sets option_args to how many arguments it took (1, or 2 with a value). Anything
# else is an error: exit 2.
parse_options() {
    local help_last_line=$1
    shift
    quick=0
    build=1
    keep_data=0
    results_file=""
    while (($#)); do
        option_args=1
        case "$1" in
        --quick) quick=1 ;;
        --no-build) build=0 ;;
        --keep-data) keep_data=1 ;;
        --results)
            results_file="${2:?--results needs a file}"
            option_args=2
            ;;
        -h | --help)
            sed -n "2,${help_last_line}p" "$0" | sed 's/^# \{0,1\}//'
            options_help
            exit 0
            ;;
        *)
            if ! declare -F own_option >/dev/null || ! own_option "$@"; then
                echo "unknown argument: $1 (see --help)" >&2
                exit 2
            fi
            ;;
        esac
        shift "$option_args"
    done
}

# --- set-up ---------------------------------------------------------------------------------
# Call after parse_options and the settings, with the benchmark's name and the tools it needs.
# Goes to the repository root and sets repo; exits 2 when a tool is missing; sets bench_name,
# stamp, data (bench/.data/NAME-<stamp>, or $data_root/NAME-<stamp> when the script set
# data_root), results_file (unless --results gave one:
# bench/results/NAME-<stamp>.json, NAME-<stamp>-quick.json with --quick), strata and bench (the
# release binaries) and our_exes; from then on every tracked process is stopped on exit.
bench_setup() {
    bench_name=$1
    shift
    cd "$(dirname "$0")/.."
    repo=$(pwd)
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || {
            echo "$bench_name.sh needs '$tool' on PATH (Debian: apt-get install $tool)" >&2
            exit 2
        }
    done
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    data="${data_root:-$repo/bench/.data}/$bench_name-$stamp"
    if [[ -z $results_file ]]; then
        local suffix=""
        ((quick)) && suffix="-quick"
        results_file="$repo/bench/results/$bench_name-$stamp$suffix.json"
    fi
    local target_dir="${CARGO_TARGET_DIR:-$repo/target}"
    strata="$target_dir/release/strata"
    bench="$target_dir/release/strata-bench"
    # Binaries this script starts (is_ours); a script that starts others adds them.
    our_exes=("$strata" "$bench")
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# Builds the release binaries unless --no-build (waiting for other cargo runs of this checkout
# on /tmp/strata-cargo.lock), checks they exist, and makes the data and results folders.
build_release() {
    if ((build)); then
        log "building release binaries (waiting for /tmp/strata-cargo.lock)"
        flock /tmp/strata-cargo.lock cargo build --release -p strata -p strata-bench
    fi
    [[ -x $strata && -x $bench ]] || die "missing $strata or $bench (build without --no-build)"
    mkdir -p "$data" "$(dirname "$results_file")"
}

# Timestamps are ${EPOCHREALTIME/./}: microseconds since the epoch, read without forking, so
# polling loops spend their time polling. Milliseconds between two stamps, one decimal:
elapsed_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }

# --- processes ------------------------------------------------------------------------------
# PIDs of every process this script started and has not reaped yet.
started_pids=()

track() { started_pids+=("$1"); }
untrack() {
    local keep=() pid
    for pid in "${started_pids[@]}"; do
        [[ $pid == "$1" ]] || keep+=("$pid")
    done
    started_pids=("${keep[@]}")
}

# Our own shell binary: a child we just forked runs it until it execs the program.
shell_exe=$(readlink "/proc/$$/exe")

# True while our child PID has not exited (no fork: fine inside polling loops).
alive() { kill -0 "$1" 2>/dev/null; }

# True while PID is alive and runs one of our binaries, or is our fork that has not exec'd
# yet; guards against signalling a recycled PID. A zombie counts as not running. Only PIDs
# from started_pids are ever passed here.
is_ours() {
    local exe ours
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
    [[ $exe == "$shell_exe" ]] && return 0
    for ours in "${our_exes[@]}"; do
        [[ $exe == "$ours"* ]] && return 0
    done
    return 1
}

# Sends SIGTERM, waits up to 15 s, then SIGKILL; reaps and untracks the process. Sets
# stopped_status to its exit status. (Not for use in $(...): wait only works in this shell.)
stopped_status=0
stop_pid() {
    local pid=$1 deadline status=0
    if is_ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((${EPOCHREALTIME/./} + 15000000))
        while is_ours "$pid" && ((${EPOCHREALTIME/./} < deadline)); do
            sleep 0.05
        done
        if is_ours "$pid"; then
            log "pid $pid did not stop within 15 s of SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || status=$?
    untrack "$pid"
    stopped_status=$status
}

# The EXIT trap (set by bench_setup): stops every tracked process, removes $data after a clean
# run unless --keep-data.
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${started_pids[@]}"; do
        is_ours "$pid" && kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${started_pids[@]}"; do
        stop_pid "$pid"
    done
    if ((rc == 0 && !keep_data)); then
        rm -rf "$data"
    elif [[ -d $data ]]; then
        log "logs and data kept in $data"
    fi
    exit "$rc"
}

# --- polling --------------------------------------------------------------------------------
# Polls "$@" every 50 ms until it succeeds; fails with $2 after $1 seconds.
wait_until() {
    local timeout_s=$1 what=$2
    shift 2
    local deadline=$((${EPOCHREALTIME/./} + timeout_s * 1000000))
    until "$@" >/dev/null 2>&1; do
        ((${EPOCHREALTIME/./} < deadline)) || die "timed out after ${timeout_s}s waiting for $what"
        sleep 0.05
    done
}

# Waits (polling every 10 ms, up to 20 s) until the just started process $1 has written its
# addresses file $2; fails naming it $3 ("node 2") and its log $4 if it exits first.
await_addrs() {
    local pid=$1 addrs=$2 who=$3 log_file=$4
    local deadline=$((${EPOCHREALTIME/./} + 20000000))
    until [[ -s $addrs ]]; do
        alive "$pid" || die "$who exited while starting; see $log_file"
        ((${EPOCHREALTIME/./} < deadline)) || die "$who wrote no addresses within 20 s"
        sleep 0.01
    done
}

# True when a Strata node's API answers /readyz.
ready() { curl -sf -o /dev/null --connect-timeout 0.5 --max-time 1 "http://$1/readyz"; }

# Starts one `strata server` (node 1, a cluster of its own, every component with its defaults,
# log filter warn) with its data in $data/node and its log in $data/node.log, tracked, and
# waits until it is ready. Sets node_pid, and api to HOST:PORT of its API. (monitor.sh, rpc.sh,
# console.sh.)
start_one_node() {
    STRATA_LOG=warn "$strata" server --id 1 --data-dir "$data/node" --api-addr 127.0.0.1:0 \
        --raft-addr 127.0.0.1:0 --initial-cluster 1=127.0.0.1:0 --addrs-file "$data/addrs.json" \
        >"$data/node.log" 2>&1 &
    node_pid=$!
    track "$node_pid"
    await_addrs "$node_pid" "$data/addrs.json" "strata server" "$data/node.log"
    api=$(jq -r .api "$data/addrs.json")
    wait_until 30 "the node to be ready" ready "$api"
}

# CPU time (user + system) PID has used so far, in clock ticks; the sum over several PIDs.
clk_tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
cpu_ticks_sum() {
    local pid sum=0
    for pid in "$@"; do sum=$((sum + $(cpu_ticks "$pid"))); done
    echo "$sum"
}

# Resident memory of PID in MiB, one decimal.
rss_mib() {
    awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# --- results --------------------------------------------------------------------------------
# Sets run_info to what every results file records first, as JSON: started_at, the command
# (`bash bench/NAME.sh`, then --quick if given, then "$@"), quick, commit, dirty_tree and the
# machine (CPUs, memory, kernel, the disk holding $data). A script passes it to its results
# program with --argjson run_info "$run_info" and starts the object with
# {benchmark: "NAME"} + $run_info + {config: ...}.
describe_run() {
    local command="bash bench/$bench_name.sh" arg quick_json=false
    local commit dirty=false cpu_model mem_total disk
    if ((quick)); then
        command+=" --quick"
        quick_json=true
    fi
    for arg in "$@"; do
        command+=" $arg"
    done
    commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    [[ -n $(git status --porcelain 2>/dev/null) ]] && dirty=true
    cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
    mem_total=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    disk=$(df -T "$data" | awk 'NR == 2 { print $1 " (" $2 ", mounted at " $7 ")" }')
    run_info=$(jq -nc \
        --arg started_at "$started_at" --arg commit "$commit" --argjson dirty "$dirty" \
        --arg command "$command" --argjson quick "$quick_json" \
        --arg nproc "$(nproc)" --arg cpu "$cpu_model" --arg mem "$mem_total" \
        --arg kernel "$(uname -r)" --arg disk "$disk" '
        {started_at: $started_at, command: $command, quick: $quick, commit: $commit,
         dirty_tree: $dirty,
         machine: {nproc: ($nproc | tonumber), cpu: $cpu, memory: $mem, kernel: $kernel,
                   data_disk: $disk}}')
}

# jq definitions for the results of spine, config and registry (put "$jq_run_defs" before the
# program): median (3 decimals when it averages two), and runs_summary($runs; $c), the medians
# of strata-bench runs at $c clients.
jq_run_defs='
    def median: sort | if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 * 1000 | round / 1000 end;
    def runs_summary($runs; $c): {
        clients: $c, runs: ($runs | length),
        throughput_median: ([$runs[].throughput] | median),
        p50_ms_median: ([$runs[].p50_ms] | median),
        p99_ms_median: ([$runs[].p99_ms] | median),
        errors_total: ([$runs[].errors] | add)
    };'

# Prints the summary: the jq program $1 run on the results file, with f (a value, "-" for
# null), met ("yes" / "NO") and heading($title) (title, command, commit, machine) defined;
# then the results file's path.
print_summary() {
    jq -r '
    def f: if . == null then "-" else tostring end;
    def met: if . then "yes" else "NO" end;
    def heading($title): .machine as $m |
        "",
        "## \($title) (\(.command))",
        "",
        "commit \(.commit)\(if .dirty_tree then " (dirty tree)" else "" end), \(.started_at)",
        "machine: \($m.nproc) CPUs (\($m.cpu)), \($m.memory), kernel \($m.kernel), data on \($m.data_disk)";
    '"$1" "$results_file"
    echo
    echo "results: ${results_file#"$repo"/}"
}

# --- etcd beside Strata ---------------------------------------------------------------------
# For the scripts that compare with etcd (compare-etcd.sh, scale.sh): installs the Debian
# packages etcd-server and etcd-client when missing, checks that $etcd is 3.4.x (sets
# etcd_version), builds the release binaries unless --no-build, and checks they exist.
etcd_packages_and_build() {
    local missing=() as_root=()
    [[ -x $etcd ]] || missing+=(etcd-server)
    command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
    if ((${#missing[@]})); then
        ((EUID == 0)) || as_root=(sudo)
        log "installing ${missing[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        # The package lists are refreshed only when the install fails without them.
        if ! timeout 600 "${as_root[@]}" apt-get install -y "${missing[@]}" >&3; then
            timeout 600 "${as_root[@]}" apt-get update >&3 || die "apt-get update failed"
            timeout 600 "${as_root[@]}" apt-get install -y "${missing[@]}" >&3 ||
                die "apt-get install ${missing[*]} failed"
        fi
    fi
    etcd_version=$("$etcd" --version | sed -n 's/^etcd Version: //p')
    [[ $etcd_version == 3.4.* ]] || die "$etcd is version '$etcd_version', expected 3.4.x"
    if ((build)); then
        log "building release binaries (waiting for /tmp/strata-cargo.lock)"
        (cd "$repo" && flock /tmp/strata-cargo.lock cargo build --release -p strata -p strata-bench) \
            >&3 2>&1 || die "cargo build failed"
    fi
    [[ -x $strata && -x $bench ]] || die "missing $strata or $bench (build without --no-build)"
}
