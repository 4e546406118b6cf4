#!/bin/bash
# What space operations take and give back.
#   commit: the layer that keeps the old state of the base holds what the base
#   read where the branch wrote, and where that read as zeroes (a hole of a
#   sparse raw disk, zeroes written as data, a zero cluster of a qcow2 base) it
#   holds zero clusters, not zero data; every snapshot and branch reads the same
#   before and after (qemu-img compare), and qemu-img check is clean.
#   du: FREES of a snapshot is what `delete` then gives back (the store's
#   allocated bytes before and after), for a leaf, one dependent that overwrites
#   none, part or all of its data, several dependents, a frozen dependent, a
#   head holding an internal snapshot, and the last snapshot on an unnamed node.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
ts_init space qemu-img qemu-io python3

kib() { du -sk "$1" | cut -f1; }

# export_all DISK DIR: every snapshot and branch of DISK as DIR/NAME.raw.
export_all() {
    mkdir -p "$2"
    q list d.raw --json | python3 -c '
import json, sys
for n in json.load(sys.stdin)["nodes"]:
    if n["kind"] != "unnamed":
        print(n["name"])' >"$2/names"
    while read -r n; do
        q export "$1" "$n" "$2/$n.raw" -O raw >/dev/null || bad "export $n" "exit $?"
    done <"$2/names"
}

# same_all DIR1 DIR2: every image exported in DIR1 reads the same in DIR2.
same_all() {
    local n diff=""
    while read -r n; do
        qemu-img compare -q -f raw -F raw "$1/$n.raw" "$2/$n.raw" 2>/dev/null || diff="$diff $n"
    done <"$1/names"
    [ -z "$diff" ] || { echo "$diff"; return 1; }
}

# checked: qemu-img check of every layer is clean.
checked() {
    local f
    for f in d.raw.qsnap/layers/*.qcow2; do
        qemu-img check -U -q "$f" >/dev/null 2>&1 || { echo "$f"; return 1; }
    done
}

# ---- commit into a sparse raw disk ------------------------------------------

rm -rf d.raw d.raw.qsnap before after
truncate -s 64M d.raw
# 4 MiB of data, 4 MiB of zeroes written as data, the rest a hole.
qemu-io -f raw -c 'write -P 0x11 0 4M' d.raw >/dev/null
dd if=/dev/zero of=d.raw bs=1M seek=4 count=4 conv=notrunc,fsync status=none
q create d.raw s0 >/dev/null
qemu-io -f qcow2 -c 'write -P 0x5a 0 40M' "$(q current d.raw --path)" >/dev/null
export_all d.raw before
q commit d.raw >/dev/null || bad "commit" "exit $?"
export_all d.raw after
if diff=$(same_all before after); then
    ok "commit into a sparse raw disk: every state reads the same (qemu-img compare)"
else
    bad "commit content" "differs:$diff"
fi
keep=$(q info d.raw s0 | sed -n 's/^file: *//p')
k=$(kib "$keep")
# It keeps 4 MiB of data (0x11); the 36 MiB of zeroes are zero clusters (was 40 MiB).
if [ -n "$keep" ] && [ "$k" -ge 4096 ] && [ "$k" -lt 6144 ]; then
    ok "the layer keeping s0 holds its data, not its zeroes ($k KiB for 4 MiB of data)"
else
    bad "keeping layer size" "$keep: $k KiB (want 4-6 MiB)"
fi
zeroes=$(qemu-img map -U --output=json "$keep" | python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["depth"] == 0 and e["zero"]))')
[ "$zeroes" = $((36 << 20)) ] && ok "the zeroes are zero clusters of that layer (36 MiB)" ||
    bad "zero clusters" "$zeroes bytes"
bad_file=$(checked) && ok "qemu-img check clean after the commit" || bad "check" "$bad_file"
q verify d.raw >/dev/null 2>&1 && ok "verify clean after the commit" || bad "verify" "exit $?"

# ---- commit into a qcow2 base (a zero cluster in it) ----------------------------

