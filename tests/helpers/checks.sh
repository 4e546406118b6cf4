# Sourced by tests/install/*.sh (bash) for their first lines; the preamble
# itself (QSNAP, pass and fail, ok, bad, ts_end, the work directory) is
# script_lib.sh's, which this one sources:
#   BUILD, MAKE, CC      default build/release, make, cc
#   check_setup NAME     makes the work directory W (qsnap-NAME.XXXXXX under
#                        TMPDIR; removed at exit unless KEEP=1) and stays in
#                        the source tree the script was started in (make,
#                        examples/, docs/ are read from there)
#   check NAME CMD...    ok NAME when CMD succeeds; else FAIL NAME with CMD's
#                        exit status, and the first 20 lines of its output
#                        (kept in $W/out)
BUILD=${BUILD:-build/release}
MAKE=${MAKE:-make}
CC=${CC:-cc}
. "$(dirname "${BASH_SOURCE[0]}")/script_lib.sh"

check_setup() {
    local top
    top=$(pwd)
    ts_workdir "$1"
    cd "$top" || exit 2
}

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
