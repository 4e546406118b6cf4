#!/bin/bash
# Layer operations interop suite: qsnap's commit, rebase, convert -B,
# measure, map and compare against qemu-img 7.2 on the same inputs.
#   commit   into raw and qcow2 bases, one level and deeper (-b, which implies
#            -d as in qemu-img), with -d;
#            v2/v3, zstd and compressed clusters, extended L2, different
#            cluster sizes between layers, overlays larger than their base.
#            After each: the base and the top read what the top read before
#            (qemu-img compare against qemu-img's raw conversion of the top),
#            the base equals what `qemu-img commit` made of a copy of the
#            chain, qemu-img check is clean on every qcow2 file, and the top
#            allocates nothing (qemu-img map) unless -d.
#   rebase   safe: the top's content is unchanged, equals qemu-img rebase's
#            result on a copy, check clean, backing name/format as qemu-img's;
#            unsafe: only the header changes (the bytes past the first cluster
#            are identical) and qemu-img info shows the new name/format;
#            removal of the backing file (-b "").
#   convert  -B: content equals the source, check clean, the output's backing
#            is as given, and it allocates no more than qemu-img convert -B's.
#   measure  required and fully-allocated equal qemu-img measure's, for --size
#            and for files, across -O and -o options (human and JSON output).
#   map, compare  on the chains: map's present/zero/data per byte as qemu-img's;
#            compare (also -s) exit status and message as qemu-img's.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
#   QSNAP=path  the qsnap binary (default build/release/qsnap)
#   KEEP=1      keep the work directory
set -u

. "$(dirname "$0")/../helpers/interop_setup.sh"
. "$(dirname "$0")/../helpers/qemu_io.sh"
interop_setup ops
T0=$SECONDS

json_get() { # KEY < json: one top-level key of a JSON object
    python3 -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$1"
}

# Bytes a qcow2 file allocates itself (qemu-img map: depth 0, present and data).
own_data_bytes() {
    qemu-img map --output=json "$1" | python3 -c '
import json, sys
print(sum(r["length"] for r in json.load(sys.stdin) if r["depth"] == 0 and r["present"] and r["data"]))'
}

