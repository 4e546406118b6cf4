# Sourced by tests/install/*.sh (bash), after script_lib.sh and ts_workdir:
#   check NAME CMD...    ok NAME when CMD succeeds; else FAIL NAME with CMD's
#                        exit status, and the first 20 lines of its output
#                        (kept in $W/out)
check() {
    local name=$1
    shift
    if "$@" >"$W/out" 2>&1; then
        ok "$name"
    else
        bad "$name" "exit $?"
        sed 's/^/     /' "$W/out" | head -20
    fi
}
