#!/bin/bash
# A store someone else can write to: a symbolic link (or a FIFO) planted
# where a store file should be, before each tree command.
#   For every kind of store file (meta, lock, journal, meta.tmp,
#   journal.tmp, the layers/ and state/ directories, a branch head, a
#   frozen layer, a state file, a temporary layer, the store directory
#   itself) and every tree command: the command exits 4 (an integrity
#   problem) and names the file, and the file the link points at is
#   byte-for-byte unchanged (cmp against a copy made before), as is its
#   mode. verify names the link (exit 4); verify --repair too, and writes
#   nothing through it.
#   A disk given through a link the user made: the store goes beside the
#   file the link resolves to, the metadata names that file, and every
#   command works through the link or the file alike.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
ts_init links qemu-img cmp

# The template store: snapshots s1 (with a state file) and s2, branch main
# (current, dirty) and branch side from s1.
mkdir tpl && cd tpl || exit 2
qemu-img create -f qcow2 disk.qcow2 8M >/dev/null
echo "vm memory" >mem.state
q create disk.qcow2 s1 --state mem.state >/dev/null || { bad setup "create s1"; ts_end; exit 1; }
qemu-io -f qcow2 -c "write -P 7 0 64k" "$(q current disk.qcow2 --path)" >/dev/null
q create disk.qcow2 s2 >/dev/null || bad setup "create s2"
qemu-io -f qcow2 -c "write -P 9 64k 64k" "$(q current disk.qcow2 --path)" >/dev/null
q branch disk.qcow2 side --at s1 >/dev/null || bad setup "branch side"
q verify disk.qcow2 >/dev/null || bad setup "template store not clean"
cd "$W" || exit 2
S=disk.qcow2.qsnap

head_of() { q current "$1" --head; }
frozen_of() { q info "$1" s2 --json 2>/dev/null | sed -n 's/.*"file": *"\([^"]*\)".*/\1/p' | head -1; }

# A victim outside the store for each kind: a qcow2 image for layers, text for the rest.
qemu-img create -f qcow2 victim.qcow2 8M >/dev/null
qemu-io -f qcow2 -c "write -P 3 0 128k" victim.qcow2 >/dev/null
printf 'victim text\n' >victim.txt
mkdir victim.dir && printf 'x' >victim.dir/f