# Whether a qcow2 file allocates nothing at all (every run reads through).
is_empty() {
    [ "$(qemu-img map --output=json "$1" | python3 -c '
import json, sys
print(sum(1 for r in json.load(sys.stdin) if r["depth"] == 0 and r["present"]))')" = 0 ]
}

# check_clean FILE...: qemu-img check finds nothing on each qcow2 file; prints why not.
check_clean() {
    local f
    for f in "$@"; do
        [ "$(qemu-img info --output=json "$f" | json_get format)" = qcow2 ] || continue
        if ! qemu-img check "$f" >"$W/check.out" 2>&1; then
            echo "qemu-img check $f: $(grep -v '^$' "$W/check.out" | head -n 3 | paste -sd ';')"
            return 1
        fi
    done
}

# same_content A B: qemu-img compare (not strict) says identical; prints why not.
same_content() {
    qemu-img compare "$1" "$2" >"$W/cmp.out" 2>&1 || { echo "$1 vs $2: $(head -n 2 "$W/cmp.out" | paste -sd ';')"; return 1; }
}

vsize() { qemu-img info --output=json "$1" | json_get virtual-size; }

# ---- chains ---------------------------------------------------------------
# Each builder makes a chain in the current directory with relative backing
# names (so a copy of the directory is an independent chain) and sets TOP,
# BASE (the file to commit into) and MID (the layers between, if any).

# base raw 2M, top qcow2 v3 64k clusters of the same size
chain_raw_v3() {
    qemu-img create -q -f raw base.raw 2M
    qio raw base.raw "write -P 0x11 0 300k" "write -P 0x12 1M 64k" "write -P 0x13 2044k 4k"
    qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2
    qio qcow2 top.qcow2 "write -P 0x21 4k 8k" "write -P 0x22 200k 200k" "write -z 1M 32k" \
        "write -P 0x23 1500k 1000" "discard 256k 64k"
    TOP=top.qcow2 BASE=base.raw MID=
}

# qcow2 v2 base and top, 4k clusters under 64k
chain_v2() {
    qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4k base.qcow2 2M
    qio qcow2 base.qcow2 "write -P 0x31 0 100k" "write -P 0x32 1M 300k"
    qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 top.qcow2
    qio qcow2 top.qcow2 "write -P 0x33 70k 50k" "write -z 1100k 8k" "write -P 0x34 1900k 5000"
    TOP=top.qcow2 BASE=base.qcow2 MID=
}

# zstd: base with compressed clusters, top with compressed and plain writes
chain_zstd() {
    qemu-img create -q -f qcow2 -o compression_type=zstd base.qcow2 2M
    qio qcow2 base.qcow2 "write -c -P 0x41 0 128k" "write -P 0x42 512k 64k"
    qemu-img create -q -f qcow2 -o compression_type=zstd -b base.qcow2 -F qcow2 top.qcow2
    qio qcow2 top.qcow2 "write -c -P 0x43 64k 64k" "write -P 0x44 520k 1000" "write -z 0 64k" \
        "write -c -P 0x45 1M 192k"
    TOP=top.qcow2 BASE=base.qcow2 MID=
}

# extended L2 on both layers (32k clusters, 1k subclusters) with partial subclusters
chain_extl2() {
    qemu-img create -q -f qcow2 -o cluster_size=32k,extended_l2=on base.qcow2 2M
    qio qcow2 base.qcow2 "write -P 0x51 0 64k" "write -P 0x52 300k 3000"
    qemu-img create -q -f qcow2 -o cluster_size=32k,extended_l2=on -b base.qcow2 -F qcow2 top.qcow2
    qio qcow2 top.qcow2 "write -P 0x53 1100 200" "write -z 5k 1k" "write -P 0x54 301k 100" \
        "discard 40k 2k" "write -P 0x55 1M 33k"
    TOP=top.qcow2 BASE=base.qcow2 MID=
}

# different cluster sizes: 64k base, 512-byte top
chain_cs512() {
    qemu-img create -q -f qcow2 base.qcow2 2M
    qio qcow2 base.qcow2 "write -P 0x61 0 256k"
    qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 top.qcow2
    qio qcow2 top.qcow2 "write -P 0x62 1000 3000" "write -z 100k 1536" "write -P 0x63 1M 4k"
    TOP=top.qcow2 BASE=base.qcow2 MID=
}

# different cluster sizes the other way: 4k base, 2M top
chain_cs2m() {
    qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 4M
    qio qcow2 base.qcow2 "write -P 0x71 0 1M" "write -P 0x72 3M 4k"
    qemu-img create -q -f qcow2 -o cluster_size=2M -b base.qcow2 -F qcow2 top.qcow2
    qio qcow2 top.qcow2 "write -P 0x73 5000 1000" "write -P 0x74 2M 4k"
    TOP=top.qcow2 BASE=base.qcow2 MID=
}

# the overlay is larger than its raw base (the base grows); size not a cluster multiple
chain_grow_raw() {
    qemu-img create -q -f raw base.raw 1M
    qio raw base.raw "write -P 0x81 0 1M"
    qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 $((3 * 1024 * 1024 + 1536))
    qio qcow2 top.qcow2 "write -P 0x82 1000k 100k" "write -P 0x83 $((3 * 1024 * 1024)) 1536"
    TOP=top.qcow2 BASE=base.raw MID=
}

# the overlay is larger than its qcow2 base
chain_grow_qcow2() {
    qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 1M
    qio qcow2 base.qcow2 "write -P 0x91 0 1M"
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 5M
    qio qcow2 top.qcow2 "write -P 0x92 1020k 8k" "write -P 0x93 4M 64k" "write -z 100k 64k"
    TOP=top.qcow2 BASE=base.qcow2 MID=
}

# three levels: raw base <- mid (v3, 16k) <- top (64k), sizes growing
chain_deep_raw() {
    qemu-img create -q -f raw base.raw 1M
    qio raw base.raw "write -P 0xa1 0 1M"
    mkdir -p l1
    qemu-img create -q -f qcow2 -o cluster_size=16k -b ../base.raw -F raw l1/mid.qcow2 2M
    qio qcow2 l1/mid.qcow2 "write -P 0xa2 100k 50k" "write -z 300k 16k" "write -P 0xa3 1500k 20k"
    qemu-img create -q -f qcow2 -b l1/mid.qcow2 -F qcow2 top.qcow2 3M
    qio qcow2 top.qcow2 "write -P 0xa4 120k 10k" "write -P 0xa5 2500k 64k"
    TOP=top.qcow2 BASE=base.raw MID=l1/mid.qcow2
}

# four levels over a qcow2 v2 base, committing into the base
chain_deep_qcow2() {
    qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4k base.qcow2 2M
    qio qcow2 base.qcow2 "write -P 0xb1 0 512k"
    qemu-img create -q -f qcow2 -o extended_l2=on -b base.qcow2 -F qcow2 m1.qcow2
    qio qcow2 m1.qcow2 "write -P 0xb2 10k 5k" "write -z 200k 64k"
    qemu-img create -q -f qcow2 -o compression_type=zstd -b m1.qcow2 -F qcow2 m2.qcow2
    qio qcow2 m2.qcow2 "write -c -P 0xb3 1M 128k" "write -P 0xb4 12k 1k"
    qemu-img create -q -f qcow2 -o cluster_size=8k -b m2.qcow2 -F qcow2 top.qcow2
    qio qcow2 top.qcow2 "write -P 0xb5 1M 4k"
    TOP=top.qcow2 BASE=base.qcow2 MID="m1.qcow2 m2.qcow2"
}

# ---- map and compare on a chain -------------------------------------------
cat >mapcmp.py <<'PY'
# mapcmp.py A_JSON B_JSON: present/zero/data agree at every byte (exit 1 and why if not).
import json, sys
a = json.load(open(sys.argv[1]))
b = json.load(open(sys.argv[2]))
def flat(runs):
    return [(r["start"], r["start"] + r["length"], (r["present"], r["zero"], r["data"])) for r in runs]
fa, fb = flat(a), flat(b)
if fa[-1][1] != fb[-1][1]:
    print(f"qsnap covers {fa[-1][1]} bytes, qemu-img {fb[-1][1]}")
    sys.exit(1)
cuts = sorted({s for s, _, _ in fa + fb})
def at(runs, pos):
    for s, e, t in runs:
        if s <= pos < e:
            return t
for c in cuts:
    if at(fa, c) != at(fb, c):
        print(f"at {c}: qsnap present/zero/data {at(fa, c)}, qemu-img {at(fb, c)}")
        sys.exit(1)
PY

map_case() { # NAME FILE
    qemu-img map --output=json "$2" >"$W/map.qemu" 2>&1 || { bad "$1" "qemu-img map failed"; return; }
    if ! q image map --output=json "$2" >"$W/map.qsnap" 2>"$W/err"; then
        bad "$1" "qsnap image map failed: $(head -c 200 "$W/err")"
    elif msg=$(python3 "$W/mapcmp.py" "$W/map.qsnap" "$W/map.qemu"); then
        ok "$1"
    else
        bad "$1" "$msg"
    fi
}

compare_case() { # NAME A B [-s]: same exit status and message as qemu-img compare
    local qe qs
    qemu-img compare ${4:-} "$2" "$3" >"$W/c.qemu" 2>/dev/null
    qe=$?
    q image compare ${4:-} "$2" "$3" >"$W/c.qsnap" 2>"$W/err"
    qs=$?
    if [ $qe != $qs ] || ! cmp -s "$W/c.qemu" "$W/c.qsnap"; then
        bad "$1" "qemu-img: $qe '$(head -n 1 "$W/c.qemu")'; qsnap: $qs '$(head -n 1 "$W/c.qsnap")' $(head -c 200 "$W/err")"
    else
        ok "$1"
    fi
}

# ---- commit -----------------------------------------------------------------
# commit_case NAME BUILDER DEEP KEEP: build the chain twice (ours/, qemu/),
# commit with qsnap in ours/ (-b BASE when DEEP=1, -d when KEEP=1) and with
# qemu-img in qemu/, then check.
commit_case() {
    local name=$1 builder=$2 deep=$3 keep=$4 args=() why top_size
    local d=$W/commit_$name
    mkdir -p "$d/ours" && cd "$d/ours" || return
    if ! $builder; then
        bad "commit $name" "setup failed: $(tail -n 2 "$W/qio.out")"
        cd "$W"
        return
    fi
    cp -a "$d/ours" "$d/qemu"
    qemu-img convert -O raw "$TOP" "$d/expected.raw"
    top_size=$(vsize "$TOP")
    # qemu-img finds a deeper -b only by its full name.
    [ "$deep" = 1 ] && args+=(-b "$(pwd)/$BASE")
    [ "$keep" = 1 ] && args+=(-d)

    map_case "map $name" "$TOP"
    compare_case "compare $name top-vs-base" "$TOP" "$BASE"
    compare_case "compare $name top-vs-base -s" "$TOP" "$BASE" -s
    compare_case "compare $name top-vs-flat -s" "$TOP" "$d/expected.raw" -s

    if ! q image commit "${args[@]}" "$TOP" >"$W/out" 2>"$W/err"; then
        bad "commit $name" "qsnap image commit ${args[*]} failed: $(head -c 300 "$W/err")"
        cd "$W"
        return
    fi
    if [ "$(cat "$W/out")" != "Image committed." ]; then
        bad "commit $name" "output '$(head -c 100 "$W/out")', expected 'Image committed.'"
    elif ! why=$(same_content "$BASE" "$d/expected.raw"); then
        bad "commit $name" "base does not hold the top's content: $why"
    elif [ "$(vsize "$BASE")" -lt "$top_size" ]; then
        bad "commit $name" "base is $(vsize "$BASE") bytes, the top $top_size"
    elif ! why=$(same_content "$TOP" "$d/expected.raw"); then
        bad "commit $name" "top's content changed: $why"
    elif ! why=$(check_clean "$BASE" "$TOP" $MID); then
        bad "commit $name" "$why"
    elif [ "$keep" != 1 ] && [ "$deep" != 1 ] && ! is_empty "$TOP"; then
        bad "commit $name" "top still allocates data after commit without -d or -b"
    elif { [ "$keep" = 1 ] || [ "$deep" = 1 ]; } && [ "$(own_data_bytes "$TOP")" = 0 ]; then
        bad "commit $name" "top lost its data with -d or -b (which implies -d)"
    else
        ok "commit $name"
    fi

    # The base as qemu-img commit makes it from the same chain.
    [ "$deep" = 1 ] && args[1]=$d/qemu/$BASE
    (cd "$d/qemu" && qemu-img commit -q "${args[@]}" "$TOP") 2>"$W/err" ||
        { bad "commit $name vs qemu-img" "qemu-img commit failed: $(head -c 200 "$W/err")"; cd "$W"; return; }
    if why=$(same_content "$BASE" "$d/qemu/$BASE"); then
        ok "commit $name vs qemu-img"
    else
        bad "commit $name vs qemu-img" "bases differ: $why"
    fi

    # -b implies -d (as qemu-img): the top keeps its backing link.
    if [ "$deep" = 1 ]; then
        local bf0 bf
        bf0=$(qemu-img info --output=json "$d/qemu/$TOP" | json_get backing-filename)
        bf=$(qemu-img info --output=json "$TOP" | json_get backing-filename)
        if [ "$bf" = "$bf0" ]; then
            ok "commit $name keeps the top's backing link"
        else
            bad "commit $name keeps the top's backing link" "top's backing file is '$bf', qemu-img's '$bf0'"
        fi
    fi
    cd "$W"
}

echo "# commit"
commit_case raw_v3 chain_raw_v3 0 0
commit_case raw_v3_keep chain_raw_v3 0 1
commit_case v2 chain_v2 0 0
commit_case zstd chain_zstd 0 0
commit_case extl2 chain_extl2 0 0
commit_case cs512 chain_cs512 0 0
commit_case cs2m chain_cs2m 0 0
commit_case grow_raw chain_grow_raw 0 0
commit_case grow_qcow2 chain_grow_qcow2 0 0
commit_case deep_raw chain_deep_raw 1 0
commit_case deep_raw_keep chain_deep_raw 1 1
commit_case deep_qcow2 chain_deep_qcow2 1 0
commit_case explicit_b_one_level chain_v2 1 0

# -b names the base by another spelling (an absolute path through ..).
d=$W/commit_bpath
mkdir -p "$d" && cd "$d" && chain_deep_raw
if q image commit -q -b "$d/l1/../base.raw" top.qcow2 2>"$W/err"; then
    ok "commit -b path spelled differently"
else
    bad "commit -b path spelled differently" "$(head -c 200 "$W/err")"
fi
cd "$W"

# Errors as qemu-img: no backing file, a -b that is not in the chain.
mkdir -p errs && cd errs && chain_raw_v3
for args in "base.raw" "-b nonexist.raw top.qcow2" "-b top.qcow2 top.qcow2" "-f raw base.raw"; do
    qemu-img commit $args >"$W/o1" 2>"$W/e1"
    qe=$?
    q image commit $args >"$W/o2" 2>"$W/e2"
    qs=$?
    m1=$(grep '^qemu-img: ' "$W/e1" | sed 's/^qemu-img: //')
    m2=$(sed 's/^qsnap: //' "$W/e2")
    if [ $qe = $qs ] && [ "$m1" = "$m2" ]; then
        ok "commit error: $args"
    else
        bad "commit error: $args" "qemu-img $qe '$m1', qsnap $qs '$m2'"
    fi
done
cd "$W"

# ---- rebase ---------------------------------------------------------------
# A top over old.raw; new backing files that differ from it in places.
rebase_setup() {
    qemu-img create -q -f raw old.raw 2M
    qio raw old.raw "write -P 0xc1 0 1M" "write -P 0xc2 1536k 64k"
    qemu-img create -q -f raw new.raw 1M
    qio raw new.raw "write -P 0xc1 0 512k" "write -P 0xc3 700k 8k"
    qemu-img create -q -f qcow2 -o cluster_size=4k,compat=0.10 new2.qcow2 3M
    qio qcow2 new2.qcow2 "write -P 0xc1 0 1M" "write -P 0xc4 2M 1M"
    qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on -b old.raw -F raw top.qcow2 2M
    qio qcow2 top.qcow2 "write -P 0xc5 100k 3k" "write -z 600k 32k" "write -P 0xc6 1540k 512"
}

# rebase_case NAME ARGS...: qsnap rebase ARGS in ours/, qemu-img rebase ARGS in qemu/.
rebase_case() {
    local name=$1 why bq bo fq fo
    shift
    local d=$W/rebase_$name
    mkdir -p "$d/ours" && cd "$d/ours" || return
    rebase_setup || { bad "rebase $name" "setup failed"; cd "$W"; return; }
    cp -a "$d/ours" "$d/qemu"
    qemu-img convert -O raw top.qcow2 "$d/before.raw"
    cp top.qcow2 "$d/before.qcow2"
    if ! q image rebase "$@" top.qcow2 >"$W/out" 2>"$W/err"; then
        bad "rebase $name" "qsnap image rebase $* failed: $(head -c 300 "$W/err")"
        cd "$W"
        return
    fi
    (cd "$d/qemu" && qemu-img rebase "$@" top.qcow2) >"$W/out.qemu" 2>&1
    bq=$(qemu-img info --output=json "$d/qemu/top.qcow2" | json_get backing-filename)
    bo=$(qemu-img info --output=json top.qcow2 | json_get backing-filename)
    fq=$(qemu-img info --output=json "$d/qemu/top.qcow2" | json_get backing-filename-format)
    fo=$(qemu-img info --output=json top.qcow2 | json_get backing-filename-format)
    if ! cmp -s "$W/out" "$W/out.qemu"; then
        bad "rebase $name" "printed '$(head -c 100 "$W/out")', qemu-img '$(head -c 100 "$W/out.qemu")'"
    elif ! why=$(check_clean top.qcow2); then
        bad "rebase $name" "$why"
    elif [ "$bq/$fq" != "$bo/$fo" ]; then
        bad "rebase $name" "backing '$bo' ($fo), qemu-img made '$bq' ($fq)"
    elif ! why=$(same_content top.qcow2 "$d/qemu/top.qcow2"); then
        bad "rebase $name" "content differs from qemu-img's result: $why"
    else
        case " $* " in
        *" -u "*)
            # Unsafe: nothing but the header cluster changed.
            if ! cmp -s -i 16384 top.qcow2 "$d/before.qcow2"; then
                bad "rebase $name" "bytes past the header cluster changed: $(cmp -i 16384 top.qcow2 "$d/before.qcow2" 2>&1 | head -n 1)"
            else
                ok "rebase $name"
            fi
            ;;
        *)
            if ! why=$(same_content top.qcow2 "$d/before.raw"); then
                bad "rebase $name" "top's content changed: $why"
            elif [ "$(own_data_bytes top.qcow2)" -gt "$(own_data_bytes "$d/qemu/top.qcow2")" ]; then
                bad "rebase $name" "allocates $(own_data_bytes top.qcow2) bytes, qemu-img's result $(own_data_bytes "$d/qemu/top.qcow2")"
            else
                ok "rebase $name"
            fi
            ;;
        esac
    fi
    cd "$W"
}

