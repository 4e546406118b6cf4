#!/bin/sh
# tests/run.sh: the test runner behind `make test` (and `make check` with
# ONLY=unit). Runs, in order: every Criterion binary under $BUILD/tests/, the
# fuzz corpus replay, headertest, checksymbols, the CLI golden tests and the
# qemu-io replay (tests/cli/io_replay.sh), and
# every tests/interop/*.sh, tests/damaged/*.{sh,py}, tests/install/*.sh,
# tests/tree/*.sh, tests/vm/*.sh (a real QEMU guest), tests/libvirt/*.sh (a real
# libvirtd), tests/nbd/*.sh (nbdkit and FUSE) and tests/fs/*.sh (XFS and btrfs
# loop mounts) script. Each part
# counts the cases it reports (Criterion's synthesis line, the number of
# corpus files replayed, a script's "N passed, N failed" last line); a part
# that fails without saying how many cases failed counts as one failure.
#
# Environment:
#   BUILD=dir   build directory (default build/release)
#   T=name      run only the parts whose name contains `name`
#               (Criterion suites are named after their binary, e.g. test_header)
#   ONLY=unit   run only the Criterion suites
#   PART_TIMEOUT=secs   kill a part that runs longer (default 900)
# The last line printed is "N passed, N failed"; the exit status is non-zero
# when anything failed.
set -u

BUILD=${BUILD:-build/release}
T=${T:-}
ONLY=${ONLY:-}
PART_TIMEOUT=${PART_TIMEOUT:-900}
MAKE=${MAKE:-make}
QSNAP=${QSNAP:-$BUILD/qsnap}
case $QSNAP in /*) ;; *) QSNAP=$(pwd)/$QSNAP ;; esac
export QSNAP BUILD
# Under ASan: Criterion's own runner allocations are not ours (tests/lsan.supp).
LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$(pwd)/tests/lsan.supp:print_suppressions=0}
export LSAN_OPTIONS

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qsnap-run.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT INT TERM
summary=$tmp/summary
: >"$summary"
total_pass=0
total_fail=0
run_start=$(date +%s.%N 2>/dev/null || date +%s)

now() { date +%s.%N 2>/dev/null || date +%s; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# selected NAME: true when T is empty or NAME contains it.
selected() {
    [ -z "$T" ] && return 0
    case $1 in *"$T"*) return 0 ;; esac
    return 1
}

with_timeout() {
    if command -v timeout >/dev/null 2>&1; then
        timeout -k 10 "$PART_TIMEOUT" "$@"
    else
        "$@"
    fi
}

# record NAME PASSED FAILED START
record() {
    secs=$(elapsed "$4" "$(now)")
    total_pass=$((total_pass + $2))
    total_fail=$((total_fail + $3))
    status=ok
    [ "$3" -gt 0 ] && status=FAIL
    printf '%-4s %-36s %6s passed %6s failed %8ss\n' "$status" "$1" "$2" "$3" "$secs" >>"$summary"
    echo "---- $1: $2 passed, $3 failed (${secs}s)"
}

# run_logged LOG CMD...: run CMD, output both shown and kept in LOG; sets rc.
run_logged() {
    log=$1
    shift
    { with_timeout "$@" 2>&1; echo $? >"$tmp/rc"; } | tee "$log"
    rc=$(cat "$tmp/rc")
}

# The "N passed, N failed" last line of a script's output, or nothing.
script_counts() {
    tail -n 1 "$1" | sed -n 's/^\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\1 \2/p'
}

# run_script NAME CMD...: a script that ends with "N passed, N failed".
run_script() {
    name=$1
    shift
    selected "$name" || return 0
    echo "==== $name"
    start=$(now)
    run_logged "$tmp/log" "$@"
    counts=$(script_counts "$tmp/log")
    if [ -n "$counts" ]; then
        set -- $counts
        p=$1
        f=$2
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
            echo "$name: exit status $rc although no case failed"
            f=1
        fi
    elif [ "$rc" -eq 0 ]; then
        p=1
        f=0
    else
        echo "$name: exit status $rc"
        p=0
        f=1
    fi
    record "$name" "$p" "$f" "$start"
}

# ---- Criterion unit suites --------------------------------------------------
suites=$(find "$BUILD/tests" -type f -name 'test_*' ! -name '*.d' ! -name '*.o' 2>/dev/null | sort)
if [ -z "$suites" ]; then
    echo "run.sh: no Criterion suites under $BUILD/tests"
fi
for bin in $suites; do
    [ -x "$bin" ] || continue
    name=${bin#"$BUILD"/tests/}
    selected "$name" || continue
    echo "==== unit $name"
    start=$(now)
    run_logged "$tmp/log" "$bin" --ascii
    syn=$(sed 's/\x1b\[[0-9;]*m//g' "$tmp/log" | grep 'Synthesis:' | tail -n 1)
    p=$(echo "$syn" | sed -n 's/.*Passing: *\([0-9][0-9]*\).*/\1/p')
    f=$(echo "$syn" | sed -n 's/.*Failing: *\([0-9][0-9]*\).*/\1/p')
    c=$(echo "$syn" | sed -n 's/.*Crashing: *\([0-9][0-9]*\).*/\1/p')
    [ -n "$p" ] || p=0
    [ -n "$f" ] || f=0
    [ -n "$c" ] || c=0
    f=$((f + c))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "unit $name: exit status $rc"
        f=1
    fi
    record "unit $name" "$p" "$f" "$start"
