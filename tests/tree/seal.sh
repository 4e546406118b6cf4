#!/bin/bash
# The seal of layers/ (docs/ROBUSTNESS.md): after an operation, the next
# command does not read layers/ (no getdents on it, counted with strace),
# and whatever else changes layers/ after it brings the walk back:
#   - a link, a FIFO or a file qsnap did not make, planted after the
#     operation, is refused by the next command (exit 4, naming it), for a
#     query and for an operation;
#   - once it is gone, commands work again;
#   - a seal that does not match layers/ (edited, or from another change
#     time) is not trusted: the next command walks;
#   - verify always walks.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
set -u

NAME=seal
. "$(dirname "$0")/../helpers/traced_tree.sh"
L=d.raw.qsnap/layers

# Reads of layers/ (getdents on a descriptor opened on it) by one run of qsnap ARGS.
walks() {
    traced openat,getdents64 "$@"
    awk '/openat\(.*"layers", .*O_DIRECTORY/ { sub(/.*= /, ""); fd[$0] = 1; next }
         /getdents64\([0-9]+,/ { sub(/.*getdents64\(/, ""); sub(/,.*/, ""); if ($0 in fd) n++ }
         END { print n + 0 }' "$W/trace"
}

truncate -s 16M d.raw
q create d.raw s1 >/dev/null && qemu-io -f qcow2 -c "write -P 1 0 4k" "$(q current d.raw --path)" >/dev/null &&
    q create d.raw s2 >/dev/null && q branch d.raw b --at s1 >/dev/null || { bad setup "create"; ts_end; exit 1; }

n=$(walks current d.raw)
[ "$n" = 0 ] && ok "after an operation, current does not read layers/" || bad "current after an operation" "$n reads of layers/"
n=$(walks switch d.raw b)
[ "$n" = 0 ] && ok "after an operation, switch does not read layers/" || bad "switch after an operation" "$n reads of layers/"
n=$(walks list d.raw)
[ "$n" = 0 ] && ok "after the switch, list does not read layers/" || bad "list after switch" "$n reads of layers/"

# Planted after an operation: refused by the next command, whatever it is.
plant() {
    case $1 in
    link) ln -s /etc/passwd "$L/9999.qcow2" ;;
    fifo) mkfifo "$L/9998.qcow2" ;;
    foreign) : >"$L/overlay.qcow2" ;;
    esac
}
unplant() { rm -f "$L/9999.qcow2" "$L/9998.qcow2" "$L/overlay.qcow2"; }
for kind in link fifo foreign; do
    for cmd in "current d.raw" "switch d.raw main" "create d.raw"; do
        q switch d.raw b >/dev/null 2>&1 # an operation: layers/ sealed again
        plant $kind
        q $cmd >out 2>err
        rc=$?
        case $kind in
        foreign) want=$([ "${cmd%% *}" = current ] && echo 0 || echo 4) ;;
        *) want=4 ;;
        esac
        if [ $rc = "$want" ] && { [ "$want" = 0 ] || grep -q "$L/\(9999\|9998\|overlay\)" err; }; then
            ok "a $kind planted after an operation: '${cmd%% *}' exits $want"
        else
            bad "$kind then '${cmd%% *}'" "exit $rc (want $want): $(head -c 300 err)"
        fi
        unplant
    done
done
q current d.raw >/dev/null 2>&1 && q switch d.raw main >/dev/null 2>&1 && ok "once it is gone, commands work again" ||
    bad "after unplanting" "exit $?"

# A seal that does not match is not trusted.
q switch d.raw b >/dev/null
seal=$(cat d.raw.qsnap/lock)
printf '%s' "${seal/qsnap-seal 2 /qsnap-seal 2 1}" >d.raw.qsnap/lock
n=$(walks current d.raw)
[ "$n" -gt 0 ] && ok "an edited seal is not trusted: current walks layers/" || bad "edited seal" "no walk"
q switch d.raw main >/dev/null
touch "$L" # another change time, same entries
n=$(walks current d.raw)
[ "$n" -gt 0 ] && ok "layers/ changed after the seal (its change time): current walks it" ||
    bad "changed after the seal" "no walk"
q switch d.raw b >/dev/null
n=$(walks verify d.raw)
[ "$n" -gt 0 ] && ok "verify walks layers/ whatever the seal says" || bad "verify" "no walk"
q verify d.raw >/dev/null 2>&1 && ok "verify is clean" || bad "verify" "exit $?"

# The seal names the metadata's generation: metadata older than layers/ (meta.log removed, an
# older meta put back) is caught though layers/ is as sealed; a seal of another generation
# over a store that is fine is only a walk.
seal=$(cat d.raw.qsnap/lock)
g=$(echo "$seal" | awk '{print $6}')
printf '%s' "${seal/ $g / $((g + 5)) }" >d.raw.qsnap/lock # a valid-looking seal of another gen
n=$(walks current d.raw)
[ "$n" -gt 0 ] && q list d.raw >/dev/null 2>&1 && ok "a seal of another generation: a walk, and a sound store works" ||
    bad "seal of another generation" "walks $n, list exit $?"
q create d.raw s3 >/dev/null && q create d.raw s4 >/dev/null || bad "meta.log setup" "create"
[ -f d.raw.qsnap/meta.log ] || bad "meta.log setup" "no meta.log after two creates"
listing() { (cd d.raw.qsnap && find . -type f -o -type l | sort | while read -r f; do
    printf '%s %s\n' "$f" "$(cat "$f" 2>/dev/null | md5sum | cut -c1-12)"; done); }
mv d.raw.qsnap/meta.log meta.log.kept
before=$(listing)
allok=1
for cmd in "current d.raw" "list d.raw" "create d.raw s5" "switch d.raw b" "commit d.raw" \
    "delete d.raw s1"; do
    q $cmd >/dev/null 2>err; rc=$?
    if [ $rc -ne 4 ] || ! grep -q "layers/[0-9]*.qcow2: newer than the store's metadata" err; then
        allok=0; bad "meta.log removed: '$cmd'" "exit $rc: $(head -c 300 err)"
    fi
done
[ $allok = 1 ] && ok "meta.log removed (layers/ as sealed): every command exits 4 naming the newer layer" || true
after=$(listing)
[ "$before" = "$after" ] && ok "meta.log removed: nothing changed by the refused commands" ||
    bad "meta.log removed: store changed" "$(diff <(echo "$before") <(echo "$after") | head -4)"
touch "$L" # the same without the seal: the walk finds it
q list d.raw >/dev/null 2>err; rc=$?
[ $rc -eq 4 ] && grep -q "newer than the store's metadata" err && ok "meta.log removed, layers/ walked: refused" ||
    bad "meta.log removed, walked" "exit $rc: $(head -c 300 err)"
before=$(listing)
q verify d.raw --repair >out 2>err; rc=$?
after=$(listing)
[ $rc -eq 4 ] && grep -q "^problem: --repair refused: the metadata is older than layers/" out &&
    [ "$before" = "$after" ] && ok "meta.log removed: verify --repair refuses to repair towards the older tree, nothing changed" ||
    bad "verify --repair over older metadata" "exit $rc: $(cat out err | head -c 400) $(diff <(echo "$before") <(echo "$after") | head -3)"
mv meta.log.kept d.raw.qsnap/meta.log
q list d.raw >/dev/null 2>&1 && q create d.raw s5 >/dev/null 2>&1 && q verify d.raw >/dev/null 2>&1 &&
    ok "meta.log put back: commands work again, verify clean" || bad "meta.log put back" "exit $?"

ts_end