echo "# rebase"
rebase_case safe_raw -b new.raw -F raw
rebase_case safe_qcow2_larger -b new2.qcow2 -F qcow2
rebase_case safe_remove -b ""
rebase_case safe_same -b old.raw -F raw
rebase_case unsafe -u -b new.raw -F raw
rebase_case unsafe_qcow2 -u -b new2.qcow2 -F qcow2
rebase_case unsafe_remove -u -b ""
rebase_case unsafe_no_b -u
rebase_case unsafe_progress -u -p -b new.raw -F raw

# qemu-img's unsafe rebase needs neither the old nor the new backing file.
d=$W/rebase_missing
mkdir -p "$d" && cd "$d" && rebase_setup
if q image rebase -u -b gone.raw -F raw top.qcow2 2>"$W/err" &&
    [ "$(qemu-img info --output=json top.qcow2 | json_get backing-filename)" = gone.raw ]; then
    ok "rebase unsafe onto a missing file"
else
    bad "rebase unsafe onto a missing file" "qemu-img accepts it; qsnap: $(head -c 200 "$W/err")"
fi
rm -f old.raw
if q image rebase -u -b new.raw -F raw top.qcow2 2>"$W/err" &&
    [ "$(qemu-img info --output=json top.qcow2 | json_get backing-filename)" = new.raw ]; then
    ok "rebase unsafe from a missing file"
