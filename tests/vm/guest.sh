#!/bin/bash
# A real guest on a qsnap disk: qemu-system-x86_64 (TCG) boots a Debian kernel
# with a busybox initramfs (tests/helpers/vm_guest.sh) on the store's VM path
# (`qsnap current DISK --path`, the same path at every boot) and reads and
# writes files on an ext4 file system across the tree operations:
#   create s1          the guest's file survives; it writes more
#   revert s1          a new branch: the guest sees s1's files only
#   switch main        back at main's end: main's files, not the other branch's
#   delete s1 --stream s1's layer streamed into both heads: nothing changes
#   commit main        into the raw disk itself (main's base is the root):
#                      the guest still sees main; on the host the disk passes
#                      e2fsck -fn and debugfs reads main's files in it
#   export             main, the other branch and the root snapshot as raw
#                      images: e2fsck -fn clean, debugfs reads what each holds
# After every step qsnap verify is clean, qemu-img check passes on every layer,
# and the VM path is the same. Skips (0 passed, 0 failed) when no kernel can be
# had (no network on the first run; later runs use the cache).
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
#   KEEP=1      keep the work directory
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
# shellcheck source=../helpers/vm_guest.sh
. "$(dirname "$0")/../helpers/vm_guest.sh"
TS_TIMEOUT=120
ts_need qemu-img qemu-system-x86_64 mkfs.ext4 e2fsck debugfs
guest_prepare || ts_skip "# SKIP: no guest kernel: $GUEST_WHY"
ts_atexit guest_stop
ts_workdir guest
T0=$SECONDS
nl=$'\n'

# boot NAME CMD WANT: the guest runs CMD on the VM path; its output must be WANT.
boot() {
    local t=$SECONDS
    guest_run "$VM" "$2"
    if [ "$GUEST_RC" = 0 ] && [ "$GUEST_OUT" = "$3" ]; then
        ok "guest: $1 ($((SECONDS - t))s)"
    else
        bad "guest: $1" "exit $GUEST_RC, output '$(echo "$GUEST_OUT" | tr '\n' '|')', want '$(echo "$3" | tr '\n' '|')'"
    fi
}

# store_ok NAME: verify clean, every qcow2 layer passes qemu-img check, the VM path unchanged
# and on the current head.
store_ok() {
    local f out bad_files=""
    out=$(q verify disk.raw 2>&1) || { bad "$1: verify" "$out"; return; }
    for f in disk.raw.qsnap/layers/[0-9]*.qcow2; do
        qemu-img check -q -U "$f" >/dev/null 2>&1 || bad_files="$bad_files $f"
    done
    [ -z "$bad_files" ] || { bad "$1: qemu-img check" "$bad_files"; return; }
    [ "$(q current disk.raw --path)" = "$VM" ] || { bad "$1: VM path" "moved"; return; }
    [ "$(readlink -f "$VM")" = "$(q current disk.raw --head)" ] || { bad "$1: VM path" "not on the head"; return; }
    ok "$1: verify, qemu-img check, the same VM path on the current head"
}

# fs_has NAME IMAGE FILE=CONTENT... [-FILE]: e2fsck -fn clean; debugfs reads each FILE's CONTENT,
# -FILE: absent.
fs_has() {
    local name=$1 img=$2 spec f want got errs=""
    shift 2
    e2fsck -fn "$img" >"$W/fsck.out" 2>&1 || errs="e2fsck: $(tail -n 3 "$W/fsck.out" | tr '\n' '|')"
    for spec in "$@"; do
        case $spec in
        -*)
            f=${spec#-}
            debugfs -R "stat /$f" "$img" 2>&1 | grep -q "not found" || errs="$errs /$f exists;"
            ;;
        *)
            f=${spec%%=*}
            want=${spec#*=}
            got=$(debugfs -R "cat /$f" "$img" 2>/dev/null)
            [ "$got" = "$want" ] || errs="$errs /$f is '$got', want '$want';"
            ;;
        esac
    done
    [ -z "$errs" ] && ok "host: $name" || bad "host: $name" "$errs"
}

truncate -s 64M disk.raw
mkfs.ext4 -q -F disk.raw
q create disk.raw s0 >/dev/null || { bad "create s0" "failed"; ts_end; exit 1; }
VM=$(q current disk.raw --path)
boot "main on s0: write a" 'echo alpha > a.txt && cat a.txt' "alpha"
store_ok "after the first boot"

q create disk.raw s1 >/dev/null || bad "create s1" "failed"
boot "after create s1: a survives; write b, change a" \
    'cat a.txt && echo beta > b.txt && echo alpha2 > a.txt && cat a.txt b.txt' \
    "alpha${nl}alpha2${nl}beta"
store_ok "after create"

q revert disk.raw s1 --branch try >/dev/null || bad "revert s1" "failed"
boot "after revert to s1 (branch try): s1's files only; write c" \
    'cat a.txt && [ ! -e b.txt ] && echo no-b && echo gamma > c.txt' "alpha${nl}no-b"
store_ok "after revert"

q switch disk.raw main >/dev/null || bad "switch main" "failed"
boot "after switch main: main's files, not try's" \
    'cat a.txt b.txt && [ ! -e c.txt ] && echo no-c' "alpha2${nl}beta${nl}no-c"
store_ok "after switch"

q delete disk.raw s1 --stream >/dev/null || bad "delete s1 --stream" "failed"
boot "after delete s1 --stream: main unchanged" 'cat a.txt b.txt' "alpha2${nl}beta"
store_ok "after delete"

# main's base is now s0, whose layer is the raw disk: the commit writes the disk.
q commit disk.raw main >"$W/commit.out" 2>&1 || bad "commit main" "$(cat "$W/commit.out")"
grep -q "into ../disk.raw\|into disk.raw" "$W/commit.out" && ok "commit main wrote into the raw disk" ||
    bad "commit target" "$(cat "$W/commit.out")"
fs_has "the committed raw disk holds main's files" disk.raw a.txt=alpha2 b.txt=beta -c.txt
boot "after commit: main's files; write d" 'cat a.txt b.txt && echo delta > d.txt' "alpha2${nl}beta"
store_ok "after commit"

q export disk.raw main main.raw >/dev/null || bad "export main" "failed"
q export disk.raw try try.raw >/dev/null || bad "export try" "failed"
q export disk.raw s0 s0.raw >/dev/null || bad "export s0" "failed"
fs_has "exported main" main.raw a.txt=alpha2 b.txt=beta d.txt=delta -c.txt
fs_has "exported try" try.raw a.txt=alpha c.txt=gamma -b.txt -d.txt
fs_has "exported s0 (the root, kept across the commit)" s0.raw -a.txt -b.txt
store_ok "at the end"

echo "# $((SECONDS - T0))s"
ts_end
