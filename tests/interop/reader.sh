#!/bin/bash
# Reader interop suite: images made by qemu-img/qemu-io over the
# option matrix (compat 0.10/1.1, 512 B..2 MiB clusters, refcount widths,
# zlib/zstd compression, extended L2 with partial subclusters, zero writes,
# discards, 1..8-deep chains over raw and qcow2 bases with relative names and
# shorter/longer backing files, virtual sizes that are not cluster multiples)
# are read by qsnap and by qemu-img, and the results must agree:
#   convert  `qsnap image convert -O raw` is byte-identical to qemu-img's
#   map      `qsnap image map --output=json` has the same data/zero/present per
#            byte range (depth and offset differences are reported, not failed)
#   digest   digest(image) == digest(qemu-img's raw conversion of it)
#   compare  `qsnap image compare` agrees with `qemu-img compare` (exit status
#            and the printed offset)
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
#   KEEP=1      keep the work directory
#   QUICK=1     a smaller matrix
set -u

. "$(dirname "$0")/../helpers/interop_setup.sh"
. "$(dirname "$0")/../helpers/qemu_io.sh"
interop_setup interop
T0=$SECONDS
notes=0
note() { echo "# note $1: $2"; notes=$((notes + 1)); }

cat >mapcmp.py <<'PY'
# mapcmp.py QSNAP_JSON QEMU_JSON SIZE: compare two qemu-img-style map JSON
# outputs. Exit 1 (printing why) when present/zero/data differ at any byte or
# when either does not cover [0, SIZE) exactly; print "note: ..." lines for
# depth/offset differences.
import json, sys

def load(path, who):
    with open(path) as f:
        txt = f.read()
    try:
        runs = json.loads(txt)
    except ValueError as e:
        print(f"{who} map is not JSON ({e}): {txt[:200]!r}")
        sys.exit(1)
    if not isinstance(runs, list):
        print(f"{who} map is not a JSON list")
        sys.exit(1)
    return runs

def check_cover(runs, who, size):
    pos = 0
    for r in runs:
        for k in ("start", "length", "depth", "present", "zero", "data"):
            if k not in r:
                print(f"{who} map: run {r} lacks {k!r}")
                sys.exit(1)
        if r["start"] != pos:
            print(f"{who} map: run at {r['start']} but previous run ended at {pos}")
            sys.exit(1)
        if r["length"] <= 0:
            print(f"{who} map: empty run at {r['start']}")
            sys.exit(1)
        pos += r["length"]
    if pos != size:
        print(f"{who} map covers [0, {pos}), virtual size is {size}")
        sys.exit(1)

a = load(sys.argv[1], "qsnap")
b = load(sys.argv[2], "qemu-img")
size = int(sys.argv[3])
check_cover(a, "qsnap", size)
check_cover(b, "qemu-img", size)
cuts = sorted({r["start"] for r in a + b} | {size})
def at(runs, pos):
    lo, hi = 0, len(runs) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if runs[mid]["start"] <= pos:
            lo = mid
        else:
            hi = mid - 1
    return runs[lo]
first_bad = None
extra = []
for i in range(len(cuts) - 1):
    s, e = cuts[i], cuts[i + 1]
    ra, rb = at(a, s), at(b, s)
    ta = (ra["present"], ra["zero"], ra["data"])
    tb = (rb["present"], rb["zero"], rb["data"])
    if ta != tb and first_bad is None:
        first_bad = f"[{s}, {e}): qsnap present/zero/data={ta}, qemu-img {tb}"
    if ra["depth"] != rb["depth"]:
        extra.append(f"depth at [{s}, {e}): qsnap {ra['depth']}, qemu-img {rb['depth']}")
    oa = ra.get("offset")
    ob = rb.get("offset")
    oa = None if oa is None else oa + (s - ra["start"])
    ob = None if ob is None else ob + (s - rb["start"])
    if oa != ob:
        extra.append(f"offset at [{s}, {e}): qsnap {oa}, qemu-img {ob}")
for x in extra[:3]:
    print("note: " + x)
if len(extra) > 3:
    print(f"note: ... {len(extra) - 3} more depth/offset differences")
