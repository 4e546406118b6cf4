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
        if ((i + 1) % 1000 == 0) {
            /* Our own checker on the live handle, after a flush: clean, no leaks. */
            qcow2_check_result cr;
            memset(&cr, 0, sizeof(cr));
            cr_assert_eq(qcow2_image_flush(img), 0, "[%s] flush: %s", c->name, last_msg());
            rc = qcow2_image_check(img, 0, &cr);
            cr_assert_eq(rc, 0, "[%s seed %" PRIu64 "] qcow2_image_check: %d %s", c->name, c->seed, rc,
                         last_msg());
            cr_assert(cr.corruptions == 0 && cr.leaks == 0 && cr.check_errors == 0,
                      "[%s seed %" PRIu64 "] after op %u: qcow2_image_check: %" PRIu64 " corruptions, %" PRIu64
                      " leaks, %" PRIu64 " check errors",
                      c->name, c->seed, i, cr.corruptions, cr.leaks, cr.check_errors);
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

/* ---- deterministic unit tests --------------------------------------------- */

static char udir[64];

static void unit_setup(void)
{
    cr_assert_eq(qo_mkdtemp(udir, sizeof(udir), "wunit"), 0);
}

static void unit_teardown(void)
{
    qo_rmtree(udir);
}

TestSuite(write_unit, .init = unit_setup, .fini = unit_teardown, .timeout = 120);

/* The header fields create decides, read straight from the file. */
struct hview {
    uint32_t version, cluster_bits, l1_size, rt_clusters, nb_snapshots, refcount_order, header_len;
    uint32_t backing_len;
    uint64_t backing_off, size, l1_off, rt_off, snap_off, incompat, compat, autoclear;
    uint8_t compression_type;
    size_t file_len;
    uint8_t raw[4096];
};

static void read_header(const char *p, struct hview *h)
{
    size_t len;
    uint8_t *b = qo_read_file(p, &len);

    cr_assert_not_null(b, "read %s", p);
    cr_assert_geq(len, 512);
    memset(h, 0, sizeof(*h));
    memcpy(h->raw, b, qcow2__min(len, sizeof(h->raw)));
    h->file_len = len;
    h->version = qcow2__be32(b + 4);
    h->backing_off = qcow2__be64(b + 8);
    h->backing_len = qcow2__be32(b + 16);
    h->cluster_bits = qcow2__be32(b + 20);
    h->size = qcow2__be64(b + 24);
    h->l1_size = qcow2__be32(b + 36);
    h->l1_off = qcow2__be64(b + 40);
    h->rt_off = qcow2__be64(b + 48);
    h->rt_clusters = qcow2__be32(b + 56);
    h->nb_snapshots = qcow2__be32(b + 60);
    h->snap_off = qcow2__be64(b + 64);
    if (h->version >= 3) {
        h->incompat = qcow2__be64(b + 72);
        h->compat = qcow2__be64(b + 80);
        h->autoclear = qcow2__be64(b + 88);
        h->refcount_order = qcow2__be32(b + 96);
        h->header_len = qcow2__be32(b + 100);
        if (h->header_len > 104)
            h->compression_type = b[104];
    } else {
        h->refcount_order = 4;
        h->header_len = 72;
    }
    free(b);
}

/* `qemu-img info --output=json` keys that describe the format, as one canonical JSON line. */
static void info_format_keys(const char *p, char *out, size_t out_len)
{
    int rc = qo_sh(out, out_len,
                   "qemu-img info --output=json '%s' | python3 -c 'import json,sys; d=json.load(sys.stdin); "
                   "print(json.dumps({k: d.get(k) for k in (\"format\", \"virtual-size\", \"cluster-size\", "
                   "\"format-specific\", \"backing-filename\", \"backing-filename-format\", \"dirty-flag\")}, "
                   "sort_keys=True))'",
                   p);
    cr_assert_eq(rc, 0, "qemu-img info %s: %s", p, out);
}

struct ccase {
    const char *qemu_opts;
    unsigned version;
    uint32_t cs;
    unsigned rb;
    bool extl2, lazy;
    unsigned ctype;
    uint64_t size;
    bool backing;
};

Test(write_unit, create_layout_matches_qemu_img)
{
    static const struct ccase cases[] = {
        {"compat=0.10,cluster_size=65536", 2, 65536, 16, false, false, 0, 64 * MiB, false},
        {"compat=1.1,cluster_size=65536", 3, 65536, 16, false, false, 0, 1 * 1024 * MiB, false},
        {"compat=1.1,cluster_size=512,refcount_bits=64", 3, 512, 64, false, false, 0, 8 * MiB, false},
        {"compat=1.1,cluster_size=2097152,refcount_bits=1", 3, 2 * MiB, 1, false, false, 0, 10 * 1024 * MiB, false},
        {"compat=1.1,cluster_size=65536,extended_l2=on,compression_type=zstd,lazy_refcounts=on", 3, 65536, 16,
         true, true, 1, 100 * MiB + 512, false},
        {"compat=1.1,cluster_size=4096,refcount_bits=8", 3, 4096, 8, false, false, 0, 1000 * 1000 * 512ull, false},
        {"compat=1.1,cluster_size=16384,extended_l2=on", 3, 16384, 16, true, false, 0, 3 * MiB, true},
        {"compat=0.10,cluster_size=4096", 2, 4096, 16, false, false, 0, 5 * MiB, true},
    };
    char out[8192];

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    {
        char base[160];
        snprintf(base, sizeof(base), "%s/base.raw", udir);
        cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img create -q -f raw '%s' 3M", base), 0, "%s", out);
    }
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct ccase *k = &cases[i];
        qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
        char ours[160], theirs[160], ji[8192], jt[8192];
        struct hview a, b;
        int rc;

        snprintf(ours, sizeof(ours), "%s/ours%zu.qcow2", udir, i);
        snprintf(theirs, sizeof(theirs), "%s/theirs%zu.qcow2", udir, i);
        rc = qo_sh(out, sizeof(out), "qemu-img create -q -f qcow2 -o %s %s '%s' %" PRIu64, k->qemu_opts,
                   k->backing ? "-b base.raw -F raw" : "", theirs, k->size);
        cr_assert_eq(rc, 0, "qemu-img create %s: %s", k->qemu_opts, out);
        co.size = k->size;
        co.qcow2_version = k->version;
        co.cluster_size = k->cs;
        co.refcount_bits = k->rb;
        co.extended_l2 = k->extl2;
        co.lazy_refcounts = k->lazy;
        co.compression_type = k->ctype;
        if (k->backing) {
            co.backing_file = "base.raw";
            co.backing_format = "raw";
        }
        rc = qcow2_image_create(ours, &co);
        cr_assert_eq(rc, 0, "create %s: %s", k->qemu_opts, last_msg());
        read_header(ours, &a);
        read_header(theirs, &b);
#define SAME(f) cr_assert_eq(a.f, b.f, "[%s] " #f ": ours 0x%" PRIx64 ", qemu-img 0x%" PRIx64, k->qemu_opts, \
                             (uint64_t)a.f, (uint64_t)b.f)
        SAME(version);
        SAME(cluster_bits);
        SAME(size);
        SAME(l1_size);
        SAME(l1_off);
        SAME(rt_off);
        SAME(rt_clusters);
        SAME(nb_snapshots);
        SAME(snap_off);
        SAME(incompat);
        SAME(compat);
        SAME(autoclear);
        SAME(refcount_order);
        SAME(header_len);
        SAME(compression_type);
        SAME(backing_len);
        SAME(file_len);
#undef SAME
        if (k->backing)
            cr_assert(memcmp(a.raw + a.backing_off, "base.raw", 8) == 0, "[%s] backing name", k->qemu_opts);
        info_format_keys(ours, ji, sizeof(ji));
        info_format_keys(theirs, jt, sizeof(jt));
        cr_assert_str_eq(ji, jt, "[%s] qemu-img info differs", k->qemu_opts);
        rc = qo_check(ours, out, sizeof(out));
        cr_assert_eq(rc, 0, "[%s] qemu-img check: %s", k->qemu_opts, out);
    }
}