rm -rf d.raw d.raw.qsnap before after
truncate -s 32M d.raw
qemu-io -f raw -c 'write -P 0x11 0 16M' d.raw >/dev/null
q create d.raw s0 >/dev/null
qemu-io -f qcow2 -c 'write -z 0 8M' -c 'write -P 0x22 8M 1M' "$(q current d.raw --path)" \
    >/dev/null
q create d.raw s1 >/dev/null
q branch d.raw b --at s1 >/dev/null
qemu-io -f qcow2 -c 'write -P 0x33 0 12M' "$(q current d.raw --path)" >/dev/null
export_all d.raw before
q commit d.raw >/dev/null || bad "commit into a layer" "exit $?"
export_all d.raw after
if diff=$(same_all before after); then
    ok "commit into a qcow2 base: every state reads the same"
else
    bad "commit into a layer" "differs:$diff"
fi
keep=$(q info d.raw s1 | sed -n 's/^file: *//p')
k=$(kib "$keep")
# s1 reads zeroes over 0-8M (zero clusters), 0x22 over 8-9M, 0x11 over 9-12M.
if [ "$k" -ge 4096 ] && [ "$k" -lt 6144 ]; then
    ok "the layer keeping s1 holds 4 MiB of data, its 8 MiB of zeroes as zero clusters"
else
    bad "keeping layer size (qcow2 base)" "$keep: $k KiB (want 4-6 MiB)"
fi
bad_file=$(checked) && ok "qemu-img check clean after it" || bad "check (qcow2 base)" "$bad_file"

# ---- du FREES against what delete gives back -------------------------------------

# frees_matches SHAPE SNAP: FREES of SNAP is what deleting it gives back (store's
# allocated bytes), within 64 KiB (the metadata file).
frees_matches() {
    local said before after got
    said=$(q du d.raw --json | python3 -c '
import json, sys
nodes = json.load(sys.stdin)["nodes"]
print([n["frees"] for n in nodes if n["name"] == sys.argv[1]][0] // 1024)' "$2")
    before=$(kib d.raw.qsnap)
    q delete d.raw "$2" >/dev/null || { bad "$1" "delete $2: exit $?"; return; }
    after=$(kib d.raw.qsnap)
    got=$((before - after))
    if [ $((said - got)) -le 64 ] && [ $((got - said)) -le 64 ]; then
        ok "du FREES, $1: $said KiB said, $got KiB freed"
    else
        bad "du FREES, $1" "$said KiB said, $got KiB freed"
    fi
}

# new_store: s1 on a 64 MiB disk, 4 MiB written after it, then s2.
new_store() {
    rm -rf d.raw d.raw.qsnap
    truncate -s 64M d.raw
    q create d.raw s1 >/dev/null
    qemu-io -f qcow2 -c 'write -P 0x22 0 4M' "$(q current d.raw --path)" >/dev/null
    q create d.raw s2 >/dev/null
}
wr() { qemu-io -f qcow2 -c "$1" "$(q current d.raw --path)" >/dev/null; }

new_store
wr 'write -P 0x33 8M 4M'
frees_matches "one dependent writing elsewhere" s2
new_store
wr 'write -P 0x33 0 2M'
frees_matches "one dependent overwriting half" s2
new_store
wr 'write -P 0x33 0 4M'
frees_matches "one dependent overwriting all" s2
new_store
wr 'write -P 0x33 8M 1M'
q create d.raw s3 >/dev/null
frees_matches "a frozen dependent (kept unnamed)" s2
new_store
wr 'write -P 0x33 8M 1M'
q create d.raw i1 --internal >/dev/null || bad "internal snapshot" "exit $?"
frees_matches "a head with an internal snapshot (kept unnamed)" s2
new_store
q branch d.raw other --at s2 >/dev/null
frees_matches "two dependents" s2
new_store
q revert d.raw s1 --branch x >/dev/null
frees_matches "a leaf" s2
new_store
wr 'write -P 0x33 8M 4M'
q create d.raw s3 >/dev/null
q revert d.raw s1 --branch x >/dev/null
q delete d.raw s2 >/dev/null # s3 is built on it: kept unnamed
frees_matches "the last snapshot on an unnamed node (which goes too)" s3
bad_file=$(checked) && ok "qemu-img check clean after the deletes" || bad "check" "$bad_file"

ts_end
