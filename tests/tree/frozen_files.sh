#!/bin/bash
# Files every state reads, changed behind qsnap's back (docs/ROBUSTNESS.md):
#   - a state file (create --state FILE): the store keeps its own read-only
#     copy, so the next save to the same path (written in place, O_TRUNC on
#     the same inode) or a rename of FILE changes no snapshot's state; a
#     write into the store's copy is found by verify (fingerprint), and a
#     state file an older qsnap hard-linked (simulated with ln) is named by
#     verify and given its own copy by --repair; the metadata of a store
#     without such records stays version 3 (older qsnap versions read it);
#   - the disk's own backing chain (base.raw <- d.qcow2): fingerprinted when
#     the store is made, not made read-only; a write to base.raw is refused
#     by export, diff and create (exit 4, naming it) and found by verify; a
#     touch alone (same bytes) is recorded again by verify --repair;
#   - a frozen layer (the raw disk) truncated or with one byte changed:
#     export and diff exit 4 naming it and write nothing; list still works;
#   - an older qsnap (store version 3: given as QSNAP_OLD, or built from
#     git commit fec0728): it refuses a version 4 store naming the version,
#     and a store it made with a hard-linked state file opens in this build
#     (verify names the shared inode, --repair copies it); one on a disk with
#     a backing file has no records of it (verify says so, exit 0), which
#     verify --repair takes.
# Exported content is compared with qemu-img (compare) or qemu-io patterns.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path      the qsnap binary (default build/release/qsnap)
#   QSNAP_OLD=path  an older qsnap (store version 3) to check against
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
SRC=$(pwd)
ts_init frozen qemu-img qemu-io cmp

state_of() { q info "$1" "$2" | sed -n 's/^state file: *//p'; }
ino() { stat -c %i "$1"; }

# ---- state files ------------------------------------------------------------
mkdir st && cd st || exit 2
truncate -s 8M d.raw
q create d.raw s0 >/dev/null || bad setup "create s0"
[ "$(head -c 14 d.raw.qsnap/meta)" = "qsnap-store 3" ] &&
    ok "a store without state files or backing chain keeps meta version 3" ||
    bad "meta version 3" "$(head -c 14 d.raw.qsnap/meta)"
echo "saved state of monday" >vm.save
q create d.raw monday --state vm.save >/dev/null || bad setup "create monday"
echo "saved state of tuesday" >vm.save # in place: the same inode
q create d.raw tuesday --state vm.save >/dev/null || bad setup "create tuesday"
mon=$(state_of d.raw monday)
tue=$(state_of d.raw tuesday)
[ "$(cat "$mon")" = "saved state of monday" ] && [ "$(cat "$tue")" = "saved state of tuesday" ] &&
    ok "the next save to the same path changes no earlier snapshot's state" ||
    bad "state after a save in place" "monday: $(cat "$mon"), tuesday: $(cat "$tue")"
[ "$(ino "$mon")" != "$(ino vm.save)" ] && [ "$(ino "$tue")" != "$(ino vm.save)" ] &&
    [ "$(stat -c %h vm.save)" = 1 ] && ok "the store's copies are files of their own" ||
    bad "own inode" "links of vm.save: $(stat -c %h vm.save)"
[ "$(stat -c %a "$mon")" = 444 ] && [ "$(stat -c %a "$tue")" = 444 ] &&
    ok "the store's copies are read-only" || bad "copy mode" "$(stat -c %a "$mon")"
[ "$(stat -c %a vm.save)" = 644 ] && [ "$(cat vm.save)" = "saved state of tuesday" ] &&
    ok "the user's file is left as it was" || bad "user file" "$(stat -c %a vm.save)"
[ "$(head -c 14 d.raw.qsnap/meta)" = "qsnap-store 4" ] &&
    ok "a store with a state file's record has meta version 4" ||
    bad "meta version 4" "$(head -c 14 d.raw.qsnap/meta)"
