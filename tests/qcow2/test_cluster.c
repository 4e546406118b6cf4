/*
 * Tests for qcow2/cluster.c and qcow2/cache.c, white-box: run merging and
 * classification by qcow2__layer_extent() (standard, zero, compressed and
 * extended-L2 entries), the validation of every L1/L2 entry it touches
 * (code and message naming the file, table and entry), compressed reads, and
 * the set-associative L2 cache: slot counts from opts.cache_bytes, memory
 * bounded while reading an image with many more L2 tables than slots, hit
 * and miss behaviour counted at the I/O seam, write-back of dirty slots.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "io_fault.h"
#include "qcow2_int.h"
#include "reader_fixture.h"

#define IMG "/m/c.qcow2"
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

TestSuite(cluster, .init = setup, .fini = teardown, .timeout = 30);

#define assert_msg(...)                                                                            \
    cr_assert(rfx_has_all(rfx_msg(), __VA_ARGS__, (const char *)NULL), "message: %s", rfx_msg())

static qcow2_image *open_ro(uint64_t cache_bytes)
{
    qcow2_image *img;

    cr_assert_eq(rfx_open(fs, IMG, 0, cache_bytes, &img), 0, "%s", rfx_msg());
    return img;
}

static struct qcow2__lrun extent(qcow2_image *img, uint64_t off, uint64_t len)
{
    struct qcow2__lrun r;
    int rc = qcow2__layer_extent(img, off, len, &r);

    cr_assert_eq(rc, 0, "layer_extent(0x%llx, 0x%llx): %s", (unsigned long long)off,
                 (unsigned long long)len, rfx_msg());
    cr_assert_gt(r.len, 0);
    cr_assert_leq(r.len, len);
    return r;
}

/* File offset of the L2 entry for guest_off (the L2 table must exist). */
static uint64_t l2e_pos(qcow2_image *img, uint64_t guest_off)
{
    uint64_t l1_idx = guest_off >> (img->cluster_bits + img->l2_bits);
    uint64_t l2_off = img->l1[l1_idx] & QCOW2_L1E_OFFSET_MASK;

    cr_assert_neq(l2_off, 0);
    return l2_off + ((guest_off >> img->cluster_bits) & (img->l2_entries - 1)) * img->l2e_bytes;
}

static void create(uint64_t size, uint32_t cs, unsigned version, bool extl2)
{
    qcow2_create_opts co = QCOW2_CREATE_OPTS_INIT;

    co.size = size;
    co.cluster_size = cs;
    co.qcow2_version = version;
    co.extended_l2 = extl2;
    cr_assert_eq(rfx_create(fs, IMG, &co), 0, "%s", rfx_msg());
}

/* ---- run merging ---------------------------------------------------------------- */

Test(cluster, contiguous_data_clusters_merge_into_one_run)
{
    const uint64_t cs = 64 * KiB;
    qcow2_image *img;
    struct qcow2__lrun r;
    uint64_t host0;

    create(4 * MiB, (uint32_t)cs, 3, false);
    cr_assert_eq(rfx_fill(fs, IMG, 0, 3 * cs, 0x11), 0, "%s", rfx_msg());
    img = open_ro(0);
    r = extent(img, 0, img->size);
    cr_assert_eq(r.kind, QCOW2__RUN_DATA);
    cr_assert_eq(r.len, 3 * cs);
    cr_assert(r.has_off);
    host0 = r.host_off;
    cr_assert_eq(host0 % cs, 0);
    cr_assert_eq(host0, rfx_peek64(fs, IMG, l2e_pos(img, 0)) & QCOW2_L2E_OFFSET_MASK);
    /* From inside the run: the host offset follows the guest offset. */
    r = extent(img, cs + 100, img->size - cs - 100);
    cr_assert_eq(r.kind, QCOW2__RUN_DATA);
    cr_assert_eq(r.len, 2 * cs - 100);
    cr_assert_eq(r.host_off, host0 + cs + 100);
    /* Bounded by len. */
    r = extent(img, 10, 1000);
    cr_assert_eq(r.len, 1000);
    cr_assert_eq(r.host_off, host0 + 10);
    /* Then unallocated up to the end of the image (one L2 table covers 512 MiB). */
    r = extent(img, 3 * cs, img->size - 3 * cs);
    cr_assert_eq(r.kind, QCOW2__RUN_UNALLOC);
    cr_assert(!r.has_off);
    cr_assert_eq(r.len, img->size - 3 * cs);
    qcow2_image_close(img);
}

Test(cluster, data_runs_break_where_host_offsets_are_not_contiguous)
{
    const uint64_t cs = 64 * KiB;
    qcow2_image *img;
    struct qcow2__lrun a, b;

    create(4 * MiB, (uint32_t)cs, 3, false);
    /* Cluster 5 first, then 4: host order is the reverse of guest order. */
    cr_assert_eq(rfx_fill(fs, IMG, 5 * cs, cs, 5), 0);
    cr_assert_eq(rfx_fill(fs, IMG, 4 * cs, cs, 4), 0);
    img = open_ro(0);
    a = extent(img, 4 * cs, 2 * cs);
    b = extent(img, 5 * cs, cs);
    cr_assert_eq(a.kind, QCOW2__RUN_DATA);
    cr_assert_eq(a.len, cs);
    cr_assert_eq(b.kind, QCOW2__RUN_DATA);
    cr_assert_eq(b.host_off + cs, a.host_off);
    qcow2_image_close(img);
}

