/*
 * Tests for qcow2/read.c: qcow2_image_read() across backing chains (against a
 * byte model built alongside, in a memfs), reads past a shorter backing file,
 * argument checks, and qcow2_image_block_status(): flags, depth and offsets
 * per kind of run, the base argument, and the whole map merged like
 * `qemu-img map --output=json` compared with qemu-img's on chains made by
 * qemu-img/qemu-io (including metadata preallocation and its hole rule).
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2_int.h"
#include "qemu_oracle.h"
#include "reader_fixture.h"

#define KiB 1024ull
#define MiB (1024ull * 1024ull)

static memfs *fs;

static void setup(void)
{
    fs = memfs_new();
    cr_assert_not_null(fs);
}

static void teardown(void)
{
    memfs_free(fs);
}

TestSuite(read, .init = setup, .fini = teardown, .timeout = 60);

#define assert_msg(...)                                                                            \
    cr_assert(rfx_has_all(rfx_msg(), __VA_ARGS__, (const char *)NULL), "message: %s", rfx_msg())

static void create_over(const char *path, uint64_t size, uint32_t cs, unsigned version,
                        bool extl2, const char *backing, const char *bfmt)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;

    co.size = size;
    co.cluster_size = cs;
    co.qcow2_version = version;
    co.extended_l2 = extl2;
    co.backing_file = backing;
    co.backing_format = bfmt;
    cr_assert_eq(rfx_create(fs, path, &co), 0, "%s: %s", path, rfx_msg());
}

/* Write pattern bytes to the image and to the model. */
static void wr(const char *path, uint8_t *model, uint64_t off, size_t len, uint64_t seed)
{
    uint8_t *b = malloc(len);

    rfx_random(seed, b, len);
    cr_assert_eq(rfx_write(fs, path, off, b, len), 0, "%s: %s", path, rfx_msg());
    if (model)
        memcpy(model + off, b, len);
    free(b);
}

static void zr(const char *path, uint8_t *model, uint64_t off, size_t len, unsigned flags)
{
    cr_assert_eq(rfx_zero(fs, path, off, len, flags), 0, "%s: %s", path, rfx_msg());
    if (model)
        memset(model + off, 0, len);
}

static qcow2_image *open_top(const char *path)
{
    qcow2_image *img;

    cr_assert_eq(rfx_open(fs, path, 0, 0, &img), 0, "%s", rfx_msg());
    return img;
}

static void assert_reads_model(qcow2_image *img, const uint8_t *model, uint64_t size)
{
    uint8_t *buf = malloc(size);
    uint64_t s = 7;

    cr_assert_eq(qcow2_image_size(img), size);
    cr_assert_eq(qcow2_image_read(img, buf, size, 0), 0, "%s", rfx_msg());
    for (uint64_t i = 0; i < size; i++)
        cr_assert_eq(buf[i], model[i], "whole read differs at 0x%" PRIx64, i);
    /* Unaligned pieces crossing clusters and layers. */
    for (int n = 0; n < 200; n++) {
        uint64_t off, len;
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        off = (s >> 20) % size;
        len = 1 + (s >> 7) % qcow2__min(size - off, 200 * KiB);
        cr_assert_eq(qcow2_image_read(img, buf, len, off), 0, "%s", rfx_msg());
        cr_assert_eq(memcmp(buf, model + off, len), 0, "read of %" PRIu64 " at 0x%" PRIx64, len,
                     off);
    }
    free(buf);
}

/* ---- reads ------------------------------------------------------------------------ */

Test(read, three_layer_chain_reads_as_the_model)
{
    const uint64_t size = 2 * MiB;
    uint8_t *model = calloc(1, size);
    uint8_t *base = malloc(size);
    qcow2_image *img;

    rfx_random(1, base, size);
    memset(base + 1 * MiB, 0, 128 * KiB);
    cr_assert_eq(memfs_put(fs, "/m/base.raw", base, size), 0);
    memcpy(model, base, size);
    create_over("/m/mid.qcow2", size, 4096, 2, false, "base.raw", "raw");
    wr("/m/mid.qcow2", model, 10000, 50000, 2);
    wr("/m/mid.qcow2", model, 1 * MiB + 4096, 8192, 3);
    wr("/m/mid.qcow2", model, 1900 * KiB, 100 * KiB, 4);
    create_over("/m/top.qcow2", size, 65536, 3, false, "mid.qcow2", "qcow2");
    wr("/m/top.qcow2", model, 0, 1000, 5);
    wr("/m/top.qcow2", model, 300 * KiB, 200 * KiB, 6);
    zr("/m/top.qcow2", model, 512 * KiB, 256 * KiB, 0);
    zr("/m/top.qcow2", model, 20000, 100, 0);
    img = open_top("/m/top.qcow2");
    cr_assert_eq(qcow2_image_chain_length(img), 3);
    assert_reads_model(img, model, size);
    qcow2_image_close(img);
    free(model);
    free(base);
}

Test(read, compressed_clusters_read_back_with_zlib_and_zstd)
{
    for (unsigned type = 0; type < 2; type++) {
        qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
        const uint64_t size = 1 * MiB;
        uint8_t *model = calloc(1, size);
        qcow2_image *img;

        co.size = size;
        co.compression_type = type;
        cr_assert_eq(rfx_create(fs, "/m/c.qcow2", &co), 0, "%s", rfx_msg());
        cr_assert_eq(rfx_compressed(fs, "/m/c.qcow2", 128 * KiB, 256 * KiB, 0x30), 0, "%s",
                     rfx_msg());
        for (size_t i = 0; i < 256 * KiB; i++)
            model[128 * KiB + i] = (uint8_t)(0x30 + (i / 100) % 7);
        img = open_top("/m/c.qcow2");
        cr_assert_eq(img->hdr.compression_type, type);
        assert_reads_model(img, model, size);
        qcow2_image_close(img);
        free(model);
    }
}