else
    bad "rebase unsafe from a missing file" "qemu-img accepts it; qsnap: $(head -c 200 "$W/err")"
fi
cd "$W"

# Backing names long enough that the header passes its first sector (qsnap moves
# the name so the old header keeps its bytes until the new one is written):
# qemu-img reads each name back, finds the data, and check is clean.
d=$W/rebase_long && mkdir -p "$d" && cd "$d"
lp=$(printf 'd/%.0s' $(seq 1 300))
mkdir -p "$lp" && qemu-img create -q -f raw "${lp}a.raw" 1M && qio raw "${lp}a.raw" "write -P 0xd1 0 64k"
cp "${lp}a.raw" "${lp}b.raw"
qemu-img create -q -f qcow2 -b "${lp}a.raw" -F raw top.qcow2
why=""
for n in b a b a b; do
    if ! q image rebase -u -b "${lp}$n.raw" -F raw top.qcow2 2>"$W/err"; then
        why="rebase to ${#lp}-byte name failed: $(head -c 200 "$W/err")"
        break
    fi
    got=$(qemu-img info --output=json top.qcow2 | json_get backing-filename)
    if [ "$got" != "${lp}$n.raw" ]; then
        why="qemu-img reads backing name '...${got: -12}', want '...$n.raw'"
        break
    elif ! why=$(check_clean top.qcow2); then
        break
    elif ! qemu-io -f qcow2 -r -c "read -P 0xd1 0 64k" top.qcow2 >/dev/null 2>&1; then
        why="qemu-io does not read the backing data through '$n.raw'"
        break
    fi
    why=""
