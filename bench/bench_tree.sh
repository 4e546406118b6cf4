#!/bin/sh
# The snapshot tree at scale: 100 branches of 10 snapshots each
# (1,000 snapshots, a write before every one), then the time of `list --tree`,
# and of create and revert when the tree holds 10 snapshots and when it holds
# 1,000 (they must not grow with the tree: no data is copied). Medians of 5
# runs, wall and CPU time of the whole qsnap process. A benchmark, not a test: it
# asserts nothing; run by `make bench` (bench/run.sh) or alone:
#   QSNAP=build/bench/qsnap sh bench/bench_tree.sh [SCRATCH_DIR]
# (ROWS=10k: only the rows at 10,000 snapshots, which need tests/snapshot/test_scale built)
#
# Each run is timed by bench/timeit (`make bench-bins` builds it beside the
# benchmarks: BUILD/bench/timeit, or TIMEIT=PATH): the wall time from spawn to
# reap and the CPU time (user + system) of the qsnap process alone, both to the
# microsecond, and its max RSS, from one run. Without it, the script falls back
# to the clock read by `date` around the run (which adds the forks of date and
# awk and the shell: 15-20 ms for /bin/true here) and, for CPU, 5 more runs
# under `perf stat` (task-clock, which starts at the exec and so leaves out part
# of the start and the end of the process: about 1 ms less than timeit's figure)
# or /usr/bin/time (10 ms steps). The first row of each table is /bin/true timed
# the same way: the floor of any process on this machine with this method; the
# second is `qsnap --version`: the floor of qsnap (its start, and its loading,
# which the dynamic loader makes about 1.7 ms dearer than a -static-pie qsnap's).
set -eu
export LC_ALL=C