/* Create an image file in udir with the given options; returns its path in p. */
static void make_image(char *p, size_t p_len, const char *name, qcow2_create_opts *co)
{
    int rc;

    snprintf(p, p_len, "%s/%s", udir, name);
    rc = qcow2_image_create(p, co);
    cr_assert_eq(rc, 0, "create %s: %s", name, last_msg());
}

static qcow2_image *open_file_rw(const char *p)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;
    int rc;

    o.flags = QCOW2_OPEN_RDWR;
    rc = qcow2_image_open(&img, p, &o);
    cr_assert_eq(rc, 0, "open %s: %d %s", p, rc, last_msg());
    return img;
}

/* qemu-img check exit 0 and qemu-img compare against a raw model file of the same content. */
static void qemu_agrees(const char *p, const uint8_t *model, uint64_t size)
{
    char out[8192], raw[160];
    int rc = qo_check(p, out, sizeof(out));

    cr_assert_eq(rc, 0, "qemu-img check %s exit %d:\n%s", p, rc, out);
    snprintf(raw, sizeof(raw), "%s/model.raw", udir);
    cr_assert_eq(qo_write_file(raw, model, size), 0);
    rc = qo_sh(out, sizeof(out), "qemu-img compare -f qcow2 -F raw '%s' '%s'", p, raw);
    cr_assert_eq(rc, 0, "qemu-img compare %s exit %d:\n%s", p, rc, out);
}

static void expect_content(qcow2_image *img, const uint8_t *model, uint64_t size)
{
    int rc;
    uint64_t bad = first_mismatch(img, model, size, &rc);

    cr_assert_eq(rc, 0, "read: %d %s", rc, last_msg());
    cr_assert_eq(bad, UINT64_MAX, "content differs at %" PRIu64, bad);
}

