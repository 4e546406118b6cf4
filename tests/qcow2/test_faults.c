/*
 * Fault injection and crash simulation for the libqcow2 writer.
 *
 * One write-heavy scenario (allocating writes, COW over a raw backing file,
 * zero writes, discards, compressed writes, a resize, flushes in between,
 * close) runs on a memfs file behind io_fault:
 *
 *  - fail sweep: the N-th I/O call fails (transiently or persistently) for
 *    N = 1, 2, ... until a run completes without reaching N;
 *  - crash sweep: in crash mode, the N-th write-type call fails persistently
 *    and then a power cut (io_fault_crash) applies a seeded random part of
 *    what was written since the last flush.
 *
 * After each run the handle is closed and the image reopened from the bytes
 * that reached the memfs file. It must open; reading the whole guest must
 * work; every byte that a completed qcow2_image_flush acknowledged and that
 * no later call touched must read back as it was; and `qemu-img check` on a
 * dump of the file must find no corruption (leaks are allowed). qemu-img runs
 * on a sample of the points (all of them in small sweeps) to bound runtime;
 * the library-side checks run on every point. Each sweep prints how many
 * points ran and how many were checked by qemu-img.
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
#define IMG "/m/img.qcow2"
#define BASE "/m/base.raw"
#define MAX_SIZE (4 * MiB)

struct fvar {
    const char *name;
    unsigned version;
    uint32_t cluster_size;
    unsigned refcount_bits;
    bool extl2;
    bool lazy;
};

/* The scenario's state and its model. */
struct fctx {
    const struct fvar *v;
    memfs *fs;
    qcow2_io *inner;
    io_fault *f;
    qcow2_image *img;
    uint64_t size;          /* current virtual size (model) */
    uint64_t durable_size;  /* size at the last completed flush */
    uint8_t model[MAX_SIZE];
    uint8_t durable[MAX_SIZE];
    uint8_t dirty[MAX_SIZE]; /* touched by a call since the last completed flush */
    uint8_t buf[MAX_SIZE];
    unsigned ops_done;      /* API calls that returned (scenario steps reached) */
    int fail_rc;            /* first error returned, 0 if none */
    unsigned fail_step;
    char dir[64];
};

static const char *last_msg(void)
{
    const char *m = qcow2_error_last()->message;
    return m ? m : "(no message)";
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static void fill_random(uint64_t seed, uint8_t *p, size_t len)
{
    uint64_t s = seed | 1;
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(rng_next(&s) >> 24);
}

static void fill_pattern(uint8_t *p, size_t len, uint8_t v)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(v + (i / 512) % 3);
}

/* Base image and an empty overlay in a fresh memfs; not faulted. */
static void setup_images(struct fctx *c)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    static uint8_t base[2 * MiB];
    int rc;

    c->fs = memfs_new();
    cr_assert_not_null(c->fs);
    fill_random(7, base, sizeof(base));
    memset(base + 300 * KiB, 0, 64 * KiB);
    cr_assert_eq(memfs_put(c->fs, BASE, base, sizeof(base)), 0);
    co.size = 2 * MiB;
    co.qcow2_version = c->v->version;
    co.cluster_size = c->v->cluster_size;
    co.refcount_bits = c->v->refcount_bits;
    co.extended_l2 = c->v->extl2;
    co.lazy_refcounts = c->v->lazy;
    co.backing_file = "base.raw";
    co.backing_format = "raw";
    co.open_fn = memfs_open;
    co.open_payload = c->fs;
    rc = qcow2_image_create(IMG, &co);
    cr_assert_eq(rc, 0, "create: %s", last_msg());
    c->size = c->durable_size = 2 * MiB;
    memset(c->model, 0, sizeof(c->model));
    memcpy(c->model, base, sizeof(base));
    memcpy(c->durable, c->model, sizeof(c->model));
    memset(c->dirty, 0, sizeof(c->dirty));
    c->ops_done = 0;
    c->fail_rc = 0;
}

