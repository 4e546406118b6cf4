#!/bin/bash
# Damaged stores: what a tree command does with a damaged file of its store.
#   Pre-flight: commit and delete whose plan reads or writes a damaged layer
#   (a head's refcount table entry flipped; a frozen layer's magic, version,
#   L1 offset or refcount table entry flipped with its size and time kept, as
#   bit rot leaves it) are refused with exit 4 before anything is written: the
#   message names the layer file and says "nothing was changed", the hint
#   names verify, and a listing of the disk and its store (names, kinds,
#   modes, sizes, md5 sums) is the same before and after. Damage found while
#   the plan is made (a frozen layer's time or size changed, a layer missing,
#   a head truncated) is refused the same way, without the "nothing was
#   changed" (no plan ran).
#   Repair advice: a head with damage check -r all cannot fix (an L1 entry
#   pointing past the end of the file) is not offered --repair (neither in its
#   line nor in the closing hint), --repair leaves the store as it was and
#   exits 4, and the way out it names (revert --discard) works; a head whose
#   refcount table entry is flipped is offered --repair, and after it verify
#   is clean.
#   A damaged journal: commands refuse naming DIR/journal ("journal is
#   damaged"); verify says the store verifies without it; verify --repair
#   sets it aside as journal.damaged-<time> (same bytes) and the store then
#   verifies and takes a snapshot. With a file the metadata does not name and
#   a frozen layer made writable as well, verify offers no --repair, and
#   verify --repair exits 4 with the store as it was.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path      the qsnap binary (default build/release/qsnap)
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
ts_init damaged_store python3 md5sum

# listing DIR: every entry under DIR with its kind, mode, size and (files) md5 sum.
listing() {
    (cd "$1" && find . -printf '%p %y %m %s %l\n' | sort && find . -type f -exec md5sum {} + | sort)
}

# flip FILE OFFSET: invert one byte (frozen layers are read-only: written after chmod).
flip() {
    chmod u+w "$1"
    python3 -c 'import sys
f = open(sys.argv[1], "r+b"); o = int(sys.argv[2], 0); f.seek(o); b = f.read(1)
f.seek(o); f.write(bytes([b[0] ^ 0xff]))' "$1" "$2"
}

# rot FILE OFFSET: the same, keeping the file's mode and modification time.
rot() {
    local m
    m=$(stat -c %a "$1")
    touch -r "$1" stamp
    flip "$1" "$2"
    chmod "$m" "$1"
    touch -r stamp "$1"
}

# The template: a raw disk, s1 (the disk), s2 (layers/3.qcow2), main's head
# (layers/5.qcow2) with changes on both.
mkdir tpl
truncate -s 8M tpl/d.raw
q image io -c 'write -P 0x11 0 1M' tpl/d.raw >/dev/null
q create tpl/d.raw s1 >/dev/null || { bad setup "create s1"; ts_end; exit 1; }
q image io -c 'write -P 0x22 1M 1M' tpl/d.raw.qsnap/layers/current.qcow2 >/dev/null
q create tpl/d.raw s2 >/dev/null || { bad setup "create s2"; ts_end; exit 1; }
q image io -c 'write -P 0x33 2M 1M' tpl/d.raw.qsnap/layers/current.qcow2 >/dev/null
[ -f tpl/d.raw.qsnap/layers/3.qcow2 ] && [ -f tpl/d.raw.qsnap/layers/5.qcow2 ] ||
    bad setup "layer files are not 3.qcow2 and 5.qcow2"

# refused NAME FILE DAMAGE ARG CMD...: in a copy of the template, damage FILE (a layer,
# relative to the store) with DAMAGE (flip OFFSET, rot OFFSET, trunc SIZE, rm), then CMD
# must exit 4 naming FILE, with the store as it was; with PLANNED set, the refusal is the
# pre-flight's: "nothing was changed" and a verify hint.
refused() {
    local name=$1 file=$2 how=$3 arg=$4
    shift 4
    rm -rf w && cp -a tpl w
    case $how in
    flip) flip "w/d.raw.qsnap/$file" "$arg" ;;
    rot) rot "w/d.raw.qsnap/$file" "$arg" ;;
    trunc) chmod u+w "w/d.raw.qsnap/$file" && truncate -s "$arg" "w/d.raw.qsnap/$file" ;;
    rm) rm -f "w/d.raw.qsnap/$file" ;;
    esac
    listing w >before
    q "$1" w/d.raw "${@:2}" >out 2>err
    local rc=$?
    listing w >after
    if [ $rc -ne 4 ]; then
        bad "$name" "exit $rc, not 4: $(head -c 300 err)"
    elif ! head -1 err | grep -q "$file"; then
        bad "$name" "the message does not name $file: $(head -1 err)"
    elif [ -n "${PLANNED:-}" ] && ! head -1 err | grep -q "nothing was changed"; then
        bad "$name" "the message does not say nothing was changed: $(head -1 err)"
    elif [ -n "${PLANNED:-}" ] && ! grep -q "hint: 'qsnap verify w/d.raw'" err; then
        bad "$name" "no verify hint: $(cat err)"
    elif ! cmp -s before after; then
        bad "$name" "the store changed: $(diff before after | head -5 | tr '\n' ' ')"
    else
        ok "$name"
    fi
}

# The head's refcount table entry 0 (the table is at cluster 1: 64 KiB).
PLANNED=1
refused "commit: head refcount table entry" layers/5.qcow2 flip 0x10003 commit
refused "delete s2: head refcount table entry" layers/5.qcow2 flip 0x10003 delete s2
# The frozen layer a commit writes into, and a delete streams from.
for c in "magic 0" "version 7" "l1_offset 43" "refcount_table 0x10003"; do
    set -- $c
    refused "commit: frozen layer $1 (bit rot)" layers/3.qcow2 rot "$2" commit
    refused "delete s2: frozen layer $1 (bit rot)" layers/3.qcow2 rot "$2" delete s2
