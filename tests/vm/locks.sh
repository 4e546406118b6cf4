#!/bin/bash
# Tree operations under a running QEMU, with no guest: a paused
# qemu-system-x86_64 (-S) holds the same image locks as a running one.
#   current head   a QEMU on the VM path (the current branch's head): every
#                  tree command that changes files or the current branch
#                  (create, create --internal, revert, revert --discard, switch,
#                  branch create/delete/rename, delete, commit, verify --repair)
#                  exits 5, names the held file and the QEMU (program, pid), and the store (metadata, layer
#                  files, modes, the VM path) and the disk are byte-for-byte as
#                  before; --dry-run lists the files it checked and which are held
#                  (exit 5); after the QEMU exits, verify is clean without --repair
#                  and the same commands go through.
#   another head   a QEMU on a branch's head that is not current: every command
#                  that touches that head or a layer it reads (switch to it,
#                  delete it, rename it, commit it, delete the snapshot under it,
#                  commit the current branch into a layer it reads through, which
#                  must re-point its chain) exits 5 with nothing changed; one that
#                  touches none of its files (a snapshot of the current branch)
#                  goes through.
#   VM path moved the VM path re-pointed by hand at main's head while b is
#                  current, a QEMU on it: create, revert --branch, branch create
#                  (which touch none of main's files), a dry run and verify
#                  --repair exit 5 naming main's head, nothing changed (the link
#                  either); without the QEMU create exits 4; --repair re-points.
#   held meanwhile a qsnap stopped in the middle of a plan (QSNAP_TEST_STOP_AT)
#                  holds the files it touches: a QEMU started on the VM path or
#                  on a layer it re-points fails to take its lock; the plan then
#                  finishes and verify is clean.
#   interrupted    a commit killed after its first step leaves a journal; with a
#                  QEMU on the head it must re-point, verify --repair exits 5 and
#                  changes nothing; once the QEMU is gone it finishes the commit.
#   VM path        after every operation, `qemu-img info --backing-chain` of the
#                  VM path shows the current head's chain, resolved; a link that
#                  points elsewhere is reported by verify and put back by --repair;
#                  a revert killed after each step is finished by --repair with
#                  the link on the new head.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
#   KEEP=1      keep the work directory
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
. "$(dirname "$0")/../helpers/qemu_hold.sh"

# What is running when the script stops: the paused QEMU (QPID), the one a
# held-meanwhile case starts (QPID2), and the commit stopped at its first step
# (CPID, SIGSTOPped: it is let go on first, then killed).
QPID=
QPID2=
CPID=
ts_atexit '[ -n "$QPID" ] && kill "$QPID" 2>/dev/null && wait "$QPID" 2>/dev/null'
ts_atexit '[ -n "$QPID2" ] && kill "$QPID2" 2>/dev/null && wait "$QPID2" 2>/dev/null'
ts_atexit '[ -n "$CPID" ] && kill "$CPID" 2>/dev/null && kill -CONT "$CPID" 2>/dev/null && wait "$CPID" 2>/dev/null'
ts_init vmlocks qemu-img qemu-system-x86_64 python3 md5sum
T0=$SECONDS
w() { # PATTERN OFFSET FILE: write 64 KiB through qsnap's own qemu-io-like runner
    q image io -c "write -P $1 $2 64k" "$3" >/dev/null
}

# state: names, types, modes, sizes, link targets and contents of the store and the disk.
state() {
    local d=${1:-disk.raw}
    (cd "$d.qsnap" && find . -printf '%p %y %m %s %l\n' | LC_ALL=C sort &&
        find . -type f -exec md5sum {} + | LC_ALL=C sort)
    stat -c '%a %s' "$d"
    md5sum "$d"
}

# chain_ok: the VM path opens the current head, and qemu-img resolves its whole
# chain from there, down to the disk.
chain_ok() {
    local vm head out last
    vm=$(q current disk.raw --path) || return 1
    head=$(q current disk.raw --head) || return 1
    [ "$(readlink -f "$vm")" = "$head" ] || return 1
    out=$(qemu-img info -U --backing-chain "$vm" 2>&1) || { echo "# $out"; return 1; }
    last=$(echo "$out" | sed -n 's/^image: //p' | tail -n 1)
    [ "$(readlink -f "$last")" = "$(readlink -f disk.raw)" ]
}

