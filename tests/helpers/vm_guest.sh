# Sourced by tests/vm/*.sh (bash): a tiny Linux guest for qemu-system-x86_64.
#
# guest_prepare        sets GUEST_KERNEL and GUEST_INITRD, fetching and building
#                      them once into the cache; returns 1 (with GUEST_WHY) when
#                      no kernel can be had (no network, no apt).
# guest_run DISK CMD   boots the guest (TCG) on DISK (qcow2, virtio), which holds
#                      an ext4 file system; /init mounts it on /mnt, runs CMD
#                      there with sh, syncs, unmounts and powers off. Sets
#                      GUEST_OUT (CMD's output) and GUEST_RC (CMD's exit status,
#                      or "none" when the guest did not get that far). QEMU
#                      runs in the background (GUEST_PID, the timeout around
#                      it) while the script waits for it.
# guest_stop           for the caller's EXIT trap: stops a guest still running
#                      (by GUEST_PID; timeout passes the signal on to QEMU) and
#                      removes its serial log.
#
# The kernel is Debian's cloud kernel: the package linux-image-cloud-amd64
# depends on is fetched with `apt-get download` and unpacked with `dpkg-deb -x`
# into a temporary directory (nothing is installed, nothing goes to /boot);
# its vmlinuz and the virtio modules (virtio_blk, virtio_pci and what they
# need, from each module's .modinfo) are kept in the cache. The initramfs is busybox
# (static) and /init; it is rebuilt when /init changes, without fetching.
#
# Cache: $QSNAP_VM_CACHE, else /var/cache/qsnap-tests when writable, else
# ${XDG_CACHE_HOME:-$HOME/.cache}/qsnap-tests. Never inside the build tree.

guest_cache_dir() {
    if [ -n "${QSNAP_VM_CACHE:-}" ]; then
        echo "$QSNAP_VM_CACHE"
    elif mkdir -p /var/cache/qsnap-tests 2>/dev/null && [ -w /var/cache/qsnap-tests ]; then
        echo /var/cache/qsnap-tests
    else
        echo "${XDG_CACHE_HOME:-$HOME/.cache}/qsnap-tests"
    fi
}

# The guest's /init (busybox sh). The command comes base64-encoded as qcmd=.
guest_init_script() {
    cat <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do insmod "/lib/modules/$m" 2>/dev/null; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n + 1)); done
cmd=$(sed -n 's/.*qcmd=\([^ ]*\).*/\1/p' /proc/cmdline | base64 -d)
echo "QSNAP-GUEST-BEGIN"
if mount -t ext4 /dev/vda /mnt; then
    (cd /mnt && sh -c "$cmd") >/out 2>&1
    rc=$?
    sed 's/^/QSNAP-OUT: /' /out
    sync
    umount /mnt
    echo "QSNAP-RC: $rc"
else
    echo "QSNAP-OUT: cannot mount /dev/vda"
    echo "QSNAP-RC: mount"
fi
sync
echo "QSNAP-GUEST-END"
poweroff -f
INIT
}

guest_fetch_kernel() { # DIR: vmlinuz, modules/*.ko, modules/order into DIR
    local dir=$1 tmp pkg ver mods
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/qsnap-kernel.XXXXXX") || return 1
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
        { GUEST_WHY="apt-get or dpkg-deb missing"; rm -rf "$tmp"; return 1; }
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n 1)
    if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
        # No package lists yet (a fresh machine): read them once.
        timeout 300 apt-get update -q >/dev/null 2>&1
        pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n 1)
    fi
    [ -n "$pkg" ] || { GUEST_WHY="apt knows no linux-image-cloud-amd64"; rm -rf "$tmp"; return 1; }
    if ! (cd "$tmp" && timeout 300 apt-get download "$pkg" >/dev/null 2>&1); then
        GUEST_WHY="apt-get download $pkg failed (no network?)"
        rm -rf "$tmp"
        return 1
    fi
    dpkg-deb -x "$tmp"/*.deb "$tmp/x" || { GUEST_WHY="dpkg-deb -x failed"; rm -rf "$tmp"; return 1; }
    ver=$(ls "$tmp/x/lib/modules" | head -n 1)
    mods=$tmp/x/lib/modules/$ver
    mkdir -p "$dir.new/modules"
    cp "$tmp/x/boot/vmlinuz-$ver" "$dir.new/vmlinuz" || { rm -rf "$tmp" "$dir.new"; return 1; }
    # The modules virtio_blk and virtio_pci need, dependencies first (from each
    # module's own .modinfo "depends=": the package ships no modules.dep).
    local order="" m
    add_mod() {
        local path d
        path=$(find "$mods/kernel" -name "$1.ko*" | head -n 1)
        [ -n "$path" ] || path=$(find "$mods/kernel" -name "$(echo "$1" | tr _ -).ko*" | head -n 1)
        [ -n "$path" ] || return 0
        path=${path#"$mods"/}
        case " $order " in *" $path "*) return 0 ;; esac
        for d in $(mod_info "$mods/$path" | sed -n 's/^depends=//p' | tr , ' '); do
            add_mod "$d"
        done
        order="$order $path"
    }
    mod_info() {
        case $1 in
        *.ko) tr '\0' '\n' <"$1" ;;
        *.ko.xz) xz -dc "$1" | tr '\0' '\n' ;;
        *.ko.zst) zstd -qdc "$1" | tr '\0' '\n' ;;
        esac
    }
    add_mod virtio_pci
    add_mod virtio_blk
    : >"$dir.new/modules/order"
    for m in $order; do
        case $m in
        *.ko) cp "$mods/$m" "$dir.new/modules/" ;;
        *.ko.xz) xz -dc "$mods/$m" >"$dir.new/modules/$(basename "$m" .xz)" ;;
        *.ko.zst) zstd -qdc "$mods/$m" >"$dir.new/modules/$(basename "$m" .zst)" ;;
        esac
        basename "$m" | sed 's/\.ko.*/.ko/' >>"$dir.new/modules/order"
    done
    echo "$ver" >"$dir.new/version"
    rm -rf "$tmp" "$dir"
    mv "$dir.new" "$dir"
}

