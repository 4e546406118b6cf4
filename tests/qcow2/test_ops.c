/*
 * Tests for qcow2/ops.c: digest (xxh3-128 of the record stream that
 * docs/DIGEST.md defines over the guest content, zero runs hashed by their
 * length without being read), compare (identical, first mismatch, size
 * mismatch with and without strict mode), convert to raw (sparse or not) and
 * to qcow2 (plain, compressed, over a backing file), and measure. Fixtures
 * live in a memfs where the answer can be computed; qemu-img is the oracle
 * for digest-of-convert, compare exit statuses and offsets, convert bytes
 * and measure figures.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "io_fault.h"
#include "digest_model.h"
#include "qcow2_int.h"
#include "qemu_oracle.h"
#include "reader_fixture.h"

#define KiB 1024ull
#define MiB (1024ull * 1024ull)

static memfs *fs;
static char qdir[64];

static void setup(void)
{
    fs = memfs_new();
    cr_assert_not_null(fs);
    qdir[0] = '\0';
}

static void teardown(void)
{
    if (qdir[0])
        qo_rmtree(qdir);
    memfs_free(fs);
}

TestSuite(ops, .init = setup, .fini = teardown, .timeout = 60);

#define assert_msg(...)                                                                            \
    cr_assert(rfx_has_all(rfx_msg(), __VA_ARGS__, (const char *)NULL), "message: %s", rfx_msg())

/* A temp dir for qemu-img work (skips the test without qemu). */
static void need_qemu(void)
{
    if (!qo_have_qemu())
        cr_skip_test("qemu-img not installed");
    cr_assert_eq(qo_mkdtemp(qdir, sizeof(qdir), "ops"), 0);
}

static const char *qpath(const char *name)
{
    static char buf[8][160];
    static unsigned k;
    char *p = buf[k++ % 8];

    snprintf(p, 160, "%s/%s", qdir, name);
    return p;
}

static void qsh(const char *cmd)
{
    char out[4096];

    cr_assert_eq(qo_sh(out, sizeof(out), "cd '%s' && %s", qdir, cmd), 0, "%s\n%s", cmd, out);
}

static qcow2_image *popen_img(const char *path)
{
    qcow2_image *img;

    cr_assert_eq(qcow2_image_open(&img, path, NULL), 0, "%s: %s", path, rfx_msg());
    return img;
}

static qcow2_image *mopen(const char *path)
{
    qcow2_image *img;

    cr_assert_eq(rfx_open(fs, path, 0, 0, &img), 0, "%s: %s", path, rfx_msg());
    return img;
}

/* A memfs qcow2 image with data, zero, compressed and unallocated ranges over a raw backing file. */
static void mixed_image(const char *path, uint64_t size)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    uint8_t *b = malloc(size / 2);

    rfx_random(77, b, size / 2);
    cr_assert_eq(memfs_put(fs, "/m/base.raw", b, size / 2), 0);
    free(b);
    co.size = size;
    co.backing_file = "base.raw";
    co.backing_format = "raw";
    cr_assert_eq(rfx_create(fs, path, &co), 0, "%s", rfx_msg());
    cr_assert_eq(rfx_fill(fs, path, 10 * KiB, 100 * KiB, 0x42), 0);
    cr_assert_eq(rfx_zero(fs, path, 256 * KiB, 128 * KiB, QCOW2_ZERO_MAY_UNMAP), 0);
    cr_assert_eq(rfx_compressed(fs, path, 512 * KiB, 128 * KiB, 9), 0);
    cr_assert_eq(rfx_fill(fs, path, size - 70 * KiB, 50 * KiB, 0x99), 0);
}

static void content(qcow2_image *img, uint8_t **out)
{
    uint64_t size = qcow2_image_size(img);

    *out = malloc(size ? size : 1);
    cr_assert_eq(qcow2_image_read(img, *out, size, 0), 0, "%s", rfx_msg());
}

/* ---- digest ------------------------------------------------------------------------ */

static void progress_check(uint64_t done, uint64_t total, void *payload)
{
    uint64_t *last = payload;

    cr_assert_geq(done, last[0], "progress went backwards");
    cr_assert_leq(done, total);
    last[0] = done;
    last[1] = total;
    last[2]++;
}

Test(ops, digest_is_xxh3_128_of_the_record_stream_of_the_guest_content)
{
    const uint64_t size = 2 * MiB;
    qcow2_image *img;
    uint8_t *data, want[16], got[16];
    uint64_t prog[3] = {0, 0, 0};

    mixed_image("/m/t.qcow2", size);
    img = mopen("/m/t.qcow2");
    content(img, &data);
    dm_image_digest(data, size, want);
    cr_assert_eq(qcow2_image_digest(img, got, progress_check, prog), 0, "%s", rfx_msg());
    cr_assert_eq(memcmp(got, want, 16), 0, "digest differs from the definition's record stream");
    cr_assert_eq(prog[0], size);
    cr_assert_eq(prog[1], size);
    cr_assert_gt(prog[2], 1);
    /* One byte more changes it. */
    qcow2_image_close(img);
    cr_assert_eq(rfx_fill(fs, "/m/t.qcow2", 1 * MiB + 3, 1, 1), 0);
    img = mopen("/m/t.qcow2");
    cr_assert_eq(qcow2_image_digest(img, got, NULL, NULL), 0);
    cr_assert_neq(memcmp(got, want, 16), 0);
    qcow2_image_close(img);
    free(data);
}

