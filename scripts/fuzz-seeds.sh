#!/bin/sh
# fuzz-seeds.sh [OUTDIR]: regenerate the seed corpora of the fuzz targets
# (fuzz/corpora/<target>/) from small images made by qemu-img and qemu-io
# across the option matrix: qcow2 v2 and v3,
# 512 B to 16 KiB clusters, refcount widths 1/16/64, zero writes, discards,
# deflate and zstd compression, extended L2 with partial subclusters, an
# internal snapshot, a persistent bitmap, a backing name with a format
# extension, lazy refcounts. Tiny virtual sizes and 512-byte clusters keep
# every seed a few KiB (the extended-L2 one needs 16 KiB clusters).
# cluster_read seeds are the same images with 64 parameter bytes appended
# (fuzz/cluster_read.c reads its parameters from the input's tail).
# check_repair adds damaged copies (a leak, a refcount too low, a cleared
# COPIED flag, dirty and corrupt bits); snapshot_table adds images with
# several snapshots across resizes; chain_open joins chains (and a loop, a
# json: name, an absolute device name) with its "FUZZSPLT" separator; the
# library itself (fuzz/tools/seedgen.c) makes the decompress_cluster,
# qsnap_meta and write_roundtrip seeds and the qsnap_log seeds against that
# target's built-in model; the other qsnap_log seeds are the meta file and
# meta.log records of stores the qsnap command made (create, revert, switch,
# branch, rename, delete, internal snapshots), joined the same way.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/fuzz/corpora}
command -v qemu-img >/dev/null || { echo "fuzz-seeds: qemu-img not found" >&2; exit 1; }
qsnap=$top/build/release/qsnap
[ -x "$qsnap" ] || { echo "fuzz-seeds: $qsnap not found (run make first)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

qi() { qemu-io -f qcow2 "$@" >/dev/null; }
mk() { # name size options...
    n=$1; s=$2; shift 2
    qemu-img create -q -f qcow2 -o "$@" "$n.qcow2" "$s"
}

# v2, 512 B clusters, unaligned and cluster-crossing writes.
mk v2_c512 64k compat=0.10,cluster_size=512
qi -c 'write -P 0x11 0 512' -c 'write -P 0x22 1000 700' -c 'write -P 0x33 40000 3000' v2_c512.qcow2

# v3 with 1-bit refcounts: data, zero clusters, a discard.
mk v3_c512_rc1 64k cluster_size=512,refcount_bits=1
qi -c 'write -P 0x41 0 4k' -c 'write -z 1k 1k' -c 'discard 3k 512' -c 'write -z 20k 2k' v3_c512_rc1.qcow2

# v3 with 64-bit refcounts.
mk v3_c512_rc64 32k cluster_size=512,refcount_bits=64
qi -c 'write -P 0x5a 512 1536' -c 'write -P 0xa5 30000 2000' v3_c512_rc64.qcow2

# Lazy refcounts, 4 KiB clusters.
mk v3_c4k_lazy 32k cluster_size=4k,lazy_refcounts=on
qi -c 'write -P 0x66 100 5000' v3_c4k_lazy.qcow2

# Compressed clusters: deflate (v2 and v3) and zstd.
qemu-img create -q -f raw src.raw 16k
qemu-io -f raw -c 'write -P 0x61 0 4k' -c 'write -P 0x62 6k 3k' -c 'write -P 0 12k 1k' src.raw >/dev/null
qemu-img convert -c -O qcow2 -o compat=0.10,cluster_size=512 src.raw v2_c512_zlib.qcow2
qemu-img convert -c -O qcow2 -o cluster_size=512,compression_type=zlib src.raw v3_c512_zlib.qcow2
qemu-img convert -c -O qcow2 -o cluster_size=512,compression_type=zstd src.raw v3_c512_zstd.qcow2

# Extended L2: partial subcluster writes, zero subclusters, a discard.
mk v3_c16k_extl2 64k cluster_size=16k,extended_l2=on
qi -c 'write -P 0x77 0 512' -c 'write -z 1k 1k' -c 'write -P 0x78 2500 300' v3_c16k_extl2.qcow2

# An internal snapshot, then more writes.
mk v3_c512_snap 16k cluster_size=512
qi -c 'write -P 0x10 0 2k' v3_c512_snap.qcow2
qemu-img snapshot -c snap1 v3_c512_snap.qcow2
qi -c 'write -P 0x20 1k 2k' v3_c512_snap.qcow2

# A persistent dirty bitmap.
mk v3_c512_bitmap 16k cluster_size=512
qemu-img bitmap --add v3_c512_bitmap.qcow2 b0
qi -c 'write -P 0x30 0 1k' v3_c512_bitmap.qcow2

# A backing name and backing-format extension (not opened by the targets).
qemu-img create -q -f raw base.raw 16k
qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw -F raw v3_c512_backing.qcow2
qi -c 'write -P 0x44 512 512' v3_c512_backing.qcow2

# A 16 MiB virtual size (larger L1) with sparse writes.
mk v3_c512_sparse 16M cluster_size=512
qi -c 'write -P 0x55 0 512' -c 'write -P 0x56 8M 1k' -c 'write -z 12M 4k' v3_c512_sparse.qcow2

# Parameter bytes derived from a name: params NAME COUNT.
params() {
    python3 -c 'import hashlib, sys
n, k = sys.argv[1].encode(), int(sys.argv[2])
out = b""
while len(out) < k:
    out += hashlib.sha256(n + str(len(out)).encode()).digest()
sys.stdout.buffer.write(out[:k])' "$1" "$2"
}

# Damaged copies for check_repair, poked with the header's own offsets.
poke() { # src dst kind
    python3 - "$1" "$2" "$3" <<'PY'
import struct, sys
src, dst, kind = sys.argv[1:]
b = bytearray(open(src, 'rb').read())
cb = struct.unpack('>I', b[20:24])[0]; cs = 1 << cb
l1_off = struct.unpack('>Q', b[40:48])[0]
rt_off = struct.unpack('>Q', b[48:56])[0]
order = struct.unpack('>I', b[96:100])[0] if struct.unpack('>I', b[4:8])[0] >= 3 else 4
assert order == 4, 'poke wants 16-bit refcounts'
rb = struct.unpack('>Q', b[rt_off:rt_off + 8])[0]
def set_ref(cl, v):
    struct.pack_into('>H', b, rb + 2 * cl, v)
l2 = struct.unpack('>Q', b[l1_off:l1_off + 8])[0] & 0x00fffffffffffe00
e = next(i for i in range(cs // 8) if struct.unpack('>Q', b[l2 + 8 * i:l2 + 8 * i + 8])[0] & 0x00fffffffffffe00)
ent = struct.unpack('>Q', b[l2 + 8 * e:l2 + 8 * e + 8])[0]
data = (ent & 0x00fffffffffffe00) // cs
if kind == 'leak':      # two clusters past the end with refcount 1
    n = len(b) // cs
    b += bytes(2 * cs); set_ref(n, 1); set_ref(n + 1, 1)
elif kind == 'lowref':  # a data cluster with refcount 0
    set_ref(data, 0)
elif kind == 'highref': # a data cluster with refcount 2 (a leak on a used cluster)
    set_ref(data, 2)
elif kind == 'copied':  # COPIED cleared on an L2 entry with refcount 1
    struct.pack_into('>Q', b, l2 + 8 * e, ent & ~(1 << 63))
elif kind == 'l2ref':   # the L2 table itself unreferenced
    set_ref(l2 // cs, 0)
elif kind == 'dirty':   # the dirty bit on a lazy-refcounts image
    inc = struct.unpack('>Q', b[72:80])[0]; struct.pack_into('>Q', b, 72, inc | 1)
elif kind == 'corrupt': # the corrupt bit
    inc = struct.unpack('>Q', b[72:80])[0]; struct.pack_into('>Q', b, 72, inc | 2)
open(dst, 'wb').write(b)
PY
}
mkdir -p dmg
for k in leak lowref l2ref corrupt; do poke v3_c512_snap.qcow2 "dmg/v3_c512_snap_$k" $k; done
for k in lowref highref copied; do poke v2_c512.qcow2 "dmg/v2_c512_$k" $k; done
poke v3_c4k_lazy.qcow2 dmg/v3_c4k_lazy_dirty dirty

# Several snapshots, across a resize, for snapshot_table.
mkdir -p snaps && cd snaps
mk snap3 8k cluster_size=512
qi -c 'write -P 0x01 0 1k' snap3.qcow2
qemu-img snapshot -c first snap3.qcow2
qemu-img resize -q snap3.qcow2 16k
qi -c 'write -P 0x02 512 8k' snap3.qcow2
qemu-img snapshot -c second snap3.qcow2
qi -c 'write -z 0 4k' snap3.qcow2
qemu-img snapshot -c 3 snap3.qcow2
mk snap_v2 8k compat=0.10,cluster_size=512
qi -c 'write -P 0x03 0 2k' snap_v2.qcow2
qemu-img snapshot -c a snap_v2.qcow2
qemu-img snapshot -c b snap_v2.qcow2
mk snap_extl2 64k cluster_size=16k,extended_l2=on
qi -c 'write -P 0x04 1k 1k' snap_extl2.qcow2
qemu-img snapshot -c x snap_extl2.qcow2
qi -c 'write -P 0x05 0 4k' snap_extl2.qcow2

cp ../v3_c512_snap.qcow2 .
cd ..

# Chains for chain_open: files a (top), b, c, d joined by the separator.
mkdir -p chain && cd chain
qemu-img create -q -f raw c 8k
qemu-io -f raw -c 'write -P 0x0c 0 8k' c >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512 -b c -F raw b 8k
qemu-io -f qcow2 -c 'write -P 0x0b 1k 1k' b >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512 -b b -F qcow2 a 16k
qemu-io -f qcow2 -c 'write -P 0x0a 3k 1k' -c 'write -z 0 512' a >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on -b b -F qcow2 x 8k
qemu-io -f qcow2 -c 'write -P 0x0e 512 512' x >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 -b c -F raw v2 8k
qemu-img rebase -q -u -b b -F raw v2 # joined as a (v2) and b (c)
qemu-img convert -c -O qcow2 -o cluster_size=512,compression_type=zstd c cz
qemu-img create -q -f qcow2 -o cluster_size=512 -b b -F qcow2 loop_a 8k
qemu-img create -q -f qcow2 -o cluster_size=512 -b loop_a -F qcow2 loop_b 8k
# In the joined seed loop_a is /m/a and loop_b is /m/b: a -> b -> a.
qemu-img rebase -q -u -b b -F qcow2 loop_a
qemu-img rebase -q -u -b a -F qcow2 loop_b
qemu-img create -q -f qcow2 -o cluster_size=512 -b c -F raw js 8k
qemu-img rebase -q -u -b 'json:{"file":{"driver":"file","filename":"c"}}' -F raw js
qemu-img create -q -f qcow2 -o cluster_size=512 -b c -F raw dev 8k
qemu-img rebase -q -u -b /dev/zero -F raw dev
cd ..
join() { # out parts...
    o=$1; shift; : >"$o"; first=1
    for f in "$@"; do
        [ $first = 1 ] || printf FUZZSPLT >>"$o"
        cat "chain/$f" >>"$o"; first=0
    done
    params "$o" 32 >>"$o"
}
mkdir -p chains
join chains/a_b_c a b c
join chains/x_b_c x b c
join chains/v2_c v2 c
join chains/a_b_cz a b cz
join chains/loop loop_a loop_b
join chains/json js c
join chains/dev dev c

mkdir -p "$out/header_open" "$out/cluster_read" "$out/check_repair" "$out/snapshot_table" \
    "$out/chain_open" "$out/decompress_cluster" "$out/qsnap_meta" "$out/write_roundtrip" \
    "$out/qsnap_log"
for f in snap3 snap_v2 snap_extl2 v3_c512_snap; do
    cp snaps/$f.qcow2 "$out/snapshot_table/$f"
    params $f 32 >>"$out/snapshot_table/$f"
done
for f in v2_c512 v3_c512_rc1 v3_c512_rc64 v3_c4k_lazy v3_c512_zstd v3_c16k_extl2 v3_c512_bitmap \
    v3_c512_snap dmg/*; do
    n=$(basename $f .qcow2)
    [ -f "$f" ] || f=$f.qcow2
    cp "$f" "$out/check_repair/$n"
    params "$n" 16 >>"$out/check_repair/$n"
done
cp chains/* "$out/chain_open/"
gcc -D_GNU_SOURCE -I"$top/include" -I"$top/qcow2" -I"$top/snapshot" -I"$top/fuzz" -o seedgen \
    "$top/fuzz/tools/seedgen.c" "$top/build/release/libqsnap.a" "$top/build/release/libqcow2.a" \
    -lzstd -lz -lxxhash
./seedgen "$out"

# Stores made by the qsnap command, for qsnap_log: each store's meta file and
# the records its meta.log holds at the end (a save appends one record, until
# the log passes its bound).
mkdir -p logs && cd logs
wr() { # disk pattern: a write to the current branch's head
    qemu-io -f qcow2 -c "write -P $2 0 4k" "$("$qsnap" current "$1" --path)" >/dev/null
}
qs() { "$qsnap" "$@" >/dev/null; }
qemu-img create -q -f qcow2 -o cluster_size=4k a.qcow2 1M
qs create a.qcow2 base -m "first one"
wr a.qcow2 1; qs create a.qcow2 s2
wr a.qcow2 2; qs branch a.qcow2 side
qs switch a.qcow2 side
wr a.qcow2 3; qs create a.qcow2 s3 -m "on side"
qs revert a.qcow2 base
qs branch a.qcow2 -m side side+2@x
qs delete a.qcow2 s2
qs switch a.qcow2 main
qs branch a.qcow2 -d side+2@x --force
qemu-img create -q -f qcow2 -o cluster_size=4k b.qcow2 1M
qs create b.qcow2 base
wr b.qcow2 1; qs create b.qcow2 i1 --internal
wr b.qcow2 2; qs create b.qcow2 i2 --internal -m "second internal"
qs revert b.qcow2 i1 --discard
qs delete b.qcow2 i2
qs delete b.qcow2 i1
for k in 1 2 3 4 5 6; do wr b.qcow2 $((k + 16)); qs create b.qcow2 "c$k"; done
qs branch b.qcow2 x --at c2
qs delete b.qcow2 c3
qs delete b.qcow2 c5
qs switch b.qcow2 x
wr b.qcow2 9; qs create b.qcow2 onx
cd ..
./seedgen --log logs/a.qcow2.qsnap store_a "$out/qsnap_log"
./seedgen --log logs/b.qcow2.qsnap store_b "$out/qsnap_log"

for f in *.qcow2; do
    n=${f%.qcow2}
    cp "$f" "$out/header_open/$n"
    # 64 deterministic parameter bytes derived from the seed's name.
    cp "$f" "$out/cluster_read/$n"
    python3 -c 'import hashlib, sys
n = sys.argv[1].encode()
sys.stdout.buffer.write(hashlib.sha256(n).digest() + hashlib.sha256(n + b"-2").digest())' "$n" \
        >>"$out/cluster_read/$n"
done
for t in "$out"/*/; do
    echo "fuzz-seeds: $(ls "$t" | wc -l) seeds, $(du -sk "$t" | cut -f1) KiB in $t"
done
