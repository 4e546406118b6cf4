# Sourced (bash) by the test scripts for what each of them does first and last:
#   QSNAP        the qsnap binary, made absolute when sourced (default
#                $BUILD/qsnap, BUILD defaulting to build/release, relative
#                to the current directory)
#   pass, fail   the counters, zero when sourced
#   ok NAME      prints "ok NAME" (and the seconds so far when TIMING is set),
#                counts a pass
#   bad NAME WHY prints "FAIL NAME: WHY", counts a failure
#   q ARGS...    qsnap ARGS under a time limit of TS_TIMEOUT seconds (default
#                60): qsnap must never hang
#   ts_need TOOL...  each TOOL is a command, and QSNAP is built; else prints
#                "FAIL setup: ... not found" and "0 passed, 1 failed", exits 1
#   ts_skip WHY  prints WHY and "0 passed, 0 failed", exits 0
#   ts_workdir NAME  makes the work directory W (qsnap-NAME.XXXXXX under
#                TMPDIR) and enters it; at exit the commands given to
#                ts_atexit run, then W is made writable again and removed
#                (kept, and named, when KEEP=1)
#   ts_init NAME TOOL...  ts_need TOOL..., then ts_workdir NAME
#   ts_atexit CMD    CMD (a string for eval) runs at exit, before W goes:
#                a script stops what it started (a daemon by its pid) there
#   ts_end       prints "N passed, N failed"; true when nothing failed (the
#                script's last command, so its exit status)
QSNAP=${QSNAP:-${BUILD:-build/release}/qsnap}
case $QSNAP in /*) ;; *) QSNAP=$(pwd)/$QSNAP ;; esac
pass=0
fail=0
TS_ATEXIT=()

ok() { echo "ok $1${TIMING:+ (${SECONDS}s)}"; pass=$((pass + 1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
q() { timeout -k 5 "${TS_TIMEOUT:-60}" "$QSNAP" "$@"; }

ts_need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null || { echo "FAIL setup: $c not found"; echo "0 passed, 1 failed"; exit 1; }
    done
    if [ ! -x "$QSNAP" ]; then
        echo "FAIL setup: $QSNAP not found (build first)"
        echo "0 passed, 1 failed"
        exit 1
    fi
}

ts_skip() {
    echo "$1"
    echo "0 passed, 0 failed"
    exit 0
}

ts_atexit() { TS_ATEXIT+=("$1"); }

# The EXIT trap: the script's own cleanup first, then the work directory
# (layers a test left read-only are made writable so that rm can go in).
ts_cleanup() {
    local c
    for c in "${TS_ATEXIT[@]}"; do eval "$c"; done
    [ -n "${W:-}" ] || return 0
    if [ "${KEEP:-0}" = 1 ]; then
        return 0
    fi
    chmod -R u+w "$W" 2>/dev/null
    rm -rf "$W"
}

ts_workdir() {
    W=$(mktemp -d "${TMPDIR:-/tmp}/qsnap-$1.XXXXXX") || exit 2
    trap ts_cleanup EXIT
    [ "${KEEP:-0}" = 1 ] && echo "# work directory: $W"
    cd "$W" || exit 2
}

ts_init() {
    local name=$1
    shift
    ts_need "$@"
    ts_workdir "$name"
}

ts_end() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}
