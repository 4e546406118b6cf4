#!/usr/bin/env python3
"""Damaged images, writes and repairs, judged against qemu 7.2.

Every image is made by qemu-img/qemu-io and then damaged by poking bytes into
a copy, the way QEMU's iotests on refcounts, overlap checks and repair build
theirs: a zeroed refcount block, an emptied refcount table, refcounts of 0 for
the header, the L1 table, an L2 table or the refcount table, refcount table
entries that are misaligned, past the end of the file or point at the L1
table, preallocated zero clusters whose offset points into metadata or is
misaligned, refcount blocks used as data or as a snapshot's L2 table, and a
cluster referenced twice under refcount_bits=1.

Two kinds of case:

  write   a qemu-io command (plain, partial, multi-cluster and compressed
          writes) is run by qemu-io 7.2 on one copy and by `qsnap image io`
          on another. QEMU's outcome is recorded in the case (QEMU_WRITE
          below) and checked again at run time. When qemu refuses the write
          and marks the image corrupt, qsnap must fail too, set the corrupt
          bit (incompatible bit 1) and leave every other byte of the file as
          it was; when qemu's write succeeds, qsnap's must too, qemu-io must
          read the pattern back from qsnap's copy, and `qemu-img check`
          must judge both copies alike.

  repair  `qemu-img check` and `qsnap image check` must exit alike on the
          damaged image (qemu-img's recorded status is checked too); then
          `qsnap image check -r all` must leave an image that `qemu-img
          check` finds clean, and the guest content (qemu-img convert) must
          equal the content before the damage, outside the guest ranges the
          case declares lost (and the repair reported). Where qemu's own
          repair does not end clean, that is printed as a difference.

Every qsnap command runs under a 1 GiB address-space limit (ulimit -v; not
under ASan/TSan, which reserve more) and a 10 s limit: no crash, no hang, no
sanitizer report.

Prints "ok NAME" / "FAIL NAME: why" per case and "N passed, N failed" last.
Environment: QSNAP (default build/release/qsnap), CASE=substr, KEEP=1,
VERBOSE=1, RECORD=1 (print qemu's outcomes in the form of the tables below).
"""
import hashlib
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

QSNAP = os.path.abspath(os.environ.get("QSNAP", "build/release/qsnap"))
TIMEOUT = 10
ONLY = os.environ.get("CASE", "")
VERBOSE = os.environ.get("VERBOSE", "") == "1"
RECORD = os.environ.get("RECORD", "") == "1"
AS_LIMIT = 1 << 30
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:", "MemorySanitizer", "ThreadSanitizer")
OFF_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
ZERO = 1


def u64(b, o):
    return struct.unpack_from(">Q", b, o)[0]


def p64(b, o, v):
    struct.pack_into(">Q", b, o, v)


def p32(b, o, v):
    struct.pack_into(">I", b, o, v)


def cluster_size(b):
    return 1 << struct.unpack_from(">I", b, 20)[0]


def refcount_bits(b):
    return 1 << struct.unpack_from(">I", b, 96)[0] if struct.unpack_from(">I", b, 4)[0] >= 3 else 16


def l1_off(b):
    return u64(b, 40)


def rt_off(b):
    return u64(b, 48)


def rb0(b):
    return u64(b, rt_off(b)) & OFF_MASK


def l2_of(b, i=0):
    return u64(b, l1_off(b) + 8 * i) & OFF_MASK


def l2e_off(b, idx, l1i=0):
    return l2_of(b, l1i) + 8 * idx


def set_refcount(b, cluster, value):
    """Refcount of a cluster in the first refcount block (16-bit refcounts only)."""
    assert refcount_bits(b) == 16
    struct.pack_into(">H", b, rb0(b) + 2 * cluster, value)


# ---- running ----------------------------------------------------------------------

def limited():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def sanitized():
    """ASan/TSan builds (static or shared runtime) reserve far more address space than 1 GiB."""
    try:
        with open(QSNAP, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return b"__asan_init" in data or b"__tsan_init" in data


USE_LIMIT = not sanitized()


def run(argv, cwd, ours=False):
    """(exit status, stdout, stderr); 124 on timeout."""
    try:
        p = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=TIMEOUT,
                           stdin=subprocess.DEVNULL,
                           preexec_fn=limited if ours and USE_LIMIT else None)
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        return 124, "", "timeout"


