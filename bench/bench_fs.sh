#!/bin/sh
# Scenario 8: copy-free commit and convert on file systems that share blocks.
# Makes an XFS (mkfs.xfs -m reflink=1) and a btrfs file system on loop
# devices backed by sparse files in the scratch directory, mounts each, and
# runs `bench_macro fs NAME MOUNT` there: commits into raw and qcow2 bases
# and a convert to raw, qsnap against qemu-img and against
# cp --reflink=always. A file system whose tools or loop devices are missing
# is skipped with a message. Mounts and loop files go on exit.
#   BUILD=build/bench sh bench/bench_fs.sh [SCRATCH_DIR]
set -eu

BUILD=${BUILD:-build/bench}
BIN=$BUILD/bench/bench_macro
[ -x "$BIN" ] || { echo "bench_fs: $BIN is missing (make bench-bins BUILD=$BUILD)" >&2; exit 1; }
case $BIN in /*) ;; *) BIN=$(pwd)/$BIN ;; esac
SCRATCH=${1:-$BUILD/scratch}
mkdir -p "$SCRATCH"
dir=$(mktemp -d "$SCRATCH/qsnap-fs.XXXXXX")
case $dir in /*) ;; *) dir=$(pwd)/$dir ;; esac
mounted=""
cleanup() {
    cd /
    for m in $mounted; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    for f in "$dir"/*.img; do
        [ -e "$f" ] && losetup -j "$f" 2>/dev/null | cut -d: -f1 | xargs -r losetup -d 2>/dev/null
    done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$(id -u)" != 0 ]; then
    echo "bench_fs: skipped: loop mounts need root"
    exit 0
fi
for fs in xfs btrfs; do
    case $fs in
    xfs) mkfs="mkfs.xfs -q -m reflink=1" ;;
    btrfs) mkfs="mkfs.btrfs -q" ;;
    esac
    if ! command -v "${mkfs%% *}" >/dev/null 2>&1; then
        echo "bench_fs: $fs skipped: ${mkfs%% *} is missing"
        continue
    fi
    truncate -s 16G "$dir/$fs.img"
    if ! $mkfs "$dir/$fs.img" >/dev/null 2>&1; then
        echo "bench_fs: $fs skipped: $mkfs failed"
        continue
    fi
    mkdir -p "$dir/$fs"
    if ! mount -o loop "$dir/$fs.img" "$dir/$fs" 2>/dev/null; then
        echo "bench_fs: $fs skipped: cannot mount a loop device here"
        continue
    fi
    mounted="$mounted $dir/$fs"
    echo "bench_fs: $fs on a loop device ($(df -PT "$dir/$fs" | awk 'NR == 2 { print $2 }'))," \
         "backed by a sparse file on $(df -PT "$dir" | awk 'NR == 2 { print $2 }')"
    "$BIN" fs "$fs" "$dir/$fs"
    umount "$dir/$fs"
    mounted=$(echo "$mounted" | sed "s#$dir/$fs##")
    rm -f "$dir/$fs.img"
done
