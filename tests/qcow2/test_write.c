/*
 * The libqcow2 writer against a model and against qemu-img.
 *
 * Differential suite (write_diff): thousands of random write / write_zeroes
 * (with and without MAY_UNMAP) / discard / write_compressed calls, unaligned
 * and cluster-crossing, some of MiBs, go through libqcow2 and into a plain
 * byte array that models the disk. After every batch the whole guest content
 * must equal the model; at the end the image (flushed and closed) must pass
 * `qemu-img check` with no errors and no leaks, `qemu-img compare` against a
 * raw dump of the model must say identical, and a reopened handle must read
 * the model back. One test per point of the option matrix, each with a fixed
 * seed (printed on failure).
 *
 * Unit suite (write_unit): create's layout against qemu-img create; resize
 * grow across L1 growth and shrink; refcount structure growth; COW over a
 * backing file; extended L2 subcluster COW; compressed-write fallback; unknown
 * autoclear bits and unknown header extensions/fields on rewrite.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "memfs.h"
#include "qcow2_int.h"
#include "qemu_oracle.h"

#define KiB 1024ull
#define MiB (1024ull * 1024ull)

/* ---- small utilities ------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64* */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static uint64_t rng_below(uint64_t *s, uint64_t n)
{
    return n ? rng_next(s) % n : 0;
}

static void fill_random(uint64_t *s, uint8_t *p, size_t len)
{
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = rng_next(s);
        memcpy(p + i, &v, 8);
    }
    for (; i < len; i++)
        p[i] = (uint8_t)rng_next(s);
}

/* Data of varied compressibility: random, a repeated short pattern, zeroes, or a mix. */
static void fill_data(uint64_t *s, uint8_t *p, size_t len)
{
    unsigned kind = (unsigned)rng_below(s, 100);

    if (kind < 40) {
        fill_random(s, p, len);
    } else if (kind < 70) {
        uint8_t pat[16];
        size_t plen = 1 + rng_below(s, sizeof(pat));
        fill_random(s, pat, plen);
        for (size_t i = 0; i < len; i++)
            p[i] = pat[i % plen];
    } else if (kind < 85) {
        memset(p, 0, len);
    } else {
        fill_random(s, p, len / 2);
        memset(p + len / 2, (int)(rng_next(s) & 0xff), len - len / 2);
    }
}

