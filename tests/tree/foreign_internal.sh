#!/bin/bash
# Internal snapshots made outside qsnap in a store's file ('virsh
# snapshot-create-as' without --disk-only on a shut-off qcow2 domain, or
# 'qemu-img snapshot -c'): no tree operation drops, freezes or changes what
# they read.
#   - external create, branch -d, revert --discard and commit of a branch
#     whose head holds one exit 4 naming it, and change nothing (store
#     listing and checksums before/after); the snapshot still reads as made;
#   - a plain revert keeps that branch (even when clean) and says why;
#   - delete of the snapshot under such a head keeps its data as an unnamed
#     node (the head still reads the same through it), and --stream is
#     refused;
#   - verify names it (exit 4) in a head;
#   - once it is deleted ('qsnap image snapshot -d'), the operations work.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
ts_init forint qemu-io

listing() { (cd d.raw.qsnap && find . -type f -o -type l | grep -v '^./lock$' | sort | while read -r f; do
    printf '%s %s\n' "$f" "$(cat "$f" 2>/dev/null | md5sum | cut -c1-12)"; done); }

qemu-img create -f raw d.raw 8M >/dev/null
qemu-io -f raw -c "write -P 1 0 64k" d.raw >/dev/null
q create d.raw s1 >/dev/null || bad setup "create s1"
H=$(q current d.raw --path)
qemu-io -f qcow2 -c "write -P 2 64k 64k" "$H" >/dev/null
q create d.raw s2 >/dev/null || bad setup "create s2"
H=$(q current d.raw --path)
qemu-io -f qcow2 -c "write -P 3 128k 64k" "$H" >/dev/null
q branch d.raw side --at s1 >/dev/null || bad setup "branch side"
qemu-img snapshot -c foreign "$H" || bad setup "qemu-img snapshot -c"
qemu-io -f qcow2 -c "write -P 4 128k 64k" "$H" >/dev/null # the head moves on past it
qemu-img convert -l snapshot.name=foreign -O raw "$H" foreign_before.raw || bad setup "convert -l"

before=$(listing)
allok=1
for cmd in "create d.raw s3" "commit d.raw" "revert d.raw s1 --discard"; do
    q $cmd >/dev/null 2>err; rc=$?
    if [ $rc -ne 4 ] || ! grep -q "holds an internal snapshot that qsnap did not make (foreign" err; then
        allok=0; bad "'$cmd' with a foreign internal snapshot in the head" "exit $rc: $(head -c 300 err)"
    fi
done
after=$(listing)
q switch d.raw side >/dev/null || bad "switch to side" "exit $?"
before2=$(listing)
q branch -d d.raw main >/dev/null 2>err; rc=$?
if [ $rc -ne 4 ] || ! grep -q "deleting the branch would delete it" err; then
    allok=0; bad "branch -d of main" "exit $rc: $(head -c 300 err)"
fi
after2=$(listing)
[ $allok = 1 ] && ok "create, commit, revert --discard, branch -d: exit 4 naming the foreign snapshot" || true
q switch d.raw main >/dev/null || bad "switch back" "exit $?"
[ "$before" = "$after" ] && [ "$before2" = "$after2" ] && ok "the refused operations changed nothing" ||
    bad "store changed" "$(diff <(echo "$before") <(echo "$after") | head -4)"

out=$(q verify d.raw 2>&1); rc=$?
[ $rc -eq 4 ] && echo "$out" | grep -q "holds an internal snapshot that qsnap did not make (foreign)" &&
    ok "verify names it (exit 4)" || bad "verify" "exit $rc: $out"

# A plain revert keeps a clean branch whose head holds one, with the reason.
q revert d.raw s2 --branch clean >/dev/null || bad "revert to s2 --branch clean" "exit $?"
qemu-img snapshot -c foreign2 "$(q current d.raw --path)" || bad "snapshot -c foreign2" "exit $?"
out=$(q revert d.raw s1 2>&1); rc=$?
[ $rc -eq 0 ] && echo "$out" | grep -q "branch clean is kept (its head holds internal snapshots that qsnap did not make)" &&
    q info d.raw clean >/dev/null 2>&1 && ok "revert keeps a clean branch whose head holds it, and says why" ||
    bad "plain revert" "exit $rc: $out"
q switch d.raw clean >/dev/null && qemu-img snapshot -d foreign2 "$(q current d.raw --path)" &&
    q switch d.raw main >/dev/null || bad "switch main" "exit $?"

