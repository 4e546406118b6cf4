#!/bin/bash
# The vm-state area of a qcow2 image (qsnap image io read -b / write -b,
# libqcow2's qcow2_vmstate_*), against qemu-io 7.2 doing the same on an image
# made the same way:
#   layout    the same guest clusters are mapped (L1 index, L2 index) as
#             qemu-io maps, for several cluster and virtual sizes, so the
#             area starts where qemu's does; the L1 grows to reach it
#             (the header's l1_size covers it), qemu-img info says the same as
#             of qemu-io's image, and the guest data is unchanged;
#   cross     qemu-io reads back what qsnap wrote, qsnap reads what qemu-io
#             wrote; never written ranges read as zeroes;
#   backing   reads fall through to the backing file at the same guest offset,
#             partial writes copy the rest of the cluster from it (as qemu);
#   extl2, v2, lazy refcounts, 512-byte and 2 MiB clusters;
#   snapshot  internal snapshots share the area (qsnap image snapshot -c, then
#             qemu-img snapshot -a brings the old state back; vm_state_size 0
#             in both tools' tables);
#   resize    a grow makes the old area guest data, as qemu-img resize does.
# Every image written passes qemu-img check (and qsnap image check).
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
#   KEEP=1      keep the work directory
set -u

. "$(dirname "$0")/../helpers/interop_setup.sh"
TS_TIMEOUT=120
interop_setup vmstate

