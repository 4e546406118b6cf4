/*
 * qcow2/vmstate.c: the vm-state area (qcow2_vmstate_offset/_read/_write).
 *
 * Behaviour on in-memory images (memfs): where the area starts, bytes
 * written at any offset and length read back (never written ones as
 * zeroes), guest data untouched, the L1 grown past one cluster with the old
 * table freed (no leaks), the fall-through to the backing file, internal
 * snapshots sharing the area, and the refusals (raw, read-only, past the
 * L1 cap, offsets out of reach).
 *
 * Error paths: one scenario of guest and vm-state writes (the L1 grows
 * twice, the second time past its first cluster) under io_fault: the N-th
 * call fails (transient over every method; persistent over the writes),
 * and a crash sweep (the N-th write fails for good, then a power cut keeps
 * a seeded random part of the unflushed writes). After each run the image
 * reopens, our checker finds no corruption, every flushed byte (guest and
 * vm state) that no later call touched reads back, and qemu-img check on a
 * sample of the points finds no corruption (leaks allowed).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io_fault.h"
#include "memfs.h"
#include "qcow2_int.h"
#include "qemu_oracle.h"

#define KiB 1024ull
#define MiB (1024ull * 1024ull)
#define GiB (1024ull * MiB)
#define IMG "/m/img.qcow2"
#define BASE "/m/base.qcow2"

static const char *last_msg(void)
{
    const char *m = qcow2_error_last()->message;
    return m ? m : "(no message)";
}

static void fill(uint8_t *p, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull | 1;

    for (size_t i = 0; i < len; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        p[i] = (uint8_t)((x * 0x2545F4914F6CDD1Dull) >> 56);
    }
}

static bool all_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return false;
    return true;
}

/* A qcow2 image at path in fs (created fresh), opened read-write. */
static qcow2_image *make(memfs *fs, const char *path, uint64_t size, uint32_t cluster_size,
                         const char *backing)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;

    co.size = size;
    co.cluster_size = cluster_size;
    co.backing_file = backing;
    co.backing_format = backing ? "qcow2" : NULL;
    co.open_fn = memfs_open;
    co.open_payload = fs;
    cr_assert_eq(qcow2_image_create(path, &co), 0, "create: %s", last_msg());
    o.flags = QCOW2_OPEN_RDWR;
    o.open_fn = memfs_open;
    o.open_payload = fs;
    cr_assert_eq(qcow2_image_open(&img, path, &o), 0, "open: %s", last_msg());
    return img;
}

static qcow2_image *reopen(memfs *fs, const char *path, unsigned flags)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;

    o.flags = flags;
    o.open_fn = memfs_open;
    o.open_payload = fs;
    cr_assert_eq(qcow2_image_open(&img, path, &o), 0, "reopen: %s", last_msg());
    return img;
}

static void assert_clean(qcow2_image *img)
{
    qcow2_check_result cr;

    memset(&cr, 0, sizeof(cr));
    cr_assert_eq(qcow2_image_check(img, 0, &cr), 0, "check: %s", last_msg());
    cr_assert(cr.corruptions == 0 && cr.leaks == 0 && cr.check_errors == 0,
              "check: %" PRIu64 " corruptions, %" PRIu64 " leaks", cr.corruptions, cr.leaks);
}

TestSuite(vmstate);

Test(vmstate, area_starts_after_the_l1_entries_of_the_size)
{
    static const struct {
        uint64_t size;
        uint32_t cs;
        uint64_t want;
    } t[] = {
        {1 * MiB, 65536, 512 * MiB},        {512 * MiB, 65536, 512 * MiB},
        {512 * MiB + 512, 65536, 1 * GiB},  {1025 * MiB, 65536, 1536 * MiB},
        {1 * MiB, 4096, 2 * MiB},           {1 * MiB, 512, 1 * MiB},
        {100 * KiB, 512, 128 * KiB},        {1 * MiB, 2 * MiB, 512 * GiB},
    };
    memfs *fs = memfs_new();

    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        qcow2_image *img = make(fs, IMG, t[i].size, t[i].cs, NULL);
        cr_assert_eq(qcow2_vmstate_offset(img), t[i].want, "size %" PRIu64 " cluster %u: %" PRIu64,
                     t[i].size, t[i].cs, qcow2_vmstate_offset(img));
        qcow2_image_close(img);
        cr_assert_eq(memfs_remove(fs, IMG), 0);
    }
    memfs_free(fs);
}