Test(write_unit, resize_grow_across_l1_growth)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    char p[160];
    qcow2_image *img;
    uint64_t s = 42, big = 64 * MiB;
    uint8_t *model = calloc(1, big), buf[3000];
    struct hview h0, h1;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    co.size = 1 * MiB; /* 512 B clusters: an L2 table covers 32 KiB, L1 = 32 entries */
    co.cluster_size = 512;
    make_image(p, sizeof(p), "grow.qcow2", &co);
    read_header(p, &h0);
    img = open_file_rw(p);
    fill_random(&s, buf, sizeof(buf));
    cr_assert_lt(qcow2_image_write(img, buf, sizeof(buf), 1 * MiB - 1000), 0, "past the end before the resize");
    memcpy(model + 1 * MiB - 1000, buf, 1000);
    cr_assert_eq(qcow2_image_write(img, buf, 1000, 1 * MiB - 1000), 0, "%s", last_msg());
    cr_assert_eq(qcow2_image_write(img, buf, 500, 5000), 0);
    memcpy(model + 5000, buf, 500);
    cr_assert_eq(qcow2_image_resize(img, big, false), 0, "grow: %s", last_msg());
    cr_assert_eq(qcow2_image_size(img), big);
    cr_assert_eq(qcow2_image_write(img, buf, sizeof(buf), 1 * MiB - 1000), 0, "%s", last_msg());
    memcpy(model + 1 * MiB - 1000, buf, sizeof(buf));
    cr_assert_eq(qcow2_image_write(img, buf, sizeof(buf), big - sizeof(buf)), 0, "%s", last_msg());
    memcpy(model + big - sizeof(buf), buf, sizeof(buf));
    cr_assert_eq(qcow2_image_write(img, buf, 2000, 40 * MiB + 77), 0, "%s", last_msg());
    memcpy(model + 40 * MiB + 77, buf, 2000);
    expect_content(img, model, big);
    qcow2_image_close(img);
    read_header(p, &h1);
    cr_assert_eq(h0.l1_size, 32);
    cr_assert_eq(h1.l1_size, big / (64 * 512), "L1 grew to cover the new size");
    cr_assert_eq(h1.size, big);
    qemu_agrees(p, model, big);
    img = open_file_rw(p);
    expect_content(img, model, big);
    qcow2_image_close(img);
    free(model);
}

Test(write_unit, resize_shrink_unused_tail_and_refusal)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    char p[160], out[4096];
    qcow2_image *img;
    uint8_t *model = calloc(1, 8 * MiB), buf[10000];
    uint64_t s = 7;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    co.size = 8 * MiB;
    make_image(p, sizeof(p), "shrink.qcow2", &co);
    img = open_file_rw(p);
    fill_random(&s, buf, sizeof(buf));
    cr_assert_eq(qcow2_image_write(img, buf, sizeof(buf), 100000), 0);
    memcpy(model + 100000, buf, sizeof(buf));
    /* Unused tail: shrinking works. */
    rc = qcow2_image_resize(img, 4 * MiB, false);
    cr_assert_eq(rc, 0, "shrink unused tail: %s", last_msg());
    cr_assert_eq(qcow2_image_size(img), 4 * MiB);
    /* Data past the new end: refused without allow_shrink, and nothing changes. */
    cr_assert_eq(qcow2_image_write(img, buf, 5000, 3 * MiB + 10), 0);
    memcpy(model + 3 * MiB + 10, buf, 5000);
    rc = qcow2_image_resize(img, 2 * MiB, false);
    cr_assert_lt(rc, 0, "shrinking over allocated data must be refused");
    cr_assert_eq(qcow2_image_size(img), 4 * MiB);
    expect_content(img, model, 4 * MiB);
    /* A zero-cluster tail in v3 is not data either way: the size is what counts here. */
    qcow2_image_close(img);
    qemu_agrees(p, model, 4 * MiB);
    rc = qo_sh(out, sizeof(out), "qemu-img info --output=json '%s' | grep -q '\"virtual-size\": 4194304'", p);
    cr_assert_eq(rc, 0, "qemu-img info virtual-size");
    /* allow_shrink drops the tail; growing again reads zeroes there. No leaks. */
    img = open_file_rw(p);
    rc = qcow2_image_resize(img, 2 * MiB, true);
    cr_assert_eq(rc, 0, "allow_shrink: %s", last_msg());
    cr_assert_eq(qcow2_image_resize(img, 4 * MiB, false), 0, "%s", last_msg());
    memset(model + 2 * MiB, 0, 2 * MiB);
    expect_content(img, model, 4 * MiB);
    qcow2_image_close(img);
    qemu_agrees(p, model, 4 * MiB);
    free(model);
}