Test(cluster, runs_stop_at_the_end_of_an_l2_tables_coverage)
{
    qcow2_image *img;
    struct qcow2__lrun r;

    /* 512-byte clusters: 64 entries per L2 table, 32 KiB per table. */
    create(256 * KiB, 512, 3, false);
    img = open_ro(0);
    cr_assert_eq(img->l2_entries, 64);
    r = extent(img, 0, img->size);
    cr_assert_eq(r.kind, QCOW2__RUN_UNALLOC);
    cr_assert_eq(r.len, 32 * KiB);
    r = extent(img, 100, img->size - 100);
    cr_assert_eq(r.len, 32 * KiB - 100);
    qcow2_image_close(img);
    /* Allocated data across two tables: still two runs. */
    cr_assert_eq(rfx_fill(fs, IMG, 0, 64 * KiB, 9), 0);
    img = open_ro(0);
    r = extent(img, 16 * KiB, 48 * KiB);
    cr_assert_eq(r.kind, QCOW2__RUN_DATA);
    cr_assert_eq(r.len, 16 * KiB);
    qcow2_image_close(img);
}

Test(cluster, runs_stop_at_the_virtual_size)
{
    qcow2_image *img;
    struct qcow2__lrun r;

    create(100 * KiB + 512, 64 * KiB, 3, false);
    cr_assert_eq(rfx_fill(fs, IMG, 64 * KiB, 36 * KiB + 512, 3), 0, "%s", rfx_msg());
    img = open_ro(0);
    r = extent(img, 64 * KiB, UINT64_MAX / 2);
    cr_assert_eq(r.kind, QCOW2__RUN_DATA);
    cr_assert_eq(r.len, 36 * KiB + 512);
    qcow2_image_close(img);
}

Test(cluster, plain_zero_clusters_merge_and_allocated_ones_keep_their_offset)
{
    const uint64_t cs = 64 * KiB;
    qcow2_image *img;
    struct qcow2__lrun r;
    uint64_t host2;

    create(4 * MiB, (uint32_t)cs, 3, false);
    /* Clusters 0..3 plain zero (nothing allocated), 4..5 data then zeroed in place. */
    cr_assert_eq(rfx_zero(fs, IMG, 0, 4 * cs, QCOW2_ZERO_MAY_UNMAP), 0, "%s", rfx_msg());
    cr_assert_eq(rfx_fill(fs, IMG, 4 * cs, 2 * cs, 0x77), 0);
    img = open_ro(0);
    host2 = extent(img, 4 * cs, cs).host_off;
    qcow2_image_close(img);
    cr_assert_eq(rfx_zero(fs, IMG, 4 * cs, 2 * cs, 0), 0, "%s", rfx_msg());
    img = open_ro(0);
    r = extent(img, 0, img->size);
    cr_assert_eq(r.kind, QCOW2__RUN_ZERO);
    cr_assert(!r.has_off);
    cr_assert_eq(r.len, 4 * cs);
    r = extent(img, 4 * cs, img->size - 4 * cs);
    cr_assert_eq(r.kind, QCOW2__RUN_ZERO);
    cr_assert(r.has_off);
    cr_assert_eq(r.host_off, host2);
    cr_assert_eq(r.len, 2 * cs);
    cr_assert_eq(rfx_peek64(fs, IMG, l2e_pos(img, 4 * cs)) & QCOW2_OFLAG_ZERO, 1);
    qcow2_image_close(img);
}

Test(cluster, compressed_clusters_are_one_run_each)
{
    const uint64_t cs = 64 * KiB;
    qcow2_image *img;
    struct qcow2__lrun r;
    uint8_t buf[4096], want[4096];

    create(4 * MiB, (uint32_t)cs, 3, false);
    cr_assert_eq(rfx_compressed(fs, IMG, 0, 2 * cs, 0x40), 0, "%s", rfx_msg());
    img = open_ro(0);
    r = extent(img, 0, img->size);
    cr_assert_eq(r.kind, QCOW2__RUN_COMPRESSED);
    cr_assert_eq(r.len, cs);
    cr_assert(!r.has_off);
    cr_assert_eq(r.host_off, rfx_peek64(fs, IMG, l2e_pos(img, 0)));
    cr_assert(r.host_off & QCOW2_OFLAG_COMPRESSED);
    r = extent(img, cs + 1000, img->size - cs - 1000);
    cr_assert_eq(r.kind, QCOW2__RUN_COMPRESSED);
    cr_assert_eq(r.len, cs - 1000);
    /* And their bytes decompress to what was written. */
    for (size_t i = 0; i < sizeof(want); i++)
        want[i] = (uint8_t)(0x40 + ((cs + 1000 + i) / 100) % 7);
    cr_assert_eq(qcow2__read_compressed(img, r.host_off, 1000, buf, sizeof(buf)), 0, "%s",
                 rfx_msg());
    cr_assert_eq(memcmp(buf, want, sizeof(buf)), 0);
    qcow2_image_close(img);
}

