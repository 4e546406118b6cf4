#!/bin/bash
# nbdkit-qsnap-plugin with real NBD clients, over Unix sockets:
#   file=    nbdinfo's size and flags; nbdinfo --map and qemu-img map over NBD
#            agree with `qsnap image map` (data and zero, per byte); qemu-img
#            compare of nbd+unix:// against the image; can_fast_zero only
#            where the format has zero clusters (v3, raw), not for v2.
#   disk=    a snapshot (read-only: writes refused) and a branch copied with
#            nbdcopy equal `qsnap export`; qemu-io -f raw writes, write -z,
#            discard and FUA writes to a served branch land in its head (read
#            back by qsnap after the server stops), the snapshot below and
#            the other branch keep their content, qemu-img check is clean.
#   locks    while a branch is served writable, tree commands that touch its
#            head refuse with exit 5, qemu-io cannot open it and a second
#            nbdkit file=HEAD refuses with one line naming it once and a hint;
#            a read-only snapshot export still lets qemu-img read it.
#   parallel four nbdcopy clients at once reading a snapshot, each equal to
#            its export.
#   damaged  a bad header: nbdkit refuses to start, naming the file; a bad L2
#            entry: the read of that range fails with an error, the server
#            stays up and still serves the rest.
# Every server is started with a pid file and killed by pid on exit.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
set -u