static uint64_t align_down(uint64_t v, uint64_t a)
{
    return v / a * a;
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

/* Read the whole guest and compare with model; returns the first differing offset or UINT64_MAX. */
static uint64_t first_mismatch(qcow2_image *img, const uint8_t *model, uint64_t size, int *rc_out)
{
    static uint8_t buf[1 << 20];

    *rc_out = 0;
    for (uint64_t off = 0; off < size; off += sizeof(buf)) {
        size_t n = (size_t)qcow2__min(sizeof(buf), size - off);
        int rc = qcow2_image_read(img, buf, n, off);
        if (rc != 0) {
            *rc_out = rc;
            return off;
        }
        if (memcmp(buf, model + off, n) != 0) {
            for (size_t i = 0; i < n; i++)
                if (buf[i] != model[off + i])
                    return off + i;
        }
    }
    return UINT64_MAX;
}

static const char *last_msg(void)
{
    const char *m = qcow2_error_last()->message;
    return m ? m : "(no message)";
}

/* ---- the differential test ------------------------------------------------ */

struct wcfg {
    const char *name;
    unsigned version;
    uint32_t cluster_size;
    unsigned refcount_bits;
    bool extl2;
    unsigned ctype; /* 0 zlib, 1 zstd */
    bool lazy;
    bool backing;   /* over a raw backing file full of data */
    uint64_t size;  /* virtual size */
    unsigned nops;
    bool posix;     /* real files in a temp dir instead of memfs */
    uint64_t seed;
};

enum { OP_WRITE, OP_ZERO, OP_ZERO_UNMAP, OP_DISCARD, OP_COMPRESSED, NB_OPKINDS };
static const char *const op_names[] = {"write", "write -z", "write -z -u", "discard", "write -c"};

/* A random guest range: small, cluster-aligned, medium or large (MiBs). */
static void gen_range(uint64_t *s, const struct wcfg *c, uint64_t gran, uint64_t *off, uint64_t *len)
{
    uint64_t cs = c->cluster_size, size = c->size, l;
    unsigned kind = (unsigned)rng_below(s, 100);

    if (kind < 40) {
        l = 1 + rng_below(s, qcow2__min(3 * cs, 64 * KiB));
    } else if (kind < 65) {
        uint64_t kmax = qcow2__max(1, qcow2__min(8, 4 * MiB / gran));
        l = (1 + rng_below(s, kmax)) * gran;
    } else if (kind < 90) {
        l = 1 + rng_below(s, qcow2__min(16 * cs, 1 * MiB));
    } else {
        l = 1 + rng_below(s, 4 * MiB);
    }
    if (l > size)
        l = size;
    *off = rng_below(s, size - l + 1);
    if (kind >= 40 && kind < 65)
        *off = align_down(*off, gran);
    *len = l;
}

/* What a discard of [off, off+len) does to the model, per the documented semantics. */
static void model_discard(const struct wcfg *c, uint8_t *model, uint64_t off, uint64_t len)
{
    uint64_t cs = c->cluster_size;
    uint64_t a = align_up(off, cs), b = align_down(off + len, cs);

    if (c->version == 2 && c->backing)
        return; /* v2 with a backing file: qemu refuses, so the library keeps the data */
    if (b > a)
        memset(model + a, 0, b - a); /* v3: zero; v2 without backing: unallocated = zero */
}

struct wctx {
    const struct wcfg *c;
    char dir[64];
    char img_path[128];   /* where the image lives (memfs or real) */
    char base_path[128];
    memfs *fs;
    uint8_t *model;
    uint8_t *base;
    uint8_t *buf;
    size_t buf_len;
};

static void open_rw(struct wctx *w, qcow2_image **img, unsigned extra_flags)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    int rc;

    o.flags = QCOW2_OPEN_RDWR | extra_flags;
    if (w->fs) {
        qcow2_io *io;
        o.open_fn = memfs_open;
        o.open_payload = w->fs;
        cr_assert_eq(memfs_open(&io, w->img_path, QCOW2_IO_RDWR, w->fs), 0);
        rc = qcow2_image_open_io(img, io, w->img_path, &o);
    } else {
        rc = qcow2_image_open(img, w->img_path, &o);
    }
    cr_assert_eq(rc, 0, "[%s seed %" PRIu64 "] open: %d %s", w->c->name, w->c->seed, rc, last_msg());
}

static void diff_setup(struct wctx *w, const struct wcfg *c)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    uint64_t s = c->seed ^ 0xba5eull;
    int rc;

    memset(w, 0, sizeof(*w));
    w->c = c;
    cr_assert_eq(qo_mkdtemp(w->dir, sizeof(w->dir), "wdiff"), 0);
    w->model = calloc(1, c->size);
    w->buf_len = 4 * MiB + 2 * c->cluster_size;
    w->buf = malloc(w->buf_len);
    cr_assert(w->model && w->buf);
    if (c->posix) {
        snprintf(w->img_path, sizeof(w->img_path), "%s/img.qcow2", w->dir);
        snprintf(w->base_path, sizeof(w->base_path), "%s/base.raw", w->dir);
    } else {
        w->fs = memfs_new();
        cr_assert_not_null(w->fs);
        snprintf(w->img_path, sizeof(w->img_path), "/m/img.qcow2");
        snprintf(w->base_path, sizeof(w->base_path), "/m/base.raw");
        co.open_fn = memfs_open;
        co.open_payload = w->fs;
    }
    if (c->backing) {
        /* The backing file: data everywhere, with a few holes, and shorter than the overlay
         * when the size allows it (the tail reads as zero). */
        uint64_t blen = c->size - (c->size > 4 * c->cluster_size ? c->cluster_size + 777 : 0);
        w->base = calloc(1, blen);
        cr_assert_not_null(w->base);
        fill_random(&s, w->base, blen);
        for (uint64_t off = 0; off + 3 * c->cluster_size < blen; off += 7 * c->cluster_size + 4096)
            memset(w->base + off, 0, c->cluster_size);
        memcpy(w->model, w->base, blen);
        if (c->posix)
            cr_assert_eq(qo_write_file(w->base_path, w->base, blen), 0);
        else
            cr_assert_eq(memfs_put(w->fs, w->base_path, w->base, blen), 0);
        co.backing_file = "base.raw";
        co.backing_format = "raw";
    }
    co.size = c->size;
    co.qcow2_version = c->version;
    co.cluster_size = c->cluster_size;
    co.refcount_bits = c->refcount_bits;
    co.extended_l2 = c->extl2;
    co.compression_type = c->ctype;
    co.lazy_refcounts = c->lazy;
    rc = qcow2_image_create(w->img_path, &co);
    cr_assert_eq(rc, 0, "[%s] create: %d %s", c->name, rc, last_msg());
}

