#!/bin/bash
# A clean branch that stands on a state no snapshot names (the committed
# state after `commit`) is kept by `revert`: it is that state's only name.
#   commit main, revert to s1: main is still a branch, `switch` returns to
#   it, and it reads what it read before the revert (export against an
#   export made before); a clean branch on a named snapshot is still
#   dropped; `revert --discard` still drops it (the user names it).
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
ts_init revkeep qemu-io

setup() {
    rm -rf d.raw d.raw.qsnap
    qemu-img create -f raw d.raw 8M >/dev/null
    q create d.raw s1 >/dev/null
    qemu-io -f qcow2 -c "write -P 7 0 64k" "$(q current d.raw --path)" >/dev/null
    q commit d.raw >/dev/null || bad setup "commit"
    q export d.raw main before.raw -O raw >/dev/null || bad setup "export"
}

setup
q revert d.raw s1 --branch other >/dev/null || bad "revert after commit" "exit $?"
if q info d.raw main >/dev/null 2>&1 && q switch d.raw main >/dev/null 2>&1 &&
    q export d.raw main after.raw -O raw >/dev/null 2>&1 && cmp -s before.raw after.raw; then
    ok "revert keeps a clean branch on the committed (unnamed) state, with its content"
else
    bad "revert keeps the committed branch" "$(q list d.raw 2>&1 | tr '\n' ' ')"
fi
q verify d.raw >/dev/null 2>&1 && ok "verify clean after it" || bad "verify" "exit $?"

# A clean branch on a named snapshot is still dropped.
q revert d.raw s1 --branch b2 >/dev/null
q revert d.raw s1 --branch b3 >/dev/null
if q info d.raw b2 >/dev/null 2>&1; then bad "clean branch on a snapshot" "b2 was kept"; else ok "a clean branch on a named snapshot is dropped"; fi

setup
q revert d.raw s1 --discard >/dev/null
q export d.raw main after.raw -O raw >/dev/null 2>&1
q export d.raw s1 s1.raw -O raw >/dev/null 2>&1
if cmp -s after.raw s1.raw && ! cmp -s after.raw before.raw && [ "$(q branch d.raw | wc -l)" -eq 1 ]; then
    ok "--discard drops it: main starts again from s1"
else
    bad "--discard" "$(q list d.raw 2>&1 | tr '\n' ' ')"
fi

ts_end