Test(vmstate, bytes_read_back_and_guest_data_stays)
{
    static uint8_t guest[1 * MiB], got[1 * MiB], vm[300 * KiB], back[300 * KiB];
    memfs *fs = memfs_new();
    qcow2_image *img = make(fs, IMG, 1 * MiB, 65536, NULL);

    fill(guest, sizeof(guest), 1);
    cr_assert_eq(qcow2_image_write(img, guest, sizeof(guest), 0), 0);
    cr_assert_eq(qcow2_vmstate_read(img, back, sizeof(back), 12345), 0, "%s", last_msg());
    cr_assert(all_zero(back, sizeof(back)), "never written: zeroes");
    /* Unaligned both ends, over several clusters; then a rewrite inside one. */
    fill(vm, sizeof(vm), 2);
    cr_assert_eq(qcow2_vmstate_write(img, vm, sizeof(vm), 7), 0, "%s", last_msg());
    fill(vm + 70000, 100, 3);
    cr_assert_eq(qcow2_vmstate_write(img, vm + 70000, 100, 70007), 0, "%s", last_msg());
    cr_assert_eq(qcow2_vmstate_write(img, vm, 0, 5 * GiB), 0); /* empty: nothing */
    cr_assert_eq(qcow2_image_flush(img), 0);
    qcow2_image_close(img);

    img = reopen(fs, IMG, 0);
    cr_assert_eq(qcow2_vmstate_read(img, back, sizeof(back), 7), 0, "%s", last_msg());
    cr_assert_arr_eq(back, vm, sizeof(vm));
    cr_assert_eq(qcow2_vmstate_read(img, back, 7, 0), 0);
    cr_assert(all_zero(back, 7), "bytes before the first written one stay zero");
    cr_assert_eq(qcow2_vmstate_read(img, back, 4096, 7 + sizeof(vm)), 0);
    cr_assert(all_zero(back, 4096), "bytes after the last written one stay zero");
    cr_assert_eq(qcow2_vmstate_read(img, back, 4096, 5 * GiB), 0);
    cr_assert(all_zero(back, 4096), "past the L1: zeroes");
    cr_assert_eq(qcow2_image_read(img, got, sizeof(got), 0), 0);
    cr_assert_arr_eq(got, guest, sizeof(guest), "guest data unchanged");
    assert_clean(img);
    qcow2_image_close(img);
    memfs_free(fs);
}

Test(vmstate, l1_grows_past_its_cluster_and_the_old_table_is_freed)
{
    uint8_t buf[4096], back[4096];
    memfs *fs = memfs_new();
    /* 4 KiB clusters: 512 L1 entries a cluster, each covering 2 MiB. */
    qcow2_image *img = make(fs, IMG, 1 * MiB, 4096, NULL);
    uint64_t old_off = img->hdr.l1_off, need = (qcow2_vmstate_offset(img) + 3 * GiB) / (2 * MiB) + 1;

    cr_assert_eq(img->hdr.l1_size, 1);
    fill(buf, sizeof(buf), 4);
    cr_assert_eq(qcow2_vmstate_write(img, buf, sizeof(buf), 3 * GiB), 0, "%s", last_msg());
    cr_assert_eq(qcow2_image_flush(img), 0);
    cr_assert_geq(img->hdr.l1_size, need);
    cr_assert_neq(img->hdr.l1_off, old_off, "the table moved");
    qcow2_image_close(img);

    img = reopen(fs, IMG, 0);
    cr_assert_geq(img->hdr.l1_size, need, "the header's l1_size covers the area");
    cr_assert_eq(qcow2_vmstate_read(img, back, sizeof(back), 3 * GiB), 0);
    cr_assert_arr_eq(back, buf, sizeof(buf));
    cr_assert_eq(qcow2_image_size(img), 1 * MiB, "the virtual size is unchanged");
    assert_clean(img); /* the old L1 cluster was freed: no leak */
    qcow2_image_close(img);
    memfs_free(fs);
}

