#!/bin/bash
# What a tree operation opens does not grow with the depth of the branch:
# `create`, `revert` and `branch` make a new overlay on one layer and read
# that layer's header alone (its chain was checked when it was made), and a
# frozen layer is read once to fingerprint it. Counted with strace on a
# branch 4 layers deep and on one 40 layers deep: the same number of opens
# of layer files, and every image left passes qemu-img check and reads back
# what was written (a model: the byte pattern of each write).
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
set -u

NAME=depth
. "$(dirname "$0")/../helpers/traced_tree.sh"

# A store DIR/d.raw whose branch main is DEPTH snapshots deep, a 4 KiB write
# of pattern i at 64 KiB * i before snapshot i.
build() {
    mkdir -p "$1" && truncate -s 16M "$1/d.raw" && q create "$1/d.raw" root >/dev/null ||
        { bad "setup" "create root in $1"; return 1; }
    for i in $(seq 1 "$2"); do
        qemu-io -f qcow2 -c "write -P $i $((i * 65536)) 4k" "$(q current "$1/d.raw" --path)" \
            >/dev/null && q create "$1/d.raw" "s$i" >/dev/null ||
            { bad "setup" "write and create s$i in $1"; return 1; }
    done
    qemu-io -f qcow2 -c "write -P 200 0 4k" "$(q current "$1/d.raw" --path)" >/dev/null
}

# Opens of layer files (N.qcow2, .tmp-N.qcow2) by one run of qsnap ARGS (a sanitizer
# build's leak check cannot run under ptrace: it is turned off for these runs).
opens() {
    traced open,openat "$@" || return 1
    grep -cE '"(\.tmp-)?[0-9]+\.qcow2"' "$W/trace"
}

build shallow 4 && build deep 40 || { ts_end; exit 1; }
# TOP: the deepest snapshot of each store.
for op in "create @ s-new" "branch @ b-new --at TOP" "revert @ TOP --branch r-new"; do
    a=$(opens $(echo "$op" | sed 's|@|shallow/d.raw|; s|TOP|s4|')) ||
        { bad "$op" "failed on the shallow store"; continue; }
    b=$(opens $(echo "$op" | sed 's|@|deep/d.raw|; s|TOP|s40|')) ||
        { bad "$op" "failed on the deep store"; continue; }
    if [ "$a" -gt 0 ] && [ "$a" -eq "$b" ]; then
        ok "${op%% *} opens $a layer files at depth 4 and at depth 40"
    else
        bad "${op%% *} opens as many layer files at depth 40 as at 4" "$a at depth 4, $b at depth 40"
    fi
done

# The result is right: every layer passes check, the deep branch reads its writes back.
clean=1
for f in deep/d.raw.qsnap/layers/[0-9]*.qcow2 shallow/d.raw.qsnap/layers/[0-9]*.qcow2; do
    qemu-img check -q "$f" >/dev/null 2>&1 || { clean=0; bad "qemu-img check" "$f"; }
done
[ $clean -eq 1 ] && ok "every layer passes qemu-img check"
# s-new (made on the deep store above) as a raw image: each write's pattern where it
# was written, zeroes between.
reads=0
if q export deep/d.raw s-new out.raw -O raw >/dev/null; then
    reads=1
    for i in 1 17 40; do
        qemu-io -f raw -r -c "read -P $i $((i * 65536)) 4k" -c "read -P 0 $((i * 65536 + 4096)) 60k" \
            out.raw | grep -q 'Pattern verification failed' && reads=0
    done
    qemu-io -f raw -r -c "read -P 200 0 4k" -c "read -P 0 $((41 * 65536)) 64k" out.raw |
        grep -q 'Pattern verification failed' && reads=0
fi
[ $reads -eq 1 ] && ok "the snapshot made on the deep branch reads back every write through 41 layers" ||
    bad "read back" "export failed or a pattern differs"
q verify deep/d.raw >/dev/null 2>&1 && q verify shallow/d.raw >/dev/null 2>&1 &&
    ok "verify is clean on both stores" || bad "verify" "exit $?"

ts_end