Test(ops, digest_of_empty_and_zero_images_reads_no_data)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;
    const uint64_t size = 256 * MiB;
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;
    qcow2_io *inner;
    io_fault *f;
    uint8_t got[16], want[16], run[16], trailer[40] = "QSNAPDG2";

    co.size = size;
    cr_assert_eq(rfx_create(fs, "/m/z.qcow2", &co), 0);
    cr_assert_eq(rfx_zero(fs, "/m/z.qcow2", 64 * MiB, 64 * MiB, QCOW2_ZERO_MAY_UNMAP), 0);
    /* No data block: the stream is the trailer alone, with one zero run (0, size). */
    dm_put_be64(run, 0);
    dm_put_be64(run + 8, size);
    dm_put_be64(trailer + 8, size);
    dm_put_be64(trailer + 16, 1);
    dm_xxh128_be(run, 16, trailer + 24);
    dm_xxh128_be(trailer, sizeof(trailer), want);

    cr_assert_eq(memfs_open(&inner, "/m/z.qcow2", 0, fs), 0);
    f = io_fault_new(inner);
    cr_assert_eq(qcow2_image_open_io(&img, io_fault_io(f), "/m/z.qcow2", &o), 0);
    io_fault_reset_counts(f);
    cr_assert_eq(qcow2_image_digest(img, got, NULL, NULL), 0, "%s", rfx_msg());
    cr_assert_eq(memcmp(got, want, 16), 0);
    /* Only the one L2 table is read, never a data byte. */
    cr_assert_leq(io_fault_count(f, IO_FAULT_PREAD), 1, "%llu reads",
                  (unsigned long long)io_fault_count(f, IO_FAULT_PREAD));
    qcow2_image_close(img);
    io_fault_free(f);
    qcow2_io_close(inner);
}

Test(ops, digest_of_an_image_equals_digest_of_its_qemu_img_raw_conversion)
{
    qcow2_image *a, *b;
    uint8_t da[16], db[16];

    need_qemu();
    qsh("qemu-img create -q -f raw b.raw 1M && qemu-io -f raw -c 'write -P 1 0 512k' b.raw && "
        "qemu-img create -q -f qcow2 -o extended_l2=on,compression_type=zstd -b b.raw -F raw "
        "t.qcow2 3M && qemu-io -c 'write -P 2 5k 3k' -c 'write -z 100k 100k' "
        "-c 'write -c -P 3 1M 128k' -c 'write -P 4 2900k 100k' t.qcow2 && "
        "qemu-img convert -O raw t.qcow2 t.raw");
    a = popen_img(qpath("t.qcow2"));
    b = popen_img(qpath("t.raw"));
    cr_assert_eq(qcow2_image_format(b), QCOW2_FORMAT_RAW);
    cr_assert_eq(qcow2_image_digest(a, da, NULL, NULL), 0, "%s", rfx_msg());
    cr_assert_eq(qcow2_image_digest(b, db, NULL, NULL), 0, "%s", rfx_msg());
    cr_assert_eq(memcmp(da, db, 16), 0);
    qcow2_image_close(a);
    qcow2_image_close(b);
}

/* Digest of an image file made by qemu (any format). */
static void qdigest(const char *name, uint8_t out[16])
{
    qcow2_image *img = popen_img(qpath(name));

    cr_assert_eq(qcow2_image_digest(img, out, NULL, NULL), 0, "%s: %s", name, rfx_msg());
    qcow2_image_close(img);
}

Test(ops, digest_is_the_same_for_the_same_content_in_any_layout)
{
    /* One content: data, a zero run written as bytes, as zero clusters and as holes. */
    static const char *const io =
        "-c 'write -P 0x11 0 200k' -c 'write -P 0 200k 300k' -c 'write -P 0x22 1M 4k' "
        "-c 'write -P 0x33 3M 1536' -c 'write -P 0x44 4093k 1k'";
    static const char *const names[] = {"raw.raw",  "holes.qcow2", "zc.qcow2", "comp.qcow2",
                                        "c512.qcow2", "chain.qcow2", "full.raw", "ext.qcow2"};
    uint8_t want[16], got[16];
    char cmd[2048];

    need_qemu();
    snprintf(cmd, sizeof(cmd),
             "qemu-img create -q -f raw raw.raw 4M && qemu-io -f raw %s raw.raw && "
             /* holes: qcow2 with only the data allocated */
             "qemu-img convert -O qcow2 raw.raw holes.qcow2 && "
             /* explicit zero clusters over the whole disk, then the data */
             "qemu-img create -q -f qcow2 zc.qcow2 4M && qemu-io -c 'write -z 0 4M' %s zc.qcow2 && "
             "qemu-io -c 'write -z 2M 1M' zc.qcow2 && "
             "qemu-img convert -c -O qcow2 raw.raw comp.qcow2 && "
             "qemu-img convert -O qcow2 -o cluster_size=512 raw.raw c512.qcow2 && "
             "qemu-img convert -S 0 -O raw raw.raw full.raw && "
             "qemu-img create -q -f qcow2 -o extended_l2=on ext.qcow2 4M && qemu-io %s ext.qcow2",
             io, io, io);
    qsh(cmd);
    /* A 12-deep chain whose layers each add a piece (and zero what was there). */
    qsh("qemu-img create -q -f qcow2 l0.qcow2 4M && qemu-io -c 'write -P 0x44 4093k 1k' "
        "-c 'write -P 9 2M 64k' l0.qcow2 && "
        "for i in 1 2 3 4 5 6 7 8 9 10 11; do qemu-img create -q -f qcow2 -b l$((i-1)).qcow2 "
        "-F qcow2 l$i.qcow2 4M || exit 1; done && "
        "qemu-io -c 'write -P 0x11 0 200k' l3.qcow2 && qemu-io -c 'write -z 2M 64k' l5.qcow2 && "
        "qemu-io -c 'write -P 0x22 1M 4k' l7.qcow2 && qemu-io -c 'write -P 0x33 3M 1536' l9.qcow2 && "
        "qemu-io -c 'write -P 0 200k 300k' l11.qcow2 && cp l11.qcow2 chain.qcow2");
    {
        qcow2_image *img = popen_img(qpath("raw.raw"));
        uint8_t *data;

        content(img, &data);
        dm_image_digest(data, qcow2_image_size(img), want);
        qcow2_image_close(img);
        free(data);
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        qdigest(names[i], got);
        cr_assert_eq(memcmp(got, want, 16), 0, "%s: digest differs for the same content", names[i]);
    }
}