same_runs = [(r["start"], r["length"]) for r in a] == [(r["start"], r["length"]) for r in b]
if not same_runs:
    print(f"info: run boundaries differ (qsnap {len(a)} runs, qemu-img {len(b)} runs)")
if first_bad:
    print(first_bad)
    sys.exit(1)
PY

declare -A DIGEST_OF   # image -> qsnap digest
declare -A RAWSUM_OF   # image -> sha256 of qemu-img's raw conversion
declare -A REF_OF      # image -> qemu-img raw conversion
IMAGES=()

vsize() { qemu-img info --output=json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }

# check_image NAME FILE: the per-image checks.
check_image() {
    local name=$1 img=$2
    local ref=$W/ref.$name.raw out=$W/q.$name.raw size d1 d2 msg
    if ! qemu-img convert -O raw "$img" "$ref" 2>"$W/err"; then
        bad "$name setup" "qemu-img convert failed: $(head -c 300 "$W/err")"
        return
    fi
    IMAGES+=("$name")
    REF_OF[$name]=$ref
    RAWSUM_OF[$name]=$(sha256sum <"$ref" | cut -c1-64)
    size=$(vsize "$img")

    # convert
    rm -f "$out"
    if ! q image convert -O raw "$img" "$out" >/dev/null 2>"$W/err"; then
        bad "$name convert" "qsnap image convert failed (exit $?): $(head -c 300 "$W/err")"
    elif ! cmp -s "$ref" "$out"; then
        bad "$name convert" "output differs from qemu-img's: $(cmp "$ref" "$out" 2>&1 | head -n 1)"
    else
        ok "$name convert"
    fi
    rm -f "$out"

    # map
    qemu-img map --output=json "$img" >"$W/map.qemu" 2>"$W/err" || {
        bad "$name map" "qemu-img map failed: $(head -c 300 "$W/err")"
        return
    }
    if ! q image map --output=json "$img" >"$W/map.qsnap" 2>"$W/err"; then
        bad "$name map" "qsnap image map failed: $(head -c 300 "$W/err")"
    elif msg=$(python3 "$W/mapcmp.py" "$W/map.qsnap" "$W/map.qemu" "$size"); then
        ok "$name map"
        if [ -n "$msg" ] && grep -q '^note' <<<"$msg"; then
            note "$name map" "$(grep '^note' <<<"$msg" | head -n 3 | sed 's/^note: //' | paste -sd ';')"
        fi
    else
        bad "$name map" "$(grep -v '^note' <<<"$msg" | grep -v '^info' | head -n 2 | paste -sd ';')"
    fi

    # digest
    d1=$(q image digest "$img" 2>"$W/err" | awk '{ print $1 }')
    d2=$(q image digest "$ref" 2>>"$W/err" | awk '{ print $1 }')
    if ! [[ $d1 =~ ^[0-9a-f]{32}$ ]] || ! [[ $d2 =~ ^[0-9a-f]{32}$ ]]; then
        bad "$name digest" "no 32-hex-digit digest (image '$d1', raw '$d2'): $(head -c 200 "$W/err")"
    elif [ "$d1" != "$d2" ]; then
        bad "$name digest" "digest of image $d1 != digest of its qemu-img raw conversion $d2"
    else
        ok "$name digest"
    fi
    DIGEST_OF[$name]=$d1
}

# compare_case NAME A B [-s]: qsnap image compare must agree with qemu-img compare.
compare_case() {
    local name=$1 a=$2 b=$3 s=${4:-} qe qs qo so
    qemu-img compare $s "$a" "$b" >"$W/cmp.qemu" 2>&1
    qe=$?
    q image compare $s "$a" "$b" >"$W/cmp.qsnap" 2>&1
    qs=$?
    qo=$(grep -o 'offset [0-9]*' "$W/cmp.qemu" | head -n 1)
    so=$(grep -o 'offset [0-9]*' "$W/cmp.qsnap" | head -n 1)
    if [ "$qe" != "$qs" ]; then
        bad "$name" "exit status $qs, qemu-img $qe ($(head -n 1 "$W/cmp.qemu")); qsnap said: $(head -c 200 "$W/cmp.qsnap")"
    elif [ "$qo" != "$so" ]; then
        bad "$name" "qemu-img: '$(head -n 1 "$W/cmp.qemu")'; qsnap: '$(head -n 1 "$W/cmp.qsnap")'"
    else
        ok "$name"
    fi
}