done

if [ "$ONLY" != unit ]; then
    # ---- fuzz corpus replay --------------------------------------------------
    for bin in "$BUILD"/fuzz/replay_*; do
        [ -x "$bin" ] || continue
        t=${bin##*/replay_}
        name="fuzz $t"
        selected "$name" || continue
        [ -d "fuzz/corpora/$t" ] || { echo "run.sh: no corpus for fuzz target $t"; continue; }
        echo "==== $name"
        start=$(now)
        run_logged "$tmp/log" env ASAN_OPTIONS="${ASAN_OPTIONS:-allocator_may_return_null=1}" \
            "$bin" "fuzz/corpora/$t"
        n=$(sed -n 's/^replayed \([0-9][0-9]*\) files$/\1/p' "$tmp/log" | tail -n 1)
        if [ "$rc" -eq 0 ] && [ -n "$n" ]; then
            record "$name" "$n" 0 "$start"
        else
            # The file that was being replayed is the last "replay" line.
            last=$(grep '^replay ' "$tmp/log" | tail -n 1)
            started=$(grep -c '^replay ' "$tmp/log")
            echo "$name: exit status $rc; last input: ${last#replay }"
            p=$((started > 0 ? started - 1 : 0))
            record "$name" "$p" 1 "$start"
        fi
    done

    # ---- headers and symbols ---------------------------------------------------
    run_script headertest "$MAKE" --no-print-directory headertest
    run_script checksymbols "$MAKE" --no-print-directory BUILD="$BUILD" checksymbols

    # ---- CLI golden tests ----------------------------------------------------
    if [ -f tests/cli/run_golden.sh ]; then
        run_script "cli golden" sh tests/cli/run_golden.sh
    fi
    if [ -f tests/cli/io_replay.sh ]; then
        run_script "cli io_replay" sh tests/cli/io_replay.sh
    fi

    # ---- interop and damaged-image suites -------------------------------------
    for s in tests/interop/*.sh tests/damaged/*.sh tests/damaged/*.py tests/install/*.sh \
        tests/tree/*.sh tests/vm/*.sh tests/libvirt/*.sh tests/nbd/*.sh tests/fs/*.sh; do
        [ -f "$s" ] || continue
        case $s in
        *.py) run_script "${s#tests/}" python3 "$s" ;;
        *)
            if head -n 1 "$s" | grep -q bash; then
                run_script "${s#tests/}" bash "$s"
            else
                run_script "${s#tests/}" sh "$s"
            fi
            ;;
        esac
    done
fi

echo
echo "==== summary (BUILD=$BUILD${T:+, T=$T}${ONLY:+, ONLY=$ONLY})"
cat "$summary"
echo "total time: $(elapsed "$run_start" "$(now)")s"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ] && [ "$total_pass" -gt 0 ]