# ---- the store: disk -> s1 -> s2 -> main (dirty); s1 -> b (dirty) ----------------
truncate -s 16M disk.raw
q create disk.raw s1 >/dev/null
w 0x11 0 "$(q current disk.raw --path)"
q create disk.raw s2 >/dev/null
w 0x22 64k "$(q current disk.raw --path)"
q branch disk.raw b --at s1 >/dev/null
q switch disk.raw b >/dev/null
w 0x33 128k "$(q current disk.raw --path)"
BHEAD=$(q current disk.raw --head)
q switch disk.raw main >/dev/null
MHEAD=$(q current disk.raw --head)
VMPATH=$(q current disk.raw --path)
S2=$(q info disk.raw s2 | sed -n "s/^file: *//p")
if [ "$VMPATH" = "$W/disk.raw.qsnap/layers/current.qcow2" ] && [ "$(readlink -f "$VMPATH")" = "$MHEAD" ]; then
    ok "the VM path is layers/current.qcow2 and opens main's head"
else
    bad "VM path" "path $VMPATH, head $MHEAD"
fi
chain_ok && ok "qemu-img resolves the VM path's chain" || bad "VM path chain" "not resolved"
q verify disk.raw >/dev/null && ok "verify clean before" || bad "verify before" "not clean"

# expect_busy NAME FILE CMD...: exit 5, message names FILE, nothing changed.
expect_busy() {
    local name=$1 file=$2 before after rc
    shift 2
    before=$(state)
    q "$@" >"$W/out" 2>&1
    rc=$?
    after=$(state)
    if [ $rc -ne 5 ]; then
        bad "$name" "exit $rc, want 5: $(head -c 300 "$W/out")"
    elif ! grep -qF "$file" "$W/out"; then
        bad "$name" "the message does not name $file: $(head -c 300 "$W/out")"
    elif ! grep -qE 'qemu-system-x86[^ ]* \(pid [0-9]+\) holds? (its|their) image lock' "$W/out"; then
        bad "$name" "the message does not name the QEMU that holds it: $(head -c 300 "$W/out")"
    elif [ "$before" != "$after" ]; then
        bad "$name" "the store changed: $(diff <(echo "$before") <(echo "$after") | head -5)"
    elif [ -e disk.raw.qsnap/journal ]; then
        bad "$name" "a journal was left"
    else
        ok "$name"
    fi
}

# ---- a QEMU on the VM path (the current head) ---------------------------------
if qemu_start "$VMPATH"; then
    ok "paused QEMU holds the current head through the VM path"
    expect_busy "current head: create" "$MHEAD" create disk.raw x
    expect_busy "current head: create --internal" "$MHEAD" create disk.raw xi --internal
    expect_busy "current head: revert (keeps the dirty branch)" "$MHEAD" revert disk.raw s1
    expect_busy "current head: revert --discard" "$MHEAD" revert disk.raw s1 --discard
    expect_busy "current head: switch" "$MHEAD" switch disk.raw b
    expect_busy "current head: branch create" "$MHEAD" branch disk.raw nb --at s1
    expect_busy "current head: branch delete" "$MHEAD" branch disk.raw -d b --force
    expect_busy "current head: branch rename" "$MHEAD" branch disk.raw -m b b2
    expect_busy "current head: delete s2" "$MHEAD" delete disk.raw s2
    expect_busy "current head: delete s1 --stream" "$MHEAD" delete disk.raw s1 --stream
    expect_busy "current head: commit" "$MHEAD" commit disk.raw
    expect_busy "current head: commit b" "$MHEAD" commit disk.raw b
    expect_busy "current head: verify --repair" "$MHEAD" verify disk.raw --repair
    # --dry-run: the files checked, the held ones marked (main's head, and s2's
    # layer, which the commit writes and the VM reads); exit 5; JSON says the same.
    before=$(state)
    q commit disk.raw --dry-run >"$W/out" 2>"$W/err"
    rc=$?
    if [ $rc = 5 ] && grep -q "^files checked" "$W/out" &&
        grep -q "^    layers/$(basename "$MHEAD") (head of the current branch main): HELD" "$W/out" &&
        grep -q "^    layers/$(basename "$S2") (layer of snapshot s2): HELD" "$W/out" &&
        grep -q "$(basename "$S2")" "$W/err" && [ "$before" = "$(state)" ]; then
        ok "current head: commit --dry-run lists the checked files, the held ones marked (exit 5)"
    else
        bad "commit --dry-run" "exit $rc: $(cat "$W/out" "$W/err" | head -20)"
    fi
    q switch disk.raw b --dry-run --json >"$W/out" 2>/dev/null
    rc=$?
    if [ $rc = 5 ] && python3 - "$W/out" "$(basename "$MHEAD")" "$(basename "$BHEAD")" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