static int open_faulted(struct fctx *c)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;

    o.flags = QCOW2_OPEN_RDWR;
    o.open_fn = memfs_open;
    o.open_payload = c->fs;
    cr_assert_eq(memfs_open(&c->inner, IMG, QCOW2_IO_RDWR, c->fs), 0);
    c->f = io_fault_new(c->inner);
    cr_assert_not_null(c->f);
    return qcow2_image_open_io(&c->img, io_fault_io(c->f), IMG, &o);
}

/* ---- the scenario --------------------------------------------------------- */

enum sop { S_WRITE, S_WRITE_RAND, S_ZERO, S_ZERO_UNMAP, S_DISCARD, S_COMP, S_COMP_RAND, S_FLUSH, S_RESIZE };

struct step {
    enum sop op;
    uint64_t off;
    uint64_t len; /* S_RESIZE: the new size */
};

static const struct step scenario[] = {
    {S_WRITE, 0, 64 * KiB},                 /* allocating, aligned */
    {S_WRITE_RAND, 70000, 1000},            /* COW from the backing file */
    {S_FLUSH, 0, 0},
    {S_WRITE_RAND, 200000, 300 * KiB},      /* several clusters, COW at both ends */
    {S_ZERO, 512 * KiB, 128 * KiB},
    {S_ZERO, 700 * KiB + 5, 3000},          /* unaligned zero write */
    {S_FLUSH, 0, 0},
    {S_DISCARD, 640 * KiB, 256 * KiB},
    {S_COMP, 1 * MiB, 128 * KiB},           /* compressible */
    {S_COMP_RAND, 1 * MiB + 128 * KiB, 64 * KiB}, /* incompressible: plain fallback */
    {S_FLUSH, 0, 0},
    {S_WRITE_RAND, 1 * MiB + 1000, 5000},   /* COW out of a compressed cluster */
    {S_ZERO_UNMAP, 0, 64 * KiB},
    {S_RESIZE, 0, 4 * MiB},
    {S_WRITE_RAND, 3 * MiB + 17, 100 * KiB}, /* past the old end */
    {S_FLUSH, 0, 0},
    {S_DISCARD, 1 * MiB, 64 * KiB},         /* frees compressed data */
    {S_WRITE, 2 * MiB - 32 * KiB, 64 * KiB}, /* across the old end */
    {S_WRITE_RAND, 200000, 4096},           /* rewrite in place */
    {S_FLUSH, 0, 0},
    {S_WRITE_RAND, 1536 * KiB, 512 * KiB},  /* a bigger allocating run */
    {S_COMP, 2 * MiB + 512 * KiB, 64 * KiB},
    {S_ZERO_UNMAP, 3 * MiB, 256 * KiB},
    {S_WRITE_RAND, 100, 100},
};
#define NB_STEPS (sizeof(scenario) / sizeof(scenario[0]))

static void mark_dirty(struct fctx *c, uint64_t off, uint64_t len)
{
    if (off >= MAX_SIZE)
        return;
    if (len > MAX_SIZE - off)
        len = MAX_SIZE - off;
    memset(c->dirty + off, 1, len);
}