Test(vmstate, reads_fall_through_to_the_backing_file)
{
    static uint8_t data[128 * KiB], back[128 * KiB];
    memfs *fs = memfs_new();
    qcow2_image *base = make(fs, BASE, 1 * GiB, 65536, NULL), *top;

    fill(data, sizeof(data), 5);
    cr_assert_eq(qcow2_image_write(base, data, sizeof(data), 512 * MiB), 0);
    cr_assert_eq(qcow2_vmstate_write(base, data, 4096, 0), 0); /* its own area: never seen */
    qcow2_image_close(base);
    top = make(fs, IMG, 1 * MiB, 65536, "base.qcow2");
    cr_assert_eq(qcow2_vmstate_read(top, back, sizeof(back), 0), 0, "%s", last_msg());
    cr_assert_arr_eq(back, data, sizeof(data), "the base's guest data at the same guest offset");
    /* A partial write copies the rest of its cluster from below. */
    memset(back, 0x11, 512);
    cr_assert_eq(qcow2_vmstate_write(top, back, 512, 4096), 0, "%s", last_msg());
    memcpy(data + 4096, back, 512);
    cr_assert_eq(qcow2_vmstate_read(top, back, sizeof(back), 0), 0);
    cr_assert_arr_eq(back, data, sizeof(data));
    /* Past the base's virtual size: zeroes (its own vm state included). */
    cr_assert_eq(qcow2_vmstate_read(top, back, 4096, 512 * MiB), 0);
    cr_assert(all_zero(back, 4096));
    assert_clean(top);
    qcow2_image_close(top);
    memfs_free(fs);
}

Test(vmstate, internal_snapshots_share_the_area)
{
    uint8_t a[8192], b[8192], back[8192];
    qcow2_snapshot_info si;
    memfs *fs = memfs_new();
    qcow2_image *img = make(fs, IMG, 1 * MiB, 65536, NULL);

    fill(a, sizeof(a), 6);
    fill(b, sizeof(b), 7);
    cr_assert_eq(qcow2_vmstate_write(img, a, sizeof(a), 0), 0);
    cr_assert_eq(qcow2_snapshot_create(img, "s1", NULL), 0, "%s", last_msg());
    cr_assert_eq(qcow2_snapshot_get(img, 0, &si), 0);
    cr_assert_eq(si.vm_state_size, 0, "a disk snapshot records no vm state (as qemu-img)");
    cr_assert_eq(qcow2_vmstate_write(img, b, sizeof(b), 0), 0);
    cr_assert_eq(qcow2_vmstate_read(img, back, sizeof(back), 0), 0);
    cr_assert_arr_eq(back, b, sizeof(b));
    assert_clean(img);
    cr_assert_eq(qcow2_snapshot_apply(img, "s1"), 0, "%s", last_msg());
    cr_assert_eq(qcow2_vmstate_read(img, back, sizeof(back), 0), 0);
    cr_assert_arr_eq(back, a, sizeof(a), "the snapshot's area comes back");
    cr_assert_eq(qcow2_snapshot_delete(img, "s1"), 0);
    assert_clean(img);
    qcow2_image_close(img);
    memfs_free(fs);
}

Test(vmstate, refusals)
{
    uint8_t buf[512] = {0};
    memfs *fs = memfs_new();
    qcow2_image *img = make(fs, IMG, 1 * MiB, 512, NULL), *ro, *raw;
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    uint64_t end = (QCOW2_MAX_L1_BYTES / 8) * 512 / 8 * 512; /* what the largest L1 maps */

    /* 512-byte clusters: the largest L1 maps 128 GiB of guest offsets. */
    cr_assert_eq(end, 128 * GiB);
    cr_assert_eq(qcow2_vmstate_write(img, buf, 512, end - qcow2_vmstate_offset(img)), QCOW2_EINVAL);
    cr_assert_eq(qcow2_vmstate_read(img, buf, 512, 200 * GiB), 0, "reads past the cap: zeroes");
    cr_assert_eq(qcow2_vmstate_read(img, buf, 512, UINT64_MAX - 100), QCOW2_EINVAL);
    cr_assert_eq(qcow2_vmstate_read(img, buf, 512, (uint64_t)INT64_MAX), QCOW2_EINVAL);
    cr_assert_eq(qcow2_vmstate_write(img, NULL, 1, 0), QCOW2_EINVAL);
    cr_assert_eq(qcow2_vmstate_read(img, NULL, 1, 0), QCOW2_EINVAL);
    cr_assert_eq(qcow2_vmstate_write(img, buf, 512, end - qcow2_vmstate_offset(img) - 512), 0,
                 "the last mappable sector: %s", last_msg());
    assert_clean(img);
    qcow2_image_close(img);

    ro = reopen(fs, IMG, 0);
    cr_assert_eq(qcow2_vmstate_write(ro, buf, 512, 0), QCOW2_EREADONLY);
    qcow2_image_close(ro);

    cr_assert_eq(memfs_put(fs, "/m/disk.raw", buf, sizeof(buf)), 0);
    o.flags = QCOW2_OPEN_RDWR;
    o.format = QCOW2_FORMAT_RAW;
    o.open_fn = memfs_open;
    o.open_payload = fs;
    cr_assert_eq(qcow2_image_open(&raw, "/m/disk.raw", &o), 0, "%s", last_msg());
    cr_assert_eq(qcow2_vmstate_offset(raw), 0);
    cr_assert_eq(qcow2_vmstate_read(raw, buf, 512, 0), QCOW2_EUNSUPPORTED);
    cr_assert_eq(qcow2_vmstate_write(raw, buf, 512, 0), QCOW2_EUNSUPPORTED);
    qcow2_image_close(raw);
    memfs_free(fs);
}