c = {x["file"]: x["held"] for x in d["checked"]}
sys.exit(0 if c.get("layers/" + sys.argv[2]) is True and c.get("layers/" + sys.argv[3]) is False else 1)
PY
    then
        ok "current head: switch --dry-run --json: checked files with held flags"
    else
        bad "switch --dry-run --json" "exit $rc: $(head -c 400 "$W/out")"
    fi
    qemu_stop
else
    bad "paused QEMU on the VM path" "$(cat "$W/qemu.err")"
fi
out=$(q verify disk.raw 2>&1) && ok "after QEMU exits: verify clean without --repair" ||
    bad "verify after QEMU" "$out"

# ---- a QEMU on another branch's head (b is current, the VM runs main) ---------
q switch disk.raw b >/dev/null
if qemu_start "$MHEAD"; then
    expect_busy "other head: switch to it" "$MHEAD" switch disk.raw main
    expect_busy "other head: delete its branch" "$MHEAD" branch disk.raw -d main --force
    expect_busy "other head: rename its branch" "$MHEAD" branch disk.raw -m main trunk
    expect_busy "other head: commit its branch" "$MHEAD" commit disk.raw main
    expect_busy "other head: delete the snapshot it is built on" "$MHEAD" delete disk.raw s2
    # b's base is s1, whose layer main reads through s2: the commit must re-point
    # s2's layer (preserving s1's old content), a file the VM holds.
    expect_busy "other head: commit b re-points a layer it reads" "$S2" commit disk.raw b
    # A snapshot of b touches none of main's files.
    if q create disk.raw sb >/dev/null 2>&1; then
        ok "other head: a snapshot of the current branch goes through"
    else
        bad "create sb" "refused"
    fi
    chain_ok && ok "other head: the VM path opens b's new head" || bad "chain after create sb" "wrong"
    qemu_stop
else
    bad "paused QEMU on main's head" "$(cat "$W/qemu.err")"
fi
out=$(q verify disk.raw 2>&1) && ok "after the second QEMU: verify clean" || bad "verify" "$out"

# ---- the VM path re-pointed by hand at main's head (b current), a QEMU on it ----
# The operations' own files are free; the file the link names is held: exit 5
# naming it, nothing changed (the link either); once the QEMU is gone, the
# operations refuse the wrong link (exit 4) and --repair points it at b's head.
ln -sfn "$(basename "$MHEAD")" "$VMPATH"
if qemu_start "$VMPATH"; then
    expect_busy "VM path at another head: create" "$MHEAD" create disk.raw x
    expect_busy "VM path at another head: revert --branch" "$MHEAD" revert disk.raw s1 --branch y
    expect_busy "VM path at another head: branch create" "$MHEAD" branch disk.raw nb --at s1
    expect_busy "VM path at another head: create --dry-run" "$MHEAD" create disk.raw x --dry-run
    expect_busy "VM path at another head: verify --repair" "$MHEAD" verify disk.raw --repair
    qemu_stop
else
    bad "paused QEMU on the re-pointed VM path" "$(cat "$W/qemu.err")"
fi
before=$(state)
q create disk.raw x >"$W/out" 2>&1
rc=$?
if [ $rc = 4 ] && grep -q "does not point at the current branch's head" "$W/out" &&
    [ "$before" = "$(state)" ]; then
    ok "VM path at another head, no QEMU: create refuses (exit 4), nothing changed"