Test(ops, digest_changes_with_one_byte_anywhere)
{
    /* Offsets: first byte, inside data, inside the written-zero run, inside the hole,
     * in a block that data shares with zeroes, the last byte. */
    static const uint64_t at[] = {0, 150 * KiB, 300 * KiB, 2 * MiB + 4097, 1 * MiB + 4096, 4 * MiB - 1};
    uint8_t base[16], got[16];

    need_qemu();
    qsh("qemu-img create -q -f qcow2 t.qcow2 4M && qemu-io -c 'write -P 0x11 1 200k' "
        "-c 'write -z 200k 300k' -c 'write -P 0x22 1M 4k' t.qcow2");
    qdigest("t.qcow2", base);
    for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        char cmd[512];

        for (unsigned v = 1; v <= 2; v++) {
            snprintf(cmd, sizeof(cmd),
                     "cp t.qcow2 u.qcow2 && qemu-io -c 'write -P %u %llu 1' u.qcow2", v,
                     (unsigned long long)at[i]);
            qsh(cmd);
            qdigest("u.qcow2", got);
            cr_assert_neq(memcmp(got, base, 16), 0, "byte %llu set to %u: same digest",
                          (unsigned long long)at[i], v);
        }
    }
    /* A zero run one block longer (same data, data moved) and a longer disk differ too. */
    qsh("qemu-img create -q -f qcow2 v.qcow2 4M && qemu-io -c 'write -P 0x11 1 200k' "
        "-c 'write -P 0x22 1028k 4k' v.qcow2 && cp t.qcow2 w.qcow2 && qemu-img resize -q w.qcow2 5M");
    qdigest("v.qcow2", got);
    cr_assert_neq(memcmp(got, base, 16), 0, "data moved by 4 KiB: same digest");
    qdigest("w.qcow2", got);
    cr_assert_neq(memcmp(got, base, 16), 0, "longer zero tail: same digest");
}

/* ---- compare ----------------------------------------------------------------------- */

static int cmp(const char *pa, const char *pb, bool strict, uint64_t *at)
{
    qcow2_image *a = mopen(pa), *b = mopen(pb);
    int rc = qcow2_image_compare(a, b, strict, at, NULL, NULL);

    qcow2_image_close(a);
    qcow2_image_close(b);
    return rc;
}

/* Flatten a memfs image into a memfs raw file (through read). */
static void flatten(const char *src, const char *dst)
{
    qcow2_image *img = mopen(src);
    uint8_t *data;

    content(img, &data);
    cr_assert_eq(memfs_put(fs, dst, data, qcow2_image_size(img)), 0);
    qcow2_image_close(img);
    free(data);
}

Test(ops, compare_identical_content_in_different_layouts)
{
    uint64_t at = 123;
    uint64_t prog[3] = {0, 0, 0};
    qcow2_image *a, *b;

    mixed_image("/m/t.qcow2", 2 * MiB);
    flatten("/m/t.qcow2", "/m/flat.raw");
    cr_assert_eq(cmp("/m/t.qcow2", "/m/flat.raw", false, &at), 0, "%s", rfx_msg());
    cr_assert_eq(at, 0);
    cr_assert_eq(cmp("/m/flat.raw", "/m/t.qcow2", false, NULL), 0);
    /* Strict mode (qemu-img compare -s) also compares allocation: the layouts differ. */
    cr_assert_eq(cmp("/m/flat.raw", "/m/t.qcow2", true, NULL), 1);
    a = mopen("/m/t.qcow2");
    b = mopen("/m/flat.raw");
    cr_assert_eq(qcow2_image_compare(a, b, false, NULL, progress_check, prog), 0);
    cr_assert_eq(prog[0], 2 * MiB);
    qcow2_image_close(a);
    qcow2_image_close(b);
}

Test(ops, compare_reports_the_sector_of_the_first_difference)
{
    uint64_t at = 0;
    uint8_t x = 0x5c;

    mixed_image("/m/t.qcow2", 2 * MiB);
    flatten("/m/t.qcow2", "/m/flat.raw");
    /* Change a byte in a range that reads as zero (the zeroed clusters). */
    rfx_poke(fs, "/m/flat.raw", 300 * KiB + 777, &x, 1);
    cr_assert_eq(cmp("/m/t.qcow2", "/m/flat.raw", false, &at), 1);
    cr_assert_eq(at, 300 * KiB + 512);
    /* And one inside data, earlier: that one is reported. */
    rfx_poke(fs, "/m/flat.raw", 20 * KiB + 1, &x, 1);
    cr_assert_eq(cmp("/m/flat.raw", "/m/t.qcow2", false, &at), 1);
    cr_assert_eq(at, 20 * KiB);
}

Test(ops, compare_size_mismatch_needs_a_zero_tail_unless_strict)
{
    uint8_t *d = malloc(1 * MiB);
    uint64_t at = 0;

    rfx_random(5, d, 1 * MiB);
    memset(d + 512 * KiB, 0, 512 * KiB);
    cr_assert_eq(memfs_put(fs, "/m/big.raw", d, 1 * MiB), 0);
    cr_assert_eq(memfs_put(fs, "/m/small.raw", d, 512 * KiB), 0);
    cr_assert_eq(cmp("/m/big.raw", "/m/small.raw", false, &at), 0);
    cr_assert_eq(cmp("/m/small.raw", "/m/big.raw", false, &at), 0);
    cr_assert_eq(cmp("/m/small.raw", "/m/big.raw", true, &at), 1);
    cr_assert_eq(at, 512 * KiB);
    d[900 * KiB + 3] = 1;
    cr_assert_eq(memfs_put(fs, "/m/big.raw", d, 1 * MiB), 0);
    cr_assert_eq(cmp("/m/small.raw", "/m/big.raw", false, &at), 1);
    cr_assert_eq(at, 900 * KiB);
    free(d);
}

/* qemu-img compare's status and reported offset ("-1" when none). */
static int qemu_compare(const char *a, const char *b, bool strict, int64_t *at)
{
    char out[4096];
    const char *p;
    int rc = qo_sh(out, sizeof(out), "qemu-img compare %s '%s' '%s'", strict ? "-s" : "", a, b);

    *at = -1;
    p = strstr(out, "mismatch at offset ");
    if (p)
        *at = strtoll(p + strlen("mismatch at offset "), NULL, 10);
    return rc;
}