# Writes scaled to a cluster size CS within virtual size SIZE, pattern base P:
# unaligned, cluster-crossing, an L2-table-crossing write, zero writes,
# a discard, and a write ending at the (unaligned) end of the disk.
data_cmds() { # CS SIZE P EXTL2
    local cs=$1 size=$2 p=$3 ext=${4:-0} l2cov
    if [ "$ext" = 1 ]; then l2cov=$((cs * cs / 16)); else l2cov=$((cs * cs / 8)); fi
    echo "write -P $((p + 1)) 1000 3000"
    echo "write -P $((p + 2)) $((cs - 100)) 300"
    echo "write -P $((p + 3)) $((2 * cs + 7)) $((cs + 13))"
    [ $((l2cov + 300)) -lt "$size" ] && echo "write -P $((p + 4)) $((l2cov - 200)) 500"
    echo "write -z $((4 * cs)) $((2 * cs))"
    echo "write -P $((p + 5)) $((7 * cs)) $((2 * cs))"
    echo "discard $((8 * cs)) $cs"
    echo "write -z $((9 * cs + 512)) 1024"
    echo "write -P $((p + 6)) $((size - 700)) 700"
}

run_cmds() { # FMT FILE < cmds
    local cmds=()
    while IFS= read -r l; do cmds+=("$l"); done
    qio "$1" "$2" "${cmds[@]}"
}

# Virtual sizes: not multiples of the cluster size (but of 512, as qemu-img rounds up).
size_for() { # CS
    case $1 in
    512 | 4096) echo $((1024 * 1024 + 1536)) ;;
    2097152) echo $((29 * 1024 * 1024 + 3584)) ;;
    1048576) echo $((14 * 1024 * 1024 + 2560)) ;;
    *) echo $((8 * 1024 * 1024 + 2560)) ;;
    esac
}

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then CSIZES="512 65536"; else CSIZES="512 4096 65536 2097152"; fi

echo "# single images"
for compat in 0.10 1.1; do
    for cs in $CSIZES; do
        if [ $compat = 0.10 ]; then rbs=16; else rbs="1 16 64"; fi
        for rb in $rbs; do
            n=single_v${compat}_c${cs}_rb${rb}
            size=$(size_for "$cs")
            qemu-img create -q -f qcow2 -o compat=$compat,cluster_size=$cs,refcount_bits=$rb $n.qcow2 "$size" || { bad "$n setup" "qemu-img create"; continue; }
            data_cmds "$cs" "$size" $((cs % 200)) | run_cmds qcow2 $n.qcow2 || { bad "$n setup" "qemu-io"; continue; }
            check_image "$n" $n.qcow2
        done
    done
done

n=single_lazy_c4k
qemu-img create -q -f qcow2 -o cluster_size=4k,lazy_refcounts=on $n.qcow2 1M
data_cmds 4096 1048576 90 | run_cmds qcow2 $n.qcow2 && check_image $n $n.qcow2 ||
        bad "$n setup" "qemu-img/qemu-io failed"

