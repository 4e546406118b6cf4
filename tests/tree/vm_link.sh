#!/bin/bash
# The VM path layers/current.qcow2 in a store someone else can write to.
#   - layers/ swapped for a link to a copy of it: create exits 4 naming it,
#     and nothing is written into the copy (its files and listing unchanged).
#   - current.qcow2 a link to the bare name of another layer of the store:
#     list accepts it (exit 0), verify reports it (4), --repair points it at
#     the current head again (readlink = the head's name), verify is clean.
#   - current.qcow2 re-pointed at another branch's head (main's, b current):
#     create, its dry run, revert, switch, branch create/rename/delete,
#     delete and commit exit 4 naming the VM path; nothing in the store
#     changed (listing with inodes and times, checksums); verify --repair
#     re-points it and create then works.
#   - current.qcow2 a link to anything else (an absolute path, ../.., a bare
#     name that is no layer): every command exits 4 naming the VM path, the
#     target is unchanged; verify --repair re-points it (exit 0), then list
#     exits 0.
#   - a regular file at current.qcow2: commands exit 4, verify --repair
#     leaves it (exit 4) byte-for-byte.
#   - a leftover layers/.tmp-current (a link to a victim): list still works,
#     verify reports it, verify --repair removes it; the victim is unchanged.
#   - a kill (strace inject SIGKILL) at the rename of the VM path's new link
#     over the old one: .tmp-current is left with a journal; verify --repair
#     exits 0, then verify exits 0, .tmp-current is gone and the VM path
#     names the current head.
#   - a layer with a second hard link (to a file outside the store):
#     create and commit exit 4 naming it; the outside file is unchanged.
#   - a disk with its own backing chain outside the store: create, export
#     (reads the chain's data) and verify work, the chain is unchanged; a
#     head whose backing name was edited to a link outside the store is
#     refused by commit (exit 4).
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
ts_init vmlink qemu-img qemu-io cmp strace
one() { echo "$1" | head -2 | tr '\n' ' '; }

# The template: raw disk, s1 and s2 on main (dirty head), so layers/ holds
# a frozen layer and the head.
mkdir tpl && cd tpl || exit 2
qemu-img create -f raw disk.raw 8M >/dev/null
q create disk.raw s1 >/dev/null || { bad setup "create s1"; ts_end; exit 1; }
qemu-io -f qcow2 -c "write -P 7 0 64k" "$(q current disk.raw --head)" >/dev/null
q create disk.raw s2 >/dev/null || bad setup "create s2"
qemu-io -f qcow2 -c "write -P 9 64k 64k" "$(q current disk.raw --head)" >/dev/null
q verify disk.raw >/dev/null || bad setup "template not clean"
cd "$W" || exit 2
S=disk.raw.qsnap
L=case/$S/layers
fresh() { rm -rf case; cp -a tpl case; }
head_name() { basename "$(cd case && q current disk.raw --head)"; }
other_layer() { ls -1 "$L" | grep -E '^[0-9]+\.qcow2$' | grep -vx "$(head_name)" | head -1; }

printf 'victim text\n' >victim.txt
cp victim.txt victim.orig

# layers/ swapped for a link to a copy of it: refused before any write.
fresh
mv $L case/$S/layers.copy && ln -s "$W/case/$S/layers.copy" $L
(cd case/$S/layers.copy && ls -la --time-style=+%s . | grep -v "^total " && md5sum -- *) >before.txt 2>&1
out=$(cd case && q create disk.raw s3 2>&1); rc=$?
(cd case/$S/layers.copy && ls -la --time-style=+%s . | grep -v "^total " && md5sum -- *) >after.txt 2>&1
if [ $rc -eq 4 ] && echo "$out" | grep -q "layers: is a symbolic link" && cmp -s before.txt after.txt &&
    [ ! -e case/$S/journal ]; then
    ok "a linked layers/ is refused before any write"
else
    bad "linked layers/" "exit $rc, $(one "$out") $(diff before.txt after.txt | head -3 | tr '\n' ' ')"
fi

# A link to another layer's bare name: accepted; verify --repair re-points it.
fresh
o=$(other_layer)
ln -sfn "$o" $L/current.qcow2
(cd case && q list disk.raw >/dev/null 2>&1); rc1=$?
(cd case && q verify disk.raw >/dev/null 2>&1); rc2=$?
(cd case && q verify --repair disk.raw >/dev/null 2>&1); rc3=$?
(cd case && q verify disk.raw >/dev/null 2>&1); rc4=$?
got=$(readlink $L/current.qcow2)
if [ -n "$o" ] && [ $rc1 -eq 0 ] && [ $rc2 -eq 4 ] && [ $rc3 -eq 0 ] && [ $rc4 -eq 0 ] &&
    [ "$got" = "$(head_name)" ]; then
    ok "a VM path to another layer is accepted and re-pointed by --repair"
else
    bad "VM path to another layer ($o)" "list $rc1, verify $rc2, repair $rc3, verify $rc4, link $got"
fi