# The mapped guest clusters of an image's active L1, one "l1_idx l2_idx" a
# line, then "l1_size N" (the header's).
cat >"$W/mapped.py" <<'EOF'
import struct, sys
d = open(sys.argv[1], 'rb').read()
cb = struct.unpack('>I', d[20:24])[0]
l1_size, l1_off = struct.unpack('>IQ', d[36:48])
incompat = struct.unpack('>Q', d[72:80])[0] if struct.unpack('>I', d[4:8])[0] >= 3 else 0
l2e = 16 if incompat & 16 else 8
for i in range(l1_size):
    l2 = struct.unpack('>Q', d[l1_off + 8 * i:l1_off + 8 * i + 8])[0] & 0x00fffffffffffe00
    if not l2:
        continue
    for j in range((1 << cb) // l2e):
        e = d[l2 + l2e * j:l2 + l2e * j + l2e]
        if any(e):
            print(i, j)
print('l1_size', l1_size)
EOF
# The mapped clusters without the header's l1_size (ours pads the table to whole clusters).
mapped() { python3 "$W/mapped.py" "$1" | grep -v '^l1_size'; }

# check_clean FILE...: qemu-img check and qsnap image check find nothing; prints why not.
check_clean() {
    local f
    for f in "$@"; do
        if ! qemu-img check "$f" >"$W/check.out" 2>&1; then
            echo "qemu-img check $f: $(grep -v '^$' "$W/check.out" | head -n 3 | paste -sd ';')"
            return 1
        fi
        if ! q image check "$f" >"$W/check.out" 2>&1; then
            echo "qsnap image check $f: $(grep -v '^$' "$W/check.out" | head -n 3 | paste -sd ';')"
            return 1
        fi
    done
}

# run_both A B CMD...: qemu-io on A and qsnap image io on B with the same -c
# commands; the outputs (timing lines left out) go to qemu.out and qsnap.out.
run_both() {
    local a=$1 b=$2 c args=()
    shift 2
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io "${args[@]}" "$a" 2>&1 | grep -v ' ops; ' >"$W/qemu.out"
    q image io "${args[@]}" "$b" 2>&1 | grep -v ' ops; ' >"$W/qsnap.out"
}

# reads_ok TOOL FILE CMD...: every read command succeeds (its pattern holds).
reads_ok() {
    local tool=$1 f=$2 c args=()
    shift 2
    for c in "$@"; do args+=(-c "$c"); done
    if [ "$tool" = qemu ]; then
        qemu-io -r "${args[@]}" "$f" >"$W/reads.out" 2>&1
    else
        q image io -r "${args[@]}" "$f" >"$W/reads.out" 2>&1
    fi || return 1
    ! grep -qiE 'fail|error' "$W/reads.out"
}

# qemu-img info without the lines that differ between two files made alike.
info_of() { qemu-img info "$1" | grep -v -e '^image:' -e '^disk size:'; }

fresh() { rm -rf "$W/c" && mkdir "$W/c" && cd "$W/c" || exit 2; }

# ---- layout and cross reads --------------------------------------------------
# layout NAME CREATE_OPTS SIZE VMPOS...: a and b made alike (guest data at 0
# and in the last cluster), qemu-io writes -b at each VMPOS into a (a
# partial sector run and a whole cluster), qsnap into b; same output, same
# mapped clusters, each tool reads the other's data, guest data unchanged.
layout() {
    local name=$1 opts=$2 size=$3 why p cmds=() reads=() i=1 vsize ma mb
    shift 3
    fresh
    for f in a.qcow2 b.qcow2 g.qcow2; do
        qemu-img create -q -f qcow2 -o "$opts" $f "$size"
        vsize=$(qemu-img info $f | sed -n 's/^virtual size: .*(\([0-9]*\) bytes)$/\1/p')
        qemu-io -c "write -P 0xee 0 4k" -c "write -P 0xdd $((vsize - 512)) 512" $f >/dev/null
    done
    for p in "$@"; do
        cmds+=("write -b -P $i $p 1536" "write -b -P $((i + 100)) $((p + 65536)) 64k")
        reads+=("read -b -P $i $p 1536" "read -b -P $((i + 100)) $((p + 65536)) 64k"
            "read -b -P 0 $((p + 1536)) 1024")
        i=$((i + 1))
    done
    run_both a.qcow2 b.qcow2 "${cmds[@]}"
    ma=$(python3 "$W/mapped.py" a.qcow2)
    mb=$(python3 "$W/mapped.py" b.qcow2)
    if ! cmp -s "$W/qemu.out" "$W/qsnap.out"; then
        bad "$name" "output differs: $(diff "$W/qemu.out" "$W/qsnap.out" | head -n 4 | paste -sd ';')"
    elif [ "$(grep -v l1_size <<<"$ma")" != "$(grep -v l1_size <<<"$mb")" ]; then
        bad "$name" "mapped clusters differ: qemu $(paste -sd , <<<"$ma") qsnap $(paste -sd , <<<"$mb")"
    elif [ "${mb##*l1_size }" -lt "${ma##*l1_size }" ]; then
        bad "$name" "l1_size ${mb##*l1_size } < qemu's ${ma##*l1_size }"
    elif ! reads_ok qemu b.qcow2 "${reads[@]}"; then
        bad "$name" "qemu-io reads of qsnap's writes: $(grep -m1 -iE 'fail|error' "$W/reads.out")"
    elif ! reads_ok qsnap a.qcow2 "${reads[@]}"; then
        bad "$name" "qsnap reads of qemu-io's writes: $(grep -m1 -iE 'fail|error' "$W/reads.out")"
    elif ! qemu-img compare -q g.qcow2 b.qcow2; then
        bad "$name" "guest data changed"
    elif [ "$(info_of a.qcow2)" != "$(info_of b.qcow2)" ]; then
        bad "$name" "qemu-img info differs: $(diff <(info_of a.qcow2) <(info_of b.qcow2) | paste -sd ';')"
    elif why=$(check_clean b.qcow2); then
        ok "$name"
    else
        bad "$name" "$why"
    fi
}
layout layout-64k cluster_size=64k 1M 0 1073741824
layout layout-64k-l1-3 cluster_size=64k 1025M 0 1073741824 5368709120
layout layout-64k-exact cluster_size=64k 512M 0 536870912
layout layout-4k cluster_size=4k 3M 0 2097152 104857600
layout layout-512 cluster_size=512 100k 0 200704 1048576
layout layout-2M cluster_size=2M 1M 0 1099511627776
layout layout-extl2 cluster_size=64k,extended_l2=on 1M 0 201216 1073741824
layout layout-v2 compat=0.10 1M 0 3221225472
layout layout-lazy lazy_refcounts=on 1M 0 1073741824
layout layout-refcount1 refcount_bits=1 1M 0 1073741824

# ---- never written: zeroes, in both ---------------------------------------
fresh
qemu-img create -q -f qcow2 a.qcow2 1M
if reads_ok qsnap a.qcow2 "read -b -P 0 0 64k" "read -b -P 0 1T 1M" "read -b -P 0 1E 512"; then
    ok unwritten-zeroes
else
    bad unwritten-zeroes "$(grep -m1 -iE 'fail|error' "$W/reads.out")"
fi

# ---- backing chain: reads fall through, partial writes copy from below ------
fresh
qemu-img create -q -f qcow2 base.qcow2 1G
qemu-io -c 'write -P 0x77 512M 128k' -c 'write -b -P 0x99 0 64k' base.qcow2 >/dev/null
for f in a.qcow2 b.qcow2; do qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 $f 1M; done
run_both a.qcow2 b.qcow2 'read -b -P 0x77 0 128k' 'read -b -P 0 128k 64k' \
    'write -b -P 0x11 4k 4k' 'read -b -P 0x77 0 4k' 'read -b -P 0x11 4k 4k' \
    'read -b -P 0x77 8k 56k' 'write -b -P 0x12 1G 512' 'read -b -P 0x12 1G 512' 'read -b -P 0 1049601k 63k'
if ! cmp -s "$W/qemu.out" "$W/qsnap.out"; then
    bad backing-falls-through "output differs: $(diff "$W/qemu.out" "$W/qsnap.out" | head -n 4 | paste -sd ';')"
elif grep -q 'failed' "$W/qsnap.out"; then
    bad backing-falls-through "$(grep -m1 failed "$W/qsnap.out")"
elif [ "$(mapped a.qcow2)" != "$(mapped b.qcow2)" ]; then
    bad backing-falls-through "mapped clusters differ from qemu-io's"
elif ! reads_ok qemu b.qcow2 'read -b -P 0x77 0 4k' 'read -b -P 0x11 4k 4k' 'read -b -P 0x77 8k 56k'; then
    bad backing-falls-through "qemu-io reads: $(grep -m1 -iE 'fail|error' "$W/reads.out")"
elif why=$(check_clean b.qcow2); then
    ok backing-falls-through
else
    bad backing-falls-through "$why"
fi
# The base's own vm state (past its virtual size) is never seen from above.
if reads_ok qsnap base.qcow2 'read -b -P 0x99 0 64k' &&
    reads_ok qsnap b.qcow2 'read -b -P 0 2G 64k'; then
    ok backing-own-vmstate-hidden
else
    bad backing-own-vmstate-hidden "$(grep -m1 -iE 'fail|error' "$W/reads.out")"
fi

# ---- internal snapshots share the area --------------------------------------
fresh
qemu-img create -q -f qcow2 a.qcow2 1M
q image io -c 'write -b -P 0x5a 0 128k' a.qcow2 >/dev/null
q image snapshot -c s1 a.qcow2
q image io -c 'write -b -P 0x66 0 4k' a.qcow2 >/dev/null
qs=$(q image snapshot -l a.qcow2 | awk 'NR == 3 {print $3, $4}')
qm=$(qemu-img snapshot -l a.qcow2 | awk 'NR == 3 {print $3, $4}')
if [ "$qs" != "0 B" ] || [ "$qm" != "0 B" ]; then
    bad snapshot-shares-area "VM SIZE: qsnap '$qs', qemu-img '$qm' (want 0 B)"
elif ! why=$(check_clean a.qcow2); then
    bad snapshot-shares-area "$why"
elif ! reads_ok qemu a.qcow2 'read -b -P 0x66 0 4k' 'read -b -P 0x5a 4k 124k'; then
    bad snapshot-shares-area "after the write: $(grep -m1 -iE 'fail|error' "$W/reads.out")"
elif ! qemu-img snapshot -a s1 a.qcow2 || ! reads_ok qsnap a.qcow2 'read -b -P 0x5a 0 128k'; then
    bad snapshot-shares-area "qemu-img snapshot -a s1: $(grep -m1 -iE 'fail|error' "$W/reads.out")"
elif ! q image snapshot -d s1 a.qcow2 || ! why=$(check_clean a.qcow2); then
    bad snapshot-shares-area "after delete: ${why:-snapshot -d failed}"
elif ! reads_ok qemu a.qcow2 'read -b -P 0x5a 0 128k'; then
    bad snapshot-shares-area "after delete: $(grep -m1 -iE 'fail|error' "$W/reads.out")"
else
    ok snapshot-shares-area
fi
# qemu-img's snapshot of an area qsnap wrote, applied by qsnap.
fresh
qemu-img create -q -f qcow2 a.qcow2 1M
q image io -c 'write -b -P 0x31 0 64k' a.qcow2 >/dev/null
qemu-img snapshot -c s1 a.qcow2
q image io -c 'write -b -P 0x32 0 64k' a.qcow2 >/dev/null
if ! q image snapshot -a s1 a.qcow2 || ! reads_ok qemu a.qcow2 'read -b -P 0x31 0 64k'; then
    bad snapshot-apply-restores "$(grep -m1 -iE 'fail|error' "$W/reads.out")"
elif why=$(check_clean a.qcow2); then
    ok snapshot-apply-restores
else
    bad snapshot-apply-restores "$why"
fi

# ---- resize: the area moves with the size ------------------------------------
fresh
for f in a.qcow2 b.qcow2; do
    qemu-img create -q -f qcow2 $f 1M
    qemu-io -c 'write -b -P 9 0 64k' $f >/dev/null
done
qemu-img resize -q a.qcow2 1G
q image resize b.qcow2 1G >/dev/null
if ! qemu-img compare -q a.qcow2 b.qcow2; then
    bad resize-moves-area "content after the grow differs from qemu-img resize's"
elif ! reads_ok qsnap b.qcow2 'read -P 9 512M 64k' 'read -b -P 0 0 64k'; then
    bad resize-moves-area "$(grep -m1 -iE 'fail|error' "$W/reads.out")"
elif why=$(check_clean b.qcow2); then
    ok resize-moves-area
else
    bad resize-moves-area "$why"
fi

ts_end
