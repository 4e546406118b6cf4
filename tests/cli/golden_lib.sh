# Helpers for the CLI golden cases (sourced by tests/cli/cases/*/cmd, which run
# in a fresh temporary directory). Images are made here with qemu-img and
# qemu-io at run time; qsnap itself is $QSNAP.

# A 1 MiB raw base with 0xaa at 0 and 0xbb at 512k, and a 2 MiB qcow2 overlay
# on it with 0xcc at 64k, zeroes at 128k and 0x01 at 1536k (past the base).
mkchain() {
    qemu-img create -q -f raw base.raw 1M
    qemu-io -f raw -c 'write -P 0xaa 0 64k' -c 'write -P 0xbb 512k 64k' base.raw >/dev/null
    qemu-img create -q -f qcow2 -b base.raw -F raw ov.qcow2 2M
    qemu-io -c 'write -P 0xcc 64k 64k' -c 'write -z 128k 64k' -c 'write -P 1 1536k 4k' \
        ov.qcow2 >/dev/null
}

# Run "qsnap image ARGS" and "qemu-img ARGS"; print "same: ARGS" when stdout
# and the exit status agree, else the difference. The temporary directory is
# shown as $PWD so the expected output does not depend on it.
same() {
    "$QSNAP" image "$@" >qsnap.out 2>/dev/null
    a=$?
    qemu-img "$@" >qemu.out 2>/dev/null
    b=$?
    if [ $a -eq $b ] && cmp -s qsnap.out qemu.out; then
        echo "same: $*" | sed "s|$(pwd)|\$PWD|g"
    else
        echo "DIFFERENT: $* (exit $a vs $b)" | sed "s|$(pwd)|\$PWD|g"
        diff qsnap.out qemu.out
    fi
}

# Drop the lines that vary from run to run (timings, disk usage).
stable() {
    grep -v -e ' ops; ' -e '^disk size: ' -e '"actual-size": '
}

# Show a command's exit status after its output.
status() {
    "$@"
    echo "exit $?"
}

# A small snapshot tree on a 4 MiB raw disk, for the tree commands' output:
#   base ("fresh install", the disk itself) -- s1 ("apt upgrade") -- branch main
#                                           \- branch test (current)
# 0x11 at 0 is in s1, 0x22 at 64k in main's head, 0x33 at 1M in test's head.
mkstore() {
    truncate -s 4M disk.raw
    "$QSNAP" create disk.raw base -m "fresh install" >/dev/null
    _mkstore_w 0x11 0
    "$QSNAP" create disk.raw s1 -m "apt upgrade" >/dev/null
    _mkstore_w 0x22 64k
    "$QSNAP" revert disk.raw base --branch test >/dev/null
    _mkstore_w 0x33 1M
}
_mkstore_w() {
    "$QSNAP" image io -c "write -P $1 $2 64k" "$("$QSNAP" current disk.raw --path)" >/dev/null
}

# Mask what differs between runs and machines in the tree commands' output:
# the temporary directory (as $PWD), dates, and the bytes a file occupies on
# its storage (st_blocks: file system dependent). Guest sizes stay.
mask_tree() {
    sed -E -e "s|$(pwd)|\$PWD|g" \
        -e 's/[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}/YYYY-MM-DD hh:mm:ss/g' \
        -e 's/[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}/YYYY-MM-DD hh:mm/g' \
        -e 's/^(file size: +).*/\1SIZE/' \
        -e 's/"(created|file_bytes|holds|frees|total_bytes)": [0-9]+/"\1": N/'
}

# Also mask human sizes (the SIZE column of list, HOLDS and FREES of du).
mask_sizes() {
    mask_tree | sed -E 's/ +[0-9.]+ (B|KiB|MiB)( |$)/ SIZE\2/g'
}
