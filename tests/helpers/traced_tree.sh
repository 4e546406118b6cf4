# Sourced (bash) by the tree tests that count what qsnap does with strace
# (tests/tree/depth_cost.sh, tests/tree/seal.sh), after they set NAME:
#   QSNAP     the qsnap binary, absolute (default build/release/qsnap)
#   W         a work directory, the current one, removed on exit
#   ok, bad   one "ok NAME" / "FAIL NAME: reason" line each, counted in pass
#             and fail (the script prints "$pass passed, $fail failed" last)
#   q         qsnap with a time limit
#   traced    qsnap ARGS under strace -f, the trace in $W/trace (a sanitizer
#             build's leak check cannot run under ptrace: it is off there)
# Without qemu-io the script fails; without strace it is skipped (0 passed).
QSNAP=${QSNAP:-build/release/qsnap}
case $QSNAP in /*) ;; *) QSNAP=$(pwd)/$QSNAP ;; esac
command -v qemu-io >/dev/null || { echo "FAIL setup: qemu-io not found"; echo "0 passed, 1 failed"; exit 1; }
if ! command -v strace >/dev/null; then
    echo "skip: strace not installed (scripts/deps.sh installs it)"
    echo "0 passed, 0 failed"
    exit 0
fi
W=$(mktemp -d "${TMPDIR:-/tmp}/qsnap-$NAME.XXXXXX") || exit 2
trap 'chmod -R u+w "$W" 2>/dev/null; rm -rf "$W"' EXIT
cd "$W" || exit 2
pass=0
fail=0
ok() { echo "ok $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
q() { timeout -k 5 60 "$QSNAP" "$@"; }
traced() {
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
        strace -f -qq -e "trace=$1" -o "$W/trace" "$QSNAP" "${@:2}" >/dev/null 2>&1
}