guest_prepare() {
    local cache kdir sum initrd root
    GUEST_WHY=""
    for c in busybox cpio gzip qemu-system-x86_64; do
        command -v $c >/dev/null || { GUEST_WHY="$c not found"; return 1; }
    done
    # The initramfs has no C library: busybox must be the static one (busybox-static).
    if ldd "$(command -v busybox)" >/dev/null 2>&1; then
        GUEST_WHY="$(command -v busybox) is not statically linked (install busybox-static)"
        return 1
    fi
    cache=$(guest_cache_dir)
    mkdir -p "$cache" || { GUEST_WHY="cannot make $cache"; return 1; }
    kdir=$cache/kernel
    if [ ! -f "$kdir/vmlinuz" ] || [ ! -f "$kdir/modules/order" ]; then
        echo "# fetching a kernel into $kdir"
        guest_fetch_kernel "$kdir" || return 1
    fi
    sum=$( (guest_init_script; cat "$kdir/version"; ls "$kdir/modules") | md5sum | cut -c1-12)
    initrd=$cache/initrd-$sum.cpio.gz
    if [ ! -f "$initrd" ]; then
        root=$(mktemp -d "${TMPDIR:-/tmp}/qsnap-initrd.XXXXXX") || return 1
        mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/mnt" "$root/lib/modules"
        cp "$(command -v busybox)" "$root/bin/busybox"
        cp "$kdir"/modules/* "$root/lib/modules/"
        guest_init_script >"$root/init"
        chmod 755 "$root/init" "$root/bin/busybox"
        (cd "$root" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$initrd.tmp" &&
            mv "$initrd.tmp" "$initrd"
        rm -rf "$root"
        [ -f "$initrd" ] || { GUEST_WHY="cannot build the initramfs"; return 1; }
    fi
    GUEST_KERNEL=$kdir/vmlinuz
    GUEST_INITRD=$initrd
}

GUEST_PID=
GUEST_LOG=
guest_run() { # DISK CMD
    local disk=$1 cmd log
    cmd=$(printf '%s' "$2" | base64 -w0)
    log=$(mktemp "${TMPDIR:-/tmp}/qsnap-guest.XXXXXX")
    GUEST_LOG=$log
    timeout -k 5 "${GUEST_TIMEOUT:-240}" qemu-system-x86_64 -machine pc,accel=tcg -m 256 -smp 1 \
        -display none -nodefaults -no-reboot -serial "file:$log" \
        -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 qcmd=$cmd" \
        -drive "file=$disk,format=qcow2,if=virtio,cache=writeback" >"$log.qemu" 2>&1 &
    GUEST_PID=$!
    wait "$GUEST_PID"
    GUEST_QEMU_RC=$?
    GUEST_PID=
    GUEST_OUT=$(tr -d '\r' <"$log" | sed -n 's/^QSNAP-OUT: //p')
    GUEST_RC=$(tr -d '\r' <"$log" | sed -n 's/^QSNAP-RC: //p' | tail -n 1)
    [ -n "$GUEST_RC" ] || {
        GUEST_RC=none
        echo "# guest log: $(tr -d '\r' <"$log" | tail -n 5 | tr '\n' '|') qemu: $(cat "$log.qemu")"
    }
    rm -f "$log" "$log.qemu"
    GUEST_LOG=
}

guest_stop() {
    [ -n "$GUEST_PID" ] && kill "$GUEST_PID" 2>/dev/null && wait "$GUEST_PID" 2>/dev/null
    GUEST_PID=
    [ -z "$GUEST_LOG" ] || rm -f "$GUEST_LOG" "$GUEST_LOG.qemu"
    GUEST_LOG=
}
