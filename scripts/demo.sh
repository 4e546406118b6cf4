#!/bin/sh
# A short qsnap session on a small disk image, run by `make demo` after
# `make all`. It makes a sparse raw disk with plain shell tools (no qemu-img:
# the demo shows qsnap alone), writes a few patterns into it, and runs the
# plumbing commands on it, echoing each one first. Exits non-zero on the first
# failure. Then it puts a qcow2 overlay on the disk, writes into it, and
# shows the two layers, a check, a comparison and a flattened copy. Later
# milestones add the snapshot tree.
set -eu

BUILD=${BUILD:-build/release}
QSNAP=${QSNAP:-$BUILD/qsnap}
case $QSNAP in /*) ;; *) QSNAP=$(pwd)/$QSNAP ;; esac
[ -x "$QSNAP" ] || { echo "demo: $QSNAP not built (run 'make all')" >&2; exit 1; }

mkdir -p build/demo
dir=$(mktemp -d "$(pwd)/build/demo/session.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir"

step() { # print a command, then run it
    printf '\n$ %s\n' "$*"
    "$@"
}

# Write COUNT KiB of byte value BYTE (octal escape for printf) at KiB offset SEEK.
fill() { # file byte-octal seek-kib count-kib
    i=0
    : > chunk.tmp
    while [ $i -lt 1024 ]; do printf "\\$2"; i=$((i + 1)); done > chunk.tmp
    dd if=chunk.tmp of="$1" bs=1024 seek="$3" count=1 conv=notrunc 2>/dev/null
    j=1
    while [ $j -lt "$4" ]; do
        dd if=chunk.tmp of="$1" bs=1024 seek=$(($3 + j)) count=1 conv=notrunc 2>/dev/null
        j=$((j + 1))
    done
    rm -f chunk.tmp
}

echo "== A 64 MiB sparse raw disk with three written regions (dd and printf only)"
step truncate -s 64M disk.raw
fill disk.raw 252 0 64         # 0xaa over the first 64 KiB
fill disk.raw 273 1024 128     # 0xbb over 128 KiB at 1 MiB
fill disk.raw 314 32768 4      # 0xcc over 4 KiB at 32 MiB
step ls -ls disk.raw

echo
echo "== What qsnap sees"
step "$QSNAP" image info disk.raw
step "$QSNAP" image info --output=json disk.raw
step "$QSNAP" image map disk.raw
step "$QSNAP" image map --output=json disk.raw

echo
echo "== Content: digest, a flattened copy, and a comparison"
step "$QSNAP" image digest disk.raw
step "$QSNAP" image convert -O raw disk.raw copy.raw
step "$QSNAP" image digest copy.raw
step "$QSNAP" image compare disk.raw copy.raw

echo
echo "== One changed byte (at 1 MiB + 1536) is found, reported by its 512-byte sector as qemu-img does"
printf 'x' | dd of=copy.raw bs=1 seek=1050112 conv=notrunc 2>/dev/null
printf '\n$ %s\n' "$QSNAP image compare disk.raw copy.raw   # exit status 1 expected"
rc=0
"$QSNAP" image compare disk.raw copy.raw || rc=$?
[ "$rc" -eq 1 ] || { echo "demo: compare returned $rc, expected 1" >&2; exit 1; }

echo
echo "== Reading back the patterns, qemu-io style"
printf '\n$ %s\n' "$QSNAP image io -c 'read -P 0xaa 0 64k' -c 'read -P 0xbb 1M 128k' -c 'read -P 0xcc 32M 4k' -c 'read -P 0 40M 1M' -c map disk.raw"
"$QSNAP" image io -c 'read -P 0xaa 0 64k' -c 'read -P 0xbb 1M 128k' \
    -c 'read -P 0xcc 32M 4k' -c 'read -P 0 40M 1M' -c map disk.raw

echo
echo "== A wrong pattern makes the command, and qsnap, fail (exit status 1 expected)"
printf '\n$ %s\n' "$QSNAP image io -c 'read -P 0xbb 0 4k' disk.raw"
rc=0
"$QSNAP" image io -c 'read -P 0xbb 0 4k' disk.raw || rc=$?
[ "$rc" -eq 1 ] || { echo "demo: io returned $rc, expected 1" >&2; exit 1; }

echo
echo "== A qcow2 overlay on the raw disk: writes go to the overlay, the disk stays as it was"
step "$QSNAP" image create -f qcow2 -b disk.raw -F raw overlay.qcow2
printf '\n$ %s\n' "$QSNAP image io -c 'write -P 0xab 1M 64k' overlay.qcow2"
"$QSNAP" image io -c 'write -P 0xab 1M 64k' overlay.qcow2
step "$QSNAP" image info overlay.qcow2
step "$QSNAP" image map overlay.qcow2
step "$QSNAP" image map --output=json overlay.qcow2
step "$QSNAP" image check overlay.qcow2
printf '\n$ %s\n' "$QSNAP image io -r -c 'read -P 0xab 1M 64k' -c 'read -P 0xbb 1088k 64k' overlay.qcow2"
"$QSNAP" image io -r -c 'read -P 0xab 1M 64k' -c 'read -P 0xbb 1088k 64k' overlay.qcow2

echo
echo "== The overlay differs from its base at 1 MiB (exit status 1 expected)"
printf '\n$ %s\n' "$QSNAP image compare overlay.qcow2 disk.raw"
rc=0
"$QSNAP" image compare overlay.qcow2 disk.raw || rc=$?
[ "$rc" -eq 1 ] || { echo "demo: compare returned $rc, expected 1" >&2; exit 1; }

echo
echo "== Flattening the overlay and its base into one raw file keeps the content"
step "$QSNAP" image convert -O raw overlay.qcow2 flat.raw
step "$QSNAP" image digest overlay.qcow2
step "$QSNAP" image digest flat.raw
step "$QSNAP" image compare overlay.qcow2 flat.raw

echo
echo "demo: all steps succeeded"