Test(ops, compare_agrees_with_qemu_img_compare)
{
    static const struct {
        const char *a, *b;
        bool strict;
    } pairs[] = {
        {"t.qcow2", "t.raw", false},  {"t.qcow2", "t.raw", true},   {"t.qcow2", "u.qcow2", false},
        {"u.qcow2", "t.qcow2", false}, {"t.qcow2", "big.qcow2", false}, {"big.qcow2", "t.qcow2", false},
        {"t.qcow2", "big.qcow2", true}, {"t.qcow2", "bigz.qcow2", false}, {"t.qcow2", "v.qcow2", false},
    };

    need_qemu();
    qsh("qemu-img create -q -f qcow2 t.qcow2 2M && "
        "qemu-io -c 'write -P 1 0 64k' -c 'write -c -P 2 1M 64k' -c 'write -z 64k 64k' t.qcow2 && "
        "qemu-img convert -O raw t.qcow2 t.raw && "
        "qemu-img create -q -f qcow2 -b t.qcow2 -F qcow2 u.qcow2 && "
        "qemu-io -c 'write -P 3 1100k 1k' u.qcow2 && "
        "qemu-img create -q -f qcow2 -b t.qcow2 -F qcow2 big.qcow2 4M && "
        "qemu-io -c 'write -P 4 3M 4k' big.qcow2 && "
        "qemu-img create -q -f qcow2 -b t.qcow2 -F qcow2 bigz.qcow2 4M && "
        "qemu-img create -q -f qcow2 -b t.qcow2 -F qcow2 v.qcow2 && "
        "qemu-io -c 'write -z 70k 1k' v.qcow2");
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        qcow2_image *a = popen_img(qpath(pairs[i].a)), *b = popen_img(qpath(pairs[i].b));
        uint64_t at = 0;
        int64_t qat;
        int ours = qcow2_image_compare(a, b, pairs[i].strict, &at, NULL, NULL);
        int theirs;

        qcow2_image_close(a);
        qcow2_image_close(b);
        theirs = qemu_compare(qpath(pairs[i].a), qpath(pairs[i].b), pairs[i].strict, &qat);
        cr_expect_eq(ours, theirs, "%s %s%s: ours %d, qemu-img %d", pairs[i].a, pairs[i].b,
                     pairs[i].strict ? " -s" : "", ours, theirs);
        if (qat >= 0 && ours == 1)
            cr_expect_eq(at, (uint64_t)qat, "%s %s: offset %" PRIu64 ", qemu-img %" PRId64,
                         pairs[i].a, pairs[i].b, at, qat);
    }
}

/* ---- convert ------------------------------------------------------------------------ */

static uint64_t allocated_bytes(const char *path)
{
    struct stat st;

    cr_assert_eq(stat(path, &st), 0);
    return (uint64_t)st.st_blocks * 512;
}

Test(ops, convert_to_raw_is_byte_identical_to_qemu_img_and_sparse)
{
    qcow2_image *img;
    uint8_t *ours, *theirs;
    size_t lo, lt;
    qcow2_convert_opts co = QCOW2_CONVERT_OPTS_INIT;
    uint64_t prog[3] = {0, 0, 0};

    need_qemu();
    qsh("qemu-img create -q -f raw b.raw 1M && qemu-io -f raw -c 'write -P 1 0 300k' b.raw && "
        "qemu-img create -q -f qcow2 -o cluster_size=4k -b b.raw -F raw t.qcow2 32M && "
        "qemu-io -c 'write -P 2 5k 3k' -c 'write -z 100k 100k' -c 'write -c -P 3 1M 128k' "
        "-c 'write -P 0 2M 64k' -c 'write -P 4 31M 77k' t.qcow2 && "
        "qemu-img convert -O raw t.qcow2 q.raw");
    img = popen_img(qpath("t.qcow2"));
    co.progress = progress_check;
    co.payload = prog;
    cr_assert_eq(qcow2_image_convert(img, qpath("o.raw"), &co), 0, "%s", rfx_msg());
    /* As qemu-img convert -p: over the bytes copied (data), not the virtual size. */
    cr_assert_eq(prog[0], prog[1]);
    cr_assert_gt(prog[1], 0);
    cr_assert_lt(prog[1], 32 * MiB);
    ours = qo_read_file(qpath("o.raw"), &lo);
    theirs = qo_read_file(qpath("q.raw"), &lt);
    cr_assert_eq(lo, lt);
    cr_assert_eq(memcmp(ours, theirs, lo), 0);
    /* About 1.6 MiB of data in 32 MiB: the rest must be holes (written zeroes included). */
    cr_assert_lt(allocated_bytes(qpath("o.raw")), 4 * MiB, "%" PRIu64 " bytes allocated",
                 allocated_bytes(qpath("o.raw")));
    /* Without sparseness every byte is written, replacing the existing file. */
    co.min_sparse = 0;
    co.progress = NULL;
    cr_assert_eq(qcow2_image_convert(img, qpath("o.raw"), &co), 0, "%s", rfx_msg());
    cr_assert_geq(allocated_bytes(qpath("o.raw")), 32 * MiB);
    free(ours);
    ours = qo_read_file(qpath("o.raw"), &lo);
    cr_assert_eq(lo, lt);
    cr_assert_eq(memcmp(ours, theirs, lo), 0);
    qcow2_image_close(img);
    free(ours);
    free(theirs);
}