else
    bad "create on a re-pointed VM path" "exit $rc: $(head -c 300 "$W/out")"
fi
q verify disk.raw --repair >/dev/null 2>&1 && chain_ok && q verify disk.raw >/dev/null &&
    [ "$(readlink -f "$VMPATH")" = "$(q current disk.raw --head)" ] &&
    ok "VM path at another head: verify --repair points it at the current head" ||
    bad "repair of the re-pointed VM path" "failed"

# ---- held while the plan runs --------------------------------------------------
# commit main (dirty, base s2): step 1 preserves s2's content in a new layer,
# later steps write s2's layer. Stopped right after step 1, it holds main's head
# and s2's layer: a QEMU on the VM path, or one reading s2's layer, fails to lock.
q switch disk.raw main >/dev/null
w 0x44 192k "$VMPATH"
QSNAP_TEST_STOP_AT=1 "$QSNAP" commit disk.raw main >"$W/commit.out" 2>&1 &
CPID=$!
n=0
while [ "$(ps -o stat= -p $CPID 2>/dev/null | cut -c1)" != T ] && [ $n -lt 2400 ] &&
    kill -0 $CPID 2>/dev/null; do
    sleep 0.05
    n=$((n + 1))
done
if [ "$(ps -o stat= -p $CPID 2>/dev/null | cut -c1)" = T ]; then
    for f in "$VMPATH" "$S2,readonly=on"; do
        # It either starts (QMP answers: wrong) or exits on the lock; a slow start
        # under load is neither, so wait for one of the two, not for a time.
        rm -f "$W/qmp2.sock"
        timeout 180 qemu-system-x86_64 -S -display none -nodefaults -machine pc,accel=tcg -m 64 \
            -qmp "unix:$W/qmp2.sock,server=on,wait=off" \
            -drive "file=$f,format=qcow2,if=virtio" >/dev/null 2>"$W/q2.err" &
        QPID2=$!
        qmp_wait "$W/qmp2.sock" $QPID2
        qrc=$?
        if [ $qrc != 1 ]; then
            kill $QPID2
            wait $QPID2 2>/dev/null
            bad "held meanwhile: ${f##*/}" "QEMU $([ $qrc = 0 ] && echo "started on it while the commit held it" || echo "neither started nor exited in 120 s")"
        else
            wait $QPID2 2>/dev/null
            grep -q 'lock' "$W/q2.err" && ok "held meanwhile: QEMU on ${f##*/} fails to take its lock" ||
                bad "held meanwhile: ${f##*/}" "$(cat "$W/q2.err")"
        fi
        QPID2=
    done
    kill -CONT $CPID
    wait $CPID
    rc=$?
    CPID=
    [ $rc = 0 ] && ok "held meanwhile: the commit finishes (exit 0)" ||
        bad "stopped commit" "exit $rc: $(cat "$W/commit.out")"
else
    kill $CPID 2>/dev/null
    wait $CPID 2>/dev/null
    CPID=
    bad "held meanwhile" "the commit did not stop at step 1: $(cat "$W/commit.out")"
fi
out=$(q verify disk.raw 2>&1) && ok "held meanwhile: verify clean" || bad "verify" "$out"
chain_ok && ok "after the commit: the VM path opens main's head" || bad "chain after commit" "wrong"

