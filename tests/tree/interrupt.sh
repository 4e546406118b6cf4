#!/bin/bash
# A tree operation interrupted by a signal (Ctrl-C, kill, a closed terminal):
# it dies of the signal (exit 128+N) after one line on stderr that says the
# operation is unfinished and names 'qsnap verify DISK --repair'; that
# finishes it, and every state reads as a model says. Deterministic: the
# operation is stopped after its first step (QSNAP_TEST_STOP_AT) and the
# signal is delivered while it is stopped. Also: with the store's metadata
# unreadable, image commands tell a layer file by its mode (a head may be
# written, a frozen layer not). And a repair that cannot finish a create
# stopped before its commit point takes it back.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
ts_init interrupt qemu-io

stopped() { grep -q '^State:[[:space:]]*T' "/proc/$1/status" 2>/dev/null; }

for sig in INT TERM HUP; do
    rm -rf d.raw d.raw.qsnap
    qemu-img create -f raw d.raw 8M >/dev/null
    qemu-io -f raw -c "write -P 1 0 1M" d.raw >/dev/null
    q create d.raw s1 >/dev/null || bad "$sig: setup" "create"
    qemu-io -f qcow2 -c "write -P 2 512k 1M" "$(q current d.raw --path)" >/dev/null
    q export d.raw s1 s1.before -O raw >/dev/null && q export d.raw main main.before -O raw >/dev/null
    (QSNAP_TEST_STOP_AT=1 exec "$QSNAP" commit d.raw >out 2>err) &
    pid=$!
    for _ in $(seq 200); do stopped $pid && break; sleep 0.02; done
    kill -$sig $pid
    kill -CONT $pid
    wait $pid
    rc=$?
    want=$((128 + $(kill -l $sig)))
    if [ $rc = $want ] && grep -q "d.raw: interrupted: the operation is unfinished; 'qsnap verify d.raw --repair' finishes it" err &&
        [ "$(wc -l <err)" = 1 ]; then
        ok "SIG$sig mid-commit: exit $rc, one line naming verify --repair"
    else
        bad "SIG$sig mid-commit" "exit $rc (want $want): $(cat err)"
    fi
    q verify d.raw --repair >/dev/null 2>&1
    q export d.raw s1 s1.after -O raw >/dev/null && q export d.raw main main.after -O raw >/dev/null &&
        cmp -s s1.before s1.after && cmp -s main.before main.after && q verify d.raw >/dev/null 2>&1 &&
        ok "SIG$sig: verify --repair finishes it, s1 and main read as before" ||
        bad "SIG$sig: after repair" "$(q verify d.raw 2>&1 | tail -2)"
done

# Image commands when the store's metadata cannot be read (a damaged meta.log: every tree
# command refuses): a layer file is told by its mode, so a head (writable) can still be
# written and a frozen layer (read-only) is still refused.
frozen=$(find d.raw.qsnap/layers -name '*.qcow2' -perm 0444 | head -1)
head=$(readlink -f d.raw.qsnap/layers/current.qcow2)
printf 'rec 99 5 00000000\nxxxxx' >>d.raw.qsnap/meta.log
q list d.raw >/dev/null 2>&1; rc0=$?
q image io -c "write -P 9 0 512" "$head" >/dev/null 2>ioerr; rc1=$?
q image io -c "write -P 9 0 512" "$frozen" >/dev/null 2>>ioerr; rc2=$?
[ $rc0 = 4 ] && [ -n "$frozen" ] && [ $rc1 = 0 ] && [ $rc2 = 1 ] && grep -q "frozen" ioerr &&
    ok "metadata unreadable: image io writes the head, refuses a frozen layer (told by mode)" ||
    bad "image io with unreadable metadata" "list $rc0, head $rc1, frozen '$frozen' $rc2: $(cat ioerr)"

# A repair that cannot finish an operation stopped before its first commit point takes it
# back when every step before that point can be (a create: a new overlay, a freeze): the
# head it freezes is damaged meanwhile. The journal and the new overlay go, s1 stays.
rm -rf d.raw d.raw.qsnap
qemu-img create -f raw d.raw 8M >/dev/null
q create d.raw s1 >/dev/null && head=$(readlink -f "$(q current d.raw --path)") &&
    qemu-io -f qcow2 -c "write -P 3 0 64k" "$head" >/dev/null || bad "take-back setup" "failed"
(QSNAP_TEST_KILL_AT=1 exec "$QSNAP" create d.raw s2 >/dev/null 2>&1)
layers_before=$(ls d.raw.qsnap/layers | tr '\n' ' ')
printf 'XXXX' | dd of="$head" bs=1 count=4 conv=notrunc 2>/dev/null
q verify d.raw --repair >out 2>&1
layers_after=$(ls d.raw.qsnap/layers | tr '\n' ' ')
if [ -e d.raw.qsnap/journal ]; then
    bad "repair that cannot finish" "the journal stayed: $(head -c 300 out)"
elif [ "$layers_before" = "$layers_after" ] || ! q info d.raw s1 >/dev/null 2>&1 ||
    q info d.raw s2 >/dev/null 2>&1; then
    bad "repair that cannot finish" "layers $layers_before -> $layers_after: $(head -c 300 out)"
else
    ok "a repair that cannot finish a create stopped before its commit point takes it back"
fi

# A signal the caller ignores stays ignored (nohup): the operation goes on to its end.
rm -rf d.raw d.raw.qsnap
qemu-img create -f raw d.raw 8M >/dev/null
q create d.raw s1 >/dev/null && qemu-io -f qcow2 -c "write -P 2 0 1M" "$(q current d.raw --path)" >/dev/null
(trap '' HUP; QSNAP_TEST_STOP_AT=1 exec "$QSNAP" commit d.raw >out 2>err) &
pid=$!
for _ in $(seq 200); do stopped $pid && break; sleep 0.02; done
kill -HUP $pid
kill -CONT $pid
wait $pid
rc=$?
[ $rc = 0 ] && grep -q "committed" out && [ ! -e d.raw.qsnap/journal ] &&
    ok "an ignored SIGHUP stays ignored: the commit finishes" || bad "ignored SIGHUP" "exit $rc: $(cat out err)"

ts_end