static void diff_teardown(struct wctx *w)
{
    free(w->model);
    free(w->base);
    free(w->buf);
    if (w->fs)
        memfs_free(w->fs);
    qo_rmtree(w->dir);
}

static void run_diff(const struct wcfg *c)
{
    struct wctx w;
    qcow2_image *img;
    uint64_t s = c->seed;
    uint64_t gran = c->extl2 ? c->cluster_size / 32 : c->cluster_size;
    uint64_t counts[NB_OPKINDS] = {0};
    char out[8192], real_img[160], real_model[160];
    uint64_t bad;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    diff_setup(&w, c);
    open_rw(&w, &img, 0);

    for (unsigned i = 0; i < c->nops; i++) {
        unsigned kind = (unsigned)rng_below(&s, 100);
        unsigned op = kind < 45 ? OP_WRITE
                      : kind < 55 ? OP_ZERO
                      : kind < 63 ? OP_ZERO_UNMAP
                      : kind < 80 ? OP_DISCARD
                                  : OP_COMPRESSED;
        uint64_t off, len;

        gen_range(&s, c, gran, &off, &len);
        switch (op) {
        case OP_WRITE:
            fill_data(&s, w.buf, len);
            rc = qcow2_image_write(img, w.buf, len, off);
            if (rc == 0)
                memcpy(w.model + off, w.buf, len);
            break;
        case OP_ZERO:
        case OP_ZERO_UNMAP:
            rc = qcow2_image_write_zeroes(img, off, len, op == OP_ZERO_UNMAP ? QCOW2_ZERO_MAY_UNMAP : 0);
            if (rc == 0)
                memset(w.model + off, 0, len);
            break;
        case OP_DISCARD:
            rc = qcow2_image_discard(img, off, len);
            if (rc == 0)
                model_discard(c, w.model, off, len);
            break;
        case OP_COMPRESSED:
        default: {
            uint64_t cs = c->cluster_size;
            uint64_t n = 1 + rng_below(&s, cs >= 2 * MiB ? 2 : 4);
            off = align_down(off, cs);
            len = qcow2__min(n * cs, c->size - off);
            fill_data(&s, w.buf, len);
            rc = qcow2_image_write_compressed(img, w.buf, len, off);
            if (rc == 0)
                memcpy(w.model + off, w.buf, len);
            break;
        }
        }
        cr_assert_eq(rc, 0, "[%s seed %" PRIu64 "] op %u: %s off %" PRIu64 " len %" PRIu64 ": %d %s",
                     c->name, c->seed, i, op_names[op], off, len, rc, last_msg());
        counts[op]++;
        if (rng_below(&s, 100) < 3)
            cr_assert_eq(qcow2_image_flush(img), 0, "[%s seed %" PRIu64 "] flush: %s", c->name, c->seed,
                         last_msg());
        if ((i + 1) % 200 == 0 || i + 1 == c->nops) {
            bad = first_mismatch(img, w.model, c->size, &rc);
            cr_assert_eq(rc, 0, "[%s seed %" PRIu64 "] read after op %u at %" PRIu64 ": %d %s", c->name,
                         c->seed, i, bad, rc, last_msg());
            cr_assert_eq(bad, UINT64_MAX,
                         "[%s seed %" PRIu64 "] content differs from the model at %" PRIu64
                         " after op %u (last: %s off %" PRIu64 " len %" PRIu64 ")",
                         c->name, c->seed, bad, i, op_names[op], off, len);
        }
    }
    for (unsigned k = 0; k < NB_OPKINDS; k++)
        cr_assert_gt(counts[k], 0, "[%s] no %s op ran", c->name, op_names[k]);
    cr_assert_eq(qcow2_image_flush(img), 0, "[%s] final flush: %s", c->name, last_msg());
    qcow2_image_close(img);

    /* qemu-img's view of the closed image. */
    if (w.fs) {
        snprintf(real_img, sizeof(real_img), "%s/img.qcow2", w.dir);
        cr_assert_eq(qo_dump_memfs(w.fs, w.img_path, real_img), 0);
        if (c->backing) {
            char real_base[160];
            snprintf(real_base, sizeof(real_base), "%s/base.raw", w.dir);
            cr_assert_eq(qo_dump_memfs(w.fs, w.base_path, real_base), 0);
        }
    } else {
        snprintf(real_img, sizeof(real_img), "%s", w.img_path);
    }
    snprintf(real_model, sizeof(real_model), "%s/model.raw", w.dir);
    cr_assert_eq(qo_write_file(real_model, w.model, c->size), 0);
    rc = qo_check(real_img, out, sizeof(out));
    cr_assert_eq(rc, 0, "[%s seed %" PRIu64 "] qemu-img check exit %d:\n%s", c->name, c->seed, rc, out);
    rc = qo_sh(out, sizeof(out), "qemu-img compare -f qcow2 -F raw '%s' '%s'", real_img, real_model);
    cr_assert_eq(rc, 0, "[%s seed %" PRIu64 "] qemu-img compare exit %d:\n%s", c->name, c->seed, rc, out);

    /* And ours, after a reopen. */
    open_rw(&w, &img, 0);
    cr_assert_eq(qcow2_image_size(img), c->size);
    bad = first_mismatch(img, w.model, c->size, &rc);
    cr_assert_eq(rc, 0, "[%s] reread: %d %s", c->name, rc, last_msg());
    cr_assert_eq(bad, UINT64_MAX, "[%s seed %" PRIu64 "] reopened content differs at %" PRIu64, c->name,
                 c->seed, bad);
    qcow2_image_close(img);
    diff_teardown(&w);
}

