#!/bin/bash
# A layer's new mode (frozen: read-only; thawed: writable again) is durable
# before the operation's journal goes: every fchmod qsnap makes is followed by
# an fsync of the same descriptor before that descriptor is closed, and before
# the journal is removed. A kill cannot show a missing sync (the page cache
# survives it), so the order of the calls is what is checked, under strace,
# for create (the head frozen), delete --stream (layers thawed, rewritten and
# frozen again) and verify --repair (a frozen layer made writable by hand); and
# after a create killed between its fchmod and that fsync, the replay of its
# journal syncs the layer (whose mode is already right) before the journal goes;
# and an undo that cannot put a mode back, or sync before its journal goes, keeps
# the journal and says the operation is unfinished.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path   the qsnap binary (default build/release/qsnap)
set -u
. "$(dirname "$0")/../helpers/qemu_io.sh"

. "$(dirname "$0")/../helpers/script_lib.sh"
TS_TIMEOUT=120
ts_init mode strace qemu-img qemu-io
# Most runs here are under strace, where a sanitizer build's leak check cannot run.
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0

# traced NAME ARGS...: run qsnap under strace; then check that each fchmod is
# synced (fsync of its descriptor) before the descriptor closes and before the
# journal is removed. Fails the case when there was no fchmod at all.
traced() {
    local name=$1
    shift
    if ! strace -qq -f -e trace=fchmod,fsync,close,unlinkat -o "$W/trace" "$QSNAP" "$@" >/dev/null 2>"$W/err"; then
        bad "$name" "exit $?: $(head -c 300 "$W/err")"
        return
    fi
    local verdict
    verdict=$(awk '
        { sub(/^[0-9]+ +/, "") }
        /^fchmod\(/ { split($0, a, /[(,]/); fd = a[2]; pending[fd] = 1; n++; next }
        /^fsync\(/ { split($0, a, /[()]/); delete pending[a[2]]; next }
        /^close\(/ { split($0, a, /[()]/); if (a[2] in pending) { print "fd " a[2] " closed unsynced"; exit } next }
        /^unlinkat\(.*"journal"/ { for (fd in pending) { print "journal removed before fd " fd " was synced"; exit } }
        END { if (!n) print "no fchmod seen" }' "$W/trace")
    if [ -z "$verdict" ]; then
        ok "$name: $(grep -c '^[0-9]* *fchmod(' "$W/trace") mode change(s), each synced first"
    else
        bad "$name" "$verdict"
    fi
}

# A snapshot of a clean head keeps no layer of its own: each one here follows a write.
qemu-img create -f raw d.raw 8M >/dev/null
traced "the first create freezes the disk" create d.raw s1
qio qcow2 "$(q current d.raw --path)" "write -P 1 0 64k"
traced "create freezes the head" create d.raw s2
qio qcow2 "$(q current d.raw --path)" "write -P 2 64k 64k"
q create d.raw s3 >/dev/null || bad setup "create s3"
qio qcow2 "$(q current d.raw --path)" "write -P 3 128k 64k"
traced "delete --stream thaws and freezes" delete d.raw s2 --stream
q verify d.raw >/dev/null 2>&1 && ok "verify is clean after them" || bad "verify" "exit $?"

# A frozen layer made writable behind qsnap's back: the repair's chmod is synced too.
f=$(find d.raw.qsnap/layers -type f ! -perm /222 | head -1)
[ -n "$f" ] || bad setup "no read-only layer found"
chmod u+w "$f"
traced "verify --repair makes a frozen layer read-only again" verify d.raw --repair
q verify d.raw >/dev/null 2>&1 && ok "verify is clean after the repair" || bad "verify after repair" "exit $?"

# A run killed between its fchmod and its fsync: the mode is set, in the page cache only,
# and the journal is still there. The recovery that replays it finds the mode already right
# and must sync it all the same before the journal goes.
mkdir k1 k2
qio qcow2 "$(q current d.raw --path)" "write -P 4 192k 64k"
cp -a d.raw d.raw.qsnap k1/ && cp -a d.raw d.raw.qsnap k2/
(cd k2 && strace -qq -f -y -e trace=fchmod,fsync -o "$W/t2" "$QSNAP" create d.raw s5 >/dev/null 2>&1)
# The fsync that follows the (only) fchmod: its number among all fsyncs, and the layer's file.
nth=$(awk '/fchmod\(/ { m = 1; next } /fsync\(/ { n++; if (m) { print n; exit } }' "$W/t2")
layer=$(grep -o 'fchmod([0-9]*<[^>]*>' "$W/t2" | head -1 | sed 's/.*<//; s/>$//; s#.*/##')
if [ -z "$nth" ] || [ -z "$layer" ]; then
    bad "kill after fchmod" "no fchmod then fsync in a normal create ($(head -c 300 "$W/t2"))"
else
    (cd k1 && strace -qq -f -e trace=fsync -e inject=fsync:signal=SIGKILL:when="$nth" \
        -o /dev/null "$QSNAP" create d.raw s5 >/dev/null 2>&1) 2>/dev/null
    if [ -e k1/d.raw.qsnap/journal ] &&
        [ -z "$(find "k1/d.raw.qsnap/layers/$layer" -perm /222)" ]; then
        (cd k1 && strace -qq -f -y -e trace=fsync,unlinkat -o "$W/t1" "$QSNAP" verify d.raw --repair >/dev/null 2>&1)
        verdict=$(awk -v f="layers/$layer>" '
            /^[0-9]+ +fsync\(/ && index($0, f) { synced = 1 }
            /unlinkat\(.*"journal"/ { print (synced ? "" : "the journal went before the layer was synced"); done = 1; exit }
            END { if (!done) print "no journal removed" }' "$W/t1")
        [ -z "$verdict" ] && ok "a run killed after fchmod: the replay syncs $layer before the journal goes" ||
            bad "kill after fchmod" "$verdict"
        (cd k1 && q verify d.raw >/dev/null 2>&1) && ok "verify is clean after the replay" ||
            bad "verify after the replay" "exit $?"
    else
        bad "kill after fchmod" "the killed create left no journal, or $layer writable"
    fi
fi

# A create whose freeze fails after its fchmod (the fsync that follows it), and whose
# undo cannot make the head writable again: nothing may say "nothing was changed" with
# the head left read-only; the journal stays, and the next command finishes the create.
mkdir k3
qio qcow2 "$(q current d.raw --path)" "write -P 5 256k 64k"
cp -a d.raw d.raw.qsnap k3/
if [ -n "${nth:-}" ]; then
    (cd k3 && strace -qq -f -e trace=fsync,fchmod -e inject=fsync:error=EIO:when="$nth" \
        -e inject=fchmod:error=EPERM:when=2 -o /dev/null "$QSNAP" create d.raw s6 \
        >/dev/null 2>"$W/e3")
    rc=$?
    if [ "$rc" -ne 0 ] && grep -q "(the operation is unfinished)" "$W/e3" &&
        ! grep -q "nothing was changed" "$W/e3" && [ -e k3/d.raw.qsnap/journal ]; then
        ok "an undo that cannot restore a mode keeps the journal and says so (exit $rc)"
    else
        bad "failed undo" "exit $rc, journal $([ -e k3/d.raw.qsnap/journal ] && echo kept || echo gone): $(head -c 300 "$W/e3")"
    fi
    (cd k3 && q verify d.raw --repair >/dev/null 2>&1 && q verify d.raw >/dev/null 2>&1) &&
        ok "verify --repair finishes it, and verify is clean" || bad "after the failed undo" "verify: exit $?"
    # The same failed freeze, undone whole but for the sync that must come before the journal
    # goes: the journal stays, and the message does not say nothing was changed.
    mkdir k4
    cp -a d.raw d.raw.qsnap k4/
    (cd k4 && strace -qq -f -e trace=fsync -e inject=fsync:error=EIO:when="$nth"+2 \
        -o /dev/null "$QSNAP" create d.raw s6 >/dev/null 2>"$W/e4")
    rc=$?
    if [ "$rc" -ne 0 ] && ! grep -q "nothing was changed" "$W/e4" && [ -e k4/d.raw.qsnap/journal ]; then
        ok "an undo whose last sync fails keeps the journal and says so (exit $rc)"
    else
        bad "undo without its sync" "exit $rc, journal $([ -e k4/d.raw.qsnap/journal ] && echo kept || echo gone): $(head -c 300 "$W/e4")"
    fi
    (cd k4 && q verify d.raw --repair >/dev/null 2>&1 && q verify d.raw >/dev/null 2>&1) &&
        ok "verify --repair finishes that one too, and verify is clean" || bad "after the unsynced undo" "verify: exit $?"
fi

# An append whose flush fails (the record written whole, its fdatasync failing): whether the
# change is committed is not known, so the journal stays and the record with it, and verify
# --repair finishes the operation.
mkdir k5
(cd k5 && truncate -s 4M d.raw && q create d.raw s1 >/dev/null && q branch d.raw x --at s1 >/dev/null &&
    qemu-io -f qcow2 -c 'write -P 0x5a 0 64k' "$(q current d.raw --path)" >/dev/null) ||
    bad "setup of the failed flush" "exit $?"
(cd k5 && strace -qq -f -e trace=fdatasync -e inject=fdatasync:error=EIO:when=2 \
    -o /dev/null "$QSNAP" create d.raw s7 >/dev/null 2>"$W/e5")
rc=$?
if [ "$rc" -ne 0 ] && grep -q "meta.log" "$W/e5" && grep -q "(the operation is unfinished)" "$W/e5" &&
    [ -e k5/d.raw.qsnap/journal ]; then
    ok "a create whose log flush fails keeps its journal and says so (exit $rc)"
else
    bad "failed flush" "exit $rc, journal $([ -e k5/d.raw.qsnap/journal ] && echo kept || echo gone): $(head -c 300 "$W/e5")"
fi
out=$(cd k5 && q verify d.raw --repair 2>&1 && q verify d.raw 2>&1 && q list d.raw 2>&1)
if [ $? -eq 0 ] && echo "$out" | grep -q " s7 " && [ ! -e k5/d.raw.qsnap/journal ]; then
    ok "verify --repair finishes it: s7 is there and verify is clean"
else
    bad "repair of the failed flush" "$out"
fi

ts_end