# ---- an interrupted commit, and a QEMU on a branch it must re-point ------------
# disk2: s1 (the disk itself) -> main (dirty), b (dirty, current). commit b into
# the disk keeps the disk's content in a new layer and re-points main's head at
# it. Killed after its first step, it leaves a journal; a QEMU then starts on
# main's head: verify --repair must refuse (exit 5) and change nothing; once the
# QEMU is gone it finishes the commit.
truncate -s 16M disk2.raw
q create disk2.raw s1 >/dev/null
w 0x51 0 "$(q current disk2.raw --path)"
M2=$(q current disk2.raw --head)
q branch disk2.raw b --at s1 >/dev/null
q switch disk2.raw b >/dev/null
w 0x52 64k "$(q current disk2.raw --path)"
{ QSNAP_TEST_KILL_AT=1 "$QSNAP" commit disk2.raw b >/dev/null 2>&1; } 2>/dev/null
if [ -e disk2.raw.qsnap/journal ] && qemu_start "$M2"; then
    before=$(state disk2.raw)
    q verify disk2.raw --repair >"$W/out" 2>&1
    rc=$?
    if [ $rc = 5 ] && grep -qF "$M2" "$W/out" && [ "$before" = "$(state disk2.raw)" ]; then
        ok "interrupted commit: verify --repair refuses while a QEMU runs on a head it re-points"
    else
        bad "verify --repair under QEMU" "exit $rc, changed: $([ "$before" = "$(state disk2.raw)" ] && echo no || echo yes): $(cat "$W/out")"
    fi
    qemu_stop
    out=$(q verify disk2.raw --repair 2>&1) && q verify disk2.raw >/dev/null &&
        [ ! -e disk2.raw.qsnap/journal ] &&
        ok "interrupted commit: finished by verify --repair once the QEMU is gone" ||
        bad "repair after QEMU" "$out"
else
    bad "interrupted commit" "no journal after the kill, or QEMU did not start"
    qemu_stop
fi

# ---- the VM path across operations, damage and crashes -------------------------
allok=1
for c in "switch disk.raw b" "switch disk.raw main" "revert disk.raw s1" "create disk.raw s3" "switch disk.raw b" \
    "commit disk.raw" "delete disk.raw s3" "branch disk.raw -d main --force" "revert disk.raw s2 --branch m2"; do
    q $c >/dev/null 2>"$W/err" || { allok=0; echo "# $c: $(cat "$W/err")"; }
    chain_ok || { allok=0; echo "# after $c: the VM path does not open the current head's chain"; }
    [ "$(q current disk.raw --path)" = "$VMPATH" ] || { allok=0; echo "# the VM path moved after $c"; }
done
[ $allok = 1 ] && ok "VM path: same path, current head's whole chain after each operation" ||
    bad "VM path across operations" "see above"
other=$(ls disk.raw.qsnap/layers | grep -v "^current" | grep -v "^$(basename "$(q current disk.raw --head)")$" | head -n 1)
ln -sfn "$other" disk.raw.qsnap/layers/current.qcow2
q verify disk.raw >"$W/out" 2>&1
rc=$?
[ $rc = 4 ] && grep -q "VM path" "$W/out" && ok "VM path pointing elsewhere: verify exit 4" ||
    bad "verify of a wrong link" "exit $rc: $(cat "$W/out")"
q current disk.raw --path >/dev/null 2>&1
[ $? = 4 ] && ok "VM path pointing elsewhere: current --path refuses (exit 4)" ||
    bad "current --path on a wrong link" "not refused"
q verify disk.raw --repair >/dev/null 2>&1 && chain_ok && q verify disk.raw >/dev/null &&
    ok "VM path: verify --repair points it at the current head" || bad "repair of the link" "failed"
rm disk.raw.qsnap/layers/current.qcow2
q verify disk.raw --repair >/dev/null 2>&1 && chain_ok && ok "VM path missing: --repair makes it" ||
    bad "repair of a missing link" "failed"
# A revert killed after each step: --repair finishes it, the link on the new head.
nsteps=$(q revert disk.raw s1 --dry-run | grep -c '^ *[0-9]*\. ')
allok=1
for k in $(seq 1 "$nsteps"); do
    before=$(q current disk.raw --head)
    { QSNAP_TEST_KILL_AT=$k "$QSNAP" revert disk.raw s1 >/dev/null 2>&1; } 2>/dev/null
    q verify disk.raw --repair >/dev/null 2>&1
    q verify disk.raw >/dev/null 2>&1 || { allok=0; echo "# kill at $k: not clean after repair"; }
    chain_ok || { allok=0; echo "# kill at $k: the VM path is not on the current head"; }
    [ "$(q current disk.raw --head)" != "$before" ] || { allok=0; echo "# kill at $k: not finished"; }
done
[ $allok = 1 ] && ok "revert killed after each of its $nsteps steps: repaired, link on the new head" ||
    bad "killed reverts" "see above"

echo "# $((SECONDS - T0))s"
ts_end
