#!/bin/bash
# qsnap adopt on chains made by qemu-img (the libvirt-made ones are in
# tests/libvirt/libvirt.sh), and image convert/compare/digest/map -l:
#   adopt    raw and qcow2 bottoms: every snapshot's content equals what
#            qemu-img convert read from its file before adoption, the head's
#            equals the top's; an internal snapshot inside a middle layer
#            becomes an internal node with its content; qemu-img check is
#            clean on every file; the links are relative (the store moves
#            with its disk); verify is clean; --dry-run and --json change
#            nothing; revert, delete and commit work afterwards.
#   refused  (exit status, and nothing changed: every file's bytes, mtime and
#            name as before, no store): a loop, a chain already adopted, a
#            bottom that already has a store, a single file, a QEMU holding
#            the top (qemu-system-x86_64 -S), a hard-linked overlay, a
#            missing backing file, damaged and hostile libvirt XML.
#   crash    killed after each step (QSNAP_TEST_KILL_AT): verify --repair
#            finishes it and every snapshot reads as before.
#   -l       convert -l equals qemu-img convert -l (by id and by name, raw and
#            qcow2 output), digest -l and compare -l agree with it, map -l
#            shows the snapshot's allocation, not the active one's.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
set -u
. "$(dirname "$0")/../helpers/qemu_io.sh"

. "$(dirname "$0")/../helpers/script_lib.sh"
TS_TIMEOUT=120
QPID=
# The QEMU started to hold a top (stopped by its pid).
ts_atexit '[ -n "$QPID" ] && kill "$QPID" 2>/dev/null'
ts_init adopt qemu-img qemu-io python3 cmp md5sum qemu-system-x86_64


# state DIR: name, size, mtime and md5 of every file under DIR (what "nothing changed" compares).
state() {
    (cd "$1" && find . -printf '%p %s %T@ %m\n' | sort && find . -type f -print0 | sort -z |
        xargs -0 -r md5sum)
}

# chain DIR BOTTOM_FMT [rel]: base -> o1 (internal snapshot isnap inside) -> o2 -> top,
# with writes in each; pre-*.raw are qemu-img's reads of each file (and of isnap).
# Backing links are absolute (as libvirt writes them) but the last, or all relative with rel.
make_chain() {
    local d=$1 fmt=$2 p=$1/
    [ "${3:-}" = rel ] && p=
    mkdir -p "$d" && cd "$d" || return 1
    qemu-img create -q -f "$fmt" base.img 8M || return 1
    qio "$fmt" base.img 'write -P 0x11 0 128k' || return 1
    qemu-img create -q -f qcow2 -b "${p}base.img" -F "$fmt" o1.qcow2 || return 1
    qio qcow2 o1.qcow2 'write -P 0x22 64k 128k' || return 1
    qemu-img snapshot -c isnap o1.qcow2 || return 1
    qio qcow2 o1.qcow2 'write -P 0x23 64k 4k' || return 1
    qemu-img create -q -f qcow2 -b "${p}o1.qcow2" -F qcow2 o2.qcow2 || return 1
    qio qcow2 o2.qcow2 'write -P 0x33 1M 64k' 'write -z 0 4k' || return 1
    qemu-img create -q -f qcow2 -b o2.qcow2 -F qcow2 top.qcow2 || return 1
    qio qcow2 top.qcow2 'write -P 0x44 2M 64k' || return 1
    qemu-img convert -O raw base.img pre-base.raw &&
        qemu-img convert -O raw o1.qcow2 pre-o1.raw &&
        qemu-img convert -O raw -l isnap o1.qcow2 pre-isnap.raw &&
        qemu-img convert -O raw o2.qcow2 pre-o2.raw &&
        qemu-img convert -O raw top.qcow2 pre-top.raw || return 1
    cd "$W"
}

# same_content DISK NAME RAW: the snapshot or branch NAME reads as RAW.
same_content() {
    q export "$1" "$2" "$W/ex.raw" >/dev/null 2>&1 && cmp -s "$W/ex.raw" "$3"
}