done
if [ -z "$why" ]; then ok "rebase unsafe with ${#lp}-byte names, five times"; else bad "rebase long names" "$why"; fi
cd "$W"

mkdir -p rerrs && cd rerrs && rebase_setup
for args in "top.qcow2" "-b new.raw top.qcow2" "-b new.raw -F foo top.qcow2"; do
    qemu-img rebase $args >"$W/o1" 2>"$W/e1"
    qe=$?
    q image rebase $args >"$W/o2" 2>"$W/e2"
    qs=$?
    m1=$(grep '^qemu-img: ' "$W/e1" | sed 's/^qemu-img: //')
    m2=$(grep '^qsnap: ' "$W/e2" | sed 's/^qsnap: //')
    if [ $qe = $qs ] && [ "$m1" = "$m2" ]; then
        ok "rebase error: $args"
    else
        bad "rebase error: $args" "qemu-img $qe '$m1', qsnap $qs '$m2'"
    fi
done
cd "$W"

# ---- convert -B -----------------------------------------------------------
echo "# convert -B"
mkdir -p conv && cd conv
chain_deep_raw
qemu-img convert -O raw top.qcow2 flat.raw
qemu-img create -q -f qcow2 -o cluster_size=4k other.qcow2 3M
qio qcow2 other.qcow2 "write -P 0xa1 0 1M" "write -P 0xa4 120k 10k" "write -P 0xee 2M 64k"
# convert_b NAME SRC BACKING BFMT [OPTIONS...]
convert_b() {
    local name=$1 src=$2 bk=$3 bf=$4 why
    shift 4
    rm -f "q_$name.qcow2" "m_$name.qcow2"
    if ! q image convert -O qcow2 "$@" -B "$bk" -F "$bf" "$src" "q_$name.qcow2" 2>"$W/err"; then
        bad "convert -B $name" "qsnap failed: $(head -c 300 "$W/err")"
        return
    fi
    qemu-img convert -O qcow2 "$@" -B "$bk" -F "$bf" "$src" "m_$name.qcow2" 2>"$W/err" ||
        { bad "convert -B $name" "qemu-img failed: $(head -c 200 "$W/err")"; return; }
    if ! why=$(same_content "q_$name.qcow2" "$src"); then
        bad "convert -B $name" "content differs from the source: $why"
    elif ! why=$(check_clean "q_$name.qcow2"); then
        bad "convert -B $name" "$why"
    elif [ "$(qemu-img info --output=json "q_$name.qcow2" | json_get backing-filename)" != "$bk" ] ||
        [ "$(qemu-img info --output=json "q_$name.qcow2" | json_get backing-filename-format)" != "$bf" ]; then
        bad "convert -B $name" "backing is not '$bk' ($bf): $(qemu-img info "q_$name.qcow2" | grep backing | paste -sd ';')"
    elif ! qemu-img compare -q "m_$name.qcow2" "$src" 2>/dev/null; then
        # qemu-img 7.2 copies only what the source's top layer allocates, so
        # its output can differ from the source; then there is no allocation
        # to compare with.
        ok "convert -B $name (qemu-img's output differs from the source)"
    elif [ "$(own_data_bytes "q_$name.qcow2")" -gt "$(own_data_bytes "m_$name.qcow2")" ]; then
        bad "convert -B $name" "allocates $(own_data_bytes "q_$name.qcow2") bytes, qemu-img $(own_data_bytes "m_$name.qcow2")"
    else
        ok "convert -B $name"
    fi
}
convert_b chain_over_own_base top.qcow2 base.raw raw
convert_b chain_over_mid top.qcow2 l1/mid.qcow2 qcow2
convert_b flat_over_other flat.raw other.qcow2 qcow2
convert_b flat_over_other_v2_4k flat.raw other.qcow2 qcow2 -o compat=0.10,cluster_size=4k
convert_b compressed top.qcow2 base.raw raw -c
for args in "-B base.raw top.qcow2 o1.raw" "-O qcow2 -B base.raw top.qcow2 o2.qcow2" \
    "-O qcow2 -F raw top.qcow2 o3.qcow2"; do
    qemu-img convert $args >"$W/o1" 2>"$W/e1"
    qe=$?
    q image convert $args >"$W/o2" 2>"$W/e2"
    qs=$?
    m1=$(sed 's/^qemu-img: //' "$W/e1")
    m2=$(sed 's/^qsnap: //' "$W/e2")
    if [ $qe = $qs ] && [ "$m1" = "$m2" ]; then
        ok "convert error: $args"
    else
        bad "convert error: $args" "qemu-img $qe '$m1', qsnap $qs '$m2'"
    fi
