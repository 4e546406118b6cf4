# Sourced by tests/interop/*.sh (bash) before their first case:
#   interop_setup NAME   makes QSNAP absolute (default build/release/qsnap),
#                        checks that qemu-img, qemu-io, python3 and cmp exist
#                        and that QSNAP is built (else prints a failed setup
#                        line and the totals, and exits 1), makes the work
#                        directory W (qsnap-NAME.XXXXXX under TMPDIR; removed at
#                        exit unless KEEP=1), enters it and zeroes pass and fail.
interop_setup() {
    QSNAP=${QSNAP:-build/release/qsnap}
    case $QSNAP in /*) ;; *) QSNAP=$(pwd)/$QSNAP ;; esac
    for c in qemu-img qemu-io python3 cmp; do
        command -v $c >/dev/null || { echo "FAIL setup: $c not found"; echo "0 passed, 1 failed"; exit 1; }
    done
    if [ ! -x "$QSNAP" ]; then
        echo "FAIL setup: $QSNAP not found (build first)"
        echo "0 passed, 1 failed"
        exit 1
    fi
    W=$(mktemp -d "${TMPDIR:-/tmp}/qsnap-$1.XXXXXX") || exit 2
    if [ "${KEEP:-0}" = 1 ]; then
        echo "# work directory: $W"
    else
        trap 'rm -rf "$W"' EXIT
    fi
    cd "$W" || exit 2
    pass=0
    fail=0
}