Test(read, unallocated_subclusters_of_an_allocated_cluster_read_the_backing_file)
{
    const uint64_t size = 1 * MiB;
    uint8_t *model = malloc(size);
    qcow2_image *img;

    rfx_random(9, model, size);
    cr_assert_eq(memfs_put(fs, "/m/b.raw", model, size), 0);
    create_over("/m/t.qcow2", size, 65536, 3, true, "b.raw", "raw");
    wr("/m/t.qcow2", model, 2048 + 100, 1000, 10); /* COW of one subcluster */
    zr("/m/t.qcow2", model, 8 * 2048, 2048, 0);
    wr("/m/t.qcow2", model, 100 * KiB, 2048, 11);
    img = open_top("/m/t.qcow2");
    assert_reads_model(img, model, size);
    qcow2_image_close(img);
    free(model);
}

Test(read, reads_past_a_shorter_backing_file_are_zero)
{
    const uint64_t size = 1 * MiB;
    uint8_t *model = calloc(1, size);
    qcow2_image *img;

    rfx_random(12, model, 100 * KiB + 512);
    cr_assert_eq(memfs_put(fs, "/m/b.raw", model, 100 * KiB + 300), 0);
    memset(model + 100 * KiB + 300, 0, 212); /* the raw file's partial last sector reads as zero */
    create_over("/m/mid.qcow2", 300 * KiB, 65536, 3, false, "b.raw", "raw");
    wr("/m/mid.qcow2", model, 250 * KiB, 50 * KiB, 13);
    create_over("/m/t.qcow2", size, 65536, 3, false, "mid.qcow2", "qcow2");
    wr("/m/t.qcow2", model, 900 * KiB, 10 * KiB, 14);
    img = open_top("/m/t.qcow2");
    cr_assert_eq(qcow2_image_size(qcow2_image_backing(img)), 300 * KiB);
    cr_assert_eq(qcow2_image_size(qcow2_image_backing(qcow2_image_backing(img))), 100 * KiB + 512);
    assert_reads_model(img, model, size);
    qcow2_image_close(img);
    free(model);
}

Test(read, a_longer_backing_file_is_cut_at_the_overlays_size)
{
    const uint64_t size = 512 * KiB;
    uint8_t *model = malloc(2 * MiB);
    qcow2_image *img;
    uint8_t b;

    rfx_random(15, model, 2 * MiB);
    cr_assert_eq(memfs_put(fs, "/m/b.raw", model, 2 * MiB), 0);
    create_over("/m/t.qcow2", size, 65536, 3, false, "b.raw", "raw");
    img = open_top("/m/t.qcow2");
    assert_reads_model(img, model, size);
    cr_assert_eq(qcow2_image_read(img, &b, 1, size), QCOW2_EINVAL);
    qcow2_image_close(img);
    free(model);
}

Test(read, zero_clusters_hide_the_backing_file)
{
    const uint64_t size = 1 * MiB;
    uint8_t *model = malloc(size);
    qcow2_image *img;

    rfx_random(16, model, size);
    cr_assert_eq(memfs_put(fs, "/m/b.raw", model, size), 0);
    create_over("/m/t.qcow2", size, 65536, 3, false, "b.raw", "raw");
    zr("/m/t.qcow2", model, 64 * KiB, 192 * KiB, QCOW2_ZERO_MAY_UNMAP);
    img = open_top("/m/t.qcow2");
    assert_reads_model(img, model, size);
    qcow2_image_close(img);
    free(model);
}

Test(read, arguments_are_checked)
{
    qcow2_image *img;
    uint8_t buf[16];

    create_over("/m/t.qcow2", 1 * MiB, 65536, 3, false, NULL, NULL);
    img = open_top("/m/t.qcow2");
    cr_assert_eq(qcow2_image_read(img, buf, 0, 1 * MiB), 0);
    cr_assert_eq(qcow2_image_read(img, buf, 1, 1 * MiB), QCOW2_EINVAL);
    assert_msg("/m/t.qcow2", "beyond the virtual size");
    cr_assert_eq(qcow2_image_read(img, buf, 16, 1 * MiB - 8), QCOW2_EINVAL);
    cr_assert_eq(qcow2_image_read(img, buf, 16, UINT64_MAX - 4), QCOW2_EINVAL);
    cr_assert_eq(qcow2_image_read(img, NULL, 16, 0), QCOW2_EINVAL);
    cr_assert_eq(qcow2_image_read(NULL, buf, 16, 0), QCOW2_EINVAL);
    cr_assert_eq(qcow2_image_read(img, NULL, 0, 0), 0);
    qcow2_image_close(img);
}

/* ---- block status (memfs) ---------------------------------------------------------- */

static qcow2_extent bs(qcow2_image *img, const qcow2_image *base, uint64_t off, uint64_t len)
{
    qcow2_extent e;

    memset(&e, 0xa5, sizeof(e));
    cr_assert_eq(qcow2_image_block_status(img, base, off, len, &e), 0, "%s", rfx_msg());
    cr_assert_eq(e.start, off);
    cr_assert_gt(e.length, 0);
    cr_assert_leq(e.length, len);
    return e;
}

