#!/bin/bash
# Deletes that leave something behind: branches that hold changes no snapshot
# keeps (`delete --children`), and unnamed nodes nothing needs any more.
#   s1 -> s2 -> main (dirty) and c (clean), s1 -> b2 (current, dirty): deleting
#   the subtree of s2 is refused (exit 3, as `branch -d` refuses a dirty branch)
#   naming main and how much it holds, with the hint --force; the dry run is
#   refused the same way; nothing in the store changes. With --force the dry
#   run says which branches' changes are lost (text and JSON) and changes
#   nothing; the real run removes s2, main and c, and every state left reads
#   exactly as before (qsnap export against an export made before). Several
#   dirty branches are all named; a subtree whose branches are clean needs no
#   --force.
#   Unnamed nodes: s1 -> s2 -> s3 (-> s4), x at s1 (current); s2 (and s3)
#   deleted, so kept as unnamed nodes for what is built on them; deleting the
#   last snapshot on them (plainly or with --children) takes them and their
#   layer files too, up the tree, in the same plan (its summary says so, the
#   dry run lists the files); s1 and x read as before, verify is clean. An
#   unnamed node that a branch or another snapshot still stands on stays, and
#   so does one `delete --metadata` left (the user keeps its data). While the
#   store holds an unnamed node kept only for what is built on it, its meta
#   file is version 4 (an older qsnap refuses it by its version); one that
#   --metadata left keeps it at version 3.
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

# ---- unnamed nodes left with nothing on them ----

# The files of the unnamed nodes (one a line), and how many there are.
unnamed_files() {
    q list d.raw --json | awk '/"kind": "unnamed"/ { u = 1 } /"file":/ && u { print $2; u = 0 }' |
        tr -d '",'
}
unnamed_count() { q list d.raw --json | grep -c '"kind": "unnamed"'; }

# s1 -> s2 -> s3 [-> s4] (each with data of its own), x at s1 (current): main went (clean).
setup_chain() {
    local n
    chmod -R u+w . 2>/dev/null
    rm -rf d.raw d.raw.qsnap ./*.raw
    qemu-img create -f raw d.raw 16M >/dev/null
    qio raw d.raw "write -P 1 0 1M" || bad setup "write the disk"
    q create d.raw s1 >/dev/null || bad setup "create s1"
    for n in "$@"; do
        qio qcow2 "$(q current d.raw --path)" "write -P ${n#s} ${n#s}M 512k" || bad setup "write $n"
        q create d.raw "$n" >/dev/null || bad setup "create $n"
    done
    q revert d.raw s1 --branch x >/dev/null || bad setup "revert"
    export_all s1 x
}

setup_chain s2 s3
q delete d.raw s2 >/dev/null || bad setup "delete s2"
files=$(unnamed_files)
[ "$(unnamed_count)" = 1 ] && [ -f "$files" ] || bad setup "s2 is not an unnamed node: $files"
q delete d.raw s3 -n >out 2>err
rc=$?
[ $rc -eq 0 ] && grep -q "remove layers/${files##*/}" out &&
    ok "the dry run removes the unnamed node's layer with the last snapshot on it" ||
    bad "dry run of the last dependent" "exit $rc: $(cat out err)"
q delete d.raw s3 >out 2>err
rc=$?
if [ $rc -eq 0 ] && grep -q "the unnamed node it was built on went too" out &&
    [ "$(unnamed_count)" = 0 ] && [ ! -e "$files" ] && msg=$(same_as_before s1 x) &&
    q verify d.raw >/dev/null 2>&1; then
    ok "deleting the last snapshot on an unnamed node takes it and its layer file"
else
    bad "unnamed leaf" "exit $rc: ${msg:-} $(cat out err) unnamed: $(unnamed_count), $files"
fi
[ "$(q du d.raw | grep -c unnamed)" = 0 ] && ok "du no longer lists it" || bad "du" "$(q du d.raw)"

# The meta file's version follows the flag.
setup_chain s2 s3
q delete d.raw s2 >/dev/null || bad setup "delete s2"
[ "$(head -c 14 d.raw.qsnap/meta)" = "qsnap-store 4" ] &&
    ok "an unnamed node kept for its dependents makes the meta file version 4" ||
    bad "version 4" "$(head -c 14 d.raw.qsnap/meta)"

# One that delete --metadata left stays when the last snapshot on it goes.
setup_chain s2 s3
q delete d.raw s2 --metadata >/dev/null || bad setup "delete s2 --metadata"
files=$(unnamed_files)
v=$(head -c 14 d.raw.qsnap/meta)
q delete d.raw s3 >out 2>err
rc=$?
if [ $rc -eq 0 ] && ! grep -q "went too" out && [ "$(unnamed_count)" = 1 ] && [ -f "$files" ] &&
    msg=$(same_as_before s1 x) && q verify d.raw >/dev/null 2>&1; then
    ok "an unnamed node delete --metadata left keeps its data when nothing is built on it"
else
    bad "--metadata node" "exit $rc: ${msg:-} $(cat out err) unnamed: $(unnamed_count), $files"
fi
[ "$v" = "qsnap-store 3" ] && ok "--metadata alone leaves the meta file at version 3" ||
    bad "version after --metadata" "$v"

# Two unnamed nodes in a line: both go.
setup_chain s2 s3 s4
q delete d.raw s2 >/dev/null && q delete d.raw s3 >/dev/null || bad setup "delete s2, s3"
files=$(unnamed_files)
[ "$(unnamed_count)" = 2 ] || bad setup "not two unnamed nodes: $(q list d.raw)"
q delete d.raw s4 >out 2>err
rc=$?
gone=yes
for f in $files; do [ -e "$f" ] && gone=no; done
if [ $rc -eq 0 ] && grep -q "the unnamed nodes it was built on went too" out &&
    [ "$(unnamed_count)" = 0 ] && [ $gone = yes ] && msg=$(same_as_before s1 x) &&
    q verify d.raw >/dev/null 2>&1; then
    ok "unnamed nodes go up the tree while nothing needs them"
else
    bad "two unnamed nodes" "exit $rc: ${msg:-} $(cat out err) unnamed: $(unnamed_count)"
fi

# With --children: the subtree's last parent goes too.
setup_chain s2 s3 s4
q delete d.raw s2 >/dev/null || bad setup "delete s2"
q delete d.raw s3 --children >out 2>err
rc=$?
if [ $rc -eq 0 ] && grep -q "the unnamed node it was built on went too" out &&
    [ "$(unnamed_count)" = 0 ] && msg=$(same_as_before s1 x) && q verify d.raw >/dev/null 2>&1; then
    ok "delete --children takes the unnamed node it leaves with nothing on it"
else
    bad "--children and an unnamed parent" "exit $rc: ${msg:-} $(cat out err)"
fi

# Still needed: a branch on it, or another snapshot built on it.
setup_chain s2 s3
q branch d.raw b --at s2 >/dev/null || bad setup "branch b"
qio qcow2 "$(q current d.raw --path)" "write -P 9 8M 64k" || bad setup "write x"
export_all s1 x b s3
q delete d.raw s2 >/dev/null || bad setup "delete s2"
q delete d.raw s3 >out 2>err
rc=$?
if [ $rc -eq 0 ] && ! grep -q "went too" out && [ "$(unnamed_count)" = 1 ] &&
    msg=$(same_as_before s1 x b) && q verify d.raw >/dev/null 2>&1; then
    ok "an unnamed node a branch stands on stays"
else
    bad "unnamed node with a branch" "exit $rc: ${msg:-} $(cat out err) unnamed: $(unnamed_count)"
fi

ts_end