Test(ops, convert_refuses_bad_output_options)
{
    qcow2_convert_opts co = QCOW2_CONVERT_OPTS_INIT;
    qcow2_image *img;

    need_qemu();
    qsh("qemu-img create -q -f qcow2 t.qcow2 1M");
    img = popen_img(qpath("t.qcow2"));
    co.compress = true;
    cr_assert_eq(qcow2_image_convert(img, qpath("o.raw"), &co), QCOW2_EINVAL);
    assert_msg(qpath("o.raw"), "compressed");
    co.compress = false;
    co.format = QCOW2_FORMAT_AUTO;
    cr_assert_eq(qcow2_image_convert(img, qpath("o.raw"), &co), QCOW2_EUNSUPPORTED);
    co.format = QCOW2_FORMAT_QCOW2;
    co.backing = "t.qcow2";
    cr_assert_eq(qcow2_image_convert(img, qpath("o.qcow2"), &co), QCOW2_EINVAL);
    assert_msg("-F");
    co.format = QCOW2_FORMAT_RAW;
    co.backing = NULL;
    cr_assert_eq(qcow2_image_convert(img, "/nonexistent/dir/o.raw", &co), QCOW2_ENOTFOUND);
    qcow2_image_close(img);
}

/* The fingerprints of a chain's two files, as one string to compare. */
static void chain_prints(uint8_t out[32])
{
    cr_assert_eq(qcow2_file_fingerprint(qpath("b.raw"), out), 0);
    cr_assert_eq(qcow2_file_fingerprint(qpath("t.qcow2"), out + 16), 0);
}

/*
 * A target that is a file of the source's chain, by any name (itself, its
 * backing file, a symbolic or hard link to one), is refused before anything
 * is written, locks or not (qemu-img convert -U overwrites it).
 */
Test(ops, convert_refuses_a_target_in_the_source_chain)
{
    static const char *const dsts[] = {"t.qcow2", "b.raw", "link.raw", "hard.raw"};
    qcow2_open_opts oo = QCOW2_OPEN_OPTS_INIT;
    uint8_t before[32], after[32];
    qcow2_image *img;

    need_qemu();
    qsh("qemu-img create -q -f raw b.raw 1M && qemu-io -f raw -c 'write -P 1 0 300k' b.raw && "
        "qemu-img create -q -f qcow2 -b b.raw -F raw t.qcow2 && "
        "qemu-io -c 'write -P 2 512k 64k' t.qcow2 && ln -s b.raw link.raw && ln b.raw hard.raw");
    chain_prints(before);
    for (int locks = 0; locks < 2; locks++) {
        oo.flags = locks ? 0 : QCOW2_OPEN_NO_LOCK;
        cr_assert_eq(qcow2_image_open(&img, qpath("t.qcow2"), &oo), 0, "%s", rfx_msg());
        for (size_t i = 0; i < sizeof(dsts) / sizeof(dsts[0]); i++) {
            for (int how = 0; how < 3; how++) {
                qcow2_convert_opts co = QCOW2_CONVERT_OPTS_INIT;
                co.format = how == 1 ? QCOW2_FORMAT_QCOW2 : QCOW2_FORMAT_RAW;
                co.no_create = how == 2;
                cr_assert_eq(qcow2_image_convert(img, qpath(dsts[i]), &co), QCOW2_EINVAL,
                             "convert onto %s (%d): %s", dsts[i], how, rfx_msg());
                assert_msg(dsts[i], "source");
                chain_prints(after);
                cr_assert_eq(memcmp(before, after, sizeof(before)), 0,
                             "a refused convert onto %s changed the chain", dsts[i]);
            }
        }
        cr_assert_eq(qcow2_image_convert(img, qpath("o.raw"), NULL), 0, "%s", rfx_msg());
        qcow2_image_close(img);
    }
}

Test(ops, convert_into_existing_image_zeroes_old_data_and_keeps_tail)
{
    qcow2_convert_opts co = QCOW2_CONVERT_OPTS_INIT;
    qcow2_image *src;
    char out[4096];

    need_qemu();
    qsh("qemu-img create -q -f qcow2 t.qcow2 4M && "
        "qemu-io -c 'write -P 2 5k 3k' -c 'write -z 100k 100k' -c 'write -c -P 3 1M 128k' t.qcow2 && "
        "for f in raw qcow2; do qemu-img create -q -f $f old.$f 6M && "
        "qemu-io -f $f -c 'write -P 9 0 6M' old.$f; done && "
        "qemu-img create -q -f qcow2 small.qcow2 2M");
    src = popen_img(qpath("t.qcow2"));
    co.no_create = true;
    cr_assert_eq(qcow2_image_convert(src, qpath("old.raw"), &co), 0, "%s", rfx_msg());
    co.format = QCOW2_FORMAT_QCOW2;
    cr_assert_eq(qcow2_image_convert(src, qpath("old.qcow2"), &co), 0, "%s", rfx_msg());
    cr_assert_eq(qo_check(qpath("old.qcow2"), out, sizeof(out)), 0, "%s", out);
    /* The source's range reads as the source (old data zeroed), the tail is untouched. */
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "cd '%s' && for f in raw qcow2; do "
                       "qemu-img convert -f $f -O raw old.$f cut.raw && truncate -s 4M cut.raw && "
                       "qemu-img compare -q t.qcow2 cut.raw && "
                       "qemu-io -f $f -c 'read -P 9 4M 2M' old.$f | grep -q '^read' || exit 1; "
                       "done",
                       qdir),
                 0, "%s", out);
    cr_assert_eq(qcow2_image_convert(src, qpath("small.qcow2"), &co), QCOW2_EINVAL);
    assert_msg("smaller");
    cr_assert_eq(qcow2_image_convert(src, qpath("missing.qcow2"), &co), QCOW2_ENOTFOUND);
    co.compress = true;
    cr_assert_eq(qcow2_image_convert(src, qpath("old.qcow2"), &co), QCOW2_EINVAL);
    qcow2_image_close(src);
}

static void count_read_error(uint64_t off, int code, void *payload)
{
    uint64_t *seen = payload; /* [count, first offset, last offset] */

    cr_assert_lt(code, 0);
    if (!seen[0]++)
        seen[1] = off;
    seen[2] = off;
}