# plant KIND DIR: replace the store file of that kind in case directory DIR
# with a link to a victim; prints the victim's path.
plant() {
    local kind=$1 d=$2 f
    case $kind in
    meta | lock) f=$d/$S/$kind; rm -f "$f"; ln -s "$W/victim.txt" "$f"; echo victim.txt ;;
    journal | meta.tmp | journal.tmp) ln -s "$W/victim.txt" "$d/$S/$kind"; echo victim.txt ;;
    layers-dir | state-dir)
        f=$d/$S/${kind%-dir}
        rm -rf "$f"; ln -s "$W/victim.dir" "$f"; echo victim.dir/f ;;
    head) f=$(cd "$d" && head_of disk.qcow2); rm -f "$f"; ln -s "$W/victim.qcow2" "$f"; echo victim.qcow2 ;;
    frozen) f=$d/$S/layers/$(cd "$d/$S/layers" && ls -1 | grep -E "^[0-9]+\.qcow2$" | sort -n | head -1)
        chmod u+w "$f"; rm -f "$f"; ln -s "$W/victim.qcow2" "$f"; echo victim.qcow2 ;;
    state) f=$(ls -1 "$d/$S"/state/* | head -1); rm -f "$f"; ln -s "$W/victim.txt" "$f"; echo victim.txt ;;
    tmp-layer) ln -s "$W/victim.qcow2" "$d/$S/layers/.tmp-99.qcow2"; echo victim.qcow2 ;;
    fifo-head) f=$(cd "$d" && head_of disk.qcow2); rm -f "$f"; mkfifo "$f"; echo victim.txt ;;
    store-dir) mv "$d/$S" "$d/real.qsnap"; ln -s real.qsnap "$d/$S"; echo victim.txt ;;
    esac
}

snap_victims() { cp -a victim.qcow2 v.qcow2.orig; cp -a victim.txt v.txt.orig; cp -a victim.dir/f v.f.orig; stat -c %a victim.qcow2 victim.txt victim.dir/f >v.modes; }
victims_same() {
    cmp -s victim.qcow2 v.qcow2.orig && cmp -s victim.txt v.txt.orig && cmp -s victim.dir/f v.f.orig &&
        [ "$(stat -c %a victim.qcow2 victim.txt victim.dir/f)" = "$(cat v.modes)" ]
}

kinds="meta lock journal meta.tmp journal.tmp layers-dir state-dir head frozen state tmp-layer fifo-head store-dir"
cmds=(
    "create disk.qcow2 s3"
    "create disk.qcow2 s3i --internal"
    "revert disk.qcow2 s1"
    "switch disk.qcow2 side"
    "branch disk.qcow2 b2 --at s2"
    "branch disk.qcow2 -d side --force"
    "delete disk.qcow2 s1"
    "commit disk.qcow2"
    "list disk.qcow2"
    "info disk.qcow2 s2"
    "diff disk.qcow2 s1 main"
    "du disk.qcow2"
    "why disk.qcow2 s1"
    "export disk.qcow2 s2 $W/out.img"
    "verify disk.qcow2"
    "verify --repair disk.qcow2"
)
snap_victims
n=0
for kind in $kinds; do
    for c in "${cmds[@]}"; do
        n=$((n + 1))
        rm -rf "$W/case" "$W/out.img"
        cp -a tpl "$W/case"
        plant "$kind" "$W/case" >/dev/null
        # shellcheck disable=SC2086
        out=$(cd "$W/case" && q $c 2>&1)
        rc=$?
        name="$kind: ${c/ disk.qcow2/}"
        if [ $rc -ne 4 ]; then
            bad "$name" "exit $rc, not 4: $(echo "$out" | tail -2 | tr '\n' ' ')"
        elif ! victims_same; then
            bad "$name" "the link's target changed"
        elif ! echo "$out" | grep -qE "symbolic link|not a regular file|a link or device"; then
            bad "$name" "the message does not name the link: $(echo "$out" | head -2 | tr '\n' ' ')"
        else
            ok "$name"
        fi
        # Restore the victims for the next case (a failure above is already counted).
        cp -a v.qcow2.orig victim.qcow2; cp -a v.txt.orig victim.txt; cp -a v.f.orig victim.dir/f
        chmod "$(sed -n 1p v.modes | cut -d' ' -f1)" victim.qcow2 2>/dev/null
    done
done

# verify names the planted file.
for kind in head frozen state meta.tmp layers-dir; do
    rm -rf case; cp -a tpl case
    plant $kind case >/dev/null
    out=$(cd case && q verify disk.qcow2 2>&1)
    rc=$?
    if [ $rc -eq 4 ] && echo "$out" | grep -qE "symbolic link|a link or device"; then
        ok "verify names a link at $kind"
    else
        bad "verify names a link at $kind" "exit $rc: $(echo "$out" | head -3 | tr '\n' ' ')"
    fi
done

# verify --repair: a leftover regular meta.tmp and journal.tmp are reported, then removed.
rm -rf case; cp -a tpl case
echo junk >case/$S/meta.tmp; echo junk >case/$S/journal.tmp
(cd case && q verify disk.qcow2 >/dev/null 2>&1); rc=$?
[ $rc -eq 4 ] && ok "verify reports meta.tmp and journal.tmp" || bad "verify reports tmp files" "exit $rc"
(cd case && q verify --repair disk.qcow2 >/dev/null 2>&1); rc=$?
if [ $rc -eq 0 ] && [ ! -e case/$S/meta.tmp ] && [ ! -e case/$S/journal.tmp ] &&
    (cd case && q verify disk.qcow2 >/dev/null 2>&1); then
    ok "verify --repair removes meta.tmp and journal.tmp"
else
    bad "verify --repair removes tmp files" "exit $rc"
fi

# A regular file qsnap did not make in layers/: the overlay 'virsh snapshot-create-as'
# puts beside the VM path (layers/current.s4, backed by the VM path, holding the VM's
# later writes). Every command that changes the tree refuses (exit 4, naming it) with
# nothing changed: a switch would change what it reads through; so does its --dry-run
# (text and --json: the plan, then the same refusal and exit status). verify names it;
# verify --repair leaves it (it holds the VM's data). Once it is merged into the head
# (qsnap image commit) and moved out, the commands work and the data is in the branch.
rm -rf fo; cp -a tpl fo
VMP=$W/fo/$S/layers/current.qcow2
qemu-img create -q -f qcow2 -b "$VMP" -F qcow2 "fo/$S/layers/current.s4" &&
    qemu-io -f qcow2 -c 'write -P 0x6d 2M 64k' "fo/$S/layers/current.s4" >/dev/null ||
    bad "foreign overlay setup" "qemu-img create or qemu-io failed"
before=$(cd fo && find . -printf '%p %s %m %T@\n' | sort; md5sum "$S"/meta "$S"/layers/*)
allok=1
for c in "create disk.qcow2 s9" "revert disk.qcow2 s1" "switch disk.qcow2 side" "delete disk.qcow2 s1" \
    "commit disk.qcow2" "branch disk.qcow2 nb" "branch disk.qcow2 -d side"; do
    for how in "" --dry-run "--dry-run --json"; do
        # shellcheck disable=SC2086
        out=$(cd fo && q $c $how 2>&1)
        rc=$?
        if [ $rc -ne 4 ] || ! echo "$out" | grep -q "layers/current.s4: a file qsnap did not make"; then
            bad "foreign overlay: qsnap $c $how" "exit $rc: $(echo "$out" | tail -2 | tr '\n' ' ')"
            allok=0
        fi
    done
done
after=$(cd fo && find . -printf '%p %s %m %T@\n' | sort; md5sum "$S"/meta "$S"/layers/*)
[ $allok = 1 ] && ok "a foreign overlay in layers/: every tree change and its --dry-run exit 4 naming it" || true
out=$(cd fo && q switch disk.qcow2 side --dry-run 2>/dev/null)
echo "$out" | grep -q "side" && ok "foreign overlay: the refused --dry-run still prints the plan" ||
    bad "foreign overlay: dry-run plan" "stdout: $(echo "$out" | head -3 | tr '\n' ' ')"
[ "$before" = "$after" ] && ok "foreign overlay: nothing changed by the refused commands" ||
    bad "foreign overlay: store changed" "$(diff <(echo "$before") <(echo "$after") | head -4)"
out=$(cd fo && q verify disk.qcow2 2>&1); rc=$?
[ $rc -eq 4 ] && echo "$out" | grep -q "current.s4: a file qsnap did not make" &&
    ok "verify names the foreign overlay (exit 4)" || bad "verify of a foreign overlay" "exit $rc: $out"
(cd fo && q verify --repair disk.qcow2 >/dev/null 2>&1); rc=$?
[ $rc -eq 4 ] && [ -f "fo/$S/layers/current.s4" ] && qemu-io -f qcow2 -r -c 'read -P 0x6d 2M 64k' \
    "fo/$S/layers/current.s4" >/dev/null 2>&1 && ok "verify --repair leaves the foreign overlay and its data" ||
    bad "verify --repair of a foreign overlay" "exit $rc, file $(ls "fo/$S/layers/")"
# An orphan layer of qsnap's own name (N.qcow2 with an id the metadata gave out, not named in
# it: a dropped layer's file left behind) still goes with --repair. One with an id not given
# out yet is newer than the metadata (lost changes, or put there): named, and left alone.
qemu-img create -q -f qcow2 "fo/$S/layers/2.qcow2" 8M
qemu-img create -q -f qcow2 "fo/$S/layers/999.qcow2" 8M
out=$(cd fo && q verify --repair disk.qcow2 2>&1)
[ -e "fo/$S/layers/999.qcow2" ] && [ -e "fo/$S/layers/2.qcow2" ] &&
    echo "$out" | grep -q "layers/999.qcow2: a layer file with an id the metadata has not given out yet" &&
    echo "$out" | grep -q "^problem: --repair refused: the metadata is older than layers/" &&
    ok "verify --repair names layers/999.qcow2 (an id not given out yet) and repairs nothing while it is there" ||
    bad "layers/999.qcow2" "$out"
rm -f "fo/$S/layers/999.qcow2"
out=$(cd fo && q verify --repair disk.qcow2 2>&1)
[ ! -e "fo/$S/layers/2.qcow2" ] && ok "without it, verify --repair removes qsnap's own orphan layers/2.qcow2" ||
    bad "orphan 2.qcow2" "not removed: $out"
if (cd fo && q image commit "$S/layers/current.s4" >/dev/null 2>&1) && mv "fo/$S/layers/current.s4" fo/ &&
    (cd fo && q verify disk.qcow2 >/dev/null 2>&1 && q create disk.qcow2 s9 >/dev/null 2>&1) &&
    (cd fo && q export disk.qcow2 s9 s9.raw >/dev/null 2>&1) &&
    qemu-io -f raw -r -c 'read -P 0x6d 2M 64k' fo/s9.raw >/dev/null 2>&1; then
    ok "foreign overlay merged with image commit and moved out: create works, the data is in the branch"
else
    bad "foreign overlay recovery" "$(cd fo && q verify disk.qcow2 2>&1 | tail -2)"
fi

# The disk through a link the user made: resolved, the store beside the file.
rm -rf dl && mkdir -p dl/real && cd dl || exit 2
qemu-img create -f raw real/vm.img 4M >/dev/null
ln -s real/vm.img link.img
if q create link.img a >/dev/null 2>&1 && [ -d real/vm.img.qsnap ] && [ ! -e link.img.qsnap ] &&
    grep -q "vm.img" real/vm.img.qsnap/meta && q list real/vm.img >/dev/null 2>&1 &&
    q create link.img b >/dev/null 2>&1 && q verify real/vm.img >/dev/null 2>&1; then
    ok "a disk given through a link: the store beside the file it resolves to"
else
    bad "disk through a link" "$(ls -R)"
fi
cd "$W" || exit 2

ts_end
