#!/usr/bin/env python3
"""Damaged-image suite: open and read decisions.

Every case is built at test time from images made by qemu-img/qemu-io, by
poking bytes into a copy (header fields, extensions, L1/L2 entries,
compressed descriptors, extended-L2 bitmaps, snapshot table, truncation,
backing names and chains). Each case's expected class comes from what
qemu-img 7.2 does on the same file, unless the case names a deliberate
difference (printed as "# differs from qemu-img: ..."):

  open   refused at open: every qsnap command fails
  read   opens, but reading the guest content fails (convert, digest)
  works  every command succeeds; convert matches qemu-img's output

Every qsnap command runs under a 1 GiB address-space limit (not in ASan/TSan
builds). tests/damaged/clash_repair.py has the write and repair cases.

Checked for every command on every case (qsnap image info, info
--output=json, map --output=json, convert -O raw, digest): no crash (exit
status < 128, no sanitizer report), no hang (10 s limit), the files of the
case unchanged (sha256), a non-zero exit where the class says so, and on
failure a one-line stderr message starting with "qsnap: " that names the file.

Prints "ok NAME" / "FAIL NAME: why" per case and "N passed, N failed" last.
Environment: QSNAP (default build/release/qsnap), KEEP=1 keeps the work
directory, CASE=substr runs only matching cases, VERBOSE=1 prints messages.
"""
import hashlib
import os
import resource
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time

QSNAP = os.path.abspath(os.environ.get("QSNAP", "build/release/qsnap"))
TIMEOUT = 10
ONLY = os.environ.get("CASE", "")
VERBOSE = os.environ.get("VERBOSE", "") == "1"
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:", "MemorySanitizer", "ThreadSanitizer")

# ---- qcow2 layout helpers ------------------------------------------------------

MAGIC = b"QFI\xfb"
EXT_END, EXT_BACKING_FMT, EXT_FEATURES = 0, 0xE2792ACA, 0x6803F857
EXT_BITMAPS = 0x23852875
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
OFLAG_COMPRESSED = 1 << 62
OFLAG_COPIED = 1 << 63

# (name, offset, struct format)
FIELDS = {
    "magic": (0, ">I"), "version": (4, ">I"), "backing_file_offset": (8, ">Q"),
    "backing_file_size": (16, ">I"), "cluster_bits": (20, ">I"), "size": (24, ">Q"),
    "crypt_method": (32, ">I"), "l1_size": (36, ">I"), "l1_table_offset": (40, ">Q"),
    "refcount_table_offset": (48, ">Q"), "refcount_table_clusters": (56, ">I"),
    "nb_snapshots": (60, ">I"), "snapshots_offset": (64, ">Q"),
    "incompatible_features": (72, ">Q"), "compatible_features": (80, ">Q"),
    "autoclear_features": (88, ">Q"), "refcount_order": (96, ">I"), "header_length": (100, ">I"),
}


def get(buf, field):
    off, fmt = FIELDS[field]
    return struct.unpack_from(fmt, buf, off)[0]


def put(buf, field, value):
    off, fmt = FIELDS[field]
    struct.pack_into(fmt, buf, off, value)


def u64(buf, off):
    return struct.unpack_from(">Q", buf, off)[0]


def put_u64(buf, off, v):
    struct.pack_into(">Q", buf, off, v)


def header_len(buf):
    return 72 if get(buf, "version") == 2 else get(buf, "header_length")


def extensions(buf):
    """[(type, offset of the extension's 8-byte head, length)]"""
    out = []
    off = header_len(buf)
    cs = 1 << get(buf, "cluster_bits")
    while off + 8 <= cs:
        t, n = struct.unpack_from(">II", buf, off)
        out.append((t, off, n))
        if t == EXT_END:
            break
        off += 8 + (n + 7) // 8 * 8
    return out


def find_ext(buf, etype):
    for t, off, n in extensions(buf):
        if t == etype:
            return off, n
    raise KeyError(hex(etype))


def l1_entries(buf):
    off = get(buf, "l1_table_offset")
    return [u64(buf, off + 8 * i) for i in range(get(buf, "l1_size"))]


def first_l2(buf):
    """(L1 index, L2 table offset) of the first allocated L2 table."""
    for i, e in enumerate(l1_entries(buf)):
        if e & L1E_OFFSET_MASK:
            return i, e & L1E_OFFSET_MASK
    raise ValueError("no L2 table")


def l2_entry_size(buf):
    ext = get(buf, "version") >= 3 and get(buf, "incompatible_features") & (1 << 4)
    return 16 if ext else 8