/* ---- error paths ------------------------------------------------------------ */

enum vop { V_GUEST, V_VM, V_FLUSH };

static const struct vstep {
    enum vop op;
    uint64_t off; /* guest offset, or position in the area */
    uint64_t len;
} vsteps[] = {
    {V_GUEST, 0, 64 * KiB},      {V_FLUSH, 0, 0},
    {V_VM, 7, 10000},            /* the first L1 growth, partial clusters */
    {V_VM, 3 * GiB, 9000},       /* past the L1's first cluster */
    {V_FLUSH, 0, 0},
    {V_VM, 5000, 300},           /* rewrite inside a cluster */
    {V_GUEST, 100 * KiB, 8 * KiB},
    {V_FLUSH, 0, 0},
    {V_VM, 6 * GiB + 100, 5000}, /* grows again */
    {V_VM, 0, 4096},
};
#define NB_VSTEPS (sizeof(vsteps) / sizeof(vsteps[0]))
#define VSIZE (1 * MiB)
/* The vm-state ranges the scenario touches, modelled at these slots. */
#define VSLOTS 3
static const uint64_t vslot_base[VSLOTS] = {0, 3 * GiB, 6 * GiB};
#define VSLOT_LEN (64 * KiB)

struct vctx {
    memfs *fs;
    qcow2_io *inner;
    io_fault *f;
    qcow2_image *img;
    uint8_t guest[VSIZE], guest_durable[VSIZE], guest_dirty[VSIZE];
    uint8_t vm[VSLOTS][VSLOT_LEN], vm_durable[VSLOTS][VSLOT_LEN], vm_dirty[VSLOTS][VSLOT_LEN];
    uint8_t buf[VSLOT_LEN];
    int fail_rc;
    unsigned fail_step;
    char dir[64];
};

/* The model's bytes for area position pos (a slot and an index in it). */
static unsigned vslot(uint64_t pos, uint64_t *idx)
{
    for (unsigned s = 0; s < VSLOTS; s++) {
        if (pos >= vslot_base[s] && pos - vslot_base[s] < VSLOT_LEN) {
            *idx = pos - vslot_base[s];
            return s;
        }
    }
    cr_assert_fail("position %" PRIu64 " outside the model", pos);
    return 0;
}

static void vsetup(struct vctx *c)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;

    c->fs = memfs_new();
    co.size = VSIZE;
    co.cluster_size = 4096;
    co.open_fn = memfs_open;
    co.open_payload = c->fs;
    cr_assert_eq(qcow2_image_create(IMG, &co), 0);
    memset(c->guest, 0, sizeof(c->guest));
    memset(c->vm, 0, sizeof(c->vm));
    memcpy(c->guest_durable, c->guest, sizeof(c->guest));
    memcpy(c->vm_durable, c->vm, sizeof(c->vm));
    memset(c->guest_dirty, 0, sizeof(c->guest_dirty));
    memset(c->vm_dirty, 0, sizeof(c->vm_dirty));
    c->fail_rc = 0;
    cr_assert_eq(memfs_open(&c->inner, IMG, QCOW2_IO_RDWR, c->fs), 0);
    c->f = io_fault_new(c->inner);
    cr_assert_not_null(c->f);
}

static int vopen(struct vctx *c)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;

    o.flags = QCOW2_OPEN_RDWR;
    o.open_fn = memfs_open;
    o.open_payload = c->fs;
    return qcow2_image_open_io(&c->img, io_fault_io(c->f), IMG, &o);
}

