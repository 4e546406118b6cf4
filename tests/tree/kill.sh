#!/bin/bash
# Kill -9 at a seeded system call of each tree operation, then recover.
#   For each operation (create, create --internal, revert to an external and
#   to an internal snapshot, delete of an external and of an internal
#   snapshot, delete --stream, commit), the number of pwrite64 (and write)
#   calls of a normal run is counted; a seeded choice of them (always
#   including the third pwrite64) is each the call at which strace kills
#   qsnap (inject=SYSCALL:signal=SIGKILL:when=N). After each kill:
#   `verify --repair` exits 0, then `verify` without --repair exits 0 (no
#   journal, no meta.tmp or journal.tmp, no leaked cluster, no wrong flag),
#   `qemu-img check` is clean on every layer, and every snapshot that still
#   exists reads exactly as before the operation (qsnap export against an
#   export made before).
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path   the qsnap binary (default build/release/qsnap)
#   SEED=n       the seed of the choice (default 18)
#   KILLS=n      kill points per operation and system call (default 4)
set -u
. "$(dirname "$0")/../helpers/qemu_io.sh"

. "$(dirname "$0")/../helpers/script_lib.sh"
TS_TIMEOUT=120
SEED=${SEED:-18}
KILLS=${KILLS:-4}
ts_init kill qemu-img qemu-io strace cmp

# The template: raw disk; s1, s2, s3 external on main (dirty); branch b1
# from s1 holding internal snapshot i1 in its head; branch b2 from s2.
mkdir tpl && cd tpl || exit 2
qemu-img create -f raw disk.raw 16M >/dev/null
qio raw disk.raw "write -P 1 0 1M"
q create disk.raw s1 >/dev/null || { bad setup "create s1"; ts_end; exit 1; }
qio qcow2 "$(q current disk.raw --path)" "write -P 2 512k 1M"
q create disk.raw s2 >/dev/null || bad setup "create s2"
qio qcow2 "$(q current disk.raw --path)" "write -P 3 1M 256k"
q create disk.raw s3 >/dev/null || bad setup "create s3"
qio qcow2 "$(q current disk.raw --path)" "write -P 4 64k 192k"
q branch disk.raw b1 --at s1 >/dev/null || bad setup "branch b1"
q branch disk.raw b2 --at s2 >/dev/null || bad setup "branch b2"
q switch disk.raw b1 >/dev/null && qio qcow2 "$(q current disk.raw --path)" "write -P 5 2M 128k" &&
    q create disk.raw i1 --internal >/dev/null && qio qcow2 "$(q current disk.raw --path)" "write -P 6 2M 64k" &&
    q switch disk.raw main >/dev/null || bad setup "b1 and i1"
q verify disk.raw >/dev/null || bad setup "template not clean"
names="s1 s2 s3 i1"
for n in $names; do q export disk.raw $n "$W/before-$n.raw" -O raw >/dev/null || bad setup "export $n"; done
cd "$W" || exit 2

ops=(
    "create disk.raw s4"
    "create disk.raw i2 --internal"
    "revert disk.raw s2"
    "delete disk.raw s3"
    "delete disk.raw s2 --stream"
    "commit disk.raw"
    "switch disk.raw b1"
    "switch disk.raw b1;revert disk.raw i1"
    "switch disk.raw b1;delete disk.raw i1"
    "delete disk.raw i1"
)

# check NAME: the state after a kill and a repair.
check() {
    local name=$1 out rc f n
    out=$(cd case && q verify --repair disk.raw 2>&1)
    rc=$?
    [ $rc -eq 0 ] || { bad "$name" "verify --repair exit $rc: $(echo "$out" | grep -v '^ok' | head -3 | tr '\n' ' ')"; return; }
    out=$(cd case && q verify disk.raw 2>&1)
    rc=$?
    [ $rc -eq 0 ] || { bad "$name" "verify after repair exit $rc: $(echo "$out" | grep -v '^ok' | head -3 | tr '\n' ' ')"; return; }
    for f in case/disk.raw.qsnap/layers/*; do
        [ -e "$f" ] || continue
        qemu-img check -U -f qcow2 "$f" >/dev/null 2>&1 || { bad "$name" "qemu-img check $(basename "$f") exit $?"; return; }
    done
    for n in $names; do
        (cd case && q info disk.raw $n >/dev/null 2>&1) || continue
        rm -f "$W/after.raw"
        (cd case && q export disk.raw $n "$W/after.raw" -O raw >/dev/null 2>&1) &&
            cmp -s "$W/after.raw" "$W/before-$n.raw" || { bad "$name" "snapshot $n reads differently"; return; }
    done
    ok "$name"
}

# fresh PRE: a copy of the template, with PRE run on it (a command before the one killed).
fresh() {
    rm -rf case && cp -a tpl case
    # shellcheck disable=SC2086
    [ -z "$1" ] || (cd case && q $1 >/dev/null 2>&1) || bad "$1" "the command before failed"
}

RANDOM=$SEED
for entry in "${ops[@]}"; do
    pre=""
    op=$entry
    case $entry in *";"*) pre=${entry%%;*}; op=${entry#*;} ;; esac
    for sc in pwrite64 write; do
        fresh "$pre"
        # shellcheck disable=SC2086
        total=$(cd case && strace -f -qq -e trace=$sc -o "$W/trace" "$QSNAP" $op >/dev/null 2>&1; grep -c "^[0-9]* *$sc(" "$W/trace")
        # switch writes its metadata with write() only: nothing to kill under pwrite64.
        [ "$total" -gt 0 ] || { echo "# $op: no $sc calls"; continue; }
        points=""
        [ $sc = pwrite64 ] && [ "$total" -ge 3 ] && points=3
        for _ in $(seq "$KILLS"); do points="$points $((RANDOM % total + 1))"; done
        for nth in $(echo $points | tr ' ' '\n' | sort -nu); do
            fresh "$pre"
            # shellcheck disable=SC2086
            (cd case && strace -f -qq -o /dev/null -e inject=$sc:signal=SIGKILL:when=$nth "$QSNAP" $op >/dev/null 2>&1) 2>/dev/null
            check "${pre:+${pre/ disk.raw/}, }${op/ disk.raw/} killed at $sc $nth of $total"
        done
    done
done

ts_end