Test(read, block_status_flags_depth_and_offsets_per_kind)
{
    const uint64_t cs = 64 * KiB, size = 2 * MiB;
    qcow2_image *img, *mid, *base;
    qcow2_extent e;
    uint64_t data_host;

    cr_assert_eq(memfs_put(fs, "/m/b.raw", NULL, 0), 0);
    wr("/m/b.raw", NULL, 0, 0, 0);
    {
        uint8_t *b = malloc(512 * KiB);
        rfx_random(20, b, 512 * KiB);
        cr_assert_eq(memfs_put(fs, "/m/b.raw", b, 512 * KiB), 0);
        free(b);
    }
    create_over("/m/mid.qcow2", size, (uint32_t)cs, 3, false, "b.raw", "raw");
    wr("/m/mid.qcow2", NULL, 4 * cs, cs, 21);
    create_over("/m/top.qcow2", size, (uint32_t)cs, 3, false, "mid.qcow2", "qcow2");
    wr("/m/top.qcow2", NULL, 0, 2 * cs, 22);
    zr("/m/top.qcow2", NULL, 2 * cs, cs, QCOW2_ZERO_MAY_UNMAP);
    cr_assert_eq(rfx_compressed(fs, "/m/top.qcow2", 3 * cs, cs, 1), 0);
    img = open_top("/m/top.qcow2");
    mid = qcow2_image_backing(img);
    base = qcow2_image_backing(mid);

    e = bs(img, NULL, 0, size);
    cr_assert_eq(e.flags, QCOW2_EXT_PRESENT | QCOW2_EXT_DATA | QCOW2_EXT_OFFSET_VALID);
    cr_assert_eq(e.depth, 0);
    cr_assert_eq(e.layer, img);
    cr_assert_eq(e.length, 2 * cs);
    data_host = e.host_off;
    e = bs(img, NULL, 100, size - 100);
    cr_assert_eq(e.host_off, data_host + 100);
    cr_assert_eq(e.length, 2 * cs - 100);

    e = bs(img, NULL, 2 * cs, size - 2 * cs);
    cr_assert_eq(e.flags, QCOW2_EXT_PRESENT | QCOW2_EXT_ZERO);
    cr_assert_eq(e.depth, 0);
    cr_assert_eq(e.length, cs);

    e = bs(img, NULL, 3 * cs, size - 3 * cs);
    cr_assert_eq(e.flags, QCOW2_EXT_PRESENT | QCOW2_EXT_DATA | QCOW2_EXT_COMPRESSED);
    cr_assert_eq(e.length, cs);

    e = bs(img, NULL, 4 * cs, size - 4 * cs);
    cr_assert_eq(e.flags, QCOW2_EXT_PRESENT | QCOW2_EXT_DATA | QCOW2_EXT_OFFSET_VALID);
    cr_assert_eq(e.depth, 1);
    cr_assert_eq(e.layer, mid);
    cr_assert_eq(e.length, cs);

    e = bs(img, NULL, 5 * cs, size - 5 * cs);
    cr_assert_eq(e.flags, QCOW2_EXT_PRESENT | QCOW2_EXT_DATA | QCOW2_EXT_OFFSET_VALID);
    cr_assert_eq(e.depth, 2);
    cr_assert_eq(e.layer, base);
    cr_assert_eq(e.host_off, 5 * cs);
    cr_assert_eq(e.length, 512 * KiB - 5 * cs);

    /* Past the raw file: unallocated everywhere, reads as zero, at the depth where it ended. */
    e = bs(img, NULL, 512 * KiB, size - 512 * KiB);
    cr_assert_eq(e.flags, QCOW2_EXT_ZERO);
    cr_assert_eq(e.depth, 1);
    cr_assert_eq(e.length, size - 512 * KiB);

    /* base: stop above it. */
    e = bs(img, mid, 5 * cs, 100 * KiB);
    cr_assert_eq(e.flags, 0);
    cr_assert_eq(e.depth, 1);
    cr_assert_eq(e.layer, mid);
    cr_assert_eq(e.length, 100 * KiB);
    e = bs(img, img, 0, 100);
    cr_assert_eq(e.flags, 0);
    cr_assert_eq(e.depth, 0);
    e = bs(img, mid, 0, size);
    cr_assert_eq(e.depth, 0);
    cr_assert(e.flags & QCOW2_EXT_DATA);

    cr_assert_eq(qcow2_image_block_status(img, NULL, 0, 0, &e), QCOW2_EINVAL);
    cr_assert_eq(qcow2_image_block_status(img, NULL, size - 1, 2, &e), QCOW2_EINVAL);
    assert_msg("/m/top.qcow2", "outside the image");
    cr_assert_eq(qcow2_image_block_status(img, NULL, 0, 1, NULL), QCOW2_EINVAL);
    cr_assert_eq(qcow2_image_block_status(NULL, NULL, 0, 1, &e), QCOW2_EINVAL);
    qcow2_image_close(img);
}

Test(read, block_status_of_an_allocated_zero_cluster_has_its_offset)
{
    const uint64_t cs = 64 * KiB;
    qcow2_image *img;
    qcow2_extent e;

    create_over("/m/t.qcow2", 1 * MiB, (uint32_t)cs, 3, false, NULL, NULL);
    wr("/m/t.qcow2", NULL, cs, cs, 1);
    img = open_top("/m/t.qcow2");
    e = bs(img, NULL, cs, cs);
    qcow2_image_close(img);
    zr("/m/t.qcow2", NULL, cs, cs, 0);
    img = open_top("/m/t.qcow2");
    {
        qcow2_extent z = bs(img, NULL, cs + 512, 1 * MiB - cs - 512);
        cr_assert_eq(z.flags, QCOW2_EXT_PRESENT | QCOW2_EXT_ZERO | QCOW2_EXT_OFFSET_VALID);
        cr_assert_eq(z.host_off, e.host_off + 512);
        cr_assert_eq(z.length, cs - 512);
    }
    /* Unallocated with no backing file: zero, not present. */
    e = bs(img, NULL, 0, cs);
    cr_assert_eq(e.flags, QCOW2_EXT_ZERO);
    qcow2_image_close(img);
}

/* ---- block status against qemu-img map ------------------------------------------- */

struct mapent {
    uint64_t start, length, offset;
    unsigned depth;
    bool present, zero, data, has_offset;
};

struct map {
    struct mapent e[4096];
    size_t n;
};

static bool mergeable(const struct mapent *a, const struct mapent *b)
{
    return a->depth == b->depth && a->present == b->present && a->zero == b->zero &&
           a->data == b->data && a->has_offset == b->has_offset &&
           (!a->has_offset || a->offset + a->length == b->offset);
}

