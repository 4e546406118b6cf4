#!/bin/bash
# qsnap with a real libvirt (9.0, qemu driver), run as an unprivileged user
# (nobody) with its own runtime, config and cache directories under the work
# directory: the test starts its own virtlogd and libvirtd there, talks to
# them over qemu:///session, and stops them by pid on exit. A domain is only
# ever started paused, and destroyed again (its QEMU killed by pid should the
# script stop first).
#   adopt        for a raw and a qcow2 disk: virsh makes three disk-only
#                snapshots with writes in between; qsnap adopt takes the
#                chain over with --libvirt-snapshots: every snapshot reads as
#                qemu-img read its file before, names, descriptions and
#                creation times are libvirt's; then revert, switch, delete of
#                the middle snapshot and commit keep every state, verify and
#                qemu-img check are clean.
#   libvirt-xml  a tree with branches made by qsnap is registered with
#                virsh snapshot-create --redefine in the printed order: every
#                document validates against domainsnapshot.rng
#                (virt-xml-validate), virsh snapshot-list --parent shows the
#                same named tree, snapshot-current is the current branch's
#                snapshot, and virsh define of the written domain.xml puts the
#                disk on 'qsnap current --path'. A virsh snapshot-create-as
#                after that puts libvirt's overlay in the store: qsnap switch
#                and revert exit 4 naming it with nothing changed, verify
#                --repair leaves it; merged with qsnap image commit and moved
#                out, qsnap goes on with its data.
#   bad input    libvirt's XML of another domain (files outside the chain), a
#                chain already adopted, a chain that loops, a domain XML with
#                no disk: a clear error and nothing changed.
# Prints "ok NAME" / "FAIL NAME: reason" per case and "N passed, N failed".
set -u

. "$(dirname "$0")/../helpers/script_lib.sh"
TS_TIMEOUT=120
ts_need qemu-img qemu-io python3 cmp md5sum virsh virt-xml-validate xmllint setpriv \
    /usr/sbin/libvirtd /usr/sbin/virtlogd

LV_UID=$(id -u nobody 2>/dev/null || echo 65534)
LV_GID=$(id -g nobody 2>/dev/null || echo 65534)
DPIDS= # the daemons' pids, the last started first
# stop_pids PID...: kill, and kill outright what has not gone within 5 s.
stop_pids() {
    local p
    for p in "$@"; do kill "$p" 2>/dev/null; done
    for p in "$@"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
    done
}
# At exit, one after the other (libvirtd starts a virtlogd of its own when its
# QEMU ends and virtlogd is gone): the QEMU of a domain still running (started
# paused, the script stopped before virsh destroy), by the pid libvirt recorded
# in its run directory; then the daemons by pid, libvirtd before virtlogd.
lv_stop() {
    local p f pids=
    for f in "$W"/run/libvirt/qemu/run/*.pid; do
        [ -f "$f" ] && [ "${f##*/}" != driver.pid ] || continue
        p=$(cat "$f" 2>/dev/null)
        [ -n "$p" ] && pids="$pids $p"
    done
    stop_pids $pids
    for p in $DPIDS; do stop_pids "$p"; done
}
ts_atexit lv_stop
# The libvirt user must reach the work directory: where TMPDIR is private to
# root, the work directory is made in /tmp.
if setpriv --reuid="$LV_UID" --regid="$LV_GID" --clear-groups test -x "${TMPDIR:-/tmp}"; then
    ts_workdir libvirt
else
    TMPDIR=/tmp ts_workdir libvirt
fi
chmod 755 "$W"
mkdir -p "$W/home" "$W/run" "$W/img"
chown "$LV_UID:$LV_GID" "$W/home" "$W/run" "$W/img"
chmod 700 "$W/run"