QSNAP=${QSNAP:-build/bench/qsnap}
case $QSNAP in /*) ;; *) QSNAP=$(pwd)/$QSNAP ;; esac
TIMEIT=${TIMEIT:-$(dirname "$QSNAP")/bench/timeit}
case $TIMEIT in /*) ;; *) TIMEIT=$(pwd)/$TIMEIT ;; esac
[ -x "$TIMEIT" ] || TIMEIT=
dir=$(mktemp -d "${1:-/tmp}/qsnap-tree.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir"

# Fallback CPU time: perf stat's task-clock (ms, to the microsecond) when perf
# works here, else /usr/bin/time's user + system time (to 10 ms only).
if [ -n "$TIMEIT" ]; then
    TIME_BY="bench/timeit (wall: spawn to reap; CPU: user + system of the process)"
elif command -v perf >/dev/null 2>&1 && perf stat -x, -e task-clock -o "$dir/cpu" true 2>/dev/null; then
    CPU_BY="perf stat -e task-clock"
    TIME_BY="date around the run (wall) and $CPU_BY (CPU); bench/timeit not built"
else
    CPU_BY="/usr/bin/time (user + system, 10 ms steps)"
    TIME_BY="date around the run (wall) and $CPU_BY (CPU); bench/timeit not built"
fi
# CPU time (ms) of one run of the command string "$@".
cpu_ms() {
    case $CPU_BY in
    perf*)
        eval perf stat -x, -e task-clock -o "\"$dir/cpu\"" "$@" >/dev/null
        awk -F, '$3 ~ /task-clock/ { printf "%.2f\n", $1 }' "$dir/cpu" ;;
    *)
        eval /usr/bin/time -f "'%U %S'" -o "\"$dir/cpu\"" "$@" >/dev/null
        tail -1 "$dir/cpu" | awk '{ printf "%.2f\n", ($1 + $2) * 1000 }' ;;
    esac
}
now_ms() { date +%s%N | awk '{ printf "%.3f", $1 / 1000000 }'; }
# One run of the command string "$@" under timeit: appends its wall and CPU
# ms to $dir/w and $dir/c and keeps the largest max RSS (KiB) in $dir/rssmax.
timeit_once() {
    eval '"$TIMEIT" -o "$dir/t"' "$@" >/dev/null
    read -r w c r <"$dir/t"
    echo "$w" >>"$dir/w"
    echo "$c" >>"$dir/c"
    [ "$r" -le "$(cat "$dir/rssmax")" ] || echo "$r" >"$dir/rssmax"
}
echo 0 >"$dir/rssmax"

# "WALL/CPU": the medians (ms) of 5 runs under timeit; without it, of 5 runs
# timed by the clock and of 5 more under cpu_ms. Each run gets a fresh number
# in $RUN (1-5, then 6-10 for the fallback's CPU runs) for the names it makes;
# PRE, when set, is run (not timed) before each.
median() {
    : >"$dir/w"
    : >"$dir/c"
    for i in 1 2 3 4 5; do
        RUN=$i
        export RUN
        [ -z "${PRE:-}" ] || eval "$PRE"
        if [ -n "$TIMEIT" ]; then
            timeit_once "$@"
            continue
        fi
        t0=$(now_ms)
        eval "$@" >/dev/null
        t1=$(now_ms)
        echo "$t1 $t0" | awk '{ printf "%.2f\n", $1 - $2 }' >>"$dir/w"
        RUN=$((i + 5))
        [ -z "${PRE:-}" ] || eval "$PRE"
        cpu_ms "$@" >>"$dir/c"
    done
    printf '%.2f/%.2f\n' "$(sort -n "$dir/w" | sed -n 3p)" "$(sort -n "$dir/c" | sed -n 3p)"
}

# The same for creates, each right after a 4 KiB write (not timed).
median_create() {
    PRE='write "$RUN"'
    median '"$QSNAP" create disk.raw "'"$1"'-$RUN"'
    PRE=
}

# The floor: a process that does nothing, timed the same way; and qsnap's own
# floor, a qsnap that only starts and prints its version (the cost of loading
# it: with a dynamically linked qsnap, the loader's work on its libraries).
floor=$(median /bin/true)
qfloor=$(median '"$QSNAP" --version')

# The tree at 10 and at 1,000 snapshots (ROWS=10k skips it: only the rows below).
rows_1k() {
    truncate -s 256M disk.raw
    write() { "$QSNAP" image io -c "write -P $(($1 % 250 + 1)) $(($1 * 4096 % 200000000 / 4096 * 4096)) 4k" \
        "$("$QSNAP" current disk.raw --path)" >/dev/null; }
    "$QSNAP" create disk.raw root >/dev/null

    # A small tree first: 10 snapshots.
    for i in 1 2 3 4 5 6 7 8 9; do write "$i"; "$QSNAP" create disk.raw "s0-$i" >/dev/null; done
    create_small=$(median_create small)
    revert_small=$(median '"$QSNAP" revert disk.raw root --branch "rs-$RUN"')
    # (main was clean: revert dropped it; the tree goes on from the last branch)

    t0=$(now_ms)
    n=0
    for b in $(seq 1 100); do
        "$QSNAP" branch disk.raw "b$b" --at root >/dev/null
        "$QSNAP" switch disk.raw "b$b" >/dev/null
        for s in $(seq 1 10); do
            n=$((n + 1))
            write "$n"
            "$QSNAP" create disk.raw "b$b-s$s" >/dev/null
        done
    done
    t1=$(now_ms)
    count=$("$QSNAP" list disk.raw --json | grep -c '"kind": "snapshot"' || true)
    branches=$("$QSNAP" branch disk.raw | wc -l)

    list_tree=$(median '"$QSNAP" list disk.raw --tree')
    list_json=$(median '"$QSNAP" list disk.raw --json')
    create_big=$(median_create big)
    revert_big=$(median '"$QSNAP" revert disk.raw b50-s5 --branch "rb-$RUN"')
    switch_big=$(median '"$QSNAP" switch disk.raw b$RUN')
    "$QSNAP" verify disk.raw >/dev/null

    echo
    echo "snapshot tree at scale: $count snapshots, $branches branches (built in $(echo "$t1 $t0" |
        awk '{ printf "%.1f", ($1 - $2) / 1000 }') s)"
    printf '%-36s %14s %14s  %s\n' "operation (ms, wall/CPU)" "10 snaps" "1000 snaps" "target"
    printf '%-36s %14s %14s  %s\n' "/bin/true (the floor of a process)" "$floor" "$floor" "-"
    printf '%-36s %14s %14s  %s\n' "qsnap --version (the floor of qsnap)" "$qfloor" "$qfloor" "-"
    printf '%-36s %14s %14s  %s\n' "create (after a 4 KiB write)" "$create_small" "$create_big" \
        "< 5 ms, constant"
    printf '%-36s %14s %14s  %s\n' "revert" "$revert_small" "$revert_big" "constant"
    printf '%-36s %14s %14s  %s\n' "switch" "-" "$switch_big" "-"
    printf '%-36s %14s %14s  %s\n' "list --tree" "-" "$list_tree" "< 100 ms"
    printf '%-36s %14s %14s  %s\n' "list --json" "-" "$list_json" "-"
    echo "(whole qsnap processes, medians of 5: wall time, then CPU time, by $TIME_BY;"
    echo " the create row includes nothing but create)"
}
[ "${ROWS:-all}" = 10k ] || rows_1k

# At 10,000 snapshots and 1,000 branches. Made directly (10,000 creates would take
# many minutes) by the fixture of the scale test (tests/snapshot/test_scale.c: each
# branch 10 snapshots in a line from the root, two snapshots per frozen layer, a
# 512-byte write in each layer); then the same rows, and the most memory (max RSS)
# any of those commands took.
SCALE_BIN=${SCALE_BIN:-}
for c in "$(dirname "$QSNAP")/tests/snapshot/test_scale" build/release/tests/snapshot/test_scale; do
    # (relative names are of the directory the script was started in)
    [ -z "$SCALE_BIN" ] && (cd "$OLDPWD" && [ -x "$c" ]) && SCALE_BIN=$c
done
case $SCALE_BIN in ''|/*) ;; *) SCALE_BIN=$OLDPWD/$SCALE_BIN ;; esac
if [ -z "$SCALE_BIN" ] || [ ! -x "$SCALE_BIN" ]; then
    echo "10,000 snapshots: skipped (build tests/snapshot/test_scale first: make check)"
    exit 0
fi
big=$(SCALE_KEEP=1 SCALE_BUILD_ONLY=1 QSNAP=$QSNAP "$SCALE_BIN" 2>&1 | sed -n 's/^kept //p')
[ -d "$big" ] || { echo "10,000 snapshots: the fixture was not made"; exit 1; }
trap 'rm -rf "$dir" "$big"' EXIT
D=$big/disk.img
echo 0 >"$dir/rssmax"
# Like median, keeping the largest max RSS (KiB) of the timed runs in $dir/rssmax.
median_rss() {
    if [ -n "$TIMEIT" ]; then
        median "$@"
        return
    fi
    : >"$dir/w"
    : >"$dir/c"
    for i in 1 2 3 4 5; do
        RUN=$i
        export RUN
        t0=$(now_ms)
        eval /usr/bin/time -f %M -o "$dir/rss" "$@" >/dev/null
        t1=$(now_ms)
        r=$(tail -1 "$dir/rss")
        [ "$r" -gt "$(cat "$dir/rssmax")" ] && echo "$r" >"$dir/rssmax"
        echo "$t1 $t0" | awk '{ printf "%.2f\n", $1 - $2 }' >>"$dir/w"
        RUN=$((i + 5))
        cpu_ms "$@" >>"$dir/c"
    done
    printf '%.2f/%.2f\n' "$(sort -n "$dir/w" | sed -n 3p)" "$(sort -n "$dir/c" | sed -n 3p)"
}
"$QSNAP" switch "$D" b5 >/dev/null
count=$("$QSNAP" list "$D" --json | grep -c '"kind": "snapshot"' || true)
branches=$("$QSNAP" branch "$D" | wc -l)
create_10k=$(median_rss '"$QSNAP" create "$D" "c10k-$RUN"')
revert_10k=$(median_rss '"$QSNAP" revert "$D" b500-s5 --branch "r10k-$RUN"')
# The branch each revert leaves is clean (the last one made it at a snapshot): it is dropped
# and the new branch takes its name, as a plain `qsnap revert DISK SNAPSHOT` does.
reuse_10k=$(median_rss '"$QSNAP" revert "$D" "b$((RUN + 300))-s5"')
switch_10k=$(median_rss '"$QSNAP" switch "$D" b$((RUN + 10))')
list_10k=$(median_rss '"$QSNAP" list "$D" --tree')
json_10k=$(median_rss '"$QSNAP" list "$D" --json')
du_10k=$(median_rss '"$QSNAP" du "$D"')
# A branch's whole line (10 snapshots from the root, and the branch), another each run.
subtree_10k=$(median_rss '"$QSNAP" delete "$D" "b$((RUN + 600))-s1" --children')
"$QSNAP" verify "$D" >/dev/null || echo "verify of the 10,000-snapshot store failed"
echo
echo "snapshot tree at 10,000 snapshots: $count snapshots, $branches branches"
printf '%-36s %14s  %s\n' "operation (ms, wall/CPU)" "10k snaps" "target"
printf '%-36s %14s  %s\n' "/bin/true (the floor of a process)" "$floor" "-"
printf '%-36s %14s  %s\n' "qsnap --version (the floor of qsnap)" "$qfloor" "-"
printf '%-36s %14s  %s\n' "create (clean head)" "$create_10k" "< 5 ms"
printf '%-36s %14s  %s\n' "revert" "$revert_10k" "< 5 ms"
printf '%-36s %14s  %s\n' "revert (clean branch left)" "$reuse_10k" "< 5 ms"
printf '%-36s %14s  %s\n' "switch" "$switch_10k" "< 5 ms"
printf '%-36s %14s  %s\n' "list --tree" "$list_10k" "< 200 ms"
printf '%-36s %14s  %s\n' "list --json" "$json_10k" "-"
printf '%-36s %14s  %s\n' "du" "$du_10k" "-"
printf '%-36s %14s  %s\n' "delete --children (10 snapshots)" "$subtree_10k" "-"
printf '%-36s %14s  %s\n' "max RSS of those, MiB" "$(awk '{ printf "%.1f", $1 / 1024 }' "$dir/rssmax")" "< 50 MiB"
echo "(whole qsnap processes, medians of 5: wall time, then CPU time, by $TIME_BY)"