static void map_add(struct map *m, const struct mapent *x)
{
    if (m->n && mergeable(&m->e[m->n - 1], x)) {
        m->e[m->n - 1].length += x->length;
        return;
    }
    cr_assert_lt(m->n, 4096);
    m->e[m->n++] = *x;
}

static void our_map(qcow2_image *img, struct map *m)
{
    uint64_t size = qcow2_image_size(img);

    m->n = 0;
    for (uint64_t off = 0; off < size;) {
        qcow2_extent e = bs(img, NULL, off, size - off);
        struct mapent x = {
            .start = off,
            .length = e.length,
            .offset = e.host_off,
            .depth = e.depth,
            .present = (e.flags & QCOW2_EXT_PRESENT) != 0,
            .zero = (e.flags & QCOW2_EXT_ZERO) != 0,
            .data = (e.flags & QCOW2_EXT_DATA) != 0,
            .has_offset = (e.flags & QCOW2_EXT_OFFSET_VALID) != 0,
        };
        if (!x.has_offset)
            x.offset = 0;
        map_add(m, &x);
        off += e.length;
    }
}

static uint64_t json_u64(const char *obj, const char *key, bool *found)
{
    char k[32];
    const char *p;

    snprintf(k, sizeof(k), "\"%s\":", key);
    p = strstr(obj, k);
    if (found)
        *found = p != NULL && p < strchr(obj, '}');
    if (!p || p > strchr(obj, '}'))
        return 0;
    return strtoull(p + strlen(k), NULL, 10);
}

static bool json_bool(const char *obj, const char *key)
{
    char k[32];
    const char *p;

    snprintf(k, sizeof(k), "\"%s\":", key);
    p = strstr(obj, k);
    cr_assert(p && p < strchr(obj, '}'), "no %s in %.80s", key, obj);
    p += strlen(k);
    while (*p == ' ')
        p++;
    return strncmp(p, "true", 4) == 0;
}

static void qemu_map(const char *path, struct map *m)
{
    static char out[1 << 20];
    const char *p = out;

    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img map --output=json '%s'", path), 0, "%s", out);
    m->n = 0;
    while ((p = strchr(p, '{')) != NULL) {
        struct mapent x;
        x.start = json_u64(p, "start", NULL);
        x.length = json_u64(p, "length", NULL);
        x.depth = (unsigned)json_u64(p, "depth", NULL);
        x.present = json_bool(p, "present");
        x.zero = json_bool(p, "zero");
        x.data = json_bool(p, "data");
        x.offset = json_u64(p, "offset", &x.has_offset);
        cr_assert_lt(m->n, 4096);
        m->e[m->n++] = x;
        p++;
    }
}

static void assert_map_matches_qemu(const char *path)
{
    static struct map ours, theirs;
    qcow2_image *img;

    qemu_map(path, &theirs);
    cr_assert_eq(qcow2_image_open(&img, path, NULL), 0, "%s", rfx_msg());
    our_map(img, &ours);
    qcow2_image_close(img);
    for (size_t i = 0; i < ours.n && i < theirs.n; i++) {
        const struct mapent *a = &ours.e[i], *b = &theirs.e[i];
        cr_assert(a->start == b->start && a->length == b->length && a->depth == b->depth &&
                      a->present == b->present && a->zero == b->zero && a->data == b->data &&
                      a->has_offset == b->has_offset && a->offset == b->offset,
                  "%s entry %zu:\n ours  start %" PRIu64 " len %" PRIu64 " depth %u p%d z%d d%d "
                  "off %s%" PRIu64 "\n qemu  start %" PRIu64 " len %" PRIu64 " depth %u p%d z%d d%d "
                  "off %s%" PRIu64,
                  path, i, a->start, a->length, a->depth, a->present, a->zero, a->data,
                  a->has_offset ? "" : "-", a->offset, b->start, b->length, b->depth, b->present,
                  b->zero, b->data, b->has_offset ? "" : "-", b->offset);
    }
    cr_assert_eq(ours.n, theirs.n, "%s: %zu entries, qemu-img map has %zu", path, ours.n,
                 theirs.n);
}

static char qdir[64];

static void qsh(const char *cmd)
{
    char out[4096];

    cr_assert_eq(qo_sh(out, sizeof(out), "cd '%s' && %s", qdir, cmd), 0, "%s\n%s", cmd, out);
}

static const char *qpath(const char *name)
{
    static char buf[8][160];
    static unsigned k;
    char *p = buf[k++ % 8];

    snprintf(p, 160, "%s/%s", qdir, name);
    return p;
}

/* Runs after the suite's setup (Criterion runs both). */
static void qemu_setup(void)
{
    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(qo_mkdtemp(qdir, sizeof(qdir), "read"), 0);
}

static void qemu_teardown(void)
{
    if (qdir[0])
        qo_rmtree(qdir);
}

Test(read, map_matches_qemu_img_over_raw_backing_with_holes, .init = qemu_setup,
     .fini = qemu_teardown)
{
    qsh("qemu-img create -q -f raw b.raw 1M && "
              "qemu-io -f raw -c 'write -P 1 0 64k' -c 'write -P 9 700k 4k' b.raw && "
              "qemu-img create -q -f qcow2 -b b.raw -F raw t.qcow2 2M && "
              "qemu-io -c 'write -P 2 64k 64k' -c 'write -z 192k 64k' "
              "-c 'write -c -P 3 320k 64k' -c 'write -P 4 1500k 10k' t.qcow2");
    assert_map_matches_qemu(qpath("t.qcow2"));
}