/* Run one step; returns the API's result. Updates the model on success. */
static int run_step(struct fctx *c, unsigned i)
{
    const struct step *s = &scenario[i];
    uint64_t cs = c->v->cluster_size;
    int rc;

    switch (s->op) {
    case S_WRITE:
    case S_WRITE_RAND:
        if (s->op == S_WRITE)
            fill_pattern(c->buf, s->len, (uint8_t)(0x40 + i));
        else
            fill_random(1000 + i, c->buf, s->len);
        mark_dirty(c, s->off, s->len);
        rc = qcow2_image_write(c->img, c->buf, s->len, s->off);
        if (rc == 0)
            memcpy(c->model + s->off, c->buf, s->len);
        return rc;
    case S_ZERO:
    case S_ZERO_UNMAP:
        mark_dirty(c, s->off, s->len);
        rc = qcow2_image_write_zeroes(c->img, s->off, s->len, s->op == S_ZERO_UNMAP ? QCOW2_ZERO_MAY_UNMAP : 0);
        if (rc == 0)
            memset(c->model + s->off, 0, s->len);
        return rc;
    case S_DISCARD: {
        uint64_t a = (s->off + cs - 1) / cs * cs, b = (s->off + s->len) / cs * cs;
        mark_dirty(c, s->off, s->len);
        rc = qcow2_image_discard(c->img, s->off, s->len);
        if (rc == 0 && b > a && !(c->v->version == 2))
            memset(c->model + a, 0, b - a); /* v3: reads as zero (v2 with backing: kept) */
        return rc;
    }
    case S_COMP:
    case S_COMP_RAND:
        if (s->op == S_COMP)
            fill_pattern(c->buf, s->len, (uint8_t)(0x80 + i));
        else
            fill_random(2000 + i, c->buf, s->len);
        mark_dirty(c, s->off, s->len);
        rc = qcow2_image_write_compressed(c->img, c->buf, s->len, s->off);
        if (rc == 0)
            memcpy(c->model + s->off, c->buf, s->len);
        return rc;
    case S_FLUSH:
        rc = qcow2_image_flush(c->img);
        if (rc == 0) {
            memcpy(c->durable, c->model, MAX_SIZE);
            memset(c->dirty, 0, MAX_SIZE);
            c->durable_size = c->size;
        }
        return rc;
    case S_RESIZE:
        mark_dirty(c, c->size, s->len - c->size);
        rc = qcow2_image_resize(c->img, s->len, false);
        if (rc == 0) {
            memset(c->model + c->size, 0, s->len - c->size);
            c->size = s->len;
        }
        return rc;
    default:
        cr_assert_fail("bad step");
        return -1;
    }
}

/* Run the scenario until the end or the first error; then close. Returns steps run. */
static void run_scenario(struct fctx *c)
{
    for (unsigned i = 0; i < NB_STEPS; i++) {
        int rc = run_step(c, i);
        c->ops_done = i + 1;
        if (rc != 0) {
            cr_assert_lt(rc, 0);
            c->fail_rc = rc;
            c->fail_step = i;
            return;
        }
    }
}

/* ---- verification --------------------------------------------------------- */

struct sweep_stats {
    unsigned points, qemu_checked, completed, open_failed_in_run, leaky;
};

/*
 * Reopen the image from the memfs bytes and check the guarantees. qemu says
 * whether to run qemu-img check on a dump.
 */
