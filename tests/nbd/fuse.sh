#!/bin/bash
# qsnap mount / umount (FUSE):
#   - DIR lists exactly one NAME.raw per snapshot and branch; cmp of each with
#     `qsnap export`;
#   - the files are sparse as the image is: the data runs found with
#     SEEK_DATA/SEEK_HOLE equal `qsnap image map`'s data runs, and cp
#     --sparse=always makes a copy that equals the export and holds no more
#     than the data;
#   - read-only by default: writes fail;
#   - a loop mount (read-only) of the ext4 file system inside a snapshot's
#     file shows the file put there (skipped, with a message, where loop
#     devices or mount are not available);
#   - --rw: writes to a branch file land in that branch (qsnap export reads
#     them), every other state keeps its content, the snapshot files stay
#     read-only, tree commands touching the head exit 5 while mounted (naming
#     the mount's process and 'qsnap umount'), and
#     `fusermount3 -u` ends the mount too; qemu-img check of the head is clean;
#     st_blocks (du) of a branch file grows by what a write newly allocates.
#   - a read-only mount holds an image only while a file of it is open: beside
#     an idle mount create and delete work; with main.raw open, switch exits 5
#     naming the mount; once closed it works, and the files read as before;
#   - while a paused QEMU holds main's head (as a running VM does): a read-only
#     mount works, its snapshot and other branch files read as `qsnap export`
#     does, main.raw and an internal snapshot inside that head are listed with
#     their size but opening them fails with EBUSY (the mount says so), the
#     mount's process has no descriptor of the head; a --rw mount is refused
#     (exit 5); once the QEMU is gone, the same mount reads main.raw.
#   - a disk whose name holds a comma (or a backslash) mounts with its own
#     options only: "c,allow_other" does not open the mount to other users,
#     "w,rw" stays read-only.
# Mounts are unmounted (and loop devices detached) on exit.
# Prints "ok"/"FAIL" lines and "N passed, N failed".
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
. "$(dirname "$0")/../helpers/qemu_hold.sh"
TS_TIMEOUT=120

QPID=
LOOP=""
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
# At exit, before the work directory goes: the QEMU, the loop mount and its
# device, the FUSE mount, and any mount process still running (by the pid
# its record in $W/run, the XDG_RUNTIME_DIR of the test, names).
fuse_cleanup() {
    [ -n "$QPID" ] && kill "$QPID" 2>/dev/null && wait "$QPID" 2>/dev/null
    mountpoint -q "$W/fs" 2>/dev/null && umount "$W/fs"
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
    for d in "$W/m" "$W/m2" "$W/re/m"; do
        mountpoint -q "$d" 2>/dev/null && { fusermount3 -u "$d" 2>/dev/null || umount "$d"; }
    done
    for f in "$W"/run/qsnap/mount-*; do
        [ -f "$f" ] || continue
        p=$(sed -n 's/^pid=//p' "$f")
        for _ in $(seq 50); do [ -n "$p" ] && alive "$p" || break; sleep 0.1; done
        [ -n "$p" ] && alive "$p" && kill "$p"
    done
}
ts_need fusermount3 qemu-img qemu-io qemu-system-x86_64 python3 cmp mkfs.ext4
[ -c /dev/fuse ] || ts_skip "skip: no /dev/fuse here"
ts_atexit fuse_cleanup
ts_workdir fuse
trap 'exit 1' INT TERM
export XDG_RUNTIME_DIR=$W/run
mkdir -p "$XDG_RUNTIME_DIR" "$W/m" "$W/fs"
chmod 700 "$XDG_RUNTIME_DIR"
mount_pid() { sed -n 's/^pid=//p' "$XDG_RUNTIME_DIR"/qsnap/mount-* 2>/dev/null | head -n 1; }