Test(read, map_matches_qemu_img_over_a_qcow2_chain_with_subclusters, .init = qemu_setup,
     .fini = qemu_teardown)
{
    qsh("qemu-img create -q -f qcow2 -o cluster_size=4k,compat=0.10 b.qcow2 1M && "
              "qemu-io -c 'write -P 5 0 300k' -c 'write -P 6 600k 100k' b.qcow2 && "
              "qemu-img create -q -f qcow2 -o cluster_size=512 -b b.qcow2 -F qcow2 m.qcow2 && "
              "qemu-io -c 'write -P 7 4k 3k' -c 'write -z 256k 64k' -c 'discard 620k 8k' m.qcow2 && "
              "qemu-img create -q -f qcow2 -o extended_l2=on -b m.qcow2 -F qcow2 t.qcow2 1536k && "
              "qemu-io -c 'write -P 8 4k 2k' -c 'write -z 64k 4k' -c 'write -z 130k 60k' "
              "-c 'discard 128k 64k' -c 'write -P 9 700k 70k' -c 'write -c -P 1 1408k 64k' "
              "t.qcow2");
    assert_map_matches_qemu(qpath("b.qcow2"));
    assert_map_matches_qemu(qpath("m.qcow2"));
    assert_map_matches_qemu(qpath("t.qcow2"));
}

Test(read, map_matches_qemu_img_for_metadata_preallocation, .init = qemu_setup,
     .fini = qemu_teardown)
{
    qsh("qemu-img create -q -f qcow2 -o preallocation=metadata p.qcow2 3M && "
              "qemu-io -c 'write -P 1 100k 8k' -c 'write -P 2 2M 64k' p.qcow2 && "
              "qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=4k p4.qcow2 1M");
    assert_map_matches_qemu(qpath("p.qcow2"));
    assert_map_matches_qemu(qpath("p4.qcow2"));
}

Test(read, holes_inside_data_clusters_are_data_unless_preallocated, .init = qemu_setup,
     .fini = qemu_teardown)
{
    /* A normal image whose data cluster has had its bytes punched out of the file. */
    qsh("qemu-img create -q -f qcow2 n.qcow2 4M && "
              "qemu-io -c 'write -P 1 0 1M' n.qcow2 && "
              "fallocate -p -o 458752 -l 131072 n.qcow2");
    assert_map_matches_qemu(qpath("n.qcow2"));
}

Test(read, qemu_made_chain_reads_like_qemu_img_convert, .init = qemu_setup,
     .fini = qemu_teardown)
{
    uint8_t *want, *got;
    size_t len;
    qcow2_image *img;

    qsh("qemu-img create -q -f raw b.raw 700k && "
              "qemu-io -f raw -c 'write -P 1 0 700k' b.raw && "
              "qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on "
              "-b b.raw -F raw t.qcow2 1M && "
              "qemu-io -c 'write -P 2 5k 1k' -c 'write -z 100k 40k' -c 'write -c -P 3 256k 64k' "
              "-c 'write -P 4 690k 20k' t.qcow2 && qemu-img convert -O raw t.qcow2 out.raw");
    want = qo_read_file(qpath("out.raw"), &len);
    cr_assert_not_null(want);
    cr_assert_eq(qcow2_image_open(&img, qpath("t.qcow2"), NULL), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_size(img), len);
    got = malloc(len);
    cr_assert_eq(qcow2_image_read(img, got, len, 0), 0, "%s", rfx_msg());
    for (size_t i = 0; i < len; i++)
        cr_assert_eq(got[i], want[i], "byte 0x%zx", i);
    qcow2_image_close(img);
    free(want);
    free(got);
}

/* ---- the chain map ------------------------------------------------------------------ */

static uint64_t chain_seed; /* the random chain being tested, for messages (0: none) */

/* Every read through the map equals the plain walk (and the model, where it is known). */
static void map_vs_walk(qcow2_image *img, const uint8_t *model, uint64_t *seed, int reads)
{
    uint64_t size = qcow2_image_size(img);
    uint8_t *a = malloc(256 * KiB), *b = malloc(256 * KiB);

    for (int n = 0; n < reads; n++) {
        uint64_t off, len;
        *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
        off = (*seed >> 20) % size;
        len = 1 + (*seed >> 7) % qcow2__min(size - off, 256 * KiB);
        cr_assert_eq(qcow2_image_read(img, a, len, off), 0, "%s", rfx_msg());
        cr_assert_eq(qcow2__read_walk(img, b, len, off), 0, "%s", rfx_msg());
        cr_assert_eq(memcmp(a, b, len), 0,
                     "map and walk differ: %" PRIu64 " at 0x%" PRIx64 " (seed %" PRIu64 ")", len,
                     off, chain_seed);
        if (model)
            cr_assert_eq(memcmp(a, model + off, len), 0, "model differs: %" PRIu64 " at 0x%" PRIx64,
                         len, off);
    }
    free(a);
    free(b);
}

/* The model becomes what the walk reads (after operations whose result it does not predict). */
static void model_from_walk(qcow2_image *img, uint8_t *model)
{
    cr_assert_eq(qcow2__read_walk(img, model, qcow2_image_size(img), 0), 0, "%s", rfx_msg());
}

