#!/bin/bash
# Wrong results that QEMU's own tests found, each checked against qemu-img /
# qemu-io 7.2 on the same image, or against a model where qemu itself is wrong:
#   resize   a shrink inside a cluster and a grow back read zeroes in the grown
#            range (qemu 7.2 shows the cut-off bytes again; the model is
#            zeroes), with 64k, 4k and subcluster (extended L2) clusters, a
#            compressed last cluster, an image qemu-img shrank; a grow over a
#            longer backing file reads zeroes (as qemu-img's);
#   commit   -b naming the immediate backing file leaves the top as it was (as
#            qemu-img's -b, which implies -d); a relative -b is resolved as the
#            chain names it, whatever the current directory;
#   convert  -O qcow2 -S 0 allocates every cluster (qemu-img map);
#   io       write -z without -u keeps preallocated clusters allocated;
#   rebase   -u -b "" keeps the feature-name table (and other extensions);
#   open     two backing-format extensions: the last one is used (as qemu).
# Every qcow2 file written passes qemu-img check.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
#   KEEP=1      keep the work directory
set -u

. "$(dirname "$0")/../helpers/interop_setup.sh"
. "$(dirname "$0")/../helpers/qemu_io.sh"
interop_setup diffs

# check_clean FILE...: qemu-img check finds nothing on each file; prints why not.
check_clean() {
    local f
    for f in "$@"; do
        if ! qemu-img check "$f" >"$W/check.out" 2>&1; then
            echo "qemu-img check $f: $(grep -v '^$' "$W/check.out" | head -n 3 | paste -sd ';')"
            return 1
        fi
    done
}

# same_content A B: qemu-img compare (not strict) says identical; prints why not.
same_content() {
    qemu-img compare "$1" "$2" >"$W/cmp.out" 2>&1 || { echo "$1 vs $2: $(head -n 2 "$W/cmp.out" | paste -sd ';')"; return 1; }
}

fresh() { rm -rf "$W/c" && mkdir "$W/c" && cd "$W/c" || exit 2; }

# ---- resize: shrink inside a cluster, then grow ---------------------------
# shrink_regrow NAME CREATE_OPTS WRITE_CMD CUT: an image full of 0xaa (by
# WRITE_CMD), shrunk by qsnap to CUT and grown back to 1M by qsnap: the first
# CUT bytes are kept and everything after reads zeroes.
shrink_regrow() {
    local name=$1 opts=$2 wcmd=$3 cut=$4 why
    fresh
    qemu-img create -q -f qcow2 -o "$opts" a.qcow2 1M
    qio qcow2 a.qcow2 "$wcmd" || { bad "$name" "qemu-io setup: $(head -n 2 qio.out)"; return; }
    if ! q image resize -q --shrink a.qcow2 "$cut" || ! q image resize -q a.qcow2 1M; then
        bad "$name" "resize failed"
        return
    fi
    if ! qio qcow2 a.qcow2 "read -P 0xaa 0 $cut" "read -P 0 $cut $((1048576 - cut))"; then
        bad "$name" "$(grep -m1 -i fail "$W/qio.out")"
        return
    fi
    why=$(check_clean a.qcow2) || { bad "$name" "$why"; return; }
    ok "$name"
}
shrink_regrow resize-regrow-64k cluster_size=64k "write -P 0xaa 0 1M" 1536
shrink_regrow resize-regrow-4k cluster_size=4k "write -P 0xaa 0 1M" 66048
shrink_regrow resize-regrow-extl2 cluster_size=64k,extended_l2=on "write -P 0xaa 0 1M" 3584
shrink_regrow resize-regrow-compressed cluster_size=64k "write -c -P 0xaa 0 1M" 512
shrink_regrow resize-regrow-v2 compat=0.10 "write -P 0xaa 0 1M" 1536

# An image that qemu-img shrank (leaving the bytes): our grow zeroes them.
fresh
qemu-img create -q -f qcow2 a.qcow2 1M
qio qcow2 a.qcow2 "write -P 0xaa 0 1M"
qemu-img resize -q --shrink a.qcow2 1536
if ! q image resize -q a.qcow2 1M; then
    bad resize-grow-after-qemu-shrink "resize failed"