# A raw disk holding an ext4 file system with one file, snapshot s1; main
# then gets writes past the file system's data; branch other at s1.
mkdir -p src
echo "hello from snapshot s1" >src/hello.txt
head -c 300000 /dev/urandom >src/blob.bin
truncate -s 64M disk.raw
mkfs.ext4 -q -F -d src disk.raw >/dev/null 2>&1 || bad "mkfs.ext4" "failed"
# Written back now: the host file system may report the holes of a file with
# dirty pages differently before and after writeback.
sync disk.raw
q create disk.raw s1 >/dev/null || bad "create s1" "failed"
q branch disk.raw other --at s1 >/dev/null || bad "branch other" "failed"
head=$(q info disk.raw main --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["file"])')
qemu-io -f qcow2 -c 'write -P 0x33 62M 64k' "$head" >/dev/null
for n in s1 main other; do q export disk.raw $n $n.exp >/dev/null || bad "export $n" "failed"; done

# ---- read-only mount ----------------------------------------------------------------
if q mount disk.raw m 2>mount.err; then
    ok "qsnap mount DISK DIR"
    names=$(cd m && ls | tr '\n' ' ')
    [ "$names" = "main.raw other.raw s1.raw " ] && ok "DIR holds main.raw other.raw s1.raw" || bad "listing" "$names"
    for n in s1 main other; do
        cmp -s m/$n.raw $n.exp && ok "cmp $n.raw with qsnap export" || bad "cmp $n.raw" "differs"
    done
    # Data runs through SEEK_DATA/SEEK_HOLE against qsnap image map of s1's layer.
    layer=$(q info disk.raw s1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["file"])')
    q image map -U --output=json "$layer" >s1.map
    python3 - m/s1.raw s1.map <<'EOF' >sparse.out 2>&1 && ok "SEEK_DATA/SEEK_HOLE runs of s1.raw equal qsnap image map's data runs ($(cat sparse.out))" || bad "sparse" "$(cat sparse.out)"
import json, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
runs, off = [], 0
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    runs.append((d, h))
    off = h
want = []
for e in json.load(open(sys.argv[2])):
    if e["data"] and not e["zero"]:
        s, t = e["start"], e["start"] + e["length"]
        if want and want[-1][1] == s:
            want[-1] = (want[-1][0], t)
        else:
            want.append((s, t))
if runs != want or not runs or sum(t - s for s, t in runs) >= size:
    print("seek:", runs[:5], "map:", want[:5])
    sys.exit(1)