/*
 * The matrix. Op counts and sizes are scaled by cluster size so that the
 * whole binary stays well under 90 s on 2 cores.
 */
#define DIFF(id, ...)                                                                              \
    Test(write_diff, id, .timeout = 300)                                                          \
    {                                                                                              \
        static const struct wcfg c = {#id, __VA_ARGS__};                                          \
        run_diff(&c);                                                                              \
    }

/*         ver cs        rb  extl2 ctype lazy   backing size              nops  posix  seed */
DIFF(v2_512_rb16_nobacking,  2, 512,        16, false, 0, false, false, 4 * MiB + 1536, 8000, false, 101)
DIFF(v2_512_rb16_backing,    2, 512,        16, false, 0, false, true,  4 * MiB,        8000, false, 102)
DIFF(v2_4k_rb16_backing,     2, 4096,       16, false, 0, false, true,  16 * MiB,       8000, false, 103)
DIFF(v2_64k_rb16_nobacking,  2, 65536,      16, false, 0, false, false, 48 * MiB + 4096, 4000, true, 104)
DIFF(v2_64k_rb16_backing,    2, 65536,      16, false, 0, false, true,  48 * MiB,       4000, false, 105)
DIFF(v2_2m_rb16_backing,     2, 2 * 1024 * 1024, 16, false, 0, false, true, 64 * MiB,   700, false, 106)
DIFF(v3_512_rb1_backing,     3, 512,        1,  false, 0, false, true,  4 * MiB,        8000, false, 201)
DIFF(v3_512_rb64_nobacking,  3, 512,        64, false, 1, false, false, 4 * MiB,        8000, false, 202)
DIFF(v3_4k_rb16_zstd_backing, 3, 4096,      16, false, 1, false, true,  16 * MiB,       8000, false, 203)
DIFF(v3_4k_rb64_lazy,        3, 4096,       64, false, 0, true,  false, 16 * MiB + 512, 8000, false, 204)
DIFF(v3_64k_rb16_zlib_backing, 3, 65536,    16, false, 0, false, true,  48 * MiB,       4000, true, 205)
DIFF(v3_64k_rb1_zstd,        3, 65536,      1,  false, 1, false, false, 48 * MiB,       4000, false, 206)
DIFF(v3_64k_rb64_lazy_backing, 3, 65536,    64, false, 1, true,  true,  48 * MiB,       4000, false, 207)
DIFF(v3_16k_extl2_rb64_backing, 3, 16384,   64, true,  0, true,  true,  24 * MiB,       5000, false, 208)
DIFF(v3_64k_extl2_zstd_backing, 3, 65536,   16, true,  1, false, true,  48 * MiB,       4000, false, 209)
DIFF(v3_64k_extl2_rb1,       3, 65536,      1,  true,  0, false, false, 48 * MiB + 2048, 4000, false, 210)
DIFF(v3_2m_rb16_zstd_backing, 3, 2 * 1024 * 1024, 16, false, 1, false, true, 64 * MiB,  700, false, 211)
DIFF(v3_2m_extl2_rb1_lazy,   3, 2 * 1024 * 1024, 1, true,  0, true,  false, 64 * MiB,   700, false, 212)
