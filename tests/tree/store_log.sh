#!/bin/bash
# The store's change log (beside a version 3 meta file) under kill -9, and an
# older qsnap (store version 2) on a version 3 store.
#   Kills: for a change that appends a record to DISK.qsnap/meta.log (a
#   branch made) and for one that folds the log into meta (the log grown to
#   its bound first, so that the change rewrites meta and removes the log),
#   every write, fdatasync, fsync, renameat and unlinkat call of a normal
#   run is in turn the call at which strace kills qsnap. After each kill:
#   `verify --repair` exits 0, `verify` then exits 0, and the list of
#   branches is the one before the change or the one after it (never a
#   third), the same as `branch` lists it after a fresh open; a change
#   after that works.
#   Older build: when an older qsnap is given (QSNAP_OLD) or can be built
#   from the last commit of store version 2 (git, 1377950), its `verify` and
#   `list` on a version 3 store exit 4 with "unknown store version 3", and a
#   version 2 store it made (with a change log) is read by this build and
#   becomes version 3 at its first change.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path      the qsnap binary (default build/release/qsnap)
#   QSNAP_OLD=path  an older qsnap (store version 2) to check against
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
TS_TIMEOUT=120
SRC=$(pwd)
ts_init log strace cmp

# The template: a raw disk, a snapshot, a few branches (so the log has records).
mkdir tpl
truncate -s 4M tpl/d.raw
q create tpl/d.raw s1 >/dev/null || { bad setup "create"; ts_end; exit 1; }
for i in 1 2 3; do q branch tpl/d.raw "t$i" --at s1 >/dev/null; done
[ -s tpl/d.raw.qsnap/meta.log ] || bad setup "no meta.log after three changes"

# A template whose log is one change short of its bound: the next change
# (`branch knew`) folds it into meta. Filled by renames (no new files).
cp -a tpl fold
cur=t1
n=0
while [ $n -lt 3000 ]; do
    size=$(stat -c %s fold/d.raw.qsnap/meta.log 2>/dev/null || echo 0)
    if [ "$size" -gt 14000 ]; then
        rm -rf probe && cp -a fold probe
        q branch probe/d.raw knew --at s1 >/dev/null
        [ -e probe/d.raw.qsnap/meta.log ] || break
    fi
    n=$((n + 1))
    q branch fold/d.raw -m "$cur" "a-long-branch-name-to-fill-the-log-$n" >/dev/null || break
    cur=a-long-branch-name-to-fill-the-log-$n
done
rm -rf probe
if [ -s fold/d.raw.qsnap/meta.log ] && [ $n -lt 3000 ]; then
    ok "a template whose next change folds the log (after $n renames)"
else
    bad "fold template" "no change folded the log (n=$n)"
fi

branches() { q branch "$1" 2>/dev/null | sed 's/^[* ] *//' | awk '{ print $1 }' | sort | tr '\n' ' '; }

# kill_each TEMPLATE NAME: kill `branch knew` at each call of each kind.
kill_each() {
    local tpl=$1 name=$2 before after sc total nth got
    rm -rf case && cp -a "$tpl" case
    before=$(branches case/d.raw)
    q branch case/d.raw knew --at s1 >/dev/null
    after=$(branches case/d.raw)
    for sc in write fdatasync fsync renameat unlinkat; do
        rm -rf case && cp -a "$tpl" case
        total=$(strace -f -qq -e trace=$sc -o "$W/trace" "$QSNAP" branch case/d.raw knew --at s1 \
            >/dev/null 2>&1; grep -c "^[0-9]* *$sc(" "$W/trace")
        for nth in $(seq 1 "$total"); do
            rm -rf case && cp -a "$tpl" case
            strace -f -qq -o /dev/null -e inject=$sc:signal=SIGKILL:when=$nth \
                "$QSNAP" branch case/d.raw knew --at s1 >/dev/null 2>&1
            if ! q verify case/d.raw --repair >"$W/out" 2>&1; then
                bad "$name: kill at $sc #$nth" "verify --repair: $(tail -2 "$W/out" | tr '\n' ' ')"
                continue
            fi
            if ! q verify case/d.raw >"$W/out" 2>&1; then
                bad "$name: kill at $sc #$nth" "verify after repair: $(tail -2 "$W/out" | tr '\n' ' ')"
                continue
            fi
            got=$(branches case/d.raw)
            if [ "$got" != "$before" ] && [ "$got" != "$after" ]; then
                bad "$name: kill at $sc #$nth" "branches are neither before nor after: $got"
                continue
            fi
            if ! q branch case/d.raw knew2 --at s1 >/dev/null 2>&1 || ! q verify case/d.raw >/dev/null 2>&1; then
                bad "$name: kill at $sc #$nth" "the next change fails"
                continue
            fi
            ok "$name: kill at $sc #$nth of $total"
        done
    done
}

kill_each tpl "append"
kill_each fold "fold"

# An older qsnap (store version 2) on a version 3 store (built as a plain release build, whatever
# build of this tree runs the test: make asan's variables must not reach it).
OLD=${QSNAP_OLD:-}
if [ -z "$OLD" ] && git -C "$SRC" cat-file -e 1377950^{commit} 2>/dev/null; then
    mkdir old-src
    if git -C "$SRC" archive 1377950 | tar -x -C old-src &&
        env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD -u MOREFLAGS -u CFLAGS -u LDFLAGS -u CC \
            make -C old-src -j2 BUILD=build/release build/release/qsnap >"$W/old-build.log" 2>&1; then
        OLD=$W/old-src/build/release/qsnap
    else
        bad "older build" "cannot build 1377950: $(tail -3 "$W/old-build.log" | tr '\n' ' ')"
    fi
fi
if [ -n "$OLD" ]; then
    for cmd in verify list; do
        out=$("$OLD" $cmd tpl/d.raw 2>&1)
        rc=$?
        if [ $rc -eq 4 ] && echo "$out" | grep -q "unknown store version 3"; then
            ok "an older qsnap's $cmd refuses a version 3 store, naming the version"
        else
            bad "older $cmd" "exit $rc: $(echo "$out" | head -2 | tr '\n' ' ')"
        fi
    done
    mkdir v2 && truncate -s 4M v2/d.raw
    "$OLD" create v2/d.raw a >/dev/null 2>&1
    "$OLD" branch v2/d.raw x --at a >/dev/null 2>&1 # (a change in meta.log beside meta)
    if head -1 v2/d.raw.qsnap/meta | grep -qx "qsnap-store 2" && [ -s v2/d.raw.qsnap/meta.log ] &&
        q verify v2/d.raw >/dev/null 2>&1 && q branch v2/d.raw b --at a >/dev/null 2>&1 &&
        [ "$(head -c 14 v2/d.raw.qsnap/meta)" = "qsnap-store 3" ] && [ ! -e v2/d.raw.qsnap/meta.log ] &&
        q verify v2/d.raw >/dev/null 2>&1 && [ "$(branches v2/d.raw)" = "b main x " ]; then
        ok "a version 2 store (with a log) is read, and becomes version 3 at its first change"
    else
        bad "version 2 store" "$(head -1 v2/d.raw.qsnap/meta) / $(branches v2/d.raw)"
    fi
else
    echo "skipped: no older qsnap (set QSNAP_OLD, or run in a git checkout that has 1377950)"
fi

ts_end