# Delete of s2 (main's base): its data stays for the head (an unnamed node); --stream refused.
q delete d.raw s2 --stream >/dev/null 2>err; rc=$?
[ $rc -eq 4 ] && grep -q "streaming this snapshot's data into its file" err &&
    ok "delete --stream into the head holding it: exit 4" || bad "delete --stream" "exit $rc: $(head -c 300 err)"
q delete d.raw s2 >/dev/null 2>err || bad "delete s2" "exit $?: $(head -c 300 err)"
H=$(q current d.raw --path)
qemu-img convert -U -l snapshot.name=foreign -O raw "$H" foreign_after.raw &&
    cmp -s foreign_before.raw foreign_after.raw && ok "after delete s2 the foreign snapshot reads as made" ||
    bad "foreign snapshot content after delete" "differs"

# delete --children of a subtree whose branch head holds one: refused, nothing changed.
q branch d.raw sub --at s1 >/dev/null && q switch d.raw sub >/dev/null &&
    qemu-io -f qcow2 -c "write -P 8 0 64k" "$(q current d.raw --path)" >/dev/null && q create d.raw t1 >/dev/null &&
    qemu-img snapshot -c subforeign "$(q current d.raw --path)" && q switch d.raw main >/dev/null ||
    bad "subtree setup" "failed"
before=$(listing)
q delete d.raw t1 --children --force >/dev/null 2>err; rc=$?
after=$(listing)
[ $rc -eq 4 ] && grep -q "subforeign" err && grep -q "deleting the subtree would delete it" err &&
    [ "$before" = "$after" ] && ok "delete --children --force of a subtree whose head holds one: exit 4, nothing changed" ||
    bad "delete --children" "exit $rc: $(head -c 300 err)"
q switch d.raw sub >/dev/null && qemu-img snapshot -d subforeign "$(q current d.raw --path)" &&
    q switch d.raw main >/dev/null && q branch -d d.raw sub >/dev/null || bad "subtree cleanup" "failed"

# qsnap image snapshot -d/-a on the head: the foreign one may go, the tree's own may not.
q create d.raw own --internal >/dev/null || bad "create --internal own" "failed"
H=$(q current d.raw --path)
before=$(listing)
q image snapshot -d own "$H" >/dev/null 2>err; rc1=$?
q image snapshot -a own "$H" >/dev/null 2>>err; rc2=$?
after=$(listing)
[ $rc1 -eq 1 ] && [ $rc2 -eq 1 ] && grep -q "is the tree's snapshot own" err && grep -q "qsnap delete .*d.raw own" err &&
    [ "$before" = "$after" ] && ok "image snapshot -d/-a of the tree's own internal snapshot in a head: refused, nothing written" ||
    bad "image snapshot of the tree's own" "exit $rc1/$rc2: $(head -c 300 err)"
q delete d.raw own >/dev/null || bad "delete own" "failed"

q image snapshot -d foreign "$H" || bad "qsnap image snapshot -d of the foreign one" "exit $?"
q create d.raw s3 >/dev/null 2>err && q verify d.raw >/dev/null 2>&1 &&
    ok "once it is deleted, create works and verify is clean" || bad "after deleting it" "$(head -c 300 err)"

# A qcow2 disk that holds an internal snapshot before its first create: frozen with it (said),
# kept readable; commit into that disk still works (its snapshot reads as before).
rm -rf q && mkdir q
qemu-img create -f qcow2 q/d.qcow2 8M >/dev/null && qemu-io -f qcow2 -c "write -P 5 0 64k" q/d.qcow2 >/dev/null &&
    qemu-img snapshot -c early q/d.qcow2 && qemu-img convert -l snapshot.name=early -O raw q/d.qcow2 early_before.raw ||
    bad "qcow2 disk setup" "failed"
out=$(q create q/d.qcow2 s1 2>&1); rc=$?
[ $rc -eq 0 ] && echo "$out" | grep -q "the disk's own internal snapshots (early) are frozen with it" &&
    ok "first create of a disk with an internal snapshot says it is frozen with it" || bad "first create" "exit $rc: $out"
qemu-io -f qcow2 -c "write -P 6 0 64k" "$(q current q/d.qcow2 --path)" >/dev/null
q commit q/d.qcow2 >/dev/null 2>err; rc=$?
qemu-img convert -U -l snapshot.name=early -O raw q/d.qcow2 early_after.raw
[ $rc -eq 0 ] && cmp -s early_before.raw early_after.raw && q verify q/d.qcow2 >/dev/null 2>&1 &&
    ok "commit into that disk works, and its snapshot reads as before" || bad "commit into the disk" "exit $rc: $(head -c 300 err)"

ts_end