elif ! qio qcow2 a.qcow2 "read -P 0 1536 $((1048576 - 1536))"; then
    bad resize-grow-after-qemu-shrink "the grown range is not zero"
elif why=$(check_clean a.qcow2); then
    ok resize-grow-after-qemu-shrink
else
    bad resize-grow-after-qemu-shrink "$why"
fi

# A grow over a backing file longer than the old size: zeroes, as qemu-img's.
fresh
qemu-img create -q -f qcow2 base.qcow2 1M
qio qcow2 base.qcow2 "write -P 0xaa 0 1M"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 a.qcow2 500k
cp a.qcow2 b.qcow2
if ! q image resize -q a.qcow2 2M; then
    bad resize-grow-over-backing "resize failed"
else
    qemu-img resize -q b.qcow2 2M
    if ! why=$(same_content a.qcow2 b.qcow2); then
        bad resize-grow-over-backing "$why"
    elif ! qio qcow2 a.qcow2 "read -P 0xaa 0 500k" "read -P 0 500k 1548k"; then
        bad resize-grow-over-backing "content is not 0xaa then zeroes"
    elif why=$(check_clean a.qcow2); then
        ok resize-grow-over-backing
    else
        bad resize-grow-over-backing "$why"
    fi
fi

# ---- commit -b --------------------------------------------------------------
# A chain sub/base.raw <- sub/mid.qcow2 <- sub/top.qcow2 with relative names,
# built twice (ours/, qemu/). commit_b NAME DIR B: run `commit -b B
# DIR/top.qcow2` from the parent directory with both tools; the exit
# statuses agree, and every file equals qemu-img's result (content, and the
# top's own allocation as qemu-img map shows it).
mkchain_b() {
    mkdir -p "$1" && (
        cd "$1" &&
            qemu-img create -q -f raw base.raw 1M &&
            qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 &&
            qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 &&
            qio qcow2 mid.qcow2 "write -P 0x11 0 64k" "write -P 0x12 256k 64k" &&
            qio qcow2 top.qcow2 "write -P 0x21 64k 64k" "write -z 256k 4k"
    )
}
commit_b() {
    local name=$1 b=$2 why a q f
    fresh
    mkdir ours qemu
    (cd ours && mkchain_b sub) && (cd qemu && mkchain_b sub) || { bad "$name" "setup failed"; return; }
    (cd ours && q image commit -q -b "${b//@/$W/c/ours}" sub/top.qcow2 2>/dev/null)
    a=$?
    (cd qemu && qemu-img commit -q -b "${b//@/$W/c/qemu}" sub/top.qcow2 2>/dev/null)
    q=$?
    if [ $a != $q ]; then
        bad "$name" "exit $a, qemu-img's $q"
        return
    fi
    for f in base.raw mid.qcow2 top.qcow2; do
        if ! why=$(same_content "ours/sub/$f" "qemu/sub/$f"); then
            bad "$name" "$f: $why"
            return
        fi
    done
    for f in mid.qcow2 top.qcow2; do
        if [ "$(qemu-img map --output=json "ours/sub/$f" | sed 's/"offset": [0-9]*//')" != \
            "$(qemu-img map --output=json "qemu/sub/$f" | sed 's/"offset": [0-9]*//')" ]; then
            bad "$name" "$f allocates other ranges than qemu-img leaves"
            return
        fi
        if ! why=$(check_clean "ours/sub/$f"); then
            bad "$name" "$why"
            return
        fi
    done
    ok "$name (exit $a)"
}
# -b naming the immediate backing file implies -d: the top keeps its data.
commit_b commit-b-immediate-keeps-top mid.qcow2
commit_b commit-b-immediate-absolute @/sub/mid.qcow2
commit_b commit-b-deep base.raw
# A relative name is taken relative to the image that names it ...
commit_b commit-b-relative-to-chain base.raw
# ... not to the current directory: qemu-img refuses these.
commit_b commit-b-relative-to-cwd sub/base.raw
commit_b commit-b-relative-to-cwd-mid sub/mid.qcow2