print(len(runs), "runs,", sum(t - s for s, t in runs), "of", size, "bytes")
EOF
    cp --sparse=always m/main.raw copy.raw && cmp -s copy.raw main.exp &&
        [ "$(du -k copy.raw | cut -f1)" -lt $((32 * 1024)) ] &&
        ok "cp --sparse=always of main.raw: equal and sparse ($(du -k copy.raw | cut -f1) KiB of 65536)" ||
        bad "cp --sparse" "$(du -k copy.raw)"
    if dd if=/dev/zero of=m/main.raw bs=4k count=1 conv=notrunc 2>/dev/null; then
        bad "read-only" "a write to main.raw succeeded"
    else
        ok "without --rw, writes fail"
    fi
    # Loop mount of the ext4 inside s1.raw.
    if command -v losetup >/dev/null && [ -e /dev/loop-control ] && [ "$(id -u)" = 0 ] &&
        LOOP=$(losetup -r -f --show m/s1.raw 2>/dev/null); then
        if mount -o ro,noload "$LOOP" fs 2>loop.err; then
            [ "$(cat fs/hello.txt 2>/dev/null)" = "hello from snapshot s1" ] && cmp -s fs/blob.bin src/blob.bin &&
                ok "loop mount (read-only) of s1.raw shows the snapshot's files" || bad "loop mount" "files differ"
            umount fs
        else
            bad "loop mount" "$(cat loop.err)"
        fi
        losetup -d "$LOOP"
        LOOP=""
    else
        echo "skip: loop mount of s1.raw (no loop devices here, or not root)"
    fi
    # A read-only mount holds an image only while a file of it is open: tree commands work
    # beside an idle mount, and one open file holds its chain until it is closed.
    pid=$(mount_pid)
    imgs() { for f in /proc/"$pid"/fd/*; do readlink -f "$f"; done | grep -c '\.qcow2$'; }
    [ -n "$pid" ] && [ "$(imgs)" = 0 ] && ok "an idle read-only mount has no image open" ||
        bad "idle mount" "$(imgs) images open"
    q create disk.raw tmp >tree.out 2>&1 && q delete disk.raw tmp >>tree.out 2>&1 &&
        ok "create and delete beside an idle read-only mount" || bad "tree beside the mount" "$(cat tree.out)"
    head=$(q info disk.raw main --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["file"])')
    exec 7<m/main.raw
    q switch disk.raw other >tree.out 2>&1
    rc=$?
    [ $rc = 5 ] && grep -q "held by qsnap mount (pid $pid)" tree.out &&
        ok "with main.raw open in the mount, switch exits 5 naming the mount" || bad "open file" "exit $rc: $(cat tree.out)"
    exec 7<&-
    for _ in $(seq 50); do [ "$(imgs)" = 0 ] && break; sleep 0.1; done
    q switch disk.raw other >tree.out 2>&1 && q switch disk.raw main >>tree.out 2>&1 &&
        ok "once it is closed, switch works again" || bad "after close" "$(cat tree.out)"
    cmp -s m/main.raw main.exp && cmp -s m/s1.raw s1.exp && ok "the mount reads as before after those changes" ||
        bad "reads after tree changes" "differ"
    q umount m 2>umount.err
    rc=$?
    if [ $rc = 0 ] && ! mountpoint -q m && [ -n "$pid" ] && ! alive "$pid"; then
        ok "qsnap umount DIR ends the mount and its process"
    else
        bad "umount" "exit $rc, pid '$pid': $(cat umount.err)"
    fi
else
    bad "qsnap mount" "$(cat mount.err)"
fi

# ---- --rw -------------------------------------------------------------------------
python3 -c 'import sys; sys.stdout.buffer.write(bytes([0x5a]) * 65536)' >pat.bin
if q mount disk.raw m --rw 2>mount.err; then
    ok "qsnap mount --rw"
    dd if=pat.bin of=m/main.raw bs=64k seek=160 conv=notrunc,fsync 2>/dev/null &&
        ok "write to main.raw (10 MiB in)" || bad "rw write" "failed"
    cmp -s <(dd if=m/main.raw bs=64k skip=160 count=1 2>/dev/null) pat.bin && ok "it reads back through FUSE" ||
        bad "read back" "differs"
    # du follows the allocation: 1 MiB of new data at 44 MiB (a hole in every
    # layer: ext4 keeps backup superblocks at 40 and 56 MiB) adds exactly 1 MiB
    # to st_blocks, without a remount; writing it again adds nothing.
    hole=$(python3 -c 'import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); print(os.lseek(fd,44<<20,os.SEEK_DATA)>=45<<20)' m/main.raw 2>&1)
    [ "$hole" = True ] || bad "44 MiB hole" "main.raw has data in 44..45 MiB: $hole"
    du0=$(stat -c %b m/main.raw)
    head -c 1048576 /dev/urandom >new.bin
    dd if=new.bin of=m/main.raw bs=1M seek=44 conv=notrunc,fsync 2>/dev/null || bad "rw write 1 MiB" "failed"
    du1=$(stat -c %b m/main.raw)
    [ $(((du1 - du0) * 512)) = 1048576 ] &&
        ok "du of main.raw grows by 1 MiB after writing 1 MiB of new data ($du0 -> $du1 blocks)" ||
        bad "st_blocks after write" "$du0 -> $du1 blocks of 512"
    dd if=new.bin of=m/main.raw bs=1M seek=44 conv=notrunc,fsync 2>/dev/null
    du2=$(stat -c %b m/main.raw)
    [ "$du2" = "$du1" ] && ok "rewriting the same 1 MiB leaves du as it is" || bad "st_blocks after rewrite" "$du1 -> $du2"
    if dd if=pat.bin of=m/s1.raw bs=64k conv=notrunc 2>/dev/null; then
        bad "--rw snapshot" "a write to s1.raw succeeded"
    else
        ok "--rw: snapshot files stay read-only"
    fi
    q create disk.raw s2 >lock.out 2>&1
    rc=$?
    [ $rc = 5 ] && ok "qsnap create while main is mounted --rw: exit 5" || bad "lock" "exit $rc: $(cat lock.out)"
    pid=$(mount_pid)
    grep -q "in use: held by qsnap mount (pid $pid)" lock.out && grep -q "qsnap umount DIR" lock.out &&
        ok "the refusal names the holder (qsnap mount, its pid) and how to end it" ||
        bad "holder named" "pid $pid: $(cat lock.out)"
    fusermount3 -u m
    for _ in $(seq 100); do [ -n "$pid" ] && alive "$pid" || break; sleep 0.1; done
    [ -n "$pid" ] && ! alive "$pid" && ! mountpoint -q m && ok "fusermount3 -u ends it too" || bad "fusermount3 -u" "still running"
    q export disk.raw main main2.exp >/dev/null
    python3 - main.exp main2.exp pat.bin new.bin <<'EOF' && ok "the write landed in main, nothing else of main changed" || bad "main after --rw" "unexpected content"
import sys
a = bytearray(open(sys.argv[1], "rb").read()); b = open(sys.argv[2], "rb").read()
a[160 * 65536:161 * 65536] = open(sys.argv[3], "rb").read()
a[44 << 20:45 << 20] = open(sys.argv[4], "rb").read()
sys.exit(0 if bytes(a) == b else 1)
EOF
    for n in s1 other; do
        q export disk.raw $n $n.after >/dev/null && cmp -s $n.exp $n.after && ok "$n unchanged" || bad "$n" "changed"
    done
    out=$(qemu-img check "$head" 2>&1) && ok "qemu-img check of main's head is clean" || bad "check" "$out"
else
    bad "qsnap mount --rw" "$(cat mount.err)"
fi

# ---- a QEMU holds main's head -------------------------------------------------------
# An internal snapshot lives inside the head, so it is held with it.
q create disk.raw si --internal >/dev/null || bad "create --internal si" "failed"
q export disk.raw main main3.exp >/dev/null || bad "export main" "failed"
head=$(readlink -f "$(q current disk.raw --path)")
# open_errno FILE: the errno name of opening FILE for reading ("ok" when it opens).
open_errno() {
    python3 -c 'import errno, os, sys
try:
    os.close(os.open(sys.argv[1], os.O_RDONLY)); print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))' "$1"
}
if qemu_start "$(q current disk.raw --path)"; then
    if q mount disk.raw m 2>held.err; then
        ok "read-only mount while a QEMU holds main's head"
        names=$(cd m && ls | tr '\n' ' ')
        [ "$names" = "main.raw other.raw s1.raw si.raw " ] && ok "DIR still lists main.raw and si.raw" ||
            bad "listing (held)" "$names"
        for n in s1 other; do
            cmp -s m/$n.raw $n.exp && ok "cmp $n.raw with qsnap export while main runs" ||
                bad "cmp $n.raw (held)" "differs"
        done
        for n in main si; do
            e=$(open_errno m/$n.raw)
            [ "$e" = EBUSY ] && ok "opening $n.raw fails with EBUSY" || bad "open $n.raw (held)" "$e"
            grep -qF "$n.raw" held.err && grep -qF "$head" held.err && grep -q EBUSY held.err &&
                ok "the mount names $n.raw, the held file and EBUSY" || bad "message $n" "$(cat held.err)"
        done
        [ "$(stat -c %s m/main.raw)" = $((64 << 20)) ] && ok "main.raw has the disk's size" ||
            bad "size of main.raw" "$(stat -c %s m/main.raw)"
        pid=$(mount_pid)
        exec 7<m/other.raw
        fds=$( [ -n "$pid" ] && for f in /proc/"$pid"/fd/*; do readlink -f "$f"; done)
        exec 7<&-
        if [ -z "$pid" ]; then
            bad "mount process" "no record"
        elif echo "$fds" | grep -qxF "$head"; then
            bad "held head" "the mount's process has $head open"
        elif echo "$fds" | grep -q '\.qcow2$'; then
            ok "with other.raw open, the mount's process has its layers open, not main's head"
        else
            bad "mount fds" "no image open: $fds"
        fi
        locked "$head" && ok "the QEMU still holds its lock" || bad "QEMU lock" "gone"
    else
        bad "read-only mount while a QEMU holds main's head" "$(cat held.err)"
    fi
    mkdir -p m2
    q mount disk.raw m2 --rw >rw.out 2>&1
    rc=$?
    if [ $rc = 5 ] && grep -qF "$head" rw.out && ! mountpoint -q m2; then
        ok "--rw mount while the QEMU holds main's head: exit 5, names the head"
    else
        mountpoint -q m2 && q umount m2
        bad "--rw (held)" "exit $rc: $(cat rw.out)"
    fi
    qemu_stop
    if mountpoint -q m; then
        cmp -s m/main.raw main3.exp && ok "once the QEMU is gone, the same mount reads main.raw" ||
            bad "main.raw after QEMU" "differs"
        q umount m || bad "umount (held)" "failed"
    fi
else
    bad "qemu on main's head" "did not start"
fi

# A disk name is not mount options: a comma in it neither opens the mount to other
# users nor makes a read-only mount writable; the name reaches /proc/mounts whole.
for name in 'c,allow_other' 'w,rw' 'b\\,allow_other'; do
    truncate -s 4M "$name" && q create "$name" s1 >/dev/null || { bad "disk '$name'" "create"; continue; }
    if q mount "$name" m 2>mount.err; then
        line=$(awk -v d="$W/m" '$2 == d' /proc/mounts)
        opts=$(echo "$line" | awk '{print $4}')
        case ",$opts," in
        *,allow_other,* | *,rw,*) bad "disk '$name'" "mount options: $opts" ;;
        *,ro,*)
            # (/proc/mounts writes a backslash as \134.)
            if [ "$(printf '%b' "$(echo "$line" | awk '{print $1}')")" = "qsnap:$name" ] &&
                ! (: >>m/main.raw) 2>/dev/null; then
                ok "a disk named '$name' mounts read-only, for its owner only, under its whole name"
            else
                bad "disk '$name'" "fsname or writable: $line"
            fi ;;
        *) bad "disk '$name'" "mount options: $opts" ;;
        esac
        q umount m
    else
        bad "disk '$name'" "$(cat mount.err)"
    fi
done

# A name that names another snapshot after a tree change reads the new one, though a file
# opened before is still open (each open(2) its own image): delete s1, create s1 again.
mkdir -p re/m
qemu-img create -f raw re/d.raw 8M >/dev/null && qemu-io -f raw -c "write -P 0x11 0 64k" re/d.raw >/dev/null
q create re/d.raw s0 >/dev/null && qemu-io -f qcow2 -c "write -P 0x22 0 64k" "$(q current re/d.raw --path)" >/dev/null &&
    q create re/d.raw s1 >/dev/null && q branch re/d.raw side --at s1 >/dev/null &&
    qemu-io -f qcow2 -c "write -P 0x33 0 64k" "$(q current re/d.raw --path)" >/dev/null || bad "rename setup" "failed"
if q mount re/d.raw re/m 2>mount.err; then
    exec 7<re/m/s1.raw
    old=$(head -c 1 <&7 | od -An -tx1 | tr -d ' ')
    q delete re/d.raw s1 >/dev/null && q create re/d.raw s1 >/dev/null || bad "delete and create s1" "failed"
    new=$(head -c 1 re/m/s1.raw | od -An -tx1 | tr -d ' ')
    exec 7<&-
    [ "$old" = 22 ] && [ "$new" = 33 ] && ok "an open of s1.raw after s1 was made again reads the new s1 while an older open is still there" ||
        bad "s1 made again" "old open read $old, new open read $new (want 22, 33)"
    q umount re/m
else
    bad "mount for the rename case" "$(cat mount.err)"
fi

# Errors.
q mount disk.raw "$W/nowhere" >/dev/null 2>err.out
rc=$?
[ $rc = 6 ] && ok "mount on a missing directory: exit 6" || bad "missing dir" "exit $rc: $(cat err.out)"
q mount "$W/none.raw" m >/dev/null 2>err.out
rc=$?
[ $rc = 6 ] && ok "mount of a missing disk: exit 6" || bad "missing disk" "exit $rc: $(cat err.out)"

ts_end
