#!/bin/bash
# `delete --children` and branches that hold changes no snapshot keeps.
#   s1 -> s2 -> main (dirty) and c (clean), s1 -> b2 (current, dirty): deleting
#   the subtree of s2 is refused (exit 3, as `branch -d` refuses a dirty branch)
#   naming main and how much it holds, with the hint --force; the dry run is
#   refused the same way; nothing in the store changes. With --force the dry
#   run says which branches' changes are lost (text and JSON) and changes
#   nothing; the real run removes s2, main and c, and every state left reads
#   exactly as before (qsnap export against an export made before). Several
#   dirty branches are all named; a subtree whose branches are clean needs no
#   --force.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
set -u
. "$(dirname "$0")/../helpers/qemu_io.sh"

. "$(dirname "$0")/../helpers/script_lib.sh"
ts_init delchildren qemu-img qemu-io cmp md5sum

# Every file of the store with its content, one line each (equal: nothing changed).
store_sum() { (cd d.raw.qsnap && find . -type f ! -name lock -exec md5sum {} + | sort); }

# Export each named state to before-NAME.raw.
export_all() {
    local n
    for n in "$@"; do
        q export d.raw "$n" "before-$n.raw" -O raw >/dev/null || bad setup "export $n"
    done
}

# Each named state reads as its before-NAME.raw.
same_as_before() {
    local n
    for n in "$@"; do
        rm -f after.raw
        q export d.raw "$n" after.raw -O raw >/dev/null 2>&1 || { echo "$n: export failed"; return 1; }
        cmp -s "before-$n.raw" after.raw || { echo "$n: content differs"; return 1; }
    done
}

# s1 -> s2 -> main (1 MiB written: dirty), c (clean); s1 -> b2 (current, dirty).
setup() {
    chmod -R u+w . 2>/dev/null
    rm -rf d.raw d.raw.qsnap ./*.raw
    qemu-img create -f raw d.raw 16M >/dev/null
    qio raw d.raw "write -P 1 0 1M" || bad setup "write the disk"
    q create d.raw s1 >/dev/null || bad setup "create s1"
    qio qcow2 "$(q current d.raw --path)" "write -P 2 1M 1M" || bad setup "write s2"
    q create d.raw s2 >/dev/null || bad setup "create s2"
    qio qcow2 "$(q current d.raw --path)" "write -P 3 2M 1M" || bad setup "write main"
    q branch d.raw c --at s2 >/dev/null || bad setup "branch c"
    q revert d.raw s1 --branch b2 >/dev/null || bad setup "revert"
    qio qcow2 "$(q current d.raw --path)" "write -P 4 4M 64k" || bad setup "write b2"
    export_all s1 s2 main c b2
}

setup
before=$(store_sum)
q delete d.raw s2 --children >out 2>err
rc=$?
if [ $rc -eq 3 ] && grep -q "branch main (1.0 MiB) in the subtree of s2 holds changes" err &&
    grep -q "hint: --force" err; then
    ok "a dirty branch in the subtree is refused (exit 3), named with what it holds"
else
    bad "refused without --force" "exit $rc: $(tr '\n' ' ' <err)"
fi
q delete d.raw s2 --children --dry-run >out 2>err
rc=$?
[ $rc -eq 3 ] && grep -q "branch main (1.0 MiB)" err && ok "its dry run is refused the same way" ||
    bad "dry run without --force" "exit $rc: $(tr '\n' ' ' <err)"
if [ "$(store_sum)" = "$before" ] && msg=$(same_as_before s1 s2 main c b2); then
    ok "a refused delete changes nothing"
else
    bad "refused delete" "${msg:-store files changed}"
fi

q delete d.raw s2 --children --force --dry-run >out 2>err
rc=$?
[ $rc -eq 0 ] && grep -q "^changes lost (no snapshot keeps them): branch main (1.0 MiB)$" out &&
    ok "the --force dry run names the branch whose changes are lost" ||
    bad "--force --dry-run" "exit $rc: $(tr '\n' ' ' <out) $(tr '\n' ' ' <err)"
q delete d.raw s2 --children -f -n --json >out 2>err
rc=$?
[ $rc -eq 0 ] && grep -q '"summary": "[^"]*dropped the changes of branch main (1.0 MiB)' out &&
    ok "... and its JSON summary" || bad "--force --dry-run --json" "exit $rc: $(cat out err)"
[ "$(store_sum)" = "$before" ] && ok "the dry runs change nothing" || bad "dry runs" "store files changed"

q delete d.raw s2 --children --force >out 2>err
rc=$?
if [ $rc -eq 0 ] && grep -q "dropped the changes of branch main (1.0 MiB)" out; then
    ok "--force deletes it and says what was dropped"
else
    bad "--force" "exit $rc: $(tr '\n' ' ' <out) $(tr '\n' ' ' <err)"
fi
gone=""
for n in s2 main c; do
    q info d.raw $n >/dev/null 2>&1
    [ $? -eq 6 ] || gone="$gone $n"
done
if [ -z "$gone" ] && msg=$(same_as_before s1 b2) && q verify d.raw >/dev/null 2>&1; then
    ok "the subtree is gone, s1 and b2 read as before, verify is clean"
else
    bad "after --force" "${msg:-still there:$gone, or verify failed}"
fi

# Two dirty branches: both named.
setup
q switch d.raw c >/dev/null && qio qcow2 "$(q current d.raw --path)" "write -P 5 3M 64k" &&
    q switch d.raw b2 >/dev/null || bad setup "write c"
q delete d.raw s2 --children >out 2>err
rc=$?
[ $rc -eq 3 ] && grep -q "branches main (1.0 MiB), c (64.0 KiB) in the subtree of s2 hold" err &&
    ok "several dirty branches are all named" || bad "two dirty branches" "exit $rc: $(cat err)"

# Clean branches only: no --force needed.
setup
q switch d.raw main >/dev/null && q create d.raw s3 >/dev/null && q switch d.raw b2 >/dev/null ||
    bad setup "snapshot main"
q delete d.raw s2 --children >out 2>err
rc=$?
if [ $rc -eq 0 ] && ! grep -q "dropped" out && msg=$(same_as_before s1 b2) &&
    q verify d.raw >/dev/null 2>&1; then
    ok "a subtree of clean branches goes without --force"
else
    bad "clean subtree" "exit $rc: ${msg:-} $(cat out err)"
fi

ts_end