done
cd "$W"

# ---- measure --------------------------------------------------------------
echo "# measure"
mkdir -p meas && cd meas
chain_deep_raw
qemu-img convert -c -O qcow2 -o compression_type=zstd top.qcow2 comp.qcow2
qemu-img convert -O raw top.qcow2 flat.raw
qemu-img create -q -f qcow2 -o cluster_size=32k,extended_l2=on x.qcow2 5M
qio qcow2 x.qcow2 "write -P 1 1000 100" "write -z 1M 1M" "write -P 2 4M 64k"
qemu-img create -q -f qcow2 empty.qcow2 0
# measure_case ARGS...: output (human and JSON) and status equal to qemu-img's
measure_case() {
    local out qe qs
    for out in human json; do
        qemu-img measure --output=$out "$@" >"$W/o1" 2>/dev/null
        qe=$?
        q image measure --output=$out "$@" >"$W/o2" 2>"$W/err"
        qs=$?
        if [ $qe != $qs ] || ! cmp -s "$W/o1" "$W/o2"; then
            bad "measure --output=$out $*" "qemu-img $qe: $(paste -sd ' ' "$W/o1"); qsnap $qs: $(paste -sd ' ' "$W/o2") $(head -c 200 "$W/err")"
            return
        fi
    done
    ok "measure $*"
}
for o in "" "-O raw" "-O qcow2" "-O qcow2 -o compat=0.10" "-O qcow2 -o cluster_size=512" \
    "-O qcow2 -o cluster_size=2M" "-O qcow2 -o refcount_bits=1" "-O qcow2 -o refcount_bits=64,cluster_size=4k" \
    "-O qcow2 -o extended_l2=on" "-O qcow2 -o cluster_size=16k,extended_l2=on"; do
    for s in 0 1000000 1G 3T; do
        measure_case $o --size $s
    done
