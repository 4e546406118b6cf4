#!/bin/sh
# make bench: build the scenario images once in a scratch directory on the
# build disk, time qsnap (libqcow2) against qemu-img on them, print one
# table, then the in-memory micro benchmarks. The scratch directory is
# removed at the end.
#
# Environment: BUILD (set by make), BENCH_RUNS (runs per measurement;
# defaults: 3 for the commits, 5 for the rest), BENCH_SCRATCH (scratch
# directory, default $BUILD/scratch), BENCH_SCALE (force a data-size divisor),
# BENCH_ONLY (scenario numbers to set up and time, e.g. "6,7"; bench_fs.sh
# runs scenario 8 on its own loop mounts).
set -eu

BUILD=${BUILD:-build/bench}
BIN=$BUILD/bench
SCRATCH=${BENCH_SCRATCH:-$BUILD/scratch}

for t in qemu-img qemu-io; do
    command -v "$t" >/dev/null 2>&1 || { echo "bench: $t is not installed" >&2; exit 1; }
done
for b in bench_macro bench_micro; do
    [ -x "$BIN/$b" ] || { echo "bench: $BIN/$b is missing (run make bench)" >&2; exit 1; }
done

mkdir -p "$SCRATCH"
cleanup() { rm -rf "$SCRATCH"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# The scenarios need about 9 GiB at full size; scale down when short.
need_gib=12
avail_kib=$(df -Pk "$SCRATCH" | awk 'NR == 2 { print $4 }')
avail_gib=$((avail_kib / 1048576))
if [ -z "${BENCH_SCALE:-}" ]; then
    BENCH_SCALE=1
    while [ "$BENCH_SCALE" -le 8 ] && [ "$avail_gib" -lt $((need_gib / BENCH_SCALE)) ]; do
        BENCH_SCALE=$((BENCH_SCALE * 2))
    done
    if [ "$BENCH_SCALE" -gt 8 ]; then
        echo "bench: only $avail_gib GiB free in $SCRATCH; even 1/8 scale needs 2 GiB" >&2
        exit 1
    fi
fi
if [ "$BENCH_SCALE" -ne 1 ]; then
    echo "bench: NOTE: only $avail_gib GiB free in $SCRATCH (full size needs $need_gib GiB):" \
         "data sizes divided by $BENCH_SCALE; results are not comparable with the targets"
fi
export BENCH_SCALE

echo "bench: machine: $(nproc) CPUs, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)," \
     "$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
echo "bench: scratch: $SCRATCH ($(df -PT "$SCRATCH" | awk 'NR == 2 { print $2 }'), $avail_gib GiB free)"
echo "bench: $(qemu-img --version | head -n 1)"
echo "bench: building the scenario images (libqcow2 writes them, qemu-img checks them)"
"$BIN/bench_macro" setup "$SCRATCH"
echo "bench: timing (progress on stderr)"
"$BIN/bench_macro" run "$SCRATCH"
echo
"$BIN/bench_micro"

echo
QSNAP="${BUILD:-build/bench}/qsnap" sh "$(dirname "$0")/bench_tree.sh" "$SCRATCH"

echo
BUILD="$BUILD" sh "$(dirname "$0")/bench_fs.sh" "$SCRATCH"
QSNAP="${BUILD:-build/bench}/qsnap" sh "$(dirname "$0")/bench_nbd.sh" "$SCRATCH"
