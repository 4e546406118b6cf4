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