mv vm.save moved.save && echo "another" >vm.save
[ "$(cat "$tue")" = "saved state of tuesday" ] && q verify d.raw >/dev/null &&
    ok "a rename of the user's file changes nothing; verify ok" || bad "after mv" "$(cat "$tue")"
# Dry run: says it copies.
q create d.raw wed --state vm.save --dry-run | grep -q "copy state file" &&
    ok "the dry run says the state file is copied" || bad "dry run" "no 'copy state file' step"

# A write into the store's copy: verify names it (and only it).
cp -p "$mon" mon.keep
chmod u+w "$mon" && echo "tampered" >>"$mon"
q verify d.raw >out 2>err
rc=$?
n=$(grep -c '^problem' out)
[ $rc = 4 ] && grep -q "state file of monday was modified after it was attached" out &&
    grep -q "state file of monday is writable" out && [ "$n" = 2 ] &&
    ok "verify finds a state file changed after it was attached (exit 4)" ||
    bad "verify modified state" "rc $rc, $n problems: $(cat out)"
q verify d.raw --repair >out 2>&1
[ "$(stat -c %a "$mon")" = 444 ] && grep -q "was modified after it was attached" out &&
    ok "verify --repair makes it read-only again, and still reports the change" ||
    bad "repair modified state" "$(cat out)"
chmod u+w "$mon" && cp mon.keep "$mon" && touch -r mon.keep "$mon" && chmod a-w "$mon"
q verify d.raw >/dev/null && ok "the state file put back: verify ok" || bad "restore" "verify fails"

# A state file an older qsnap hard-linked: named by verify, given its own copy by --repair.
echo "old state" >old.save
chmod u+w "$tue" && rm -f "$tue" && ln old.save "$tue"
q verify d.raw >out 2>&1
rc=$?
[ $rc = 4 ] && grep -q "shares its inode with a file outside the store" out &&
    ok "a hard-linked state file (older qsnap) is named by verify" ||
    bad "old link" "rc $rc: $(cat out)"
q list d.raw >/dev/null && q create d.raw thu >/dev/null &&
    ok "a store with a hard-linked state file still works" ||
    bad "old link use" "list or create failed"
q verify d.raw --repair >out 2>&1
rc=$?
echo "overwritten" >old.save
[ $rc = 0 ] && [ "$(cat "$tue")" = "old state" ] && [ "$(ino "$tue")" != "$(ino old.save)" ] &&
    [ "$(stat -c %a "$tue")" = 444 ] && q verify d.raw >/dev/null &&
    ok "verify --repair gives it its own read-only copy" ||
    bad "repair old link" "rc $rc: $(cat out)"
cd "$W" || exit 2

# ---- the disk's own backing chain ----------------------------------------------
mkdir bc && cd bc || exit 2
qemu-img create -q -f raw base.raw 16M
qemu-io -f raw -c 'write -P 0x11 0 1M' base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw d.qcow2
qemu-io -f qcow2 -c 'write -P 0x22 1M 64k' d.qcow2 >/dev/null
qemu-img convert -O raw d.qcow2 ref.raw
q create d.qcow2 s0 >/dev/null || bad setup "create s0 on a disk with a backing file"
[ "$(stat -c %a base.raw)" = 644 ] && ok "the disk's backing file keeps its mode" ||
    bad "backing mode" "$(stat -c %a base.raw)"
q export d.qcow2 s0 before.raw >/dev/null && qemu-img compare -q ref.raw before.raw &&
    ok "export of s0 matches qemu-img convert of the disk" || bad "export s0" "differs"
cp base.raw base.keep && touch -r base.raw base.keep
qemu-io -f raw -c 'write -P 0x99 0 4k' base.raw >/dev/null
q export d.qcow2 s0 after.raw >out 2>err
rc=$?
[ $rc = 4 ] && grep -q "base.raw: a file of the disk's own backing chain was modified" err &&
    grep -q "qsnap verify" err && [ ! -e after.raw ] &&
    ok "export through a changed backing file of the disk: exit 4, naming it" ||
    bad "export changed base" "rc $rc: $(cat err)"