static void verify(struct fctx *c, const char *what, uint64_t n, bool qemu, struct sweep_stats *st)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;
    qcow2_io *io;
    uint64_t size;
    int rc;

    o.open_fn = memfs_open;
    o.open_payload = c->fs;
    if (c->v->lazy) {
        /* A dirty lazy-refcounts image gets its refcounts rebuilt by a read-write open (as qemu). */
        o.flags = QCOW2_OPEN_RDWR;
        cr_assert_eq(memfs_open(&io, IMG, QCOW2_IO_RDWR, c->fs), 0);
        rc = qcow2_image_open_io(&img, io, IMG, &o);
        cr_assert_eq(rc, 0, "[%s %s N=%" PRIu64 "] read-write reopen: %d %s", c->v->name, what, n, rc,
                     last_msg());
        qcow2_image_close(img);
        o.flags = 0;
    }
    cr_assert_eq(memfs_open(&io, IMG, 0, c->fs), 0);
    rc = qcow2_image_open_io(&img, io, IMG, &o);
    cr_assert_eq(rc, 0, "[%s %s N=%" PRIu64 "] reopen after fault at step %u (rc %d): %d %s", c->v->name,
                 what, n, c->fail_step, c->fail_rc, rc, last_msg());
    size = qcow2_image_size(img);
    cr_assert(size == c->durable_size || size == c->size || (size == 4 * MiB || size == 2 * MiB),
              "[%s %s N=%" PRIu64 "] size %" PRIu64, c->v->name, what, n, size);
    {
        /* Our own checker on every point: no corruption, no check errors (leaks are fine). */
        qcow2_check_result cr;
        memset(&cr, 0, sizeof(cr));
        rc = qcow2_image_check(img, 0, &cr);
        cr_assert_eq(rc, 0, "[%s %s N=%" PRIu64 "] qcow2_image_check: %d %s", c->v->name, what, n, rc,
                     last_msg());
        cr_assert(cr.corruptions == 0 && cr.check_errors == 0,
                  "[%s %s N=%" PRIu64 "] qcow2_image_check: %" PRIu64 " corruptions, %" PRIu64
                  " check errors (fault at step %u, rc %d)",
                  c->v->name, what, n, cr.corruptions, cr.check_errors, c->fail_step, c->fail_rc);
        st->leaky += cr.leaks > 0;
    }
    rc = qcow2_image_read(img, c->buf, size, 0);
    cr_assert_eq(rc, 0, "[%s %s N=%" PRIu64 "] read: %d %s", c->v->name, what, n, rc, last_msg());
    for (uint64_t i = 0; i < qcow2__min(size, c->durable_size); i++) {
        if (c->dirty[i] || c->buf[i] == c->durable[i])
            continue;
        cr_assert_fail("[%s %s N=%" PRIu64 "] flushed byte at %" PRIu64 " is 0x%02x, want 0x%02x "
                       "(fault at step %u, rc %d)",
                       c->v->name, what, n, i, c->buf[i], c->durable[i], c->fail_step, c->fail_rc);
    }
    qcow2_image_close(img);

    if (qemu) {
        char path[128], out[4096];
        size_t len;
        const uint8_t *bytes = memfs_get(c->fs, IMG, &len);
        snprintf(path, sizeof(path), "%s/img.qcow2", c->dir);
        cr_assert_eq(qo_write_file(path, bytes, len), 0);
        snprintf(path, sizeof(path), "%s/base.raw", c->dir);
        if (st->qemu_checked == 0)
            cr_assert_eq(qo_dump_memfs(c->fs, BASE, path), 0);
        snprintf(path, sizeof(path), "%s/img.qcow2", c->dir);
        rc = qo_check(path, out, sizeof(out));
        cr_assert(rc == 0 || rc == 3, "[%s %s N=%" PRIu64 "] qemu-img check exit %d (fault at step %u, rc %d):\n%s",
                  c->v->name, what, n, rc, c->fail_step, c->fail_rc, out);
        st->qemu_checked++;
    }
    st->points++;
}

static void teardown_run(struct fctx *c)
{
    qcow2_image_close(c->img);
    c->img = NULL;
    io_fault_free(c->f);
    c->f = NULL;
    qcow2_io_close(c->inner);
    c->inner = NULL;
}

/* How many I/O calls in mask a clean run makes (from open to close). */
static uint64_t clean_run_calls(struct fctx *c, unsigned mask)
{
    uint64_t total = 0;

    setup_images(c);
    cr_assert_eq(open_faulted(c), 0, "clean open: %s", last_msg());
    run_scenario(c);
    cr_assert_eq(c->fail_rc, 0, "[%s] clean run failed at step %u: %s", c->v->name, c->fail_step, last_msg());
    qcow2_image_close(c->img);
    c->img = NULL;
    for (unsigned m = 0; m < IO_FAULT_NB_METHODS; m++)
        if (mask & (1u << m))
            total += io_fault_count(c->f, (enum io_fault_method)m);
    io_fault_free(c->f);
    c->f = NULL;
    qcow2_io_close(c->inner);
    c->inner = NULL;
    /* The clean run's image is right too, and close made everything durable. */
    memcpy(c->durable, c->model, MAX_SIZE);
    memset(c->dirty, 0, MAX_SIZE);
    c->durable_size = c->size;
    {
        struct sweep_stats st = {0};
        verify(c, "clean", 0, true, &st);
    }
    memfs_free(c->fs);
    c->fs = NULL;
    return total;
}