Test(write_unit, refcount_growth_past_block_and_table)
{
    /* 512 B clusters, 64-bit refcounts: a refcount block covers 64 clusters (32 KiB of file), a
     * one-cluster refcount table covers 64 blocks (2 MiB of file). */
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    char p[160];
    qcow2_image *img;
    uint64_t size = 8 * MiB, s = 9;
    uint8_t *model = calloc(1, size), *buf = malloc(64 * KiB);
    struct hview h;
    uint64_t written = 0;
    bool crossed_block = false;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    co.size = size;
    co.cluster_size = 512;
    co.refcount_bits = 64;
    make_image(p, sizeof(p), "rc.qcow2", &co);
    read_header(p, &h);
    cr_assert_eq(h.rt_clusters, 1);
    img = open_file_rw(p);
    while (written < 5 * MiB) {
        /* Scattered 8 KiB writes, so L2 tables and data interleave. */
        uint64_t off = (written * 7) % (size - 8 * KiB);
        off -= off % 512;
        fill_random(&s, buf, 8 * KiB);
        cr_assert_eq(qcow2_image_write(img, buf, 8 * KiB, off), 0,
                     "write at %" PRIu64 ": %s", off, last_msg());
        memcpy(model + off, buf, 8 * KiB);
        written += 8 * KiB;
        if (!crossed_block && written >= 64 * KiB) {
            /* Past the first refcount block's 64 clusters: stop and have qemu-img look. */
            crossed_block = true;
            qcow2_image_close(img);
            qemu_agrees(p, model, size);
            img = open_file_rw(p);
        }
    }
    expect_content(img, model, size);
    qcow2_image_close(img);
    read_header(p, &h);
    cr_assert_gt(h.file_len, 2 * MiB, "the file outgrew one refcount table cluster");
    cr_assert_gt(h.rt_clusters, 1, "the refcount table grew past one cluster");
    qemu_agrees(p, model, size);
    free(model);
    free(buf);
}

/* A raw backing file full of data and an empty overlay on it. */
static void make_overlay(char *p, size_t p_len, qcow2_create_opts *co, uint8_t *base, uint64_t size)
{
    char bp[160];
    uint64_t s = 1234;

    snprintf(bp, sizeof(bp), "%s/base.raw", udir);
    fill_random(&s, base, size);
    cr_assert_eq(qo_write_file(bp, base, size), 0);
    co->size = size;
    co->backing_file = "base.raw";
    co->backing_format = "raw";
    make_image(p, p_len, "top.qcow2", co);
}

Test(write_unit, cow_partial_cluster_keeps_backing_bytes)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    char p[160];
    uint64_t size = 1 * MiB;
    uint8_t *model = malloc(size), buf[100];
    qcow2_image *img;
    qcow2_extent e;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    make_overlay(p, sizeof(p), &co, model, size);
    img = open_file_rw(p);
    memset(buf, 0xa5, sizeof(buf));
    cr_assert_eq(qcow2_image_write(img, buf, sizeof(buf), 65536 + 1000), 0, "%s", last_msg());
    memcpy(model + 65536 + 1000, buf, sizeof(buf));
    cr_assert_eq(qcow2_image_block_status(img, NULL, 65536, 65536, &e), 0);
    cr_assert_eq(e.depth, 0, "the cluster is allocated in the overlay");
    cr_assert_eq(e.length, 65536);
    expect_content(img, model, size);
    qcow2_image_close(img);
    qemu_agrees(p, model, size);
    /* Without the backing file, the overlay's own cluster holds the copied bytes. */
    {
        char out[256];
        int rc = qo_sh(out, sizeof(out),
                       "qemu-io -r -c 'read -P 0xa5 %d 100' '%s' | grep -q 'read 100/100'", 65536 + 1000, p);
        cr_assert_eq(rc, 0, "qemu-io sees the written bytes");
    }
    free(model);
}

Test(write_unit, extended_l2_partial_subcluster_write_over_backing)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    char p[160], out[8192];
    uint64_t size = 1 * MiB, sc = 65536 / 32;
    uint8_t *model = malloc(size), buf[100];
    qcow2_image *img;
    qcow2_extent e;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    co.extended_l2 = true;
    make_overlay(p, sizeof(p), &co, model, size);
    img = open_file_rw(p);
    memset(buf, 0x5a, sizeof(buf));
    /* 100 bytes inside subcluster 3 of cluster 1. */
    cr_assert_eq(qcow2_image_write(img, buf, sizeof(buf), 65536 + 3 * sc + 700), 0, "%s", last_msg());
    memcpy(model + 65536 + 3 * sc + 700, buf, sizeof(buf));
    expect_content(img, model, size);
    cr_assert_eq(qcow2_image_block_status(img, NULL, 65536, 65536, &e), 0);
    cr_assert_eq(e.depth, 1, "subclusters 0-2 still come from the backing file");
    cr_assert_eq(e.length, 3 * sc);
    cr_assert_eq(qcow2_image_block_status(img, NULL, 65536 + 3 * sc, 65536 - 3 * sc, &e), 0);
    cr_assert_eq(e.depth, 0, "subcluster 3 is allocated in the overlay");
    cr_assert_eq(e.length, sc, "only subcluster 3");
    qcow2_image_close(img);
    qemu_agrees(p, model, size);
    /* qemu-img map agrees: exactly one subcluster-sized run at depth 0. */
    rc = qo_sh(out, sizeof(out),
               "qemu-img map --output=json '%s' | python3 -c 'import json,sys; "
               "m=[e for e in json.load(sys.stdin) if e[\"depth\"]==0 and e[\"data\"]]; "
               "print(len(m), m[0][\"start\"], m[0][\"length\"])'",
               p);
    cr_assert_eq(rc, 0, "%s", out);
    {
        char want[64];
        snprintf(want, sizeof(want), "1 %" PRIu64 " %" PRIu64 "\n", 65536 + 3 * sc, sc);
        cr_assert_str_eq(out, want, "qemu-img map's depth-0 runs");
    }
    free(model);
}