Test(cluster, extended_l2_subclusters_are_classified_one_by_one)
{
    const uint64_t cs = 64 * KiB, sc = 2 * KiB;
    qcow2_image *img;
    struct qcow2__lrun r;
    uint64_t host;

    create(4 * MiB, (uint32_t)cs, 3, true);
    cr_assert_eq(rfx_fill(fs, IMG, sc, 2 * sc, 0x12), 0, "%s", rfx_msg());  /* subclusters 1, 2 */
    cr_assert_eq(rfx_zero(fs, IMG, 8 * sc, 2 * sc, 0), 0, "%s", rfx_msg()); /* 8, 9 */
    img = open_ro(0);
    cr_assert_eq(img->sc_bits, 11);
    host = rfx_peek64(fs, IMG, l2e_pos(img, 0)) & QCOW2_L2E_OFFSET_MASK;
    cr_assert_neq(host, 0);
    r = extent(img, 0, img->size);
    cr_assert_eq(r.kind, QCOW2__RUN_UNALLOC);
    cr_assert(r.has_off);
    cr_assert_eq(r.len, sc);
    cr_assert_eq(r.host_off, host);
    r = extent(img, sc + 5, img->size - sc - 5);
    cr_assert_eq(r.kind, QCOW2__RUN_DATA);
    cr_assert_eq(r.len, 2 * sc - 5);
    cr_assert_eq(r.host_off, host + sc + 5);
    r = extent(img, 3 * sc, img->size - 3 * sc);
    cr_assert_eq(r.kind, QCOW2__RUN_UNALLOC);
    cr_assert(r.has_off);
    cr_assert_eq(r.len, 5 * sc);
    cr_assert_eq(r.host_off, host + 3 * sc);
    r = extent(img, 8 * sc, img->size - 8 * sc);
    cr_assert_eq(r.kind, QCOW2__RUN_ZERO);
    cr_assert(r.has_off);
    cr_assert_eq(r.len, 2 * sc);
    cr_assert_eq(r.host_off, host + 8 * sc);
    /* The rest of the cluster is unallocated-in-allocated; the next cluster is plainly unallocated. */
    r = extent(img, 10 * sc, img->size - 10 * sc);
    cr_assert_eq(r.kind, QCOW2__RUN_UNALLOC);
    cr_assert(r.has_off);
    cr_assert_eq(r.len, cs - 10 * sc);
    r = extent(img, cs, img->size - cs);
    cr_assert(!r.has_off);
    cr_assert_eq(r.len, img->size - cs);
    qcow2_image_close(img);
}

/* ---- validation ------------------------------------------------------------------ */

/* A v3 image, 64 KiB clusters, clusters 0..3 holding data. Returns the L2 entry position of cluster 0. */
static uint64_t data_image(unsigned version, bool extl2)
{
    qcow2_image *img;
    uint64_t pos;

    create(4 * MiB, 64 * KiB, version, extl2);
    cr_assert_eq(rfx_fill(fs, IMG, 0, 4 * 64 * KiB, 0x33), 0, "%s", rfx_msg());
    img = open_ro(0);
    pos = l2e_pos(img, 0);
    qcow2_image_close(img);
    return pos;
}

/* Whether the 64 KiB guest cluster at guest_off reads as zeroes. */
static bool cluster_reads_zero(uint64_t guest_off)
{
    qcow2_image *img = open_ro(0);
    uint8_t *buf = malloc(64 * KiB);
    bool zero = qcow2_image_read(img, buf, 64 * KiB, guest_off) == 0;

    for (size_t i = 0; zero && i < 64 * KiB; i++)
        zero = buf[i] == 0;
    free(buf);
    qcow2_image_close(img);
    return zero;
}

static int read_all(void)
{
    qcow2_image *img = open_ro(0);
    uint8_t *buf = malloc(img->size);
    int rc = qcow2_image_read(img, buf, img->size, 0);

    free(buf);
    qcow2_image_close(img);
    return rc;
}

/* Misaligned: corrupt. Past the end of the file: reads as zeroes, as qemu reads it. */
Test(cluster, l1_entry_pointing_off_cluster_is_corrupt_past_the_file_reads_zeroes)
{
    uint64_t l1_off, l1e;
    size_t len;

    data_image(3, false);
    l1_off = rfx_peek64(fs, IMG, 40);
    l1e = rfx_peek64(fs, IMG, l1_off);
    rfx_poke64(fs, IMG, l1_off, l1e + 0x200);
    cr_assert_eq(read_all(), QCOW2_ECORRUPT);
    assert_msg(IMG, "L2 table offset", "L1 entry 0", "not aligned");
    memfs_get(fs, IMG, &len);
    rfx_poke64(fs, IMG, l1_off, (len + 0xffff) & ~0xffffull);
    cr_assert_eq(read_all(), 0);
    cr_assert(cluster_reads_zero(0));
}