static int vstep(struct vctx *c, unsigned i)
{
    const struct vstep *s = &vsteps[i];
    uint64_t idx;
    unsigned slot;
    int rc;

    switch (s->op) {
    case V_GUEST:
        fill(c->buf, (size_t)s->len, 100 + i);
        memset(c->guest_dirty + s->off, 1, (size_t)s->len);
        rc = qcow2_image_write(c->img, c->buf, (size_t)s->len, s->off);
        if (!rc)
            memcpy(c->guest + s->off, c->buf, (size_t)s->len);
        return rc;
    case V_VM:
        slot = vslot(s->off, &idx);
        fill(c->buf, (size_t)s->len, 200 + i);
        memset(c->vm_dirty[slot] + idx, 1, (size_t)s->len);
        rc = qcow2_vmstate_write(c->img, c->buf, (size_t)s->len, s->off);
        if (!rc)
            memcpy(c->vm[slot] + idx, c->buf, (size_t)s->len);
        return rc;
    case V_FLUSH:
        rc = qcow2_image_flush(c->img);
        if (!rc) {
            memcpy(c->guest_durable, c->guest, sizeof(c->guest));
            memcpy(c->vm_durable, c->vm, sizeof(c->vm));
            memset(c->guest_dirty, 0, sizeof(c->guest_dirty));
            memset(c->vm_dirty, 0, sizeof(c->vm_dirty));
        }
        return rc;
    }
    return -1;
}

static void vrun(struct vctx *c)
{
    for (unsigned i = 0; i < NB_VSTEPS; i++) {
        int rc = vstep(c, i);
        if (rc) {
            c->fail_rc = rc;
            c->fail_step = i;
            return;
        }
    }
}

/* Reopen from the memfs bytes and check what must hold; qemu: also qemu-img check. */
static void vverify(struct vctx *c, const char *what, uint64_t n, bool qemu)
{
    static uint8_t got[VSIZE];
    qcow2_check_result cr;
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;
    qcow2_io *io;
    int rc;

    o.open_fn = memfs_open;
    o.open_payload = c->fs;
    cr_assert_eq(memfs_open(&io, IMG, 0, c->fs), 0);
    rc = qcow2_image_open_io(&img, io, IMG, &o);
    cr_assert_eq(rc, 0, "[%s N=%" PRIu64 "] reopen (fault at step %u, rc %d): %s", what, n,
                 c->fail_step, c->fail_rc, last_msg());
    memset(&cr, 0, sizeof(cr));
    cr_assert_eq(qcow2_image_check(img, 0, &cr), 0, "[%s N=%" PRIu64 "] check: %s", what, n, last_msg());
    cr_assert(cr.corruptions == 0 && cr.check_errors == 0,
              "[%s N=%" PRIu64 "] %" PRIu64 " corruptions (fault at step %u, rc %d)", what, n,
              cr.corruptions, c->fail_step, c->fail_rc);
    cr_assert_eq(qcow2_image_read(img, got, VSIZE, 0), 0);
    for (uint64_t i = 0; i < VSIZE; i++)
        cr_assert(c->guest_dirty[i] || got[i] == c->guest_durable[i],
                  "[%s N=%" PRIu64 "] flushed guest byte %" PRIu64 " lost", what, n, i);
    for (unsigned s = 0; s < VSLOTS; s++) {
        cr_assert_eq(qcow2_vmstate_read(img, got, VSLOT_LEN, vslot_base[s]), 0, "[%s N=%" PRIu64 "] %s",
                     what, n, last_msg());
        for (uint64_t i = 0; i < VSLOT_LEN; i++)
            cr_assert(c->vm_dirty[s][i] || got[i] == c->vm_durable[s][i],
                      "[%s N=%" PRIu64 "] flushed vm-state byte %" PRIu64 " lost (fault at step %u)",
                      what, n, vslot_base[s] + i, c->fail_step);
    }
    qcow2_image_close(img);
    if (qemu) {
        char path[128], out[4096];
        size_t len;
        const uint8_t *bytes = memfs_get(c->fs, IMG, &len);

        snprintf(path, sizeof(path), "%s/img.qcow2", c->dir);
        cr_assert_eq(qo_write_file(path, bytes, len), 0);
        rc = qo_check(path, out, sizeof(out));
        cr_assert(rc == 0 || rc == 3, "[%s N=%" PRIu64 "] qemu-img check exit %d:\n%s", what, n, rc, out);
    }
}

/* Close the run's handle and backends; the memfs bytes stay for vverify(). */
static void vclose(struct vctx *c)
{
    qcow2_image_close(c->img);
    c->img = NULL;
    io_fault_free(c->f);
    c->f = NULL;
    qcow2_io_close(c->inner);
    c->inner = NULL;
}

