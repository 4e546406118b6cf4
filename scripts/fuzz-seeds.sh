#!/bin/sh
# fuzz-seeds.sh [OUTDIR]: regenerate the seed corpora of the fuzz targets
# (fuzz/corpora/header_open/ and fuzz/corpora/cluster_read/) from small images
# made by qemu-img and qemu-io across the option matrix: qcow2 v2 and v3,
# 512 B to 16 KiB clusters, refcount widths 1/16/64, zero writes, discards,
# deflate and zstd compression, extended L2 with partial subclusters, an
# internal snapshot, a persistent bitmap, a backing name with a format
# extension, lazy refcounts. Tiny virtual sizes and 512-byte clusters keep
# every seed a few KiB (the extended-L2 one needs 16 KiB clusters).
# cluster_read seeds are the same images with 64 parameter bytes appended
# (fuzz/cluster_read.c reads its parameters from the input's tail).
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/fuzz/corpora}
command -v qemu-img >/dev/null || { echo "fuzz-seeds: qemu-img not found" >&2; exit 1; }

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

mkdir -p "$out/header_open" "$out/cluster_read"
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
echo "fuzz-seeds: $(ls *.qcow2 | wc -l) images into $out/header_open and $out/cluster_read"
ls -l "$out/header_open" | awk 'NR > 1 { printf "  %8d %s\n", $5, $9 }'