Test(cluster, l2_entry_with_a_misaligned_host_offset_is_corrupt)
{
    uint64_t pos = data_image(3, false);
    uint64_t e = rfx_peek64(fs, IMG, pos + 16); /* cluster 2 */

    rfx_poke64(fs, IMG, pos + 16, e + 0x200);
    cr_assert_eq(read_all(), QCOW2_ECORRUPT);
    assert_msg(IMG, "cluster offset", "entry 2", "not aligned");
}

/* qemu reads a data cluster past the end of the file as zeroes (its check reports it). */
Test(cluster, data_cluster_past_the_end_of_the_file_reads_zeroes)
{
    uint64_t pos = data_image(3, false);

    rfx_poke64(fs, IMG, pos + 8, QCOW2_OFLAG_COPIED | (1ull << 40));
    cr_assert_eq(read_all(), 0);
    cr_assert(cluster_reads_zero(64 * KiB));
    cr_assert_not(cluster_reads_zero(0)); /* its neighbour still holds 0x33 */
}

Test(cluster, every_entry_of_a_run_is_validated_not_only_the_first)
{
    uint64_t pos = data_image(3, false);
    qcow2_image *img;
    struct qcow2__lrun r;

    rfx_poke64(fs, IMG, pos + 24, QCOW2_OFLAG_COPIED | (1ull << 40) | 0x200); /* cluster 3 */
    img = open_ro(0);
    cr_assert_eq(qcow2__layer_extent(img, 0, img->size, &r), QCOW2_ECORRUPT);
    assert_msg("entry 3");
    /* A run that stops before the bad entry is fine. */
    r = extent(img, 0, 3 * 64 * KiB);
    cr_assert_eq(r.len, 3 * 64 * KiB);
    qcow2_image_close(img);
}

Test(cluster, compressed_cluster_past_the_end_of_the_file_is_corrupt)
{
    qcow2_image *img;
    uint64_t pos;

    create(4 * MiB, 64 * KiB, 3, false);
    cr_assert_eq(rfx_compressed(fs, IMG, 0, 64 * KiB, 1), 0);
    img = open_ro(0);
    pos = l2e_pos(img, 0);
    qcow2_image_close(img);
    rfx_poke64(fs, IMG, pos, QCOW2_OFLAG_COMPRESSED | (1ull << 40));
    cr_assert_eq(read_all(), QCOW2_ECORRUPT);
    assert_msg(IMG, "compressed cluster at 0x10000000000", "entry 0", "beyond the end");
}

Test(cluster, compressed_data_that_does_not_decompress_is_corrupt)
{
    qcow2_image *img;
    uint64_t pos, e, coff;
    uint8_t junk[256];

    create(4 * MiB, 64 * KiB, 3, false);
    cr_assert_eq(rfx_compressed(fs, IMG, 0, 64 * KiB, 1), 0);
    img = open_ro(0);
    pos = l2e_pos(img, 0);
    e = rfx_peek64(fs, IMG, pos);
    coff = e & img->coff_mask;
    qcow2_image_close(img);
    memset(junk, 0xff, sizeof(junk));
    rfx_poke(fs, IMG, coff, junk, sizeof(junk));
    cr_assert_eq(read_all(), QCOW2_ECORRUPT);
    assert_msg(IMG, "compressed cluster at", "does not decompress");
}

Test(cluster, zero_flag_in_a_version_2_image_is_corrupt)
{
    uint64_t pos = data_image(2, false);
    uint64_t e = rfx_peek64(fs, IMG, pos);

    rfx_poke64(fs, IMG, pos, e | QCOW2_OFLAG_ZERO);
    cr_assert_eq(read_all(), QCOW2_ECORRUPT);
    assert_msg(IMG, "zero cluster in a version 2 image", "entry 0");
}

Test(cluster, extended_l2_bitmap_both_allocated_and_zero_is_corrupt)
{
    uint64_t pos = data_image(3, true);

    rfx_poke64(fs, IMG, pos + 8, 0x00000001ffffffffull);
    cr_assert_eq(read_all(), QCOW2_ECORRUPT);
    assert_msg(IMG, "extended L2 entry 0", "both allocated and zero", "0x00000001ffffffff");
}

Test(cluster, extended_l2_allocated_subclusters_without_a_cluster_are_corrupt)
{
    uint64_t pos = data_image(3, true);

    rfx_poke64(fs, IMG, pos + 16 * 5, 0);            /* cluster 5: no host offset */
    rfx_poke64(fs, IMG, pos + 16 * 5 + 8, 0x10);     /* but subcluster 4 "allocated" */
    cr_assert_eq(read_all(), QCOW2_ECORRUPT);
    assert_msg(IMG, "extended L2 entry 5", "allocated in an unallocated cluster");
}

Test(cluster, extended_l2_subcluster_past_the_end_of_the_file_reads_zeroes)
{
    uint64_t pos = data_image(3, true);
    size_t len;

    memfs_get(fs, IMG, &len);
    /* Cluster 0 moved so that its start is in the file but subcluster 31 is not. */
    rfx_poke64(fs, IMG, pos, QCOW2_OFLAG_COPIED | ((len & ~0xffffull) + 0 * 0x10000));
    rfx_resize(fs, IMG, (len & ~0xffffull) + 4096);
    cr_assert_eq(read_all(), 0);
}