echo "# more cluster sizes and refcount widths"
if [ "$QUICK" != 1 ]; then
    for spec in 1024:16 8192:2 32768:4 131072:8 262144:32 1048576:16; do
        cs=${spec%%:*}
        rb=${spec##*:}
        n=single_v1.1_c${cs}_rb$rb
        size=$(size_for "$cs")
        qemu-img create -q -f qcow2 -o cluster_size=$cs,refcount_bits=$rb $n.qcow2 "$size" &&
            data_cmds "$cs" "$size" 70 | run_cmds qcow2 $n.qcow2 && check_image "$n" $n.qcow2 ||
        bad "$n setup" "qemu-img/qemu-io failed"
    done
fi

echo "# preallocation"
for spec in 1.1:metadata 0.10:metadata 1.1:falloc 1.1:full; do
    compat=${spec%%:*}
    pre=${spec##*:}
    n=prealloc_v${compat}_$pre
    qemu-img create -q -f qcow2 -o compat=$compat,cluster_size=4k,preallocation=$pre $n.qcow2 $((512 * 1024 + 1536)) &&
        qio qcow2 $n.qcow2 "write -P 0x3c 5000 9000" "write -z 64k 8k" && check_image "$n" $n.qcow2 ||
        bad "$n setup" "qemu-img/qemu-io failed"
done

echo "# extended L2"
if [ "$QUICK" = 1 ]; then XSIZES="16384 2097152"; else XSIZES="16384 65536 524288 2097152"; fi
for cs in $XSIZES; do
    n=extl2_c$cs
    sub=$((cs / 32))
    size=$(size_for "$cs")
    qemu-img create -q -f qcow2 -o cluster_size=$cs,extended_l2=on $n.qcow2 "$size" || { bad "$n setup" "create"; continue; }
    {
        data_cmds "$cs" "$size" 30 1
        echo "write -P 0x51 $((11 * cs + 3 * sub + 100)) 200"   # inside one subcluster
        echo "write -P 0x52 $((12 * cs + sub - 10)) 20"         # across two subclusters
        echo "write -z $((12 * cs + 5 * sub)) $sub"             # one zero subcluster
        echo "write -P 0x53 $((13 * cs)) $cs"
        echo "discard $((13 * cs + 2 * sub)) $((2 * sub))"       # subclusters of an allocated cluster
        echo "write -z $((13 * cs + 8 * sub)) $sub"
    } | run_cmds qcow2 $n.qcow2 || { bad "$n setup" "qemu-io"; continue; }
    check_image "$n" $n.qcow2
done

echo "# compressed"
src=comp_src.raw
qemu-img create -q -f raw $src 4M
qio raw $src "write -P 0x61 0 300k" "write -P 0x62 1000k 5000" "write -P 0 2M 64k" "write -P 0x63 3M 1M" \
    "write -P 0x64 $((4 * 1024 * 1024 - 1000)) 1000"
# Some incompressible data too (qemu stores such clusters uncompressed).
head -c 200000 /dev/urandom | dd of=$src bs=1 seek=1500000 conv=notrunc status=none
for compat in 0.10 1.1; do
    for cs in $CSIZES; do
        if [ $compat = 0.10 ]; then cts=zlib; else cts="zlib zstd"; fi
        for ct in $cts; do
            n=comp_v${compat}_c${cs}_$ct
            if [ $compat = 0.10 ]; then o=compat=0.10,cluster_size=$cs; else o=compat=1.1,cluster_size=$cs,compression_type=$ct; fi
            qemu-img convert -c -O qcow2 -o $o $src $n.qcow2 || { bad "$n setup" "convert -c"; continue; }
            check_image "$n" $n.qcow2
            compare_case "$n compare-with-source" $n.qcow2 $src
        done
    done
done
for cs in 16384 65536 2097152; do
    n=comp_extl2_c${cs}_zstd
    qemu-img convert -c -O qcow2 -o cluster_size=$cs,extended_l2=on,compression_type=zstd $src $n.qcow2 &&
        qio qcow2 $n.qcow2 "write -P 0x71 $((cs / 2 + 700)) 900" "write -z $((cs / 4 + 512)) 1024" &&
        check_image "$n" $n.qcow2 ||
        bad "$n setup" "qemu-img/qemu-io failed"
done
# Compressed, then partly overwritten (mix of compressed and normal clusters).
n=comp_overwritten_c4k_zlib
qemu-img convert -c -O qcow2 -o cluster_size=4k $src $n.qcow2 &&
    qio qcow2 $n.qcow2 "write -P 0x72 5000 10000" "write -z 3M 8k" "discard 3200k 4k" && check_image $n $n.qcow2 ||
        bad "$n setup" "qemu-img/qemu-io failed"

echo "# raw images"
n=raw_sparse
qemu-img create -q -f raw $n.img $((3 * 1024 * 1024 + 512))
qio raw $n.img "write -P 0x81 100 5000" "write -P 0x82 2M 70000" && check_image $n $n.img ||
        bad "$n setup" "qemu-img/qemu-io failed"

echo "# internal snapshot and bitmap"
n=snap_c4k
qemu-img create -q -f qcow2 -o cluster_size=4k $n.qcow2 1M
qio qcow2 $n.qcow2 "write -P 0x91 0 20k" && qemu-img snapshot -c s1 $n.qcow2 &&
    qio qcow2 $n.qcow2 "write -P 0x92 8k 20k" "write -z 0 4k" && check_image $n $n.qcow2 ||
        bad "$n setup" "qemu-img/qemu-io failed"
n=bitmap_c64k
qemu-img create -q -f qcow2 $n.qcow2 2M
qemu-img bitmap --add $n.qcow2 b0 && qio qcow2 $n.qcow2 "write -P 0x93 70000 100000" && check_image $n $n.qcow2 ||
        bad "$n setup" "qemu-img/qemu-io failed"

echo "# chains"
# make_chain NAME DEPTH BASEFMT: DEPTH layers above a base of BASEFMT, each in
# its own subdirectory named relatively to the one above it; sizes alternate
# so that some backing files are shorter and some longer than their overlay;
# cluster sizes and versions vary by layer.
make_chain() {
    local name=$1 depth=$2 bfmt=$3
    local d=$W/$name i prev pfmt cs size compat o
    mkdir -p "$d"
    cd "$d" || return 1
    if [ "$bfmt" = raw ]; then
        qemu-img create -q -f raw base.img 3M
        qio raw base.img "write -P 0x10 0 100k" "write -P 0x11 1M 300k" "write -P 0x12 $((3 * 1024 * 1024 - 4096)) 4096" || return 1
    else
        qemu-img create -q -f qcow2 -o cluster_size=4k base.img 3M
        qio qcow2 base.img "write -P 0x10 0 100k" "write -P 0x11 1M 300k" "write -z 40k 8k" \
            "write -P 0x12 $((3 * 1024 * 1024 - 4096)) 4096" || return 1
    fi
    prev=base.img
    pfmt=$bfmt
    for ((i = 1; i <= depth; i++)); do
        mkdir -p "l$i"
        case $((i % 4)) in
        0) cs=512 ;; 1) cs=65536 ;; 2) cs=4096 ;; 3) cs=16384 ;;
        esac
        # sizes: longer, shorter, longer... than the layer below
        if ((i % 2)); then size=$((4 * 1024 * 1024 + 1536 * i)); else size=$((2 * 1024 * 1024 + 512 * i)); fi
        compat=1.1
        ((i == 2)) && compat=0.10
        o=compat=$compat,cluster_size=$cs
        ((i == 3)) && o=$o,extended_l2=on
        # the backing name is relative to the overlay's own directory
        qemu-img create -q -f qcow2 -o $o -b "../$prev" -F $pfmt "l$i/img.qcow2" "$size" || return 1
        qio qcow2 "l$i/img.qcow2" \
            "write -P $((0x20 + i)) $((i * 7000 + 3)) 5000" \
            "write -P $((0x30 + i)) $((1024 * 1024 + i * 50000)) $((cs + 100))" \
            "write -z $((i * 20000 + 512 * i)) 4096" \
            "write -P $((0x40 + i)) $((size - 600)) 600" || return 1
        if [ $compat = 1.1 ]; then
            qio qcow2 "l$i/img.qcow2" "discard $((1024 * 1024 + 100 * 1024)) $((cs * 2))" || return 1
        fi
        if ((i == 3)); then # extended L2: a partial subcluster over backing data
            qio qcow2 "l$i/img.qcow2" "write -P 0x5$i $((1024 * 1024 + 4096 + 7)) 100" || return 1
        fi
        # the next layer lives inside this layer's directory
        cd "l$i" || return 1
        prev=img.qcow2
        pfmt=qcow2
    done
    CHAIN_TOP=$(pwd)/img.qcow2
    cd "$W" || return 1
}