Test(ops, convert_salvage_zeroes_unreadable_sectors_and_goes_on)
{
    qcow2_convert_opts co = QCOW2_CONVERT_OPTS_INIT;
    qcow2_image *src;
    uint64_t seen[3] = {0, 0, 0};
    char out[4096];

    need_qemu();
    /* A compressed cluster at 128k whose bytes (after the data cluster at 0x50000) are garbage. */
    qsh("qemu-img create -q -f qcow2 d.qcow2 1M && "
        "qemu-io -c 'write -P 0x11 0 64k' -c 'write -c -P 0x55 128k 64k' "
        "-c 'write -P 0x66 256k 64k' d.qcow2 && "
        "python3 -c \"f=open('d.qcow2','r+b'); f.seek(0x60000); f.write(b'\\xff'*64)\" && "
        "! qemu-io -c 'read 128k 64k' d.qcow2 | grep -q '^read [0-9]'");
    src = popen_img(qpath("d.qcow2"));
    cr_assert_eq(QCOW2_ERROR_CLASS(qcow2_image_convert(src, qpath("o.raw"), &co)), QCOW2_ECORRUPT);
    co.salvage = true;
    co.read_error = count_read_error;
    co.payload = seen;
    cr_assert_eq(qcow2_image_convert(src, qpath("o.raw"), &co), 0, "%s", rfx_msg());
    /* One report per 512-byte sector of the damaged 64 KiB cluster. */
    cr_assert_eq(seen[0], 128);
    cr_assert_eq(seen[1], 128 * KiB);
    cr_assert_eq(seen[2], 192 * KiB - 512);
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "cd '%s' && qemu-io -f raw -c 'read -P 0x11 0 64k' -c 'read -P 0 128k 64k' "
                       "-c 'read -P 0x66 256k 64k' o.raw | grep -c '^read 65536' | grep -qx 3",
                       qdir),
                 0, "%s", out);
    qcow2_image_close(src);
}

Test(ops, convert_to_qcow2_keeps_content_and_is_clean)
{
    qcow2_convert_opts co = QCOW2_CONVERT_OPTS_INIT;
    qcow2_image *src, *dst;
    uint64_t at;
    char out[4096];

    need_qemu();
    qsh("qemu-img create -q -f raw b.raw 1M && qemu-io -f raw -c 'write -P 1 0 300k' b.raw && "
        "qemu-img create -q -f qcow2 -o extended_l2=on -b b.raw -F raw t.qcow2 4M && "
        "qemu-io -c 'write -P 2 5k 3k' -c 'write -z 100k 100k' -c 'write -c -P 3 1M 128k' "
        "-c 'write -P 4 3M 77k' t.qcow2");
    src = popen_img(qpath("t.qcow2"));
    co.format = QCOW2_FORMAT_QCOW2;
    cr_assert_eq(qcow2_image_convert(src, qpath("o.qcow2"), &co), 0, "%s", rfx_msg());
    dst = popen_img(qpath("o.qcow2"));
    cr_assert_eq(qcow2_image_chain_length(dst), 1);
    cr_assert_eq(qcow2_image_compare(src, dst, false, &at, NULL, NULL), 0, "differs at %" PRIu64,
                 at);
    qcow2_image_close(dst);
    cr_assert_eq(qo_check(qpath("o.qcow2"), out, sizeof(out)), 0, "%s", out);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img compare '%s' '%s'", qpath("t.qcow2"),
                       qpath("o.qcow2")),
                 0, "%s", out);

    /* Compressed. */
    co.compress = true;
    cr_assert_eq(qcow2_image_convert(src, qpath("c.qcow2"), &co), 0, "%s", rfx_msg());
    cr_assert_eq(qo_check(qpath("c.qcow2"), out, sizeof(out)), 0, "%s", out);
    cr_assert_gt(qo_check_json_field(qpath("c.qcow2"), "compressed-clusters"), 0);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img compare '%s' '%s'", qpath("t.qcow2"),
                       qpath("c.qcow2")),
                 0, "%s", out);

    /* Over a backing file: only what differs from it is written. */
    co.compress = false;
    co.backing = "b.raw";
    co.backing_format = "raw";
    cr_assert_eq(qcow2_image_convert(src, qpath("bk.qcow2"), &co), 0, "%s", rfx_msg());
    dst = popen_img(qpath("bk.qcow2"));
    cr_assert_eq(qcow2_image_chain_length(dst), 2);
    cr_assert_eq(qcow2_image_compare(src, dst, false, &at, NULL, NULL), 0, "differs at %" PRIu64,
                 at);
    {
        qcow2_extent e;
        cr_assert_eq(qcow2_image_block_status(dst, NULL, 256 * KiB, 64 * KiB, &e), 0);
        cr_assert_eq(e.depth, 1, "unchanged backing data was copied into the new image");
    }
    qcow2_image_close(dst);
    cr_assert_eq(qo_check(qpath("bk.qcow2"), out, sizeof(out)), 0, "%s", out);
    qcow2_image_close(src);
}

/* ---- measure ------------------------------------------------------------------------- */

static void qemu_measure(const char *args, uint64_t *required, uint64_t *full)
{
    char out[4096];
    const char *p;

    cr_assert_eq(qo_sh(out, sizeof(out), "cd '%s' && qemu-img measure %s", qdir, args), 0,
                 "%s: %s", args, out);
    p = strstr(out, "required size: ");
    cr_assert_not_null(p, "%s", out);
    *required = strtoull(p + 15, NULL, 10);
    p = strstr(out, "fully allocated size: ");
    cr_assert_not_null(p, "%s", out);
    *full = strtoull(p + 22, NULL, 10);
}

