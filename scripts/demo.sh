#!/bin/sh
# A short qsnap session on a small disk image, run by `make demo` after
# `make all`. It makes a sparse raw disk with plain shell tools (no qemu-img:
# the demo shows qsnap alone), writes a few patterns into it, and runs the
# plumbing commands on it, echoing each one first. Exits non-zero on the first
# failure. Then it puts a qcow2 overlay on the disk, writes into it, and
# shows the two layers, a check, a comparison and a flattened copy. Last, a
# snapshot tree story on the same raw disk: snapshots, a revert that keeps the
# branch it leaves, a switch back, a delete in the middle of the tree, a
# commit into the raw disk, and verify.
set -eu

BUILD=${BUILD:-build/release}
QSNAP=${QSNAP:-$BUILD/qsnap}
case $QSNAP in /*) ;; *) QSNAP=$(pwd)/$QSNAP ;; esac
[ -x "$QSNAP" ] || { echo "demo: $QSNAP not built (run 'make all')" >&2; exit 1; }

mkdir -p build/demo
dir=$(mktemp -d "$(pwd)/build/demo/session.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir"

step() { # print a command (quoting words with spaces), then run it
    printf '\n$'
    for word in "$@"; do
        case $word in
        *' '*) printf " '%s'" "$word" ;;
        *) printf ' %s' "$word" ;;
        esac
    done
    printf '\n'
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

# Write with the same commands a VM would use: into the current branch's head.
vmwrite() { # pattern offset length
    head=$("$QSNAP" current disk.raw --path)
    printf '\n$ %s\n' "$QSNAP image io -c 'write -P $1 $2 $3' \"\$($QSNAP current disk.raw --path)\""
    "$QSNAP" image io -c "write -P $1 $2 $3" "$head"
}

echo
echo "== The snapshot tree: the first snapshot sets up disk.raw.qsnap/ with branch main"
rm -f overlay.qcow2 flat.raw copy.raw
step "$QSNAP" create disk.raw s1 -m "three regions"
step "$QSNAP" current disk.raw
step "$QSNAP" current disk.raw --path
vmwrite 0x11 2M 64k
step "$QSNAP" create disk.raw s2 -m "after the first write"
vmwrite 0x22 3M 64k

echo
echo "== Revert to s1: a new branch starts there; main keeps its unsnapshotted write"
step "$QSNAP" revert disk.raw s1 --branch experiment --dry-run
step "$QSNAP" revert disk.raw s1 --branch experiment
vmwrite 0x33 4M 64k
step "$QSNAP" list disk.raw --tree
step "$QSNAP" branch disk.raw
step "$QSNAP" diff disk.raw main experiment

echo
echo "== Switch back to the end of main, and delete s2 from the middle of the tree"
step "$QSNAP" switch disk.raw main
printf '\n$ %s\n' "$QSNAP image io -r -c 'read -P 0x11 2M 64k' -c 'read -P 0x22 3M 64k' \"\$($QSNAP current disk.raw --path)\""
"$QSNAP" image io -r -c 'read -P 0x11 2M 64k' -c 'read -P 0x22 3M 64k' \
    "$("$QSNAP" current disk.raw --path)"
step "$QSNAP" why disk.raw s2
step "$QSNAP" delete disk.raw s2 --dry-run
step "$QSNAP" delete disk.raw s2
step "$QSNAP" list disk.raw --tree

echo
echo "== Commit main into the raw disk: s1 and experiment keep their content"
step "$QSNAP" export disk.raw main main.raw
step "$QSNAP" commit disk.raw --dry-run
step "$QSNAP" commit disk.raw
step "$QSNAP" image digest main.raw
step "$QSNAP" image digest disk.raw
step "$QSNAP" export disk.raw experiment experiment.raw
printf '\n$ %s\n' "$QSNAP image io -r -c 'read -P 0x33 4M 64k' -c 'read -P 0 2M 64k' -c 'read -P 0 3M 64k' experiment.raw"
"$QSNAP" image io -r -c 'read -P 0x33 4M 64k' -c 'read -P 0 2M 64k' -c 'read -P 0 3M 64k' \
    experiment.raw
step "$QSNAP" list disk.raw --tree
step "$QSNAP" du disk.raw
step "$QSNAP" verify disk.raw

echo
echo "== A second branch cannot be deleted while it holds changes (exit status 3 expected)"
step "$QSNAP" switch disk.raw experiment
printf '\n$ %s\n' "$QSNAP branch disk.raw -d main   # main is clean after the commit: allowed"
"$QSNAP" branch disk.raw -d main
vmwrite 0x44 5M 4k
step "$QSNAP" branch disk.raw keep
step "$QSNAP" switch disk.raw keep
printf '\n$ %s\n' "$QSNAP branch disk.raw -d experiment"
rc=0
"$QSNAP" branch disk.raw -d experiment || rc=$?
[ "$rc" -eq 3 ] || { echo "demo: branch -d returned $rc, expected 3" >&2; exit 1; }

echo
echo "demo: all steps succeeded"