# A link re-pointed at another branch's head (main's, b current): every command that
# changes files refuses (exit 4, naming the VM path) and changes nothing; --repair
# re-points it, then create goes through.
fresh
(cd case && q revert disk.raw s1 --branch b >/dev/null 2>&1) || bad setup "revert to b"
mh=$(cd case && basename "$(q info disk.raw main | sed -n 's/^file: *//p')")
ln -sfn "$mh" $L/current.qcow2
store_state() {
    (cd case/$S && find . -printf '%p %y %i %s %T@ %l\n' | sort && md5sum -- * layers/*)
}
store_state >before.txt 2>&1
allok=1
for c in "create disk.raw s3" "create disk.raw s3 --dry-run" "revert disk.raw s2 --branch y" \
    "switch disk.raw main" "branch disk.raw c --at s1" "branch disk.raw -m main m2" \
    "branch disk.raw -d main --force" "delete disk.raw s2" "commit disk.raw main"; do
    out=$(cd case && q $c 2>&1); rc=$?
    if [ $rc -ne 4 ] ||
        ! echo "$out" | grep -q "current.qcow2: the VM path .*does not point at the current"; then
        allok=0; echo "# $c: exit $rc: $(one "$out")"
    fi
done
store_state >after.txt 2>&1
(cd case && q verify --repair disk.raw >/dev/null 2>&1); rc1=$?
got=$(readlink $L/current.qcow2)
(cd case && q create disk.raw s3 >/dev/null 2>&1); rc2=$?
if [ $allok = 1 ] && cmp -s before.txt after.txt && [ "$got" != "$mh" ] && [ $rc1 -eq 0 ] &&
    [ $rc2 -eq 0 ] && [ "$(readlink $L/current.qcow2)" = "$(head_name)" ]; then
    ok "a VM path at another branch's head: operations refuse (exit 4), --repair re-points it"
else
    bad "VM path at another branch's head" \
        "$(diff before.txt after.txt | head -3 | tr '\n' ' ') repair $rc1, create $rc2, link $got"
fi

# A link to anything else: an integrity problem every command refuses; --repair re-points.
for target in "$W/victim.txt" "../../../victim.txt" "victim.txt" "../layers/$(cd tpl && basename "$(q current disk.raw --head)")"; do
    fresh
    ln -sfn "$target" $L/current.qcow2
    [ "$target" = victim.txt ] && cp victim.txt $L/../victim.txt 2>/dev/null
    out=$(cd case && q list disk.raw 2>&1); rc1=$?
    out2=$(cd case && q create disk.raw s3 2>&1); rc2=$?
    (cd case && q verify --repair disk.raw >/dev/null 2>&1); rc3=$?
    (cd case && q list disk.raw >/dev/null 2>&1); rc4=$?
    got=$(readlink $L/current.qcow2)
    if [ $rc1 -eq 4 ] && [ $rc2 -eq 4 ] && echo "$out$out2" | grep -q "current.qcow2" &&
        cmp -s victim.txt victim.orig && [ $rc3 -eq 0 ] && [ $rc4 -eq 0 ] && [ "$got" = "$(head_name)" ]; then
        ok "a VM path to '$target' is refused, --repair re-points it"
    else
        bad "VM path to '$target'" "list $rc1, create $rc2 ($(one "$out2")), repair $rc3, list $rc4, link $got"
    fi
done

# A regular file at the VM path: refused, and --repair leaves it.
fresh
rm -f $L/current.qcow2 && cp victim.txt $L/current.qcow2
out1=$(cd case && q list disk.raw 2>&1 >/dev/null); rc1=$?
out=$(cd case && q verify --repair disk.raw 2>&1); rc2=$?
if [ $rc1 -eq 4 ] && [ $rc2 -eq 4 ] && [ ! -L $L/current.qcow2 ] && cmp -s $L/current.qcow2 victim.orig &&
    echo "$out" | grep -q "a regular file where the VM path (a symbolic link) should be" &&
    echo "$out1" | grep -q "qsnap image compare FILE"; then
    ok "a regular file at the VM path is an integrity problem --repair leaves alone; the hint says to compare it first"
else
    bad "regular file at the VM path" "list $rc1, repair $rc2: $(one "$out")"
fi

# A leftover .tmp-current: commands still work; --repair removes it.
fresh
ln -s "$W/victim.txt" $L/.tmp-current
(cd case && q list disk.raw >/dev/null 2>&1); rc1=$?
(cd case && q verify disk.raw >/dev/null 2>&1); rc2=$?
(cd case && q verify --repair disk.raw >/dev/null 2>&1); rc3=$?
(cd case && q verify disk.raw >/dev/null 2>&1); rc4=$?
if [ $rc1 -eq 0 ] && [ $rc2 -eq 4 ] && [ $rc3 -eq 0 ] && [ $rc4 -eq 0 ] && [ ! -e $L/.tmp-current ] &&
    [ ! -L $L/.tmp-current ] && cmp -s victim.txt victim.orig; then
    ok "a leftover .tmp-current is reported and removed by --repair"
else
    bad "leftover .tmp-current" "list $rc1, verify $rc2, repair $rc3, verify $rc4"
fi
fresh
ln -s "$W/victim.txt" $L/.tmp-current
(cd case && q create disk.raw s3 >/dev/null 2>&1); rc=$?
if [ $rc -eq 0 ] && [ ! -L $L/.tmp-current ] && [ "$(readlink $L/current.qcow2)" = "$(head_name)" ] &&
    cmp -s victim.txt victim.orig; then
    ok "a create over a leftover .tmp-current replaces it"
else
    bad "create over .tmp-current" "exit $rc, link $(readlink $L/current.qcow2)"
fi

# A kill between the new link and its rename over the VM path.
fresh
trace="trace=rename,renameat,renameat2"
(cd case && strace -f -qq -e "$trace" -o "$W/renames.txt" "$QSNAP" create disk.raw s3 >/dev/null 2>&1)
k=$(grep -E 'rename' renames.txt | grep -n 'tmp-current' | head -1 | cut -d: -f1)
fresh
if [ -z "$k" ]; then
    bad "kill at the VM path rename" "no rename of .tmp-current seen: $(head -3 renames.txt | tr '\n' ' ')"
else
    (cd case && strace -f -qq -o /dev/null -e "$trace" -e "inject=rename,renameat,renameat2:signal=SIGKILL:when=$k" \
        "$QSNAP" create disk.raw s3 >/dev/null 2>&1) 2>/dev/null
    left=no; [ -L $L/.tmp-current ] && left=yes
    (cd case && q verify --repair disk.raw >/dev/null 2>&1); rc1=$?
    (cd case && q verify disk.raw >/dev/null 2>&1); rc2=$?
    if [ $left = yes ] && [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && [ ! -L $L/.tmp-current ] &&
        [ ! -e case/$S/journal ] && [ "$(readlink $L/current.qcow2)" = "$(head_name)" ] &&
        (cd case && q info disk.raw s3 >/dev/null 2>&1); then
        ok "a kill between the VM path's link and its rename is repaired"
    else
        bad "kill at the VM path rename" "left $left, repair $rc1, verify $rc2, link $(readlink $L/current.qcow2)"
    fi
fi

# A layer with a second hard link: refused.
fresh
h=$(head_name)
ln $L/"$h" "$W/hardlink.qcow2"
cp "$W/hardlink.qcow2" hl.orig
out=$(cd case && q create disk.raw s3 2>&1); rc1=$?
out2=$(cd case && q commit disk.raw 2>&1); rc2=$?
(cd case && q verify disk.raw >/dev/null 2>&1); rc3=$?
if [ $rc1 -eq 4 ] && [ $rc2 -eq 4 ] && [ $rc3 -eq 4 ] && echo "$out" | grep -q "more than one hard link" &&
    cmp -s "$W/hardlink.qcow2" hl.orig; then
    ok "a hard-linked layer is refused"
else
    bad "hard-linked layer" "create $rc1 ($(one "$out")), commit $rc2, verify $rc3"
fi
rm -f "$W/hardlink.qcow2"

# A disk with its own backing chain outside the store (the user's files): the
# tree works over it, read-only; a head whose backing name is edited to an
# outside file (a link to the disk) is refused and the file it names is unchanged.
rm -rf chain && mkdir -p chain/elsewhere && cd chain || exit 2
qemu-img create -f raw elsewhere/base.raw 8M >/dev/null
qemu-io -f raw -c "write -P 5 0 64k" elsewhere/base.raw >/dev/null
cp elsewhere/base.raw base.orig
qemu-img create -f qcow2 -b "$PWD/elsewhere/base.raw" -F raw disk.qcow2 >/dev/null
if q create disk.qcow2 s1 >/dev/null 2>&1 &&
    qemu-io -f qcow2 -c "write -P 6 64k 64k" "$(q current disk.qcow2 --head)" >/dev/null &&
    q create disk.qcow2 s2 >/dev/null 2>&1 && q export disk.qcow2 s2 out.raw -O raw >/dev/null 2>&1 &&
    qemu-io -f raw -c "read -P 5 0 64k" -c "read -P 6 64k 64k" out.raw | grep -c '^read' | grep -qx 2 &&
    q verify disk.qcow2 >/dev/null 2>&1 && cmp -s elsewhere/base.raw base.orig; then
    ok "a disk with its own backing chain outside the store"
else
    bad "disk with its own chain" "$(q verify disk.qcow2 2>&1 | tail -2 | tr '\n' ' ')"
fi
printf 'victim text\n' >victim.txt && cp victim.txt victim.orig
ln -s "$PWD/disk.qcow2" e-disk
h=$(q current disk.qcow2 --head)
qemu-io -f qcow2 -c "write -P 8 0 4k" "$h" >/dev/null
qemu-img rebase -u -f qcow2 -b "$PWD/e-disk" -F qcow2 "$h"
out=$(q commit disk.qcow2 2>&1); rc=$?
if [ $rc -eq 4 ] && cmp -s victim.txt victim.orig && cmp -s elsewhere/base.raw base.orig; then
    ok "a head whose backing name was edited to a file outside the store is refused"
else
    bad "edited backing name of a head" "exit $rc: $(one "$out")"
fi
cd "$W" || exit 2

ts_end
