#!/bin/sh
# Serving and mounting, against the reference on the same image in the same
# run (medians of BENCH_RUNS, default 5, the two sides timed round-robin;
# warm page cache for both sides):
#   nbdcopy URI null:  of a 1 GiB branch with scattered data (a 2-layer chain:
#                      a frozen layer and the branch's head), served read-only
#                      and read-write by nbdkit with the qsnap plugin, against
#                      qemu-nbd (-t -e 4: persistent, and nbdcopy gets its 4 connections too);
#   FUSE               cat of DIR/main.raw (qsnap mount, a fresh mount each
#                      run, its time included) against qsnap export of main
#                      then cat of the exported file; and cp --sparse=always
#                      of DIR/main.raw against qsnap export.
# Ratios are reference time / our time: >= 1.0 means at least as fast.
# Usage: sh bench/bench_nbd.sh [SCRATCH]   (QSNAP, BUILD as for bench/run.sh)
set -eu

BUILD=${BUILD:-build/release}
QSNAP=${QSNAP:-$BUILD/qsnap}
case $QSNAP in /*) ;; *) QSNAP=$(pwd)/$QSNAP ;; esac
RUNS=${BENCH_RUNS:-5}
SCRATCH=${1:-${BENCH_SCRATCH:-$BUILD/scratch}}
for t in nbdkit nbdcopy qemu-nbd qemu-img qemu-io python3; do
    command -v "$t" >/dev/null 2>&1 || { echo "bench_nbd: $t is not installed; skipped"; exit 0; }
done
[ -f "$(dirname "$QSNAP")/nbdkit-qsnap-plugin.so" ] || { echo "bench_nbd: no plugin built; skipped"; exit 0; }

mkdir -p "$SCRATCH"
W=$(mktemp -d "$SCRATCH/nbd.XXXXXX")
W=$(cd "$W" && pwd)
export XDG_RUNTIME_DIR="$W/run"
mkdir -p "$XDG_RUNTIME_DIR" "$W/m"
chmod 700 "$XDG_RUNTIME_DIR"
QPID=""
cleanup() {
    "$QSNAP" serve --stop "$W/disk.qcow2" >/dev/null 2>&1 || true
    [ -n "$QPID" ] && kill "$QPID" 2>/dev/null || true
    mountpoint -q "$W/m" 2>/dev/null && "$QSNAP" umount "$W/m" >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$W"

now() { date +%s.%N; }
# pair OURS REF: run the two shell commands round-robin RUNS times; prints
# "median-ours median-ref"
pair() {
    i=0
    : >t.ours
    : >t.ref
    while [ $i -lt "$RUNS" ]; do
        for side in ours ref; do
            [ $side = ours ] && c=$1 || c=$2
            t0=$(now)
            sh -c "$c" >/dev/null 2>&1 || { echo "bench_nbd: failed: $c" >&2; exit 1; }
            t1=$(now)
            awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }' >>t.$side
        done
        i=$((i + 1))
    done
    echo "$(sort -n t.ours | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')" \
        "$(sort -n t.ref | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
}
row() { # NAME OURS REF
    awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%-44s %9.3fs %9.3fs %7.2fx\n", n, a, b, (a > 0 ? b / a : 0) }'
}

echo "bench_nbd: building a 1 GiB disk with scattered data (a snapshot and a branch over it)"
python3 - <<'EOF'
import random
r = random.Random(42)
with open("base.raw", "wb") as f:
    f.truncate(1 << 30)
    for i in range(2048):              # 2048 x 64 KiB = 128 MiB at random 64 KiB slots
        f.seek(r.randrange(0, (1 << 30) // 65536) * 65536)
        f.write(bytes([i % 251 + 1]) * 65536)
with open("writes.qio", "w") as f:
    for i in range(1024):              # 1024 x 64 KiB = 64 MiB more in the branch's head
        f.write("write -P %d %d 64k\n" % (i % 200 + 1, r.randrange(0, (1 << 30) // 65536) * 65536))
EOF
qemu-img convert -f raw -O qcow2 base.raw disk.qcow2
rm -f base.raw
"$QSNAP" create disk.qcow2 s1 >/dev/null
head=$("$QSNAP" info disk.qcow2 main --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["file"])')
qemu-io -f qcow2 "$head" <writes.qio >/dev/null

printf '%-44s %10s %10s %8s\n' "nbd / fuse" "qsnap" "reference" "ratio"

# Both servers run at once (a read-only export takes a shared lock, a writable
# one the exclusive lock, so the read-write pair is served in turn), and the
# two sides are timed round-robin.
uri=$("$QSNAP" serve disk.qcow2 main --readonly --socket "$W/q.sock")
qemu-nbd -r -t -e 4 -f qcow2 -k "$W/n.sock" --pid-file="$W/n.pid" --fork "$head"
QPID=$(cat n.pid)
set -- $(pair "nbdcopy '$uri' null:" "nbdcopy 'nbd+unix:///?socket=$W/n.sock' null:")
row "nbdcopy 1 GiB branch (ro): plugin vs qemu-nbd" "$1" "$2"
kill "$QPID"
while kill -0 "$QPID" 2>/dev/null; do sleep 0.05; done
QPID=""
"$QSNAP" serve --stop disk.qcow2 main >/dev/null
: >t.ours
: >t.ref
i=0
while [ $i -lt "$RUNS" ]; do
    uri=$("$QSNAP" serve disk.qcow2 main --socket "$W/q.sock")
    t0=$(now); nbdcopy "$uri" null:; t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }' >>t.ours
    "$QSNAP" serve --stop disk.qcow2 main >/dev/null
    qemu-nbd -t -e 4 -f qcow2 -k "$W/n.sock" --pid-file="$W/n.pid" --fork "$head"
    QPID=$(cat n.pid)
    t0=$(now); nbdcopy "nbd+unix:///?socket=$W/n.sock" null:; t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }' >>t.ref
    kill "$QPID"
    while kill -0 "$QPID" 2>/dev/null; do sleep 0.05; done
    QPID=""
    i=$((i + 1))
done
row "nbdcopy 1 GiB branch (rw): plugin vs qemu-nbd" \
    "$(sort -n t.ours | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')" \
    "$(sort -n t.ref | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"

# Each FUSE run mounts afresh (and its time includes mount and umount), so no
# run reads what the kernel cached for the run before.
mnt="'$QSNAP' mount disk.qcow2 m &&"
umnt="&& '$QSNAP' umount m"
set -- $(pair "$mnt cat m/main.raw >/dev/null $umnt" "'$QSNAP' export disk.qcow2 main exp.raw && cat exp.raw")
row "read main: FUSE vs qsnap export + read" "$1" "$2"
set -- $(pair "$mnt rm -f cp.raw && cp --sparse=always m/main.raw cp.raw $umnt" "'$QSNAP' export disk.qcow2 main exp.raw")
row "sparse copy: cp from FUSE vs qsnap export" "$1" "$2"
cmp -s cp.raw exp.raw || echo "bench_nbd: WARNING: the FUSE copy differs from the export"
echo "(ratio = reference / qsnap; >= 1.00 is at least as fast; medians of $RUNS, warm cache)"
