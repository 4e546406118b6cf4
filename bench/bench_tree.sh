#!/bin/sh
# The snapshot tree at scale: 100 branches of 10 snapshots each
# (1,000 snapshots, a write before every one), then the time of `list --tree`,
# and of create and revert when the tree holds 10 snapshots and when it holds
# 1,000 (they must not grow with the tree: no data is copied). Medians of 5
# runs, wall time of the whole qsnap process. A benchmark, not a test: it
# asserts nothing; run by `make bench` (bench/run.sh) or alone:
#   QSNAP=build/bench/qsnap sh bench/bench_tree.sh [SCRATCH_DIR]
set -eu

QSNAP=${QSNAP:-build/bench/qsnap}
case $QSNAP in /*) ;; *) QSNAP=$(pwd)/$QSNAP ;; esac
dir=$(mktemp -d "${1:-/tmp}/qsnap-tree.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir"

now_ms() { date +%s%N | awk '{ printf "%.3f", $1 / 1000000 }'; }

# Median wall time (ms) of 5 runs of "$@" (each run gets a fresh name via $RUN).
median() {
    for RUN in 1 2 3 4 5; do
        export RUN
        t0=$(now_ms)
        eval "$@" >/dev/null
        t1=$(now_ms)
        echo "$t1 $t0" | awk '{ printf "%.2f\n", $1 - $2 }'
    done | sort -n | sed -n 3p
}

# Median wall time (ms) of 5 creates, each right after a 4 KiB write (not timed).
median_create() {
    for RUN in 1 2 3 4 5; do
        write "$RUN"
        t0=$(now_ms)
        "$QSNAP" create disk.raw "$1-$RUN" >/dev/null
        t1=$(now_ms)
        echo "$t1 $t0" | awk '{ printf "%.2f\n", $1 - $2 }'
    done | sort -n | sed -n 3p
}

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
printf '%-36s %10s %10s  %s\n' "operation" "10 snaps" "1000 snaps" "target"
printf '%-36s %10s %10s  %s\n' "create (after a 4 KiB write), ms" "$create_small" "$create_big" \
    "< 5 ms, constant"
printf '%-36s %10s %10s  %s\n' "revert, ms" "$revert_small" "$revert_big" "constant"
printf '%-36s %10s %10s  %s\n' "switch, ms" "-" "$switch_big" "-"
printf '%-36s %10s %10s  %s\n' "list --tree, ms" "-" "$list_tree" "< 100 ms"
printf '%-36s %10s %10s  %s\n' "list --json, ms" "-" "$list_json" "-"
echo "(wall time of whole qsnap processes, median of 5; the create row includes nothing but create)"