def sh(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"setup command failed: {cmd}: {p.stderr.decode()[:300]}")
    return p.stdout.decode()


def crash_problems(label, rc, so, se):
    if rc == 124:
        return [f"{label}: no answer within {TIMEOUT}s"]
    if rc < 0 or rc >= 128:
        return [f"{label}: crashed (status {rc}): {se.strip()[-200:]}"]
    if any(m in so + se for m in SANITIZER_MARKS):
        return [f"{label}: sanitizer report: {(so + se).strip()[:200]}"]
    return []


def qemu_check(path, cwd):
    rc, _, _ = run(["qemu-img", "check", path], cwd)
    return rc


def guest(path, cwd):
    out = os.path.join(cwd, "guest.raw")
    if os.path.exists(out):
        os.unlink(out)
    rc, _, err = run(["qemu-img", "convert", "-O", "raw", path, out], cwd)
    if rc != 0:
        return None
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


# ---- base images (qemu-img / qemu-io) ------------------------------------------------

class Bases:
    def __init__(self, d):
        self.d = d
        os.makedirs(d)
        # 64 MiB, 64 KiB clusters: data at 0, 1M (2 clusters), 40M (second L2 table);
        # guest cluster 2 (128k) preallocated as zero (ZERO|COPIED with a host offset).
        sh("qemu-img create -q -f qcow2 v3.qcow2 64M", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x12 128k 64k' "
           "-c 'write -P 0x13 1M 128k' -c 'write -P 0x14 40M 64k' -c 'write -z 128k 64k' v3.qcow2", d)
        b = self.load("v3.qcow2")
        e = u64(b, l2e_off(b, 2))
        assert e & OFF_MASK and e & ZERO and e & COPIED, "guest cluster 2 is not preallocated zero"
        sh("qemu-img create -q -f qcow2 -o cluster_size=512 c512.qcow2 4M", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x21 0 200k' -c 'write -P 0x22 3M 4k' c512.qcow2", d)
        sh("qemu-img create -q -f qcow2 snap.qcow2 64M", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x31 0 64k' snap.qcow2", d)
        sh("qemu-img snapshot -c s1 snap.qcow2", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x32 0 4k' -c 'write -P 0x33 2M 64k' snap.qcow2", d)
        sh("qemu-img create -q -f qcow2 -o refcount_bits=1 bits1.qcow2 64M", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x41 0 64k' -c 'write -P 0x42 64k 64k' bits1.qcow2", d)
        sh("qemu-img create -q -f qcow2 -o refcount_bits=64 bits64.qcow2 64M", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x51 0 64k' -c 'write -P 0x52 1M 64k' bits64.qcow2", d)
        sh("qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 64M", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x61 0 64k' -c 'write -P 0x62 1M 64k' v2.qcow2", d)

    def load(self, name):
        with open(os.path.join(self.d, name), "rb") as f:
            return bytearray(f.read())


B = None


# ---- damages ------------------------------------------------------------------------

def zero_refblock(b):
    o = rb0(b)
    b[o:o + cluster_size(b)] = bytes(cluster_size(b))


def empty_reftable(b):
    o = rt_off(b)
    b[o:o + cluster_size(b)] = bytes(cluster_size(b))


def header_ref0(b):
    set_refcount(b, 0, 0)


def l1_ref0(b):
    set_refcount(b, l1_off(b) // cluster_size(b), 0)


def l2_ref0(b):
    set_refcount(b, l2_of(b) // cluster_size(b), 0)


def reftable_ref0(b):
    set_refcount(b, rt_off(b) // cluster_size(b), 0)


def rt_entry_unaligned(b):
    p64(b, rt_off(b), rb0(b) + 0x200)


def rt_entry_beyond_eof(b):
    p64(b, rt_off(b), 1 << 40)


def rt_entry_reserved(b):
    p64(b, rt_off(b), rb0(b) | 0x100)


def refblock_over_l1(b):
    p64(b, rt_off(b), l1_off(b) & ~(cluster_size(b) - 1))


def zero_entry_at(target):
    def fn(b):
        p64(b, l2e_off(b, 2), target(b) | COPIED | ZERO)
    return fn


def zero_entry_unaligned(b):
    p64(b, l2e_off(b, 2), (u64(b, l2e_off(b, 2)) & OFF_MASK) + 0x200 | COPIED | ZERO)


CLASH_DAMAGES = [
    ("zeroed-refblock", zero_refblock),
    ("emptied-reftable", empty_reftable),
    ("header-refcount-0", header_ref0),
    ("l1-refcount-0", l1_ref0),
    ("l2-refcount-0", l2_ref0),
    ("reftable-refcount-0", reftable_ref0),
    ("rt-entry-unaligned", rt_entry_unaligned),
    ("rt-entry-beyond-eof", rt_entry_beyond_eof),
    ("refblock-over-l1", refblock_over_l1),
    ("zero-alloc-into-reftable", zero_entry_at(rt_off)),
    ("zero-alloc-into-l1", zero_entry_at(l1_off)),
    ("zero-alloc-into-l2", zero_entry_at(l2_of)),
    ("zero-alloc-into-refblock", zero_entry_at(rb0)),
    ("zero-alloc-unaligned", zero_entry_unaligned),
]

WRITES = [
    ("into", "write -P 0x5a 128k 64k"),       # the preallocated zero cluster, whole
    ("partial", "write -P 0x5b 130k 4k"),     # part of it
    ("new", "write -P 0x5c 2M 64k"),          # a new cluster in the first L2 table
    ("multi", "write -P 0x5d 8M 512k"),       # several new clusters at once
    ("new-l2", "write -P 0x5e 63M 64k"),      # a new L2 table too
    ("compressed", "write -c -P 0x5f 3M 64k"),  # compressed bytes
]

# qemu-io 7.2's outcome per damage and write: "ok" (write succeeded),
# "corrupt" (write failed, image marked corrupt), "fail" (failed, image
# unchanged). Recorded with RECORD=1 and checked again at every run.
QEMU_WRITE = {
    "zeroed-refblock": "ok ok corrupt corrupt corrupt corrupt",
    "emptied-reftable": "ok ok corrupt corrupt corrupt corrupt",
    "header-refcount-0": "ok ok corrupt ok corrupt corrupt",
    "l1-refcount-0": "ok ok corrupt ok corrupt corrupt",
    "l2-refcount-0": "ok ok corrupt ok corrupt corrupt",
    "reftable-refcount-0": "ok ok corrupt ok corrupt corrupt",
    "rt-entry-unaligned": "ok corrupt corrupt corrupt corrupt corrupt",
    "rt-entry-beyond-eof": "ok ok corrupt corrupt corrupt corrupt",
    "refblock-over-l1": "ok ok corrupt corrupt corrupt corrupt",
    "zero-alloc-into-reftable": "corrupt corrupt ok ok ok ok",
    "zero-alloc-into-l1": "corrupt corrupt ok ok ok ok",
    "zero-alloc-into-l2": "corrupt corrupt ok ok ok ok",
    "zero-alloc-into-refblock": "corrupt corrupt ok ok ok ok",
    "zero-alloc-unaligned": "corrupt corrupt ok ok ok ok",
}

# Where we deliberately answer otherwise: (damage, write) -> (our outcome, why).
OURS_WRITE = {
    ("rt-entry-unaligned", "partial"): (
        "ok", "a partial write into a preallocated zero cluster needs no refcount: qsnap writes it "
        "in place; qemu reads a refcount on that path and trips on the bad table entry"),
}

# Other bases: the first refcount block zeroed / header refcount 0.
EXTRA_WRITE_CASES = [
    # (name, base, damage, command, qemu's outcome)
    ("c512-zeroed-refblock-new", "c512.qcow2", zero_refblock, "write -P 0x71 1M 4k", "corrupt"),
    ("c512-zeroed-refblock-compressed", "c512.qcow2", zero_refblock, "write -c -P 0x72 2M 512", "corrupt"),
    ("c512-header-refcount-0", "c512.qcow2", header_ref0, "write -P 0x73 1M 4k", "corrupt"),
    ("bits64-zeroed-refblock", "bits64.qcow2", zero_refblock, "write -P 0x74 2M 64k", "corrupt"),
    ("snap-zeroed-refblock", "snap.qcow2", zero_refblock, "write -P 0x75 4M 64k", "corrupt"),
    ("snap-zeroed-refblock-cow", "snap.qcow2", zero_refblock, "write -P 0x76 0 4k", "ok"),
    ("v2-zeroed-refblock", "v2.qcow2", zero_refblock, "write -P 0x77 2M 64k", "fail"),
    ("bits1-zeroed-refblock", "bits1.qcow2", zero_refblock, "write -P 0x78 2M 64k", "corrupt"),
]


def outcome(rc, before, after):
    """What a write did: ok / corrupt / fail, and whether other bytes changed."""
    if rc == 0:
        return "ok", None
    was = u64(before, 72) if len(before) >= 80 else 0
    now = u64(after, 72) if len(after) >= 80 else 0
    masked = bytearray(after)
    if len(masked) >= 80:
        p64(masked, 72, was)
    same = bytes(masked) == bytes(before)
    return ("corrupt" if (now & 2) and not (was & 2) else "fail"), same


def write_case(name, base, damage, cmd, recorded, ours=None):
    def check(d):
        buf = B.load(base)
        damage(buf)
        problems = []
        paths = {}
        for tool in ("qemu", "qsnap"):
            p = os.path.join(d, f"{tool}.qcow2")
            with open(p, "wb") as f:
                f.write(buf)
            paths[tool] = p
        rc, so, se = run(["qemu-io", "-f", "qcow2", "-c", cmd, "qemu.qcow2"], d)
        with open(paths["qemu"], "rb") as f:
            q_after = f.read()
        q_out, _ = outcome(rc, buf, q_after)
        if RECORD:
            print(f"# record {name}: {q_out}")
        if q_out != recorded:
            problems.append(f"qemu-io now gives {q_out}, recorded {recorded}")
        rc, so, se = run([QSNAP, "image", "io", "-c", cmd, "qsnap.qcow2"], d, ours=True)
        problems += crash_problems("io", rc, so, se)
        if VERBOSE:
            print(f"#   qsnap: exit {rc} {(so + se).strip()[-200:]}")
        with open(paths["qsnap"], "rb") as f:
            o_after = f.read()
        o_out, o_same = outcome(rc, buf, o_after)
        if ours:
            print(f"# differs from qemu-io: {name}: qemu-io {q_out}, we expect {ours[0]}: {ours[1]}")
            q_out = ours[0]
        if o_out != q_out:
            problems.append(f"qsnap: {o_out}, qemu-io: {q_out}: {(so + se).strip()[-160:]!r}")
        if o_out != "ok":
            if not o_same:
                problems.append("the failed write changed the file beyond the corrupt bit")
            if "qsnap.qcow2" not in se + so:
                problems.append(f"the message does not name the file: {(so + se).strip()[-160:]!r}")
        else:
            m = re.search(r"-P (0x[0-9a-f]+) (\S+) (\S+)", cmd)
            rrc, rso, rse = run(["qemu-io", "-r", "-f", "qcow2", "-c",
                                 f"read -P {m.group(1)} {m.group(2)} {m.group(3)}", "qsnap.qcow2"], d)
            if rrc != 0 or "verification failed" in rso + rse:
                problems.append("qemu-io cannot read back what qsnap wrote")
            qc, oc = qemu_check("qemu.qcow2", d), qemu_check("qsnap.qcow2", d)
            if qc != oc:
                problems.append(f"qemu-img check: {oc} after qsnap's write, {qc} after qemu's")
        return problems
    return check


# ---- repairs ----------------------------------------------------------------------------

def rt_offset_beyond_eof(b):
    p64(b, 48, 1 << 40)


def rt_clusters_zero(b):
    p32(b, 56, 0)


def rt_offset_unaligned(b):
    p64(b, 48, rt_off(b) + 0x200)


def refcount_too_high(b):
    set_refcount(b, 5, 3)


def refcount_too_low(b):
    set_refcount(b, l2_of(b) // cluster_size(b), 0)


def leak_past_data(b):
    cs = cluster_size(b)
    n = len(b) // cs
    b.extend(bytes(cs))
    set_refcount(b, n, 1)


def refblock_as_data(b):
    p64(b, l2e_off(b, 16), rb0(b) | COPIED)


def snapshot_l2_is_refblock(b):
    so = u64(b, 64)
    p64(b, u64(b, so), rb0(b))


def bits1_double(b):
    p64(b, l2e_off(b, 5), u64(b, l2e_off(b, 0)))


def double_ref(b):
    p64(b, l2e_off(b, 5), u64(b, l2e_off(b, 0)))


def c512_drop_second_block(b):
    p64(b, rt_off(b) + 8, 0)


def snapshot_l1_misaligned(b):
    so = u64(b, 64)
    p64(b, so, u64(b, so) + 0x200)


def snapshot_l1_huge(b):
    so = u64(b, 64)
    p32(b, so + 8, 0x7FFFFFFF)


def l2_copied_wrong(b):
    p64(b, l1_off(b), u64(b, l1_off(b)) & ~COPIED)


# (name, base, damage, qemu-img check status, qemu's -r all result
#  ("clean"/"not-clean"), ours after -r all ("clean" or "refused": an
#  image a repair does not touch), lost: "none" | "damaged" (compare with
#  what the damaged image read as) | [(guest_off, len)], why)
REPAIRS = [
    ("reftable-offset-beyond-eof", "v3.qcow2", rt_offset_beyond_eof, 2, "clean", "clean", "none", ""),
    ("reftable-clusters-0", "v3.qcow2", rt_clusters_zero, 2, "clean", "clean", "none", ""),
    ("reftable-offset-unaligned", "v3.qcow2", rt_offset_unaligned, 1, "not-clean", "clean", "none",
     "qemu-img cannot repair a misaligned refcount table offset; we rebuild"),
    ("rt-entry-unaligned", "v3.qcow2", rt_entry_unaligned, 1, "not-clean", "clean", "none",
     "qemu-img cannot repair a misaligned refcount block entry; we rebuild"),
    ("rt-entry-beyond-eof", "v3.qcow2", rt_entry_beyond_eof, 2, "clean", "clean", "none", ""),
    ("rt-entry-reserved-bits", "v3.qcow2", rt_entry_reserved, 2, "not-clean", "clean", "none",
     "qemu-img cannot repair reserved bits in a refcount table entry; we rebuild"),
    ("zeroed-refblock", "v3.qcow2", zero_refblock, 2, "clean", "clean", "none", ""),
    ("emptied-reftable", "v3.qcow2", empty_reftable, 2, "clean", "clean", "none", ""),
    ("header-refcount-0", "v3.qcow2", header_ref0, 2, "clean", "clean", "none", ""),
    ("l1-refcount-0", "v3.qcow2", l1_ref0, 2, "clean", "clean", "none", ""),
    ("reftable-refcount-0", "v3.qcow2", reftable_ref0, 2, "clean", "clean", "none", ""),
    ("refcount-too-high", "v3.qcow2", refcount_too_high, 2, "clean", "clean", "none", ""),
    ("refcount-too-low", "v3.qcow2", refcount_too_low, 2, "clean", "clean", "none", ""),
    ("leak-past-data", "v3.qcow2", leak_past_data, 3, "clean", "clean", "none", ""),
    ("l2-copied-flag-wrong", "v3.qcow2", l2_copied_wrong, 2, "clean", "clean", "none", ""),
    ("refblock-as-data", "v3.qcow2", refblock_as_data, 2, "clean", "clean", "damaged",
     "the guest cluster reads the old refcount block, before and after (its data was lost to the damage)"),
    ("refblock-over-l1", "v3.qcow2", refblock_over_l1, 2, "clean", "clean", "none", ""),
    ("snapshot-l2-is-refblock", "snap.qcow2", snapshot_l2_is_refblock, 2, "not-clean", "clean", "none",
     "the snapshot's L1 entry is cleared (its first 512 MiB are reported lost); qemu-img leaves 3 errors"),
    ("double-reference", "v3.qcow2", double_ref, 2, "clean", "clean", "damaged", ""),
    ("bits1-double-reference", "bits1.qcow2", bits1_double, 2, "not-clean", "clean", "damaged",
     "under refcount_bits=1 the shared cluster is copied; qemu-img cannot count it"),
    ("bits64-zeroed-refblock", "bits64.qcow2", zero_refblock, 2, "clean", "clean", "none", ""),
    ("c512-second-refblock-dropped", "c512.qcow2", c512_drop_second_block, 2, "clean", "clean", "none", ""),
    ("c512-zeroed-refblock", "c512.qcow2", zero_refblock, 2, "clean", "clean", "none", ""),
    ("snap-zeroed-refblock", "snap.qcow2", zero_refblock, 2, "clean", "clean", "none", ""),
    ("snapshot-l1-misaligned", "snap.qcow2", snapshot_l1_misaligned, 2, "not-clean", "refused", "none",
     "a repair does not guess where a snapshot's L1 table is: refused at open, the file untouched"),
    ("snapshot-l1-size-huge", "snap.qcow2", snapshot_l1_huge, 2, "not-clean", "refused", "none",
     "a repair does not guess a snapshot's L1 size: refused at open, the file untouched"),
    ("v2-zeroed-refblock", "v2.qcow2", zero_refblock, 2, "clean", "clean", "none", ""),
]


def repair_case(name, base, damage, q_status, q_repair, ours_after, lost, why):
    def check(d):
        problems = []
        orig = B.load(base)
        buf = bytearray(orig)
        damage(buf)
        with open(os.path.join(d, "orig.qcow2"), "wb") as f:
            f.write(orig)
        for n in ("damaged.qcow2", "qemu.qcow2", "qsnap.qcow2"):
            with open(os.path.join(d, n), "wb") as f:
                f.write(buf)
        before = guest("orig.qcow2", d)
        damaged = guest("damaged.qcow2", d) if lost == "damaged" else None
        # check without repair: the same status as qemu-img's (recorded)
        qrc, _, _ = run(["qemu-img", "check", "damaged.qcow2"], d)
        if RECORD:
            print(f"# record {name}: check {qrc}")
        if qrc != q_status:
            problems.append(f"qemu-img check now exits {qrc}, recorded {q_status}")
        rc, so, se = run([QSNAP, "image", "check", "damaged.qcow2"], d, ours=True)
        problems += crash_problems("check", rc, so, se)
        if rc != qrc:
            problems.append(f"check exits {rc}, qemu-img check {qrc}: {se.strip()[-160:]!r}")
        # qemu's repair, for the record
        run(["qemu-img", "check", "-r", "all", "qemu.qcow2"], d)
        q_after = "clean" if qemu_check("qemu.qcow2", d) == 0 else "not-clean"
        if RECORD:
            print(f"# record {name}: qemu repair {q_after}")
        if q_after != q_repair:
            problems.append(f"qemu-img's repair now ends {q_after}, recorded {q_repair}")
        elif q_after != "clean" and ours_after == "clean":
            print(f"# differs from qemu-img: {name}: qemu-img -r all does not end clean; ours does: {why}")
        # ours
        rc, so, se = run([QSNAP, "image", "check", "-r", "all", "qsnap.qcow2"], d, ours=True)
        problems += crash_problems("check -r all", rc, so, se)
        if VERBOSE:
            print(f"#   repair: exit {rc}\n" + "\n".join("#     " + x for x in (se + so).splitlines()[:12]))
        if ours_after == "refused":
            with open(os.path.join(d, "qsnap.qcow2"), "rb") as f:
                if f.read() != bytes(buf):
                    problems.append("the refused repair changed the file")
            if rc == 0:
                problems.append("the repair was expected to be refused")
            return problems
        if rc != 0:
            problems.append(f"check -r all exits {rc}: {se.strip()[-200:]!r}")
        oc = qemu_check("qsnap.qcow2", d)
        if oc != 0:
            problems.append(f"qemu-img check after the repair exits {oc}")
        after = guest("qsnap.qcow2", d)
        ref = damaged if lost == "damaged" else before
        if after is None or ref is None:
            problems.append("qemu-img convert failed on the repaired image")
        elif after != ref:
            diff = next(i for i in range(min(len(after), len(ref))) if after[i] != ref[i]) \
                if len(after) == len(ref) else -1
            problems.append(f"guest content differs after the repair (first at {diff:#x})")
        if "Rebuilding refcount structure" in se and "repaired" not in so:
            problems.append("a rebuild was not summed up as repaired")
        return problems
    return check


def raw_check_case(d):
    """qemu-img: 'This image format does not support checks' (status 63) for raw, also with -r all."""
    problems = []
    sh("qemu-img create -q -f raw r.raw 1M", d)
    for extra in ([], ["-r", "all"], ["--output=json"]):
        qrc, _, qse = run(["qemu-img", "check", "-f", "raw"] + extra + ["r.raw"], d)
        rc, so, se = run([QSNAP, "image", "check"] + extra + ["r.raw"], d, ours=True)
        problems += crash_problems("check", rc, so, se)
        if rc != qrc:
            problems.append(f"check {' '.join(extra)}: exit {rc}, qemu-img {qrc}")
        if "This image format does not support checks" not in se:
            problems.append(f"check {' '.join(extra)}: message {se.strip()!r}")
    return problems


def leaked_lines_case(d):
    """check -r all lists each leaked cluster it fixes as qemu-img does."""
    problems = []
    sh("qemu-img create -q -f qcow2 l.qcow2 64M", d)
    sh("qemu-io -f qcow2 -c 'write -P 1 0 128k' l.qcow2", d)
    with open(os.path.join(d, "l.qcow2"), "rb") as f:
        b = bytearray(f.read())
    set_refcount(b, 5, 2)
    n = len(b) // 65536
    b.extend(bytes(65536))
    set_refcount(b, n, 1)
    for t in ("q.qcow2", "o.qcow2"):
        with open(os.path.join(d, t), "wb") as f:
            f.write(b)
    qrc, qso, qse = run(["qemu-img", "check", "-r", "all", "q.qcow2"], d)
    rc, so, se = run([QSNAP, "image", "check", "-r", "all", "o.qcow2"], d, ours=True)
    problems += crash_problems("check -r all", rc, so, se)
    want = sorted(x for x in qse.splitlines() if x.startswith("Leaked cluster"))
    got = sorted(x for x in se.splitlines() if x.startswith("Leaked cluster"))
    if not want:
        problems.append("qemu-img listed no leaked cluster (the case is broken)")
    if got != want:
        problems.append(f"leak lines {got} != qemu-img's {want}")
    if rc != qrc:
        problems.append(f"exit {rc}, qemu-img {qrc}")
    if so != qso:
        problems.append(f"stdout differs from qemu-img's: {so!r} vs {qso!r}")
    return problems


def discard_unaligned_case(d):
    """Discard over an L2 entry with a misaligned offset: qemu reports it, leaks the cluster and goes on."""
    problems = []
    sh("qemu-img create -q -f qcow2 u.qcow2 4M", d)
    sh("qemu-io -f qcow2 -c 'write -P 1 0 128k' u.qcow2", d)
    p = os.path.join(d, "u.qcow2")
    with open(p, "rb") as f:
        b = bytearray(f.read())
    p64(b, l2e_off(b, 0), u64(b, l2e_off(b, 0)) + 0x200)
    for t in ("q.qcow2", "o.qcow2"):
        with open(os.path.join(d, t), "wb") as f:
            f.write(b)
    qrc, _, _ = run(["qemu-io", "-f", "qcow2", "-c", "discard 0 128k", "q.qcow2"], d)
    rc, so, se = run([QSNAP, "image", "io", "-c", "discard 0 128k", "o.qcow2"], d, ours=True)
    problems += crash_problems("io", rc, so, se)
    if qrc != 0:
        problems.append(f"qemu-io discard now exits {qrc}, recorded 0")
    if rc != qrc:
        problems.append(f"discard exits {rc}, qemu-io {qrc}: {se.strip()!r}")
    with open(os.path.join(d, "o.qcow2"), "rb") as f:
        if u64(f.read(), 72) & 2:
            problems.append("the discard marked the image corrupt (qemu does not)")
    qc, oc = qemu_check("q.qcow2", d), qemu_check("o.qcow2", d)
    if qc != oc:
        problems.append(f"qemu-img check: {oc} after ours, {qc} after qemu's")
    return problems


def shrink_uncovered_block_case(d):
    """resize --shrink refuses while a refcount block has no refcount of its own."""
    problems = []
    sh("qemu-img create -q -f qcow2 -o cluster_size=512 s.qcow2 1M", d)
    sh("qemu-io -f qcow2 -c 'write -P 1 0 40k' -c 'write -P 2 900k 4k' s.qcow2", d)
    p = os.path.join(d, "s.qcow2")
    with open(p, "rb") as f:
        b = bytearray(f.read())
    # A copy of the first refcount block in cluster 600: a group with no block.
    b.extend(bytes(601 * 512 - len(b)))
    b[600 * 512:601 * 512] = b[rb0(b):rb0(b) + 512]
    p64(b, rt_off(b), 600 * 512)
    with open(p, "wb") as f:
        f.write(b)
    rc, so, se = run([QSNAP, "image", "resize", "--shrink", "s.qcow2", "256k"], d, ours=True)
    problems += crash_problems("resize", rc, so, se)
    with open(p, "rb") as f:
        if f.read() != bytes(b):
            problems.append("the refused shrink changed the file")
    if rc != 1 or "refcount block" not in se or "s.qcow2" not in se:
        problems.append(f"resize --shrink: exit {rc}, {se.strip()!r}")
    rc, so, se = run([QSNAP, "image", "check", "-r", "all", "s.qcow2"], d, ours=True)
    rc2, so2, se2 = run([QSNAP, "image", "resize", "--shrink", "s.qcow2", "256k"], d, ours=True)
    if rc2 != 0 or qemu_check("s.qcow2", d) != 0:
        problems.append(f"after the repair: shrink exit {rc2} {se2.strip()!r}")
    return problems


# ---- main ---------------------------------------------------------------------------------

def all_cases():
    cases = []
    for dname, fn in CLASH_DAMAGES:
        outs = QEMU_WRITE[dname].split()
        for (wname, cmd), rec in zip(WRITES, outs):
            cases.append((f"write-{dname}-{wname}",
                          write_case(dname, "v3.qcow2", fn, cmd, rec, OURS_WRITE.get((dname, wname)))))
    for name, base, fn, cmd, rec in EXTRA_WRITE_CASES:
        cases.append((f"write-{name}", write_case(name, base, fn, cmd, rec)))
    for r in REPAIRS:
        cases.append((f"repair-{r[0]}", repair_case(*r)))
    cases.append(("check-raw-no-checks", raw_check_case))
    cases.append(("check-leaked-cluster-lines", leaked_lines_case))
    cases.append(("shrink-uncovered-refblock", shrink_uncovered_block_case))
    cases.append(("discard-unaligned-entry", discard_unaligned_case))
    return cases


def main():
    global B
    if not os.access(QSNAP, os.X_OK):
        print(f"FAIL setup: {QSNAP} not found (build first)")
        print("0 passed, 1 failed")
        return 1
    for tool in ("qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            print(f"FAIL setup: {tool} not found")
            print("0 passed, 1 failed")
            return 1
    if not USE_LIMIT:
        print("# sanitizer build: no address-space limit")
    work = tempfile.mkdtemp(prefix="qsnap-clash.")
    t0 = time.time()
    passed = failed = 0
    try:
        B = Bases(os.path.join(work, "bases"))
        cases = all_cases()
        seen = set()
        for name, fn in cases:
            assert name not in seen, name
            seen.add(name)
            if ONLY and ONLY not in name:
                continue
            d = os.path.join(work, name)
            os.makedirs(d)
            try:
                problems = fn(d)
            except Exception as e:
                problems = [f"case setup: {type(e).__name__}: {e}"]
            if problems:
                failed += 1
                print(f"FAIL {name}: " + "; ".join(problems))
            else:
                passed += 1
                print(f"ok {name}")
            sys.stdout.flush()
    finally:
        if os.environ.get("KEEP") == "1":
            print(f"# work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"# {len(cases)} cases, {time.time() - t0:.1f}s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