/* Pick about `budget` points of [1, total] for qemu-img: all when few, evenly spread otherwise. */
static bool qemu_point(uint64_t n, uint64_t total, unsigned budget)
{
    uint64_t stride = total / budget + 1;
    return n % stride == 0 || n == total;
}

static struct fctx *new_ctx(const struct fvar *v)
{
    struct fctx *c = calloc(1, sizeof(*c));

    cr_assert_not_null(c);
    c->v = v;
    cr_assert_eq(qo_mkdtemp(c->dir, sizeof(c->dir), "faults"), 0);
    return c;
}

static void free_ctx(struct fctx *c)
{
    qo_rmtree(c->dir);
    free(c);
}

/* Fail the N-th call in mask for every N until a run completes without reaching it. */
static void fail_sweep(const struct fvar *v, unsigned mask, bool persistent, const char *what)
{
    struct fctx *c;
    struct sweep_stats st = {0};
    uint64_t total, n;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    c = new_ctx(v);
    total = clean_run_calls(c, mask);
    cr_assert_gt(total, 10);
    for (n = 1;; n++) {
        bool fired;
        setup_images(c);
        cr_assert_eq(memfs_open(&c->inner, IMG, QCOW2_IO_RDWR, c->fs), 0);
        c->f = io_fault_new(c->inner);
        io_fault_fail(c->f, mask, n, EIO, persistent);
        {
            qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
            int rc;
            o.flags = QCOW2_OPEN_RDWR;
            o.open_fn = memfs_open;
            o.open_payload = c->fs;
            rc = qcow2_image_open_io(&c->img, io_fault_io(c->f), IMG, &o);
            if (rc != 0) {
                cr_assert(io_fault_fired(c->f), "[%s %s N=%" PRIu64 "] open failed without a fault: %s",
                          v->name, what, n, last_msg());
                c->img = NULL;
                c->fail_rc = rc;
                c->fail_step = 0;
                st.open_failed_in_run++;
            } else {
                run_scenario(c);
            }
        }
        fired = io_fault_fired(c->f);
        if (c->fail_rc != 0)
            cr_assert(fired, "[%s %s N=%" PRIu64 "] step %u failed (%d: %s) but no fault fired", v->name,
                      what, n, c->fail_step, c->fail_rc, last_msg());
        qcow2_image_close(c->img); /* may flush more, or fail quietly */
        c->img = NULL;
        fired = fired || io_fault_fired(c->f);
        teardown_run(c);
        verify(c, what, n, qemu_point(n, total, 40), &st);
        memfs_free(c->fs);
        c->fs = NULL;
        if (!fired)
            break;
        if (n > total + 50)
            cr_assert_fail("[%s %s] fault still firing at N=%" PRIu64 " > %" PRIu64 " calls", v->name, what,
                           n, total);
    }
    cr_log_info("[%s %s] %u points (N=1..%" PRIu64 ", clean run %" PRIu64 " calls), %u checked by qemu-img, "
                "%u failed during open",
                v->name, what, st.points, n, total, st.qemu_checked, st.open_failed_in_run);
    fprintf(stderr, "faults: [%s %s] %u points, %u qemu-img checks, %u with leaks\n", v->name, what,
            st.points, st.qemu_checked, st.leaky);
    free_ctx(c);
}

/*
 * Crash sweep: crash mode on; the N-th write-type call fails persistently (the
 * power goes out there); the handle is closed (its remaining writes fail)
 * and io_fault_crash(seed) applies a random part of the unflushed writes.
 * Runs several seeds per point; N covers the whole range with a stride.
 */