# ---- convert -S 0 -----------------------------------------------------------
# -O qcow2 -S 0 allocates every cluster: the same map as qemu-img's (data
# everywhere), on a source with data, zero clusters, zero data and holes.
for v in 1.1 0.10; do
    fresh
    qemu-img create -q -f qcow2 -o compat=$v s.qcow2 1M
    qio qcow2 s.qcow2 "write -P 1 0 64k" "write -z 128k 64k" "write -P 0 256k 64k" "write -P 2 1000k 3k"
    q image convert -S 0 -O qcow2 -o compat=$v s.qcow2 o.qcow2
    qemu-img convert -S 0 -O qcow2 -o compat=$v s.qcow2 e.qcow2
    if [ "$(qemu-img map --output=json o.qcow2 | sed 's/"offset": [0-9]*//')" != \
        "$(qemu-img map --output=json e.qcow2 | sed 's/"offset": [0-9]*//')" ]; then
        bad "convert-S0-allocates-all-$v" "map differs from qemu-img's: $(qemu-img map o.qcow2 | tail -n +2 | paste -sd ';')"
    elif ! why=$(same_content o.qcow2 s.qcow2); then
        bad "convert-S0-allocates-all-$v" "$why"
    elif ! why=$(check_clean o.qcow2); then
        bad "convert-S0-allocates-all-$v" "$why"
    else
        ok "convert-S0-allocates-all-$v"
    fi
done