check_all() { # DIR: qemu-img check clean on every qcow2 file of a store
    local f
    for f in "$1"/*.qcow2; do
        [ -e "$f" ] || continue
        qemu-img check -q "$f" >/dev/null 2>&1 || { echo "$f"; return 1; }
    done
}

# ---- adopt: raw and qcow2 bottoms ------------------------------------------------
for fmt in raw qcow2; do
    d=$W/$fmt
    make_chain "$d" $fmt || { bad "adopt-$fmt setup" "could not build the chain"; continue; }
    before=$(state "$d")
    q adopt "$d/top.qcow2" --dry-run >"$W/dry.txt" 2>&1
    rc=$?
    if [ $rc = 0 ] && grep -q "move $d/o1.qcow2 into the store" "$W/dry.txt" &&
        [ "$(state "$d")" = "$before" ]; then
        ok "adopt-$fmt --dry-run prints the moves and changes nothing"
    else
        bad "adopt-$fmt --dry-run" "exit $rc, or files changed: $(head -3 "$W/dry.txt")"
    fi
    q adopt "$d/top.qcow2" --dry-run --json >"$W/dry.json" 2>&1
    if python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["op"]=="adopt"; assert any(s["step"]=="adopt" for s in d["steps"])' "$W/dry.json" 2>/dev/null &&
        [ "$(state "$d")" = "$before" ]; then
        ok "adopt-$fmt --dry-run --json is the plan as JSON"
    else
        bad "adopt-$fmt --dry-run --json" "$(head -c 300 "$W/dry.json")"
    fi
    t0=$(date +%s%N)
    q adopt "$d/top.qcow2" >"$W/adopt.txt" 2>&1
    rc=$?
    t1=$(date +%s%N)
    echo "# adopt ($fmt bottom, 4 files): $(((t1 - t0) / 1000000)) ms"
    if [ $rc = 0 ] && [ ! -e "$d/o1.qcow2" ] && [ ! -e "$d/top.qcow2" ] && [ -d "$d/base.img.qsnap" ]; then
        ok "adopt-$fmt moves the overlays into the store"
    else
        bad "adopt-$fmt" "exit $rc: $(cat "$W/adopt.txt")"
        continue
    fi
    D=$d/base.img
    q list "$D" --json >"$W/list.json"
    if python3 - "$W/list.json" <<'PY'
import json, sys
nodes = json.load(open(sys.argv[1]))
nodes = nodes.get("nodes", nodes) if isinstance(nodes, dict) else nodes
by = {n["name"]: n for n in nodes}
snaps = [n for n in nodes if n["kind"] == "snapshot" and not n.get("internal")]
assert len(snaps) == 3, snaps
assert "isnap" in by and by["isnap"]["internal"], by.get("isnap")
assert "main" in by and by["main"]["kind"] == "branch"
# the chain's order: each external snapshot's parent is the one below
order = sorted(snaps, key=lambda n: n["id"])
assert order[0]["parent_name"] is None, order[0]
assert order[1]["parent_name"] == order[0]["name"] and order[2]["parent_name"] == order[1]["name"]
assert by["isnap"]["parent_name"] == order[0]["name"], by["isnap"]
assert by["main"]["parent_name"] == order[2]["name"]
PY
    then
        ok "adopt-$fmt: 3 snapshots in chain order, isnap internal, main on the last"
    else
        bad "adopt-$fmt tree" "$(head -c 600 "$W/list.json")"
    fi
    names=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d=d.get("nodes",d) if isinstance(d,dict) else d; print(" ".join(n["name"] for n in sorted([n for n in d if n["kind"]=="snapshot" and not n.get("internal")], key=lambda n:n["id"])))' "$W/list.json")
    set -- $names
    if same_content "$D" "$1" "$d/pre-base.raw" && same_content "$D" "$2" "$d/pre-o1.raw" &&
        same_content "$D" "$3" "$d/pre-o2.raw" && same_content "$D" main "$d/pre-top.raw" &&
        same_content "$D" isnap "$d/pre-isnap.raw"; then
        ok "adopt-$fmt: every snapshot, isnap and main read as qemu-img read them before"
    else
        bad "adopt-$fmt content" "a state differs from the file it came from"
    fi
    head=$(q current "$D" --path)
    abs=
    for f in "$d/base.img.qsnap/layers/"*.qcow2; do
        qemu-img info "$f" | grep -q '^backing file: /' && abs="$abs $f"
    done
    if qemu-img compare -q "$head" "$d/pre-top.raw" && bad_file=$(check_all "$d/base.img.qsnap/layers") &&
        [ -z "$abs" ]; then
        ok "adopt-$fmt: qemu-img reads the head as the old top, every layer checks clean, links are relative"
    else
        bad "adopt-$fmt qemu-img" "compare or check failed ($bad_file), or an absolute link is left"
    fi
    if q verify "$D" >"$W/v.txt" 2>&1; then
        ok "adopt-$fmt: verify is clean"
    else
        bad "adopt-$fmt verify" "$(cat "$W/v.txt")"
    fi
    # The store moves with its disk.
    mv "$d" "$d-moved" && D2=$d-moved/base.img
    if qemu-img compare -q "$(q current "$D2" --path)" "$d-moved/pre-top.raw" && q verify "$D2" >/dev/null 2>&1; then
        ok "adopt-$fmt: the disk and its store moved together still read and verify"
    else
        bad "adopt-$fmt move" "the moved store does not read or verify"
    fi
    mv "$d-moved" "$d"
    # Tree operations on the adopted tree.
    q revert "$D" "$2" -b side >/dev/null 2>&1 && qio qcow2 "$(q current "$D" --path)" 'write -P 0x55 3M 64k' &&
        q switch "$D" main >/dev/null 2>&1
    r1=$?
    q delete "$D" "$2" >"$W/del.txt" 2>&1
    r2=$?
    q commit "$D" >"$W/commit.txt" 2>&1
    r3=$?
    if [ $r1 = 0 ] && [ $r2 = 0 ] && [ $r3 = 0 ] && same_content "$D" "$3" "$d/pre-o2.raw" &&
        same_content "$D" main "$d/pre-top.raw" && same_content "$D" "$1" "$d/pre-base.raw" &&
        same_content "$D" isnap "$d/pre-isnap.raw" && q verify "$D" >/dev/null 2>&1 &&
        check_all "$d/base.img.qsnap/layers" >/dev/null; then
        ok "adopt-$fmt: revert, switch, delete of a middle snapshot and commit keep every state"
    else
        bad "adopt-$fmt operations" "revert/switch $r1, delete $r2 ($(cat "$W/del.txt")), commit $r3 ($(cat "$W/commit.txt"))"
    fi
done

# ---- refusals: nothing changed ---------------------------------------------------
# refused NAME WANT_STATUS PATTERN DIR ARGS...: adopt exits WANT_STATUS with PATTERN in its
# message, and DIR is exactly as before.
refused() {
    local name=$1 want=$2 pat=$3 dir=$4 before rc
    shift 4
    before=$(state "$dir")
    q adopt "$@" >"$W/r.txt" 2>&1
    rc=$?
    if [ $rc = "$want" ] && grep -qE "$pat" "$W/r.txt" && [ "$(state "$dir")" = "$before" ] &&
        [ "$(grep -c '^qsnap: ' "$W/r.txt")" -ge 1 ]; then
        ok "refused: $name (exit $rc, nothing changed)"
    else
        bad "refused: $name" "exit $rc (want $want), or files changed: $(cat "$W/r.txt")"
    fi
}

mkdir -p "$W/loop" && cd "$W/loop"
qemu-img create -q -f qcow2 a.qcow2 1M && qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2 &&
    qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2
cd "$W"
refused "a chain that loops" 3 "loop" "$W/loop" "$W/loop/b.qcow2"

refused "a chain already adopted (its head)" 3 "store" "$W/raw" "$(q current "$W/raw/base.img" --path)"

mkdir -p "$W/second" && cd "$W/second"
qemu-img create -q -f raw d.raw 1M && "$QSNAP" create d.raw s1 >/dev/null &&
    qemu-img create -q -f qcow2 -b "$W/second/d.raw" -F raw over.qcow2
cd "$W"
refused "a bottom that already has a store" 3 "already has a store" "$W/second" "$W/second/over.qcow2"

mkdir -p "$W/single" && qemu-img create -q -f qcow2 "$W/single/one.qcow2" 1M
refused "a single file (no chain)" 3 "no backing file" "$W/single" "$W/single/one.qcow2"

mkdir -p "$W/missing" && cd "$W/missing"
qemu-img create -q -f qcow2 -u -b "$W/missing/gone.qcow2" -F qcow2 top.qcow2 1M
cd "$W"
refused "a missing backing file" 6 "gone.qcow2" "$W/missing" "$W/missing/top.qcow2"

mkdir -p "$W/hard" && cd "$W/hard"
qemu-img create -q -f raw b.raw 1M && qemu-img create -q -f qcow2 -b "$W/hard/b.raw" -F raw m.qcow2 &&
    qemu-img create -q -f qcow2 -b "$W/hard/m.qcow2" -F qcow2 t.qcow2 && ln m.qcow2 m-other-name.qcow2
cd "$W"
refused "an overlay with a second name (hard link)" 3 "hard link" "$W/hard" "$W/hard/t.qcow2"

# A QEMU holding the top: qemu-system-x86_64, paused, with the chain as its disk.
mkdir -p "$W/busy" && cd "$W/busy"
qemu-img create -q -f raw b.raw 8M && qemu-img create -q -f qcow2 -b "$W/busy/b.raw" -F raw t.qcow2
qemu-system-x86_64 -S -display none -nodefaults -machine pc,accel=tcg -m 32 \
    -drive file="$W/busy/t.qcow2",format=qcow2,if=virtio -daemonize -pidfile "$W/qemu.pid" \
    >"$W/qemu.out" 2>&1
QPID=$(cat "$W/qemu.pid" 2>/dev/null)
cd "$W"
if [ -n "$QPID" ]; then
    # The pid file is QEMU's own and is outside the chain's directory.
    refused "a chain a running QEMU holds" 5 "in use" "$W/busy" "$W/busy/t.qcow2"
    kill "$QPID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
    QPID=
    if q adopt "$W/busy/t.qcow2" >/dev/null 2>&1; then
        ok "the same chain is adopted once QEMU has gone"
    else
        bad "adopt after QEMU" "still refused"
    fi
else
    bad "busy setup" "qemu-system-x86_64 did not start: $(cat "$W/qemu.out")"
fi

# libvirt XML that is damaged or hostile, or names files outside the chain.
mkdir -p "$W/lv" && cd "$W/lv"
qemu-img create -q -f raw b.raw 1M && qemu-img create -q -f qcow2 -b "$W/lv/b.raw" -F raw b.s1 &&
    qemu-img create -q -f qcow2 -b "$W/lv/b.s1" -F qcow2 b.s2 && qemu-img create -q -f qcow2 other.qcow2 1M
mkdir -p snaps
cd "$W"
snapdoc() { # NAME OVERLAY FROZEN
    printf "<domainsnapshot>\n  <name>%s</name>\n  <state>shutoff</state>\n  <creationTime>1700000000</creationTime>\n  <disks>\n    <disk name='vda' snapshot='external' type='file'>\n      <source file='%s'/>\n    </disk>\n  </disks>\n  <domain type='qemu'><name>d</name><devices><disk type='file' device='disk'><source file='%s'/><target dev='vda'/></disk></devices></domain>\n</domainsnapshot>\n" "$1" "$2" "$3"
}
snapdoc s1 "$W/lv/other.qcow2" "$W/lv/b.raw" >"$W/lv/snaps/s1.xml"
refused "libvirt XML naming a file outside the chain" 2 "not a file of the chain" "$W/lv" \
    "$W/lv/b.s2" --libvirt-snapshots "$W/lv/snaps"
snapdoc s1 "$W/lv/b.s1" "$W/lv/other.qcow2" >"$W/lv/snaps/s1.xml"
refused "libvirt XML whose frozen image is outside the chain" 2 "froze" "$W/lv" \
    "$W/lv/b.s2" --libvirt-snapshots "$W/lv/snaps"
printf '<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>\n<domainsnapshot><name>&b;</name></domainsnapshot>\n' >"$W/lv/snaps/s1.xml"
refused "libvirt XML with a DOCTYPE (entity expansion)" 2 "DOCTYPE" "$W/lv" \
    "$W/lv/b.s2" --libvirt-snapshots "$W/lv/snaps"
printf '<domainsnapshot><name>s1</name><disks><disk snapshot="external"><source file="%s"/></disk>' "$W/lv/b.s1" >"$W/lv/snaps/s1.xml"
refused "truncated libvirt XML" 2 "s1.xml: line 1" "$W/lv" "$W/lv/b.s2" --libvirt-snapshots "$W/lv/snaps"
python3 -c 'import sys; sys.stdout.write("<a>" * 100000 + "</a>" * 100000)' >"$W/lv/snaps/s1.xml"
refused "libvirt XML nested 100000 deep" 2 "too deep" "$W/lv" "$W/lv/b.s2" --libvirt-snapshots "$W/lv/snaps"
head -c 4096 /dev/urandom >"$W/lv/snaps/s1.xml"
refused "random bytes as libvirt XML" 2 "s1.xml" "$W/lv" "$W/lv/b.s2" --libvirt-snapshots "$W/lv/snaps"
# A libvirt name qsnap cannot hold ('s 1', 'main') is mapped, and the output says so.
mkdir -p "$W/lvm/snaps"
qemu-img create -q -f raw "$W/lvm/b.raw" 1M && qemu-img create -q -f qcow2 -b "$W/lvm/b.raw" -F raw "$W/lvm/b.s1" &&
    qemu-img create -q -f qcow2 -b "$W/lvm/b.s1" -F qcow2 "$W/lvm/b.s2"
snapdoc 's 1' "$W/lvm/b.s1" "$W/lvm/b.raw" >"$W/lvm/snaps/s1.xml"
snapdoc main "$W/lvm/b.s2" "$W/lvm/b.s1" >"$W/lvm/snaps/s2.xml"
if q adopt "$W/lvm/b.s2" --libvirt-snapshots "$W/lvm/snaps" >"$W/r.txt" 2>&1 &&
    grep -q "libvirt snapshots named otherwise here: 's 1' as s_1, 'main' as main-2" "$W/r.txt" &&
    q info "$W/lvm/b.raw" s_1 >/dev/null 2>&1 && q info "$W/lvm/b.raw" main-2 >/dev/null 2>&1 &&
    q verify "$W/lvm/b.raw" >/dev/null 2>&1; then
    ok "libvirt names qsnap cannot hold are mapped (s_1, main-2) and the output says so"
else
    bad "mapped libvirt names" "$(cat "$W/r.txt")"
fi
# And a good one: names, description and time from the document, &amp; decoded.
snapdoc 's1&amp;x' "$W/lv/b.s1" "$W/lv/b.raw" | sed 's|<state>|<description>first \&lt;one\&gt;</description><state>|' >"$W/lv/snaps/s1.xml"
if q adopt "$W/lv/b.s2" --libvirt-snapshots "$W/lv/snaps" >"$W/r.txt" 2>&1 &&
    q info "$W/lv/b.raw" 's1&x' --json >"$W/i.json" 2>&1 &&
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["description"]=="first <one>", d; assert d["created"]==1700000000, d' "$W/i.json"; then
    ok "libvirt's name, description and time are taken from its XML"
else
    bad "libvirt names" "$(cat "$W/r.txt" "$W/i.json")"
fi

# ---- crash at every step: verify --repair finishes ------------------------------
make_chain "$W/crash0" qcow2 rel >/dev/null 2>&1
steps=$(q adopt "$W/crash0/top.qcow2" --dry-run | grep -c '^ *[0-9]*\. ')
crash_ok=0
for k in $(seq 1 "$steps"); do
    d=$W/crash$k
    rm -rf "$d" && cp -a "$W/crash0" "$d" || break
    QSNAP_TEST_KILL_AT=$k "$QSNAP" adopt "$d/top.qcow2" >/dev/null 2>&1
    q verify --repair "$d/base.img" >"$W/rep.txt" 2>&1
    names=$(q list "$d/base.img" --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d.get("nodes",d) if isinstance(d,dict) else d; print(" ".join(n["name"] for n in sorted([n for n in d if n["kind"]=="snapshot" and not n.get("internal")], key=lambda n:n["id"])))' 2>/dev/null)
    set -- $names
    if [ $# = 3 ] && same_content "$d/base.img" "$1" "$d/pre-base.raw" &&
        same_content "$d/base.img" "$2" "$d/pre-o1.raw" && same_content "$d/base.img" "$3" "$d/pre-o2.raw" &&
        same_content "$d/base.img" main "$d/pre-top.raw" && q verify "$d/base.img" >/dev/null 2>&1 &&
        qemu-img check -q "$(q current "$d/base.img" --path)" >/dev/null 2>&1; then
        crash_ok=$((crash_ok + 1))
    else
        bad "crash after step $k" "not finished by verify --repair: $(cat "$W/rep.txt")"
    fi
    rm -rf "$d"
done
if [ "$crash_ok" = "$steps" ] && [ "$steps" -gt 5 ]; then
    ok "killed after each of the $steps steps: verify --repair finishes the adoption"
fi

# ---- image convert/compare/digest/map -l -------------------------------------------
cd "$W" && mkdir -p l && cd l
qemu-img create -q -f qcow2 i.qcow2 4M && qio qcow2 i.qcow2 'write -P 0x61 0 256k' &&
    qemu-img snapshot -c first i.qcow2 && qio qcow2 i.qcow2 'write -P 0x62 64k 64k' 'discard 0 64k' &&
    qemu-img snapshot -c second i.qcow2 && qio qcow2 i.qcow2 'write -P 0x63 1M 64k'
qemu-img convert -O raw -l first i.qcow2 q-first.raw
qemu-img convert -O raw -l snapshot.id=2 i.qcow2 q-second.raw
if q image convert -l first i.qcow2 first.raw && cmp -s first.raw q-first.raw &&
    q image convert -l snapshot.id=2 -O qcow2 i.qcow2 second.qcow2 && qemu-img compare -q second.qcow2 q-second.raw &&
    q image convert -l snapshot.name=second i.qcow2 second.raw && cmp -s second.raw q-second.raw &&
    ! cmp -s first.raw q-second.raw; then
    ok "convert -l (name, snapshot.id=, snapshot.name=; raw and qcow2) equals qemu-img convert -l"
else
    bad "convert -l" "differs from qemu-img convert -l"
fi
if [ "$(q image digest -l first i.qcow2 | cut -c1-32)" = "$(q image digest q-first.raw | cut -c1-32)" ] &&
    [ "$(q image digest -l 2 i.qcow2 | cut -c1-32)" = "$(q image digest q-second.raw | cut -c1-32)" ] &&
    [ "$(q image digest -l first i.qcow2 | cut -c1-32)" != "$(q image digest i.qcow2 | cut -c1-32)" ]; then
    ok "digest -l is the digest of qemu-img's conversion of that snapshot"
else
    bad "digest -l" "digests do not match"
fi
q image compare -l first i.qcow2 q-first.raw >/dev/null; r1=$?
q image compare -l second i.qcow2 q-first.raw >/dev/null; r2=$?
q image compare -l first -L first i.qcow2 i.qcow2 >/dev/null; r3=$?
q image compare -l nosuch i.qcow2 q-first.raw >"$W/c.txt" 2>&1; r4=$?
if [ $r1 = 0 ] && [ $r2 = 1 ] && [ $r3 = 0 ] && [ $r4 = 2 ] && grep -q "nosuch" "$W/c.txt"; then
    ok "compare -l/-L: 0 same, 1 different, 2 no such snapshot"
else
    bad "compare -l" "statuses $r1 $r2 $r3 $r4: $(cat "$W/c.txt")"
fi
# map -l second: 0-64k discarded in the snapshot (no data); the active state has data at 1M.
q image map -l second --output=json i.qcow2 >m2.json && q image map --output=json i.qcow2 >ma.json
if python3 - m2.json ma.json <<'PY'
import json, sys
def data_at(path, off):
    for r in json.load(open(path)):
        if r["start"] <= off < r["start"] + r["length"]:
            return r["data"]
    raise SystemExit("no run at %d" % off)
assert not data_at(sys.argv[1], 0)
assert data_at(sys.argv[1], 65536)
assert not data_at(sys.argv[1], 1 << 20)
assert data_at(sys.argv[2], 1 << 20)
PY
then
    ok "map -l shows the snapshot's allocation, not the active state's"
else
    bad "map -l" "$(cat m2.json)"
fi
cd "$W"

ts_end
