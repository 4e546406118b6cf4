#!/bin/bash
# Copy-free commit, convert and export on file systems that share blocks.
# For XFS (mkfs.xfs -m reflink=1) and btrfs, each on a loop mount made here:
#   commit   a scattered overlay into a raw base and into a qcow2 base
#   convert  a two-layer chain to raw; a three-layer chain over a raw base
#            (shared whole, then overlaid) with zeroed and compressed clusters
#            over its data and a middle layer smaller than the base
#   export   a snapshot of a tree to raw
#   commit   300 clusters written in random order into a qcow2 base (the
#            batched shares: one FICLONERANGE per run contiguous in both files)
#   fallback where sharing cannot be aligned to the 4 KiB blocks: qcow2 bases
#            with 512-byte and 2 KiB clusters, overlays with 512-byte and
#            2 KiB clusters and data at unaligned offsets (commit into raw and
#            qcow2 bases, convert to raw): copied, not shared
# Each result must read exactly as the same operation's result on the work
# directory's own file system (the copying path; qemu-img compare), pass
# qemu-img check (qcow2), and share blocks with its source (filefrag shows
# shared extents) or, for the fallbacks, hold none. Then writes into either
# file (in place into a qcow2 data cluster, and into the raw file) must leave
# the other file's content as it was. A file system whose tools or loop
# devices are missing is skipped with a message; mounts and loop devices are
# released on exit.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
#   KEEP=1      keep the work directory (the mounts are released all the same)
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
TS_TIMEOUT=120
MOUNTS=()
# At exit, before the work directory goes: the loop mounts made here.
fs_release() {
    local m
    cd /
    for m in "${MOUNTS[@]}"; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    # Loop devices made by mount -o loop detach on umount; any left over on our files go too.
    losetup -j "$W/xfs.img" 2>/dev/null | cut -d: -f1 | xargs -r losetup -d 2>/dev/null
    losetup -j "$W/btrfs.img" 2>/dev/null | cut -d: -f1 | xargs -r losetup -d 2>/dev/null
}
ts_need qemu-img qemu-io
ts_atexit fs_release
ts_workdir fs
trap 'exit 130' INT TERM
skipped=0
qio() { qemu-io "$@" >qio.out 2>&1 && ! grep -qiE 'error|failed' qio.out; }