/* ---- the L2 cache ------------------------------------------------------------------- */

Test(cluster, cache_slots_follow_cache_bytes)
{
    static const struct {
        uint32_t cs;
        uint64_t budget;
        uint32_t l2_slots;
        uint32_t rb_slots;
    } cases[] = {
        {65536, 0, 64, 16},                    /* default 4 MiB */
        {65536, 1, 4, 4},                      /* at least four */
        {65536, 5 * 65536, 5, 4},              /* fewer than a set: as many as fit */
        {65536, 13 * 65536, 8, 4},             /* whole sets of 8 */
        {65536, 100 * 65536, 96, 24},
        {512, 0, 8192, 2048},
        {512, 1ull << 40, 65536, 65536},       /* capped */
    };

    /* A writer: sized by the budget alone (its tables can grow). */
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        qcow2_image *img;
        create(1 * MiB, cases[i].cs, 3, false);
        cr_assert_eq(rfx_open(fs, IMG, QCOW2_OPEN_RDWR, cases[i].budget, &img), 0, "%s",
                     rfx_msg());
        cr_assert_eq(img->l2c.nb_slots, cases[i].l2_slots, "case %zu: %u L2 slots", i,
                     img->l2c.nb_slots);
        cr_assert_eq(img->rbc.nb_slots, cases[i].rb_slots, "case %zu: %u refcount slots", i,
                     img->rbc.nb_slots);
        for (uint32_t s = 0; s < img->l2c.nb_slots; s++)
            cr_assert_null(img->l2c.slots[s].data, "buffers are allocated on first use");
        qcow2_image_close(img);
    }
}

/*
 * A reader has no more slots than the image has tables: 32 L2 tables for 1 MiB of
 * 512-byte clusters (each covers 64 clusters), one refcount block per refcount table
 * entry, at least four; and back to the budget when it is reopened for writing.
 */
Test(cluster, a_readers_slots_are_capped_at_its_tables)
{
    qcow2_image *img;
    uint64_t rt;

    create(1 * MiB, 512, 3, false);
    img = open_ro(0);
    rt = (uint64_t)img->hdr.rt_clusters * 512 / 8;
    cr_assert_eq(img->l2c.nb_slots, 32, "%u L2 slots for 32 L2 tables", img->l2c.nb_slots);
    cr_assert_eq(img->rbc.nb_slots, rt < 4 ? 4 : rt - rt % 8, "%u refcount slots for %llu entries",
                 img->rbc.nb_slots, (unsigned long long)rt);
    cr_assert_eq(qcow2__reopen(img, true), 0, "%s", rfx_msg());
    cr_assert_eq(img->l2c.nb_slots, 8192, "%u L2 slots once writable", img->l2c.nb_slots);
    cr_assert_eq(img->rbc.nb_slots, 2048, "%u refcount slots once writable", img->rbc.nb_slots);
    qcow2_image_close(img);
    /* A reopen for writing that cannot make the writer's caches leaves the image as it
     * was: read-only, its reader's caches, reading. */
    img = open_ro(0);
    qcow2__fail_alloc_over = 64 * 1024; /* the writer's 8,192 L2 slots need more */
    cr_assert_neq(qcow2__reopen(img, true), 0, "the reopen did not fail");
    qcow2__fail_alloc_over = 0;
    cr_assert_eq(img->state, QCOW2__OPEN_RO);
    cr_assert_eq(img->l2c.nb_slots, 32, "%u L2 slots after a failed reopen", img->l2c.nb_slots);
    cr_assert_eq(img->rbc.nb_slots, rt < 4 ? 4 : rt - rt % 8);
    {
        uint8_t buf[4096];
        cr_assert_eq(qcow2_image_read(img, buf, sizeof(buf), 0), 0, "%s", rfx_msg());
        cr_assert_eq(qcow2__reopen(img, true), 0, "%s", rfx_msg());
        cr_assert_eq(img->l2c.nb_slots, 8192);
        cr_assert_eq(qcow2_image_read(img, buf, sizeof(buf), 0), 0, "%s", rfx_msg());
    }
    qcow2_image_close(img);
    /* An image of no tables at all (0 bytes): the least, four. */
    create(0, 512, 3, false);
    img = open_ro(0);
    cr_assert_eq(img->l2c.nb_slots, 4, "%u L2 slots for no L2 table", img->l2c.nb_slots);
    qcow2_image_close(img);
    /* Far smaller than the budget's share, on a 64 KiB-cluster image of 1 MiB: one L2 table. */
    create(1 * MiB, 65536, 3, false);
    img = open_ro(0);
    cr_assert_eq(img->l2c.nb_slots, 4, "%u L2 slots for one L2 table", img->l2c.nb_slots);
    qcow2_image_close(img);
}

static unsigned slots_in_use(const struct qcow2__cache *c)
{
    unsigned n = 0;

    for (uint32_t i = 0; i < c->nb_slots; i++)
        n += c->slots[i].data != NULL;
    return n;
}