Test(ops, measure_of_an_empty_image_matches_qemu_img)
{
    static const struct {
        uint64_t size;
        uint32_t cs;
        uint32_t rb;
        bool extl2;
    } cases[] = {
        {1 * MiB, 65536, 16, false},      {1000 * MiB + 512, 65536, 16, false},
        {10ull << 30, 4096, 16, false},   {5 * MiB, 512, 1, false},
        {100ull << 30, 2 * 1024 * 1024, 64, false}, {3 * MiB, 65536, 16, true},
        {7ull << 30, 32768, 8, true},     {12345 * 512, 65536, 32, false},
    };

    need_qemu();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        qcow2_create_opts o = QCOW2_CREATE_OPTS_INIT;
        qcow2_measure_result r;
        uint64_t req, full;
        char args[256];

        o.cluster_size = cases[i].cs;
        o.refcount_bits = cases[i].rb;
        o.extended_l2 = cases[i].extl2;
        snprintf(args, sizeof(args),
                 "-O qcow2 -o cluster_size=%u,refcount_bits=%u,extended_l2=%s --size %" PRIu64,
                 cases[i].cs, cases[i].rb, cases[i].extl2 ? "on" : "off", cases[i].size);
        qemu_measure(args, &req, &full);
        cr_assert_eq(qcow2_measure(NULL, cases[i].size, &o, &r), 0, "%s", rfx_msg());
        cr_assert_eq(r.required, req, "%s: required %" PRIu64 ", qemu-img %" PRIu64, args,
                     r.required, req);
        cr_assert_eq(r.fully_allocated, full, "%s: fully allocated %" PRIu64 ", qemu-img %" PRIu64,
                     args, r.fully_allocated, full);
        cr_assert(!r.has_bitmaps);
    }
}

Test(ops, measure_of_an_image_matches_qemu_img)
{
    static const char *const targets[] = {
        "cluster_size=65536",
        "cluster_size=4096",
        "cluster_size=2097152,refcount_bits=1",
        "extended_l2=on",
    };

    need_qemu();
    qsh("qemu-img create -q -f raw b.raw 3M && qemu-io -f raw -c 'write -P 1 0 300k' b.raw && "
        "qemu-img create -q -f qcow2 -o cluster_size=4k -b b.raw -F raw t.qcow2 64M && "
        "qemu-io -c 'write -P 2 5k 3k' -c 'write -z 100k 100k' -c 'write -c -P 3 1M 128k' "
        "-c 'write -P 4 33M 77k' -c 'write -P 5 63M 1k' t.qcow2");
    for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
        qcow2_create_opts o = QCOW2_CREATE_OPTS_INIT;
        qcow2_measure_result r;
        qcow2_image *img = popen_img(qpath("t.qcow2"));
        uint64_t req, full;
        char args[256];
        unsigned long v;
        const char *p;

        if ((p = strstr(targets[i], "cluster_size=")) && sscanf(p + 13, "%lu", &v) == 1)
            o.cluster_size = (uint32_t)v;
        if ((p = strstr(targets[i], "refcount_bits=")) && sscanf(p + 14, "%lu", &v) == 1)
            o.refcount_bits = (uint32_t)v;
        o.extended_l2 = strstr(targets[i], "extended_l2=on") != NULL;
        snprintf(args, sizeof(args), "-O qcow2 -o %s t.qcow2", targets[i]);
        qemu_measure(args, &req, &full);
        cr_assert_eq(qcow2_measure(img, 0, &o, &r), 0, "%s", rfx_msg());
        cr_assert_eq(r.required, req, "%s: required %" PRIu64 ", qemu-img %" PRIu64, args,
                     r.required, req);
        cr_assert_eq(r.fully_allocated, full, "%s: fully allocated %" PRIu64 ", qemu-img %" PRIu64,
                     args, r.fully_allocated, full);
        cr_assert(r.has_bitmaps);
        qcow2_image_close(img);
    }
}

Test(ops, measure_raw_output_and_bad_options)
{
    qcow2_create_opts o = QCOW2_CREATE_OPTS_INIT;
    qcow2_measure_result r;

    o.format = QCOW2_FORMAT_RAW;
    cr_assert_eq(qcow2_measure(NULL, 1000, &o, &r), 0);
    cr_assert_eq(r.required, 1024);
    cr_assert_eq(r.fully_allocated, 1024);
    o.format = QCOW2_FORMAT_QCOW2;
    o.cluster_size = 3000;
    cr_assert_eq(qcow2_measure(NULL, 1000, &o, &r), QCOW2_EINVAL);
    o.cluster_size = 256;
    cr_assert_eq(qcow2_measure(NULL, 1000, &o, &r), QCOW2_EINVAL);
    o.cluster_size = 4u << 20;
    cr_assert_eq(qcow2_measure(NULL, 1000, &o, &r), QCOW2_EINVAL);
    o.cluster_size = 65536;
    o.refcount_bits = 3;
    cr_assert_eq(qcow2_measure(NULL, 1000, &o, &r), QCOW2_EINVAL);
    o.refcount_bits = 128;
    cr_assert_eq(qcow2_measure(NULL, 1000, &o, &r), QCOW2_EINVAL);
    o.refcount_bits = 0;
    cr_assert_eq(qcow2_measure(NULL, 1000, &o, &r), QCOW2_EINVAL);
}

/*
 * File fingerprints (what proves a frozen layer unchanged) follow the bytes,
 * not the hole layout: copies made sparse or filled by cp give the same one;
 * any changed byte, or a longer file, gives another; from = cluster size
 * leaves the header cluster out.
 */