q diff d.qcow2 s0 main >out 2>err
rc=$?
[ $rc = 4 ] && grep -q base.raw err && ok "diff: exit 4" || bad "diff changed base" "rc $rc"
q create d.qcow2 s1 >out 2>err
rc=$?
[ $rc = 4 ] && grep -q base.raw err && ok "create: exit 4" || bad "create changed base" "rc $rc"
q verify d.qcow2 >out 2>err
rc=$?
[ $rc = 4 ] && grep -q "base.raw (a file of the disk's own backing chain) was modified" out &&
    [ "$(grep -c '^problem' out)" = 1 ] && ok "verify finds it (exit 4, one problem)" ||
    bad "verify changed base" "rc $rc: $(cat out)"
q list d.qcow2 >/dev/null && ok "list still works" || bad "list" "fails"
# Put back with another time: the same bytes; --repair records the new time.
cp base.keep base.raw
q create d.qcow2 s1 >/dev/null 2>&1 && bad "touched base" "create did not refuse" ||
    ok "a touched backing file (same bytes): create refuses"
q verify d.qcow2 >out 2>&1
rc=$?
[ $rc = 4 ] && grep -q "new file times" out && ok "verify says only its times changed" ||
    bad "verify touched" "rc $rc: $(cat out)"
q verify d.qcow2 --repair >/dev/null && q verify d.qcow2 >/dev/null &&
    q create d.qcow2 s1 >/dev/null && q export d.qcow2 s0 again.raw >/dev/null &&
    qemu-img compare -q ref.raw again.raw &&
    ok "verify --repair records it again; create and export work, content as before" ||
    bad "repair touched" "failed"
cd "$W" || exit 2

# ---- a frozen layer changed: export and diff --------------------------------
mkdir ex && cd ex || exit 2
truncate -s 16M disk.raw
qemu-io -f raw -c 'write -P 0x11 0 1M' disk.raw >/dev/null
q create disk.raw s1 >/dev/null || bad setup "create s1"
qemu-io -f qcow2 -c 'write -P 0x22 1M 1M' "$(q current disk.raw --path)" >/dev/null
q create disk.raw s2 >/dev/null || bad setup "create s2"
q export disk.raw s2 good.raw >/dev/null &&
    ! qemu-io -f raw -c 'read -P 0x11 0 1M' -c 'read -P 0x22 1M 1M' good.raw | grep -q "fail" &&
    ok "export before: the snapshot's data" || bad "export before" "patterns differ"
cp disk.raw disk.keep && touch -r disk.raw disk.keep
chmod u+w disk.raw
printf '\x55' | dd of=disk.raw bs=1 seek=100 conv=notrunc status=none
for cmd in "export disk.raw s2 out.raw" "diff disk.raw s1 s2"; do
    q $cmd >out 2>err
    rc=$?
    [ $rc = 4 ] && grep -q "disk.raw: frozen layer was modified after it was frozen" err &&
        grep -q "qsnap verify" err && [ ! -e out.raw ] &&
        ok "one byte of the frozen disk changed: '${cmd%% *}' exits 4 naming it" ||
        bad "${cmd%% *} after a byte changed" "rc $rc: $(cat err)"
done
truncate -s 0 disk.raw
for cmd in "export disk.raw s2 out.raw" "diff disk.raw s1 s2"; do
    q $cmd >out 2>err
    rc=$?
    [ $rc = 4 ] && grep -q "disk.raw: frozen layer was modified" err && [ ! -e out.raw ] &&
        ok "the frozen disk truncated: '${cmd%% *}' exits 4" ||
        bad "${cmd%% *} after truncation" "rc $rc: $(cat err)"
done
q list disk.raw >/dev/null && ok "list still works" || bad "list after damage" "fails"
cp -p disk.keep disk.raw && chmod a-w disk.raw
q export disk.raw s2 back.raw >/dev/null && cmp -s good.raw back.raw &&
    ok "put back: export works again, the same image" || bad "export after restore" "fails"
cd "$W" || exit 2

