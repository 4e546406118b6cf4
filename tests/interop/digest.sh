#!/bin/bash
# The image digest against its written definition: docs/DIGEST.md carries a
# Python recipe that computes the digest of a flat raw file. For images of
# every layout (raw with holes and written zeroes, qcow2 with unallocated and
# zero clusters, 512-byte and 2 MiB clusters, compressed, extended L2, a deep
# chain, an odd size), qsnap's digest of the image must equal the recipe's
# digest of qemu-img's raw conversion of it; images with the same content
# must have one digest, and a one-byte change (in data or in a zero run)
# must change it.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
set -u
. "$(dirname "$0")/../helpers/qemu_io.sh"

. "$(dirname "$0")/../helpers/script_lib.sh"
DOC=$(cd "$(dirname "$0")/../.." && pwd)/docs/DIGEST.md
ts_need qemu-img qemu-io
PY=/usr/bin/python3
[ -x $PY ] || PY=python3
$PY -c 'import xxhash' 2>/dev/null ||
    ts_skip "# skipped: python3's xxhash module is missing (apt-get install python3-xxhash)"
ts_workdir digest

# The recipe, exactly as the document gives it.
sed -n '/^```python$/,/^```$/p' "$DOC" | sed '1d;$d' >recipe.py
if ! grep -q 'def qsnap_digest' recipe.py; then
    bad setup "no Python recipe in $DOC"
    ts_end
    exit 1
fi
printf 'import sys\nprint(qsnap_digest(sys.argv[1]))\n' >>recipe.py

W1=('write -P 0x11 0 200k' 'write -P 0 200k 300k' 'write -P 0x22 1M 4k' 'write -P 0x33 3M 1536' 'write -P 0x44 4093k 1k')
make_all() {
    qemu-img create -q -f raw raw.raw 4M &&
        qio raw raw.raw "${W1[@]}" &&
        qemu-img convert -O qcow2 raw.raw holes.qcow2 &&
        qemu-img create -q -f qcow2 zc.qcow2 4M && qio qcow2 zc.qcow2 'write -z 0 4M' &&
        qio qcow2 zc.qcow2 "${W1[@]}" &&
        qemu-img convert -c -O qcow2 raw.raw comp.qcow2 &&
        qemu-img convert -O qcow2 -o cluster_size=512 raw.raw c512.qcow2 &&
        qemu-img convert -O qcow2 -o cluster_size=2M raw.raw c2m.qcow2 &&
        qemu-img create -q -f qcow2 -o extended_l2=on ext.qcow2 4M && qio qcow2 ext.qcow2 "${W1[@]}" &&
        qemu-img convert -S 0 -O raw raw.raw full.raw &&
        qemu-img create -q -f qcow2 l0.qcow2 4M &&
        qio qcow2 l0.qcow2 'write -P 0x44 4093k 1k' 'write -P 9 2M 64k' &&
        for i in $(seq 1 20); do
            qemu-img create -q -f qcow2 -b l$((i - 1)).qcow2 -F qcow2 l$i.qcow2 4M || return 1
        done &&
        qio qcow2 l4.qcow2 'write -P 0x11 0 200k' && qio qcow2 l9.qcow2 'write -z 2M 64k' &&
        qio qcow2 l13.qcow2 'write -P 0x22 1M 4k' && qio qcow2 l17.qcow2 'write -P 0x33 3M 1536' &&
        qio qcow2 l20.qcow2 'write -P 0 200k 300k' &&
        qemu-img create -q -f raw odd.raw 1000000 && qio raw odd.raw 'write -P 5 999990 10' &&
        qemu-img create -q -f qcow2 big.qcow2 1G &&
        qio qcow2 big.qcow2 'write -P 6 0 64k' 'write -z 512M 256M' 'write -P 7 900M 1M'
}
if ! make_all >setup.log 2>&1; then
    bad setup "could not make the images: $(tail -n 3 setup.log)"
    ts_end
    exit 1
fi

want=""
for img in raw.raw holes.qcow2 zc.qcow2 comp.qcow2 c512.qcow2 c2m.qcow2 ext.qcow2 full.raw l20.qcow2 \
    odd.raw big.qcow2; do
    mine=$(q image digest "$img" 2>err | awk '{ print $1 }')
    qemu-img convert -O raw "$img" flat.raw 2>>err
    theirs=$($PY recipe.py flat.raw 2>>err)
    rm -f flat.raw
    if [ -z "$mine" ] || [ "$mine" != "$theirs" ]; then
        bad "recipe $img" "qsnap '$mine', the document's recipe '$theirs' $(head -c 200 err)"
    else
        ok "recipe $img"
    fi
    case $img in odd.raw | big.qcow2) ;; *)
        if [ -z "$want" ]; then want=$mine; fi
        if [ "$mine" = "$want" ]; then ok "same content $img"; else bad "same content $img" "$mine != $want"; fi
        ;;
    esac
done

# One byte anywhere, including inside a zero run (written zeroes, a hole, a zero cluster).
for at in 0 150k 300k 2052k 4095k 1025k; do
    cp holes.qcow2 u.qcow2 && qio qcow2 u.qcow2 "write -P 1 $at 1"
    d=$(q image digest u.qcow2 | awk '{ print $1 }')
    if [ -n "$d" ] && [ "$d" != "$want" ]; then ok "one byte at $at"; else bad "one byte at $at" "digest unchanged ($d)"; fi
done

ts_end