Test(read, chain_map_matches_the_walk_through_writes_snapshots_and_layer_operations)
{
    const uint64_t size = 4 * MiB;
    uint8_t *model = calloc(1, size), *base = malloc(3 * MiB), *b = malloc(256 * KiB);
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_commit_opts co = QCOW2_COMMIT_OPTS_INIT;
    qcow2_image *img;
    uint64_t s = 99;

    /* raw base shorter than the top; 4 KiB v2, 64 KiB extended L2, 512 B and 64 KiB layers. */
    rfx_random(11, base, 3 * MiB);
    memset(base + 1 * MiB, 0, 512 * KiB);
    cr_assert_eq(memfs_put(fs, "/m/base.raw", base, 3 * MiB), 0);
    memcpy(model, base, 3 * MiB);
    create_over("/m/l1.qcow2", size, 4096, 2, false, "base.raw", "raw");
    wr("/m/l1.qcow2", model, 100 * KiB, 300 * KiB, 12);
    wr("/m/l1.qcow2", model, 3 * MiB + 4096, 64 * KiB, 13);
    create_over("/m/l2.qcow2", size, 65536, 3, true, "l1.qcow2", "qcow2");
    wr("/m/l2.qcow2", model, 200 * KiB + 2048, 6144, 14);
    wr("/m/l2.qcow2", model, 2 * MiB, 200 * KiB, 15);
    zr("/m/l2.qcow2", model, 150 * KiB, 64 * KiB, 0);
    create_over("/m/l3.qcow2", size, 512, 3, false, "l2.qcow2", "qcow2");
    wr("/m/l3.qcow2", model, 1 * MiB + 100, 5000, 16);
    cr_assert_eq(rfx_compressed(fs, "/m/l3.qcow2", 2 * MiB + 512, 512, 0x5a), 0, "%s", rfx_msg());
    for (int i = 0; i < 512; i++)
        model[2 * MiB + 512 + i] = (uint8_t)(0x5a + (i / 100) % 7); /* rfx_compressed's bytes */
    create_over("/m/top.qcow2", size, 65536, 3, false, "l3.qcow2", "qcow2");
    wr("/m/top.qcow2", model, 3 * MiB - 1000, 70 * KiB, 17);

    o.flags = QCOW2_OPEN_RDWR;
    cr_assert_eq(rfx_open_opts(fs, "/m/top.qcow2", &o, &img), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_chain_length(img), 5);
    assert_reads_model(img, model, size);
    cr_assert_not_null(img->cmap, "a five-layer chain reads through its map");

    /* Guest writes, zeroes and discards on the top, each followed by reads. */
    for (int op = 0; op < 300; op++) {
        uint64_t off, len, kind;
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        kind = (s >> 60) % 4;
        off = (s >> 16) % size;
        len = 1 + (s >> 40) % qcow2__min(size - off, 200 * KiB);
        if (kind <= 1) {
            rfx_random(s, b, (size_t)qcow2__min(len, 256 * KiB));
            cr_assert_eq(qcow2_image_write(img, b, (size_t)len, off), 0, "%s", rfx_msg());
            memcpy(model + off, b, (size_t)len);
        } else if (kind == 2) {
            cr_assert_eq(qcow2_image_write_zeroes(img, off, len, (s & 1) ? QCOW2_ZERO_MAY_UNMAP : 0),
                         0, "%s", rfx_msg());
            memset(model + off, 0, (size_t)len);
        } else {
            cr_assert_eq(qcow2_image_discard(img, off, len), 0, "%s", rfx_msg());
            model_from_walk(img, model);
        }
        map_vs_walk(img, model, &s, 3);
    }
    assert_reads_model(img, model, size);

    /* An internal snapshot, a change, and back: the whole mapping of the top changes. */
    cr_assert_eq(qcow2_snapshot_create(img, "s1", NULL), 0, "%s", rfx_msg());
    {
        uint8_t *saved = malloc(size);
        memcpy(saved, model, size);
        rfx_random(18, b, 256 * KiB);
        cr_assert_eq(qcow2_image_write(img, b, 256 * KiB, 1 * MiB), 0, "%s", rfx_msg());
        memcpy(model + 1 * MiB, b, 256 * KiB);
        map_vs_walk(img, model, &s, 20);
        cr_assert_eq(qcow2_snapshot_apply(img, "s1"), 0, "%s", rfx_msg());
        memcpy(model, saved, size);
        map_vs_walk(img, model, &s, 40);
        free(saved);
    }

    cr_assert_eq(qcow2_snapshot_delete(img, "s1"), 0, "%s", rfx_msg());
    map_vs_walk(img, model, &s, 20);

    /* The chain changes shape: commit into l2 (l3 leaves the chain), then stream from l1. */
    co.base = qcow2_image_backing(qcow2_image_backing(img)); /* l2 */
    cr_assert_eq(qcow2_image_commit(img, &co), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_chain_length(img), 4);
    map_vs_walk(img, model, &s, 40);
    cr_assert_eq(qcow2_image_stream(img, qcow2_image_backing(qcow2_image_backing(img)), NULL, NULL),
                 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_chain_length(img), 3);
    map_vs_walk(img, model, &s, 40);
    assert_reads_model(img, model, size);
    /* Emptied, the top shows its backing chain; an unsafe rebase then changes only the link. */
    cr_assert_eq(qcow2_image_make_empty(img), 0, "%s", rfx_msg());
    model_from_walk(img, model);
    cr_assert_eq(memcmp(model + 100 * KiB, base + 100 * KiB, 300 * KiB) != 0, 1, "l1 shows");
    map_vs_walk(img, model, &s, 40);
    cr_assert_eq(qcow2_image_rebase(img, "l2.qcow2", "qcow2", true, NULL, NULL), 0, "%s",
                 rfx_msg());
    cr_assert_eq(qcow2_image_chain_length(img), 4);
    model_from_walk(img, model);
    map_vs_walk(img, model, &s, 60);
    cr_assert_eq(qcow2_image_rebase(img, "base.raw", "raw", true, NULL, NULL), 0, "%s",
                 rfx_msg());
    model_from_walk(img, model);
    cr_assert_eq(memcmp(model + 100 * KiB, base + 100 * KiB, 300 * KiB), 0, "base shows");
    map_vs_walk(img, model, &s, 60);
    qcow2_image_close(img);
    free(model);
    free(base);
    free(b);
}