static void vteardown(struct vctx *c)
{
    vclose(c);
    memfs_free(c->fs);
    c->fs = NULL;
}

/* Calls in mask a clean run makes, open to close. */
static uint64_t vclean_calls(struct vctx *c, unsigned mask)
{
    uint64_t total = 0;

    vsetup(c);
    cr_assert_eq(vopen(c), 0);
    vrun(c);
    cr_assert_eq(c->fail_rc, 0, "clean run failed at step %u: %s", c->fail_step, last_msg());
    qcow2_image_close(c->img); /* the counters stay readable until vteardown() */
    c->img = NULL;
    for (unsigned m = 0; m < IO_FAULT_NB_METHODS; m++)
        if (mask & (1u << m))
            total += io_fault_count(c->f, (enum io_fault_method)m);
    memcpy(c->guest_durable, c->guest, sizeof(c->guest));
    memcpy(c->vm_durable, c->vm, sizeof(c->vm));
    memset(c->guest_dirty, 0, sizeof(c->guest_dirty));
    memset(c->vm_dirty, 0, sizeof(c->vm_dirty));
    vverify(c, "clean", 0, true);
    vteardown(c);
    return total;
}

static void vfail_sweep(unsigned mask, bool persistent, const char *what)
{
    struct vctx *c = calloc(1, sizeof(*c));
    uint64_t total, n, stride;
    unsigned checked = 0;

    cr_assert_not_null(c);
    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(qo_mkdtemp(c->dir, sizeof(c->dir), "vmstate"), 0);
    total = vclean_calls(c, mask);
    cr_assert_gt(total, 10);
    stride = total / 30 + 1;
    for (n = 1; n <= total + 1; n++) {
        bool fired;

        vsetup(c);
        io_fault_fail(c->f, mask, n, EIO, persistent);
        if (vopen(c) == 0) {
            vrun(c);
        } else {
            c->img = NULL;
            c->fail_step = 0;
        }
        fired = io_fault_fired(c->f);
        cr_assert(c->fail_rc == 0 || fired, "[%s N=%" PRIu64 "] step %u failed without a fault: %s", what,
                  n, c->fail_step, last_msg());
        if (c->fail_rc)
            cr_assert(c->fail_rc == QCOW2_EIO || c->fail_rc == QCOW2_EFATAL,
                      "[%s N=%" PRIu64 "] step %u: rc %d", what, n, c->fail_step, c->fail_rc);
        vclose(c);
        vverify(c, what, n, n % stride == 0);
        checked += n % stride == 0;
        vteardown(c);
    }
    fprintf(stderr, "vmstate: [%s] %" PRIu64 " points, %u qemu-img checks\n", what, n - 1, checked);
    qo_rmtree(c->dir);
    free(c);
}

Test(vmstate, io_errors_transient_any_call, .timeout = 300)
{
    vfail_sweep(IO_FAULT_ALL, false, "transient");
}

Test(vmstate, io_errors_persistent_writes, .timeout = 300)
{
    vfail_sweep(IO_FAULT_WRITES, true, "persistent-writes");
}

Test(vmstate, power_cut_at_any_write, .timeout = 300)
{
    struct vctx *c = calloc(1, sizeof(*c));
    uint64_t total;
    unsigned runs = 0;

    cr_assert_not_null(c);
    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(qo_mkdtemp(c->dir, sizeof(c->dir), "vmstate"), 0);
    total = vclean_calls(c, IO_FAULT_WRITES);
    for (uint64_t n = 1; n <= total + 1; n++) {
        for (uint64_t seed = 1; seed <= 4; seed++) {
            vsetup(c);
            cr_assert_eq(vopen(c), 0);
            cr_assert_eq(io_fault_crash_mode(c->f, true), 0);
            io_fault_fail(c->f, IO_FAULT_WRITES, n <= total ? n : 0, EIO, true);
            vrun(c);
            cr_assert_eq(io_fault_crash(c->f, n * 100 + seed), 0);
            vclose(c);
            vverify(c, "crash", n * 100 + seed, seed == 1 && n % 8 == 0);
            vteardown(c);
            runs++;
        }
    }
    fprintf(stderr, "vmstate: [crash] %u runs over %" PRIu64 " write calls\n", runs, total);
    qo_rmtree(c->dir);
    free(c);
}
