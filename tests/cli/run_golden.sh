#!/bin/sh
# CLI golden tests for qsnap. Each case is a directory under tests/cli/cases/:
#   cmd     a sh script, run in a fresh temporary directory with $QSNAP set
#           (it may make images there with qemu-img/qemu-io at run time)
#   stdout  the expected standard output
#   stderr  the expected standard error (optional: unchecked when absent)
#   status  the expected exit status of the script (a number)
# Usage: QSNAP=path/to/qsnap sh tests/cli/run_golden.sh [CASE...]
# UPDATE=1 rewrites the expected files from the actual results (review them!).
# The last line is "N passed, N failed"; the exit status is 1 when a case failed.
set -u

here=$(cd "$(dirname "$0")" && pwd)
QSNAP=${QSNAP:-build/release/qsnap}
case $QSNAP in /*) ;; *) QSNAP=$(pwd)/$QSNAP ;; esac
GOLDEN_DIR=$here
export QSNAP GOLDEN_DIR
if [ ! -x "$QSNAP" ]; then
    echo "run_golden: $QSNAP is not an executable (set QSNAP)" >&2
    echo "0 passed, 1 failed"
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/qsnap-golden.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

if [ $# -gt 0 ]; then
    cases=$*
else
    cases=$(cd "$here/cases" && ls)
fi

passed=0
failed=0
for name in $cases; do
    dir=$here/cases/$name
    if [ ! -f "$dir/cmd" ]; then
        echo "FAIL $name: no such case"
        failed=$((failed + 1))
        continue
    fi
    run=$work/$name
    mkdir -p "$run/tmp"
    (cd "$run/tmp" && TZ=UTC LC_ALL=C sh "$dir/cmd" >"$run/stdout" 2>"$run/stderr" </dev/null)
    echo $? >"$run/status"
    if [ "${UPDATE:-0}" = 1 ]; then
        cp "$run/stdout" "$run/status" "$dir/"
        [ -f "$dir/stderr" ] && cp "$run/stderr" "$dir/"
    fi
    ok=1
    for f in stdout stderr status; do
        [ -f "$dir/$f" ] || continue
        if ! cmp -s "$dir/$f" "$run/$f"; then
            [ $ok = 1 ] && echo "FAIL $name"
            ok=0
            echo "  $f differs (expected, actual):"
            diff "$dir/$f" "$run/$f" | sed 's/^/    /' | head -20
        fi
    done
    if [ $ok = 1 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
done

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