Test(read, chain_map_reads_around_a_damaged_table_in_a_lower_layer_as_the_walk_does)
{
    const uint64_t size = 1 * MiB;
    uint8_t *base = malloc(size), *a = malloc(64 * KiB), *b = malloc(64 * KiB);
    qcow2_image *img;
    uint64_t l1_off;

    rfx_random(21, base, size);
    cr_assert_eq(memfs_put(fs, "/m/base.raw", base, size), 0);
    create_over("/m/mid.qcow2", size, 512, 3, false, "base.raw", "raw");
    for (uint64_t off = 0; off < size; off += 64 * KiB)
        wr("/m/mid.qcow2", NULL, off + 1000, 3000, off + 1);
    create_over("/m/top.qcow2", size, 65536, 3, false, "mid.qcow2", "qcow2");
    wr("/m/top.qcow2", NULL, 900 * KiB, 4096, 2);
    /*
     * mid's L2 table for [160 KiB, 192 KiB) (512-byte clusters: 32 KiB per
     * table) is garbage: a cluster of 0xff bytes (compressed descriptors
     * that point past the end of the file).
     */
    {
        uint8_t ff[512];
        size_t len;

        memset(ff, 0xff, sizeof(ff));
        memfs_get(fs, "/m/mid.qcow2", &len);
        len = (len + 511) & ~(size_t)511;
        rfx_resize(fs, "/m/mid.qcow2", len + 512);
        rfx_poke(fs, "/m/mid.qcow2", len, ff, sizeof(ff));
        l1_off = rfx_peek64(fs, "/m/mid.qcow2", 40);
        rfx_poke64(fs, "/m/mid.qcow2", l1_off + 5 * 8, len);
    }
    img = open_top("/m/top.qcow2");
    /* The block that cannot be built is not this read's failure: the last error stays. */
    cr_assert_eq(qcow2_image_read(img, a, 1, size), QCOW2_EINVAL);
    cr_assert_eq(qcow2_image_read(img, a, 16 * KiB, 300 * KiB), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_error_last()->code, QCOW2_EINVAL, "%s", rfx_msg());
    cr_assert_eq(qcow2__read_walk(img, b, 16 * KiB, 300 * KiB), 0, "%s", rfx_msg());
    cr_assert_eq(memcmp(a, b, 16 * KiB), 0);
    cr_assert_eq(qcow2_image_read(img, a, 4 * KiB, 170 * KiB), QCOW2_ECORRUPT);
    assert_msg("mid.qcow2", "L2 table");
    cr_assert_eq(qcow2__read_walk(img, b, 4 * KiB, 170 * KiB), QCOW2_ECORRUPT);
    cr_assert_eq(qcow2_image_read(img, a, 64 * KiB, 0), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2__read_walk(img, b, 64 * KiB, 0), 0, "%s", rfx_msg());
    cr_assert_eq(memcmp(a, b, 64 * KiB), 0);
    qcow2_image_close(img);
    free(base);
    free(a);
    free(b);
}

/* ---- the chain map against the walk on random chains ---------------------------- */

/* A middle layer shorter than the start of a map block: the block's units stay unset. */
Test(read, chain_map_zeroes_past_a_backing_file_that_ends_before_a_map_block)
{
    const uint64_t size = 4 * MiB;
    uint8_t *a = malloc(64 * KiB), *b = malloc(64 * KiB), *model = calloc(1, size);
    qcow2_image *img;

    create_over("/m/small.qcow2", 1 * MiB, 65536, 3, false, NULL, NULL);
    wr("/m/small.qcow2", model, 0, 64 * KiB, 1);
    create_over("/m/mid.qcow2", size, 512, 3, false, "small.qcow2", "qcow2");
    create_over("/m/top.qcow2", size, 65536, 3, false, "mid.qcow2", "qcow2");
    img = open_top("/m/top.qcow2");
    cr_assert_eq(qcow2__read_walk(img, b, 64 * KiB, 3 * MiB), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_read(img, a, 64 * KiB, 3 * MiB), 0, "%s", rfx_msg());
    cr_assert_eq(memcmp(a, b, 64 * KiB), 0, "map and walk differ");
    qcow2_image_close(img);
    free(a);
    free(b);
    free(model);
}

static uint64_t rv(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 17;
}

static void cmp_layers(qcow2_image *top, uint64_t *s, int reads)
{
    uint8_t *a, *b;
    for (qcow2_image *l = top; l && l->backing && l->backing->backing; l = l->backing) {
        uint64_t size = qcow2_image_size(l);
        map_vs_walk(l, NULL, s, reads);
        /* whole image and the last bytes */
        a = malloc(size);
        b = malloc(size);
        cr_assert_eq(qcow2_image_read(l, a, size, 0), 0, "%s", rfx_msg());
        cr_assert_eq(qcow2__read_walk(l, b, size, 0), 0, "%s", rfx_msg());
        for (uint64_t i = 0; i < size; i++)
            cr_assert_eq(a[i], b[i],
                         "whole: map and walk differ at 0x%" PRIx64 " (layer %s, size %" PRIu64
                         ", seed %" PRIu64 ")",
                         i, l->name, size, chain_seed);
        free(a);
        free(b);
    }
}

static uint64_t rsize(uint64_t *s)
{
    return (512 + rv(s) % (4 * MiB / 512)) * 512;
}

static void random_ops(qcow2_image *img, uint64_t *s, int n, bool comp)
{
    uint8_t *b = malloc(300 * KiB);
    uint64_t size = qcow2_image_size(img);
    uint32_t cs = qcow2_image_cluster_size(img);
    for (int i = 0; i < n; i++) {
        uint64_t k = rv(s) % 10, off = rv(s) % size,
                 len = 1 + rv(s) % qcow2__min(size - off, 256 * KiB);
        int rc;
        if (k <= 4) {
            rfx_random(rv(s), b, len);
            rc = qcow2_image_write(img, b, len, off);
        } else if (k <= 6) {
            rc = qcow2_image_write_zeroes(img, off, len, (rv(s) & 1) ? QCOW2_ZERO_MAY_UNMAP : 0);
        } else if (k == 7) {
            rc = qcow2_image_discard(img, off, len);
        } else if (comp && qcow2_image_format(img) == QCOW2_FORMAT_QCOW2) {
            off &= ~(uint64_t)(cs - 1);
            len = qcow2__min(size - off, (1 + rv(s) % 3) * (uint64_t)cs);
            if (len % cs && off + len != size)
                len -= len % cs;
            if (!len)
                continue;
            if (len > 300 * KiB)
                len = (300 * KiB) / cs * cs;
            if (!len)
                continue;
            rfx_random(rv(s) | 1, b, len);
            memset(b, 0x11, len / 2); /* compressible */
            rc = qcow2_image_write_compressed(img, b, len, off);
        } else {
            rfx_random(rv(s), b, len);
            rc = qcow2_image_write(img, b, len, off);
        }
        cr_assert_eq(rc, 0, "op %d kind %" PRIu64 " off %" PRIu64 " len %" PRIu64 ": %s", i, k, off,
                     len, rfx_msg());
    }
    free(b);
}