# ---- an older qsnap (store version 3) -------------------------------------------
OLD=${QSNAP_OLD:-}
if [ -z "$OLD" ] && git -C "$SRC" cat-file -e fec0728^{commit} 2>/dev/null; then
    mkdir old-src
    if git -C "$SRC" archive fec0728 | tar -x -C old-src &&
        env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD -u MOREFLAGS -u CFLAGS -u LDFLAGS -u CC \
            make -C old-src -j2 BUILD=build/release build/release/qsnap \
                >"$W/old-build.log" 2>&1; then
        OLD=$W/old-src/build/release/qsnap
    else
        bad "older build" "cannot build fec0728: $(tail -3 "$W/old-build.log" | tr '\n' ' ')"
    fi
fi
if [ -n "$OLD" ]; then
    out=$("$OLD" list st/d.raw 2>&1)
    rc=$?
    [ $rc = 4 ] && echo "$out" | grep -q "unknown store version 4" &&
        ok "an older qsnap refuses a version 4 store, naming the version" ||
        bad "older list" "exit $rc: $(echo "$out" | head -1)"
    "$OLD" list ex/disk.raw >/dev/null 2>&1 &&
        ok "an older qsnap reads a store this build changed that has no records (version 3)" ||
        bad "older on version 3" "list failed"
    mkdir old && cd old || exit 2
    truncate -s 8M d.raw
    echo "old monday" >vm.save
    "$OLD" create d.raw mon --state vm.save >/dev/null 2>&1
    mon=$(state_of d.raw mon)
    [ "$(ino "$mon")" = "$(ino vm.save)" ] &&
        [ "$(head -c 14 d.raw.qsnap/meta)" = "qsnap-store 3" ] ||
        bad "older create --state" "not a hard-linked state in a version 3 store"
    q list d.raw >/dev/null && ok "a version 3 store with a hard-linked state file opens" ||
        bad "open older store" "list failed"
    q verify d.raw >out 2>&1
    rc=$?
    [ $rc = 4 ] && grep -q "shares its inode with a file outside the store" out &&
        ok "verify names the older hard link" || bad "verify older link" "rc $rc: $(cat out)"
    q verify d.raw --repair >/dev/null 2>&1
    echo "new monday" >vm.save
    [ "$(cat "$mon")" = "old monday" ] && q verify d.raw >/dev/null &&
        [ "$(head -c 14 d.raw.qsnap/meta)" = "qsnap-store 4" ] &&
        ok "verify --repair gives it its own copy (the store becomes version 4)" ||
        bad "repair older link" "$(cat "$mon")"
    # A disk with a backing file, its store made by the older qsnap: no records yet.
    qemu-img create -q -f raw base.raw 16M
    qemu-io -f raw -c 'write -P 0x11 0 1M' base.raw >/dev/null
    qemu-img create -q -f qcow2 -b base.raw -F raw d.qcow2
    "$OLD" create d.qcow2 s0 >/dev/null 2>&1
    q verify d.qcow2 >out 2>&1
    rc=$?
    [ $rc = 0 ] && grep -q "^ok: .*has no fingerprints (a store made by an older qsnap)" out &&
        ok "verify says an older store's disk chain has no fingerprints (exit 0)" ||
        bad "verify older chain" "rc $rc: $(cat out)"
    q verify d.qcow2 --repair >/dev/null 2>&1
    qemu-io -f raw -c 'write -P 0x99 0 4k' base.raw >/dev/null
    q export d.qcow2 s0 o.raw >/dev/null 2>err
    rc=$?
    q verify d.qcow2 >out 2>&1
    [ $rc = 4 ] && [ ! -e o.raw ] &&
        grep -q "base.raw (a file of the disk's own backing chain) was modified" out &&
        ok "verify --repair records it; a later write to it is refused and found" ||
        bad "older chain recorded" "export rc $rc: $(cat out)"
    cd "$W" || exit 2
else
    echo "skipped: no older qsnap (set QSNAP_OLD, or run in a git checkout that has fec0728)"
fi

ts_end