# Inputs, made once on the work directory's file system: a raw base with data,
# a qcow2 base with the same content, an overlay of scattered 64 KiB clusters
# (plus a partial cluster, a zeroed range and a compressed cluster).
make_inputs() { # DIR
    local d=$1
    qemu-img create -q -f raw "$d/base.raw" 64M &&
        qio -f raw -c 'write -P 0x11 0 8M' -c 'write -P 0x12 40M 4M' "$d/base.raw" &&
        qemu-img convert -O qcow2 "$d/base.raw" "$d/base.qcow2" &&
        qemu-img create -q -f qcow2 -b base.raw -F raw "$d/top.qcow2" 64M &&
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$d/top2.qcow2" 64M || return 1
    local t args=()
    for t in 0 3 7 12 20 33 41 50 63; do args+=(-c "write -P $((t + 32)) ${t}M 192k"); done
    args+=(-c 'write -P 0x55 30M 512' -c 'write -z 44M 1M' -c 'write -c -P 0x66 55M 64k')
    qio "${args[@]}" "$d/top.qcow2" && qio "${args[@]}" "$d/top2.qcow2" || return 1
    # 300 distinct 64 KiB clusters in random order (fixed seed) over the qcow2 base.
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$d/topsc.qcow2" 64M &&
        awk 'BEGIN { srand(42); for (i = 0; i < 1024; i++) c[i] = i;
                     for (i = 0; i < 300; i++) { j = i + int(rand() * (1024 - i)); t = c[i]; c[i] = c[j]; c[j] = t;
                                                 printf "write -P %d %d 64k\n", i % 250 + 1, c[i] * 65536 } }' \
            >"$d/sc.cmds" && qemu-io "$d/topsc.qcow2" <"$d/sc.cmds" >qio.out 2>&1 && ! grep -qiE 'error|failed' qio.out || return 1
    # Alignments that cannot share: small-cluster bases, small-cluster overlays with unaligned data.
    local u=(-c 'write -P 0x31 5120 3072' -c 'write -P 0x32 1049088 70000' -c 'write -P 0x33 40M 64k'
             -c 'write -P 0x34 45613568 2560' -c 'write -P 0x35 60M 1M')
    qemu-img convert -O qcow2 -o cluster_size=512 "$d/base.raw" "$d/b512.qcow2" &&
        qemu-img convert -O qcow2 -o cluster_size=2048 "$d/base.raw" "$d/b2k.qcow2" &&
        qemu-img create -q -f qcow2 -b b512.qcow2 -F qcow2 "$d/tb512.qcow2" 64M &&
        qemu-img create -q -f qcow2 -b b2k.qcow2 -F qcow2 "$d/tb2k.qcow2" 64M &&
        qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw -F raw "$d/t512.qcow2" 64M &&
        qemu-img create -q -f qcow2 -o cluster_size=2048 -b base.qcow2 -F qcow2 "$d/t2k.qcow2" 64M &&
        qio "${u[@]}" "$d/tb512.qcow2" && qio "${u[@]}" "$d/tb2k.qcow2" &&
        qio "${u[@]}" "$d/t512.qcow2" && qio "${u[@]}" "$d/t2k.qcow2" || return 1
    # Over the raw base, under a layer smaller than it (32 MiB: guest 32M-64M reads zeroes
    # though the base holds data at 40M), a zeroed and a compressed all-zero cluster over
    # the base's data, and data clusters over the base and past the small layer.
    qemu-img create -q -f qcow2 -b base.raw -F raw "$d/mid.qcow2" 32M &&
        qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$d/tzo.qcow2" 64M &&
        qio -c 'write -P 0x21 1M 64k' -c 'write -P 0x22 6M 64k' "$d/mid.qcow2" &&
        qio -c 'write -z 2M 64k' -c 'write -c -P 0 3M 64k' -c 'write -z 6M 64k' \
            -c 'write -P 0x23 4M 64k' -c 'write -P 0x24 41M 64k' "$d/tzo.qcow2"
}
mkdir ref && make_inputs ref || { bad setup "could not make the inputs"; ts_end; exit 1; }
# The copying path's results, on this file system.
(cd ref && cp base.raw cbase.raw && cp top.qcow2 ctop.qcow2 && qemu-img rebase -u -b cbase.raw -F raw ctop.qcow2 &&
    "$QSNAP" image commit -d ctop.qcow2 &&
    cp base.qcow2 cbase.qcow2 && cp top2.qcow2 ctop2.qcow2 && qemu-img rebase -u -b cbase.qcow2 -F qcow2 ctop2.qcow2 &&
    "$QSNAP" image commit -d ctop2.qcow2 &&
    "$QSNAP" image convert -O raw top.qcow2 conv.raw &&
    for t in topsc:base.qcow2 tb512:b512.qcow2 tb2k:b2k.qcow2 t512:base.raw t2k:base.qcow2; do
        b=${t#*:} t=${t%%:*}
        cp "$b" "c_$t.${b##*.}" && cp "$t.qcow2" "c_$t.top.qcow2" &&
            qemu-img rebase -u -b "c_$t.${b##*.}" -F "${b##*.}" "c_$t.top.qcow2" &&
            "$QSNAP" image commit -d "c_$t.top.qcow2" || exit 1
    done &&
    "$QSNAP" image convert -O raw t512.qcow2 conv512.raw &&
    qemu-img convert -O raw tzo.qcow2 convz.raw) >ref.log 2>&1 ||
    { bad setup "reference operations failed: $(tail -n 3 ref.log)"; ts_end; exit 1; }

# shared FILE: true when filefrag lists an extent shared with another file.
shared() { filefrag -v "$1" 2>/dev/null | grep -q shared; }
# self QCOW2 OUT: the image's own content as raw (its backing file left out).
self() {
    qemu-img convert -U -O raw "json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"$1\"}}" "$2"
}
# same A B [FMT-A FMT-B]: guest contents equal.
same() { qemu-img compare -q -f "${3:-raw}" -F "${4:-raw}" "$1" "$2" 2>/dev/null; }

run_fs() { # NAME MKFS...
    local fs=$1 m="$W/mnt-$1" img="$W/$1.img"
    shift
    truncate -s 1G "$img" && mkdir -p "$m"
    if ! "$@" "$img" >mkfs.log 2>&1; then
        echo "# skipped $fs: $* failed: $(tail -n 1 mkfs.log)"
        skipped=$((skipped + 1))
        return
    fi
    if ! mount -o loop "$img" "$m" 2>mount.log; then
        echo "# skipped $fs: cannot mount a loop device here: $(tail -n 1 mount.log)"
        skipped=$((skipped + 1))
        return
    fi
    MOUNTS+=("$m")
    cp ref/base.raw ref/base.qcow2 ref/top.qcow2 ref/top2.qcow2 "$m/"

    # commit into a raw base (-d keeps the overlay, so both files can be written afterwards)
    if q image commit -d "$m/top.qcow2" 2>err; then
        if same "$m/base.raw" ref/cbase.raw; then ok "$fs commit raw: content as on the copying path"
        else bad "$fs commit raw" "base differs from the copying path's"; fi
        if shared "$m/base.raw"; then ok "$fs commit raw: blocks shared"
        else bad "$fs commit raw" "no shared extent in the base (filefrag -v)"; fi
        # writes into either file stay in that file
        cp --reflink=never "$m/base.raw" before_base.raw
        qemu-img convert -U -O raw "$m/top.qcow2" before_top.raw
        qio -f raw -c 'write -P 0xa1 3M 64k' -c 'write -P 0xa2 20M 4k' "$m/base.raw"
        qemu-img convert -U -O raw "$m/top.qcow2" after_top.raw
        if cmp -s before_top.raw after_top.raw; then ok "$fs commit raw: base writes leave the overlay alone"
        else bad "$fs commit raw" "a write into the base changed the overlay's content"; fi
        cp --reflink=never "$m/base.raw" before_base.raw
        qio -c 'write -P 0xb1 7M 64k' -c 'write -P 0xb2 33M 4k' "$m/top.qcow2"
        if cmp -s before_base.raw "$m/base.raw"; then ok "$fs commit raw: overlay rewrites in place leave the base alone"
        else bad "$fs commit raw" "an in-place write into the overlay changed the base"; fi
    else
        bad "$fs commit raw" "qsnap image commit failed: $(head -c 300 err)"
    fi

    # commit into a qcow2 base
    if q image commit -d "$m/top2.qcow2" 2>err; then
        if same "$m/base.qcow2" ref/cbase.qcow2 qcow2 qcow2; then ok "$fs commit qcow2: content as on the copying path"
        else bad "$fs commit qcow2" "base differs from the copying path's"; fi
        if qemu-img check -q "$m/base.qcow2" >check.out 2>&1; then ok "$fs commit qcow2: qemu-img check clean"
        else bad "$fs commit qcow2" "qemu-img check: $(head -c 300 check.out)"; fi
        if shared "$m/base.qcow2"; then ok "$fs commit qcow2: blocks shared"
        else bad "$fs commit qcow2" "no shared extent in the base (filefrag -v)"; fi
        qemu-img convert -U -O raw "$m/base.qcow2" before_base.raw
        qemu-img convert -U -O raw "$m/top2.qcow2" before_top.raw
        qio -c 'write -P 0xc1 3M 64k' -c 'write -P 0xc2 20M 4k' "$m/base.qcow2"
        qemu-img convert -U -O raw "$m/top2.qcow2" after_top.raw
        if cmp -s before_top.raw after_top.raw; then ok "$fs commit qcow2: base rewrites in place leave the overlay alone"
        else bad "$fs commit qcow2" "a write into the base changed the overlay's content"; fi
        qemu-img convert -U -O raw "$m/base.qcow2" before_base.raw
        qio -c 'write -P 0xd1 12M 64k' -c 'write -P 0xd2 50M 4k' "$m/top2.qcow2"
        qemu-img convert -U -O raw "$m/base.qcow2" after_base.raw
        if cmp -s before_base.raw after_base.raw; then ok "$fs commit qcow2: overlay rewrites in place leave the base alone"
        else bad "$fs commit qcow2" "an in-place write into the overlay changed the base"; fi
        if qemu-img check -q "$m/base.qcow2" >check.out 2>&1 && qemu-img check -q "$m/top2.qcow2" >>check.out 2>&1
        then ok "$fs commit qcow2: check clean after the writes"
        else bad "$fs commit qcow2" "qemu-img check after the writes: $(head -c 300 check.out)"; fi
    else
        bad "$fs commit qcow2" "qsnap image commit failed: $(head -c 300 err)"
    fi

    # convert a chain to raw
    cp ref/base.raw ref/top.qcow2 "$m/" && mkdir -p "$m/c" && cp ref/base.raw ref/top.qcow2 "$m/c/"
    if q image convert -O raw "$m/c/top.qcow2" "$m/c/out.raw" 2>err; then
        if same "$m/c/out.raw" ref/conv.raw; then ok "$fs convert: content as on the copying path"
        else bad "$fs convert" "output differs from the copying path's"; fi
        if shared "$m/c/out.raw"; then ok "$fs convert: blocks shared"
        else bad "$fs convert" "no shared extent in the output (filefrag -v)"; fi
        qemu-img convert -U -O raw "$m/c/top.qcow2" before_top.raw
        qio -f raw -c 'write -P 0xe1 0 64k' -c 'write -P 0xe2 41M 4k' "$m/c/out.raw"
        qemu-img convert -U -O raw "$m/c/top.qcow2" after_top.raw
        if cmp -s before_top.raw after_top.raw; then ok "$fs convert: output writes leave the source alone"
        else bad "$fs convert" "a write into the output changed the source"; fi
        cp --reflink=never "$m/c/out.raw" before_out.raw
        qio -c 'write -P 0xe3 63M 64k' "$m/c/top.qcow2" && qio -f raw -c 'write -P 0xe4 1M 4k' "$m/c/base.raw"
        if cmp -s before_out.raw "$m/c/out.raw"; then ok "$fs convert: source writes leave the output alone"
        else bad "$fs convert" "a write into the source changed the output"; fi
    else
        bad "$fs convert" "qsnap image convert failed: $(head -c 300 err)"
    fi

    # the batched path and the fallbacks: commit TOP into BASE, as on the copying path
    local t b f want
    for t in topsc:base.qcow2:shared tb512:b512.qcow2:copied tb2k:b2k.qcow2:copied t512:base.raw:any \
             t2k:base.qcow2:any; do
        want=${t##*:} t=${t%:*}
        b=${t#*:} t=${t%%:*} f=${b##*.}
        cp ref/"$b" "$m/c_$t.$f" && cp ref/"$t.qcow2" "$m/c_$t.top.qcow2" &&
            qemu-img rebase -u -b "c_$t.$f" -F "$f" "$m/c_$t.top.qcow2"
        if ! q image commit -d "$m/c_$t.top.qcow2" 2>err; then
            bad "$fs commit $t" "qsnap image commit failed: $(head -c 300 err)"
            continue
        fi
        if same "$m/c_$t.$f" "ref/c_$t.$f" "$f" "$f"; then ok "$fs commit $t: content as on the copying path"
        else bad "$fs commit $t" "base differs from the copying path's"; fi
        if [ "$f" = raw ] || qemu-img check -q "$m/c_$t.$f" >check.out 2>&1; then :
        else bad "$fs commit $t" "qemu-img check: $(head -c 300 check.out)"; fi
        case $want in
        shared) if shared "$m/c_$t.$f"; then ok "$fs commit $t: blocks shared"
                else bad "$fs commit $t" "no shared extent in the base (filefrag -v)"; fi ;;
        copied) if ! shared "$m/c_$t.$f"; then ok "$fs commit $t: unaligned, copied"
                else bad "$fs commit $t" "a shared extent where alignment does not allow sharing"; fi ;;
        esac
        # Each file's own content after writes to both (whole clusters: nothing copied up
        # from the backing file) must be its content before plus its own writes.
        self "$m/c_$t.top.qcow2" before_top.raw
        qemu-img convert -U -f "$f" -O raw "$m/c_$t.$f" before_base.raw
        qio -f "$f" -c 'write -P 0xf1 0 1M' -c 'write -P 0xf2 40M 64k' "$m/c_$t.$f"
        qio -c 'write -P 0xf3 60M 1M' -c 'write -P 0xf4 128k 64k' "$m/c_$t.top.qcow2"
        self "$m/c_$t.top.qcow2" after_top.raw
        qio -f raw -c 'write -P 0xf3 60M 1M' -c 'write -P 0xf4 128k 64k' before_top.raw
        qemu-img convert -U -f "$f" -O raw "$m/c_$t.$f" after_base.raw
        qio -f raw -c 'write -P 0xf1 0 1M' -c 'write -P 0xf2 40M 64k' before_base.raw
        if cmp -s before_top.raw after_top.raw && cmp -s before_base.raw after_base.raw &&
            { [ "$f" = raw ] || qemu-img check -q "$m/c_$t.$f" >check.out 2>&1; }
        then ok "$fs commit $t: writes to either file stay in that file"
        else bad "$fs commit $t" "a write to one file changed the other (or check failed after it)"; fi
    done
    # convert of a 512-byte-cluster overlay with unaligned data: copied where unaligned
    cp ref/base.raw ref/t512.qcow2 "$m/c/"
    if q image convert -O raw "$m/c/t512.qcow2" "$m/c/out512.raw" 2>err; then
        if same "$m/c/out512.raw" ref/conv512.raw; then ok "$fs convert 512-byte clusters: content as on the copying path"
        else bad "$fs convert 512-byte clusters" "output differs from the copying path's"; fi
        cp --reflink=never "$m/c/out512.raw" before_out.raw
        qio -c 'write -P 0xe5 5120 3072' -c 'write -P 0xe6 60M 4k' "$m/c/t512.qcow2" &&
            qio -f raw -c 'write -P 0xe7 41M 4k' "$m/c/base.raw"
        if cmp -s before_out.raw "$m/c/out512.raw"; then ok "$fs convert 512-byte clusters: source writes leave the output alone"
        else bad "$fs convert 512-byte clusters" "a write into the source changed the output"; fi
    else
        bad "$fs convert 512-byte clusters" "qsnap image convert failed: $(head -c 300 err)"
    fi

    # convert over a raw base that is shared whole first: what the layers above zero,
    # and what a smaller middle layer hides, must not show the base's data
    mkdir -p "$m/z" && cp ref/base.raw ref/mid.qcow2 ref/tzo.qcow2 "$m/z/"
    if q image convert -O raw "$m/z/tzo.qcow2" "$m/z/out.raw" 2>err; then
        if same "$m/z/out.raw" ref/convz.raw; then ok "$fs convert over a shared base: content as qemu-img convert's"
        else bad "$fs convert over a shared base" "output differs from qemu-img convert's"; fi
        if shared "$m/z/out.raw"; then ok "$fs convert over a shared base: blocks shared"
        else bad "$fs convert over a shared base" "no shared extent in the output (filefrag -v)"; fi
        cp --reflink=never "$m/z/out.raw" before_out.raw
        qio -f raw -c 'write -P 0xe8 0 8M' -c 'write -P 0xe9 40M 4M' "$m/z/base.raw" &&
            qio -c 'write -P 0xea 4M 64k' "$m/z/tzo.qcow2"
        if cmp -s before_out.raw "$m/z/out.raw"; then ok "$fs convert over a shared base: source writes leave the output alone"
        else bad "$fs convert over a shared base" "a write into the source changed the output"; fi
        cp ref/base.raw before_base.raw
        qio -f raw -c 'write -P 0xe8 0 8M' -c 'write -P 0xe9 40M 4M' before_base.raw
        qio -f raw -c 'write -P 0xeb 0 64k' -c 'write -P 0xec 40M 64k' "$m/z/out.raw"
        if cmp -s before_base.raw "$m/z/base.raw"; then ok "$fs convert over a shared base: output writes leave the base alone"
        else bad "$fs convert over a shared base" "a write into the output changed the base"; fi
    else
        bad "$fs convert over a shared base" "qsnap image convert failed: $(head -c 300 err)"
    fi

    # export a snapshot of a tree
    mkdir -p "$m/t" && cp ref/base.raw "$m/t/disk.raw"
    if q create "$m/t/disk.raw" s1 >/dev/null 2>err &&
        head=$(q current "$m/t/disk.raw" --path 2>>err) &&
        qio -c 'write -P 0x71 1M 1M' -c 'write -P 0x72 9M 64k' "$head" &&
        q create "$m/t/disk.raw" s2 >/dev/null 2>>err &&
        q export "$m/t/disk.raw" s2 "$m/t/s2.raw" 2>>err; then
        cp ref/base.raw exp_ref.raw && qio -f raw -c 'write -P 0x71 1M 1M' -c 'write -P 0x72 9M 64k' exp_ref.raw
        if same "$m/t/s2.raw" exp_ref.raw; then ok "$fs export: content as written"
        else bad "$fs export" "exported snapshot differs"; fi
        if shared "$m/t/s2.raw"; then ok "$fs export: blocks shared"
        else bad "$fs export" "no shared extent in the export (filefrag -v)"; fi
        qio -f raw -c 'write -P 0x73 1M 64k' "$m/t/s2.raw"
        if q verify "$m/t/disk.raw" >verify.out 2>&1; then ok "$fs export: writing the export leaves the tree verified"
        else bad "$fs export" "verify after writing the export: $(head -c 300 verify.out)"; fi
    else
        bad "$fs export" "tree commands failed: $(head -c 300 err)"
    fi
}

if [ "$(id -u)" != 0 ]; then
    echo "# skipped: loop mounts need root"
elif ! command -v filefrag >/dev/null; then
    echo "# skipped: filefrag (e2fsprogs) is missing"
else
    if command -v mkfs.xfs >/dev/null; then run_fs xfs mkfs.xfs -q -m reflink=1
    else echo "# skipped xfs: mkfs.xfs is missing (xfsprogs)"; fi
    if command -v mkfs.btrfs >/dev/null; then run_fs btrfs mkfs.btrfs -q
    else echo "# skipped btrfs: mkfs.btrfs is missing (btrfs-progs)"; fi
fi
ts_end