static const uint32_t fz_cs[] = {512, 1024, 4096, 16384, 65536, 131072};

static void fuzz_chain(uint64_t seed)
{
    uint64_t s = seed;
    unsigned nl = 3 + rv(&s) % 4;
    char name[64], prev[64] = "";
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;
    bool prev_raw = false;

    for (unsigned i = 0; i < nl; i++) {
        uint64_t size = rsize(&s);
        snprintf(name, sizeof name, "/m/l%u.img", i);
        if (i == 0 && rv(&s) % 3 == 0) {
            uint8_t *d = malloc(size);
            rfx_random(rv(&s), d, size);
            memset(d + size / 3, 0, size / 4);
            cr_assert_eq(memfs_put(fs, name, d, size - (rv(&s) % 2) * 300), 0);
            free(d);
            prev_raw = true;
        } else {
            uint32_t cs = fz_cs[rv(&s) % 6];
            unsigned ver = (rv(&s) % 4 == 0) ? 2 : 3;
            bool ext = ver == 3 && cs >= 16384 && rv(&s) % 2;
            create_over(name, size, cs, ver, ext, i ? strrchr(prev, '/') + 1 : NULL,
                        i ? (prev_raw ? "raw" : "qcow2") : NULL);
            prev_raw = false;
            o.flags = QCOW2_OPEN_RDWR | QCOW2_OPEN_NO_BACKING;
            cr_assert_eq(rfx_open_opts(fs, name, &o, &img), 0, "%s", rfx_msg());
            random_ops(img, &s, 15, true);
            if (rv(&s) % 3 == 0)
                cr_assert_eq(qcow2_snapshot_create(img, "x", NULL), 0, "%s", rfx_msg());
            random_ops(img, &s, 5, false);
            qcow2_image_close(img);
        }
        strcpy(prev, name);
    }
    o.flags = QCOW2_OPEN_RDWR;
    cr_assert_eq(rfx_open_opts(fs, name, &o, &img), 0, "%s", rfx_msg());
    cmp_layers(img, &s, 10);
    for (int step = 0; step < 40; step++) {
        uint64_t k = rv(&s) % 20;
        size_t fidx;
        int rc = 0;
        if (k < 12) {
            random_ops(img, &s, 3, true);
        } else if (k == 12) {
            uint64_t ns = rsize(&s);
            if (img->nb_snaps == 0)
                rc = qcow2_image_resize(img, ns, true);
            else if (ns > img->size)
                rc = qcow2_image_resize(img, ns, false);
        } else if (k == 13) {
            if (qcow2_snapshot_find(img, "t", &fidx) == 0)
                rc = qcow2_snapshot_apply(img, "t");
            else
                rc = qcow2_snapshot_create(img, "t", NULL);
        } else if (k == 14) {
            if (qcow2_snapshot_find(img, "t", &fidx) == 0)
                rc = qcow2_snapshot_delete(img, "t");
        } else if (k == 15) {
            qcow2_commit_opts co = QCOW2_COMMIT_OPTS_INIT;
            co.keep_top = true;
            rc = qcow2_image_commit(img, &co);
        } else if (k == 16) {
            /* commit an intermediate layer into its backing (drops nothing when adjacent) */
            qcow2_image *mid = img->backing;
            if (mid && mid->backing && mid->backing->backing && mid->fmt == QCOW2_FORMAT_QCOW2 &&
                !mid->nb_snaps) {
                qcow2_commit_opts co = QCOW2_COMMIT_OPTS_INIT;
                co.base = mid->backing->backing;
                rc = qcow2_image_commit(mid, &co);
            }
        } else if (k == 17) {
            qcow2_image *base = img->backing ? img->backing->backing : NULL;
            if (base)
                rc = qcow2_image_stream(img, base, NULL, NULL);
        } else if (k == 18) {
            /* read from the intermediate layers only */
            cmp_layers(img->backing, &s, 10);
        } else {
            qcow2_image *mid = img->backing;
            /* write to an intermediate layer left writable by a commit */
            if (mid && mid->state == QCOW2__OPEN_RW)
                random_ops(mid, &s, 3, false);
        }
        cr_assert_eq(rc, 0, "seed %" PRIu64 " step %d kind %" PRIu64 ": %s", seed, step, k,
                     rfx_msg());
        cmp_layers(img, &s, 6);
    }
    qcow2_image_close(img);
}

/*
 * Random chains of 3-6 layers (raw or qcow2 bottom, odd sizes, 512 B-128 KiB
 * clusters, v2/v3, extended L2, internal snapshots in lower layers), then 40
 * random steps on the top (writes, zeroes, discards, compressed writes,
 * resize, snapshots, commits, stream, writes to a layer a commit left
 * writable); after each, every layer with two or more below reads the same
 * through its map as through the walk. CHAIN_SEEDS=N (default 20) and
 * CHAIN_FIRST=K run other seeds.
 */
Test(read, chain_map_matches_the_walk_on_random_chains, .timeout = 600)
{
    const char *e = getenv("CHAIN_FIRST");
    uint64_t first = e ? strtoull(e, NULL, 0) : 1,
             n = getenv("CHAIN_SEEDS") ? strtoull(getenv("CHAIN_SEEDS"), NULL, 0) : 20;
    for (uint64_t seed = first; seed < first + n; seed++) {
        memfs_free(fs);
        fs = memfs_new();
        chain_seed = seed;
        fuzz_chain(seed);
    }
}