Test(cluster, reading_many_l2_tables_with_a_tiny_cache_stays_bounded_and_correct)
{
    const uint64_t size = 8 * MiB; /* 256 L2 tables of 32 KiB coverage */
    uint8_t *model = malloc(size), *buf = malloc(64 * KiB);
    qcow2_image *img;
    qcow2_io *inner;
    io_fault *f;
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;

    create(size, 512, 3, false);
    rfx_random(42, model, size);
    /* Leave some holes so that runs of every kind are crossed. */
    memset(model + 3 * MiB, 0, 256 * KiB);
    cr_assert_eq(rfx_write(fs, IMG, 0, model, 3 * MiB), 0, "%s", rfx_msg());
    cr_assert_eq(rfx_write(fs, IMG, 3 * MiB + 256 * KiB, model + 3 * MiB + 256 * KiB,
                           size - 3 * MiB - 256 * KiB),
                 0, "%s", rfx_msg());

    cr_assert_eq(memfs_open(&inner, IMG, 0, fs), 0);
    f = io_fault_new(inner);
    o.cache_bytes = 2048;
    o.open_fn = memfs_open;
    o.open_payload = fs;
    cr_assert_eq(qcow2_image_open_io(&img, io_fault_io(f), IMG, &o), 0, "%s", rfx_msg());
    cr_assert_eq(img->l2c.nb_slots, 4);
    io_fault_reset_counts(f);
    for (int pass = 0; pass < 2; pass++) {
        for (uint64_t off = 0; off < size; off += 64 * KiB) {
            cr_assert_eq(qcow2_image_read(img, buf, 64 * KiB, off), 0, "%s", rfx_msg());
            cr_assert_eq(memcmp(buf, model + off, 64 * KiB), 0, "content at 0x%llx",
                         (unsigned long long)off);
            cr_assert_leq(slots_in_use(&img->l2c), 4);
        }
    }
    /* Every table was loaded again on the second pass: at least 2 * 256 table reads happened. */
    cr_assert_geq(io_fault_count(f, IO_FAULT_PREAD), 2 * 256);
    cr_assert_eq(img->l2c.nb_slots, 4);
    qcow2_image_close(img);
    io_fault_free(f);
    qcow2_io_close(inner);
    free(model);
    free(buf);
}

/* Open IMG through a counting wrapper. */
static qcow2_image *open_counted(uint64_t cache_bytes, unsigned flags, qcow2_io **inner,
                                 io_fault **f)
{
    qcow2_open_opts o = QCOW2_OPEN_OPTS_INIT;
    qcow2_image *img;

    cr_assert_eq(memfs_open(inner, IMG, (flags & QCOW2_OPEN_RDWR) ? QCOW2_IO_RDWR : 0, fs), 0);
    *f = io_fault_new(*inner);
    o.cache_bytes = cache_bytes;
    o.flags = flags;
    o.open_fn = memfs_open;
    o.open_payload = fs;
    cr_assert_eq(qcow2_image_open_io(&img, io_fault_io(*f), IMG, &o), 0, "%s", rfx_msg());
    io_fault_reset_counts(*f);
    return img;
}

/* An image with one allocated cluster in each of the first n L2 tables (512-byte clusters). */
static void tables_image(unsigned n)
{
    create(n * 32 * KiB, 512, 3, false);
    for (unsigned i = 0; i < n; i++)
        cr_assert_eq(rfx_fill(fs, IMG, i * 32 * KiB, 512, (int)i + 1), 0);
}

Test(cluster, cache_hits_cost_no_io_and_lru_thrashes_one_over_capacity)
{
    qcow2_image *img;
    qcow2_io *inner;
    io_fault *f;
    struct qcow2__lrun r;

    tables_image(5);
    img = open_counted(2048, 0, &inner, &f); /* 4 slots, one set */
    for (int round = 0; round < 3; round++) {
        for (unsigned t = 0; t < 4; t++)
            cr_assert_eq(qcow2__layer_extent(img, t * 32 * KiB, 512, &r), 0);
    }
    cr_assert_eq(io_fault_count(f, IO_FAULT_PREAD), 4, "4 tables in 4 slots: %llu reads",
                 (unsigned long long)io_fault_count(f, IO_FAULT_PREAD));
    io_fault_reset_counts(f);
    for (int round = 0; round < 3; round++) {
        for (unsigned t = 0; t < 5; t++)
            cr_assert_eq(qcow2__layer_extent(img, t * 32 * KiB, 512, &r), 0);
    }
    /*
     * LRU over 5 tables cycling through 4 slots: the first round only misses
     * table 4 (0..3 are cached); from then on every access misses: 1 + 5 + 5.
     */
    cr_assert_eq(io_fault_count(f, IO_FAULT_PREAD), 11, "%llu reads",
                 (unsigned long long)io_fault_count(f, IO_FAULT_PREAD));
    qcow2_image_close(img);
    io_fault_free(f);
    qcow2_io_close(inner);
}

