# Sourced (bash) by the tree tests that count what qsnap does with strace
# (tests/tree/depth_cost.sh, tests/tree/seal.sh), after they set NAME:
#   QSNAP     the qsnap binary, absolute (default build/release/qsnap)
#   W         a work directory, the current one, removed on exit
#   ok, bad   one "ok NAME" / "FAIL NAME: reason" line each, counted in pass
#             and fail (ts_end prints "$pass passed, $fail failed" last)
#   q         qsnap with a time limit
#   (those from script_lib.sh, which this one sources)
#   traced    qsnap ARGS under strace -f, the trace in $W/trace (a sanitizer
#             build's leak check cannot run under ptrace: it is off there)
# Without qemu-io the script fails; without strace it is skipped (0 passed).
. "$(dirname "${BASH_SOURCE[0]}")/script_lib.sh"
ts_need qemu-io
command -v strace >/dev/null || ts_skip "skip: strace not installed (scripts/deps.sh installs it)"
ts_workdir "$NAME"
traced() {
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
        strace -f -qq -e "trace=$1" -o "$W/trace" "$QSNAP" "${@:2}" >/dev/null 2>&1
}