static void crash_sweep(const struct fvar *v, unsigned seeds, unsigned max_points)
{
    struct fctx *c;
    struct sweep_stats st = {0};
    uint64_t total, stride;
    unsigned runs = 0;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    c = new_ctx(v);
    total = clean_run_calls(c, IO_FAULT_WRITES);
    stride = total / max_points + 1;
    for (uint64_t n = 1, point = 0; n <= total + 1; n += (n == total ? 1 : stride), point++) {
        if (n > total && n != total + 1)
            n = total + 1;
        for (unsigned seed = 1; seed <= seeds; seed++) {
            setup_images(c);
            cr_assert_eq(open_faulted(c), 0, "open: %s", last_msg());
            cr_assert_eq(io_fault_crash_mode(c->f, true), 0);
            /* n == total + 1: no failure; the power goes out right after the last step, before close. */
            io_fault_fail(c->f, IO_FAULT_WRITES, n <= total ? n : 0, EIO, true);
            run_scenario(c);
            cr_assert_eq(io_fault_crash(c->f, n * 1000 + seed), 0);
            teardown_run(c);
            verify(c, "crash", n * 1000 + seed, seed == 1 && qemu_point(point, total / stride + 1, 40), &st);
            memfs_free(c->fs);
            c->fs = NULL;
            runs++;
        }
        if (n > total)
            break;
    }
    cr_log_info("[%s crash] %u runs over %" PRIu64 " write calls (stride %" PRIu64 ", %u seeds), %u checked by qemu-img",
                v->name, runs, total, stride, seeds, st.qemu_checked);
    fprintf(stderr, "faults: [%s crash] %u runs, %" PRIu64 " write calls, stride %" PRIu64
            ", %u qemu-img checks, %u with leaks\n", v->name, runs, total, stride, st.qemu_checked, st.leaky);
    free_ctx(c);
}

static const struct fvar v3_64k = {"v3-64k", 3, 65536, 16, false, false};
static const struct fvar v2_64k = {"v2-64k", 2, 65536, 16, false, false};
static const struct fvar v3_512_rb64 = {"v3-512-rb64", 3, 512, 64, false, false};
static const struct fvar v3_extl2 = {"v3-32k-extl2", 3, 32768, 16, true, false};
static const struct fvar v3_lazy = {"v3-64k-lazy", 3, 65536, 16, false, true};

Test(faults, v3_transient_all, .timeout = 300) { fail_sweep(&v3_64k, IO_FAULT_ALL, false, "transient"); }
Test(faults, v3_persistent_all, .timeout = 300) { fail_sweep(&v3_64k, IO_FAULT_ALL, true, "persistent"); }
Test(faults, v2_persistent_writes, .timeout = 300) { fail_sweep(&v2_64k, IO_FAULT_WRITES, true, "persistent-writes"); }
Test(faults, v3_512_rb64_persistent_writes, .timeout = 300) { fail_sweep(&v3_512_rb64, IO_FAULT_WRITES, true, "persistent-writes"); }
Test(faults, extl2_transient_all, .timeout = 300) { fail_sweep(&v3_extl2, IO_FAULT_ALL, false, "transient"); }
Test(faults, lazy_persistent_writes, .timeout = 300) { fail_sweep(&v3_lazy, IO_FAULT_WRITES, true, "persistent-writes"); }

Test(faults, v3_crash, .timeout = 300) { crash_sweep(&v3_64k, 8, 120); }
Test(faults, v2_crash, .timeout = 300) { crash_sweep(&v2_64k, 4, 80); }
Test(faults, v3_512_rb64_crash, .timeout = 300) { crash_sweep(&v3_512_rb64, 4, 80); }
Test(faults, extl2_crash, .timeout = 300) { crash_sweep(&v3_extl2, 4, 80); }
Test(faults, lazy_crash, .timeout = 300) { crash_sweep(&v3_lazy, 6, 80); }

