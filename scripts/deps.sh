#!/bin/sh
# Install the Debian packages the build and the tests need, only those that are
# missing. Runs `apt-get update` once, and only when something must be installed.
# Not root: prints the exact command to run instead.
set -eu

missing=""
need_pkg() { # pkg-config-name debian-package
    pkg-config --exists "$1" 2>/dev/null || missing="$missing $2"
}
need_cmd() { # command debian-package
    command -v "$1" >/dev/null 2>&1 || missing="$missing $2"
}
need_hdr() { # header debian-package
    [ -f "/usr/include/$1" ] || missing="$missing $2"
}

need_ar() { # archive debian-package: a static library the C compiler must find
    case $(cc -print-file-name="$1" 2>/dev/null) in /*) ;; *) missing="$missing $2" ;; esac
}

need_cmd cc gcc
need_cmd make make
need_cmd pkg-config pkg-config
# The -dev packages carry the archives (libz.a, libzstd.a, libxxhash.a, libfuse3.a
# below, and the C library's libc.a) that qsnap is linked with, -static-pie; without
# one, make links qsnap dynamically (README, Make targets).
need_ar libc.a libc6-dev
need_pkg zlib zlib1g-dev
need_pkg libzstd libzstd-dev
need_pkg libxxhash libxxhash-dev
need_hdr criterion/criterion.h libcriterion-dev
need_cmd qemu-img qemu-utils
need_cmd c++ g++
need_cmd python3 python3
need_cmd groff groff-base
# Real clients the tests drive: a QEMU guest, libvirt, nbdkit and libnbd's tools,
# FUSE, and the file systems that share blocks (XFS, btrfs).
need_cmd qemu-system-x86_64 qemu-system-x86
need_cmd busybox busybox-static
need_cmd cpio cpio
# The guest's kernel is fetched once with `apt-get download` and unpacked with
# `dpkg-deb -x` (tests/helpers/vm_guest.sh); its initramfs is gzip'ed cpio; the
# guest's ext4 file system is made and checked on the host.
need_cmd apt-get apt
need_cmd dpkg-deb dpkg
need_cmd gzip gzip
need_cmd mkfs.ext4 e2fsprogs
need_cmd e2fsck e2fsprogs
need_cmd virsh libvirt-clients
need_cmd libvirtd libvirt-daemon
[ -f /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so ] ||
    [ -n "$(find /usr/lib -name 'libvirt_driver_qemu.so' 2>/dev/null | head -n 1)" ] ||
    missing="$missing libvirt-daemon-driver-qemu"
need_cmd virt-xml-validate libvirt-clients
need_cmd xmllint libxml2-utils
need_cmd nbdkit nbdkit
need_hdr nbdkit-plugin.h nbdkit-plugin-dev
need_cmd nbdinfo libnbd-bin
need_cmd fusermount3 fuse3
need_hdr fuse3/fuse.h libfuse3-dev
need_cmd mkfs.xfs xfsprogs
need_cmd mkfs.btrfs btrfs-progs
need_cmd debugfs e2fsprogs
# tests/tree/depth_cost.sh counts the files an operation opens.
need_cmd strace strace
# The digest's definition (docs/DIGEST.md) is checked against its Python recipe.
/usr/bin/python3 -c 'import xxhash' 2>/dev/null || missing="$missing python3-xxhash"

[ -z "$missing" ] && exit 0

echo "deps: missing:$missing"
if [ "$(id -u)" != 0 ]; then
    echo "deps: run as root: apt-get update && apt-get install -y$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