done
PLANNED=
refused "commit: frozen layer modified" layers/3.qcow2 flip 0 commit
refused "commit: frozen layer truncated" layers/3.qcow2 trunc 65536 commit
refused "commit: frozen layer missing" layers/3.qcow2 rm - commit
refused "delete s2: head truncated" layers/5.qcow2 trunc 65536 delete s2

# ---- repair advice ----
rm -rf w && cp -a tpl w
flip w/d.raw.qsnap/layers/5.qcow2 0x30001
listing w >before
q verify w/d.raw >out 2>err
rc=$?
if [ $rc -ne 4 ] || ! grep -q 'layers/5.qcow2:.*--repair cannot fix' out ||
    grep -q 'layers/5.qcow2.*(--repair repairs them)' out || grep -q "verify w/d.raw --repair" err; then
    bad "unrepairable head: verify offers no --repair" "exit $rc: $(cat out err | tr '\n' ' ')"
else
    ok "unrepairable head: verify offers no --repair"
fi
q verify w/d.raw --repair >out 2>err
rc=$?
listing w >after
if [ $rc -ne 4 ] || ! cmp -s before after || ! grep -q 'layers/5.qcow2:.*--repair cannot fix' out; then
    bad "unrepairable head: verify --repair writes nothing" "exit $rc: $(diff before after | head -3) $(cat out)"
else
    ok "unrepairable head: verify --repair writes nothing"
fi
if q revert w/d.raw s2 --discard >/dev/null 2>err && q verify w/d.raw >/dev/null 2>>err; then
    ok "unrepairable head: the way out it names (revert --discard) works"
else
    bad "unrepairable head: the way out it names (revert --discard) works" "$(cat err)"
fi

rm -rf w && cp -a tpl w
flip w/d.raw.qsnap/layers/5.qcow2 0x10003
q verify w/d.raw >out 2>err
rc=$?
if [ $rc -ne 4 ] || ! grep -q 'layers/5.qcow2:.*(--repair repairs them)' out ||
    ! grep -q "verify w/d.raw --repair' fixes what it can" err; then
    bad "repairable head: verify offers --repair" "exit $rc: $(cat out err | tr '\n' ' ')"
elif ! q verify w/d.raw --repair >out 2>err || ! q verify w/d.raw >out 2>err; then
    bad "repairable head: verify offers --repair" "not clean after --repair: $(cat out err)"
else
    ok "repairable head: verify offers --repair, and it repairs"
fi

# ---- a damaged journal ----
rm -rf w && cp -a tpl w
printf 'garbage\n' >w/d.raw.qsnap/journal
q create w/d.raw s3 >out 2>err
rc=$?
if [ $rc -ne 4 ] || ! head -1 err | grep -q 'd.raw.qsnap/journal: journal is damaged' ||
    ! grep -q "hint: 'qsnap verify w/d.raw'" err; then
    bad "damaged journal: commands name it" "exit $rc: $(cat err)"
else
    ok "damaged journal: commands name it"
fi
q verify w/d.raw >out 2>err
rc=$?
if [ $rc -ne 4 ] || ! grep -q 'journal is damaged.*verifies without it (--repair sets it aside)' out; then
    bad "damaged journal: verify" "exit $rc: $(cat out err)"
else
    ok "damaged journal: verify says --repair sets it aside"
fi
q verify w/d.raw --repair >out 2>err
rc=$?
set -- w/d.raw.qsnap/journal.damaged-*
if [ $rc -ne 0 ] || [ -e w/d.raw.qsnap/journal ] || [ ! -f "$1" ] ||
    [ "$(cat "$1")" != garbage ] || ! grep -q 'set aside as' out; then
    bad "damaged journal: verify --repair sets it aside" "exit $rc: $(cat out err; ls w/d.raw.qsnap)"
elif ! q verify w/d.raw >/dev/null 2>err || ! q create w/d.raw s3 >/dev/null 2>>err; then
    bad "damaged journal: verify --repair sets it aside" "then: $(cat err)"
else
    ok "damaged journal: verify --repair sets it aside; verify and create then work"
fi

rm -rf w && cp -a tpl w
printf 'garbage\n' >w/d.raw.qsnap/journal
touch w/d.raw.qsnap/layers/9.qcow2
chmod u+w w/d.raw.qsnap/layers/3.qcow2
listing w >before
q verify w/d.raw >out 2>err
rc=$?
if [ $rc -ne 4 ] || ! grep -q 'journal is damaged.*does not verify without it' out ||
    grep -q "verify w/d.raw --repair' fixes" err; then
    bad "damaged journal, store not clean: verify" "exit $rc: $(cat out err)"
else
    ok "damaged journal, store not clean: verify offers no --repair"
fi
q verify w/d.raw --repair >out 2>err
rc=$?
listing w >after
if [ $rc -ne 4 ] || ! cmp -s before after || ! grep -q 'journal is damaged.*does not verify without it' out; then
    bad "damaged journal, store not clean: verify --repair changes nothing" \
        "exit $rc: $(diff before after | head -3) $(cat out)"
else
    ok "damaged journal, store not clean: verify --repair changes nothing"
fi

# An undamaged store still commits and deletes.
rm -rf w && cp -a tpl w
if q commit w/d.raw >/dev/null 2>err && q delete w/d.raw s2 >/dev/null 2>>err &&
    q verify w/d.raw >/dev/null 2>>err; then
    ok "undamaged: commit, delete s2, verify"
else
    bad "undamaged: commit, delete s2, verify" "$(head -3 err)"
fi

ts_end