# as_lv CMD...: run as the libvirt user with the private directories.
as_lv() {
    setpriv --reuid="$LV_UID" --regid="$LV_GID" --clear-groups \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$W/home" XDG_RUNTIME_DIR="$W/run" \
        XDG_CONFIG_HOME="$W/home/.config" XDG_CACHE_HOME="$W/home/.cache" \
        XDG_DATA_HOME="$W/home/.local/share" LC_ALL=C "$@"
}
V() { timeout -k 5 120 setpriv --reuid="$LV_UID" --regid="$LV_GID" --clear-groups \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$W/home" XDG_RUNTIME_DIR="$W/run" \
    XDG_CONFIG_HOME="$W/home/.config" XDG_CACHE_HOME="$W/home/.cache" \
    XDG_DATA_HOME="$W/home/.local/share" LC_ALL=C virsh -q -c qemu:///session "$@"; }

# A daemon in the background: exec, so that $! is the daemon's own pid (setpriv and env
# exec in turn), the one cleanup stops. --timeout: they also go by themselves once idle.
lv_daemon() {
    exec setpriv --reuid="$LV_UID" --regid="$LV_GID" --clear-groups \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$W/home" XDG_RUNTIME_DIR="$W/run" \
        XDG_CONFIG_HOME="$W/home/.config" XDG_CACHE_HOME="$W/home/.cache" \
        XDG_DATA_HOME="$W/home/.local/share" LC_ALL=C "$@"
}
lv_daemon /usr/sbin/virtlogd --timeout 600 >"$W/virtlogd.log" 2>&1 &
DPIDS="$! $DPIDS"
lv_daemon /usr/sbin/libvirtd --timeout 600 >"$W/libvirtd.log" 2>&1 &
DPIDS="$! $DPIDS"
for _ in $(seq 300); do [ -S "$W/run/libvirt/libvirt-sock" ] && break; sleep 0.1; done
V version >"$W/version.txt" 2>&1 ||
    { bad setup "libvirtd did not answer: $(cat "$W/version.txt"; tail -5 "$W/libvirtd.log")"; ts_end; exit 1; }
echo "# $(grep -i 'running hypervisor\|using library' "$W/version.txt" | tr '\n' ' ')"
SNAPDIR=$W/home/.config/libvirt/qemu/snapshot

# domain_xml NAME FILE FMT [DISKS]: a domain of type qemu with one virtio disk.
domain_xml() {
    cat <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='$3'/>
      <source file='$2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
EOF
}

qio() { # FMT FILE CMD...
    local fmt=$1 f=$2 c args=()
    shift 2
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f "$fmt" "${args[@]}" "$f" >"$W/qio.out" 2>&1 && ! grep -qiE 'error|failed' "$W/qio.out"
}

# state DIR: every file's name, size, mtime, mode and bytes.
state() {
    (cd "$1" && find . -printf '%p %s %T@ %m\n' | sort && find . -type f -print0 | sort -z |
        xargs -0 -r md5sum)
}

same_content() { # DISK NAME RAW
    q export "$1" "$2" "$W/ex.raw" >/dev/null 2>&1 && cmp -s "$W/ex.raw" "$3"
}

top_of() { # DOMAIN: the file vda uses now
    V domblklist "$1" | awk '$1 == "vda" { print $2 }'
}

# same_tree DOMAIN DISK: libvirt's snapshots and their parents are qsnap's named snapshots
# and their nearest named ancestors.
same_tree() {
    V snapshot-list "$1" --parent >"$W/parents.txt" 2>&1
    q list "$2" --json >"$W/tlist.json"
    python3 - "$W/parents.txt" "$W/tlist.json" <<'PY'
import json, sys
virsh = {}
for line in open(sys.argv[1]):
    w = line.split()
    if not w:
        continue
    # name, date, time, zone, state, [parent]
    virsh[w[0]] = w[5] if len(w) > 5 else None
d = json.load(open(sys.argv[2]))
ids = {n["id"]: n for n in d["nodes"]}
def named_parent(n):
    p = ids.get(n["parent"])
    while p is not None and p["kind"] != "snapshot":
        p = ids.get(p["parent"])
    return p["name"] if p else None
qs = {n["name"]: named_parent(n) for n in d["nodes"] if n["kind"] == "snapshot"}
assert virsh == qs, (virsh, qs)
PY
}

# ---- adopt what libvirt made ----------------------------------------------------------
for fmt in raw qcow2; do
    dom=qsnap-$fmt
    d=$W/img/$fmt
    as_lv mkdir -p "$d"
    as_lv qemu-img create -q -f $fmt "$d/base.$fmt" 16M
    qio $fmt "$d/base.$fmt" 'write -P 0x11 0 256k'
    domain_xml "$dom" "$d/base.$fmt" $fmt >"$W/$dom.xml"
    if ! V define "$W/$dom.xml" >"$W/def.txt" 2>&1; then
        bad "adopt-$fmt setup" "virsh define: $(cat "$W/def.txt")"
        continue
    fi
    pat=0x22
    off=1
    made=1
    for s in s1 s2 s3; do
        if ! V snapshot-create-as "$dom" $s --disk-only --description "libvirt's $s" >"$W/snap.txt" 2>&1; then
            bad "adopt-$fmt setup" "snapshot-create-as $s: $(cat "$W/snap.txt")"
            made=0
            break
        fi
        qio qcow2 "$(top_of "$dom")" "write -P $pat ${off}M 64k" "write -z $((off - 1))M 4k" || made=0
        pat=$((pat + 0x11))
        off=$((off + 1))
    done
    [ $made = 1 ] || continue
    top=$(top_of "$dom")
    # What each snapshot holds, read by qemu-img before qsnap touches anything.
    qemu-img convert -O raw "$d/base.$fmt" "$W/$fmt-s1.raw"
    for s in s1 s2; do
        n=$([ $s = s1 ] && echo s2 || echo s3)
        qemu-img convert -O raw "$d/base.$s" "$W/$fmt-$n.raw"
    done
    qemu-img convert -O raw "$top" "$W/$fmt-top.raw"
    for s in s1 s2 s3; do
        V snapshot-dumpxml "$dom" $s | sed -n 's|.*<creationTime>\(.*\)</creationTime>.*|\1|p' >"$W/$fmt-$s.time"
    done
    if [ "$top" = "$d/base.s3" ] && [ "$(V snapshot-list "$dom" --name | tr '\n' ' ')" = "s1 s2 s3 " ]; then
        ok "adopt-$fmt setup: libvirt made base.s1, base.s2, base.s3 and snapshots s1, s2, s3"
    else
        bad "adopt-$fmt setup" "top $top, snapshots $(V snapshot-list "$dom" --name | tr '\n' ' ')"
    fi

    q adopt "$top" --libvirt-snapshots "$SNAPDIR/$dom" >"$W/adopt.txt" 2>&1
    rc=$?
    D=$d/base.$fmt
    if [ $rc = 0 ] && [ -d "$D.qsnap" ] && [ ! -e "$top" ]; then
        ok "adopt-$fmt: qsnap adopt takes libvirt's chain over"
    else
        bad "adopt-$fmt" "exit $rc: $(cat "$W/adopt.txt")"
        continue
    fi
    q list "$D" --json >"$W/list.json"
    if python3 - "$W/list.json" "$W/$fmt" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
by = {n["name"]: n for n in d["nodes"]}
for s, parent in (("s1", None), ("s2", "s1"), ("s3", "s2")):
    n = by[s]
    assert n["kind"] == "snapshot" and not n["internal"], n
    assert n["parent_name"] == parent, (s, n["parent_name"])
    assert n["description"] == "libvirt's " + s, n["description"]
    want = int(open(sys.argv[2] + "-" + s + ".time").read())
    assert n["created"] == want, (s, n["created"], want)
assert by["main"]["parent_name"] == "s3" and d["current"] == "main"
assert len(d["nodes"]) == 4, [n["name"] for n in d["nodes"]]
PY
    then
        ok "adopt-$fmt: snapshots s1, s2, s3 with libvirt's parents, descriptions and creation times"
    else
        bad "adopt-$fmt names" "$(head -c 800 "$W/list.json")"
    fi
    if same_content "$D" s1 "$W/$fmt-s1.raw" && same_content "$D" s2 "$W/$fmt-s2.raw" &&
        same_content "$D" s3 "$W/$fmt-s3.raw" && same_content "$D" main "$W/$fmt-top.raw" &&
        ! cmp -s "$W/$fmt-s2.raw" "$W/$fmt-s3.raw"; then
        ok "adopt-$fmt: every snapshot reads as qemu-img read its file before"
    else
        bad "adopt-$fmt content" "a snapshot differs from its file"
    fi
    q revert "$D" s2 -b side >/dev/null 2>&1 &&
        qio qcow2 "$(q current "$D" --path)" 'write -P 0x77 5M 64k' &&
        qemu-img convert -O raw "$(q current "$D" --path)" "$W/$fmt-side.raw" &&
        q switch "$D" main >/dev/null 2>&1
    r1=$?
    q delete "$D" s2 >"$W/del.txt" 2>&1
    r2=$?
    q commit "$D" >"$W/commit.txt" 2>&1
    r3=$?
    chk=ok
    for f in "$D.qsnap"/layers/*.qcow2; do qemu-img check -q "$f" >/dev/null 2>&1 || chk=$f; done
    if [ $r1 = 0 ] && [ $r2 = 0 ] && [ $r3 = 0 ] && [ $chk = ok ] &&
        same_content "$D" s1 "$W/$fmt-s1.raw" && same_content "$D" s3 "$W/$fmt-s3.raw" &&
        same_content "$D" main "$W/$fmt-top.raw" && same_content "$D" side "$W/$fmt-side.raw" &&
        q verify "$D" >/dev/null 2>&1 && ! q info "$D" s2 >/dev/null 2>&1; then
        ok "adopt-$fmt: revert, switch, delete of the middle snapshot and commit keep every state"
    else
        bad "adopt-$fmt operations" "revert/switch $r1, delete $r2 ($(cat "$W/del.txt")), commit $r3 ($(cat "$W/commit.txt")), check $chk"
    fi
    [ $fmt = qcow2 ] || continue
    # Round trip: libvirt forgets its stale snapshots, and learns the adopted tree back.
    for s in s3 s2 s1; do V snapshot-delete "$dom" $s --metadata >/dev/null 2>&1; done
    V dumpxml "$dom" >"$W/$dom-dump.xml"
    as_lv mkdir -p "$W/img/rt"
    q libvirt-xml "$D" --domain "$W/$dom-dump.xml" --out "$W/img/rt" --json >"$W/rt.json" 2>"$W/rt.err"
    rc=$?
    chown -R "$LV_UID:$LV_GID" "$W/img/rt"
    python3 -c '
import json, sys
for s in json.load(open(sys.argv[1]))["snapshots"]:
    print(s["file"], "--current" if s["current"] else "")' "$W/rt.json" >"$W/order.txt" 2>/dev/null
    reg=0
    while read -r f cur; do
        V snapshot-create "$dom" "$f" --redefine $cur >"$W/reg.txt" 2>&1 || { reg=1; break; }
    done <"$W/order.txt"
    if [ $rc = 0 ] && [ $reg = 0 ] && same_tree "$dom" "$D" && [ "$(V snapshot-current "$dom" --name)" = s3 ] &&
        V define "$W/img/rt/domain.xml" >/dev/null 2>&1 && [ "$(top_of "$dom")" = "$(q current "$D" --path)" ]; then
        ok "adopt-$fmt: the adopted tree goes back to libvirt (redefined in order, s3 current, vda on main's image)"
    else
        bad "adopt-$fmt round trip" "libvirt-xml $rc $(cat "$W/rt.err"), redefine $(cat "$W/reg.txt"), $(cat "$W/parents.txt")"
    fi
    # libvirt starts the domain on the VM path (paused: QEMU opens the whole chain at start,
    # resolving the head's relative backing names through the link), and a tree operation is
    # refused while it runs, with nothing changed.
    if V start "$dom" --paused >"$W/start.txt" 2>&1; then
        before=$(state "$D.qsnap")
        q create "$D" while-running >"$W/run.txt" 2>&1
        rr=$?
        after=$(state "$D.qsnap")
        V destroy "$dom" >/dev/null 2>&1
        if [ $rr = 5 ] && [ "$before" = "$after" ] && q verify "$D" >/dev/null 2>&1; then
            ok "adopt-$fmt: virsh start opens the VM path's chain; create is refused (exit 5) while it runs"
        else
            bad "adopt-$fmt running domain" "create exit $rr ($(cat "$W/run.txt")), store changed: $([ "$before" = "$after" ] && echo no || echo yes)"
        fi
    else
        bad "adopt-$fmt: virsh start on the VM path" "$(cat "$W/start.txt")"
    fi
done

# ---- bad input: a clear error, nothing changed --------------------------------------
refused() { # NAME STATUS PATTERN DIR CMD...
    local name=$1 want=$2 pat=$3 dir=$4 before rc
    shift 4
    before=$(state "$dir")
    timeout -k 5 120 "$@" >"$W/r.txt" 2>&1
    rc=$?
    if [ $rc = "$want" ] && grep -qE "$pat" "$W/r.txt" && [ "$(state "$dir")" = "$before" ]; then
        ok "refused: $name (exit $rc, nothing changed)"
    else
        bad "refused: $name" "exit $rc (want $want), or files changed: $(cat "$W/r.txt")"
    fi
}
mkdir -p "$W/other" && cd "$W/other"
qemu-img create -q -f raw b.raw 16M && qemu-img create -q -f qcow2 -b "$W/other/b.raw" -F raw b.s1 &&
    qemu-img create -q -f qcow2 -b "$W/other/b.s1" -F qcow2 b.s2
cd "$W"
refused "libvirt XML of another domain (files outside the chain)" 2 "not a file of the chain" \
    "$W/other" "$QSNAP" adopt "$W/other/b.s2" --libvirt-snapshots "$SNAPDIR/qsnap-raw"
refused "a chain already adopted" 3 "store" "$W/img/raw" "$QSNAP" adopt \
    "$(q current "$W/img/raw/base.raw" --path)"
mkdir -p "$W/loop" && cd "$W/loop"
qemu-img create -q -f qcow2 a.qcow2 1M && qemu-img create -q -f qcow2 -b "$W/loop/a.qcow2" -F qcow2 b.qcow2 &&
    qemu-img rebase -u -b "$W/loop/b.qcow2" -F qcow2 a.qcow2
cd "$W"
refused "a chain that loops" 3 "loops|infinite loop" "$W/loop" "$QSNAP" adopt "$W/loop/b.qcow2"
mkdir -p "$W/nodisk"
V dumpxml qsnap-qcow2 | sed '/<disk/,/<\/disk>/d' >"$W/nodisk.xml"
refused "a domain XML with no disk" 2 "no disk" "$W/nodisk" "$QSNAP" libvirt-xml \
    "$W/img/qcow2/base.qcow2" --domain "$W/nodisk.xml" --out "$W/nodisk"
printf '<domain><name>x</name><uuid>1</uuid><devices><disk><source file="a"/>' >"$W/trunc.xml"
refused "a truncated domain XML" 2 "trunc.xml: line 1" "$W/nodisk" "$QSNAP" libvirt-xml \
    "$W/img/qcow2/base.qcow2" --domain "$W/trunc.xml" --out "$W/nodisk"

# ---- hand a tree with branches back to libvirt ----------------------------------------
t=$W/img/tree
as_lv mkdir -p "$t"
as_lv qemu-img create -q -f qcow2 "$t/vm.qcow2" 16M
qio qcow2 "$t/vm.qcow2" 'write -P 0x10 0 64k'
q create "$t/vm.qcow2" A -m "first <one> & only" >/dev/null &&
    qio qcow2 "$(q current "$t/vm.qcow2" --path)" 'write -P 0x20 1M 64k' &&
    q create "$t/vm.qcow2" B >/dev/null &&
    qio qcow2 "$(q current "$t/vm.qcow2" --path)" 'write -P 0x30 2M 64k' &&
    q revert "$t/vm.qcow2" A -b other >/dev/null &&
    qio qcow2 "$(q current "$t/vm.qcow2" --path)" 'write -P 0x40 3M 64k' &&
    q create "$t/vm.qcow2" C >/dev/null &&
    qio qcow2 "$(q current "$t/vm.qcow2" --path)" 'write -P 0x50 4M 64k' &&
    q create "$t/vm.qcow2" D >/dev/null &&
    q create "$t/vm.qcow2" E --internal >/dev/null
mk=$?
domain_xml qsnap-tree "$t/vm.qcow2" qcow2 >"$W/tree.xml"
V define "$W/tree.xml" >/dev/null 2>&1 && V dumpxml qsnap-tree >"$W/tree-dump.xml" 2>&1
if [ $mk = 0 ] && [ -s "$W/tree-dump.xml" ]; then
    ok "libvirt-xml setup: a tree A -> B (main), A -> C -> D -> E (other, current), domain defined"
else
    bad "libvirt-xml setup" "qsnap $mk, dumpxml $(head -3 "$W/tree-dump.xml")"
fi
as_lv mkdir -p "$W/img/lvx"
q libvirt-xml "$t/vm.qcow2" --domain "$W/tree-dump.xml" --out "$W/img/lvx" --json >"$W/lvx.json" 2>"$W/lvx.err"
rc=$?
q libvirt-xml "$t/vm.qcow2" --domain "$W/tree-dump.xml" --out "$W/img/lvx-text" >"$W/lvx.txt" 2>&1
if [ $rc = 0 ] && python3 - "$W/lvx.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
names = [s["name"] for s in d["snapshots"]]
assert sorted(names) == ["A", "B", "C", "D", "E"], names
assert names.index("A") < names.index("B") < 5 and names.index("C") < names.index("D") < names.index("E")
cur = [s["name"] for s in d["snapshots"] if s["current"]]
assert cur == ["E"], cur
assert d["domain"] == "qsnap-tree" and d["target"] == "vda"
PY
then
    ok "libvirt-xml writes one document per snapshot, parents first, E current"
else
    bad "libvirt-xml" "exit $rc: $(cat "$W/lvx.err") $(head -c 500 "$W/lvx.json")"
fi
if grep -q "virsh snapshot-create qsnap-tree .*001-A.xml --redefine" "$W/lvx.txt" &&
    grep -q -- "--redefine --current" "$W/lvx.txt" && grep -q "virsh define" "$W/lvx.txt" &&
    grep -qF "$(q current "$t/vm.qcow2" --path)" "$W/lvx.txt" &&
    grep -q "virsh snapshot-delete qsnap-tree NAME --metadata" "$W/lvx.txt"; then
    ok "libvirt-xml prints the virsh commands, the domain's one change (qsnap current --path) and how to drop stale snapshots"
else
    bad "libvirt-xml text" "$(cat "$W/lvx.txt")"
fi
valid=0
nfiles=0
for f in "$W"/img/lvx/[0-9][0-9][0-9]-*.xml; do
    nfiles=$((nfiles + 1))
    if virt-xml-validate "$f" domainsnapshot >"$W/val.txt" 2>&1; then
        valid=$((valid + 1))
    else
        bad "validate $(basename "$f")" "$(cat "$W/val.txt")"
    fi
done
if [ $nfiles = 5 ] && [ $valid = 5 ] && virt-xml-validate "$W/img/lvx/domain.xml" domain >/dev/null 2>&1; then
    ok "all 5 documents validate against domainsnapshot.rng, domain.xml against domain.rng"
fi
chown -R "$LV_UID:$LV_GID" "$W/img/lvx"
reg=0
python3 -c '
import json, sys
for s in json.load(open(sys.argv[1]))["snapshots"]:
    print(s["file"], "--current" if s["current"] else "")' "$W/lvx.json" >"$W/order.txt"
while read -r f cur; do
    V snapshot-create qsnap-tree "$f" --redefine $cur >"$W/reg.txt" 2>&1 || { reg=1; break; }
done <"$W/order.txt"
if [ $reg = 0 ]; then
    ok "virsh snapshot-create --redefine accepts every document in order"
else
    bad "redefine" "$(cat "$W/reg.txt")"
fi
V snapshot-list qsnap-tree --tree >"$W/vtree.txt" 2>&1
if same_tree qsnap-tree "$t/vm.qcow2"; then
    ok "virsh snapshot-list --tree shows the same named tree: $(tr -s ' |+\n-' ' ' <"$W/vtree.txt")"
else
    bad "libvirt's tree" "$(cat "$W/parents.txt" "$W/vtree.txt")"
fi
if [ "$(V snapshot-current qsnap-tree --name)" = E ] &&
    [ "$(V snapshot-dumpxml qsnap-tree A | grep -c 'first &lt;one&gt; &amp; only')" = 1 ] &&
    [ "$(V snapshot-info qsnap-tree B | awk '/^Location/ { print $2 }')" = external ] &&
    [ "$(V snapshot-info qsnap-tree E | awk '/^Location/ { print $2 }')" = internal ]; then
    ok "libvirt sees E as current, A's description, B external, E internal"
else
    bad "libvirt's view" "current $(V snapshot-current qsnap-tree --name), $(V snapshot-info qsnap-tree E)"
fi
if V define "$W/img/lvx/domain.xml" >"$W/def.txt" 2>&1 &&
    [ "$(top_of qsnap-tree)" = "$(q current "$t/vm.qcow2" --path)" ]; then
    ok "virsh define of domain.xml puts vda on 'qsnap current --path'"
else
    bad "define domain.xml" "$(cat "$W/def.txt"); vda is $(top_of qsnap-tree)"
fi

# virsh snapshot-create-as on the domain now on the VM path: libvirt puts its overlay
# beside the VM path, inside the store (layers/current.F, backed by the VM path), and
# moves vda onto it. qsnap refuses to change the tree over it (exit 4, naming it, nothing
# changed), verify --repair leaves it; merged (image commit) and moved out, with vda on
# the VM path again, qsnap goes on and the data written on it is in the branch.
tv=$t/vm.qcow2
if V snapshot-create-as qsnap-tree F --disk-only >"$W/f.txt" 2>&1 && ov=$(top_of qsnap-tree) &&
    [ "$(dirname "$ov")" = "$tv.qsnap/layers" ] && qio qcow2 "$ov" 'write -P 0x66 5M 64k'; then
    st0=$(state "$tv.qsnap")
    # (branch other's head holds the internal snapshot E: switch and revert, not create)
    q switch "$tv" main >"$W/g.txt" 2>&1
    rc=$?
    q revert "$tv" A >>"$W/g.txt" 2>&1
    rc2=$?
    [ $rc = 4 ] && [ $rc2 = 4 ] && [ "$(grep -c "$(basename "$ov"): a file qsnap did not make" "$W/g.txt")" = 2 ] &&
        [ "$st0" = "$(state "$tv.qsnap")" ] &&
        ok "after virsh snapshot-create-as: qsnap switch and revert exit 4 naming libvirt's overlay, nothing changed" ||
        bad "libvirt's overlay in the store" "exit $rc/$rc2: $(cat "$W/g.txt")"
    q verify "$tv" --repair >"$W/g.txt" 2>&1
    rc=$?
    [ $rc = 4 ] && [ -f "$ov" ] && qio qcow2 "$ov" 'read -P 0x66 5M 64k' &&
        ok "verify --repair names libvirt's overlay and leaves it, with the VM's data" ||
        bad "verify --repair and libvirt's overlay" "exit $rc: $(cat "$W/g.txt")"
    if q image commit "$ov" >/dev/null 2>&1 && mv "$ov" "$W/" && V snapshot-delete qsnap-tree F --metadata >/dev/null 2>&1 &&
        V define "$W/img/lvx/domain.xml" >/dev/null 2>&1 && [ "$(top_of qsnap-tree)" = "$(q current "$tv" --path)" ] &&
        q switch "$tv" main >/dev/null 2>&1 && q switch "$tv" other >/dev/null 2>&1 && q verify "$tv" >/dev/null 2>&1 &&
        q export "$tv" other "$W/other.raw" >/dev/null 2>&1 &&
        qio raw "$W/other.raw" 'read -P 0x66 5M 64k' 'read -P 0x50 4M 64k'; then
        ok "merged with qsnap image commit and moved out: switch goes on, the data is in branch other"
        # libvirt-xml again, on the domain as it is now (vda on the VM path already):
        # nothing to re-point, and no "(was X)" naming the same file.
        V dumpxml qsnap-tree >"$W/tree-dump2.xml" 2>&1
        q libvirt-xml "$tv" --domain "$W/tree-dump2.xml" --out "$W/img/lvx2" >"$W/lvx2.txt" 2>&1
        rc=$?
        [ $rc = 0 ] && grep -q "disk vda is on the store's current image already" "$W/lvx2.txt" &&
            ! grep -q "(was " "$W/lvx2.txt" &&
            ok "libvirt-xml on a domain already on the VM path says so (no 'was' of the same file)" ||
            bad "libvirt-xml on a domain on the VM path" "exit $rc: $(cat "$W/lvx2.txt")"
    else
        bad "recovery from libvirt's overlay" "$(q verify "$tv" 2>&1 | tail -3)"
    fi
else
    bad "virsh snapshot-create-as on the VM path" "$(cat "$W/f.txt"), vda $(top_of qsnap-tree)"
fi

for dom in qsnap-raw qsnap-qcow2 qsnap-tree; do V undefine "$dom" --snapshots-metadata >/dev/null 2>&1; done
ts_end