/*
 * A backing name long enough that the header passes its first sector. A
 * rewrite then takes two writes (the bytes past the first sector, then the
 * first sector) and a power cut can land between them: the old first sector
 * must still find every byte it refers to (its name, its extensions). Four
 * unsafe rebases between 600-byte names, the power cut after each write
 * call with several seeds (writes dropped, kept or torn per sector): the
 * reopened image names the old backing file or the new one, never a mix.
 */
static void long_name(char *buf, size_t len, char c)
{
    memset(buf, c, len - 1);
    memcpy(buf, "dir/", 4);
    buf[len - 1] = '\0';
}

Test(faults, long_backing_name_rewrite_survives_a_crash, .timeout = 300)
{
    static char names[5][601];
    const char *fill = "abcde";
    unsigned runs = 0;

    for (unsigned i = 0; i < 5; i++)
        long_name(names[i], sizeof(names[i]), fill[i]);
    names[3][600 - 1 - 100] = '\0'; /* a shorter one: the old name outlasts the new */
    for (unsigned r = 1; r < 5; r++) {
        for (uint64_t n = 1;; n++) {
            bool done = false;
            for (unsigned seed = 1; seed <= 6 && !done; seed++) {
                qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
                qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
                qcow2_image *img;
                qcow2_io *inner;
                io_fault *f;
                memfs *fs = memfs_new();
                const char *got;
                int rc;

                cr_assert_not_null(fs);
                co.size = 1 * MiB;
                co.backing_file = names[0];
                co.backing_format = "raw";
                co.open_fn = memfs_open;
                co.open_payload = fs;
                cr_assert_eq(qcow2_image_create(IMG, &co), 0, "create: %s", last_msg());
                o.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_NO_BACKING;
                o.open_fn = memfs_open;
                o.open_payload = fs;
                /* Rebases before r run without faults. */
                cr_assert_eq(memfs_open(&inner, IMG, QCOW2_IO_RDWR, fs), 0);
                f = io_fault_new(inner);
                cr_assert_eq(qcow2_image_open_io(&img, io_fault_io(f), IMG, &o), 0, "%s",
                             last_msg());
                for (unsigned k = 1; k < r; k++)
                    cr_assert_eq(qcow2_image_rebase(img, names[k], "raw", true, NULL, NULL), 0,
                                 "%s", last_msg());
                cr_assert_eq(io_fault_crash_mode(f, true), 0);
                io_fault_fail(f, IO_FAULT_WRITES, n, EIO, true);
                rc = qcow2_image_rebase(img, names[r], "raw", true, NULL, NULL);
                if (!rc)
                    rc = qcow2_image_flush(img);
                done = !io_fault_fired(f);
                cr_assert_eq(io_fault_crash(f, n * 100 + seed), 0);
                qcow2_image_close(img);
                io_fault_free(f);
                qcow2_io_close(inner);
                /* Reopen what reached the file. */
                rc = qcow2_image_open(&img, IMG, &o);
                cr_assert_eq(rc, 0, "rebase %u, cut after write %" PRIu64 " (seed %u): %s", r,
                             n, seed, last_msg());
                got = img->backing_name;
                cr_assert(got && (!strcmp(got, names[r - 1]) || !strcmp(got, names[r])),
                          "rebase %u, cut after write %" PRIu64 " (seed %u): backing name is "
                          "'%.40s...' (%zu bytes), neither the old one nor the new",
                          r, n, seed, got ? got : "(none)", got ? strlen(got) : 0);
                if (done)
                    cr_assert_str_eq(got, names[r], "rebase %u completed", r);
                qcow2_image_close(img);
                memfs_free(fs);
                runs++;
            }
            if (done)
                break;
        }
    }
    cr_log_info("long backing names: %u crash runs", runs);
}