Test(write_unit, compressed_write_falls_back_when_incompressible)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    char p[160];
    uint64_t size = 1 * MiB, s = 5;
    uint8_t *model = calloc(1, size), *buf = malloc(65536);
    qcow2_image *img;
    qcow2_extent e;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    co.size = size;
    make_image(p, sizeof(p), "comp.qcow2", &co);
    img = open_file_rw(p);
    fill_random(&s, buf, 65536);
    cr_assert_eq(qcow2_image_write_compressed(img, buf, 65536, 0), 0, "%s", last_msg());
    memcpy(model, buf, 65536);
    cr_assert_eq(qcow2_image_block_status(img, NULL, 0, 65536, &e), 0);
    cr_assert_eq(e.flags & QCOW2_EXT_COMPRESSED, 0, "random data is stored plain");
    qcow2_image_close(img);
    qemu_agrees(p, model, size);
    /* qemu-img leaves the key out when the count is zero (the check itself ran clean above). */
    cr_assert_leq(qo_check_json_field(p, "compressed-clusters"), 0);
    cr_assert_eq(qo_check_json_field(p, "allocated-clusters"), 1);

    img = open_file_rw(p);
    memset(buf, 0x11, 65536);
    cr_assert_eq(qcow2_image_write_compressed(img, buf, 65536, 65536 * 3), 0, "%s", last_msg());
    memcpy(model + 65536 * 3, buf, 65536);
    cr_assert_eq(qcow2_image_block_status(img, NULL, 65536 * 3, 65536, &e), 0);
    cr_assert_neq(e.flags & QCOW2_EXT_COMPRESSED, 0, "a constant cluster is stored compressed");
    qcow2_image_close(img);
    qemu_agrees(p, model, size);
    cr_assert_eq(qo_check_json_field(p, "compressed-clusters"), 1);
    cr_assert_eq(qo_check_json_field(p, "allocated-clusters"), 2);
    free(model);
    free(buf);
}

/* Overwrite 8 bytes at off in file p. */
static void poke(const char *p, uint64_t off, const void *bytes, size_t len)
{
    FILE *fp = fopen(p, "r+b");

    cr_assert_not_null(fp);
    cr_assert_eq(fseek(fp, (long)off, SEEK_SET), 0);
    cr_assert_eq(fwrite(bytes, 1, len, fp), len);
    cr_assert_eq(fclose(fp), 0);
}

Test(write_unit, unknown_autoclear_bits_cleared_on_first_write)
{
    char p[160], out[4096];
    uint8_t be[8];
    struct hview h;
    qcow2_image *img;
    uint64_t bits = (1ull << 63) | (1ull << 17);

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    snprintf(p, sizeof(p), "%s/ac.qcow2", udir);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img create -q -f qcow2 '%s' 1M", p), 0, "%s", out);
    qcow2__put_be64(be, bits);
    poke(p, 88, be, 8);
    read_header(p, &h);
    cr_assert_eq(h.autoclear, bits);
    img = open_file_rw(p);
    cr_assert_eq(qcow2_image_write(img, "hello", 5, 1000), 0, "%s", last_msg());
    qcow2_image_close(img);
    read_header(p, &h);
    cr_assert_eq(h.autoclear, 0, "unknown autoclear bits left: 0x%" PRIx64, h.autoclear);
    cr_assert_eq(qo_check(p, out, sizeof(out)), 0, "%s", out);
}