Test(ops, file_fingerprint_follows_bytes_not_holes)
{
    char a[128], b[128], c[128], out[4096];
    uint8_t fa[16], fb[16], fc[16], f1[16], f2[16];

    if (!qo_have_qemu())
        cr_skip_test("qemu-img/qemu-io not installed");
    cr_assert_eq(qo_mkdtemp(qdir, sizeof(qdir), "fp"), 0);
    snprintf(a, sizeof(a), "%s/fa.qcow2", qdir);
    snprintf(b, sizeof(b), "%s/fb.qcow2", qdir);
    snprintf(c, sizeof(c), "%s/fc.qcow2", qdir);
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "qemu-img create -q -f qcow2 '%s' 64M && qemu-io -f qcow2 -c 'write -P 1 0 1M' "
                       "-c 'write -z 4M 1M' -c 'write -P 2 10M 5k' '%s' >/dev/null && "
                       "cp --sparse=never '%s' '%s' && cp --sparse=always '%s' '%s'",
                       a, a, a, b, a, c),
                 0, "%s", out);
    cr_assert_eq(qcow2_file_fingerprint(a, fa), 0, "%s", qcow2_error_last()->message);
    cr_assert_eq(qcow2_file_fingerprint(b, fb), 0);
    cr_assert_eq(qcow2_file_fingerprint(c, fc), 0);
    cr_assert_eq(memcmp(fa, fb, 16), 0, "a filled copy fingerprints differently");
    cr_assert_eq(memcmp(fa, fc, 16), 0, "a sparse copy fingerprints differently");
    /* One byte in a block of zeroes. */
    cr_assert_eq(qo_sh(out, sizeof(out), "printf x | dd of='%s' bs=1 seek=300000 conv=notrunc "
                                         "status=none", b), 0, "%s", out);
    cr_assert_eq(qcow2_file_fingerprint(b, fb), 0);
    cr_assert_neq(memcmp(fa, fb, 16), 0, "a changed byte left the fingerprint as it was");
    /* Zeroes appended: same blocks, another size. */
    cr_assert_eq(qo_sh(out, sizeof(out), "truncate -s +64k '%s'", c), 0, "%s", out);
    cr_assert_eq(qcow2_file_fingerprint(c, fc), 0);
    cr_assert_neq(memcmp(fa, fc, 16), 0, "a longer file kept the fingerprint");
    /* The header cluster left out: a header change shows in one, not the other. */
    cr_assert_eq(qcow2_file_fingerprint_from(a, 65536, f1), 0);
    cr_assert_eq(qo_sh(out, sizeof(out), "qemu-img rebase -u -b x.raw -F raw '%s'", a), 0, "%s",
                 out);
    cr_assert_eq(qcow2_file_fingerprint_from(a, 65536, f2), 0);
    cr_assert_eq(memcmp(f1, f2, 16), 0, "bytes past the header cluster did not change");
    cr_assert_eq(qcow2_file_fingerprint(a, fb), 0);
    cr_assert_neq(memcmp(fa, fb, 16), 0, "a new backing name kept the whole-file fingerprint");
}

/*
 * The fingerprint as its documentation defines it, computed here from the
 * file's bytes read whole: xxh3-128 over (offset, bytes) of every 64 KiB
 * block from `from` on (the first one cut at `from`) that is not all zeroes,
 * then the size; the canonical (big-endian) 16 bytes.
 */
static void fp_model(const char *path, uint64_t from, uint8_t out[16])
{
    FILE *f = fopen(path, "rb");
    XXH3_state_t *h = XXH3_createState();
    XXH128_canonical_t canon;
    uint8_t be[8], *buf;
    uint64_t size;
    long end;

    cr_assert(f && h);
    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    end = ftell(f);
    cr_assert_geq(end, 0);
    size = (uint64_t)end;
    buf = malloc(size + 1);
    cr_assert(buf);
    rewind(f);
    cr_assert_eq(fread(buf, 1, size, f), size);
    fclose(f);
    XXH3_128bits_reset(h);
    for (uint64_t b = from & ~65535ull; b < size; b += 65536) {
        uint64_t s0 = b > from ? b : from, e = b + 65536 < size ? b + 65536 : size;
        bool zero = true;
        for (uint64_t i = s0; i < e && zero; i++)
            zero = buf[i] == 0;
        if (s0 >= e || zero)
            continue;
        for (int i = 0; i < 8; i++)
            be[i] = (uint8_t)(s0 >> (56 - 8 * i));
        XXH3_128bits_update(h, be, 8);
        XXH3_128bits_update(h, buf + s0, e - s0);
    }
    for (int i = 0; i < 8; i++)
        be[i] = (uint8_t)(size >> (56 - 8 * i));
    XXH3_128bits_update(h, be, 8);
    XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(h));
    memcpy(out, canon.digest, 16);
    XXH3_freeState(h);
    free(buf);
}

/*
 * Both fingerprints of one pass (what a snapshot records when it freezes a
 * layer) equal the documented definition and the two single ones, for
 * files with holes, written zeroes, data across block edges and an odd
 * size, and for every place the tail may start (a qcow2 cluster of 512
 * bytes to 2 MiB, inside or past the data, past the end).
 */
Test(ops, file_fingerprints_in_one_pass_equal_the_definition)
{
    static const uint64_t froms[] = {0, 512, 4096, 65536, 65537, 131072, 2u << 20, 5u << 20,
                                     64u << 20};
    char a[128], out[4096];
    uint8_t all[16], tail[16], one[16], model[16];

    cr_assert_eq(qo_mkdtemp(qdir, sizeof(qdir), "fp2"), 0);
    snprintf(a, sizeof(a), "%s/f.bin", qdir);
    cr_assert_eq(qo_sh(out, sizeof(out),
                       "truncate -s 3000001 '%s' && printf abc | dd of='%s' bs=1 seek=100 "
                       "conv=notrunc status=none && head -c 70000 /dev/urandom | dd of='%s' bs=1 "
                       "seek=65000 conv=notrunc status=none && dd if=/dev/zero of='%s' bs=4096 "
                       "seek=200 count=64 conv=notrunc status=none && printf z | dd of='%s' bs=1 "
                       "seek=3000000 conv=notrunc status=none",
                       a, a, a, a, a),
                 0, "%s", out);
    for (size_t i = 0; i < sizeof(froms) / sizeof(froms[0]); i++) {
        cr_assert_eq(qcow2_file_fingerprints(a, froms[i], all, tail), 0, "%s",
                     qcow2_error_last()->message);
        fp_model(a, 0, model);
        cr_assert_eq(memcmp(all, model, 16), 0, "whole file, from %llu",
                     (unsigned long long)froms[i]);
        cr_assert_eq(qcow2_file_fingerprint(a, one), 0);
        cr_assert_eq(memcmp(all, one, 16), 0);
        fp_model(a, froms[i], model);
        cr_assert_eq(memcmp(tail, model, 16), 0, "tail from %llu", (unsigned long long)froms[i]);
        cr_assert_eq(qcow2_file_fingerprint_from(a, froms[i], one), 0);
        cr_assert_eq(memcmp(tail, one, 16), 0, "from %llu", (unsigned long long)froms[i]);
    }
    cr_assert_eq(qcow2_file_fingerprints(a, 512, NULL, tail), QCOW2_EINVAL);
}