BUILD=${BUILD:-build/release}
. "$(dirname "$0")/../helpers/nbd_setup.sh"
PLUGIN=${PLUGIN:-$BUILD/nbdkit-qsnap-plugin.so}
case $PLUGIN in /*) ;; *) PLUGIN=$(pwd)/$PLUGIN ;; esac

PIDS=""
# At exit: every server started, by its pid.
stop_all() {
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    for p in $PIDS; do for _ in $(seq 50); do alive "$p" || break; sleep 0.1; done; done
}
ts_atexit stop_all
nbd_setup nbd "$PLUGIN"
sanitizer_wrapper "$PLUGIN"
uri() { echo "nbd+unix:///?socket=$W/$1.sock"; }

# serve NAME PARAMS...: start nbdkit on $W/NAME.sock; its pid goes to PIDS.
serve() {
    local n=$1
    shift
    rm -f "$W/$n.sock" "$W/$n.pid"
    timeout -k 5 60 "$NBDKIT" -U "$W/$n.sock" -P "$W/$n.pid" "$PLUGIN" "$@" 2>"$W/$n.err" || return 1
    # The server writes its pid file once it has gone to the background.
    for _ in $(seq 100); do [ -s "$W/$n.pid" ] && break; sleep 0.05; done
    PIDS="$PIDS $(cat "$W/$n.pid")"
}
# stop NAME: kill the server by pid and wait until it has gone (it closes the image).
stop() {
    local p
    p=$(cat "$W/$1.pid" 2>/dev/null) || return 0
    kill "$p" 2>/dev/null
    for _ in $(seq 100); do alive "$p" || return 0; sleep 0.1; done
    return 1
}

# Maps as "start end data zero" lines, adjacent equal runs merged: from
# qemu-img-style JSON (qsnap image map, qemu-img map) and from nbdinfo --map --json.
norm_map() { # KIND FILE
    python3 - "$1" "$2" <<'EOF'
import json, sys
kind, path = sys.argv[1], sys.argv[2]
runs = []
for e in json.load(open(path)):
    if kind == "qemu":
        s, l, d, z = e["start"], e["length"], bool(e["data"]), bool(e["zero"])
    else:
        s, l, t = e["offset"], e["length"], e["type"]
        d, z = not (t & 1), bool(t & 2)
    if runs and runs[-1][1] == s and runs[-1][2:] == [d, z]:
        runs[-1][1] = s + l
    else:
        runs.append([s, s + l, d, z])
for r in runs:
    print(r[0], r[1], int(r[2]), int(r[3]))
EOF
}

# ---- images -----------------------------------------------------------------------
qemu-img create -q -f qcow2 img.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0x11 0 300k' -c 'write -P 0x22 5M 64k' -c 'write -z 8M 1M' \
    -c 'write -P 0x33 20M 1M' -c 'write -c -P 0x44 40M 64k' -c 'write -P 0x55 63M 1M' img.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b img.qcow2 -F qcow2 top.qcow2
qemu-io -f qcow2 -c 'write -P 0x66 5M 4k' -c 'write -z 20M 64k' -c 'discard 63M 64k' top.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 16M
truncate -s 16M raw.img

# ---- file= ------------------------------------------------------------------------
if serve top file="$W/top.qcow2" readonly=1; then
    ok "nbdkit qsnap file=top.qcow2 readonly=1 starts"
    nbdinfo --json "$(uri top)" >info.json 2>&1
    size=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["exports"][0]["export-size"])' info.json 2>/dev/null)
    want=$(qemu-img info --output=json -U top.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    [ "$size" = "$want" ] && ok "nbdinfo size $size = qemu-img info's" || bad "nbdinfo size" "$size, want $want"
    ro=$(python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["exports"][0]; print(e["is_read_only"], e["can_multi_conn"])' info.json 2>/dev/null)
    [ "$ro" = "True True" ] && ok "readonly=1: read-only, can_multi_conn" || bad "readonly flags" "$ro"
    nbdinfo --map --json "$(uri top)" >nbd.map 2>&1
    q image map -U --output=json top.qcow2 >qsnap.map
    norm_map nbd nbd.map >nbd.norm 2>/dev/null
    norm_map qemu qsnap.map >qsnap.norm
    if [ -s qsnap.norm ] && cmp -s nbd.norm qsnap.norm; then
        ok "nbdinfo --map agrees with qsnap image map ($(wc -l <qsnap.norm) runs)"
    else
        bad "nbdinfo --map" "$(diff nbd.norm qsnap.norm | head -5 | tr '\n' ' ')"
    fi
    qemu-img map --output=json "$(uri top)" >qemu.map 2>&1
    norm_map qemu qemu.map >qemu.norm 2>/dev/null
    if cmp -s qemu.norm qsnap.norm; then
        ok "qemu-img map over NBD agrees with qsnap image map"
    else
        bad "qemu-img map over NBD" "$(diff qemu.norm qsnap.norm | head -5 | tr '\n' ' ')"
    fi
    # The map has the runs it should: data at 5M from the top, zero at 20M.
    grep -q '^5242880 5308416 1 0$' qsnap.norm && grep -q ' 21037056 0 1$' qsnap.norm &&
        ok "the map shows the top's data and zero runs" || bad "map content" "$(head -20 qsnap.norm | tr '\n' ' ')"
    out=$(qemu-img compare -U "$(uri top)" top.qcow2 2>&1)
    [ $? = 0 ] && ok "qemu-img compare nbd+unix:// top.qcow2: identical" || bad "qemu-img compare" "$out"
    qemu-img convert -U -f qcow2 -O raw top.qcow2 top.raw
    nbdcopy "$(uri top)" copy.raw && cmp -s copy.raw top.raw && ok "nbdcopy of file= equals qemu-img convert" ||
        bad "nbdcopy file=" "differs"
    stop top
else
    bad "nbdkit qsnap file=top.qcow2" "$(cat top.err)"
fi

# A raw image with holes: the map comes from the file's holes.
truncate -s 8M holes.raw
qemu-io -f raw -c 'write -P 1 1M 64k' -c 'write -P 2 3M 192k' holes.raw >/dev/null
if serve holes file="$W/holes.raw" readonly=1; then
    nbdinfo --map --json "$(uri holes)" >nbd.map 2>&1
    q image map -U --output=json holes.raw >qsnap.map
    norm_map nbd nbd.map >nbd.norm 2>/dev/null
    norm_map qemu qsnap.map >qsnap.norm
    [ "$(grep -c ' 1 0$' qsnap.norm)" = 2 ] && cmp -s nbd.norm qsnap.norm &&
        ok "raw file=: nbdinfo --map agrees with qsnap image map (2 data runs)" ||
        bad "raw map" "$(diff nbd.norm qsnap.norm | head -5 | tr '\n' ' ')"
    stop holes
else
    bad "serve holes.raw" "$(cat holes.err)"
fi

fastzero() { # NAME FILE: nbdinfo's can_fast_zero for a writable export of FILE
    serve "$1" file="$W/$2" || { echo "start failed"; return; }
    nbdinfo --json "$(uri "$1")" | python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["can_fast_zero"])'
    stop "$1"
}
fz3=$(fastzero fz3 img.qcow2)
fz2=$(fastzero fz2 v2.qcow2)
fzr=$(fastzero fzr raw.img)
[ "$fz3 $fz2 $fzr" = "True False True" ] && ok "can_fast_zero: v3 yes, v2 no, raw yes" ||
    bad "can_fast_zero" "v3 $fz3, v2 $fz2, raw $fzr"

# ---- disk= (a tree) -----------------------------------------------------------------
cp img.qcow2 disk.qcow2
q create disk.qcow2 s1 >/dev/null || bad "qsnap create s1" "failed"
q branch disk.qcow2 other --at s1 >/dev/null || bad "qsnap branch other" "failed"
head=$(q info disk.qcow2 main --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["file"])')
qemu-io -f qcow2 -c 'write -P 0x77 1M 128k' "$head" >/dev/null
q export disk.qcow2 s1 s1.raw >/dev/null
q export disk.qcow2 main main.raw >/dev/null
q export disk.qcow2 other other.raw >/dev/null

if serve snap disk="$W/disk.qcow2" name=s1; then
    nbdcopy "$(uri snap)" snap.raw && cmp -s snap.raw s1.raw && ok "nbdcopy of snapshot s1 equals qsnap export" ||
        bad "nbdcopy s1" "differs from the export"
    ro=$(nbdinfo --json "$(uri snap)" | python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["is_read_only"])')
    [ "$ro" = True ] && ok "a snapshot is served read-only" || bad "snapshot read-only" "$ro"
    if qemu-io -f raw -c 'write -P 0x99 0 4k' "$(uri snap)" >w.out 2>&1 && ! grep -qi 'error\|fail\|read-only' w.out; then
        bad "write to a snapshot" "accepted: $(cat w.out)"
    else
        ok "a write to a served snapshot is refused"
    fi
    # Four clients at once.
    for i in 1 2 3 4; do nbdcopy "$(uri snap)" "par$i.raw" & done
    wait
    n=0
    for i in 1 2 3 4; do cmp -s "par$i.raw" s1.raw && n=$((n + 1)); done
    [ $n = 4 ] && ok "four nbdcopy clients at once read s1 exactly" || bad "parallel readers" "$n of 4 equal"
    # A shared lock: readers (qemu-img without -U) still open the snapshot's layer.
    layer=$(q info disk.qcow2 s1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["file"])')
    qemu-img info "$layer" >/dev/null 2>&1 && ok "a served snapshot's layer stays readable (shared lock)" ||
        bad "shared lock" "qemu-img info refused"
    stop snap
else
    bad "serve snapshot s1" "$(cat snap.err)"
fi

if serve br disk="$W/disk.qcow2" name=main; then
    nbdcopy "$(uri br)" br.raw && cmp -s br.raw main.raw && ok "nbdcopy of branch main equals qsnap export" ||
        bad "nbdcopy main" "differs from the export"
    ro=$(nbdinfo --json "$(uri br)" | python3 -c 'import json,sys; e=json.load(sys.stdin)["exports"][0]; print(e["is_read_only"], e["can_fua"], e["can_trim"], e["can_zero"], e["can_multi_conn"])')
    [ "$ro" = "False True True True True" ] && ok "a branch is writable: fua, trim, zero, multi-conn" ||
        bad "branch flags" "$ro"
    # Locks while served writable.
    q create disk.qcow2 s2 >lock.out 2>&1
    rc=$?
    [ $rc = 5 ] && ok "qsnap create while main is served: exit 5" || bad "create while served" "exit $rc: $(cat lock.out)"
    q commit disk.qcow2 main >lock.out 2>&1
    rc=$?
    [ $rc = 5 ] && ok "qsnap commit main while main is served: exit 5" || bad "commit while served" "exit $rc: $(cat lock.out)"
    qemu-io -f qcow2 -c 'read 0 4k' "$head" >lock.out 2>&1
    grep -qi 'lock' lock.out && ok "qemu-io cannot open the served head (lock)" || bad "qemu lock" "$(cat lock.out)"
    # A second server on the held head (file=) refuses to start: one line naming the
    # file once, and a hint.
    if serve held file="$head"; then
        bad "file= on a held head" "nbdkit started"
        stop held
    else
        [ "$(grep -c 'in use by another process' held.err)" = 1 ] &&
            [ "$(grep 'in use by another process' held.err | grep -o "$(basename "$head")" | wc -l)" = 1 ] &&
            grep -q 'hint: stop the program that uses it' held.err &&
            ok "file= on a held head: refused, the file named once, with a hint" ||
            bad "file= on a held head: message" "$(cat held.err)"
    fi
    # Writes through qemu-io over NBD: data, zeroes, discard, FUA.
    if qemu-io -f raw -c 'write -P 0x5c 3M 192k' -c 'write -f -P 0x5d 30M 4k' -c 'write -z 20M 1M' \
        -c 'discard 63M 64k' -c 'flush' "$(uri br)" >w.out 2>&1 && ! grep -qi 'error\|fail' w.out; then
        ok "qemu-io -f raw writes, write -z, discard and FUA write to the served branch"
    else
        bad "qemu-io writes" "$(cat w.out)"
    fi
    qemu-io -f raw -c 'read -P 0x5c 3M 192k' -c 'read -P 0x5d 30M 4k' -c 'read -P 0 20M 1M' "$(uri br)" >r.out 2>&1 &&
        ! grep -qi 'error\|fail\|mismatch' r.out && ok "the writes read back over NBD" || bad "read back" "$(cat r.out)"
    stop br || bad "stop" "nbdkit did not exit"
    q export disk.qcow2 main main2.raw >/dev/null
    qemu-io -f raw -c 'read -P 0x5c 3M 192k' -c 'read -P 0x5d 30M 4k' -c 'read -P 0 20M 1M' \
        -c 'read -P 0x77 1M 128k' main2.raw >r.out 2>&1 && ! grep -qi 'error\|fail\|mismatch' r.out &&
        ok "qsnap reads the NBD writes in branch main" || bad "qsnap export after writes" "$(cat r.out)"
    # Everything outside the written ranges is as before.
    python3 - main.raw main2.raw <<'EOF' && ok "nothing else of main changed" || bad "main elsewhere" "bytes outside the writes changed"
import sys
a = open(sys.argv[1], "rb").read(); b = bytearray(open(sys.argv[2], "rb").read())
M = 1 << 20
for s, l in ((3 * M, 192 << 10), (30 * M, 4096), (20 * M, M), (63 * M, 64 << 10)):
    b[s:s + l] = a[s:s + l]
sys.exit(0 if bytes(b) == a else 1)
EOF
    q export disk.qcow2 s1 s1b.raw >/dev/null && cmp -s s1.raw s1b.raw && ok "snapshot s1 unchanged" || bad "s1" "changed"
    q export disk.qcow2 other other2.raw >/dev/null && cmp -s other.raw other2.raw && ok "branch other unchanged" ||
        bad "other" "changed"
    out=$(qemu-img check "$head" 2>&1) && ok "qemu-img check of the head is clean" || bad "qemu-img check" "$out"
    q verify disk.qcow2 >v.out 2>&1 && ok "qsnap verify clean after serving" || bad "verify" "$(cat v.out)"
else
    bad "serve branch main" "$(cat br.err)"
fi

# An internal snapshot (kept in the head's snapshot table) is served as it was.
q create disk.qcow2 inner --internal >/dev/null 2>&1 || bad "create --internal" "failed"
q export disk.qcow2 inner inner.raw >/dev/null
qemu-io -f qcow2 -c 'write -P 0x78 1M 64k' "$head" >/dev/null
if serve inner disk="$W/disk.qcow2" name=inner; then
    nbdcopy "$(uri inner)" inner2.raw && cmp -s inner2.raw inner.raw &&
        ok "an internal snapshot served (read-only) equals its export" || bad "internal" "differs"
    stop inner
else
    bad "serve internal snapshot" "$(cat inner.err)"
fi

# A branch served with readonly=1 takes only a shared lock.
if serve brro disk="$W/disk.qcow2" name=main readonly=1; then
    qemu-img info "$head" >/dev/null 2>&1 && ok "readonly=1 on a branch: its head stays readable" ||
        bad "readonly branch" "qemu-img info refused"
    stop brro
else
    bad "serve main readonly=1" "$(cat brro.err)"
fi

# Errors at start: no such name, both file= and disk=.
serve nope disk="$W/disk.qcow2" name=nope && bad "unknown name" "nbdkit started" ||
    { grep -q "no snapshot or branch named 'nope'" nope.err && ok "an unknown name is refused with a message" ||
        bad "unknown name message" "$(cat nope.err)"; }

# ---- damaged images ---------------------------------------------------------------
cp img.qcow2 badhdr.qcow2
printf '\xff\xff\xff\xff' | dd of=badhdr.qcow2 bs=1 seek=4 conv=notrunc 2>/dev/null # version
if serve badhdr file="$W/badhdr.qcow2"; then
    bad "damaged header" "nbdkit started"
else
    grep -q 'badhdr.qcow2' badhdr.err && ok "a damaged header: nbdkit refuses to start, naming the file" ||
        bad "damaged header message" "$(cat badhdr.err)"
fi
cp img.qcow2 badl2.qcow2
# The L2 entry of guest offset 20M holds an unaligned host offset (a corruption for qemu
# too; an offset past the end of the file would read as zeroes, as in qemu).
python3 - badl2.qcow2 <<'EOF'
import struct, sys
f = open(sys.argv[1], "r+b")
h = f.read(48)
l1 = struct.unpack(">Q", h[40:48])[0]
f.seek(l1)
l2 = struct.unpack(">Q", f.read(8))[0] & ((1 << 56) - 512)
f.seek(l2 + 8 * (20 * 1024 * 1024 // 65536))
f.write(struct.pack(">Q", (1 << 63) | 0x50200))
EOF
if serve badl2 file="$W/badl2.qcow2" readonly=1; then
    if timeout 60 nbdcopy "$(uri badl2)" badl2.raw >c.out 2>&1; then
        bad "damaged L2" "nbdcopy succeeded"
    else
        ok "a damaged L2 entry: the copy fails with an error"
    fi
    p=$(cat badl2.pid)
    alive "$p" && ok "the server is still running" || bad "server" "died"
    qemu-io -f raw -r -c 'read -P 0x11 0 300k' "$(uri badl2)" >r.out 2>&1 && ! grep -qi 'error\|fail\|mismatch' r.out &&
        ok "and still serves the undamaged ranges" || bad "undamaged range" "$(cat r.out)"
    stop badl2
else
    bad "serve badl2" "$(cat badl2.err)"
fi

ts_end