Test(write_unit, unknown_header_extension_and_fields_survive)
{
    char p[160], out[4096];
    struct hview h;
    qcow2_image *img;
    size_t len;
    uint8_t *b;
    const uint8_t payload[13] = "qsnap-unknown";
    const uint8_t tail_field[8] = {0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0};
    uint64_t off;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    snprintf(p, sizeof(p), "%s/ext.qcow2", udir);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img create -q -f qcow2 '%s' 1M", p), 0, "%s", out);
    b = qo_read_file(p, &len);
    cr_assert_not_null(b);
    cr_assert_eq(qcow2__be32(b + 100), 112);
    /* Rebuild the extension area: a header 8 bytes longer (an unknown field), then our
     * extension, then qemu's extensions as they were. */
    {
        uint8_t area[4096] = {0};
        size_t n = 0, ext_len = 0;
        uint64_t e = 112;
        while (qcow2__be32(b + e) != 0) {
            uint32_t l = qcow2__be32(b + e + 4);
            e += 8 + ((l + 7) & ~7u);
        }
        ext_len = (size_t)(e - 112);
        qcow2__put_be32(area + n, 0x7173ee01);
        qcow2__put_be32(area + n + 4, sizeof(payload));
        memcpy(area + n + 8, payload, sizeof(payload));
        n += 8 + 16;
        memcpy(area + n, b + 112, ext_len);
        n += ext_len;
        n += 8; /* end marker */
        memcpy(b + 112, tail_field, 8);
        memcpy(b + 120, area, n);
        qcow2__put_be32(b + 100, 120);
    }
    cr_assert_eq(qo_write_file(p, b, len), 0);
    free(b);
    cr_assert_eq(qo_check(p, out, sizeof(out)), 0, "the poked image is valid for qemu: %s", out);

    img = open_file_rw(p);
    cr_assert_eq(qcow2_image_write(img, "data", 4, 70000), 0, "%s", last_msg());
    /* A resize rewrites the header for sure. */
    cr_assert_eq(qcow2_image_resize(img, 2 * MiB, false), 0, "%s", last_msg());
    qcow2_image_close(img);

    read_header(p, &h);
    cr_assert_eq(h.size, 2 * MiB);
    cr_assert_eq(h.header_len, 120, "header length kept");
    cr_assert(memcmp(h.raw + 112, tail_field, 8) == 0, "unknown header field kept");
    for (off = h.header_len; off + 8 < sizeof(h.raw); ) {
        uint32_t t = qcow2__be32(h.raw + off), l = qcow2__be32(h.raw + off + 4);
        if (t == 0)
            break;
        if (t == 0x7173ee01) {
            cr_assert_eq(l, sizeof(payload));
            cr_assert(memcmp(h.raw + off + 8, payload, sizeof(payload)) == 0, "payload kept");
            break;
        }
        off += 8 + ((l + 7) & ~7u);
    }
    cr_assert_eq(qcow2__be32(h.raw + off), 0x7173ee01, "the unknown extension survived the rewrite");
    cr_assert_eq(qo_check(p, out, sizeof(out)), 0, "%s", out);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-io -r -c 'read -P 0x64 70000 1' '%s' | grep -q 'read 1/1'", p), 0);
}

Test(write_unit, cow_of_clusters_shared_with_an_internal_snapshot)
{
    char p[160], snap_raw[160], out[8192];
    uint64_t size = 2 * MiB, s = 77;
    uint8_t *model = calloc(1, size), *before, buf[5000];
    qcow2_image *img;
    int rc;

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    snprintf(p, sizeof(p), "%s/snap.qcow2", udir);
    rc = qo_sh(out, sizeof(out),
               "qemu-img create -q -f qcow2 '%s' 2M && qemu-io -c 'write -P 0x33 0 1M' '%s' >/dev/null && "
               "qemu-img snapshot -c s1 '%s'",
               p, p, p);
    cr_assert_eq(rc, 0, "%s", out);
    memset(model, 0x33, 1 * MiB);
    before = malloc(size);
    memcpy(before, model, size);
    img = open_file_rw(p);
    fill_random(&s, buf, sizeof(buf));
    /* Partial writes into clusters the snapshot shares (refcount 2): COW, never in place. */
    cr_assert_eq(qcow2_image_write(img, buf, sizeof(buf), 70000), 0, "%s", last_msg());
    memcpy(model + 70000, buf, sizeof(buf));
    cr_assert_eq(qcow2_image_write_zeroes(img, 200 * KiB, 64 * KiB, 0), 0, "%s", last_msg());
    memset(model + 200 * KiB, 0, 64 * KiB);
    cr_assert_eq(qcow2_image_discard(img, 512 * KiB, 128 * KiB), 0, "%s", last_msg());
    memset(model + 512 * KiB, 0, 128 * KiB);
    cr_assert_eq(qcow2_image_write(img, buf, 100, 1 * MiB + 5), 0, "%s", last_msg());
    memcpy(model + 1 * MiB + 5, buf, 100);
    expect_content(img, model, size);
    qcow2_image_close(img);
    qemu_agrees(p, model, size);
    /* The snapshot still reads as it was taken. */
    snprintf(snap_raw, sizeof(snap_raw), "%s/snap.raw", udir);
    rc = qo_sh(out, sizeof(out), "qemu-img convert -O raw -l snapshot.name=s1 '%s' '%s'", p, snap_raw);
    cr_assert_eq(rc, 0, "%s", out);
    {
        size_t len;
        uint8_t *got = qo_read_file(snap_raw, &len);
        cr_assert_not_null(got);
        cr_assert_eq(len, size);
        cr_assert(memcmp(got, before, size) == 0, "the internal snapshot's content changed");
        free(got);
    }
    free(before);
    free(model);
}