Test(cluster, cache_get_without_load_gives_a_zeroed_slot_and_drop_forgets)
{
    qcow2_image *img;
    qcow2_io *inner;
    io_fault *f;
    struct qcow2__cslot *slot;
    uint64_t l2_off;

    tables_image(2);
    img = open_counted(0, 0, &inner, &f);
    l2_off = img->l1[0] & QCOW2_L1E_OFFSET_MASK;
    cr_assert_eq(qcow2__cache_get(img, &img->l2c, l2_off, true, &slot), 0);
    cr_assert_eq(slot->off, l2_off);
    cr_assert_neq(qcow2__be64(slot->data), 0);
    cr_assert_eq(io_fault_count(f, IO_FAULT_PREAD), 1);
    cr_assert_eq(qcow2__cache_get(img, &img->l2c, l2_off, true, &slot), 0);
    cr_assert_eq(io_fault_count(f, IO_FAULT_PREAD), 1);
    qcow2__cache_drop(&img->l2c, l2_off);
    cr_assert_eq(qcow2__cache_get(img, &img->l2c, l2_off, true, &slot), 0);
    cr_assert_eq(io_fault_count(f, IO_FAULT_PREAD), 2);
    /* A new table at an unused offset: zero filled, nothing read. */
    cr_assert_eq(qcow2__cache_get(img, &img->l2c, 1ull << 30, false, &slot), 0);
    cr_assert_eq(io_fault_count(f, IO_FAULT_PREAD), 2);
    for (uint64_t i = 0; i < img->cluster_size; i++)
        cr_assert_eq(slot->data[i], 0);
    qcow2__cache_drop(&img->l2c, 1ull << 30);
    qcow2_image_close(img);
    io_fault_free(f);
    qcow2_io_close(inner);
}

Test(cluster, cache_read_error_is_returned_and_leaves_no_stale_slot)
{
    qcow2_image *img;
    qcow2_io *inner;
    io_fault *f;
    struct qcow2__lrun r;

    tables_image(2);
    img = open_counted(0, 0, &inner, &f);
    io_fault_fail(f, IO_FAULT_MASK(IO_FAULT_PREAD), 1, EIO, false);
    cr_assert_eq(qcow2__layer_extent(img, 0, 512, &r), QCOW2_EIO);
    assert_msg(IMG);
    /* The next attempt reads the table again and succeeds. */
    cr_assert_eq(qcow2__layer_extent(img, 0, 512, &r), 0, "%s", rfx_msg());
    cr_assert_eq(r.kind, QCOW2__RUN_DATA);
    qcow2_image_close(img);
    io_fault_free(f);
    qcow2_io_close(inner);
}

Test(cluster, dirty_slots_are_written_back_and_evicting_one_flushes_it)
{
    qcow2_image *img;
    qcow2_io *inner;
    io_fault *f;
    struct qcow2__cslot *slot;
    struct qcow2__lrun r;
    uint64_t l2_off, e0;

    tables_image(6);
    img = open_counted(2048, QCOW2_OPEN_RDWR, &inner, &f);
    l2_off = img->l1[0] & QCOW2_L1E_OFFSET_MASK;
    cr_assert_eq(qcow2__cache_get(img, &img->l2c, l2_off, true, &slot), 0);
    e0 = qcow2__be64(slot->data);
    cr_assert(!qcow2__cache_is_dirty(&img->l2c));
    /* Mark entry 1 (unallocated) as a zero cluster, dirty. */
    qcow2__put_be64(slot->data + 8, QCOW2_OFLAG_ZERO);
    slot->dirty = true;
    cr_assert(qcow2__cache_is_dirty(&img->l2c));
    cr_assert_eq(qcow2__cache_writeback(img, &img->l2c), 0, "%s", rfx_msg());
    cr_assert(!qcow2__cache_is_dirty(&img->l2c));
    cr_assert_eq(rfx_peek64(fs, IMG, l2_off + 8), QCOW2_OFLAG_ZERO);
    cr_assert_eq(rfx_peek64(fs, IMG, l2_off), e0);

    /* Dirty again, then push it out of its 4-slot set with four other tables. */
    cr_assert_eq(qcow2__cache_get(img, &img->l2c, l2_off, true, &slot), 0);
    qcow2__put_be64(slot->data + 8, 0);
    slot->dirty = true;
    io_fault_reset_counts(f);
    for (unsigned t = 1; t < 6; t++)
        cr_assert_eq(qcow2__layer_extent(img, t * 32 * KiB, 512, &r), 0, "%s", rfx_msg());
    cr_assert_geq(io_fault_count(f, IO_FAULT_PWRITE), 1);
    cr_assert_geq(io_fault_count(f, IO_FAULT_FLUSH), 1);
    cr_assert_eq(rfx_peek64(fs, IMG, l2_off + 8), 0);
    cr_assert(!qcow2__cache_is_dirty(&img->l2c));
    qcow2_image_close(img);
    io_fault_free(f);
    qcow2_io_close(inner);
}

