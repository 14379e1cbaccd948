# Shared helpers of the bench/ scripts: logging, process tracking and cleanup, polling.
# Source it after setting:
#   bench_name   prefix of log lines
#   data         the run's data folder (removed on success unless keep_data=1)
#   keep_data    1 to keep $data
#   our_exes     array of binaries this script starts (guards against signalling recycled PIDs)

# Progress goes to fd 3 (the original stderr), so loops can silence bash's own job
# notifications ("Killed") with 2>/dev/null without hiding our messages.
exec 3>&2
log() { printf '[%s %s] %s\n' "$bench_name" "$(date +%H:%M:%S)" "$*" >&3; }
die() {
    log "FAILED: $*"
    exit 1
}

# Timestamps are ${EPOCHREALTIME/./}: microseconds since the epoch, read without forking, so
# polling loops spend their time polling. Milliseconds between two stamps, one decimal:
elapsed_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }

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
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

# True when a Strata node's API answers /readyz.
ready() { curl -sf -o /dev/null --connect-timeout 0.5 --max-time 1 "http://$1/readyz"; }

# Resident memory of PID in MiB, one decimal.
rss_mib() {
    awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}