Test(write_unit, preallocated_images_take_writes)
{
    static const qcow2_prealloc modes[] = {QCOW2_PREALLOC_METADATA, QCOW2_PREALLOC_FALLOC, QCOW2_PREALLOC_FULL};
    static const char *const names[] = {"metadata", "falloc", "full"};

    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    for (size_t m = 0; m < 3; m++) {
        qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
        char p[160], name[64], out[4096];
        uint64_t size = 3 * MiB + 4096, s = 3 + m;
        uint8_t *model = calloc(1, size), buf[70000];
        qcow2_image *img;
        int rc;

        co.size = size;
        co.cluster_size = 4096;
        co.preallocation = modes[m];
        snprintf(name, sizeof(name), "pre-%s.qcow2", names[m]);
        make_image(p, sizeof(p), name, &co);
        rc = qo_check(p, out, sizeof(out));
        cr_assert_eq(rc, 0, "[%s] fresh image: %s", names[m], out);
        qemu_agrees(p, model, size);
        img = open_file_rw(p);
        fill_random(&s, buf, sizeof(buf));
        cr_assert_eq(qcow2_image_write(img, buf, sizeof(buf), 12345), 0, "%s", last_msg());
        memcpy(model + 12345, buf, sizeof(buf));
        cr_assert_eq(qcow2_image_write_zeroes(img, 1 * MiB + 100, 50000, QCOW2_ZERO_MAY_UNMAP), 0, "%s", last_msg());
        cr_assert_eq(qcow2_image_discard(img, 2 * MiB, 64 * KiB), 0, "%s", last_msg());
        cr_assert_eq(qcow2_image_write(img, buf, 1000, size - 1000), 0, "%s", last_msg());
        memcpy(model + size - 1000, buf, 1000);
        expect_content(img, model, size);
        qcow2_image_close(img);
        qemu_agrees(p, model, size);
        free(model);
    }
}

/*
 * Hostile offsets: an L1 entry that points its (writable) L2 table at the
 * refcount table, or an L2 entry that points a data cluster at the L1
 * table. A write through either would overwrite the image's own metadata;
 * it must fail with QCOW2_ECORRUPT naming the overlap and leave every byte
 * of the file as it was but the header's corrupt bit (set as qemu sets it,
 * so that nothing writes the image before a repair). qemu-img check agrees
 * the images are corrupt.
 */
static void overlap_case(const char *name, bool l2_at_reftable)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    char p[160], out[4096];
    uint8_t be[8], *before, *after;
    size_t n1, n2;
    qcow2_image *img;
    uint64_t l1_off, rt_off, l2_off;
    int rc;

    co.size = 4 * MiB;
    make_image(p, sizeof(p), name, &co);
    img = open_file_rw(p);
    cr_assert_eq(qcow2_image_write(img, "data", 4, 0), 0, "%s", last_msg());
    l1_off = img->hdr.l1_off;
    rt_off = img->hdr.rt_off;
    l2_off = img->l1[0] & QCOW2_L1E_OFFSET_MASK;
    qcow2_image_close(img);
    cr_assert_neq(l2_off, 0);
    if (l2_at_reftable) {
        qcow2__put_be64(be, rt_off | QCOW2_OFLAG_COPIED);
        poke(p, l1_off, be, 8);
    } else {
        qcow2__put_be64(be, l1_off | QCOW2_OFLAG_COPIED);
        poke(p, l2_off, be, 8);
    }
    before = qo_read_file(p, &n1);
    cr_assert_not_null(before);
    img = open_file_rw(p);
    rc = qcow2_image_write(img, "evil", 4, 0);
    cr_assert_eq(rc, QCOW2_ECORRUPT, "write returned %d: %s", rc, last_msg());
    cr_assert_not_null(strstr(last_msg(), l2_at_reftable ? "overlaps the refcount table"
                                                         : "overlaps the L1 table"),
                       "%s", last_msg());
    qcow2_image_close(img);
    after = qo_read_file(p, &n2);
    cr_assert_not_null(after);
    cr_assert_eq(n1, n2);
    cr_assert_eq(after[79], before[79] | QCOW2_INCOMPAT_CORRUPT, "corrupt bit not set");
    after[79] = before[79];
    {
        size_t at = 0;
        while (at < n1 && at < n2 && before[at] == after[at])
            at++;
        cr_assert(n1 == n2 && at == n1, "the file changed (size %zu -> %zu, first at 0x%zx)", n1,
                  n2, at);
    }
    free(before);
    free(after);
    if (qo_have_qemu())
        cr_assert_neq(qo_check(p, out, sizeof(out)), 0, "qemu-img check finds it clean:\n%s", out);
}

/*
 * A refcount table entry that points the refcount block of the first
 * clusters at the L1 table: the next allocation would write refcounts over
 * the L1 table. It must fail with QCOW2_ECORRUPT naming the overlap, change
 * nothing but the corrupt bit, and leave the image for a repair.
 */