Test(cluster, read_only_handles_read_the_refcount_table_on_first_use)
{
    qcow2_image *img;
    qcow2_io *inner;
    io_fault *f;
    uint64_t refs = 0;

    tables_image(2);
    img = open_counted(0, 0, &inner, &f);
    cr_assert_null(img->reftable, "a read-only open does not read the refcount table");
    cr_assert_eq(qcow2__refcount_get(img, 0, &refs), 0, "%s", rfx_msg());
    cr_assert_eq(refs, 1, "the header cluster is referenced once");
    cr_assert_not_null(img->reftable);
    cr_assert_geq(io_fault_count(f, IO_FAULT_PREAD), 1, "the table was read on demand");
    qcow2_image_close(img);
    io_fault_free(f);
    qcow2_io_close(inner);

    img = open_counted(0, QCOW2_OPEN_RDWR, &inner, &f);
    cr_assert_not_null(img->reftable, "a writable open reads it at once");
    qcow2_image_close(img);
    io_fault_free(f);
    qcow2_io_close(inner);
}

Test(cluster, table_pool_reuses_returned_buffers_and_spans_chunks)
{
    struct qcow2__pool *p;
    uint8_t *bufs[80];
    void *odd;

    cr_assert_eq(qcow2__pool_new(&p), 0);
    /* 80 x 64 KiB = 5 MiB: three chunks. Every buffer is distinct and writable. */
    for (int i = 0; i < 80; i++) {
        bufs[i] = qcow2__pool_get(p, 64 * KiB);
        cr_assert_not_null(bufs[i]);
        memset(bufs[i], i + 1, 64 * KiB);
    }
    for (int i = 0; i < 80; i++) {
        cr_assert_eq(bufs[i][0], (uint8_t)(i + 1), "buffer %d overlaps another", i);
        cr_assert_eq(bufs[i][64 * KiB - 1], (uint8_t)(i + 1), "buffer %d overlaps another", i);
    }
    /* A returned buffer is handed out again for the same size, not for another. */
    qcow2__pool_put(p, bufs[7], 64 * KiB);
    {
        uint8_t *small = qcow2__pool_get(p, 4 * KiB);
        cr_assert_neq(small, bufs[7]);
        cr_assert_eq(qcow2__pool_get(p, 64 * KiB), bufs[7]);
        qcow2__pool_put(p, small, 4 * KiB);
    }
    /* Sizes the pool does not carve (2 MiB clusters, odd sizes) come from malloc. */
    odd = qcow2__pool_get(p, 2u << 20);
    cr_assert_not_null(odd);
    qcow2__pool_put(p, odd, 2u << 20);
    odd = qcow2__pool_get(p, 1000);
    cr_assert_not_null(odd);
    qcow2__pool_put(p, odd, 1000);
    /* A second holder keeps the memory alive after the first lets go. */
    cr_assert_eq(qcow2__pool_ref(p), p);
    qcow2__pool_unref(p);
    bufs[0][0] = 0x5a;
    qcow2__pool_unref(p);
    cr_assert_null(qcow2__pool_ref(NULL));
    qcow2__pool_unref(NULL);
}

/* The 2 MiB chunk a pool buffer was carved from. */
static uintptr_t chunk_of(const void *buf)
{
    return (uintptr_t)buf & ~(uintptr_t)((2u << 20) - 1);
}

/*
 * A released pool's chunks wait for the next pool of the process (an image
 * opened after another reads its tables into pages already there): the next
 * pool's first two chunks are two of the released pool's three, and every
 * buffer it hands out is distinct and writable.
 */
Test(cluster, a_released_pools_chunks_serve_the_next_pool)
{
    struct qcow2__pool *a, *b;
    uintptr_t old[3];
    size_t nold = 0;
    uint8_t *y[64];

    cr_assert_eq(qcow2__pool_new(&a), 0);
    for (int i = 0; i < 96; i++) { /* 6 MiB: three chunks */
        uint8_t *x = qcow2__pool_get(a, 64 * KiB);
        cr_assert_not_null(x);
        memset(x, 0xa5, 64 * KiB);
        if (!nold || old[nold - 1] != chunk_of(x))
            old[nold++] = chunk_of(x);
    }
    cr_assert_eq(nold, 3);
    qcow2__pool_unref(a);
    /* Two of the three are still mapped (kept), one is gone: a fixed mapping that may
     * not replace anything fails where memory is still mapped. */
    {
        int kept = 0;
        for (size_t k = 0; k < 3; k++) {
            void *probe = mmap((void *)old[k], 4096, PROT_READ,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
            if (probe == MAP_FAILED)
                kept += errno == EEXIST;
            else
                munmap(probe, 4096);
        }
        cr_assert_eq(kept, 2, "%d chunks of the released pool kept, not 2", kept);
    }

    cr_assert_eq(qcow2__pool_new(&b), 0);
    for (int i = 0; i < 64; i++) { /* two chunks */
        y[i] = qcow2__pool_get(b, 64 * KiB);
        cr_assert_not_null(y[i]);
        memset(y[i], i + 1, 64 * KiB);
    }
    cr_assert_neq(chunk_of(y[0]), chunk_of(y[63]));
    for (int k = 0; k < 2; k++) {
        uintptr_t c = chunk_of(y[k * 63]);
        cr_assert(c == old[0] || c == old[1] || c == old[2],
                  "chunk %d of the new pool is not one the released pool had", k);
    }
    for (int i = 0; i < 64; i++)
        cr_assert(y[i][0] == i + 1 && y[i][64 * KiB - 1] == i + 1, "buffer %d overlaps another", i);
    qcow2__pool_unref(b);
}