done
for o in "" "-O qcow2" "-O qcow2 -o cluster_size=4k" "-O qcow2 -o extended_l2=on,cluster_size=128k" \
    "-O qcow2 -o refcount_bits=8"; do
    for f in top.qcow2 l1/mid.qcow2 comp.qcow2 flat.raw x.qcow2 empty.qcow2; do
        measure_case $o "$f"
    done
done
# Known differences from qemu-img (library): a v2 output cannot hold bitmaps, so
# qemu-img prints no bitmaps line; preallocation makes everything required.
measure_case -O qcow2 -o compat=0.10 top.qcow2
measure_case -O qcow2 -o preallocation=full --size 1G
measure_case -O qcow2 -o preallocation=metadata top.qcow2
for args in "" "a b" "--size 1G top.qcow2" "--size x" "-O qcow2 -o foo=1 --size 1G" \
    "-O raw -o cluster_size=4k --size 1G" "--output=xml top.qcow2"; do
    qemu-img measure $args >"$W/o1" 2>"$W/e1"
    qe=$?
    q image measure $args >"$W/o2" 2>"$W/e2"
    qs=$?
    m1=$(sed 's/^qemu-img: //' "$W/e1")
    m2=$(sed 's/^qsnap: //' "$W/e2")
    if [ $qe = $qs ] && [ "$m1" = "$m2" ]; then
        ok "measure error: '$args'"
    else
        bad "measure error: '$args'" "qemu-img $qe '$m1', qsnap $qs '$m2'"
    fi
done
cd "$W"

echo "# $((SECONDS - T0))s"
ts_end