Test(write_unit, refcount_block_over_the_l1_table_is_not_written)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    char p[160], out[4096];
    uint8_t be[8], *before, *after;
    size_t n1, n2;
    qcow2_image *img;
    uint64_t l1_off, rt_off;
    int rc;

    co.size = 4 * MiB;
    make_image(p, sizeof(p), "rb-over-l1.qcow2", &co);
    img = open_file_rw(p);
    cr_assert_eq(qcow2_image_write(img, "data", 4, 2 * MiB), 0, "%s", last_msg()); /* file grows */
    l1_off = img->hdr.l1_off;
    rt_off = img->hdr.rt_off;
    qcow2_image_close(img);
    qcow2__put_be64(be, l1_off & ~(uint64_t)(64 * KiB - 1));
    poke(p, rt_off, be, 8);
    before = qo_read_file(p, &n1);
    cr_assert_not_null(before);
    img = open_file_rw(p);
    rc = qcow2_image_write(img, "evil", 4, 0);
    cr_assert_eq(rc, QCOW2_ECORRUPT, "write returned %d: %s", rc, last_msg());
    /* Either the block itself or the cluster its bogus counts call free is refused. */
    cr_assert_not_null(strstr(last_msg(), "overlaps the"), "%s", last_msg());
    qcow2_image_close(img);
    after = qo_read_file(p, &n2);
    cr_assert_not_null(after);
    cr_assert_eq(n1, n2, "the file changed size");
    cr_assert_eq(after[79], before[79] | QCOW2_INCOMPAT_CORRUPT, "corrupt bit not set");
    after[79] = before[79];
    cr_assert_eq(memcmp(before, after, n1), 0, "the file changed");
    free(before);
    free(after);
    if (qo_have_qemu())
        cr_assert_neq(qo_check(p, out, sizeof(out)), 0, "qemu-img check finds it clean:\n%s", out);
    /*
     * The repair rebuilds the refcount structure elsewhere (the block is
     * referenced twice: as a refcount block and as the L1 table) and never
     * writes refcounts over the L1 table; the image ends clean.
     */
    before = qo_read_file(p, &n1);
    img = open_file_rw(p);
    {
        qcow2_check_result r;
        char buf[4];
        memset(&r, 0, sizeof(r));
        rc = qcow2_image_check(img, QCOW2_CHECK_FIX_LEAKS | QCOW2_CHECK_FIX_ERRORS, &r);
        cr_assert_eq(rc, 0, "repair returned %d: %s", rc, last_msg());
        cr_assert_eq(r.corruptions + r.leaks + r.check_errors, 0, "the repair left problems");
        cr_assert_gt(r.corruptions_fixed, 0, "nothing was repaired");
        cr_assert_eq(qcow2_image_read(img, buf, 4, 2 * MiB), 0, "%s", last_msg());
        cr_assert_eq(memcmp(buf, "data", 4), 0, "the data changed");
    }
    qcow2_image_close(img);
    if (qo_have_qemu())
        cr_assert_eq(qo_check(p, out, sizeof(out)), 0, "qemu-img check after the repair:\n%s", out);
    after = qo_read_file(p, &n2);
    {
        /* Its COPIED flag may be cleared (the repair trusts no refcount of 1 there), nothing more.
         */
        uint64_t was = qcow2__be64(before + l1_off), is = qcow2__be64(after + l1_off);
        cr_assert_eq(is & ~(uint64_t)QCOW2_OFLAG_COPIED, was & ~(uint64_t)QCOW2_OFLAG_COPIED,
                     "refcounts went over the L1 table: entry %016llx -> %016llx",
                     (unsigned long long)was, (unsigned long long)is);
    }
    free(before);
    free(after);
}

Test(write_unit, l2_table_over_the_refcount_table_is_not_written)
{
    overlap_case("l2-over-rt.qcow2", true);
}

Test(write_unit, data_cluster_over_the_l1_table_is_not_written)
{
    overlap_case("data-over-l1.qcow2", false);
}

/*
 * Extended L2: the file can end inside an allocated cluster (only its first
 * subclusters written). A later session's write to a subcluster past the
 * end makes the file longer; the same handle must then read and write it
 * (it failed with "lies beyond the end of the file" and turned FATAL).
 */
Test(write_unit, extl2_write_past_the_file_end_in_a_later_session)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    char p[160], out[4096];
    uint8_t b = 0;
    qcow2_image *img;

    co.size = 16384;
    co.cluster_size = 16384;
    co.extended_l2 = true;
    make_image(p, sizeof(p), "extl2-tail.qcow2", &co);
    img = open_file_rw(p);
    cr_assert_eq(qcow2_image_write(img, "\x01", 1, 131), 0, "%s", last_msg());
    qcow2_image_close(img);
    img = open_file_rw(p);
    cr_assert_eq(qcow2_image_write(img, "\x02", 1, 3072), 0, "%s", last_msg());
    cr_assert_eq(qcow2_image_read(img, &b, 1, 3072), 0, "%s", last_msg());
    cr_assert_eq(b, 2);
    cr_assert_eq(qcow2_image_write(img, "\x03", 1, 3073), 0, "%s", last_msg());
    cr_assert_eq(qcow2_image_read(img, &b, 1, 131), 0, "%s", last_msg());
    cr_assert_eq(b, 1);
    qcow2_image_close(img);
    if (qo_have_qemu()) {
        cr_assert_eq(qo_check(p, out, sizeof(out)), 0, "%s", out);
        cr_assert_eq(qo_sh(out, sizeof(out),
                           "qemu-io -f qcow2 -r -c 'read -P 1 131 1' -c 'read -P 2 3072 1' "
                           "-c 'read -P 3 3073 1' '%s' | grep -c Pattern",
                           p),
                     1, "qemu-io found a pattern mismatch: %s", out);
    }
}
