#!/usr/bin/env bash
# bench/fsync-probe.sh: what the disk alone does to fsync latency, with no database involved.
#
# Runs LOOPS processes side by side (default 3, like the members of a 3-node cluster on one
# machine), each appending 4 KiB to a file of its own and calling fdatasync after every write,
# for SECONDS (default 60), plus one process that only sleeps 1 ms at a time and notes when
# it wakes late (so a stall of the whole machine, rather than of the disk, shows up too). Each
# prints its count, percentiles and worst, and each second (from its start) in which a call
# took 20 ms or more, with that second's worst. When the loops' slow seconds are the same
# while the sleeper never wakes late, the stall is the device's (or its file system
# journal's), common to every process on it: no quorum of members sharing that disk can ride
# over it.
#
# Usage: bash bench/fsync-probe.sh [DIR] [SECONDS] [LOOPS]
#        DIR defaults to bench/.data (the disk bench/scale.sh writes to); needs python3.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$repo/bench/.data}
seconds=${2:-60}
loops=${3:-3}
mkdir -p "$dir"
work=$(mktemp -d "$dir/fsync-probe.XXXXXX")
trap 'rm -rf "$work"' EXIT

probe() { # fsync FILE | sleep
    python3 - "$1" "$seconds" "${2:-}" >"$work/out-$BASHPID" <<'EOF'
import os, sys, time
kind, seconds, path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
end = start + seconds
slow, took = {}, []
if kind == "fsync":
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block = b"x" * 4096
while time.perf_counter() < end:
    t = time.perf_counter()
    if kind == "fsync":
        os.write(fd, block)
        os.fdatasync(fd)
    else:
        time.sleep(0.001)
    ms = (time.perf_counter() - t) * 1000
    took.append(ms)
    if ms >= 20:
        second = int(t - start)
        slow[second] = max(slow.get(second, 0), ms)
took.sort()
n = len(took)
pct = lambda q: took[min(n - 1, int(n * q))]
print(f"{kind:5} n={n} p50={pct(0.5):.2f}ms p99={pct(0.99):.2f}ms p99.9={pct(0.999):.2f}ms "
      f"max={took[-1]:.1f}ms seconds_with_20ms_or_more="
      f"[{' '.join(f'{s}:{ms:.0f}ms' for s, ms in sorted(slow.items()))}]")
EOF
}

echo "fdatasync of 4 KiB appends in $dir, $loops loops and one sleeper, ${seconds} s" >&2
pids=()
for i in $(seq "$loops"); do
    probe fsync "$work/loop-$i" &
    pids+=($!)
done
probe sleep &
pids+=($!)
for pid in "${pids[@]}"; do wait "$pid"; done
cat "$work"/out-*
