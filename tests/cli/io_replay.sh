#!/bin/sh
# Replay of the same qemu-io command list through qemu-io and through
# `qsnap image io`, on two copies of the same image. Each case makes a base
# (or none), an overlay with qemu-img, and a seeded random list of writes with
# patterns at unaligned offsets, zero writes (some with -u), discards,
# compressed writes of whole clusters and flushes. It then requires:
#   - the same output lines from both tools (timing lines left out),
#   - `qemu-img compare` identical,
#   - `qemu-img check` clean on both images.
# Prints "ok NAME" or "FAIL NAME" per case and "N passed, N failed" last.
# Usage: QSNAP=path/to/qsnap sh tests/cli/io_replay.sh [SEED]
set -u

QSNAP=${QSNAP:-build/release/qsnap}
case $QSNAP in /*) ;; *) QSNAP=$(pwd)/$QSNAP ;; esac
SEED=${1:-${IO_REPLAY_SEED:-1}}
NOPS=${IO_REPLAY_OPS:-120}

for tool in qemu-img qemu-io python3; do
    if ! command -v $tool >/dev/null 2>&1; then
        echo "io_replay: $tool not found"
        echo "0 passed, 1 failed"
        exit 1
    fi
done
if [ ! -x "$QSNAP" ]; then
    echo "io_replay: $QSNAP is not an executable (set QSNAP)"
    echo "0 passed, 1 failed"
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/qsnap-replay.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
cd "$work" || exit 1

# gen SEED SIZE CLUSTER NOPS: the random command list, one command a line.
gen() {
    python3 - "$@" <<'EOF'
import random, sys
seed, size, cs, nops = (int(a) for a in sys.argv[1:5])
rnd = random.Random(seed)
# Clusters some command has touched: qemu-io's compressed writes fail on a
# cluster the image already allocates, so they only go to untouched ones
# (how each tool allocates after zero writes and discards may differ).
touched = set()
def span(max_len):
    off = rnd.randrange(0, size)
    n = min(rnd.randrange(1, max_len + 1), size - off)
    touched.update(range(off // cs, (off + n - 1) // cs + 1))
    return off, n
def fresh(count):
    for _ in range(20):
        first = rnd.randrange(0, size // cs)
        count = min(count, size // cs - first)
        run = set(range(first, first + count))
        if not run & touched:
            touched.update(run)
            return first, count
    return None
for _ in range(nops):
    k = rnd.random()
    if k < 0.40:
        off, n = span(3 * cs)
        print("write -P 0x%02x %d %d" % (rnd.randrange(1, 256), off, n))
    elif k < 0.55:
        off, n = span(4 * cs)
        print("write -z%s %d %d" % (" -u" if rnd.random() < 0.5 else "", off, n))
    elif k < 0.70:
        off, n = span(4 * cs)
        print("discard %d %d" % (off, n))
    elif k < 0.90:
        f = fresh(rnd.randrange(1, 4))
        if f:
            print("write -c -P 0x%02x %d %d" % (rnd.randrange(0, 256), f[0] * cs, f[1] * cs))
    elif k < 0.93:
        # refused by both tools: the cluster is allocated
        off, n = span(1)
        print("write -P 0x55 %d %d" % (off // cs * cs, cs))
        print("write -c -P 0x66 %d %d" % (off // cs * cs, cs))
    elif k < 0.95:
        f = fresh(1)
        if f:
            print("write -c -P 0 %d %d" % (f[0] * cs, cs))
    else:
        print("flush")
EOF
}

# make_base KIND: a base image with data (raw or qcow2), or nothing.
make_base() {
    case $1 in
    raw)
        qemu-img create -q -f raw base.img "$size"
        qemu-io -f raw -c "write -P 0x11 0 $((size / 2))" -c "write -P 0x22 $((size - 100000)) 99999" \
            base.img >/dev/null
        ;;
    qcow2)
        qemu-img create -q -f qcow2 base.img "$size"
        qemu-io -c "write -P 0x33 0 $((size / 3))" -c "write -c -P 0x44 $((size / 2)) 128k" \
            -c "write -z $((size / 3)) 64k" base.img >/dev/null
        ;;
    esac
}

# Keep the lines that do not depend on timing.
stable() {
    grep -v ' ops; '
}

passed=0
failed=0
idx=0

# run NAME BACKING(none|raw|qcow2) SIZE CREATE_OPTS CLUSTER
run() {
    name=$1 backing=$2 size=$3 opts=$4 cs=$5
    rm -rf "$work/case" && mkdir "$work/case" && cd "$work/case" || exit 1
    ok=1
    make_base "$backing"
    if [ "$backing" = none ]; then
        qemu-img create -q -f qcow2 -o "$opts" a.qcow2 "$size"
    else
        qemu-img create -q -f qcow2 -o "$opts" -b base.img -F "$backing" a.qcow2 "$size"
    fi
    cp a.qcow2 b.qcow2
    idx=$((idx + 1))
    gen "$((SEED * 1000 + idx))" "$size" "$cs" "$NOPS" >cmds
    # One session per batch, a batch starting at each compressed write:
    # in one qemu-io 7.2 session, a compressed write after data overwrote
    # earlier compressed clusters can land in a host cluster that is now
    # data (v2 over a raw backing file: "write -c 3968k 128k", "write
    # 4081669 112635", "write 2302285 28933", "write -c 1M 128k" leaves an
    # OFLAG_COPIED error); a new session starts compression afresh.
    awk '/^write -c/ { n++ } { print > ("batch." sprintf("%04d", n + 0)) }' cmds
    qa=0
    qb=0
    : >qemu.out
    : >qsnap.out
    for batch in batch.*; do
        set --
        while IFS= read -r line; do
            set -- "$@" -c "$line"
        done <"$batch"
        qemu-io "$@" a.qcow2 >>qemu.out 2>&1 || qa=1
        "$QSNAP" image io "$@" b.qcow2 >>qsnap.out 2>&1 || qb=1
    done
    if [ $qa -ne $qb ]; then
        echo "  $name: exit status qemu-io $qa, qsnap $qb"
        ok=0
    fi
    stable <qemu.out >qemu.stable
    stable <qsnap.out >qsnap.stable
    if ! cmp -s qemu.stable qsnap.stable; then
        echo "  $name: output differs (qemu-io, qsnap):"
        diff qemu.stable qsnap.stable | head -10 | sed 's/^/    /'
        ok=0
    fi
    if ! qemu-img compare -q a.qcow2 b.qcow2; then
        echo "  $name: content differs:"
        qemu-img compare a.qcow2 b.qcow2 2>&1 | sed 's/^/    /'
        ok=0
    fi
    for f in a.qcow2 b.qcow2; do
        if ! qemu-img check "$f" >check.out 2>&1; then
            echo "  $name: qemu-img check $f:"
            head -10 check.out | sed 's/^/    /'
            ok=0
        fi
    done
    if [ $ok = 1 ]; then
        echo "ok $name"
        passed=$((passed + 1))
    else
        keep=${TMPDIR:-/tmp}/io_replay.$name.cmds
        cp cmds "$keep" 2>/dev/null && echo "  $name: commands kept in $keep"
        echo "FAIL $name"
        failed=$((failed + 1))
    fi
    cd "$work" || exit 1
}

run v3-64k-nobacking none 4194304 compat=1.1 65536
run v3-64k-raw-backing raw 4194304 compat=1.1 65536
run v3-64k-qcow2-backing qcow2 4194304 compat=1.1 65536
run v2-64k-raw-backing raw 4194304 compat=0.10 65536
run v2-64k-nobacking none 4194304 compat=0.10 65536
run v2-4k-qcow2-backing qcow2 1048576 compat=0.10,cluster_size=4096 4096
run v3-64k-extl2-raw-backing raw 4194304 compat=1.1,extended_l2=on 65536
run v3-32k-extl2-qcow2-backing qcow2 2097152 compat=1.1,extended_l2=on,cluster_size=32768 32768
run v3-16k-extl2-zstd-nobacking none 1048576 extended_l2=on,cluster_size=16384,compression_type=zstd 16384
run v3-4k-refcount1 raw 1048576 cluster_size=4096,refcount_bits=1 4096

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