# ---- write -z keeps allocations -------------------------------------------
# zero_alloc NAME CREATE_OPTS BACKING(0|1) SETUP_CMDS...: the image made by
# qemu-img (and SETUP_CMDS by qemu-io), then the same zero writes (without
# -u; whole clusters, pieces of clusters, across clusters) by qemu-io on one
# copy and by qsnap on the other: the same allocation (qemu-img map without
# host offsets), the same content, both clean.
zero_alloc() {
    local name=$1 opts=${2:-compat=1.1} backing=$3 c f args=() why
    shift 3
    fresh
    if [ "$backing" = 1 ]; then
        qemu-img create -q -f qcow2 base.qcow2 1M
        qio qcow2 base.qcow2 "write -P 0x5a 0 512k"
    fi
    # Both images made the same way (a copy would change the host file's
    # extents, which qemu-img map shows).
    for f in a.qcow2 b.qcow2; do
        if [ "$backing" = 1 ]; then
            qemu-img create -q -f qcow2 -o "$opts" -b base.qcow2 -F qcow2 $f
        else
            qemu-img create -q -f qcow2 -o "$opts" $f 1M
        fi
        [ $# -gt 0 ] && { qio qcow2 $f "$@" || { bad "$name" "setup: $(head -n 2 "$W/qio.out")"; return; }; }
    done
    for c in "write -z 0 64k" "write -z 64k 4k" "write -z 130k 2k" "write -z 200k 100k" \
        "write -z 600k 64k" "write -z 1020k 4k"; do
        args+=(-c "$c")
    done
    qemu-io "${args[@]}" a.qcow2 >/dev/null 2>&1
    q image io "${args[@]}" b.qcow2 >/dev/null 2>&1
    if [ "$(qemu-img map --output=json b.qcow2 | sed 's/, "offset": [0-9]*//')" != \
        "$(qemu-img map --output=json a.qcow2 | sed 's/, "offset": [0-9]*//')" ]; then
        bad "$name" "map differs from qemu-io's: $(qemu-img map b.qcow2 | tail -n +2 | paste -sd ';')"
    elif ! why=$(same_content a.qcow2 b.qcow2); then
        bad "$name" "$why"
    elif ! why=$(check_clean b.qcow2); then
        bad "$name" "$why"
    else
        ok "$name"
    fi
}
zero_alloc zero-keeps-prealloc-metadata preallocation=metadata 0
zero_alloc zero-keeps-prealloc-falloc preallocation=falloc 0
zero_alloc zero-keeps-zero-alloc "" 0 "write -P 1 0 1M" "write -z 0 1M"
zero_alloc zero-keeps-data "" 0 "write -P 1 0 1M"
zero_alloc zero-keeps-zero-alloc-backing "" 1 "write -P 1 0 1M" "write -z 0 1M"
zero_alloc zero-over-backing "" 1
zero_alloc zero-keeps-zero-alloc-extl2 extended_l2=on 0 "write -P 1 0 1M" "write -z 0 1M"
zero_alloc zero-keeps-prealloc-extl2 extended_l2=on,preallocation=metadata 0

# ---- header extensions ------------------------------------------------------
# The extension types of a qcow2 file, in order.
exts() {
    python3 - "$1" <<'PYEOF'
import struct, sys
d = open(sys.argv[1], 'rb').read(65536)
off = struct.unpack('>I', d[100:104])[0] if struct.unpack('>I', d[4:8])[0] >= 3 else 72
out = []
while off + 8 <= len(d):
    t, l = struct.unpack('>II', d[off:off + 8])
    if t == 0:
        break
    out.append('%08x' % t)
    off += 8 + ((l + 7) & ~7)
print(' '.join(out))
PYEOF
}

# rebase -u -b "" keeps the feature-name table, as qemu-img's: images by
# qemu-img with a backing file, with and without a bitmap, and with a long
# backing name (the header then reaches past its first sector).
rebase_keeps() {
    local name=$1 bname=$2 bitmap=$3 why
    fresh
    qemu-img create -q -f raw "$bname" 1M
    qemu-img create -q -f qcow2 -b "$bname" -F raw a.qcow2
    [ "$bitmap" = 1 ] && qemu-img bitmap --add a.qcow2 bm0
    cp a.qcow2 b.qcow2
    qemu-img rebase -u -b "" a.qcow2
    if ! q image rebase -u -b "" b.qcow2 >/dev/null; then
        bad "$name" "rebase failed"
    elif [ "$(exts b.qcow2)" != "$(exts a.qcow2)" ]; then
        bad "$name" "extensions '$(exts b.qcow2)', qemu-img's '$(exts a.qcow2)'"
    elif ! why=$(check_clean b.qcow2); then
        bad "$name" "$why"
    elif [ "$(qemu-img info b.qcow2 | grep -c 'backing file')" != 0 ]; then
        bad "$name" "still has a backing file"
    else
        ok "$name ($(exts b.qcow2))"
    fi
}
rebase_keeps rebase-u-none-keeps-feature-table base.raw 0
rebase_keeps rebase-u-none-keeps-feature-table-bitmap base.raw 1
rebase_keeps rebase-u-none-keeps-feature-table-long-name \
    "base-with-a-rather-long-name-$(printf '%0100d' 0).raw" 1

# Two backing-format extensions: qemu uses the last. A raw base named by a
# qcow2 overlay whose first extension says "qcow2" and the last "raw": the
# overlay reads as qemu-io reads it.
fresh
qemu-img create -q -f raw base.raw 1M
qio raw base.raw "write -P 0x61 0 256k"
qemu-img create -q -f qcow2 -b base.raw -F raw a.qcow2
qio qcow2 a.qcow2 "write -P 0x62 128k 64k"
python3 - a.qcow2 <<'PYEOF'
import struct, sys
f = sys.argv[1]
d = bytearray(open(f, 'rb').read(65536))
hl = struct.unpack('>I', d[100:104])[0]
boff, blen = struct.unpack('>QI', d[8:20])
name = bytes(d[boff:boff + blen])
exts = [(0xe2792aca, b'qcow2'), (0xe2792aca, b'raw')]
out = b''
for t, v in exts:
    out += struct.pack('>II', t, len(v)) + v + b'\0' * ((-len(v)) % 8)
out += b'\0' * 8
noff = hl + len(out)
d[hl:] = b'\0' * (len(d) - hl)
d[hl:hl + len(out)] = out
d[noff:noff + len(name)] = name
d[8:20] = struct.pack('>QI', noff, len(name))
with open(f, 'r+b') as fh:
    fh.write(bytes(d[:4096]))
PYEOF
qemu-img convert -O raw a.qcow2 want.raw 2>"$W/err"
if [ ! -s want.raw ]; then
    bad backing-format-twice-last "qemu-img could not read the test image: $(head -c 200 "$W/err")"
elif ! q image convert -O raw a.qcow2 got.raw 2>"$W/err"; then
    bad backing-format-twice-last "qsnap refuses it: $(head -c 200 "$W/err")"
elif ! cmp -s want.raw got.raw; then
    bad backing-format-twice-last "content differs from qemu-img's"
elif [ "$(q image info a.qcow2 | grep '^backing file format')" != \
    "$(qemu-img info a.qcow2 | grep '^backing file format')" ]; then
    bad backing-format-twice-last "info: $(q image info a.qcow2 | grep '^backing file format')"
else
    ok backing-format-twice-last
fi

ts_end