def find_l2e(buf, pred):
    """Offset in the file of the first L2 entry (in the first L2 table) with pred(entry)."""
    _, l2 = first_l2(buf)
    cs = 1 << get(buf, "cluster_bits")
    esz = l2_entry_size(buf)
    for i in range(cs // esz):
        e = u64(buf, l2 + esz * i)
        if pred(e):
            return l2 + esz * i
    raise ValueError("no matching L2 entry")


def is_data(e):
    return (e & L2E_OFFSET_MASK) != 0 and not e & OFLAG_COMPRESSED


def is_compressed(e):
    return bool(e & OFLAG_COMPRESSED)


# ---- running commands -------------------------------------------------------------

AS_LIMIT = 1 << 30  # qsnap runs under a 1 GiB address-space limit (ulimit -v)


def sanitized():
    """ASan/TSan builds reserve far more address space than the limit: no limit for them."""
    try:
        with open(QSNAP, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return b"__asan_init" in data or b"__tsan_init" in data


USE_LIMIT = not sanitized()


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run(argv, cwd=None):
    """(exit status, stdout, stderr); status 124 on timeout, -1 if not runnable."""
    try:
        p = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=TIMEOUT,
                           stdin=subprocess.DEVNULL,
                           preexec_fn=limited if argv[0] == QSNAP and USE_LIMIT else None)
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        return 124, "", "timeout"
    except OSError as e:
        return -1, "", str(e)


def sh(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"setup command failed: {cmd}: {p.stderr.decode()[:300]}")
    return p.stdout.decode()


def sha_tree(paths):
    out = {}
    for p in paths:
        if os.path.isfile(p) and not os.path.islink(p):
            with open(p, "rb") as f:
                out[p] = hashlib.sha256(f.read()).hexdigest()
        elif os.path.lexists(p):
            st = os.lstat(p)
            out[p] = f"mode {st.st_mode:o} size {st.st_size}"
    return out


def qemu_class(path, outdir, cwd):
    """What qemu-img 7.2 does: ('open'|'read'|'works', message)."""
    rc, _, err = run(["qemu-img", "info", path], cwd=cwd)
    if rc != 0:
        return "open", err.strip().splitlines()[-1:] if err.strip() else ["exit %d" % rc]
    out = os.path.join(outdir, "qemu.raw")
    rc, _, err = run(["qemu-img", "convert", "-O", "raw", path, out], cwd=cwd)
    if rc != 0:
        return "read", err.strip().splitlines()[-1:] if err.strip() else ["exit %d" % rc]
    return "works", []


# ---- the cases ----------------------------------------------------------------------

class Case:
    def __init__(self, name, build, override=None, why="", names=(), msg_has=None, skip_qemu=False):
        self.name = name
        self.build = build        # build(dir) -> path of the image to open
        self.override = override  # our class where we deliberately differ from qemu-img
        self.why = why            # the reason for the difference
        self.names = names        # other file names a message may name
        self.msg_has = msg_has    # a word the error message must contain
        self.skip_qemu = skip_qemu  # qemu-img would block or misbehave: class from override only


CASES = []


def case(name, **kw):
    def deco(fn):
        CASES.append(Case(name, fn, **kw))
        return fn
    return deco


class Bases:
    """qemu-img-made images the cases start from, built once."""

    def __init__(self, d):
        self.d = d
        os.makedirs(d)
        sh("qemu-img create -q -f qcow2 v3.qcow2 4M", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x11 0 70000' -c 'write -P 0x22 1M 8k' "
           "-c 'write -z 2M 64k' v3.qcow2", d)
        sh("qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 4M", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x33 100 70000' v2.qcow2", d)
        sh("qemu-img create -q -f qcow2 -o cluster_size=512 c512.qcow2 1M", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x44 0 40000' v3.qcow2", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x44 0 40000' c512.qcow2", d)
        sh("qemu-img create -q -f raw src.raw 1M", d)
        sh("qemu-io -f raw -c 'write -P 0x55 0 300k' -c 'write -P 0x56 600k 10k' src.raw", d)
        sh("qemu-img convert -c -O qcow2 -o compression_type=zlib src.raw zlib.qcow2", d)
        sh("qemu-img convert -c -O qcow2 -o compression_type=zstd src.raw zstd.qcow2", d)
        sh("qemu-img create -q -f qcow2 -o cluster_size=64k,extended_l2=on extl2.qcow2 4M", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x66 0 5000' -c 'write -z 8k 2k' extl2.qcow2", d)
        sh("qemu-img create -q -f qcow2 snap.qcow2 4M", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x77 0 64k' snap.qcow2", d)
        sh("qemu-img snapshot -c s1 snap.qcow2", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x78 0 4k' snap.qcow2", d)
        sh("qemu-img create -q -f raw base.raw 2M", d)
        sh("qemu-io -f raw -c 'write -P 0x88 0 1M' base.raw", d)
        sh("qemu-img create -q -f qcow2 -b base.raw -F raw over.qcow2 2M", d)
        sh("qemu-io -f qcow2 -c 'write -P 0x99 64k 4k' over.qcow2", d)
        sh("qemu-img create -q -f qcow2 bitmap.qcow2 4M", d)
        sh("qemu-img bitmap --add bitmap.qcow2 b0", d)
        sh("qemu-io -f qcow2 -c 'write -P 0xaa 0 4k' bitmap.qcow2", d)

    def load(self, name):
        with open(os.path.join(self.d, name), "rb") as f:
            return bytearray(f.read())

    def copy(self, name, dest_dir, dest=None):
        dest = os.path.join(dest_dir, dest or name)
        shutil.copyfile(os.path.join(self.d, name), dest)
        return dest


B = None  # Bases, set in main()


def poked(base, fn, fname="img.qcow2"):
    """A case builder: a copy of base with fn(buf) applied."""
    def build(d):
        buf = B.load(base)
        fn(buf)
        p = os.path.join(d, fname)
        with open(p, "wb") as f:
            f.write(buf)
        return p
    return build


def field(base, name, value):
    return poked(base, lambda b: put(b, name, value))


# Header: magic and version
CASES.append(Case("magic-bad-probes-as-raw", poked("v3.qcow2", lambda b: b.__setitem__(slice(0, 4), b"QFI\x00"))))
CASES.append(Case("version-0", field("v3.qcow2", "version", 0), override="open",
                  why="a file with the qcow2 magic is never read as raw (format confusion); qemu-img probes version 0 as raw"))
CASES.append(Case("version-1", field("v3.qcow2", "version", 1)))
CASES.append(Case("version-4", field("v3.qcow2", "version", 4)))
CASES.append(Case("version-huge", field("v3.qcow2", "version", 0xFFFFFFFF)))
# cluster_bits
CASES.append(Case("cluster-bits-0", field("v3.qcow2", "cluster_bits", 0)))
CASES.append(Case("cluster-bits-8", field("v3.qcow2", "cluster_bits", 8)))
CASES.append(Case("cluster-bits-22", field("v3.qcow2", "cluster_bits", 22)))
CASES.append(Case("cluster-bits-63", field("v3.qcow2", "cluster_bits", 63)))
CASES.append(Case("extl2-cluster-bits-13", field("extl2.qcow2", "cluster_bits", 13)))
# L1
CASES.append(Case("l1-size-huge", field("v3.qcow2", "l1_size", 0x7FFFFFFF)))
CASES.append(Case("l1-size-max-u32", field("v3.qcow2", "l1_size", 0xFFFFFFFF)))
CASES.append(Case("l1-size-past-eof", field("v3.qcow2", "l1_size", 0x100000), override="open", why="table offsets out of the file are refused at open; qemu-img reads zeroes past EOF"))
CASES.append(Case("l1-size-too-small-for-disk", poked("v3.qcow2", lambda b: put(b, "size", 1 << 40))))
CASES.append(Case("l1-offset-misaligned", poked("v3.qcow2", lambda b: put(b, "l1_table_offset", get(b, "l1_table_offset") + 8))))
CASES.append(Case("l1-offset-beyond-eof", field("v3.qcow2", "l1_table_offset", 1 << 40), override="open", why="table offsets out of the file are refused at open; qemu-img reads zeroes past EOF"))
CASES.append(Case("l1-offset-zero-overlaps-header", field("v3.qcow2", "l1_table_offset", 0), override="open", why="overlapping header/L1/refcount tables are refused at open"))
CASES.append(Case("l1-at-refcount-table", poked("v3.qcow2", lambda b: put(b, "l1_table_offset", get(b, "refcount_table_offset"))), override="open", why="overlapping header/L1/refcount tables are refused at open"))
CASES.append(Case("l1-offset-huge-wraps", field("v3.qcow2", "l1_table_offset", 0xFFFFFFFFFFFF0000)))
# refcount table
CASES.append(Case("reftable-offset-misaligned", poked("v3.qcow2", lambda b: put(b, "refcount_table_offset", get(b, "refcount_table_offset") + 512))))
CASES.append(Case("reftable-offset-beyond-eof", field("v3.qcow2", "refcount_table_offset", 1 << 40), override="open", why="table offsets out of the file are refused at open; qemu-img reads zeroes past EOF"))
CASES.append(Case("reftable-offset-zero", field("v3.qcow2", "refcount_table_offset", 0), override="open", why="overlapping header/L1/refcount tables are refused at open"))
CASES.append(Case("reftable-at-l1", poked("v3.qcow2", lambda b: put(b, "refcount_table_offset", get(b, "l1_table_offset"))), override="open", why="overlapping header/L1/refcount tables are refused at open"))
CASES.append(Case("reftable-clusters-huge", field("v3.qcow2", "refcount_table_clusters", 0xFFFFFF)))
CASES.append(Case("reftable-clusters-zero", field("v3.qcow2", "refcount_table_clusters", 0)))
CASES.append(Case("refcount-order-7", field("v3.qcow2", "refcount_order", 7)))
CASES.append(Case("refblock-entry-beyond-eof", poked("v3.qcow2", lambda b: put_u64(b, get(b, "refcount_table_offset"), 1 << 40))))
# header_length
CASES.append(Case("header-length-100", field("v3.qcow2", "header_length", 100)))
CASES.append(Case("header-length-108-unaligned", field("v3.qcow2", "header_length", 108)))
CASES.append(Case("header-length-past-cluster", field("v3.qcow2", "header_length", 1 << 20)))
# feature bits
CASES.append(Case("incompat-unknown-bit-no-table", poked("v3.qcow2", lambda b: put(b, "incompatible_features", get(b, "incompatible_features") | (1 << 21)))))


def name_unknown_bit(b):
    # Rename the table's entry for incompatible bit 3 (compression type) into
    # an entry for bit 20 called "frobnicate", and set bit 20.
    off, n = find_ext(b, EXT_FEATURES)
    for i in range(n // 48):
        e = off + 8 + 48 * i
        if b[e] == 0 and b[e + 1] == 3:
            b[e + 1] = 20
            b[e + 2:e + 48] = b"frobnicate".ljust(46, b"\0")
            break
    else:
        raise ValueError("no feature table entry for incompatible bit 3")
    put(b, "incompatible_features", get(b, "incompatible_features") | (1 << 20))


CASES.append(Case("incompat-unknown-bit-named", poked("v3.qcow2", name_unknown_bit), msg_has="frobnicate"))
CASES.append(Case("incompat-data-file-bit", poked("v3.qcow2", lambda b: put(b, "incompatible_features", 1 << 2)),
                  override="open", why="external data files are refused until supported (DESIGN)"))
CASES.append(Case("compat-unknown-bit", field("v3.qcow2", "compatible_features", 1 << 40)))
CASES.append(Case("autoclear-unknown-bit", field("v3.qcow2", "autoclear_features", 1 << 40)))
CASES.append(Case("dirty-bit", field("v3.qcow2", "incompatible_features", 1)))
CASES.append(Case("corrupt-bit", field("v3.qcow2", "incompatible_features", 2)))
CASES.append(Case("compression-type-without-bit", poked("v3.qcow2", lambda b: b.__setitem__(104, 1))))
CASES.append(Case("compression-type-2", poked("zstd.qcow2", lambda b: b.__setitem__(104, 2))))
# encryption
CASES.append(Case("crypt-method-1", field("v3.qcow2", "crypt_method", 1), override="open",
                  why="encryption is refused until supported (DESIGN)"))
CASES.append(Case("crypt-method-2", field("v3.qcow2", "crypt_method", 2), override="open",
                  why="encryption is refused until supported (DESIGN)"))
CASES.append(Case("crypt-method-3", field("v3.qcow2", "crypt_method", 3)))
# virtual size
CASES.append(Case("size-2p63", field("v3.qcow2", "size", 1 << 63)))
CASES.append(Case("size-not-sector-multiple", field("v3.qcow2", "size", 4 * 1024 * 1024 - 1000)))
CASES.append(Case("size-zero", field("v3.qcow2", "size", 0)))
# header extensions


def ext_len_past_cluster(b):
    t, off, n = extensions(b)[0]
    struct.pack_into(">I", b, off + 4, 1 << 20)


def ext_len_to_cluster_end(b):
    t, off, n = extensions(b)[0]
    cs = 1 << get(b, "cluster_bits")
    struct.pack_into(">I", b, off + 4, cs - off - 8 + 1)


def unknown_ext(b):
    # Turn the first extension into an unknown type: it must be skipped.
    t, off, n = extensions(b)[0]
    struct.pack_into(">I", b, off, 0x12345678)


def feature_table_odd_len(b):
    off, n = find_ext(b, EXT_FEATURES)
    struct.pack_into(">I", b, off + 4, n - 5)


CASES.append(Case("ext-length-past-cluster", poked("v3.qcow2", ext_len_past_cluster)))
CASES.append(Case("ext-length-to-cluster-end", poked("v3.qcow2", ext_len_to_cluster_end)))
CASES.append(Case("ext-unknown-type", poked("v3.qcow2", unknown_ext)))
CASES.append(Case("ext-feature-table-odd-length", poked("v3.qcow2", feature_table_odd_len)))


def bitmaps_dir_beyond_eof(b):
    off, n = find_ext(b, EXT_BITMAPS)
    put_u64(b, off + 8 + 16, 1 << 40)


def bitmaps_zero(b):
    off, n = find_ext(b, EXT_BITMAPS)
    struct.pack_into(">I", b, off + 8, 0)


CASES.append(Case("bitmaps-directory-beyond-eof", poked("bitmap.qcow2", bitmaps_dir_beyond_eof)))
CASES.append(Case("bitmaps-count-zero", poked("bitmap.qcow2", bitmaps_zero)))
# snapshots
CASES.append(Case("nb-snapshots-huge", field("snap.qcow2", "nb_snapshots", 0xFFFFFFFF)))
CASES.append(Case("nb-snapshots-70000", field("snap.qcow2", "nb_snapshots", 70000)))
CASES.append(Case("snapshots-offset-beyond-eof", field("snap.qcow2", "snapshots_offset", 1 << 40), override="open", why="table offsets out of the file are refused at open; qemu-img reads zeroes past EOF"))
CASES.append(Case("snapshots-offset-misaligned", poked("snap.qcow2", lambda b: put(b, "snapshots_offset", get(b, "snapshots_offset") + 8))))
# No snapshots, yet a misaligned table offset: qemu refuses the open, and so do we.
CASES.append(Case("snapshots-offset-misaligned-no-snapshots", field("v3.qcow2", "snapshots_offset", 0x10008)))


def snap_table_past_eof_huge(b):
    put(b, "snapshots_offset", 1 << 40)
    put(b, "nb_snapshots", 1000)


CASES.append(Case("snapshot-table-past-eof-count-1000", poked("v3.qcow2", snap_table_past_eof_huge),
                  override="open", why="the snapshot table names the L1 tables of data that the "
                  "refcounts protect; without it a writer could not keep them, so the image is refused "
                  "(qemu opens it and reads the active image)"))
# data-file-raw (autoclear bit 1) without an external data file: qemu refuses it.
CASES.append(Case("data-file-raw-without-data-file", field("v3.qcow2", "autoclear_features", 2),
                  override="open", why="refused at open already, for info too (qemu-img info opens it, "
                  "everything that reads refuses it)"))
def snapshot_names_huge(b):
    # Move the (one-entry) table into the last cluster of the file, then make
    # its id and name 64 KiB each: the table runs past the end of the file.
    cs = 1 << get(b, "cluster_bits")
    old = get(b, "snapshots_offset")
    off = (len(b) - 1) // cs * cs
    b[off:off + 256] = b[old:old + 256]
    put(b, "snapshots_offset", off)
    struct.pack_into(">HH", b, off + 12, 0xFFFF, 0xFFFF)
    assert off + 40 + 2 * 0xFFFF > len(b), "the table must run past EOF for this case"


CASES.append(Case("snapshot-id-length-huge", poked("snap.qcow2", snapshot_names_huge),
                  override="open", why="the snapshot table then runs past the end of the file; qemu-img reads zeroes there"))
CASES.append(Case("snapshot-extra-size-huge", poked("snap.qcow2", lambda b: struct.pack_into(">I", b, get(b, "snapshots_offset") + 36, 0x7FFFFFFF))))
CASES.append(Case("snapshot-l1-beyond-eof", poked("snap.qcow2", lambda b: put_u64(b, get(b, "snapshots_offset"), 1 << 40)), override="open", why="snapshot L1 tables are validated at open like the active one; qemu-img checks them only when a snapshot is used"))
CASES.append(Case("snapshot-l1-size-huge", poked("snap.qcow2", lambda b: struct.pack_into(">I", b, get(b, "snapshots_offset") + 8, 0x7FFFFFFF)), override="open", why="snapshot L1 tables are validated at open like the active one; qemu-img checks them only when a snapshot is used"))
# L1 entries
CASES.append(Case("l1e-unaligned-l2", poked("v3.qcow2", lambda b: put_u64(b, get(b, "l1_table_offset"), l1_entries(b)[0] + 0x200))))
CASES.append(Case("l1e-l2-beyond-eof", poked("v3.qcow2", lambda b: put_u64(b, get(b, "l1_table_offset"), OFLAG_COPIED | (1 << 40)))))
CASES.append(Case("l1e-reserved-bits", poked("v3.qcow2", lambda b: put_u64(b, get(b, "l1_table_offset"), l1_entries(b)[0] | (1 << 60)))))
CASES.append(Case("l1e-l2-is-header", poked("v3.qcow2", lambda b: put_u64(b, get(b, "l1_table_offset"), OFLAG_COPIED))))
CASES.append(Case("l1e-l2-is-l1", poked("v3.qcow2", lambda b: put_u64(b, get(b, "l1_table_offset"), OFLAG_COPIED | get(b, "l1_table_offset")))))
CASES.append(Case("l1e-l2-is-reftable", poked("v3.qcow2", lambda b: put_u64(b, get(b, "l1_table_offset"), OFLAG_COPIED | get(b, "refcount_table_offset")))))
# L2 entries
CASES.append(Case("l2e-beyond-eof", poked("v3.qcow2", lambda b: put_u64(b, find_l2e(b, is_data), OFLAG_COPIED | (1 << 40)))))
CASES.append(Case("l2e-offset-max", poked("v3.qcow2", lambda b: put_u64(b, find_l2e(b, is_data), OFLAG_COPIED | L2E_OFFSET_MASK))))
CASES.append(Case("l2e-unaligned", poked("v3.qcow2", lambda b: put_u64(b, find_l2e(b, is_data), u64(b, find_l2e(b, is_data)) + 0x200))))
CASES.append(Case("l2e-reserved-bits-low", poked("v3.qcow2", lambda b: put_u64(b, find_l2e(b, is_data), u64(b, find_l2e(b, is_data)) | 0x2))))
CASES.append(Case("l2e-reserved-bits-high", poked("v3.qcow2", lambda b: put_u64(b, find_l2e(b, is_data), u64(b, find_l2e(b, is_data)) | (1 << 57)))))
CASES.append(Case("l2e-points-at-header", poked("v3.qcow2", lambda b: put_u64(b, find_l2e(b, is_data), OFLAG_COPIED | 0))))
CASES.append(Case("l2e-points-at-l1", poked("v3.qcow2", lambda b: put_u64(b, find_l2e(b, is_data), OFLAG_COPIED | get(b, "l1_table_offset")))))
CASES.append(Case("v2-l2e-zero-flag", poked("v2.qcow2", lambda b: put_u64(b, find_l2e(b, is_data), u64(b, find_l2e(b, is_data)) | 1))))
CASES.append(Case("c512-l2e-beyond-eof", poked("c512.qcow2", lambda b: put_u64(b, find_l2e(b, is_data), OFLAG_COPIED | (1 << 35)))))
# compressed descriptors


def comp_desc(b, offset=None, nsect=None):
    p = find_l2e(b, is_compressed)
    e = u64(b, p)
    cb = get(b, "cluster_bits")
    x = 62 - (cb - 8)
    off = e & ((1 << x) - 1)
    ns = (e >> x) & ((1 << (cb - 8)) - 1)
    if offset is not None:
        off = offset
    if nsect is not None:
        ns = nsect
    put_u64(b, p, OFLAG_COMPRESSED | (ns << x) | off)


def comp_garbage(b):
    p = find_l2e(b, is_compressed)
    e = u64(b, p)
    x = 62 - (get(b, "cluster_bits") - 8)
    off = e & ((1 << x) - 1)
    b[off:off + 512] = bytes([0xA5]) * 512


CASES.append(Case("compressed-offset-beyond-eof", poked("zlib.qcow2", lambda b: comp_desc(b, offset=1 << 40))))
CASES.append(Case("compressed-offset-near-eof", poked("zlib.qcow2", lambda b: comp_desc(b, offset=len(b) - 100))))
CASES.append(Case("compressed-sectors-max", poked("zlib.qcow2", lambda b: comp_desc(b, nsect=(1 << 8) - 1))))
CASES.append(Case("compressed-offset-in-header", poked("zlib.qcow2", lambda b: comp_desc(b, offset=0))))
CASES.append(Case("compressed-zlib-garbage", poked("zlib.qcow2", comp_garbage)))
CASES.append(Case("compressed-zstd-garbage", poked("zstd.qcow2", comp_garbage)))
CASES.append(Case("compressed-zstd-offset-beyond-eof", poked("zstd.qcow2", lambda b: comp_desc(b, offset=1 << 40))))


def zlib_as_zstd(b):
    put(b, "incompatible_features", get(b, "incompatible_features") | (1 << 3))
    b[104] = 1


CASES.append(Case("compressed-zlib-data-declared-zstd", poked("zlib.qcow2", zlib_as_zstd)))
# extended L2


def extl2_bitmap(b, value, pred=is_data):
    p = find_l2e(b, pred)
    put_u64(b, p + 8, value)


def extl2_unalloc_with_alloc_bits(b):
    _, l2 = first_l2(b)
    cs = 1 << get(b, "cluster_bits")
    for i in range(cs // 16):
        if u64(b, l2 + 16 * i) == 0:
            put_u64(b, l2 + 16 * i + 8, 0x1)
            return
    raise ValueError("no unallocated entry")


CASES.append(Case("extl2-bitmap-both-bits", poked("extl2.qcow2", lambda b: extl2_bitmap(b, (1 << 32) | 1))))
CASES.append(Case("extl2-bitmap-all-both", poked("extl2.qcow2", lambda b: extl2_bitmap(b, 0xFFFFFFFFFFFFFFFF))))
CASES.append(Case("extl2-unallocated-with-alloc-bit", poked("extl2.qcow2", extl2_unalloc_with_alloc_bits)))
CASES.append(Case("extl2-zero-flag-bit0-set", poked("extl2.qcow2", lambda b: put_u64(b, find_l2e(b, is_data), u64(b, find_l2e(b, is_data)) | 1))))


# truncation
def truncated(base, length_fn, fname="img.qcow2"):
    def build(d):
        buf = B.load(base)
        n = length_fn(buf)
        p = os.path.join(d, fname)
        with open(p, "wb") as f:
            f.write(buf[:n])
        return p
    return build


CASES.append(Case("truncated-50-bytes", truncated("v3.qcow2", lambda b: 50)))
CASES.append(Case("truncated-header-only", truncated("v3.qcow2", lambda b: 112), override="open", why="table offsets out of the file are refused at open; qemu-img reads zeroes past EOF"))
CASES.append(Case("truncated-first-cluster", truncated("v3.qcow2", lambda b: 1 << get(b, "cluster_bits")), override="open", why="table offsets out of the file are refused at open; qemu-img reads zeroes past EOF"))
CASES.append(Case("truncated-half-l1", truncated("c512.qcow2", lambda b: get(b, "l1_table_offset") + 4), override="open", why="table offsets out of the file are refused at open; qemu-img reads zeroes past EOF"))
CASES.append(Case("truncated-half-l2", truncated("v3.qcow2", lambda b: first_l2(b)[1] + (1 << get(b, "cluster_bits")) // 2)))
CASES.append(Case("truncated-in-data", truncated("v3.qcow2", lambda b: (u64(b, find_l2e(b, is_data)) & L2E_OFFSET_MASK) + 1000)))
CASES.append(Case("truncated-in-compressed-data", truncated("zlib.qcow2", lambda b: len(b) - 700)))


def empty_file(d):
    p = os.path.join(d, "empty.img")
    open(p, "wb").close()
    return p


CASES.append(Case("empty-file", empty_file))


def directory(d):
    p = os.path.join(d, "dir.qcow2")
    os.mkdir(p)
    return p


CASES.append(Case("directory", directory))


def missing(d):
    return os.path.join(d, "missing.qcow2")


CASES.append(Case("missing-file", missing))


def symlink_loop(d):
    p = os.path.join(d, "loop.qcow2")
    os.symlink("loop.qcow2", p)
    return p


CASES.append(Case("symlink-loop", symlink_loop))


def big_virtual_tiny_file(d):
    sh("qemu-img create -q -f qcow2 big.qcow2 1G", d)
    sh("qemu-io -f qcow2 -c 'write -P 0x12 512M 4k' big.qcow2", d)
    return os.path.join(d, "big.qcow2")


CASES.append(Case("1g-virtual-tiny-file", big_virtual_tiny_file))


def random_raw(d):
    p = os.path.join(d, "random.img")
    with open(p, "wb") as f:
        f.write(hashlib.sha256(b"x").digest() * 2048)
    return p


CASES.append(Case("raw-random-bytes", random_raw))


# backing files
def backing_name(name, fmt="raw", over="over.qcow2"):
    """over.qcow2 (backing base.raw) with its backing name replaced."""
    def fn(b):
        nb = name.encode()
        off = get(b, "backing_file_offset")
        cs = 1 << get(b, "cluster_bits")
        if off + len(nb) > cs:
            off = cs - len(nb)
            put(b, "backing_file_offset", off)
        b[off:off + len(nb)] = nb
        put(b, "backing_file_size", len(nb))
        if fmt is not None:
            eo, n = find_ext(b, EXT_BACKING_FMT)
            fb = fmt.encode()
            assert len(fb) <= (n + 7) // 8 * 8
            b[eo + 8:eo + 8 + len(fb)] = fb
            struct.pack_into(">I", b, eo + 4, len(fb))

    def build(d):
        B.copy("base.raw", d)
        buf = B.load(over)
        fn(buf)
        p = os.path.join(d, "over.qcow2")
        with open(p, "wb") as f:
            f.write(buf)
        return p
    return build


CASES.append(Case("backing-json", backing_name('json:{"file":{"driver":"file","filename":"base.raw"}}'),
                  override="read", why="backing names that are not plain paths are refused (DESIGN)", names=("base.raw",)))
CASES.append(Case("backing-nbd", backing_name("nbd://127.0.0.1:1/x"), names=("nbd",)))
CASES.append(Case("backing-missing", backing_name("nothere.raw"), names=("nothere.raw",)))
CASES.append(Case("backing-absolute-path", lambda d: backing_name(os.path.join(d, "base.raw"))(d), names=("base.raw",)))
CASES.append(Case("backing-format-unknown", backing_name("base.raw", fmt="qcow9"), names=("base.raw",)))
CASES.append(Case("backing-format-qcow2-on-raw", backing_name("base.raw", fmt="qcow2"), names=("base.raw",)))
CASES.append(Case("backing-name-1024", lambda d: long_backing(d, 1024), names=("over.qcow2",)))
CASES.append(Case("backing-name-1023-missing", lambda d: long_backing(d, 1023), names=("x" * 40,)))
CASES.append(Case("backing-offset-beyond-eof", poked("over.qcow2", lambda b: put(b, "backing_file_offset", 1 << 40), "over.qcow2")))
CASES.append(Case("backing-offset-past-cluster", poked("over.qcow2", lambda b: put(b, "backing_file_offset", (1 << get(b, "cluster_bits")) - 2), "over.qcow2")))


def long_backing(d, n):
    B.copy("base.raw", d)
    buf = B.load("over.qcow2")
    off = 65536 - 2048
    put(buf, "backing_file_offset", off)
    put(buf, "backing_file_size", n)
    buf[off:off + n] = (b"x" * n)
    p = os.path.join(d, "over.qcow2")
    with open(p, "wb") as f:
        f.write(buf)
    return p


def backing_no_format(d):
    # The backing-format extension removed: the backing file is probed.
    B.copy("base.raw", d)
    buf = B.load("over.qcow2")
    eo, n = find_ext(buf, EXT_BACKING_FMT)
    struct.pack_into(">I", buf, eo, 0x5a5a5a5a)  # an unknown extension instead
    p = os.path.join(d, "over.qcow2")
    with open(p, "wb") as f:
        f.write(buf)
    return p


CASES.append(Case("backing-format-ext-absent-probe", backing_no_format))


def loop2(d):
    sh("qemu-img create -q -f qcow2 -u -b b.qcow2 -F qcow2 a.qcow2 1M", d)
    sh("qemu-img create -q -f qcow2 -u -b a.qcow2 -F qcow2 b.qcow2 1M", d)
    return os.path.join(d, "a.qcow2")


def loop1(d):
    # qemu-img refuses to create it; make a.qcow2 -> b.qcow2 and rename the link.
    sh("qemu-img create -q -f qcow2 -u -b b.qcow2 -F qcow2 a.qcow2 1M", d)
    p = os.path.join(d, "a.qcow2")
    buf = bytearray(open(p, "rb").read())
    off = get(buf, "backing_file_offset")
    assert buf[off:off + 7] == b"b.qcow2"
    buf[off:off + 7] = b"a.qcow2"
    with open(p, "wb") as f:
        f.write(buf)
    return p


def loop3_via_dirs(d):
    os.makedirs(os.path.join(d, "x/y"))
    sh("qemu-img create -q -f qcow2 -u -b x/b.qcow2 -F qcow2 a.qcow2 1M", d)
    sh("qemu-img create -q -f qcow2 -u -b y/c.qcow2 -F qcow2 x/b.qcow2 1M", d)
    sh("qemu-img create -q -f qcow2 -u -b ../../a.qcow2 -F qcow2 x/y/c.qcow2 1M", d)
    return os.path.join(d, "a.qcow2")


def loop_via_symlink(d):
    # a -> b -> c, and c is a symbolic link to a: the loop shows only once links are resolved.
    sh("qemu-img create -q -f qcow2 -u -b b.qcow2 -F qcow2 a.qcow2 1M", d)
    sh("qemu-img create -q -f qcow2 -u -b c.qcow2 -F qcow2 b.qcow2 1M", d)
    os.symlink("a.qcow2", os.path.join(d, "c.qcow2"))
    return os.path.join(d, "a.qcow2")


CASES.append(Case("backing-loop-self", loop1, names=("a.qcow2",), override="read", skip_qemu=True, why="qemu-img 7.2 convert does not finish on a backing loop (observed: >20 s, killed); info --backing-chain reports the loop"))
CASES.append(Case("backing-loop-two", loop2, names=("a.qcow2", "b.qcow2"), override="read", skip_qemu=True, why="qemu-img 7.2 convert does not finish on a backing loop (observed: >20 s, killed); info --backing-chain reports the loop"))
CASES.append(Case("backing-loop-via-symlink", loop_via_symlink, names=("a.qcow2", "b.qcow2", "c.qcow2"), override="read", skip_qemu=True, why="qemu-img 7.2 convert does not finish on a backing loop (observed: >20 s, killed); info --backing-chain reports the loop"))
CASES.append(Case("backing-loop-three-relative", loop3_via_dirs, names=("a.qcow2", "b.qcow2", "c.qcow2"), override="read", skip_qemu=True, why="qemu-img 7.2 convert does not finish on a backing loop (observed: >20 s, killed); info --backing-chain reports the loop"))


def deep_chain(depth):
    """depth overlays over a raw base, named d0000.qcow2 ... (top = highest number).
    One qemu-img-made template with a fixed-length backing name; the copies
    differ only in that name."""
    def build(d):
        sh("qemu-img create -q -f raw base.raw 1M", d)
        sh("qemu-io -f raw -c 'write -P 0x21 0 4k' base.raw", d)
        sh("qemu-img create -q -f qcow2 -u -b base.raw -F raw d0000.qcow2 1M", d)
        sh("qemu-img create -q -f qcow2 -u -b d0000.qcow2 -F qcow2 tmpl.qcow2 1M", d)
        tmpl = bytearray(open(os.path.join(d, "tmpl.qcow2"), "rb").read())
        off = get(tmpl, "backing_file_offset")
        n = get(tmpl, "backing_file_size")
        assert tmpl[off:off + n] == b"d0000.qcow2"
        for i in range(1, depth):
            tmpl[off:off + n] = b"d%04d.qcow2" % (i - 1)
            with open(os.path.join(d, "d%04d.qcow2" % i), "wb") as f:
                f.write(tmpl)
        os.unlink(os.path.join(d, "tmpl.qcow2"))
        return os.path.join(d, "d%04d.qcow2" % (depth - 1))
    return build


CASES.append(Case("chain-depth-20", deep_chain(20)))
CASES.append(Case("chain-depth-300", deep_chain(300), override="read",
                  why="chains deeper than QCOW2_MAX_CHAIN_DEPTH (256) are refused (DESIGN)",
                  names=("d0299.qcow2", "d0043.qcow2", "d0044.qcow2")))


def fifo_backing(d):
    os.mkfifo(os.path.join(d, "fifo"))
    sh("qemu-img create -q -f qcow2 -u -b fifo -F raw over.qcow2 1M", d)
    return os.path.join(d, "over.qcow2")


CASES.append(Case("backing-fifo", fifo_backing, override="read", skip_qemu=True,
                  why="a FIFO backing file is refused without blocking; qemu-img blocks on it",
                  names=("fifo",)))


def devzero_backing(d):
    sh("qemu-img create -q -f qcow2 -u -b /dev/zero -F raw over.qcow2 1M", d)
    return os.path.join(d, "over.qcow2")


CASES.append(Case("backing-char-device", devzero_backing, override="read",
                  why="a device as backing file is refused", names=("/dev/zero", "zero")))


# ---- the checks ---------------------------------------------------------------------

COMMANDS = [
    ("info", ["image", "info"]),
    ("info-json", ["image", "info", "--output=json"]),
    ("map-json", ["image", "map", "--output=json"]),
    ("convert", ["image", "convert", "-O", "raw"]),
    ("digest", ["image", "digest"]),
]
MUST_FAIL = {"open": {"info", "info-json", "map-json", "convert", "digest"},
             "read": {"convert", "digest"}, "works": set()}


def all_files(d):
    out = []
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            out.append(os.path.join(root, n))
    return sorted(out)


def check_case(c, work, outdir):
    d = os.path.join(work, c.name)
    os.makedirs(d)
    img = c.build(d)
    names = {os.path.basename(img)} | set(c.names)

    if c.skip_qemu:
        qcls, qmsg = None, []
        print(f"# differs from qemu-img: {c.name}: not run under qemu-img; we expect {c.override}: {c.why}")
    else:
        qcls, qmsg = qemu_class(img, outdir, d)
    expect = c.override or qcls
    if c.override and qcls and qcls != c.override:
        print(f"# differs from qemu-img: {c.name}: qemu-img {qcls} ({' '.join(qmsg)[:120]}), we expect {c.override}: {c.why}")
    elif c.override and qcls == c.override:
        print(f"# {c.name}: qemu-img agrees ({qcls}) although a difference was declared")

    before = sha_tree(all_files(d))
    problems = []
    out = os.path.join(outdir, "out.raw")
    results = {}
    for label, argv in COMMANDS:
        if os.path.lexists(out):
            os.unlink(out)
        cmd = [QSNAP] + argv + [img] + ([out] if label == "convert" else [])
        t0 = time.time()
        rc, so, se = run(cmd, cwd=d)
        results[label] = rc
        if VERBOSE:
            print(f"#   {label}: exit {rc} {se.strip()[:200]}")
        if rc == 124:
            problems.append(f"{label}: no answer within {TIMEOUT}s")
            continue
        if rc < 0 or rc >= 128:
            problems.append(f"{label}: crashed (status {rc}): {se.strip()[-200:]}")
            continue
        if any(m in se for m in SANITIZER_MARKS):
            problems.append(f"{label}: sanitizer report: {se.strip()[:200]}")
        if label in MUST_FAIL[expect] and rc == 0:
            problems.append(f"{label}: succeeded, expected failure ({expect})")
        if expect == "works" and rc != 0:
            problems.append(f"{label}: failed, expected to work: {se.strip()[:200]}")
        if rc != 0:
            lines = [line for line in se.splitlines() if line.strip()]
            if len(lines) != 1:
                problems.append(f"{label}: stderr has {len(lines)} lines, want 1: {se.strip()[:200]!r}")
            elif not lines[0].startswith("qsnap: "):
                problems.append(f"{label}: message does not start with 'qsnap: ': {lines[0][:200]!r}")
            elif not any(n in lines[0] for n in names):
                problems.append(f"{label}: message does not name the file ({'/'.join(sorted(names))}): {lines[0][:200]!r}")
            elif c.msg_has and c.msg_has not in lines[0]:
                problems.append(f"{label}: message does not mention {c.msg_has!r}: {lines[0][:200]!r}")
        if label == "convert" and rc == 0 and qcls == "works" and expect == "works":
            qref = os.path.join(outdir, "qemu.raw")
            if not os.path.exists(out) or open(out, "rb").read() != open(qref, "rb").read():
                problems.append("convert: output differs from qemu-img's")
    after = sha_tree(all_files(d))
    if before != after:
        changed = sorted(set(before) ^ set(after) | {k for k in before if before.get(k) != after.get(k)})
        problems.append("files changed: " + ", ".join(os.path.relpath(p, d) for p in changed)[:200])
    return expect, qcls, problems


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
    work = tempfile.mkdtemp(prefix="qsnap-damaged.")
    t0 = time.time()
    passed = failed = 0
    try:
        B = Bases(os.path.join(work, "bases"))
        outdir = os.path.join(work, "out")
        os.makedirs(outdir)
        seen = set()
        for c in CASES:
            assert c.name not in seen, c.name
            seen.add(c.name)
            if ONLY and ONLY not in c.name:
                continue
            try:
                expect, qcls, problems = check_case(c, work, outdir)
            except Exception as e:  # a broken case builder is a failure too
                expect, qcls, problems = "?", "?", [f"case setup: {type(e).__name__}: {e}"]
            if problems:
                failed += 1
                print(f"FAIL {c.name} [{expect}]: " + "; ".join(problems))
            else:
                passed += 1
                print(f"ok {c.name} [{expect}]")
            sys.stdout.flush()
    finally:
        if os.environ.get("KEEP") == "1":
            print(f"# work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"# {len(CASES)} cases, {time.time() - t0:.1f}s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