if [ "$QUICK" = 1 ]; then DEPTHS="1 3 8"; else DEPTHS="1 2 3 4 5 6 8"; fi
for bfmt in raw qcow2; do
    for depth in $DEPTHS; do
        n=chain_${bfmt}_d$depth
        if ! make_chain $n "$depth" $bfmt; then
            bad "$n setup" "could not build the chain"
            cd "$W"
            continue
        fi
        top=$CHAIN_TOP
        check_image "$n" "$top"
        # compare: top against its direct backing file (they differ), and against its own conversion
        below=$(dirname "$(dirname "$top")")
        if [ "$depth" -gt 1 ]; then below=$below/img.qcow2; else below=$below/base.img; fi
        compare_case "$n compare-top-vs-backing" "$top" "$below"
        compare_case "$n compare-top-vs-raw" "$top" "${REF_OF[$n]}"
    done
done

echo "# chain from another directory (relative names resolve against the overlay)"
mkdir -p elsewhere && cd elsewhere && check_image chain_qcow2_d3_cwd "../chain_qcow2_d3/l1/l2/l3/img.qcow2"
cd "$W"

echo "# compare pairs"
# identical content in different layouts
compare_case "compare v2-vs-v3" single_v0.10_c512_rb16.qcow2 single_v1.1_c512_rb16.qcow2
compare_case "compare rb1-vs-rb64" single_v1.1_c512_rb1.qcow2 single_v1.1_c512_rb64.qcow2
compare_case "compare zlib-vs-zstd" comp_v1.1_c512_zlib.qcow2 comp_v1.1_c512_zstd.qcow2
compare_case "compare compressed-vs-extl2-compressed" comp_v1.1_c65536_zstd.qcow2 comp_extl2_c16384_zstd.qcow2
# different content
compare_case "compare c512-vs-c64k" single_v1.1_c512_rb16.qcow2 single_v1.1_c65536_rb16.qcow2
compare_case "compare snap-vs-bitmap" snap_c4k.qcow2 bitmap_c64k.qcow2
# one byte differs, late in the disk
cp "${REF_OF[comp_v1.1_c512_zlib]}" onebyte.raw
printf '\001' | dd of=onebyte.raw bs=1 seek=4000000 conv=notrunc status=none
compare_case "compare one-byte-late" comp_v1.1_c512_zlib.qcow2 onebyte.raw
compare_case "compare one-byte-late reversed" onebyte.raw comp_v1.1_c512_zlib.qcow2
# different sizes: a tail of zeroes is equal unless -s, data in the tail differs
qemu-img create -q -f qcow2 small.qcow2 1M
qemu-img create -q -f qcow2 big.qcow2 3M
qio qcow2 small.qcow2 "write -P 0x11 1000 3000"
qio qcow2 big.qcow2 "write -P 0x11 1000 3000"
compare_case "compare sizes-zero-tail" small.qcow2 big.qcow2
compare_case "compare sizes-zero-tail reversed" big.qcow2 small.qcow2
compare_case "compare sizes-zero-tail strict" small.qcow2 big.qcow2 -s
qio qcow2 big.qcow2 "write -P 0x12 2M 512"
compare_case "compare sizes-data-tail" small.qcow2 big.qcow2
compare_case "compare sizes-data-tail reversed" big.qcow2 small.qcow2
compare_case "compare same-file" big.qcow2 big.qcow2
compare_case "compare zero-cluster-vs-unallocated" single_v1.1_c4096_rb16.qcow2 "${REF_OF[single_v1.1_c4096_rb16]}"

echo "# digests of different contents differ"
bad_pairs=""
for ((i = 0; i < ${#IMAGES[@]}; i++)); do
    for ((j = i + 1; j < ${#IMAGES[@]}; j++)); do
        a=${IMAGES[i]}
        b=${IMAGES[j]}
        [ -n "${DIGEST_OF[$a]:-}" ] && [ -n "${DIGEST_OF[$b]:-}" ] || continue
        if [ "${RAWSUM_OF[$a]}" = "${RAWSUM_OF[$b]}" ]; then
            [ "${DIGEST_OF[$a]}" = "${DIGEST_OF[$b]}" ] || bad_pairs="$bad_pairs $a=$b(same content, different digests)"
        else
            [ "${DIGEST_OF[$a]}" != "${DIGEST_OF[$b]}" ] || bad_pairs="$bad_pairs $a/$b(different content, same digest)"
        fi
    done
done
if [ -z "$bad_pairs" ]; then ok "digest distinct-contents"; else bad "digest distinct-contents" "$bad_pairs"; fi

echo "# $notes map notes (depth/offset differences, not failures); $((SECONDS - T0))s"
ts_end
